//! `dlq list|show|replay`: the dead-letter queue, read from PostgreSQL (the delivery-consumer
//! records each dead letter's reason and source there, beside the record on `deliveries.dlq`).
//!
//! **Replay** re-enqueues each selected delivery on `deliveries` with its own id (the same
//! `webhook-id`, so receivers deduplicate) and a `replay` block (replay id, reason, who, when).
//! It is idempotent: each batch of 100 is claimed, sent and committed by
//! `shared::store::replay::resend` (claimed `dead_lettered` → `pending` in a transaction
//! committed only after the broker acknowledged the records), so a second run of the same
//! selection finds nothing left to send, two concurrent runs never send one delivery twice, and
//! a crash mid-batch leaves the batch dead-lettered to be replayed again. A delivery that
//! cannot be replayed (its stored event makes no record, or the broker refuses the record) is
//! left dead-lettered and listed, and the command exits 1 after replaying the rest. `--force`
//! also selects deliveries that were dead-lettered before and replayed since.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared::Config;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::store::replay::{Claim, Replay, ReplayKind, Target, resend};

use crate::CliError;
use crate::output::{Progress, block, emit, table};
use crate::pace::Limiter;

/// Which dead letters a command is about.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    #[arg(long = "tenant-id")]
    pub tenant_id: Option<TenantId>,
    #[arg(long)]
    pub endpoint: Option<EndpointId>,
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Why it was dead-lettered: `exhausted`, `gone`, `endpoint_unavailable` or `undeliverable`.
    #[arg(long = "dead-letter-reason", id = "dead_letter_reason")]
    pub reason: Option<String>,
    /// Dead-lettered at or after (RFC 3339, or a duration ago such as `2h`).
    #[arg(long, value_parser = crate::pace::parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    #[arg(long, value_parser = crate::pace::parse_time)]
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    fn check(&self) -> Result<(), CliError> {
        if let Some(r) = &self.reason
            && !shared::records::DeadLetterReason::ALL
                .iter()
                .any(|known| known.as_str() == r.as_str())
        {
            return Err(CliError::usage(
                format!("unknown reason `{r}`"),
                "use exhausted, gone, endpoint_unavailable or undeliverable",
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant_id, "endpoint_id": self.endpoint, "event_type": self.event_type,
            "reason": self.reason, "since": self.since, "until": self.until,
        })
    }
}

/// `$1..$6` are the filter; `force` widens "dead-lettered now" to "ever dead-lettered".
fn where_clause(force: bool) -> String {
    let state = if force {
        "d.dead_letter_reason IS NOT NULL"
    } else {
        "d.status = 'dead_lettered'"
    };
    format!(
        "{state} AND ($1::uuid IS NULL OR d.tenant_id = $1) AND ($2::uuid IS NULL OR d.endpoint_id = $2)
         AND ($3::text IS NULL OR d.event_type = $3) AND ($4::text IS NULL OR d.dead_letter_reason = $4)
         AND ($5::timestamptz IS NULL OR d.updated_at >= $5) AND ($6::timestamptz IS NULL OR d.updated_at < $6)"
    )
}

const COLUMNS: &str = "d.id, d.tenant_id, d.endpoint_id, d.event_id, d.event_type, d.status,
    d.dead_letter_reason, d.last_status_code, d.last_error_class, d.attempts, d.updated_at,
    d.dead_letter_source";

fn row_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "delivery_id": r.get::<_, DeliveryId>(0), "tenant_id": r.get::<_, TenantId>(1),
        "endpoint_id": r.get::<_, EndpointId>(2), "event_id": r.get::<_, EventId>(3),
        "event_type": r.get::<_, String>(4), "status": r.get::<_, String>(5),
        "reason": r.get::<_, Option<String>>(6), "last_status": r.get::<_, Option<i32>>(7),
        "error_class": r.get::<_, Option<String>>(8), "attempts": r.get::<_, i32>(9),
        "dead_lettered_at": r.get::<_, DateTime<Utc>>(10),
        "source": r.get::<_, Option<Value>>(11),
    })
}

async fn select(
    client: &tokio_postgres::Client,
    filter: &Filter,
    force: bool,
    limit: Option<i64>,
) -> Result<Vec<tokio_postgres::Row>, CliError> {
    filter.check()?;
    let sql = format!(
        "SELECT {COLUMNS} FROM deliveries d WHERE {} ORDER BY d.updated_at, d.id LIMIT $7",
        where_clause(force)
    );
    let limit = limit.unwrap_or(i64::MAX);
    Ok(client
        .query(
            &sql,
            &[
                &filter.tenant_id,
                &filter.endpoint,
                &filter.event_type,
                &filter.reason,
                &filter.since,
                &filter.until,
                &limit,
            ],
        )
        .await?)
}

const LIST_COLUMNS: &[&str] = &[
    "delivery_id",
    "endpoint_id",
    "event_type",
    "reason",
    "last_status",
    "attempts",
    "dead_lettered_at",
];

