//! The gateway's log lines join its traces whatever `RUST_LOG` shows: under `RUST_LOG=warn`
//! the webhook's own (`info`) span is filtered out, and the line saying why a webhook was
//! refused names the server span's trace and span ids itself.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use e2e_tests::otlp::{Receiver, Transport};
use e2e_tests::webhook::{order_status_event, signed};
use e2e_tests::{DEADLINE, nats_url, unique};
use tokio::time::Instant;

use crate::gateway::{Gateway, Target};

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_logged_under_rust_log_warn_names_the_trace_of_its_server_span()
-> anyhow::Result<()> {
    let receiver = Receiver::start(Transport::Http).await?;
    let endpoint = receiver.env()[0].1.clone();
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("ingest.log");
    let gateway = Gateway::start_with(
        &Target::nats(nats_url()),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ],
        Some(&log),
    )
    .await?;
    let id = unique("unsigned");
    let body = order_status_event(&id, &unique("ORDER"), "1", "BOOKED");
    let (status, code, _) = gateway
        .post(&body, &signed(b"not the gateway's secret", &id, &body))
        .await?;
    ensure!(status == 401, "the forged webhook got {status} {code}");
    let deadline = Instant::now() + DEADLINE;
    let server = loop {
        let refused = receiver.spans().into_iter().find(|span| {
            span.service == "ingest"
                && span
                    .attributes
                    .get("http.response.status_code")
                    .map(String::as_str)
                    == Some("401")
        });
        if let Some(span) = refused {
            break span;
        }
        ensure!(Instant::now() < deadline, "no server span for the refusal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let refusal = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["message"] == "webhook refused");
        if let Some(line) = refusal {
            break line;
        }
        ensure!(
            Instant::now() < deadline,
            "no refusal line in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids = (
        line["trace_id"].as_str().context("no trace_id")?,
        line["span_id"].as_str().context("no span_id")?,
    );
    ensure!(
        ids == (server.trace_id.as_str(), server.span_id.as_str()),
        "the refusal line {line} names another span than {server:?}"
    );
    Ok(())
}
