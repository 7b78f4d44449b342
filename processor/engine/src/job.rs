//! One handler call on a batch, and what follows from its outcome: acknowledge, come back
//! for a retry, or dead-letter (waiting for the broker's acknowledgement) and then acknowledge.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::bus::headers;
use common::bus::{DeadLetter, FailureClass, Publisher};
use common::telemetry::{self, TraceHeaders};
use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span, debug, error, field, info_span, warn};

use super::work::{Finished, Queued};
use super::{
    Context, EngineConfig, Health, Outcome, Record, RecordOutcome, Stats, UnknownNames, backoff,
};

/// One handler call and what follows from its outcome.
pub(super) struct Job {
    /// Records of one key and one partition, in offset order; each already counts this
    /// attempt.
    pub(super) batch: Vec<Queued>,
    /// Waits of this key so far, for the backoff.
    pub(super) waits: u32,
    pub(super) publisher: Publisher,
    pub(super) config: EngineConfig,
    pub(super) stats: Arc<Stats>,
    pub(super) health: Arc<Health>,
    /// Cancelled on shutdown, or when the partition was revoked and its drain deadline passed.
    pub(super) cancel: CancellationToken,
}

/// The trace context a record carries (the gateway's producer span).
fn context(queued: &Queued) -> TraceHeaders<'_> {
    TraceHeaders {
        traceparent: queued.record.headers.get_str(headers::TRACEPARENT),
        tracestate: queued.record.headers.get_str(headers::TRACESTATE),
    }
}

/// Shutdown (or the partition's next owner) overtook a dead-letter write: the records not
/// acknowledged, handed back.
struct Cancelled(Vec<Queued>);

impl Job {
    /// The consumer span of this handler call (OpenTelemetry messaging conventions): the
    /// child of the newest record's producer span, so one webhook's trace runs from the
    /// gateway through here; a coalesced batch links every record's context.
    pub(super) fn span(&self) -> Span {
        let Some(last) = self.batch.last() else {
            return Span::none();
        };
        let newest = &last.record;
        let span = info_span!(
            "process",
            otel.name = %format_args!("process {}", newest.source),
            otel.kind = "consumer",
            messaging.system = self.config.messaging_system,
            messaging.consumer.group.name = &*self.config.consumer_group,
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = &*newest.source,
            messaging.destination.partition.id = newest.position.partition,
            messaging.kafka.offset = newest.position.offset,
            messaging.kafka.message.key = &*String::from_utf8_lossy(&newest.key),
            messaging.batch.message_count = self.batch.len(),
        );
        telemetry::continue_trace(&span, context(last));
        if self.batch.len() > 1 {
            for queued in &self.batch {
                telemetry::link_trace(&span, context(queued));
            }
        }
        span
    }

    pub(super) async fn run(mut self) -> Finished {
        if self.reject_what_the_handler_cannot_take().await.is_err() {
            return self.abandoned();
        }
        if self.batch.is_empty() {
            return self.settled(Vec::new());
        }
        let outcome = self.call_handler().await;
        // Past the wait budget, a wait for a dependency counts as an attempt like any retry.
        let outcome = match outcome {
            Outcome::Wait { reason, delay }
                if self.batch[0]
                    .first_try
                    .is_some_and(|first| first.elapsed() >= self.config.max_wait) =>
            {
                Outcome::Retry { reason, delay }
            }
            other => other,
        };
        let count = self.batch.len() as u64;
        let handler = self.batch[0].handler.clone();
        match outcome {
            Outcome::Done => {
                self.stats
                    .count(handler.as_ref(), RecordOutcome::Done, count);
                self.settle(true).await
            }
            Outcome::Skip(reason) => {
                debug!(%reason, "skipped");
                self.stats
                    .count(handler.as_ref(), RecordOutcome::Skipped, count);
                self.settle(true).await
            }
            Outcome::Wait { reason, delay } => {
                self.stats.count(handler.as_ref(), RecordOutcome::Waited, 1);
                let delay = self
                    .bounded(delay)
                    .unwrap_or_else(|| backoff(&self.config, self.waits + 1));
                debug!(%reason, waits = self.waits + 1, ?delay, "waiting for a dependency");
                // Not an attempt: the next call gets the same attempt numbers again.
                for queued in &mut self.batch {
                    queued.attempts -= 1;
                }
                self.retry(delay, true)
            }
            Outcome::Retry { reason, delay } => self.retry_or_dead_letter(reason, delay).await,
            Outcome::Fail(reason) => {
                let batch = std::mem::take(&mut self.batch);
                match self
                    .dead_letter(batch, FailureClass::Permanent, &reason)
                    .await
                {
                    Ok(()) => self.settled(Vec::new()),
                    Err(Cancelled(batch)) => {
                        self.batch = batch;
                        self.abandoned()
                    }
                }
            }
        }
    }

