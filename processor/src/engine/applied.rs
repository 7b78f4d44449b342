//! Event ids recently applied, per key, in a bounded window: enough to recognise Fluent's
//! retries of a webhook (seconds to minutes apart) without growing with the backlog.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

/// The window: a set for lookups and the insertion order for eviction.
#[derive(Default)]
pub(super) struct AppliedIds {
    set: HashSet<(Bytes, String)>,
    order: VecDeque<(Bytes, String)>,
}

impl AppliedIds {
    const CAPACITY: usize = 65_536;

    pub(super) fn contains(&self, key: &Bytes, id: &str) -> bool {
        self.set.contains(&(key.clone(), id.to_owned()))
    }

    pub(super) fn insert(&mut self, key: Bytes, id: String) {
        if self.set.insert((key.clone(), id.clone())) {
            self.order.push_back((key, id));
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.set.remove(&oldest);
            }
        }
    }
}
