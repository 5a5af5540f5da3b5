//! Fan-out throughput against the local broker and PostgreSQL.
//!
//! ```text
//! cargo run --release -p fanout-processor --example fanout_bench -- --events 50000 --fanout 1
//! cargo run --release -p fanout-processor --example fanout_bench -- --events 10000 --fanout 10
//! ```
//!
//! Preloads `--events` envelopes on `events` (as a direct producer), starts the real
//! fanout-processor in-process, and measures the time until its consumer group has committed
//! every offset — that is, until every event's deliveries were recorded in PostgreSQL and
//! acknowledged by the broker. Progress every second; `--json` for a report.

#![allow(clippy::print_stdout)] // A benchmark prints its report.

use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use shared::ids::{EndpointId, SubscriptionId, TenantId};
use shared::records::{EventEnvelope, SchemaVersion};
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Endpoints subscribed to every event.
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 500)]
    max_batch: usize,
    /// Consumer loops in the processor (`fanout.workers`).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long)]
    json: bool,
}

fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(offsets
        .elements()
        .iter()
        .map(|e| {
            if let Offset::Offset(o) = e.offset() {
                o
            } else {
                0
            }
        })
        .sum())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut env = TestEnv::new();
    env.config.topics.events_partitions = 6;
    env.config.topics.deliveries_partitions = 12;
    env.config.fanout.max_batch = args.max_batch;
    env.config.fanout.workers = args.workers;
    env.config.database.pool_size = 8;
    let catalog = env.catalog();
    let pool = shared::db::pool(&env.config.database)?;
    shared::db::migrate(&pool, Some(&env.schema)).await?;
    let admin = shared::kafka::admin(&env.config.kafka, "bench")?;
    shared::kafka::ensure_topics(&admin, &catalog, Duration::from_secs(30)).await?;
    let db = env.db().await?;
    let tenant = TenantId::new();
    db.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, 'bench')",
        &[&tenant],
    )
    .await?;
    for _ in 0..args.fanout {
        let ep = EndpointId::new();
        db.execute("INSERT INTO endpoints (id, tenant_id, url) VALUES ($1, $2, 'https://bench.example.com')", &[&ep, &tenant]).await?;
        db.execute(
            "INSERT INTO subscriptions (id, tenant_id, endpoint_id, event_type_pattern) VALUES ($1, $2, $3, '*')",
            &[&SubscriptionId::new(), &tenant, &ep],
        )
        .await?;
    }

    let producer = shared::kafka::producer(&env.config.kafka, "bench")?;
    let payload = json!({"data": "x".repeat(args.payload_bytes)});
    let loaded = Instant::now();
    let mut pending: Vec<rdkafka::producer::DeliveryFuture> = Vec::with_capacity(args.events);
    for _ in 0..args.events {
        let e = EventEnvelope {
            schema_version: SchemaVersion::CURRENT,
            event_id: shared::ids::EventId::new(),
            tenant_id: tenant,
            event_type: "bench.event".parse()?,
            payload: shared::payload::Payload::from_value(&payload),
            occurred_at: chrono::Utc::now(),
            idempotency_key: None,
            ordering_key: None,
        };
        let value = serde_json::to_vec(&e)?;
        let key = e.event_id.to_string();
        // librdkafka's local queue holds 100,000 records: wait for acks in chunks.
        if pending.len() >= 50_000 {
            for p in pending.drain(..) {
                p.await?.map_err(|(e, _)| e)?;
            }
        }
        pending.push(
            producer
                .send_result(FutureRecord::to(catalog.events()).key(&key).payload(&value))
                .map_err(|(e, _)| e)?,
        );
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    if !args.json {
        eprintln!(
            "preloaded {} events in {:.1}s",
            args.events,
            loaded.elapsed().as_secs_f64()
        );
    }

    let group = shared::kafka::group_id(&env.config.kafka, fanout_processor::NAME);
    let watcher: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.config.kafka.bootstrap)
        .set("group.id", &group)
        .create()?;
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let running = fanout_processor::start(env.config.clone(), shutdown.clone()).await?;
    let total = i64::try_from(args.events)?;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = committed(
            &watcher,
            catalog.events(),
            env.config.topics.events_partitions,
        )?;
        if !args.json && start.elapsed().as_millis() % 1000 < 250 {
            eprintln!(
                "  {:>5.1}s  {done}/{total} events committed",
                start.elapsed().as_secs_f64()
            );
        }
        if done >= total {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    shutdown.cancel();
    running.wait().await?;
    let report = json!({
        "events": args.events, "fanout": args.fanout, "payload_bytes": args.payload_bytes, "workers": args.workers,
        "seconds": secs, "events_per_sec": args.events as f64 / secs,
        "deliveries_per_sec": (args.events * args.fanout) as f64 / secs,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "fanout {} ({} workers): {} events in {:.1}s = {:.0} events/s, {:.0} delivery records/s",
            args.fanout,
            args.workers,
            args.events,
            secs,
            args.events as f64 / secs,
            (args.events * args.fanout) as f64 / secs
        );
    }
    env.cleanup().await
}
