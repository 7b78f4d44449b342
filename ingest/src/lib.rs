//! Stage 1, the webhook gateway: verifies Fluent's signature and the event's required fields,
//! publishes the raw body to the bus keyed by order ref, and answers 200 only once the broker
//! has acknowledged it. Anything else gets a JSON error with a stable code (see [`error`]).

mod app;
pub mod error;
pub mod metrics;
mod replay;
mod server;
pub mod signature;
mod state;
mod stream;
mod webhook;

pub use app::{App, StartError};
