//! The soak's load: orders walking random status sequences, each event posted as Fluent posts
//! it. A webhook that gets no 200 is sent again on Fluent's default schedule (at once, then
//! after 2, 4 and 8 s); one whose answer Fluent "did not get" is sent again later, after the
//! order's next event (a late retry, same event id), as Fluent does when an answer times out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::{CtOrder, FluentOrder, Sandbox};

use super::world::SECRET;
use crate::webhook::{order_status_event, signed};

/// Statuses an order walks through, in any order (unmapped ones included).
const STATUSES: &[&str] = &[
    "RECEIVED",
    "PENDING_PAYMENT",
    "BOOKED",
    "PICK_PACK",
    "AWAITING_COURIER_COLLECTION",
    "COMPLETE",
    "CANCELLED",
    "ESCALATED",
    "UNMAPPED_STATUS",
];
/// Fluent's default retry schedule after the first attempt.
const FLUENT_RETRIES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];
/// Share of webhooks whose 200 Fluent "does not see", so it sends them again late.
const LATE_RETRY_RATE: f64 = 0.05;
/// Share of orders commercetools lacks: their events are forced into the DLQ.
const MISSING_RATE: f64 = 0.01;

/// One order of the run and what was accepted for it.
#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) order_ref: String,
    /// The commercetools id; empty for an order commercetools lacks (forced to the DLQ).
    pub(super) ct_id: String,
    /// Its events (id, status) in the order Fluent generated them, accepted or not.
    pub(super) events: Vec<(String, &'static str)>,
    /// Every event id a gateway answered 200 for.
    pub(super) accepted: Vec<String>,
}

/// What the load did, for the report.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) webhooks: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) late_retries: AtomicU64,
}

/// Sends orders until `until`, `concurrency` orders at a time.
pub(super) struct Load {
    pub(super) sandbox: Sandbox,
    pub(super) gateways: Vec<String>,
    pub(super) client: reqwest::Client,
    pub(super) counts: Arc<Counts>,
    pub(super) orders: Arc<Mutex<Vec<Order>>>,
}

impl Load {
    /// Runs `concurrency` order walkers until `until`; returns once every started order has
    /// sent all its events (late retries included).
    pub(super) async fn run(
        self: Arc<Self>,
        concurrency: usize,
        until: tokio::time::Instant,
        seed: u64,
    ) {
        let walkers = (0..concurrency).map(|walker| {
            let load = Arc::clone(&self);
            tokio::spawn(async move {
                let mut rng = fastrand_rng(seed, walker);
                let mut n = 0;
                while tokio::time::Instant::now() < until {
                    load.walk(&mut rng, &format!("SOAK_{walker}_{n}")).await;
                    n += 1;
                }
            })
        });
        futures::future::join_all(walkers).await;
    }

    /// One order: created in both APIs (or only in Fluent), then its events one by one.
    async fn walk(&self, rng: &mut Rng, order_ref: &str) {
        let missing = rng.f64() < MISSING_RATE;
        self.sandbox.put_fluent_order(FluentOrder {
            id: String::new(),
            order_ref: order_ref.to_owned(),
            order_type: "HD".into(),
            status: "CREATED".into(),
            retailer_id: "1".into(),
            attributes: Vec::new(),
        });
        let ct_id = if missing {
            String::new()
        } else {
            self.sandbox.put_ct_order(CtOrder::open(order_ref))
        };
        let mut order = Order {
            order_ref: order_ref.to_owned(),
            ct_id,
            events: Vec::new(),
            accepted: Vec::new(),
        };
        let mut late: Vec<(String, String)> = Vec::new();
        for k in 0..rng.usize(2..8) {
            let status = STATUSES[rng.usize(..STATUSES.len())];
            let id = format!("{order_ref}-{k}");
            let body = order_status_event(&id, order_ref, "1", status);
            order.events.push((id.clone(), status));
            if !self.deliver(rng, &id, &body).await {
                // Fluent gave up on this event (the gateway never answered 200).
                continue;
            }
            order.accepted.push(id.clone());
            // Late retries of earlier events land behind this newer one.
            for (id, body) in std::mem::take(&mut late) {
                self.late_retry(rng, &id, &body, &mut order).await;
            }
            if rng.f64() < LATE_RETRY_RATE {
                late.push((id, body));
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..150))).await;
        }
        for (id, body) in late {
            self.late_retry(rng, &id, &body, &mut order).await;
        }
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(order);
    }

    /// Sends an event again that a gateway already accepted (Fluent missed the answer).
    async fn late_retry(&self, rng: &mut Rng, id: &str, body: &str, order: &mut Order) {
        self.counts.late_retries.fetch_add(1, Ordering::Relaxed);
        if self.deliver(rng, id, body).await {
            order.accepted.push(id.to_owned());
        }
    }

    /// Posts the webhook to a random gateway, retrying on Fluent's schedule; true once a
    /// gateway answered 200.
    async fn deliver(&self, rng: &mut Rng, id: &str, body: &str) -> bool {
        for wait in FLUENT_RETRIES {
            tokio::time::sleep(wait).await;
            self.counts.webhooks.fetch_add(1, Ordering::Relaxed);
            let gateway = &self.gateways[rng.usize(..self.gateways.len())];
            let mut request = self
                .client
                .post(gateway)
                .timeout(Duration::from_secs(10))
                .header("content-type", "application/json");
            for (name, value) in signed(SECRET, id, body) {
                request = request.header(name, value);
            }
            match request.body(body.to_owned()).send().await {
                Ok(response) if response.status() == 200 => {
                    self.counts.accepted.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                _ => {
                    self.counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        false
    }
}

type Rng = fastrand::Rng;

fn fastrand_rng(seed: u64, walker: usize) -> Rng {
    fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(walker as u64))
}
