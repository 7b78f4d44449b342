//! One API's GraphQL endpoint: the HTTP call of `api` with the bearer token `oauth` caches,
//! and a second try with a fresh token when the API answers 401. It sits above both, so
//! neither needs the other's internals.

use std::time::Instant;

use serde_json::Value;

use crate::clients::api::{Api, ApiError, ApiMetrics, operation_name, post_graphql};
use crate::clients::oauth::{TokenCache, TokenResponse};

/// One API's GraphQL endpoint with its cached token and call metrics.
pub(crate) struct Endpoint {
    pub(crate) http: reqwest::Client,
    pub(crate) api: Api,
    pub(crate) url: String,
    pub(crate) tokens: TokenCache,
    pub(crate) metrics: ApiMetrics,
}

impl Endpoint {
    /// One GraphQL call with the cached token (fetched with `fetch_token` when due); a 401
    /// drops the token and retries once with a fresh one.
    pub(crate) async fn call<F, Fut>(
        &self,
        fetch_token: F,
        query: &'static str,
        variables: Value,
        correlation_id: &str,
    ) -> Result<Value, ApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<TokenResponse, ApiError>>,
    {
        let operation = operation_name(query);
        let mut refreshed = false;
        loop {
            let started = Instant::now();
            let token = match self.tokens.get(&fetch_token).await {
                Ok(token) => token,
                Err(error) => {
                    // A token endpoint that refuses or fails shows in the same series.
                    let failed = Err(error);
                    self.metrics.observe(self.api, "token", &failed, started);
                    return failed;
                }
            };
            let started = Instant::now();
            let result = post_graphql(
                &self.http,
                self.api,
                &self.url,
                &token,
                query,
                &variables,
                correlation_id,
            )
            .await;
            self.metrics.observe(self.api, operation, &result, started);
            match result {
                Err(ApiError::Unauthorized { .. }) if !refreshed => {
                    self.tokens.reject(&token).await;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }
}
