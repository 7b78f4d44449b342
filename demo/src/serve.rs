//! `--serve`: after the story, everything keeps running for people to poke at, with
//! ready-to-paste `curl` commands carrying valid signatures.

use std::io::Write;

use crate::DemoError;
use crate::fluent::{Signer, event_body, put_orders};
use crate::stack::Stack;

/// The order the printed commands move.
const ORDER_REF: &str = "DEMO-TRY-1";

/// Creates one more order in both APIs and prints how to move it, where to look at it and
/// where the metrics are.
pub fn print_instructions(
    stack: &Stack,
    signer: &Signer,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let ct_id = put_orders(stack, ORDER_REF, "BOOKED");
    writeln!(out, "\nEverything keeps running; Ctrl-C stops it.\n")?;
    writeln!(
        out,
        "Move order {ORDER_REF} to BOOKED (send it twice: the second is answered as a replay):"
    )?;
    let body = event_body("try-1", ORDER_REF, "BOOKED");
    writeln!(
        out,
        "{}\n",
        curl(&stack.webhook_url, &body, &signer.sign(&body)?)
    )?;
    writeln!(out, "Then to COMPLETE:")?;
    let body = event_body("try-2", ORDER_REF, "COMPLETE");
    writeln!(
        out,
        "{}\n",
        curl(&stack.webhook_url, &body, &signer.sign(&body)?)
    )?;
    writeln!(out, "Its commercetools order:")?;
    writeln!(
        out,
        "  curl -s {}/admin/ct/orders/{ct_id}\n",
        stack.sandbox_url
    )?;
    writeln!(
        out,
        "Sandbox admin API (orders, settings, faults, calls): {}/admin",
        stack.sandbox_url
    )?;
    writeln!(out, "  curl -s {}/admin/calls", stack.sandbox_url)?;
    writeln!(
        out,
        "Gateway metrics:   curl -s {}",
        stack.ingest_metrics_url
    )?;
    writeln!(
        out,
        "Processor metrics: curl -s {}",
        stack.processor_metrics_url
    )?;
    out.flush()?;
    Ok(())
}

/// A `curl` posting `body` signed with `signature`, quoted for a POSIX shell.
fn curl(url: &str, body: &str, signature: &str) -> String {
    format!(
        "  curl -s -X POST {url} \\\n    -H 'content-type: application/json' \\\n    -H 'fluent-signature: {signature}' \\\n    --data '{}'",
        body.replace('\'', r"'\''")
    )
}
