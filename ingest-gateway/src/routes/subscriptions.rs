//! Subscriptions: an endpoint receives the events whose type matches a pattern (`invoice.paid`,
//! `invoice.*`, `*`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::domain::EventTypePattern;
use shared::ids::{EndpointId, SubscriptionId, TenantId};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Query};
use crate::pagination::{Cursor, Page};
use crate::routes::{TenantList, delete_owned, parse_id, tenant_exists, tenant_list};
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    id: SubscriptionId,
    tenant_id: TenantId,
    endpoint_id: EndpointId,
    event_type: String,
    created_at: DateTime<Utc>,
}

impl TryFrom<&Row> for SubscriptionView {
    type Error = ApiError;
    fn try_from(row: &Row) -> Result<Self, ApiError> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            event_type: row.try_get("event_type_pattern")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, endpoint_id, event_type_pattern, created_at";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    event_type: String,
    endpoint_id: String,
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<CreateSubscription>,
) -> ApiResult<(StatusCode, Json<SubscriptionView>)> {
    let tenant: TenantId = parse_id(&tenant, "tenant")?;
    principal.require_tenant(&tenant)?;
    let pattern: EventTypePattern = body
        .event_type
        .parse()
        .map_err(|e| ApiError::invalid("event_type", e))?;
    let endpoint: EndpointId = body
        .endpoint_id
        .parse()
        .map_err(|e| ApiError::invalid("endpoint_id", e))?;
    let client = state.pool.get().await?;
    tenant_exists(&**client, &tenant).await?;
    // The endpoint must be this tenant's: a missing endpoint and another tenant's get the same
    // 404 (as a missing resource named in the body does in Stripe's API), so ids do not leak.
    let unknown = || ApiError::NotFound("endpoint");
    client
        .query_opt(
            "SELECT 1 FROM endpoints WHERE id = $1 AND tenant_id = $2",
            &[&endpoint, &tenant],
        )
        .await?
        .ok_or_else(unknown)?;
    let id = SubscriptionId::new();
    let row = client
        .query_one(
            &format!(
                "INSERT INTO subscriptions (id, tenant_id, endpoint_id, event_type_pattern)
                 VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
            ),
            &[&id, &tenant, &endpoint, &pattern.to_string()],
        )
        .await
        .map_err(|e| {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                ApiError::Conflict(format!(
                    "endpoint {endpoint} is already subscribed to `{pattern}`"
                ))
            } else if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                // The endpoint was deleted between the check and the insert.
                unknown()
            } else {
                e.into()
            }
        })?;
    Ok((StatusCode::CREATED, Json(SubscriptionView::try_from(&row)?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<i64>,
    cursor: Option<String>,
    endpoint_id: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Page<SubscriptionView>>> {
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
    let endpoint: Option<EndpointId> = params
        .endpoint_id
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("endpoint_id", e))?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM subscriptions
                 WHERE tenant_id = $1 AND (created_at, id) < ($2, $3) AND ($4::uuid IS NULL OR endpoint_id = $4)
                 ORDER BY created_at DESC, id DESC LIMIT $5"
            ),
            &[&tenant, &before_time, &before_id, &endpoint, &(limit + 1)],
        )
        .await?;
    let views = rows
        .iter()
        .map(SubscriptionView::try_from)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_rows(views, limit, |s| Cursor {
        created_at: s.created_at,
        id: *s.id.as_uuid(),
    })))
}

fn ids(principal: &Principal, tenant: &str, sub: &str) -> ApiResult<(TenantId, SubscriptionId)> {
    let tenant: TenantId = parse_id(tenant, "tenant")?;
    principal.require_tenant(&tenant)?;
    Ok((tenant, parse_id(sub, "subscription")?))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, sub)): Path<(String, String)>,
) -> ApiResult<Json<SubscriptionView>> {
    let (tenant, id) = ids(&principal, &tenant, &sub)?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM subscriptions WHERE id = $1 AND tenant_id = $2"),
            &[&id, &tenant],
        )
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    SubscriptionView::try_from(&row).map(Json)
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, sub)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (tenant, id) = ids(&principal, &tenant, &sub)?;
    delete_owned(&state, "subscriptions", &id, &tenant, "subscription").await?;
    Ok(StatusCode::NO_CONTENT)
}
