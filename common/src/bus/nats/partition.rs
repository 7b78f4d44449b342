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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::held::{Hold, Releases, Session};
use super::setup::Durable;
use crate::bus::record::AckInner;
use crate::bus::{
    AckHandle, BusError, ConsumerStatus, Delivery, InboundRecord, Position, Revocation,
};

/// The header JetStream stamps on messages for the pinned client.
const PIN_ID: &str = "Nats-Pin-Id";

/// How often a fenced ownership asks whether the earlier owner's messages are back.
const FENCE_CHECK: Duration = Duration::from_millis(250);

/// The longest any one call to the server may take inside the loop: a connection that is down
/// must not stop the loop from noticing that its pin can no longer be confirmed.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts at starting the pull before the partition is given up as broken.
const PULL_ATTEMPTS: u32 = 5;

/// Where a partition's records and changes go.
pub(super) struct Outlets {
    pub(super) records: UnboundedSender<Result<Delivery, BusError>>,
    pub(super) changes: UnboundedSender<Result<Delivery, BusError>>,
}

/// What the consumer keeps of a running partition loop, for closing it.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) releases: Arc<Releases>,
    /// Whether an ownership holds a pin (the consumer unpins it when closing).
    pub(super) pinned: AtomicBool,
}

/// One ownership and how far it got.
struct Ownership {
    session: Arc<Session>,
    /// Held but not handed out yet, by stream sequence; `None` once live.
    fenced: Option<BTreeMap<u64, InboundRecord>>,
    since: Instant,
}

/// The pull loop of one partition.
pub(super) struct PartitionLoop {
    partition: u32,
    client: async_nats::Client,
    durable: Durable,
    source: Arc<str>,
    outlets: Outlets,
    status: ConsumerStatus,
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

