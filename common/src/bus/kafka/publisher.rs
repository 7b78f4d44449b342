//! Publishing to Kafka: idempotent, `acks=all`, Java-compatible key partitioning.
//!
//! An idempotent producer can lose its producer id for good: librdkafka declares a fatal error,
//! or the broker keeps refusing its id or epoch (after a broker stalled for longer than the
//! publish deadline, tansu 0.6 answers every later record with `ProducerFenced`, and librdkafka
//! does not recover from that by itself: the gateway answered 503 to everything until
//! restarted). The publisher then replaces it with a fresh producer, once however many sends
//! saw the failure: nothing acknowledged is lost (those records are stored). Records still
//! queued in the old one fail at once (answered 503, not stored); those already sent to the
//! broker keep their chance of an acknowledgement, which a purge would void: purged, a record
//! the broker had stored would be answered 503 and stored again by Fluent's retry.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer as _, PurgeConfig};
use rdkafka::util::Timeout;
use tracing::{error, warn};

use super::delivery::AsyncProducer;
use super::{classify, client_config, owned_headers};
use crate::bus::{BusError, OutboundRecord, Position};
use crate::config::BusConfig;

/// Publishes to the webhook topic and the DLQ topic. Clones share one producer.
#[derive(Clone)]
pub struct KafkaPublisher {
    /// The producer in use; replaced when it fails for good.
    producer: Arc<RwLock<Current>>,
    /// What a replacement is created from.
    client: Arc<ClientConfig>,
    topic: Arc<str>,
    dlq_topic: Arc<str>,
    deadline: Duration,
}

