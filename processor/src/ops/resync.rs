//! `processor resync --order-ref R [--dry-run]`: prints what it read in Fluent, what the
//! mapping makes of it, what commercetools held, and what it changed.

use std::io::Write;

use common::config::Config;
use order_status::{HeaderStates, OrderStatusUpdate, Resync};

use super::OpsError;

/// Sets the order's commercetools states from its Fluent status now (or, with `dry_run`,
/// only says what it would set).
pub async fn resync(
    config: &Config,
    order_ref: &str,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Resync, OpsError> {
    let (handler, _metrics) = OrderStatusUpdate::from_config(config)?;
    let handler = handler.dry_run(dry_run);
    let correlation_id = format!("resync-{}", uuid::Uuid::new_v4());
    let done = handler.resync(order_ref, &correlation_id).await?;
    writeln!(out, "order {order_ref}")?;
    writeln!(
        out,
        "  Fluent status:      {} (retailer {})",
        done.fluent_status,
        if done.retailer_id.is_empty() {
            "none: ACCOUNT settings"
        } else {
            &done.retailer_id
        }
    )?;
    writeln!(out, "  mapped to:          {}", states(&done.target))?;
    writeln!(
        out,
        "  commercetools held: {} (order {}, version {})",
        states(&done.before),
        done.order_id,
        done.version
    )?;
    let verb = match (done.changes.is_empty(), done.sent) {
        (true, _) => "nothing to change".to_owned(),
        (false, true) => format!("changed: {}", states(&done.changes)),
        (false, false) => format!("would change (dry run): {}", states(&done.changes)),
    };
    writeln!(out, "  {verb}")?;
    Ok(done)
}

/// `orderState=Confirmed paymentState=Paid shipmentState=-`.
fn states(states: &HeaderStates) -> String {
    fn or_dash(value: Option<impl std::fmt::Display>) -> String {
        value.map_or_else(|| "-".to_owned(), |value| value.to_string())
    }
    format!(
        "orderState={} paymentState={} shipmentState={}",
        or_dash(states.order),
        or_dash(states.payment),
        or_dash(states.shipment)
    )
}
