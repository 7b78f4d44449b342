//! The gateway publishing to Kafka: the real test broker for the record, librdkafka's mock
//! cluster for a broker that goes down and comes back.

use std::time::{Duration, Instant};

use common::bus::headers;
use rdkafka::mocking::MockCluster;

use crate::support::{KeyPair, TestApp, body, error_code, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn publishes_signed_webhooks_to_kafka_exactly_as_received() {
    let (key, rotated) = (KeyPair::shared(), KeyPair::generate());
    let topic = e2e_tests::unique("ingest");
    let app = TestApp::builder()
        .key(key)
        .key(&rotated)
        .env("BUS", "kafka")
        .env("KAFKA_BROKERS", &e2e_tests::kafka_brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_DLQ_TOPIC", &format!("{topic}.dlq"))
        .env("KAFKA_CREATE_TOPICS", "true")
        .env("KAFKA_TOPIC_PARTITIONS", "3")
        .env("KAFKA_TOPIC_REPLICATION", "1")
        .spawn()
        .await;
    let first = body("k-1", "ORDER-K1");
    let response = app.post_signed(key, &first).await;
    assert_eq!(response.status(), 200);
    // Tampered, and signed by a key nobody configured: refused, and not published.
    let tampered = first.replace("ORDER-K1", "ORDER-KX");
    let response = app
        .post(&tampered, &[("fluent-signature", &key.sign(&first))])
        .await;
    assert_eq!(response.status(), 401);
    let stranger = body("k-x", "ORDER-KX");
    let response = app
        .post(
            &stranger,
            &[("fluent-signature", &KeyPair::generate().sign(&stranger))],
        )
        .await;
    assert_eq!(response.status(), 401);
    let second = body("k-2", "ORDER-K2");
    let response = app.post_signed(&rotated, &second).await;
    assert_eq!(response.status(), 200);

    let brokers = e2e_tests::kafka_brokers();
    let mut records =
        tokio::task::spawn_blocking(move || e2e_tests::kafka::read_topic(&brokers, &topic, 2))
            .await
            .unwrap()
            .unwrap();
    records.sort_by(|a, b| a.key.cmp(&b.key));
    for (record, (sent, order, id)) in records
        .iter()
        .zip([(&first, "ORDER-K1", "k-1"), (&second, "ORDER-K2", "k-2")])
    {
        assert_eq!(record.key, order);
        assert_eq!(
            record.payload,
            sent.as_bytes(),
            "the value must be the body byte for byte"
        );
        assert_eq!(record.headers.get_str(headers::EVENT_ID), Some(id));
        assert_eq!(record.headers.get_str(headers::ACCOUNT_ID), Some("ACME"));
        assert!(record.headers.get(headers::RECEIVED_AT).is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_503_while_the_broker_is_down_and_recovers() {
    let key = KeyPair::shared();
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("webhooks", 1, 1).unwrap();
    let app = TestApp::builder()
        .key(key)
        .env("BUS", "kafka")
        .env("KAFKA_BROKERS", &mock.bootstrap_servers())
        .env("KAFKA_TOPIC", "webhooks")
        .env("BUS_PUBLISH_TIMEOUT_MS", "1000")
        .spawn()
        .await;
    let ready = || async {
        app.client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status()
    };
    eventually(|| async { ready().await == 200 }).await;
    let accepted = body("m-1", "ORDER-M");
    assert_eq!(app.post_signed(key, &accepted).await.status(), 200);

    mock.broker_down(1).unwrap();
    let refused = body("m-2", "ORDER-M");
    let started = Instant::now();
    let response = app.post_signed(key, &refused).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(error_code(response).await, "unavailable");
    eventually(|| async { ready().await == 503 }).await;

    mock.broker_up(1).unwrap();
    eventually(|| async { ready().await == 200 }).await;
    let later = body("m-3", "ORDER-M");
    eventually(|| async { app.post_signed(key, &later).await.status() == 200 }).await;

    // One key, one partition, in order: had the refused webhook been stored after all, it
    // would sit between the other two.
    let brokers = mock.bootstrap_servers();
    let records =
        tokio::task::spawn_blocking(move || e2e_tests::kafka::read_topic(&brokers, "webhooks", 2))
            .await
            .unwrap()
            .unwrap();
    let ids: Vec<_> = records
        .iter()
        .map(|r| r.headers.get_str(headers::EVENT_ID))
        .collect();
    assert_eq!(
        ids,
        [Some("m-1"), Some("m-3")],
        "the refused webhook must not be stored"
    );
}
