//! The three status-mapping settings, parsed into a typed many-to-one mapping from Fluent
//! statuses to commercetools header states, and the fold of that mapping over a sequence of
//! events.
//!
//! Settings are written by people in Fluent's admin console, so a bad one must fail loudly and
//! precisely: every error names the setting and the offending entry, and is permanent (no
//! retry fixes a setting; the message goes to the DLQ and the operator fixes the setting).

use std::collections::HashMap;

use common::mapping::StatusMappingSetting;
use serde_json::Value;

use super::states::{HeaderStates, OrderState, PaymentState, ShipmentState};

/// The names of the three settings; the defaults are Fluent's (note the two spellings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingNames {
    /// The order-state mapping.
    pub order: String,
    /// The payment-state mapping.
    pub payment: String,
    /// The shipment-state mapping.
    pub shipment: String,
}

impl Default for SettingNames {
    fn default() -> Self {
        Self {
            order: "fc.connect.commercetools.order.order-status-mapping".into(),
            payment: "fc.connect.commerce-tools.order.payment-status-mapping".into(),
            shipment: "fc.connect.commerce-tools.order.shipping-status-mapping".into(),
        }
    }
}

impl SettingNames {
    /// The three names, for one settings query.
    pub fn all(&self) -> [&str; 3] {
        [&self.order, &self.payment, &self.shipment]
    }
}

/// The settings' JSON values as Fluent holds them (RETAILER already preferred over ACCOUNT);
/// `None` for a setting that exists at neither context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSettings {
    /// The order-state mapping's value.
    pub order: Option<Value>,
    /// The payment-state mapping's value.
    pub payment: Option<Value>,
    /// The shipment-state mapping's value.
    pub shipment: Option<Value>,
}

/// A setting that cannot be used. Never retryable: only a corrected setting helps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The value is not `{"fluent": {FLUENT_STATUS: "value", ...}}`.
    #[error(
        "setting `{setting}` is not of the documented shape \
         {{\"fluent\": {{\"FLUENT_STATUS\": \"value\"}}}}: {detail}; fix the setting in Fluent"
    )]
    Shape {
        /// The setting's name.
        setting: String,
        /// What is wrong.
        detail: String,
    },
    /// A mapped value is not a commercetools enum value.
    #[error(
        "setting `{setting}` maps `{fluent_status}` to `{value}`, which is not a commercetools \
         {kind}; use one of {allowed} (any case) and fix the setting in Fluent"
    )]
    BadValue {
        /// The setting's name.
        setting: String,
        /// The Fluent status whose entry is wrong.
        fluent_status: String,
        /// The value found.
        value: String,
        /// The commercetools enum (`OrderState`, ...).
        kind: &'static str,
        /// Its values.
        allowed: String,
    },
}

impl MappingError {
    /// The setting at fault.
    pub fn setting(&self) -> &str {
        match self {
            Self::Shape { setting, .. } | Self::BadValue { setting, .. } => setting,
        }
    }
}

/// Fluent status → commercetools header states, per field. Fluent statuses are matched
/// ignoring ASCII case (Fluent's are upper case by convention; a hand-written key in another
/// case still means the same status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusMapping {
    order: HashMap<String, OrderState>,
    payment: HashMap<String, PaymentState>,
    shipment: HashMap<String, ShipmentState>,
}

impl StatusMapping {
    /// Parses the three settings; a missing setting maps nothing (its field is never changed).
    pub fn parse(names: &SettingNames, raw: &RawSettings) -> Result<Self, MappingError> {
        Ok(Self {
            order: parse_one(
                &names.order,
                raw.order.as_ref(),
                "OrderState",
                OrderState::parse,
            )?,
            payment: parse_one(
                &names.payment,
                raw.payment.as_ref(),
                "PaymentState",
                PaymentState::parse,
            )?,
            shipment: parse_one(
                &names.shipment,
                raw.shipment.as_ref(),
                "ShipmentState",
                ShipmentState::parse,
            )?,
        })
    }

    /// How many Fluent statuses each field's setting maps: order, payment, shipment (0 for a
    /// missing setting, whose field is never changed).
    pub fn sizes(&self) -> [usize; 3] {
        [self.order.len(), self.payment.len(), self.shipment.len()]
    }

    /// The states one event with `fluent_status` asks for (unset fields: not covered).
    pub fn map(&self, fluent_status: &str) -> HeaderStates {
        let status = fluent_status.trim().to_ascii_uppercase();
        HeaderStates {
            order: self.order.get(&status).copied(),
            payment: self.payment.get(&status).copied(),
            shipment: self.shipment.get(&status).copied(),
        }
    }

    /// The states a sequence of events (oldest first) ends in: per field, the value mapped
    /// from the newest event whose status that field's mapping covers. Exactly what applying
    /// the events one by one gives.
    pub fn fold<'a>(&self, statuses: impl IntoIterator<Item = &'a str>) -> HeaderStates {
        statuses
            .into_iter()
            .fold(HeaderStates::default(), |states, status| {
                states.then(self.map(status))
            })
    }
}

