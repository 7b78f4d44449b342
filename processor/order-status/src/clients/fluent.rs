//! The Fluent API client: OAuth password grant, the order behind an event, and the
//! status-mapping settings of a retailer (read on demand; `crate::settings` decides when).

use common::config::FluentApiConfig;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clients::api::{Api, ApiError, ApiMetrics, MissingSetting};
use crate::clients::documents::{FLUENT_ORDER_BY_REF, FLUENT_SETTINGS};
use crate::clients::endpoint::Endpoint;
use crate::clients::oauth::{TokenCache, TokenResponse, token_request};
use crate::domain::{MappingError, RawSettings, SettingNames, StatusMapping};

/// A Fluent order attribute.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Attribute {
    /// Its name.
    pub name: String,
    /// Its type (`STRING`, `JSON`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its value.
    pub value: Value,
}

/// What the handler needs of a Fluent order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FluentOrder {
    /// Fluent's id.
    pub id: String,
    /// The order ref (the bus key).
    #[serde(rename = "ref")]
    pub order_ref: Option<String>,
    /// `HD`, `CC`, ...
    #[serde(rename = "type")]
    pub order_type: String,
    /// The order's current status (the handler maps the event's, not this one).
    pub status: Option<String>,
    /// The retailer.
    pub retailer: Option<Retailer>,
    /// Attributes (one may hold the commercetools order id).
    #[serde(default)]
    pub attributes: Option<Vec<Attribute>>,
}

/// A retailer reference.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Retailer {
    /// The retailer id.
    pub id: String,
}

impl FluentOrder {
    /// The value of attribute `name` as text (strings as they are, other JSON as JSON).
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.attributes
            .iter()
            .flatten()
            .find(|attribute| attribute.name == name)
            .map(|attribute| match &attribute.value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
    }
}

/// The Fluent API client. Share one per process.
pub struct FluentClient {
    http: reqwest::Client,
    token_url: String,
    graphql: Endpoint,
    client_id: String,
    client_secret: SecretString,
    username: String,
    password: SecretString,
    names: SettingNames,
}

