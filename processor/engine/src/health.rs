//! The engine's liveness and readiness, with a watchdog for silent stalls.
//!
//! Users of long-running consumers suffer most from the consumer that still looks healthy
//! but has stopped working: a poll thread stuck in a client call, or handler calls that never
//! return while records pile up. So liveness is not "the process runs" but "work moves": the
//! loop turns, the consumer polls, and when handler calls are running at least one of them
//! has finished within the stall timeout. An orchestrator that restarts a non-live instance
//! loses nothing: unacknowledged records are redelivered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Conditions that stop liveness while they last, by id, with their reasons.
    blocked: Mutex<BTreeMap<u64, String>>,
    next_block: AtomicU64,
}

/// Keeps the engine not live, with its reason, until dropped.
#[derive(Debug)]
pub(super) struct Blocked {
    health: Arc<Health>,
    id: u64,
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.health.blocks().remove(&self.id);
    }
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
            blocked: Mutex::default(),
            next_block: AtomicU64::new(0),
        }
    }

    fn blocks(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Work that cannot move for `reason` (the DLQ refusing a record): not live until the
    /// guard is dropped, so an orchestrator sees it and the reason is on `/health/live`.
    pub(super) fn block(health: &Arc<Self>, reason: String) -> Blocked {
        let id = health.next_block.fetch_add(1, Ordering::Relaxed);
        health.blocks().insert(id, reason);
        Blocked {
            health: Arc::clone(health),
            id,
        }
    }

    /// Work that cannot move again in this process: not live from now on.
    pub(super) fn stuck(&self, reason: String) {
        let id = self.next_block.fetch_add(1, Ordering::Relaxed);
        self.blocks().insert(id, reason);
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
        if let Some(reason) = self.blocks().values().next() {
            return Err(reason.clone());
        }
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
        if self.assigned_partitions() == 0 && !self.consumer.standing_by() {
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
    fn a_blocked_condition_stops_liveness_until_it_clears() {
        let health = Arc::new(health_created(Duration::ZERO));
        health.turned(true);
        let blocked = Health::block(&health, "the DLQ refuses writes".into());
        assert_eq!(health.live().unwrap_err(), "the DLQ refuses writes");
        drop(blocked);
        assert!(health.live().is_ok());
        health.stuck("for good".into());
        assert_eq!(health.live().unwrap_err(), "for good");
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
