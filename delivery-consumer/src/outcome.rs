//! The outcome writer: makes what happened to a record durable before its offset may go — a
//! retry record on its tier, a dead letter on `deliveries.dlq`, the row in PostgreSQL.
//!
//! **Transient or permanent.** A produce that fails because the broker is away or slow is
//! retried with backoff until it succeeds or the service gives up at shutdown (the record is
//! then not released, and is read again). A produce the broker refuses for the record itself
//! (too large, invalid: `shared::kafka::permanent`) would fail forever and hold its partition's
//! watermark — so it is not retried: a retry record that cannot be written becomes a dead letter
//! (`undeliverable`, with the broker's reason), and a dead letter that cannot be written is
//! still recorded in PostgreSQL (status `dead_lettered`, where `harborctl dlq` and the API find
//! and replay it), counted in `outcome_records_refused_total`. The gateway and the fan-out
//! refuse payloads too large for any of these records (shared::records::limits), so this is
//! the defence behind the door, not the door.

use std::time::Duration;

use chrono::Utc;
use rand::Rng as _;
use rdkafka::producer::FutureProducer;
use shared::domain::{DeliveryStatus, ErrorClass};
use shared::ids::TenantId;
use shared::kafka::RetryTier;
use shared::records::{
    DeadLetterReason, DeadLetterRecord, DeliveryRecord, ERROR_MAX, Outgoing, RetryRecord,
    SchemaVersion, SourcePosition,
};
use tokio_util::sync::CancellationToken;

use crate::attempts::{Row, Writer};
use crate::http::Exchange;
use crate::job::Job;
use crate::metrics::{Metrics, Reason, RecordKind, Status, TenantStatus};

/// Why an outcome was not made durable.
#[derive(Debug)]
pub enum Failure {
    /// The service is stopping: the record is handed back (not released).
    Shutdown,
    /// The broker refused the record itself; retrying cannot help.
    Permanent(String),
}

pub struct Outcomes {
    pub producer: FutureProducer,
    pub writer: Writer,
    /// Ascending delays.
    pub tiers: Vec<RetryTier>,
    pub jitter_max: Duration,
    pub dlq_topic: String,
    pub deliveries_topic: String,
    pub produce_timeout: Duration,
    pub metrics: Metrics,
    /// Cancelled when the drain time is over: retries give up.
    pub shutdown: CancellationToken,
}

/// The smallest tier whose delay is at least `wanted`, else the largest: a record waits as long
/// as it must and no longer (a sub-second deferral goes to the first tier, never a long one).
fn tier_for(tiers: &[RetryTier], wanted: Duration) -> &RetryTier {
    tiers
        .iter()
        .find(|t| t.delay >= wanted)
        .or(tiers.last())
        .unwrap_or_else(|| unreachable!("the schedule has at least one tier (config)"))
}

