//! The engine's liveness and readiness, with a watchdog for silent stalls.
//!
//! Users of long-running consumers suffer most from the consumer that still looks healthy
//! but has stopped working: a poll thread stuck in a client call, or handler calls that never
//! return while records pile up. So liveness is not "the process runs" but "work moves": the
//! loop turns, the consumer polls, and when handler calls are running at least one of them
//! has finished within the stall timeout. An orchestrator that restarts a non-live instance
//! loses nothing: unacknowledged records are redelivered.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::bus::ConsumerStatus;

/// Shared between the engine loop (which writes) and the health endpoints (which read).
#[derive(Debug)]
pub struct Health {
    started: Instant,
    stall_timeout: Duration,
    consumer: ConsumerStatus,
    /// Milliseconds after `started` when the loop last turned.
    turned_ms: AtomicU64,
    /// Milliseconds after `started` when work last moved: a handler call finished, or none
    /// was running.
    progressed_ms: AtomicU64,
    assigned: AtomicUsize,
}

impl Health {
    pub(super) fn new(consumer: ConsumerStatus, stall_timeout: Duration) -> Self {
        Self::started_at(Instant::now(), consumer, stall_timeout)
    }

    /// A health whose stamps all count as set at `started`.
    fn started_at(started: Instant, consumer: ConsumerStatus, stall_timeout: Duration) -> Self {
        Self {
            started,
            stall_timeout,
            consumer,
            turned_ms: AtomicU64::new(0),
            progressed_ms: AtomicU64::new(0),
            assigned: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn age(&self, stamp: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(stamp.load(Ordering::Relaxed)))
    }

    /// The loop turned; `idle` when no handler call is running (so nothing can be stuck).
    pub(super) fn turned(&self, idle: bool) {
        let now = self.now_ms();
        self.turned_ms.store(now, Ordering::Relaxed);
        if idle {
            self.progressed_ms.store(now, Ordering::Relaxed);
        }
    }

    /// A handler call finished, whatever its outcome.
    pub(super) fn progressed(&self) {
        self.progressed_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(super) fn assigned(&self, partitions: usize) {
        self.assigned.fetch_add(partitions, Ordering::Relaxed);
    }

    pub(super) fn revoked(&self, partitions: usize) {
        // Saturating: a revocation of partitions this engine never heard assigned (the bus
        // announces both, but a test may not) must not wrap around.
        let _ = self
            .assigned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                Some(current.saturating_sub(partitions))
            });
    }

    /// Partitions owned now.
    pub fn assigned_partitions(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    /// `Ok` while work moves; otherwise why not.
    pub fn live(&self) -> Result<(), String> {
        let limit = self.stall_timeout;
        let turned = self.age(&self.turned_ms);
        if turned > limit {
            return Err(format!("the engine loop has not turned for {turned:?}"));
        }
        let polled = self.consumer.since_poll();
        if polled > limit {
            return Err(format!(
                "the consumer has not polled the broker for {polled:?}"
            ));
        }
        let progressed = self.age(&self.progressed_ms);
        if progressed > limit {
            return Err(format!(
                "handler calls are running but none has finished for {progressed:?}"
            ));
        }
        Ok(())
    }

    /// `Ok` while live and owning partitions; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        self.live()?;
        if self.assigned_partitions() == 0 {
            return Err("no partitions are assigned to this instance".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A health created `ago`, with every stamp still at its creation.
    fn health_created(ago: Duration) -> Health {
        let consumer = common::bus::memory::MemoryBus::new(1)
            .consumer("g")
            .status();
        Health::started_at(Instant::now() - ago, consumer, Duration::from_secs(5))
    }

    #[test]
    fn ready_only_while_live_and_owning_partitions() {
        let health = health_created(Duration::ZERO);
        health.turned(true);
        assert!(health.live().is_ok());
        assert!(health.ready().unwrap_err().contains("no partitions"));
        health.assigned(3);
        assert!(health.ready().is_ok());
        health.revoked(5);
        assert_eq!(health.assigned_partitions(), 0);
    }

    #[test]
    fn a_loop_that_stopped_turning_is_not_live() {
        let health = health_created(Duration::from_secs(10));
        assert!(health.live().unwrap_err().contains("loop has not turned"));
        health.turned(true);
        assert!(health.live().is_ok());
    }

    #[test]
    fn handler_calls_that_never_finish_are_a_stall() {
        let health = health_created(Duration::from_secs(10));
        // The loop turns but calls are running (not idle) and none finished since creation.
        health.turned(false);
        assert!(health.live().unwrap_err().contains("none has finished"));
        health.progressed();
        assert!(health.live().is_ok());
    }
}
