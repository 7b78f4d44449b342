//! Which dead letters a replay publishes again, and which it only passes over: the rule that
//! keeps a replay from moving an order back, pure and unit-tested.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use common::bus::dlq::DlqEntry;
use common::bus::{Position, headers};

use super::Selection;

/// One step of a replay: the entry at `replay` published again (none: only passing over),
/// and the older pending entries of its order that it makes obsolete.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Step {
    pub(super) replay: Option<usize>,
    pub(super) superseded: Vec<usize>,
}

/// The steps for `entries` (every dead letter, in DLQ order, handled or not). With
/// `all_versions`: every selected pending entry, oldest first (by [`age`]), except those older
/// than a dead letter of their order already replayed (passed over). Otherwise, per
/// order, its newest selected pending entry, which supersedes the order's older pending
/// entries, selected or not (they would move the order back after it); unless the group
/// already replayed a newer one of the order: then those pending entries older than it are
/// only passed over. Entries without an order ref are each replayed: they are not one order.
pub(super) fn plan(entries: &[DlqEntry], selection: &Selection, all_versions: bool) -> Vec<Step> {
    let mut selected: Vec<usize> = (0..entries.len())
        .filter(|&i| !entries[i].handled && selection.matches(&entries[i]))
        .collect();
    // The newest handled (replayed) dead letter of an order: anything older of it would move
    // it back.
    let newest_handled = |key: &Bytes| {
        (0..entries.len())
            .filter(|&i| entries[i].handled && !key.is_empty() && entries[i].record.key == *key)
            .map(|i| age(&entries[i]))
            .max()
    };
    if all_versions {
        selected.sort_by_key(|&i| age(&entries[i]));
        return selected
            .into_iter()
            .map(|i| {
                let behind = newest_handled(&entries[i].record.key)
                    .is_some_and(|handled| handled > age(&entries[i]));
                match behind {
                    true => Step {
                        replay: None,
                        superseded: vec![i],
                    },
                    false => Step {
                        replay: Some(i),
                        superseded: Vec::new(),
                    },
                }
            })
            .collect();
    }
    let mut newest: HashMap<&Bytes, usize> = HashMap::new();
    let mut steps = Vec::new();
    for index in selected {
        let key = &entries[index].record.key;
        if key.is_empty() {
            steps.push(Step {
                replay: Some(index),
                superseded: Vec::new(),
            });
            continue;
        }
        let current = newest.entry(key).or_insert(index);
        if age(&entries[index]) >= age(&entries[*current]) {
            *current = index;
        }
    }
    for (key, index) in newest {
        let of_key = || (0..entries.len()).filter(|&i| entries[i].record.key == *key);
        let replayed_newer = newest_handled(key).filter(|handled| *handled > age(&entries[index]));
        let (replay, bound) = match replayed_newer {
            Some(handled) => (None, handled),
            None => (Some(index), age(&entries[index])),
        };
        let superseded = of_key()
            .filter(|&i| !entries[i].handled && Some(i) != replay && age(&entries[i]) <= bound)
            .collect();
        steps.push(Step { replay, superseded });
    }
    steps.sort_by_key(|step| step.replay.or(step.superseded.first().copied()));
    steps
}

/// What orders an order's dead letters: when the gateway received the event, then the DLQ
/// position (a dead letter without `received-at` counts as older than any with one).
fn age(entry: &DlqEntry) -> (Option<SystemTime>, Position) {
    let received = entry
        .record
        .headers
        .get_str(headers::RECEIVED_AT)
        .and_then(|at| humantime::parse_rfc3339_weak(at).ok());
    (received, entry.record.position)
}

#[cfg(test)]
mod tests {
    use common::bus::FailureClass;
    use common::bus::Headers;
    use common::bus::StoredRecord;

    use super::*;

    fn entry(offset: u64, key: &str, class: &str) -> DlqEntry {
        DlqEntry {
            record: StoredRecord {
                position: Position {
                    partition: 0,
                    offset,
                },
                key: Bytes::copy_from_slice(key.as_bytes()),
                headers: Headers::new().with(headers::DLQ_ERROR_CLASS, class.to_owned()),
                payload: Bytes::new(),
            },
            handled: false,
        }
    }

