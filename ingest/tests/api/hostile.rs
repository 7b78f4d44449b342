//! The gateway as an attacker meets it, over real sockets: every request gets its documented
//! status and JSON code, nothing it refuses is published, nothing panics, and slow or idle
//! clients cannot keep valid webhooks out.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::raw::{Connection, RawRequest};
use crate::support::{KeyPair, TestApp, body, hmac_headers};

const SECRET: &[u8] = b"hostile-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A webhook signed with the shared RSA key.
fn signed(body: impl Into<Vec<u8>>) -> RawRequest {
    let body = body.into();
    let signature = KeyPair::shared().sign(&body);
    RawRequest::webhook(body).header("fluent-signature", &signature)
}

async fn rsa_app() -> TestApp {
    TestApp::builder().key(KeyPair::shared()).spawn().await
}

/// Sends `request` on a new connection and returns the answer.
async fn exchange(app: &TestApp, request: &RawRequest) -> crate::support::raw::RawResponse {
    Connection::open(app.address).await.exchange(request).await
}

/// The gateway is still serving: a valid webhook is accepted.
async fn assert_still_serving(app: &TestApp, id: &str) {
    let response = exchange(app, &signed(body(id, "ORDER-ALIVE"))).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test]
async fn malformed_bodies_get_their_codes_and_are_never_published() {
    let app = rsa_app().await;
    let valid = body("h-1", "ORDER-H");
    let deep = format!(
        r#"{{"id":"h-1","meta":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", Vec::new(), 400, "invalid_json"),
        (
            "truncated",
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            400,
            "invalid_json",
        ),
        ("deeply nested", deep.into_bytes(), 400, "invalid_json"),
        (
            "not UTF-8",
            b"{\"id\":\"\xff\xfe\"}".to_vec(),
            400,
            "invalid_json",
        ),
        ("a list", b"[1,2,3]".to_vec(), 400, "not_an_object"),
        ("a number", b"42".to_vec(), 400, "not_an_object"),
        (
            "a key twice",
            valid.replacen("{", r#"{"id":"other","#, 1).into_bytes(),
            400,
            "invalid_field",
        ),
        (
            "a wrong type",
            valid
                .replace(r#""name":"OrderStatus""#, r#""name":5"#)
                .into_bytes(),
            400,
            "invalid_field",
        ),
        (
            "attributes neither object nor list",
            valid
                .replace(r#""attributes":{}"#, r#""attributes":"x""#)
                .into_bytes(),
            400,
            "invalid_field",
        ),
    ];
    for (case, payload, status, code) in cases {
        let response = exchange(&app, &signed(payload)).await;
        assert_eq!(response.status, status, "{case}: {response:?}");
        assert_eq!(response.code(), code, "{case}");
    }
    assert!(app.memory.published().is_empty());
    assert_still_serving(&app, "h-alive").await;
}

#[tokio::test]
async fn identifiers_that_cannot_be_bus_keys_or_headers_are_a_400_before_publishing() {
    let app = rsa_app().await;
    let cases = [
        (
            "rootEntityRef",
            r#""O-1\r\nx-injected: yes""#,
            "invalid_field",
        ),
        ("id", r#""e-1\n""#, "invalid_field"),
        ("name", r#""Order\u0000Status""#, "invalid_field"),
        ("accountId", r#""ACME\r""#, "invalid_field"),
        ("rootEntityRef", r#""   ""#, "missing_field"),
        ("id", r#"" \u00a0 ""#, "missing_field"),
        ("entityRef", r#""O\tX""#, "invalid_field"),
    ];
    for (field, value, code) in cases {
        let mut event: serde_json::Value = serde_json::from_str(&body("h-2", "ORDER-H2")).unwrap();
        event[field] = serde_json::from_str(value).unwrap();
        let response = exchange(&app, &signed(event.to_string())).await;
        assert_eq!(response.status, 400, "{field}={value}: {response:?}");
        assert_eq!(response.code(), code, "{field}={value}");
        assert!(
            response.json()["detail"].as_str().unwrap().contains(field),
            "{field}: {response:?}"
        );
    }
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn every_signature_mistake_is_a_401_and_publishes_nothing() {
    let key = KeyPair::shared();
    let app = rsa_app().await;
    let body = body("h-3", "ORDER-H3");
    let other_key = KeyPair::generate();
    let cases = [
        ("other body", key.sign("{}"), "bad_signature"),
        ("other key", other_key.sign(&body), "bad_signature"),
        ("garbage", "not base64 at all!".to_owned(), "bad_signature"),
        ("empty", String::new(), "bad_signature"),
        ("oversized", "A".repeat(12_000), "bad_signature"),
    ];
    for (case, signature, code) in cases {
        let request = RawRequest::webhook(body.clone()).header("fluent-signature", &signature);
        let response = exchange(&app, &request).await;
        assert_eq!(response.status, 401, "{case}: {response:?}");
        assert_eq!(response.code(), code, "{case}");
    }
    let good = key.sign(&body);
    let repeated = [
        vec![
            ("fluent-signature", good.clone()),
            ("fluent-signature", good.clone()),
        ],
        vec![
            ("fluent-signature", good.clone()),
            ("fluent-signature", "AAAA".into()),
        ],
        vec![
            ("fluent-signature", "AAAA".into()),
            ("x-fluent-signature", good.clone()),
        ],
    ];
    for headers in repeated {
        let request = RawRequest::webhook(body.clone()).headers(&headers);
        let response = exchange(&app, &request).await;
        assert_eq!(response.status, 401, "{headers:?}: {response:?}");
        assert_eq!(response.code(), "repeated_signature", "{headers:?}");
    }
    let missing = exchange(&app, &RawRequest::webhook(body.clone())).await;
    assert_eq!(missing.code(), "missing_signature");
    assert!(app.memory.published().is_empty());
    // Two aliases carrying the same signature (a proxy copied it) are one signature.
    let copied = RawRequest::webhook(body.clone())
        .header("fluent-signature", &good)
        .header("x-fluent-signature", &good);
    assert_eq!(exchange(&app, &copied).await.status, 200);
}

#[tokio::test]
async fn hmac_timestamps_beyond_any_clock_or_malformed_are_refused_without_a_panic() {
    let app = TestApp::builder().hmac_secret(SECRET).spawn().await;
    let body = body("h-4", "ORDER-H4");
    let valid = hmac_headers(SECRET, "msg-h4", now(), &body);
    let with_timestamp = |timestamp: &str| {
        let headers: Vec<(String, String)> = valid
            .iter()
            .map(|(name, value)| {
                let value = if name == "webhook-timestamp" {
                    timestamp.to_owned()
                } else {
                    value.clone()
                };
                (name.clone(), value)
            })
            .collect();
        RawRequest::webhook(body.clone()).headers(&headers)
    };
    for timestamp in [
        "18446744073709551615",
        "9223372036854775808",
        "99999999999999999999999999",
        "-1",
        "1e10",
        "12.5",
        "",
        &(now() + 3600).to_string(),
        &(now() - 3600).to_string(),
    ] {
        let response = exchange(&app, &with_timestamp(timestamp)).await;
        assert_eq!(response.status, 401, "{timestamp:?}: {response:?}");
        assert_eq!(response.code(), "invalid_timestamp", "{timestamp:?}");
    }
    assert!(app.memory.published().is_empty());
    let response = exchange(&app, &RawRequest::webhook(body.clone()).headers(&valid)).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test]
async fn a_replay_is_answered_200_and_published_once() {
    let app = TestApp::builder().hmac_secret(SECRET).spawn().await;
    let body = body("h-5", "ORDER-H5");
    let headers = hmac_headers(SECRET, "msg-h5", now(), &body);
    let request = RawRequest::webhook(body.clone()).headers(&headers);
    let first = exchange(&app, &request).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["replay"], serde_json::Value::Null);
    let again = exchange(&app, &request).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["replay"], true);
    // Fluent's own retry: a new delivery id, the same event id.
    let retry = hmac_headers(SECRET, "msg-h5-retry", now(), &body);
    let retried = exchange(&app, &RawRequest::webhook(body.clone()).headers(&retry)).await;
    assert_eq!(retried.status, 200);
    assert_eq!(retried.json()["replay"], true);
    assert_eq!(app.memory.published().len(), 1);
}

#[tokio::test]
async fn a_webhook_refused_before_it_was_stored_is_stored_when_it_comes_again() {
    let app = TestApp::builder().hmac_secret(SECRET).spawn().await;
    let body = body("h-6", "ORDER-H6");
    let mut forged = hmac_headers(b"wrong-secret", "msg-h6", now(), &body);
    let refused = exchange(&app, &RawRequest::webhook(body.clone()).headers(&forged)).await;
    assert_eq!(refused.status, 401);
    forged = hmac_headers(SECRET, "msg-h6", now(), &body);
    let stored = exchange(&app, &RawRequest::webhook(body.clone()).headers(&forged)).await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json()["replay"], serde_json::Value::Null);
    assert_eq!(app.memory.published().len(), 1);
}

#[tokio::test]
async fn paths_methods_content_types_and_header_floods_get_json_refusals() {
    let app = rsa_app().await;
    let cases = [
        (RawRequest::new("GET", "/nope"), 404, "not_found"),
        (
            RawRequest::new("POST", "/webhooks/fluent/../x"),
            404,
            "not_found",
        ),
        (
            RawRequest::new("GET", "/webhooks/fluent"),
            405,
            "method_not_allowed",
        ),
        (
            RawRequest::new("DELETE", "/health/live"),
            405,
            "method_not_allowed",
        ),
        (
            signed(body("h-7", "O")).header("content-type", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            RawRequest::new("POST", "/webhooks/fluent").body(body("h-7", "O")),
            415,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in cases {
        let response = exchange(&app, &request).await;
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(response.code(), code);
    }
    let mut flood = signed(body("h-8", "O"));
    for i in 0..80 {
        flood = flood.header(&format!("x-flood-{i}"), "1");
    }
    let response = exchange(&app, &flood).await;
    assert_eq!(response.status, 431, "{response:?}");
    assert_eq!(response.code(), "headers_too_large");
    let big = signed(body("h-9", "O")).header("x-big", &"b".repeat(20_000));
    assert_eq!(exchange(&app, &big).await.code(), "headers_too_large");
    // Beyond hyper's own backstops (64 KiB, 100 headers) the answer is its bare 431, and the
    // gateway carries on.
    let huge = signed(body("h-10", "O")).header("x-huge", &"h".repeat(100_000));
    assert_eq!(exchange(&app, &huge).await.status, 431);
    let mut many = signed(body("h-10", "O"));
    for i in 0..150 {
        many = many.header(&format!("x-many-{i}"), "1");
    }
    assert_eq!(exchange(&app, &many).await.status, 431);
    assert!(app.memory.published().is_empty());
    assert_still_serving(&app, "h-alive-2").await;
}

#[tokio::test]
async fn a_refusal_never_echoes_more_than_a_bounded_detail() {
    let app = rsa_app().await;
    let long_string = serde_json::to_string(&"s".repeat(200_000)).unwrap();
    let long_key = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "k".repeat(100_000));
    for payload in [long_string, long_key] {
        let response = exchange(&app, &signed(payload)).await;
        assert_eq!(response.status, 400);
        let detail = response.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.chars().count() <= 301, "{} characters", detail.len());
        assert!(response.body.len() < 1_000, "{} bytes", response.body.len());
    }
}

#[tokio::test]
async fn a_declared_length_above_the_limit_is_refused_before_any_body_arrives() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_BODY_LIMIT_BYTES", "4096")
        .spawn()
        .await;
    let mut connection = Connection::open(app.address).await;
    let request = signed(body("h-11", "O")).content_length(10_000_000);
    connection.send(&request.head()).await;
    let response = connection.response().await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.code(), "payload_too_large");
    assert!(
        response.has_header("connection", "close"),
        "{}",
        response.head
    );
    // A body longer than it said is cut at the declared length and fails its signature.
    let lying = signed(body("h-12", "O")).content_length(40);
    let response = exchange(&app, &lying).await;
    assert_eq!(response.status, 401, "{response:?}");
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_request_deadline() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_REQUEST_TIMEOUT_MS", "500")
        .spawn()
        .await;
    let request = signed(body("h-13", "O"));
    let bytes = request.bytes();
    let mut connection = Connection::open(app.address).await;
    connection.send(&bytes[..bytes.len() - 20]).await;
    let started = Instant::now();
    let response = connection.response().await;
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.code(), "request_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A body that ends early (the client closed its half) is refused, not half-processed.
    let mut connection = Connection::open(app.address).await;
    connection.send(&bytes[..bytes.len() - 20]).await;
    connection.finish().await;
    let response = connection.response().await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.code(), "unreadable_body");
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_HEADER_TIMEOUT_MS", "300")
        .spawn()
        .await;
    let mut idle = Connection::open(app.address).await;
    let mut slow = Connection::open(app.address).await;
    slow.send(b"POST /webhooks/fluent HTTP/1.1\r\nhost: x\r\n")
        .await;
    let mut kept_alive = Connection::open(app.address).await;
    assert_eq!(
        kept_alive.exchange(&signed(body("h-14", "O"))).await.status,
        200
    );
    for (what, connection) in [
        ("idle", &mut idle),
        ("slow headers", &mut slow),
        ("idle after a request", &mut kept_alive),
    ] {
        assert!(
            connection.closed_within(Duration::from_secs(3)).await,
            "{what} connection still open"
        );
    }
}

#[tokio::test]
async fn many_idle_and_stalled_connections_do_not_keep_valid_webhooks_out() {
    let app = rsa_app().await;
    let mut hogs = Vec::new();
    for i in 0..300 {
        let mut hog = Connection::open(app.address).await;
        if i % 2 == 0 {
            let bytes = signed(body(&format!("hog-{i}"), "O")).bytes();
            hog.send(&bytes[..bytes.len() / 2]).await;
        }
        hogs.push(hog);
    }
    for i in 0..20 {
        let started = Instant::now();
        let response = exchange(&app, &signed(body(&format!("h-15-{i}"), "O"))).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a valid webhook took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(app.memory.published().len(), 20);
}

#[tokio::test]
async fn beyond_the_request_cap_a_webhook_gets_503_with_retry_after_at_once() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_MAX_REQUESTS", "2")
        .spawn()
        .await;
    let mut stalled = Vec::new();
    for i in 0..2 {
        let bytes = signed(body(&format!("h-16-{i}"), "O")).bytes();
        let mut connection = Connection::open(app.address).await;
        connection.send(&bytes[..bytes.len() - 10]).await;
        stalled.push(connection);
    }
    // The two stalled bodies hold both permits once the gateway has read their heads.
    let until = Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = exchange(&app, &signed(body("h-16-x", "O"))).await;
        if response.status == 503 || Instant::now() > until {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.code(), "overloaded");
    assert!(response.has_header("retry-after", "5"), "{}", response.head);
    drop(stalled);
    crate::support::eventually(|| async {
        let response = app
            .post_signed(KeyPair::shared(), &body("h-16-y", "O"))
            .await;
        response.status() == 200
    })
    .await;
}

#[tokio::test]
async fn connections_kept_busy_with_keep_alive_requests_give_way_to_a_waiting_newcomer() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_MAX_CONNECTIONS", "3")
        .env("INGEST_HEADER_TIMEOUT_MS", "60000")
        .spawn()
        .await;
    // Every slot held by a connection that has made a request and idles, kept alive: no
    // timeout would free one for a minute.
    let mut holders = Vec::new();
    for i in 0..3 {
        let mut holder = Connection::open(app.address).await;
        let response = holder
            .exchange(&signed(body(&format!("h-19-{i}"), "O")))
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        holders.push(holder);
    }
    // The holders are asked to go at once; they linger (up to 2 s) for a FIN these never
    // send. Without the request the newcomer would wait a minute: `exchange` fails after 5 s.
    let response = exchange(&app, &signed(body("h-19-x", "O"))).await;
    assert_eq!(response.status, 200, "{response:?}");
    for holder in &mut holders {
        assert!(holder.closed_within(Duration::from_secs(1)).await);
    }
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_closed_after_the_write_timeout() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_MAX_CONNECTIONS", "1")
        .env("INGEST_WRITE_TIMEOUT_MS", "500")
        .spawn()
        .await;
    // Megabytes of 404s for a peer that takes none: the gateway's send buffer fills and its
    // writes stall, holding the only connection slot.
    let mut hog = Connection::open_small(app.address, 4096).await;
    let pipelined = RawRequest::new("GET", "/nowhere").bytes().repeat(100_000);
    let hog = tokio::spawn(async move {
        let _ = hog.try_send(&pipelined).await;
        hog
    });
    // The next connection is served once the stalled one is closed (an answer within
    // `ANSWER_WITHIN`, or the exchange fails).
    let started = Instant::now();
    let response = exchange(&app, &signed(body("h-18", "O"))).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "served at once ({:?}): the hog never stalled, so this proves nothing",
        started.elapsed()
    );
    let mut hog = hog.await.expect("the hog's writer");
    assert!(hog.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_client_that_sends_its_whole_body_before_reading_still_gets_the_early_413() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_BODY_LIMIT_BYTES", "4096")
        .spawn()
        .await;
    // As most clients do: write the request whole, then read. The gateway answers 413 after
    // the head; closing at once would reset the connection under the client's writes (small
    // buffers: most of the 600 KB is still to send) and the answer would be lost.
    let mut connection = Connection::open_small(app.address, 16 * 1024).await;
    let request = signed(vec![b' '; 600_000]);
    connection.send(&request.bytes()).await;
    let response = connection.response().await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.code(), "payload_too_large");
    assert!(app.memory.published().is_empty());
}

#[tokio::test]
async fn beyond_the_connection_cap_a_connection_waits_until_one_is_closed() {
    let app = TestApp::builder()
        .key(KeyPair::shared())
        .env("INGEST_MAX_CONNECTIONS", "3")
        .env("INGEST_HEADER_TIMEOUT_MS", "500")
        .spawn()
        .await;
    // Three connections in the middle of their heads: none idle, so none can be asked to go.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut connection = Connection::open(app.address).await;
        connection.send(b"POST /webhooks/fluent HTTP/1.1\r\n").await;
        slow.push(connection);
    }
    // The fourth is accepted by the kernel, served once a slow one times out.
    let response = exchange(&app, &signed(body("h-17", "O"))).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "served at once ({:?}): the cap did not hold",
        started.elapsed()
    );
}
