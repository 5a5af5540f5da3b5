//! Gateway publish benchmark against the local PostgreSQL and broker.
//!
//! ```text
//! cargo run --release -p ingest-gateway --example publish_bench -- --rate 1000 --duration 10s
//! ```
//!
//! Starts the real gateway in-process (its own schema and topic prefix), then runs two phases:
//! a fixed open-loop rate (latency is measured from each request's scheduled time, so a stall
//! shows up as latency instead of silently lowering the rate), and a closed loop at maximum
//! with `--concurrency` workers. Reports accepted publishes per second and p50/p90/p99/max.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // A benchmark prints its report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use shared::jwt::{Claims, DevKeys};
use shared::testing::TestEnv;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Requests per second of the fixed-rate phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Workers of the maximum-rate phase (and the in-flight cap of the fixed-rate one).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Size of each event's payload.
    #[arg(long, default_value_t = 512)]
    payload_bytes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    accepted: u64,
    failed: u64,
}

impl Phase {
    fn report(&mut self, name: &str, elapsed: Duration) -> serde_json::Value {
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
            self.latencies
                .get(i)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        json!({
            "phase": name,
            "accepted": self.accepted,
            "failed": self.failed,
            "seconds": elapsed.as_secs_f64(),
            "accepted_per_sec": self.accepted as f64 / elapsed.as_secs_f64(),
            "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
        })
    }
}

struct Target {
    http: reqwest::Client,
    url: String,
    token: String,
    body: serde_json::Value,
}

impl Target {
    async fn publish(&self) -> bool {
        match self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&self.body)
            .send()
            .await
        {
            Ok(resp) => resp.status() == 202,
            Err(_) => false,
        }
    }
}

fn progress(name: &str, start: Instant, phase: &Phase, json: bool) {
    if !json {
        eprintln!(
            "  {name}: {:>4.0}s  accepted {:>8}  failed {:>6}",
            start.elapsed().as_secs_f64(),
            phase.accepted,
            phase.failed
        );
    }
}

async fn fixed_rate(target: Arc<Target>, args: &Args) -> serde_json::Value {
    let phase = Arc::new(Mutex::new(Phase::default()));
    let permits = Arc::new(Semaphore::new(args.concurrency * 4));
    let total = u64::from(args.rate) * args.duration.as_secs();
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        // Waiting for a permit counts as latency: the request was due at `scheduled`.
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (target, shared_phase) = (target.clone(), phase.clone());
        tasks.push(tokio::spawn(async move {
            let ok = target.publish().await;
            let latency = scheduled.elapsed();
            drop(permit);
            let mut p = shared_phase.lock().await;
            p.latencies.push(latency);
            if ok { p.accepted += 1 } else { p.failed += 1 }
        }));
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress("fixed-rate", start, &*phase.lock().await, args.json);
            last_report = Instant::now();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let mut p = phase.lock().await;
    p.report("fixed_rate", elapsed)
}

async fn maximum(target: Arc<Target>, args: &Args) -> serde_json::Value {
    let phase = Arc::new(Mutex::new(Phase::default()));
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (target, shared_phase) = (target.clone(), phase.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = target.publish().await;
                let mut p = shared_phase.lock().await;
                p.latencies.push(t.elapsed());
                if ok { p.accepted += 1 } else { p.failed += 1 }
            }
        }));
    }
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress("maximum", start, &*phase.lock().await, args.json);
    }
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let mut p = phase.lock().await;
    p.report("maximum", elapsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut env = TestEnv::new();
    let keys_dir = std::env::temp_dir().join(format!("{}-bench-keys", env.schema));
    let keys = DevKeys::load_or_create(&keys_dir)?;
    env.config.gateway.auth.jwks_file =
        Some(shared::jwt::jwks_path(&keys_dir).display().to_string());
    env.config.gateway.rate_limit_per_sec = 10_000_000;
    env.config.gateway.rate_limit_burst = 10_000_000;
    env.config.database.pool_size = 16;
    // Production-like partitioning of `events`.
    env.config.topics.events_partitions = 6;
    let shutdown = CancellationToken::new();
    let running = ingest_gateway::start(env.config.clone(), shutdown.clone()).await?;
    let base = format!("http://{}", running.local_addr);
    let http = shared::tls::http_client()
        .pool_max_idle_per_host(args.concurrency * 4)
        .build()?;
    let auth = &env.config.gateway.auth;
    let operator = keys.issue(&Claims::new(
        &auth.issuer,
        &auth.audience,
        "bench",
        None,
        true,
        Duration::from_secs(3600),
    ))?;
    let tenant: serde_json::Value = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(&operator)
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let tenant_id: shared::ids::TenantId = tenant["id"].as_str().unwrap_or_default().parse()?;
    let token = keys.issue(&Claims::new(
        &auth.issuer,
        &auth.audience,
        "bench",
        Some(tenant_id),
        false,
        Duration::from_secs(3600),
    ))?;
    let target = Arc::new(Target {
        http,
        url: format!("{base}/v1/tenants/{tenant_id}/events:publish"),
        token,
        body: json!({"event_type": "bench.event", "payload": {"data": "x".repeat(args.payload_bytes)}}),
    });

    if !args.json {
        eprintln!(
            "publish benchmark: {} req/s fixed for {:?}, then maximum with {} workers",
            args.rate, args.duration, args.concurrency
        );
    }
    let fixed = fixed_rate(target.clone(), &args).await;
    let max = maximum(target, &args).await;
    let report = json!({"payload_bytes": args.payload_bytes, "concurrency": args.concurrency, "phases": [fixed, max]});
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in report["phases"].as_array().into_iter().flatten() {
            println!(
                "{:<11} accepted {:>7} failed {:>5}  {:>8.0}/s  p50 {:>6.1} ms  p90 {:>6.1} ms  p99 {:>6.1} ms  max {:>7.1} ms",
                p["phase"].as_str().unwrap_or(""),
                p["accepted"],
                p["failed"],
                p["accepted_per_sec"].as_f64().unwrap_or(0.0),
                p["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                p["latency_ms"]["p90"].as_f64().unwrap_or(0.0),
                p["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                p["latency_ms"]["max"].as_f64().unwrap_or(0.0),
            );
        }
    }
    shutdown.cancel();
    running.wait().await?;
    let _ = std::fs::remove_dir_all(&keys_dir);
    env.cleanup().await
}
