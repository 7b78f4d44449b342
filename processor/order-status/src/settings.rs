//! The mapping settings cache: how long a retailer's mapping is reused before Fluent is asked
//! again (`FLUENT_SETTINGS_TTL_SECS`). Policy, not I/O: the Fluent client reads the settings,
//! this decides when.
//!
//! A retailer's mapping is read at most once per TTL however many batches ask at once (one
//! read per retailer at a time; the others wait for it). A misconfigured setting is cached as
//! it is, the setting's state until someone fixes it; an API failure is not cached.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::domain::{MappingError, StatusMapping};

/// A retailer's mapping as last read: the parsed mapping, or the configuration error that
/// makes it unusable.
pub type CachedMapping = Arc<Result<StatusMapping, MappingError>>;

struct Entry {
    read_at: Instant,
    mapping: CachedMapping,
}

type Slot = Arc<Mutex<Option<Entry>>>;

/// Mappings by retailer, each reused for `ttl`.
pub struct MappingCache {
    ttl: Duration,
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for MappingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl MappingCache {
    /// An empty cache keeping each mapping for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: std::sync::Mutex::default(),
        }
    }

    /// The mapping of `retailer_id`, from the cache while it is younger than the TTL, else
    /// from `read` (which only one caller per retailer runs at a time).
    pub async fn get<E, F, Fut>(&self, retailer_id: &str, read: F) -> Result<CachedMapping, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Result<StatusMapping, MappingError>, E>>,
    {
        let slot = Arc::clone(
            self.slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(retailer_id.to_owned())
                .or_default(),
        );
        let mut entry = slot.lock().await;
        if let Some(cached) = entry.as_ref()
            && cached.read_at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(&cached.mapping));
        }
        let mapping = Arc::new(read().await?);
        *entry = Some(Entry {
            read_at: Instant::now(),
            mapping: Arc::clone(&mapping),
        });
        Ok(mapping)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::domain::{RawSettings, SettingNames};

    fn mapping() -> Result<StatusMapping, MappingError> {
        StatusMapping::parse(&SettingNames::default(), &RawSettings::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_mapping_is_read_once_per_ttl_and_failures_are_not_kept() {
        let cache = MappingCache::new(Duration::from_secs(300));
        let reads = AtomicUsize::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(mapping())
        };
        cache.get("1", read).await.unwrap();
        cache.get("1", read).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1, "read again inside the TTL");
        cache.get("2", read).await.unwrap();
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "another retailer shares no entry"
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        cache.get("1", read).await.unwrap();
        assert_eq!(
            reads.load(Ordering::SeqCst),
            3,
            "not read again after the TTL"
        );
        assert!(
            cache
                .get("3", || async {
                    Err::<Result<StatusMapping, MappingError>, _>("down")
                })
                .await
                .is_err()
        );
        cache.get("3", read).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 4, "a failure was cached");
    }
}
