//! The committed schemas must be exactly what the code generates.

use std::collections::BTreeSet;

const REGENERATE: &str = "cargo run -p schemas --bin regenerate-schemas";

#[test]
fn committed_schemas_match_generated_ones() {
    let dir = schemas::json_dir();
    for file in schemas::generate() {
        let path = dir.join(file.name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|error| {
            panic!(
                "{} is missing ({error}): run `{REGENERATE}`",
                path.display()
            )
        });
        assert!(
            committed == file.content,
            "{} is stale: the Rust types changed; run `{REGENERATE}` and commit the result",
            path.display()
        );
    }
}

#[test]
fn no_schema_file_without_a_type() {
    let generated: BTreeSet<String> = schemas::generate()
        .into_iter()
        .map(|file| file.name.to_owned())
        .collect();
    let committed: BTreeSet<String> = std::fs::read_dir(schemas::json_dir())
        .expect("schemas/json exists")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".schema.json"))
        .collect();
    assert_eq!(
        committed, generated,
        "run `{REGENERATE}` to remove stale schema files"
    );
}

#[test]
fn event_schema_states_default_required_fields_and_keeps_unknown_ones() {
    let file = schemas::generate()
        .into_iter()
        .find(|f| f.name == "fluent-event.schema.json")
        .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&file.content).unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, common::event::DEFAULT_REQUIRED_FIELDS);
    assert_ne!(
        schema["additionalProperties"],
        serde_json::Value::Bool(false)
    );
    assert!(schema["properties"]["retailerId"].is_object());
}

/// `schemas/asyncapi.yaml`, parsed.
fn asyncapi() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("schemas/asyncapi.yaml exists");
    serde_norway::from_str(&text).expect("asyncapi.yaml is YAML")
}

/// Every `$ref` value in `value`.
fn references(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", serde_json::Value::String(target)) => found.push(target.clone()),
                    _ => references(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[test]
fn the_asyncapi_document_parses_and_every_reference_resolves() {
    let document = asyncapi();
    assert_eq!(document["asyncapi"], "3.0.0");
    let committed: BTreeSet<String> = schemas::generate()
        .into_iter()
        .map(|file| format!("./json/{}", file.name))
        .collect();
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(found.len() > 20, "{found:?}");
    for target in &found {
        match target.strip_prefix('#') {
            Some(pointer) => assert!(
                document.pointer(pointer).is_some(),
                "{target} points at nothing"
            ),
            None => assert!(
                committed.contains(target),
                "{target} is not a committed schema ({committed:?})"
            ),
        }
    }
    for (message, schema) in [
        ("webhook", "./json/bus-record-headers.schema.json"),
        ("deadLetter", "./json/dlq-record-headers.schema.json"),
    ] {
        let pointer = format!("/components/messages/{message}/headers/$ref");
        assert_eq!(document.pointer(&pointer).unwrap(), schema);
    }
}

/// The property names of the schema at `pointer`.
fn listed(document: &serde_json::Value, pointer: &str) -> BTreeSet<String> {
    document
        .pointer(pointer)
        .and_then(serde_json::Value::as_object)
        .unwrap_or_else(|| panic!("{pointer} lists no properties"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_asyncapi_nats_headers_are_exactly_those_the_bus_writes() {
    use common::bus::headers::{self, CloudEvents, CloudEventsNames};
    let body = serde_json::json!({
        "id": "e-1", "name": "n", "accountId": "ACME", "retailerId": "1",
        "entityType": "ORDER", "entityRef": "HD_1", "entityStatus": "BOOKED",
        "rootEntityType": "ORDER", "rootEntityRef": "HD_1",
    });
    let event = common::event::FluentEvent::parse(
        body.to_string().as_bytes(),
        &common::event::RequiredFields::default(),
    )
    .unwrap();
    let cloudevents = CloudEvents {
        names: CloudEventsNames::NATS,
        source_template: "/fluentcommerce/{accountId}".into(),
    };
    let mut written: BTreeSet<String> =
        headers::record_headers(&event, "2026-12-01T00:00:00.000Z", &cloudevents)
            .iter()
            .map(|(name, _)| name.to_owned())
            .collect();
    // Added on the way: the trace context, a replay's origin, and by the NATS publisher the
    // key and the deduplication id.
    written.extend(
        [
            headers::TRACEPARENT,
            headers::TRACESTATE,
            headers::REPLAYED_FROM,
            headers::NATS_KEY,
            "Nats-Msg-Id",
        ]
        .map(str::to_owned),
    );
    let document = asyncapi();
    let nats = listed(
        &document,
        "/components/schemas/natsRecordHeaders/properties",
    );
    assert_eq!(nats, written);
    let dlq_schema: serde_json::Value = serde_json::from_str(
        &schemas::generate()
            .into_iter()
            .find(|file| file.name == "dlq-record-headers.schema.json")
            .unwrap()
            .content,
    )
    .unwrap();
    let mut letter = nats;
    letter.extend(
        listed(&dlq_schema, "/properties")
            .into_iter()
            .filter(|name| name.starts_with("dlq-")),
    );
    assert_eq!(
        listed(
            &document,
            "/components/schemas/natsDeadLetterHeaders/properties"
        ),
        letter
    );
}
