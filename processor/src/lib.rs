//! Stage 2, the `processor` binary's application: configuration in, a [`Registry`] of
//! handlers (the built-in `order-status` one, or a partner's), the engine of
//! `processor-engine` on the configured bus, and the health and metrics routes, behind the
//! `run(listener, shutdown)` seam that the binary and the tests drive.
//!
//! [`Registry`]: processor_engine::Registry

pub mod app;
pub mod metrics;
pub mod ops;

pub use app::{App, StartError};

pub use common::config::ProcessorConfig;
