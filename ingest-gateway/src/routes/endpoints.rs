//! Endpoints: create, list, get, update, delete, enable/disable, secret read and rotation
//! (`signing_keys.rs` has the `v1a` keys that rotate with the secrets).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use shared::domain::{SignatureScheme, SigningSecret};
use shared::ids::{EndpointId, TenantId};
use tokio_postgres::Row;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Query};
use crate::pagination::{Cursor, Page};
use crate::routes::{TenantList, delete_owned, parse_action, parse_id, tenant_exists, tenant_list};
use crate::state::AppState;

const MAX_HEADERS: usize = 20;
/// Headers the platform sets itself; an endpoint may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "traceparent",
    "tracestate",
    "user-agent",
];

#[derive(Debug, Serialize)]
pub struct EndpointView {
    id: EndpointId,
    tenant_id: TenantId,
    url: String,
    description: String,
    signature_scheme: SignatureScheme,
    signature_v1a: bool,
    enabled: bool,
    disabled_reason: Option<String>,
    max_in_flight: u32,
    rate_limit_per_sec: Option<f64>,
    connect_timeout_ms: u32,
    timeout_ms: u32,
    headers: BTreeMap<String, String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The endpoint columns (shared::store::endpoints: one mapping for the API and the
/// delivery-consumer).
const COLUMNS: &str = shared::store::endpoints::COLUMNS;

impl TryFrom<&Row> for EndpointView {
    type Error = ApiError;
    fn try_from(row: &Row) -> Result<Self, ApiError> {
        // Secrets are never part of the view (only `GET …/secret` shows them).
        let e = shared::store::endpoints::from_row(row)?;
        Ok(Self {
            id: e.id,
            tenant_id: e.tenant_id,
            url: e.url,
            description: e.description,
            signature_scheme: e.signature_scheme,
            signature_v1a: e.signature_v1a,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            max_in_flight: e.max_in_flight,
            rate_limit_per_sec: e.rate_limit_per_sec,
            connect_timeout_ms: e.connect_timeout_ms,
            timeout_ms: e.timeout_ms,
            headers: e.headers,
            created_at: e.created_at,
            updated_at: e.updated_at,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    url: String,
    #[serde(default)]
    description: String,
    secret: Option<String>,
    signature_scheme: Option<SignatureScheme>,
    signature_v1a: Option<bool>,
    #[serde(default, deserialize_with = "crate::grammar::integer")]
    max_in_flight: Option<i32>,
    rate_limit_per_sec: Option<f64>,
    #[serde(default, deserialize_with = "crate::grammar::integer")]
    connect_timeout_ms: Option<i32>,
    #[serde(default, deserialize_with = "crate::grammar::integer")]
    timeout_ms: Option<i32>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// `Some(None)` when the field is present and `null` (clear it), `None` when absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    url: Option<String>,
    description: Option<String>,
    signature_scheme: Option<SignatureScheme>,
    signature_v1a: Option<bool>,
    #[serde(default, deserialize_with = "crate::grammar::integer")]
    max_in_flight: Option<i32>,
    #[serde(default, deserialize_with = "nullable")]
    rate_limit_per_sec: Option<Option<f64>>,
    #[serde(default, deserialize_with = "crate::grammar::integer")]
    connect_timeout_ms: Option<i32>,
    #[serde(default, deserialize_with = "crate::grammar::integer")]
    timeout_ms: Option<i32>,
    headers: Option<BTreeMap<String, String>>,
}

/// Longest description, in bytes.
const DESCRIPTION_MAX: usize = 1000;
/// Longest disable reason, in bytes.
const REASON_MAX: usize = 1000;

fn check_url(state: &AppState, url: &str) -> ApiResult<()> {
    if url.chars().count() > 2048 {
        return Err(ApiError::invalid("url", "at most 2048 characters"));
    }
    // The documented grammar (grammar.rs): ASCII, no spaces or control characters (the URL
    // parser would quietly drop or escape them, and the stored URL is the one the tenant
    // sees), no credentials.
    if !crate::grammar::url_matches(url) {
        return Err(ApiError::invalid(
            "url",
            "must be an http(s) URL with an ASCII host (xn-- for international names), an optional port, and a path of printable ASCII",
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid("url", format!("not an absolute URL ({e})")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if !state.config.https_only => {}
        "http" => return Err(ApiError::invalid("url", "must use https")),
        _ => return Err(ApiError::invalid("url", "must be an http(s) URL")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::invalid("url", "must have a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::invalid(
            "url",
            "must not contain credentials; use custom headers",
        ));
    }
    Ok(())
}

fn check_range(
    field: &str,
    value: Option<i32>,
    range: std::ops::RangeInclusive<i32>,
) -> ApiResult<()> {
    match value {
        Some(v) if !range.contains(&v) => Err(ApiError::invalid(
            field,
            format!("must be between {} and {}", range.start(), range.end()),
        )),
        _ => Ok(()),
    }
}

fn check_limits(
    max_in_flight: Option<i32>,
    rate: Option<f64>,
    connect: Option<i32>,
    timeout: Option<i32>,
) -> ApiResult<()> {
    check_range("max_in_flight", max_in_flight, 1..=1000)?;
    check_range("connect_timeout_ms", connect, 100..=60_000)?;
    check_range("timeout_ms", timeout, 100..=300_000)?;
    if rate.is_some_and(|r| !(0.001..=10_000.0).contains(&r)) {
        return Err(ApiError::invalid(
            "rate_limit_per_sec",
            "must be between 0.001 and 10000",
        ));
    }
    Ok(())
}

fn check_headers(headers: &BTreeMap<String, String>) -> ApiResult<()> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::invalid(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ApiError::invalid(
                "headers",
                format!("`{name}` is not a valid header name"),
            ));
        }
        if axum::http::HeaderValue::from_str(value).is_err() || value.chars().count() > 4096 {
            return Err(ApiError::invalid(
                "headers",
                format!("the value of `{name}` is not a valid header value"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("x-harborhook-")
        {
            return Err(ApiError::invalid(
                "headers",
                format!("`{name}` is set by Harborhook and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<CreateEndpoint>,
) -> ApiResult<Response> {
    let tenant: TenantId = parse_id(&tenant, "tenant")?;
    principal.require_tenant(&tenant)?;
    check_url(&state, &body.url)?;
    ApiError::optional_text(
        "description",
        &body.description,
        DESCRIPTION_MAX,
        shared::text::Lines::Multi,
    )?;
    check_limits(
        body.max_in_flight,
        body.rate_limit_per_sec,
        body.connect_timeout_ms,
        body.timeout_ms,
    )?;
    check_headers(&body.headers)?;
    let secret = match &body.secret {
        Some(text) => text
            .parse::<SigningSecret>()
            .map_err(|e| ApiError::invalid("secret", e))?,
        None => SigningSecret::generate(),
    };
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    tenant_exists(&*tx, &tenant).await?;
    let id = EndpointId::new();
    let scheme = body.signature_scheme.unwrap_or_default().as_str();
    let headers = serde_json::to_value(&body.headers).map_err(ApiError::internal)?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO endpoints (id, tenant_id, url, description, signature_scheme, max_in_flight,
                    rate_limit_per_sec, connect_timeout_ms, timeout_ms, headers, signature_v1a)
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, 10), $7, COALESCE($8, 5000), COALESCE($9, 15000), $10,
                    COALESCE($11, false))
                 RETURNING {COLUMNS}"
            ),
            &[
                &id, &tenant, &body.url, &body.description, &scheme, &body.max_in_flight,
                &body.rate_limit_per_sec, &body.connect_timeout_ms, &body.timeout_ms, &headers,
                &body.signature_v1a,
            ],
        )
        .await?;
    tx.execute(
        "INSERT INTO endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
        &[&id, &secret.expose()],
    )
    .await?;
    if body.signature_v1a == Some(true) {
        super::signing_keys::ensure(&*tx, &id).await?;
    }
    tx.commit().await?;
    let view = EndpointView::try_from(&row)?;
    tracing::info!(tenant_id = %tenant, endpoint_id = %id, "endpoint created");
    let mut body = serde_json::to_value(view).map_err(ApiError::internal)?;
    body["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<i64>,
    cursor: Option<String>,
    enabled: Option<bool>,
}

pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(tenant): Path<String>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<Page<EndpointView>>> {
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
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM endpoints
                 WHERE tenant_id = $1 AND (created_at, id) < ($2, $3) AND ($4::bool IS NULL OR enabled = $4)
                 ORDER BY created_at DESC, id DESC LIMIT $5"
            ),
            &[&tenant, &before_time, &before_id, &params.enabled, &(limit + 1)],
        )
        .await?;
    let views = rows
        .iter()
        .map(EndpointView::try_from)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_rows(views, limit, |e| Cursor {
        created_at: e.created_at,
        id: *e.id.as_uuid(),
    })))
}

pub(super) async fn load(
    state: &AppState,
    tenant: &TenantId,
    id: &EndpointId,
) -> ApiResult<EndpointView> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM endpoints WHERE id = $1 AND tenant_id = $2"),
            &[id, tenant],
        )
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    EndpointView::try_from(&row)
}

pub(super) fn ids(
    principal: &Principal,
    tenant: &str,
    endpoint: &str,
) -> ApiResult<(TenantId, EndpointId)> {
    let tenant: TenantId = parse_id(tenant, "tenant")?;
    principal.require_tenant(&tenant)?;
    Ok((tenant, parse_id(endpoint, "endpoint")?))
}

pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, endpoint)): Path<(String, String)>,
) -> ApiResult<Json<EndpointView>> {
    let (tenant, id) = ids(&principal, &tenant, &endpoint)?;
    load(&state, &tenant, &id).await.map(Json)
}

pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, endpoint)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateEndpoint>,
) -> ApiResult<Json<EndpointView>> {
    let (tenant, id) = ids(&principal, &tenant, &endpoint)?;
    if let Some(url) = &body.url {
        check_url(&state, url)?;
    }
    if let Some(description) = &body.description {
        ApiError::optional_text(
            "description",
            description,
            DESCRIPTION_MAX,
            shared::text::Lines::Multi,
        )?;
    }
    check_limits(
        body.max_in_flight,
        body.rate_limit_per_sec.flatten(),
        body.connect_timeout_ms,
        body.timeout_ms,
    )?;
    if let Some(headers) = &body.headers {
        check_headers(headers)?;
    }
    let headers = body
        .headers
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(ApiError::internal)?;
    let scheme = body.signature_scheme.map(SignatureScheme::as_str);
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE endpoints SET
                    url = COALESCE($3, url),
                    description = COALESCE($4, description),
                    signature_scheme = COALESCE($5, signature_scheme),
                    max_in_flight = COALESCE($6, max_in_flight),
                    rate_limit_per_sec = CASE WHEN $7 THEN $8 ELSE rate_limit_per_sec END,
                    connect_timeout_ms = COALESCE($9, connect_timeout_ms),
                    timeout_ms = COALESCE($10, timeout_ms),
                    headers = COALESCE($11, headers),
                    signature_v1a = COALESCE($12, signature_v1a),
                    updated_at = now()
                 WHERE id = $1 AND tenant_id = $2
                 RETURNING {COLUMNS}"
            ),
            &[
                &id,
                &tenant,
                &body.url,
                &body.description,
                &scheme,
                &body.max_in_flight,
                &body.rate_limit_per_sec.is_some(),
                &body.rate_limit_per_sec.flatten(),
                &body.connect_timeout_ms,
                &body.timeout_ms,
                &headers,
                &body.signature_v1a,
            ],
        )
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    let view = EndpointView::try_from(&row)?;
    if view.signature_v1a {
        super::signing_keys::ensure(&*tx, &id).await?;
    }
    tx.commit().await?;
    Ok(Json(view))
}

pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, endpoint)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (tenant, id) = ids(&principal, &tenant, &endpoint)?;
    delete_owned(&state, "endpoints", &id, &tenant, "endpoint").await?;
    tracing::info!(tenant_id = %tenant, endpoint_id = %id, "endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
struct SecretView {
    secret: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// The secrets that sign deliveries now: the current one first, then any still overlapping.
async fn active_secrets(
    client: &impl tokio_postgres::GenericClient,
    id: &EndpointId,
) -> ApiResult<Vec<SecretView>> {
    let rows = client
        .query(
            "SELECT secret, created_at, expires_at FROM endpoint_secrets
             WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())
             ORDER BY expires_at IS NOT NULL, created_at DESC",
            &[id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SecretView {
                secret: r.try_get(0)?,
                created_at: r.try_get(1)?,
                expires_at: r.try_get(2)?,
            })
        })
        .collect()
}

/// `GET …/endpoints/{id}/secret`: the only read that shows secrets.
pub async fn secret(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, endpoint)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let (tenant, id) = ids(&principal, &tenant, &endpoint)?;
    load(&state, &tenant, &id).await?;
    let client = state.pool.get().await?;
    let mut secrets = active_secrets(&**client, &id).await?.into_iter();
    let current = secrets.next().ok_or(ApiError::NotFound("secret"))?;
    Ok(Json(
        json!({"secret": current.secret, "created_at": current.created_at, "previous": secrets.collect::<Vec<_>>()}),
    ))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DisableBody {
    reason: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    secret: Option<String>,
}

