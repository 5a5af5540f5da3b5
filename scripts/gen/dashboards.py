#!/usr/bin/env python3
"""Writes the Grafana dashboards under deploy/monitoring/dashboards/. They are kept here as data
(panel title, unit, queries) because the JSON model is mostly repetition (grid positions,
datasource, legend options); edit this file, run it, and commit both. platform-tests/tests/it/deploy.rs
checks that every metric a panel queries is registered by a service."""
import json, pathlib

OUT = pathlib.Path(__file__).resolve().parents[2] / "deploy/monitoring/dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SLO = 0.995  # keep in step with deploy/monitoring/prometheusrule.yaml


def panel(title, exprs, unit="short", kind="timeseries", desc="", stack=False):
    """exprs: list of (query, legend)."""
    p = {
        "type": kind, "title": title, "description": desc, "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": q, "legendFormat": l, "datasource": DS}
                    for i, (q, l) in enumerate(exprs)],
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}}
        if kind == "timeseries" else {"reduceOptions": {"calcs": ["lastNotNull"]}},
    }
    if stack:
        p["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
    return p


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def dashboard(uid, title, desc, panels, variables=()):
    # A 24-column grid: stats are 6 wide and 4 high, graphs 12 wide and 8 high, rows full width.
    x = y = 0
    line = 0
    for i, p in enumerate(panels):
        p["id"] = i + 1
        w, h = (24, 1) if p["type"] == "row" else (6, 4) if p["type"] == "stat" else (12, 8)
        if x + w > 24 or p["type"] == "row":
            x, y = 0, y + line
            line = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        line = max(line, h)
        if p["type"] == "row":
            x, y, line = 0, y + h, 0
    templating = [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"}]
    templating += list(variables)
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["harborhook"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "utc",
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": templating}, "annotations": {"list": []},
        "links": [{"title": "Harborhook dashboards", "type": "dashboards", "tags": ["harborhook"], "asDropdown": True}],
        "panels": panels,
    }


def rate(metric, by="", window="5m", sel=""):
    grp = f" by ({by})" if by else ""
    return f"sum{grp}(rate({metric}{sel}[{window}]))"


def q(quantile, hist, by="le", window="5m", sel=""):
    return f"histogram_quantile({quantile}, sum by ({by}) (rate({hist}_bucket{sel}[{window}])))"


up = 'up{job=~"harborhook-.*"}'
overview = dashboard("harborhook-overview", "Harborhook / Overview",
    "The pipeline at a glance: intake, fan-out, delivery outcomes, backlog, health.", [
    panel("Events accepted /s", [(rate("harborhook_events_published_total"), "")], "ops", "stat"),
    panel("Deliveries delivered /s", [(rate("harborhook_deliveries_total", sel='{status="delivered"}'), "")], "ops", "stat"),
    panel("Deliveries backlog", [("sum(harborhook_delivery_consumer_lag)", "")], "short", "stat"),
    panel("Pods up", [(f"sum({up})", ""), (f"count({up})", "expected")], "short", "stat"),
    row("Flow"),
    panel("Intake and fan-out", [
        (rate("harborhook_events_published_total"), "events accepted (API)"),
        (rate("harborhook_fanout_events_total", "outcome"), "fan-out: {{outcome}}"),
        (rate("harborhook_fanout_deliveries_total", "status"), "delivery records: {{status}}")], "ops"),
    panel("Delivery outcomes", [(rate("harborhook_deliveries_total", "status"), "{{status}}")], "ops", stack=True),
    panel("API requests by status class", [(rate("harborhook_http_request_duration_seconds_count", "status_class"), "{{status_class}}")], "reqps", stack=True),
    panel("Dead letters by reason", [(rate("harborhook_dlq_total", "reason"), "{{reason}}")], "ops"),
    row("Backlog and health"),
    panel("Consumer lag", [
        ("sum(harborhook_fanout_consumer_lag)", "events (fan-out)"),
        ("sum(harborhook_delivery_consumer_lag)", "deliveries"),
        ("sum by (tier) (harborhook_retry_lag)", "retry {{tier}} (waiting by design)")], "short"),
    panel("Endpoints needing attention", [
        ("sum(harborhook_endpoint_circuits_open)", "circuits open"),
        ("sum(harborhook_endpoints_paused)", "paused by Retry-After"),
        ("sum(increase(harborhook_endpoints_disabled_total[1h]))", "disabled (410) in the last hour")], "short"),
])

delivery = dashboard("harborhook-delivery", "Harborhook / Delivery performance",
    "The delivery-consumer: latency end to end and per attempt, concurrency, retries.", [
    panel("p99 event → delivered", [(q(0.99, "harborhook_delivery_latency_seconds"), "")], "s", "stat"),
    panel("p99 HTTP attempt", [(q(0.99, "harborhook_http_delivery_duration_seconds"), "")], "s", "stat"),
    panel("Requests in flight", [("sum(harborhook_delivery_in_flight)", "")], "short", "stat"),
    panel("Records pending", [("sum(harborhook_delivery_pending)", "")], "short", "stat"),
    row("Latency"),
    panel("Event → delivered (end to end)", [
        (q(0.5, "harborhook_delivery_latency_seconds"), "p50"),
        (q(0.9, "harborhook_delivery_latency_seconds"), "p90"),
        (q(0.99, "harborhook_delivery_latency_seconds"), "p99")], "s"),
    panel("HTTP attempt duration by result", [
        (q(0.5, "harborhook_http_delivery_duration_seconds", "le, result"), "p50 {{result}}"),
        (q(0.99, "harborhook_http_delivery_duration_seconds", "le, result"), "p99 {{result}}")], "s"),
    panel("Attempts by result", [(rate("harborhook_http_delivery_duration_seconds_count", "result"), "{{result}}")], "ops", stack=True),
    panel("Fan-out batch duration", [
        (q(0.5, "harborhook_fanout_batch_duration_seconds"), "p50"),
        (q(0.99, "harborhook_fanout_batch_duration_seconds"), "p99")], "s"),
    row("Concurrency and retries"),
    panel("In flight and pending per pod", [
        ("harborhook_delivery_in_flight", "in flight {{pod}}"),
        ("harborhook_delivery_pending", "pending {{pod}}")], "short"),
    panel("Retries by reason", [(rate("harborhook_retries_total", "reason"), "{{reason}}")], "ops", stack=True),
    panel("Gateway: produce → broker ack", [
        (q(0.5, "harborhook_broker_produce_duration_seconds"), "p50"),
        (q(0.99, "harborhook_broker_produce_duration_seconds"), "p99")], "s"),
    panel("Gateway: API latency by route", [(q(0.99, "harborhook_http_request_duration_seconds", "le, route"), "p99 {{route}}")], "s"),
])

tenant_var = {"name": "tenant", "type": "query", "datasource": DS, "label": "Tenant",
              "query": {"query": "label_values(harborhook_events_published_total, tenant_id)", "refId": "tenants"},
              "definition": "label_values(harborhook_events_published_total, tenant_id)",
              "multi": True, "includeAll": True, "refresh": 2, "sort": 1}
TENANT = '{tenant_id=~"$tenant"}'
tenants = dashboard("harborhook-tenants", "Harborhook / Tenants",
    "Per-tenant intake and delivery outcomes (harborhook_events_published_total and "
    "harborhook_tenant_deliveries_total carry tenant_id). A single delivery's history: "
    "harborctl deliveries / harborctl dlq list --tenant-id.", [
    panel("Events accepted /s", [(rate("harborhook_events_published_total", sel=TENANT), "")], "ops", "stat"),
    panel("Delivered /s", [(rate("harborhook_tenant_deliveries_total", sel='{tenant_id=~"$tenant",status="delivered"}'), "")], "ops", "stat"),
    panel("Failed attempts /s", [(rate("harborhook_tenant_deliveries_total", sel='{tenant_id=~"$tenant",status="retrying"}'), "")], "ops", "stat"),
    panel("Dead-lettered (24 h)", [('sum(increase(harborhook_tenant_deliveries_total{tenant_id=~"$tenant",status="dead_lettered"}[24h]))', "")], "short", "stat"),
    row("Intake"),
    panel("Events accepted by tenant", [(rate("harborhook_events_published_total", "tenant_id", sel=TENANT), "{{tenant_id}}")], "ops", stack=True),
    panel("Top 10 tenants by intake (1h)", [('topk(10, sum by (tenant_id) (increase(harborhook_events_published_total[1h])))', "{{tenant_id}}")], "short"),
    row("Delivery"),
    panel("Outcomes by tenant", [(rate("harborhook_tenant_deliveries_total", "tenant_id, status", sel=TENANT), "{{tenant_id}} {{status}}")], "ops"),
    panel("Failed-attempt ratio by tenant", [(
        'sum by (tenant_id) (rate(harborhook_tenant_deliveries_total{tenant_id=~"$tenant",status="retrying"}[15m]))'
        ' / clamp_min(sum by (tenant_id) (rate(harborhook_tenant_deliveries_total{tenant_id=~"$tenant"}[15m])), 1e-9)',
        "{{tenant_id}}")], "percentunit",
        desc="Failed attempts over all attempts: a tenant whose receivers are failing stands out."),
    panel("Top 10 tenants by dead letters (24h)", [('topk(10, sum by (tenant_id) (increase(harborhook_tenant_deliveries_total{status="dead_lettered"}[24h])))', "{{tenant_id}}")], "short"),
    panel("Share of intake", [(f'{rate("harborhook_events_published_total", "tenant_id", sel=TENANT)} / ignoring(tenant_id) group_left {rate("harborhook_events_published_total")}', "{{tenant_id}}")], "percentunit"),
], [tenant_var])

kafka = dashboard("harborhook-kafka", "Harborhook / Kafka lag and retry tiers",
    "Backlog per topic and partition, retry tier timing, skipped malformed records.", [
    panel("Events lag", [("sum(harborhook_fanout_consumer_lag)", "")], "short", "stat"),
    panel("Deliveries lag", [("sum(harborhook_delivery_consumer_lag)", "")], "short", "stat"),
    panel("Retry records waiting", [("sum(harborhook_retry_lag)", "")], "short", "stat"),
    panel("Paused tier partitions", [("sum(harborhook_retry_paused_partitions)", "")], "short", "stat"),
    row("Consumer lag"),
    panel("events lag by partition", [("sum by (partition) (harborhook_fanout_consumer_lag)", "p{{partition}}")], "short"),
    panel("deliveries lag by partition", [("sum by (partition) (harborhook_delivery_consumer_lag)", "p{{partition}}")], "short"),
    row("Retry tiers"),
    panel("Records waiting per tier", [("sum by (tier) (harborhook_retry_lag)", "{{tier}}")], "short"),
    panel("Re-enqueued per tier", [(rate("harborhook_retry_reenqueued_total", "tier"), "{{tier}}")], "ops", stack=True),
    panel("Lateness per tier (p99)", [(q(0.99, "harborhook_retry_lateness_seconds", "le, tier"), "{{tier}}")], "s"),
    panel("Malformed records skipped", [
        (rate("harborhook_delivery_malformed_total", window="15m"), "deliveries"),
        (rate("harborhook_retry_malformed_total", "tier", window="15m"), "retry {{tier}}")], "ops"),
])

def burn(w):
    return f"harborhook:delivery_failures:ratio_rate{w} / {1 - SLO:.3f}"

slo = dashboard("harborhook-slo", "Harborhook / Delivery SLO",
    f"{SLO:.1%} of deliveries that reach an end are delivered (per delivery, not per attempt; "
    "410 Gone and removed endpoints excluded). Burn rate 1 spends the 30-day budget in 30 days.", [
    panel("Success, 30 days", [(f"1 - (sum(increase(harborhook_dlq_total{{reason=\"exhausted\"}}[30d])) / clamp_min(sum(increase(harborhook_deliveries_total{{status=\"delivered\"}}[30d])) + sum(increase(harborhook_dlq_total{{reason=\"exhausted\"}}[30d])), 1e-9))", "")], "percentunit", "stat"),
    panel("Error budget left, 30 days", [(f"1 - (sum(increase(harborhook_dlq_total{{reason=\"exhausted\"}}[30d])) / clamp_min(sum(increase(harborhook_deliveries_total{{status=\"delivered\"}}[30d])) + sum(increase(harborhook_dlq_total{{reason=\"exhausted\"}}[30d])), 1e-9)) / {1 - SLO:.3f}", "")], "percentunit", "stat"),
    panel("Burn rate, 1 h", [(burn("1h"), "")], "short", "stat"),
    panel("Burn rate, 6 h", [(burn("6h"), "")], "short", "stat"),
    row("Burn"),
    panel("Burn rate by window", [(burn(w), w) for w in ["5m", "1h", "6h", "1d", "3d"]], "short",
          desc="Fast-burn page above 14.4 (1 h and 5 m); slow-burn ticket above 6 (6 h and 30 m) or 3 (1 d and 2 h)."),
    panel("Failure ratio", [("harborhook:delivery_failures:ratio_rate1h", "1h"), ("harborhook:delivery_failures:ratio_rate1d", "1d")], "percentunit"),
    panel("Delivered vs exhausted", [
        (rate("harborhook_deliveries_total", sel='{status="delivered"}', window="1h"), "delivered"),
        (rate("harborhook_dlq_total", sel='{reason="exhausted"}', window="1h"), "exhausted")], "ops"),
    panel("Dead letters excluded from the SLI", [(rate("harborhook_dlq_total", "reason", sel='{reason!="exhausted"}', window="1h"), "{{reason}}")], "ops"),
])

OUT.mkdir(parents=True, exist_ok=True)
for name, d in [("overview", overview), ("delivery", delivery), ("tenants", tenants), ("kafka", kafka), ("slo", slo)]:
    (OUT / f"harborhook-{name}.json").write_text(json.dumps(d, indent=2) + "\n")
