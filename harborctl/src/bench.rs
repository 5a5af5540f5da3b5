//! `harborctl bench`: drives the whole running pipeline (gateway → fan-out → delivery) and
//! measures it, then measures the raw limit of the same receiver without the pipeline.
//!
//! It starts its own receiver, creates `--tenants` tenants with `--fanout` endpoints each
//! (a share of them slow or failing), publishes through the API in batches — open loop at
//! `--rate` events/s, or as fast as the gateway accepts — for `--seconds`, then waits for the
//! deliveries. Reported: sustained deliveries/s at the healthy endpoints, publish→delivered
//! latency (p50/p90/p99/max), lost and duplicate deliveries, CPU seconds and peak RSS of each
//! service process (from `.stack/services/*.pid`, as `harborctl dev up` writes them); then the
//! same number of signed POSTs sent straight to the receiver at the same concurrency, and the
//! pipeline/raw ratio. `--report FILE` writes the JSON report.

#![allow(clippy::print_stdout, clippy::print_stderr)] // A benchmark prints its report.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::CliError;
use crate::api::Api;
use crate::output::emit;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Endpoints per tenant, each subscribed to every event: the fan-out.
    #[arg(long, default_value_t = 10)]
    fanout: usize,
    #[arg(long, default_value_t = 256)]
    payload_bytes: usize,
    /// Share of endpoints answering after 2 s.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    /// Share of endpoints answering 500.
    #[arg(long, default_value_t = 0.0)]
    failing_share: f64,
    /// Events per second (open loop); 0 publishes as fast as the gateway accepts.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Events per publish request (`events:batch`).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value = "127.0.0.1:0")]
    receiver: std::net::SocketAddr,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Tally {
    /// webhook-id → copies received; latencies of first copies at healthy endpoints.
    seen: HashMap<String, u32>,
    latencies_us: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

type Shared = Arc<Mutex<Tally>>;

async fn receive(
    State(t): State<Shared>,
    Path((kind, _)): Path<(String, usize)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> StatusCode {
    match kind.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return StatusCode::OK;
        }
        "fail" => return StatusCode::INTERNAL_SERVER_ERROR,
        "raw" => return StatusCode::OK,
        _ => {}
    }
    let now = Instant::now();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let sent = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["sent_us"].as_i64());
    let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let copies = t.seen.entry(id).or_insert(0);
    *copies += 1;
    if *copies == 1 {
        if let Some(sent) = sent {
            let lat = chrono::Utc::now().timestamp_micros() - sent;
            t.latencies_us.push(u64::try_from(lat).unwrap_or(0));
        }
        t.first.get_or_insert(now);
        t.last = Some(now);
    }
    StatusCode::OK
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// (CPU seconds, peak RSS in MiB) of a process, from /proc.
fn usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks / 100.0, hwm_kb / 1024.0))
}

fn services() -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(".stack/services") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e
                .file_name()
                .to_string_lossy()
                .strip_suffix(".pid")?
                .to_owned();
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, pid))
        })
        .collect()
}

