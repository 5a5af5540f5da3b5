//! Chaos: under continuous load, SIGKILL each service in turn and restart it, restart the
//! broker (nisshi with PostgreSQL storage, so its data survives, like Kafka) and restart the
//! services' PostgreSQL server. At the end every accepted event has been delivered to each
//! subscribed endpoint, and every repeat carries its delivery's `webhook-id`. The broker and
//! the PostgreSQL server are the test's own, so the tests beside it are not disturbed. Runs alone with `cargo nextest run -p platform-tests chaos`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::World;
use crate::common::platform::{Platform, Receiver, SERVICES};
use secrecy::SecretString;
use serde_json::{Value, json};
use shared::ids::{DeliveryId, EndpointId, EventId};
use shared::testing::{BrokerDb, BrokerGuard, PrivatePostgres, free_port, start_broker};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_survives_crashes_and_restarts() -> anyhow::Result<()> {
    let broker_db = BrokerDb::create().await?;
    // The services' PostgreSQL is a server of the test's own, so it can be restarted.
    let postgres = PrivatePostgres::start()?;
    let port = free_port()?;
    let mut broker = BrokerGuard(start_broker(port, &broker_db.url)?);
    let db_url = postgres.url();
    let world = World::new_with(|c| {
        c.kafka.bootstrap = format!("127.0.0.1:{port}");
        c.database.url = SecretString::from(db_url);
    })
    .await?;
    let mut p = Platform::start(world).await?;
    let (receiver, addr) = Receiver::start().await?;
    let (tenant, token) = p.tenant().await?;
    let (all, _) = p
        .endpoint(&tenant, &token, format!("http://{addr}/all"), "*")
        .await?;
    let (orders, _) = p
        .endpoint(&tenant, &token, format!("http://{addr}/orders"), "order.*")
        .await?;

    // Continuous load: ~40 publishes a second; only 202s count as accepted.
    let accepted: Arc<Mutex<Vec<EventId>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let stop = CancellationToken::new();
    let load = {
        let (accepted, refused, stop) = (accepted.clone(), refused.clone(), stop.clone());
        let url = format!("{}/v1/tenants/{tenant}/events:publish", p.api);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let body = json!({"event_type": "order.created", "payload": {"n": n}});
                let answer = http.post(&url).bearer_auth(&token).json(&body).send().await;
                match answer {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = v["event_id"].as_str().and_then(|s| s.parse().ok()) {
                            accepted.lock().expect("accepted").push(id);
                        }
                    }
                    _ => *refused.lock().expect("refused") += 1,
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    // fan-out, delivery, scheduler, then the gateway itself.
    for i in [1, 2, 3, 0] {
        eprintln!("chaos: SIGKILL {}", SERVICES[i]);
        p.kill(i);
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.restart(i).await?;
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    eprintln!("chaos: restarting the broker");
    drop(broker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker = BrokerGuard(start_broker(port, &broker_db.url)?);
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("chaos: restarting PostgreSQL");
    postgres.restart()?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.cancel();
    load.await?;

    let accepted = accepted.lock().expect("accepted").clone();
    let refused = *refused.lock().expect("refused");
    let (all, orders): (EndpointId, EndpointId) = (all.parse()?, orders.parse()?);
    let expected: HashSet<String> = accepted
        .iter()
        .flat_map(|e| [DeliveryId::derive(e, &all), DeliveryId::derive(e, &orders)])
        .map(|d| d.to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let (received, by_id) = loop {
        let mut by_id: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        for path in ["all", "orders"] {
            for (_, h, body) in receiver.requests(path) {
                let id = h
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                by_id.entry(id).or_default().push(body.to_vec());
            }
        }
        let received: usize = by_id.values().map(Vec::len).sum();
        if expected.iter().all(|id| by_id.contains_key(id)) || Instant::now() > deadline {
            break (received, by_id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    assert!(
        accepted.len() > 100,
        "the load ran ({} accepted)",
        accepted.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {} deliveries never arrived, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(3)]
    );
    for (id, copies) in &by_id {
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "copies of {id} differ"
        );
    }
    let duplicates = received - by_id.len();
    eprintln!(
        "chaos: {} accepted ({refused} refused while services were down), {} deliveries expected, {received} received, {duplicates} duplicates ({:.1}%)",
        accepted.len(),
        expected.len(),
        100.0 * duplicates as f64 / expected.len() as f64
    );
    drop(p);
    drop(broker);
    broker_db.drop_db().await?;
    drop(postgres);
    Ok(())
}
