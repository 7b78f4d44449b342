//! What this instance holds of one partition: the messages delivered to it and not yet
//! acknowledged, per ownership ("session": one JetStream pin).
//!
//! The rule this module keeps: **a message handed out is either acknowledged, or released
//! back to the server**, and while it is held the server neither redelivers it nor counts it
//! towards `max_deliver`. Holding is the partition task's job (it sends `+WPI` for every held
//! message each third of `ack_wait`); releasing happens when an [`NatsAck`] is dropped without
//! an ack (the engine gave the record up at shutdown), and sends `-NAK`, so the next owner
//! gets it at once instead of after `ack_wait`.
//!
//! A session whose pin the server has not confirmed lately (see `trust_until`) counts as
//! retired before the partition loop gets round to retiring it, and an ack is not sent on a
//! connection that is down (it would be queued and land late). A retired session (its pin is
//! gone) sends nothing at all: its messages may already be
//! with the next owner, whose fence counts what is unacknowledged. An ack from here could end
//! that fence before a message of the same key comes back, and a release would hand the next
//! owner a second copy; they come back after `ack_wait` instead, and work finished here is
//! done again there (at least once, in order). A session also remembers the sequences it
//! settled, so a redelivery already on its way when the ack went out is not worked on again
//! behind newer records.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::Subject;
use async_nats::connection::State;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::BusError;

/// Releases waiting to be sent, shared by a partition's sessions and its task.
#[derive(Debug, Default)]
pub(super) struct Releases {
    subjects: Mutex<Vec<Subject>>,
    wake: Notify,
}

impl Releases {
    /// Takes what is waiting to be released.
    pub(super) fn take(&self) -> Vec<Subject> {
        std::mem::take(&mut *lock(&self.subjects))
    }

    /// Resolves once something waits to be released.
    pub(super) async fn notified(&self) {
        self.wake.notified().await;
    }

    fn push(&self, reply: Subject) {
        lock(&self.subjects).push(reply);
        self.wake.notify_one();
    }
}

/// How many settled sequences a session remembers: far more than can be in flight to it.
const SETTLED: usize = 4096;

/// One ownership of a partition: from the first message of a pin to its loss.
#[derive(Debug)]
pub(super) struct Session {
    /// The server's `Nats-Pin-Id`, or `None` without priority groups.
    pub(super) pin: Option<String>,
    retired: AtomicBool,
    /// Until when the pin is trusted without a new confirmation (`None`: no pin, always).
    trusted_until: Mutex<Option<Instant>>,
    /// Held messages: stream sequence → the reply subject that acknowledges them.
    held: Mutex<HashMap<u64, Subject>>,
    /// The most recently acknowledged sequences (a released one must be taken again when it
    /// comes back).
    settled: Mutex<BTreeSet<u64>>,
    releases: Arc<Releases>,
}

impl Session {
    /// A session for `pin`, trusted for `trust` from now.
    pub(super) fn new(pin: Option<String>, trust: Duration, releases: Arc<Releases>) -> Arc<Self> {
        let trusted_until = pin.as_ref().map(|_| Instant::now() + trust);
        Arc::new(Self {
            pin,
            retired: AtomicBool::new(false),
            trusted_until: Mutex::new(trusted_until),
            held: Mutex::new(HashMap::new()),
            settled: Mutex::new(BTreeSet::new()),
            releases,
        })
    }

    /// Holds a delivered message, unless it is a redelivery of one this session holds (the
    /// first delivery stays the one worked on) or acknowledged (its ack was lost).
    pub(super) fn hold(
        self: &Arc<Self>,
        client: &async_nats::Client,
        sequence: u64,
        reply: Subject,
    ) -> Hold {
        let mut held = lock(&self.held);
        if held.contains_key(&sequence) {
            return Hold::AlreadyHeld;
        }
        if lock(&self.settled).contains(&sequence) {
            return Hold::AlreadyDone(reply);
        }
        held.insert(sequence, reply.clone());
        Hold::New(NatsAck {
            client: client.clone(),
            session: Arc::clone(self),
            sequence,
            reply,
            settled: false,
        })
    }

    /// The reply subjects of every held message, for the in-progress signals.
    pub(super) fn held_replies(&self) -> Vec<Subject> {
        lock(&self.held).values().cloned().collect()
    }

    /// How many held messages have a stream sequence of at most `sequence`.
    pub(super) fn held_up_to(&self, sequence: u64) -> usize {
        lock(&self.held).keys().filter(|s| **s <= sequence).count()
    }

    /// The server confirmed the pin as asked at `asked`: trusted until `asked + trust`.
    pub(super) fn confirmed(&self, asked: Instant, trust: Duration) {
        if let Some(until) = lock(&self.trusted_until).as_mut() {
            *until = (*until).max(asked + trust);
        }
    }

    /// Until when the pin is trusted (`None` without a pin).
    pub(super) fn trusted_until(&self) -> Option<Instant> {
        *lock(&self.trusted_until)
    }

