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
use crate::fleet::{Disruption, Fleet};
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
    /// Stop and restart a service during the load:
    /// `SERVICE[#N]:kill|term@SECONDS[+DOWN]` (repeatable; see docs/performance.md).
    #[arg(long = "disrupt", value_name = "SPEC")]
    disruptions: Vec<Disruption>,
    /// delivery-consumer replicas to run during the bench (extra ones are started from the
    /// first and stopped at the end).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

#[derive(Default)]
struct Tally {
    /// webhook-id → copies received; latencies of first copies at healthy endpoints.
    seen: HashMap<String, u32>,
    latencies_us: Vec<u64>,
    /// (arrival, latency µs) of first copies, for the catch-up after a disruption.
    arrivals: Vec<(Instant, u64)>,
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
            let lat = u64::try_from(chrono::Utc::now().timestamp_micros() - sent).unwrap_or(0);
            t.latencies_us.push(lat);
            t.arrivals.push((now, lat));
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

pub async fn run(
    api: &Api,
    config: &shared::Config,
    json_out: bool,
    args: BenchArgs,
) -> Result<(), CliError> {
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
    let mut fleet = Fleet::sample();
    fleet.check(&args.disruptions, args.replicas, args.seconds)?;
    // From here on every error path stops the replicas this run added.
    if let Err(e) = fleet.add_replicas(args.replicas).await {
        fleet.stop_replicas().await;
        return Err(e);
    }
    let tiers_before = match tier_records(config) {
        Ok(t) => t,
        Err(e) => {
            fleet.stop_replicas().await;
            return Err(e);
        }
    };

    // Publish.
    let filler = "x".repeat(args.payload_bytes);
    let started = Instant::now();
    let disrupting = tokio::spawn(disrupt(fleet, args.disruptions.clone(), started, json_out));
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
    let (mut fleet, windows) = match disrupting
        .await
        .map_err(|e| CliError::failed(format!("disruptions: {e}"), ""))?
    {
        Ok(done) => done,
        Err((mut fleet, e)) => {
            fleet.stop_replicas().await;
            return Err(e);
        }
    };
    // Drain: until every healthy delivery arrived, or 15 s without progress — 45 s after a
    // disruption, since a SIGKILLed member holds its partitions for the group's session
    // timeout (kafka.session_timeout_ms, 30 s) before anyone else may read them.
    let expected = published * healthy_per_event;
    let idle = Duration::from_secs(if args.disruptions.is_empty() { 15 } else { 45 });
    let mut last = (0usize, Instant::now());
    let mut shown = Instant::now();
    loop {
        let got = tally.lock().map(|t| t.seen.len()).unwrap_or(0);
        if got >= expected {
            break;
        }
        if got > last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > idle {
            break;
        }
        if !json_out && shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            eprint!(
                "\r  {published} events published, {got} of {expected} healthy deliveries received   "
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !json_out {
        eprintln!();
    }
    let processes = fleet.processes();
    fleet.stop_replicas().await;
    // The run's figures are worth more than this one count: a broker that fails now turns it
    // into null with a warning instead of discarding the report.
    let deferred: Option<HashMap<String, i64>> = match tier_records(config) {
        Ok(after) => Some(
            after
                .into_iter()
                .map(|(tier, n)| {
                    let before = tiers_before.get(&tier).copied().unwrap_or(0);
                    (tier, n - before)
                })
                .collect(),
        ),
        Err(e) => {
            eprintln!(
                "warning: counting the retry tiers' records failed: {}",
                e.message
            );
            None
        }
    };
    let (pipeline_rate, distinct, received, mut lat, (catch_up, timeline)) = {
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
            (
                catch_up(&windows, &t.arrivals, started),
                timeline(&t.arrivals, started),
            ),
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
            "disruptions": args.disruptions.iter().map(ToString::to_string).collect::<Vec<_>>(),
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
        "deferred_to_tiers": deferred,
        "deferred_total": deferred.as_ref().map(|d| d.values().sum::<i64>()),
        "replicas": args.replicas,
        "disruptions": catch_up,
        "timeline": timeline,
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
    // A client that cannot be built measures nothing.
    let Ok(http) = shared::tls::http_client()
        .pool_max_idle_per_host(1024)
        .build()
    else {
        return 0.0;
    };
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

/// One disruption as it happened: stopped, started again, ready (instants).
struct Window {
    spec: Disruption,
    stopped: Instant,
    started: Instant,
    ready: Option<Instant>,
}

/// Runs the disruptions in order, each at its time from the load's start; hands the fleet back.
async fn disrupt(
    mut fleet: Fleet,
    mut plan: Vec<Disruption>,
    start: Instant,
    quiet: bool,
) -> Result<(Fleet, Vec<Window>), (Fleet, CliError)> {
    plan.sort_by_key(|d| d.at);
    let mut windows = Vec::new();
    for spec in plan {
        tokio::time::sleep_until((start + spec.at).into()).await;
        // The fleet comes back with the error too, so the caller can stop the replicas.
        let (stopped, started, ready) = match fleet.disrupt(&spec).await {
            Ok(w) => w,
            Err(e) => return Err((fleet, e)),
        };
        if !quiet {
            eprintln!(
                "\n  {spec}: stopped at {:.1} s, started again at {:.1} s, ready {}",
                (stopped - start).as_secs_f64(),
                (started - start).as_secs_f64(),
                ready.map_or("never (60 s)".to_owned(), |r| format!(
                    "at {:.1} s",
                    (r - start).as_secs_f64()
                ))
            );
        }
        windows.push(Window {
            spec,
            stopped,
            started,
            ready,
        });
    }
    Ok((fleet, windows))
}

/// A delivery that arrives this much after its publish belongs to a backlog.
const LATE_US: u64 = 1_000_000;

/// For each disruption: the deliveries it made late, when that backlog was gone, and the rate
/// at which it was worked off.
///
/// A late delivery (over 1 s from publish to arrival) is the doing of the last disruption that
/// began before it was published, or within a second after (records already inside the
/// pipeline when a service stopped). "Cleared" is the arrival of that disruption's last late
/// delivery, measured from the restart; with disruptions close together a backlog can outlast
/// the next one, which is why the attribution goes by publish time, not arrival. The catch-up
/// rate counts every delivery that arrived from the restart until the backlog was gone, so it
/// compares with the maximum rate of a run without restarts.
fn catch_up(windows: &[Window], arrivals: &[(Instant, u64)], start: Instant) -> Vec<Value> {
    let secs = |i: Instant| i.saturating_duration_since(start).as_secs_f64();
    let lead = Duration::from_secs(1);
    let owner = |published: Instant| {
        windows
            .iter()
            .rposition(|w| w.stopped.checked_sub(lead).is_none_or(|s| s <= published))
    };
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let late: Vec<Instant> = arrivals
                .iter()
                .filter(|(at, lat)| {
                    *lat > LATE_US
                        && at
                            .checked_sub(Duration::from_micros(*lat))
                            .is_some_and(|p| owner(p) == Some(i))
                })
                .map(|(at, _)| *at)
                .collect();
            let cleared = late.iter().max().copied().filter(|l| *l > w.started);
            // Null when nothing was late: there was no backlog to clear, not one cleared at 0 s.
            let (cleared_s, rate) = cleared.map_or((None, None), |c| {
                let span = (c - w.started).as_secs_f64().max(1e-3);
                let n = arrivals
                    .iter()
                    .filter(|(at, _)| *at >= w.started && *at <= c)
                    .count();
                (Some(span), Some(n as f64 / span))
            });
            json!({
                "disruption": w.spec.to_string(),
                "stopped_at_s": secs(w.stopped),
                "started_at_s": secs(w.started),
                "ready_at_s": w.ready.map(secs),
                "late_deliveries": late.len(),
                "backlog_cleared_after_restart_s": cleared_s,
                "catch_up_deliveries_per_sec": rate,
            })
        })
        .collect()
}

/// Deliveries received in each second of the run, and how many of them were late: where a
/// stall began and ended, at a glance.
fn timeline(arrivals: &[(Instant, u64)], start: Instant) -> Value {
    let mut delivered: Vec<u64> = Vec::new();
    let mut late: Vec<u64> = Vec::new();
    for (at, lat) in arrivals {
        let s = at.saturating_duration_since(start).as_secs() as usize;
        if delivered.len() <= s {
            delivered.resize(s + 1, 0);
            late.resize(s + 1, 0);
        }
        delivered[s] += 1;
        late[s] += u64::from(*lat > LATE_US);
    }
    json!({"delivered_per_second": delivered, "late_per_second": late})
}

/// Records on each retry tier topic (the sum of its partitions' high watermarks). With every
/// endpoint healthy, what a run adds there was deferred: overflow, circuit or Retry-After.
fn tier_records(config: &shared::Config) -> Result<HashMap<String, i64>, CliError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let timeout = Duration::from_secs(10);
    let catalog = shared::kafka::TopicCatalog::new(config);
    let probe: BaseConsumer = shared::kafka::client_config(&config.kafka, "harborctl").create()?;
    let mut out = HashMap::new();
    for tier in catalog.retry_tiers() {
        let metadata = shared::blocking(|| probe.fetch_metadata(Some(&tier.topic), timeout))?;
        let mut total = 0;
        for t in metadata.topics() {
            // A missing topic or one without partitions would count as "nothing deferred".
            if let Some(e) = t.error() {
                return Err(CliError::failed(
                    format!(
                        "{}: {}",
                        tier.topic,
                        rdkafka::error::RDKafkaErrorCode::from(e)
                    ),
                    "",
                ));
            }
            if t.partitions().is_empty() {
                return Err(CliError::failed(
                    format!("{}: no partitions", tier.topic),
                    "",
                ));
            }
            for p in t.partitions() {
                let (_, high) =
                    shared::blocking(|| probe.fetch_watermarks(&tier.topic, p.id(), timeout))?;
                total += high;
            }
        }
        out.insert(tier.name.clone(), total);
    }
    Ok(out)
}
