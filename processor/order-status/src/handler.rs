//! `OrderStatusUpdate`: a batch of one order's status events becomes at most one
//! commercetools `updateOrder`.
//!
//! Steps, cheapest first: parse the events; fold the retailer's mapping (cached) over their
//! statuses and stop when nothing is mapped (no API call at all); read the Fluent order (it
//! must exist, and may carry the commercetools id); read the commercetools order; send only the
//! actions that change something, at the version read, re-reading on a version conflict.

use std::sync::Arc;
use std::time::Duration;

use common::bus::Position;
use common::config::OrderLookup;
use common::event::FluentEvent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::clients::api::ApiError;
use crate::clients::commercetools::{CommercetoolsClient, CtOrder, OrderKey};
use crate::clients::fluent::{FluentClient, FluentOrder};
use crate::domain::{HeaderStates, StatusMapping, SyncMarker};
use crate::settings::{CachedMapping, MappingCache};
use processor_engine::{Context, Handler, Outcome, Record};

/// Version conflicts re-read and retried at once before the batch backs off.
pub(crate) const CONFLICT_RETRIES: u32 = 5;

/// What the handler counts (`order_status_*_total`).
#[derive(Debug, Clone, Default)]
pub struct HandlerMetrics {
    /// `updateOrder` calls that succeeded.
    pub updates: Counter,
    /// Batches whose statuses no mapping covers (no API call made).
    pub unmapped: Counter,
    /// Batches whose mapped states the order already had (no update sent).
    pub unchanged: Counter,
    /// Batches skipped because the sync marker shows them applied.
    pub already_applied: Counter,
    /// Version conflicts met (each re-read and retried).
    pub conflicts: Counter,
    /// Batches dead-lettered for a misconfigured mapping setting.
    pub config_errors: Counter,
    /// The API calls the handler makes.
    pub api: crate::clients::api::ApiMetrics,
}

impl HandlerMetrics {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "order_status_updates",
                "commercetools updateOrder calls that succeeded",
                &self.updates,
            ),
            (
                "order_status_unmapped",
                "Batches whose statuses no mapping covers",
                &self.unmapped,
            ),
            (
                "order_status_unchanged",
                "Batches the order already matched",
                &self.unchanged,
            ),
            (
                "order_status_already_applied",
                "Batches the sync marker shows applied",
                &self.already_applied,
            ),
            (
                "order_status_conflicts",
                "commercetools version conflicts met",
                &self.conflicts,
            ),
            (
                "order_status_config_errors",
                "Batches dead-lettered for a bad mapping setting",
                &self.config_errors,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        self.api.register(registry);
    }
}

/// The built-in handler of Fluent order status events.
pub struct OrderStatusUpdate {
    names: Vec<String>,
    pub(crate) fluent: Arc<FluentClient>,
    pub(crate) commercetools: Arc<CommercetoolsClient>,
    pub(crate) lookup: OrderLookup,
    marker_field: Option<String>,
    not_found_attempts: u32,
    mappings: MappingCache,
    metrics: HandlerMetrics,
    /// Log the updates instead of sending them (`processor --dry-run`).
    pub(crate) dry_run: bool,
}

impl OrderStatusUpdate {
    /// A handler for `names`, with the two clients and the lookup and marker settings.
    pub fn new(
        names: Vec<String>,
        fluent: Arc<FluentClient>,
        commercetools: Arc<CommercetoolsClient>,
        config: &common::config::Config,
        metrics: HandlerMetrics,
    ) -> Self {
        Self {
            names,
            fluent,
            commercetools,
            lookup: config.commercetools.order_lookup.clone(),
            marker_field: config.commercetools.sync_marker_field.clone(),
            not_found_attempts: config.fluent.order_not_found_attempts,
            mappings: MappingCache::new(config.fluent.settings_ttl),
            metrics,
            dry_run: false,
        }
    }

