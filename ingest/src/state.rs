//! What every request handler shares: the verifier, the field rules and allow-lists, the
//! publisher, the metrics and the limits. Its own module, so that the application that builds
//! it and the webhook route that reads it both depend on it and not on each other.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::bus::Publisher;
use common::bus::headers::CloudEvents;
use common::event::{FluentEvent, RequiredFields};
use tokio::sync::Semaphore;

use crate::error::IngestError;
use crate::metrics::Metrics;
use crate::replay::RecentIds;
use crate::signature::Verifier;

/// What every request handler shares.
pub(crate) struct AppState {
    pub(crate) verifier: Verifier,
    pub(crate) required_fields: RequiredFields,
    pub(crate) allowed_accounts: HashSet<String>,
    pub(crate) allowed_names: HashSet<String>,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Metrics,
    pub(crate) request_timeout: Duration,
    pub(crate) body_limit: usize,
    /// One permit per webhook handled at once (`INGEST_MAX_REQUESTS`).
    pub(crate) requests: Semaphore,
    /// Webhooks accepted lately, to answer a replay without publishing it again.
    pub(crate) recent: RecentIds,
    pub(crate) ready: AtomicBool,
    /// `messaging.system` of the producer spans.
    pub(crate) messaging_system: &'static str,
    /// `messaging.destination.name` of the producer spans: the topic or stream.
    pub(crate) destination: Arc<str>,
    /// How records describe themselves as CloudEvents on this bus.
    pub(crate) cloudevents: CloudEvents,
}

impl AppState {
    /// Applies the optional allow-lists (403 for accounts, 422 for event names).
    pub(crate) fn check_allowed(&self, event: &FluentEvent) -> Result<(), IngestError> {
        let account = event.account_id.as_deref().unwrap_or_default();
        if !self.allowed_accounts.is_empty() && !self.allowed_accounts.contains(account) {
            return Err(IngestError::AccountNotAllowed {
                account: account.to_owned(),
            });
        }
        let name = event.name.as_deref().unwrap_or_default();
        if !self.allowed_names.is_empty() && !self.allowed_names.contains(name) {
            return Err(IngestError::NameNotAllowed {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}