    #[test]
    fn the_newest_dead_letter_of_each_order_is_replayed_and_supersedes_the_older() {
        let pending = [
            entry(0, "A", "permanent"),
            entry(1, "B", "permanent"),
            entry(2, "A", "transient"),
            entry(3, "A", "permanent"),
        ];
        let steps = plan(&pending, &Selection::default(), false);
        assert_eq!(
            steps,
            [
                Step {
                    replay: Some(1),
                    superseded: vec![]
                },
                Step {
                    replay: Some(3),
                    superseded: vec![0, 2]
                },
            ]
        );
        let every = plan(&pending, &Selection::default(), true);
        assert_eq!(every.len(), 4);
        assert!(every.iter().all(|step| step.superseded.is_empty()));
    }

    #[test]
    fn a_selection_picks_the_newest_selected_and_leaves_the_unselected_orders() {
        let pending = [
            entry(0, "A", "permanent"),
            entry(1, "B", "permanent"),
            entry(2, "A", "transient"),
        ];
        let permanent = Selection {
            class: Some(FailureClass::Permanent),
            ..Selection::default()
        };
        // A's newest permanent one is at 0: the transient one after it stays.
        let steps = plan(&pending, &permanent, false);
        assert_eq!(
            steps.iter().map(|s| s.replay).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        assert!(steps.iter().all(|step| step.superseded.is_empty()));
        let only_b = Selection {
            order_ref: Some("B".into()),
            ..Selection::default()
        };
        assert_eq!(
            plan(&pending, &only_b, false),
            [Step {
                replay: Some(1),
                superseded: vec![]
            }]
        );
    }

    #[test]
    fn newest_is_by_when_the_event_arrived_and_dead_letters_without_an_order_are_each_their_own() {
        let received = |mut entry: DlqEntry, at: &str| {
            entry
                .record
                .headers
                .insert(headers::RECEIVED_AT, at.to_owned());
            entry
        };
        let pending = [
            received(entry(0, "A", "permanent"), "2026-12-01T10:00:00.000Z"),
            // A's older event, replayed earlier and dead-lettered again after the newer one.
            received(entry(1, "A", "permanent"), "2026-12-01T09:00:00.000Z"),
            entry(2, "", "permanent"),
            entry(3, "", "permanent"),
        ];
        assert_eq!(
            plan(&pending, &Selection::default(), false),
            [
                Step {
                    replay: Some(0),
                    superseded: vec![1]
                },
                Step {
                    replay: Some(2),
                    superseded: vec![]
                },
                Step {
                    replay: Some(3),
                    superseded: vec![]
                },
            ]
        );
    }

    #[test]
    fn an_older_version_dead_lettered_again_after_a_newer_replay_is_only_passed_over() {
        let received = |mut entry: DlqEntry, at: &str, handled: bool| {
            entry
                .record
                .headers
                .insert(headers::RECEIVED_AT, at.to_owned());
            entry.handled = handled;
            entry
        };
        let entries = [
            // A's newer event, replayed by an earlier run.
            received(entry(0, "A", "permanent"), "2026-12-01T10:00:00.000Z", true),
            // A's older event, replayed with --all-versions and dead-lettered again.
            received(
                entry(1, "A", "permanent"),
                "2026-12-01T09:00:00.000Z",
                false,
            ),
        ];
        assert_eq!(
            plan(&entries, &Selection::default(), false),
            [Step {
                replay: None,
                superseded: vec![1]
            }]
        );
        // --all-versions passes it over too.
        assert_eq!(
            plan(&entries, &Selection::default(), true),
            [Step {
                replay: None,
                superseded: vec![1]
            }]
        );
        // --all-versions replays oldest first.
        let later = [
            received(
                entry(0, "A", "permanent"),
                "2026-12-01T10:00:00.000Z",
                false,
            ),
            received(
                entry(1, "A", "permanent"),
                "2026-12-01T09:00:00.000Z",
                false,
            ),
        ];
        let order: Vec<_> = plan(&later, &Selection::default(), true)
            .iter()
            .map(|step| step.replay)
            .collect();
        assert_eq!(order, [Some(1), Some(0)]);
    }
}