    /// With `on`, every commercetools update is logged (`info`, with the order, its version
    /// and the changes) and not sent; everything else (reading Fluent and commercetools,
    /// mapping) runs as usual. In the engine, [`Context::dry_run`] says the same (the
    /// processor's `--dry-run`); this is for calls outside it (`processor resync --dry-run`).
    #[must_use]
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// The Fluent client (`processor check` reads the settings with it).
    pub fn fluent(&self) -> &FluentClient {
        &self.fluent
    }

    /// The commercetools client.
    pub fn commercetools(&self) -> &CommercetoolsClient {
        &self.commercetools
    }
}

impl OrderStatusUpdate {
    /// The handler the configuration describes, with its own HTTP client and API clients.
    pub fn from_config(
        config: &common::config::Config,
    ) -> Result<(Self, HandlerMetrics), crate::clients::api::SetupError> {
        let http = crate::clients::api::http_client(config.processor.api_timeout)?;
        let metrics = HandlerMetrics::default();
        let fluent = FluentClient::new(
            &config.fluent,
            crate::domain::SettingNames::default(),
            http.clone(),
            metrics.api.clone(),
        )?;
        let commercetools =
            CommercetoolsClient::new(&config.commercetools, http, metrics.api.clone())?;
        let handler = Self::new(
            config.processor.order_status_message_names.clone(),
            Arc::new(fluent),
            Arc::new(commercetools),
            config,
            metrics.clone(),
        );
        Ok((handler, metrics))
    }
}

/// The commercetools order's key for the Fluent order `order_ref`, by the configured lookup.
pub(crate) fn order_key(
    lookup: &OrderLookup,
    order_ref: &str,
    fluent_order: &FluentOrder,
) -> Result<OrderKey, String> {
    Ok(match lookup {
        OrderLookup::OrderNumber => OrderKey::Number(order_ref.to_owned()),
        OrderLookup::Id => OrderKey::Id(order_ref.to_owned()),
        OrderLookup::IdWithoutPrefix(prefix) => OrderKey::Id(
            order_ref
                .strip_prefix(prefix.as_str())
                .unwrap_or(order_ref)
                .to_owned(),
        ),
        OrderLookup::Attribute(name) => {
            fluent_order
                .attribute(name)
                .map(OrderKey::Id)
                .ok_or_else(|| {
                    format!(
                        "Fluent order {order_ref} has no attribute {name} with the commercetools id"
                    )
                })?
        }
    })
}

/// What an API error leads to, with its whole cause chain as the reason (it ends up in logs
/// and in `dlq-error`).
fn retry_or_fail(error: &ApiError) -> Outcome {
    let reason = common::report::chain(error);
    if error.is_outage() {
        Outcome::Wait {
            reason,
            delay: error.retry_after(),
        }
    } else if error.is_retryable() {
        Outcome::Retry {
            reason,
            delay: error.retry_after(),
        }
    } else {
        Outcome::Fail(reason)
    }
}

#[async_trait::async_trait]
impl Handler for OrderStatusUpdate {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn takes_batches(&self) -> bool {
        true
    }

    fn register_metrics(&self, metrics: &mut prometheus_client::registry::Registry) {
        self.metrics.register(metrics);
    }

    fn validate(&self, record: &Record) -> Result<(), String> {
        serde_json::from_slice::<FluentEvent>(&record.payload)
            .map(drop)
            .map_err(|error| {
                format!(
                    "record at {}:{} is not a Fluent event: {error}",
                    record.position.partition, record.position.offset
                )
            })
    }

    async fn handle(&self, records: &[Record], context: &Context) -> Outcome {
        self.steps(records, context)
            .await
            .unwrap_or_else(|outcome| outcome)
    }
}

/// One order's fresh events (those not marked as repeats), read from a batch.
struct Batch<'a> {
    /// (position, event id, event), in offset order.
    events: Vec<(Position, Option<&'a str>, FluentEvent)>,
    order_ref: String,
    retailer_id: String,
    /// Sent to both APIs: the newest event's id.
    correlation_id: String,
}

