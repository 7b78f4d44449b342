//! One partition's pull loop: it keeps what it holds alive on the server, notices when the
//! partition becomes this instance's and when it stops being so, and starts a new ownership
//! only in stream order.
//!
//! The invariant: **records of one partition reach the engine in stream order, from one
//! ownership at a time, and only once every message an earlier owner held has come back.** A
//! new ownership (the first message carrying a new `Nats-Pin-Id`, or the first message at all
//! without priority groups) is *fenced*: its messages are held and kept alive, not handed out,
//! until the server counts no unacknowledged message of the partition that this ownership does
//! not hold. An earlier owner's messages come back when it gives them up (`-NAK`), or after
//! `ack_wait` when it died. Then the partition is announced ([`Delivery::Assigned`]) and the
//! held messages go out sorted by stream sequence.
//!
//! Losing the pin (the server names another client, or no check confirmed ours within the
//! pin timeout) retires the ownership: its records stop being current and the engine is told
//! at once ([`Revocation::lost`]), as for a Kafka member that missed its session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use async_nats::{HeaderValue, Subject};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::held::{Releases, Session};
use super::setup::Durable;
use crate::bus::record::AckInner;
use crate::bus::{
    AckHandle, BusError, ConsumerStatus, Delivery, Headers, InboundRecord, Position, Revocation,
    headers,
};

/// The header JetStream stamps on messages for the pinned client.
const PIN_ID: &str = "Nats-Pin-Id";

/// How often a fenced ownership asks whether the earlier owner's messages are back.
const FENCE_CHECK: Duration = Duration::from_millis(250);

/// Where a partition's records and changes go.
pub(super) struct Outlets {
    pub(super) records: UnboundedSender<Result<Delivery, BusError>>,
    pub(super) changes: UnboundedSender<Result<Delivery, BusError>>,
}

/// What the consumer keeps of a running partition loop, for closing it.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) releases: Arc<Releases>,
    /// Whether an ownership is live (the consumer unpins it when closing).
    pub(super) pinned: Mutex<bool>,
}

/// One ownership and how far it got.
struct Ownership {
    session: Arc<Session>,
    /// Held but not handed out yet, by stream sequence; `None` once live.
    fenced: Option<BTreeMap<u64, InboundRecord>>,
    /// When the server last confirmed the pin.
    confirmed: Instant,
    since: Instant,
}

/// The pull loop of one partition.
pub(super) struct PartitionLoop {
    pub(super) partition: u32,
    pub(super) client: async_nats::Client,
    pub(super) durable: Durable,
    pub(super) source: Arc<str>,
    pub(super) outlets: Outlets,
    pub(super) status: ConsumerStatus,
    pub(super) shared: Arc<Shared>,
    ownership: Option<Ownership>,
}

impl PartitionLoop {
    pub(super) fn new(
        partition: u32,
        client: async_nats::Client,
        durable: Durable,
        source: Arc<str>,
        outlets: Outlets,
        status: ConsumerStatus,
    ) -> Self {
        Self {
            partition,
            client,
            durable,
            source,
            outlets,
            status,
            shared: Arc::default(),
            ownership: None,
        }
    }

    /// The pin timeout, or the server's default when the consumer leaves it unset.
    fn pin_timeout(&self) -> Duration {
        match self.durable.pin_timeout {
            Duration::ZERO => Duration::from_secs(120),
            timeout => timeout,
        }
    }

    /// Pulls after `delay` until the engine goes away or the consumer cannot be pulled.
    pub(super) async fn run(mut self, delay: Duration) {
        tokio::time::sleep(delay).await;
        if let Err(error) = self.pull().await {
            warn!(
                partition = self.partition,
                ?error,
                "JetStream partition stopped"
            );
            let _ = self.outlets.changes.send(Err(error));
        }
        self.lose("the pull loop ended");
    }

