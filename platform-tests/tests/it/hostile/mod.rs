//! The hostile-input suite: the four services as processes, a victim tenant and an attacker
//! tenant. Each attack is one thing a tenant, a direct producer or a customer endpoint can do
//! on its own; after each, the victim's next event must arrive within 10 s, and the attack must
//! have ended where docs/api.md and docs/fanout.md say: a 4xx with a reason, `events.invalid`,
//! the DLQ, or a stored (sanitised) attempt — never a 500, a stalled partition or a dead
//! service. The budgets are small (40 in flight, 400 pending) so that an attack on them bites
//! with a few hundred records.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::World;
use crate::common::hostile::{HostileReceiver, Victim, status_of};
use crate::common::platform::Platform;
use base64::Engine as _;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::{Value, json};
use shared::ids::TenantId;

mod endpoints;
mod inputs;

use endpoints::{
    hostile_receivers, never_answering_endpoint, receiver_body_with_nul, ssrf_targets,
};
use inputs::{
    absurd_rate_limit, another_tenants_event_id, bad_direct_producer_envelopes,
    control_characters_everywhere, nul_in_payloads, payloads_at_the_size_limit,
    poison_on_internal_topics,
};

struct Suite {
    p: Platform,
    receiver: HostileReceiver,
    base: String,
    victim: Victim,
    attacker: TenantId,
    token: String,
    producer: FutureProducer,
}

impl Suite {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// An attacker endpoint at receiver path `path`, subscribed to `pattern`, with `extra`
    /// settings; returns its id.
    async fn endpoint(&self, path: &str, pattern: &str, extra: Value) -> anyhow::Result<String> {
        self.endpoint_at(&self.url(path), pattern, extra).await
    }

