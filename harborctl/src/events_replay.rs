//! `events replay`: re-fan-out of a time range of `events`.
//!
//! **Events replay** finds the offsets for `--since` and `--until` on every partition of
//! `events` (the broker's offsets-for-times), reads exactly that range, keeps the envelopes of
//! the selected tenant and type, and sends one delivery per (event, endpoint) to `deliveries`:
//! to the endpoints subscribed *now* (enabled ones), or to the one `--endpoint`. Each delivery
//! keeps its derived id (`webhook-id`), so receivers can deduplicate against the original
//! delivery. A completed replay of the same selection is not repeated unless `--force`; an
//! interrupted one is repeated whole (its deliveries keep their ids).
//!
//! The rows the delivery-consumer records against are written first (the events row and the
//! delivery row: fan-out may never have seen them, or they may have been pruned), then the
//! batch goes through `shared::store::replay::resend`, as every replay does.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};
use shared::Config;
use shared::domain::EventTypePattern;
use shared::ids::{DeliveryId, EndpointId, TenantId};
use shared::records::EventEnvelope;
use shared::store::replay::{Claim, Replay, ReplayKind, Target, resend};
use uuid::Uuid;

use crate::CliError;
use crate::output::{Progress, emit, table};
use crate::pace::Limiter;

/// Pairs per transaction.
const BATCH: usize = 100;
/// How long one record may take to be acknowledged before the replay stops.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EventsReplay {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub tenant: Option<TenantId>,
    pub event_type: Option<String>,
    pub endpoint: Option<EndpointId>,
    pub dry_run: bool,
    pub rate: Option<f64>,
    pub force: bool,
    pub reason: String,
    pub by: String,
}

impl EventsReplay {
    fn filter(&self) -> Value {
        json!({
            "since": self.since, "until": self.until, "tenant_id": self.tenant,
            "event_type": self.event_type, "endpoint_id": self.endpoint,
        })
    }
}

/// Every envelope on `events` written in [since, until).
async fn read_range(
    config: &Config,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<EventEnvelope>, CliError> {
    let topic = shared::kafka::TopicCatalog::new(config).events().to_owned();
    let group = format!(
        "{}harborctl-replay-{}",
        config.kafka.topic_prefix,
        Uuid::now_v7().simple()
    );
    let consumer: StreamConsumer =
        shared::kafka::consumer_config(&config.kafka, "harborctl", &group)
            .set("enable.auto.commit", "false")
            .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = shared::blocking(|| consumer.fetch_metadata(Some(&topic), timeout))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let at = |t: DateTime<Utc>| -> Result<TopicPartitionList, CliError> {
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(t.timestamp_millis()))?;
        }
        Ok(shared::blocking(|| {
            consumer.offsets_for_times(tpl, timeout)
        })?)
    };
    let (starts, ends) = (at(since)?, at(until)?);
    let mut assign = TopicPartitionList::new();
    let mut end_of: HashMap<i32, i64> = HashMap::new();
    for p in &partitions {
        let Some(Offset::Offset(start)) = starts.find_partition(&topic, *p).map(|e| e.offset())
        else {
            continue; // Nothing at or after `since`.
        };
        let end = match ends.find_partition(&topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => shared::blocking(|| consumer.fetch_watermarks(&topic, *p, timeout))?.1,
        };
        if end > start {
            assign.add_partition_offset(&topic, *p, Offset::Offset(start))?;
            end_of.insert(*p, end);
        }
    }
    let mut out = Vec::new();
    if end_of.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assign)?;
    while !end_of.is_empty() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| {
                CliError::failed(
                    "reading events stalled for 30 s",
                    "check the broker; then run again",
                )
            })??;
        let Some(end) = end_of.get(&m.partition()).copied() else {
            continue;
        };
        if m.offset() < end
            && let Some(Ok(e)) = m.payload().map(serde_json::from_slice::<EventEnvelope>)
        {
            out.push(e);
        }
        if m.offset() + 1 >= end {
            end_of.remove(&m.partition());
        }
    }
    Ok(out)
}

