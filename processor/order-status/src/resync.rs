//! `processor resync --order-ref R`: reads the order's current status in Fluent, maps it with
//! the retailer's settings and sets the commercetools states now, outside the bus. For an
//! order that ended wrong (a dead letter nobody replayed, an edit by hand): what Fluent says
//! now wins. The sync marker is left as it is: no event was applied, and a redelivery of an
//! old one is still recognised by it.

use crate::clients::api::ApiError;
use crate::clients::commercetools::OrderKey;
use crate::domain::{HeaderStates, MappingError};
use crate::handler::{CONFLICT_RETRIES, OrderStatusUpdate, order_key};

/// What a resync read and what it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Resync {
    /// Fluent's current status of the order.
    pub fluent_status: String,
    /// The order's retailer (empty when Fluent names none: ACCOUNT settings apply).
    pub retailer_id: String,
    /// The commercetools order id.
    pub order_id: String,
    /// The commercetools order's version when read.
    pub version: u64,
    /// Its states when read.
    pub before: HeaderStates,
    /// What the mapping says the status means.
    pub target: HeaderStates,
    /// The states that differed, and were set (unless a dry run).
    pub changes: HeaderStates,
    /// Whether an update was sent (false when nothing differed, or on a dry run).
    pub sent: bool,
}

/// Why a resync did not set the order.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Fluent has no such order.
    #[error("Fluent has no order {0}")]
    NoFluentOrder(String),
    /// The Fluent order has no status.
    #[error("Fluent order {0} has no status")]
    NoStatus(String),
    /// A mapping setting is unusable.
    #[error("the mapping settings are unusable")]
    Mapping(#[source] MappingError),
    /// The mapping says nothing about the status.
    #[error("no mapping covers Fluent status {0}")]
    Unmapped(String),
    /// The configured lookup finds no commercetools key on the Fluent order.
    #[error("{0}")]
    Lookup(String),
    /// commercetools has no such order.
    #[error("commercetools has no order for {0:?}")]
    NoCommercetoolsOrder(OrderKey),
    /// Other writers kept changing the order.
    #[error("the commercetools order kept changing under us ({0} version conflicts)")]
    Conflicts(u32),
}

impl ResyncError {
    /// Whether running it again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api(error) => error.is_retryable(),
            Self::Conflicts(_) => true,
            Self::NoFluentOrder(_)
            | Self::NoStatus(_)
            | Self::Mapping(_)
            | Self::Unmapped(_)
            | Self::Lookup(_)
            | Self::NoCommercetoolsOrder(_) => false,
        }
    }
}

impl OrderStatusUpdate {
    /// Sets the commercetools order of `order_ref` to what Fluent's current status maps to
    /// (on a dry run, says what it would set). `correlation_id` goes to both APIs.
    pub async fn resync(
        &self,
        order_ref: &str,
        correlation_id: &str,
    ) -> Result<Resync, ResyncError> {
        let fluent_order = self
            .fluent
            .order(order_ref, correlation_id)
            .await?
            .ok_or_else(|| ResyncError::NoFluentOrder(order_ref.to_owned()))?;
        let fluent_status = fluent_order
            .status
            .clone()
            .ok_or_else(|| ResyncError::NoStatus(order_ref.to_owned()))?;
        let retailer_id = fluent_order
            .retailer
            .as_ref()
            .map(|retailer| retailer.id.clone())
            .unwrap_or_default();
        let mapping = self
            .fluent
            .mapping(&retailer_id, correlation_id)
            .await?
            .map_err(ResyncError::Mapping)?;
        let target = mapping.fold([fluent_status.as_str()]);
        if target.is_empty() {
            return Err(ResyncError::Unmapped(fluent_status));
        }
        let key = order_key(&self.lookup, order_ref, &fluent_order).map_err(ResyncError::Lookup)?;
        for _ in 0..=CONFLICT_RETRIES {
            let order = self
                .commercetools
                .order(&key, None, correlation_id)
                .await?
                .ok_or_else(|| ResyncError::NoCommercetoolsOrder(key.clone()))?;
            let changes = order.states.changes_towards(&target);
            let report = Resync {
                fluent_status: fluent_status.clone(),
                retailer_id: retailer_id.clone(),
                order_id: order.id.clone(),
                version: order.version,
                before: order.states,
                target,
                changes,
                sent: false,
            };
            if changes.is_empty() || self.dry_run {
                return Ok(report);
            }
            match self
                .commercetools
                .update(&order, &changes, None, correlation_id)
                .await
            {
                Ok(_) => {
                    return Ok(Resync {
                        sent: true,
                        ..report
                    });
                }
                // Another writer moved the version: read again.
                Err(error) if error.concurrent_modification().is_some() => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(ResyncError::Conflicts(CONFLICT_RETRIES + 1))
    }
}
