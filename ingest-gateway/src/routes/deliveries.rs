//! Deliveries: of an event, one with its attempts, replay of one, and the dead-letter list.
//!
//! Delivery rows are written by the fanout-processor and updated by the delivery-consumer.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::REASON_MAX;
use shared::store::replay::{Claim, Refusal, Replay, ReplayError, ReplayKind, Target, resend};
use tokio_postgres::Row;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Query};
use crate::pagination::{Cursor, Page, cursor_bounds, page_params};
use crate::routes::events::load_event;
use crate::routes::{parse_action, parse_id};
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    id: DeliveryId,
    tenant_id: TenantId,
    event_id: EventId,
    endpoint_id: EndpointId,
    event_type: String,
    status: String,
    attempts: i32,
    last_status_code: Option<i32>,
    last_error_class: Option<String>,
    skip_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl TryFrom<&Row> for DeliveryView {
    type Error = ApiError;
    fn try_from(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            event_id: row.try_get("event_id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            event_type: row.try_get("event_type")?,
            status: row.try_get("status")?,
            attempts: row.try_get("attempts")?,
            last_status_code: row.try_get("last_status_code")?,
            last_error_class: row.try_get("last_error_class")?,
            skip_reason: row.try_get("skip_reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            delivered_at: row.try_get("delivered_at")?,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, event_id, endpoint_id, event_type, status, attempts, last_status_code, \
    last_error_class, skip_reason, created_at, updated_at, delivered_at";

/// The deliveries of `tenant`'s `event`, newest first, optionally filtered.
#[allow(clippy::too_many_arguments)]
pub async fn delivery_rows(
    state: &AppState,
    tenant: &TenantId,
    event: &EventId,
    endpoint: Option<EndpointId>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    cursor: Option<Cursor>,
    limit: i64,
) -> ApiResult<Vec<DeliveryView>> {
    let (before_time, before_id) = cursor_bounds(cursor);
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM deliveries
                 WHERE event_id = $1 AND ($2::uuid IS NULL OR endpoint_id = $2)
                   AND ($3::timestamptz IS NULL OR created_at >= $3)
                   AND ($4::timestamptz IS NULL OR created_at < $4)
                   AND (created_at, id) < ($5, $6)
                   AND tenant_id = $8
                 ORDER BY created_at DESC, id DESC LIMIT $7"
            ),
            &[
                event,
                &endpoint,
                &from,
                &to,
                &before_time,
                &before_id,
                &limit,
                tenant,
            ],
        )
        .await?;
    rows.iter().map(DeliveryView::try_from).collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfEventParams {
    endpoint_id: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn endpoint_filter(text: Option<&str>) -> ApiResult<Option<EndpointId>> {
    text.map(str::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("endpoint_id", e))
}

pub async fn of_event(
    State(state): State<AppState>,
    principal: Principal,
    Path(event): Path<String>,
    Query(params): Query<OfEventParams>,
) -> ApiResult<Json<Page<DeliveryView>>> {
    let id: EventId = parse_id(&event, "event")?;
    let event = load_event(&state, &principal, &id, None).await?;
    let (limit, cursor) = page_params(params.limit, params.cursor.as_deref())?;
    let endpoint = endpoint_filter(params.endpoint_id.as_deref())?;
    crate::pagination::time_filters(&[("from", params.from), ("to", params.to)])?;
    let rows = delivery_rows(
        &state,
        &event.tenant_id,
        &id,
        endpoint,
        params.from,
        params.to,
        cursor,
        limit + 1,
    )
    .await?;
    Ok(Json(Page::from_rows(rows, limit, |d| Cursor {
        created_at: d.created_at,
        id: *d.id.as_uuid(),
    })))
}

async fn load(state: &AppState, principal: &Principal, id: &DeliveryId) -> ApiResult<DeliveryView> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM deliveries WHERE id = $1"),
            &[id],
        )
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let delivery = DeliveryView::try_from(&row)?;
    principal
        .require_tenant(&delivery.tenant_id)
        .map_err(|_| ApiError::NotFound("delivery"))?;
    Ok(delivery)
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(delivery): Path<String>,
) -> ApiResult<Json<DeliveryView>> {
    let id: DeliveryId = parse_id(&delivery, "delivery")?;
    load(&state, &principal, &id).await.map(Json)
}

pub async fn attempts(
    State(state): State<AppState>,
    principal: Principal,
    Path(delivery): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: DeliveryId = parse_id(&delivery, "delivery")?;
    load(&state, &principal, &id).await?;
    let client = state.pool.get().await?;
    let data = shared::store::attempts::of_delivery(&**client, &id).await?;
    Ok(Json(json!({"data": data})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    reason: String,
}

/// `POST /v1/deliveries/{id}:replay`: re-enqueues the delivery, keeping its id (`webhook-id`)
/// so receivers can deduplicate, and records who replayed it and why.
pub async fn action(
    State(state): State<AppState>,
    principal: Principal,
    Path(segment): Path<String>,
    JsonBody(body): JsonBody<ReplayBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (id, verb) = parse_action(&segment)?;
    if verb != "replay" {
        return Err(ApiError::NotFound("action"));
    }
    let id: DeliveryId = parse_id(id, "delivery")?;
    // Checked as sent (the document's pattern), stored without surrounding white space.
    ApiError::text(
        "reason",
        &body.reason,
        REASON_MAX,
        shared::text::Lines::Multi,
    )?;
    let delivery = load(&state, &principal, &id).await?;
    // The event must still be readable by this caller (and unambiguous).
    load_event(
        &state,
        &principal,
        &delivery.event_id,
        Some(&delivery.tenant_id),
    )
    .await?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let replay = Replay::start(
        &*tx,
        ReplayKind::Delivery,
        Some(delivery.tenant_id),
        &principal.subject,
        &body.reason,
        &json!({"delivery_id": id}),
    )
    .await?;
    let producer = state.producer();
    let target = Target {
        producer: &producer,
        topic: state.catalog.deliveries(),
        timeout: state.config.publish_timeout,
    };
    let resent = match resend(&tx, &replay, &[id], Claim::Any, target, &()).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, ReplayError::Unavailable { .. }) {
                state.replace_producer_if_fatal();
            }
            return Err(e.into());
        }
    };
    match resent.refused.first() {
        None if resent.sent.is_empty() => return Err(ApiError::NotFound("delivery")),
        None => {}
        Some((_, Refusal::EndpointGone)) => {
            return Err(ApiError::Conflict(
                "the delivery's endpoint no longer exists".into(),
            ));
        }
        // Retrying cannot help, so not a 503; the transaction rolls back.
        Some((_, why @ Refusal::BrokerRefused(_))) => {
            return Err(ApiError::Unprocessable {
                message: format!("the delivery cannot be replayed: {why}"),
                details: Vec::new(),
            });
        }
        // A stored row the platform could not have written: ours, not the caller's.
        Some((_, why @ Refusal::Unbuildable(_))) => return Err(ApiError::internal(why.clone())),
    }
    replay.count(&*tx, resent.sent.len()).await?;
    replay.finish(&*tx).await?;
    // Produced: record it. Should this commit fail, the replay happened unrecorded; say so.
    if let Err(e) = tx.commit().await {
        tracing::error!(delivery_id = %id, replay_id = %replay.id, error = %e, "replay sent but not recorded");
    }
    tracing::info!(delivery_id = %id, replay_id = %replay.id, by = %principal.subject, "delivery replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"delivery_id": id, "replay_id": replay.id.to_string()})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlqParams {
    endpoint_id: Option<String>,
    /// Operators may narrow the all-tenant view to one tenant.
    tenant_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/dlq`: dead-lettered deliveries of the caller's tenant, or of all tenants for an
/// operator token.
pub async fn dlq(
    State(state): State<AppState>,
    principal: Principal,
    Query(params): Query<DlqParams>,
) -> ApiResult<Json<Page<DeliveryView>>> {
    let (limit, cursor) = page_params(params.limit, params.cursor.as_deref())?;
    let endpoint = endpoint_filter(params.endpoint_id.as_deref())?;
    let requested: Option<TenantId> = params
        .tenant_id
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("tenant_id", e))?;
    let tenant = match (principal.tenant_scope(), requested) {
        (Some(own), Some(other)) if own != other => return Err(ApiError::NotFound("tenant")),
        (Some(own), _) => Some(own),
        (None, requested) => requested,
    };
    let (before_time, before_id) = cursor_bounds(cursor);
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM deliveries
                 WHERE status = 'dead_lettered' AND ($1::uuid IS NULL OR tenant_id = $1)
                   AND ($2::uuid IS NULL OR endpoint_id = $2) AND (updated_at, id) < ($3, $4)
                 ORDER BY updated_at DESC, id DESC LIMIT $5"
            ),
            &[&tenant, &endpoint, &before_time, &before_id, &(limit + 1)],
        )
        .await?;
    let views = rows
        .iter()
        .map(DeliveryView::try_from)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_rows(views, limit, |d| Cursor {
        created_at: d.updated_at,
        id: *d.id.as_uuid(),
    })))
}