impl Outcomes {
    /// Produces until acknowledged (transient errors) or refused for good. The record carries
    /// the trace its delivery came with; its tenant header is the record's own.
    async fn produce(&self, topic: &str, record: Outgoing) -> Result<(), Failure> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .producer
                .send(record.to(topic), self.produce_timeout)
                .await
            {
                Ok(_) => return Ok(()),
                Err((e, _)) if shared::kafka::permanent(&e) => {
                    return Err(Failure::Permanent(format!(
                        "the broker refused the record for {topic}: {e}"
                    )));
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, topic, "producing an outcome failed; retrying")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Failure::Shutdown),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Writes `delivery` to the tier covering `wanted`, due after that tier's delay plus a
    /// bounded jitter (at most `retry.jitter_max` and a tenth of the delay, docs/retry.md).
    pub async fn to_tier(
        &self,
        job: &Job,
        delivery: DeliveryRecord,
        wanted: Duration,
    ) -> Result<(), Failure> {
        let tier = tier_for(&self.tiers, wanted);
        let cap = self.jitter_max.min(tier.delay / 10);
        let jitter = if cap.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=cap)
        };
        let record = RetryRecord {
            schema_version: SchemaVersion::CURRENT,
            due_at: Utc::now() + tier.delay + jitter,
            tier: tier.name.clone(),
            delivery,
        };
        let out =
            Outgoing::retry(&record, &job.trace).map_err(|e| Failure::Permanent(e.to_string()))?;
        let result = self.produce(&tier.topic, out).await;
        if matches!(result, Err(Failure::Permanent(_))) {
            self.refused("retry");
        }
        result
    }

    /// Produces the dead letter; `Ok(false)` when the broker refused it for good (the caller's
    /// row still records the dead letter in PostgreSQL).
    pub async fn dead_letter(
        &self,
        job: &Job,
        delivery: DeliveryRecord,
        reason: DeadLetterReason,
        exchange: Option<&Exchange>,
        error: Option<&str>,
    ) -> Result<bool, Failure> {
        let tenant = delivery.tenant_id;
        let record = DeadLetterRecord {
            schema_version: SchemaVersion::CURRENT,
            reason,
            dead_lettered_at: Utc::now(),
            delivery,
            last_status: exchange.and_then(|x| x.status),
            error_class: exchange.and_then(|x| x.error_class),
            response_body: exchange.and_then(|x| x.excerpt.clone()),
            error: error.map(|e| shared::text::cut(e, ERROR_MAX).to_owned()),
            source: self.source(job),
        };
        let out = Outgoing::dead_letter(&record, &job.trace)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let produced = match self.produce(&self.dlq_topic, out).await {
            Ok(()) => true,
            Err(Failure::Permanent(e)) => {
                self.refused("dead_letter");
                tracing::error!(error = %e, "dead letter refused by the broker; kept in PostgreSQL only");
                false
            }
            Err(shutdown) => return Err(shutdown),
        };
        self.metrics
            .dlq
            .get_or_create(&Reason {
                reason: reason.as_str(),
            })
            .inc();
        self.count(DeliveryStatus::DeadLettered, &tenant);
        Ok(produced)
    }

    /// Dead-letters a delivery no request was made for (its endpoint is gone, it was deferred
    /// past the horizon, its task failed): the DLQ record and the row, concurrently.
    pub async fn dead_letter_unattempted(
        &self,
        job: &Job,
        reason: DeadLetterReason,
        class: Option<ErrorClass>,
        error: Option<String>,
    ) -> Result<(), Failure> {
        let r = &job.record;
        let row = Row {
            delivery_id: r.delivery_id,
            tenant_id: r.tenant_id,
            endpoint_id: r.endpoint_id,
            status: DeliveryStatus::DeadLettered,
            attempt: None,
            started_at: Utc::now(),
            duration_ms: 0,
            status_code: None,
            error_class: class,
            error: error.clone(),
            excerpt: None,
            dead_letter: Some((reason, self.source(job))),
        };
        let (a, b) = tokio::join!(
            self.dead_letter(
                job,
                DeliveryRecord::clone(r),
                reason,
                None,
                error.as_deref()
            ),
            self.record(row)
        );
        a.map(|_| ()).and(b)
    }

    pub fn source(&self, job: &Job) -> SourcePosition {
        SourcePosition {
            topic: self.deliveries_topic.clone(),
            partition: job.partition,
            offset: job.offset,
        }
    }

    pub fn count(&self, status: DeliveryStatus, tenant: &TenantId) {
        self.metrics
            .deliveries
            .get_or_create(&Status {
                status: status.as_str(),
            })
            .inc();
        self.metrics
            .tenant_deliveries
            .get_or_create(&TenantStatus {
                tenant_id: tenant.to_string(),
                status: status.as_str(),
            })
            .inc();
    }

    fn refused(&self, record: &'static str) {
        self.metrics
            .refused
            .get_or_create(&RecordKind { record })
            .inc();
    }

    /// The row, committed (the writer isolates rows PostgreSQL refuses, attempts.rs).
    pub async fn record(&self, row: Row) -> Result<(), Failure> {
        tokio::select! {
            r = self.writer.record(row) => r.map_err(|_| Failure::Shutdown),
            _ = self.shutdown.cancelled() => Err(Failure::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared::kafka::RetryTier;

    #[test]
    fn a_deferral_goes_to_the_smallest_tier_that_covers_its_wait() {
        let tiers: Vec<RetryTier> = [5, 300, 1800, 7200]
            .map(|s| RetryTier {
                name: format!("{s}s"),
                delay: Duration::from_secs(s),
                topic: format!("t{s}"),
            })
            .into();
        let tier = |ms: u64| {
            super::tier_for(&tiers, Duration::from_millis(ms))
                .delay
                .as_secs()
        };
        assert_eq!(tier(0), 5, "overflow");
        assert_eq!(tier(300), 5, "a sub-second Retry-After");
        assert_eq!(tier(5_000), 5);
        assert_eq!(tier(5_001), 300);
        assert_eq!(tier(30_000), 300, "a first circuit cool-down");
        assert_eq!(tier(600_000), 1800, "the longest cool-down");
        assert_eq!(tier(36_000_000), 7200, "beyond every tier: the largest");
    }
}
