//! Ready-made data for tests, benchmarks and the demo.

use serde_json::{Value, json};

/// The names of Fluent's three status-mapping settings (note the two spellings).
pub const ORDER_SETTING: &str = "fc.connect.commercetools.order.order-status-mapping";
/// The payment-state mapping setting.
pub const PAYMENT_SETTING: &str = "fc.connect.commerce-tools.order.payment-status-mapping";
/// The shipment-state mapping setting.
pub const SHIPPING_SETTING: &str = "fc.connect.commerce-tools.order.shipping-status-mapping";

/// The message name of Fluent's order-status webhooks (what the order-status handler takes).
pub const ORDER_STATUS_EVENT: &str = "fc.connect.order.webhook.order-status-update";

/// The body of Fluent's webhook `id` telling that order `order_ref` of `retailer` (account
/// `ACME`) moved to `status`, with every field the gateway requires by default.
pub fn order_status_event(id: &str, order_ref: &str, retailer: &str, status: &str) -> String {
    json!({
        "id": id, "name": ORDER_STATUS_EVENT, "accountId": "ACME", "retailerId": retailer,
        "entityId": "1", "entityRef": order_ref, "entityType": "ORDER",
        "entityStatus": status, "type": "NORMAL", "attributes": {},
        "rootEntityId": "1", "rootEntityRef": order_ref, "rootEntityType": "ORDER"
    })
    .to_string()
}

/// The example mapping of Fluent's documentation of its commercetools connector: the three
/// settings' names and JSON values.
pub fn documented_mapping() -> [(&'static str, Value); 3] {
    [
        (
            ORDER_SETTING,
            json!({"fluent": {
                "RECEIVED": "Open", "PENDING_PAYMENT": "Open", "ESCALATED": "Open",
                "BOOKED": "Confirmed", "PICK_PACK": "Confirmed", "PICK_PACK_CC": "Confirmed",
                "AWAITING_CUSTOMER_COLLECTION": "Confirmed",
                "AWAITING_COURIER_COLLECTION": "Confirmed",
                "COMPLETE": "Complete", "CANCELLED": "Cancelled"}}),
        ),
        (
            PAYMENT_SETTING,
            json!({"fluent": {"RECEIVED": "pending", "PENDING_PAYMENT": "pending", "BOOKED": "paid"}}),
        ),
        (
            SHIPPING_SETTING,
            json!({"fluent": {"RECEIVED": "Pending", "BOOKED": "Pending", "PICK_PACK": "Pending",
                "AWAITING_COURIER_COLLECTION": "Shipped", "COMPLETE": "Shipped"}}),
        ),
    ]
}
