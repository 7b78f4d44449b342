//! The consumer engine: takes records from the bus and runs handlers on them, keeping each
//! key's records in offset order while many keys run at once, retrying with backoff, and
//! dead-lettering what cannot succeed. It knows nothing about Fluent or commercetools.
//!
//! Delivery semantics: a record is acknowledged only once its handler said done or skip, or
//! once its dead letter was acknowledged by the broker; the bus then commits exactly the
//! acknowledged prefix of each partition. A crash therefore re-delivers, never loses.
//!
//! Order: one key's records run one job at a time, in offset order, and a record of a
//! partition this consumer no longer owns is never started or restarted: after a revocation
//! the next owner runs it, so two owners never work on one key at once.
//!
//! - `handler`: what a handler implements (`Handler`, `Outcome`, `Record`, `Context`) and the
//!   `Registry` that routes names to handlers.
//! - `run`: the loop: records and revocations in, jobs out, acknowledgements back.
//! - `schedule`: the state the loop owns (queues, batches, the memory bound, revocations).
//! - `job`: one handler call and what its outcome leads to (ack, retry, DLQ).
//! - `work`: what passes between the two; `applied`: the window of applied event ids.
//! - `health`: the liveness watchdog; `stats`: the counters the processor's metrics read.

mod applied;
mod handler;
mod health;
mod job;
mod run;
mod schedule;
mod stats;
mod work;

use std::sync::Arc;
use std::time::Duration;

pub use handler::{Context, Handler, Outcome, Record, Registry};
pub use health::Health;
pub use run::Engine;
pub use stats::{RecordOutcome, Stats};

pub use common::config::UnknownNames;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Handler calls running at once, across keys and partitions.
    pub max_in_flight: usize,
    /// Records held in memory (queued plus in flight) before the engine stops fetching.
    pub max_buffered: usize,
    /// Most records of one key in one batch.
    pub max_batch: usize,
    /// Attempts of a record (or batch) before it goes to the DLQ.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// Unknown message names: skip or dead-letter.
    pub unknown_names: UnknownNames,
    /// On shutdown, how long in-flight work may take before it is abandoned (and redelivered).
    pub drain_timeout: Duration,
    /// The watchdog's limit: see [`Health`].
    pub stall_timeout: Duration,
    /// How long a record may wait out an unavailable dependency ([`Outcome::Wait`]) before
    /// its waits count as attempts.
    pub max_wait: Duration,
    /// `messaging.system` of the consumer spans: `kafka`, `nats` or `memory`.
    pub messaging_system: &'static str,
    /// `messaging.consumer.group.name` of the consumer spans: the Kafka group, or the NATS
    /// consumers' prefix.
    pub consumer_group: Arc<str>,
    /// `processor --dry-run`: every handler is told ([`Context::dry_run`]) to change nothing
    /// outside and say what it would do.
    pub dry_run: bool,
}

impl EngineConfig {
    /// The engine settings of the validated configuration.
    pub fn from_config(config: &common::config::Config) -> Self {
        let processor = &config.processor;
        Self {
            max_in_flight: processor.max_in_flight as usize,
            max_buffered: processor.max_buffered as usize,
            max_batch: processor.max_batch as usize,
            max_attempts: processor.max_attempts,
            retry_base: processor.retry_base,
            retry_cap: processor.retry_cap,
            unknown_names: processor.unknown_names,
            drain_timeout: config.bus.drain_timeout,
            stall_timeout: processor.stall_timeout,
            max_wait: processor.max_wait,
            messaging_system: common::bus::messaging_destination(&config.bus).0,
            consumer_group: match config.bus.kind {
                common::config::BusKind::Nats => config.bus.nats.consumer_prefix.as_str().into(),
                _ => config.bus.kafka.group_id.as_str().into(),
            },
            dry_run: false,
        }
    }
}

/// The engine settings of the built-in defaults (`common::config`: defined once, there).
impl Default for EngineConfig {
    fn default() -> Self {
        Self::from_config(&common::config::Config::defaults())
    }
}

/// Full-jitter exponential backoff: a random delay up to `base * 2^(attempt-1)`, capped.
pub fn backoff(config: &EngineConfig, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = config
        .retry_base
        .saturating_mul(1 << exponent)
        .min(config.retry_cap);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_defaults_are_the_documented_configuration_defaults() {
        let defaults = EngineConfig::default();
        // README's table: PROCESSOR_MAX_BUFFERED 8192 (this once said 4096 on its own).
        assert_eq!(defaults.max_buffered, 8192);
        assert_eq!(defaults.max_batch, 256);
        assert_eq!(defaults.unknown_names, UnknownNames::Skip);
        assert_eq!(defaults.drain_timeout, Duration::from_secs(20));
    }
}
