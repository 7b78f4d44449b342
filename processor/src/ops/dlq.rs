//! `processor dlq list` and `processor dlq replay`.
//!
//! A replay re-publishes dead letters to the webhook topic, without their `dlq-*` headers,
//! and remembers each as handled in the replay group (`<KAFKA_GROUP_ID>-dlq-replay`, or
//! `<NATS_CONSUMER_PREFIX>-dlq-replay`) once the broker acknowledged the re-publish
//! ([`DlqReader::replay`]). A replay killed at any point loses none; killed between the two,
//! it publishes that one again on its next run, which NATS drops (the message id comes from
//! the DLQ sequence) and the processor on Kafka takes for a Fluent retry. By default only the newest dead letter
//! of each order is replayed and its older ones are marked handled with it: replaying an older
//! status after a newer one would move the order back. "Newest" is by when the gateway
//! received the event (`received-at`, which a dead letter and its replays keep), so an older
//! status that failed again after a replay does not overtake a newer one; dead letters
//! without an order ref are each their own.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use common::bus::dlq::{Access, DlqEntry, DlqReader};
use common::bus::{FailureClass, Position, headers};
use common::config::{BusConfig, BusKind};
use serde_json::{Map, Value, json};

use super::OpsError;

/// Which dead letters a command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Only this order's.
    #[arg(long)]
    pub order_ref: Option<String>,
    /// Only those that failed this way.
    #[arg(long, value_parser = parse_class)]
    pub class: Option<FailureClass>,
    /// Only those dead-lettered at or after this time: RFC 3339 (`2026-12-01T09:00:00Z`) or
    /// a duration ago (`2h`, `30m`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<SystemTime>,
}

impl Selection {
    /// Whether `entry` is selected.
    pub fn matches(&self, entry: &DlqEntry) -> bool {
        let record = &entry.record;
        let header = |name| record.headers.get_str(name);
        self.order_ref
            .as_ref()
            .is_none_or(|order_ref| record.key == order_ref.as_bytes())
            && self
                .class
                .is_none_or(|class| header(headers::DLQ_ERROR_CLASS) == Some(class.as_str()))
            && self.since.is_none_or(|since| {
                header(headers::DLQ_FAILED_AT)
                    .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                    .is_some_and(|at| at >= since)
            })
    }
}

fn parse_class(text: &str) -> Result<FailureClass, String> {
    match text {
        "permanent" => Ok(FailureClass::Permanent),
        "transient" => Ok(FailureClass::Transient),
        other => Err(format!("`{other}` is neither `permanent` nor `transient`")),
    }
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let ago: Duration = humantime::parse_duration(text)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a duration such as `2h`"))?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("`{text}` reaches before the epoch"))
}

/// The replay group of the configured bus.
pub fn replay_group(config: &BusConfig) -> String {
    match config.kind {
        BusKind::Nats => format!("{}-dlq-replay", config.nats.consumer_prefix),
        BusKind::Kafka | BusKind::Memory => format!("{}-dlq-replay", config.kafka.group_id),
    }
}

/// `dlq list`: the selected dead letters with their `dlq-*` headers, as a table or as JSON
/// lines, and whether the replay group has handled each.
pub async fn list(
    config: &BusConfig,
    selection: &Selection,
    json_lines: bool,
    out: &mut dyn Write,
) -> Result<usize, OpsError> {
    // Opened as the replay group to say what it handled; a list never stores anything.
    let mut reader = DlqReader::open(config, &replay_group(config), Access::List).await?;
    let entries: Vec<DlqEntry> = reader
        .read()
        .await?
        .into_iter()
        .filter(|entry| selection.matches(entry))
        .collect();
    if json_lines {
        for entry in &entries {
            writeln!(out, "{}", entry_json(entry))?;
        }
    } else {
        writeln!(out, "{}", entries_table(&entries))?;
        writeln!(out, "{} dead letter(s)", entries.len())?;
    }
    Ok(entries.len())
}

/// What a replay did (or, on a dry run, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Re-published (DLQ positions).
    pub replayed: Vec<Position>,
    /// Older dead letters of a replayed order, marked handled without a re-publish.
    pub superseded: Vec<Position>,
    /// Not handled before and not selected now: left for a later replay.
    pub left: usize,
}

