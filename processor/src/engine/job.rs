//! One handler call on a batch, and what follows from its outcome: acknowledge, come back
//! for a retry, or dead-letter (waiting for the broker's acknowledgement) and then acknowledge.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::bus::{DeadLetter, FailureClass, Publisher};
use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::run::{Finished, Queued};
use super::{Context, EngineConfig, Outcome, Record, Stats, UnknownNames, backoff};

/// One handler call and what follows from its outcome.
pub(super) struct Job {
    pub(super) key: Bytes,
    pub(super) partition: u32,
    pub(super) batch: Vec<Queued>,
    pub(super) attempts: u32,
    /// When the head record was first tried: waits for a dependency are bounded from here.
    pub(super) first_try: tokio::time::Instant,
    /// Waits so far, for the backoff.
    pub(super) waits: u32,
    pub(super) publisher: Publisher,
    pub(super) config: EngineConfig,
    pub(super) stats: Arc<Stats>,
    pub(super) cancel: CancellationToken,
}

impl Job {
    pub(super) async fn run(self) -> Finished {
        let outcome = match &self.batch[0].handler {
            Some(handler) => {
                let views: Vec<Record> = self.batch.iter().map(|q| q.view.clone()).collect();
                let context = Context {
                    attempt: self.attempts,
                    cancel: self.cancel.clone(),
                };
                // A panicking handler must not take its key down with it (the key would stay
                // busy and its partition's commits stuck): treat it as a transient failure.
                let started = std::time::Instant::now();
                let outcome = AssertUnwindSafe(handler.handle(&views, &context))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Outcome::Retry {
                        reason: "the handler panicked".into(),
                        delay: None,
                    });
                self.stats
                    .handler_seconds
                    .observe(started.elapsed().as_secs_f64());
                outcome
            }
            None => match self.config.unknown_names {
                UnknownNames::Skip => Outcome::Skip("no handler for this message name".into()),
                UnknownNames::DeadLetter => {
                    Outcome::Fail("no handler for this message name".into())
                }
            },
        };
        // Past the wait budget, a wait for a dependency counts as an attempt like any retry.
        let outcome = match outcome {
            Outcome::Wait { reason, delay } if self.first_try.elapsed() >= self.config.max_wait => {
                Outcome::Retry { reason, delay }
            }
            other => other,
        };
        let count = self.batch.len() as u64;
        match outcome {
            Outcome::Done => {
                self.stats.done.fetch_add(count, Ordering::Relaxed);
                self.settle().await
            }
            Outcome::Skip(reason) => {
                debug!(%reason, "skipped");
                self.stats.skipped.fetch_add(count, Ordering::Relaxed);
                self.settle().await
            }
            Outcome::Retry { reason, delay } if self.attempts < self.config.max_attempts => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = delay.unwrap_or_else(|| backoff(&self.config, self.attempts));
                debug!(%reason, attempt = self.attempts, ?delay, "retrying later");
                Finished::Retry {
                    key: self.key,
                    partition: self.partition,
                    batch: self.batch,
                    attempts: self.attempts,
                    delay,
                    waited: false,
                }
            }
            Outcome::Wait { reason, delay } => {
                self.stats.waited.fetch_add(1, Ordering::Relaxed);
                let delay = delay.unwrap_or_else(|| backoff(&self.config, self.waits + 1));
                debug!(%reason, waits = self.waits + 1, ?delay, "waiting for a dependency");
                Finished::Retry {
                    key: self.key,
                    partition: self.partition,
                    batch: self.batch,
                    // Not an attempt: the next call gets the same attempt number again.
                    attempts: self.attempts - 1,
                    delay,
                    waited: true,
                }
            }
            Outcome::Retry { reason, .. } => {
                self.dead_letter(FailureClass::Transient, reason).await
            }
            Outcome::Fail(reason) => self.dead_letter(FailureClass::Permanent, reason).await,
        }
    }

    /// Acknowledges every record of the batch.
    async fn settle(self) -> Finished {
        let applied = self
            .batch
            .iter()
            .filter_map(|q| q.view.event_id.clone())
            .collect();
        for queued in self.batch {
            if let Err(error) = queued.record.ack.ack().await {
                warn!(%error, "acknowledgement failed; the record may be redelivered");
            }
        }
        Finished::Settled {
            key: self.key,
            partition: self.partition,
            applied,
        }
    }

    /// Writes each record to the DLQ, waiting for the broker's acknowledgement (retrying with
    /// backoff), and only then acknowledges the original: nothing is lost in between.
    async fn dead_letter(self, class: FailureClass, error: String) -> Finished {
        warn!(%error, class = class.as_str(), attempts = self.attempts, "dead-lettering");
        let letter = DeadLetter {
            class,
            error,
            attempts: self.attempts,
        };
        for queued in &self.batch {
            let mut attempt = 0;
            loop {
                match self.publisher.dead_letter(&queued.record, &letter).await {
                    Ok(_) => break,
                    Err(error) => {
                        attempt += 1;
                        warn!(%error, "DLQ write failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff(&self.config, attempt)) => {}
                            () = self.cancel.cancelled() => {
                                return Finished::Abandoned { key: self.key, partition: self.partition };
                            }
                        }
                    }
                }
            }
        }
        self.stats
            .dead_lettered
            .fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        self.settle().await
    }
}