    async fn pull(&mut self) -> Result<(), BusError> {
        // A pin is kept by pulling: the pull requests expire (and are renewed) well inside it.
        let expires =
            (self.pin_timeout() / 3).clamp(Duration::from_millis(500), Duration::from_secs(30));
        let mut builder = self
            .durable
            .consumer
            .stream()
            .expires(expires)
            .heartbeat(expires / 4);
        if let Some(group) = &self.durable.group {
            builder = builder.group(group.clone());
        }
        let mut messages = builder
            .messages()
            .await
            .map_err(|error| BusError::Unavailable(error.into()))?;
        let mut keep_alive =
            tokio::time::interval((self.durable.ack_wait / 3).max(Duration::from_millis(100)));
        let mut check = tokio::time::interval(FENCE_CHECK.min(self.pin_timeout() / 4));
        for timer in [&mut keep_alive, &mut check] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let releases = Arc::clone(&self.shared.releases);
        let mut pin_checked = Instant::now();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(Ok(message)) => self.receive(message),
                    Some(Err(error)) => match error.kind() {
                        pull::MessagesErrorKind::ConsumerDeleted
                        | pull::MessagesErrorKind::PushBasedConsumer
                        | pull::MessagesErrorKind::RequestLimitExceeded => {
                            return Err(BusError::Setup(error.into()));
                        }
                        _ => debug!(partition = self.partition, %error, "JetStream pull failed; retrying"),
                    },
                    None => return Err(BusError::Setup("the JetStream pull ended".into())),
                },
                _ = keep_alive.tick() => self.keep_alive().await,
                _ = check.tick() => {
                    let fenced = self.ownership.as_ref().is_some_and(|o| o.fenced.is_some());
                    // A live ownership checks its pin a few times per pin timeout; a fenced
                    // one asks often, as it waits to start.
                    if fenced || pin_checked.elapsed() >= self.pin_timeout() / 4 {
                        pin_checked = Instant::now();
                        self.check().await;
                    }
                }
                () = releases.notified() => self.release().await,
                () = self.outlets.records.closed() => return Ok(()),
            }
        }
    }

    /// Holds a delivered message in its ownership.
    fn receive(&mut self, message: jetstream::Message) {
        let pin = self
            .durable
            .group
            .as_ref()
            .and(message.headers.as_ref())
            .and_then(|map| map.get_last(PIN_ID))
            .map(|value| value.as_str().to_owned());
        if self.ownership.as_ref().is_none_or(|o| o.session.pin != pin) {
            if self.ownership.is_some() {
                self.lose("the server pinned this partition again");
            }
            debug!(
                partition = self.partition,
                "ownership starts; fenced until earlier holders are done"
            );
            let now = Instant::now();
            self.ownership = Some(Ownership {
                session: Session::new(pin, Arc::clone(&self.shared.releases)),
                fenced: Some(BTreeMap::new()),
                confirmed: now,
                since: now,
            });
        }
        let Some(ownership) = self.ownership.as_mut() else {
            return;
        };
        let record = match inbound(
            &self.client,
            &ownership.session,
            message,
            self.partition,
            &self.source,
            &self.status,
        ) {
            Ok(Some(record)) => record,
            // A redelivery of a message this ownership holds: the first stays the one worked on.
            Ok(None) => return,
            Err(error) => {
                warn!(partition = self.partition, %error, "skipping a message that is not a bus record");
                return;
            }
        };
        match &mut ownership.fenced {
            Some(fenced) => {
                fenced.insert(record.position.offset, record);
            }
            None => {
                let _ = self.outlets.records.send(Ok(Delivery::Record(record)));
            }
        }
    }

    /// Tells the server every held message of the live ownership is still being worked on.
    async fn keep_alive(&self) {
        let Some(ownership) = &self.ownership else {
            return;
        };
        for reply in ownership.session.held_replies() {
            if let Err(error) = self
                .client
                .publish(reply, Bytes::from_static(b"+WPI"))
                .await
            {
                debug!(partition = self.partition, %error, "in-progress signal not sent");
            }
        }
    }

    /// Gives released messages back to the server at once.
    async fn release(&self) {
        release(&self.client, self.shared.releases.take()).await;
    }

    /// Confirms the pin, and ends the fence once the earlier holders' messages are back.
    async fn check(&mut self) {
        let Some(ownership) = &mut self.ownership else {
            return;
        };
        let info = match self.durable.consumer.get_info().await {
            Ok(info) => info,
            Err(error) => {
                if ownership.session.pin.is_some()
                    && ownership.confirmed.elapsed() > self.pin_timeout()
                {
                    self.lose("the server could not confirm the pin within its timeout");
                } else {
                    debug!(partition = self.partition, %error, "consumer info failed");
                }
                return;
            }
        };
        if let (Some(pin), Some(group)) = (&ownership.session.pin, &self.durable.group) {
            let pinned = info
                .priority_groups
                .iter()
                .find(|state| &state.group == group)
                .and_then(|state| state.pinned_client_id.as_ref());
            if pinned != Some(pin) {
                self.lose("the server pinned another client");
                return;
            }
            ownership.confirmed = Instant::now();
        }
        if ownership.fenced.is_none() {
            return;
        }
        // Everything unacknowledged up to the last delivered sequence is ours: nothing of an
        // earlier holder can come back behind what we start now.
        let ours = ownership.session.held_up_to(info.delivered.stream_sequence);
        if ours < info.num_ack_pending {
            if ownership.since.elapsed() > self.durable.ack_wait * 2 {
                debug!(
                    partition = self.partition,
                    ours,
                    pending = info.num_ack_pending,
                    "still waiting for an earlier holder's messages"
                );
            }
            return;
        }
        let fenced = std::mem::take(ownership.fenced.as_mut().expect("checked above"));
        ownership.fenced = None;
        info!(
            partition = self.partition,
            records = fenced.len(),
            waited_ms = ownership.since.elapsed().as_millis() as u64,
            "partition owned"
        );
        *lock(&self.shared.pinned) = true;
        let _ = self
            .outlets
            .changes
            .send(Ok(Delivery::Assigned(vec![self.partition])));
        for record in fenced.into_values() {
            let _ = self.outlets.records.send(Ok(Delivery::Record(record)));
        }
    }

    /// Ends the ownership: its records are no longer current, and the engine is told if it
    /// had heard of it.
    fn lose(&mut self, why: &str) {
        let Some(ownership) = self.ownership.take() else {
            return;
        };
        ownership.session.retire();
        *lock(&self.shared.pinned) = false;
        if ownership.fenced.is_none() {
            warn!(partition = self.partition, why, "partition no longer owned");
            self.status.forget(&[self.partition]);
            let revocation = Revocation::new(vec![self.partition], true, None);
            let _ = self.outlets.changes.send(Ok(Delivery::Revoked(revocation)));
        }
        // Fenced records drop here and are released to whoever owns the partition now.
    }
}

