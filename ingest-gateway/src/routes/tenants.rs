//! Tenants. Creating one is an operator action (onboarding); a tenant's token may read its own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::ids::TenantId;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::parse_id;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    /// Lets an operator keep the id of a tenant migrated from the replaced system.
    id: Option<TenantId>,
}

#[derive(Debug, Serialize)]
pub struct TenantView {
    id: TenantId,
    name: String,
    created_at: DateTime<Utc>,
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    principal.require_operator()?;
    // Checked as sent (the document's pattern), stored without surrounding white space.
    ApiError::text("name", &body.name, 200, shared::text::Lines::Single)?;
    let name = body.name.trim();
    let id = body.id.unwrap_or_default();
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING created_at",
            &[&id, &name],
        )
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("tenant {id} already exists")))?;
    tracing::info!(tenant_id = %id, by = %principal.subject, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(TenantView {
            id,
            name: name.to_owned(),
            created_at: row.try_get(0)?,
        }),
    ))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
) -> ApiResult<Json<TenantView>> {
    let id: TenantId = parse_id(&tenant, "tenant")?;
    principal.require_tenant(&id)?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt("SELECT name, created_at FROM tenants WHERE id = $1", &[&id])
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    Ok(Json(TenantView {
        id,
        name: row.try_get(0)?,
        created_at: row.try_get(1)?,
    }))
}
