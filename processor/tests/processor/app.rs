//! The processor application over real HTTP: metrics, readiness, and the stall watchdog.

use std::time::Duration;

use common::bus::memory::MemoryBus;
use common::bus::{Consumer, Headers, OutboundRecord, Publisher, headers};
use processor::App;
use processor_engine::{Context, Engine, EngineConfig, Handler, Outcome, Record, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Finishes every record at once.
struct Instant0;

#[async_trait::async_trait]
impl Handler for Instant0 {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], _context: &Context) -> Outcome {
        Outcome::Done
    }
}

/// Finishes every record and counts them in a metric of its own.
#[derive(Default)]
struct Counting {
    handled: prometheus_client::metrics::counter::Counter,
}

#[async_trait::async_trait]
impl Handler for Counting {
    fn names(&self) -> Vec<String> {
        vec!["test".into(), "other".into()]
    }

    fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        metrics.register(
            "counting_handled",
            "records the test handler handled",
            self.handled.clone(),
        );
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        self.handled.inc_by(records.len() as u64);
        Outcome::Done
    }
}

/// Never finishes until shutdown: a hung downstream call.
struct Hung;

#[async_trait::async_trait]
impl Handler for Hung {
    fn names(&self) -> Vec<String> {
        vec!["test".into()]
    }

    async fn handle(&self, _records: &[Record], context: &Context) -> Outcome {
        context.cancel.cancelled().await;
        Outcome::Retry {
            reason: "shutting down".into(),
            delay: None,
        }
    }
}

/// A running processor app on a real socket.
struct Running {
    base: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), processor::StartError>>,
}

async fn start(handler: impl Handler, records: usize, config: EngineConfig) -> Running {
    let bus = MemoryBus::new(2);
    for i in 0..records {
        bus.publish(OutboundRecord {
            key: format!("k{}", i % 5).into(),
            payload: format!(r#"{{"i":{i}}}"#).into(),
            headers: Headers::new().with(headers::EVENT_NAME, "test"),
        });
    }
    let engine = Engine::new(
        Consumer::Memory(bus.consumer("group")),
        Publisher::Memory(bus.clone()),
        Registry::new().with(handler),
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(App::with_engine(engine).run(listener, shutdown.clone()));
    Running {
        base,
        shutdown,
        task,
    }
}

/// GETs `path` until `accept(status, body)` holds, or fails at the deadline with the last
/// answer.
async fn poll_until(url: &str, accept: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = match reqwest::get(url).await {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap()),
            Err(error) => (0, error.to_string()),
        };
        if accept(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered as expected; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serves_readiness_and_outcome_counts_and_lag_per_partition() {
    let app = start(Instant0, 10, EngineConfig::default()).await;
    let ready = poll_until(&format!("{}/health/ready", app.base), |s, _| s == 200).await;
    assert!(ready.contains("ready"), "{ready}");
    let metrics = poll_until(&format!("{}/metrics", app.base), |_, body| {
        body.contains(r#"processor_records_total{outcome="done"} 10"#)
    })
    .await;
    for expected in [
        r#"processor_records_total{outcome="dead_lettered"} 0"#,
        r#"processor_handler_records_total{handler="Instant0",outcome="done"} 10"#,
        "processor_in_flight 0",
        "processor_assigned_partitions 2",
        r#"processor_committed_lag_records{partition="0"}"#,
        r#"processor_committed_lag_records{partition="1"}"#,
        "processor_handler_duration_seconds_count 10",
        "processor_oldest_unfinished_record_age_seconds ",
        concat!(
            r#"processor_build_info{version=""#,
            env!("CARGO_PKG_VERSION"),
            r#""} 1"#
        ),
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in:\n{metrics}"
        );
    }
    let live = reqwest::get(format!("{}/health/live", app.base))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    app.shutdown.cancel();
    app.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_handler_registers_its_own_metrics_once_whatever_its_names() {
    let running = start(Counting::default(), 7, EngineConfig::default()).await;
    let text = poll_until(&format!("{}/metrics", running.base), |status, body| {
        status == 200 && body.contains("counting_handled_total 7")
    })
    .await;
    assert_eq!(
        text.matches("# TYPE counting_handled counter").count(),
        1,
        "registered more than once:\n{text}"
    );
    running.shutdown.cancel();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_processor_whose_handlers_claim_one_name_twice_refuses_to_start() {
    let env = [("BUS".to_owned(), "memory".to_owned())].into();
    let config = common::config::Config::from_sources(&env, None).unwrap();
    let registry = Registry::new().with(Counting::default()).with(Instant0);
    assert_eq!(registry.claimed_twice(), ["test"]);
    let error = App::build(&config, &MemoryBus::default(), registry)
        .await
        .err()
        .expect("two handlers of \"test\" must not start");
    assert!(error.to_string().contains("test"), "{error}");
}

#[tokio::test]
async fn handler_calls_that_never_finish_make_the_processor_not_live() {
    let config = EngineConfig {
        // Long enough that the first probe, sent right after start, is never late on a busy
        // machine; short enough to keep the test quick.
        stall_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(1),
        ..EngineConfig::default()
    };
    let app = start(Hung, 3, config).await;
    let url = format!("{}/health/live", app.base);
    let first = reqwest::get(&url).await.unwrap();
    assert_eq!(first.status(), 200, "live while the stall is young");
    let body = poll_until(&url, |status, _| status == 503).await;
    assert!(body.contains("none has finished"), "{body}");
    let ready = reqwest::get(format!("{}/health/ready", app.base))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "a stalled processor is not ready either"
    );
    app.shutdown.cancel();
    app.task.await.unwrap().unwrap();
}
