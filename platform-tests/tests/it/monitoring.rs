//! Alerts and dashboards (deploy/monitoring/) against the running services: every metric an
//! alert, a recording rule or a dashboard panel queries is one the four services register (read
//! from their `/metrics`, started in-process against the real broker and PostgreSQL), every
//! recording rule queried is defined, every query parses as PromQL (promql-parser: syntax and
//! argument types), and every alert links a runbook that exists.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::manifests::{kind, render, root, str_of};
use crate::common::platform::Receiver;
use serde_json::{Value, json};
use shared::jwt::{Claims, DevKeys};
use tokio_util::sync::CancellationToken;

/// Sample names a scrape can return, from the `# TYPE` lines of an OpenMetrics exposition:
/// a counter `x` is sampled as `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The metric and recording-rule names a PromQL expression mentions (ours only: `harborhook_`
/// and `harborhook:`; `up` is Prometheus's own).
fn referenced(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("harborhook_") || t.starts_with("harborhook:"))
        .map(str::to_owned)
        .collect()
}

/// Every `expr` string anywhere in a dashboard.
fn dashboard_exprs(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Families that have series only once something happened: a tenant published, its event was
/// delivered, partitions were assigned and their lag measured (every 5 s).
const NEED_TRAFFIC: [&str; 6] = [
    "harborhook_events_published_total",
    "harborhook_tenant_deliveries_total",
    "harborhook_http_request_duration_seconds_bucket",
    "harborhook_fanout_consumer_lag",
    "harborhook_delivery_consumer_lag",
    "harborhook_retry_lag",
];

/// What the four services' `/metrics` list once they run and one event went through. A family
/// without series is not in a scrape, so the closed label sets are created at zero at start
/// (each service's `metrics.rs`) and the open ones (tenant, route, partition) by the traffic.
async fn registered_metrics() -> anyhow::Result<BTreeSet<String>> {
    let mut world = World::new().await?;
    let keys_dir = std::env::temp_dir().join(format!("{}-keys", world.env.schema));
    let keys = DevKeys::load_or_create(&keys_dir)?;
    world.env.config.gateway.auth.jwks_file =
        Some(shared::jwt::jwks_path(&keys_dir).display().to_string());
    let config = world.env.config.clone();
    let shutdown = CancellationToken::new();
    let services = vec![
        ingest_gateway::start(config.clone(), shutdown.clone()).await?,
        fanout_processor::start(config.clone(), shutdown.clone()).await?,
        delivery_consumer::start(config.clone(), shutdown.clone()).await?,
        retry_scheduler::start(config.clone(), shutdown.clone()).await?,
    ];
    let http = shared::tls::http_client().build()?;
    let api = format!("http://{}", services[0].local_addr);
    let auth = &config.gateway.auth;
    let claims = |tenant, operator| {
        Claims::new(
            &auth.issuer,
            &auth.audience,
            "monitoring-test",
            tenant,
            operator,
            Duration::from_secs(600),
        )
    };
    let operator = keys.issue(&claims(None, true))?;
    let tenant: Value = http
        .post(format!("{api}/v1/tenants"))
        .bearer_auth(&operator)
        .json(&json!({"name": "metrics"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tenant = str_of(&tenant["id"]).to_owned();
    let token = keys.issue(&claims(Some(tenant.parse()?), false))?;
    // One delivery to a loopback receiver, for the per-tenant outcome counter.
    let (_receiver, receiver_addr) = Receiver::start().await?;
    let endpoint: Value = http
        .post(format!("{api}/v1/tenants/{tenant}/endpoints"))
        .bearer_auth(&token)
        .json(&json!({"url": format!("http://{receiver_addr}/metrics-check")}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    http.post(format!("{api}/v1/tenants/{tenant}/subscriptions"))
        .bearer_auth(&token)
        .json(&json!({"endpoint_id": endpoint["id"], "event_type": "metrics.checked"}))
        .send()
        .await?
        .error_for_status()?;
    http.post(format!("{api}/v1/tenants/{tenant}/events:publish"))
        .bearer_auth(&token)
        .json(&json!({"event_type": "metrics.checked", "payload": {}}))
        .send()
        .await?
        .error_for_status()?;

    let deadline = Instant::now() + Duration::from_secs(60);
    let names = loop {
        let mut names = BTreeSet::new();
        for s in &services {
            let text = http
                .get(format!("http://{}/metrics", s.local_addr))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            names.extend(sample_names(&text));
        }
        if NEED_TRAFFIC.iter().all(|m| names.contains(*m)) || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    shutdown.cancel();
    for s in services {
        s.wait().await?;
    }
    let _ = std::fs::remove_dir_all(&keys_dir);
    world.cleanup().await?;
    Ok(names)
}

#[test]
fn the_name_readers_can_fail() {
    let names = sample_names(
        "# HELP harborhook_dlq x\n# TYPE harborhook_dlq counter\n# TYPE harborhook_lat histogram\n",
    );
    assert!(names.contains("harborhook_dlq_total") && names.contains("harborhook_lat_bucket"));
    assert!(!names.contains("harborhook_dlq"));
    let refs = referenced(
        "sum(rate(harborhook_nope_total{a=\"b\"}[5m])) / harborhook:x:ratio_rate5m > up",
    );
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["harborhook:x:ratio_rate5m", "harborhook_nope_total"]
    );
    // The parser refuses what Prometheus would: a bad bracket, rate() of an instant vector.
    assert!(promql_parser::parser::parse("sum(rate(x[5m])").is_err());
    assert!(promql_parser::parser::parse("rate(x)").is_err());
    assert!(promql_parser::parser::parse("sum by (le) (rate(x_bucket[5m]))").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboards_query_only_registered_metrics() -> anyhow::Result<()> {
    let registered = registered_metrics().await?;
    // The metrics the alerts are about, by name: the scrape is not vacuous.
    for m in NEED_TRAFFIC.into_iter().chain([
        "harborhook_deliveries_total",
        "harborhook_dlq_total",
        "harborhook_retry_lateness_seconds_bucket",
        "harborhook_delivery_consumer_lag",
        "harborhook_fanout_consumer_lag",
        "harborhook_endpoint_circuits_open",
        "harborhook_endpoints_disabled_total",
    ]) {
        assert!(registered.contains(m), "{m} not registered: {registered:?}");
    }

    let docs = render("production");
    let rules = kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let mut recorded = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut alerts = Vec::new();
    for group in rules[0]["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_owned());
            }
            exprs.push((
                format!("rule {}", rule["alert"]),
                str_of(&rule["expr"]).to_owned(),
            ));
            if rule["alert"].is_string() {
                alerts.push(rule);
            }
        }
    }
    let dashboards = kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect::<Vec<_>>();
    assert_eq!(
        dashboards.len(),
        5,
        "overview, delivery, tenants, kafka, slo"
    );
    for cm in dashboards {
        for (file, json) in cm["data"].as_object().expect("data") {
            // The ConfigMap carries the committed file, byte for byte.
            let committed =
                std::fs::read_to_string(root().join("deploy/monitoring/dashboards").join(file))?;
            assert_eq!(str_of(json), committed, "{file}");
            let dashboard: Value = serde_json::from_str(str_of(json))?;
            let mut found = Vec::new();
            dashboard_exprs(&dashboard, &mut found);
            assert!(found.len() >= 5, "{file}: {} queries", found.len());
            exprs.extend(found.into_iter().map(|e| (file.clone(), e)));
        }
    }
    let mut unknown = Vec::new();
    for (at, expr) in &exprs {
        // Syntax and types (a range vector where rate() wants one, and so on), as Prometheus
        // would check them when loading the rules.
        if let Err(e) = promql_parser::parser::parse(expr) {
            unknown.push(format!("{at}: does not parse: {e}: {expr}"));
        }
        for name in referenced(expr) {
            let known = if name.contains(':') {
                recorded.contains(&name)
            } else {
                registered.contains(&name)
            };
            if !known {
                unknown.push(format!("{at}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "invalid, or not registered or recorded: {unknown:#?}"
    );

    // Each alert links its runbook, which exists.
    let required = [
        "HarborhookDeliverySLOFastBurn",
        "HarborhookDLQGrowth",
        "HarborhookRetryLate",
        "HarborhookDeliveryBacklog",
        "HarborhookEndpointCircuitsOpen",
        "HarborhookEndpointsDisabled",
        "HarborhookServiceDown",
    ];
    let names: BTreeSet<&str> = alerts.iter().map(|a| str_of(&a["alert"])).collect();
    for r in required {
        assert!(names.contains(r), "missing alert {r}");
    }
    for alert in alerts {
        let url = str_of(&alert["annotations"]["runbook_url"]);
        let file = url
            .split_once("/docs/operations/")
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("{}: runbook_url {url:?}", alert["alert"]));
        assert!(
            root().join("docs/operations").join(file).is_file(),
            "{}: runbook {file} does not exist",
            alert["alert"]
        );
        assert!(alert["labels"]["severity"].is_string());
    }
    Ok(())
}
