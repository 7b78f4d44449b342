//! The engine's loop: one task owns all scheduling state (see `schedule`); handler calls run
//! as spawned tasks and report back. Assignment changes are read whatever the engine holds,
//! records only below the memory bound, and nothing new starts once shutdown began.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::bus::{Consumer, Delivery, Publisher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::schedule::State;
use super::{EngineConfig, Health, Registry, Stats};

/// The consumer engine: build it, then [`Engine::run`] until the shutdown token fires.
pub struct Engine {
    consumer: Consumer,
    publisher: Publisher,
    registry: Registry,
    config: EngineConfig,
    stats: Arc<Stats>,
    health: Arc<Health>,
}

impl Engine {
    /// An engine consuming from `consumer`, dead-lettering through `publisher`.
    pub fn new(
        consumer: Consumer,
        publisher: Publisher,
        registry: Registry,
        config: EngineConfig,
    ) -> Self {
        let health = Arc::new(Health::new(consumer.status(), config.stall_timeout));
        Self {
            consumer,
            publisher,
            registry,
            config,
            stats: Arc::default(),
            health,
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The engine's liveness and readiness.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Lets the registered handlers add their metrics to `metrics`.
    pub fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        self.registry.register_metrics(metrics);
    }

    /// The consumer's poll age and per-partition lag (for metrics).
    pub fn consumer_status(&self) -> common::bus::ConsumerStatus {
        self.consumer.status()
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight work (within the drain
    /// deadline), commits and closes the consumer.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), common::bus::BusError> {
        let Self {
            mut consumer,
            publisher,
            registry,
            config,
            stats,
            health,
        } = self;
        let mut state = State::new(publisher, registry, config, stats, health);
        // Turns the loop when nothing else does, so an idle engine still shows it is alive.
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_until: Option<Instant> = None;
        let mut aged_at = Instant::now();
        loop {
            if drain_until.is_none() {
                state.start_ready();
            }
            state.health.turned(state.tasks.is_empty());
            state
                .stats
                .buffered
                .store(state.buffered, Ordering::Relaxed);
            state.stats.keys.store(state.keys(), Ordering::Relaxed);
            // Nothing held is cheap to see every turn; an age needs a look at every record.
            if state.nothing_unfinished() {
                state.stats.oldest_unfinished_ms.store(0, Ordering::Relaxed);
            } else if aged_at.elapsed() >= Duration::from_secs(1) {
                aged_at = Instant::now();
                let age = state
                    .oldest_unfinished()
                    .map_or(0, |oldest| oldest.elapsed().as_millis());
                let age = u64::try_from(age).unwrap_or(u64::MAX);
                state
                    .stats
                    .oldest_unfinished_ms
                    .store(age, Ordering::Relaxed);
            }
            if let Some(deadline) = drain_until {
                if state.tasks.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    warn!(
                        "in-flight work did not finish before the drain deadline; it will be redelivered"
                    );
                    state.cancel.cancel();
                    break;
                }
            }
            let records = drain_until.is_none() && state.held() < state.config.max_buffered;
            let wake_at = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let revocation_due = state.next_revocation_deadline();
            tokio::select! {
                Some(joined) = state.tasks.join_next_with_id(), if !state.tasks.is_empty() => {
                    state.joined(joined);
                }
                Some(Ok(key)) = state.timers.join_next(), if !state.timers.is_empty() => {
                    state.retry_due(key);
                }
                () = shutdown.cancelled(), if drain_until.is_none() => {
                    info!(in_flight = state.tasks.len(), "draining before shutdown");
                    drain_until = Some(Instant::now() + state.config.drain_timeout);
                }
                () = tokio::time::sleep_until(wake_at), if drain_until.is_some() => {}
                () = tokio::time::sleep_until(revocation_due.unwrap_or(wake_at)),
                    if revocation_due.is_some() => state.revocations_overdue(),
                _ = heartbeat.tick() => {}
                delivery = consumer.next_change_or_record(records) => match delivery? {
                    Delivery::Record(record) => state.enqueue(record),
                    Delivery::Assigned(partitions) => {
                        debug!(?partitions, "assigned");
                        state.health.assigned(partitions.len());
                    }
                    Delivery::Revoked(revocation) => state.revoke(revocation),
                },
            }
        }
        state.tasks.shutdown().await;
        // What is still queued is given up before the consumer closes, so a bus that hands
        // records back (NATS) can give them to the next owner now rather than after a timeout.
        drop(state);
        consumer.close().await
    }
}
