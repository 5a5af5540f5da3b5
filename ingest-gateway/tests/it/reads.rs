//! Reads of events, deliveries, attempts and the DLQ, and replay: the filter, paging and
//! tenant-scoping semantics. The rows are inserted here, backdated, because a time window needs
//! rows from hours ago; that the API reads what fan-out and the delivery-consumer really write
//! is `platform-tests`' `reads` test, which inserts nothing by hand.

use std::time::Duration;

use crate::common::{App, drain};
use chrono::{DateTime, Utc};
use rdkafka::Message as _;
use reqwest::Method;
use serde_json::json;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::DeliveryRecord;

struct Seed {
    event: EventId,
    endpoint: EndpointId,
    delivery: DeliveryId,
}

/// An event with one delivery to `endpoint`, as fan-out records them.
async fn seed(
    app: &App,
    tenant: &TenantId,
    endpoint: &EndpointId,
    event_type: &str,
    at: DateTime<Utc>,
    status: &str,
) -> anyhow::Result<Seed> {
    let db = app.env.db().await?;
    let event = EventId::new();
    let delivery = DeliveryId::derive(&event, endpoint);
    db.execute(
        "INSERT INTO events (id, tenant_id, event_type, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[&event, tenant, &event_type, &r#"{"n": 1}"#, &at],
    )
    .await?;
    db.execute(
        "INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, event_type, status, attempts, last_status_code, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 2, 500, $7, $7)",
        &[&delivery, tenant, &event, endpoint, &event_type, &status, &at],
    )
    .await?;
    for attempt in 1..=2i32 {
        db.execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, tenant_id, endpoint_id, started_at, duration_ms, status_code, error_class)
             VALUES ($1, $2, $3, $4, $5, 12, 500, 'http5xx')",
            &[&delivery, &attempt, tenant, endpoint, &at],
        )
        .await?;
    }
    Ok(Seed {
        event,
        endpoint: *endpoint,
        delivery,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_deliveries_and_attempts() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let other = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let ep: EndpointId = app
        .create_endpoint(&tenant, "https://e.example.com")
        .await?["id"]
        .as_str()
        .expect("id")
        .parse()?;
    let t0 = Utc::now() - chrono::Duration::hours(3);
    let paid = seed(&app, &tenant, &ep, "invoice.paid", t0, "delivered").await?;
    let _created = seed(
        &app,
        &tenant,
        &ep,
        "invoice.created",
        t0 + chrono::Duration::hours(1),
        "retrying",
    )
    .await?;
    let late = seed(
        &app,
        &tenant,
        &ep,
        "invoice.paid",
        t0 + chrono::Duration::hours(2),
        "pending",
    )
    .await?;

    let base = format!("/v1/tenants/{tenant}/events");
    let (status, all) = app.json(Method::GET, &base, Some(&token), None).await?;
    assert_eq!(status, 200);
    assert_eq!(all["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(all["data"][0]["id"], late.event.to_string(), "newest first");
    let (_, typed) = app
        .json(
            Method::GET,
            &format!("{base}?type=invoice.paid"),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(typed["data"].as_array().map(Vec::len), Some(2));
    let from =
        (t0 + chrono::Duration::minutes(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to =
        (t0 + chrono::Duration::minutes(90)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, window) = app
        .json(
            Method::GET,
            &format!("{base}?from={from}&to={to}"),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{window}");
    assert_eq!(window["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(window["data"][0]["event_type"], "invoice.created");
    assert_eq!(
        app.json(
            Method::GET,
            &format!("{base}?from=yesterday"),
            Some(&token),
            None
        )
        .await?
        .0,
        400
    );

    // One event with its deliveries; another tenant sees nothing.
    let (status, event) = app
        .json(
            Method::GET,
            &format!("/v1/events/{}", paid.event),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["deliveries"][0]["id"], paid.delivery.to_string());
    let other_token = app.tenant_token(&other);
    for path in [
        format!("/v1/events/{}", paid.event),
        format!("/v1/events/{}/deliveries", paid.event),
        format!("/v1/deliveries/{}", paid.delivery),
        format!("/v1/deliveries/{}/attempts", paid.delivery),
    ] {
        assert_eq!(
            app.json(Method::GET, &path, Some(&other_token), None)
                .await?
                .0,
            404,
            "{path}"
        );
        assert_eq!(
            app.json(Method::GET, &path, Some(&token), None).await?.0,
            200,
            "{path}"
        );
    }
    let (_, deliveries) = app
        .json(
            Method::GET,
            &format!(
                "/v1/events/{}/deliveries?endpoint_id={}",
                paid.event, paid.endpoint
            ),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(deliveries["data"].as_array().map(Vec::len), Some(1));
    let (_, none) = app
        .json(
            Method::GET,
            &format!(
                "/v1/events/{}/deliveries?endpoint_id={}",
                paid.event,
                EndpointId::new()
            ),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(none["data"].as_array().map(Vec::len), Some(0));
    let (_, attempts) = app
        .json(
            Method::GET,
            &format!("/v1/deliveries/{}/attempts", paid.delivery),
            Some(&token),
            None,
        )
        .await?;
    let numbers: Vec<u64> = attempts["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|a| a["attempt"].as_u64())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(
        app.json(
            Method::GET,
            &format!("/v1/events/{}", EventId::new()),
            Some(&token),
            None
        )
        .await?
        .0,
        404
    );
    assert_eq!(
        app.json(Method::GET, "/v1/events/not-an-id", Some(&token), None)
            .await?
            .0,
        404
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_is_per_tenant_and_operator_sees_all() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let a = app.create_tenant().await?;
    let b = app.create_tenant().await?;
    let ep_a: EndpointId = app.create_endpoint(&a, "https://a.example.com").await?["id"]
        .as_str()
        .expect("id")
        .parse()?;
    let ep_b: EndpointId = app.create_endpoint(&b, "https://b.example.com").await?["id"]
        .as_str()
        .expect("id")
        .parse()?;
    let now = Utc::now();
    let dead_a = seed(&app, &a, &ep_a, "x", now, "dead_lettered").await?;
    seed(&app, &a, &ep_a, "x", now, "delivered").await?;
    let dead_b = seed(&app, &b, &ep_b, "x", now, "dead_lettered").await?;

    let (_, mine) = app
        .json(Method::GET, "/v1/dlq", Some(&app.tenant_token(&a)), None)
        .await?;
    let ids: Vec<&str> = mine["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, [dead_a.delivery.to_string()]);
    let (_, all) = app
        .json(Method::GET, "/v1/dlq", Some(&app.operator), None)
        .await?;
    assert_eq!(all["data"].as_array().map(Vec::len), Some(2));
    let (_, only_b) = app
        .json(
            Method::GET,
            &format!("/v1/dlq?tenant_id={b}"),
            Some(&app.operator),
            None,
        )
        .await?;
    assert_eq!(only_b["data"][0]["id"], dead_b.delivery.to_string());
    let (_, by_endpoint) = app
        .json(
            Method::GET,
            &format!("/v1/dlq?endpoint_id={ep_b}"),
            Some(&app.tenant_token(&a)),
            None,
        )
        .await?;
    assert_eq!(
        by_endpoint["data"].as_array().map(Vec::len),
        Some(0),
        "A cannot see B's DLQ through a filter"
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reenqueues_with_the_same_delivery_id() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    let tenant = app.create_tenant().await?;
    let token = app.tenant_token(&tenant);
    let ep: EndpointId = app
        .create_endpoint(&tenant, "https://e.example.com")
        .await?["id"]
        .as_str()
        .expect("id")
        .parse()?;
    let dead = seed(
        &app,
        &tenant,
        &ep,
        "invoice.paid",
        Utc::now(),
        "dead_lettered",
    )
    .await?;
    let consumer = app.consumer(app.env.catalog().deliveries())?;

    let path = format!("/v1/deliveries/{}:replay", dead.delivery);
    assert_eq!(
        app.json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"reason": ""}))
        )
        .await?
        .0,
        422
    );
    assert_eq!(
        app.json(
            Method::POST,
            &path,
            Some(&app.tenant_token(&app.create_tenant().await?)),
            Some(json!({"reason": "x"}))
        )
        .await?
        .0,
        404
    );
    assert_eq!(
        app.json(
            Method::POST,
            &format!("/v1/deliveries/{}:explode", dead.delivery),
            Some(&token),
            Some(json!({"reason": "x"}))
        )
        .await?
        .0,
        404
    );
    let (status, body) = app
        .json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"reason": "endpoint fixed"})),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["delivery_id"], dead.delivery.to_string());

    let records = drain(&consumer, 1, Duration::from_secs(5)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].key(),
        Some(ep.to_string().as_bytes()),
        "keyed by endpoint"
    );
    let record: DeliveryRecord = serde_json::from_slice(records[0].payload().expect("payload"))?;
    assert_eq!(record.delivery_id, dead.delivery, "the webhook-id is kept");
    assert_eq!(record.event_id, dead.event);
    assert_eq!(record.attempt, 1);
    let replay = record.replay.expect("replay info");
    assert_eq!(replay.reason, "endpoint fixed");
    assert_eq!(
        replay.replay_id,
        body["replay_id"].as_str().expect("replay id")
    );

    let db = app.env.db().await?;
    let row = db
        .query_one("SELECT requested_by, reason, count FROM replays", &[])
        .await?;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, i32>(2)
        ),
        ("test".into(), "endpoint fixed".into(), 1)
    );
    let status: String = db
        .query_one(
            "SELECT status FROM deliveries WHERE id = $1",
            &[&dead.delivery],
        )
        .await?
        .get(0);
    assert_eq!(status, "pending");

    // Its endpoint deleted, the delivery has nowhere to go: 409, and nothing is sent or changed.
    let (deleted, _) = app
        .json(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}/endpoints/{ep}"),
            Some(&token),
            None,
        )
        .await?;
    assert_eq!(deleted, 204);
    let (status, body) = app
        .json(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"reason": "again"})),
        )
        .await?;
    assert_eq!(status, 409, "{body}");
    assert!(drain(&consumer, 1, Duration::from_secs(3)).await.is_empty());
    let replays: i64 = db
        .query_one("SELECT count(*) FROM replays", &[])
        .await?
        .get(0);
    assert_eq!(replays, 1, "the refused replay is not recorded");
    app.stop().await
}
