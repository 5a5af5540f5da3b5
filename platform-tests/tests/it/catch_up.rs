//! Catching up is not overflow: a backlog that built while the delivery-consumer was away
//! (a crash and restart, as in a rolling deployment) is delivered to healthy endpoints at their
//! pace, never deferred to a retry tier, and arrives within a bound a deferral to a long tier
//! would break.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::platform::{Platform, Receiver};
use serde_json::{Value, json};
use shared::ids::{DeliveryId, EndpointId, EventId};
use tokio_util::sync::CancellationToken;

const ENDPOINTS: usize = 10;
const DELIVERY_CONSUMER: usize = 2;

/// The sum of a counter family's samples whose labels contain `filter`.
fn counter(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_after_a_restart_is_delivered_not_deferred() -> anyhow::Result<()> {
    let mut p = Platform::start(World::new().await?).await?;
    let (receiver, addr) = Receiver::start().await?;
    let (tenant, token) = p.tenant().await?;
    let mut endpoints = Vec::new();
    for i in 0..ENDPOINTS {
        let (id, _) = p
            .endpoint(&tenant, &token, format!("http://{addr}/ep{i}"), "*")
            .await?;
        endpoints.push(id.parse::<EndpointId>()?);
    }

    // ~185 events/s × 10 endpoints (batches of 20 every 100 ms, less the requests' time): a
    // 15 s absence leaves ~28,000 deliveries, more than `delivery.max_pending` holds.
    let accepted: Arc<Mutex<Vec<EventId>>> = Arc::default();
    let stop = CancellationToken::new();
    let load = {
        let (accepted, stop) = (accepted.clone(), stop.clone());
        let url = format!("{}/v1/tenants/{tenant}/events:batch", p.api);
        let http = shared::tls::http_client()
            .timeout(Duration::from_secs(5))
            .build()?;
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut unparsed = 0usize;
            while !stop.is_cancelled() {
                let events: Vec<Value> = (0..20)
                    .map(|_| {
                        n += 1;
                        json!({"event_type": "order.created", "payload": {"n": n}})
                    })
                    .collect();
                let answer = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"events": events}))
                    .send()
                    .await;
                if let Ok(r) = answer
                    && r.status().is_success()
                {
                    // 202: all accepted; 207: those with status 202 were.
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    let Some(results) = v["results"].as_array() else {
                        unparsed += 1;
                        continue;
                    };
                    let ids = results
                        .iter()
                        .filter(|e| e["status"] == 202)
                        .filter_map(|e| e["event_id"].as_str()?.parse::<EventId>().ok());
                    accepted.lock().expect("accepted").extend(ids);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unparsed
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("catch-up: SIGKILL the delivery-consumer for 15 s");
    p.kill(DELIVERY_CONSUMER);
    tokio::time::sleep(Duration::from_secs(15)).await;
    p.restart(DELIVERY_CONSUMER).await?;
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let unparsed = load.await?;
    let stopped = Instant::now();
    assert_eq!(
        unparsed, 0,
        "every accepted batch answered with its results"
    );

    let accepted = accepted.lock().expect("accepted").clone();
    assert!(accepted.len() > 500, "the load ran ({})", accepted.len());
    let expected: HashMap<String, HashSet<String>> = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| {
            let ids = accepted
                .iter()
                .map(|e| DeliveryId::derive(e, ep).to_string())
                .collect();
            (format!("ep{i}"), ids)
        })
        .collect();
    // Measured: all delivered 40 to 77 s after the load's end on the development machine, and
    // at ~210/s (125 s and still 7,840 short) on a slower CI machine (debug build, two cores);
    // the same run deferred 18,671 and missed 11,494 at 60 s while pace alone decided (issue 20).
    // So the wait is bounded by progress, not by one machine's speed: it fails when nothing
    // arrives for `STALL` (longer than the group's session timeout, 30 s, which a rejoin after
    // the SIGKILL may wait out), or at `BOUND`, which a deferral to a 5-minute tier (due at the
    // earliest 300 s after the restart, 295 s after the load's end) cannot meet. The counters
    // below catch a deferral to any tier directly.
    const STALL: Duration = Duration::from_secs(60);
    const BOUND: Duration = Duration::from_secs(250);
    let (mut last_missing, mut last_progress, mut last_report) =
        (usize::MAX, Instant::now(), Instant::now());
    let missing = loop {
        let mut missing = 0usize;
        for (path, ids) in &expected {
            let got: HashSet<String> = receiver
                .requests(path)
                .iter()
                .filter_map(|(_, h, _)| Some(h.get("webhook-id")?.to_str().ok()?.to_owned()))
                .collect();
            assert!(
                got.is_subset(ids),
                "{path} received a webhook-id that is none of its deliveries"
            );
            missing += ids.len() - got.len();
        }
        if missing < last_missing {
            (last_missing, last_progress) = (missing, Instant::now());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "catch-up: {missing} missing {:?} after the load's end",
                stopped.elapsed()
            );
            last_report = Instant::now();
        }
        if missing == 0 || stopped.elapsed() > BOUND || last_progress.elapsed() > STALL {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let caught_up = restarted.elapsed();
    let total: usize = expected.values().map(HashSet::len).sum();
    let (_, metrics) = p.ops_get(DELIVERY_CONSUMER, "/metrics").await?;
    let deferred = counter(
        &metrics,
        "harborhook_deliveries_total",
        "status=\"deferred\"",
    );
    let retried = counter(&metrics, "harborhook_retries_total", "reason=");
    eprintln!(
        "catch-up: {total} deliveries, {missing} missing, {caught_up:?} after the restart; {deferred} deferred, {retried} sent to a tier: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("harborhook_retries_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        missing,
        0,
        "{missing} of {total} deliveries not received ({:?} after the load's end, the last progress {:?} ago)",
        stopped.elapsed(),
        last_progress.elapsed()
    );
    assert!(
        metrics.contains("harborhook_deliveries_total"),
        "the metric exists"
    );
    assert_eq!(
        (deferred, retried),
        (0.0, 0.0),
        "healthy endpoints' backlog is delivered, not deferred"
    );
    p.world.cleanup().await
}
