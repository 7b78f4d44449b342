//! The order-status handler in the real engine (in-memory bus) against the sandbox APIs on a
//! real socket. This module holds the harness; `mapping` covers what the settings and lookups
//! decide (the documented mapping walked through an order's life, RETAILER over ACCOUNT,
//! configuration errors, missing orders), `delivery` what the bus and the APIs do to it
//! (revoked tokens, conflicts, bursts, outages, redelivery, late and repeated webhooks).

mod delivery;
mod documents;
mod mapping;

use std::collections::HashMap;
use std::time::Duration;

use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Headers, OutboundRecord, Publisher, headers};
use common::config::Config;
use order_status::{HandlerMetrics, OrderStatusUpdate, SyncMarker};
use processor_engine::{Engine, EngineConfig, Registry, Stats};
use sandbox::seed::{ORDER_SETTING, SHIPPING_SETTING, documented_mapping};
use sandbox::{CtOrder, Endpoint, Fault, FaultBody, FluentOrder, Sandbox, SandboxConfig, Setting};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const NAME: &str = "fc.connect.order.webhook.order-status-update";
struct Pipeline {
    sandbox: Sandbox,
    bus: MemoryBus,
    stats: std::sync::Arc<Stats>,
    metrics: HandlerMetrics,
    shutdown: CancellationToken,
    engine: tokio::task::JoinHandle<Result<(), common::bus::BusError>>,
    server: CancellationToken,
    next_event: std::sync::atomic::AtomicUsize,
    config: Config,
}

impl Pipeline {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let sandbox = Sandbox::new(SandboxConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, server.clone()));
        let config = sandbox.config();
        let mut env: HashMap<String, String> = [
            ("BUS", "memory".to_owned()),
            ("PROCESSOR_RETRY_BASE_MS", "5".to_owned()),
            ("PROCESSOR_RETRY_CAP_MS", "40".to_owned()),
            ("PROCESSOR_MAX_ATTEMPTS", "8".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(
            config
                .client_env(&base)
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
        for (key, value) in extra {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        let config = Config::from_sources(&env, None).unwrap();
        let (handler, metrics) = OrderStatusUpdate::from_config(&config).unwrap();
        let bus = MemoryBus::new(3);
        let engine = Engine::new(
            Consumer::Memory(bus.consumer("processor")),
            Publisher::Memory(bus.clone()),
            Registry::new().with(handler),
            EngineConfig::from_config(&config),
        );
        let stats = engine.stats();
        let shutdown = CancellationToken::new();
        let engine = tokio::spawn(engine.run(shutdown.clone()));
        Self {
            sandbox,
            bus,
            stats,
            metrics,
            shutdown,
            engine,
            server,
            next_event: 0.into(),
            config,
        }
    }

    /// Runs a second processor over the same bus from the start (a new consumer group): every
    /// event is delivered again, as after a crash before any commit. Returns once it settled.
    async fn replay_everything(&self, group: &str) -> HandlerMetrics {
        self.replay(group, self.bus.published().len() as u64).await
    }

    /// Runs a second processor in `group` (whose offsets the caller may have set) until it
    /// finished `records` records.
    async fn replay(&self, group: &str, records: u64) -> HandlerMetrics {
        let (handler, metrics) = OrderStatusUpdate::from_config(&self.config).unwrap();
        let engine = Engine::new(
            Consumer::Memory(self.bus.consumer(group)),
            Publisher::Memory(self.bus.clone()),
            Registry::new().with(handler),
            EngineConfig::from_config(&self.config),
        );
        let stats = engine.stats();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(engine.run(shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats.finished() < records {
            assert!(Instant::now() < deadline, "the replay did not settle");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shutdown.cancel();
        running.await.unwrap().unwrap();
        metrics
    }

    fn settings(&self, settings: &[(&str, Value)], context: &str, context_id: i64) {
        for (name, value) in settings {
            self.sandbox.put_setting(Setting {
                name: (*name).to_owned(),
                context: context.to_owned(),
                context_id,
                lob_value: Some(value.clone()),
                value: None,
            });
        }
    }

    /// A Fluent order and its commercetools twin (order number = ref); returns the ct id.
    fn order(&self, order_ref: &str, retailer: &str) -> String {
        self.sandbox.put_fluent_order(FluentOrder {
            id: String::new(),
            order_ref: order_ref.to_owned(),
            order_type: "HD".into(),
            status: "CREATED".into(),
            retailer_id: retailer.to_owned(),
            attributes: Vec::new(),
        });
        self.sandbox.put_ct_order(CtOrder {
            id: String::new(),
            order_number: Some(order_ref.to_owned()),
            version: 1,
            order_state: "Open".into(),
            payment_state: None,
            shipment_state: None,
            custom: Default::default(),
        })
    }

    /// Publishes an order-status event as the gateway would.
    fn event(&self, order_ref: &str, retailer: &str, status: &str) {
        let n = self
            .next_event
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.event_with_id(order_ref, retailer, status, &format!("event-{n}"));
    }

    /// Publishes an event with a given Fluent event id (a retried webhook repeats its id).
    fn event_with_id(&self, order_ref: &str, retailer: &str, status: &str, id: &str) {
        let body = json!({
            "id": id, "name": NAME, "accountId": "ACME", "retailerId": retailer,
            "rootEntityRef": order_ref, "rootEntityType": "ORDER", "entityRef": order_ref,
            "entityType": "ORDER", "entityStatus": status, "type": "NORMAL", "attributes": {}
        });
        self.bus.publish(OutboundRecord {
            key: order_ref.to_owned().into(),
            payload: body.to_string().into(),
            headers: Headers::new()
                .with(headers::EVENT_NAME, NAME)
                .with(headers::EVENT_ID, id.to_owned()),
        });
    }

    /// Waits until `published` records are settled.
    async fn settled(&self, published: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.stats.finished() < published {
            assert!(
                Instant::now() < deadline,
                "only {} of {published} records settled",
                self.stats.finished()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn states(&self, id: &str) -> (String, Option<String>, Option<String>) {
        let order = self.sandbox.ct_order(id).unwrap();
        (order.order_state, order.payment_state, order.shipment_state)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.engine.await.unwrap().unwrap();
        self.server.cancel();
    }
}

fn states(
    order: &str,
    payment: Option<&str>,
    shipment: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    (
        order.to_owned(),
        payment.map(str::to_owned),
        shipment.map(str::to_owned),
    )
}
