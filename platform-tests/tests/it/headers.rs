//! Every producer of `deliveries` — the fan-out (of an API event and of a direct producer's
//! event that came without headers), the retry-scheduler's re-enqueue, the API's replay,
//! `harborctl dlq replay` and `harborctl events replay` — attaches the headers docs/kafka.md
//! promises: a well-formed W3C `traceparent` and `harborhook-tenant-id` naming the record's
//! own tenant. The retry tiers and the DLQ are held to the same rule.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::platform::{Behaviour, Platform, Receiver};
use rdkafka::Message as _;
use rdkafka::message::{Headers as _, OwnedMessage};
use reqwest::Method;
use serde_json::{Value, json};
use shared::kafka::{TENANT_HEADER, TRACEPARENT_HEADER};

fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `00-<32 hex, not all zero>-<16 hex, not all zero>-<2 hex>`.
fn well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit()) && s.chars().any(|c| c != '0')
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && parts[3].len() == 2
}

/// Every record on `topic` (read until the topic stays quiet).
async fn records(p: &Platform, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let reader = p.world.env.reader(topic)?;
    shared::testing::drain(&reader, usize::MAX, Duration::from_secs(8)).await
}

async fn wait_status(p: &Platform, token: &str, event: &str, want: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.delivery_status(token, event).await? != [want] {
        anyhow::ensure!(Instant::now() < deadline, "{event} never became {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_producer_of_deliveries_attaches_the_documented_headers() -> anyhow::Result<()> {
    // The schedule the platform's services run with (platform.rs), so the tiers read below
    // are the ones written to.
    let world = World::new_with(|c| {
        c.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(2)];
    })
    .await?;
    let p = Platform::start(world).await?;
    let (receiver, addr) = Receiver::start().await?;
    let url = |path: &str| format!("http://{addr}/{path}");
    receiver.set(
        "flaky",
        Behaviour {
            fail: 1,
            delay: Duration::ZERO,
        },
    );
    receiver.set(
        "down",
        Behaviour {
            fail: usize::MAX,
            delay: Duration::ZERO,
        },
    );
    let (t, token) = p.tenant().await?;
    let (flaky, _) = p.endpoint(&t, &token, url("flaky"), "order.*").await?;
    let (down, _) = p.endpoint(&t, &token, url("down"), "invoice.*").await?;

    // Fan-out of an API event; its first attempt fails, so the retry-scheduler re-enqueues it.
    let ordered = p
        .publish(&t, &token, "order.created", json!({"n": 1}), None)
        .await?;
    // Fan-out of a direct producer's event whose headers lie: another tenant's id and a
    // traceparent that is not one. Neither may reach `deliveries`.
    let direct = shared::ids::EventId::new();
    let envelope = json!({
        "schema_version": 1, "event_id": direct, "tenant_id": t,
        "event_type": "order.shipped", "payload": {"direct": true}, "occurred_at": chrono::Utc::now(),
    });
    let producer = shared::kafka::producer(&p.world.env.config.kafka, "headers-test")?;
    let events = p.world.env.catalog().events().to_owned();
    let value = serde_json::to_vec(&envelope)?;
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&events)
                .key(&direct.to_string())
                .payload(&value)
                .headers(
                    rdkafka::message::OwnedHeaders::new()
                        .insert(rdkafka::message::Header {
                            key: TENANT_HEADER,
                            value: Some(&shared::ids::TenantId::new().to_string()),
                        })
                        .insert(rdkafka::message::Header {
                            key: TRACEPARENT_HEADER,
                            value: Some("00-not-a-trace-01"),
                        }),
                ),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    wait_status(&p, &token, &ordered, "delivered").await?;
    wait_status(&p, &token, &direct.to_string(), "delivered").await?;

    // A dead letter, replayed through the API, then by harborctl (forced: it need not wait to
    // be dead-lettered again), then the events replayed to one endpoint.
    let invoice = p
        .publish(&t, &token, "invoice.paid", json!({"n": 2}), None)
        .await?;
    wait_status(&p, &token, &invoice, "dead_lettered").await?;
    let (_, page) = p
        .call(
            Method::GET,
            &format!("/v1/events/{invoice}/deliveries"),
            &token,
            None,
            None,
        )
        .await?;
    let delivery = page["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, body) = p
        .call(
            Method::POST,
            &format!("/v1/deliveries/{delivery}:replay"),
            &token,
            Some(json!({"reason": "headers test"})),
            None,
        )
        .await?;
    assert_eq!(s.as_u16(), 202, "{body}");
    let dlq = p.world.json(
        &[
            "dlq",
            "replay",
            "--endpoint",
            &down,
            "--force",
            "--reason",
            "headers test",
        ],
        &[],
    );
    assert_eq!(dlq["replayed"], 1, "{dlq}");
    let replayed = p.world.json(
        &[
            "events",
            "replay",
            "--since",
            "10m",
            "--endpoint",
            &flaky,
            "--reason",
            "headers test",
        ],
        &[],
    );
    assert_eq!(replayed["replayed"], 3, "{replayed}");

    // Which replay kind each replay id is.
    let kinds: BTreeMap<String, String> = p
        .world
        .db
        .query("SELECT id::text, kind FROM replays", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let catalog = p.world.env.catalog();
    let mut producers = BTreeSet::new();
    for m in records(&p, catalog.deliveries()).await? {
        let record: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        let producer = match (
            record["attempt"].as_u64(),
            record["replay"]["replay_id"].as_str(),
        ) {
            (Some(1), None) => "fan-out".to_owned(),
            (Some(1), Some(id)) => format!("replay:{}", kinds.get(id).map_or("?", String::as_str)),
            _ => "retry-scheduler".to_owned(),
        };
        let tenant = header(&m, TENANT_HEADER);
        assert_eq!(
            tenant.as_deref(),
            record["tenant_id"].as_str(),
            "{producer}: the tenant header names the record's tenant"
        );
        let tp = header(&m, TRACEPARENT_HEADER).unwrap_or_default();
        assert!(well_formed(&tp), "{producer}: traceparent `{tp}`");
        producers.insert(producer);
    }
    let want: BTreeSet<String> = [
        "fan-out",
        "retry-scheduler",
        "replay:delivery",
        "replay:dlq",
        "replay:events",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(producers, want, "every producer of deliveries was seen");

    // The tiers and the DLQ: the delivery-consumer's and the retry-scheduler's outcomes.
    let mut outcome_topics: Vec<String> = catalog
        .retry_tiers()
        .iter()
        .map(|t| t.topic.clone())
        .collect();
    outcome_topics.push(catalog.dlq().to_owned());
    let mut outcomes = 0;
    for topic in &outcome_topics {
        for m in records(&p, topic).await? {
            let record: Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
            assert_eq!(
                header(&m, TENANT_HEADER).as_deref(),
                record["delivery"]["tenant_id"].as_str(),
                "{topic}"
            );
            let tp = header(&m, TRACEPARENT_HEADER).unwrap_or_default();
            assert!(well_formed(&tp), "{topic}: traceparent `{tp}`");
            outcomes += 1;
        }
    }
    // The first attempts of `ordered` and `invoice` failed, and so did `invoice`'s retries:
    // records on both tiers, and the dead letter.
    assert!(outcomes >= 4, "{outcomes} retry and dead-letter records");
    p.world.cleanup().await
}

#[test]
fn the_traceparent_check_refuses_what_it_should() {
    assert!(well_formed(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ));
    for bad in [
        "",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0af7651916cd43dd-b7ad6b7169203331-01",
    ] {
        assert!(!well_formed(bad), "{bad}");
    }
}
