//! The soak's world: the sandbox APIs in this process with faults injected, two `ingest`
//! gateways and three `processor`s as real processes on one Kafka topic and consumer group (or
//! one JetStream stream, every processor with the default ownership of all partitions), and
//! the chaos that kills, stops and restarts processors.

use std::time::Duration;

use anyhow::ensure;
use common::config::Config;
use sandbox::{Endpoint, Fault, FaultBody, Sandbox, SandboxConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bus::{Broker, PARTITIONS, SoakBus};
use crate::process::{self, Process, free_port};
use crate::{kafka_brokers, nats_url, unique};

/// The HMAC secret the gateways verify and the load signs with.
pub(super) const SECRET: &[u8] = b"soak-secret";

/// What the processors log to their files: warnings, and every assignment change (the
/// report on a stuck partition quotes them).
const PROCESSOR_LOG: &str = "warn,common::bus=debug,processor_engine::run=debug";

/// The processors' Kafka session timeout: a killed member's partitions move after it.
const KAFKA_SESSION: Duration = Duration::from_secs(6);

/// Lines of each processor log a failed soak quotes, the last ones.
const QUOTED_LINES: usize = 12;

/// A processor slot: its process while it runs, its settings, and how often it started.
struct Slot {
    process: Option<Process>,
    env: Vec<(&'static str, String)>,
    starts: usize,
}

/// Everything the soak runs against.
pub(super) struct World {
    pub(super) sandbox: Sandbox,
    stop_sandbox: CancellationToken,
    pub(super) gateways: Vec<String>,
    _ingest: Vec<Process>,
    slots: Vec<Slot>,
    pub(super) broker: Broker,
    /// One log file per processor start.
    logs: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_sandbox.cancel();
    }
}

impl World {
    /// Starts the sandbox (with `fault_rate` of API calls failing, in every body shape), the
    /// gateways and the processors on `bus`; `marker` configures the sync marker.
    pub(super) async fn start(fault_rate: f64, marker: bool, bus: SoakBus) -> anyhow::Result<Self> {
        let sandbox = Sandbox::new(SandboxConfig::default());
        sandbox.put_account_settings(&sandbox::seed::documented_mapping());
        for endpoint in [Endpoint::FluentGraphql, Endpoint::CtGraphql] {
            sandbox.set_fault(
                endpoint,
                Fault {
                    error_rate: fault_rate,
                    body: FaultBody::Any,
                    ..Fault::default()
                },
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let stop_sandbox = CancellationToken::new();
        tokio::spawn(sandbox.clone().serve(listener, stop_sandbox.clone()));

        let (bus_env, processor_env) = bus_settings(bus);
        let mut gateways = Vec::new();
        let mut ingest = Vec::new();
        for _ in 0..2 {
            let port = free_port()?;
            let mut env = bus_env.clone();
            env.extend([
                ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
                (
                    "WEBHOOK_HMAC_SECRETS",
                    crate::webhook::hmac_secret_setting(SECRET),
                ),
            ]);
            if bus == SoakBus::Kafka {
                env.extend([
                    ("KAFKA_CREATE_TOPICS", "true".into()),
                    ("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string()),
                    ("KAFKA_TOPIC_REPLICATION", "1".into()),
                    // One record per batch: tansu 0.6 skips the rest of a batch when a
                    // consumer resumes inside it (docs/testing.md), and restarts after kills resume
                    // anywhere.
                    ("KAFKA_PROPERTIES", "batch.num.messages=1".into()),
                ]);
            }
            ingest.push(process::spawn(&process::workspace_binary("ingest")?, &env)?);
            let base = format!("http://127.0.0.1:{port}");
            wait_ready(&format!("{base}/health/ready")).await?;
            gateways.push(format!("{base}/webhooks/fluent"));
        }
        let mut slots = Vec::new();
        for _ in 0..3 {
            let mut env = bus_env.clone();
            env.extend(sandbox.config().client_env(&api));
            env.extend(processor_env.iter().cloned());
            env.extend([
                ("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()?)),
                ("BUS_DRAIN_TIMEOUT_MS", "5000".into()),
                ("PROCESSOR_RETRY_BASE_MS", "10".into()),
                ("PROCESSOR_RETRY_CAP_MS", "500".into()),
            ]);
            if marker {
                env.push(("CTP_SYNC_MARKER_FIELD", "fluentSyncPosition".into()));
            }
            env.push(("RUST_LOG", PROCESSOR_LOG.into()));
            slots.push(Slot {
                process: None,
                env,
                starts: 0,
            });
        }
        let config = Config::from_sources(
            &bus_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            None,
        )?;
        let mut world = Self {
            sandbox,
            stop_sandbox,
            gateways,
            _ingest: ingest,
            slots,
            broker: Broker::new(&config.bus, bus),
            logs: tempfile::Builder::new().prefix("soak-logs-").tempdir()?,
        };
        for slot in 0..world.slots.len() {
            world.start_processor(slot)?;
        }
        Ok(world)
    }

    /// Number of processor slots.
    pub(super) fn processors(&self) -> usize {
        self.slots.len()
    }

    /// Starts the processor of `slot` (it joins the group), logging to a file of its own.
    pub(super) fn start_processor(&mut self, slot: usize) -> anyhow::Result<()> {
        let state = &mut self.slots[slot];
        state.starts += 1;
        let log = self
            .logs
            .path()
            .join(format!("processor-{slot}-{:02}.log", state.starts));
        state.process = Some(process::spawn_logged(
            &process::workspace_binary("processor")?,
            &state.env,
            &log,
        )?);
        Ok(())
    }

    /// The last errors, warnings and assignment changes of each processor start, for the
    /// report of a failed soak.
    pub(super) fn processor_logs(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(self.logs.path())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut lines = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let quoted: Vec<&str> = text
                .lines()
                .filter(|line| {
                    ["ERROR", "WARN", "assigned", "revoked", "lost"]
                        .iter()
                        .any(|word| line.contains(word))
                })
                .collect();
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            lines.push(format!(
                "{name} ({} lines quoted of the last):",
                quoted.len().min(QUOTED_LINES)
            ));
            let skip = quoted.len().saturating_sub(QUOTED_LINES);
            lines.extend(quoted[skip..].iter().map(|line| format!("    {line}")));
        }
        lines
    }

    /// The engine gauges and counters of each running processor (`/metrics`), for a report
    /// that has to explain a stuck partition.
    pub(super) async fn processor_metrics(&self) -> Vec<String> {
        let client = reqwest::Client::new();
        let mut lines = Vec::new();
        for (slot, state) in self.slots.iter().enumerate() {
            let Some((_, listen)) = state.env.iter().find(|(key, _)| *key == "METRICS_LISTEN")
            else {
                continue;
            };
            let running = state.process.is_some();
            let text = match client.get(format!("http://{listen}/metrics")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(error) => format!("unreachable: {error}"),
            };
            let interesting: Vec<&str> = text
                .lines()
                .filter(|line| {
                    !line.starts_with('#')
                        && (line.starts_with("processor_records_total")
                            || line.starts_with("processor_fetch_paused")
                            || line.starts_with("processor_buffered")
                            || line.starts_with("processor_in_flight")
                            || line.starts_with("processor_assigned")
                            || line.starts_with("processor_committed_lag"))
                })
                .collect();
            lines.push(format!(
                "processor {slot} (running: {running}): {}",
                interesting.join(" | ")
            ));
        }
        lines
    }

    /// How long after a SIGKILL the slot may start again. On Kafka, not before the killed
    /// member's session ran out: tansu 0.6 takes a member that missed its session out of the
    /// group without a new generation, and its partitions stay assigned to it until the next
    /// join or leave; a restart before that joins a group that still holds the dead member, so
    /// the assignment it makes can give the dead member partitions nobody then reads
    /// (docs/testing.md). Kafka waits for every member to rejoin and drops those that do not.
    pub(super) fn restart_after_kill(&self) -> Duration {
        match self.broker {
            Broker::Kafka(_) => KAFKA_SESSION + Duration::from_secs(1),
            Broker::Nats(_) => Duration::ZERO,
        }
    }

    /// Stops the processor of `slot`: SIGKILL as a crash, or SIGTERM as a graceful leave.
    /// False when it was not running.
    pub(super) fn stop_processor(&mut self, slot: usize, crash: bool) -> anyhow::Result<bool> {
        let Some(process) = self.slots[slot].process.take() else {
            return Ok(false);
        };
        if crash {
            process.kill()?;
        } else {
            process.terminate()?;
        }
        Ok(true)
    }
}

/// The settings every process gets for `bus` (unique names), and those only processors get.
type Settings = Vec<(&'static str, String)>;

fn bus_settings(bus: SoakBus) -> (Settings, Settings) {
    match bus {
        SoakBus::Kafka => {
            let topic = unique("soak");
            (
                vec![
                    ("BUS", "kafka".into()),
                    ("KAFKA_BROKERS", kafka_brokers()),
                    ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
                    ("KAFKA_TOPIC", topic),
                    ("KAFKA_GROUP_ID", unique("soak-group")),
                    ("RUST_LOG", "error".into()),
                ],
                // A killed member is noticed after its session: keep recovery in seconds.
                vec![(
                    "KAFKA_PROPERTIES",
                    format!(
                        "session.timeout.ms={},heartbeat.interval.ms=500",
                        KAFKA_SESSION.as_millis()
                    ),
                )],
            )
        }
        SoakBus::Nats => (
            vec![
                ("BUS", "nats".into()),
                ("NATS_URL", nats_url()),
                ("NATS_STREAM", unique("SOAK")),
                ("NATS_SUBJECT_PREFIX", unique("soak")),
                ("NATS_PARTITIONS", PARTITIONS.to_string()),
                ("NATS_CONSUMER_PREFIX", unique("soak")),
                ("RUST_LOG", "error".into()),
            ],
            // A killed instance's partitions move after the pin timeout, and what it held
            // comes back after ack_wait: keep both in seconds.
            vec![
                ("NATS_PIN_TIMEOUT_SECS", "2".into()),
                ("NATS_ACK_WAIT_SECS", "2".into()),
                ("NATS_STANDBY_DELAY_SECS", "1".into()),
            ],
        ),
    }
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + crate::DEADLINE;
    while !client
        .get(url)
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        ensure!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
