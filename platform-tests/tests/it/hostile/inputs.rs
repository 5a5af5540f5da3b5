//! Attacks through what a tenant or a direct producer sends: values no field can hold, payloads
//! at the size limit, envelopes the pipeline cannot store, another tenant's ids, garbage on the
//! internal topics.

use std::time::Duration;

use crate::common::hostile::{Answer, status_of};
use reqwest::Method;
use serde_json::{Value, json};
use shared::ids::{EventId, TenantId};

use super::{Suite, event_id};

/// NUL in a payload value and in a key: accepted and carried faithfully (PostgreSQL stores the
/// JSON text, not jsonb), the receiver gets exactly the bytes published.
pub(super) async fn nul_in_payloads(s: &Suite) -> anyhow::Result<()> {
    s.endpoint("sink", "nul.*", json!({})).await?;
    for text in [
        r#"{"event_type":"nul.value","payload":{"x":"\u0000"}}"#,
        r#"{"event_type":"nul.key","payload":{"\u0000":1, "n": 123456789012345678901234567890}}"#,
    ] {
        let (status, v) = s.publish_raw(text).await?;
        anyhow::ensure!(status == 202, "{text}: {status} {v}");
        let payload = &text[text.find("\"payload\":").unwrap_or(0) + 10..text.len() - 1];
        s.receiver
            .wait_for("sink", Duration::from_secs(10), |b| b == payload.as_bytes())
            .await?;
    }
    Ok(())
}

