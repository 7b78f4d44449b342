//! The three commercetools order header states, with their exact enum spellings, and how one
//! set of states moves towards another (`then`, `changes_towards`); the fold of a batch of
//! Fluent events into a target is `mapping::StatusMapping::fold`.

use std::fmt;

/// Declares a commercetools enum: its variants, their GraphQL spellings, and a
/// case-insensitive parser (mapping settings are written by people: `pending` means `Pending`).
macro_rules! ct_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in the schema's order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The GraphQL enum spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($variant),)+
                }
            }

            /// The value spelled `text`, ignoring ASCII case.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str().eq_ignore_ascii_case(text.trim()))
            }

            /// The spellings, for error messages.
            pub fn spellings() -> String {
                Self::ALL.iter().map(|value| value.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

ct_enum!(
    /// commercetools `OrderState`.
    OrderState { Open, Confirmed, Complete, Cancelled }
);
ct_enum!(
    /// commercetools `PaymentState`.
    PaymentState { BalanceDue, Failed, Pending, CreditOwed, Paid }
);
ct_enum!(
    /// commercetools `ShipmentState`.
    ShipmentState { Shipped, Delivered, Ready, Pending, Delayed, Partial, Backorder, Canceled }
);

/// The header states of a commercetools order, each unset when nothing says what it should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderStates {
    /// `orderState`.
    pub order: Option<OrderState>,
    /// `paymentState`.
    pub payment: Option<PaymentState>,
    /// `shipmentState`.
    pub shipment: Option<ShipmentState>,
}

impl HeaderStates {
    /// `newer` applied on top of `self`: each field set in `newer` wins.
    #[must_use]
    pub fn then(self, newer: Self) -> Self {
        Self {
            order: newer.order.or(self.order),
            payment: newer.payment.or(self.payment),
            shipment: newer.shipment.or(self.shipment),
        }
    }

    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.order.is_none() && self.payment.is_none() && self.shipment.is_none()
    }

    /// The fields of `target` that differ from `self` (the current states): what an update
    /// must change. Unset target fields are left alone.
    #[must_use]
    pub fn changes_towards(&self, target: &Self) -> Self {
        Self {
            order: target.order.filter(|value| self.order != Some(*value)),
            payment: target.payment.filter(|value| self.payment != Some(*value)),
            shipment: target
                .shipment
                .filter(|value| self.shipment != Some(*value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_values_parse_case_insensitively_and_print_exactly() {
        assert_eq!(PaymentState::parse("pending"), Some(PaymentState::Pending));
        assert_eq!(PaymentState::parse(" PAID "), Some(PaymentState::Paid));
        assert_eq!(
            PaymentState::parse("balancedue"),
            Some(PaymentState::BalanceDue)
        );
        assert_eq!(
            ShipmentState::parse("canceled"),
            Some(ShipmentState::Canceled)
        );
        assert_eq!(
            ShipmentState::parse("cancelled"),
            None,
            "commercetools spells it Canceled"
        );
        assert_eq!(OrderState::parse("Cancelled"), Some(OrderState::Cancelled));
        assert_eq!(OrderState::Confirmed.as_str(), "Confirmed");
        assert_eq!(OrderState::parse("Shipped"), None);
    }

    #[test]
    fn newer_fields_win_and_only_differences_are_changes() {
        let older = HeaderStates {
            order: Some(OrderState::Open),
            payment: Some(PaymentState::Pending),
            shipment: None,
        };
        let newer = HeaderStates {
            order: Some(OrderState::Confirmed),
            ..HeaderStates::default()
        };
        let folded = older.then(newer);
        assert_eq!(folded.order, Some(OrderState::Confirmed));
        assert_eq!(folded.payment, Some(PaymentState::Pending));
        let current = HeaderStates {
            order: Some(OrderState::Confirmed),
            payment: Some(PaymentState::Paid),
            shipment: Some(ShipmentState::Pending),
        };
        let changes = current.changes_towards(&folded);
        assert_eq!(
            changes,
            HeaderStates {
                payment: Some(PaymentState::Pending),
                ..HeaderStates::default()
            }
        );
        assert!(current.changes_towards(&current).is_empty());
    }
}
