//! The shape of Fluent's status-mapping settings.
//!
//! Three Fluent settings (order, payment and shipping status mapping) each hold
//! `{"fluent": {FLUENT_STATUS: ct_value}}`: many Fluent statuses to one commercetools enum value.
//! This module only describes the stored JSON; interpreting it belongs to the order-status
//! handler (`order_status::domain::mapping`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The JSON value of one status-mapping setting, as stored in Fluent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusMappingSetting {
    /// Fluent status (e.g. `BOOKED`) → commercetools enum value (e.g. `Confirmed`; matched
    /// case-insensitively). A Fluent status not listed leaves the commercetools field unchanged.
    pub fluent: BTreeMap<String, String>,
}
