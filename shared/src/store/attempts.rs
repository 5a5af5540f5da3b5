//! A delivery's attempts, oldest first, as the API and `harborctl dlq show` present them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::RowError;
use crate::ids::DeliveryId;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

impl TryFrom<&tokio_postgres::Row> for Attempt {
    type Error = RowError;
    fn try_from(r: &tokio_postgres::Row) -> Result<Self, RowError> {
        Ok(Self {
            attempt: r.try_get("attempt")?,
            started_at: r.try_get("started_at")?,
            duration_ms: r.try_get("duration_ms")?,
            status_code: r.try_get("status_code")?,
            error_class: r.try_get("error_class")?,
            error: r.try_get("error")?,
            response_excerpt: r.try_get("response_excerpt")?,
        })
    }
}

/// Every recorded attempt of `delivery`, in the order they were made.
pub async fn of_delivery(
    client: &impl GenericClient,
    delivery: &DeliveryId,
) -> Result<Vec<Attempt>, RowError> {
    let rows = client
        .query(
            "SELECT attempt, started_at, duration_ms, status_code, error_class, error, response_excerpt
             FROM delivery_attempts WHERE delivery_id = $1 ORDER BY started_at, attempt",
            &[delivery],
        )
        .await?;
    rows.iter().map(Attempt::try_from).collect()
}
