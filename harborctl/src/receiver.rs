//! `harborctl receiver`: a webhook receiver for local use. It verifies each delivery's
//! signature (either scheme) with the endpoint's secret, remembers `webhook-id`s to spot
//! repeats, answers 2xx (or 401 when the signature is wrong), and logs one line per request.

#![allow(clippy::print_stdout)] // Its log is its output.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use shared::domain::SigningSecret;
use shared::signing::{legacy_signature, standard_signature};

use crate::CliError;

struct State {
    secret: SigningSecret,
    seen: Mutex<HashSet<String>>,
    json: bool,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Whether the signature headers verify `body` with `secret`, and the scheme used.
pub fn verifies(secret: &SigningSecret, h: &HeaderMap, body: &[u8]) -> (bool, &'static str) {
    let id = header(h, "webhook-id");
    // The original scheme's header decides: such an endpoint with `signature_v1a` also gets a
    // `webhook-signature`, holding only `v1a` signatures, which a secret cannot check.
    if !h.contains_key("x-harborhook-signature") {
        let ts = header(h, "webhook-timestamp").parse().unwrap_or(i64::MIN);
        let expected = standard_signature(&[secret], id, ts, body);
        let ok = header(h, "webhook-signature")
            .split(' ')
            .any(|s| s == expected);
        (ok, "standard_webhooks")
    } else {
        let ts = header(h, "x-harborhook-timestamp")
            .parse()
            .unwrap_or(i64::MIN);
        let expected = legacy_signature(&[secret], ts, body);
        let ok = header(h, "x-harborhook-signature")
            .split(' ')
            .any(|s| s == expected);
        (ok, "harborhook_legacy")
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (ok, scheme) = verifies(&state.secret, &headers, &body);
    let id = header(&headers, "webhook-id").to_owned();
    let repeat = !state
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id.clone());
    let payload: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if state.json {
        println!(
            "{}",
            json!({"webhook_id": id, "verified": ok, "scheme": scheme, "repeat": repeat, "payload": payload})
        );
    } else {
        println!(
            "[receiver] {} {id}{} {payload}",
            if ok { "verified" } else { "BAD SIGNATURE" },
            if repeat { " (repeat)" } else { "" }
        );
    }
    if ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

pub async fn run(listen: SocketAddr, secret: &str, json: bool) -> Result<(), CliError> {
    let secret: SigningSecret = secret.parse().map_err(|e| {
        CliError::usage(
            format!("--secret: {e}"),
            "pass the endpoint's whsec_… secret",
        )
    })?;
    let state = Arc::new(State {
        secret,
        seen: Mutex::new(HashSet::new()),
        json,
    });
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        CliError::failed(
            format!("listening on {listen}: {e}"),
            "pick another --listen address",
        )
    })?;
    println!("[receiver] listening on http://{listen}/ (any path)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| CliError::failed(e.to_string(), ""))
}
