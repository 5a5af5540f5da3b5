//! The hostile-input suite: the four services as processes, a victim tenant and an attacker
//! tenant. Each attack is one thing a tenant, a direct producer or a customer endpoint can do
//! on its own; after each, the victim's next event must arrive within 10 s, and the attack must
//! have ended where docs/api.md and docs/fanout.md say: a 4xx with a reason, `events.invalid`,
//! the DLQ, or a stored (sanitised) attempt — never a 500, a stalled partition or a dead
//! service. The budgets are small (40 in flight, 400 pending) so that an attack on them bites
//! with a few hundred records.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use common::World;
use common::hostile::{Answer, HostileReceiver, Victim, status_of};
use common::platform::Platform;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::{Value, json};
use shared::ids::{EventId, TenantId};

struct Suite {
    p: Platform,
    receiver: HostileReceiver,
    base: String,
    victim: Victim,
    attacker: TenantId,
    token: String,
    producer: FutureProducer,
}

impl Suite {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// An attacker endpoint at receiver path `path`, subscribed to `pattern`, with `extra`
    /// settings; returns its id.
    async fn endpoint(&self, path: &str, pattern: &str, extra: Value) -> anyhow::Result<String> {
        self.endpoint_at(&self.url(path), pattern, extra).await
    }

    /// An attacker endpoint at any `url`, subscribed to `pattern`, with `extra` settings.
    async fn endpoint_at(&self, url: &str, pattern: &str, extra: Value) -> anyhow::Result<String> {
        let path = url;
        let mut body = json!({"url": url});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, e) = status_of(
            &self.p,
            Method::POST,
            &format!("/v1/tenants/{}/endpoints", self.attacker),
            &self.token,
            Some(body),
        )
        .await?;
        anyhow::ensure!(s == 201, "endpoint {path}: {s} {e}");
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        let (s, b) = status_of(
            &self.p,
            Method::POST,
            &format!("/v1/tenants/{}/subscriptions", self.attacker),
            &self.token,
            Some(json!({"endpoint_id": id, "event_type": pattern})),
        )
        .await?;
        anyhow::ensure!(s == 201, "subscription {path}: {s} {b}");
        Ok(id)
    }

    async fn publish_raw(&self, body: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v) = self
            .p
            .call_raw(
                Method::POST,
                &format!("/v1/tenants/{}/events:publish", self.attacker),
                &self.token,
                body.to_owned(),
                &[],
            )
            .await?;
        Ok((s.as_u16(), v))
    }

    /// Writes `value` to `events` as a direct producer would, keyed `key`.
    async fn produce(&self, topic: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// The reasons `events.invalid` gave for records keyed `attack-*`, by key.
    async fn invalid_reasons(&self, want: usize) -> anyhow::Result<HashMap<String, String>> {
        let reader = self
            .p
            .world
            .env
            .reader(self.p.world.env.catalog().events_invalid())?;
        let records = shared::testing::drain(&reader, want, Duration::from_secs(15)).await?;
        let mut out = HashMap::new();
        for m in records {
            let r: shared::records::InvalidEventRecord =
                serde_json::from_slice(m.payload().unwrap_or_default())?;
            let key = r
                .key_base64
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            out.insert(key, r.reason);
        }
        Ok(out)
    }

    /// The id of the newest delivery of the attacker's `event`, as the API lists it.
    async fn first_delivery(&self, event: &str) -> anyhow::Result<String> {
        let (_, page) = status_of(
            &self.p,
            Method::GET,
            &format!("/v1/events/{event}/deliveries"),
            &self.token,
            None,
        )
        .await?;
        Ok(page["data"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The attempts the API shows for the delivery of `event` at the attacker's endpoints.
    async fn attempts(&self, event: &str) -> anyhow::Result<Vec<Value>> {
        let (_, page) = status_of(
            &self.p,
            Method::GET,
            &format!("/v1/events/{event}/deliveries"),
            &self.token,
            None,
        )
        .await?;
        let mut out = Vec::new();
        for d in page["data"].as_array().into_iter().flatten() {
            let id = d["id"].as_str().unwrap_or_default();
            let (_, a) = status_of(
                &self.p,
                Method::GET,
                &format!("/v1/deliveries/{id}/attempts"),
                &self.token,
                None,
            )
            .await?;
            out.extend(a["data"].as_array().cloned().unwrap_or_default());
        }
        Ok(out)
    }

    /// Polls until `f` holds (the pipeline is asynchronous), for at most `secs`.
    async fn eventually<F, Fut>(&self, secs: u64, what: &str, mut f: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if f().await? {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{what}: not within {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn event_id(v: &Value) -> String {
    v["event_id"].as_str().unwrap_or_default().to_owned()
}

/// NUL in a payload value and in a key: accepted and carried faithfully (PostgreSQL stores the
/// JSON text, not jsonb), the receiver gets exactly the bytes published.
async fn nul_in_payloads(s: &Suite) -> anyhow::Result<()> {
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

/// A receiver answering 500 with NUL and invalid UTF-8 in its body: the attempt is stored with
/// the body sanitised (U+FFFD), the delivery retried as usual.
async fn receiver_body_with_nul(s: &Suite) -> anyhow::Result<()> {
    s.endpoint("nul500", "nul500.*", json!({})).await?;
    s.receiver
        .answer("nul500", Answer::Status(500, b"bad\0body\xff".to_vec()));
    let (status, v) = s
        .publish_raw(r#"{"event_type":"nul500.x","payload":{"a":1}}"#)
        .await?;
    anyhow::ensure!(status == 202, "{status} {v}");
    let event = event_id(&v);
    s.eventually(15, "the attempt recorded", || async {
        Ok(s.attempts(&event)
            .await?
            .iter()
            .any(|a| a["status_code"] == 500 && a["response_excerpt"] == "bad\u{FFFD}body\u{FFFD}"))
    })
    .await
}

/// A rate limit of 1e-20/s: refused by the API; held by a row all the same (an older release,
/// a manual update), it is served without a panic.
async fn absurd_rate_limit(s: &Suite) -> anyhow::Result<()> {
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
async fn payloads_at_the_size_limit(s: &Suite) -> anyhow::Result<()> {
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
async fn bad_direct_producer_envelopes(s: &Suite) -> anyhow::Result<()> {
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
async fn another_tenants_event_id(s: &Suite) -> anyhow::Result<()> {
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

/// An endpoint that accepts connections and never answers, with the largest caps the API
/// allows, and hundreds of records: it holds only its share of the budgets.
async fn never_answering_endpoint(s: &Suite) -> anyhow::Result<()> {
    s.endpoint(
        "hang",
        "hang.*",
        json!({"max_in_flight": 1000, "timeout_ms": 300000}),
    )
    .await?;
    s.receiver.answer("hang", Answer::Hang);
    let events: Vec<Value> = (0..450)
        .map(|n| json!({"event_type": "hang.x", "payload": {"n": n}}))
        .collect();
    let (st, v) = status_of(
        &s.p,
        Method::POST,
        &format!("/v1/tenants/{}/events:batch", s.attacker),
        &s.token,
        Some(json!({"events": events})),
    )
    .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    // Let the records reach the consumer before the victim's check below.
    s.receiver
        .wait_for("hang", Duration::from_secs(10), |_| true)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Receivers that answer huge, slow, binary, with an absurd status, never finish the body, or
/// never answer: the status decides (a 2xx whose body never ends is delivered, its body cut at
/// the timeout), the body is kept sanitised and bounded, and silence is a timeout.
async fn hostile_receivers(s: &Suite) -> anyhow::Result<()> {
    s.endpoint("huge", "rx.*", json!({})).await?;
    s.endpoint("drip", "rx.*", json!({"timeout_ms": 1000}))
        .await?;
    s.endpoint("silent", "rx.*", json!({"timeout_ms": 1000}))
        .await?;
    s.endpoint("binary", "rx.*", json!({})).await?;
    s.endpoint("weird", "rx.*", json!({})).await?;
    s.receiver.answer("huge", Answer::Huge(8 * 1024 * 1024));
    s.receiver.answer("drip", Answer::Drip);
    s.receiver.answer("silent", Answer::Hang);
    s.receiver.answer(
        "binary",
        Answer::Status(502, (0u8..=255).cycle().take(5000).collect()),
    );
    s.receiver
        .answer("weird", Answer::Status(799, b"?".to_vec()));
    let (st, v) = s
        .publish_raw(r#"{"event_type":"rx.x","payload":{"r":1}}"#)
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let event = event_id(&v);
    let result = s
        .eventually(15, "every receiver's first attempt recorded", || async {
            let attempts = s.attempts(&event).await?;
            let classes: Vec<&str> = attempts
                .iter()
                .map(|a| a["error_class"].as_str().unwrap_or("none"))
                .collect();
            let excerpts_bounded = attempts.iter().all(|a| {
                a["response_excerpt"]
                    .as_str()
                    .is_none_or(|e| e.len() <= 1024 && !e.contains('\0'))
            });
            Ok(attempts.len() >= 5
                && excerpts_bounded
                && classes.contains(&"timeout")
                && classes.contains(&"http5xx")
                && classes.iter().filter(|c| **c == "none").count() >= 2)
        })
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let seen = s.attempts(&event).await.unwrap_or_default();
            Err(anyhow::anyhow!("{e:#}; attempts: {seen:?}"))
        }
    }
}

/// Values no field can hold, in every place a client can put them: a clean 4xx each.
async fn control_characters_everywhere(s: &Suite) -> anyhow::Result<()> {
    let a = s.attacker;
    let op = s.p.token(None);
    let (_, any) = s
        .publish_raw(r#"{"event_type":"ctl.x","payload":{}}"#)
        .await?;
    let event = event_id(&any);
    let endpoint = s.endpoint("ctl", "ctl.*", json!({})).await?;
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

/// Targets the SSRF guard refuses: the delivery fails as `forbidden`, nothing is sent.
async fn ssrf_targets(s: &Suite) -> anyhow::Result<()> {
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/x",
        "http://0.0.0.0:9/",
    ] {
        s.endpoint_at(url, "ssrf.x", json!({})).await?;
    }
    let (st, v) = s
        .publish_raw(r#"{"event_type":"ssrf.x","payload":{}}"#)
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let event = event_id(&v);
    s.eventually(15, "refused as forbidden", || async {
        let attempts = s.attempts(&event).await?;
        Ok(attempts.len() >= 3 && attempts.iter().all(|a| a["error_class"] == "forbidden"))
    })
    .await
}

/// Garbage on the internal topics (a misbehaving tool with write access): skipped, counted.
async fn poison_on_internal_topics(s: &Suite) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_and_no_endpoint_stops_the_victim() -> anyhow::Result<()> {
    let world = World::new().await?;
    let p = Platform::start_with(
        world,
        &[
            ("HARBORHOOK_DELIVERY__MAX_IN_FLIGHT", "40"),
            ("HARBORHOOK_DELIVERY__MAX_PENDING", "400"),
            ("HARBORHOOK_GATEWAY__RATE_LIMIT_PER_SEC", "1000"),
            ("HARBORHOOK_GATEWAY__RATE_LIMIT_BURST", "2000"),
        ],
    )
    .await?;
    let (receiver, addr) = HostileReceiver::start().await?;
    let base = format!("http://{addr}");
    let victim = Victim::new(&p, format!("{base}/victim")).await?;
    let (attacker, token) = p.tenant().await?;
    let producer = shared::kafka::producer(&p.world.env.config.kafka, "hostile")?;
    let mut s = Suite {
        p,
        receiver,
        base,
        victim,
        attacker,
        token,
        producer,
    };
    s.victim.still_served(&s.p, &s.receiver).await?;

    let mut failures = Vec::new();
    // HOSTILE_ONLY=name,name runs only those attacks (to try one alone, e.g. on an older build).
    let only: Option<Vec<String>> = std::env::var("HOSTILE_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    macro_rules! attack {
        ($name:ident) => {
            if only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|n| n == stringify!($name)))
            {
                eprintln!("{}: skipped (HOSTILE_ONLY)", stringify!($name));
            } else {
                let outcome = $name(&s).await;
                let served = s.victim.still_served(&s.p, &s.receiver).await;
                match (outcome, served) {
                    (Ok(()), Ok(took)) => eprintln!(
                        "{}: ended as documented; victim served in {took:?}",
                        stringify!($name)
                    ),
                    (outcome, served) => failures.push(format!(
                        "{}: attack: {}; victim: {}",
                        stringify!($name),
                        outcome.err().map_or("ok".to_owned(), |e| format!("{e:#}")),
                        served.map_or_else(|e| format!("{e:#}"), |t| format!("served in {t:?}"))
                    )),
                }
            }
        };
    }
    attack!(nul_in_payloads);
    attack!(receiver_body_with_nul);
    attack!(absurd_rate_limit);
    attack!(never_answering_endpoint);
    attack!(bad_direct_producer_envelopes);
    attack!(another_tenants_event_id);
    attack!(payloads_at_the_size_limit);
    attack!(hostile_receivers);
    attack!(control_characters_everywhere);
    attack!(ssrf_targets);
    attack!(poison_on_internal_topics);

    // Every service is still up, and says so for the right reason.
    let exited = s.p.exited();
    if !exited.is_empty() {
        failures.push(format!("services exited: {exited:?}"));
    }
    for i in 0..4 {
        let (code, body) = s.p.ops_get(i, "/healthz").await?;
        if code != 200 {
            failures.push(format!("service {i} /healthz {code}: {body}"));
        }
    }
    let (_, metrics) = s.p.ops_get(2, "/metrics").await?;
    if !metrics.contains("harborhook_delivery_task_panics_total 0") {
        failures.push("a delivery task panicked".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    s.p.world.cleanup().await
}
