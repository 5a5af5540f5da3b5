//! Records attempts and delivery states in PostgreSQL, in batches, off the hot path.
//!
//! A delivery task hands its row to the writer and waits for the acknowledgement before its
//! offset may be stored (invariant 1: the outcome is recorded before the record is let go).
//! The writer collects rows for up to `delivery.attempt_linger` or `delivery.attempt_batch`
//! rows, writes them in one statement (UNNEST: one round trip, one transaction), and on a
//! transient database error (unreachable, timeout) retries the same batch with backoff: tasks
//! wait, pending records pile up to `delivery.max_pending`, and the consumer stops reading.
//! Nothing is dropped.
//!
//! **A row PostgreSQL refuses** (a data or constraint error, `shared::db::permanent`) would
//! fail the same way forever and stop every delivery behind it. Texts from receivers are made
//! storable before they get here (NUL replaced, cut to size: shared::text), so this is the
//! defence behind that: the batch is split in halves down to the row that fails alone; that row
//! is written again without its texts (error, response excerpt), and if even that is refused it
//! is logged and counted (`attempt_rows_skipped_total`) and its task acknowledged, so the rest
//! proceed.
//!
//! Every real request is a row (a replay restarts the numbering, a crash may repeat an attempt:
//! rows are told apart by start time); writing the same batch twice changes nothing (`ON
//! CONFLICT DO NOTHING`), the attempt count only grows, and a delivered row never goes back
//! to another state. Rows are sorted by delivery id so two writers (during a rebalance)
//! lock in the same order.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use shared::domain::{DeliveryStatus, ErrorClass};
use shared::ids::{DeliveryId, EndpointId, TenantId};
use shared::liveness::Heartbeat;
use shared::records::{DeadLetterReason, SourcePosition};
use shared::records::{ERROR_MAX, RESPONSE_EXCERPT_MAX};
use tokio::sync::{mpsc, oneshot};

/// One delivery's new state, with the attempt that led to it (none for a dead letter that was
/// never attempted, such as a deleted endpoint's).
#[derive(Debug, Clone)]
pub struct Row {
    pub delivery_id: DeliveryId,
    pub tenant_id: TenantId,
    pub endpoint_id: EndpointId,
    pub status: DeliveryStatus,
    pub attempt: Option<u32>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u32,
    pub status_code: Option<u16>,
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub excerpt: Option<String>,
    /// Set when the delivery was dead-lettered: why, and where its record was read.
    pub dead_letter: Option<(DeadLetterReason, SourcePosition)>,
}

type Item = (Row, oneshot::Sender<()>);

pub struct Settings {
    pub batch: usize,
    pub linger: Duration,
    pub skipped: prometheus_client::metrics::counter::Counter,
    pub heartbeat: Heartbeat,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Item>,
}

#[derive(Debug, thiserror::Error)]
#[error("the attempt writer stopped")]
pub struct WriterGone;

impl Writer {
    /// Starts the writer task; it ends when every `Writer` clone is dropped, or once `stop`
    /// is cancelled and the rows already handed over are written.
    pub fn spawn(
        pool: Pool,
        settings: Settings,
        stop: tokio_util::sync::CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.batch * 4);
        let task = tokio::spawn(run(pool, rx, settings, stop));
        (Self { tx }, task)
    }

    /// Returns once the row is committed.
    pub async fn record(&self, row: Row) -> Result<(), WriterGone> {
        let (ack, done) = oneshot::channel();
        self.tx.send((row, ack)).await.map_err(|_| WriterGone)?;
        done.await.map_err(|_| WriterGone)
    }
}

