//! `processor check`: the first thing to run in a new environment. It validates what it can
//! without changing anything: the configuration (loading it did), both OAuth clients (a token
//! each), the three mapping settings (every bad value reported), the webhook topic and DLQ
//! (or stream) and the consumer group's lag. Every check runs, so one run lists every problem.

use std::io::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Color, ContentArrangement, Table};
use common::bus::inspect::inspect;
use common::config::{BusKind, Config};
use common::report::chain;
use order_status::OrderStatusUpdate;

use super::OpsError;

/// One line of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Works, but probably not as meant.
    Warn,
    Fail,
}

/// The report, line by line.
struct Report {
    table: Table,
    failed: usize,
}

impl Report {
    fn new() -> Self {
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec!["check", "result", "detail"]);
        Self { table, failed: 0 }
    }

    fn line(&mut self, check: &str, verdict: Verdict, detail: impl Into<String>) {
        let (text, color) = match verdict {
            Verdict::Ok => ("ok", Color::Green),
            Verdict::Warn => ("warning", Color::Yellow),
            Verdict::Fail => ("FAILED", Color::Red),
        };
        if verdict == Verdict::Fail {
            self.failed += 1;
        }
        self.table.add_row(vec![
            Cell::new(check),
            Cell::new(text).fg(color),
            Cell::new(detail.into()),
        ]);
    }
}

/// Runs every check and prints the report; returns whether the environment is ready.
/// `retailer` picks whose settings to read (RETAILER over ACCOUNT); without it, the
/// ACCOUNT ones.
pub async fn check(
    config: &Config,
    retailer: Option<&str>,
    out: &mut dyn Write,
) -> Result<bool, OpsError> {
    let mut report = Report::new();
    report.line("configuration", Verdict::Ok, describe_bus(config));
    let (handler, _metrics) = OrderStatusUpdate::from_config(config)?;
    let correlation_id = format!("check-{}", uuid::Uuid::new_v4());
    match handler.fluent().check_credentials(&correlation_id).await {
        Ok(()) => report.line("Fluent token", Verdict::Ok, "issued"),
        Err(error) => report.line("Fluent token", Verdict::Fail, chain(&error)),
    }
    match handler
        .commercetools()
        .check_credentials(&correlation_id)
        .await
    {
        Ok(()) => report.line("commercetools token", Verdict::Ok, "issued"),
        Err(error) => report.line("commercetools token", Verdict::Fail, chain(&error)),
    }
    let context = retailer.map_or_else(|| "ACCOUNT".to_owned(), |id| format!("RETAILER {id}"));
    match handler
        .fluent()
        .mapping(retailer.unwrap_or(""), &correlation_id)
        .await
    {
        Ok(Ok(mapping)) => {
            let [order, payment, shipment] = mapping.sizes();
            let detail = format!(
                "{context}: {order} status(es) to orderState, {payment} to paymentState, \
                 {shipment} to shipmentState"
            );
            let verdict = if order == 0 || payment == 0 || shipment == 0 {
                // A missing setting is allowed (its state is never changed), rarely meant.
                Verdict::Warn
            } else {
                Verdict::Ok
            };
            report.line("mapping settings", verdict, detail);
        }
        Ok(Err(error)) => report.line("mapping settings", Verdict::Fail, error.to_string()),
        Err(error) => report.line("mapping settings", Verdict::Fail, chain(&error)),
    }
    bus_lines(config, &mut report).await;
    let ready = report.failed == 0;
    writeln!(out, "{}", report.table)?;
    if ready {
        writeln!(out, "ready")?;
    } else {
        writeln!(out, "not ready: {} check(s) failed", report.failed)?;
    }
    Ok(ready)
}

fn describe_bus(config: &Config) -> String {
    let bus = &config.bus;
    match bus.kind {
        BusKind::Kafka => format!(
            "BUS=kafka, brokers {}, topic {}, DLQ {}, group {}",
            bus.kafka.brokers.join(","),
            bus.kafka.topic,
            bus.kafka.dlq_topic,
            bus.kafka.group_id
        ),
        BusKind::Nats => format!(
            "BUS=nats, stream {}, subjects {}.*, consumers {}-*",
            bus.nats.stream, bus.nats.subject_prefix, bus.nats.consumer_prefix
        ),
        BusKind::Memory => "BUS=memory (in this process only)".to_owned(),
    }
}

async fn bus_lines(config: &Config, report: &mut Report) {
    if config.bus.kind == BusKind::Memory {
        report.line(
            "bus",
            Verdict::Warn,
            "BUS=memory: nothing reaches another process",
        );
        return;
    }
    let inspected = match inspect(&config.bus).await {
        Ok(inspected) => inspected,
        Err(error) => {
            report.line("bus", Verdict::Fail, chain(&error));
            return;
        }
    };
    for destination in &inspected.destinations {
        report.line(
            destination.role,
            Verdict::Ok,
            format!(
                "{} ({} partitions)",
                destination.name, destination.partitions
            ),
        );
    }
    let known: Vec<(u32, u64)> = inspected
        .lag
        .iter()
        .filter_map(|(partition, lag)| lag.map(|lag| (*partition, lag)))
        .collect();
    let total: u64 = known.iter().map(|(_, lag)| lag).sum();
    let unknown = inspected.lag.len() - known.len();
    let mut detail = format!("{total} record(s) behind over {} partition(s)", known.len());
    if unknown > 0 {
        detail.push_str(&format!(
            "; {unknown} partition(s) without a position yet (no processor has consumed there)"
        ));
    }
    report.line("consumer lag", Verdict::Ok, detail);
}