impl<'a> Batch<'a> {
    /// The fresh events of `records`; an outcome instead when there are none or one is no
    /// Fluent event.
    fn read(records: &'a [Record]) -> Result<Self, Outcome> {
        // Events already applied (Fluent retried a webhook) count as done.
        let fresh: Vec<&Record> = records.iter().filter(|record| !record.duplicate).collect();
        let Some(newest) = fresh.last() else {
            return Err(Outcome::Skip(
                "every event of the batch was already applied".into(),
            ));
        };
        let mut events = Vec::with_capacity(fresh.len());
        for record in &fresh {
            let event =
                serde_json::from_slice::<FluentEvent>(&record.payload).map_err(|error| {
                    Outcome::Fail(format!(
                        "record at {}:{} is not a Fluent event: {error}",
                        record.position.partition, record.position.offset
                    ))
                })?;
            events.push((record.position, record.event_id.as_deref(), event));
        }
        let retailer_id = events
            .iter()
            .rev()
            .find_map(|(_, _, event)| event.retailer_id.as_ref().map(ToString::to_string))
            .unwrap_or_default();
        Ok(Self {
            events,
            order_ref: String::from_utf8_lossy(&newest.key).into_owned(),
            retailer_id,
            correlation_id: newest
                .event_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        })
    }

    /// The states `mapping` folds the events into that `applied` does not cover.
    fn target(&self, mapping: &StatusMapping, applied: &SyncMarker) -> HeaderStates {
        mapping.fold(
            self.events
                .iter()
                .filter(|(position, id, _)| !applied.covers(*position, *id))
                .filter_map(|(_, _, event)| event.entity_status.as_deref()),
        )
    }
}

impl OrderStatusUpdate {
    /// The four steps, cheapest first; each either hands on or ends with an outcome.
    async fn steps(&self, records: &[Record], context: &Context) -> Result<Outcome, Outcome> {
        let batch = Batch::read(records)?;
        let cached = self.mapping(&batch).await?;
        let mapping = self.usable(&cached, &batch)?;
        let key = self.locate(&batch, context).await?;
        Ok(self.apply(&batch, mapping, &key, context).await)
    }

    /// The retailer's mapping, read from Fluent at most once per settings TTL.
    async fn mapping(&self, batch: &Batch<'_>) -> Result<CachedMapping, Outcome> {
        self.mappings
            .get(&batch.retailer_id, || {
                self.fluent
                    .mapping(&batch.retailer_id, &batch.correlation_id)
            })
            .await
            .map_err(|error| retry_or_fail(&error))
    }

