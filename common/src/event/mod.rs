//! The Fluent webhook event: what Fluent posts to `ingest` and what travels on the bus.
//!
//! The bus carries the body bytes exactly as received (other consumers of the topic rely on
//! that), so this model is a *view* of those bytes: [`ReceivedEvent`] keeps both. Fields the
//! pipeline does not know (Fluent adds `meta`, `trailLogs`, `errorLogs` and more over time) are
//! kept in [`FluentEvent::extra`] rather than dropped.

mod de;
mod validate;

use std::fmt;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

pub use validate::{DEFAULT_REQUIRED_FIELDS, RequiredFields, ValidationError};

/// An identifier Fluent sends as a JSON string in some places and as a number in others
/// (`retailerId` is seen as both `"1"` and `1`).
// Deserialize is hand-written (`de`): serde's untagged enums buffer every value first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FlexibleId {
    /// The id sent as a JSON number.
    Number(i64),
    /// The id sent as a JSON string.
    Text(String),
}

impl fmt::Display for FlexibleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(number) => write!(f, "{number}"),
            Self::Text(text) => f.write_str(text),
        }
    }
}

/// A Fluent event as posted by a Fluent webhook.
///
/// Every known field is optional in this type because which fields are required is
/// configuration (`WEBHOOK_REQUIRED_FIELDS`); parsing checks them and names the first one
/// missing. Fields not named here are kept in `extra`. A field given twice is refused.
// Deserialize is hand-written (`de`), in one pass: the derived one buffered the whole body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FluentEvent {
    /// Fluent's id of this event (a UUID); a webhook Fluent retries keeps its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event (message) name, used to route the event to a handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Fluent account, e.g. `ACME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The Fluent retailer; the context for retailer-level settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retailer_id: Option<FlexibleId>,
    /// Id of the root entity (the order, for order events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_entity_id: Option<FlexibleId>,
    /// Ref of the root entity: the order ref, and so the bus key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_entity_ref: Option<String>,
    /// Type of the root entity, e.g. `ORDER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_entity_type: Option<String>,
    /// Id of the entity the event is about (may be a child of the root, e.g. a fulfilment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<FlexibleId>,
    /// Ref of the entity the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_ref: Option<String>,
    /// Type of the entity the event is about, e.g. `ORDER`, `FULFILMENT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Status of the entity when the event was sent: the status that gets mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_status: Option<String>,
    /// Fluent's event type, e.g. `NORMAL`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Event attributes (an object or a list, depending on the sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    /// Every field this model does not name, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl FluentEvent {
    /// Parses and validates a webhook body.
    ///
    /// Errors say which field is missing, blank, of the wrong type or unusable (an identifier
    /// with a control character), so the sender can fix it.
    pub fn parse(body: &[u8], required: &RequiredFields) -> Result<Self, ValidationError> {
        let event = validate::deserialize(body)?;
        validate::check(&event, required)?;
        Ok(event)
    }

    /// The order ref (`rootEntityRef`), the key that keeps one order's events in order.
    pub fn order_ref(&self) -> Option<&str> {
        self.root_entity_ref.as_deref()
    }
}

/// A validated event together with the exact bytes it was parsed from.
///
/// Signatures are computed over the raw bytes and the bus carries them untouched, so the
/// bytes are the source of truth and the parsed event only a convenient view.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// The body exactly as received.
    pub raw: Bytes,
    /// The parsed view of [`Self::raw`].
    pub event: FluentEvent,
}

impl ReceivedEvent {
    /// Parses `raw` with [`FluentEvent::parse`] and keeps it.
    pub fn parse(raw: Bytes, required: &RequiredFields) -> Result<Self, ValidationError> {
        let event = FluentEvent::parse(&raw, required)?;
        Ok(Self { raw, event })
    }
}
