//! The whole pipeline in this process: the sandbox APIs, the gateway and the processor on
//! local ports, over the in-memory bus (or the broker the environment names), configured as an
//! operator would configure the binaries: through the same validated configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::bus::memory::MemoryBus;
use common::config::{BusKind, Config, Needs};
use order_status::OrderStatusUpdate;
use processor_engine::{Registry, Stats};
use sandbox::{Sandbox, SandboxConfig};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::DemoError;

/// What the demo starts, and where it listens.
pub struct Stack {
    /// Both simulated APIs (read for the results, faults injected here).
    pub sandbox: Sandbox,
    /// The sandbox's base URL (its admin API is under `/admin`).
    pub sandbox_url: String,
    /// Where Fluent's webhooks go.
    pub webhook_url: String,
    /// The gateway's metrics.
    pub ingest_metrics_url: String,
    /// The processor's metrics.
    pub processor_metrics_url: String,
    /// The processor engine's counters.
    pub stats: Arc<Stats>,
    /// Which bus carries the records (`memory`, or the broker's description).
    pub bus: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<Result<(), DemoError>>>,
}

/// How the stack is set up: the environment it reads (the process's, so every setting of the
/// binaries works here too), the webhook signing key, and the mapping seeded into Fluent.
pub struct Setup<'a> {
    /// The environment, as the binaries would read it.
    pub env: HashMap<String, String>,
    /// Fluent's public key, base64 DER, as the gateway's `FLUENT_WEBHOOK_PUBLIC_KEYS`.
    pub public_key: String,
    /// The three mapping settings seeded into the Fluent sandbox.
    pub mapping: &'a [(&'static str, Value)],
    /// A name no earlier run used, for topics, streams and groups on a real broker.
    pub run_id: String,
}

impl Stack {
    /// Starts the sandbox, then the gateway and the processor configured to use it.
    pub async fn start(setup: Setup<'_>) -> Result<Self, DemoError> {
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let sandbox = Sandbox::new(SandboxConfig::default());
        sandbox.put_account_settings(setup.mapping);
        let (listener, sandbox_addr) = bind().await?;
        let sandbox_url = format!("http://{sandbox_addr}");
        tasks.push(tokio::spawn({
            let sandbox = sandbox.clone();
            let shutdown = shutdown.clone();
            async move { Ok(sandbox.serve(listener, shutdown).await?) }
        }));

        let env = environment(setup, &sandbox, &sandbox_url);
        let config = Config::from_sources_for(&env, None, Needs::ORDER_STATUS_APIS)?;
        // Trimmed as groups commit, so `--serve` can run for days.
        let memory = MemoryBus::trimming(12);
        let bus = match config.bus.kind {
            BusKind::Memory => "the in-memory bus".to_owned(),
            BusKind::Kafka => format!(
                "Kafka at {} (topic {})",
                config.bus.kafka.brokers.join(","),
                config.bus.kafka.topic
            ),
            BusKind::Nats => format!("NATS JetStream (stream {})", config.bus.nats.stream),
        };

        let gateway = ingest::App::build(&config, &memory).await?;
        let (listener, gateway_addr) = bind().await?;
        tasks.push(tokio::spawn({
            let shutdown = shutdown.clone();
            async move { Ok(gateway.run(listener, shutdown).await?) }
        }));

        let (handler, _metrics) = OrderStatusUpdate::from_config(&config)?;
        let processor =
            processor::App::build(&config, &memory, Registry::new().with(handler)).await?;
        let stats = processor.stats();
        let (listener, processor_addr) = bind().await?;
        tasks.push(tokio::spawn({
            let shutdown = shutdown.clone();
            async move { Ok(processor.run(listener, shutdown).await?) }
        }));

        Ok(Self {
            sandbox,
            sandbox_url,
            webhook_url: format!("http://{gateway_addr}/webhooks/fluent"),
            ingest_metrics_url: format!("http://{gateway_addr}/metrics"),
            processor_metrics_url: format!("http://{processor_addr}/metrics"),
            stats,
            bus,
            shutdown,
            tasks,
        })
    }

    /// A token that stops everything when cancelled (Ctrl-C in `--serve`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops everything at once (the gateway and the processor each drain within their
    /// deadlines) and waits for every part to end.
    pub async fn stop(self) -> Result<(), DemoError> {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await
                .map_err(|error| DemoError::Task(error.to_string()))??;
        }
        Ok(())
    }
}

async fn bind() -> Result<(TcpListener, SocketAddr), DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// The binaries' settings for this run: the process environment, the sandbox's URLs and
/// credentials, the signing key, a bus (in memory unless `KAFKA_BROKERS` or `BUS=nats` names
/// a real one, then with names of this run's own), and quick retries so faults are retried
/// within the demo's minute.
fn environment(setup: Setup<'_>, sandbox: &Sandbox, base: &str) -> HashMap<String, String> {
    let mut env = setup.env;
    let run = setup.run_id;
    let nats = env
        .get("BUS")
        .is_some_and(|bus| bus.eq_ignore_ascii_case("nats"));
    let kafka = !nats
        && env
            .get("KAFKA_BROKERS")
            .is_some_and(|brokers| !brokers.is_empty());
    for (key, value) in sandbox.config().client_env(base) {
        env.insert(key.to_owned(), value);
    }
    env.insert("FLUENT_WEBHOOK_PUBLIC_KEYS".into(), setup.public_key);
    env.insert("WEBHOOK_HMAC_SECRETS".into(), String::new());
    let mut defaults = vec![
        ("RUST_LOG", "error".to_owned()),
        ("PROCESSOR_RETRY_BASE_MS", "20".to_owned()),
        ("PROCESSOR_RETRY_CAP_MS", "500".to_owned()),
        ("PROCESSOR_MAX_WAIT_SECS", "60".to_owned()),
    ];
    if nats {
        defaults.extend([
            ("NATS_STREAM", format!("DEMO_{run}")),
            ("NATS_SUBJECT_PREFIX", format!("demo.{run}")),
            ("NATS_CONSUMER_PREFIX", format!("demo-{run}")),
        ]);
    } else if kafka {
        defaults.extend([
            ("BUS", "kafka".to_owned()),
            ("KAFKA_TOPIC", format!("demo-{run}")),
            ("KAFKA_DLQ_TOPIC", format!("demo-{run}.dlq")),
            ("KAFKA_GROUP_ID", format!("demo-{run}")),
            ("KAFKA_CREATE_TOPICS", "true".to_owned()),
        ]);
    } else {
        env.insert("BUS".into(), "memory".into());
    }
    for (key, value) in defaults {
        env.entry(key.to_owned()).or_insert(value);
    }
    env
}
