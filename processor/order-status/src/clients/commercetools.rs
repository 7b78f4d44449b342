//! The commercetools API client: client-credentials OAuth, reading an order's header states
//! (and the sync marker), and `updateOrder` with only the actions that change something.

use common::config::CommercetoolsConfig;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use crate::clients::api::{Api, ApiError, ApiMetrics, MissingSetting};
use crate::clients::documents::{CT_ORDER_BY_ID, CT_ORDER_BY_NUMBER, CT_UPDATE_ORDER};
use crate::clients::endpoint::Endpoint;
use crate::clients::oauth::{TokenCache, TokenResponse, token_request};
use crate::domain::{HeaderStates, OrderState, PaymentState, ShipmentState};

/// Which commercetools order to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// By `orderNumber`.
    Number(String),
    /// By id.
    Id(String),
}

/// A commercetools order as the handler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct CtOrder {
    /// The order id.
    pub id: String,
    /// The version an update must name.
    pub version: u64,
    /// The three header states (a state this client does not know reads as unset).
    pub states: HeaderStates,
    /// The sync marker custom field's value (JSON `{"position":"3:17","events":[…]}`, or the
    /// legacy bare `3:17`), when configured and set.
    pub marker: Option<String>,
}

/// The commercetools API client. Share one per process.
pub struct CommercetoolsClient {
    http: reqwest::Client,
    token_url: String,
    graphql: Endpoint,
    client_id: String,
    client_secret: SecretString,
    scopes: String,
}

impl std::fmt::Debug for CommercetoolsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommercetoolsClient")
            .field("graphql_url", &self.graphql.url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl CommercetoolsClient {
    /// A client for the configured project; fails naming the first missing setting.
    pub fn new(
        config: &CommercetoolsConfig,
        http: reqwest::Client,
        metrics: ApiMetrics,
    ) -> Result<Self, MissingSetting> {
        let url = |value: &Option<common::config::ServerUrl>, name| {
            value
                .as_ref()
                .map(|url| url.expose().as_str().trim_end_matches('/').to_owned())
                .ok_or(MissingSetting(name))
        };
        let api = url(&config.api_url, "CTP_API_URL")?;
        let auth = url(&config.auth_url, "CTP_AUTH_URL")?;
        let project = config
            .project_key
            .as_deref()
            .ok_or(MissingSetting("CTP_PROJECT_KEY"))?;
        Ok(Self {
            graphql: Endpoint {
                http: http.clone(),
                api: Api::Commercetools,
                url: format!("{api}/{project}/graphql"),
                tokens: TokenCache::default(),
                metrics,
            },
            http,
            token_url: format!("{auth}/oauth/token"),
            client_id: config
                .client_id
                .clone()
                .ok_or(MissingSetting("CTP_CLIENT_ID"))?,
            client_secret: config
                .client_secret
                .clone()
                .ok_or(MissingSetting("CTP_CLIENT_SECRET"))?,
            scopes: config.scopes.join(" "),
        })
    }

    async fn fetch_token(&self, correlation_id: &str) -> Result<TokenResponse, ApiError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.as_str()));
        }
        let request = self
            .http
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&form);
        token_request(request, Api::Commercetools, correlation_id).await
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

    /// The order, or `None` when commercetools has none with that key. `marker_field`, when
    /// given, is read from the order's custom fields.
    pub async fn order(
        &self,
        key: &OrderKey,
        marker_field: Option<&str>,
        correlation_id: &str,
    ) -> Result<Option<CtOrder>, ApiError> {
        let fields: Vec<&str> = marker_field.into_iter().collect();
        let (query, variables) = match key {
            OrderKey::Number(number) => (
                CT_ORDER_BY_NUMBER,
                json!({ "orderNumber": number, "fields": fields }),
            ),
            OrderKey::Id(id) => (CT_ORDER_BY_ID, json!({ "id": id, "fields": fields })),
        };
        let data = self.call(query, variables, correlation_id).await?;
        match data.get("order") {
            None | Some(Value::Null) => Ok(None),
            Some(order) => {
                parse_order(order, marker_field)
                    .map(Some)
                    .ok_or_else(|| ApiError::Decode {
                        api: Api::Commercetools,
                        detail: "order without id or version".into(),
                        correlation_id: correlation_id.to_owned(),
                    })
            }
        }
    }

    /// Sends the actions that move `order` to `changes` (only fields set there), plus the sync
    /// marker when given, in one `updateOrder` at `order.version`. Returns the updated order.
    pub async fn update(
        &self,
        order: &CtOrder,
        changes: &HeaderStates,
        marker: Option<(&str, &str)>,
        correlation_id: &str,
    ) -> Result<CtOrder, ApiError> {
        let variables = json!({
            "id": order.id,
            "version": order.version,
            "actions": actions(changes, marker),
        });
        let data = self
            .call(CT_UPDATE_ORDER, variables, correlation_id)
            .await?;
        data.get("updateOrder")
            .and_then(|updated| parse_order(updated, None))
            .ok_or_else(|| ApiError::Decode {
                api: Api::Commercetools,
                detail: "updateOrder returned no order".into(),
                correlation_id: correlation_id.to_owned(),
            })
    }
}