    /// Forgets acknowledged sequences at or below the consumer's ack floor: the server will
    /// not deliver them again.
    pub(super) fn forget_settled_up_to(&self, floor: u64) {
        let mut settled = lock(&self.settled);
        *settled = settled.split_off(&(floor + 1));
    }

    /// The pin is gone: records of this session are no longer current.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Retired, or its pin not confirmed in time.
    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
            || self
                .trusted_until()
                .is_some_and(|until| Instant::now() >= until)
    }

    /// Forgets a held message; true when it was held.
    fn release(&self, sequence: u64) -> bool {
        lock(&self.held).remove(&sequence).is_some()
    }

    /// Forgets an acknowledged message and remembers that it was.
    fn settle(&self, sequence: u64) -> bool {
        let held = self.release(sequence);
        let mut settled = lock(&self.settled);
        settled.insert(sequence);
        // A backstop only: the ack floor normally keeps the set small.
        if settled.len() > SETTLED {
            settled.pop_first();
        }
        held
    }
}

/// What [`Session::hold`] made of a delivery.
#[derive(Debug)]
pub(super) enum Hold {
    /// A message to work on.
    New(NatsAck),
    /// A redelivery of a message held: ignored.
    AlreadyHeld,
    /// A redelivery of a message acknowledged: acknowledge it again (reply subject).
    AlreadyDone(Subject),
}

/// Acknowledges one held message; dropping it unacknowledged releases the message.
#[derive(Debug)]
pub(crate) struct NatsAck {
    client: async_nats::Client,
    session: Arc<Session>,
    sequence: u64,
    reply: Subject,
    settled: bool,
}

impl NatsAck {
    /// Sends the ack; the message is no longer held. A retired session's ack is not sent
    /// (see the module doc).
    pub(crate) async fn ack(mut self) -> Result<(), BusError> {
        self.settled = true;
        self.session.settle(self.sequence);
        if self.session.is_retired() {
            return Ok(());
        }
        if self.client.connection_state() != State::Connected {
            // Queued, it would land after a reconnect, perhaps inside the next owner's fence:
            // let the message come back instead (done again, in order).
            return Err(BusError::Unavailable("the NATS connection is down".into()));
        }
        self.client
            .publish(self.reply.clone(), Bytes::from_static(b"+ACK"))
            .await
            .map_err(BusError::nats_ack)
    }

    /// Resets the server's `ack_wait` now (the partition task also does so on its own).
    pub(crate) async fn in_progress(&self) -> Result<(), BusError> {
        if self.session.is_retired() {
            return Ok(());
        }
        self.client
            .publish(self.reply.clone(), Bytes::from_static(b"+WPI"))
            .await
            .map_err(BusError::nats_ack)
    }

    /// False once the pin this message came with is gone.
    pub(crate) fn is_current(&self) -> bool {
        !self.session.is_retired()
    }
}

impl Drop for NatsAck {
    fn drop(&mut self) {
        if !self.settled && self.session.release(self.sequence) && !self.session.is_retired() {
            self.session.releases.push(self.reply.clone());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic halfway through an update.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Arc<Session>, Arc<Releases>) {
        let releases = Arc::new(Releases::default());
        (
            Session::new(None, Duration::from_secs(1), Arc::clone(&releases)),
            releases,
        )
    }

    #[test]
    fn held_counts_follow_sequences() {
        let (session, _) = session();
        for sequence in [3, 5, 9] {
            session.held.lock().unwrap().insert(sequence, "r".into());
        }
        assert_eq!(session.held_up_to(5), 2);
        assert!(session.settle(5));
        assert!(!session.settle(5), "settled twice");
        assert_eq!(session.held_up_to(9), 2);
        assert!(session.settled.lock().unwrap().contains(&5));
    }

    #[test]
    fn the_ack_floor_forgets_settled_sequences_below_it() {
        let (session, _) = session();
        for sequence in [3, 5, 9] {
            session.settle(sequence);
        }
        session.forget_settled_up_to(5);
        assert_eq!(*session.settled.lock().unwrap(), BTreeSet::from([9]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pin_not_confirmed_in_time_is_no_longer_current() {
        let releases = Arc::new(Releases::default());
        let pinned = Session::new(Some("pin".into()), Duration::from_secs(2), releases);
        assert!(!pinned.is_retired());
        tokio::time::advance(Duration::from_millis(1500)).await;
        pinned.confirmed(Instant::now(), Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(!pinned.is_retired(), "a confirmation extends the trust");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(pinned.is_retired());
        let (unpinned, _) = session();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!unpinned.is_retired(), "without a pin nothing expires");
    }

    #[test]
    fn a_session_remembers_only_its_latest_settled_sequences() {
        let (session, _) = session();
        for sequence in 0..(SETTLED as u64 + 10) {
            session.settle(sequence);
        }
        let settled = session.settled.lock().unwrap();
        assert_eq!(settled.len(), SETTLED);
        assert!(!settled.contains(&9) && settled.contains(&10));
    }

    #[test]
    fn retiring_a_session_makes_its_records_not_current() {
        let (session, _) = session();
        assert!(!session.is_retired());
        session.retire();
        assert!(session.is_retired());
    }
}
