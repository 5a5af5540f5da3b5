//! `schemas/openapi.yaml` agrees with the router: every route is documented and every
//! documented operation is served (checked route by route against the running gateway), every
//! example validates against its schema, and `/openapi.json` serves the document.

use std::collections::BTreeSet;

use crate::common::App;
use reqwest::Method;
use serde_json::Value;

fn document() -> &'static Value {
    ingest_gateway::openapi_document()
}

fn documented() -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in document()["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[test]
fn every_route_is_documented_and_every_operation_exists() {
    let routes: BTreeSet<(String, String)> = ingest_gateway::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let docs = documented();
    let undocumented: Vec<_> = routes.difference(&docs).collect();
    let phantom: Vec<_> = docs.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}"
    );
    assert!(
        phantom.is_empty(),
        "openapi.yaml documents routes the router lacks: {phantom:?}"
    );
}

/// Replaces every local `$ref` with its target, so a fragment validates on its own.
fn inline(node: &Value, root: &Value) -> Value {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let target = root
                    .pointer(r.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("dangling {r}"));
                return inline(target, root);
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), inline(v, root)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| inline(v, root)).collect()),
        other => other.clone(),
    }
}

fn check_examples(node: &Value, root: &Value, at: &str, checked: &mut usize) {
    if let Value::Object(map) = node {
        if let (Some(schema), Some(example)) = (map.get("schema"), map.get("example")) {
            let schema = inline(schema, root);
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{at}: invalid schema: {e}"));
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{at}: example does not match its schema: {errors:?}"
            );
            *checked += 1;
        }
        for (k, v) in map {
            check_examples(v, root, &format!("{at}/{k}"), checked);
        }
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    let root = document();
    assert_eq!(root["openapi"], "3.1.0");
    let mut checked = 0;
    check_examples(root, root, "", &mut checked);
    assert!(checked > 40, "only {checked} examples found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_documented_operation() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let served: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(&served, document());
    // With placeholder ids every documented operation must reach its handler: the answer may
    // be 2xx, 4xx for the ids or body, but never the router's "no such route" or "method".
    for (method, path) in documented() {
        let concrete = path
            .replace("{tenant_id}", &shared::ids::TenantId::new().to_string())
            .replace("{endpoint_id}", &shared::ids::EndpointId::new().to_string())
            .replace(
                "{subscription_id}",
                &shared::ids::SubscriptionId::new().to_string(),
            )
            .replace("{event_id}", &shared::ids::EventId::new().to_string())
            .replace(
                "{delivery_id}",
                &shared::ids::EventId::new()
                    .to_string()
                    .replace("evt_", "dlv_"),
            );
        let method = Method::from_bytes(method.as_bytes())?;
        let resp = app
            .call(
                method.clone(),
                &concrete,
                Some(&app.operator),
                Some(serde_json::json!({})),
            )
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            status != 404 || body["error"]["message"] != "route not found",
            "{method} {path} is not routed"
        );
        assert!(status < 500, "{method} {path} answered {status}: {body}");
    }
    app.stop().await
}
