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
//! sync marker make that harmless (docs/architecture.md: "Effectively once").

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a replay of one webhook would repeat.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ids<'a> {
    /// Its `webhook-id`, when the signature covered it.
    pub(crate) delivery: Option<&'a str>,
    /// Its Fluent event id.
    pub(crate) event: Option<&'a str>,
}

/// Recently accepted ids: `webhook-id`s and event ids, each kind in a window of its own.
pub(crate) struct RecentIds {
    capacity: usize,
    max_age: Duration,
    windows: Mutex<[Window; 2]>,
}

/// One kind of id, oldest first.
#[derive(Default)]
struct Window {
    /// When each id was last accepted.
    seen: HashMap<Arc<str>, Instant>,
    /// Ids in acceptance order; an id accepted twice appears twice, and only its newest entry
    /// (the one matching `seen`) removes it.
    order: VecDeque<(Arc<str>, Instant)>,
}

impl RecentIds {
    /// Remembers at most `capacity` ids of each kind (0: none), each for `max_age`.
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            capacity,
            max_age,
            windows: Mutex::default(),
        }
    }

    /// True when the delivery or the event of `ids` was accepted within the window.
    pub(crate) fn contains(&self, ids: Ids<'_>, now: Instant) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let windows = self.lock();
        let recent = |window: &Window, id: Option<&str>| {
            id.and_then(|id| window.seen.get(id))
                .is_some_and(|at| now.saturating_duration_since(*at) <= self.max_age)
        };
        recent(&windows[0], ids.delivery) || recent(&windows[1], ids.event)
    }

    /// Remembers `ids` as accepted at `now`, forgetting the oldest beyond the bounds.
    pub(crate) fn insert(&self, ids: Ids<'_>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let mut windows = self.lock();
        for (window, id) in windows.iter_mut().zip([ids.delivery, ids.event]) {
            if let Some(id) = id {
                window.insert(id, now, self.capacity, self.max_age);
            }
        }
    }

    /// How many ids of each kind are remembered.
    #[cfg(test)]
    fn len(&self) -> [usize; 2] {
        let windows = self.lock();
        [windows[0].seen.len(), windows[1].seen.len()]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Window; 2]> {
        // The windows hold no invariant a panic elsewhere could break half-way.
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Window {
    fn insert(&mut self, id: &str, now: Instant, capacity: usize, max_age: Duration) {
        let id: Arc<str> = id.into();
        self.seen.insert(Arc::clone(&id), now);
        self.order.push_back((id, now));
        while let Some((id, at)) = self.order.front() {
            let expired = now.saturating_duration_since(*at) > max_age;
            if !expired && self.order.len() <= capacity {
                break;
            }
            if self.seen.get(id) == Some(at) {
                self.seen.remove(id);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(300);

    fn event(id: &str) -> Ids<'_> {
        Ids {
            delivery: None,
            event: Some(id),
        }
    }

    #[test]
    fn an_accepted_id_is_a_replay_until_it_ages_out() {
        let ids = RecentIds::new(10, AGE);
        let start = Instant::now();
        let both = Ids {
            delivery: Some("a"),
            event: Some("event-1"),
        };
        assert!(!ids.contains(both, start));
        ids.insert(both, start);
        let delivery_a = Ids {
            delivery: Some("a"),
            event: None,
        };
        assert!(ids.contains(delivery_a, start + AGE));
        let retried = Ids {
            delivery: Some("other"),
            event: Some("event-1"),
        };
        assert!(ids.contains(retried, start + AGE));
        assert!(!ids.contains(delivery_a, start + AGE + Duration::from_secs(1)));
        // The kinds do not mix: an event id equal to a remembered delivery id is new.
        assert!(!ids.contains(event("a"), start));
    }

    #[test]
    fn the_window_keeps_only_the_newest_ids_up_to_its_capacity() {
        let ids = RecentIds::new(3, AGE);
        let now = Instant::now();
        for id in ["a", "b", "c", "d"] {
            ids.insert(event(id), now);
        }
        assert_eq!(ids.len(), [0, 3]);
        assert!(!ids.contains(event("a"), now));
        assert!(ids.contains(event("b"), now) && ids.contains(event("d"), now));
    }

    #[test]
    fn an_id_accepted_again_is_kept_from_its_newest_acceptance() {
        let ids = RecentIds::new(2, AGE);
        let start = Instant::now();
        ids.insert(event("a"), start);
        ids.insert(event("b"), start);
        // "a" again: its first entry leaves the window, but "a" itself stays.
        ids.insert(event("a"), start + Duration::from_secs(1));
        assert!(ids.contains(event("a"), start + Duration::from_secs(1)));
        assert!(ids.contains(event("b"), start + Duration::from_secs(1)));
        ids.insert(event("c"), start + Duration::from_secs(2));
        assert!(!ids.contains(event("b"), start + Duration::from_secs(2)));
        assert!(ids.contains(event("a"), start + Duration::from_secs(2)));
    }

    #[test]
    fn expired_ids_are_forgotten_even_below_the_capacity() {
        let ids = RecentIds::new(1000, AGE);
        let start = Instant::now();
        for i in 0..100 {
            ids.insert(event(&format!("old-{i}")), start);
        }
        ids.insert(event("new"), start + AGE + Duration::from_secs(1));
        assert_eq!(ids.len(), [0, 1]);
    }

    #[test]
    fn a_zero_capacity_remembers_nothing() {
        let ids = RecentIds::new(0, AGE);
        let now = Instant::now();
        ids.insert(event("a"), now);
        assert!(!ids.contains(event("a"), now));
    }
}
