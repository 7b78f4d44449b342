//! Reading the DLQ back, for the operations commands (`processor dlq list`, `dlq replay`).
//!
//! [`DlqReader::read`] returns the dead letters up to the end of the DLQ as it is when asked,
//! each with whether the replay group has handled it (replayed, or passed over for a newer one
//! of the same order). [`DlqReader::replay`] publishes one again and makes it (and those it
//! supersedes) handled, durably, once the broker acknowledged the publish: Kafka commits the
//! group's offsets (the first unhandled offset of each partition, and the handled offsets
//! beyond it in the commit's metadata, as the consumer does); NATS, which has no offsets, keeps
//! the same text in a key-value bucket. Which offset to store is the one rule
//! that must not be wrong, so it lives in [`Ledger`], pure and unit-tested.
//!
//! Publish and store are two steps: a replay stopped between them has published a dead letter
//! it did not store. Each replayed record names its dead letter in `replayed-from`, and a
//! replay's read looks for those on the webhook topic (from the oldest pending dead letter's
//! time on) and stores what it finds, so nothing is published twice.
//!
//! The in-memory bus lives inside one process: there is no DLQ to read from another one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{BusError, Position, StoredRecord};
use crate::config::{BusConfig, BusKind};

/// How much earlier than a dead letter's `dlq-failed-at` its replay may carry a timestamp: the
/// clocks of the processor that dead-lettered it and of the host replaying it may disagree.
const CLOCK_SLACK: Duration = Duration::from_secs(600);

/// A dead letter and whether the replay group has handled it.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// The dead letter.
    pub record: StoredRecord,
    /// Replayed, or passed over for a newer dead letter of its order, by the replay group.
    pub handled: bool,
}

/// What a replay group has handled in one DLQ partition.
///
/// Every offset below `committed` is handled, and so is every offset in `done`; of the
/// records read, those in `pending` are not. What is stored is the first pending offset, or
/// the end of what is known to be read without a hole (`end`) when that comes first, and the
/// handled offsets beyond it: a record the read did not return (a fetch that stopped early, a
/// broker that skipped part of a batch) is never passed by the stored offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    committed: u64,
    done: BTreeSet<u64>,
    pending: BTreeSet<u64>,
    end: u64,
}

impl Ledger {
    /// The state a group stored: `committed` and the handled offsets `done` beyond it.
    pub fn stored(committed: u64, done: impl IntoIterator<Item = u64>) -> Self {
        Self {
            committed,
            done: done
                .into_iter()
                .filter(|&offset| offset > committed)
                .collect(),
            pending: BTreeSet::new(),
            end: committed,
        }
    }

    /// Whether the group has handled `offset`.
    pub fn is_handled(&self, offset: u64) -> bool {
        offset < self.committed || self.done.contains(&offset)
    }

    /// Notes that the record at `offset` was read and is not handled.
    pub fn read(&mut self, offset: u64) {
        if !self.is_handled(offset) {
            self.pending.insert(offset);
        }
    }

    /// Notes that every record below `end` was read: offsets below it without a record (NATS:
    /// other subjects' sequences) are nothing to wait for.
    pub fn read_to(&mut self, end: u64) {
        self.end = self.end.max(end);
    }

    /// Marks `offset` handled.
    pub fn handle(&mut self, offset: u64) {
        self.pending.remove(&offset);
        if offset >= self.committed {
            self.done.insert(offset);
        }
    }

    /// What to store: the first offset not handled, and the handled offsets beyond it.
    pub fn to_store(&self) -> (u64, Vec<u64>) {
        let committed = self
            .pending
            .first()
            .map_or(self.end, |&first| first.min(self.end))
            .max(self.committed);
        let done = self.done.range(committed..).copied().collect();
        (committed, done)
    }
}

/// The broker behind a [`DlqReader`].
// One per command run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    #[cfg(feature = "kafka")]
    Kafka(super::kafka::KafkaDlq),
    #[cfg(feature = "nats")]
    Nats(super::nats::NatsDlq),
}

/// What to store for one partition: its number, the first offset not handled, and the
/// handled offsets beyond it.
type Store = (u32, u64, Vec<u64>);

/// What a [`DlqReader`] is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Listing: reads every dead letter, says which the group handled, stores and creates
    /// nothing.
    List,
    /// Replaying: reads what the group has not handled and stores what it handles.
    Replay,
}

/// Reads the DLQ the configuration names, as a replay group.
pub struct DlqReader {
    backend: Backend,
    access: Access,
    /// The group's state per partition, as read and as handled since.
    ledgers: BTreeMap<u32, Ledger>,
}

