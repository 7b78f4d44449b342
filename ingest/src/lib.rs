//! Stage 1, the webhook gateway: verifies Fluent's signature and the event's required fields,
//! publishes the raw body to the bus keyed by order ref, and answers 200 only once the broker
//! has acknowledged it.
//!
//! The gateway is built on [`common`]'s event model and configuration.

pub use common::config::IngestConfig;