    /// The mapping, unless it is misconfigured or maps none of the statuses: then the batch
    /// stops here, before any order is read.
    fn usable<'m>(
        &self,
        cached: &'m CachedMapping,
        batch: &Batch<'_>,
    ) -> Result<&'m StatusMapping, Outcome> {
        match cached.as_ref() {
            Err(error) => {
                self.metrics.config_errors.inc();
                warn!(%error, setting = error.setting(), "mapping setting misconfigured");
                Err(Outcome::Fail(error.to_string()))
            }
            Ok(mapping) if batch.target(mapping, &SyncMarker::default()).is_empty() => {
                self.metrics.unmapped.inc();
                Err(Outcome::Skip("no mapping covers these statuses".into()))
            }
            Ok(mapping) => Ok(mapping),
        }
    }

    /// The commercetools order's key, from the Fluent order (which must exist: Fluent may
    /// not have it yet, so that is retried a few times) and the configured lookup.
    async fn locate(&self, batch: &Batch<'_>, context: &Context) -> Result<OrderKey, Outcome> {
        let order_ref = &batch.order_ref;
        let fluent_order = match self.fluent.order(order_ref, &batch.correlation_id).await {
            Ok(Some(order)) => order,
            Ok(None) if context.attempt < self.not_found_attempts => {
                return Err(Outcome::Retry {
                    reason: format!("Fluent does not know order {order_ref} yet"),
                    delay: None,
                });
            }
            Ok(None) => return Err(Outcome::Fail(format!("Fluent has no order {order_ref}"))),
            Err(error) => return Err(retry_or_fail(&error)),
        };
        order_key(&self.lookup, order_ref, &fluent_order).map_err(Outcome::Fail)
    }

    /// Reads the commercetools order and sends only the actions that change something (and
    /// the marker), at the version read; a version conflict reads again.
    async fn apply(
        &self,
        batch: &Batch<'_>,
        mapping: &StatusMapping,
        key: &OrderKey,
        context: &Context,
    ) -> Outcome {
        let marker_field = self.marker_field.as_deref();
        let nothing_applied = SyncMarker::default();
        for _ in 0..=CONFLICT_RETRIES {
            let order: CtOrder = match self
                .commercetools
                .order(key, marker_field, &batch.correlation_id)
                .await
            {
                Ok(Some(order)) => order,
                Ok(None) => {
                    return Outcome::Fail(format!("commercetools has no order for {key:?}"));
                }
                Err(error) => return retry_or_fail(&error),
            };
            let stored = SyncMarker::parse(order.marker.as_deref());
            let unapplied: Vec<_> = batch
                .events
                .iter()
                .filter(|(position, id, _)| {
                    marker_field.is_none() || !stored.covers(*position, *id)
                })
                .collect();
            let Some(&&(newest_position, ..)) = unapplied.last() else {
                self.metrics.already_applied.inc();
                return Outcome::Skip(format!(
                    "the sync marker ({}) shows these applied",
                    order.marker.as_deref().unwrap_or_default()
                ));
            };
            let applied = if marker_field.is_some() {
                &stored
            } else {
                &nothing_applied
            };
            let changes = order
                .states
                .changes_towards(&batch.target(mapping, applied));
            // With a marker, the ids of these events are remembered even when the order already
            // has their states: a retry of one arriving after a newer event must not apply it.
            // Only events with ids teach it anything then: a marker write is an update (a new
            // version, an order message) and is not worth making for the position alone.
            let new_ids = unapplied.iter().any(|(_, id, _)| id.is_some());
            let marker = marker_field
                .filter(|_| !changes.is_empty() || new_ids)
                .map(|field| {
                    let ids = unapplied.iter().filter_map(|(_, id, _)| *id);
                    (field, stored.advanced(newest_position, ids).to_text())
                });
            if changes.is_empty() && marker.is_none() {
                self.metrics.unchanged.inc();
                debug!(order_ref = %batch.order_ref, "commercetools already has these states");
                return Outcome::Done;
            }
            if context.cancel.is_cancelled() {
                // Shutdown, or the partition went to another owner: it must not find this
                // update landing behind its own.
                return Outcome::Retry {
                    reason: "cancelled before the commercetools update".into(),
                    delay: None,
                };
            }
            let marker = marker.as_ref().map(|(field, text)| (*field, text.as_str()));
            if self.dry_run || context.dry_run {
                info!(order_ref = %batch.order_ref, order_id = %order.id,
                    version = order.version, ?changes, marker = ?marker.map(|(field, _)| field),
                    "dry run: would update the commercetools order");
                return Outcome::Done;
            }
            match self
                .commercetools
                .update(&order, &changes, marker, &batch.correlation_id)
                .await
            {
                Ok(_) => {
                    if changes.is_empty() {
                        self.metrics.unchanged.inc();
                    } else {
                        self.metrics.updates.inc();
                        debug!(order_ref = %batch.order_ref, ?changes, "commercetools order updated");
                    }
                    return Outcome::Done;
                }
                Err(error) if error.concurrent_modification().is_some() => {
                    // Another writer moved the version: read again and retry at once.
                    self.metrics.conflicts.inc();
                }
                Err(error) => return retry_or_fail(&error),
            }
        }
        Outcome::Retry {
            reason: format!("commercetools order {key:?} kept changing under us"),
            delay: Some(Duration::from_millis(50)),
        }
    }
}
