//! The sandbox behaves like the real APIs: its schemas are faithful subsets of the real ones
//! (every type, field, argument and enum value it serves exists in the real schema with the
//! same type, so a document it accepts the real API accepts too; these checks skip, saying so,
//! when `../shared/upstream` is absent), and over HTTP it refuses what they refuse (no token,
//! revoked token, wrong password, invalid document, stale version) while its admin API seeds,
//! injects faults and reads results.

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

/// The sandbox served on a real socket, for the admin and API tests.
async fn served() -> (String, tokio_util::sync::CancellationToken) {
    let sandbox = sandbox::Sandbox::new(sandbox::SandboxConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(sandbox.serve(listener, stop.clone()));
    (base, stop)
}

#[tokio::test]
async fn the_admin_api_seeds_injects_faults_and_reads_results_over_http() {
    let (base, stop) = served().await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .put(format!("{base}/admin/ct/orders"))
        .json(&serde_json::json!({ "orderNumber": "HD_1", "orderState": "Open" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    // A client-credentials token, then an update at the right version.
    let token: serde_json::Value = http
        .post(format!("{base}/ct/oauth/token"))
        .basic_auth("sandbox", Some("sandbox-secret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "manage_orders:sandbox-project"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap().to_owned();
    let update = |version: u64| {
        http.post(format!("{base}/ct/sandbox-project/graphql"))
            .bearer_auth(&bearer)
            .json(&serde_json::json!({
                "query": "mutation($id: String!, $v: Long!) { updateOrder(id: $id, version: $v, actions: [{ changeOrderState: { orderState: Confirmed } }]) { version orderState } }",
                "variables": { "id": id, "v": version }
            }))
            .send()
    };
    let done: serde_json::Value = update(1).await.unwrap().json().await.unwrap();
    assert_eq!(
        done["data"]["updateOrder"],
        serde_json::json!({"version": 2, "orderState": "Confirmed"})
    );

    // A stale version: 409 with the code and the current version.
    let stale = update(1).await.unwrap();
    assert_eq!(stale.status(), 409);
    let stale: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(
        stale["errors"][0]["extensions"]["code"],
        "ConcurrentModification"
    );
    assert_eq!(stale["errors"][0]["extensions"]["currentVersion"], 2);

    // An injected burst, then the history and the call counts.
    let fault = http
        .put(format!("{base}/admin/faults/ct-graphql"))
        .json(&serde_json::json!({ "failNext": 1, "status": 502 }))
        .send()
        .await
        .unwrap();
    assert_eq!(fault.status(), 204);
    assert_eq!(update(2).await.unwrap().status(), 502);
    let read: serde_json::Value = http
        .get(format!("{base}/admin/ct/orders/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["order"]["version"], 2);
    assert_eq!(read["history"].as_array().unwrap().len(), 1);
    let calls: serde_json::Value = http
        .get(format!("{base}/admin/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls["ct-graphql"], 3);
    assert_eq!(calls["ct-token"], 1);
    stop.cancel();
}

#[tokio::test]
async fn invalid_documents_and_expired_tokens_are_refused_like_the_real_apis() {
    let (base, stop) = served().await;
    let http = reqwest::Client::new();
    let no_token = http
        .post(format!("{base}/fluent/graphql"))
        .json(&serde_json::json!({ "query": "{ order(ref: \"x\") { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let token: serde_json::Value = http
        .post(format!("{base}/fluent/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("scope", "api"),
            ("client_id", "sandbox"),
            ("client_secret", "sandbox-secret"),
            ("username", "sandbox-user"),
            ("password", "sandbox-password"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap();
    let invalid = http
        .post(format!("{base}/fluent/graphql"))
        .bearer_auth(bearer)
        .json(&serde_json::json!({ "query": "{ order(ref: \"x\") { id colour } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let body: serde_json::Value = invalid.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );
    let wrong_password = http
        .post(format!("{base}/fluent/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "sandbox"),
            ("client_secret", "sandbox-secret"),
            ("username", "sandbox-user"),
            ("password", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_password.status(), 400);
    http.post(format!("{base}/admin/tokens/revoke"))
        .send()
        .await
        .unwrap();
    let revoked = http
        .post(format!("{base}/fluent/graphql"))
        .bearer_auth(bearer)
        .json(&serde_json::json!({ "query": "{ order(ref: \"x\") { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 401);
    stop.cancel();
}
