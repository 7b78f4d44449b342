//! A small GraphQL executor: parse and validate the request against the API's schema (so a
//! client sending a document the real API would reject fails here too), evaluate the root
//! fields' arguments, let the API resolve each root field to a full JSON object, and return
//! only what the document selected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use apollo_compiler::ast::Value as AstValue;
use apollo_compiler::executable::{Selection, SelectionSet};
use apollo_compiler::validation::Valid;
use apollo_compiler::{ExecutableDocument, Schema};
use serde_json::{Map, Value};

/// A GraphQL error to report in `errors[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// `message`.
    pub message: String,
    /// `extensions` (commercetools puts `code` and `currentVersion` there).
    pub extensions: Value,
}

impl FieldError {
    /// An error with `code` in its extensions.
    pub fn coded(code: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            extensions: serde_json::json!({ "code": code }),
        }
    }

    fn to_json(&self) -> Value {
        serde_json::json!({ "message": self.message, "extensions": self.extensions })
    }
}

/// Which root field is being resolved, with its evaluated arguments.
#[derive(Debug)]
pub struct RootField<'a> {
    /// `query` or `mutation`.
    pub mutation: bool,
    /// The field name (`order`, `updateOrder`, ...).
    pub name: &'a str,
    /// Argument values, variables substituted.
    pub arguments: Map<String, Value>,
}

/// The outcome of one request: the response body and whether it is a request error (the
/// document did not validate), which the APIs answer with HTTP 400.
pub struct Response {
    /// `{"data": ...}` or `{"errors": [...]}` (or both).
    pub body: Value,
    /// The document was rejected before execution.
    pub invalid: bool,
}

/// Validated documents by their text: clients send the same few documents over and over, and
/// validating each time would make the simulator, not the client, the bottleneck of a
/// benchmark. Bounded: it starts over past 1,000 distinct documents.
#[derive(Default)]
pub struct DocumentCache(Mutex<HashMap<String, Arc<Valid<ExecutableDocument>>>>);