/// Sends `-NAK` for each released message: redelivered now, to the current owner.
pub(super) async fn release(client: &async_nats::Client, replies: Vec<Subject>) {
    for reply in replies {
        if let Err(error) = client.publish(reply, Bytes::from_static(b"-NAK")).await {
            debug!(%error, "release not sent; the message comes back after ack_wait");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bus record of a message, held in `session`; `None` when the session holds it already.
fn inbound(
    client: &async_nats::Client,
    session: &Arc<Session>,
    message: jetstream::Message,
    partition: u32,
    source: &Arc<str>,
    status: &ConsumerStatus,
) -> Result<Option<InboundRecord>, BusError> {
    let info = message.info().map_err(BusError::Broker)?;
    status.set_lag(partition, info.pending);
    let (sequence, delivered) = (info.stream_sequence, info.delivered);
    let message = message.message;
    let reply = message
        .reply
        .clone()
        .ok_or_else(|| BusError::Invalid("a JetStream message without a reply subject".into()))?;
    let Some(ack) = session.hold(client, sequence, reply) else {
        return Ok(None);
    };
    let mut key = Bytes::new();
    let mut headers = Headers::new();
    if let Some(map) = &message.headers {
        for (name, values) in map.iter() {
            for value in values {
                let value = Bytes::copy_from_slice(HeaderValue::as_str(value).as_bytes());
                match name.as_ref() {
                    headers::NATS_KEY => key = value,
                    "Nats-Msg-Id" | PIN_ID => {}
                    other => headers.insert(other, value),
                }
            }
        }
    }
    Ok(Some(InboundRecord {
        source: Arc::clone(source),
        position: Position {
            partition,
            offset: sequence,
        },
        key,
        payload: message.payload,
        headers,
        delivery_count: u32::try_from(delivered).unwrap_or(u32::MAX),
        ack: AckHandle(AckInner::Nats(Box::new(ack))),
    }))
}
