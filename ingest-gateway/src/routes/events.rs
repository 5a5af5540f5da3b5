//! Events: publish one, publish a batch, list, get one with its deliveries.
//!
//! Event rows are written by the fanout-processor once it has fanned an event out; until then
//! a just-published event is in Kafka but not yet listed here.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::ids::{EventId, TenantId};
use tokio_postgres::Row;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Query};
use crate::pagination::{Cursor, Page};
use crate::publish::{PublishRequest, publish as publish_one};
use crate::routes::deliveries::{DeliveryView, delivery_rows};
use crate::routes::{TenantList, parse_id, tenant_exists, tenant_list};
use crate::state::AppState;

pub const BATCH_MAX: usize = 500;
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn header_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    headers
        .get(IDEMPOTENCY_HEADER)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))
        })
        .transpose()
}

/// Checks the tenant exists (and the caller may act for it) before anything is produced.
async fn publishing_tenant(
    state: &AppState,
    principal: &Principal,
    tenant: &str,
) -> ApiResult<TenantId> {
    let tenant: TenantId = parse_id(tenant, "tenant")?;
    principal.require_tenant(&tenant)?;
    let client = state.pool.get().await?;
    tenant_exists(&**client, &tenant).await?;
    Ok(tenant)
}

pub async fn publish(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PublishRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = publishing_tenant(&state, &principal, &tenant).await?;
    let published = publish_one(&state, tenant, body, header_key(&headers)?).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"event_id": published.event_id, "duplicate": published.duplicate})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Each item is parsed on its own, so one bad item is that item's error.
    events: Vec<Box<serde_json::value::RawValue>>,
}

/// Up to 500 events; each is validated and published on its own, and the answer lists each
/// one's result in order. The batch is 202 when every item was accepted, 207 otherwise.
pub async fn batch(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<BatchRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if body.events.is_empty() || body.events.len() > BATCH_MAX {
        return Err(ApiError::invalid(
            "events",
            format!("1 to {BATCH_MAX} events"),
        ));
    }
    let tenant = publishing_tenant(&state, &principal, &tenant).await?;
    let futures = body.events.into_iter().map(|item| {
        let state = state.clone();
        async move {
            let req: PublishRequest = crate::extract::parse(item.get().as_bytes())?;
            publish_one(&state, tenant, req, None).await
        }
    });
    let results = futures::future::join_all(futures).await;
    let all_ok = results.iter().all(Result::is_ok);
    let items: Vec<Value> = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            Ok(p) => json!({"index": index, "status": 202, "event_id": p.event_id, "duplicate": p.duplicate}),
            Err(e) => json!({
                "index": index,
                "status": e.status().as_u16(),
                "error": {"code": e.code(), "message": e.to_string()},
            }),
        })
        .collect();
    let status = if all_ok {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, Json(json!({"results": items}))))
}

#[derive(Debug, Serialize)]
pub struct EventView {
    id: EventId,
    pub tenant_id: TenantId,
    event_type: String,
    /// The JSON text as published (events.payload is text, migration 0004).
    payload: Box<serde_json::value::RawValue>,
    idempotency_key: Option<String>,
    ordering_key: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<&Row> for EventView {
    type Error = ApiError;
    fn try_from(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            event_type: row.try_get("event_type")?,
            payload: serde_json::value::RawValue::from_string(row.try_get("payload")?)
                .map_err(ApiError::internal)?,
            idempotency_key: row.try_get("idempotency_key")?,
            ordering_key: row.try_get("ordering_key")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

const COLUMNS: &str =
    "id, tenant_id, event_type, payload, idempotency_key, ordering_key, created_at";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<i64>,
    cursor: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Page<EventView>>> {
    let TenantList {
        tenant,
        limit,
        before_time,
        before_id,
        client,
    } = tenant_list(
        &state,
        &principal,
        &tenant,
        params.limit,
        params.cursor.as_deref(),
    )
    .await?;
    crate::pagination::time_filters(&[("from", params.from), ("to", params.to)])?;
    if let Some(t) = &params.event_type {
        t.parse::<shared::domain::EventType>()
            .map_err(|e| ApiError::invalid("type", e))?;
    }
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events
                 WHERE tenant_id = $1 AND (created_at, id) < ($2, $3)
                   AND ($4::text IS NULL OR event_type = $4)
                   AND ($5::timestamptz IS NULL OR created_at >= $5)
                   AND ($6::timestamptz IS NULL OR created_at < $6)
                 ORDER BY created_at DESC, id DESC LIMIT $7"
            ),
            &[
                &tenant,
                &before_time,
                &before_id,
                &params.event_type,
                &params.from,
                &params.to,
                &(limit + 1),
            ],
        )
        .await?;
    let views = rows
        .iter()
        .map(EventView::try_from)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_rows(views, limit, |e| Cursor {
        created_at: e.created_at,
        id: *e.id.as_uuid(),
    })))
}

#[derive(Debug, Serialize)]
pub struct EventWithDeliveries {
    #[serde(flatten)]
    event: EventView,
    deliveries: Vec<DeliveryView>,
}

/// The event if the caller may see it; another tenant's event is "not found". Event ids are
/// the tenant's choice (direct producers), so two tenants may use one (migration 0005): a
/// tenant's caller, or a caller who knows the tenant (`tenant`, e.g. from a delivery), sees
/// that tenant's event; an operator asking by an id several tenants use gets 409 and can list
/// the tenant's events instead.
pub async fn load_event(
    state: &AppState,
    principal: &Principal,
    id: &EventId,
    tenant: Option<&TenantId>,
) -> ApiResult<EventView> {
    let scope = tenant.copied().or(principal.tenant_scope());
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM events WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) LIMIT 2"
            ),
            &[id, &scope],
        )
        .await?;
    let row = match rows.as_slice() {
        [] => return Err(ApiError::NotFound("event")),
        [row] => row,
        _ => {
            return Err(ApiError::Conflict(format!(
                "event id {id} is used by more than one tenant: find it in GET /v1/tenants/{{tenant_id}}/events"
            )));
        }
    };
    let event = EventView::try_from(row)?;
    principal
        .require_tenant(&event.tenant_id)
        .map_err(|_| ApiError::NotFound("event"))?;
    Ok(event)
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(event): Path<String>,
) -> ApiResult<Json<EventWithDeliveries>> {
    let id: EventId = parse_id(&event, "event")?;
    let event = load_event(&state, &principal, &id, None).await?;
    let deliveries =
        delivery_rows(&state, &event.tenant_id, &id, None, None, None, None, 250).await?;
    Ok(Json(EventWithDeliveries { event, deliveries }))
}
