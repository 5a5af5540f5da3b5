//! The API reads what the services themselves wrote: fan-out's event and delivery rows, the
//! delivery-consumer's attempts and outcomes, the DLQ after the retry tiers — no row inserted by
//! hand. (`ingest-gateway`'s reads tests insert backdated rows to pin the filter and paging
//! semantics; this test is what keeps those rows honest.)

use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::platform::{Behaviour, Platform, Receiver};
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};

/// GETs `path` as `token`, which must answer 200.
async fn get(p: &Platform, token: &str, path: &str) -> anyhow::Result<Value> {
    let (s, v) = p.call(Method::GET, path, token, None, None).await?;
    anyhow::ensure!(s == StatusCode::OK, "GET {path}: {s} {v}");
    Ok(v)
}

/// Waits until the event's one delivery is `status` (404 counts as "not yet": the event row
/// appears when fan-out has run); returns the delivery.
async fn settled(p: &Platform, token: &str, event: &str, status: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let path = format!("/v1/events/{event}/deliveries");
        let (s, page) = p.call(Method::GET, &path, token, None, None).await?;
        // 404 until fan-out has written the event row: the publish answered before that.
        anyhow::ensure!(
            s == StatusCode::OK || s == StatusCode::NOT_FOUND,
            "GET {path}: {s} {page}"
        );
        if s == StatusCode::OK && page["data"][0]["status"] == status {
            anyhow::ensure!(page["data"].as_array().map(Vec::len) == Some(1), "{page}");
            return Ok(page["data"][0].clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "not {status}: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_show_what_the_services_wrote() -> anyhow::Result<()> {
    let p = Platform::start(World::new().await?).await?;
    let (receiver, addr) = Receiver::start().await?;
    let flaky = Behaviour {
        fail: 2,
        delay: Duration::ZERO,
    };
    receiver.set("flaky", flaky);
    receiver.set(
        "down",
        Behaviour {
            fail: usize::MAX,
            delay: Duration::ZERO,
        },
    );
    let (t, token) = p.tenant().await?;
    let (flaky_ep, _) = p
        .endpoint(&t, &token, format!("http://{addr}/flaky"), "order.*")
        .await?;
    let (down_ep, _) = p
        .endpoint(&t, &token, format!("http://{addr}/down"), "invoice.*")
        .await?;
    let order = p
        .publish(&t, &token, "order.created", json!({"n": 1}), None)
        .await?;
    let invoice = p
        .publish(&t, &token, "invoice.paid", json!({"n": 2}), None)
        .await?;

    // Two 500s, then 200 (the 1 s / 2 s test schedule): three attempts, one delivery.
    let delivered = settled(&p, &token, &order, "delivered").await?;
    assert_eq!(delivered["endpoint_id"], flaky_ep.as_str());
    assert_eq!(delivered["event_type"], "order.created");
    assert_eq!(delivered["attempts"], 3, "{delivered}");
    assert_eq!(delivered["last_status_code"], 200, "{delivered}");
    assert!(delivered["delivered_at"].is_string(), "{delivered}");
    let id = delivered["id"].as_str().unwrap_or_default().to_owned();
    let attempts = get(&p, &token, &format!("/v1/deliveries/{id}/attempts")).await?;
    let seen: Vec<(Value, Value, Value)> = attempts["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| {
                    (
                        a["attempt"].clone(),
                        a["status_code"].clone(),
                        a["error_class"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        seen,
        [
            (json!(1), json!(500), json!("http5xx")),
            (json!(2), json!(500), json!("http5xx")),
            (json!(3), json!(200), Value::Null),
        ],
        "{attempts}"
    );
    // The receiver saw the same three requests, all under the delivery's id.
    let got = receiver.requests("flaky");
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, h, _)| h["webhook-id"] == id.as_str()));

    // The event as fan-out stored it, with its delivery.
    let event = get(&p, &token, &format!("/v1/events/{order}")).await?;
    assert_eq!(event["event_type"], "order.created");
    assert_eq!(event["payload"], json!({"n": 1}), "{event}");
    assert_eq!(event["deliveries"][0]["id"], id.as_str(), "{event}");
    let listed = get(
        &p,
        &token,
        &format!("/v1/tenants/{t}/events?type=order.created"),
    )
    .await?;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["data"][0]["id"], order.as_str());

    // Never answered well: three failed attempts, then the DLQ as the delivery-consumer put it.
    let dead = settled(&p, &token, &invoice, "dead_lettered").await?;
    assert_eq!(dead["endpoint_id"], down_ep.as_str());
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["last_error_class"], "http5xx", "{dead}");
    let dlq = get(&p, &token, "/v1/dlq").await?;
    let letters = dlq["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1, "{dlq}");
    assert_eq!(letters[0]["id"], dead["id"], "{dlq}");
    // The other tenant's view of the same rows is empty.
    let (_, other) = p.tenant().await?;
    let (s, _) = p
        .call(
            Method::GET,
            &format!("/v1/events/{order}"),
            &other,
            None,
            None,
        )
        .await?;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let theirs = get(&p, &other, "/v1/dlq").await?;
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(0), "{theirs}");
    p.world.cleanup().await
}
