//! The order-status handler in the real engine (in-memory bus) against the sandbox APIs on a
//! real socket: the documented mapping walked through an order's life, RETAILER over ACCOUNT
//! settings, configuration errors, missing orders, and the APIs misbehaving.

use std::collections::HashMap;
use std::time::Duration;

use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Headers, OutboundRecord, Publisher, headers};
use common::config::Config;
use processor::engine::{Engine, EngineConfig, Registry, Stats};
use processor::order_status::{HandlerMetrics, OrderStatusUpdate};
use sandbox::seed::{ORDER_SETTING, SHIPPING_SETTING, documented_mapping};
use sandbox::{CtOrder, Endpoint, Fault, FluentOrder, Sandbox, SandboxConfig, Setting};
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
        let published = self.bus.published().len() as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats.finished() < published {
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

#[tokio::test(flavor = "multi_thread")]
async fn walks_an_order_through_the_documented_mapping_step_by_step() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_1001", "7");
    let steps = [
        ("RECEIVED", states("Open", Some("Pending"), Some("Pending"))),
        ("BOOKED", states("Confirmed", Some("Paid"), Some("Pending"))),
        (
            "PICK_PACK",
            states("Confirmed", Some("Paid"), Some("Pending")),
        ),
        // Unmapped: nothing changes.
        (
            "SOMETHING_ELSE",
            states("Confirmed", Some("Paid"), Some("Pending")),
        ),
        (
            "AWAITING_COURIER_COLLECTION",
            states("Confirmed", Some("Paid"), Some("Shipped")),
        ),
        (
            "COMPLETE",
            states("Complete", Some("Paid"), Some("Shipped")),
        ),
    ];
    for (published, (status, expected)) in (1..).zip(steps) {
        pipeline.event("HD_1001", "7", status);
        pipeline.settled(published).await;
        assert_eq!(pipeline.states(&id), expected, "after {status}");
    }
    // PICK_PACK changed nothing and SOMETHING_ELSE is unmapped: four updates, no no-op ones.
    let history = pipeline.sandbox.history(&id);
    assert_eq!(history.len(), 4, "{history:?}");
    assert_eq!(pipeline.metrics.unmapped.get(), 1);
    assert!(pipeline.bus.dead_letters().is_empty());
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retailer_setting_overrides_the_account_one() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    pipeline.settings(
        &[(ORDER_SETTING, json!({"fluent": {"BOOKED": "Complete"}}))],
        "RETAILER",
        7,
    );
    let id = pipeline.order("HD_2001", "7");
    pipeline.event("HD_2001", "7", "BOOKED");
    pipeline.settled(1).await;
    // Order state from the RETAILER setting; payment and shipping from ACCOUNT.
    assert_eq!(
        pipeline.states(&id),
        states("Complete", Some("Paid"), Some("Pending"))
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_mapping_value_goes_to_the_dlq_naming_the_setting_and_value() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(
        &[(SHIPPING_SETTING, json!({"fluent": {"BOOKED": "Sent"}}))],
        "ACCOUNT",
        0,
    );
    let id = pipeline.order("HD_3001", "7");
    pipeline.event("HD_3001", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(
        error.contains(SHIPPING_SETTING) && error.contains("`Sent`"),
        "{error}"
    );
    assert_eq!(
        letters[0].headers.get_str(headers::DLQ_ERROR_CLASS),
        Some("permanent")
    );
    assert_eq!(pipeline.metrics.config_errors.get(), 1);
    assert!(pipeline.sandbox.history(&id).is_empty());
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_commercetools_does_not_have_goes_to_the_dlq() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    pipeline.sandbox.put_fluent_order(FluentOrder {
        id: "55".into(),
        order_ref: "HD_4001".into(),
        order_type: "HD".into(),
        status: "BOOKED".into(),
        retailer_id: "7".into(),
        attributes: Vec::new(),
    });
    pipeline.event("HD_4001", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("commercetools has no order"), "{error}");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn survives_revoked_tokens_concurrent_writers_and_error_bursts() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_5001", "7");
    pipeline.event("HD_5001", "7", "RECEIVED");
    pipeline.settled(1).await;
    // Tokens expire, another writer bumps the version three times, and both APIs fail a few
    // calls with 503 and 429.
    pipeline.sandbox.revoke_tokens();
    pipeline.sandbox.force_conflicts(&id, 3);
    let burst = |status| Fault {
        fail_next: 3,
        status: Some(status),
        ..Fault::default()
    };
    pipeline
        .sandbox
        .set_fault(Endpoint::FluentGraphql, burst(503));
    pipeline.sandbox.set_fault(Endpoint::CtGraphql, burst(429));
    pipeline.event("HD_5001", "7", "BOOKED");
    pipeline.settled(2).await;
    assert_eq!(
        pipeline.states(&id),
        states("Confirmed", Some("Paid"), Some("Pending"))
    );
    assert!(pipeline.bus.dead_letters().is_empty());
    assert!(pipeline.metrics.conflicts.get() >= 3);
    let mut registry = prometheus_client::registry::Registry::default();
    pipeline.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for series in [
        r#"processor_api_request_duration_seconds_count{api="fluent",outcome="http_status"} 3"#,
        r#"processor_api_request_duration_seconds_count{api="commercetools",outcome="http_status"} 3"#,
        r#"api="fluent",outcome="unauthorized""#,
        r#"api="commercetools",outcome="graphql_error""#,
        r#"api="commercetools",outcome="ok""#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    assert!(
        pipeline.sandbox.calls(Endpoint::FluentToken) >= 2,
        "the token was fetched again"
    );
    pipeline.stop().await;
}

/// The states applying `statuses` one by one passes through, starting from `start`; a status
/// no mapping covers (or that changes nothing) adds no step.
fn one_by_one(
    start: (String, Option<String>, Option<String>),
    statuses: &[&str],
) -> Vec<(String, Option<String>, Option<String>)> {
    let mapping = documented_mapping();
    let lookup = |setting: usize, status: &str| {
        mapping[setting].1["fluent"][status].as_str().map(|value| {
            // The documented payment values are lower case; commercetools spells them so.
            let mut chars = value.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
    };
    let mut current = start;
    let mut steps = Vec::new();
    for status in statuses {
        let next = (
            lookup(0, status).unwrap_or_else(|| current.0.clone()),
            lookup(1, status).or_else(|| current.1.clone()),
            lookup(2, status).or_else(|| current.2.clone()),
        );
        if next != current {
            steps.push(next.clone());
            current = next;
        }
    }
    steps
}

#[tokio::test(flavor = "multi_thread")]
async fn many_orders_end_as_the_fold_of_their_events_and_never_step_out_of_order() {
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
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let mut rng = fastrand::Rng::with_seed(20261128);
    let orders: Vec<(String, String, Vec<&str>)> = (0..40)
        .map(|n| {
            let order_ref = format!("HD_9{n:03}");
            let id = pipeline.order(&order_ref, "7");
            let events = (0..rng.usize(1..9))
                .map(|_| STATUSES[rng.usize(..STATUSES.len())])
                .collect();
            (order_ref, id, events)
        })
        .collect();
    // Interleave the orders' events, each order's in its own order.
    let mut cursors = vec![0; orders.len()];
    let total: usize = orders.iter().map(|(_, _, events)| events.len()).sum();
    for _ in 0..total {
        let pending: Vec<usize> = (0..orders.len())
            .filter(|i| cursors[*i] < orders[*i].2.len())
            .collect();
        let pick = pending[rng.usize(..pending.len())];
        let (order_ref, _, events) = &orders[pick];
        pipeline.event(order_ref, "7", events[cursors[pick]]);
        cursors[pick] += 1;
    }
    pipeline.settled(total as u64).await;
    for (order_ref, id, events) in &orders {
        let start = states("Open", None, None);
        let steps = one_by_one(start.clone(), events);
        let expected = steps.last().cloned().unwrap_or(start);
        assert_eq!(
            pipeline.states(id),
            expected,
            "{order_ref} after {events:?}"
        );
        // Every update the sandbox saw is one of the one-by-one states, in order (coalescing
        // may skip some; none may come out of order).
        let mut remaining = steps.iter();
        for update in pipeline.sandbox.history(id) {
            let seen = (
                update.order_state,
                update.payment_state,
                update.shipment_state,
            );
            assert!(
                remaining.any(|step| *step == seen),
                "{order_ref}: update {seen:?} is not next in {steps:?} ({events:?})"
            );
        }
    }
    assert!(pipeline.bus.dead_letters().is_empty());
    let coalesced = pipeline
        .stats
        .coalesced
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        coalesced > 0,
        "the burst should have been coalesced somewhere"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_sync_marker_a_full_redelivery_never_steps_an_order_back() {
    for marker in [false, true] {
        let extra: &[(&str, &str)] = if marker {
            &[("CTP_SYNC_MARKER_FIELD", "fluentSyncPosition")]
        } else {
            &[]
        };
        let pipeline = Pipeline::start(extra).await;
        pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
        let id = pipeline.order("HD_6001", "7");
        for (published, status) in (1..).zip(["RECEIVED", "BOOKED", "COMPLETE"]) {
            pipeline.event("HD_6001", "7", status);
            pipeline.settled(published).await;
        }
        let done = states("Complete", Some("Paid"), Some("Shipped"));
        assert_eq!(pipeline.states(&id), done);
        let updates = pipeline.sandbox.history(&id).len();
        let replay = pipeline.replay_everything("after-a-crash").await;
        assert_eq!(
            pipeline.states(&id),
            done,
            "the replay ends where the order was"
        );
        let history = pipeline.sandbox.history(&id);
        if marker {
            let stored =
                pipeline.sandbox.ct_order(&id).unwrap().custom["fluentSyncPosition"].clone();
            let last = pipeline.bus.published().last().unwrap().0;
            assert_eq!(stored, json!(format!("{}:{}", last.partition, last.offset)));
            assert_eq!(
                history.len(),
                updates,
                "no update during the replay: {history:?}"
            );
            assert!(replay.already_applied.get() >= 1);
        } else {
            // Without the marker the replay visits the old states again before ending right.
            assert!(
                history[updates..]
                    .iter()
                    .any(|update| update.order_state == "Open"),
                "expected a step back without the marker: {history:?}"
            );
        }
        pipeline.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_fluent_does_not_know_yet_is_retried_then_dead_lettered() {
    let pipeline = Pipeline::start(&[("FLUENT_ORDER_NOT_FOUND_ATTEMPTS", "3")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    // Only commercetools has the order: Fluent never will.
    pipeline.sandbox.put_ct_order(CtOrder {
        id: String::new(),
        order_number: Some("HD_7001".into()),
        version: 1,
        order_state: "Open".into(),
        payment_state: None,
        shipment_state: None,
        custom: Default::default(),
    });
    pipeline.event("HD_7001", "7", "BOOKED");
    pipeline.settled(1).await;
    let letters = pipeline.bus.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers.get_str(headers::DLQ_ATTEMPTS), Some("3"));
    let error = letters[0].headers.get_str(headers::DLQ_ERROR).unwrap();
    assert!(error.contains("Fluent has no order HD_7001"), "{error}");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_reaches_fluent_late_is_applied_on_a_retry() {
    let pipeline = Pipeline::start(&[("FLUENT_ORDER_NOT_FOUND_ATTEMPTS", "50")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.sandbox.put_ct_order(CtOrder {
        id: String::new(),
        order_number: Some("HD_7002".into()),
        version: 1,
        order_state: "Open".into(),
        payment_state: None,
        shipment_state: None,
        custom: Default::default(),
    });
    pipeline.event("HD_7002", "7", "BOOKED");
    // Replication lag: the order shows up in Fluent once the handler has looked at least once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pipeline
        .stats
        .retried
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "the handler never retried");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pipeline.sandbox.put_fluent_order(FluentOrder {
        id: String::new(),
        order_ref: "HD_7002".into(),
        order_type: "HD".into(),
        status: "BOOKED".into(),
        retailer_id: "7".into(),
        attributes: Vec::new(),
    });
    pipeline.settled(1).await;
    assert_eq!(
        pipeline.states(&id),
        states("Confirmed", Some("Paid"), Some("Pending"))
    );
    assert!(pipeline.bus.dead_letters().is_empty());
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_commercetools_order_is_found_by_each_lookup_strategy() {
    for (lookup, order_ref, attribute) in [
        ("id", "", None),
        ("id-without-prefix:HD_", "HD_", None),
        ("attribute:ctOrderId", "FL-8001", Some("ctOrderId")),
    ] {
        let pipeline = Pipeline::start(&[("CTP_ORDER_LOOKUP", lookup)]).await;
        pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
        let id = pipeline.sandbox.put_ct_order(CtOrder {
            id: String::new(),
            order_number: None,
            version: 1,
            order_state: "Open".into(),
            payment_state: None,
            shipment_state: None,
            custom: Default::default(),
        });
        let order_ref = match lookup {
            "id" => id.clone(),
            "id-without-prefix:HD_" => format!("{order_ref}{id}"),
            _ => order_ref.to_owned(),
        };
        let attributes = attribute
            .map(|name| vec![json!({"name": name, "type": "STRING", "value": id})])
            .unwrap_or_default();
        pipeline.sandbox.put_fluent_order(FluentOrder {
            id: String::new(),
            order_ref: order_ref.clone(),
            order_type: "HD".into(),
            status: "BOOKED".into(),
            retailer_id: "7".into(),
            attributes,
        });
        pipeline.event(&order_ref, "7", "BOOKED");
        pipeline.settled(1).await;
        assert_eq!(
            pipeline.states(&id),
            states("Confirmed", Some("Paid"), Some("Pending")),
            "lookup {lookup}"
        );
        pipeline.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_fluent_sends_again_late_does_not_step_the_order_back() {
    let pipeline = Pipeline::start(&[]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_8001", "7");
    pipeline.event_with_id("HD_8001", "7", "BOOKED", "booked-once");
    pipeline.settled(1).await;
    pipeline.event("HD_8001", "7", "COMPLETE");
    pipeline.settled(2).await;
    // Fluent retries the BOOKED webhook (its answer timed out): same event id, arriving last.
    pipeline.event_with_id("HD_8001", "7", "BOOKED", "booked-once");
    pipeline.settled(3).await;
    assert_eq!(
        pipeline.states(&id),
        states("Complete", Some("Paid"), Some("Shipped"))
    );
    assert_eq!(
        pipeline.sandbox.history(&id).len(),
        2,
        "the repeat made no update"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_commercetools_outage_delays_records_but_sends_none_to_the_dlq() {
    // Eight attempts would be spent after eight 500s; thirty in a row must still end well.
    let pipeline = Pipeline::start(&[("PROCESSOR_MAX_ATTEMPTS", "8")]).await;
    pipeline.settings(&documented_mapping(), "ACCOUNT", 0);
    let id = pipeline.order("HD_9501", "7");
    pipeline.sandbox.set_fault(
        Endpoint::CtGraphql,
        Fault {
            fail_next: 30,
            status: Some(500),
            ..Fault::default()
        },
    );
    pipeline.event("HD_9501", "7", "BOOKED");
    pipeline.settled(1).await;
    assert_eq!(
        pipeline.states(&id),
        states("Confirmed", Some("Paid"), Some("Pending"))
    );
    assert!(pipeline.bus.dead_letters().is_empty());
    let waited = pipeline
        .stats
        .waited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(waited >= 30, "waited {waited} times");
    pipeline.stop().await;
}
