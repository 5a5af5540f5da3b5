//! Publishing against the real broker: the envelope on `events` (key, headers, schema), the 202
//! only after the ack, idempotency under concurrency, batches, and input errors.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{App, drain, payload_json};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use reqwest::Method;
use serde_json::{Value, json};
use shared::records::EventEnvelope;

const QUIET: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_the_envelope_after_the_ack() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let consumer = app.consumer(app.env.catalog().events())?;
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let (status, body) = app
        .json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"event_type": "invoice.paid", "payload": {"amount": 42, "lines": [1, 2]}})),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    let event_id = body["event_id"].as_str().expect("event id").to_owned();
    assert_eq!(body["duplicate"], false);
    let (status, ordered) = app
        .json(
            Method::POST,
            &path,
            Some(&token),
            Some(
                json!({"event_type": "invoice.paid", "payload": {}, "ordering_key": "customer-7"}),
            ),
        )
        .await?;
    assert_eq!(status, 202, "{ordered}");

    let records = drain(&consumer, 2, QUIET).await;
    assert_eq!(records.len(), 2);
    let first = &records
        .iter()
        .find(|m| payload_json(m)["event_id"] == event_id.as_str())
        .expect("first event");
    let envelope: EventEnvelope = serde_json::from_slice(first.payload().expect("payload"))?;
    assert_eq!(envelope.event_id.to_string(), event_id);
    assert_eq!(envelope.tenant_id, tenant);
    assert_eq!(envelope.event_type.as_str(), "invoice.paid");
    assert_eq!(
        Value::Object(envelope.payload.to_map()),
        json!({"amount": 42, "lines": [1, 2]})
    );
    assert_eq!(
        first.key(),
        Some(event_id.as_bytes()),
        "key is the event id without an ordering key"
    );
    let headers = first.headers().expect("headers");
    let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
    assert!(names.contains(&"traceparent"), "{names:?}");
    assert!(names.contains(&"harborhook-tenant-id"), "{names:?}");
    let second = records
        .iter()
        .find(|m| payload_json(m)["event_id"] == ordered["event_id"])
        .expect("second");
    assert_eq!(
        second.key(),
        Some(&b"customer-7"[..]),
        "the ordering key is the Kafka key"
    );

    // The published counter moved.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(&format!(
            "harborhook_events_published_total{{tenant_id=\"{tenant}\"}} 2"
        )),
        "{metrics}"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_yield_one_event() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let consumer = app.consumer(app.env.catalog().events())?;
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let body = json!({"event_type": "order.created", "payload": {"order": 1}});
    // A second gateway replica on the same database and broker.
    let replica_stop = tokio_util::sync::CancellationToken::new();
    let replica = ingest_gateway::start(app.config().clone(), replica_stop.clone()).await?;
    let replica_url = format!("http://{}{path}", replica.local_addr);

    // Twenty concurrent requests with one key, alternating replicas, half via the header and
    // half via the field.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let http = app.http.clone();
        let url = if i % 4 < 2 {
            app.url(&path)
        } else {
            replica_url.clone()
        };
        let token = token.clone();
        let mut body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = http.post(url).bearer_auth(token);
            if i % 2 == 0 {
                req = req.header("Idempotency-Key", "order-1");
            } else {
                body["idempotency_key"] = json!("order-1");
            }
            let resp = req.json(&body).send().await?;
            let status = resp.status().as_u16();
            Ok::<_, anyhow::Error>((status, resp.json::<Value>().await?))
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        let (status, body) = task.await??;
        // 409 ("still in progress") is allowed for a duplicate that outwaits the first; none here.
        assert_eq!(status, 202, "{body}");
        ids.insert(body["event_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(
        ids.len(),
        1,
        "one event id for one key across replicas: {ids:?}"
    );
    let records = drain(&consumer, 2, QUIET).await;
    assert_eq!(records.len(), 1, "exactly one record produced");
    replica_stop.cancel();
    replica.wait().await?;

    // The key reused for a different payload is refused; another key is a new event.
    let (status, err) = app
        .json(Method::POST, &path, Some(&token), Some(json!({"event_type": "order.created", "payload": {"order": 2}, "idempotency_key": "order-1"})))
        .await?;
    assert_eq!(status, 422, "{err}");
    let (status, other) = app
        .json(Method::POST, &path, Some(&token), Some(json!({"event_type": "order.created", "payload": {"order": 1}, "idempotency_key": "order-2"})))
        .await?;
    assert_eq!(status, 202);
    assert!(!ids.contains(other["event_id"].as_str().expect("id")));
    // The same key in another tenant is unrelated.
    let tenant_b = app.create_tenant().await?;
    let (status, b) = app
        .json(Method::POST, &format!("/v1/tenants/{tenant_b}/events:publish"), Some(&app.tenant_token(&tenant_b)),
            Some(json!({"event_type": "order.created", "payload": {"order": 1}, "idempotency_key": "order-1"})))
        .await?;
    assert_eq!(status, 202);
    assert_eq!(b["duplicate"], false);
    app.stop().await
}

