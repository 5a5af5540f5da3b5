//! Fan-out against the real broker and PostgreSQL: events from direct producers are joined
//! with subscriptions (exact, prefix, all), disabled endpoints are skipped and recorded, poison
//! records go to `events.invalid` without stalling the partition, cache changes take effect
//! within a second, and a repeated idempotency key fans out once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::{World, deliveries, drain, pairs};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;
use shared::ids::DeliveryId;
use shared::records::InvalidEventRecord;
use tokio_util::sync::CancellationToken;

const QUIET: Duration = Duration::from_secs(4);

async fn start(world: &World) -> anyhow::Result<(CancellationToken, shared::service::Running)> {
    let shutdown = CancellationToken::new();
    let running = fanout_processor::start(world.env.config.clone(), shutdown.clone()).await?;
    Ok((shutdown, running))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fan_out_to_matching_endpoints() -> anyhow::Result<()> {
    let world = World::new().await?;
    let tenant = world.tenant().await?;
    let exact = world.endpoint(&tenant, true).await?;
    let prefix = world.endpoint(&tenant, true).await?;
    let all = world.endpoint(&tenant, true).await?;
    let disabled = world.endpoint(&tenant, false).await?;
    world.subscribe(&tenant, &exact, "invoice.paid").await?;
    world.subscribe(&tenant, &prefix, "invoice.*").await?;
    world.subscribe(&tenant, &all, "*").await?;
    world.subscribe(&tenant, &all, "invoice.*").await?; // overlapping patterns: still one delivery
    world.subscribe(&tenant, &disabled, "*").await?;
    let (shutdown, running) = start(&world).await?;
    let reader = world.reader(world.env.catalog().deliveries())?;

    let paid = world.envelope(&tenant, "invoice.paid", None);
    let created = world.envelope(&tenant, "invoice.created", None);
    let user = world.envelope(&tenant, "user.created", None);
    for e in [&paid, &created, &user] {
        world.publish(e).await?;
    }
    let got = deliveries(&drain(&reader, 7, QUIET).await);
    let pairs = pairs(&got);
    let expected: HashSet<_> = [
        (paid.event_id, exact),
        (paid.event_id, prefix),
        (paid.event_id, all),
        (created.event_id, prefix),
        (created.event_id, all),
        (user.event_id, all),
    ]
    .into_iter()
    .collect();
    assert_eq!(pairs.keys().copied().collect::<HashSet<_>>(), expected);
    assert!(
        pairs.values().all(|n| *n == 1),
        "one record per pair: {pairs:?}"
    );
    let first = got
        .iter()
        .find(|r| r.event_id == paid.event_id)
        .expect("paid");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.payload, paid.payload);

    // PostgreSQL has the events and every delivery, the disabled endpoint's as skipped.
    let rows = world
        .db
        .query(
            "SELECT endpoint_id, status, skip_reason FROM deliveries WHERE event_id = $1",
            &[&user.event_id],
        )
        .await?;
    assert_eq!(rows.len(), 2);
    let skipped = rows
        .iter()
        .find(|r| r.get::<_, shared::ids::EndpointId>(0) == disabled)
        .expect("skipped row");
    assert_eq!(skipped.get::<_, String>(1), "skipped");
    assert_eq!(
        skipped.get::<_, Option<String>>(2).as_deref(),
        Some("endpoint disabled")
    );
    let events: i64 = world
        .db
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    assert_eq!(events, 3);
    let id: DeliveryId = world
        .db
        .query_one(
            "SELECT id FROM deliveries WHERE event_id = $1 AND endpoint_id = $2",
            &[&paid.event_id, &exact],
        )
        .await?
        .get(0);
    assert_eq!(id, DeliveryId::derive(&paid.event_id, &exact));

    shutdown.cancel();
    running.wait().await?;
    world.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_quarantined_without_stalling() -> anyhow::Result<()> {
    let world = World::new().await?;
    let tenant = world.tenant().await?;
    let ep = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &ep, "*").await?;
    let (shutdown, running) = start(&world).await?;
    let deliveries_reader = world.reader(world.env.catalog().deliveries())?;
    let invalid_reader = world.reader(world.env.catalog().events_invalid())?;

    // Same key, so all land in one partition, behind each other.
    let key = Some(&b"k"[..]);
    world.publish_raw(key, b"not json at all").await?;
    world.publish_raw(key, br#"{"schema_version":1}"#).await?;
    world.publish_raw(key, &[0xff, 0xfe, 0x00]).await?;
    let mut unknown = world.envelope(&tenant, "a.b", None);
    unknown.tenant_id = shared::ids::TenantId::new();
    world
        .publish_raw(key, &serde_json::to_vec(&unknown)?)
        .await?;
    let mut wrong_version = serde_json::to_value(world.envelope(&tenant, "a.b", None))?;
    wrong_version["schema_version"] = serde_json::json!(9);
    world
        .publish_raw(key, &serde_json::to_vec(&wrong_version)?)
        .await?;
    let good = world.envelope(&tenant, "a.b", None);
    world.publish_raw(key, &serde_json::to_vec(&good)?).await?;

    let invalid = drain(&invalid_reader, 5, QUIET).await;
    assert_eq!(invalid.len(), 5, "every poison record is quarantined");
    for m in &invalid {
        let reason = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == fanout_processor::INVALID_REASON_HEADER)
            })
            .and_then(|h| h.value);
        assert!(reason.is_some_and(|r| !r.is_empty()), "reason header");
        assert_eq!(m.key(), Some(&b"k"[..]), "key as received");
        let record: InvalidEventRecord = serde_json::from_slice(m.payload().expect("payload"))?;
        assert!(!record.reason.is_empty());
    }
    let first: InvalidEventRecord = serde_json::from_slice(invalid[0].payload().expect("payload"))?;
    assert_eq!(
        first.value_base64, "bm90IGpzb24gYXQgYWxs",
        "the original bytes are kept"
    );
    let reasons: Vec<String> = invalid
        .iter()
        .map(|m| {
            serde_json::from_slice::<InvalidEventRecord>(m.payload().expect("p"))
                .map(|r| r.reason)
                .unwrap_or_default()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("unknown tenant")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("schema_version")),
        "{reasons:?}"
    );
    // The good event behind them was delivered: the partition did not stall.
    let got = deliveries(&drain(&deliveries_reader, 1, QUIET).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, good.event_id);
    shutdown.cancel();
    running.wait().await?;
    world.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_changes_apply_within_a_second() -> anyhow::Result<()> {
    let world = World::new().await?;
    let tenant = world.tenant().await?;
    let first = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &first, "order.*").await?;
    let (shutdown, running) = start(&world).await?;
    let reader = world.reader(world.env.catalog().deliveries())?;

    // A new endpoint and subscription, written while fanout runs.
    let second = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &second, "order.created").await?;
    let changed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e1 = world.envelope(&tenant, "order.created", None);
    world.publish(&e1).await?;
    // One more than expected is asked for, so a stray delivery is read, not left unread.
    let got = pairs(&deliveries(&drain(&reader, 3, QUIET).await));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.contains_key(&(e1.event_id, second)),
        "the new subscription is live {:?} after the change",
        changed.elapsed()
    );
    assert!(got.contains_key(&(e1.event_id, first)));

    // Disabling an endpoint takes effect too; so does a brand-new tenant.
    world
        .db
        .execute(
            "UPDATE endpoints SET enabled = false, disabled_reason = 'x' WHERE id = $1",
            &[&first],
        )
        .await?;
    let new_tenant = world.tenant().await?;
    let third = world.endpoint(&new_tenant, true).await?;
    world.subscribe(&new_tenant, &third, "*").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let e2 = world.envelope(&tenant, "order.created", None);
    let e3 = world.envelope(&new_tenant, "x", None);
    world.publish(&e2).await?;
    world.publish(&e3).await?;
    let got = pairs(&deliveries(&drain(&reader, 3, QUIET).await));
    assert_eq!(
        got.keys().copied().collect::<HashSet<_>>(),
        [(e2.event_id, second), (e3.event_id, third)]
            .into_iter()
            .collect()
    );
    shutdown.cancel();
    running.wait().await?;
    world.cleanup().await
}