impl DlqReader {
    /// Opens the DLQ as the replay group `group` (its stored state is read by
    /// [`DlqReader::read`]).
    pub async fn open(config: &BusConfig, group: &str, access: Access) -> Result<Self, BusError> {
        let backend = match config.kind {
            #[cfg(feature = "kafka")]
            BusKind::Kafka => Backend::Kafka(
                super::kafka::KafkaDlq::open(config, group, access == Access::Replay).await?,
            ),
            #[cfg(not(feature = "kafka"))]
            BusKind::Kafka => return Err(BusError::not_built("kafka")),
            #[cfg(feature = "nats")]
            BusKind::Nats => Backend::Nats(
                super::nats::NatsDlq::open(config, group, access == Access::Replay).await?,
            ),
            #[cfg(not(feature = "nats"))]
            BusKind::Nats => return Err(BusError::not_built("nats")),
            BusKind::Memory => {
                return Err(BusError::Setup(
                    "BUS=memory keeps its DLQ inside the process that wrote it; \
                     the DLQ commands need BUS=kafka or BUS=nats"
                        .into(),
                ));
            }
        };
        Ok(Self {
            backend,
            access,
            ledgers: BTreeMap::new(),
        })
    }

    /// Every dead letter the DLQ retains, up to its end as it is now, in position order (a
    /// replay plans with the handled ones too: a newer version of an order already replayed
    /// passes over an older one dead-lettered again since).
    pub async fn read(&mut self) -> Result<Vec<DlqEntry>, BusError> {
        let mut entries = Vec::new();
        for (partition, start, end) in self.partitions().await? {
            let mut ledger = self.load(partition).await?;
            if start > ledger.committed {
                tracing::warn!(
                    partition,
                    committed = ledger.committed,
                    start,
                    "dead letters below the DLQ's start expired before the replay group \
                     handled them"
                );
            }
            // Below the committed offset everything is handled: only above it must the read
            // vouch that no record was skipped.
            let vouch_from = ledger.committed.max(start);
            let (records, reached) = if start < end {
                self.read_partition(partition, start, end, vouch_from)
                    .await?
            } else {
                (Vec::new(), vouch_from)
            };
            for record in &records {
                ledger.read(record.position.offset);
            }
            ledger.read_to(reached);
            entries.extend(records.into_iter().map(|record| DlqEntry {
                handled: ledger.is_handled(record.position.offset),
                record,
            }));
            self.ledgers.insert(partition, ledger);
        }
        Ok(entries)
    }

    /// [`DlqReader::read`] for a replay of the dead letters `selected` picks: those of them an
    /// interrupted run published but did not store (killed between the broker's
    /// acknowledgement and the store) are found on the bus and come back handled, stored so
    /// (opened to list, as a dry run is: only marked), so they are not published a second
    /// time. The bus is read from the oldest selected pending dead letter's time on (less
    /// [`CLOCK_SLACK`]; its replay cannot be older), from its start when one does not say
    /// when it failed. Dead letters not selected are left to the replay that selects them.
    pub async fn read_for_replay(
        &mut self,
        selected: impl Fn(&DlqEntry) -> bool,
    ) -> Result<Vec<DlqEntry>, BusError> {
        let mut entries = self.read().await?;
        self.record_published(&mut entries, selected).await?;
        Ok(entries)
    }

