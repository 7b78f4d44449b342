//! The domain, without I/O: commercetools' three header states, Fluent's status-mapping
//! settings, the fold of an order's events into the states its commercetools order should
//! have, and the sync marker that records what was applied.

pub mod mapping;
pub mod marker;
pub mod states;

pub use mapping::{MappingError, RawSettings, SettingNames, StatusMapping};
pub use marker::SyncMarker;
pub use states::{HeaderStates, OrderState, PaymentState, ShipmentState};
