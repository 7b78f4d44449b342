//! The sandbox's schemas are faithful subsets of the real APIs' schemas (every type, field,
//! argument and enum value it serves exists in the real schema with the same type), so a
//! document it accepts the real API accepts too. Skips, saying so, when `../shared/upstream`
//! is absent.

use std::path::PathBuf;

use apollo_compiler::Schema;
use apollo_compiler::schema::ExtendedType;
use apollo_compiler::validation::Valid;

// A skipped test says so on stderr, where the test runner shows it.
#[allow(clippy::print_stderr)]
fn upstream(file: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/upstream")
        .join(file);
    if path.exists() {
        Some(std::fs::read_to_string(path).unwrap())
    } else {
        eprintln!(
            "SKIPPED: {} is absent (it exists only beside the team's checkout)",
            path.display()
        );
        None
    }
}

/// Every difference of `subset` from `real`, as readable lines.
fn differences(subset: &Valid<Schema>, real: &Valid<Schema>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, ty) in &subset.types {
        if ty.is_built_in() {
            continue;
        }
        let Some(real_ty) = real.types.get(name) else {
            problems.push(format!("type {name} does not exist"));
            continue;
        };
        match (ty, real_ty) {
            (ExtendedType::Object(ours), ExtendedType::Object(theirs)) => {
                for (field_name, field) in &ours.fields {
                    let Some(real_field) = theirs.fields.get(field_name) else {
                        problems.push(format!("{name}.{field_name} does not exist"));
                        continue;
                    };
                    if field.ty != real_field.ty {
                        problems.push(format!(
                            "{name}.{field_name}: {} vs real {}",
                            field.ty, real_field.ty
                        ));
                    }
                    for argument in &field.arguments {
                        match real_field
                            .arguments
                            .iter()
                            .find(|a| a.name == argument.name)
                        {
                            None => problems.push(format!(
                                "{name}.{field_name}({}) does not exist",
                                argument.name
                            )),
                            Some(real_argument) if real_argument.ty != argument.ty => problems
                                .push(format!(
                                    "{name}.{field_name}({}): {} vs real {}",
                                    argument.name, argument.ty, real_argument.ty
                                )),
                            Some(_) => {}
                        }
                    }
                }
            }
            (ExtendedType::InputObject(ours), ExtendedType::InputObject(theirs)) => {
                for (field_name, field) in &ours.fields {
                    match theirs.fields.get(field_name) {
                        None => problems.push(format!("input {name}.{field_name} does not exist")),
                        Some(real_field) if real_field.ty != field.ty => problems.push(format!(
                            "input {name}.{field_name}: {} vs real {}",
                            field.ty, real_field.ty
                        )),
                        Some(_) => {}
                    }
                }
            }
            (ExtendedType::Enum(ours), ExtendedType::Enum(theirs)) => {
                for value in ours.values.keys() {
                    if !theirs.values.contains_key(value) {
                        problems.push(format!("enum {name} has no value {value}"));
                    }
                }
            }
            (ExtendedType::Scalar(_), ExtendedType::Scalar(_)) => {}
            _ => problems.push(format!("{name} is a different kind of type")),
        }
    }
    problems
}

fn check(subset_sdl: &str, real_sdl: String, name: &str) {
    let subset = Schema::parse_and_validate(subset_sdl, "subset").unwrap();
    let real = Schema::parse_and_validate(real_sdl, name).unwrap();
    let problems = differences(&subset, &real);
    assert!(
        problems.is_empty(),
        "the sandbox's {name} subset differs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn commercetools_subset_matches_the_real_schema() {
    if let Some(real) = upstream("commercetools-schema.graphql") {
        check(
            sandbox::COMMERCETOOLS_SDL,
            real,
            "commercetools-schema.graphql",
        );
    }
}

#[test]
fn fluent_subset_matches_the_real_schema() {
    if let Some(text) = upstream("fluent-schema.json") {
        let introspection: serde_json::Value = serde_json::from_str(&text).unwrap();
        let schema = introspection
            .pointer("/data/__schema")
            .or_else(|| introspection.pointer("/__schema"))
            .unwrap();
        let real = sandbox::introspection::sdl_from_introspection(schema);
        check(sandbox::FLUENT_SDL, real, "fluent-schema.json");
    }
}

#[test]
fn a_field_the_real_schema_lacks_is_reported() {
    let subset = Schema::parse_and_validate(
        "type Query { order(ref: String): Order } type Order { id: ID! colour: String }",
        "a",
    )
    .unwrap();
    let real = Schema::parse_and_validate(
        "type Query { order(ref: String): Order } type Order { id: ID! }",
        "b",
    )
    .unwrap();
    assert_eq!(
        differences(&subset, &real),
        vec!["Order.colour does not exist".to_owned()]
    );
}
