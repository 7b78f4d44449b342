//! The window of recently accepted webhooks, so a replay is answered without publishing it
//! again.
//!
//! A webhook is remembered by its `webhook-id` (HMAC mode: the Standard Webhooks idempotency
//! key, the same across the sender's retries) and by its Fluent event id, and only once the
//! bus acknowledged it: a replay of something never stored must be stored. The window is
//! bounded twice, by a count and by an age (twice the HMAC tolerance: a timestamp may be up to
//! the tolerance ahead, and later replays are refused by their timestamp anyway), so memory
//! stays flat whatever the rate; at high rates
//! the count, not the age, sets how far back it reaches. Checking and remembering are two
//! steps around the publish: two copies arriving while the first is not yet acknowledged are
//! both published. It is per instance: a replay that
//! reaches another instance is published again, and the processor's applied-event window and
//! sync marker make that harmless (README: "Effectively once").

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Recently accepted ids, oldest first.
pub(crate) struct RecentIds {
    capacity: usize,
    max_age: Duration,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// When each id was last accepted.
    seen: HashMap<Box<str>, Instant>,
    /// Ids in acceptance order; an id accepted twice appears twice, and only its newest entry
    /// (the one matching `seen`) removes it.
    order: VecDeque<(Box<str>, Instant)>,
}

impl RecentIds {
    /// Remembers at most `capacity` ids (0: none), each for `max_age`.
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            capacity,
            max_age,
            window: Mutex::default(),
        }
    }

    /// True when any of `ids` was accepted within the window.
    pub(crate) fn contains_any<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let window = self.lock();
        ids.into_iter().any(|id| {
            window
                .seen
                .get(id)
                .is_some_and(|at| now.saturating_duration_since(*at) <= self.max_age)
        })
    }

    /// Remembers `ids` as accepted at `now`, forgetting the oldest beyond the bounds.
    pub(crate) fn insert<'a>(&self, ids: impl IntoIterator<Item = &'a str>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut window = self.lock();
        for id in ids {
            let id: Box<str> = id.into();
            window.seen.insert(id.clone(), now);
            window.order.push_back((id, now));
        }
        while let Some((id, at)) = window.order.front().cloned() {
            let expired = now.saturating_duration_since(at) > self.max_age;
            if !expired && window.order.len() <= self.capacity {
                break;
            }
            window.order.pop_front();
            if window.seen.get(&id) == Some(&at) {
                window.seen.remove(&id);
            }
        }
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().seen.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The window holds no invariant a panic elsewhere could break half-way.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(300);

    #[test]
    fn an_accepted_id_is_a_replay_until_it_ages_out() {
        let ids = RecentIds::new(10, AGE);
        let start = Instant::now();
        assert!(!ids.contains_any(["a"], start));
        ids.insert(["a", "event-1"], start);
        assert!(ids.contains_any(["a"], start + AGE));
        assert!(ids.contains_any(["other", "event-1"], start + AGE));
        assert!(!ids.contains_any(["a"], start + AGE + Duration::from_secs(1)));
    }

    #[test]
    fn the_window_keeps_only_the_newest_ids_up_to_its_capacity() {
        let ids = RecentIds::new(3, AGE);
        let now = Instant::now();
        for id in ["a", "b", "c", "d"] {
            ids.insert([id], now);
        }
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains_any(["a"], now));
        assert!(ids.contains_any(["b"], now) && ids.contains_any(["d"], now));
    }

    #[test]
    fn an_id_accepted_again_is_kept_from_its_newest_acceptance() {
        let ids = RecentIds::new(2, AGE);
        let start = Instant::now();
        ids.insert(["a"], start);
        ids.insert(["b"], start);
        // "a" again: its first entry leaves the window, but "a" itself stays.
        ids.insert(["a"], start + Duration::from_secs(1));
        assert!(ids.contains_any(["a"], start + Duration::from_secs(1)));
        assert!(ids.contains_any(["b"], start + Duration::from_secs(1)));
        ids.insert(["c"], start + Duration::from_secs(2));
        assert!(!ids.contains_any(["b"], start + Duration::from_secs(2)));
        assert!(ids.contains_any(["a"], start + Duration::from_secs(2)));
    }

    #[test]
    fn expired_ids_are_forgotten_even_below_the_capacity() {
        let ids = RecentIds::new(1000, AGE);
        let start = Instant::now();
        for i in 0..100 {
            ids.insert([format!("old-{i}").as_str()], start);
        }
        ids.insert(["new"], start + AGE + Duration::from_secs(1));
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let ids = RecentIds::new(0, AGE);
        let now = Instant::now();
        ids.insert(["a"], now);
        assert!(!ids.contains_any(["a"], now));
    }
}
