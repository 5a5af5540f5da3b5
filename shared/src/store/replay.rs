//! Replaying deliveries: the one way a delivery goes back on `deliveries` by an operator's
//! hand — the API's `:replay`, `harborctl dlq replay` and `harborctl events replay` all come
//! here.
//!
//! A replay is an operation recorded in `replays` (who, why, what selection, how many, when it
//! completed). Each delivery it re-sends keeps its id (`webhook-id`, so receivers deduplicate
//! against the original) and carries a `replay` block naming the operation.
//!
//! **Claim, send, commit.** [`resend`] runs inside the caller's transaction: it locks the
//! selected rows (`FOR UPDATE`, so two concurrent replays of one delivery queue behind each
//! other and the second re-reads the row after the first committed), builds each record from
//! the stored event, produces it and waits for the broker's acknowledgement, and only then
//! marks the rows `pending`. The caller commits after `resend` returns, so the claim becomes
//! visible only once the records are on the broker: a crash or a broker outage part-way rolls
//! the batch back to where it was, to be replayed again, and a completed batch is not sent by
//! a second run that selects dead-lettered rows only.
//!
//! **Transient or permanent.** The database or the broker away is an error for the caller to
//! report (nothing was claimed). A delivery whose endpoint was deleted, a row whose stored
//! event cannot make a record, and a record the broker refuses for itself (too large for its
//! limits) are the row's problem: each is left unclaimed and listed in [`Resent::refused`] with
//! its [`Refusal`], and the rest of the batch goes on.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::FutureProducer;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::domain::{DeliveryStatus, EventType};
use crate::ids::{DeliveryId, TenantId};
use crate::kafka::KafkaError;
use crate::payload::Payload;
use crate::records::{
    DeliveryRecord, EventRef, Outgoing, REASON_MAX, REQUESTED_BY_MAX, ReplayInfo,
};
use crate::text::{Lines, TextError, check};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{field}: {source}")]
    Text {
        field: &'static str,
        source: TextError,
    },
    #[error("the replay's database work")]
    Database(#[from] tokio_postgres::Error),
    #[error("producing to {topic}")]
    Unavailable { topic: String, source: KafkaError },
}

/// What kind of selection a replay was (the `replays.kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    /// One delivery, through the API.
    Delivery,
    /// Dead letters selected by a filter (`harborctl dlq replay`).
    Dlq,
    /// A time range of `events`, fanned out again (`harborctl events replay`).
    Events,
}

impl ReplayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivery => "delivery",
            Self::Dlq => "dlq",
            Self::Events => "events",
        }
    }
}

/// Which rows a replay may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Only those dead-lettered now: a second run of the same selection sends nothing.
    DeadLettered,
    /// Whatever their status (a replay of one delivery; `--force`; events replay).
    Any,
}

/// A recorded replay operation.
#[derive(Debug, Clone)]
pub struct Replay {
    pub id: Uuid,
    pub info: ReplayInfo,
}

impl Replay {
    /// Records the start of a replay. `reason` and `requested_by` are checked against what a
    /// record can carry; `reason` is stored without surrounding white space.
    pub async fn start(
        client: &impl GenericClient,
        kind: ReplayKind,
        tenant: Option<TenantId>,
        requested_by: &str,
        reason: &str,
        filter: &Value,
    ) -> Result<Self, ReplayError> {
        check(reason, REASON_MAX, Lines::Multi).map_err(|source| ReplayError::Text {
            field: "reason",
            source,
        })?;
        check(requested_by, REQUESTED_BY_MAX, Lines::Single).map_err(|source| {
            ReplayError::Text {
                field: "requested_by",
                source,
            }
        })?;
        let reason = reason.trim();
        let id = Uuid::now_v7();
        client
            .execute(
                "INSERT INTO replays (id, kind, tenant_id, requested_by, reason, filter, count)
                 VALUES ($1, $2, $3, $4, $5, $6, 0)",
                &[&id, &kind.as_str(), &tenant, &requested_by, &reason, filter],
            )
            .await?;
        Ok(Self {
            id,
            info: ReplayInfo {
                replay_id: id.to_string(),
                reason: reason.to_owned(),
                requested_by: requested_by.to_owned(),
                replayed_at: Utc::now(),
            },
        })
    }

    /// Adds `n` deliveries sent to the operation's count.
    pub async fn count(&self, client: &impl GenericClient, n: usize) -> Result<(), ReplayError> {
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        client
            .execute(
                "UPDATE replays SET count = count + $2 WHERE id = $1",
                &[&self.id, &n],
            )
            .await?;
        Ok(())
    }

    /// Marks the operation complete (an interrupted one stays incomplete).
    pub async fn finish(&self, client: &impl GenericClient) -> Result<(), ReplayError> {
        client
            .execute(
                "UPDATE replays SET completed_at = now() WHERE id = $1",
                &[&self.id],
            )
            .await?;
        Ok(())
    }
}

