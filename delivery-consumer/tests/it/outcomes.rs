//! Outcomes end to end with the retry-scheduler, on short test tiers (1 s, 2 s): retries at the
//! expected times, exhaustion into a complete DLQ record, `Retry-After` pausing the endpoint,
//! 410 Gone disabling it, the circuit breaker, and the SSRF guard.

use std::time::{Duration, Instant};

use crate::common::{EndpointSpec, Receiver, Reply, World};
use rdkafka::Message as _;
use shared::ids::DeliveryId;
use shared::records::{DeadLetterReason, DeadLetterRecord};

/// Slack on top of a due time: the scheduler's 1 s target plus a loaded CI machine.
const LATE: Duration = Duration::from_millis(2000);

fn gap(a: &crate::common::Received, b: &crate::common::Received) -> Duration {
    b.at - a.at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_succeeds_on_the_third_attempt_on_time() -> anyhow::Result<()> {
    let mut world = World::new(|_| {}).await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    receiver.behave(|_, n| {
        if n < 2 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let tenant = world.tenant().await?;
    let (endpoint, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("flaky")))
        .await?;
    let event = world.publish(&tenant, 1).await?;

    let got = receiver
        .wait_for("flaky", 3, Duration::from_secs(30))
        .await?;
    let id = DeliveryId::derive(&event, &endpoint).to_string();
    assert!(
        got.iter().all(|r| r.header("webhook-id") == id),
        "one webhook-id across retries"
    );
    for (i, want) in [(0, Duration::from_secs(1)), (1, Duration::from_secs(2))] {
        let g = gap(&got[i], &got[i + 1]);
        assert!(
            g >= want,
            "retry {} came after {g:?}, before its delay {want:?}",
            i + 1
        );
        assert!(
            g <= want + LATE,
            "retry {} came after {g:?}, due after {want:?}",
            i + 1
        );
    }
    let attempts = world
        .wait_status(&event, &endpoint, "delivered", Duration::from_secs(10))
        .await?;
    assert_eq!(attempts, 3);
    let rows = world
        .db
        .query(
            "SELECT attempt, status_code, error_class FROM delivery_attempts ORDER BY attempt",
            &[],
        )
        .await?;
    let rows: Vec<(i32, Option<i32>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            (1, Some(500), Some("http5xx".into())),
            (2, Some(500), Some("http5xx".into())),
            (3, Some(200), None)
        ]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.requests("flaky").len(), 3, "nothing after success");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_reach_the_dlq_with_full_context() -> anyhow::Result<()> {
    let mut world = World::new(|_| {}).await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    let big = "x".repeat(3000);
    receiver.behave(move |_, _| Reply::status(500).body(big.clone()));
    let tenant = world.tenant().await?;
    let (endpoint, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("down")))
        .await?;
    let dlq = world.env.reader(world.env.catalog().dlq())?;
    let event = world.publish(&tenant, 7).await?;

    let records = shared::testing::drain(&dlq, 1, Duration::from_secs(30)).await?;
    assert_eq!(records.len(), 1, "one dead letter");
    let dead: DeadLetterRecord = serde_json::from_slice(records[0].payload().expect("payload"))?;
    assert_eq!(dead.reason, DeadLetterReason::Exhausted);
    let d = &dead.delivery;
    assert_eq!(d.delivery_id, DeliveryId::derive(&event, &endpoint));
    assert_eq!(
        (d.event_id, d.endpoint_id, d.tenant_id),
        (event, endpoint, tenant)
    );
    assert_eq!(d.attempts.len(), 3, "every attempt, with its time");
    assert!(
        d.attempts
            .windows(2)
            .all(|w| w[1].at > w[0].at && w[1].attempt == w[0].attempt + 1)
    );
    assert!(d.attempts.iter().all(|a| a.status_code == Some(500)));
    assert_eq!(dead.last_status, Some(500));
    assert_eq!(dead.error_class, Some(shared::domain::ErrorClass::Http5xx));
    assert_eq!(
        dead.response_body.as_deref().map(str::len),
        Some(1024),
        "cut to 1 KiB"
    );
    assert_eq!(dead.source.topic, world.env.catalog().deliveries());
    // The source is where the dead-lettered (third) attempt's record was read.
    let reader = world.env.reader(world.env.catalog().deliveries())?;
    let on_topic = shared::testing::drain(&reader, 3, Duration::from_secs(10)).await?;
    let third = on_topic
        .iter()
        .find(|m| {
            serde_json::from_slice::<shared::records::DeliveryRecord>(
                m.payload().unwrap_or_default(),
            )
            .is_ok_and(|r| r.delivery_id == d.delivery_id && r.attempt == 3)
        })
        .expect("the third attempt's record on deliveries");
    assert_eq!(
        (dead.source.partition, dead.source.offset),
        (third.partition(), third.offset()),
        "the dead letter names its record's position"
    );
    assert_eq!(receiver.requests("down").len(), 3);
    let attempts = world
        .wait_status(&event, &endpoint, "dead_lettered", Duration::from_secs(10))
        .await?;
    assert_eq!(attempts, 3);
    let row = world
        .db
        .query_one(
            "SELECT dead_letter_reason, dead_letter_source->>'topic' FROM deliveries",
            &[],
        )
        .await?;
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("exhausted")
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some(world.env.catalog().deliveries())
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_the_whole_endpoint() -> anyhow::Result<()> {
    let mut world = World::new(|c| {
        c.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(3)];
    })
    .await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    receiver.behave(|_, n| {
        if n == 0 {
            Reply::status(429).header("retry-after", "2")
        } else {
            Reply::ok()
        }
    });
    let tenant = world.tenant().await?;
    let (endpoint, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("busy")))
        .await?;
    let first = world.publish(&tenant, 0).await?;
    let got = receiver
        .wait_for("busy", 1, Duration::from_secs(30))
        .await?;
    let paused_at = got[0].at;
    // Published while the endpoint is paused: deferred, not sent.
    let mut later = Vec::new();
    for n in 1..=3 {
        later.push(world.publish(&tenant, n).await?);
    }
    for event in later.iter().chain([&first]) {
        world
            .wait_status(event, &endpoint, "delivered", Duration::from_secs(30))
            .await?;
    }
    let all = receiver.requests("busy");
    assert_eq!(all.len(), 5, "one 429, then four deliveries");
    for r in &all[1..] {
        assert!(
            r.at - paused_at >= Duration::from_secs(2),
            "a request came {:?} into the 2 s pause",
            r.at - paused_at
        );
    }
    // Retry-After 2 s picks the 3 s tier (the smallest at or above it).
    let retried = all
        .iter()
        .skip(1)
        .find(|r| r.header("webhook-id") == DeliveryId::derive(&first, &endpoint).to_string())
        .expect("the first event retried");
    let g = retried.at - paused_at;
    assert!(
        g >= Duration::from_secs(3) && g <= Duration::from_secs(3) + LATE,
        "{g:?}"
    );
    assert_eq!(
        world.delivery_row(&first, &endpoint).await?,
        Some(("delivered".into(), 2))
    );
    for event in &later {
        assert_eq!(
            world.delivery_row(event, &endpoint).await?,
            Some(("delivered".into(), 1)),
            "a deferral is not an attempt"
        );
    }
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_and_dead_letters() -> anyhow::Result<()> {
    let mut world = World::new(|_| {}).await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    receiver.behave(|_, _| Reply::status(410));
    let tenant = world.tenant().await?;
    let (endpoint, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("gone")))
        .await?;
    let dlq = world.env.reader(world.env.catalog().dlq())?;
    let event = world.publish(&tenant, 1).await?;
    let records = shared::testing::drain(&dlq, 1, Duration::from_secs(30)).await?;
    assert_eq!(records.len(), 1);
    let dead: DeadLetterRecord = serde_json::from_slice(records[0].payload().expect("payload"))?;
    assert_eq!(dead.reason, DeadLetterReason::Gone);
    assert_eq!(dead.last_status, Some(410));
    let row = world
        .db
        .query_one(
            "SELECT enabled, disabled_reason FROM endpoints WHERE id = $1",
            &[&endpoint],
        )
        .await?;
    assert!(!row.get::<_, bool>(0), "disabled");
    let reason: Option<String> = row.get(1);
    assert!(reason.is_some_and(|r| r.starts_with("410 Gone")));
    world
        .wait_status(&event, &endpoint, "dead_lettered", Duration::from_secs(10))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.requests("gone").len(), 1, "no retry after 410");
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_probes_and_closes() -> anyhow::Result<()> {
    let mut world = World::new(|c| {
        c.retry.schedule = vec![Duration::from_secs(1); 8];
        c.delivery.circuit_failure_threshold = 3;
        c.delivery.circuit_cooldown = Duration::from_secs(3);
    })
    .await?;
    let ops = world.start(true).await?.expect("ops");
    let receiver = Receiver::start().await?;
    let healthy_from = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let flag = healthy_from.clone();
    // The first healthy answer (the probe's) takes 500 ms, so a request sent beside it shows.
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    receiver.behave(move |_, _| match *flag.lock().expect("flag") {
        Some(t) if Instant::now() >= t => {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                Reply::ok().after(Duration::from_millis(500))
            } else {
                Reply::ok()
            }
        }
        _ => Reply::status(503),
    });
    let tenant = world.tenant().await?;
    let (endpoint, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("breaker")))
        .await?;
    let mut events = Vec::new();
    for n in 0..3 {
        events.push(world.publish(&tenant, n).await?);
    }
    let got = receiver
        .wait_for("breaker", 3, Duration::from_secs(30))
        .await?;
    let opened = got[2].at;
    *healthy_from.lock().expect("flag") = Some(opened + Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = crate::common::metrics(ops).await?;
    assert_eq!(
        crate::common::sample(&text, "harborhook_endpoint_circuits_open"),
        1.0,
        "open"
    );
    for event in &events {
        world
            .wait_status(event, &endpoint, "delivered", Duration::from_secs(30))
            .await?;
    }
    let all = receiver.requests("breaker");
    // Nothing during the cool-down; then one probe; the rest only after it succeeded.
    let after: Vec<_> = all.iter().filter(|r| r.at > opened).collect();
    assert!(!after.is_empty());
    let probe = after[0];
    assert!(
        probe.at - opened >= Duration::from_secs(3),
        "probe after {:?}",
        probe.at - opened
    );
    // The others start only once the probe was answered (500 ms after it arrived).
    assert!(
        after[1..]
            .iter()
            .all(|r| r.at >= probe.at + Duration::from_millis(500)),
        "no request beside the probe: {:?}",
        after.iter().map(|r| r.at - probe.at).collect::<Vec<_>>()
    );
    assert_eq!(all.len(), 6, "3 failures, the probe and the 2 others");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = crate::common::metrics(ops).await?;
    assert_eq!(
        crate::common::sample(&text, "harborhook_endpoint_circuits_open"),
        0.0,
        "closed"
    );
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_targets_are_refused() -> anyhow::Result<()> {
    // No allow-list here: loopback is forbidden like any private address.
    let mut world = World::new(|c| {
        c.delivery.ssrf_allow.clear();
        c.retry.schedule = vec![Duration::from_secs(1)];
    })
    .await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    let port = receiver.addr.port();
    let tenant = world.tenant().await?;
    let targets = [
        format!("http://127.0.0.1:{port}/a"),
        format!("http://localhost:{port}/b"),
        // IPv6 literals (mapped, NAT64, ...) never get this far: the API's URL grammar refuses
        // them, and ssrf.rs's unit tests cover the resolver's handling of every such form.
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.1/d".to_owned(),
    ];
    let mut endpoints = Vec::new();
    for url in targets {
        endpoints.push(world.endpoint(&tenant, EndpointSpec::new(url)).await?.0);
    }
    let event = world.publish(&tenant, 1).await?;
    for endpoint in &endpoints {
        world
            .wait_status(&event, endpoint, "dead_lettered", Duration::from_secs(30))
            .await?;
    }
    assert!(receiver.requests("a").is_empty() && receiver.requests("b").is_empty());
    let classes = world
        .db
        .query("SELECT DISTINCT error_class FROM delivery_attempts", &[])
        .await?;
    let classes: Vec<Option<String>> = classes.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        classes,
        [Some("forbidden".to_owned())],
        "a distinct error class"
    );
    world.stop().await
}

