//! Fluent's side of the story: the orders it holds, the webhooks it signs (SHA512withRSA with
//! a key pair made for this run) and sends, one order's in sequence and many orders at once,
//! retrying what the gateway did not accept as Fluent does.

use std::time::Duration;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA512, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use sandbox::{CtOrder, FluentOrder};

use crate::DemoError;
use crate::scenario::OrderPlan;
use crate::stack::Stack;

/// Orders whose webhooks are in flight at once.
const CONCURRENT_ORDERS: usize = 8;
/// Deliveries of one webhook before the demo gives up on the gateway.
const DELIVERY_ATTEMPTS: u32 = 8;

/// Signs webhooks as Fluent does.
pub struct Signer {
    pair: RsaKeyPair,
}

impl Signer {
    /// A fresh RSA-2048 key pair.
    pub fn generate() -> Result<Self, DemoError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| DemoError::Crypto("cannot generate an RSA key pair"))?;
        Ok(Self { pair })
    }

    /// The public key as Fluent publishes it (base64 DER SubjectPublicKeyInfo).
    pub fn public_key(&self) -> Result<String, DemoError> {
        let der = self
            .pair
            .public_key()
            .as_der()
            .map_err(|_| DemoError::Crypto("cannot encode the public key"))?;
        Ok(STANDARD.encode(der.as_ref()))
    }

    /// The `fluent-signature` header value for `body`.
    pub fn sign(&self, body: &str) -> Result<String, DemoError> {
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA512,
                &SystemRandom::new(),
                body.as_bytes(),
                &mut signature,
            )
            .map_err(|_| DemoError::Crypto("cannot sign a webhook"))?;
        Ok(STANDARD.encode(signature))
    }
}

/// The body of event `id` moving order `order_ref` to `status`, as Fluent sends it.
pub fn event_body(id: &str, order_ref: &str, status: &str) -> String {
    sandbox::seed::order_status_event(id, order_ref, "1", status)
}

/// One webhook the gateway accepted and published.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// Which order (index into the plan).
    pub order: usize,
    /// Which of its statuses.
    pub step: usize,
    /// When the delivery the gateway accepted was sent, on the sandbox's clock (milliseconds
    /// since it started): the gateway publishes before it answers, so an update can come
    /// before the answer does, never before this.
    pub at_ms: f64,
}

/// What sending the story took.
#[derive(Debug, Default)]
pub struct Sent {
    /// Webhooks Fluent sent, duplicates included (not counting redeliveries).
    pub webhooks: u64,
    /// Those the gateway published.
    pub accepted: Vec<Acceptance>,
    /// Those it answered as replays of one already published (Fluent's duplicates).
    pub replays: u64,
    /// Deliveries repeated because the gateway did not answer 200.
    pub redeliveries: u64,
    /// Each order's commercetools order id, by plan index.
    pub ct_ids: Vec<String>,
}

/// Creates each order in both APIs, then sends its webhooks in sequence, many orders at once.
pub async fn send_story(
    stack: &Stack,
    plans: &[OrderPlan],
    signer: &Signer,
    progress: &ProgressBar,
) -> Result<Sent, DemoError> {
    let client = reqwest::Client::new();
    let ct_ids: Vec<String> = plans
        .iter()
        .map(|plan| create_orders(stack, plan))
        .collect();
    let walks = plans.iter().enumerate().map(|(order, plan)| {
        let (client, ct_id) = (&client, &ct_ids[order]);
        async move { walk(stack, client, signer, order, plan, ct_id, progress).await }
    });
    let results: Vec<Result<Sent, DemoError>> = futures::stream::iter(walks)
        .buffer_unordered(CONCURRENT_ORDERS)
        .collect()
        .await;
    let mut sent = Sent::default();
    for result in results {
        let one = result?;
        sent.webhooks += one.webhooks;
        sent.accepted.extend(one.accepted);
        sent.replays += one.replays;
        sent.redeliveries += one.redeliveries;
    }
    sent.accepted.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    sent.ct_ids = ct_ids;
    Ok(sent)
}