impl std::fmt::Debug for FluentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FluentClient")
            .field("graphql_url", &self.graphql.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl FluentClient {
    /// A client for the configured account; fails naming the first missing setting.
    pub fn new(
        config: &FluentApiConfig,
        names: SettingNames,
        http: reqwest::Client,
        metrics: ApiMetrics,
    ) -> Result<Self, MissingSetting> {
        let base = config
            .api_url
            .as_ref()
            .ok_or(MissingSetting("FLUENT_API_URL"))?
            .expose()
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            graphql: Endpoint {
                http: http.clone(),
                api: Api::Fluent,
                url: format!("{base}/graphql"),
                tokens: TokenCache::default(),
                metrics,
            },
            http,
            token_url: format!("{base}/oauth/token"),
            client_id: config
                .client_id
                .clone()
                .ok_or(MissingSetting("FLUENT_CLIENT_ID"))?,
            client_secret: config
                .client_secret
                .clone()
                .ok_or(MissingSetting("FLUENT_CLIENT_SECRET"))?,
            username: config
                .username
                .clone()
                .ok_or(MissingSetting("FLUENT_USERNAME"))?,
            password: config
                .password
                .clone()
                .ok_or(MissingSetting("FLUENT_PASSWORD"))?,
            names,
        })
    }

    async fn fetch_token(&self, correlation_id: &str) -> Result<TokenResponse, ApiError> {
        let form = [
            ("grant_type", "password"),
            ("scope", "api"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("username", self.username.as_str()),
            ("password", self.password.expose_secret()),
        ];
        token_request(
            self.http.post(&self.token_url).form(&form),
            Api::Fluent,
            correlation_id,
        )
        .await
    }

    /// Fetches a token with the configured credentials (`processor check`).
    pub async fn check_credentials(&self, correlation_id: &str) -> Result<(), ApiError> {
        self.fetch_token(correlation_id).await.map(drop)
    }

    /// One GraphQL call; a 401 drops the token and retries once with a fresh one.
    async fn call(
        &self,
        query: &'static str,
        variables: Value,
        correlation_id: &str,
    ) -> Result<Value, ApiError> {
        self.graphql
            .call(
                || self.fetch_token(correlation_id),
                query,
                variables,
                correlation_id,
            )
            .await
    }

    /// The order with `order_ref`, or `None` when Fluent does not know it (yet).
    pub async fn order(
        &self,
        order_ref: &str,
        correlation_id: &str,
    ) -> Result<Option<FluentOrder>, ApiError> {
        let mut data = self
            .call(
                FLUENT_ORDER_BY_REF,
                json!({ "ref": order_ref }),
                correlation_id,
            )
            .await?;
        match data.get_mut("order").map(Value::take) {
            None | Some(Value::Null) => Ok(None),
            Some(order) => {
                serde_json::from_value(order)
                    .map(Some)
                    .map_err(|error| ApiError::Decode {
                        api: Api::Fluent,
                        detail: format!("order: {error}"),
                        correlation_id: correlation_id.to_owned(),
                    })
            }
        }
    }

    /// The mapping of `retailer_id` (RETAILER settings over ACCOUNT ones), as Fluent has it
    /// now: the parsed mapping, or the configuration error that makes it unusable. Callers
    /// cache it (`crate::settings`).
    pub async fn mapping(
        &self,
        retailer_id: &str,
        correlation_id: &str,
    ) -> Result<Result<StatusMapping, MappingError>, ApiError> {
        let raw = self.settings(retailer_id, correlation_id).await?;
        Ok(StatusMapping::parse(&self.names, &raw))
    }

    /// The three settings at RETAILER (`retailer_id`) and ACCOUNT (`0`) context, RETAILER
    /// winning.
    async fn settings(
        &self,
        retailer_id: &str,
        correlation_id: &str,
    ) -> Result<RawSettings, ApiError> {
        let retailer: Option<i64> = retailer_id.trim().parse().ok();
        let (contexts, ids) = match retailer {
            Some(id) => (json!(["RETAILER", "ACCOUNT"]), json!([id, 0])),
            None => (json!(["ACCOUNT"]), json!([0])),
        };
        let variables = json!({
            "names": self.names.all(),
            "contexts": contexts,
            "contextIds": ids,
        });
        let data = self
            .call(FLUENT_SETTINGS, variables, correlation_id)
            .await?;
        let nodes = data
            .pointer("/settings/edges")
            .and_then(Value::as_array)
            .map(|edges| {
                edges
                    .iter()
                    .filter_map(|edge| edge.get("node"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let pick = |name: &str| -> Option<Value> {
            let at = |context: &str, id: i64| {
                nodes.iter().find(|node| {
                    node.get("name").and_then(Value::as_str) == Some(name)
                        && node.get("context").and_then(Value::as_str) == Some(context)
                        && node.get("contextId").and_then(Value::as_i64) == Some(id)
                })
            };
            let node = retailer
                .and_then(|id| at("RETAILER", id))
                .or_else(|| at("ACCOUNT", 0))?;
            setting_value(node)
        };
        Ok(RawSettings {
            order: pick(&self.names.order),
            payment: pick(&self.names.payment),
            shipment: pick(&self.names.shipment),
        })
    }
}

/// A setting's JSON: `lobValue` when set, else `value` parsed as JSON (else as a string, which
/// the mapping then reports as the wrong shape).
fn setting_value(node: &Value) -> Option<Value> {
    match node.get("lobValue") {
        Some(value) if !value.is_null() => Some(value.clone()),
        _ => node.get("value").and_then(Value::as_str).map(|text| {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_values_come_from_lob_value_then_value() {
        let lob = json!({"lobValue": {"fluent": {}}, "value": null});
        assert_eq!(setting_value(&lob), Some(json!({"fluent": {}})));
        let text = json!({"lobValue": null, "value": "{\"fluent\": {\"A\": \"Open\"}}"});
        assert_eq!(setting_value(&text), Some(json!({"fluent": {"A": "Open"}})));
        let junk = json!({"value": "not json"});
        assert_eq!(setting_value(&junk), Some(json!("not json")));
        assert_eq!(setting_value(&json!({})), None);
    }
}
