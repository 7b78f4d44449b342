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
//! A retired session (its pin is gone) sends nothing at all: its messages may already be
//! with the next owner, whose fence counts what is unacknowledged. An ack from here could end
//! that fence before a message of the same key comes back, and a release would hand the next
//! owner a second copy; they come back after `ack_wait` instead, and work finished here is
//! done again there (at least once, in order). A session also remembers the sequences it
//! settled, so a redelivery already on its way when the ack went out is not worked on again
//! behind newer records.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::Notify;

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
    /// Held messages: stream sequence → the reply subject that acknowledges them.
    held: Mutex<HashMap<u64, Subject>>,
    /// The most recently acknowledged sequences (a released one must be taken again when it
    /// comes back).
    settled: Mutex<BTreeSet<u64>>,
    releases: Arc<Releases>,
}

impl Session {
    pub(super) fn new(pin: Option<String>, releases: Arc<Releases>) -> Arc<Self> {
        Arc::new(Self {
            pin,
            retired: AtomicBool::new(false),
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

    /// The pin is gone: records of this session are no longer current.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
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
        self.client
            .publish(self.reply.clone(), Bytes::from_static(b"+ACK"))
            .await
            .map_err(BusError::nats_ack)
    }

    /// Resets the server's `ack_wait` now (the partition task also does so on its own).
    pub(crate) async fn in_progress(&self) -> Result<(), BusError> {
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
        (Session::new(None, Arc::clone(&releases)), releases)
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
