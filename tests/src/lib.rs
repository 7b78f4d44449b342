//! Helpers shared by the end-to-end tests: where the real brokers are, and unique names so
//! tests can run in parallel against one broker without seeing each other's data.

pub mod bus;
pub mod kafka;

use std::time::Duration;

/// How long a test waits for a broker to do something before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The Kafka broker of the test run (`TEST_KAFKA_BROKERS`). Panics with instructions when it
/// is not set: a test that needs a broker never passes without one.
pub fn kafka_brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "TEST_KAFKA_BROKERS is not set: run ./scripts/test, which starts a tansu broker, or \
             start a Kafka-protocol broker yourself and export TEST_KAFKA_BROKERS=127.0.0.1:PORT"
        )
    })
}

/// The NATS server of the test run (`TEST_NATS_URL`), with JetStream enabled. Panics with
/// instructions when it is not set.
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_NATS_URL is not set: run ./scripts/test, or start `nats-server -js` and export \
             TEST_NATS_URL=nats://127.0.0.1:4222"
        )
    })
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
