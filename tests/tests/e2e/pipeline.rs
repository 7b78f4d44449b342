//! The whole pipeline over real processes: the `ingest` and `processor` binaries, the real
//! Kafka broker, and the sandbox APIs on a real socket. Signed webhooks go in at the gateway;
//! commercetools order states come out, step by step through an order's life.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use e2e_tests::otlp::{Receiver, Transport};
use e2e_tests::process::{self, Process, free_port};
use e2e_tests::{DEADLINE, kafka_brokers, unique};
use sandbox::{CtOrder, Endpoint, Fault, FluentOrder, Sandbox, SandboxConfig, Setting};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"pipeline-test-secret";

/// Starts the workspace binary `name` with `env`.
pub(crate) fn spawn(name: &str, env: &[(&str, String)]) -> anyhow::Result<Process> {
    process::spawn(&process::workspace_binary(name)?, env)
}

async fn until<F: FnMut() -> bool>(what: &str, mut check: F) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        ensure!(
            Instant::now() < deadline,
            "{what}: not reached within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How the processor reaches the sandbox APIs.
#[derive(Clone, Copy)]
pub(crate) enum Api {
    Http,
    Https,
}

/// Which bus the two processes talk over.
#[derive(Clone, Copy)]
pub(crate) enum Bus {
    Kafka,
    Nats,
}

/// The sandbox in this process, the `ingest` and `processor` binaries on a fresh topic.
pub(crate) struct Running {
    pub(crate) sandbox: Sandbox,
    stop_sandbox: CancellationToken,
    pub(crate) client: reqwest::Client,
    webhook: String,
    pub(crate) dlq_topic: String,
    /// The processor's environment, for running its subcommands against the same bus.
    pub(crate) processor_env: Vec<(&'static str, String)>,
    metrics: String,
    events: std::sync::atomic::AtomicUsize,
    /// Every `webhook-signature` sent.
    signatures: std::sync::Mutex<Vec<String>>,
    /// Until [`Running::stop`].
    ingest: Option<Process>,
    pub(crate) processor: Option<Process>,
    /// Holds the CA file the processor trusts when the APIs are served over HTTPS.
    _tls: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_sandbox.cancel();
    }
}

impl Running {
    async fn start_on(kind: Bus, scheme: Api) -> anyhow::Result<Self> {
        Self::start_with(kind, scheme, None, &[]).await
    }

    /// Starts the pipeline, both processes with `extra` in their environment; with `logs`,
    /// both log at debug level into `logs/ingest.log` and `logs/processor.log`.
    pub(crate) async fn start_with(
        kind: Bus,
        scheme: Api,
        logs: Option<&std::path::Path>,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let sandbox = Sandbox::new(SandboxConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut api = format!("http://{}", listener.local_addr()?);
        let stop_sandbox = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));
        // Over HTTPS the processor reaches the sandbox through a TLS proxy whose certificate
        // it trusts the way an operator adds a private CA: SSL_CERT_FILE.
        let mut tls_env = Vec::new();
        let tls = match scheme {
            Api::Http => None,
            Api::Https => {
                let (pem, der, key) = crate::tls_proxy::certificate()?;
                let dir = tempfile::tempdir()?;
                let ca = dir.path().join("ca.pem");
                std::fs::write(&ca, pem)?;
                let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let upstream = api.trim_start_matches("http://").to_owned();
                api = format!("https://{}", proxy.local_addr()?);
                tokio::spawn(crate::tls_proxy::serve_tls_proxy(proxy, der, key, upstream));
                tls_env.push(("SSL_CERT_FILE", ca.display().to_string()));
                Some(dir)
            }
        };
        sandbox.put_account_settings(&sandbox::seed::documented_mapping());
        let topic = unique("pipeline");
        let dlq_topic = format!("{topic}.dlq");
        let bus = match kind {
            Bus::Kafka => vec![
                ("BUS", "kafka".to_owned()),
                ("KAFKA_BROKERS", kafka_brokers()),
                ("KAFKA_TOPIC", topic.clone()),
                ("KAFKA_DLQ_TOPIC", dlq_topic.clone()),
                ("KAFKA_CREATE_TOPICS", "true".into()),
                ("KAFKA_TOPIC_PARTITIONS", "3".into()),
                ("KAFKA_TOPIC_REPLICATION", "1".into()),
            ],
            Bus::Nats => vec![
                ("BUS", "nats".to_owned()),
                ("NATS_URL", e2e_tests::nats_url()),
                ("NATS_STREAM", unique("PIPELINE")),
                ("NATS_SUBJECT_PREFIX", unique("pipeline")),
                ("NATS_CONSUMER_PREFIX", unique("processor")),
                ("NATS_PARTITIONS", "3".into()),
            ],
        };
        let port = free_port()?;
        let mut ingest_env = bus.to_vec();
        ingest_env.extend_from_slice(extra);
        ingest_env.push(("INGEST_LISTEN", format!("127.0.0.1:{port}")));
        ingest_env.push((
            "WEBHOOK_HMAC_SECRETS",
            e2e_tests::webhook::hmac_secret_setting(SECRET),
        ));
        // The processor's own defence against Fluent's late retries is under test here: the
        // gateway must pass them on (as one that did not see the first delivery would), not
        // answer them from its replay window.
        ingest_env.push(("INGEST_REPLAY_WINDOW", "0".into()));
        let start = |name: &str, env: &mut Vec<(&'static str, String)>| match logs {
            Some(dir) => {
                env.push(("RUST_LOG", "debug".into()));
                process::spawn_logged(
                    &process::workspace_binary(name)?,
                    env,
                    &dir.join(format!("{name}.log")),
                )
            }
            None => spawn(name, env),
        };
        let ingest = start("ingest", &mut ingest_env)?;
        let config = sandbox.config();
        let metrics_port = free_port()?;
        let mut processor_env = bus.to_vec();
        processor_env.extend([
            ("KAFKA_GROUP_ID", unique("pipeline-group")),
            (
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000,heartbeat.interval.ms=500".into(),
            ),
            ("METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("PROCESSOR_RETRY_BASE_MS", "10".into()),
            ("PROCESSOR_RETRY_CAP_MS", "200".into()),
        ]);
        processor_env.extend(config.client_env(&api));
        processor_env.extend(tls_env);
        processor_env.extend_from_slice(extra);
        let processor = start("processor", &mut processor_env)?;
        let client = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{port}/health/ready");
        let deadline = Instant::now() + DEADLINE;
        while !client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ensure!(Instant::now() < deadline, "ingest never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            sandbox,
            stop_sandbox,
            client,
            webhook: format!("http://127.0.0.1:{port}/webhooks/fluent"),
            dlq_topic,
            processor_env,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            events: 0.into(),
            signatures: std::sync::Mutex::default(),
            ingest: Some(ingest),
            processor: Some(processor),
            _tls: tls,
        })
    }

    /// Runs `processor <args>` against the same bus and APIs; its exit status and output.
    pub(crate) async fn operate(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        process::run(
            &process::workspace_binary("processor")?,
            args,
            &self.processor_env,
        )
        .await
    }

    /// Stops both processes with SIGTERM, as an orchestrator would, each expected to exit
    /// cleanly: the gateway first, then the processor once it has drained.
    fn stop(&mut self) -> anyhow::Result<()> {
        for process in [self.ingest.take(), self.processor.take()]
            .into_iter()
            .flatten()
        {
            process.terminate()?;
        }
        Ok(())
    }

    /// A Fluent order of `retailer` and, when `in_commercetools`, its twin; returns the ct id.
    pub(crate) fn order(&self, retailer: &str, in_commercetools: bool) -> (String, String) {
        let order_ref = unique("HD");
        self.sandbox.put_fluent_order(FluentOrder {
            id: String::new(),
            order_ref: order_ref.clone(),
            order_type: "HD".into(),
            status: "CREATED".into(),
            retailer_id: retailer.into(),
            attributes: Vec::new(),
        });
        let id = if in_commercetools {
            self.sandbox.put_ct_order(CtOrder::open(&order_ref))
        } else {
            String::new()
        };
        (order_ref, id)
    }

    /// Posts a signed status event for `order_ref`; the gateway must accept it.
    pub(crate) async fn send(
        &self,
        order_ref: &str,
        retailer: &str,
        status: &str,
    ) -> anyhow::Result<()> {
        let n = self
            .events
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.send_as(
            order_ref,
            retailer,
            status,
            &format!("{order_ref}-event-{n}"),
            &[],
        )
        .await
    }

    /// Posts the event `id` (Fluent retries a webhook with its id); the gateway must accept it.
    async fn send_as(
        &self,
        order_ref: &str,
        retailer: &str,
        status: &str,
        id: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let body = e2e_tests::webhook::order_status_event(id, order_ref, retailer, status);
        let mut request = self
            .client
            .post(&self.webhook)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        for (name, value) in e2e_tests::webhook::signed(SECRET, id, &body) {
            if name == "webhook-signature" {
                self.signatures
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(value.clone());
            }
            request = request.header(name, value);
        }
        let response = request.body(body).send().await?;
        ensure!(
            response.status() == 200,
            "{status}: {}",
            response.text().await?
        );
        Ok(())
    }

    /// Polls the processor's `/metrics` until `check` accepts the text; fails saying `what`.
    pub(crate) async fn until_metrics(
        &self,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.client.get(&self.metrics).send().await?.text().await?;
            if check(&text) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "{what}:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn until_states(
        &self,
        id: &str,
        (order, payment, shipment): (&str, Option<&str>, Option<&str>),
    ) -> anyhow::Result<()> {
        until(
            &format!("commercetools order {id} at {order}/{payment:?}/{shipment:?}"),
            || {
                self.sandbox.ct_order(id).is_some_and(|o| {
                    o.order_state == order
                        && o.payment_state.as_deref() == payment
                        && o.shipment_state.as_deref() == shipment
                })
            },
        )
        .await
    }
}