/// The retry horizon counts from the platform's first deferral, not from the producer's
/// `occurred_at`: a date in year 1 must not dead-letter a record at its first deferral, and
/// one in 9999 must not keep a record circling behind an open circuit for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_horizon_ignores_the_producers_clock() -> anyhow::Result<()> {
    use chrono::TimeZone as _;
    let mut world = World::new(|c| {
        // Horizon: twice the schedule, 6 s.
        c.retry.schedule = vec![Duration::from_secs(1), Duration::from_secs(2)];
        c.delivery.endpoint_queue = 3;
        c.delivery.circuit_failure_threshold = 1;
        c.delivery.circuit_cooldown = Duration::from_secs(120);
    })
    .await?;
    world.start(true).await?;
    let receiver = Receiver::start().await?;
    receiver.behave(|path, _| {
        if path == "down" {
            Reply::status(503)
        } else {
            Reply::ok().after(Duration::from_millis(200))
        }
    });
    let (ancient, future) = (
        chrono::Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
        chrono::Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).unwrap(),
    );
    // Year 1, on a lane too narrow for them: deferred (overflow), then delivered.
    let narrow_tenant = world.tenant().await?;
    let mut spec = EndpointSpec::new(receiver.url("narrow"));
    spec.max_in_flight = 1;
    let (narrow, _) = world.endpoint(&narrow_tenant, spec).await?;
    let mut old = Vec::new();
    for n in 0..12 {
        old.push(world.publish_at(&narrow_tenant, n, ancient).await?);
    }
    // Year 9999, behind a circuit opened by one failure for 120 s: dead-lettered once the
    // horizon has passed since its first deferral.
    let down_tenant = world.tenant().await?;
    let (down, _) = world
        .endpoint(&down_tenant, EndpointSpec::new(receiver.url("down")))
        .await?;
    world.publish(&down_tenant, 0).await?;
    receiver
        .wait_for("down", 1, Duration::from_secs(30))
        .await?;
    let late = world.publish_at(&down_tenant, 1, future).await?;
    let deferred_from = Instant::now();
    world
        .wait_status(&late, &down, "dead_lettered", Duration::from_secs(30))
        .await?;
    assert!(
        deferred_from.elapsed() >= Duration::from_secs(6),
        "dead-lettered {:?} after its first deferral, before the horizon",
        deferred_from.elapsed()
    );
    let row = world
        .db
        .query_one(
            "SELECT dead_letter_reason, attempts FROM deliveries WHERE id = $1",
            &[&DeliveryId::derive(&late, &down)],
        )
        .await?;
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("exhausted")
    );
    assert_eq!(
        row.get::<_, i32>(1),
        0,
        "never attempted: the circuit is open"
    );
    for event in &old {
        world
            .wait_status(event, &narrow, "delivered", Duration::from_secs(60))
            .await?;
    }
    assert_eq!(receiver.requests("narrow").len(), 12);
    world.stop().await
}