pub async fn run(api: &Api, json_out: bool, args: BenchArgs) -> Result<(), CliError> {
    let tally: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/{kind}/{n}", axum::routing::post(receive))
        .with_state(tally.clone());
    let listener = tokio::net::TcpListener::bind(args.receiver)
        .await
        .map_err(|e| {
            CliError::failed(format!("receiver: {e}"), "pick another --receiver address")
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::failed(e.to_string(), ""))?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Tenants, endpoints (slow ones first, then failing, then healthy), subscriptions.
    let per = args.fanout.max(1);
    let slow = (per as f64 * args.slow_share).round() as usize;
    let failing = (per as f64 * args.failing_share).round() as usize;
    let healthy_per_event = per.saturating_sub(slow + failing);
    let mut tenants = Vec::new();
    let mut n = 0usize;
    for _ in 0..args.tenants {
        let t = api
            .call(Method::POST, "/v1/tenants", Some(json!({"name": "bench"})))
            .await?;
        let tenant = t["id"].as_str().unwrap_or_default().to_owned();
        for i in 0..per {
            let kind = if i < slow {
                "slow"
            } else if i < slow + failing {
                "fail"
            } else {
                "ok"
            };
            n += 1;
            let e = api
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/endpoints"),
                    Some(json!({"url": format!("http://{addr}/{kind}/{n}")})),
                )
                .await?;
            let body = json!({"endpoint_id": e["id"], "event_type": "*"});
            api.call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/subscriptions"),
                Some(body),
            )
            .await?;
        }
        tenants.push(tenant);
    }
    let before: HashMap<String, (f64, f64)> = services()
        .into_iter()
        .filter_map(|(name, pid)| usage(pid).map(|u| (name, u)))
        .collect();

    // Publish.
    let filler = "x".repeat(args.payload_bytes);
    let started = Instant::now();
    let (mut published, mut refused, mut seq) = (0usize, 0usize, 0u64);
    let mut next_at = Instant::now();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        for tenant in &tenants {
            let events: Vec<Value> = (0..args.batch)
                .map(|_| {
                    seq += 1;
                    json!({"event_type": "bench.event", "payload": {"seq": seq, "sent_us": chrono::Utc::now().timestamp_micros(), "filler": filler}})
                })
                .collect();
            match api
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/events:batch"),
                    Some(json!({"events": events})),
                )
                .await
            {
                Ok(r) => {
                    let ok = r["results"]
                        .as_array()
                        .map_or(0, |a| a.iter().filter(|x| x["status"] == 202).count());
                    published += ok;
                    refused += args.batch - ok;
                }
                Err(_) => refused += args.batch,
            }
            if args.rate > 0.0 {
                next_at += Duration::from_secs_f64(args.batch as f64 / args.rate);
                tokio::time::sleep_until(next_at.into()).await;
            }
        }
        if !json_out {
            let got = tally.lock().map(|t| t.seen.len()).unwrap_or(0);
            eprint!("\r  {published} events published, {got} healthy deliveries received   ");
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    // Drain: until every healthy delivery arrived, or 15 s without progress.
    let expected = published * healthy_per_event;
    let mut last = (0usize, Instant::now());
    loop {
        let got = tally.lock().map(|t| t.seen.len()).unwrap_or(0);
        if got >= expected {
            break;
        }
        if got > last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(15) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !json_out {
        eprintln!();
    }
    let processes: Vec<Value> = services()
        .into_iter()
        .filter_map(|(name, pid)| {
            let (cpu, rss) = usage(pid)?;
            let cpu0 = before.get(&name).map_or(0.0, |b| b.0);
            Some(json!({"service": name, "pid": pid, "cpu_seconds": cpu - cpu0, "peak_rss_mib": rss}))
        })
        .collect();
    let (pipeline_rate, distinct, received, mut lat) = {
        let t = tally
            .lock()
            .map_err(|_| CliError::failed("tally poisoned", ""))?;
        let span = match (t.first, t.last) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => publish_secs,
        };
        let received: u64 = t.seen.values().map(|c| u64::from(*c)).sum();
        (
            t.seen.len() as f64 / span,
            t.seen.len(),
            received,
            t.latencies_us.clone(),
        )
    };
    lat.sort_unstable();

    // The raw limit: the same number of signed POSTs, straight to the receiver.
    let concurrency = (tenants.len() * healthy_per_event * 10).clamp(1, 1000);
    let raw_rate = raw_limit(addr, distinct.max(1000), concurrency, args.payload_bytes).await;
    let report = json!({
        "config": {
            "tenants": args.tenants, "fanout": per, "slow_share": args.slow_share,
            "failing_share": args.failing_share, "rate": args.rate, "seconds": args.seconds,
            "payload_bytes": args.payload_bytes, "batch": args.batch,
        },
        "events_published": published,
        "events_refused": refused,
        "publish_rate": published as f64 / publish_secs,
        "healthy_deliveries_expected": expected,
        "healthy_deliveries_received": distinct,
        "lost": expected.saturating_sub(distinct),
        "duplicates": received - distinct as u64,
        "deliveries_per_sec": pipeline_rate,
        "latency_ms": {"p50": pct(&lat, 0.5), "p90": pct(&lat, 0.9), "p99": pct(&lat, 0.99), "max": pct(&lat, 1.0)},
        "processes": processes,
        "raw": {"deliveries_per_sec": raw_rate, "concurrency": concurrency},
        "pipeline_to_raw": pipeline_rate / raw_rate.max(1e-9),
    });
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default())
            .map_err(|e| CliError::failed(format!("{}: {e}", path.display()), ""))?;
    }
    emit(json_out, &report, |r| {
        serde_json::to_string_pretty(r).unwrap_or_default()
    });
    Ok(())
}

/// Signed POSTs of the same shape, `count` of them at `concurrency`, straight to the receiver.
async fn raw_limit(
    addr: std::net::SocketAddr,
    count: usize,
    concurrency: usize,
    payload: usize,
) -> f64 {
    let secret = shared::domain::SigningSecret::generate();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap_or_default();
    let filler = "x".repeat(payload);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (http, secret, filler, next) =
                (http.clone(), secret.clone(), filler.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                    let body =
                        serde_json::to_vec(&json!({"seq": w, "sent_us": 0, "filler": filler}))
                            .unwrap_or_default();
                    let ts = chrono::Utc::now().timestamp();
                    let sig = shared::signing::standard_signature(&[&secret], "dlv_raw", ts, &body);
                    let _ = http
                        .post(format!("http://{addr}/raw/{w}"))
                        .header("webhook-id", "dlv_raw")
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", sig)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    count as f64 / started.elapsed().as_secs_f64()
}
