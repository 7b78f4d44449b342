//! What the engine counts: records by outcome (in total and per handler), what it holds, and
//! how long handler calls take. Plain atomics and one label family, read at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::Handler;

/// What became of a record (or a handler call): the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Its handler finished it.
    Done,
    /// Skipped, by its handler or for want of one.
    Skipped,
    /// Handed to its handler together with an earlier record of its key.
    Coalesced,
    /// A handler call that asked for a retry.
    Retried,
    /// A handler call that waited out an unavailable dependency.
    Waited,
    /// Written to the DLQ.
    DeadLettered,
    /// Let go unprocessed: its partition was revoked and the next owner runs it.
    Released,
}

impl RecordOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::Coalesced => "coalesced",
            Self::Retried => "retried",
            Self::Waited => "waited",
            Self::DeadLettered => "dead_lettered",
            Self::Released => "released",
        }
    }
}

/// Counters of what the engine did, for metrics and tests.
#[derive(Debug)]
pub struct Stats {
    /// Records a handler finished.
    pub done: AtomicU64,
    /// Records skipped (by a handler, or an unknown name).
    pub skipped: AtomicU64,
    /// Records handed to a handler together with an earlier one of their key.
    pub coalesced: AtomicU64,
    /// Handler calls that asked for a retry.
    pub retried: AtomicU64,
    /// Handler calls that waited out an unavailable dependency.
    pub waited: AtomicU64,
    /// Records written to the DLQ.
    pub dead_lettered: AtomicU64,
    /// Records let go unprocessed because their partition was revoked: the next owner runs
    /// them.
    pub released: AtomicU64,
    /// DLQ writes that failed (each is retried; see [`Health`] for refusals).
    pub dlq_write_failures: AtomicU64,
    /// Handler calls running now.
    pub in_flight: AtomicUsize,
    /// The most handler calls ever running at once.
    pub peak_in_flight: AtomicUsize,
    /// Records held in memory waiting for their turn (not in flight).
    pub buffered: AtomicUsize,
    /// Keys with pending work the engine keeps state for (it forgets a key once it has none).
    pub keys: AtomicUsize,
    /// The most records ever held at once, queued plus inside running handler calls (what
    /// `max_buffered` bounds).
    pub peak_held: AtomicUsize,
    /// How long handler calls take, seconds.
    pub handler_seconds: Histogram,
    /// Milliseconds since the oldest unfinished record arrived (0 with none), refreshed about
    /// once a second: the age an operator alerts on when work stops moving.
    pub oldest_unfinished_ms: AtomicU64,
    /// The outcome counters again, by handler ([`Handler::name`], `none` for message names no
    /// handler takes): the `processor_handler_records_total` family.
    pub by_handler: Family<[(&'static str, &'static str); 2], Counter>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            done: AtomicU64::default(),
            skipped: AtomicU64::default(),
            coalesced: AtomicU64::default(),
            retried: AtomicU64::default(),
            waited: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            dlq_write_failures: AtomicU64::default(),
            released: AtomicU64::default(),
            in_flight: AtomicUsize::default(),
            peak_in_flight: AtomicUsize::default(),
            buffered: AtomicUsize::default(),
            keys: AtomicUsize::default(),
            peak_held: AtomicUsize::default(),
            // 1 ms to about 33 s.
            handler_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            oldest_unfinished_ms: AtomicU64::default(),
            by_handler: Family::default(),
        }
    }
}

impl Stats {
    /// Counts `count` records (handler calls, for `Retried` and `Waited`) routed to `handler`
    /// reaching `outcome`, in the total and in the handler's own counter.
    pub(crate) fn count(
        &self,
        handler: Option<&Arc<dyn Handler>>,
        outcome: RecordOutcome,
        count: u64,
    ) {
        if count == 0 {
            return;
        }
        let total = match outcome {
            RecordOutcome::Done => &self.done,
            RecordOutcome::Skipped => &self.skipped,
            RecordOutcome::Coalesced => &self.coalesced,
            RecordOutcome::Retried => &self.retried,
            RecordOutcome::Waited => &self.waited,
            RecordOutcome::DeadLettered => &self.dead_lettered,
            RecordOutcome::Released => &self.released,
        };
        total.fetch_add(count, Ordering::Relaxed);
        let name = handler.map_or("none", |handler| handler.name());
        self.by_handler
            .get_or_create(&[("handler", name), ("outcome", outcome.as_str())])
            .inc_by(count);
    }

    /// Records that reached an end (done, skipped or dead-lettered).
    pub fn finished(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
    }
}