pub async fn events(config: &Config, json_out: bool, r: EventsReplay) -> Result<(), CliError> {
    let mut client = crate::db::connect(config).await?;
    if !r.dry_run && !r.force {
        let done = client
            .query_opt(
                "SELECT id, requested_by, completed_at FROM replays
                 WHERE kind = 'events' AND filter = $1 AND completed_at IS NOT NULL
                 ORDER BY created_at DESC LIMIT 1",
                &[&r.filter()],
            )
            .await?;
        if let Some(row) = done {
            let (id, by, at): (Uuid, String, DateTime<Utc>) = (row.get(0), row.get(1), row.get(2));
            let v =
                json!({"replayed": 0, "already_replayed": {"replay_id": id, "by": by, "at": at}});
            emit(json_out, &v, |_| {
                format!(
                    "this selection was replayed already (replay {id} by {by} at {at}); nothing sent. Use --force to send it again."
                )
            });
            return Ok(());
        }
    }
    let events: Vec<EventEnvelope> = read_range(config, r.since, r.until)
        .await?
        .into_iter()
        // Envelopes fan-out refused (they are on events.invalid) are not replayed either.
        .filter(|e| e.check(&config.record_limits()).is_ok())
        .filter(|e| r.tenant.is_none_or(|t| t == e.tenant_id))
        .filter(|e| {
            r.event_type
                .as_deref()
                .is_none_or(|t| e.event_type.as_str() == t)
        })
        .collect();
    // Current routes: (tenant → [(pattern, endpoint)]) of enabled endpoints, or the one endpoint.
    let rows = client
        .query(
            "SELECT s.tenant_id, s.event_type_pattern, s.endpoint_id FROM subscriptions s
             JOIN endpoints e ON e.id = s.endpoint_id WHERE e.enabled",
            &[],
        )
        .await?;
    let mut routes: HashMap<TenantId, Vec<(EventTypePattern, EndpointId)>> = HashMap::new();
    for row in &rows {
        if let Ok(p) = row.get::<_, String>(1).parse() {
            routes.entry(row.get(0)).or_default().push((p, row.get(2)));
        }
    }
    let named = match r.endpoint {
        Some(id) => Some(
            client
                .query_opt("SELECT tenant_id FROM endpoints WHERE id = $1", &[&id])
                .await?
                .map(|row| (id, row.get::<_, TenantId>(0)))
                .ok_or_else(|| CliError::not_found(format!("no endpoint {id}"), "check the id"))?,
        ),
        None => None,
    };
    let mut pairs: Vec<(&EventEnvelope, EndpointId)> = Vec::new();
    for e in &events {
        match named {
            Some((id, tenant)) if tenant == e.tenant_id => pairs.push((e, id)),
            Some(_) => {}
            None => {
                let mut seen = Vec::new();
                for (pattern, endpoint) in routes.get(&e.tenant_id).into_iter().flatten() {
                    if pattern.matches(&e.event_type) && !seen.contains(endpoint) {
                        seen.push(*endpoint);
                        pairs.push((e, *endpoint));
                    }
                }
            }
        }
    }
    if r.dry_run {
        let sample: Vec<Value> = pairs
            .iter()
            .take(5)
            .map(|(e, ep)| json!({"event_id": e.event_id, "event_type": e.event_type, "endpoint_id": ep, "delivery_id": DeliveryId::derive(&e.event_id, ep)}))
            .collect();
        let v = json!({"dry_run": true, "events": events.len(), "deliveries": pairs.len(), "sample": sample});
        emit(json_out, &v, |v| {
            format!(
                "{} events, {} deliveries would be sent (dry run: nothing changed). Sample:\n{}",
                events.len(),
                pairs.len(),
                table(
                    &["event_id", "event_type", "endpoint_id", "delivery_id"],
                    v["sample"].as_array().map_or(&[][..], Vec::as_slice)
                )
            )
        });
        return Ok(());
    }
    let replay = Replay::start(
        &client,
        ReplayKind::Events,
        r.tenant,
        &r.by,
        &r.reason,
        &r.filter(),
    )
    .await?;
    let producer = shared::kafka::producer(&config.kafka, "harborctl")?;
    let catalog = shared::kafka::TopicCatalog::new(config);
    let target = Target {
        producer: &producer,
        topic: catalog.deliveries(),
        timeout: SEND_TIMEOUT,
    };
    let limiter = Limiter::new(r.rate);
    let mut progress = Progress::new(pairs.len(), json_out);
    let mut sent = 0usize;
    let mut refused = Vec::new();
    for chunk in pairs.chunks(BATCH) {
        let tx = client.transaction().await?;
        let mut ids = Vec::with_capacity(chunk.len());
        let mut created = Vec::new();
        for (e, endpoint) in chunk {
            tx.execute(
                "INSERT INTO events (id, tenant_id, event_type, payload, idempotency_key, ordering_key, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id, tenant_id) DO NOTHING",
                &[
                    &e.event_id, &e.tenant_id, &e.event_type.as_str(), &e.payload.as_str(),
                    &e.idempotency_key, &e.ordering_key, &e.occurred_at,
                ],
            )
            .await?;
            let id = DeliveryId::derive(&e.event_id, endpoint);
            let inserted = tx
                .execute(
                    "INSERT INTO deliveries (id, tenant_id, event_id, endpoint_id, event_type) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &e.tenant_id, &e.event_id, endpoint, &e.event_type.as_str()],
                )
                .await?;
            if inserted == 1 {
                created.push(id);
            }
            ids.push(id);
        }
        let done = resend(&tx, &replay, &ids, Claim::Any, target, &limiter).await?;
        // A row this replay created for a delivery it could not send would wait as `pending`
        // for a record that never comes: it goes again, as if never replayed.
        let unsent: Vec<DeliveryId> = done
            .refused
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| created.contains(id))
            .collect();
        if !unsent.is_empty() {
            tx.execute("DELETE FROM deliveries WHERE id = ANY($1)", &[&unsent])
                .await?;
        }
        replay.count(&tx, done.sent.len()).await?;
        tx.commit().await?;
        sent += done.sent.len();
        refused.extend(done.refused);
        progress.advance(chunk.len());
    }
    progress.finish();
    // Complete only when every delivery went: a selection with refusals is not "replayed
    // already" for the next run, which may succeed once the cause is fixed.
    if refused.is_empty() {
        replay.finish(&client).await?;
    }
    let replay_id = replay.id;
    let refused_json: Vec<Value> = refused
        .iter()
        .map(|(id, why)| json!({"delivery_id": id, "reason": why.to_string()}))
        .collect();
    let v = json!({"replay_id": replay_id, "events": events.len(), "replayed": sent,
                   "refused": refused_json, "seconds": progress.elapsed_secs()});
    emit(json_out, &v, |_| {
        let mut text = format!(
            "replayed {sent} deliveries of {} events in {:.1} s; replay id {replay_id}",
            events.len(),
            progress.elapsed_secs()
        );
        for (id, why) in &refused {
            text.push_str(&format!("\nnot replayed: {id}: {why}"));
        }
        text
    });
    if refused.is_empty() {
        Ok(())
    } else {
        Err(CliError::silent(1))
    }
}
