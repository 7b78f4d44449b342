//! The story the demo tells, decided up front from the seed: which orders exist, the statuses
//! each walks through, which webhooks Fluent sends twice, and which commercetools orders
//! someone else edits meanwhile. Pure, so one seed is one story.

use std::collections::BTreeMap;

use serde_json::Value;

/// The happy path of an order.
pub const WALK: [&str; 5] = [
    "RECEIVED",
    "BOOKED",
    "PICK_PACK",
    "AWAITING_COURIER_COLLECTION",
    "COMPLETE",
];

/// How often an order is cancelled part-way, a webhook is sent twice, and (with faults) a
/// commercetools order is edited by someone else or its next update conflicts.
const CANCEL_RATE: f64 = 0.2;
const DUPLICATE_RATE: f64 = 0.15;
const BUMP_RATE: f64 = 0.1;
const CONFLICT_RATE: f64 = 0.2;

/// One order's part in the story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPlan {
    /// The Fluent order ref (`rootEntityRef`), also the commercetools order number.
    pub order_ref: String,
    /// The statuses its webhooks carry, in order.
    pub statuses: Vec<&'static str>,
    /// Indexes into `statuses` whose webhook Fluent delivers twice.
    pub duplicates: Vec<usize>,
    /// Someone edits the commercetools order before the webhook at this index (its version
    /// moves on, so our next update starts from a stale version).
    pub bump_before: Option<usize>,
    /// The first updates of the commercetools order fail with `ConcurrentModification`.
    pub conflicts: u32,
}

/// The orders of the story told by `seed`; `faults` adds the edits and conflicts.
pub fn plan(orders: usize, seed: u64, faults: bool) -> Vec<OrderPlan> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (1..=orders)
        .map(|n| {
            let mut statuses = WALK.to_vec();
            if rng.f64() < CANCEL_RATE {
                // Cancelled after it was booked, picked or packed.
                let kept = rng.usize(2..=4);
                statuses.truncate(kept);
                statuses.push("CANCELLED");
            }
            let duplicates = (0..statuses.len())
                .filter(|_| rng.f64() < DUPLICATE_RATE)
                .collect();
            let bump_before =
                (faults && rng.f64() < BUMP_RATE).then(|| rng.usize(1..statuses.len()));
            let conflicts = u32::from(faults && rng.f64() < CONFLICT_RATE);
            OrderPlan {
                order_ref: format!("DEMO-{n:04}"),
                statuses,
                duplicates,
                bump_before,
                conflicts,
            }
        })
        .collect()
}

/// commercetools' `OrderState`, `PaymentState` and `ShipmentState` values, as its API spells
/// them.
const ORDER_STATES: &[&str] = &["Open", "Confirmed", "Complete", "Cancelled"];
const PAYMENT_STATES: &[&str] = &["BalanceDue", "Failed", "Pending", "CreditOwed", "Paid"];
const SHIPMENT_STATES: &[&str] = &[
    "Shipped",
    "Delivered",
    "Ready",
    "Pending",
    "Delayed",
    "Partial",
    "Backorder",
];

/// The three commercetools header states an order should end with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct States {
    /// `orderState`.
    pub order: Option<String>,
    /// `paymentState`.
    pub payment: Option<String>,
    /// `shipmentState`.
    pub shipment: Option<String>,
}

/// Fluent's three mapping settings as the demo reads them, independently of the handler's
/// own code: Fluent status → commercetools state, per field.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    order: BTreeMap<String, String>,
    payment: BTreeMap<String, String>,
    shipment: BTreeMap<String, String>,
}

impl Expectation {
    /// Reads the settings `[(name, value)]` in the shape Fluent stores them
    /// (`{"fluent": {STATUS: state}}`), matching names by the field they map. Statuses and
    /// states are case-insensitive in the settings (Fluent's example writes `paid`); the
    /// expectation holds commercetools' own spelling (`Paid`), which is what an order shows.
    pub fn from_settings(settings: &[(&str, Value)]) -> Self {
        let mut expectation = Self::default();
        for (name, value) in settings {
            let (field, spellings) = if name.contains("payment") {
                (&mut expectation.payment, PAYMENT_STATES)
            } else if name.contains("shipping") {
                (&mut expectation.shipment, SHIPMENT_STATES)
            } else {
                (&mut expectation.order, ORDER_STATES)
            };
            let entries = value
                .get("fluent")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(status, state)| {
                    let state = state.as_str()?;
                    let spelled = spellings
                        .iter()
                        .find(|spelling| spelling.eq_ignore_ascii_case(state))
                        .map_or_else(|| state.to_owned(), |spelling| (*spelling).to_owned());
                    Some((status.to_ascii_uppercase(), spelled))
                });
            field.extend(entries);
        }
        expectation
    }

    /// The states after `statuses`, starting from `initial`: each field takes the state of
    /// the newest status its setting maps, and keeps its value when none does.
    pub fn after(&self, initial: &States, statuses: &[&str]) -> States {
        let mut states = initial.clone();
        for status in statuses {
            let status = status.to_ascii_uppercase();
            if let Some(state) = self.order.get(&status) {
                states.order = Some(state.clone());
            }
            if let Some(state) = self.payment.get(&status) {
                states.payment = Some(state.clone());
            }
            if let Some(state) = self.shipment.get(&status) {
                states.shipment = Some(state.clone());
            }
        }
        states
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documented() -> Expectation {
        Expectation::from_settings(&sandbox::seed::documented_mapping())
    }

    #[test]
    fn one_seed_tells_one_story_and_another_seed_another() {
        assert_eq!(plan(30, 7, true), plan(30, 7, true));
        assert_ne!(plan(30, 7, true), plan(30, 8, true));
        let orders = plan(200, 1, true);
        assert!(
            orders
                .iter()
                .any(|order| order.statuses.contains(&"CANCELLED"))
        );
        assert!(orders.iter().any(|order| !order.duplicates.is_empty()));
        assert!(orders.iter().any(|order| order.conflicts > 0));
        assert!(orders.iter().any(|order| order.bump_before.is_some()));
        for order in &orders {
            assert_eq!(order.statuses[0], "RECEIVED");
            let last = *order.statuses.last().unwrap();
            assert!(last == "COMPLETE" || last == "CANCELLED", "{order:?}");
        }
        let calm = plan(200, 1, false);
        assert!(
            calm.iter()
                .all(|order| order.conflicts == 0 && order.bump_before.is_none())
        );
    }

    #[test]
    fn the_documented_mapping_ends_a_completed_order_complete_paid_and_shipped() {
        let open = States {
            order: Some("Open".into()),
            ..States::default()
        };
        let states = documented().after(&open, &WALK);
        assert_eq!(states.order.as_deref(), Some("Complete"));
        // commercetools' spelling, whatever case the setting used.
        assert_eq!(states.payment.as_deref(), Some("Paid"));
        assert_eq!(states.shipment.as_deref(), Some("Shipped"));
        // Cancelled after picking: CANCELLED maps only the order state.
        let cancelled =
            documented().after(&open, &["RECEIVED", "BOOKED", "PICK_PACK", "CANCELLED"]);
        assert_eq!(cancelled.order.as_deref(), Some("Cancelled"));
        assert_eq!(cancelled.payment.as_deref(), Some("Paid"));
        assert_eq!(cancelled.shipment.as_deref(), Some("Pending"));
    }
}
