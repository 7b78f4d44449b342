//! What the demo prints at the end: each order's Fluent status beside its three commercetools
//! states (and what they should be), then a summary of what it took to get there.

use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Color, ContentArrangement, Table};

use crate::scenario::States;

/// One order's ending.
#[derive(Debug, Clone)]
pub struct OrderResult {
    /// The order ref.
    pub order_ref: String,
    /// The status of Fluent's last webhook.
    pub fluent_status: String,
    /// What commercetools holds.
    pub actual: States,
    /// What the mapping says it should hold.
    pub expected: States,
}

impl OrderResult {
    /// Whether the order ended as the mapping says.
    pub fn is_right(&self) -> bool {
        self.actual == self.expected
    }
}

/// The run's totals.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Webhooks Fluent sent, duplicates included.
    pub webhooks: u64,
    /// Published by the gateway.
    pub accepted: u64,
    /// Answered as replays of a webhook already published.
    pub replays: u64,
    /// Deliveries Fluent repeated because the gateway did not answer 200.
    pub redeliveries: u64,
    /// Handler calls retried or waiting for an API.
    pub retried: u64,
    /// Records handed to the handler together with an earlier one of their order.
    pub coalesced: u64,
    /// Records in the DLQ.
    pub dead_lettered: u64,
    /// Calls to Fluent (tokens, GraphQL).
    pub fluent_calls: u64,
    /// Calls to commercetools (tokens, GraphQL).
    pub ct_calls: u64,
    /// commercetools updates that happened.
    pub updates: u64,
    /// Acceptance → the order's next commercetools update, milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// The bus used.
    pub bus: String,
    /// Seconds from the first webhook to the last order settled.
    pub seconds: f64,
}

/// The nearest-rank percentile `p` (0–100) of sorted `values`.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// The table of orders.
pub fn orders_table(results: &[OrderResult]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "order",
            "Fluent status",
            "orderState",
            "paymentState",
            "shipmentState",
            "",
        ]);
    for result in results {
        let cell = |actual: &Option<String>, expected: &Option<String>| {
            let text = actual.as_deref().unwrap_or("-");
            if actual == expected {
                Cell::new(text)
            } else {
                let want = expected.as_deref().unwrap_or("-");
                Cell::new(format!("{text} (want {want})")).fg(Color::Red)
            }
        };
        let (actual, expected) = (&result.actual, &result.expected);
        table.add_row([
            Cell::new(&result.order_ref),
            Cell::new(&result.fluent_status),
            cell(&actual.order, &expected.order),
            cell(&actual.payment, &expected.payment),
            cell(&actual.shipment, &expected.shipment),
            if result.is_right() {
                Cell::new("ok").fg(Color::Green)
            } else {
                Cell::new("WRONG").fg(Color::Red)
            },
        ]);
    }
    table
}

/// The summary below the table.
pub fn summary_text(summary: &Summary, results: &[OrderResult]) -> String {
    let wrong = results.iter().filter(|result| !result.is_right()).count();
    let ms =
        |p| percentile(&summary.latencies_ms, p).map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} orders over {} in {:.1} s: {} right, {} wrong",
        results.len(),
        summary.bus,
        summary.seconds,
        results.len() - wrong,
        wrong
    );
    let lines = [
        (
            "webhooks sent (with Fluent's duplicates)",
            summary.webhooks.to_string(),
        ),
        ("accepted and published", summary.accepted.to_string()),
        (
            "duplicates answered as replays",
            summary.replays.to_string(),
        ),
        ("redelivered by Fluent", summary.redeliveries.to_string()),
        (
            "handler calls retried or waiting",
            summary.retried.to_string(),
        ),
        (
            "records coalesced into one update",
            summary.coalesced.to_string(),
        ),
        ("dead-lettered", summary.dead_lettered.to_string()),
        (
            "upstream calls (Fluent / commercetools)",
            format!("{} / {}", summary.fluent_calls, summary.ct_calls),
        ),
        ("commercetools updates", summary.updates.to_string()),
        (
            "acceptance -> update p50 / p99",
            format!("{} / {}", ms(50.0), ms(99.0)),
        ),
    ];
    for (label, value) in lines {
        let _ = writeln!(text, "  {label:<42} {value}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_wrong_order_is_marked_with_what_it_should_be() {
        let states = |order: &str| States {
            order: Some(order.into()),
            payment: Some("paid".into()),
            shipment: None,
        };
        let results = [OrderResult {
            order_ref: "DEMO-0001".into(),
            fluent_status: "COMPLETE".into(),
            actual: states("Confirmed"),
            expected: states("Complete"),
        }];
        let table = orders_table(&results).to_string();
        assert!(table.contains("Confirmed (want Complete)"), "{table}");
        assert!(table.contains("WRONG"), "{table}");
        let summary = summary_text(&Summary::default(), &results);
        assert!(summary.contains("0 right, 1 wrong"), "{summary}");
    }
}
