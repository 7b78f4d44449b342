//! What a consumer reports about itself for health checks and metrics: when it last polled
//! the broker, and how far each owned partition's committed position trails the log's end.
//!
//! The consumer updates it from wherever it learns things (Kafka: its poll thread and
//! librdkafka's statistics; NATS: each message's pending count; in-memory: each commit), and a
//! metrics or health endpoint reads it without touching the consumer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A shared, cheap-to-clone view of one consumer's state.
#[derive(Clone, Debug)]
pub struct ConsumerStatus(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// When this status was created: the base of `polled_ms`.
    started: Instant,
    /// Milliseconds after `started` of the last poll; `u64::MAX` when the consumer has no poll
    /// loop of its own to watch (NATS and in-memory deliver from async tasks).
    polled_ms: AtomicU64,
    /// Records after the committed position, per owned partition.
    lag: Mutex<BTreeMap<u32, u64>>,
    /// Offset commits that failed (each is retried).
    commit_failures: AtomicU64,
    /// Fetching is paused because the application fell behind (Kafka).
    paused: AtomicBool,
    standing_by: AtomicBool,
}

impl ConsumerStatus {
    /// A status whose poll age is watched (a consumer with its own poll loop).
    pub(crate) fn polling() -> Self {
        Self::polling_since(Instant::now())
    }

    /// A watched status whose first poll counts as made at `started`.
    fn polling_since(started: Instant) -> Self {
        Self(Arc::new(Inner {
            started,
            polled_ms: AtomicU64::new(0),
            lag: Mutex::default(),
            commit_failures: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            standing_by: AtomicBool::new(false),
        }))
    }

    /// A status without a poll loop to watch: [`ConsumerStatus::since_poll`] is always zero.
    pub(crate) fn unwatched() -> Self {
        let status = Self::polling();
        status.0.polled_ms.store(u64::MAX, Ordering::Relaxed);
        status
    }

    /// Notes that the consumer polled the broker just now.
    pub(crate) fn polled(&self) {
        let now = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.polled_ms.store(now, Ordering::Relaxed);
    }

    /// How long ago the consumer last polled (zero when it has no poll loop to watch). A poll
    /// thread stuck in a call that never returns shows here.
    pub fn since_poll(&self) -> Duration {
        match self.0.polled_ms.load(Ordering::Relaxed) {
            u64::MAX => Duration::ZERO,
            polled => self
                .0
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(polled)),
        }
    }

    /// Offset commits that failed so far (each is retried at the next commit).
    pub fn commit_failures(&self) -> u64 {
        self.0.commit_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn commit_failed(&self) {
        self.0.commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether fetching is paused because the application fell behind (it resumes once the
    /// records held back are taken).
    pub fn fetch_paused(&self) -> bool {
        self.0.paused.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fetch_paused(&self, paused: bool) {
        self.0.paused.store(paused, Ordering::Relaxed);
    }

    /// Whether the consumer takes part even while it owns no partition (a NATS instance
    /// standing by for partitions pinned to others): ready without an assignment.
    pub fn standing_by(&self) -> bool {
        self.0.standing_by.load(Ordering::Relaxed)
    }

    pub(crate) fn set_standing_by(&self) {
        self.0.standing_by.store(true, Ordering::Relaxed);
    }

    /// Records after the committed position, per owned partition, as last measured.
    pub fn lag(&self) -> Vec<(u32, u64)> {
        self.lags().iter().map(|(p, lag)| (*p, *lag)).collect()
    }

    pub(crate) fn set_lag(&self, partition: u32, lag: u64) {
        self.lags().insert(partition, lag);
    }

    /// Forgets partitions this consumer no longer owns.
    pub(crate) fn forget(&self, partitions: &[u32]) {
        let mut lags = self.lags();
        for partition in partitions {
            lags.remove(partition);
        }
    }

    fn lags(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.0.lag.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A topic or stream that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// What it is for (`webhook topic`, `DLQ topic`, `stream`).
    pub role: &'static str,
    /// Its name.
    pub name: String,
    /// Its partitions (NATS: the partition subjects configured).
    pub partitions: u32,
}

/// The bus as `processor check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusReport {
    /// The webhook topic and the DLQ (NATS: the stream holding both).
    pub destinations: Vec<Destination>,
    /// Per partition of the webhook topic, the records the group has yet to finish; `None`
    /// where it has no position there yet (Kafka: nothing committed; NATS: no consumer).
    pub lag: Vec<(u32, Option<u64>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwatched_status_never_ages_and_watched_one_does() {
        let unwatched = ConsumerStatus::unwatched();
        assert_eq!(unwatched.since_poll(), Duration::ZERO);
        let long_ago = Instant::now() - Duration::from_secs(5);
        let watched = ConsumerStatus::polling_since(long_ago);
        assert!(watched.since_poll() >= Duration::from_secs(5));
        watched.polled();
        assert!(watched.since_poll() < Duration::from_secs(1));
    }

    #[test]
    fn forgets_the_lag_of_partitions_no_longer_owned() {
        let status = ConsumerStatus::polling();
        status.set_lag(0, 5);
        status.set_lag(3, 7);
        status.forget(&[0]);
        assert_eq!(status.lag(), vec![(3, 7)]);
    }
}