/// The `OrderUpdateAction` list for `changes` and the marker.
pub fn actions(changes: &HeaderStates, marker: Option<(&str, &str)>) -> Vec<Value> {
    let mut actions = Vec::new();
    if let Some(state) = changes.order {
        actions.push(json!({ "changeOrderState": { "orderState": state.as_str() } }));
    }
    if let Some(state) = changes.payment {
        actions.push(json!({ "changePaymentState": { "paymentState": state.as_str() } }));
    }
    if let Some(state) = changes.shipment {
        actions.push(json!({ "changeShipmentState": { "shipmentState": state.as_str() } }));
    }
    if let Some((name, value)) = marker {
        // commercetools takes custom field values in GraphQL as JSON text: a String field's
        // value is a JSON string literal.
        let value = Value::String(value.to_owned()).to_string();
        actions.push(json!({ "setCustomField": { "name": name, "value": value } }));
    }
    actions
}

fn parse_order(order: &Value, marker_field: Option<&str>) -> Option<CtOrder> {
    let text = |name: &str| order.get(name).and_then(Value::as_str);
    let marker = marker_field.and_then(|field| {
        order
            .pointer("/custom/customFieldsRaw")
            .and_then(Value::as_array)?
            .iter()
            .find(|raw| raw.get("name").and_then(Value::as_str) == Some(field))
            .and_then(|raw| raw.get("value").and_then(Value::as_str).map(str::to_owned))
    });
    Some(CtOrder {
        id: text("id")?.to_owned(),
        version: order.get("version").and_then(Value::as_u64)?,
        states: HeaderStates {
            order: text("orderState").and_then(OrderState::parse),
            payment: text("paymentState").and_then(PaymentState::parse),
            shipment: text("shipmentState").and_then(ShipmentState::parse),
        },
        marker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_fields_and_the_marker_become_actions() {
        let changes = HeaderStates {
            payment: Some(PaymentState::Paid),
            ..HeaderStates::default()
        };
        let list = actions(&changes, Some(("fluentSyncPosition", "3:17")));
        assert_eq!(
            list,
            vec![
                json!({"changePaymentState": {"paymentState": "Paid"}}),
                json!({"setCustomField": {
                    "name": "fluentSyncPosition",
                    "value": "\"3:17\""
                }}),
            ]
        );
        assert!(actions(&HeaderStates::default(), None).is_empty());
    }

    #[test]
    fn reads_an_order_with_its_marker() {
        let order = json!({
            "id": "o1", "version": 4, "orderState": "Open", "paymentState": null,
            "shipmentState": "Shipped",
            "custom": {"customFieldsRaw": [{"name": "m", "value": "2:9"}]}
        });
        let parsed = parse_order(&order, Some("m")).unwrap();
        assert_eq!(parsed.version, 4);
        assert_eq!(parsed.states.order, Some(OrderState::Open));
        assert_eq!(parsed.states.payment, None);
        assert_eq!(parsed.marker.as_deref(), Some("2:9"));
        assert!(parse_order(&json!({"id": "o1"}), None).is_none());
    }
}
