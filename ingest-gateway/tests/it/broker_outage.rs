//! With the broker down, publishing answers 503 with Retry-After (never 2xx), and works again
//! once the broker is back; what was answered 503 is not on `events` afterwards (a 503 means
//! "not published: retry", so a retry cannot make a second copy). The test runs its own nisshi broker on a free port, so stopping it
//! does not disturb other tests.

use std::time::{Duration, Instant};

use crate::common::App;
use reqwest::Method;
use serde_json::json;
use shared::testing::{BrokerDb, BrokerGuard, free_port, start_broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_means_503_then_recovery() -> anyhow::Result<()> {
    let port = free_port()?;
    let storage = BrokerDb::create().await?;
    let mut broker = BrokerGuard(start_broker(port, &storage.url)?);
    let app = App::spawn_with(|c| {
        c.kafka.bootstrap = format!("127.0.0.1:{port}");
        c.gateway.publish_timeout = Duration::from_secs(2);
    })
    .await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let body = json!({"event_type": "a.b", "payload": {"x": 1}});
    assert_eq!(
        app.json(Method::POST, &path, Some(&token), Some(body.clone()))
            .await?
            .0,
        202
    );

    broker.0.kill()?;
    broker.0.wait()?;
    let started = Instant::now();
    let resp = app
        .call(Method::POST, &path, Some(&token), Some(body.clone()))
        .await?;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the answer respects the publish deadline"
    );
    let err: serde_json::Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "unavailable");
    // With an idempotency key, the failed attempt does not block a retry with the same key.
    let keyed =
        json!({"event_type": "a.b", "payload": {"x": 2}, "idempotency_key": "during-outage"});
    assert_eq!(
        app.json(Method::POST, &path, Some(&token), Some(keyed.clone()))
            .await?
            .0,
        503
    );

    let restarted = BrokerGuard(start_broker(port, &storage.url)?);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, first) = loop {
        let (status, body) = app
            .json(Method::POST, &path, Some(&token), Some(keyed.clone()))
            .await?;
        if status == 202 || Instant::now() > deadline {
            break (status, body);
        }
        assert_eq!(status, 503, "while recovering, only 503: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        status, 202,
        "publishing works again after the broker returns: {first}"
    );
    let (status, again) = app
        .json(Method::POST, &path, Some(&token), Some(keyed))
        .await?;
    assert_eq!(
        (status, &again["event_id"]),
        (202, &first["event_id"]),
        "and the key still deduplicates"
    );
    // On `events`: the first event once, the keyed one once (its 503 attempt left nothing),
    // and nothing of the unkeyed publish answered 503 (its payload equals the first one's).
    let reader = app.consumer(app.env.catalog().events())?;
    let records = crate::common::drain(&reader, 10, Duration::from_secs(8)).await;
    let payloads: Vec<String> = records
        .iter()
        .filter_map(|m| {
            use rdkafka::Message as _;
            let v: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
            Some(v["payload"].to_string())
        })
        .collect();
    let count = |p: &str| payloads.iter().filter(|x| *x == p).count();
    assert_eq!(
        (count(r#"{"x":1}"#), count(r#"{"x":2}"#), payloads.len()),
        (1, 1, 2),
        "only what was answered 202 is on events: {payloads:?}"
    );
    app.stop().await?;
    drop(restarted);
    storage.drop_db().await
}
