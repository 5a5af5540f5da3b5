//! Memory with many pending retries: RSS of the retry-scheduler holding `--pending` records
//! that are not yet due, spread over every tier.
//!
//! ```text
//! cargo run --release -p retry-scheduler --example pending_bench -- --pending 1000000
//! ```
//!
//! Loads the records onto the tier topics, starts the real scheduler in-process, waits until it
//! has paused every tier partition (each head record is hours from due), and reports the
//! process's resident memory before and after. The point: pending retries stay in Kafka, so
//! memory does not grow with their number.

#![allow(clippy::print_stdout)] // A benchmark prints its report.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use serde_json::json;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::{DeliveryRecord, RetryRecord, SchemaVersion};
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    pending: usize,
    #[arg(long)]
    json: bool,
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = TestEnv::new();
    let catalog = env.catalog();
    let admin = shared::kafka::admin(&env.config.kafka, "bench")?;
    shared::kafka::ensure_topics(&admin, &catalog, Duration::from_secs(30)).await?;
    let producer = shared::kafka::producer(&env.config.kafka, "bench")?;
    let tiers = catalog.retry_tiers().to_vec();
    let tenant = TenantId::new();
    let far = chrono::Utc::now() + chrono::Duration::hours(12);
    let loaded = Instant::now();
    let mut pending: Vec<DeliveryFuture> = Vec::new();
    for i in 0..args.pending {
        let tier = &tiers[i % tiers.len()];
        let event = EventId::new();
        let endpoint = EndpointId::new();
        let record = RetryRecord {
            schema_version: SchemaVersion::CURRENT,
            due_at: far + chrono::Duration::milliseconds(i64::try_from(i).unwrap_or(0)),
            tier: tier.name.clone(),
            delivery: DeliveryRecord {
                schema_version: SchemaVersion::CURRENT,
                delivery_id: DeliveryId::derive(&event, &endpoint),
                event_id: event,
                tenant_id: tenant,
                endpoint_id: endpoint,
                event_type: "bench.event".parse()?,
                payload: shared::payload::Payload::from_value(&json!({"n": i})),
                occurred_at: chrono::Utc::now(),
                attempt: 2,
                attempts: Vec::new(),
                replay: None,
                deferred_since: None,
            },
        };
        let value = serde_json::to_vec(&record)?;
        let key = endpoint.to_string();
        if pending.len() >= 50_000 {
            for p in pending.drain(..) {
                p.await?.map_err(|(e, _)| e)?;
            }
            if !args.json {
                eprintln!("  loaded {i}/{}", args.pending);
            }
        }
        pending.push(
            producer
                .send_result(FutureRecord::to(&tier.topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    let load_secs = loaded.elapsed().as_secs_f64();
    let before = rss_mib();
    let shutdown = CancellationToken::new();
    let running = retry_scheduler::start(env.config.clone(), shutdown.clone()).await?;
    let partitions = tiers.len() * usize::try_from(env.config.topics.retry_partitions).unwrap_or(1);
    let metrics_url = format!("http://{}/metrics", running.local_addr);
    let started = Instant::now();
    let mut paused = 0;
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = shared::tls::http_client()
            .build()?
            .get(&metrics_url)
            .send()
            .await?
            .text()
            .await?;
        paused = text
            .lines()
            .find_map(|l| l.strip_prefix("harborhook_retry_paused_partitions "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if !args.json {
            eprintln!(
                "  {paused}/{partitions} tier partitions paused, RSS {:.1} MiB",
                rss_mib()
            );
        }
        if paused == partitions {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib();
    let report = json!({
        "pending": args.pending, "tiers": tiers.len(), "partitions": partitions, "paused": paused,
        "load_seconds": load_secs, "rss_mib_before_start": before, "rss_mib_with_scheduler": after,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} pending over {} partitions ({} paused): process RSS {:.1} MiB before the scheduler, {:.1} MiB with it",
            args.pending, partitions, paused, before, after
        );
    }
    shutdown.cancel();
    running.wait().await?;
    env.cleanup().await
}
