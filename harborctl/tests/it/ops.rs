//! harborctl's operator commands against the real PostgreSQL and broker: DLQ filters select
//! exactly the right records, a dry run changes nothing, a replay sends each delivery once
//! (unless forced) at the requested rate and is recorded; events replay re-fans-out exactly a
//! time range; verify-signature checks like a receiver.

use std::time::Duration;

use crate::common::World;
use chrono::{DateTime, Utc};
use rdkafka::Message as _;
use serde_json::json;
use shared::ids::{DeliveryId, EndpointId, EventId, SubscriptionId, TenantId};
use shared::records::{DeliveryRecord, EventEnvelope, SchemaVersion};

struct Seeded {
    tenant_a: TenantId,
    e1: EndpointId,
    e2: EndpointId,
    /// (delivery, reason, event type, endpoint, tenant, dead-lettered at)
    letters: Vec<(DeliveryId, &'static str, &'static str, EndpointId, TenantId)>,
    cut: DateTime<Utc>,
}

async fn tenant(w: &World) -> anyhow::Result<TenantId> {
    let id = TenantId::new();
    w.db.execute("INSERT INTO tenants (id, name) VALUES ($1, 't')", &[&id])
        .await?;
    Ok(id)
}

async fn endpoint(w: &World, tenant: &TenantId) -> anyhow::Result<EndpointId> {
    let id = EndpointId::new();
    w.db.execute(
        "INSERT INTO endpoints (id, tenant_id, url) VALUES ($1, $2, 'https://hooks.example.com/x')",
        &[&id, tenant],
    )
    .await?;
    Ok(id)
}

/// A delivery row in `status`, dead-lettered for `reason` (if any) at `at`.
async fn delivery(
    w: &World,
    tenant: &TenantId,
    endpoint: &EndpointId,
    event_type: &str,
    status: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> anyhow::Result<DeliveryId> {
    let event = EventId::new();
    w.db.execute(
        "INSERT INTO events (id, tenant_id, event_type, payload, created_at) VALUES ($1, $2, $3, '{\"n\": 1}', $4)",
        &[&event, tenant, &event_type, &at],
    )
    .await?;
    let id = DeliveryId::derive(&event, endpoint);
    w.db.execute(
        "INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, event_type, status, attempts,
             dead_letter_reason, updated_at, last_status_code)
         VALUES ($1, $2, $3, $4, $5, $6, 3, $7, $8, 500)",
        &[&id, tenant, &event, endpoint, &event_type, &status, &reason, &at],
    )
    .await?;
    Ok(id)
}

async fn seed(w: &World) -> anyhow::Result<Seeded> {
    let (a, b) = (tenant(w).await?, tenant(w).await?);
    let (e1, e2, e3) = (
        endpoint(w, &a).await?,
        endpoint(w, &a).await?,
        endpoint(w, &b).await?,
    );
    let old = Utc::now() - chrono::Duration::hours(2);
    let new = Utc::now();
    let cut = Utc::now() - chrono::Duration::hours(1);
    let mut letters = Vec::new();
    for at in [old, new, new] {
        let id = delivery(
            w,
            &a,
            &e1,
            "order.created",
            "dead_lettered",
            Some("exhausted"),
            at,
        )
        .await?;
        letters.push((id, "exhausted", "order.created", e1, a));
    }
    for at in [old, new] {
        let id = delivery(
            w,
            &a,
            &e2,
            "invoice.paid",
            "dead_lettered",
            Some("gone"),
            at,
        )
        .await?;
        letters.push((id, "gone", "invoice.paid", e2, a));
    }
    let id = delivery(
        w,
        &b,
        &e3,
        "order.created",
        "dead_lettered",
        Some("exhausted"),
        new,
    )
    .await?;
    letters.push((id, "exhausted", "order.created", e3, b));
    // Not dead letters: never listed.
    delivery(w, &a, &e1, "order.created", "delivered", None, new).await?;
    Ok(Seeded {
        tenant_a: a,
        e1,
        e2,
        letters,
        cut,
    })
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["delivery_id"].as_str().expect("id").to_owned())
        .collect();
    out.sort();
    out
}