    /// How long a pin stays trusted without a confirmation from the server. Half of what the
    /// next owner must wait at least (the pin timeout before it is pinned, `ack_wait` before
    /// our held messages come back to it), so this instance stops first.
    fn trust(&self) -> Duration {
        self.pin_timeout().min(self.durable.ack_wait) / 2
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

    async fn messages(&self) -> Result<pull::Stream, BusError> {
        // A pin is kept by pulling: the pull requests expire (and are renewed) well inside it.
        let expires =
            (self.pin_timeout() / 3).clamp(Duration::from_millis(500), Duration::from_secs(30));
        let mut attempt = 0;
        loop {
            let mut builder = self
                .durable
                .consumer
                .stream()
                .expires(expires)
                .heartbeat(expires / 4);
            if let Some(group) = &self.durable.group {
                builder = builder.group(group.clone());
            }
            match builder.messages().await {
                Ok(messages) => return Ok(messages),
                Err(error) if attempt + 1 < PULL_ATTEMPTS => {
                    attempt += 1;
                    debug!(partition = self.partition, %error, attempt, "cannot start pulling; retrying");
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                }
                Err(error) => return Err(BusError::Unavailable(error.into())),
            }
        }
    }

    async fn pull(&mut self) -> Result<(), BusError> {
        let mut messages = self.messages().await?;
        if self.durable.group.is_none() {
            // Without priority groups the partition is this instance's from the start (the
            // operator said so): start the ownership now, not at the first message, so an
            // idle partition is announced too.
            self.begin(None);
        }
        let mut keep_alive =
            tokio::time::interval((self.durable.ack_wait / 3).max(Duration::from_millis(100)));
        let mut check = tokio::time::interval(
            FENCE_CHECK
                .min(self.trust() / 4)
                .max(Duration::from_millis(50)),
        );
        for timer in [&mut keep_alive, &mut check] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let releases = Arc::clone(&self.shared.releases);
        let mut pin_checked = Instant::now();
        loop {
            // A pin not confirmed in time is given up whatever the server still says (its
            // records already count as not current: `Session::is_retired`).
            let distrust = self
                .ownership
                .as_ref()
                .and_then(|o| o.session.trusted_until());
            tokio::select! {
                message = messages.next() => match message {
                    Some(Ok(message)) => self.receive(message).await,
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
                    // A live ownership confirms its pin a few times per trust period; a fenced
                    // one asks often, as it waits to start.
                    if fenced || pin_checked.elapsed() >= self.trust() / 4 {
                        pin_checked = Instant::now();
                        self.check().await;
                    }
                }
                () = sleep_until_or_never(distrust) => {
                    self.lose("the server did not confirm the pin in time");
                }
                () = releases.notified() => self.release().await,
                () = self.outlets.records.closed() => return Ok(()),
            }
        }
    }

    /// Starts an ownership, fenced.
    fn begin(&mut self, pin: Option<String>) {
        debug!(
            partition = self.partition,
            "ownership starts; fenced until earlier holders are done"
        );
        self.ownership = Some(Ownership {
            session: Session::new(pin, self.trust(), Arc::clone(&self.shared.releases)),
            fenced: Some(BTreeMap::new()),
            since: Instant::now(),
        });
    }

    /// Holds a delivered message in its ownership.
    async fn receive(&mut self, message: jetstream::Message) {
        if self.durable.group.is_some() {
            let pin = message
                .headers
                .as_ref()
                .and_then(|map| map.get_last(PIN_ID))
                .map(|value| value.as_str().to_owned());
            let current = self.ownership.as_ref().and_then(|o| o.session.pin.clone());
            // A message without the header belongs to the pin we have.
            if pin.is_some() && pin != current {
                if self.ownership.is_some() {
                    self.lose("the server pinned this partition again");
                }
                self.begin(pin);
            }
        }
        let Some(ownership) = self.ownership.as_mut() else {
            // Nothing pinned yet and no pin on the message: leave it to its redelivery.
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
            Ok(Inbound::Record(record)) => record,
            Ok(Inbound::Held) => return,
            Ok(Inbound::Done(reply)) => {
                // Done here before; its ack was lost on the way.
                let ack = self.client.publish(reply, Bytes::from_static(b"+ACK"));
                let _ = tokio::time::timeout(CALL_TIMEOUT, ack).await;
                return;
            }
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

    /// Tells the server every held message of the current ownership is still being worked on.
    async fn keep_alive(&self) {
        let Some(ownership) = self.ownership.as_ref().filter(|o| !o.session.is_retired()) else {
            return;
        };
        let signals = async {
            for reply in ownership.session.held_replies() {
                if let Err(error) = self
                    .client
                    .publish(reply, Bytes::from_static(b"+WPI"))
                    .await
                {
                    debug!(partition = self.partition, %error, "in-progress signal not sent");
                }
            }
        };
        if tokio::time::timeout(CALL_TIMEOUT, signals).await.is_err() {
            debug!(partition = self.partition, "in-progress signals stalled");
        }
    }

    /// Gives released messages back to the server at once.
    async fn release(&self) {
        let replies = self.shared.releases.take();
        if tokio::time::timeout(CALL_TIMEOUT, release(&self.client, replies))
            .await
            .is_err()
        {
            debug!(
                partition = self.partition,
                "releases stalled; they come back after ack_wait"
            );
        }
    }

    /// Confirms the pin, and ends the fence once the earlier holders' messages are back.
    async fn check(&mut self) {
        let trust = self.trust();
        let Some(ownership) = &mut self.ownership else {
            return;
        };
        let asked = Instant::now();
        let info = match tokio::time::timeout(CALL_TIMEOUT, self.durable.consumer.get_info()).await
        {
            Ok(Ok(info)) => info,
            Ok(Err(error)) => {
                debug!(partition = self.partition, %error, "consumer info failed");
                return;
            }
            Err(_) => {
                debug!(partition = self.partition, "consumer info timed out");
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
            ownership.session.confirmed(asked, trust);
            // Confirmed ours: closing unpins it (unpinning takes no pin id, so never before).
            self.shared.pinned.store(true, Ordering::Release);
        }
        ownership
            .session
            .forget_settled_up_to(info.ack_floor.stream_sequence);
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
        let fenced = ownership.fenced.take().unwrap_or_default();
        info!(
            partition = self.partition,
            records = fenced.len(),
            waited_ms = u64::try_from(ownership.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            "partition owned"
        );
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
        self.shared.pinned.store(false, Ordering::Release);
        if ownership.fenced.is_none() {
            warn!(partition = self.partition, why, "partition no longer owned");
            self.status.forget(&[self.partition]);
            let revocation = Revocation::new(vec![self.partition], true, None);
            let _ = self.outlets.changes.send(Ok(Delivery::Revoked(revocation)));
        }
        // Fenced records drop here; they come back to whoever owns the partition now.
    }
}

/// Resolves at `at`, or never without it.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

/// What a delivered message is to the loop.
enum Inbound {
    /// A record to hand out.
    Record(InboundRecord),
    /// A redelivery of one held: ignored.
    Held,
    /// A redelivery of one acknowledged: acknowledge again (reply subject).
    Done(Subject),
}

/// The bus record of a message, held in `session`.
fn inbound(
    client: &async_nats::Client,
    session: &Arc<Session>,
    message: jetstream::Message,
    partition: u32,
    source: &Arc<str>,
    status: &ConsumerStatus,
) -> Result<Inbound, BusError> {
    let info = message.info().map_err(BusError::Broker)?;
    status.set_lag(partition, info.pending);
    let (sequence, delivered) = (info.stream_sequence, info.delivered);
    let message = message.message;
    let reply = message
        .reply
        .clone()
        .ok_or_else(|| BusError::Invalid("a JetStream message without a reply subject".into()))?;
    let ack = match session.hold(client, sequence, reply) {
        Hold::New(ack) => ack,
        Hold::AlreadyHeld => return Ok(Inbound::Held),
        Hold::AlreadyDone(reply) => return Ok(Inbound::Done(reply)),
    };
    let (key, headers) = super::key_and_headers(message.headers.as_ref());
    Ok(Inbound::Record(InboundRecord {
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