pub(crate) fn setting(
    name: &str,
    context: &str,
    context_id: i64,
    value: serde_json::Value,
) -> Setting {
    Setting {
        name: name.into(),
        context: context.into(),
        context_id,
        lob_value: Some(value),
        value: None,
    }
}

/// Walks one order through Fluent's documented lifecycle over `bus`, the APIs on `scheme`.
async fn lifecycle(bus: Bus, scheme: Api) -> anyhow::Result<()> {
    let running = Running::start_on(bus, scheme).await?;
    let (order_ref, id) = running.order("3", true);
    let steps = [
        ("RECEIVED", ("Open", Some("Pending"), Some("Pending"))),
        ("BOOKED", ("Confirmed", Some("Paid"), Some("Pending"))),
        ("NOT_MAPPED", ("Confirmed", Some("Paid"), Some("Pending"))),
        (
            "AWAITING_COURIER_COLLECTION",
            ("Confirmed", Some("Paid"), Some("Shipped")),
        ),
        ("COMPLETE", ("Complete", Some("Paid"), Some("Shipped"))),
    ];
    for (status, expected) in steps {
        running.send(&order_ref, "3", status).await?;
        running.until_states(&id, expected).await?;
    }
    // Fluent retries the BOOKED webhook late (its answer timed out): same event id, after the
    // order completed. On Kafka it is a new record, which the processor must take for a
    // repeat; JetStream already drops it as a duplicate message id.
    running
        .send_as(
            &order_ref,
            "3",
            "BOOKED",
            &format!("{order_ref}-event-1"),
            &[],
        )
        .await?;
    let skipped = match bus {
        Bus::Kafka => 2,
        Bus::Nats => 1,
    };
    let handled = format!(r#"processor_records_total{{outcome="skipped"}} {skipped}"#);
    running
        .until_metrics("the late retry was never handled", |text| {
            text.contains(&handled)
        })
        .await?;
    running
        .until_states(&id, ("Complete", Some("Paid"), Some("Shipped")))
        .await?;
    // The unmapped status and the repeat were skipped: four updates in all.
    let history = running.sandbox.history(&id);
    ensure!(history.len() == 4, "{history:?}");
    // The processor's metrics tell the same story, with the committed lag of every partition
    // it owns (Kafka: from librdkafka's statistics, every 5 s).
    running
        .until_metrics("metrics never showed 4 updates and 3 lag series", |text| {
            let lag_series = text
                .lines()
                .filter(|line| line.starts_with("processor_committed_lag_records{"))
                .count();
            text.contains("order_status_updates_total 4") && lag_series == 3
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_through_both_processes_drive_commercetools_through_an_order_lifecycle()
-> anyhow::Result<()> {
    lifecycle(Bus::Kafka, Api::Http).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_lifecycle_works_over_nats_jetstream() -> anyhow::Result<()> {
    lifecycle(Bus::Nats, Api::Http).await
}

/// The real APIs are HTTPS-only: the processor binary reaches them through real TLS sessions.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_lifecycle_works_with_the_apis_over_https() -> anyhow::Result<()> {
    lifecycle(Bus::Kafka, Api::Https).await
}

#[tokio::test(flavor = "multi_thread")]
async fn both_processes_handle_retailer_settings_bad_settings_missing_orders_and_flaky_apis()
-> anyhow::Result<()> {
    // Traced (to an endpoint nothing listens on), so records carry trace context.
    let traced = [(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://127.0.0.1:9".to_owned(),
    )];
    let running = Running::start_with(Bus::Kafka, Api::Http, None, &traced).await?;
    let order_setting = sandbox::seed::ORDER_SETTING;
    let shipping_setting = sandbox::seed::SHIPPING_SETTING;
    running.sandbox.put_setting(setting(
        order_setting,
        "RETAILER",
        9,
        json!({"fluent": {"BOOKED": "Complete"}}),
    ));
    running.sandbox.put_setting(setting(
        shipping_setting,
        "RETAILER",
        13,
        json!({"fluent": {"BOOKED": "Sent"}}),
    ));

    // RETAILER 9 overrides the order state only.
    let (overridden, overridden_id) = running.order("9", true);
    running.send(&overridden, "9", "BOOKED").await?;
    running
        .until_states(&overridden_id, ("Complete", Some("Paid"), Some("Pending")))
        .await?;

    // Tokens revoked, a concurrent writer, and bursts of 503 and 429 on both APIs.
    let (flaky, flaky_id) = running.order("3", true);
    running.sandbox.revoke_tokens();
    running.sandbox.force_conflicts(&flaky_id, 2);
    let burst = |status| Fault {
        fail_next: 3,
        status: Some(status),
        ..Fault::default()
    };
    running
        .sandbox
        .set_fault(Endpoint::FluentGraphql, burst(503));
    running.sandbox.set_fault(Endpoint::CtGraphql, burst(429));
    running.send(&flaky, "3", "BOOKED").await?;
    running
        .until_states(&flaky_id, ("Confirmed", Some("Paid"), Some("Pending")))
        .await?;

    // A bad RETAILER 13 setting and an order commercetools lacks: both to the DLQ, explained.
    let (misconfigured, misconfigured_id) = running.order("13", true);
    running.send(&misconfigured, "13", "BOOKED").await?;
    let (missing, _) = running.order("3", false);
    running.send(&missing, "3", "BOOKED").await?;
    let letters = e2e_tests::kafka::read_topic(&kafka_brokers(), &running.dlq_topic, 2)?;
    let error_of = |key: &str| {
        letters
            .iter()
            .find(|letter| letter.key.as_ref() == key.as_bytes())
            .and_then(|letter| letter.headers.get_str("dlq-error").map(str::to_owned))
            .with_context(|| format!("no dead letter for {key}"))
    };
    let bad = error_of(&misconfigured)?;
    ensure!(
        bad.contains(shipping_setting) && bad.contains("`Sent`"),
        "{bad}"
    );
    let absent = error_of(&missing)?;
    ensure!(absent.contains("commercetools has no order"), "{absent}");
    // A dead letter keeps the webhook's trace context: its trace shows where it ended.
    for letter in &letters {
        let traceparent = letter.headers.get_str("traceparent").unwrap_or_default();
        ensure!(
            traceparent.len() == 55 && traceparent.starts_with("00-"),
            "a dead letter without the trace context: {traceparent:?}"
        );
    }
    ensure!(running.sandbox.history(&misconfigured_id).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_logged_at_debug_level_shows_no_secret_token_or_signature() -> anyhow::Result<()> {
    let logs = tempfile::tempdir()?;
    let running = Running::start_with(Bus::Kafka, Api::Http, Some(logs.path()), &[]).await?;
    let (order_ref, id) = running.order("3", true);
    for (status, expected) in [
        ("RECEIVED", ("Open", Some("Pending"), Some("Pending"))),
        ("BOOKED", ("Confirmed", Some("Paid"), Some("Pending"))),
    ] {
        running.send(&order_ref, "3", status).await?;
        running.until_states(&id, expected).await?;
    }
    let config = running.sandbox.config().clone();
    let mut secrets = vec![
        String::from_utf8(SECRET.to_vec())?,
        e2e_tests::webhook::hmac_secret_setting(SECRET),
        config.fluent_client_secret.clone(),
        config.fluent_password.clone(),
        config.ct_client_secret,
    ];
    let tokens = running.sandbox.issued_tokens();
    ensure!(tokens.len() >= 2, "both APIs issued tokens: {tokens:?}");
    secrets.extend(tokens);
    let signatures = running
        .signatures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    ensure!(signatures.len() == 2, "{signatures:?}");
    // A signature's base64 part: the header value without its `v1,`.
    secrets.extend(
        signatures
            .iter()
            .map(|s| s.trim_start_matches("v1,").to_owned()),
    );
    drop(running);
    for name in ["ingest.log", "processor.log"] {
        let text = std::fs::read_to_string(logs.path().join(name))?;
        ensure!(
            text.contains("DEBUG") && text.contains(&order_ref),
            "{name} has no debug lines about the order: the check would be empty"
        );
        for secret in &secrets {
            ensure!(
                !text.contains(secret.as_str()),
                "{name} shows a secret: {secret}"
            );
        }
    }
    Ok(())
}

/// One webhook's trace as a collector receives it from both processes: one trace id from the
/// gateway's request to the commercetools call, Fluent's own `traceparent` only linked, and the
/// context passed on to both APIs.
async fn one_trace_follows_a_webhook_through_both_processes(
    transport: Transport,
) -> anyhow::Result<()> {
    let receiver = Receiver::start(transport).await?;
    let logs = tempfile::tempdir()?;
    let mut env = receiver.env();
    env.push(("LOG_FORMAT", "json".into()));
    let mut running = Running::start_with(Bus::Kafka, Api::Http, Some(logs.path()), &env).await?;
    let (order_ref, id) = running.order("3", true);
    // commercetools unavailable once: the processor comes back, and the trace shows it.
    running.sandbox.set_fault(
        Endpoint::CtGraphql,
        Fault {
            fail_next: 1,
            status: Some(503),
            ..Fault::default()
        },
    );
    let fluent_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let inbound = format!("00-{fluent_trace}-00f067aa0ba902b7-01");
    running
        .send_as(
            &order_ref,
            "3",
            "RECEIVED",
            &format!("{order_ref}-event-0"),
            &[("traceparent", &inbound)],
        )
        .await?;
    running
        .until_states(&id, ("Open", Some("Pending"), Some("Pending")))
        .await?;
    // The metrics say what happened: one webhook accepted, one record done after one wait (or
    // retry) for commercetools, none dead-lettered.
    running
        .until_metrics("the processor's counts", |text| {
            text.contains(r#"processor_records_total{outcome="done"} 1"#)
                && text.contains(
                    r#"processor_handler_records_total{handler="OrderStatusUpdate",outcome="done"} 1"#,
                )
                && text.contains(r#"processor_records_total{outcome="dead_lettered"} 0"#)
                && (text.contains(r#"processor_records_total{outcome="waited"} 1"#)
                    || text.contains(r#"processor_records_total{outcome="retried"} 1"#))
        })
        .await?;
    let gateway = running.webhook.replace("/webhooks/fluent", "/metrics");
    let text = running.client.get(&gateway).send().await?.text().await?;
    ensure!(
        text.contains(r#"ingest_requests_total{outcome="accepted"} 1"#),
        "{text}"
    );
    // SIGTERM: each process flushes its spans before it exits.
    running.stop()?;
    let spans = receiver.spans();
    let find = |service: &str, kind: i32, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.kind == kind && s.name.starts_with(name))
            .cloned()
            .with_context(|| format!("no {service} span {name:?} of kind {kind} in {spans:#?}"))
    };
    let server = find("ingest", 2, "POST /webhooks/fluent")?;
    let send = find("ingest", 4, "send ")?;
    let process = find("processor", 5, "process ")?;
    // The last handler call (after the retry), and the process span it ran in.
    let handle = spans
        .iter()
        .rev()
        .find(|s| s.service == "processor" && s.name.starts_with("handle "))
        .cloned()
        .with_context(|| format!("no handle span in {spans:#?}"))?;
    let process = spans
        .iter()
        .find(|s| s.span_id == handle.parent_span_id)
        .cloned()
        .unwrap_or(process);
    ensure!(server.parent_span_id.is_empty(), "{server:?}");
    ensure!(
        server.trace_id != fluent_trace,
        "Fluent's trace became ours"
    );
    ensure!(
        server
            .links
            .contains(&(fluent_trace.to_owned(), "00f067aa0ba902b7".to_owned())),
        "Fluent's context is not linked: {server:?}"
    );
    ensure!(server.attributes.get("http.route").map(String::as_str) == Some("/webhooks/fluent"));
    for (child, parent) in [(&send, &server), (&process, &send), (&handle, &process)] {
        ensure!(
            child.trace_id == server.trace_id && child.parent_span_id == parent.span_id,
            "{} is not a child of {}: {child:?} {parent:?}",
            child.name,
            parent.name
        );
    }
    for (span, key, value) in [
        (&send, "messaging.system", "kafka"),
        (&send, "messaging.operation.type", "send"),
        (&send, "messaging.kafka.message.key", order_ref.as_str()),
        (&process, "messaging.operation.type", "process"),
        (&process, "messaging.system", "kafka"),
        (&process, "messaging.kafka.message.key", order_ref.as_str()),
    ] {
        ensure!(
            span.attributes.get(key).map(String::as_str) == Some(value),
            "{}: {key} is not {value}: {:?}",
            span.name,
            span.attributes
        );
    }
    ensure!(send.attributes["messaging.destination.name"].starts_with("pipeline"));
    ensure!(process.attributes["messaging.consumer.group.name"].starts_with("pipeline-group"));
    ensure!(
        spans.iter().any(|s| s.trace_id == server.trace_id
            && s.name.starts_with("process ")
            && s.events.iter().any(|e| e == "wait" || e == "retry")),
        "no process span of the trace shows the retry: {spans:#?}"
    );
    for key in [
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
    ] {
        ensure!(process.attributes.contains_key(key), "{key}: {process:?}");
    }
    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == 3 && s.trace_id == server.trace_id)
        .collect();
    for api in ["fluent", "commercetools"] {
        ensure!(
            calls.iter().any(
                |call| call.attributes.get("api").map(String::as_str) == Some(api)
                    && call.parent_span_id == handle.span_id
            ),
            "no {api} client span under the handler: {calls:#?}"
        );
        let endpoint = match api {
            "fluent" => Endpoint::FluentGraphql,
            _ => Endpoint::CtGraphql,
        };
        let seen = running.sandbox.traceparents(endpoint);
        ensure!(
            seen.iter().any(|value| value.contains(&server.trace_id)),
            "{api} never saw the trace: {seen:?}"
        );
    }
    // LOG_FORMAT=json: one object a line, those logged inside the trace's spans carrying its
    // ids, so logs and traces join.
    for name in ["ingest.log", "processor.log"] {
        let text = std::fs::read_to_string(logs.path().join(name))?;
        let lines = text
            .lines()
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{name} is not JSON lines:\n{text}"))?;
        let span_ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        ensure!(
            lines
                .iter()
                .any(|line| line["trace_id"] == server.trace_id.as_str()
                    && line["span_id"]
                        .as_str()
                        .is_some_and(|id| span_ids.contains(&id))),
            "{name}: no line with the trace's ids:\n{text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_running_binaries_export() -> anyhow::Result<()> {
    // A webhook through both processes, so that every family has its series.
    let running = Running::start_on(Bus::Kafka, Api::Http).await?;
    let (order_ref, id) = running.order("1", true);
    running.send(&order_ref, "1", "BOOKED").await?;
    running
        .until_states(&id, ("Confirmed", Some("Paid"), Some("Pending")))
        .await?;
    let gateway = running.webhook.replace("/webhooks/fluent", "/metrics");
    let mut scraped = Vec::new();
    for url in [&gateway, &running.metrics] {
        scraped.push(running.client.get(url).send().await?.text().await?);
    }
    crate::deploy::check_dashboard(&scraped)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_webhook_over_otlp_http() -> anyhow::Result<()> {
    one_trace_follows_a_webhook_through_both_processes(Transport::Http).await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_webhook_over_otlp_grpc() -> anyhow::Result<()> {
    one_trace_follows_a_webhook_through_both_processes(Transport::Grpc).await
}
