//! The gateway's Prometheus metrics. Labels are a fixed, small set (the outcome), never event
//! ids or order refs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `accepted`, `bad_signature`, `invalid`, `too_large`, `unavailable`, ...
    pub outcome: &'static str,
}

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by outcome.
    pub requests: Family<Outcome, Counter>,
    /// Time from request to response, seconds.
    pub request_seconds: Histogram,
    /// Time the bus took to acknowledge, seconds.
    pub publish_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<Outcome, Counter>::default();
        // 0.25 ms to about 4 s.
        let request_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        let publish_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        let mut registry = Registry::default();
        registry.register(
            "ingest_build",
            "The running build (`ingest_build_info`, always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "ingest_requests",
            "Webhook requests by outcome",
            requests.clone(),
        );
        registry.register_with_unit(
            "ingest_request_duration",
            "Time from webhook request to response",
            prometheus_client::registry::Unit::Seconds,
            request_seconds.clone(),
        );
        registry.register_with_unit(
            "ingest_publish_duration",
            "Time the bus took to acknowledge a webhook",
            prometheus_client::registry::Unit::Seconds,
            publish_seconds.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            publish_seconds,
        }
    }
}

impl Metrics {
    /// Counts one request with `outcome`.
    pub fn count(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
