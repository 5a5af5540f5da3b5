//! Delivery throughput and healthy-endpoint latency against the local broker, PostgreSQL and a
//! fast loopback receiver.
//!
//! ```text
//! # backlog: preload records, measure deliveries/s until all arrived
//! cargo run --release -p delivery-consumer --example delivery_bench -- --endpoints 100 --records 50000
//! # open loop: a steady rate, with 10% of endpoints slow (2 s) and 10% failing (500)
//! cargo run --release -p delivery-consumer --example delivery_bench -- --endpoints 100 \
//!     --rate 1000 --seconds 20 --slow-share 0.1 --failing-share 0.1
//! ```
//!
//! Records are written straight to `deliveries` (with their rows in PostgreSQL, as fan-out
//! writes them), so this measures the delivery-consumer alone: signing, HTTP, recording
//! attempts, offsets. The receiver runs in the same process (both share the 2 cores). Latency
//! is measured per healthy endpoint, from the moment the record was produced to the moment the
//! receiver got it. Progress every second; `--json` for a report.

#![allow(clippy::print_stdout)] // A benchmark prints its report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::{DeliveryRecord, SchemaVersion};
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// Backlog mode: records preloaded before the consumer starts.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Open-loop mode: records per second (0 = backlog mode).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Share of endpoints answering after 2 s.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Share of endpoints answering 500.
    #[arg(long, default_value_t = 0.0)]
    failing_share: f64,
    /// Per-endpoint in-flight cap.
    #[arg(long, default_value_t = 10)]
    max_in_flight: i32,
    #[arg(long, default_value_t = 512)]
    payload_bytes: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Tally {
    healthy: AtomicU64,
    other: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

async fn receive(
    State(tally): State<Arc<Tally>>,
    Path((kind, _id)): Path<(String, usize)>,
    body: axum::body::Bytes,
) -> StatusCode {
    match kind.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tally.other.fetch_add(1, Ordering::Relaxed);
            StatusCode::OK
        }
        "fail" => {
            tally.other.fetch_add(1, Ordering::Relaxed);
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => {
            let sent = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["sent_us"].as_i64());
            if let Some(sent) = sent {
                let now = Utc::now().timestamp_micros();
                let lat = u64::try_from(now - sent).unwrap_or(0);
                tally.latencies_us.lock().expect("tally").push(lat);
            }
            tally.healthy.fetch_add(1, Ordering::Relaxed);
            StatusCode::OK
        }
    }
}