/// The body of an action that may have none (`:enable`, `:rotate-secret`).
fn optional_body<T: serde::de::DeserializeOwned + Default>(raw: &[u8]) -> ApiResult<T> {
    if raw.is_empty() {
        Ok(T::default())
    } else {
        crate::extract::parse(raw)
    }
}

/// `POST …/endpoints/{id}:enable|:disable|:rotate-secret`, each with its own body.
pub async fn action(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, endpoint)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult<Response> {
    let (endpoint, verb) = parse_action(&endpoint)?;
    let (tenant, id) = ids(&principal, &tenant, endpoint)?;
    match verb {
        "enable" => {
            optional_body::<IgnoredBody>(&raw)?;
            set_enabled(&state, &tenant, &id, None)
                .await
                .map(IntoResponse::into_response)
        }
        "disable" => {
            let body: DisableBody = optional_body(&raw)?;
            let reason = body
                .reason
                .ok_or_else(|| ApiError::invalid("reason", "required to disable an endpoint"))?;
            ApiError::text("reason", &reason, REASON_MAX, shared::text::Lines::Multi)?;
            let reason = reason.trim().to_owned();
            set_enabled(&state, &tenant, &id, Some(reason))
                .await
                .map(IntoResponse::into_response)
        }
        "rotate-secret" => {
            let body: RotateBody = optional_body(&raw)?;
            rotate(&state, &tenant, &id, body.secret)
                .await
                .map(IntoResponse::into_response)
        }
        _ => Err(ApiError::NotFound("action")),
    }
}

