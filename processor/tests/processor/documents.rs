//! Every GraphQL document the processor sends validates against the real API schemas in
//! `../shared/upstream/` (commercetools SDL; Fluent as an introspection result, turned into
//! SDL here). Skips, saying so, only when that folder is absent.

use std::fmt::Write as _;
use std::path::PathBuf;

use apollo_compiler::{ExecutableDocument, Schema};
use processor::documents::{COMMERCETOOLS, FLUENT};
use serde_json::Value;

// A skipped test says so on stderr, where the test runner shows it.
#[allow(clippy::print_stderr)]
fn upstream(file: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/upstream")
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
    validate_all(sdl_from_introspection(schema), "fluent-schema.json", FLUENT);
}

#[test]
fn a_document_with_an_unknown_field_is_rejected() {
    // The validation above must be able to fail.
    let schema = "type Query { order(ref: String): Order } type Order { id: ID! }";
    let schema = Schema::parse_and_validate(schema, "tiny").unwrap();
    let bad = "query { order(ref: \"x\") { id status } }";
    assert!(ExecutableDocument::parse_and_validate(&schema, bad, "bad").is_err());
}

/// The SDL of an introspection result's `__schema` (types, fields, arguments with defaults,
/// enum values, unions, interfaces, root operation types; descriptions and custom directives
/// are left out: validation does not need them).
fn sdl_from_introspection(schema: &Value) -> String {
    const BUILT_IN: &[&str] = &["String", "Int", "Float", "Boolean", "ID"];
    let mut sdl = String::new();
    let root = |key: &str| schema[key]["name"].as_str().map(str::to_owned);
    sdl.push_str("schema {\n");
    for (operation, key) in [
        ("query", "queryType"),
        ("mutation", "mutationType"),
        ("subscription", "subscriptionType"),
    ] {
        if let Some(name) = root(key) {
            let _ = writeln!(sdl, "  {operation}: {name}");
        }
    }
    sdl.push_str("}\n");
    for ty in schema["types"].as_array().unwrap() {
        let name = ty["name"].as_str().unwrap();
        if name.starts_with("__") || BUILT_IN.contains(&name) {
            continue;
        }
        match ty["kind"].as_str().unwrap() {
            "SCALAR" => {
                let _ = writeln!(sdl, "scalar {name}");
            }
            "ENUM" => {
                let values: Vec<&str> = ty["enumValues"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["name"].as_str().unwrap())
                    .collect();
                let _ = writeln!(sdl, "enum {name} {{ {} }}", values.join(" "));
            }
            "UNION" => {
                let members: Vec<&str> = ty["possibleTypes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["name"].as_str().unwrap())
                    .collect();
                let _ = writeln!(sdl, "union {name} = {}", members.join(" | "));
            }
            "INPUT_OBJECT" => {
                let _ = writeln!(sdl, "input {name} {{");
                for field in ty["inputFields"].as_array().unwrap() {
                    let _ = writeln!(sdl, "  {}", input_value(field));
                }
                sdl.push_str("}\n");
            }
            kind @ ("OBJECT" | "INTERFACE") => {
                let keyword = if kind == "OBJECT" {
                    "type"
                } else {
                    "interface"
                };
                let interfaces: Vec<&str> = ty["interfaces"]
                    .as_array()
                    .map(|list| list.iter().map(|t| t["name"].as_str().unwrap()).collect())
                    .unwrap_or_default();
                let implements = if interfaces.is_empty() {
                    String::new()
                } else {
                    format!(" implements {}", interfaces.join(" & "))
                };
                let _ = writeln!(sdl, "{keyword} {name}{implements} {{");
                for field in ty["fields"].as_array().unwrap() {
                    let args: Vec<String> = field["args"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(input_value)
                        .collect();
                    let args = if args.is_empty() {
                        String::new()
                    } else {
                        format!("({})", args.join(", "))
                    };
                    let _ = writeln!(
                        sdl,
                        "  {}{args}: {}",
                        field["name"].as_str().unwrap(),
                        type_ref(&field["type"])
                    );
                }
                sdl.push_str("}\n");
            }
            other => panic!("unknown type kind {other} for {name}"),
        }
    }
    sdl
}

fn input_value(value: &Value) -> String {
    let mut text = format!(
        "{}: {}",
        value["name"].as_str().unwrap(),
        type_ref(&value["type"])
    );
    if let Some(default) = value["defaultValue"].as_str() {
        let _ = write!(text, " = {default}");
    }
    text
}

fn type_ref(ty: &Value) -> String {
    match ty["kind"].as_str().unwrap() {
        "NON_NULL" => format!("{}!", type_ref(&ty["ofType"])),
        "LIST" => format!("[{}]", type_ref(&ty["ofType"])),
        _ => ty["name"].as_str().unwrap().to_owned(),
    }
}
