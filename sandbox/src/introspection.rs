//! Fluent publishes its schema as an introspection result; tests compare against it as SDL.

use std::fmt::Write as _;

use serde_json::Value;

/// The SDL of an introspection result's `__schema` (types, fields, arguments with defaults,
/// enum values, unions, interfaces, root operation types; descriptions and custom directives
/// are left out: validation does not need them).
pub fn sdl_from_introspection(schema: &Value) -> String {
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
