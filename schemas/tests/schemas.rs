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
