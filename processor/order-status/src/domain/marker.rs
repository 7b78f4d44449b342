//! The sync marker: what an order's commercetools custom field remembers of the events applied
//! to it, so that neither a redelivery nor a Fluent retry days later moves the order back.
//!
//! It holds the bus position of the newest event applied (a redelivery replays positions at or
//! before it) and the ids of the order's most recent events (a Fluent retry is a new record at
//! a new position, but repeats its event id). Both are written in the same `updateOrder` as the
//! states, so they can never disagree with them. The text is JSON,
//! `{"position":"3:17","events":["e1","e2"]}`; a bare `3:17` (what earlier versions wrote) still
//! reads as a position without ids.

use std::collections::VecDeque;

use common::bus::Position;
use serde::{Deserialize, Serialize};

/// Event ids remembered per order: enough for an order's events over Fluent's longest retry
/// schedule (a day) while keeping the field around 1.3 KB with UUID ids.
pub const REMEMBERED_EVENTS: usize = 32;

/// What the marker says was applied to one order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncMarker {
    /// The newest applied event's position.
    pub position: Option<Position>,
    /// The ids of the most recently applied events, oldest first.
    pub events: VecDeque<String>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    position: String,
    #[serde(default)]
    events: Vec<String>,
}

impl SyncMarker {
    /// Reads a stored marker; text that is neither shape reads as an empty marker (nothing
    /// known applied, so nothing is skipped: at worst a redelivery is applied again).
    pub fn parse(text: Option<&str>) -> Self {
        let Some(text) = text.map(str::trim) else {
            return Self::default();
        };
        if let Ok(wire) = serde_json::from_str::<Wire>(text) {
            return Self {
                position: parse_position(&wire.position),
                events: wire.events.into(),
            };
        }
        Self {
            position: parse_position(text),
            events: VecDeque::new(),
        }
    }

    /// Whether the event at `position` with `event_id` is already applied: at or before the
    /// stored position of the same partition, or one of the remembered ids.
    pub fn covers(&self, position: Position, event_id: Option<&str>) -> bool {
        let replayed = self
            .position
            .is_some_and(|stored| stored.partition == position.partition && position <= stored);
        replayed || event_id.is_some_and(|id| self.events.iter().any(|known| known == id))
    }

    /// The marker after applying events up to `position` with `ids` (in order): the position
    /// moves there, and the ids join the remembered ones, the oldest falling off.
    #[must_use]
    pub fn advanced<'a>(&self, position: Position, ids: impl IntoIterator<Item = &'a str>) -> Self {
        let mut events = self.events.clone();
        for id in ids {
            if !events.iter().any(|known| known == id) {
                events.push_back(id.to_owned());
            }
        }
        while events.len() > REMEMBERED_EVENTS {
            events.pop_front();
        }
        Self {
            position: Some(position),
            events,
        }
    }

    /// The text to store.
    pub fn to_text(&self) -> String {
        let wire = Wire {
            position: self
                .position
                .map(|p| format!("{}:{}", p.partition, p.offset))
                .unwrap_or_default(),
            events: self.events.iter().cloned().collect(),
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

fn parse_position(text: &str) -> Option<Position> {
    let (partition, offset) = text.split_once(':')?;
    Some(Position {
        partition: partition.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: u32, offset: u64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn positions_at_or_before_the_stored_one_of_its_partition_are_applied() {
        let marker = SyncMarker::parse(Some("3:17"));
        assert!(marker.covers(at(3, 17), None));
        assert!(marker.covers(at(3, 2), None));
        assert!(!marker.covers(at(3, 18), None));
        assert!(
            !marker.covers(at(2, 5), None),
            "another partition says nothing"
        );
        assert!(!SyncMarker::parse(Some("junk")).covers(at(3, 5), None));
        assert!(!SyncMarker::parse(None).covers(at(0, 0), None));
    }

    #[test]
    fn a_remembered_event_id_is_applied_wherever_it_arrives_again() {
        let marker = SyncMarker::default().advanced(at(1, 40), ["paid", "shipped"]);
        assert!(
            marker.covers(at(1, 90), Some("paid")),
            "a retry at a later offset"
        );
        assert!(!marker.covers(at(1, 90), Some("cancelled")));
        let text = marker.to_text();
        assert_eq!(text, r#"{"position":"1:40","events":["paid","shipped"]}"#);
        assert_eq!(SyncMarker::parse(Some(&text)), marker);
    }

    #[test]
    fn only_the_most_recent_ids_are_kept() {
        let ids: Vec<String> = (0..REMEMBERED_EVENTS + 5)
            .map(|n| format!("e{n}"))
            .collect();
        let marker = SyncMarker::default()
            .advanced(at(0, 1), ids.iter().map(String::as_str))
            .advanced(at(0, 2), ["e10"]);
        assert_eq!(marker.events.len(), REMEMBERED_EVENTS);
        assert_eq!(marker.events.front().map(String::as_str), Some("e5"));
        assert!(!marker.covers(at(0, 9), Some("e4")));
        assert_eq!(marker.position, Some(at(0, 2)));
    }
}