/// The plan's order in both APIs, with the conflicts the plan asks for: its commercetools id.
fn create_orders(stack: &Stack, plan: &OrderPlan) -> String {
    let ct_id = put_orders(stack, &plan.order_ref, "CREATED");
    if plan.conflicts > 0 {
        stack.sandbox.force_conflicts(&ct_id, plan.conflicts);
    }
    ct_id
}

/// Order `order_ref` as Fluent holds it at `status` (the handler reads it) and the Open
/// commercetools order it corresponds to (same order number): the commercetools id.
pub fn put_orders(stack: &Stack, order_ref: &str, status: &str) -> String {
    stack
        .sandbox
        .put_fluent_order(fluent_order(order_ref, status));
    stack.sandbox.put_ct_order(CtOrder::open(order_ref))
}

fn fluent_order(order_ref: &str, status: &str) -> FluentOrder {
    FluentOrder {
        id: format!("fluent-{order_ref}"),
        order_ref: order_ref.to_owned(),
        order_type: "HD".into(),
        status: status.into(),
        retailer_id: "1".into(),
        attributes: Vec::new(),
    }
}

async fn walk(
    stack: &Stack,
    client: &reqwest::Client,
    signer: &Signer,
    order: usize,
    plan: &OrderPlan,
    ct_id: &str,
    progress: &ProgressBar,
) -> Result<Sent, DemoError> {
    let mut sent = Sent::default();
    for (step, status) in plan.statuses.iter().enumerate() {
        if plan.bump_before == Some(step) {
            stack.sandbox.bump_version(ct_id);
        }
        // Fluent changes the order first, then tells us.
        stack
            .sandbox
            .put_fluent_order(fluent_order(&plan.order_ref, status));
        let body = event_body(
            &format!("{}-{step}", plan.order_ref),
            &plan.order_ref,
            status,
        );
        let signature = signer.sign(&body)?;
        let copies = if plan.duplicates.contains(&step) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delivered = deliver(stack, client, &body, &signature).await?;
            sent.webhooks += 1;
            sent.redeliveries += delivered.redeliveries;
            if delivered.replay {
                sent.replays += 1;
            } else {
                sent.accepted.push(Acceptance {
                    order,
                    step,
                    at_ms: delivered.sent_at_ms,
                });
            }
            progress.inc(1);
        }
    }
    Ok(sent)
}

/// How one webhook got through.
struct Delivered {
    /// Answered as a replay of one already published.
    replay: bool,
    /// Deliveries before the accepted one.
    redeliveries: u64,
    /// When the accepted delivery was sent (sandbox clock).
    sent_at_ms: f64,
}

/// Delivers one webhook until the gateway accepts it. Fluent retries what was not answered 200
/// with a growing delay; a 4xx is the demo's own bug.
async fn deliver(
    stack: &Stack,
    client: &reqwest::Client,
    body: &str,
    signature: &str,
) -> Result<Delivered, DemoError> {
    let mut redeliveries = 0;
    loop {
        let sent_at_ms = stack.sandbox.elapsed_ms();
        let answer = client
            .post(&stack.webhook_url)
            .header("content-type", "application/json")
            .header("fluent-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        let failure = match answer {
            Ok(response) if response.status().is_success() => {
                let answer: serde_json::Value = response.json().await?;
                return Ok(Delivered {
                    replay: answer["replay"] == true,
                    redeliveries,
                    sent_at_ms,
                });
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                return Err(DemoError::Refused { status, body });
            }
            Ok(response) => format!("status {}", response.status()),
            Err(error) => error.to_string(),
        };
        redeliveries += 1;
        if redeliveries >= u64::from(DELIVERY_ATTEMPTS) {
            return Err(DemoError::GatewayDown(failure));
        }
        let delay = Duration::from_millis(100 << redeliveries.min(5));
        tokio::time::sleep(delay).await;
    }
}
