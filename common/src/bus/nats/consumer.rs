//! The consuming side: one pull loop per partition on the partition's durable consumer.
//!
//! Who works on a partition is the server's decision, never ours: every durable consumer has a
//! priority group with the pinned-client policy, so whatever the instances' ownership settings
//! overlap, the server hands each partition to one pulling instance at a time and moves it to
//! another when that one stops pulling for the pin timeout. An instance pulls the partitions it
//! owns (`NATS_OWNED_PARTITIONS`) at once and stands by for the others after
//! `NATS_STANDBY_DELAY_SECS`, so at start each owner pins its own first. Against a server
//! without priority groups (before 2.11) only explicitly set, non-overlapping ownership is
//! accepted, and nothing is stood by for.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::partition::{self, Outlets, PartitionLoop, Shared};
use super::setup;
use crate::bus::{BusError, ConsumerStatus, Delivery};
use crate::config::BusConfig;

/// Consumes the stream's partitions: those it owns at once, the others as a stand-by.
pub struct NatsConsumer {
    client: async_nats::Client,
    // Boxed: a stream handle carries the stream's whole info.
    stream: Box<jetstream::stream::Stream>,
    records: mpsc::UnboundedReceiver<Result<Delivery, BusError>>,
    changes: mpsc::UnboundedReceiver<Result<Delivery, BusError>>,
    partitions: Vec<Running>,
    status: ConsumerStatus,
}

/// A started partition loop.
struct Running {
    consumer: String,
    group: Option<String>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl NatsConsumer {
    /// Connects, checks the server and the stream, makes sure the durable consumers exist,
    /// and starts pulling.
    pub async fn connect(config: &BusConfig) -> Result<Self, BusError> {
        let nats = &config.nats;
        let (client, context) = super::connect(config).await?;
        let version = client.server_info().version;
        let pins = setup::server_pins(&version);
        if !pins && !nats.owned_explicitly {
            return Err(BusError::Setup(
                format!(
                    "nats-server {version} has no priority groups (2.11 and later do), so \
                     instances consuming the same partitions would run one order's events at \
                     once: upgrade the server, or set NATS_OWNED_PARTITIONS on each instance \
                     so that no two overlap"
                )
                .into(),
            ));
        }
        let stream = context
            .get_stream(&nats.stream)
            .await
            .map_err(|error| BusError::Setup(error.into()))?;
        let source: Arc<str> = nats.stream.as_str().into();
        let (records_tx, records) = mpsc::unbounded_channel();
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let status = ConsumerStatus::unwatched();
        let owned: BTreeSet<u32> = nats
            .owned_partitions
            .iter()
            .map(|p| u32::from(*p))
            .collect();
        let mut partitions = Vec::new();
        for partition in 0..u32::from(nats.partitions) {
            let own = owned.contains(&partition);
            if !own && !pins {
                continue;
            }
            let desired = setup::desired_consumer(nats, partition, pins, config.start_at_newest);
            let durable = setup::ensure_consumer(&stream, desired, !nats.owned_explicitly).await?;
            if !own && durable.group.is_none() {
                warn!(partition, "not standing by: its consumer pins no client");
                continue;
            }
            if own && let Ok(info) = durable.consumer.get_info().await {
                let unacknowledged = u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX);
                status.set_lag(partition, info.num_pending.saturating_add(unacknowledged));
            }
            let consumer = setup::consumer_name(nats, partition);
            let group = durable.group.clone();
            let outlets = Outlets {
                records: records_tx.clone(),
                changes: changes_tx.clone(),
            };
            let task = PartitionLoop::new(
                partition,
                client.clone(),
                durable,
                Arc::clone(&source),
                outlets,
                status.clone(),
            );
            let shared = Arc::clone(&task.shared);
            let delay = if own {
                Duration::ZERO
            } else {
                nats.standby_delay
            };
            partitions.push(Running {
                consumer,
                group,
                shared,
                task: tokio::spawn(task.run(delay)),
            });
        }
        info!(
            server = %version,
            owned = owned.len(),
            stand_by = partitions.len() - owned.len().min(partitions.len()),
            pinned_clients = pins,
            "consuming JetStream partitions"
        );
        if pins {
            // Every pulled partition is a group membership: the instance takes part (ready)
            // even while the server pins them all to others.
            status.set_standing_by();
        }
        Ok(Self {
            client,
            stream: Box::new(stream),
            records,
            changes,
            partitions,
            status,
        })
    }

    /// The next change of ownership, or (with `records`) the next record; changes first.
    pub async fn next(&mut self, records: bool) -> Result<Delivery, BusError> {
        tokio::select! {
            biased;
            change = self.changes.recv() => change.unwrap_or(Err(BusError::Closed)),
            record = self.records.recv(), if records => record.unwrap_or(Err(BusError::Closed)),
        }
    }

    /// Per partition this instance owns, the messages JetStream has not yet delivered to it
    /// (as the newest delivered message reported it).
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    /// Stops pulling, gives back every message not acknowledged (redelivered at once to the
    /// next owner), unpins the partitions so a stand-by takes them now rather than after the
    /// pin timeout, and flushes: an ack still in the client's buffer when the connection
    /// closes is lost, and its message redelivered.
    pub async fn close(mut self) -> Result<(), BusError> {
        for running in &self.partitions {
            running.task.abort();
        }
        self.records.close();
        while self.records.try_recv().is_ok() {}
        for running in std::mem::take(&mut self.partitions) {
            let _ = running.task.await;
            partition::release(&self.client, running.shared.releases.take()).await;
            let pinned = running
                .shared
                .pinned
                .load(std::sync::atomic::Ordering::Acquire);
            if let (true, Some(group)) = (pinned, &running.group)
                && let Err(error) = self.stream.unpin_consumer(&running.consumer, group).await
            {
                warn!(consumer = %running.consumer, %error, "could not unpin; a stand-by takes over after the pin timeout");
            }
        }
        self.client
            .flush()
            .await
            .map_err(|error| BusError::Unavailable(error.into()))
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        // Unacknowledged messages stay with the server and are redelivered after ack_wait.
        for running in &self.partitions {
            running.task.abort();
        }
    }
}
