//! A partner's handler, the way Fluent's connector design asks partners to add their own:
//! written against `processor-engine` alone (the library half of this crate depends on
//! nothing of the order-status handler), registered beside the built-in one in a processor
//! built from it (`src/main.rs`).
//!
//! [`FulfilmentCounter`] counts the fulfilment events it is routed, per retailer, into
//! `fulfilment_events_total{retailer}`. Records whose body names no retailer are refused by
//! [`Handler::validate`], so each goes to the DLQ alone.

use processor_engine::{Context, Handler, Outcome, Record};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as Metrics;
use serde::Deserialize;

/// The fulfilment event names it takes when `FULFILMENT_EVENT_NAMES` is not set.
pub const DEFAULT_NAMES: &[&str] = &[
    "fc.connect.fulfilment.created",
    "fc.connect.fulfilment.complete",
    "fc.connect.fulfilment.cancelled",
];

/// The metric's label: the retailer of the event (few per account, so bounded).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Retailer {
    /// Fluent's `retailerId`.
    pub retailer: String,
}

/// The part of a Fluent event this handler reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    retailer_id: serde_json::Value,
}

/// Counts fulfilment events per retailer.
#[derive(Debug, Clone)]
pub struct FulfilmentCounter {
    names: Vec<String>,
    events: Family<Retailer, Counter>,
}

impl FulfilmentCounter {
    /// A counter for the message `names`.
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            events: Family::default(),
        }
    }

    /// The counts so far (shared with the registered metric).
    pub fn events(&self) -> Family<Retailer, Counter> {
        self.events.clone()
    }

    fn retailer(record: &Record) -> Result<String, String> {
        let event: Event = serde_json::from_slice(&record.payload)
            .map_err(|error| format!("not a Fluent event with a retailerId: {error}"))?;
        match event.retailer_id {
            serde_json::Value::String(id) if !id.trim().is_empty() => Ok(id),
            serde_json::Value::Number(id) => Ok(id.to_string()),
            other => Err(format!("retailerId {other} names no retailer")),
        }
    }
}

#[async_trait::async_trait]
impl Handler for FulfilmentCounter {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn validate(&self, record: &Record) -> Result<(), String> {
        Self::retailer(record).map(drop)
    }

    fn register_metrics(&self, metrics: &mut Metrics) {
        metrics.register(
            "fulfilment_events",
            "Fulfilment events handled, per retailer",
            self.events.clone(),
        );
    }

    async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
        for record in records {
            // Validated before the call: a retailer is there.
            if let Ok(retailer) = Self::retailer(record) {
                self.events.get_or_create(&Retailer { retailer }).inc();
            }
        }
        Outcome::Done
    }
}
