//! What passes between the scheduler and a handler job: a queued record with its own attempt
//! count, and what a job reports back when it ends.

use std::sync::Arc;
use std::time::Duration;

use common::bus::InboundRecord;
use tokio::time::Instant;

use super::{Handler, Record};

/// A record waiting its turn, with the handler it is routed to (none: unknown name).
pub(super) struct Queued {
    pub(super) record: InboundRecord,
    pub(super) view: Record,
    pub(super) handler: Option<Arc<dyn Handler>>,
    /// Handler calls this record took part in: a record that joins a batch being retried
    /// starts from its own count, not the batch's.
    pub(super) attempts: u32,
    /// When it was first handed to its handler (waits for a dependency count from here).
    pub(super) first_try: Option<Instant>,
    /// When the engine received it: the age of unfinished work counts from here.
    pub(super) arrived: Instant,
}

impl Queued {
    /// Whether the bus still counts the record as this consumer's: false once its partition
    /// was revoked (the next owner runs it).
    pub(super) fn is_current(&self) -> bool {
        self.record.ack.is_current()
    }
}

/// What a handler job reports back (the loop knows which key and partition it ran for).
pub(super) enum Finished {
    /// Every record of the batch was acknowledged (done, skipped or dead-lettered).
    Settled {
        /// Event ids really applied (done or skipped), never those dead-lettered: a replay of
        /// a dead letter must not be taken for a repeat.
        applied: Vec<(String, common::bus::Position)>,
    },
    /// These records should run again later; they come back to the head of their key.
    Retry {
        batch: Vec<Queued>,
        delay: Duration,
        /// A wait for a dependency, not an attempt.
        waited: bool,
    },
    /// Cancellation overtook the batch: these records are not acknowledged. At shutdown they
    /// are redelivered to the next owner; otherwise they go back to the head of their key.
    Abandoned { batch: Vec<Queued> },
}
