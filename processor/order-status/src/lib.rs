//! The built-in `OrderStatusUpdate` handler: enriches an order's events from Fluent, maps its
//! Fluent status to the three commercetools header states with the mapping settings stored in
//! Fluent, and updates the commercetools order. Written against `processor-engine` alone, as
//! a partner's handler would be.
//!
//! - `domain`: states, mapping, fold and sync marker; no I/O.
//! - `clients`: the GraphQL call, OAuth, the Fluent and commercetools clients, the documents.
//! - `settings`: how long a retailer's mapping is reused (policy, not I/O).
//! - `handler`: the [`Handler`](processor_engine::Handler) on top of them.
//! - `resync`: one order set from Fluent's current status, outside the bus
//!   (`processor resync`).

pub mod clients;
pub mod domain;
pub mod handler;
pub mod resync;
pub mod settings;

pub use domain::{
    HeaderStates, MappingError, OrderState, PaymentState, RawSettings, SettingNames, ShipmentState,
    StatusMapping, SyncMarker,
};
pub use handler::{HandlerMetrics, OrderStatusUpdate};
pub use resync::{Resync, ResyncError};
