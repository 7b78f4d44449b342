//! Hand-written deserialization of [`FluentEvent`] and [`FlexibleId`].
//!
//! The derived versions were the gateway's largest cost after the HTTP stack and the bus
//! (~14 % of its CPU, `perf` in bench/README.md): `#[serde(flatten)]` buffers every field of the
//! body into serde's `Content` before reading it a second time, `#[serde(untagged)]` buffers
//! each id the same way, and `serde_path_to_error` wraps every value to learn the field of a
//! type error. Here one pass reads each field straight into its place, and the visitor itself
//! says which field was at fault. A property test checks the result against a plain
//! `serde_json::Value` reading of the same bodies.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::{FlexibleId, FluentEvent};

/// What went wrong with a field, recorded by the visitor for the validation to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FieldFault {
    /// The value of this field has the wrong JSON type.
    WrongType(String),
    /// This field appears more than once.
    Duplicate(String),
}

impl<'de> Deserialize<'de> for FluentEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        EventSeed { fault: &mut None }.deserialize(deserializer)
    }
}

/// Deserializes a [`FluentEvent`] and records in `fault` the field an error was about.
pub(super) struct EventSeed<'f> {
    pub(super) fault: &'f mut Option<FieldFault>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = FluentEvent;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<FluentEvent, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = FluentEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Fluent event (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FluentEvent, A::Error> {
        let mut event = FluentEvent::default();
        while let Some(Key(key)) = map.next_key()? {
            let fault = &mut *self.fault;
            let mut text = |slot: &mut Option<String>| read(&mut map, fault, &key, slot);
            match key.as_ref() {
                "id" => text(&mut event.id)?,
                "name" => text(&mut event.name)?,
                "accountId" => text(&mut event.account_id)?,
                "rootEntityRef" => text(&mut event.root_entity_ref)?,
                "rootEntityType" => text(&mut event.root_entity_type)?,
                "entityRef" => text(&mut event.entity_ref)?,
                "entityType" => text(&mut event.entity_type)?,
                "entityStatus" => text(&mut event.entity_status)?,
                "type" => text(&mut event.event_type)?,
                "retailerId" => read(&mut map, fault, &key, &mut event.retailer_id)?,
                "rootEntityId" => read(&mut map, fault, &key, &mut event.root_entity_id)?,
                "entityId" => read(&mut map, fault, &key, &mut event.entity_id)?,
                "attributes" => read(&mut map, fault, &key, &mut event.attributes)?,
                _ => {
                    let value: Value = map.next_value()?;
                    if event
                        .extra
                        .insert(key.clone().into_owned(), value)
                        .is_some()
                    {
                        return Err(duplicate(fault, &key));
                    }
                }
            }
        }
        Ok(event)
    }
}

/// Reads the value of `key` into `slot` (JSON `null` reads as absent), refusing a second one.
fn read<'de, A, T>(
    map: &mut A,
    fault: &mut Option<FieldFault>,
    key: &str,
    slot: &mut Option<T>,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if slot.is_some() {
        return Err(duplicate(fault, key));
    }
    *slot = map.next_value().inspect_err(|_| {
        *fault = Some(FieldFault::WrongType(key.to_owned()));
    })?;
    Ok(())
}

fn duplicate<E: de::Error>(fault: &mut Option<FieldFault>, key: &str) -> E {
    *fault = Some(FieldFault::Duplicate(key.to_owned()));
    E::custom(format_args!("field `{key}` appears more than once"))
}