fn expect(
    s: &Seeded,
    keep: impl Fn(&(DeliveryId, &str, &str, EndpointId, TenantId)) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = s
        .letters
        .iter()
        .filter(|l| keep(l))
        .map(|l| l.0.to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_filters_select_exactly_the_right_records() -> anyhow::Result<()> {
    let w = World::new().await?;
    let s = seed(&w).await?;
    let a = s.tenant_a.to_string();
    assert_eq!(ids(&w.json(&["dlq", "list"], &[])), expect(&s, |_| true));
    assert_eq!(
        ids(&w.json(&["dlq", "list", "--tenant-id", &a], &[])),
        expect(&s, |l| l.4 == s.tenant_a)
    );
    assert_eq!(
        ids(&w.json(&["dlq", "list", "--dead-letter-reason", "gone"], &[])),
        expect(&s, |l| l.1 == "gone")
    );
    assert_eq!(
        ids(&w.json(&["dlq", "list", "--endpoint", &s.e1.to_string()], &[])),
        expect(&s, |l| l.3 == s.e1)
    );
    assert_eq!(
        ids(&w.json(&["dlq", "list", "--type", "invoice.paid"], &[])),
        expect(&s, |l| l.2 == "invoice.paid")
    );
    let cut = s.cut.to_rfc3339();
    let recent = ids(&w.json(&["dlq", "list", "--since", &cut], &[]));
    let older = ids(&w.json(&["dlq", "list", "--until", &cut], &[]));
    assert_eq!(
        (recent.len(), older.len()),
        (4, 2),
        "time range splits at the cut"
    );
    let bad = w.run(&["dlq", "list", "--dead-letter-reason", "bored"], &[]);
    assert_eq!(bad.status.code(), Some(2), "a bad filter is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hint:"));
    // Human output is a table with a header row.
    let text = String::from_utf8(w.run(&["dlq", "list", "--tenant-id", &a], &[]).stdout)?;
    assert!(
        text.starts_with("DELIVERY_ID") && text.lines().count() == 6,
        "{text}"
    );
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_is_dry_runnable_idempotent_rate_capped_and_recorded() -> anyhow::Result<()> {
    let w = World::new().await?;
    let s = seed(&w).await?;
    let a = s.tenant_a.to_string();
    let reader = w.env.reader(w.env.catalog().deliveries())?;
    let selection = [
        "dlq",
        "replay",
        "--tenant-id",
        a.as_str(),
        "--dead-letter-reason",
        "exhausted",
    ];

    let mut dry = selection.to_vec();
    dry.push("--dry-run");
    let v = w.json(&dry, &[]);
    assert_eq!(v["count"], 3);
    assert_eq!(v["sample"].as_array().map(Vec::len), Some(3));
    let replays: i64 =
        w.db.query_one("SELECT count(*) FROM replays", &[])
            .await?
            .get(0);
    let still: i64 =
        w.db.query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'dead_lettered'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!((replays, still), (0, 6), "a dry run changes nothing");
    assert!(
        shared::testing::drain(&reader, 1, Duration::from_secs(2))
            .await?
            .is_empty(),
        "and sends nothing"
    );

    let mut run = selection.to_vec();
    run.extend(["--reason", "incident 42", "--rate", "4"]);
    let v = w.json(&run, &[]);
    assert_eq!(
        (v["selected"].as_u64(), v["replayed"].as_u64()),
        (Some(3), Some(3))
    );
    let records = shared::testing::drain(&reader, 3, Duration::from_secs(10)).await?;
    assert_eq!(records.len(), 3);
    let mut times = Vec::new();
    for m in &records {
        let r: DeliveryRecord = serde_json::from_slice(m.payload().expect("payload"))?;
        assert_eq!(
            r.delivery_id,
            DeliveryId::derive(&r.event_id, &r.endpoint_id),
            "same webhook-id"
        );
        assert!(
            expect(&s, |l| l.1 == "exhausted" && l.4 == s.tenant_a)
                .contains(&r.delivery_id.to_string())
        );
        let info = r.replay.expect("replay info");
        assert_eq!(
            (info.reason.as_str(), info.requested_by.as_str()),
            ("incident 42", "test-operator")
        );
        assert_eq!(r.attempt, 1);
        times.push(m.timestamp().to_millis().expect("timestamp"));
    }
    times.sort_unstable();
    // 4 per second with no burst: 3 records span at least two intervals (500 ms).
    assert!(times[2] - times[0] >= 450, "rate cap: {times:?}");

    let again = w.json(&run, &[]);
    assert_eq!(
        again["replayed"], 0,
        "the same selection twice sends each delivery once"
    );
    assert!(
        shared::testing::drain(&reader, 1, Duration::from_secs(2))
            .await?
            .is_empty()
    );
    let mut forced = run.clone();
    forced.push("--force");
    assert_eq!(w.json(&forced, &[])["replayed"], 3, "--force sends again");

    let rows = w.db.query("SELECT kind, requested_by, reason, count, completed_at IS NOT NULL FROM replays ORDER BY created_at", &[]).await?;
    let rows: Vec<(String, String, String, i32, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.0 == "dlq" && r.1 == "test-operator" && r.2 == "incident 42" && r.4)
    );
    assert_eq!(rows.iter().map(|r| r.3).collect::<Vec<_>>(), [3, 0, 3]);
    let no_reason = w.run(&selection, &[]);
    assert_eq!(no_reason.status.code(), Some(2), "a replay needs a reason");

    // Dead letters whose endpoint was deleted have nowhere to go: each is listed as refused,
    // left dead-lettered, and the command exits 1 (the rest of a selection would still go).
    let endpoint: EndpointId =
        w.db.query_one(
            "SELECT endpoint_id FROM deliveries WHERE status = 'dead_lettered' LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let before: i64 =
        w.db.query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'dead_lettered' AND endpoint_id = $1",
            &[&endpoint],
        )
        .await?
        .get(0);
    w.db.execute("DELETE FROM endpoints WHERE id = $1", &[&endpoint])
        .await?;
    let ep = endpoint.to_string();
    let out = w.run(
        &[
            "--json",
            "dlq",
            "replay",
            "--endpoint",
            &ep,
            "--reason",
            "gone",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let refused = v["refused"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        (v["replayed"].as_u64(), refused.len() as i64),
        (Some(0), before)
    );
    assert!(
        refused
            .iter()
            .all(|r| r["reason"] == "its endpoint no longer exists"),
        "{v}"
    );
    let after: i64 =
        w.db.query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'dead_lettered' AND endpoint_id = $1",
            &[&endpoint],
        )
        .await?
        .get(0);
    assert_eq!(after, before, "left dead-lettered");
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_show_has_the_whole_history() -> anyhow::Result<()> {
    let w = World::new().await?;
    let s = seed(&w).await?;
    let (id, ..) = s.letters[0];
    for (n, code) in [(1i32, 500i32), (2, 503)] {
        let at = Utc::now() + chrono::Duration::seconds(i64::from(n));
        w.db.execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, tenant_id, endpoint_id, started_at,
                 duration_ms, status_code, error_class, response_excerpt)
             VALUES ($1, $2, $3, $4, $5, 12, $6, 'http5xx', 'oops')",
            &[&id, &n, &s.tenant_a, &s.e1, &at, &code],
        )
        .await?;
    }
    let v = w.json(&["dlq", "show", &id.to_string()], &[]);
    assert_eq!(v["reason"], "exhausted");
    let history = v["attempt_history"].as_array().expect("history");
    assert_eq!(
        history
            .iter()
            .map(|a| a["status_code"].clone())
            .collect::<Vec<_>>(),
        [json!(500), json!(503)]
    );
    let missing = w.run(
        &[
            "dlq",
            "show",
            &DeliveryId::derive(&EventId::new(), &s.e2).to_string(),
        ],
        &[],
    );
    assert_eq!(
        missing.status.code(),
        Some(3),
        "not found has its own exit code"
    );
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_refans_out_exactly_a_time_range() -> anyhow::Result<()> {
    let w = World::new().await?;
    let t = tenant(&w).await?;
    let (all, orders) = (endpoint(&w, &t).await?, endpoint(&w, &t).await?);
    for (e, p) in [(&all, "*"), (&orders, "order.*")] {
        w.db.execute(
            "INSERT INTO subscriptions (id, tenant_id, endpoint_id, event_type_pattern) VALUES ($1, $2, $3, $4)",
            &[&SubscriptionId::new(), &t, e, &p],
        )
        .await?;
    }
    let producer = shared::kafka::producer(&w.env.config.kafka, "test")?;
    let topic = w.env.catalog().events().to_owned();
    let publish = |event_type: &'static str| {
        let envelope = EventEnvelope {
            schema_version: SchemaVersion::CURRENT,
            event_id: EventId::new(),
            tenant_id: t,
            event_type: event_type.parse().expect("type"),
            payload: shared::payload::Payload::from_value(&json!({"x": 1})),
            occurred_at: Utc::now(),
            idempotency_key: None,
            ordering_key: None,
        };
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            let value = serde_json::to_vec(&envelope).expect("json");
            let key = envelope.kafka_key();
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
            envelope.event_id
        }
    };
    publish("order.created").await; // before the range
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let since = Utc::now().to_rfc3339();
    let in_range = [
        publish("order.created").await,
        publish("invoice.paid").await,
    ];
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let until = Utc::now().to_rfc3339();
    publish("order.created").await; // after the range
    let reader = w.env.reader(w.env.catalog().deliveries())?;
    let base = [
        "events",
        "replay",
        "--since",
        since.as_str(),
        "--until",
        until.as_str(),
        "--reason",
        "backfill",
    ];

    let mut dry = base.to_vec();
    dry.push("--dry-run");
    let v = w.json(&dry, &[]);
    // order.created → both endpoints; invoice.paid → only `*`.
    assert_eq!(
        (v["events"].as_u64(), v["deliveries"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(
        shared::testing::drain(&reader, 1, Duration::from_secs(2))
            .await?
            .is_empty(),
        "dry run sends nothing"
    );

    assert_eq!(w.json(&base, &[])["replayed"], 3);
    let records = shared::testing::drain(&reader, 3, Duration::from_secs(10)).await?;
    let mut got: Vec<(EventId, EndpointId)> = records
        .iter()
        .map(|m| {
            let r: DeliveryRecord =
                serde_json::from_slice(m.payload().expect("payload")).expect("record");
            assert_eq!(
                r.delivery_id,
                DeliveryId::derive(&r.event_id, &r.endpoint_id)
            );
            (r.event_id, r.endpoint_id)
        })
        .collect();
    got.sort();
    let mut want = vec![
        (in_range[0], all),
        (in_range[0], orders),
        (in_range[1], all),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "exactly the range, to exactly the current subscribers"
    );
    let rows: i64 =
        w.db.query_one(
            "SELECT count(*) FROM deliveries WHERE status = 'pending'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(
        rows, 3,
        "rows exist for the delivery-consumer to record against"
    );

    let again = w.json(&base, &[]);
    assert_eq!(
        again["replayed"], 0,
        "a completed selection is not replayed twice"
    );
    let mut one = base.to_vec();
    let orders_id = orders.to_string();
    one.extend(["--endpoint", orders_id.as_str(), "--type", "order.created"]);
    assert_eq!(
        w.json(&one, &[])["replayed"],
        1,
        "one named endpoint, one type"
    );
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_signature_checks_like_a_receiver() -> anyhow::Result<()> {
    let w = World::new().await?;
    let secret = shared::domain::SigningSecret::generate();
    let body = br#"{"order": 1}"#;
    let ts = Utc::now().timestamp();
    let sig = shared::signing::standard_signature(&[&secret], "dlv_1", ts, body);
    let file = std::env::temp_dir().join(format!("{}-body.json", w.env.schema));
    std::fs::write(&file, body)?;
    let (id_h, ts_h, sig_h) = (
        "webhook-id: dlv_1".to_owned(),
        format!("webhook-timestamp: {ts}"),
        format!("webhook-signature: {sig}"),
    );
    let secret_text = secret.expose();
    let path = file.display().to_string();
    let args = |sig_h: &str| {
        vec![
            "verify-signature",
            "--secret",
            secret_text.as_str(),
            "--header",
            id_h.as_str(),
            "--header",
            ts_h.as_str(),
            "--header",
            sig_h,
            "--body-file",
            path.as_str(),
            "--tolerance",
            "5m",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let good = args(&sig_h);
    let out = w.run(&good.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let forged = args("webhook-signature: v1,AAAA");
    let out = w.run(&forged.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID"));
    // A correct signature over a timestamp ten minutes old: outside the 5 m tolerance (a
    // replayed request), refused although the signature matches.
    let stale_ts = ts - 600;
    let stale_sig = shared::signing::standard_signature(&[&secret], "dlv_1", stale_ts, body);
    let stale_ts_h = format!("webhook-timestamp: {stale_ts}");
    let stale_sig_h = format!("webhook-signature: {stale_sig}");
    let mut stale = args(&stale_sig_h);
    for a in &mut stale {
        if *a == ts_h {
            a.clone_from(&stale_ts_h);
        }
    }
    let out = w.run(&stale.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(out.status.code(), Some(1), "a stale timestamp is refused");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("outside the tolerance"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The same stale request with a tolerance wide enough passes.
    let mut wide = stale.clone();
    if let Some(t) = wide.iter_mut().find(|a| *a == "5m") {
        *t = "15m".to_owned();
    }
    let out = w.run(&wide.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // v1a: checked with the public key alone, in a header that carries v1 first.
    let key = shared::asymmetric::SigningKey::generate();
    let both = format!(
        "webhook-signature: {sig} {}",
        shared::signing::asymmetric_signature(&[&key], "dlv_1", ts, body)
    );
    let public = key.public_key().to_string();
    let with_key = |sig_h: &str, public: &str| {
        let mut a = args(sig_h);
        a[1] = "--public-key".to_owned();
        a[2] = public.to_owned();
        a
    };
    let run = |mut a: Vec<String>| {
        a.insert(0, "--json".to_owned());
        w.run(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    let out = run(with_key(&both, &public));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (&v["valid"], &v["scheme"]),
        (&json!(true), &json!("v1a")),
        "{v}"
    );
    // Another key, a header with only v1, and a malformed key are refused.
    let other = shared::asymmetric::SigningKey::generate()
        .public_key()
        .to_string();
    assert_eq!(run(with_key(&both, &other)).status.code(), Some(1));
    assert_eq!(run(with_key(&sig_h, &public)).status.code(), Some(1));
    let out = run(with_key(&both, "whpk_short"));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An original-scheme endpoint with v1a: its own headers are checked with the secret,
    // whatever `webhook-signature` (v1a only) holds beside them.
    let legacy = shared::signing::legacy_signature(&[&secret], ts, body);
    let out = run(vec![
        "verify-signature".to_owned(),
        "--secret".to_owned(),
        secret_text.clone(),
        "--header".to_owned(),
        format!("x-harborhook-timestamp: {ts}"),
        "--header".to_owned(),
        format!("x-harborhook-signature: {legacy}"),
        "--header".to_owned(),
        ts_h.clone(),
        "--header".to_owned(),
        format!(
            "webhook-signature: {}",
            shared::signing::asymmetric_signature(&[&key], "dlv_1", ts, body)
        ),
        "--body-file".to_owned(),
        path.clone(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (&v["valid"], &v["scheme"]),
        (&json!(true), &json!("harborhook_legacy")),
        "{v}"
    );
    std::fs::remove_file(file)?;
    w.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_describe_reports_partitions_and_group_lag() -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    let w = World::new().await?;
    let events = w.env.catalog().events().to_owned();
    let fanout = format!("{}fanout-processor", w.env.config.kafka.topic_prefix);
    // Three records on partition 0 and five on partition 1; the fan-out group (not running
    // here) has committed offset 1 on partition 0 and nothing on partition 1.
    let producer = shared::kafka::producer(&w.env.config.kafka, "test")?;
    for (partition, count) in [(0, 3), (1, 5)] {
        for n in 0..count {
            let value = format!("{{\"n\": {n}}}");
            producer
                .send(
                    rdkafka::producer::FutureRecord::<str, _>::to(&events)
                        .partition(partition)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
    }
    let member: BaseConsumer =
        shared::kafka::consumer_config(&w.env.config.kafka, "test", &fanout).create()?;
    let mut at = rdkafka::TopicPartitionList::new();
    at.add_partition_offset(&events, 0, rdkafka::Offset::Offset(1))?;
    shared::blocking(|| member.commit(&at, CommitMode::Sync))?;

    let v = w.json(&["topics", "describe"], &[]);
    let topics = v["topics"].as_array().expect("topics");
    assert_eq!(topics.len(), w.env.catalog().specs().len());
    assert!(
        topics
            .iter()
            .all(|t| t["exists"] == true && t["partitions"] == t["expected_partitions"])
    );
    let lag = v["consumer_lag"].as_array().expect("lag");
    let mut on_events: Vec<_> = lag
        .iter()
        .filter(|l| l["topic"] == events.as_str() && l["group"] == fanout.as_str())
        .map(|l| {
            (
                l["partition"].clone(),
                l["committed"].clone(),
                l["high_watermark"].clone(),
                l["lag"].clone(),
            )
        })
        .collect();
    on_events.sort_by_key(|r| r.0.as_i64());
    assert_eq!(
        on_events,
        [
            (json!(0), json!(1), json!(3), json!(2)),
            (json!(1), json!(null), json!(5), json!(5)),
        ],
        "per partition: the committed offset, the end, and the lag between them (from the \
         start when nothing is committed)"
    );
    // The human table shows the same lag.
    let table = w.run(&["topics", "describe"], &[]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().any(|l| l.contains(&events)
            && l.contains(&fanout)
            && l.split_whitespace().any(|c| c == "5")),
        "{text}"
    );
    let completions = w.run(&["completions", "bash"], &[]);
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("dlq"));
    w.cleanup().await
}
