//! Trace export over TLS, as a vendor's or a central collector's OTLP endpoint requires: the
//! gateway exports to an `https` receiver whose certificate only a private CA vouches for
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`) and which refuses clients without a certificate of that
//! CA (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_KEY`), over both protocols. The receiver
//! sits behind a TLS-terminating proxy, so the session is real TLS to a real socket.

use std::time::Duration;

use anyhow::ensure;
use e2e_tests::otlp::{Receiver, Transport};
use e2e_tests::{DEADLINE, nats_url, unique};
use tokio::time::Instant;

use crate::gateway::{Gateway, Target};
use crate::tls_proxy::{Pki, ProxyTls, serve_tls_proxy_with};

async fn spans_reach_an_https_receiver_asking_for_a_client_certificate(
    transport: Transport,
) -> anyhow::Result<()> {
    let receiver = Receiver::start(transport).await?;
    let pki = Pki::new()?;
    let files = tempfile::tempdir()?;
    let path = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = files.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let ca = path("ca.pem", &pki.ca_pem)?;
    let certificate = path("client.pem", &pki.client_pem.0)?;
    let key = path("client.key", &pki.client_pem.1)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (protocol, alpn) = match transport {
        Transport::Http => ("http/protobuf", b"http/1.1".to_vec()),
        Transport::Grpc => ("grpc", b"h2".to_vec()),
    };
    let (server_certificate, server_key) = pki.server;
    tokio::spawn(serve_tls_proxy_with(
        listener,
        server_certificate,
        server_key,
        receiver.address().to_string(),
        ProxyTls {
            alpn: vec![alpn],
            client_ca: Some(pki.ca),
        },
    ));
    let endpoint = format!("https://127.0.0.1:{port}");
    if let Transport::Http = transport {
        // The receiver's side holds: a client trusting the CA but without a certificate of
        // its own is turned away.
        let anonymous = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?)
            .build()?;
        let answer = anonymous
            .post(format!("{endpoint}/v1/traces"))
            .body(Vec::new())
            .send()
            .await;
        ensure!(
            answer.is_err(),
            "a client without a certificate got {answer:?}"
        );
    }
    let gateway = Gateway::start(
        &Target::nats(nats_url()),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &certificate),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await?;
    let id = unique("tls-trace");
    let (status, code, _) = gateway.post_event(&id, &unique("ORDER")).await?;
    ensure!(status == 200, "the webhook was refused: {status} {code}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let spans = receiver.spans();
        if spans
            .iter()
            .any(|span| span.service == "ingest" && span.name.starts_with("POST /webhooks/fluent"))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no server span reached the receiver over TLS ({protocol}); received: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_https_otlp_http_receiver_that_asks_for_a_client_certificate()
-> anyhow::Result<()> {
    spans_reach_an_https_receiver_asking_for_a_client_certificate(Transport::Http).await
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_an_https_otlp_grpc_receiver_that_asks_for_a_client_certificate()
-> anyhow::Result<()> {
    spans_reach_an_https_receiver_asking_for_a_client_certificate(Transport::Grpc).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_key_that_is_not_the_certificates_stops_the_gateway_at_start_naming_it()
-> anyhow::Result<()> {
    let (pki, other) = (Pki::new()?, Pki::new()?);
    let files = tempfile::tempdir()?;
    let certificate = files.path().join("client.pem");
    let key = files.path().join("other.key");
    std::fs::write(&certificate, &pki.client_pem.0)?;
    std::fs::write(&key, &other.client_pem.1)?;
    let env = vec![
        ("BUS", "memory".to_owned()),
        (
            "WEBHOOK_HMAC_SECRETS",
            e2e_tests::webhook::hmac_secret_setting(b"s"),
        ),
        ("INGEST_LISTEN", "127.0.0.1:0".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://127.0.0.1:4318".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            certificate.display().to_string(),
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.display().to_string()),
    ];
    let output =
        e2e_tests::process::run(&e2e_tests::process::workspace_binary("ingest")?, &[], &env)
            .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "the gateway started: {stderr}");
    ensure!(
        stderr.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY")
            && stderr.contains(&key.display().to_string())
            && stderr.contains("is not the key of"),
        "{stderr}"
    );
    Ok(())
}