impl DocumentCache {
    /// [`execute`] with the validated document reused when the same text comes again.
    pub fn execute(
        &self,
        schema: &Valid<Schema>,
        query: &str,
        variables: &Map<String, Value>,
        resolve: impl FnMut(RootField<'_>) -> Result<Value, FieldError>,
    ) -> Response {
        let cached = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned();
        let document = match cached {
            Some(document) => document,
            None => match validate(schema, query) {
                Ok(document) => {
                    let document = Arc::new(document);
                    let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                    if cache.len() >= 1_000 {
                        cache.clear();
                    }
                    cache.insert(query.to_owned(), Arc::clone(&document));
                    document
                }
                Err(response) => return response,
            },
        };
        run(&document, variables, resolve)
    }
}

/// Executes `query` with `variables`; `resolve` returns a root field's full value.
pub fn execute(
    schema: &Valid<Schema>,
    query: &str,
    variables: &Map<String, Value>,
    resolve: impl FnMut(RootField<'_>) -> Result<Value, FieldError>,
) -> Response {
    match validate(schema, query) {
        Ok(document) => run(&document, variables, resolve),
        Err(response) => response,
    }
}

fn validate(schema: &Valid<Schema>, query: &str) -> Result<Valid<ExecutableDocument>, Response> {
    match ExecutableDocument::parse_and_validate(schema, query, "request.graphql") {
        Ok(document) => Ok(document),
        Err(errors) => {
            let errors: Vec<Value> = errors
                .errors
                .iter()
                .map(|diagnostic| {
                    FieldError::coded("GRAPHQL_VALIDATION_FAILED", diagnostic.error.to_string())
                        .to_json()
                })
                .collect();
            Err(Response {
                body: serde_json::json!({ "errors": errors }),
                invalid: true,
            })
        }
    }
}

fn run(
    document: &Valid<ExecutableDocument>,
    variables: &Map<String, Value>,
    mut resolve: impl FnMut(RootField<'_>) -> Result<Value, FieldError>,
) -> Response {
    let Ok(operation) = document.operations.get(None) else {
        return Response {
            body: serde_json::json!({ "errors": [FieldError::coded(
                "GRAPHQL_VALIDATION_FAILED",
                "exactly one operation is supported",
            ).to_json()] }),
            invalid: true,
        };
    };
    let mutation = operation.operation_type.is_mutation();
    let mut data = Map::new();
    let mut errors = Vec::new();
    for selection in &operation.selection_set.selections {
        let Selection::Field(field) = selection else {
            continue;
        };
        let arguments = field
            .arguments
            .iter()
            .map(|argument| {
                (
                    argument.name.to_string(),
                    to_json(&argument.value, variables),
                )
            })
            .collect();
        let root = RootField {
            mutation,
            name: field.name.as_str(),
            arguments,
        };
        let value = match resolve(root) {
            Ok(value) => project(&value, &field.selection_set, variables),
            Err(error) => {
                errors.push(error.to_json());
                Value::Null
            }
        };
        data.insert(field.response_key().to_string(), value);
    }
    let mut body = Map::new();
    body.insert("data".into(), Value::Object(data));
    if !errors.is_empty() {
        body.insert("errors".into(), Value::Array(errors));
    }
    Response {
        body: Value::Object(body),
        invalid: false,
    }
}

/// `value` reduced to the fields `selection` asks for (lists element-wise).
fn project(value: &Value, selection: &SelectionSet, variables: &Map<String, Value>) -> Value {
    if selection.selections.is_empty() {
        return value.clone();
    }
    match value {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| project(item, selection, variables))
                .collect(),
        ),
        Value::Object(object) => {
            let mut out = Map::new();
            for selected in &selection.selections {
                let Selection::Field(field) = selected else {
                    continue;
                };
                let name = field.name.as_str();
                let mut inner = object.get(name).cloned().unwrap_or(Value::Null);
                if name == "customFieldsRaw" {
                    inner = filter_custom_fields(inner, &field.arguments, variables);
                }
                if name == "__typename" {
                    inner = object.get("__typename").cloned().unwrap_or(Value::Null);
                }
                out.insert(
                    field.response_key().to_string(),
                    project(&inner, &field.selection_set, variables),
                );
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// `customFieldsRaw(includeNames:, excludeNames:)`: the one field with arguments below the
/// root that the connector uses.
fn filter_custom_fields(
    fields: Value,
    arguments: &[apollo_compiler::Node<apollo_compiler::ast::Argument>],
    variables: &Map<String, Value>,
) -> Value {
    let names = |which: &str| -> Option<Vec<String>> {
        let argument = arguments.iter().find(|a| a.name == which)?;
        let value = to_json(&argument.value, variables);
        value.as_array().map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
    };
    let (include, exclude) = (names("includeNames"), names("excludeNames"));
    let Value::Array(list) = fields else {
        return fields;
    };
    Value::Array(
        list.into_iter()
            .filter(|field| {
                let name = field
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                include
                    .as_ref()
                    .is_none_or(|names| names.iter().any(|n| n == name))
                    && exclude
                        .as_ref()
                        .is_none_or(|names| !names.iter().any(|n| n == name))
            })
            .collect(),
    )
}

/// An argument value as JSON, variables substituted.
fn to_json(value: &AstValue, variables: &Map<String, Value>) -> Value {
    match value {
        AstValue::Null => Value::Null,
        AstValue::Enum(name) => Value::String(name.to_string()),
        AstValue::Variable(name) => variables.get(name.as_str()).cloned().unwrap_or(Value::Null),
        AstValue::String(text) => Value::String(text.clone()),
        AstValue::Float(float) => float
            .try_to_f64()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        AstValue::Int(int) => int
            .as_str()
            .parse::<i64>()
            .map_or(Value::Null, |n| Value::Number(n.into())),
        AstValue::Boolean(flag) => Value::Bool(*flag),
        AstValue::List(items) => {
            Value::Array(items.iter().map(|v| to_json(v, variables)).collect())
        }
        AstValue::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, v)| (name.to_string(), to_json(v, variables)))
                .collect(),
        ),
    }
}