/// Paces a replay's sends (a rate limit); `()` does not wait.
pub trait Pace {
    fn ready(&self) -> impl Future<Output = ()> + Send;
}

impl Pace for () {
    async fn ready(&self) {}
}

/// Where and how long to produce.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub producer: &'a FutureProducer,
    /// The `deliveries` topic.
    pub topic: &'a str,
    pub timeout: Duration,
}

/// Why one delivery was not replayed (the rest of its batch was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its endpoint was deleted: there is nothing to deliver to.
    #[error("its endpoint no longer exists")]
    EndpointGone,
    /// Its stored event cannot make a record (a row the platform could not have written).
    #[error("its stored event cannot be sent: {0}")]
    Unbuildable(String),
    /// The broker refused the record for itself (larger than a broker limit).
    #[error("the broker refused the record: {0}")]
    BrokerRefused(String),
}

/// What [`resend`] did with the ids it was given.
#[derive(Debug, Default)]
pub struct Resent {
    /// On the broker, and marked `pending`.
    pub sent: Vec<DeliveryId>,
    /// Not sent, each with why; their rows are unchanged.
    pub refused: Vec<(DeliveryId, Refusal)>,
}

/// Claims `ids` (those `claim` allows whose event still exists), sends each one's first-attempt
/// record with the replay block, and marks the sent ones `pending` — all in `tx`, which the
/// caller commits afterwards (module docs). A delivery whose endpoint was deleted is refused
/// ([`Refusal::EndpointGone`]). Ids not found or not claimable are in neither list.
pub async fn resend(
    tx: &Transaction<'_>,
    replay: &Replay,
    ids: &[DeliveryId],
    claim: Claim,
    target: Target<'_>,
    pace: &impl Pace,
) -> Result<Resent, ReplayError> {
    let rows = tx
        .query(
            "SELECT d.id, d.tenant_id, d.endpoint_id, d.event_id, d.event_type, e.payload, e.created_at,
                    ep.id IS NOT NULL
             FROM deliveries d
             JOIN events e ON e.id = d.event_id AND e.tenant_id = d.tenant_id
             LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
             WHERE d.id = ANY($1) AND (NOT $2 OR d.status = 'dead_lettered')
             ORDER BY d.updated_at, d.id
             FOR UPDATE OF d",
            &[&ids, &(claim == Claim::DeadLettered)],
        )
        .await?;
    // One trace for the operation (a CLI without tracing gets a new one).
    let cx = crate::kafka::or_new_trace(&crate::telemetry::current_context());
    let mut out = Resent::default();
    for r in &rows {
        let id: DeliveryId = r.try_get(0)?;
        if !r.try_get::<_, bool>(7)? {
            out.refused.push((id, Refusal::EndpointGone));
            continue;
        }
        let built = record(r, &replay.info).and_then(|record| {
            Outgoing::delivery(&record, &cx).map_err(|e| format!("encoding the record: {e}"))
        });
        let outgoing = match built {
            Ok(o) => o,
            Err(why) => {
                tracing::warn!(delivery_id = %id, error = %why, "a stored delivery cannot be replayed");
                out.refused.push((id, Refusal::Unbuildable(why)));
                continue;
            }
        };
        pace.ready().await;
        match target
            .producer
            .send(outgoing.to(target.topic), target.timeout)
            .await
        {
            Ok(_) => out.sent.push(id),
            Err((e, _)) if crate::kafka::permanent(&e) => {
                tracing::warn!(delivery_id = %id, error = %e, "the broker refused a replayed delivery");
                out.refused
                    .push((id, Refusal::BrokerRefused(e.to_string())));
            }
            Err((source, _)) => {
                return Err(ReplayError::Unavailable {
                    topic: target.topic.to_owned(),
                    source,
                });
            }
        }
    }
    if !out.sent.is_empty() {
        tx.execute(
            "UPDATE deliveries SET status = $2, updated_at = now() WHERE id = ANY($1)",
            &[&out.sent, &DeliveryStatus::Pending.as_str()],
        )
        .await?;
    }
    Ok(out)
}

/// The first-attempt record of a claimed row, from its stored event.
fn record(r: &tokio_postgres::Row, replay: &ReplayInfo) -> Result<DeliveryRecord, String> {
    let column = |e: tokio_postgres::Error| format!("reading the row: {e}");
    let text: String = r.try_get(5).map_err(column)?;
    let payload = Payload::stored(
        RawValue::from_string(text).map_err(|e| format!("the stored payload: {e}"))?,
    );
    let event_type: EventType = r
        .try_get::<_, String>(4)
        .map_err(column)?
        .parse()
        .map_err(|e| format!("the stored event type: {e}"))?;
    Ok(DeliveryRecord::first_attempt(
        EventRef {
            event_id: r.try_get(3).map_err(column)?,
            tenant_id: r.try_get(1).map_err(column)?,
            event_type: &event_type,
            payload: &payload,
            occurred_at: r.try_get(6).map_err(column)?,
        },
        r.try_get(2).map_err(column)?,
        Some(replay.clone()),
    ))
}