/// A burst of changes larger than the listener's buffer (1,024 notifications): the ones that do
/// not fit are dropped, and the overflow must still ask for a full reload — the change that
/// came last (and was dropped) is live within seconds, not at the next 60 s backstop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_beyond_the_buffer_is_not_lost() -> anyhow::Result<()> {
    let world = World::new().await?;
    let tenant = world.tenant().await?;
    let first = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &first, "*").await?;
    let second = world.endpoint(&tenant, true).await?;
    let (shutdown, running) = start(&world).await?;
    let reader = world.reader(world.env.catalog().deliveries())?;
    // One transaction: 5,000 tenants (5,000 distinct notifications), then the change that
    // matters, notified last.
    world
        .db
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO tenants (id, name) SELECT gen_random_uuid(), 'burst' FROM generate_series(1, 5000);
             INSERT INTO subscriptions (id, tenant_id, endpoint_id, event_type_pattern)
                 VALUES (gen_random_uuid(), '{}', '{}', '*');
             COMMIT;",
            tenant.as_uuid(),
            second.as_uuid()
        ))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let e = world.envelope(&tenant, "order.created", None);
    world.publish(&e).await?;
    let got = pairs(&deliveries(&drain(&reader, 2, QUIET).await));
    assert!(
        got.contains_key(&(e.event_id, second)),
        "the change behind the burst is live: {got:?}"
    );
    assert!(got.contains_key(&(e.event_id, first)));
    shutdown.cancel();
    running.wait().await?;
    world.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_fans_out_once() -> anyhow::Result<()> {
    let world = World::new().await?;
    let tenant = world.tenant().await?;
    let ep = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &ep, "*").await?;
    let (shutdown, running) = start(&world).await?;
    let reader = world.reader(world.env.catalog().deliveries())?;
    // Two producers publish "the same" event with one key but different event ids, in one
    // batch and across batches; the event id repeated (a producer retry) also fans out once.
    let a = world.envelope(&tenant, "x", Some("order-1"));
    let b = world.envelope(&tenant, "x", Some("order-1"));
    world.publish(&a).await?;
    world.publish(&b).await?;
    world.publish(&a).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = world.envelope(&tenant, "x", Some("order-1"));
    world.publish(&c).await?;
    let other = world.envelope(&tenant, "x", Some("order-2"));
    world.publish(&other).await?;
    let got = pairs(&deliveries(&drain(&reader, 5, QUIET).await));
    let events: HashSet<_> = got.keys().map(|(e, _)| *e).collect();
    // a and b sit in different partitions (keyed by event id), so either may be seen first;
    // exactly one of them wins, and c, published later, is a duplicate of the winner.
    assert_eq!(events.len(), 2, "one event per key: {events:?}");
    assert!(events.contains(&other.event_id));
    assert!(
        events.contains(&a.event_id) ^ events.contains(&b.event_id),
        "{events:?}"
    );
    assert!(!events.contains(&c.event_id));
    let stored: i64 = world
        .db
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    assert_eq!(stored, 2);
    shutdown.cancel();
    running.wait().await?;
    world.cleanup().await
}