pub async fn list(
    config: &Config,
    json: bool,
    filter: &Filter,
    limit: i64,
) -> Result<(), CliError> {
    let client = crate::db::connect(config).await?;
    let rows = select(&client, filter, false, Some(limit)).await?;
    let items: Vec<Value> = rows.iter().map(row_json).collect();
    emit(json, &json!({"data": items}), |v| {
        table(
            LIST_COLUMNS,
            v["data"].as_array().map_or(&[][..], Vec::as_slice),
        )
    });
    Ok(())
}

pub async fn show(config: &Config, json: bool, id: DeliveryId) -> Result<(), CliError> {
    let client = crate::db::connect(config).await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM deliveries d WHERE d.id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| {
            CliError::not_found(
                format!("no delivery {id}"),
                "list them with `harborctl dlq list`",
            )
        })?;
    let attempts = shared::store::attempts::of_delivery(&client, &id)
        .await
        .map_err(|e| CliError::failed(format!("attempts: {}", shared::error_chain(&e)), ""))?;
    let mut v = row_json(&row);
    v["attempt_history"] = json!(attempts);
    emit(json, &v, |v| {
        let mut head = v.clone();
        let history = head
            .as_object_mut()
            .and_then(|m| m.remove("attempt_history"));
        let rows = history
            .and_then(|h| h.as_array().cloned())
            .unwrap_or_default();
        format!(
            "{}\n\nattempts:\n{}",
            block(&head),
            table(
                &[
                    "attempt",
                    "started_at",
                    "duration_ms",
                    "status_code",
                    "error_class",
                    "response_excerpt"
                ],
                &rows
            )
        )
    });
    Ok(())
}

pub struct ReplayOptions {
    pub dry_run: bool,
    pub rate: Option<f64>,
    pub force: bool,
    pub reason: String,
    pub by: String,
    pub limit: Option<i64>,
}

const BATCH: usize = 100;
/// How long one record may take to be acknowledged before the replay stops (and can be run
/// again: nothing after the last committed batch was claimed).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn replay(
    config: &Config,
    json: bool,
    filter: &Filter,
    opts: ReplayOptions,
) -> Result<(), CliError> {
    let mut client = crate::db::connect(config).await?;
    let rows = select(&client, filter, opts.force, opts.limit).await?;
    if opts.dry_run {
        let sample: Vec<Value> = rows.iter().take(5).map(row_json).collect();
        let v = json!({"dry_run": true, "count": rows.len(), "sample": sample});
        return {
            emit(json, &v, |v| {
                format!(
                    "{} deliveries would be replayed (dry run: nothing changed). Sample:\n{}",
                    rows.len(),
                    table(
                        LIST_COLUMNS,
                        v["sample"].as_array().map_or(&[][..], Vec::as_slice)
                    )
                )
            });
            Ok(())
        };
    }
    let ids: Vec<DeliveryId> = rows.iter().map(|r| r.get(0)).collect();
    let producer = shared::kafka::producer(&config.kafka, "harborctl")?;
    let catalog = shared::kafka::TopicCatalog::new(config);
    let target = Target {
        producer: &producer,
        topic: catalog.deliveries(),
        timeout: SEND_TIMEOUT,
    };
    let replay = Replay::start(
        &client,
        ReplayKind::Dlq,
        filter.tenant_id,
        &opts.by,
        &opts.reason,
        &filter.to_json(),
    )
    .await?;
    let claim = if opts.force {
        Claim::Any
    } else {
        Claim::DeadLettered
    };
    let limiter = Limiter::new(opts.rate);
    let mut progress = Progress::new(ids.len(), json);
    let mut sent = 0usize;
    let mut refused = Vec::new();
    for chunk in ids.chunks(BATCH) {
        let tx = client.transaction().await?;
        let done = resend(&tx, &replay, chunk, claim, target, &limiter).await?;
        replay.count(&tx, done.sent.len()).await?;
        // Only now: the records are on the broker, so the claim may become visible.
        tx.commit().await?;
        sent += done.sent.len();
        refused.extend(done.refused);
        progress.advance(chunk.len());
    }
    progress.finish();
    replay.finish(&client).await?;
    let replay_id = replay.id;
    let refused_json: Vec<Value> = refused
        .iter()
        .map(|(id, why)| json!({"delivery_id": id, "reason": why.to_string()}))
        .collect();
    let summary = json!({
        "replay_id": replay_id, "selected": ids.len(), "replayed": sent,
        "skipped": ids.len() - sent - refused.len(), "refused": refused_json,
        "seconds": progress.elapsed_secs(),
    });
    emit(json, &summary, |v| {
        let mut text = format!(
            "replayed {} of {} selected deliveries ({} already replayed elsewhere) in {:.1} s; replay id {}",
            v["replayed"],
            v["selected"],
            v["skipped"],
            progress.elapsed_secs(),
            replay_id
        );
        for (id, why) in &refused {
            text.push_str(&format!("\nnot replayed: {id}: {why}"));
        }
        text
    });
    if refused.is_empty() {
        Ok(())
    } else {
        // Said above; the exit code tells scripts that some were left dead-lettered.
        Err(CliError::silent(1))
    }
}