/// `:enable` takes no body; an empty object is tolerated.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IgnoredBody {}

async fn set_enabled(
    state: &AppState,
    tenant: &TenantId,
    id: &EndpointId,
    disable: Option<String>,
) -> ApiResult<Json<EndpointView>> {
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE endpoints SET enabled = $3::text IS NULL, disabled_reason = $3::text,
                    disabled_at = CASE WHEN $3::text IS NULL THEN NULL ELSE now() END, updated_at = now()
                 WHERE id = $1 AND tenant_id = $2 RETURNING {COLUMNS}"
            ),
            &[id, tenant, &disable],
        )
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    tracing::info!(tenant_id = %tenant, endpoint_id = %id, disabled = disable.is_some(), "endpoint state changed");
    EndpointView::try_from(&row).map(Json)
}

async fn rotate(
    state: &AppState,
    tenant: &TenantId,
    id: &EndpointId,
    secret: Option<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let new = match secret {
        Some(text) => text
            .parse::<SigningSecret>()
            .map_err(|e| ApiError::invalid("secret", e))?,
        None => SigningSecret::generate(),
    };
    let overlap = chrono::Duration::from_std(state.config.secret_rotation_overlap)
        .map_err(ApiError::internal)?;
    let expires = Utc::now() + overlap;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    // Lock the endpoint row so two concurrent rotations cannot both keep a "current" secret.
    let v1a: bool = tx
        .query_opt(
            "SELECT signature_v1a FROM endpoints WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
            &[id, tenant],
        )
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?
        .try_get(0)?;
    // Secrets whose overlap already ended are of no further use.
    tx.execute(
        "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at <= now()",
        &[id],
    )
    .await?;
    tx.execute(
        "UPDATE endpoint_secrets SET expires_at = $2 WHERE endpoint_id = $1 AND expires_at IS NULL",
        &[id, &expires],
    )
    .await?;
    tx.execute(
        "INSERT INTO endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
        &[id, &new.expose()],
    )
    .await?;
    if v1a {
        // The new secret's v1a key rotates with it.
        super::signing_keys::ensure(&*tx, id).await?;
    }
    tx.execute(
        "UPDATE endpoints SET updated_at = now() WHERE id = $1",
        &[id],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant_id = %tenant, endpoint_id = %id, "endpoint secret rotated");
    Ok(Json(
        json!({"secret": new.expose(), "previous_secret_expires_at": expires}),
    ))
}