impl KafkaPublisher {
    /// Creates the producer (and the topics first, when `KAFKA_CREATE_TOPICS` is on).
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        if config.kafka.create_topics {
            super::ensure_topics(config).await?;
        }
        let deadline = config.publish_timeout;
        let mut client = client_config(&config.kafka);
        if client.get("linger.ms").is_none() && client.get("queue.buffering.max.ms").is_none() {
            // Every publish has a caller waiting for its acknowledgement (a webhook request
            // held open), so send at once instead of lingering librdkafka's default 5 ms:
            // records still batch while earlier requests are in flight. Measured in
            // `./scripts/bench ingest`: p50 5.5 -> 2.9 ms, throughput x1.65, less CPU.
            client.set("linger.ms", "0");
        }
        client
            // Idempotence keeps retried batches from duplicating or reordering records, and
            // acks=all makes an acknowledgement mean "on every in-sync replica".
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // The Java client's key → partition mapping, so every client agrees on placement.
            .set("partitioner", "murmur2_random")
            .set("compression.type", &config.kafka.compression)
            // librdkafka fails a record it could not deliver by then: the publish deadline.
            .set("message.timeout.ms", deadline.as_millis().to_string());
        let producer =
            AsyncProducer::create(&client).map_err(|error| BusError::Setup(error.into()))?;
        Ok(Self {
            producer: Arc::new(RwLock::new(Current {
                producer: Arc::new(producer),
                since: Instant::now(),
            })),
            client: Arc::new(client),
            topic: config.kafka.topic.as_str().into(),
            dlq_topic: config.kafka.dlq_topic.as_str().into(),
            deadline,
        })
    }

    /// Publishes to the webhook topic; returns once all in-sync replicas have the record.
    pub async fn publish(&self, record: OutboundRecord) -> Result<Position, BusError> {
        self.send(&self.topic, record).await
    }

    /// Publishes to the DLQ topic.
    pub async fn publish_dlq(&self, record: OutboundRecord) -> Result<Position, BusError> {
        self.send(&self.dlq_topic, record).await
    }

    async fn send(&self, topic: &str, record: OutboundRecord) -> Result<Position, BusError> {
        let headers = owned_headers(&record.headers);
        // The wait for queue room and the delivery share one deadline; librdkafka's own
        // message.timeout.ms normally fires first, this bounds the rest.
        let until = tokio::time::Instant::now() + self.deadline;
        let producer = self.current();
        let delivered = producer.send(
            topic,
            record.key.as_ref(),
            record.payload.as_ref(),
            headers,
            until,
        );
        match tokio::time::timeout_at(until, delivered).await {
            Ok(Ok((partition, offset))) => Ok(Position {
                partition: u32::try_from(partition).unwrap_or_default(),
                offset: u64::try_from(offset).unwrap_or_default(),
            }),
            Ok(Err(error)) => {
                self.replace_if_broken(&producer, Some(&error));
                Err(classify(error, topic, self.deadline))
            }
            Err(_) => {
                self.replace_if_broken(&producer, None);
                Err(BusError::Timeout(self.deadline))
            }
        }
    }

    /// The producer in use.
    fn current(&self) -> Arc<AsyncProducer> {
        Arc::clone(
            &self
                .producer
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .producer,
        )
    }

    /// Replaces `failed` with a fresh producer when librdkafka declared it fatal or `error`
    /// says its producer id is unusable, unless another caller already did or the current
    /// producer is younger than the publish deadline (a broker that refuses every new producer
    /// costs one attempt per deadline, not one per record).
    fn replace_if_broken(&self, failed: &Arc<AsyncProducer>, error: Option<&KafkaError>) {
        let fatal = failed.inner().client().fatal_error();
        let Some((code, reason)) = fatal.or_else(|| {
            let code = error.and_then(KafkaError::rdkafka_error_code)?;
            producer_id_lost(code).then(|| (code, "the broker refuses the producer id".into()))
        }) else {
            return;
        };
        let is_current = |current: &Current| {
            Arc::ptr_eq(&current.producer, failed) && current.since.elapsed() >= self.deadline
        };
        if !is_current(&self.producer.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        // Created outside the lock: librdkafka starts threads and may set up TLS meanwhile,
        // and every publish reads the lock.
        let fresh = match AsyncProducer::create(&self.client) {
            Ok(fresh) => Arc::new(fresh),
            Err(cause) => {
                error!(?code, %reason, error = %cause,
                    "the Kafka producer failed for good and no new one could be created");
                return;
            }
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !is_current(&current) {
            drop(current);
            retire(fresh);
            return;
        }
        let old = std::mem::replace(
            &mut *current,
            Current {
                producer: fresh,
                since: Instant::now(),
            },
        );
        drop(current);
        warn!(?code, %reason, "the Kafka producer failed for good; replaced with a new one");
        // What the old one has not sent yet fails now (answered as not stored) instead of
        // landing later, behind records the new one stores for the same keys. What it has sent
        // is left to be acknowledged or to fail on its own.
        old.producer
            .inner()
            .purge(PurgeConfig::default().queue().non_blocking());
        retire(old.producer);
    }

    /// Asks the broker for the topic's metadata, within the publish deadline.
    pub async fn check_ready(&self) -> Result<(), BusError> {
        let current = self.current();
        self.replace_if_broken(&current, None);
        let producer = Arc::clone(self.current().inner());
        let topic = Arc::clone(&self.topic);
        let deadline = self.deadline;
        // librdkafka's metadata call blocks; keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(deadline))
                .map(|_| ())
        })
        .await
        .map_err(|error| BusError::Broker(error.into()))?;
        result.map_err(|error| classify(error, &self.topic, deadline))
    }

    /// Waits until everything queued is delivered (or the deadline passes): for shutdown.
    pub fn flush(&self) -> Result<(), BusError> {
        self.current()
            .inner()
            .flush(Timeout::After(self.deadline))
            .map_err(|error| classify(error, &self.topic, self.deadline))
    }
}

/// The producer in use, and since when.
struct Current {
    producer: Arc<AsyncProducer>,
    since: Instant,
}

/// Lets `producer` go off the async workers: librdkafka's destroy purges, flushes for up to half
/// a second and joins its threads. It waits first for the senders still holding it, which
/// finish within their deadline.
fn retire(producer: Arc<AsyncProducer>) {
    tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + RETIRE_WAIT;
        while Arc::strong_count(&producer) > 1 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(producer);
    });
}

/// Longest a retired producer waits for its last senders before it is destroyed anyway (it is
/// then destroyed wherever the last of them drops it).
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// Errors after which an idempotent producer's id or epoch stays refused: only a new producer
/// (a new id) publishes again.
fn producer_id_lost(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
    )
}
