//! The HTTP routes. Paths keep the replaced system's (`/v1/tenants/{id}/events:publish`, …);
//! custom methods use the `{id}:verb` form, routed as one path segment and split here because
//! the router matches whole segments.

pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod signing_keys;
pub mod subscriptions;
pub mod tenants;

use std::str::FromStr;

use axum::Router;
use axum::routing::{get, post};
use shared::ids::TenantId;
use tokio_postgres::GenericClient;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Every API route as (method, path), the list the OpenAPI test checks against.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/ping"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants/{tenant_id}"),
    ("POST", "/v1/tenants/{tenant_id}/endpoints"),
    ("GET", "/v1/tenants/{tenant_id}/endpoints"),
    ("GET", "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}"),
    ("PATCH", "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}"),
    ("DELETE", "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}"),
    (
        "POST",
        "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}:enable",
    ),
    (
        "POST",
        "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}:disable",
    ),
    (
        "POST",
        "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}:rotate-secret",
    ),
    (
        "GET",
        "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}/secret",
    ),
    (
        "GET",
        "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}/public-key",
    ),
    ("POST", "/v1/tenants/{tenant_id}/subscriptions"),
    ("GET", "/v1/tenants/{tenant_id}/subscriptions"),
    (
        "GET",
        "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}",
    ),
    (
        "DELETE",
        "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}",
    ),
    ("POST", "/v1/tenants/{tenant_id}/events:publish"),
    ("POST", "/v1/tenants/{tenant_id}/events:batch"),
    ("GET", "/v1/tenants/{tenant_id}/events"),
    ("GET", "/v1/events/{event_id}"),
    ("GET", "/v1/events/{event_id}/deliveries"),
    ("GET", "/v1/deliveries/{delivery_id}"),
    ("GET", "/v1/deliveries/{delivery_id}/attempts"),
    ("POST", "/v1/deliveries/{delivery_id}:replay"),
    ("GET", "/v1/dlq"),
];

pub fn api() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/ping",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/tenants", post(tenants::create))
        .route("/v1/tenants/{tenant_id}", get(tenants::get))
        .route(
            "/v1/tenants/{tenant_id}/endpoints",
            post(endpoints::create).get(endpoints::list),
        )
        .route(
            "/v1/tenants/{tenant_id}/endpoints/{endpoint}",
            get(endpoints::get)
                .patch(endpoints::update)
                .delete(endpoints::delete)
                .post(endpoints::action),
        )
        .route(
            "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}/secret",
            get(endpoints::secret),
        )
        .route(
            "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}/public-key",
            get(signing_keys::public_key),
        )
        .route(
            "/v1/tenants/{tenant_id}/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route(
            "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}",
            get(subscriptions::get).delete(subscriptions::delete),
        )
        .route(
            "/v1/tenants/{tenant_id}/events:publish",
            post(events::publish),
        )
        .route("/v1/tenants/{tenant_id}/events:batch", post(events::batch))
        .route("/v1/tenants/{tenant_id}/events", get(events::list))
        .route("/v1/events/{event_id}", get(events::get))
        .route(
            "/v1/events/{event_id}/deliveries",
            get(deliveries::of_event),
        )
        .route(
            "/v1/deliveries/{delivery}",
            get(deliveries::get).post(deliveries::action),
        )
        .route(
            "/v1/deliveries/{delivery_id}/attempts",
            get(deliveries::attempts),
        )
        .route("/v1/dlq", get(deliveries::dlq))
}

/// Whether a path segment matches a route template's: `{name}` is one id (no `:`), `{name}:verb`
/// an id followed by that verb, anything else itself.
fn segment_matches(template: &str, segment: &str) -> bool {
    let Some(rest) = template.strip_prefix('{') else {
        return template == segment;
    };
    let id_ok = |id: &str| !id.is_empty() && !id.contains(':');
    match rest.split_once('}') {
        Some((_, "")) => id_ok(segment),
        Some((_, suffix)) => segment.strip_suffix(suffix).is_some_and(id_ok),
        None => false,
    }
}

/// The documented methods of the route `path` is an instance of, if any ([`ROUTES`]). The
/// router matches `{id}` and `{id}:verb` as one segment; this tells them apart, so a method the
/// document does not list for a path is a 405 naming the ones it does.
pub fn documented_methods(path: &str) -> Option<Vec<&'static str>> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut methods: Vec<&'static str> = ROUTES
        .iter()
        .filter(|(_, template)| {
            let t: Vec<&str> = template.split('/').collect();
            t.len() == segments.len() && t.iter().zip(&segments).all(|(t, s)| segment_matches(t, s))
        })
        .map(|(method, _)| *method)
        .collect();
    methods.sort_unstable();
    methods.dedup();
    (!methods.is_empty()).then_some(methods)
}

/// Answers 405 (with `Allow`) for a method the document does not list for the path, before
/// any extractor can answer something else (415 for a missing body, 404 for an id with a verb).
pub async fn check_method(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if let Some(allowed) = documented_methods(request.uri().path())
        && !allowed.contains(&request.method().as_str())
    {
        return ApiError::MethodNotAllowed(allowed).into_response();
    }
    next.run(request).await
}

/// The common start of a tenant-scoped list: the caller may see the tenant, the tenant exists,
/// the page bounds are valid; with the connection to query on.
pub struct TenantList {
    pub tenant: TenantId,
    pub limit: i64,
    pub before_time: chrono::DateTime<chrono::Utc>,
    pub before_id: uuid::Uuid,
    pub client: deadpool_postgres::Object,
}

pub async fn tenant_list(
    state: &AppState,
    principal: &crate::auth::Principal,
    tenant: &str,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> ApiResult<TenantList> {
    let tenant: TenantId = parse_id(tenant, "tenant")?;
    principal.require_tenant(&tenant)?;
    let (limit, cursor) = crate::pagination::page_params(limit, cursor)?;
    let (before_time, before_id) = crate::pagination::cursor_bounds(cursor);
    let client = state.pool.get().await?;
    tenant_exists(&**client, &tenant).await?;
    Ok(TenantList {
        tenant,
        limit,
        before_time,
        before_id,
        client,
    })
}

/// Parses a path id; a malformed id names nothing that exists, so it is a 404.
pub fn parse_id<T: FromStr>(text: &str, what: &'static str) -> ApiResult<T> {
    text.parse().map_err(|_| ApiError::NotFound(what))
}

/// Splits `{id}:{verb}`.
pub fn parse_action(segment: &str) -> ApiResult<(&str, &str)> {
    segment.split_once(':').ok_or(ApiError::NotFound("action"))
}

pub async fn tenant_exists(client: &impl GenericClient, tenant: &TenantId) -> ApiResult<()> {
    client
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[tenant])
        .await?
        .map(|_| ())
        .ok_or(ApiError::NotFound("tenant"))
}

/// Deletes the tenant's row `id` from `table`, or answers 404 as `what`.
pub async fn delete_owned<I: tokio_postgres::types::ToSql + Sync>(
    state: &AppState,
    table: &'static str,
    id: &I,
    tenant: &TenantId,
    what: &'static str,
) -> ApiResult<()> {
    let client = state.pool.get().await?;
    let deleted = client
        .execute(
            &format!("DELETE FROM {table} WHERE id = $1 AND tenant_id = $2"),
            &[id, tenant],
        )
        .await?;
    if deleted == 0 {
        Err(ApiError::NotFound(what))
    } else {
        Ok(())
    }
}
