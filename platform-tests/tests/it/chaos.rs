//! Chaos: under continuous load, SIGKILL each service in turn and restart it, restart the
//! broker (nisshi with PostgreSQL storage, so its data survives, like Kafka) and SIGKILL the
//! services' PostgreSQL server and start it again. Within 60 s of the load's end every accepted
//! event has been delivered to each subscribed endpoint (a deferral to a long retry tier would
//! break that), each endpoint received only its own deliveries' `webhook-id`s, and every repeat
//! carries its delivery's id and the same body. The broker and the PostgreSQL server are the
//! test's own, and the test runs alone (.config/nextest.toml), so the tests beside it are not
//! disturbed. Alone: `scripts/test.sh -E 'test(/^chaos::/)'`.

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
    // A 202 whose body names no event id is a broken promise, not a refusal.
    let unparsed = Arc::new(Mutex::new(0usize));
    let stop = CancellationToken::new();
    let load = {
        let (accepted, refused, unparsed, stop) = (
            accepted.clone(),
            refused.clone(),
            unparsed.clone(),
            stop.clone(),
        );
        let url = format!("{}/v1/tenants/{tenant}/events:publish", p.api);
        let http = shared::tls::http_client()
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
                        match v["event_id"].as_str().and_then(|s| s.parse().ok()) {
                            Some(id) => accepted.lock().expect("accepted").push(id),
                            None => *unparsed.lock().expect("unparsed") += 1,
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
    eprintln!("chaos: SIGKILL PostgreSQL, then start it again");
    postgres.crash_restart()?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.cancel();
    load.await?;
    let stopped = Instant::now();
    assert_eq!(
        *unparsed.lock().expect("unparsed"),
        0,
        "every 202 names its event"
    );

    let accepted = accepted.lock().expect("accepted").clone();
    let refused = *refused.lock().expect("refused");
    let (all, orders): (EndpointId, EndpointId) = (all.parse()?, orders.parse()?);
    let expected: HashMap<&str, HashSet<String>> = [("all", all), ("orders", orders)]
        .into_iter()
        .map(|(path, ep)| {
            let ids = accepted
                .iter()
                .map(|e| DeliveryId::derive(e, &ep).to_string())
                .collect();
            (path, ids)
        })
        .collect();
    // Every delivery is due within a minute of the load's end: the first tiers are 1 s and 2 s
    // here, and a healthy endpoint's records must not be deferred further.
    let bound = Duration::from_secs(60);
    let (received, by_id) = loop {
        // (path, webhook-id) → bodies received
        let mut by_id: HashMap<(&str, String), Vec<Vec<u8>>> = HashMap::new();
        for path in ["all", "orders"] {
            for (_, h, body) in receiver.requests(path) {
                let id = h
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .expect("every delivery carries a webhook-id")
                    .to_owned();
                assert!(
                    expected[path].contains(&id),
                    "{path} received {id}, none of its deliveries"
                );
                by_id.entry((path, id)).or_default().push(body.to_vec());
            }
        }
        let received: usize = by_id.values().map(Vec::len).sum();
        let complete = expected.iter().all(|(path, ids)| {
            ids.iter()
                .all(|id| by_id.contains_key(&(*path, id.clone())))
        });
        if complete || stopped.elapsed() > bound {
            break (received, by_id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<String> = expected
        .iter()
        .flat_map(|(path, ids)| {
            ids.iter()
                .filter(|id| !by_id.contains_key(&(*path, (*id).clone())))
                .map(move |id| format!("{path}/{id}"))
        })
        .collect();
    let total: usize = expected.values().map(HashSet::len).sum();
    assert!(
        accepted.len() > 100,
        "the load ran ({} accepted)",
        accepted.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {total} deliveries not received within {bound:?} of the load's end, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    for ((path, id), copies) in &by_id {
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "copies of {path}/{id} differ"
        );
    }
    let duplicates = received - by_id.len();
    eprintln!(
        "chaos: {} accepted ({refused} refused while services were down), {total} deliveries expected, {received} received, {duplicates} duplicates ({:.1}%), all within {:?} of the load's end",
        accepted.len(),
        100.0 * duplicates as f64 / total as f64,
        stopped.elapsed()
    );
    drop(p);
    drop(broker);
    broker_db.drop_db().await?;
    drop(postgres);
    Ok(())
}
