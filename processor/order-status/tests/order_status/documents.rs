//! Every GraphQL document the order-status handler sends validates against the real API schemas in
//! `../shared/upstream/` (commercetools SDL; Fluent as an introspection result, turned into
//! SDL here). Skips, saying so, only when that folder is absent.

use std::path::PathBuf;

use apollo_compiler::{ExecutableDocument, Schema};
use order_status::clients::documents::{COMMERCETOOLS, FLUENT};
use serde_json::Value;

// A skipped test says so on stderr, where the test runner shows it.
#[allow(clippy::print_stderr)]
fn upstream(file: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream")
        .join(file);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (it exists only beside the team's checkout)",
            path.display()
        );
        None
    }
}

fn validate_all(schema_sdl: String, name: &str, documents: &[(&str, &str)]) {
    let schema = Schema::parse_and_validate(schema_sdl, name)
        .unwrap_or_else(|errors| panic!("the {name} schema does not load:\n{}", errors.errors));
    for (document_name, document) in documents {
        if let Err(errors) =
            ExecutableDocument::parse_and_validate(&schema, *document, *document_name)
        {
            panic!(
                "{document_name} is not valid against {name}:\n{}",
                errors.errors
            );
        }
    }
}

#[test]
fn commercetools_documents_validate_against_the_real_schema() {
    let Some(path) = upstream("commercetools-schema.graphql") else {
        return;
    };
    let sdl = std::fs::read_to_string(path).unwrap();
    validate_all(sdl, "commercetools-schema.graphql", COMMERCETOOLS);
}

#[test]
fn fluent_documents_validate_against_the_real_schema() {
    let Some(path) = upstream("fluent-schema.json") else {
        return;
    };
    let introspection: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let schema = introspection
        .pointer("/data/__schema")
        .or_else(|| introspection.pointer("/__schema"))
        .expect("an introspection result");
    validate_all(
        sandbox::introspection::sdl_from_introspection(schema),
        "fluent-schema.json",
        FLUENT,
    );
}

#[test]
fn a_document_with_an_unknown_field_is_rejected() {
    // The validation above must be able to fail.
    let schema = "type Query { order(ref: String): Order } type Order { id: ID! }";
    let schema = Schema::parse_and_validate(schema, "tiny").unwrap();
    let bad = "query { order(ref: \"x\") { id status } }";
    assert!(ExecutableDocument::parse_and_validate(&schema, bad, "bad").is_err());
}