fn parse_one<T>(
    setting: &str,
    value: Option<&Value>,
    kind: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<HashMap<String, T>, MappingError>
where
    T: Copy,
{
    let Some(value) = value else {
        return Ok(HashMap::new());
    };
    let shape = |detail: String| MappingError::Shape {
        setting: setting.to_owned(),
        detail,
    };
    // Fluent's `lobValue` holds JSON; some tenants store it as a JSON string instead.
    let parsed;
    let value = match value {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|error| shape(format!("not JSON ({error})")))?;
            &parsed
        }
        other => other,
    };
    let setting_value: StatusMappingSetting =
        serde_json::from_value(value.clone()).map_err(|error| shape(error.to_string()))?;
    setting_value
        .fluent
        .into_iter()
        .map(|(fluent_status, target)| match parse(&target) {
            Some(state) => Ok((fluent_status.trim().to_ascii_uppercase(), state)),
            None => Err(MappingError::BadValue {
                setting: setting.to_owned(),
                fluent_status,
                value: target,
                kind,
                allowed: allowed(kind),
            }),
        })
        .collect()
}

fn allowed(kind: &str) -> String {
    match kind {
        "OrderState" => OrderState::spellings(),
        "PaymentState" => PaymentState::spellings(),
        _ => ShipmentState::spellings(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The example from Fluent's documentation of the commercetools connector.
    pub(crate) fn documented() -> RawSettings {
        RawSettings {
            order: Some(json!({"fluent": {
                "RECEIVED": "Open", "PENDING_PAYMENT": "Open", "ESCALATED": "Open",
                "BOOKED": "Confirmed", "PICK_PACK": "Confirmed", "PICK_PACK_CC": "Confirmed",
                "AWAITING_CUSTOMER_COLLECTION": "Confirmed",
                "AWAITING_COURIER_COLLECTION": "Confirmed",
                "COMPLETE": "Complete", "CANCELLED": "Cancelled"
            }})),
            payment: Some(json!({"fluent": {
                "RECEIVED": "pending", "PENDING_PAYMENT": "pending", "BOOKED": "paid"
            }})),
            shipment: Some(json!({"fluent": {
                "RECEIVED": "Pending", "BOOKED": "Pending", "PICK_PACK": "Pending",
                "AWAITING_COURIER_COLLECTION": "Shipped", "COMPLETE": "Shipped"
            }})),
        }
    }

    fn mapping() -> StatusMapping {
        StatusMapping::parse(&SettingNames::default(), &documented()).unwrap()
    }

    #[test]
    fn maps_the_documented_example_many_to_one_and_case_insensitively() {
        let mapping = mapping();
        assert_eq!(
            mapping.map("BOOKED"),
            HeaderStates {
                order: Some(OrderState::Confirmed),
                payment: Some(PaymentState::Paid),
                shipment: Some(ShipmentState::Pending),
            }
        );
        assert_eq!(
            mapping.map("COMPLETE"),
            HeaderStates {
                order: Some(OrderState::Complete),
                payment: None,
                shipment: Some(ShipmentState::Shipped),
            }
        );
        assert!(mapping.map("UNKNOWN_STATUS").is_empty());
    }

    #[test]
    fn folds_to_the_newest_mapped_value_per_field() {
        let mapping = mapping();
        let folded = mapping.fold(["RECEIVED", "BOOKED", "PICK_PACK", "COMPLETE"]);
        assert_eq!(
            folded,
            HeaderStates {
                order: Some(OrderState::Complete),
                // COMPLETE and PICK_PACK have no payment mapping: BOOKED's stays.
                payment: Some(PaymentState::Paid),
                shipment: Some(ShipmentState::Shipped),
            }
        );
        assert!(mapping.fold([]).is_empty());
    }

    #[test]
    fn a_value_that_is_no_enum_value_names_the_setting_and_the_entry() {
        let mut raw = documented();
        raw.shipment = Some(json!({"fluent": {"COMPLETE": "Cancelled"}}));
        let error = StatusMapping::parse(&SettingNames::default(), &raw).unwrap_err();
        assert_eq!(
            error.setting(),
            "fc.connect.commerce-tools.order.shipping-status-mapping"
        );
        let text = error.to_string();
        for expected in ["`COMPLETE`", "`Cancelled`", "ShipmentState", "Canceled"] {
            assert!(text.contains(expected), "{expected} missing from: {text}");
        }
    }

    #[test]
    fn a_setting_of_the_wrong_shape_is_a_shape_error() {
        for bad in [
            json!({"COMPLETE": "Complete"}),
            json!({"fluent": {"COMPLETE": 3}}),
            json!("{"),
        ] {
            let raw = RawSettings {
                order: Some(bad.clone()),
                ..RawSettings::default()
            };
            let error = StatusMapping::parse(&SettingNames::default(), &raw).unwrap_err();
            assert!(
                matches!(error, MappingError::Shape { .. }),
                "{bad}: {error:?}"
            );
        }
    }

    #[test]
    fn a_json_string_value_and_missing_settings_are_accepted() {
        let raw = RawSettings {
            order: Some(json!(r#"{"fluent": {"booked": "confirmed"}}"#)),
            ..RawSettings::default()
        };
        let mapping = StatusMapping::parse(&SettingNames::default(), &raw).unwrap();
        assert_eq!(mapping.map("BOOKED").order, Some(OrderState::Confirmed));
        assert_eq!(mapping.map("BOOKED").payment, None);
    }
}
