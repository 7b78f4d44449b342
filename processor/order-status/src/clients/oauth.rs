//! OAuth bearer tokens for the two APIs: the token request both answer the same way, and the
//! cache that shares one token among all callers.
//!
//! Hundreds of handler calls run at once; when the token is missing or about to expire they
//! must not all ask for a new one. The cache holds an async mutex across the fetch, so exactly
//! one caller fetches while the others wait for its result (and a failed fetch is not cached:
//! the next caller tries again). Tokens are refreshed a margin before they expire, and a
//! token the API rejected (401) is dropped so the next caller fetches a fresh one.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::clients::api::{Api, ApiError};

/// A token endpoint's answer (RFC 6749 §5.1): only what we use.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    pub access_token: SecretString,
    /// Seconds until it expires; absent means "long-lived" (we still refresh daily).
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// One API's current token.
#[derive(Default)]
pub struct TokenCache {
    current: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

/// When to refresh a token that lives `lifetime`: at 90 % of it, and at least a minute early
/// when it is long enough for that, so a request never leaves with a token about to lapse.
fn refresh_after(lifetime: Duration) -> Duration {
    let ninety = lifetime.mul_f64(0.9);
    let minute_early = lifetime.saturating_sub(Duration::from_secs(60));
    ninety.min(minute_early).max(lifetime / 2)
}

impl TokenCache {
    /// The current token, fetching one with `fetch` when there is none or it is due for
    /// refresh. Concurrent callers share one fetch.
    pub async fn get<F, Fut, E>(&self, fetch: F) -> Result<SecretString, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TokenResponse, E>>,
    {
        let mut current = self.current.lock().await;
        if let Some(cached) = current.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let response = fetch().await?;
        let lifetime = Duration::from_secs(response.expires_in.unwrap_or(86_400));
        *current = Some(Cached {
            token: response.access_token.clone(),
            refresh_at: Instant::now() + refresh_after(lifetime),
        });
        Ok(response.access_token)
    }

    /// Drops `rejected` (the API answered 401 to it), unless another caller already replaced
    /// it: the next [`TokenCache::get`] fetches a fresh token.
    pub async fn reject(&self, rejected: &SecretString) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|cached| cached.token.expose_secret() == rejected.expose_secret())
        {
            *current = None;
        }
    }
}

/// Sends a token request and reads the token; both APIs answer the same way.
pub(crate) async fn token_request(
    request: reqwest::RequestBuilder,
    api: Api,
    correlation_id: &str,
) -> Result<TokenResponse, ApiError> {
    let transport = |source| ApiError::Transport {
        api,
        correlation_id: correlation_id.to_owned(),
        source,
    };
    let response = request
        .header("X-Correlation-ID", correlation_id)
        .send()
        .await
        .map_err(transport)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(transport)?;
    match status {
        200..=299 => serde_json::from_slice(&bytes).map_err(|error| ApiError::Decode {
            api,
            detail: format!("token response: {error}"),
            correlation_id: correlation_id.to_owned(),
        }),
        // invalid_client (401) or invalid_grant (400): the credentials are refused. Records
        // wait for a fix (a rotated secret deployed) instead of going to the DLQ, for up to
        // PROCESSOR_MAX_WAIT_SECS; the `unauthorized` outcome of the API metric shows it.
        400 | 401 => Err(ApiError::Unauthorized {
            api,
            correlation_id: correlation_id.to_owned(),
        }),
        _ => Err(ApiError::Status {
            api,
            status,
            body: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            correlation_id: correlation_id.to_owned(),
            retry_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn response(token: &str, expires_in: u64) -> TokenResponse {
        TokenResponse {
            access_token: token.into(),
            expires_in: Some(expires_in),
        }
    }

    #[tokio::test]
    async fn many_concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (cache, fetches) = (Arc::clone(&cache), Arc::clone(&fetches));
            callers.spawn(async move {
                cache
                    .get(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok::<_, ()>(response("t1", 3600))
                    })
                    .await
                    .unwrap()
            });
        }
        while let Some(token) = callers.join_next().await {
            assert_eq!(token.unwrap().expose_secret(), "t1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_before_expiry_and_after_a_rejection() {
        let cache = TokenCache::default();
        let fetch = |token: &'static str| move || async move { Ok::<_, ()>(response(token, 600)) };
        assert_eq!(cache.get(fetch("a")).await.unwrap().expose_secret(), "a");
        assert_eq!(cache.get(fetch("b")).await.unwrap().expose_secret(), "a");
        // 600 s tokens are refreshed a minute early.
        tokio::time::advance(Duration::from_secs(541)).await;
        assert_eq!(cache.get(fetch("c")).await.unwrap().expose_secret(), "c");
        cache.reject(&"stale".into()).await;
        assert_eq!(cache.get(fetch("d")).await.unwrap().expose_secret(), "c");
        cache.reject(&"c".into()).await;
        assert_eq!(cache.get(fetch("e")).await.unwrap().expose_secret(), "e");
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached() {
        let cache = TokenCache::default();
        let failed = cache
            .get(|| async { Err::<TokenResponse, _>("down") })
            .await;
        assert!(failed.is_err());
        let token = cache
            .get(|| async { Ok::<_, &str>(response("up", 60)) })
            .await;
        assert_eq!(token.unwrap().expose_secret(), "up");
    }

    #[test]
    fn refresh_margins() {
        assert_eq!(
            refresh_after(Duration::from_secs(86_400)),
            Duration::from_secs(77_760)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(540)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }
}
