//! The gateway over real HTTP: every status path, signatures, the bus record it publishes.

mod hostile;
mod kafka;
mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::bus::headers;
use proptest::prelude::*;
use support::{KeyPair, TestApp, body};

#[tokio::test]
async fn accepts_signed_webhook_and_publishes_the_raw_body_keyed_by_order_ref() {
    let key = KeyPair::shared();
    let app = TestApp::builder().key(key).spawn().await;
    let body = body("e-1", "ORDER-1");
    let response = app.post_signed(key, &body).await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        serde_json::json!({ "status": "accepted", "id": "e-1" })
    );

    let published = app.memory.published();
    assert_eq!(published.len(), 1);
    let record = &published[0].1;
    assert_eq!(record.key, "ORDER-1");
    assert_eq!(
        record.payload,
        body.as_bytes(),
        "the value must be the body byte for byte"
    );
    assert_eq!(record.headers.get_str(headers::EVENT_ID), Some("e-1"));
    assert_eq!(
        record.headers.get_str(headers::EVENT_NAME),
        Some("OrderStatus")
    );
    assert_eq!(record.headers.get_str(headers::ACCOUNT_ID), Some("ACME"));
    let received = record.headers.get_str(headers::RECEIVED_AT).unwrap();
    humantime::parse_rfc3339(received).unwrap();
}

