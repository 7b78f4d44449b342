//! The processor's Prometheus metrics. The engine keeps plain atomic counters; this module
//! reads them (and the consumer's lag) at scrape time, so the hot path pays nothing for
//! metrics. Labels are a fixed, small set: an outcome, or a partition number (bounded by the
//! topic's partition count), never order refs or offsets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::bus::ConsumerStatus;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use processor_engine::{Health, Stats};

/// Every processor metric and the registry they are rendered from.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The engine's metrics: records by outcome, handler latency, in-flight and buffered
    /// records, assigned partitions, whether fetching is paused, committed lag per partition,
    /// and failed DLQ writes and commits.
    pub fn new(stats: Arc<Stats>, consumer: ConsumerStatus, health: Arc<Health>) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "processor_build",
            "The running build (`processor_build_info`, always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "processor_handler_records",
            "processor_records_total again, by handler (`none`: message names no handler takes)",
            stats.by_handler.clone(),
        );
        registry.register_with_unit(
            "processor_handler_duration",
            "Time a handler call took, whatever its outcome",
            Unit::Seconds,
            stats.handler_seconds.clone(),
        );
        registry.register_collector(Box::new(EngineCollector {
            stats,
            consumer,
            health,
        }));
        Self { registry }
    }

    /// The registry, for handlers to add their own metrics.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[derive(Debug)]
struct EngineCollector {
    stats: Arc<Stats>,
    consumer: ConsumerStatus,
    health: Arc<Health>,
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.stats;
        let outcomes = [
            ("done", stats.done.load(Ordering::Relaxed)),
            ("skipped", stats.skipped.load(Ordering::Relaxed)),
            ("coalesced", stats.coalesced.load(Ordering::Relaxed)),
            ("retried", stats.retried.load(Ordering::Relaxed)),
            ("waited", stats.waited.load(Ordering::Relaxed)),
            ("dead_lettered", stats.dead_lettered.load(Ordering::Relaxed)),
            ("released", stats.released.load(Ordering::Relaxed)),
        ];
        let mut family = encoder.encode_descriptor(
            "processor_records",
            "Records by outcome (retried and waited count handler calls that asked for a retry or waited for a dependency; released, records of a revoked partition left to its next owner)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in outcomes {
            ConstCounter::new(value).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        let gauges = [
            (
                "processor_in_flight",
                "Handler calls running now",
                stats.in_flight.load(Ordering::Relaxed),
            ),
            (
                "processor_buffered",
                "Records held in memory waiting for their turn",
                stats.buffered.load(Ordering::Relaxed),
            ),
            (
                "processor_assigned_partitions",
                "Partitions this instance owns",
                self.health.assigned_partitions(),
            ),
            (
                "processor_fetch_paused",
                "1 while fetching is paused because the engine fell behind (Kafka)",
                usize::from(self.consumer.fetch_paused()),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        let failures = ConstCounter::new(stats.dlq_write_failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "processor_dlq_write_failures",
            "DLQ writes that failed (each is retried; a refusal also fails /health/live)",
            None,
            MetricType::Counter,
        )?)?;
        let failures = ConstCounter::new(self.consumer.commit_failures());
        failures.encode(encoder.encode_descriptor(
            "processor_commit_failures",
            "Offset commits that failed (each is retried)",
            None,
            MetricType::Counter,
        )?)?;
        let age =
            ConstGauge::new(self.stats.oldest_unfinished_ms.load(Ordering::Relaxed) as f64 / 1e3);
        age.encode(encoder.encode_descriptor(
            "processor_oldest_unfinished_record_age",
            "How long the oldest record not finished yet (queued, waiting to retry or in a handler call) has been in this instance, refreshed each second",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?)?;
        let unit = Unit::Other("records".into());
        let mut family = encoder.encode_descriptor(
            "processor_committed_lag",
            "Records after the committed position, per owned partition",
            Some(&unit),
            MetricType::Gauge,
        )?;
        for (partition, lag) in self.consumer.lag() {
            let labels = [("partition", partition.to_string())];
            let gauge = ConstGauge::new(i64::try_from(lag).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