/// Idempotency compares payloads as the bytes that are carried: the same text is a duplicate;
/// a payload that differs only in digits a double cannot hold, or only in key order, is another
/// request (the first once compared equal as doubles, and the second payload was dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_compares_payloads_as_written() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let send = |payload: &'static str| {
        let req = app
            .http
            .post(app.url(&path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"event_type":"a.b","idempotency_key":"big","payload":{payload}}}"#
            ));
        async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            anyhow::Ok((status, resp.json::<Value>().await?))
        }
    };
    let first_payload = r#"{"n":123456789012345678901234567890,"m":{"b":1,"a":2}}"#;
    let (status, first) = send(first_payload).await?;
    assert_eq!(status, 202, "{first}");
    let (status, again) = send(first_payload).await?;
    assert_eq!(
        (status, &again["duplicate"]),
        (202, &json!(true)),
        "{again}"
    );
    assert_eq!(again["event_id"], first["event_id"]);
    for other in [
        r#"{"n":123456789012345678901234567891,"m":{"b":1,"a":2}}"#,
        r#"{"m":{"a":2,"b":1},"n":123456789012345678901234567890}"#,
    ] {
        let (status, body) = send(other).await?;
        assert_eq!(
            status, 422,
            "another payload under the same key: {other}: {body}"
        );
    }
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_start_a_new_event() -> anyhow::Result<()> {
    let app = App::spawn_with(|c| c.idempotency.window = Duration::from_secs(1)).await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let body = json!({"event_type": "a.b", "payload": {}, "idempotency_key": "k"});
    let (_, first) = app
        .json(Method::POST, &path, Some(&token), Some(body.clone()))
        .await?;
    let (_, again) = app
        .json(Method::POST, &path, Some(&token), Some(body.clone()))
        .await?;
    assert_eq!(first["event_id"], again["event_id"]);
    assert_eq!(again["duplicate"], true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, later) = app
        .json(Method::POST, &path, Some(&token), Some(body))
        .await?;
    assert_eq!(status, 202);
    assert_ne!(
        first["event_id"], later["event_id"],
        "after the window the key starts a new event"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_input_errors() -> anyhow::Result<()> {
    let app = App::spawn_with(|c| c.gateway.max_body_bytes = 64 * 1024).await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let consumer = app.consumer(app.env.catalog().events())?;
    let path = format!("/v1/tenants/{tenant}/events:publish");
    let cases: Vec<(Value, u16)> = vec![
        (json!({"event_type": "", "payload": {}}), 422),
        (json!({"event_type": "has space", "payload": {}}), 422),
        (json!({"event_type": "x".repeat(256), "payload": {}}), 422),
        (json!({"event_type": "a", "payload": [1]}), 422),
        (json!({"event_type": "a", "payload": "text"}), 422),
        (
            json!({"event_type": "a", "payload": {}, "idempotency_key": ""}),
            422,
        ),
        (
            json!({"event_type": "a", "payload": {}, "ordering_key": "k".repeat(256)}),
            422,
        ),
        (json!({"event_type": "a"}), 400),
        (json!({"event_type": "a", "payload": {}, "extra": 1}), 400),
        (
            json!({"event_type": "a", "payload": {"big": "x".repeat(70 * 1024)}}),
            413,
        ),
    ];
    for (body, want) in cases {
        let (status, err) = app
            .json(Method::POST, &path, Some(&token), Some(body))
            .await?;
        assert_eq!(status, want, "{err}");
        assert!(
            err["error"]["code"].is_string() && err["error"]["details"].is_array(),
            "{err}"
        );
    }
    let resp = app
        .http
        .post(app.url(&path))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let resp = app
        .http
        .post(app.url(&path))
        .bearer_auth(&token)
        .body("event_type=a")
        .send()
        .await?;
    assert_eq!(resp.status(), 415);
    let resp = app
        .http
        .post(app.url(&path))
        .bearer_auth(&token)
        .header("Idempotency-Key", "a")
        .json(&json!({"event_type": "a", "payload": {}, "idempotency_key": "b"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 422, "header and field disagree");
    assert!(
        drain(&consumer, 1, QUIET).await.is_empty(),
        "no bad request produced anything"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_report_per_item_results() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let consumer = app.consumer(app.env.catalog().events())?;
    let path = format!("/v1/tenants/{tenant}/events:batch");
    let (status, body) = app
        .json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"events": [
                {"event_type": "a.one", "payload": {"n": 1}},
                {"event_type": "bad type", "payload": {}},
                {"event_type": "a.three", "payload": {"n": 3}, "idempotency_key": "b3"},
                {"event_type": "a.four", "payload": {}, "surprise": true}
            ]})),
        )
        .await?;
    assert_eq!(status, 207, "{body}");
    let results = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = results
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [202, 422, 202, 400]);
    assert!(results[0]["event_id"].is_string() && results[2]["event_id"].is_string());
    assert_eq!(
        drain(&consumer, 3, QUIET).await.len(),
        2,
        "only the valid items were produced"
    );

    let all_good: Vec<Value> = (0..500)
        .map(|i| json!({"event_type": "bulk", "payload": {"i": i}}))
        .collect();
    let (status, body) = app
        .json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"events": all_good})),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(drain(&consumer, 500, QUIET).await.len(), 500);
    let too_many: Vec<Value> = (0..501)
        .map(|_| json!({"event_type": "bulk", "payload": {}}))
        .collect();
    assert_eq!(
        app.json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"events": too_many}))
        )
        .await?
        .0,
        422
    );
    assert_eq!(
        app.json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"events": []}))
        )
        .await?
        .0,
        422
    );
    app.stop().await
}
