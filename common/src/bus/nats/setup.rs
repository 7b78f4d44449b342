//! Start-up against the server: the stream and the durable consumers are created when
//! missing and otherwise left as the operator set them, with every difference from what this
//! instance would have created reported once. What the consumers really use (`ack_wait`, the
//! priority group) is read back from the server, not assumed from our settings.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::{self, stream};
use tracing::{info, warn};

use crate::bus::BusError;
use crate::config::NatsConfig;

/// The priority group our durable consumers pin clients in.
pub(super) const GROUP: &str = "processors";

/// The first release with priority groups and the pinned-client policy.
const PINNING_SINCE: (u64, u64) = (2, 11);

/// Whether the server has priority groups, from its `INFO` version (`2.15.1`, `2.11.0-RC.1`).
pub(super) fn server_pins(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= PINNING_SINCE
}

/// The stream this instance would create.
fn desired_stream(nats: &NatsConfig) -> stream::Config {
    stream::Config {
        name: nats.stream.clone(),
        subjects: vec![format!("{}.*", nats.subject_prefix)],
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Creates the stream when it is missing; otherwise leaves it as it is and reports how it
/// differs from what we would have created.
pub(super) async fn ensure_stream(
    context: &jetstream::Context,
    nats: &NatsConfig,
) -> Result<(), BusError> {
    let desired = desired_stream(nats);
    match context.get_stream(&nats.stream).await {
        Ok(mut existing) => {
            let actual = existing
                .info()
                .await
                .map_err(|error| BusError::Unavailable(error.into()))?
                .config
                .clone();
            for difference in stream_differences(&desired, &actual) {
                warn!(stream = %nats.stream, %difference, "keeping the stream's own setting");
            }
            Ok(())
        }
        Err(error) if is_stream_not_found(error.kind()) => {
            info!(stream = %nats.stream, "creating the stream");
            context
                .create_stream(desired)
                .await
                .map_err(|error| match error.kind() {
                    CreateStreamErrorKind::TimedOut => BusError::Unavailable(error.into()),
                    _ => BusError::Setup(error.into()),
                })?;
            Ok(())
        }
        Err(error) => Err(match error.kind() {
            GetStreamErrorKind::Request => BusError::Unavailable(error.into()),
            _ => BusError::Setup(error.into()),
        }),
    }
}

fn is_stream_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// How an existing stream differs from ours, in what we set when creating it.
pub(super) fn stream_differences(desired: &stream::Config, actual: &stream::Config) -> Vec<String> {
    let mut differences = Vec::new();
    let covers = |subject: &String| {
        actual
            .subjects
            .iter()
            .any(|s| s == subject || s == ">" || covers_all_below(s, subject))
    };
    for subject in desired.subjects.iter().filter(|s| !covers(s)) {
        differences.push(format!(
            "subjects {:?} do not include {subject}: records published there are refused",
            actual.subjects
        ));
    }
    if actual.storage != desired.storage {
        differences.push(format!(
            "storage is {:?}, not {:?}: a server restart loses what it holds",
            actual.storage, desired.storage
        ));
    }
    differences
}

/// `a.b.>` covers `a.b.*`.
fn covers_all_below(pattern: &str, subject: &str) -> bool {
    pattern
        .strip_suffix('>')
        .is_some_and(|prefix| subject.starts_with(prefix) && !prefix.is_empty())
}

/// The consumer of `partition` this instance would create; with `start_at_newest`, one that
/// delivers only what arrives from now on and goes away after an hour unused.
pub(super) fn desired_consumer(
    nats: &NatsConfig,
    partition: u32,
    pins: bool,
    start_at_newest: bool,
) -> pull::Config {
    let mut config = pull::Config {
        durable_name: Some(consumer_name(nats, partition)),
        filter_subject: format!("{}.{partition}", nats.subject_prefix),
        ack_policy: AckPolicy::Explicit,
        ack_wait: nats.ack_wait,
        max_deliver: nats.max_deliver,
        max_ack_pending: i64::from(nats.max_ack_pending),
        ..Default::default()
    };
    if start_at_newest {
        config.deliver_policy = DeliverPolicy::New;
        config.inactive_threshold = Duration::from_secs(3600);
    }
    if pins {
        config.priority_policy = PriorityPolicy::PinnedClient;
        config.priority_groups = vec![GROUP.to_owned()];
        config.priority_timeout = nats.pin_timeout;
    }
    config
}

/// `<prefix>-<partition>`.
pub(super) fn consumer_name(nats: &NatsConfig, partition: u32) -> String {
    format!("{}-{partition}", nats.consumer_prefix)
}

/// What a consumer really does, read back from the server.
#[derive(Debug, Clone)]
pub(super) struct Durable {
    pub(super) consumer: jetstream::consumer::PullConsumer,
    /// The consumer's `ack_wait`: the in-progress signals keep inside it.
    pub(super) ack_wait: Duration,
    /// The consumer's `priority_timeout` (pinned consumers).
    pub(super) pin_timeout: Duration,
    /// The priority group to pull in, when the consumer pins clients.
    pub(super) group: Option<String>,
}

/// Creates the partition's durable consumer when missing; otherwise keeps it, refusing one
/// this instance cannot consume safely and reporting the rest of the differences.
pub(super) async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    desired: pull::Config,
    overlapping: bool,
) -> Result<Durable, BusError> {
    let name = desired.durable_name.clone().unwrap_or_default();
    let actual = match stream.consumer_info(&name).await {
        Ok(info) => {
            let actual = info.config;
            check_consumer(&name, &desired, &actual, overlapping)?;
            actual
        }
        Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => {
            info!(consumer = %name, "creating the durable consumer");
            stream
                .create_consumer(desired.clone())
                .await
                .map_err(|error| BusError::Setup(error.into()))?
                .cached_info()
                .config
                .clone()
        }
        Err(error) => {
            return Err(match error.kind() {
                ConsumerInfoErrorKind::TimedOut | ConsumerInfoErrorKind::Request => {
                    BusError::Unavailable(error.into())
                }
                _ => BusError::Setup(error.into()),
            });
        }
    };
    let consumer = stream.get_consumer(&name).await.map_err(BusError::Setup)?;
    let pins = actual.priority_policy == PriorityPolicy::PinnedClient;
    Ok(Durable {
        consumer,
        ack_wait: actual.ack_wait,
        pin_timeout: actual.priority_timeout,
        group: pins
            .then(|| actual.priority_groups.first().cloned())
            .flatten(),
    })
}

/// Refuses a consumer we cannot use as it is; reports what else differs.
fn check_consumer(
    name: &str,
    desired: &pull::Config,
    actual: &jetstream::consumer::Config,
    overlapping: bool,
) -> Result<(), BusError> {
    let refuse = |why: String| {
        Err(BusError::Setup(
            format!("durable consumer {name}: {why}").into(),
        ))
    };
    if actual.filter_subject != desired.filter_subject {
        return refuse(format!(
            "filters {:?}, this partition is {:?}",
            actual.filter_subject, desired.filter_subject
        ));
    }
    if actual.ack_policy != AckPolicy::Explicit {
        return refuse(format!(
            "ack policy is {:?}: records would count as done before they are",
            actual.ack_policy
        ));
    }
    if actual.max_ack_pending < 0 {
        return refuse(
            "max_ack_pending is unlimited: an instance would take the whole backlog into memory; \
             set a limit (NATS_MAX_ACK_PENDING is what created consumers get)"
                .into(),
        );
    }
    let pins = actual.priority_policy == PriorityPolicy::PinnedClient
        && !actual.priority_groups.is_empty();
    if overlapping && !pins {
        return refuse(
            "it pins no client (no priority group with the pinned_client policy), so the \
             instances that all consume it would run one order's events at once: recreate it \
             (delete it; it is created with a priority group) or give each instance its own \
             NATS_OWNED_PARTITIONS"
                .into(),
        );
    }
    for difference in consumer_differences(desired, actual) {
        warn!(consumer = %name, %difference, "keeping the consumer's own setting");
    }
    if actual.max_deliver > 0 {
        // Held records are never redelivered, but each hand-over (a stop, a crash) counts one
        // delivery, and the server drops a message silently once they are used up.
        warn!(consumer = %name, max_deliver = actual.max_deliver, "a record handed over this often is dropped by the server without a dead letter");
    }
    if pins
        && actual.priority_timeout > Duration::ZERO
        && actual.priority_timeout < Duration::from_secs(2)
    {
        warn!(consumer = %name, priority_timeout = ?actual.priority_timeout, "a pin timeout under 2 s moves partitions between instances on any pause");
    }
    Ok(())
}

/// How an existing consumer differs from ours, in the settings that do not stop us.
pub(super) fn consumer_differences(
    desired: &pull::Config,
    actual: &jetstream::consumer::Config,
) -> Vec<String> {
    let mut differences = Vec::new();
    let mut differ = |what: &str, ours: String, theirs: String| {
        if ours != theirs {
            differences.push(format!("{what} is {theirs}, not {ours}"));
        }
    };
    differ(
        "ack_wait",
        format!("{:?}", desired.ack_wait),
        format!("{:?}", actual.ack_wait),
    );
    differ(
        "max_deliver",
        desired.max_deliver.to_string(),
        actual.max_deliver.to_string(),
    );
    differ(
        "max_ack_pending",
        desired.max_ack_pending.to_string(),
        actual.max_ack_pending.to_string(),
    );
    if desired.priority_policy == PriorityPolicy::PinnedClient {
        differ(
            "priority_timeout",
            format!("{:?}", desired.priority_timeout),
            format!("{:?}", actual.priority_timeout),
        );
    }
    differences
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::consumer::IntoConsumerConfig as _;

    use super::*;

    fn nats() -> NatsConfig {
        crate::config::Config::from_sources(&Default::default(), None)
            .expect("defaults")
            .bus
            .nats
    }

    #[test]
    fn versions_from_2_11_pin_clients() {
        assert!(server_pins("2.11.0"));
        assert!(server_pins("2.15.1"));
        assert!(server_pins("3.0.0-RC.1"));
        assert!(!server_pins("2.10.26"));
        assert!(!server_pins("2.9.25"));
        assert!(!server_pins(""));
    }

    #[test]
    fn an_operators_stream_is_reported_only_where_it_matters() {
        let desired = desired_stream(&nats());
        let mut actual = desired.clone();
        actual.max_age = Duration::from_secs(3600);
        actual.num_replicas = 3;
        assert!(stream_differences(&desired, &actual).is_empty());
        actual.subjects = vec!["fluent.>".into()];
        assert!(stream_differences(&desired, &actual).is_empty());
        actual.subjects = vec!["other.*".into()];
        actual.storage = stream::StorageType::Memory;
        let differences = stream_differences(&desired, &actual);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(
            differences[0].contains("fluent.webhooks.*"),
            "{differences:?}"
        );
    }

    #[test]
    fn an_operators_consumer_settings_are_reported_and_a_wrong_one_refused() {
        let desired = desired_consumer(&nats(), 3, true, false);
        let mut actual = desired.clone().into_consumer_config();
        assert!(check_consumer("c-3", &desired, &actual, true).is_ok());
        assert!(consumer_differences(&desired, &actual).is_empty());
        actual.ack_wait = Duration::from_secs(90);
        actual.max_deliver = 5;
        let differences = consumer_differences(&desired, &actual);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].contains("90s"), "{differences:?}");

        let mut other_partition = actual.clone();
        other_partition.filter_subject = "fluent.webhooks.4".into();
        assert!(check_consumer("c-3", &desired, &other_partition, false).is_err());
        let mut acks_all = actual.clone();
        acks_all.ack_policy = AckPolicy::All;
        assert!(check_consumer("c-3", &desired, &acks_all, false).is_err());
        let mut unbounded = actual.clone();
        unbounded.max_ack_pending = -1;
        assert!(check_consumer("c-3", &desired, &unbounded, false).is_err());
        let mut unpinned = actual;
        unpinned.priority_policy = PriorityPolicy::None;
        unpinned.priority_groups.clear();
        assert!(check_consumer("c-3", &desired, &unpinned, true).is_err());
        assert!(check_consumer("c-3", &desired, &unpinned, false).is_ok());
    }
}