#[tokio::test]
async fn a_record_carries_the_gateways_trace_context_never_the_senders() {
    // This test's process traces as `ingest` does with an endpoint (one nothing listens on:
    // the exports fail in the background).
    let env = [(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        "http://127.0.0.1:9".to_owned(),
    )]
    .into_iter()
    .collect();
    let config = common::config::Config::from_sources(&env, None).unwrap();
    std::mem::forget(common::telemetry::init(&config.telemetry, "ingest-test").unwrap());
    let key = KeyPair::shared();
    let app = TestApp::builder().key(key).spawn().await;
    let body = body("e-2", "ORDER-2");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .post_to(
            "/api/v1/fluent-connect/webhook",
            &body,
            &[
                ("x-fluent-signature", &key.sign(&body)),
                ("traceparent", traceparent),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    let record = &app.memory.published()[0].1;
    let ours = record
        .headers
        .get_str(headers::TRACEPARENT)
        .expect("the record carries a traceparent");
    // version-traceid-spanid-flags: a valid context of a trace the gateway started.
    let parts: Vec<&str> = ours.split('-').collect();
    assert_eq!(parts.len(), 4, "{ours}");
    assert_eq!(parts[1].len(), 32, "{ours}");
    assert_ne!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the sender's trace: {ours}"
    );
    assert_ne!(parts[1], "0".repeat(32), "{ours}");
}

#[tokio::test]
async fn rejects_tampered_body_and_publishes_nothing() {
    let key = KeyPair::shared();
    let app = TestApp::builder().key(key).spawn().await;
    let body = body("e-3", "ORDER-3");
    let signature = key.sign(&body);
    let tampered = body.replacen("ORDER-3", "ORDER-4", 1);
    let response = app
        .post(&tampered, &[("fluent-signature", &signature)])
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(support::error_code(response).await, "bad_signature");
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn rejects_signature_of_an_unknown_key() {
    let app = TestApp::builder().key(KeyPair::shared()).spawn().await;
    let other = KeyPair::generate();
    let body = body("e-4", "ORDER-4");
    let response = app.post_signed(&other, &body).await;
    assert_eq!(response.status(), 401);
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn accepts_either_key_during_rotation() {
    let (old, new) = (KeyPair::shared(), KeyPair::generate());
    let app = TestApp::builder().key(old).key(&new).spawn().await;
    for (n, key) in [old, &new].into_iter().enumerate() {
        let body = body(&format!("e-rot-{n}"), "ORDER-ROT");
        let response = app
            .post(&body, &[("fluent_signature", &key.sign(&body))])
            .await;
        assert_eq!(response.status(), 200, "key {n}");
    }
    assert_eq!(app.memory.published().len(), 2);
}

#[tokio::test]
async fn rejects_webhook_without_signature() {
    let app = TestApp::builder().key(KeyPair::shared()).spawn().await;
    let response = app.post(&body("e-5", "ORDER-5"), &[]).await;
    assert_eq!(response.status(), 401);
    assert_eq!(support::error_code(response).await, "missing_signature");
}

#[tokio::test]
async fn accepts_the_webhook_fluent_signed_and_rejects_it_altered() {
    let Some(vector) = support::FluentVector::load() else {
        eprintln!("skipping: ../shared/upstream/fluent-webhook-vector is absent");
        return;
    };
    let app = TestApp::builder()
        .public_key_b64(&vector.public_key)
        .spawn()
        .await;
    let response = app
        .post_bytes(&vector.body, &[("fluent-signature", &vector.signature)])
        .await;
    assert_eq!(response.status(), 200);
    let mut altered = vector.body.clone();
    altered[10] ^= 1;
    let response = app
        .post_bytes(&altered, &[("fluent-signature", &vector.signature)])
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(app.memory.published().len(), 1);
}

#[tokio::test]
async fn accepts_legacy_md5_signature_only_when_enabled() {
    let Some(vector) = support::FluentVector::load() else {
        eprintln!("skipping: ../shared/upstream/fluent-webhook-vector is absent");
        return;
    };
    let legacy = [("flex.signature", vector.flex_signature.as_str())];
    let app = TestApp::builder()
        .public_key_b64(&vector.public_key)
        .spawn()
        .await;
    let response = app.post_bytes(&vector.body, &legacy).await;
    assert_eq!(response.status(), 401, "MD5 must be off by default");
    assert_eq!(support::error_code(response).await, "missing_signature");

    let app = TestApp::builder()
        .public_key_b64(&vector.public_key)
        .env("INGEST_LEGACY_MD5_SIGNATURE", "true")
        .spawn()
        .await;
    assert_eq!(app.post_bytes(&vector.body, &legacy).await.status(), 200);
    let mut altered = vector.body.clone();
    altered[20] ^= 1;
    assert_eq!(app.post_bytes(&altered, &legacy).await.status(), 401);
    assert_eq!(app.memory.published().len(), 1);
}

#[tokio::test]
async fn hmac_mode_accepts_valid_signatures_and_rejects_stale_or_foreign_ones() {
    let app = TestApp::builder()
        .hmac_secret(b"partner-secret-1")
        .spawn()
        .await;
    let body = body("e-6", "ORDER-6");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign =
        |secret: &[u8], timestamp: u64| support::hmac_headers(secret, "msg-1", timestamp, &body);

    let ok = app
        .post_headers(&body, sign(b"partner-secret-1", now))
        .await;
    assert_eq!(ok.status(), 200);
    let stale = app
        .post_headers(&body, sign(b"partner-secret-1", now - 600))
        .await;
    assert_eq!(stale.status(), 401);
    assert_eq!(support::error_code(stale).await, "invalid_timestamp");
    let foreign = app.post_headers(&body, sign(b"someone-else", now)).await;
    assert_eq!(foreign.status(), 401);
    assert_eq!(support::error_code(foreign).await, "bad_signature");
    assert_eq!(app.memory.published().len(), 1);
}

#[tokio::test]
async fn rejects_bad_json_and_names_the_missing_field() {
    let key = KeyPair::shared();
    let app = TestApp::builder().key(key).spawn().await;
    let broken = r#"{"id": "e-7""#;
    let response = app
        .post(broken, &[("fluent-signature", &key.sign(broken))])
        .await;
    assert_eq!(response.status(), 400);
    assert_eq!(support::error_code(response).await, "invalid_json");

    let missing = body("e-8", "ORDER-8").replace(r#""entityStatus":"BOOKED","#, "");
    let response = app.post_signed(key, &missing).await;
    assert_eq!(response.status(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "missing_field");
    assert!(
        answer["detail"].as_str().unwrap().contains("entityStatus"),
        "{answer}"
    );
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn rejects_wrong_content_type_and_oversized_bodies() {
    let key = KeyPair::shared();
    let app = TestApp::builder()
        .key(key)
        .env("INGEST_BODY_LIMIT_BYTES", "2048")
        .spawn()
        .await;
    let body = body("e-9", "ORDER-9");
    let response = app
        .client
        .post(app.url("/webhooks/fluent"))
        .header("content-type", "text/plain")
        .header("fluent-signature", key.sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(
        support::error_code(response).await,
        "unsupported_media_type"
    );

    let large = body.replace(
        "\"attributes\":{}",
        &format!("\"attributes\":{{\"x\":\"{}\"}}", "a".repeat(4096)),
    );
    let response = app.post_signed(key, &large).await;
    assert_eq!(response.status(), 413);
    assert_eq!(support::error_code(response).await, "payload_too_large");
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn applies_account_and_event_name_allow_lists() {
    let key = KeyPair::shared();
    let app = TestApp::builder()
        .key(key)
        .env("INGEST_ALLOWED_ACCOUNTS", "OTHER")
        .spawn()
        .await;
    let body = body("e-10", "ORDER-10");
    let response = app.post_signed(key, &body).await;
    assert_eq!(response.status(), 403);
    assert_eq!(support::error_code(response).await, "account_not_allowed");

    let app = TestApp::builder()
        .key(key)
        .env("INGEST_ALLOWED_NAMES", "Other")
        .spawn()
        .await;
    let response = app.post_signed(key, &body).await;
    assert_eq!(response.status(), 422);
    assert_eq!(support::error_code(response).await, "event_not_allowed");
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn refuses_to_start_without_keys_unless_explicitly_insecure() {
    let config = support::config(&[("BUS", "memory")]);
    let error = ingest::App::build(&config, &Default::default())
        .await
        .err()
        .expect("no keys");
    assert!(
        error.to_string().contains("FLUENT_WEBHOOK_PUBLIC_KEYS"),
        "{error}"
    );

    let app = TestApp::builder()
        .env("INGEST_INSECURE_NO_SIGNATURE", "true")
        .spawn()
        .await;
    let response = app.post(&body("e-11", "ORDER-11"), &[]).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn serves_health_and_counts_outcomes() {
    let key = KeyPair::shared();
    let app = TestApp::builder().key(key).spawn().await;
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    support::eventually(|| async {
        app.client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    let body = body("e-12", "ORDER-12");
    app.post_signed(key, &body).await;
    app.post(&body, &[("fluent-signature", "AAAA")]).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ingest_requests_total{outcome="accepted"} 1"#),
        "{metrics}"
    );
    let build = format!(
        r#"ingest_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{metrics}");
    assert!(
        metrics.contains(r#"ingest_requests_total{outcome="bad_signature"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingest_publish_duration_seconds_count 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let key = KeyPair::shared();
    let app = TestApp::builder().key(key).spawn().await;
    let request = |id: &str| {
        let body = body(id, "ORDER-13");
        let head = format!(
            "POST /webhooks/fluent HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             fluent-signature: {}\r\ncontent-length: {}\r\n\r\n",
            key.sign(&body),
            body.len()
        );
        (head, body)
    };
    let mut connection = tokio::net::TcpStream::connect(app.address).await.unwrap();
    // A first, complete request proves the server has taken the connection.
    let (head, body) = request("e-13");
    connection
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let mut buffer = vec![0; 4096];
    let read = connection.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    // The second is half sent when shutdown starts, and must still be answered.
    let (head, body) = request("e-14");
    let (first_half, second_half) = body.split_at(body.len() / 2);
    connection
        .write_all(format!("{head}{first_half}").as_bytes())
        .await
        .unwrap();
    let stopping = app.stop_after(Duration::ZERO);
    let finishing = async {
        connection.write_all(second_half.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        connection.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let (stopped, answer) = tokio::join!(stopping, finishing);
    stopped.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(app.memory.published().len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever arrives, the gateway answers (no panic) and publishes nothing unsigned.
    #[test]
    fn arbitrary_bodies_and_signatures_never_publish(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        signature in "[ -~]{0,200}",
        as_object in any::<bool>(),
    ) {
        support::RUNTIME.block_on(async {
            let app = support::shared_app().await;
            let payload = if as_object {
                let mut object = body("e-p", "ORDER-P").into_bytes();
                object.extend_from_slice(&payload);
                object
            } else {
                payload
            };
            let response = app.post_bytes(&payload, &[("fluent-signature", &signature)]).await;
            prop_assert!(matches!(response.status().as_u16(), 400 | 401), "{}", response.status());
            prop_assert!(app.memory.published().is_empty());
            Ok(())
        })?;
    }
}