    /// Dead-letters, one by one, the records the handler says it can never process (not its
    /// payload format), so that one bad record does not take its batch with it.
    /// On cancellation, every record not acknowledged is back in `self.batch`.
    async fn reject_what_the_handler_cannot_take(&mut self) -> Result<(), ()> {
        let Some(handler) = self.batch[0].handler.clone() else {
            return Ok(());
        };
        let (kept, rejected): (Vec<_>, Vec<_>) = std::mem::take(&mut self.batch)
            .into_iter()
            .map(|queued| {
                let verdict = handler.validate(&queued.view);
                (queued, verdict)
            })
            .partition(|(_, verdict)| verdict.is_ok());
        self.batch = kept.into_iter().map(|(queued, _)| queued).collect();
        let mut rejected = rejected.into_iter();
        while let Some((queued, verdict)) = rejected.next() {
            let reason = verdict.err().unwrap_or_default();
            if let Err(Cancelled(back)) = self
                .dead_letter(vec![queued], FailureClass::Permanent, &reason)
                .await
            {
                // Everything not acknowledged goes back, in offset order.
                self.batch.extend(back);
                self.batch.extend(rejected.map(|(queued, _)| queued));
                self.batch.sort_by_key(|queued| queued.view.position);
                return Err(());
            }
        }
        Ok(())
    }

