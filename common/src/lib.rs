//! Shared building blocks of the Fluent → commercetools order status pipeline.
//!
//! Both stages (`ingest` and `processor`) depend on this crate and nothing else of each other:
//! - [`event`]: the Fluent webhook event model and its validation;
//! - [`mapping`]: the shape of Fluent's status-mapping settings;
//! - [`config`]: typed, layered, validated configuration;
//! - [`telemetry`]: logging/tracing start-up.

pub mod bus;
pub mod config;
pub mod event;
pub mod mapping;
pub mod report;
pub mod signal;
pub mod telemetry;
