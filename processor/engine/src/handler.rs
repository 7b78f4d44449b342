//! What the engine runs: handlers of message names, and the registry that routes to them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::bus::{Headers, Position};
use tokio_util::sync::CancellationToken;

/// A record as a handler sees it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The partitioning key (the order ref).
    pub key: Bytes,
    /// Where it sits on the bus.
    pub position: Position,
    /// The bus headers.
    pub headers: Headers,
    /// The value: the webhook body as received.
    pub payload: Bytes,
    /// The message name it was routed by.
    pub name: String,
    /// Fluent's event id (`fluent-event-id`), when the record has one.
    pub event_id: Option<String>,
    /// An event with this id was already applied for this key (Fluent retried a webhook
    /// whose answer it did not get): handlers normally treat it as done.
    pub duplicate: bool,
}

/// What a handler call gets besides its records.
#[derive(Debug, Clone)]
pub struct Context {
    /// 1 on the first attempt, counting up with each retry.
    pub attempt: u32,
    /// Cancelled when the engine shuts down, or when the records' partition was revoked and
    /// the drain deadline passed (the next owner runs them): long work should stop before its
    /// next side effect and ask for a retry.
    pub cancel: CancellationToken,
    /// The processor runs with `--dry-run`: read what you need, change nothing outside, and
    /// log what you would have changed; then answer as if it was done.
    pub dry_run: bool,
}

/// A handler's answer; for a batch it covers every record of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge.
    Done,
    /// Deliberately not processed (the reason is logged): acknowledge.
    Skip(String),
    /// Failed in a way that may pass: try again later (after `delay`, or the engine's backoff).
    Retry {
        /// Why.
        reason: String,
        /// When to try again, if the handler knows better than the backoff.
        delay: Option<Duration>,
    },
    /// A dependency is unavailable (connection refused, 5xx, 429, refused credentials): try
    /// again later without spending an attempt, for up to `PROCESSOR_MAX_WAIT_SECS` since the
    /// record was first tried; after that it counts as [`Outcome::Retry`]. An outage of
    /// commercetools must not send every record in flight to the DLQ.
    Wait {
        /// Why.
        reason: String,
        /// When to try again, if the handler knows (e.g. `Retry-After`); else the backoff.
        delay: Option<Duration>,
    },
    /// Failed for good: dead-letter, then acknowledge.
    Fail(String),
}

/// Processes records of one or more message names.
///
/// Partners add their own handler in their own crate:
///
/// ```
/// use processor_engine::{Context, Handler, Outcome, Record, Registry};
///
/// struct AuditLog;
///
/// #[async_trait::async_trait]
/// impl Handler for AuditLog {
///     fn names(&self) -> Vec<String> {
///         vec!["fc.connect.order.webhook.audit".into()]
///     }
///
///     async fn handle(&self, records: &[Record], _context: &Context) -> Outcome {
///         for record in records {
///             println!("{} at {:?}", record.name, record.position);
///         }
///         Outcome::Done
///     }
/// }
///
/// let registry = Registry::new().with(AuditLog);
/// assert!(registry.handler_for("fc.connect.order.webhook.audit").is_some());
/// ```
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The message names routed here.
    fn names(&self) -> Vec<String>;

    /// The handler's name in metrics (the `handler` label of
    /// `processor_handler_records_total`): fixed and short. The default is the type's name
    /// without its module path.
    fn name(&self) -> &'static str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// True when queued records of one key may be handed over together, in offset order, in
    /// one call whose outcome covers them all.
    fn takes_batches(&self) -> bool {
        false
    }

    /// Whether this handler can ever process `record` (say, its payload is the format the
    /// handler reads). A record it refuses is dead-lettered alone, as permanent, before its
    /// batch is handled, so one malformed record does not fail the records queued with it.
    fn validate(&self, record: &Record) -> Result<(), String> {
        let _ = record;
        Ok(())
    }

    /// Registers the handler's own metrics (say, its API calls) in the processor's
    /// `/metrics`; called once, before the first record. Registering nothing is the default.
    fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        let _ = metrics;
    }

    /// Processes `records` (one, or a batch of one key in offset order).
    async fn handle(&self, records: &[Record], context: &Context) -> Outcome;
}

/// `a::b::Name<c::D>` → `Name`.
fn short_type_name(path: &'static str) -> &'static str {
    let path = path.split('<').next().unwrap_or(path);
    path.rsplit("::").next().unwrap_or(path)
}

/// Maps message names to handlers; built once at start-up.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
    /// Names a second handler claimed: a configuration mistake the processor refuses to start
    /// with, since one of the two would silently never see its messages.
    claimed_twice: Vec<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for each of its names. A name another handler has already is kept
    /// by the first and reported by [`Self::claimed_twice`].
    #[must_use]
    pub fn with(mut self, handler: impl Handler) -> Self {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        for name in handler.names() {
            match self.handlers.entry(name) {
                std::collections::hash_map::Entry::Occupied(taken) => {
                    self.claimed_twice.push(taken.key().clone());
                }
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(Arc::clone(&handler));
                }
            }
        }
        self
    }

    /// The message names more than one handler claimed (empty when the registry is sound).
    pub fn claimed_twice(&self) -> &[String] {
        &self.claimed_twice
    }

    /// The handler of `name`.
    pub fn handler_for(&self, name: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(name)
    }

    /// Lets every handler register its metrics, once each however many names it has.
    pub fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        let mut seen: Vec<&Arc<dyn Handler>> = Vec::new();
        for handler in self.handlers.values() {
            if !seen.iter().any(|other| Arc::ptr_eq(other, handler)) {
                handler.register_metrics(metrics);
                seen.push(handler);
            }
        }
    }
}