/// `dlq replay`: re-publishes the selected dead letters the replay group has not handled (the
/// newest of each order unless `all_versions`), one at a time, each marked handled once the
/// broker acknowledged it.
pub async fn replay(
    config: &BusConfig,
    selection: &Selection,
    all_versions: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Replayed, OpsError> {
    // A dry run only reads: it neither fences a running replay nor creates the group's state.
    let access = if dry_run {
        Access::List
    } else {
        Access::Replay
    };
    let mut reader = DlqReader::open(config, &replay_group(config), access).await?;
    let entries: Vec<DlqEntry> = reader.read().await?;
    let plan = plan(&entries, selection, all_versions);
    let pending = entries.iter().filter(|entry| !entry.handled).count();
    let mut done = Replayed {
        left: pending
            - plan
                .iter()
                .map(|step| usize::from(step.replay.is_some()) + step.superseded.len())
                .sum::<usize>(),
        ..Replayed::default()
    };
    for step in &plan {
        let superseded: Vec<Position> = step
            .superseded
            .iter()
            .map(|&i| entries[i].record.position)
            .collect();
        let Some(index) = step.replay else {
            // An older version of an order a replay already moved past: passed over.
            if !dry_run {
                reader.pass_over(&superseded).await?;
            }
            for &i in &step.superseded {
                let position = entries[i].record.position;
                writeln!(
                    out,
                    "{} {}:{} order {}: a newer one was replayed before",
                    if dry_run {
                        "would pass over"
                    } else {
                        "passed over"
                    },
                    position.partition,
                    position.offset,
                    text(&entries[i].record.key),
                )?;
            }
            done.superseded.extend(superseded);
            continue;
        };
        let entry = &entries[index];
        let position = entry.record.position;
        let published = if dry_run {
            "(dry run)".to_owned()
        } else {
            let at = reader.replay(&entry.record, &superseded).await?;
            format!("as {}:{}", at.partition, at.offset)
        };
        // A line as each is done: a replay that fails half-way has said what it did.
        writeln!(
            out,
            "{} {}:{} order {} {} ({}) {published}{}",
            if dry_run { "would replay" } else { "replayed" },
            position.partition,
            position.offset,
            text(&entry.record.key),
            header(entry, headers::EVENT_NAME),
            header(entry, headers::DLQ_ERROR_CLASS),
            if superseded.is_empty() {
                String::new()
            } else {
                format!(", passing over {} older", superseded.len())
            },
        )?;
        out.flush()?;
        done.replayed.push(position);
        done.superseded.extend(superseded);
    }
    writeln!(
        out,
        "{} {} dead letter(s); {} older version(s) {}; {} left for a later replay",
        if dry_run { "would replay" } else { "replayed" },
        done.replayed.len(),
        done.superseded.len(),
        if dry_run {
            "would be passed over"
        } else {
            "passed over"
        },
        done.left,
    )?;
    Ok(done)
}

/// One step of a replay: the entry at `replay` published again (none: only passing over),
/// and the older pending entries of its order that it makes obsolete.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    replay: Option<usize>,
    superseded: Vec<usize>,
}

/// The steps for `entries` (every dead letter, in DLQ order, handled or not). With
/// `all_versions`: every selected pending entry, oldest first (by [`age`]). Otherwise, per
/// order, its newest selected pending entry, which supersedes the order's older pending
/// entries, selected or not (they would move the order back after it); unless the group
/// already replayed a newer one of the order: then those pending entries older than it are
/// only passed over. Entries without an order ref are each replayed: they are not one order.
fn plan(entries: &[DlqEntry], selection: &Selection, all_versions: bool) -> Vec<Step> {
    let mut selected: Vec<usize> = (0..entries.len())
        .filter(|&i| !entries[i].handled && selection.matches(&entries[i]))
        .collect();
    if all_versions {
        selected.sort_by_key(|&i| age(&entries[i]));
        return selected
            .into_iter()
            .map(|i| Step {
                replay: Some(i),
                superseded: Vec::new(),
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
        let replayed_newer = of_key()
            .filter(|&i| entries[i].handled)
            .map(|i| age(&entries[i]))
            .max()
            .filter(|handled| *handled > age(&entries[index]));
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn header(entry: &DlqEntry, name: &str) -> String {
    entry
        .record
        .headers
        .get(name)
        .map(|value| text(value))
        .unwrap_or_default()
}

fn table<const N: usize>(titles: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(titles.to_vec());
    table
}

fn entries_table(entries: &[DlqEntry]) -> Table {
    let mut table = table([
        "DLQ position",
        "order ref",
        "event",
        "class",
        "attempts",
        "failed at",
        "replayed",
        "error",
    ]);
    for entry in entries {
        let position = entry.record.position;
        let mut error = header(entry, headers::DLQ_ERROR);
        if error.chars().count() > 120 {
            error = error.chars().take(119).chain(['…']).collect();
        }
        table.add_row(vec![
            format!("{}:{}", position.partition, position.offset),
            text(&entry.record.key),
            header(entry, headers::EVENT_NAME),
            header(entry, headers::DLQ_ERROR_CLASS),
            header(entry, headers::DLQ_ATTEMPTS),
            header(entry, headers::DLQ_FAILED_AT),
            if entry.handled { "yes" } else { "no" }.to_owned(),
            error,
        ]);
    }
    table
}

/// One JSON line: the position, key, whether replayed, every header (text), the body (text).
fn entry_json(entry: &DlqEntry) -> Value {
    let record = &entry.record;
    let headers: Map<String, Value> = record
        .headers
        .iter()
        .map(|(name, value)| (name.to_owned(), Value::String(text(value))))
        .collect();
    json!({
        "partition": record.position.partition,
        "offset": record.position.offset,
        "key": text(&record.key),
        "replayed": entry.handled,
        "headers": headers,
        "payload": text(&record.payload),
    })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        assert!(parse_since("2026-12-01T09:00:00Z").is_ok());
        let two_hours_ago = parse_since("2h").expect("a duration");
        let elapsed = SystemTime::now()
            .duration_since(two_hours_ago)
            .expect("in the past");
        assert!(elapsed >= Duration::from_secs(7200) && elapsed < Duration::from_secs(7260));
        assert!(parse_since("yesterday").is_err());
        assert!(parse_class("fatal").is_err());
    }
}
