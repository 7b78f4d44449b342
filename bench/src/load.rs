//! The load generator behind the `loadgen` binary and the ingest benchmark: signed webhooks
//! (RSA or HMAC), realistic bodies with distinct ids and order refs, a fixed concurrency, and
//! a report of throughput, latency percentiles and counts per status.
//!
//! Requests are signed before the clock starts: RSA signing costs the sender far more than
//! verifying costs the gateway, and on a shared machine it would steal the gateway's CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA512, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use tokio::sync::Mutex;

use crate::webhook_body;

/// How requests are signed.
pub enum Signer {
    /// Fluent's SHA512withRSA in `fluent-signature`.
    Rsa(RsaKeyPair),
    /// Standard Webhooks HMAC-SHA256 with this key.
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

/// One prepared request.
struct Prepared {
    body: Bytes,
    headers: Vec<(&'static str, String)>,
}

impl Signer {
    fn prepare(&self, i: usize) -> Prepared {
        let body = webhook_body(i);
        let headers = self.sign(&format!("msg_{i}"), &body);
        Prepared { body, headers }
    }

    /// The signature headers for `body` (`id` is the Standard Webhooks message id).
    pub fn sign(&self, id: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        match self {
            Self::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA512,
                    &SystemRandom::new(),
                    body,
                    &mut signature,
                )
                .expect("RSA signing");
                vec![("fluent-signature", STANDARD.encode(signature))]
            }
            Self::Hmac(key) => {
                let timestamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let mut signed = format!("{id}.{timestamp}.").into_bytes();
                signed.extend_from_slice(body);
                let tag = aws_lc_rs::hmac::sign(key, &signed);
                vec![
                    ("webhook-id", id.to_owned()),
                    ("webhook-timestamp", timestamp.to_string()),
                    (
                        "webhook-signature",
                        format!("v1,{}", STANDARD.encode(tag.as_ref())),
                    ),
                ]
            }
        }
    }
}

/// What to send.
pub struct Load {
    /// The webhook URL.
    pub url: String,
    /// How requests are signed.
    pub signer: Signer,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Stop after this many requests...
    pub count: usize,
    /// ...or after this long, whichever comes first.
    pub duration: Duration,
    /// Print a progress line every second.
    pub progress: bool,
    /// Open-loop pacing: request `i` is sent no earlier than `i / rate` seconds after the
    /// start (unset: as fast as the concurrency allows).
    pub rate: Option<f64>,
}

/// What happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Responses by HTTP status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests that got no response.
    pub errors: usize,
    /// Latency of every request that got a response.
    pub latencies: Vec<Duration>,
}

impl Report {
    /// Accepted (200) requests per second.
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted() as f64 / self.elapsed.as_secs_f64()
    }

    /// Requests answered 200.
    pub fn accepted(&self) -> usize {
        self.statuses.get(&200).copied().unwrap_or_default()
    }

    /// The latency below which `quantile` (0..1) of requests finished.
    pub fn latency(&self, quantile: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * quantile).ceil() as usize).saturating_sub(1);
        sorted.get(index).copied().unwrap_or_default()
    }

    /// One line per figure, for people.
    pub fn summary(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        format!(
            "accepted/s {:.0}; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; statuses {}; \
             errors {}",
            self.accepted_per_second(),
            self.latency(0.50).as_secs_f64() * 1e3,
            self.latency(0.99).as_secs_f64() * 1e3,
            self.latency(0.999).as_secs_f64() * 1e3,
            statuses.join(", "),
            self.errors,
        )
    }
}

/// Signs up to `pool` distinct requests, on all cores.
fn prepare(signer: &Arc<Signer>, pool: usize) -> Arc<Vec<Prepared>> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let chunks: Vec<Vec<Prepared>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let signer = Arc::clone(signer);
                scope.spawn(move || {
                    (t..pool)
                        .step_by(threads)
                        .map(|i| signer.prepare(i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signing thread"))
            .collect()
    });
    Arc::new(chunks.into_iter().flatten().collect())
}

/// Runs `load` and reports.
pub async fn run(load: Load) -> Report {
    let signer = Arc::new(load.signer);
    let pool = prepare(&signer, load.count.clamp(1, 20_000));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency)
        .build()
        .expect("an HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(Report::default()));
    let started = Instant::now();
    let deadline = started + load.duration;
    let progress = load.progress.then(|| {
        let (next, accepted) = (Arc::clone(&next), Arc::clone(&accepted));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let accepted = accepted.load(Ordering::Relaxed);
                #[allow(clippy::print_stderr)]
                {
                    eprint!(
                        "\rsent {:>8}  accepted {accepted:>8}",
                        next.load(Ordering::Relaxed)
                    );
                }
            }
        })
    });
    let workers: Vec<_> = (0..load.concurrency)
        .map(|_| {
            let (client, pool, next, report) = (
                client.clone(),
                Arc::clone(&pool),
                Arc::clone(&next),
                Arc::clone(&report),
            );
            let accepted = Arc::clone(&accepted);
            let (url, count, rate) = (load.url.clone(), load.count, load.rate);
            tokio::spawn(async move {
                let mut mine = Report::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() >= deadline {
                        break;
                    }
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let prepared = &pool[i % pool.len()];
                    let mut request = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(prepared.body.clone());
                    for (name, value) in &prepared.headers {
                        request = request.header(*name, value);
                    }
                    let sent = Instant::now();
                    match request.send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            if status == 200 {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = response.bytes().await;
                            mine.latencies.push(sent.elapsed());
                            *mine.statuses.entry(status).or_default() += 1;
                        }
                        Err(_) => mine.errors += 1,
                    }
                }
                let mut total = report.lock().await;
                total.latencies.extend(mine.latencies);
                total.errors += mine.errors;
                for (status, count) in mine.statuses {
                    *total.statuses.entry(status).or_default() += count;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut report = Arc::try_unwrap(report)
        .map(Mutex::into_inner)
        .unwrap_or_default();
    report.elapsed = started.elapsed();
    report
}
