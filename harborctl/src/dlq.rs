//! `dlq list|show|replay`: the dead-letter queue, read from PostgreSQL (the delivery-consumer
//! records each dead letter's reason and source there, beside the record on `deliveries.dlq`).
//!
//! **Replay** re-enqueues each selected delivery on `deliveries` with its own id (the same
//! `webhook-id`, so receivers deduplicate) and a `replay` block (replay id, reason, who, when).
//! It is idempotent: each delivery is *claimed* (`dead_lettered` → `pending`) in the same
//! transaction that is committed only after the broker acknowledged its record, so a second
//! run of the same selection finds nothing left to send, two concurrent runs never send one
//! delivery twice, and a crash mid-batch leaves the batch dead-lettered to be replayed again.
//! `--force` also selects deliveries that were dead-lettered before and replayed since.

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use shared::Config;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::{DeliveryRecord, ReplayInfo};

use crate::CliError;
use crate::output::{Progress, block, emit, table};
use crate::replay::{Limiter, finish_replay, start_replay};

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
    #[arg(long, value_parser = crate::replay::parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    #[arg(long, value_parser = crate::replay::parse_time)]
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

pub async fn connect(config: &Config) -> Result<tokio_postgres::Client, CliError> {
    use secrecy::ExposeSecret as _;
    let mut pg: tokio_postgres::Config =
        config.database.url.expose_secret().parse().map_err(|_| {
            CliError::usage(
                "database.url is not a PostgreSQL URL",
                "see docs/configuration.md",
            )
        })?;
    if let Some(schema) = &config.database.schema {
        pg.options(format!("-csearch_path={schema}"));
    }
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        CliError::failed(
            format!("cannot connect to PostgreSQL: {}", shared::error_chain(&e)),
            "check HARBORHOOK_DATABASE__URL (and that the database is up: `harborctl dev status`)",
        )
    })?;
    tokio::spawn(connection);
    Ok(client)
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
    let client = connect(config).await?;
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
    let client = connect(config).await?;
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
    let attempts = client
        .query(
            "SELECT attempt, started_at, duration_ms, status_code, error_class, error, response_excerpt
             FROM delivery_attempts WHERE delivery_id = $1 ORDER BY started_at, attempt",
            &[&id],
        )
        .await?;
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.get::<_, i32>(0), "started_at": a.get::<_, DateTime<Utc>>(1),
                "duration_ms": a.get::<_, i32>(2), "status_code": a.get::<_, Option<i32>>(3),
                "error_class": a.get::<_, Option<String>>(4), "error": a.get::<_, Option<String>>(5),
                "response_excerpt": a.get::<_, Option<String>>(6),
            })
        })
        .collect();
    let mut v = row_json(&row);
    v["attempt_history"] = Value::Array(attempts);
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

pub async fn replay(
    config: &Config,
    json: bool,
    filter: &Filter,
    opts: ReplayOptions,
) -> Result<(), CliError> {
    let mut client = connect(config).await?;
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
    let topic = shared::kafka::TopicCatalog::new(config)
        .deliveries()
        .to_owned();
    let replay_id = start_replay(
        &client,
        "dlq",
        filter.tenant_id,
        &opts.by,
        &opts.reason,
        &filter.to_json(),
    )
    .await?;
    let info = ReplayInfo {
        replay_id: replay_id.to_string(),
        reason: opts.reason.clone(),
        requested_by: opts.by.clone(),
        replayed_at: Utc::now(),
    };
    let limiter = Limiter::new(opts.rate);
    let mut progress = Progress::new(ids.len(), json);
    let mut sent = 0usize;
    for chunk in ids.chunks(BATCH) {
        let tx = client.transaction().await?;
        let claimed = tx
            .query(
                &format!(
                    "UPDATE deliveries d SET status = 'pending', updated_at = now()
                     FROM events e
                     WHERE d.id = ANY($1) AND e.id = d.event_id AND e.tenant_id = d.tenant_id AND ({})
                     RETURNING d.id, d.tenant_id, d.endpoint_id, d.event_id, d.event_type, e.payload, e.created_at",
                    if opts.force { "true" } else { "d.status = 'dead_lettered'" }
                ),
                &[&chunk],
            )
            .await?;
        for r in &claimed {
            limiter.wait().await;
            let payload = shared::payload::Payload::stored(
                serde_json::value::RawValue::from_string(r.get(5))
                    .map_err(|e| CliError::failed(format!("stored payload: {e}"), ""))?,
            );
            let event_type: shared::domain::EventType = r
                .get::<_, String>(4)
                .parse()
                .map_err(|e| CliError::failed(format!("stored event type: {e}"), ""))?;
            let record = DeliveryRecord::first_attempt(
                shared::records::EventRef {
                    event_id: r.get(3),
                    tenant_id: r.get(1),
                    event_type: &event_type,
                    payload: &payload,
                    occurred_at: r.get(6),
                },
                r.get(2),
                Some(info.clone()),
            );
            send(&producer, &topic, &record).await?;
        }
        tx.execute(
            "UPDATE replays SET count = count + $2 WHERE id = $1",
            &[&replay_id, &(claimed.len() as i32)],
        )
        .await?;
        // Only now: the records are on the broker, so the claim may become visible.
        tx.commit().await?;
        sent += claimed.len();
        progress.advance(chunk.len());
    }
    progress.finish();
    finish_replay(&client, replay_id).await?;
    let summary = json!({
        "replay_id": replay_id, "selected": ids.len(), "replayed": sent,
        "skipped": ids.len() - sent, "seconds": progress.elapsed_secs(),
    });
    emit(json, &summary, |v| {
        format!(
            "replayed {} of {} selected deliveries ({} already replayed elsewhere) in {:.1} s; replay id {}",
            v["replayed"],
            v["selected"],
            v["skipped"],
            progress.elapsed_secs(),
            replay_id
        )
    });
    Ok(())
}

pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    record: &DeliveryRecord,
) -> Result<(), CliError> {
    let value = serde_json::to_vec(record).map_err(|e| CliError::failed(e.to_string(), ""))?;
    let key = record.endpoint_id.to_string();
    // The headers every record on `deliveries` carries (docs/kafka.md): a fresh trace for the
    // replay, and the tenant.
    let headers =
        shared::kafka::trace_headers(&shared::telemetry::current_context(), &record.tenant_id);
    producer
        .send(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| {
            CliError::failed(
                format!("producing to {topic}: {e}"),
                "the broker is unreachable; nothing after the last committed batch was replayed — run the same command again",
            )
        })?;
    Ok(())
}