/// An object key, borrowed from the body unless it contains escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
            fn visit_string<E: de::Error>(self, key: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for FlexibleId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = FlexibleId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id (a string or an integer)")
            }
            fn visit_i64<E: de::Error>(self, id: i64) -> Result<FlexibleId, E> {
                Ok(FlexibleId::Number(id))
            }
            fn visit_u64<E: de::Error>(self, id: u64) -> Result<FlexibleId, E> {
                i64::try_from(id)
                    .map(FlexibleId::Number)
                    .map_err(|_| E::custom(format_args!("id {id} is out of range")))
            }
            fn visit_str<E: de::Error>(self, id: &str) -> Result<FlexibleId, E> {
                Ok(FlexibleId::Text(id.to_owned()))
            }
            fn visit_string<E: de::Error>(self, id: String) -> Result<FlexibleId, E> {
                Ok(FlexibleId::Text(id))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use proptest::prelude::*;
    use serde_json::{Map, json};

    use super::super::{RequiredFields, ValidationError};
    use super::*;

    const TEXT: &[&str] = &[
        "id",
        "name",
        "accountId",
        "rootEntityRef",
        "rootEntityType",
        "entityRef",
        "entityType",
        "entityStatus",
        "type",
    ];
    const IDS: &[&str] = &["retailerId", "rootEntityId", "entityId"];
    const OTHER: &[&str] = &["attributes", "meta", "trailLogs", "source", "x\"y", "é"];

    /// What the event should be, read the slow and obvious way: through `serde_json::Value`,
    /// field by field in document order. `Err` names the first field of the wrong type.
    fn reference(pairs: &[(String, Value)]) -> Result<FluentEvent, String> {
        let mut event = FluentEvent::default();
        for (key, value) in pairs {
            let text = || match value {
                Value::Null => Ok(None),
                Value::String(text) => Ok(Some(text.clone())),
                _ => Err(key.clone()),
            };
            let id = || match value {
                Value::Null => Ok(None),
                Value::String(text) => Ok(Some(FlexibleId::Text(text.clone()))),
                Value::Number(number) => number
                    .as_i64()
                    .map(|id| Some(FlexibleId::Number(id)))
                    .ok_or_else(|| key.clone()),
                _ => Err(key.clone()),
            };
            match key.as_str() {
                "id" => event.id = text()?,
                "name" => event.name = text()?,
                "accountId" => event.account_id = text()?,
                "rootEntityRef" => event.root_entity_ref = text()?,
                "rootEntityType" => event.root_entity_type = text()?,
                "entityRef" => event.entity_ref = text()?,
                "entityType" => event.entity_type = text()?,
                "entityStatus" => event.entity_status = text()?,
                "type" => event.event_type = text()?,
                "retailerId" => event.retailer_id = id()?,
                "rootEntityId" => event.root_entity_id = id()?,
                "entityId" => event.entity_id = id()?,
                "attributes" => event.attributes = (!value.is_null()).then(|| value.clone()),
                _ => {
                    event.extra.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(event)
    }

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Quarters: exact in binary, so the text reads back to the same float.
            (-1_000_000..1_000_000).prop_map(|number| json!(f64::from(number) / 4.0)),
            prop_oneof![Just(String::new()), "[a-zA-Z0-9_ \"\\\\é\\n]{1,12}"].prop_map(Value::from),
            Just(json!([1, "two", null])),
            Just(json!({"mode": "SYNC", "models": []})),
        ]
    }

    /// Mostly what the field should hold, sometimes anything at all.
    fn value_for(key: &str) -> BoxedStrategy<Value> {
        let text = "[a-zA-Z0-9_ \"\\\\é]{1,12}".prop_map(Value::from);
        if TEXT.contains(&key) {
            prop_oneof![4 => text, 1 => any_value()].boxed()
        } else if IDS.contains(&key) {
            prop_oneof![2 => text, 2 => any::<i64>().prop_map(Value::from), 1 => any_value()]
                .boxed()
        } else {
            any_value().boxed()
        }
    }

    fn any_body() -> impl Strategy<Value = Vec<(String, Value)>> {
        let keys: Vec<&str> = [TEXT, IDS, OTHER].concat();
        proptest::sample::subsequence(keys.clone(), 0..=keys.len())
            .prop_shuffle()
            .prop_flat_map(|keys| {
                keys.into_iter()
                    .map(|key| (Just(key.to_owned()), value_for(key)))
                    .collect::<Vec<_>>()
            })
    }

    fn body(pairs: &[(String, Value)]) -> String {
        let fields: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{}:{value}", Value::from(key.as_str())))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    proptest! {
        #[test]
        fn reads_every_body_as_a_plain_json_reading_does(
            pairs in any_body(),
            required in proptest::sample::subsequence(vec!["id", "retailerId", "meta", "attributes"], 0..4),
        ) {
            let required = RequiredFields::new(required);
            let parsed = FluentEvent::parse(body(&pairs).as_bytes(), &required);
            match reference(&pairs) {
                Ok(expected) => match super::super::validate::check(&expected, &required) {
                    Ok(()) => prop_assert_eq!(parsed.unwrap(), expected),
                    Err(error) => prop_assert_eq!(parsed.unwrap_err().to_string(), error.to_string()),
                },
                Err(field) => {
                    let error = parsed.unwrap_err();
                    prop_assert!(matches!(error, ValidationError::WrongType { .. }), "{error:?}");
                    prop_assert_eq!(error.field(), Some(field.as_str()));
                }
            }
        }
    }

    #[test]
    fn refuses_a_field_that_appears_twice() {
        for key in ["rootEntityRef", "retailerId", "meta"] {
            let body = format!(r#"{{"{key}":"A","id":"e1","{key}":"B"}}"#);
            let error =
                FluentEvent::parse(body.as_bytes(), &RequiredFields::new(["id"])).unwrap_err();
            assert!(
                matches!(error, ValidationError::Duplicate { .. }),
                "{error:?}"
            );
            assert_eq!(error.field(), Some(key));
            assert_eq!(
                error.to_string(),
                format!("field `{key}` appears more than once")
            );
        }
    }

    #[test]
    fn refuses_a_body_that_is_not_utf8() {
        let body = b"{\"id\":\"e1\",\"meta\":\"\xff\"}";
        let error = FluentEvent::parse(body, &RequiredFields::new(["id"])).unwrap_err();
        assert!(matches!(error, ValidationError::Json(_)), "{error:?}");
        assert!(error.source().unwrap().to_string().contains("not UTF-8"));
    }

    #[test]
    fn reads_escaped_keys_and_values() {
        let event: FluentEvent =
            serde_json::from_str(r#"{"root\u0045ntityRef":"HD_\u0031","retailerId":"7"}"#).unwrap();
        assert_eq!(event.order_ref(), Some("HD_1"));
        assert_eq!(event.retailer_id, Some(FlexibleId::Text("7".into())));
        let _: Map<String, Value> = event.extra;
    }
}
