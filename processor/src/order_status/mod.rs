//! The built-in order-status handler's domain: commercetools header states, the status-mapping
//! settings, and the fold of an order's events into the states its commercetools order should
//! have.

pub mod handler;
pub mod mapping;
pub mod marker;
pub mod states;

pub use handler::{HandlerMetrics, OrderStatusUpdate};
pub use mapping::{MappingError, RawSettings, SettingNames, StatusMapping};
pub use marker::SyncMarker;
pub use states::{HeaderStates, OrderState, PaymentState, ShipmentState};