    async fn record_published(
        &mut self,
        entries: &mut [DlqEntry],
        selected: impl Fn(&DlqEntry) -> bool,
    ) -> Result<(), BusError> {
        // The plan also weighs the selected dead letters' orders' other dead letters (a newer
        // one replayed makes an older one obsolete): those are looked for too.
        let orders: BTreeSet<&Bytes> = entries
            .iter()
            .filter(|entry| !entry.handled && selected(entry) && !entry.record.key.is_empty())
            .map(|entry| &entry.record.key)
            .collect();
        let relevant = |entry: &DlqEntry| {
            !entry.handled && (selected(entry) || orders.contains(&entry.record.key))
        };
        let mut since = Some(SystemTime::now());
        let mut any = false;
        for entry in entries.iter().filter(|entry| relevant(entry)) {
            any = true;
            let failed_at = entry
                .record
                .headers
                .get_str(super::headers::DLQ_FAILED_AT)
                .and_then(|text| humantime::parse_rfc3339_weak(text).ok());
            since = match (since, failed_at) {
                (Some(since), Some(failed_at)) => Some(since.min(failed_at)),
                _ => None,
            };
        }
        if !any {
            return Ok(());
        }
        let since = since.and_then(|since| since.checked_sub(CLOCK_SLACK));
        let found = match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.published_replays(since).await?,
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => nats.published_replays(since).await?,
        };
        // The event id must match too (both absent counts): a DLQ topic deleted and made
        // again reuses offsets. Whatever is found is marked, looked for or not: a publish
        // that happened is never wrong to know of.
        let published: Vec<Position> = entries
            .iter()
            .filter(|entry| {
                !entry.handled
                    && found.get(&entry.record.position).is_some_and(|event| {
                        entry.record.headers.get_str(super::headers::EVENT_ID) == event.as_deref()
                    })
            })
            .map(|entry| entry.record.position)
            .collect();
        if published.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            count = published.len(),
            ?published,
            "an earlier replay published these dead letters but was stopped before it \
             recorded them: they are not published again"
        );
        if self.access == Access::Replay {
            self.pass_over(&published).await?;
        }
        for entry in entries.iter_mut() {
            if published.contains(&entry.record.position) {
                entry.handled = true;
            }
        }
        Ok(())
    }

    /// The name replays of this DLQ carry in `replayed-from`: the DLQ topic, or subject.
    fn dlq_name(&self) -> &str {
        match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.topic(),
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => nats.subject(),
        }
    }

    /// Publishes `replayed` again to the webhook topic and marks it and the older dead letters
    /// it `supersedes` handled, durably, before returning where the broker stored it: the
    /// publish first, then the state, so a crash never loses one. The record names its dead
    /// letter (`replayed-from`): after a crash between the two, the next run's read finds the
    /// publish and stores it instead of publishing it again (on NATS the server's duplicate
    /// window would also drop a repeat: the message id comes from the DLQ position).
    pub async fn replay(
        &mut self,
        replayed: &StoredRecord,
        supersedes: &[Position],
    ) -> Result<Position, BusError> {
        let (ledgers, stores) = self.stores_with(replayed.position, supersedes)?;
        let record = replayed.to_replay(self.dlq_name());
        let at = match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.replay(record, stores).await?,
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => {
                let (committed, done) = one_partition(stores);
                nats.replay(record, replayed.position, committed, &done)
                    .await?
            }
        };
        self.ledgers = ledgers;
        Ok(at)
    }

    /// Marks `positions` handled without publishing anything (older versions of an order a
    /// replay already moved past), durably, before returning.
    pub async fn pass_over(&mut self, positions: &[Position]) -> Result<(), BusError> {
        let Some((first, rest)) = positions.split_first() else {
            return Ok(());
        };
        let stores = self.stores_with(*first, rest)?;
        match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.commit(stores.1).await?,
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => {
                let (committed, done) = one_partition(stores.1);
                nats.store(committed, &done).await?;
            }
        }
        self.ledgers = stores.0;
        Ok(())
    }

    /// The ledgers with `first` and `rest` handled, and what to store for the partitions
    /// they touch (`first`'s last): kept only once stored.
    fn stores_with(
        &self,
        first: Position,
        rest: &[Position],
    ) -> Result<(BTreeMap<u32, Ledger>, Vec<Store>), BusError> {
        if self.access != Access::Replay {
            return Err(BusError::Setup("the DLQ reader was opened to list".into()));
        }
        let mut ledgers = self.ledgers.clone();
        let mut touched: Vec<u32> = Vec::new();
        for position in rest.iter().chain([&first]) {
            // A partition not read has no state here: storing one would rewind it.
            ledgers
                .get_mut(&position.partition)
                .ok_or_else(|| {
                    BusError::Setup(
                        format!("DLQ partition {} was not read", position.partition).into(),
                    )
                })?
                .handle(position.offset);
            touched.retain(|&partition| partition != position.partition);
            touched.push(position.partition);
        }
        let stores = touched
            .into_iter()
            .filter_map(|partition| {
                let (committed, done) = ledgers.get(&partition)?.to_store();
                Some((partition, committed, done))
            })
            .collect();
        Ok((ledgers, stores))
    }

    /// Each partition with its first and end (one past the last) offset.
    async fn partitions(&self) -> Result<Vec<(u32, u64, u64)>, BusError> {
        match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.partitions().await,
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => nats.partitions().await,
        }
    }

    /// The group's stored state of `partition`. On NATS a state written for a stream created
    /// at another time is refused, never reset: starting over would replay every dead letter
    /// again.
    // NATS has one partition: without Kafka, `partition` goes unused.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    async fn load(&self, partition: u32) -> Result<Ledger, BusError> {
        let (committed, done) = match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.load(partition).await?,
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => nats.load().await?,
        };
        // Kafka needs no such check: a committed offset beyond the end is tansu's high
        // watermark trailing (Kafka removes a deleted topic's offsets with it), and the read
        // starts at the partition's start while nothing is ever stored below the committed.
        Ok(Ledger::stored(committed, done))
    }

    /// The records of `partition` from `from` up to `end`, and the offset (from `vouch_from`)
    /// below which every record was read.
    #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
    async fn read_partition(
        &self,
        partition: u32,
        from: u64,
        end: u64,
        vouch_from: u64,
    ) -> Result<(Vec<StoredRecord>, u64), BusError> {
        match &self.backend {
            #[cfg(feature = "kafka")]
            Backend::Kafka(kafka) => kafka.read(partition, from, end, vouch_from).await,
            #[cfg(feature = "nats")]
            Backend::Nats(nats) => nats.read(from, end).await,
        }
    }
}

