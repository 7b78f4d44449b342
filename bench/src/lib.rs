//! Shared pieces of the benchmarks: realistic records and robust summaries.
//!
//! These machines are noisy, so every benchmark measures its baseline in the same run,
//! alternating rounds of the two, and reports medians and their ratio rather than absolute
//! times alone.

use bytes::Bytes;

/// A webhook body of about 600 bytes, as Fluent sends for an order status change.
pub fn webhook_body(i: usize) -> Bytes {
    format!(
        r#"{{"id":"{id}","name":"fc.connect.order.webhook.order-status-update","accountId":"ACME","retailerId":"1","entityId":"{i}","entityRef":"HD_{i:08}","entityType":"ORDER","entityStatus":"SHIPPED","type":"NORMAL","attributes":{{}},"meta":{{"mode":"SYNC","simulation":false,"models":[]}},"trailLogs":[],"errorLogs":[],"rootEntityId":"{i}","rootEntityType":"ORDER","rootEntityRef":"HD_{i:08}","source":"benchmark","padding":"{pad}"}}"#,
        id = uuid::Uuid::new_v4(),
        pad = "x".repeat(150),
    )
    .into()
}

/// The median of `values` (which it sorts).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}
