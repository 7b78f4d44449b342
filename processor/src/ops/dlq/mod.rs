//! `processor dlq list` and `processor dlq replay`.
//!
//! A replay re-publishes dead letters to the webhook topic, without their `dlq-*` headers,
//! and remembers each as handled in the replay group (`<KAFKA_GROUP_ID>-dlq-replay`, or
//! `<NATS_CONSUMER_PREFIX>-dlq-replay`) once the broker acknowledged the re-publish
//! ([`DlqReader::replay`]). A replay killed at any point loses none and repeats none: killed
//! between the two, its next run finds the publish on the webhook topic by its
//! `replayed-from` header and records it instead. By default only the newest dead letter
//! of each order is replayed and its older ones are marked handled with it: replaying an older
//! status after a newer one would move the order back. "Newest" is by when the gateway
//! received the event (`received-at`, which a dead letter and its replays keep), so an older
//! status that failed again after a replay does not overtake a newer one; dead letters
//! without an order ref are each their own.

use std::io::Write;
use std::time::{Duration, SystemTime};

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use common::bus::dlq::{Access, DlqEntry, DlqReader};
use common::bus::{FailureClass, Position, headers};
use common::config::{BusConfig, BusKind};
use serde_json::{Map, Value, json};

use self::plan::plan;
use super::OpsError;

mod plan;

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
    let entries: Vec<DlqEntry> = reader
        .read_for_replay(|entry| selection.matches(entry))
        .await?;
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
        run_step(&mut reader, &entries, step, dry_run, &mut done, out).await?;
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

/// Runs one step of the plan (on a dry run, only says it), saying what it did as it is done:
/// a replay that fails half-way has said what it did.
async fn run_step(
    reader: &mut DlqReader,
    entries: &[DlqEntry],
    step: &plan::Step,
    dry_run: bool,
    done: &mut Replayed,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let superseded: Vec<Position> = step
        .superseded
        .iter()
        .map(|&i| entries[i].record.position)
        .collect();
    let Some(index) = step.replay else {
        // Older versions of an order a replay already moved past: passed over.
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
        return Ok(());
    };
    let entry = &entries[index];
    let position = entry.record.position;
    let published = if dry_run {
        "(dry run)".to_owned()
    } else {
        let at = reader.replay(&entry.record, &superseded).await?;
        format!("as {}:{}", at.partition, at.offset)
    };
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
    Ok(())
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
    use super::*;

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
