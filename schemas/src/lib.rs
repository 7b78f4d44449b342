//! JSON Schemas of the pipeline's wire types, generated from the Rust types with `schemars`.
//!
//! The generated files are committed under `schemas/json/` so that partners and other
//! consumers of the topic can validate against them without building this project. The test
//! in `tests/schemas.rs` fails when they are stale; `cargo run -p schemas --bin
//! regenerate-schemas` rewrites them.

use std::path::PathBuf;

use common::bus::headers::{DeadLetterHeaders, RecordHeaders};
use common::event::{DEFAULT_REQUIRED_FIELDS, FluentEvent};
use common::mapping::StatusMappingSetting;
use schemars::{Schema, schema_for};

/// One schema file: its name under `schemas/json/` and its pretty-printed JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// File name, e.g. `fluent-event.schema.json`.
    pub name: &'static str,
    /// The file's exact content (pretty JSON and a final newline).
    pub content: String,
}

/// The directory the committed schemas live in.
pub fn json_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json")
}

/// Generates every schema file.
pub fn generate() -> Vec<SchemaFile> {
    vec![
        file("fluent-event.schema.json", &fluent_event()),
        file(
            "status-mapping-setting.schema.json",
            &schema_for!(StatusMappingSetting),
        ),
        file(
            "bus-record-headers.schema.json",
            &schema_for!(RecordHeaders),
        ),
        file(
            "dlq-record-headers.schema.json",
            &schema_for!(DeadLetterHeaders),
        ),
    ]
}

fn file(name: &'static str, schema: &Schema) -> SchemaFile {
    let mut content =
        serde_json::to_string_pretty(schema).expect("a generated schema serializes to JSON");
    content.push('\n');
    SchemaFile { name, content }
}

/// The webhook event schema. The Rust type leaves every field optional because the required
/// list is configuration; the published schema states the default list, which is what Fluent's
/// order webhooks carry and what a gateway with default settings enforces.
fn fluent_event() -> Schema {
    let mut schema = schema_for!(FluentEvent);
    let required = DEFAULT_REQUIRED_FIELDS
        .iter()
        .map(|field| (*field).into())
        .collect();
    schema.insert("required".into(), serde_json::Value::Array(required));
    schema
}