    /// An attacker endpoint at any `url`, subscribed to `pattern`, with `extra` settings.
    async fn endpoint_at(&self, url: &str, pattern: &str, extra: Value) -> anyhow::Result<String> {
        let path = url;
        let mut body = json!({"url": url});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, e) = status_of(
            &self.p,
            Method::POST,
            &format!("/v1/tenants/{}/endpoints", self.attacker),
            &self.token,
            Some(body),
        )
        .await?;
        anyhow::ensure!(s == 201, "endpoint {path}: {s} {e}");
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        let (s, b) = status_of(
            &self.p,
            Method::POST,
            &format!("/v1/tenants/{}/subscriptions", self.attacker),
            &self.token,
            Some(json!({"endpoint_id": id, "event_type": pattern})),
        )
        .await?;
        anyhow::ensure!(s == 201, "subscription {path}: {s} {b}");
        Ok(id)
    }

    async fn publish_raw(&self, body: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v) = self
            .p
            .call_raw(
                Method::POST,
                &format!("/v1/tenants/{}/events:publish", self.attacker),
                &self.token,
                body.to_owned(),
                &[],
            )
            .await?;
        Ok((s.as_u16(), v))
    }

    /// Writes `value` to `events` as a direct producer would, keyed `key`.
    async fn produce(&self, topic: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok(())
    }

    /// The reasons `events.invalid` gave for records keyed `attack-*`, by key.
    async fn invalid_reasons(&self, want: usize) -> anyhow::Result<HashMap<String, String>> {
        let reader = self
            .p
            .world
            .env
            .reader(self.p.world.env.catalog().events_invalid())?;
        let records = shared::testing::drain(&reader, want, Duration::from_secs(15)).await?;
        let mut out = HashMap::new();
        for m in records {
            let r: shared::records::InvalidEventRecord =
                serde_json::from_slice(m.payload().unwrap_or_default())?;
            let key = r
                .key_base64
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            out.insert(key, r.reason);
        }
        Ok(out)
    }

    /// The id of the newest delivery of the attacker's `event`, as the API lists it.
    async fn first_delivery(&self, event: &str) -> anyhow::Result<String> {
        let (_, page) = status_of(
            &self.p,
            Method::GET,
            &format!("/v1/events/{event}/deliveries"),
            &self.token,
            None,
        )
        .await?;
        Ok(page["data"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The attempts the API shows for the delivery of `event` at the attacker's endpoints.
    async fn attempts(&self, event: &str) -> anyhow::Result<Vec<Value>> {
        let (_, page) = status_of(
            &self.p,
            Method::GET,
            &format!("/v1/events/{event}/deliveries"),
            &self.token,
            None,
        )
        .await?;
        let mut out = Vec::new();
        for d in page["data"].as_array().into_iter().flatten() {
            let id = d["id"].as_str().unwrap_or_default();
            let (_, a) = status_of(
                &self.p,
                Method::GET,
                &format!("/v1/deliveries/{id}/attempts"),
                &self.token,
                None,
            )
            .await?;
            out.extend(a["data"].as_array().cloned().unwrap_or_default());
        }
        Ok(out)
    }

    /// Polls until `f` holds (the pipeline is asynchronous), for at most `secs`.
    async fn eventually<F, Fut>(&self, secs: u64, what: &str, mut f: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if f().await? {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{what}: not within {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn event_id(v: &Value) -> String {
    v["event_id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_and_no_endpoint_stops_the_victim() -> anyhow::Result<()> {
    let world = World::new().await?;
    let p = Platform::start_with(
        world,
        &[
            ("HARBORHOOK_DELIVERY__MAX_IN_FLIGHT", "40"),
            ("HARBORHOOK_DELIVERY__MAX_PENDING", "400"),
            ("HARBORHOOK_GATEWAY__RATE_LIMIT_PER_SEC", "1000"),
            ("HARBORHOOK_GATEWAY__RATE_LIMIT_BURST", "2000"),
        ],
    )
    .await?;
    let (receiver, addr) = HostileReceiver::start().await?;
    let base = format!("http://{addr}");
    let victim = Victim::new(&p, format!("{base}/victim")).await?;
    let (attacker, token) = p.tenant().await?;
    let producer = shared::kafka::producer(&p.world.env.config.kafka, "hostile")?;
    let mut s = Suite {
        p,
        receiver,
        base,
        victim,
        attacker,
        token,
        producer,
    };
    s.victim.still_served(&s.p, &s.receiver).await?;

    let mut failures = Vec::new();
    // HOSTILE_ONLY=name,name runs only those attacks (to try one alone, e.g. on an older build).
    let only: Option<Vec<String>> = std::env::var("HOSTILE_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_owned).collect());
    macro_rules! attack {
        ($name:ident) => {
            if only
                .as_ref()
                .is_some_and(|o| !o.iter().any(|n| n == stringify!($name)))
            {
                eprintln!("{}: skipped (HOSTILE_ONLY)", stringify!($name));
            } else {
                let outcome = $name(&s).await;
                let served = s.victim.still_served(&s.p, &s.receiver).await;
                match (outcome, served) {
                    (Ok(()), Ok(took)) => eprintln!(
                        "{}: ended as documented; victim served in {took:?}",
                        stringify!($name)
                    ),
                    (outcome, served) => failures.push(format!(
                        "{}: attack: {}; victim: {}",
                        stringify!($name),
                        outcome.err().map_or("ok".to_owned(), |e| format!("{e:#}")),
                        served.map_or_else(|e| format!("{e:#}"), |t| format!("served in {t:?}"))
                    )),
                }
            }
        };
    }
    attack!(nul_in_payloads);
    attack!(receiver_body_with_nul);
    attack!(absurd_rate_limit);
    attack!(never_answering_endpoint);
    attack!(bad_direct_producer_envelopes);
    attack!(another_tenants_event_id);
    attack!(payloads_at_the_size_limit);
    attack!(hostile_receivers);
    attack!(control_characters_everywhere);
    attack!(ssrf_targets);
    attack!(poison_on_internal_topics);

    // Every service is still up, and says so for the right reason.
    let exited = s.p.exited();
    if !exited.is_empty() {
        failures.push(format!("services exited: {exited:?}"));
    }
    for i in 0..4 {
        let (code, body) = s.p.ops_get(i, "/healthz").await?;
        if code != 200 {
            failures.push(format!("service {i} /healthz {code}: {body}"));
        }
    }
    let (_, metrics) = s.p.ops_get(2, "/metrics").await?;
    if !metrics.contains("harborhook_delivery_task_panics_total 0") {
        failures.push("a delivery task panicked".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    s.p.world.cleanup().await
}
