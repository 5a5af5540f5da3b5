//! SIGKILL the delivery-consumer process mid-flight, twice, and restart it: afterwards every
//! delivery has reached the receiver, every row says delivered, and the only duplicates are
//! repeats of a delivery with its one `webhook-id` and body.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{EndpointSpec, Receiver, Reply, World, expected_ids};
use secrecy::ExposeSecret as _;

const EVENTS: usize = 600;

fn spawn(world: &World) -> anyhow::Result<Child> {
    let c = &world.env.config;
    Ok(Command::new(env!("CARGO_BIN_EXE_delivery-consumer"))
        .env_clear()
        .env("HARBORHOOK_DATABASE__URL", c.database.url.expose_secret())
        .env("HARBORHOOK_DATABASE__SCHEMA", &world.env.schema)
        .env("HARBORHOOK_DATABASE__POOL_SIZE", "4")
        .env("HARBORHOOK_KAFKA__BOOTSTRAP", &c.kafka.bootstrap)
        .env("HARBORHOOK_KAFKA__TOPIC_PREFIX", &c.kafka.topic_prefix)
        .env("HARBORHOOK_KAFKA__ENSURE_TOPICS_ON_START", "false")
        // A killed member leaves the group only when its session times out.
        .env("HARBORHOOK_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("HARBORHOOK_RETRY__SCHEDULE", "1s,2s")
        .env("HARBORHOOK_DELIVERY__OPS_LISTEN", "127.0.0.1:0")
        .env("HARBORHOOK_DELIVERY__SSRF_ALLOW", "127.0.0.0/8")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing() -> anyhow::Result<()> {
    let mut world = World::new(|_| {}).await?;
    // Fan-out and the scheduler in-process; the delivery-consumer as a process to kill.
    world.start(false).await?;
    let receiver = Receiver::start().await?;
    // Slow enough that a kill always lands with requests in flight.
    receiver.behave(|_, _| Reply::ok().after(Duration::from_millis(20)));
    let tenant = world.tenant().await?;
    let (a, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("a")))
        .await?;
    let (b, _) = world
        .endpoint(&tenant, EndpointSpec::new(receiver.url("b")))
        .await?;
    let mut events = HashMap::new();
    for n in 0..EVENTS {
        events.insert(n, world.publish(&tenant, n).await?);
    }

    let mut process = Guard(spawn(&world)?);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let seen = receiver.requests("a").len() + receiver.requests("b").len();
        let done = distinct(&receiver, "a") == EVENTS && distinct(&receiver, "b") == EVENTS;
        if done || Instant::now() > deadline {
            break;
        }
        if kills < 2 && seen > 2 * EVENTS * (kills + 1) / 3 {
            process.0.kill()?; // SIGKILL
            process.0.wait()?;
            kills += 1;
            process = Guard(spawn(&world)?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kills, 2, "killed twice mid-flight");
    let mut duplicates = 0;
    for (path, endpoint) in [("a", &a), ("b", &b)] {
        let want = expected_ids(&events, endpoint);
        let got = receiver.requests(path);
        let mut by_id: HashMap<String, Vec<&crate::common::Received>> = HashMap::new();
        for r in &got {
            by_id
                .entry(r.header("webhook-id").to_owned())
                .or_default()
                .push(r);
        }
        assert_eq!(by_id.len(), EVENTS, "{path}: every delivery arrived");
        for (id, copies) in &by_id {
            let n = want.get(id).copied().expect("a known delivery id");
            assert!(
                copies.iter().all(|r| r.json()["n"] == n),
                "duplicates share id and body"
            );
            duplicates += copies.len() - 1;
        }
    }
    eprintln!(
        "duplicates after two SIGKILLs: {duplicates} of {}",
        2 * EVENTS
    );
    // The last outcomes are being recorded while the receiver already has everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = world
            .db
            .query_one(
                "SELECT count(*) FILTER (WHERE status <> 'delivered'), count(*) FROM deliveries",
                &[],
            )
            .await?;
        let (open, all): (i64, i64) = (row.get(0), row.get(1));
        if open == 0 {
            assert_eq!(all, 2 * EVENTS as i64);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{open} rows not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(process);
    world.stop().await
}

fn distinct(receiver: &Receiver, path: &str) -> usize {
    let ids: std::collections::HashSet<String> = receiver
        .requests(path)
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    ids.len()
}