    async fn call_handler(&self) -> Outcome {
        let Some(handler) = &self.batch[0].handler else {
            return match self.config.unknown_names {
                UnknownNames::Skip => Outcome::Skip("no handler for this message name".into()),
                UnknownNames::DeadLetter => {
                    Outcome::Fail("no handler for this message name".into())
                }
            };
        };
        let views: Vec<Record> = self.batch.iter().map(|q| q.view.clone()).collect();
        let context = Context {
            attempt: self.batch[0].attempts,
            cancel: self.cancel.clone(),
            dry_run: self.config.dry_run,
        };
        // A panicking handler must not take its key down with it (the key would stay busy
        // and its partition's commits stuck): treat it as a transient failure.
        let name = &self.batch[0].view.name;
        let span = info_span!(
            "handle",
            otel.name = %format_args!("handle {name}"),
            otel.status_code = field::Empty,
            message.name = name.as_str(),
            attempt = context.attempt,
            records = views.len(),
        );
        let started = std::time::Instant::now();
        let outcome = AssertUnwindSafe(handler.handle(&views, &context))
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                reason: "the handler panicked".into(),
                delay: None,
            });
        self.stats
            .handler_seconds
            .observe(started.elapsed().as_secs_f64());
        if matches!(outcome, Outcome::Retry { .. } | Outcome::Fail(_)) {
            span.record("otel.status_code", "ERROR");
        }
        outcome
    }

    /// A failed call: records that used up their attempts go to the DLQ; the others (they
    /// joined the batch later) come back with their own counts.
    async fn retry_or_dead_letter(
        mut self,
        reason: String,
        delay: Option<std::time::Duration>,
    ) -> Finished {
        let max = self.config.max_attempts;
        let exhausted = self.batch.iter().take_while(|q| q.attempts >= max).count();
        if exhausted < self.batch.len() {
            let handler = self.batch[0].handler.as_ref();
            self.stats.count(handler, RecordOutcome::Retried, 1);
        }
        if exhausted == 0 {
            let delay = self
                .bounded(delay)
                .unwrap_or_else(|| backoff(&self.config, self.batch[0].attempts));
            debug!(%reason, attempt = self.batch[0].attempts, ?delay, "retrying later");
            return self.retry(delay, false);
        }
        let rest = self.batch.split_off(exhausted);
        let spent = std::mem::replace(&mut self.batch, rest);
        if let Err(Cancelled(mut back)) = self
            .dead_letter(spent, FailureClass::Transient, &reason)
            .await
        {
            back.append(&mut self.batch);
            self.batch = back;
            return self.abandoned();
        }
        if self.batch.is_empty() {
            return self.settled(Vec::new());
        }
        let delay = backoff(&self.config, self.batch[0].attempts);
        self.retry(delay, false)
    }

    /// A delay the handler asked for (an API's `Retry-After`, say), capped at the longest
    /// backoff: a proxy asking for a day must not hold the key, and the partition's commits
    /// behind it, for a day.
    fn bounded(&self, delay: Option<std::time::Duration>) -> Option<std::time::Duration> {
        delay.map(|delay| delay.min(self.config.retry_cap))
    }

    /// Comes back after `delay`; the trace shows the retry (or wait) as an event of this call's
    /// span, with how long it will be.
    fn retry(self, delay: std::time::Duration, waited: bool) -> Finished {
        telemetry::span_event(
            &Span::current(),
            if waited { "wait" } else { "retry" },
            &[
                ("attempt", i64::from(self.batch[0].attempts)),
                (
                    "delay_ms",
                    i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                ),
            ],
        );
        Finished::Retry {
            batch: self.batch,
            delay,
            waited,
        }
    }

    fn settled(self, applied: Vec<(String, common::bus::Position)>) -> Finished {
        Finished::Settled { applied }
    }

    fn abandoned(self) -> Finished {
        Finished::Abandoned { batch: self.batch }
    }

    /// Acknowledges every record of the batch; `applied` when the handler did (or skipped)
    /// their work, so their event ids count as seen.
    async fn settle(mut self, applied: bool) -> Finished {
        let batch = std::mem::take(&mut self.batch);
        // Only what was applied from these records: a repeat's position is not where its
        // event was applied, and recording it would make a redelivery of the repeat look new.
        let ids = if applied {
            batch
                .iter()
                .filter(|q| !q.view.duplicate)
                .filter_map(|q| Some((q.view.event_id.clone()?, q.view.position)))
                .collect()
        } else {
            Vec::new()
        };
        acknowledge(batch).await;
        self.settled(ids)
    }

    /// Writes each record to the DLQ, waiting for the broker's acknowledgement, and only then
    /// acknowledges the original: nothing is lost in between.
    async fn dead_letter(
        &self,
        batch: Vec<Queued>,
        class: FailureClass,
        reason: &str,
    ) -> Result<(), Cancelled> {
        for written in 0..batch.len() {
            let queued = &batch[written];
            if self.cancel.is_cancelled() {
                // The partition went to its next owner (or the process is stopping): it
                // decides what becomes of the records not yet in the DLQ.
                return Err(self.hand_back(batch, written).await);
            }
            warn!(error = %reason, class = class.as_str(), attempts = queued.attempts,
                partition = queued.view.position.partition, offset = queued.view.position.offset,
                "dead-lettering");
            let letter = DeadLetter {
                class,
                error: reason.to_owned(),
                attempts: queued.attempts,
            };
            if self.write_dead_letter(queued, &letter).await.is_err() {
                return Err(self.hand_back(batch, written).await);
            }
        }
        self.count_dead_letters(&batch);
        acknowledge(batch).await;
        Ok(())
    }

    /// Cancellation overtook a dead-letter write: the records whose dead letter the broker
    /// already has are acknowledged (they are safely in the DLQ), the rest handed back.
    async fn hand_back(&self, mut batch: Vec<Queued>, written: usize) -> Cancelled {
        let rest = batch.split_off(written);
        self.count_dead_letters(&batch);
        acknowledge(batch).await;
        Cancelled(rest)
    }

    fn count_dead_letters(&self, batch: &[Queued]) {
        let handler = batch.first().and_then(|queued| queued.handler.as_ref());
        self.stats
            .count(handler, RecordOutcome::DeadLettered, batch.len() as u64);
    }

    /// One DLQ write, retried until the broker takes it. A refusal no retry can fix (the topic
    /// is missing, the record too large, access denied) still holds the record, since dropping
    /// it would lose it, but makes the engine not live with the reason, so it does not stay
    /// silent.
    async fn write_dead_letter(&self, queued: &Queued, letter: &DeadLetter) -> Result<(), ()> {
        let mut failures = 0;
        let mut blocked = None;
        loop {
            let error = match self.publisher.dead_letter(&queued.record, letter).await {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            failures += 1;
            self.stats
                .dlq_write_failures
                .fetch_add(1, Ordering::Relaxed);
            let cause = common::report::chain(&error);
            if error.is_retryable() {
                warn!(error = %cause, failures, "DLQ write failed; retrying");
            } else {
                error!(error = %cause, failures,
                    "the DLQ refuses the record; it is held, with its key, until the DLQ takes it");
                blocked.get_or_insert_with(|| {
                    Health::block(&self.health, format!("the DLQ refuses writes: {cause}"))
                });
            }
            tokio::select! {
                () = tokio::time::sleep(backoff(&self.config, failures)) => {}
                () = self.cancel.cancelled() => return Err(()),
            }
        }
    }
}

async fn acknowledge(batch: Vec<Queued>) {
    for queued in batch {
        if let Err(error) = queued.record.ack.ack().await {
            warn!(error = %common::report::chain(&error), "acknowledgement failed; the record may be redelivered");
        }
    }
}
