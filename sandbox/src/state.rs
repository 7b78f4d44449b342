//! What the simulated APIs hold: Fluent orders and settings, commercetools orders with their
//! versions and update history, issued tokens, injected faults and call counts.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

/// A Fluent order as the admin API seeds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FluentOrder {
    /// Fluent's id (default: generated).
    #[serde(default)]
    pub id: String,
    /// The order ref.
    #[serde(rename = "ref")]
    pub order_ref: String,
    /// `HD`, `CC`, ...
    #[serde(default = "home_delivery", rename = "type")]
    pub order_type: String,
    /// The order status.
    #[serde(default)]
    pub status: String,
    /// The retailer id.
    #[serde(default = "first_retailer")]
    pub retailer_id: String,
    /// Attributes: `{"name", "type", "value"}` objects.
    #[serde(default)]
    pub attributes: Vec<Value>,
}

fn home_delivery() -> String {
    "HD".into()
}

fn first_retailer() -> String {
    "1".into()
}

/// A Fluent setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Setting {
    /// The setting's name.
    pub name: String,
    /// `ACCOUNT`, `RETAILER`, ...
    pub context: String,
    /// The retailer id, or 0 at ACCOUNT context.
    pub context_id: i64,
    /// JSON settings live here.
    #[serde(default)]
    pub lob_value: Option<Value>,
    /// Plain settings live here.
    #[serde(default)]
    pub value: Option<String>,
}

/// A commercetools order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CtOrder {
    /// The order id (default: generated).
    #[serde(default)]
    pub id: String,
    /// The order number.
    #[serde(default)]
    pub order_number: Option<String>,
    /// Starts at 1 and grows with every update.
    #[serde(default = "first_version")]
    pub version: u64,
    /// `Open`, ...
    #[serde(default = "open")]
    pub order_state: String,
    /// `Pending`, ...
    #[serde(default)]
    pub payment_state: Option<String>,
    /// `Pending`, ...
    #[serde(default)]
    pub shipment_state: Option<String>,
    /// Custom field values by name.
    #[serde(default)]
    pub custom: BTreeMap<String, Value>,
}

impl CtOrder {
    /// A new `Open` order numbered `order_number`, version 1, nothing else set (an id is given
    /// when it is put).
    pub fn open(order_number: &str) -> Self {
        Self {
            id: String::new(),
            order_number: Some(order_number.to_owned()),
            version: first_version(),
            order_state: open(),
            payment_state: None,
            shipment_state: None,
            custom: BTreeMap::new(),
        }
    }
}

fn first_version() -> u64 {
    1
}

fn open() -> String {
    "Open".into()
}

/// One successful `updateOrder`: the order as it was after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// The version after the update.
    pub version: u64,
    /// The states after the update.
    pub order_state: String,
    /// The states after the update.
    pub payment_state: Option<String>,
    /// The states after the update.
    pub shipment_state: Option<String>,
    /// How many actions it carried.
    pub actions: usize,
    /// When, in milliseconds after the sandbox started.
    pub at_ms: f64,
    /// The `X-Correlation-ID` the update was sent with.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// The four endpoints faults and counts apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// `POST /fluent/oauth/token`.
    FluentToken,
    /// `POST /fluent/graphql`.
    FluentGraphql,
    /// `POST /ct/oauth/token`.
    CtToken,
    /// `POST /ct/{project}/graphql`.
    CtGraphql,
}

/// Faults injected into one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Added to every call, milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of calls (0..=1) answered with `status` instead.
    #[serde(default)]
    pub error_rate: f64,
    /// The error status (default 503).
    #[serde(default)]
    pub status: Option<u16>,
    /// The next this many calls fail with `status`, whatever the rate (a burst).
    #[serde(default)]
    pub fail_next: u32,
    /// What an injected error's body looks like (default: any of the shapes, at random).
    #[serde(default)]
    pub body: FaultBody,
}

/// The body of an injected error. Real 5xx and 429 answers come from the API itself, from its
/// gateway or from a proxy in front of it, so clients meet all of these with the same status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultBody {
    /// One of the others, chosen at random per answer.
    #[default]
    Any,
    /// A GraphQL error list without codes: `{"errors":[{"message":"Service Unavailable"}]}`.
    Graphql,
    /// commercetools' REST shape, the code beside the message:
    /// `{"statusCode":503,"message":..,"errors":[{"code":"OverCapacity",..}]}`.
    Rest,
    /// An HTML page from a proxy or load balancer.
    Html,
    /// Nothing at all.
    Empty,
}

/// Which API a token was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenApi {
    Fluent,
    Commercetools,
}

/// Everything, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) fluent_orders: HashMap<String, FluentOrder>,
    pub(crate) settings: Vec<Setting>,
    pub(crate) ct_orders: HashMap<String, CtOrder>,
    pub(crate) history: HashMap<String, Vec<Update>>,
    pub(crate) tokens: HashMap<String, (TokenApi, Instant)>,
    pub(crate) faults: HashMap<Endpoint, Fault>,
    pub(crate) calls: HashMap<Endpoint, u64>,
    /// The latest `traceparent`s the GraphQL endpoints were called with.
    pub(crate) traceparents: HashMap<Endpoint, Vec<String>>,
    /// The next updates of these order ids fail with `ConcurrentModification` after another
    /// writer bumped the version.
    pub(crate) forced_conflicts: HashMap<String, u32>,
    pub(crate) token_lifetime: Duration,
    /// `updateOrder` calls being answered, per order id.
    pub(crate) updates_in_flight: HashMap<String, u32>,
    /// `updateOrder` calls that arrived while another for the same order was in flight.
    pub(crate) overlapping_updates: u64,
    /// The `X-Correlation-ID` of the commercetools request being answered.
    pub(crate) correlation_id: Option<String>,
    pub(crate) started: Option<Instant>,
}

impl State {
    /// Milliseconds since the sandbox started.
    pub(crate) fn elapsed_ms(&self) -> f64 {
        self.started
            .map_or(0.0, |started| started.elapsed().as_secs_f64() * 1000.0)
    }
}
