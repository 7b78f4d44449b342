//! The `ingest` binary on the real brokers under hostile input and a broker outage: what it
//! refuses never reaches the topic or stream (counted on the broker), and every webhook it
//! answered 200 is there after the broker froze and came back.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::bus::headers;
use e2e_tests::process::{Process, free_port, spawn, workspace_binary};
use e2e_tests::webhook::{hmac_secret_setting, order_status_event, signed};
use e2e_tests::{DEADLINE, NatsServer, unique};

const SECRET: &[u8] = b"gateway-e2e-secret";

/// Where the gateway publishes.
pub(crate) enum Target {
    Kafka {
        brokers: String,
        topic: String,
    },
    Nats {
        url: String,
        stream: String,
        prefix: String,
    },
}

impl Target {
    pub(crate) fn kafka(brokers: String) -> Self {
        Self::Kafka {
            brokers,
            topic: unique("gateway"),
        }
    }

    pub(crate) fn nats(url: String) -> Self {
        Self::Nats {
            url,
            stream: unique("GATEWAY"),
            prefix: unique("gateway"),
        }
    }

    /// The bus configuration the gateway gets.
    fn bus_config(&self) -> anyhow::Result<common::config::BusConfig> {
        let env = self
            .env()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        Ok(common::config::Config::from_sources(&env, None)?.bus)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Kafka { brokers, topic } => vec![
                ("BUS", "kafka".into()),
                ("KAFKA_BROKERS", brokers.clone()),
                ("KAFKA_TOPIC", topic.clone()),
                ("KAFKA_CREATE_TOPICS", "true".into()),
                ("KAFKA_TOPIC_PARTITIONS", "1".into()),
                ("KAFKA_TOPIC_REPLICATION", "1".into()),
            ],
            Self::Nats {
                url,
                stream,
                prefix,
            } => vec![
                ("BUS", "nats".into()),
                ("NATS_URL", url.clone()),
                ("NATS_STREAM", stream.clone()),
                ("NATS_SUBJECT_PREFIX", prefix.clone()),
                ("NATS_PARTITIONS", "1".into()),
            ],
        }
    }

    /// The event ids on the topic or stream, once they include `expected` or the deadline
    /// passed.
    async fn stored_ids(&self, expected: &BTreeSet<String>) -> anyhow::Result<BTreeSet<String>> {
        let until = Instant::now() + DEADLINE;
        loop {
            let stored = self.read_ids().await?;
            if expected.is_subset(&stored) || Instant::now() > until {
                return Ok(stored);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The event ids of every record there.
    async fn read_ids(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .read_records()
            .await?
            .iter()
            .map(|record| {
                record
                    .headers
                    .get_str(headers::EVENT_ID)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect())
    }

    /// Every record there.
    async fn read_records(&self) -> anyhow::Result<Vec<common::bus::OutboundRecord>> {
        Ok(match self {
            Self::Kafka { brokers, topic } => {
                let (brokers, topic) = (brokers.clone(), topic.clone());
                tokio::task::spawn_blocking(move || {
                    // Everything there, records stored after a 503 included.
                    e2e_tests::kafka::read_until_quiet(&brokers, &topic, Duration::from_secs(2))
                })
                .await??
            }
            Self::Nats { .. } => {
                e2e_tests::nats::read_subject(&self.bus_config()?.nats, "0").await?
            }
        })
    }

    /// `record` read as a CloudEvent by its binding's rules (binary content mode): the
    /// attributes from the `ce_` headers (Kafka) or the percent-encoded `ce-` ones (NATS),
    /// `datacontenttype` from `content-type` on Kafka, the data the value.
    fn cloudevent(
        &self,
        record: &common::bus::OutboundRecord,
    ) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let prefix = match self {
            Self::Kafka { .. } => "ce_",
            Self::Nats { .. } => "ce-",
        };
        let mut attributes = std::collections::BTreeMap::new();
        for (name, value) in record.headers.iter() {
            let value = std::str::from_utf8(value)?;
            if let Some(attribute) = name.strip_prefix(prefix) {
                let value = match self {
                    Self::Kafka { .. } => value.to_owned(),
                    Self::Nats { .. } => percent_decode(value)?,
                };
                attributes.insert(attribute.to_owned(), value);
            } else if name == "content-type" && matches!(self, Self::Kafka { .. }) {
                attributes.insert("datacontenttype".into(), value.to_owned());
            }
        }
        for required in ["specversion", "id", "source", "type"] {
            ensure!(
                attributes.contains_key(required),
                "not a CloudEvent: no {required} in {attributes:?}"
            );
        }
        Ok(attributes)
    }
}

/// `%XX` escapes decoded, as the HTTP (and NATS) binding encodes header values.
fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).context("a cut % escape")?;
            out.push(u8::from_str_radix(hex, 16)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

/// An `ingest` process publishing to `target`.
pub(crate) struct Gateway {
    url: String,
    client: reqwest::Client,
    process: Process,
}

impl Gateway {
    pub(crate) async fn start(
        target: &Target,
        extra: &[(&'static str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_with(target, extra, None).await
    }

    /// [`Gateway::start`], its output written to `log` when given.
    pub(crate) async fn start_with(
        target: &Target,
        extra: &[(&'static str, &str)],
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut env = target.env();
        env.push(("INGEST_LISTEN", format!("127.0.0.1:{port}")));
        env.push(("WEBHOOK_HMAC_SECRETS", hmac_secret_setting(SECRET)));
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let binary = workspace_binary("ingest")?;
        let process = match log {
            Some(log) => e2e_tests::process::spawn_logged(&binary, &env, log)?,
            None => spawn(&binary, &env)?,
        };
        let gateway = Self {
            url: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            process,
        };
        gateway.until_status("/health/ready", 200).await?;
        Ok(gateway)
    }

    async fn until_status(&self, path: &str, status: u16) -> anyhow::Result<()> {
        let until = Instant::now() + DEADLINE;
        loop {
            let answer = self.client.get(format!("{}{path}", self.url)).send().await;
            if answer.is_ok_and(|r| r.status() == status) {
                return Ok(());
            }
            ensure!(Instant::now() < until, "{path} never answered {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts `body` with `headers`; the status, the `error` code and `Retry-After`.
    pub(crate) async fn post(
        &self,
        body: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<(u16, String, Option<String>)> {
        let mut request = self
            .client
            .post(format!("{}/webhooks/fluent", self.url))
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(15))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["error"].as_str().unwrap_or_default().to_owned();
        Ok((status, code, retry_after))
    }

    /// Posts a signed order-status event.
    pub(crate) async fn post_event(
        &self,
        id: &str,
        order_ref: &str,
    ) -> anyhow::Result<(u16, String, Option<String>)> {
        let body = order_status_event(id, order_ref, "1", "BOOKED");
        self.post(&body, &signed(SECRET, id, &body)).await
    }
}

/// Hostile but correctly signed requests: each refused with its code, none stored, and the
/// one valid webhook after them is the only record.
async fn refusals_store_nothing(target: Target) -> anyhow::Result<()> {
    let gateway = Gateway::start(&target, &[]).await?;
    let mut cases = Vec::new();
    for (field, value) in [
        ("id", "e-1\r\nx-injected: 1"),
        ("name", "fc.connect.order\n"),
        ("accountId", "ACME\r"),
        ("rootEntityRef", "O-1\nO-2"),
        ("rootEntityRef", "O-\u{0}1"),
    ] {
        let mut event: serde_json::Value =
            serde_json::from_str(&order_status_event("e-bad", "O-1", "1", "BOOKED"))?;
        event[field] = value.into();
        cases.push((event.to_string(), 400, "invalid_field"));
    }
    let mut blank: serde_json::Value =
        serde_json::from_str(&order_status_event("e-blank", "O-1", "1", "BOOKED"))?;
    blank["rootEntityRef"] = "  ".into();
    cases.push((blank.to_string(), 400, "missing_field"));
    for (n, (body, status, code)) in cases.iter().enumerate() {
        let id = format!("hostile-{n}");
        let answer = gateway.post(body, &signed(SECRET, &id, body)).await?;
        ensure!(
            (answer.0, answer.1.as_str()) == (*status, *code),
            "case {n} ({body}): {answer:?}"
        );
    }
    let body = order_status_event("e-twice", "O-1", "1", "BOOKED");
    let mut twice = signed(SECRET, "twice", &body);
    twice.push(twice[2].clone());
    let answer = gateway.post(&body, &twice).await?;
    ensure!(
        answer.0 == 401 && answer.1 == "repeated_signature",
        "{answer:?}"
    );

    let answer = gateway.post_event("e-valid", "O-1").await?;
    ensure!(answer.0 == 200, "the valid webhook: {answer:?}");
    gateway.until_status("/health/live", 200).await?;
    let expected = BTreeSet::from(["e-valid".to_owned()]);
    let stored = target.stored_ids(&expected).await?;
    ensure!(stored == expected, "stored: {stored:?}");
    // What is stored reads as a CloudEvent to a consumer that is not ours.
    let records = target.read_records().await?;
    let record = records.first().context("the valid webhook's record")?;
    let event = target.cloudevent(record)?;
    for (attribute, value) in [
        ("specversion", "1.0"),
        ("id", "e-valid"),
        ("source", "/fluentcommerce/ACME"),
        ("type", "fc.connect.order.webhook.order-status-update"),
        ("subject", "O-1"),
        ("datacontenttype", "application/json"),
    ] {
        ensure!(
            event.get(attribute).map(String::as_str) == Some(value),
            "{attribute} is not {value:?}: {event:?}"
        );
    }
    humantime::parse_rfc3339(&event["time"])?;
    ensure!(
        record.payload == order_status_event("e-valid", "O-1", "1", "BOOKED").as_bytes(),
        "the data is not the body byte for byte"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_webhooks_never_reach_kafka() -> anyhow::Result<()> {
    refusals_store_nothing(Target::kafka(e2e_tests::kafka_brokers())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_webhooks_never_reach_nats() -> anyhow::Result<()> {
    refusals_store_nothing(Target::nats(e2e_tests::nats_url())).await
}

/// Freezes (SIGSTOP) and thaws (SIGCONT) a process: a broker that stops answering without
/// closing its sockets, the hardest outage for a client to notice.
fn signal(process: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &process.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {process} failed");
    Ok(())
}

/// What the senders saw.
#[derive(Default)]
struct Seen {
    accepted: BTreeSet<String>,
    unavailable: usize,
    without_retry_after: usize,
    other: Vec<String>,
}

/// Webhooks flow from four senders while the broker process `broker` is frozen for four
/// seconds: 503 with `Retry-After` meanwhile, 200 again after, and every 200 is stored.
async fn outage_loses_nothing(target: Target, broker: u32) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway::start(&target, &[("BUS_PUBLISH_TIMEOUT_MS", "1000")]).await?);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..4 {
        let (gateway, seen, stop) = (Arc::clone(&gateway), Arc::clone(&seen), stop.clone());
        senders.spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let id = format!("outage-{sender}-{n}");
                n += 1;
                let answer = gateway.post_event(&id, &format!("O-{sender}")).await;
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match answer {
                    Ok((200, _, _)) => {
                        seen.accepted.insert(id);
                    }
                    Ok((503, _, retry_after)) => {
                        seen.unavailable += 1;
                        seen.without_retry_after += usize::from(retry_after.is_none());
                    }
                    other => seen.other.push(format!("{id}: {other:?}")),
                }
            }
        });
    }
    let accepted = || seen.lock().map(|s| s.accepted.len()).unwrap_or_default();
    let until = |count: usize| async move {
        let deadline = Instant::now() + DEADLINE;
        while accepted() < count {
            ensure!(
                Instant::now() < deadline,
                "fewer than {count} webhooks accepted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    };
    until(20).await?;
    signal(broker, "-STOP")?;
    let frozen_at = accepted();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(broker, "-CONT")?;
    until(frozen_at + 50).await?;
    stop.cancel();
    while let Some(result) = senders.join_next().await {
        result?;
    }
    let seen = std::mem::take(
        &mut *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    ensure!(seen.unavailable > 0, "no 503 while the broker was frozen");
    ensure!(seen.without_retry_after == 0, "a 503 without Retry-After");
    ensure!(
        seen.other.is_empty(),
        "unexpected answers: {:?}",
        seen.other
    );
    let stored = target.stored_ids(&seen.accepted).await?;
    let lost: Vec<&String> = seen.accepted.difference(&stored).collect();
    ensure!(
        lost.is_empty(),
        "accepted but not stored: {lost:?} ({} accepted, {} 503s, {} records stored)",
        seen.accepted.len(),
        seen.unavailable,
        stored.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_outage_under_load_answers_503_and_loses_no_accepted_webhook() -> anyhow::Result<()>
{
    let tansu = std::env::var("TEST_TANSU_BIN").context(
        "TEST_TANSU_BIN is not set: run ./scripts/test, which installs tansu and sets it",
    )?;
    let port = free_port()?;
    let broker = spawn(
        Path::new(&tansu),
        &[
            ("LISTENER_URL", format!("tcp://127.0.0.1:{port}")),
            ("ADVERTISED_LISTENER_URL", format!("tcp://127.0.0.1:{port}")),
            ("STORAGE_ENGINE", "memory://tansu/".into()),
        ],
    )?;
    let address = format!("127.0.0.1:{port}");
    let until = Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(&address).await.is_err() {
        ensure!(
            Instant::now() < until,
            "the outage test's tansu did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = broker.id();
    outage_loses_nothing(Target::kafka(address), pid).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_outage_under_load_answers_503_and_loses_no_accepted_webhook() -> anyhow::Result<()>
{
    let server = NatsServer::start()?;
    let pid = server.id();
    outage_loses_nothing(Target::nats(server.url.clone()), pid).await
}

/// The resident memory of process `pid`, in MiB (`VmRSS`).
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}

/// One wave of 400 connections that each declare a 256 KiB body, send 200 KB of it and stall,
/// until the gateway has answered or closed every one; the highest RSS seen meanwhile.
async fn slow_body_wave(address: &str, pid: u32) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let head = format!(
        "POST /webhooks/fluent HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        256 * 1024
    );
    let chunk = vec![b' '; 200_000];
    let mut waves = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let (address, head, chunk) = (address.to_owned(), head.clone(), chunk.clone());
        waves.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await?;
            stream.write_all(head.as_bytes()).await?;
            // A 503 may come before the body is taken: the write then fails, as it should.
            let _ = stream.write_all(&chunk).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
            anyhow::Ok(())
        });
    }
    let mut peak = 0.0_f64;
    while !waves.is_empty() {
        peak = peak.max(rss_mib(pid)?);
        tokio::select! {
            done = waves.join_next() => { done.context("a wave task")???; }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Ok(peak.max(rss_mib(pid)?))
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_keep_the_gateways_memory_bounded_and_flat() -> anyhow::Result<()> {
    let target = Target::kafka(e2e_tests::kafka_brokers());
    let gateway = Gateway::start(
        &target,
        &[
            ("INGEST_REQUEST_TIMEOUT_MS", "2000"),
            ("INGEST_MAX_REQUESTS", "64"),
        ],
    )
    .await?;
    let pid = gateway.process.id();
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let before = rss_mib(pid)?;
    let mut peaks = Vec::new();
    for _ in 0..3 {
        peaks.push(slow_body_wave(&address, pid).await?);
    }
    // At most INGEST_MAX_REQUESTS (64) bodies are read at once, each under 256 KiB, and each
    // of the 400 connections has a read buffer of at most 64 KiB; 32 MiB for the rest. Without
    // the cap, 400 bodies of 200 KB take 80 MB on their own.
    let bound = before + 64.0 * 0.25 + 400.0 * 0.0625 + 32.0;
    ensure!(
        peaks.iter().all(|peak| *peak <= bound),
        "RSS {before:.0} MiB before, wave peaks {peaks:.0?} MiB: above {bound:.0}"
    );
    // The allocator keeps some of what the first waves took; it must level off, not grow by
    // what each wave holds.
    ensure!(
        peaks[2] <= peaks[1] + 16.0,
        "RSS grew from wave to wave: {peaks:.0?} MiB"
    );
    let answer = gateway.post_event("after-waves", "O-1").await?;
    ensure!(
        answer.0 == 200,
        "a valid webhook after the waves: {answer:?}"
    );
    Ok(())
}
