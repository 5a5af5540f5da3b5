//! Rebalances in every accepted assignment mode lose nothing. With `cooperative-sticky` a
//! second consumer joining revokes only some of the first one's partitions; the first keeps
//! fetching the others from where it is, so the records it had queued for them (behind slow
//! endpoints) must survive the revoke: forgetting them would skip them for good.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::{EndpointSpec, Receiver, Reply, World, expected_ids};
use tokio_util::sync::CancellationToken;

const ENDPOINTS: usize = 6;
const EVENTS: usize = 80;

async fn second_consumer_joins_mid_flight(strategy: &str) -> anyhow::Result<()> {
    let mut world = World::new(|c| {
        c.kafka.partition_assignment_strategy = strategy.to_owned();
        c.topics.deliveries_partitions = 6;
        // Queues stay queued (not deferred) for the whole test.
        c.delivery.max_queue_wait = Duration::from_secs(120);
    })
    .await?;
    world.start(false).await?;
    let receiver = Receiver::start().await?;
    // One request at a time per endpoint, 100 ms each: every lane holds a queue for ~8 s, so
    // the rebalance lands while records are queued.
    receiver.behave(|_, _| Reply::ok().after(Duration::from_millis(100)));
    let tenant = world.tenant().await?;
    let mut endpoints = Vec::new();
    for i in 0..ENDPOINTS {
        let mut spec = EndpointSpec::new(receiver.url(&format!("e{i}")));
        spec.max_in_flight = 1;
        endpoints.push(world.endpoint(&tenant, spec).await?.0);
    }
    let mut events = HashMap::new();
    for n in 0..EVENTS {
        events.insert(n, world.publish(&tenant, n).await?);
    }
    let stop_a = CancellationToken::new();
    let a = delivery_consumer::start(world.env.config.clone(), stop_a.clone()).await?;
    // Wait until A is delivering (its lanes are queued), then a second member joins.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..ENDPOINTS)
        .map(|i| receiver.requests(&format!("e{i}")).len())
        .sum::<usize>()
        < ENDPOINTS
    {
        anyhow::ensure!(Instant::now() < deadline, "A never started delivering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop_b = CancellationToken::new();
    let b = delivery_consumer::start(world.env.config.clone(), stop_b.clone()).await?;

    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let mut missing = 0;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let want = expected_ids(&events, endpoint);
            let got: HashSet<String> = receiver
                .requests(&format!("e{i}"))
                .iter()
                .map(|r| r.header("webhook-id").to_owned())
                .collect();
            assert!(
                got.iter().all(|id| want.contains_key(id)),
                "e{i}: a webhook-id that is none of its deliveries"
            );
            missing += want.len() - want.keys().filter(|id| got.contains(*id)).count();
        }
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        missing, 0,
        "{strategy}: deliveries lost across the rebalance"
    );
    stop_a.cancel();
    stop_b.cancel();
    a.wait().await?;
    b.wait().await?;
    world.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_loses_nothing_with_eager_assignment() -> anyhow::Result<()> {
    second_consumer_joins_mid_flight("roundrobin").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_loses_nothing_with_cooperative_sticky() -> anyhow::Result<()> {
    second_consumer_joins_mid_flight("cooperative-sticky").await
}
