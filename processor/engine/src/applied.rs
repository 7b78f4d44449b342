//! Event ids recently applied, per key, with where each was applied, in a bounded window:
//! enough to recognise Fluent's retries of a webhook (seconds to minutes apart) without
//! growing with the backlog.
//!
//! A Fluent retry is a new record (a later position) repeating an event id; a redelivery (after
//! a crash, a rebalance, an offset reset) is the same record again, at the same position. Only
//! the first is a repeat: a redelivered suffix of an order's records must run again in full and
//! in order, or skipping its newer records while running its older ones would step the order
//! back.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use common::bus::Position;

/// The window: the position each (key, id) was applied at, and the insertion order for
/// eviction.
#[derive(Default)]
pub(super) struct AppliedIds {
    applied: HashMap<(Bytes, String), Position>,
    order: VecDeque<(Bytes, String)>,
}

impl AppliedIds {
    const CAPACITY: usize = 65_536;

    /// Whether the record at `position` repeats an event of `key` applied from another record.
    pub(super) fn repeats(&self, key: &Bytes, id: &str, position: Position) -> bool {
        self.applied
            .get(&(key.clone(), id.to_owned()))
            .is_some_and(|applied| *applied != position)
    }

    /// Notes that the event `id` of `key` was applied from the record at `position`; the
    /// first position stays (a later record with the id can only be a repeat of it).
    pub(super) fn insert(&mut self, key: Bytes, id: String, position: Position) {
        let entry = (key, id);
        if let std::collections::hash_map::Entry::Vacant(vacant) = self.applied.entry(entry.clone())
        {
            vacant.insert(position);
            self.order.push_back(entry);
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.applied.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_repeats_and_a_redelivery_does_not() {
        let mut window = AppliedIds::default();
        let key = Bytes::from_static(b"order-1");
        let at = |offset| Position {
            partition: 0,
            offset,
        };
        window.insert(key.clone(), "paid".into(), at(7));
        assert!(
            window.repeats(&key, "paid", at(9)),
            "Fluent's retry at a new offset"
        );
        assert!(
            !window.repeats(&key, "paid", at(7)),
            "the same record redelivered"
        );
        assert!(!window.repeats(&key, "shipped", at(9)));
        assert!(!window.repeats(&Bytes::from_static(b"order-2"), "paid", at(9)));
        // Noting the id again elsewhere does not move where it was applied.
        window.insert(key.clone(), "paid".into(), at(9));
        assert!(
            window.repeats(&key, "paid", at(9)),
            "the retry, delivered again"
        );
    }
}