struct Setup {
    env: TestEnv,
    producer: FutureProducer,
    tenant: TenantId,
    endpoints: Vec<(EndpointId, &'static str)>,
    db: tokio_postgres::Client,
}

impl Setup {
    /// A record for endpoint `i`, with its event and delivery rows.
    async fn produce(&self, batch: &[(usize, EventId)], filler: &str) -> anyhow::Result<()> {
        let events: Vec<EventId> = batch.iter().map(|(_, e)| *e).collect();
        let ids: Vec<DeliveryId> = batch
            .iter()
            .map(|(i, e)| DeliveryId::derive(e, &self.endpoints[*i].0))
            .collect();
        let eps: Vec<EndpointId> = batch.iter().map(|(i, _)| self.endpoints[*i].0).collect();
        self.db
            .execute(
                "WITH e AS (INSERT INTO events (id, tenant_id, event_type, payload, created_at)
                   SELECT id, $2, 'bench.event', '{}', now() FROM UNNEST($1::uuid[]) id)
                 INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, event_type)
                 SELECT d, $2, e, ep, 'bench.event'
                 FROM UNNEST($3::uuid[], $1::uuid[], $4::uuid[]) AS u(d, e, ep)",
                &[&events, &self.tenant, &ids, &eps],
            )
            .await?;
        let topic = self.env.catalog().deliveries().to_owned();
        let mut sends = Vec::with_capacity(batch.len());
        for ((i, event), id) in batch.iter().zip(&ids) {
            let endpoint = self.endpoints[*i].0;
            let record = DeliveryRecord {
                schema_version: SchemaVersion::CURRENT,
                delivery_id: *id,
                event_id: *event,
                tenant_id: self.tenant,
                endpoint_id: endpoint,
                event_type: "bench.event".parse()?,
                payload: shared::payload::Payload::from_value(
                    &json!({"sent_us": Utc::now().timestamp_micros(), "filler": filler}),
                ),
                occurred_at: Utc::now(),
                attempt: 1,
                attempts: Vec::new(),
                replay: None,
                deferred_since: None,
            };
            let value = serde_json::to_vec(&record)?;
            let key = endpoint.to_string();
            let producer = self.producer.clone();
            let topic = topic.clone();
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            });
        }
        for r in futures::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut env = TestEnv::new();
    env.config.topics.deliveries_partitions = 6;
    env.config.database.pool_size = 8;
    let pool = shared::db::pool(&env.config.database)?;
    shared::db::migrate(&pool, Some(&env.schema)).await?;
    let admin = shared::kafka::admin(&env.config.kafka, "bench")?;
    shared::kafka::ensure_topics(&admin, &env.catalog(), Duration::from_secs(30)).await?;
    let db = env.db().await?;

    let tally = Arc::new(Tally::default());
    let app = axum::Router::new()
        .route("/{kind}/{id}", axum::routing::post(receive))
        .with_state(tally.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let tenant = TenantId::new();
    db.execute(
        "INSERT INTO tenants (id, name) VALUES ($1, 'bench')",
        &[&tenant],
    )
    .await?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let (slow, failing) = (
        (args.endpoints as f64 * args.slow_share).round() as usize,
        (args.endpoints as f64 * args.failing_share).round() as usize,
    );
    let mut endpoints = Vec::with_capacity(args.endpoints);
    for i in 0..args.endpoints {
        let kind = if i < slow {
            "slow"
        } else if i < slow + failing {
            "fail"
        } else {
            "ok"
        };
        endpoints.push((EndpointId::new(), kind));
    }
    let ids: Vec<EndpointId> = endpoints.iter().map(|e| e.0).collect();
    let urls: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| format!("http://{addr}/{kind}/{i}"))
        .collect();
    db.execute(
        "INSERT INTO endpoints (id, tenant_id, url, max_in_flight)
         SELECT id, $2, url, $4 FROM UNNEST($1::uuid[], $3::text[]) AS u(id, url)",
        &[&ids, &tenant, &urls, &args.max_in_flight],
    )
    .await?;
    db.execute(
        "INSERT INTO endpoint_secrets (endpoint_id, secret) SELECT id, $2 FROM UNNEST($1::uuid[]) id",
        &[&ids, &shared::domain::SigningSecret::generate().expose()],
    )
    .await?;
    let setup = Setup {
        producer: shared::kafka::producer(&env.config.kafka, "bench")?,
        env,
        tenant,
        endpoints,
        db,
    };
    let filler = "x".repeat(args.payload_bytes);
    let shutdown = CancellationToken::new();
    let mut produced = 0usize;
    let mut next = 0usize;
    let mut batch_of = |n: usize| -> Vec<(usize, EventId)> {
        (0..n)
            .map(|_| {
                next += 1;
                (next % args.endpoints, EventId::new())
            })
            .collect()
    };

    let (started, expected_healthy);
    if args.rate == 0 {
        for chunk in (0..args.records).collect::<Vec<_>>().chunks(2000) {
            setup.produce(&batch_of(chunk.len()), &filler).await?;
        }
        produced = args.records;
        eprintln!("preloaded {produced} records; starting the consumer");
        let service = delivery_consumer::start(setup.env.config.clone(), shutdown.clone()).await?;
        // The clock starts at the first delivery: group join and cache load are not throughput.
        while tally.healthy.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        started = Instant::now();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let healthy_share = 1.0 - (slow + failing) as f64 / args.endpoints as f64;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let want = (produced as f64 * healthy_share).floor() as u64;
        expected_healthy = want;
        let mut last = 0;
        while tally.healthy.load(Ordering::Relaxed) < want {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = tally.healthy.load(Ordering::Relaxed);
            eprintln!("  {now}/{want} delivered (+{}/s)", now - last);
            last = now;
            anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "too slow");
        }
        shutdown.cancel();
        service.wait().await?;
    } else {
        let service = delivery_consumer::start(setup.env.config.clone(), shutdown.clone()).await?;
        started = Instant::now();
        let per_tick = usize::try_from(args.rate / 10).unwrap_or(1).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while started.elapsed() < Duration::from_secs(args.seconds) {
            tick.tick().await;
            setup.produce(&batch_of(per_tick), &filler).await?;
            produced += per_tick;
            if produced.is_multiple_of(per_tick * 10) {
                eprintln!(
                    "  {produced} produced, {} healthy delivered",
                    tally.healthy.load(Ordering::Relaxed)
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        expected_healthy = tally.healthy.load(Ordering::Relaxed);
        shutdown.cancel();
        service.wait().await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = tally.latencies_us.lock().expect("tally").clone();
    lat.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let rate = tally.healthy.load(Ordering::Relaxed) as f64 / elapsed;
    let report = json!({
        "endpoints": args.endpoints,
        "mode": if args.rate == 0 { "backlog" } else { "open-loop" },
        "offered_rate": args.rate,
        "slow_share": args.slow_share,
        "failing_share": args.failing_share,
        "records": produced,
        "healthy_delivered": expected_healthy,
        "seconds": elapsed,
        "healthy_deliveries_per_sec": rate,
        "healthy_latency_ms": {
            "p50": percentile(&lat, 0.5),
            "p90": percentile(&lat, 0.9),
            "p99": percentile(&lat, 0.99),
            "max": percentile(&lat, 1.0),
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    setup.env.cleanup().await
}