async fn run(
    pool: Pool,
    mut rx: mpsc::Receiver<Item>,
    settings: Settings,
    stop: tokio_util::sync::CancellationToken,
) {
    let hb = &settings.heartbeat;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        hb.busy(false);
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            // Refuse new rows, then write what was already handed over.
            _ = stop.cancelled() => {
                rx.close();
                rx.recv().await
            }
            _ = tick.tick() => {
                hb.ran();
                continue;
            }
        };
        let Some(first) = first else {
            break;
        };
        hb.busy(true);
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + settings.linger;
        while items.len() < settings.batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => items.push(item),
                _ => break,
            }
        }
        items.sort_by_key(|(row, _)| row.delivery_id);
        let rows: Vec<Row> = items.iter().map(|(row, _)| row.clone()).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            match write_isolating(&pool, &rows, &settings.skipped).await {
                Ok(()) => break,
                Err((e, dependency)) => {
                    hb.retrying(dependency);
                    tracing::error!(error = %e, rows = rows.len(), "recording attempts failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        hb.progressed();
        for (_, ack) in items {
            let _ = ack.send(());
        }
    }
}

/// Writes `rows`, isolating any row the database refuses (module docs); returns only transient
/// errors, with whether the database itself failed.
async fn write_isolating(
    pool: &Pool,
    rows: &[Row],
    skipped: &prometheus_client::metrics::counter::Counter,
) -> Result<(), (String, bool)> {
    match write(pool, rows).await {
        Ok(()) => Ok(()),
        Err(Failed::Transient(e, dependency)) => Err((e, dependency)),
        Err(Failed::Permanent(e)) => {
            if let [row] = rows {
                let stripped = Row {
                    error: None,
                    excerpt: None,
                    ..row.clone()
                };
                return match write(pool, std::slice::from_ref(&stripped)).await {
                    Ok(()) => {
                        tracing::warn!(delivery_id = %row.delivery_id, error = %e,
                            "attempt row refused; stored without its error and response texts");
                        Ok(())
                    }
                    Err(Failed::Transient(t, dependency)) => Err((t, dependency)),
                    Err(Failed::Permanent(again)) => {
                        skipped.inc();
                        tracing::error!(delivery_id = %row.delivery_id, error = %again,
                            "attempt row refused even stripped; skipped");
                        Ok(())
                    }
                };
            }
            tracing::warn!(rows = rows.len(), error = %e, "an attempt row was refused; isolating it");
            let (a, b) = rows.split_at(rows.len() / 2);
            Box::pin(write_isolating(pool, a, skipped)).await?;
            Box::pin(write_isolating(pool, b, skipped)).await
        }
    }
}

enum Failed {
    /// With whether the database itself failed (shared::db::unavailable), for liveness.
    Transient(String, bool),
    Permanent(String),
}

const SQL: &str = "
WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int[],
        $6::timestamptz[], $7::int[], $8::int[], $9::text[], $10::text[], $11::text[],
        $12::text[], $13::jsonb[])
        AS u(delivery_id, tenant_id, endpoint_id, status, attempt, started_at, duration_ms,
             status_code, error_class, error, excerpt, dead_letter_reason, dead_letter_source)
), recorded AS (
    INSERT INTO delivery_attempts (delivery_id, attempt, tenant_id, endpoint_id, started_at,
        duration_ms, status_code, error_class, error, response_excerpt)
    SELECT i.delivery_id, i.attempt, i.tenant_id, i.endpoint_id, i.started_at, i.duration_ms,
        i.status_code, i.error_class, i.error, i.excerpt
    FROM input i JOIN deliveries d ON d.id = i.delivery_id
    WHERE i.attempt IS NOT NULL
    ON CONFLICT (delivery_id, started_at, attempt) DO NOTHING
)
UPDATE deliveries d SET
    status = i.status,
    attempts = GREATEST(d.attempts, COALESCE(i.attempt, 0)),
    last_status_code = COALESCE(i.status_code, d.last_status_code),
    last_error_class = CASE WHEN i.status = 'delivered' THEN NULL ELSE i.error_class END,
    delivered_at = CASE WHEN i.status = 'delivered'
        THEN COALESCE(d.delivered_at, i.started_at + i.duration_ms * interval '1 millisecond')
        ELSE d.delivered_at END,
    dead_letter_reason = COALESCE(i.dead_letter_reason, d.dead_letter_reason),
    dead_letter_source = COALESCE(i.dead_letter_source, d.dead_letter_source),
    updated_at = now()
FROM input i
WHERE d.id = i.delivery_id AND (d.status <> 'delivered' OR i.status = 'delivered')";

async fn write(pool: &Pool, rows: &[Row]) -> Result<(), Failed> {
    let client = pool.get().await.map_err(|e| {
        Failed::Transient(shared::error_chain(&e), shared::db::pool_unavailable(&e))
    })?;
    let rows = rows.iter();
    let ids: Vec<DeliveryId> = rows.clone().map(|r| r.delivery_id).collect();
    let tenants: Vec<TenantId> = rows.clone().map(|r| r.tenant_id).collect();
    let endpoints: Vec<EndpointId> = rows.clone().map(|r| r.endpoint_id).collect();
    let statuses: Vec<&str> = rows.clone().map(|r| r.status.as_str()).collect();
    let attempts: Vec<Option<i32>> = rows
        .clone()
        .map(|r| r.attempt.and_then(|a| i32::try_from(a).ok()))
        .collect();
    let started: Vec<DateTime<Utc>> = rows.clone().map(|r| r.started_at).collect();
    let durations: Vec<i32> = rows
        .clone()
        .map(|r| i32::try_from(r.duration_ms).unwrap_or(i32::MAX))
        .collect();
    let codes: Vec<Option<i32>> = rows.clone().map(|r| r.status_code.map(i32::from)).collect();
    let classes: Vec<Option<&str>> = rows
        .clone()
        .map(|r| r.error_class.map(ErrorClass::as_str))
        .collect();
    // Storable whatever a receiver or a transport said (NUL replaced, bounded).
    let text = |t: &Option<String>, max: usize| {
        t.as_deref()
            .map(|t| shared::text::cut(&shared::text::storable(t), max).to_owned())
    };
    let errors: Vec<Option<String>> = rows.clone().map(|r| text(&r.error, ERROR_MAX)).collect();
    let excerpts: Vec<Option<String>> = rows
        .clone()
        .map(|r| text(&r.excerpt, RESPONSE_EXCERPT_MAX))
        .collect();
    let reasons: Vec<Option<&str>> = rows
        .clone()
        .map(|r| r.dead_letter.as_ref().map(|(reason, _)| reason.as_str()))
        .collect();
    let sources: Vec<Option<serde_json::Value>> = rows
        .map(|r| {
            r.dead_letter
                .as_ref()
                .and_then(|(_, source)| serde_json::to_value(source).ok())
        })
        .collect();
    client
        .execute(
            SQL,
            &[
                &ids, &tenants, &endpoints, &statuses, &attempts, &started, &durations, &codes,
                &classes, &errors, &excerpts, &reasons, &sources,
            ],
        )
        .await
        .map_err(|e| {
            if shared::db::permanent(&e) {
                Failed::Permanent(shared::error_chain(&e))
            } else {
                Failed::Transient(shared::error_chain(&e), shared::db::unavailable(&e))
            }
        })?;
    Ok(())
}
