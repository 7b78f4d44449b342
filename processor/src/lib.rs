//! Stage 2, the consumer engine: routes each bus record by message name to a handler, keeps
//! per-order ordering while processing many orders at once, and acknowledges a record (so the
//! bus can commit past it) only after its handler's work succeeded or it is safely in the DLQ.

pub mod api;
pub mod app;
pub mod commercetools;
pub mod documents;
pub mod engine;
pub mod fluent;
pub mod metrics;
pub mod oauth;
pub mod order_status;

pub use app::{App, StartError};

pub use common::config::ProcessorConfig;
