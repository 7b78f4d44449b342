//! Shared building blocks of the Fluent → commercetools order status pipeline.
//!
//! Every crate of the workspace depends on this one; the two stages (`ingest` and the
//! processor crates) share nothing else:
//! - [`event`]: the Fluent webhook event model and its validation;
//! - [`mapping`]: the shape of Fluent's status-mapping settings;
//! - [`config`]: typed, layered, validated configuration;
//! - [`bus`]: the record model and the Kafka, NATS and in-memory buses (the broker clients
//!   behind the `kafka` and `nats` features);
//! - [`report`]: error cause chains for logs and dead letters;
//! - [`signal`]: SIGTERM/Ctrl-C to a cancellation token;
//! - [`telemetry`]: logging/tracing start-up.

pub mod bus;
pub mod config;
pub mod event;
pub mod mapping;
pub mod report;
pub mod signal;
pub mod telemetry;