/// NATS's one partition's store.
#[cfg(feature = "nats")]
fn one_partition(stores: Vec<Store>) -> (u64, Vec<u64>) {
    stores
        .into_iter()
        .next()
        .map(|(_, committed, done)| (committed, done))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::bus::Headers;

    fn read(ledger: &mut Ledger, offsets: &[u64], end: u64) {
        for &offset in offsets {
            ledger.read(offset);
        }
        ledger.read_to(end);
    }

    #[test]
    fn the_stored_offset_stops_at_the_first_dead_letter_not_handled() {
        let mut ledger = Ledger::default();
        read(&mut ledger, &[0, 1, 2, 3], 4);
        ledger.handle(0);
        assert_eq!(ledger.to_store(), (1, vec![]));
        ledger.handle(2);
        assert_eq!(
            ledger.to_store(),
            (1, vec![2]),
            "2 is remembered beyond the gap"
        );
        ledger.handle(1);
        ledger.handle(3);
        assert_eq!(
            ledger.to_store(),
            (4, vec![]),
            "all handled: the end read to"
        );
    }

    #[test]
    fn a_stored_state_is_read_back_as_handled() {
        let mut ledger = Ledger::stored(5, [7, 3]);
        assert!(ledger.is_handled(4) && ledger.is_handled(7));
        assert!(!ledger.is_handled(5) && !ledger.is_handled(6));
        read(&mut ledger, &[5, 6, 7], 8);
        ledger.handle(6);
        assert_eq!(ledger.to_store(), (5, vec![6, 7]));
        ledger.handle(5);
        assert_eq!(ledger.to_store(), (8, vec![]));
    }

    #[test]
    fn offsets_the_read_vouched_for_hold_nothing_back() {
        // NATS: sequences 1 and 2 belong to other subjects of the stream.
        let mut ledger = Ledger::default();
        read(&mut ledger, &[0, 3], 4);
        ledger.handle(0);
        assert_eq!(ledger.to_store(), (3, vec![]));
    }

    #[test]
    fn the_stored_offset_never_passes_a_record_the_read_did_not_return() {
        // The read stopped after offset 1 of a partition ending at 4.
        let mut ledger = Ledger::default();
        read(&mut ledger, &[0, 1], 2);
        ledger.handle(0);
        ledger.handle(1);
        assert_eq!(ledger.to_store(), (2, vec![]));
        // The broker skipped offsets 1 and 2: the read vouches for offset 0 only.
        let mut ledger = Ledger::default();
        read(&mut ledger, &[0, 3], 1);
        ledger.handle(0);
        ledger.handle(3);
        assert_eq!(ledger.to_store(), (1, vec![3]));
    }

    #[test]
    fn nothing_read_stores_what_was_stored() {
        let ledger = Ledger::stored(9, [11]);
        assert_eq!(ledger.to_store(), (9, vec![11]));
    }

    #[test]
    fn a_replay_drops_the_dlq_headers_keeps_the_rest_and_names_its_dead_letter() {
        let record = StoredRecord {
            position: Position {
                partition: 0,
                offset: 1,
            },
            key: Bytes::from_static(b"O-1"),
            headers: Headers::new()
                .with("fluent-event-id", "e-1")
                .with("dlq-error", "boom")
                .with("traceparent", "00-ab-cd-01")
                .with("dlq-error-class", "permanent")
                .with("replayed-from", "t.dlq:0:0"),
            payload: Bytes::from_static(b"{}"),
        };
        let replay = record.to_replay("t.dlq");
        let names: Vec<&str> = replay.headers.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["fluent-event-id", "traceparent", "replayed-from"]);
        assert_eq!(
            replay.headers.get_str("replayed-from"),
            Some("t.dlq:0:1"),
            "names this dead letter, not the one an earlier replay came from"
        );
        assert_eq!((replay.key, replay.payload), (record.key, record.payload));
    }
}