/// A batch the database cannot finish within the statement timeout is split, not retried whole
/// forever: here one event's insert waits on a lock another transaction holds. The events
/// before it in the partition fan out all the same (whole, the batch would record none), the
/// ones after it wait so that their order holds, and all follow once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_times_out_is_split_and_the_rest_proceeds() -> anyhow::Result<()> {
    let mut world = World::new().await?;
    world.env.config.database.statement_timeout = Duration::from_secs(1);
    let tenant = world.tenant().await?;
    let endpoint = world.endpoint(&tenant, true).await?;
    world.subscribe(&tenant, &endpoint, "*").await?;
    let events: Vec<_> = (0..10)
        .map(|_| world.envelope(&tenant, "order.placed", None))
        .collect();
    let held = events[6].event_id;
    // An uncommitted row with the same key: fan-out's insert of it waits for this transaction.
    let mut locker = world.env.db().await?;
    let tx = locker.transaction().await?;
    tx.execute(
        "INSERT INTO events (id, tenant_id, event_type, payload, created_at) VALUES ($1, $2, 'order.placed', '{}', now())",
        &[&held, &tenant],
    )
    .await?;
    // One Kafka key: one partition, one batch.
    for e in &events {
        world
            .publish_raw(Some(b"one-partition"), &serde_json::to_vec(e)?)
            .await?;
    }
    let reader = world.reader(world.env.catalog().deliveries())?;
    let (shutdown, running) = start(&world).await?;
    let before: HashSet<_> = events[..6].iter().map(|e| e.event_id).collect();
    let mut got = HashSet::new();
    let mut records = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < before.len() && Instant::now() < deadline {
        for d in deliveries(&drain(&reader, 6, Duration::from_secs(2)).await) {
            records += 1;
            got.insert(d.event_id);
        }
    }
    // A little longer, across several retries of the held one: nothing after it overtakes
    // it, and what is done is not sent again on each retry.
    for d in deliveries(&drain(&reader, 10, Duration::from_secs(5)).await) {
        records += 1;
        got.insert(d.event_id);
    }
    assert_eq!(
        got, before,
        "the events before the held one fan out, and only they"
    );
    assert_eq!(
        records,
        before.len(),
        "each sent once while the held one is retried"
    );
    tx.rollback().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < events.len() && Instant::now() < deadline {
        for d in deliveries(&drain(&reader, 4, Duration::from_secs(2)).await) {
            got.insert(d.event_id);
        }
    }
    assert_eq!(got.len(), events.len(), "all fan out once the lock is gone");
    shutdown.cancel();
    running.wait().await?;
    world.cleanup().await
}
