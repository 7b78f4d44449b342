//! The Kafka bus over TLS, as managed clusters require: a real broker reached through a real TLS
//! session. tansu 0.6.0 cannot serve TLS itself, so the test puts a TLS-terminating proxy with
//! a fresh self-signed certificate in front of its own tansu, which advertises the proxy's
//! address. The publisher, the admin client and the consumer all go through it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::bus::{Delivery, Headers, OutboundRecord};
use e2e_tests::bus::{Kind, TestBus};
use e2e_tests::process::{Process, free_port, spawn};
use e2e_tests::{DEADLINE, unique};
use tokio::net::{TcpListener, TcpStream};

use crate::tls_proxy::{certificate, serve_tls_proxy};

/// The tansu binary `./scripts/test` uses; this test starts one of its own.
fn tansu() -> anyhow::Result<String> {
    std::env::var("TEST_TANSU_BIN").context(
        "TEST_TANSU_BIN is not set: run ./scripts/test, which installs tansu and sets it, or \
         export TEST_TANSU_BIN=/path/to/tansu (0.6.0)",
    )
}

/// A tansu advertising `advertised`, listening on a free port of its own; returns its address.
async fn start_broker(advertised: u16) -> anyhow::Result<(Process, String)> {
    let port = free_port()?;
    let broker = spawn(
        Path::new(&tansu()?),
        &[
            ("LISTENER_URL", format!("tcp://127.0.0.1:{port}")),
            (
                "ADVERTISED_LISTENER_URL",
                format!("tcp://127.0.0.1:{advertised}"),
            ),
            ("STORAGE_ENGINE", "memory://tansu/".into()),
        ],
    )?;
    let address = format!("127.0.0.1:{port}");
    let until = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(&address).await.is_err() {
        ensure!(
            tokio::time::Instant::now() < until,
            "the TLS test's tansu did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((broker, address))
}

/// The bus settings for `topic` on the TLS broker at `proxy`, trusting the certificate in
/// `ca`; `create` says whether connecting creates the topic.
fn tls_bus(proxy: u16, ca: &Path, topic: &str, create: bool) -> anyhow::Result<TestBus> {
    let properties = format!("security.protocol=SSL,ssl.ca.location={}", ca.display());
    TestBus::new(
        Kind::Kafka,
        &[
            ("KAFKA_BROKERS", &format!("127.0.0.1:{proxy}")),
            ("KAFKA_PROPERTIES", &properties),
            ("KAFKA_TOPIC", topic),
            ("KAFKA_CREATE_TOPICS", if create { "true" } else { "false" }),
            ("BUS_PUBLISH_TIMEOUT_MS", "3000"),
        ],
    )
}

fn record(key: &str) -> OutboundRecord {
    OutboundRecord {
        key: key.to_owned().into(),
        payload: format!(r#"{{"id":"{}"}}"#, unique("tls")).into(),
        headers: Headers::new().with("fluent-event-id", unique("event")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_and_consumes_through_a_verified_tls_session() -> anyhow::Result<()> {
    let (pem, der, key) = certificate()?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem)?;
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = proxy.local_addr()?.port();
    let (_broker, upstream) = start_broker(proxy_port).await?;
    let relay = tokio::spawn(serve_tls_proxy(proxy, der, key, upstream));

    let bus = tls_bus(proxy_port, &ca, &unique("tls"), true)?;
    // Topic creation (the admin client), the publish and the consumer group all go over TLS.
    let publisher = bus.publisher().await.context("TLS publisher")?;
    let sent = record("HD_TLS_1");
    publisher
        .publish(sent.clone())
        .await
        .context("publishing over TLS")?;
    let mut consumer = bus.consumer().await.context("TLS consumer")?;
    let received = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Delivery::Record(record) = consumer.next().await? {
                return anyhow::Ok(record);
            }
        }
    })
    .await
    .context("no record came back over TLS")??;
    ensure!(received.key == sent.key, "key changed");
    ensure!(received.payload == sent.payload, "payload changed");
    received.ack.ack().await?;
    consumer.close().await?;
    ensure!(!relay.is_finished(), "the TLS proxy stopped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_broker_whose_certificate_it_does_not_trust() -> anyhow::Result<()> {
    let (pem, der, key) = certificate()?;
    // A second client trusts another, unrelated certificate.
    let (other_pem, _, _) = certificate()?;
    let dir = tempfile::tempdir()?;
    let (ca, other) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca, pem)?;
    std::fs::write(&other, other_pem)?;
    let proxy = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = proxy.local_addr()?.port();
    let (_broker, upstream) = start_broker(proxy_port).await?;
    tokio::spawn(serve_tls_proxy(proxy, der, key, upstream));
    let topic = unique("tls");

    // The client that trusts the broker's certificate creates the topic and publishes...
    let trusting = tls_bus(proxy_port, &ca, &topic, true)?.publisher().await?;
    trusting
        .publish(record("HD_TLS_2"))
        .await
        .context("the trusting client could not publish")?;
    // ... and the one that does not is refused, within its publish deadline.
    let distrusting = tls_bus(proxy_port, &other, &topic, false)?
        .publisher()
        .await?;
    let refused = distrusting.publish(record("HD_TLS_3")).await;
    ensure!(
        refused.is_err(),
        "published to a broker whose certificate the client does not trust"
    );
    Ok(())
}
