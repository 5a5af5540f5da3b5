//! Signed delivery end to end (events → fan-out → delivery-consumer → loopback receivers), with
//! the signatures checked by an implementation written here from the specification, not by
//! the code under test; and a slow endpoint on the same partition as a healthy one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{EndpointSpec, Receiver, Reply, World, expected_ids};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use serde_json::json;
use sha2::Sha256;
use shared::domain::SigningSecret;

/// Standard Webhooks, from the specification: HMAC-SHA256 keyed with the secret's decoded
/// bytes over `{id}.{timestamp}.{body}`, base64; the header lists `v1,<sig>` space-separated.
fn standard_webhooks_verifies(
    secret: &SigningSecret,
    id: &str,
    ts: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let key = BASE64
        .decode(secret.expose().trim_start_matches("whsec_"))
        .expect("secret base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = BASE64.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}

/// The original system's scheme: hex HMAC-SHA256 over the body followed by the timestamp.
fn legacy_verifies(secret: &SigningSecret, ts: &str, body: &[u8], header: &str) -> bool {
    let key = BASE64
        .decode(secret.expose().trim_start_matches("whsec_"))
        .expect("secret base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(body);
    mac.update(ts.as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("sha256="))
        .any(|sig| sig == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_as_the_contract_says() -> anyhow::Result<()> {
    let mut world = World::new(|_| {}).await?;
    let ops = world.start(true).await?.expect("delivery ops address");
    let receiver = Receiver::start().await?;
    let tenant = world.tenant().await?;
    let mut standard = EndpointSpec::new(receiver.url("standard"));
    standard.rotated = true;
    standard.headers = json!({"X-Custom": "yes"});
    let (std_id, std_secrets) = world.endpoint(&tenant, standard).await?;
    let mut legacy = EndpointSpec::new(receiver.url("legacy"));
    legacy.scheme = "harborhook_legacy";
    let (legacy_id, legacy_secrets) = world.endpoint(&tenant, legacy).await?;

    let mut events = HashMap::new();
    for n in 0..3 {
        events.insert(n, world.publish(&tenant, n).await?);
    }
    let got = receiver
        .wait_for("standard", 3, Duration::from_secs(30))
        .await?;
    let want = expected_ids(&events, &std_id);
    for r in &got {
        let id = r.header("webhook-id");
        let n = want
            .get(id)
            .copied()
            .expect("webhook-id is the derived delivery id");
        assert_eq!(r.json(), json!({"n": n}), "the body is the payload");
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-custom"), "yes", "custom headers are sent");
        let ts = r.header("webhook-timestamp");
        let age = chrono::Utc::now().timestamp() - ts.parse::<i64>()?;
        assert!((0..30).contains(&age), "timestamp is this attempt's: {ts}");
        let sig = r.header("webhook-signature");
        assert_eq!(
            sig.split(' ').count(),
            2,
            "two signatures while a rotation overlaps: {sig}"
        );
        for secret in &std_secrets {
            assert!(
                standard_webhooks_verifies(secret, id, ts, &r.body, sig),
                "each secret verifies: {sig}"
            );
        }
        assert!(!standard_webhooks_verifies(
            &SigningSecret::generate(),
            id,
            ts,
            &r.body,
            sig
        ));
        let traceparent = r.header("traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert!(parts.len() == 4, "traceparent: {traceparent}");
        assert_eq!(
            parts[1],
            crate::common::TRACE_ID,
            "the publisher's trace continues to the receiver"
        );
    }

    let got = receiver
        .wait_for("legacy", 3, Duration::from_secs(30))
        .await?;
    let want = expected_ids(&events, &legacy_id);
    for r in &got {
        assert!(want.contains_key(r.header("webhook-id")));
        let ts = r.header("x-harborhook-timestamp");
        let sig = r.header("x-harborhook-signature");
        assert!(
            legacy_verifies(&legacy_secrets[0], ts, &r.body, sig),
            "{sig}"
        );
        assert!(r.headers.get("webhook-signature").is_none());
    }

    for event in events.values() {
        for endpoint in [&std_id, &legacy_id] {
            let attempts = world
                .wait_status(event, endpoint, "delivered", Duration::from_secs(10))
                .await?;
            assert_eq!(attempts, 1);
        }
    }
    let recorded = world
        .db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status_code = 200 AND error_class IS NULL)
             FROM delivery_attempts",
            &[],
        )
        .await?;
    assert_eq!(
        (recorded.get::<_, i64>(0), recorded.get::<_, i64>(1)),
        (6, 6)
    );

    shared::testing::check_ops_endpoints(ops).await?;
    let text = crate::common::metrics(ops).await?;
    assert_eq!(
        crate::common::sample(&text, "harborhook_deliveries_total{status=\"delivered\"}"),
        6.0
    );
    for name in [
        "harborhook_delivery_latency_seconds_count",
        "harborhook_http_delivery_duration_seconds_count",
        "harborhook_delivery_in_flight",
        "harborhook_endpoint_circuits_open",
        "harborhook_endpoints_paused",
    ] {
        assert!(text.contains(name), "{name} is exported");
    }
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_delay_a_healthy_one_on_its_partition() -> anyhow::Result<()> {
    // One partition: every record of both endpoints shares it.
    let mut world = World::new(|c| c.topics.deliveries_partitions = 1).await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    receiver.behave(|path, _| {
        if path == "slow" {
            Reply::ok().after(Duration::from_secs(2))
        } else {
            Reply::ok()
        }
    });
    let tenant = world.tenant().await?;
    world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("slow")))
        .await?;
    world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("healthy")))
        .await?;

    // Warm up (first connection, caches), then measure.
    world.publish(&tenant, 0).await?;
    receiver
        .wait_for("healthy", 1, Duration::from_secs(30))
        .await?;
    const N: usize = 30;
    let mut published = HashMap::new();
    for n in 1..=N {
        published.insert(n, Instant::now());
        world.publish(&tenant, n).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = receiver
        .wait_for("healthy", N + 1, Duration::from_secs(30))
        .await?;
    let mut worst = Duration::ZERO;
    for r in &got {
        let n = r.json()["n"].as_u64().expect("n") as usize;
        if let Some(at) = published.get(&n) {
            worst = worst.max(r.at - *at);
        }
    }
    // The slow endpoint holds 10 requests of 2 s each in flight and its other records queue in
    // its own lane; with head-of-line blocking the healthy one would wait seconds.
    assert!(
        worst < Duration::from_millis(1000),
        "healthy endpoint's worst latency {worst:?}"
    );
    let slow_so_far = receiver.requests("slow").len();
    assert!(
        slow_so_far < N + 1,
        "the slow endpoint is still behind ({slow_so_far})"
    );
    receiver
        .wait_for("slow", N + 1, Duration::from_secs(30))
        .await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_caps_and_rate_limits_hold_per_endpoint() -> anyhow::Result<()> {
    let mut world = World::new(|_| {}).await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    receiver.behave(|path, _| {
        if path == "capped" {
            Reply::ok().after(Duration::from_millis(300))
        } else {
            Reply::ok()
        }
    });
    let tenant = world.tenant().await?;
    let mut capped = EndpointSpec::new(receiver.url("capped"));
    capped.max_in_flight = 2;
    world.endpoint(&tenant, capped).await?;
    let mut limited = EndpointSpec::new(receiver.url("limited"));
    limited.rate_limit = Some(5.0);
    world.endpoint(&tenant, limited).await?;
    const N: usize = 15;
    for n in 0..N {
        world.publish(&tenant, n).await?;
    }
    let got = receiver
        .wait_for("limited", N, Duration::from_secs(30))
        .await?;
    // A burst of one second's worth (5), then 5 per second: the other 10 take 2 s.
    let span = got[N - 1].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1800),
        "15 requests at 5/s took only {span:?}"
    );
    receiver
        .wait_for("capped", N, Duration::from_secs(30))
        .await?;
    assert_eq!(
        receiver.max_concurrency("capped"),
        2,
        "at most 2 in flight, and 2 used"
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_defers_without_counting_an_attempt() -> anyhow::Result<()> {
    let mut world = World::new(|c| c.delivery.endpoint_queue = 3).await?;
    let ops = world.start(true).await?.expect("ops");
    let receiver = Receiver::start().await?;
    receiver.behave(|_, _| Reply::ok().after(Duration::from_millis(200)));
    let tenant = world.tenant().await?;
    let mut spec = EndpointSpec::new(receiver.url("narrow"));
    spec.max_in_flight = 1;
    let (endpoint, _) = world.endpoint(&tenant, spec).await?;
    let mut events = Vec::new();
    for n in 0..12 {
        events.push(world.publish(&tenant, n).await?);
    }
    for event in &events {
        let attempts = world
            .wait_status(event, &endpoint, "delivered", Duration::from_secs(60))
            .await?;
        assert_eq!(attempts, 1, "a deferral is not an attempt");
    }
    let text = crate::common::metrics(ops).await?;
    let overflow = crate::common::sample(&text, "harborhook_retries_total{reason=\"overflow\"}");
    assert!(
        overflow >= 1.0,
        "records beyond the lane's queue were deferred: {overflow}"
    );
    assert_eq!(receiver.max_concurrency("narrow"), 1);
    world.stop().await
}
