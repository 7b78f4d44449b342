//! The offsets done beyond a partition's committed offset, as text for the commit's metadata
//! (and, on NATS, for the DLQ replay group's key-value entry).
//!
//! Kafka stores a string beside each committed offset (`offset.metadata.max.bytes`, 4,096 by
//! default). A partition commits only up to its first unfinished record, so after a rebalance
//! the next owner would run again every record of other keys that finished beyond it; with
//! this set it skips them (Confluent's Parallel Consumer does the same). The text is
//! `fcs1:<committed offset>:` followed by `gap.run` pairs: each run of consecutive done offsets
//! as its distance from the end of the previous run (the committed offset, first) and its
//! length. A set too large for the limit is cut at a run: the runs left out are only run
//! again, never lost. The set is read only when the offset it was written for is still the
//! committed one: a tool that moves offsets but copies metadata (a mirror translating offsets,
//! an operator's reset) must not make us skip records nobody ran.

/// What starts our metadata; anything else (another tool's metadata) reads as no set.
const PREFIX: &str = "fcs1:";
/// Kafka's default `offset.metadata.max.bytes`.
pub(crate) const MAX_BYTES: usize = 4096;
/// The most offsets one text may stand for (a corrupt one could claim billions).
const MAX_DECODED: u64 = 1 << 20;

/// The metadata for done offsets `done` (ascending, all above `committed`).
pub(crate) fn encode(committed: u64, done: &[u64]) -> String {
    encode_within(committed, done, MAX_BYTES)
}

/// [`encode`], cut at `max_bytes` rather than Kafka's limit (NATS keeps the text in a
/// key-value entry, whose limit is the server's payload size).
pub(crate) fn encode_within(committed: u64, done: &[u64], max_bytes: usize) -> String {
    let mut text = format!("{PREFIX}{committed}:");
    let empty = text.len();
    let mut previous_end = committed;
    let mut index = 0;
    while index < done.len() {
        let start = done[index];
        let mut run = 1;
        while done.get(index + run) == Some(&(start + run as u64)) {
            run += 1;
        }
        let pair = format!(
            "{}{}.{run}",
            if index == 0 { "" } else { "," },
            start.saturating_sub(previous_end)
        );
        if text.len() + pair.len() > max_bytes {
            break;
        }
        text.push_str(&pair);
        previous_end = start + run as u64;
        index += run;
    }
    if text.len() == empty {
        String::new()
    } else {
        text
    }
}

/// The done offsets in metadata `text` written for `committed`; none for other text.
pub(crate) fn decode(committed: u64, text: &str) -> Vec<u64> {
    let Some((base, pairs)) = text
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
    else {
        return Vec::new();
    };
    if base.parse::<u64>().ok() != Some(committed) {
        return Vec::new();
    }
    let mut done = Vec::new();
    let mut previous_end = committed;
    for pair in pairs.split(',') {
        let Some((gap, run)) = pair.split_once('.') else {
            return done;
        };
        let (Ok(gap), Ok(run)) = (gap.parse::<u64>(), run.parse::<u64>()) else {
            return done;
        };
        // A corrupt text must not make us allocate without bound.
        if done.len() as u64 + run > MAX_DECODED {
            return done;
        }
        let Some(start) = previous_end.checked_add(gap) else {
            return done;
        };
        done.extend(start..start.saturating_add(run));
        previous_end = start.saturating_add(run);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip() {
        let done = [11, 13, 14, 15, 40];
        let text = encode(10, &done);
        assert_eq!(text, "fcs1:10:1.1,1.3,24.1");
        assert_eq!(decode(10, &text), done);
        assert_eq!(encode(10, &[]), "");
        assert!(decode(10, "").is_empty());
        assert!(decode(10, "someone else's metadata").is_empty());
        assert_eq!(decode(10, "fcs1:10:1.1,junk,3.1"), [11]);
        assert!(
            decode(0, "fcs1:0:1.99999999999").is_empty(),
            "a run too long to believe"
        );
    }

    #[test]
    fn a_set_written_for_another_offset_is_ignored() {
        // A mirror translated the offset 1000 to 620 but copied the metadata: 621 is not done.
        let text = encode(1000, &[1001]);
        assert!(decode(620, &text).is_empty());
        assert_eq!(decode(1000, &text), [1001]);
    }

    #[test]
    fn a_fragmented_set_is_cut_to_the_broker_limit() {
        let done: Vec<u64> = (1..5_000).map(|n| n * 2).collect();
        let text = encode(0, &done);
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let decoded = decode(0, &text);
        assert!(decoded.len() > 500, "only {} kept", decoded.len());
        assert_eq!(decoded[..], done[..decoded.len()]);
    }
}