/// A rate limit of 1e-20/s: refused by the API; held by a row all the same (an older release,
/// a manual update), it is served without a panic.
pub(super) async fn absurd_rate_limit(s: &Suite) -> anyhow::Result<()> {
    let (api_status, api_body) = status_of(
        &s.p,
        Method::POST,
        &format!("/v1/tenants/{}/endpoints", s.attacker),
        &s.token,
        Some(json!({"url": s.url("slowrate-api"), "rate_limit_per_sec": 1e-20})),
    )
    .await?;
    let id = s.endpoint("slowrate", "slowrate.*", json!({})).await?;
    let uuid = id.trim_start_matches("ep_");
    s.p.world
        .db
        .execute(
            &format!("UPDATE endpoints SET rate_limit_per_sec = 1e-20 WHERE id = '{uuid}'::uuid"),
            &[],
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // the caches reload on NOTIFY
    for n in 0..3 {
        let (st, v) = s
            .publish_raw(&format!(
                r#"{{"event_type":"slowrate.x","payload":{{"n":{n}}}}}"#
            ))
            .await?;
        anyhow::ensure!(st == 202, "{st} {v}");
    }
    s.receiver
        .wait_for("slowrate", Duration::from_secs(10), |_| true)
        .await?;
    // Served at the slowest rate the dispatcher holds (one per hour): the first of the three
    // now, the others not for a long time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = s.receiver.bodies("slowrate").len();
    anyhow::ensure!(sent == 1, "{sent} of 3 sent at 1e-20/s within 3 s");
    anyhow::ensure!(
        api_status == 422,
        "API accepted 1e-20/s: {api_status} {api_body}"
    );
    Ok(())
}

/// Payloads at the limit derived from `kafka.message_max_bytes`: one byte over is 413; exactly
/// at it, the event fans out, fails, is retried through both tiers with its attempt history
/// and a 1 KiB excerpt of control characters each time, and lands in the DLQ.
pub(super) async fn payloads_at_the_size_limit(s: &Suite) -> anyhow::Result<()> {
    let mut config = shared::Config::default();
    config.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(2)];
    let max = config.record_limits().max_payload_bytes();
    s.endpoint("big", "big.*", json!({})).await?;
    s.receiver
        .answer("big", Answer::Status(500, vec![1u8; 4096]));
    let filler = |n: usize| format!(r#"{{"f":"{}"}}"#, "x".repeat(n - 8));
    let over = format!(r#"{{"event_type":"big.x","payload":{}}}"#, filler(max + 1));
    let (st, v) = s.publish_raw(&over).await?;
    anyhow::ensure!(
        st == 413 && v["error"]["code"] == "payload_too_large",
        "over the limit: {st} {v}"
    );
    let at = format!(r#"{{"event_type":"big.x","payload":{}}}"#, filler(max));
    let (st, v) = s.publish_raw(&at).await?;
    anyhow::ensure!(st == 202, "at the limit: {st} {v}");
    let event = event_id(&v);
    s.eventually(40, "dead-lettered after 3 attempts", || async {
        let (_, page) = status_of(
            &s.p,
            Method::GET,
            &format!("/v1/events/{event}/deliveries"),
            &s.token,
            None,
        )
        .await?;
        Ok(page["data"][0]["status"] == "dead_lettered")
    })
    .await?;
    anyhow::ensure!(
        s.receiver.bodies("big").len() >= 3,
        "retried through both tiers"
    );
    // Every record it became was taken by the broker: none refused on the way.
    let (_, metrics) = s.p.ops_get(2, "/metrics").await?;
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("harborhook_outcome_records_refused_total") && !l.ends_with(" 0"))
        .collect();
    anyhow::ensure!(refused.is_empty(), "outcome records refused: {refused:?}");
    // A replay with the longest reason (1000 emoji, 4 bytes each) still fits, and is sent.
    let delivery = s.first_delivery(&event).await?;
    let before = s.receiver.bodies("big").len();
    let (st, v) = status_of(
        &s.p,
        Method::POST,
        &format!("/v1/deliveries/{delivery}:replay"),
        &s.token,
        Some(json!({"reason": "\u{1F600}".repeat(1000)})),
    )
    .await?;
    anyhow::ensure!(st == 202, "replay with the longest reason: {st} {v}");
    s.eventually(10, "the replay is sent", || async {
        Ok(s.receiver.bodies("big").len() > before)
    })
    .await
}

/// Direct-producer envelopes the pipeline cannot store or deliver: each lands on
/// `events.invalid` with its reason; none stalls fan-out.
pub(super) async fn bad_direct_producer_envelopes(s: &Suite) -> anyhow::Result<()> {
    let topic = s.p.world.env.catalog().events().to_owned();
    let t = s.attacker;
    let envelope = |extra: Value| {
        let mut e = json!({"schema_version": 1, "event_id": EventId::new(), "tenant_id": t,
            "event_type": "direct.x", "payload": {"a": 1}, "occurred_at": chrono::Utc::now()});
        if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
            e.extend(x.clone());
        }
        serde_json::to_vec(&e).unwrap_or_default()
    };
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let raw_payload = |payload: &str| {
        format!(
            r#"{{"schema_version":1,"event_id":"{}","tenant_id":"{t}","event_type":"direct.x","payload":{payload},"occurred_at":"2026-12-01T00:00:00Z"}}"#,
            EventId::new()
        )
        .into_bytes()
    };
    // A Kafka key as large as the broker takes: the quarantine record keeps its first KiB.
    let huge_key = format!("attack-huge-key{}", "k".repeat(600_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            &huge_key,
            envelope(json!({"tenant_id": TenantId::new()})),
            "unknown tenant",
        ),
        (
            "attack-empty-key",
            envelope(json!({"idempotency_key": ""})),
            "idempotency_key",
        ),
        (
            "attack-long-key",
            envelope(json!({"idempotency_key": "k".repeat(256)})),
            "idempotency_key",
        ),
        (
            "attack-control-ordering",
            envelope(json!({"ordering_key": "a\u{1}b"})),
            "ordering_key",
        ),
        (
            "attack-year",
            envelope(json!({"occurred_at": "+20000-01-01T00:00:00Z"})),
            "occurred_at",
        ),
        ("attack-array", envelope(json!({"payload": [1]})), "payload"),
        ("attack-dup", raw_payload(r#"{"a":1,"a":2}"#), "twice"),
        (
            "attack-deep",
            raw_payload(&format!(r#"{{"a":{deep}}}"#)),
            "nested",
        ),
        (
            "attack-binary",
            vec![0xff, 0xfe, 0x00, 0x01],
            "not a valid event envelope",
        ),
        (
            "attack-tenant",
            envelope(json!({"tenant_id": TenantId::new()})),
            "unknown tenant",
        ),
        (
            "attack-huge",
            raw_payload(&format!(r#"{{"f":"{}"}}"#, "x".repeat(990_000))),
            "can be delivered",
        ),
    ];
    for (key, value, _) in &cases {
        s.produce(&topic, key, value).await?;
    }
    let reasons = s.invalid_reasons(cases.len()).await?;
    for (key, _, why) in &cases {
        let reason = reasons.get(&key[..key.len().min(1024)]).ok_or_else(|| {
            anyhow::anyhow!(
                "{} not on events.invalid ({:?})",
                &key[..key.len().min(40)],
                reasons.values()
            )
        })?;
        anyhow::ensure!(
            reason.contains(why),
            "{}: reason `{reason}` lacks `{why}`",
            &key[..key.len().min(40)]
        );
    }
    Ok(())
}

/// Event ids are the tenant's: a direct producer reusing the victim's event id makes its own
/// event, which touches nothing of the victim's (after), and an id the attacker used first
/// does not stop the victim's event with that id (before, "squatting").
pub(super) async fn another_tenants_event_id(s: &Suite) -> anyhow::Result<()> {
    let topic = s.p.world.env.catalog().events().to_owned();
    let direct = |tenant: TenantId, id: &str, event_type: &str, payload: Value| {
        serde_json::to_vec(
            &json!({"schema_version": 1, "event_id": id, "tenant_id": tenant,
            "event_type": event_type, "payload": payload, "occurred_at": chrono::Utc::now()}),
        )
    };
    s.endpoint("thief", "theft.*", json!({})).await?;

    // After: the victim's id, reused.
    let (st, v) = status_of(
        &s.p,
        Method::POST,
        &format!("/v1/tenants/{}/events:publish", s.victim.tenant),
        &s.victim.token,
        Some(json!({"event_type": "victim.owned", "payload": {"mine": true}})),
    )
    .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let stolen = event_id(&v);
    s.receiver
        .wait_for("victim", Duration::from_secs(10), |b| {
            b == br#"{"mine":true}"#
        })
        .await?;
    let value = direct(s.attacker, &stolen, "theft.x", json!({"stolen": 1}))?;
    s.produce(&topic, "attack-stolen-id", &value).await?;
    s.receiver
        .wait_for("thief", Duration::from_secs(10), |b| {
            b == br#"{"stolen":1}"#
        })
        .await?;

    // Before: the attacker takes an id the victim's producer will use.
    let squatted = EventId::new().to_string();
    let value = direct(s.attacker, &squatted, "theft.x", json!({"stolen": 2}))?;
    s.produce(&topic, "attack-squat", &value).await?;
    s.receiver
        .wait_for("thief", Duration::from_secs(10), |b| {
            b == br#"{"stolen":2}"#
        })
        .await?;
    let value = direct(
        s.victim.tenant,
        &squatted,
        "victim.direct",
        json!({"mine": 2}),
    )?;
    s.produce(&topic, "victim-direct", &value).await?;
    s.receiver
        .wait_for("victim", Duration::from_secs(10), |b| b == br#"{"mine":2}"#)
        .await?;

    // Each tenant sees its own event, with its own deliveries only.
    for (id, token, tenant, payload) in [
        (
            &stolen,
            &s.victim.token,
            s.victim.tenant,
            json!({"mine": true}),
        ),
        (&stolen, &s.token, s.attacker, json!({"stolen": 1})),
        (
            &squatted,
            &s.victim.token,
            s.victim.tenant,
            json!({"mine": 2}),
        ),
        (&squatted, &s.token, s.attacker, json!({"stolen": 2})),
    ] {
        let (st, event) =
            status_of(&s.p, Method::GET, &format!("/v1/events/{id}"), token, None).await?;
        anyhow::ensure!(st == 200, "{tenant} GET {id}: {st} {event}");
        anyhow::ensure!(event["payload"] == payload, "{tenant} sees {event}");
        let deliveries = event["deliveries"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(
            !deliveries.is_empty() && deliveries.iter().all(|d| d["tenant_id"] == json!(tenant)),
            "{tenant}'s {id}: {deliveries:?}"
        );
        if tenant == s.victim.tenant {
            anyhow::ensure!(deliveries.len() == 1, "the victim's {id}: {deliveries:?}");
        }
    }
    // An operator asking by an id two tenants use is told so, not shown either.
    let operator = s.p.token(None);
    let (st, body) = status_of(
        &s.p,
        Method::GET,
        &format!("/v1/events/{stolen}"),
        &operator,
        None,
    )
    .await?;
    anyhow::ensure!(st == 409, "operator GET {stolen}: {st} {body}");
    Ok(())
}

/// Values no field can hold, in every place a client can put them: a clean 4xx each.
pub(super) async fn control_characters_everywhere(s: &Suite) -> anyhow::Result<()> {
    let a = s.attacker;
    let op = s.p.token(None);
    // The subscription first: an event published before it may fan out to no one (that was a
    // race in this test, seen failing once).
    let endpoint = s.endpoint("ctl", "ctl.*", json!({})).await?;
    let (_, any) = s
        .publish_raw(r#"{"event_type":"ctl.x","payload":{}}"#)
        .await?;
    let event = event_id(&any);
    s.eventually(10, "a delivery to replay", || async {
        Ok(!s.attempts(&event).await?.is_empty())
    })
    .await?;
    let delivery = s.first_delivery(&event).await?;
    let nul = "a\u{0}b";
    let cases: Vec<(Method, String, &str, Option<Value>)> = vec![
        (
            Method::GET,
            format!("/v1/tenants/{a}/events?type=%00"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/tenants/{a}/events?cursor=%00%01"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/tenants/{a}/events?cursor=AAAAAAAAAAAAAAAAAAAAAAAA"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/tenants/{a}/events?from=%2B200000-01-01T00:00:00Z"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/events/{event}/deliveries?to=-100000-01-01T00:00:00Z"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/tenants/{a}/events?limit=99999999999999999999"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/events/{event}/deliveries?endpoint_id=%00"),
            &s.token,
            None,
        ),
        (
            Method::GET,
            format!("/v1/dlq?tenant_id={a}%00"),
            &s.token,
            None,
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/events:publish"),
            &s.token,
            Some(json!({"event_type": "ctl.x", "payload": {}, "idempotency_key": nul})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/events:publish"),
            &s.token,
            Some(json!({"event_type": "ctl.x", "payload": {}, "ordering_key": "\u{7}"})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/events:publish"),
            &s.token,
            Some(json!({"event_type": "ctl\u{0}x", "payload": {}})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints"),
            &s.token,
            Some(json!({"url": format!("{}/x\u{0}", s.base)})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints"),
            &s.token,
            Some(json!({"url": s.url("d"), "description": nul})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints"),
            &s.token,
            Some(json!({"url": s.url("d"), "secret": "whsec_\u{0}"})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints"),
            &s.token,
            Some(json!({"url": s.url("d"), "headers": {"x-a": nul}})),
        ),
        (
            Method::PATCH,
            format!("/v1/tenants/{a}/endpoints/{endpoint}"),
            &s.token,
            Some(json!({"description": nul})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/endpoints/{endpoint}:disable"),
            &s.token,
            Some(json!({"reason": nul})),
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{delivery}:replay"),
            &s.token,
            Some(json!({"reason": nul})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{a}/subscriptions"),
            &s.token,
            Some(json!({"endpoint_id": endpoint, "event_type": nul})),
        ),
        (
            Method::POST,
            "/v1/tenants".to_owned(),
            &op,
            Some(json!({"name": nul})),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, token, body) in cases {
        let (st, v) = status_of(&s.p, method.clone(), &path, token, body).await?;
        if !(400..500).contains(&st) || v["error"]["code"].as_str().is_none() {
            wrong.push(format!("{method} {path}: {st} {v}"));
        }
    }
    anyhow::ensure!(wrong.is_empty(), "not a clean 4xx:\n{}", wrong.join("\n"));
    // Hostile trace headers are ignored, not fatal.
    let big = "k=".to_owned() + &"v".repeat(6000);
    let (st, v) =
        s.p.call_raw(
            Method::POST,
            &format!("/v1/tenants/{a}/events:publish"),
            &s.token,
            r#"{"event_type":"ctl.x","payload":{"traced":1}}"#,
            &[("traceparent", "00-zz-yy-01"), ("tracestate", &big)],
        )
        .await?;
    anyhow::ensure!(st == 202, "hostile trace headers: {st} {v}");
    s.receiver
        .wait_for("ctl", Duration::from_secs(10), |b| b == br#"{"traced":1}"#)
        .await?;
    Ok(())
}

/// Garbage on the internal topics (a misbehaving tool with write access): skipped, counted.
pub(super) async fn poison_on_internal_topics(s: &Suite) -> anyhow::Result<()> {
    // The tiers the services run with (Platform: 1s, 2s), not the world's default schedule.
    let mut config = s.p.world.env.config.clone();
    config.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(2)];
    let catalog = shared::kafka::TopicCatalog::new(&config);
    s.produce(catalog.deliveries(), "poison", b"\x00not a delivery")
        .await?;
    let tier = catalog
        .retry_tiers()
        .first()
        .ok_or_else(|| anyhow::anyhow!("no retry tier"))?;
    s.produce(&tier.topic, "poison", br#"{"schema_version":1}"#)
        .await?;
    s.eventually(10, "the malformed records are counted", || async {
        let (_, delivery) = s.p.ops_get(2, "/metrics").await?;
        let (_, retry) = s.p.ops_get(3, "/metrics").await?;
        Ok(delivery.contains("harborhook_delivery_malformed_total 1")
            && retry.lines().any(|l| {
                l.starts_with("harborhook_retry_malformed_total{tier=\"1s\"}") && l.ends_with(" 1")
            }))
    })
    .await
}
