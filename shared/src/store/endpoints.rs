//! Endpoints with their signing secrets: one mapping from the `endpoints` and
//! `endpoint_secrets` rows to [`Endpoint`], by column name, for the API (which shows an
//! endpoint without its secrets) and the delivery-consumer (which signs with them).

use std::collections::HashMap;

use tokio_postgres::{GenericClient, Row};

use super::RowError;
use crate::domain::{Endpoint, EndpointSecret};
use crate::ids::{EndpointId, TenantId};

/// The columns [`from_row`] reads, for a `SELECT` or a `RETURNING`.
pub const COLUMNS: &str = "id, tenant_id, url, description, signature_scheme, signature_v1a, enabled, disabled_reason, \
    max_in_flight, rate_limit_per_sec, connect_timeout_ms, timeout_ms, headers, created_at, updated_at";

/// An endpoint row, without its secrets (`secrets` is empty).
pub fn from_row(r: &Row) -> Result<Endpoint, RowError> {
    let scheme: String = r.try_get("signature_scheme")?;
    let headers: serde_json::Value = r.try_get("headers")?;
    // The table's CHECKs keep these positive; a negative value would be a row the API could
    // not have written.
    let positive = |column: &'static str| -> Result<u32, RowError> {
        let v: i32 = r.try_get(column)?;
        u32::try_from(v).map_err(|e| RowError::invalid(column, e))
    };
    Ok(Endpoint {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        url: r.try_get("url")?,
        description: r.try_get("description")?,
        secrets: Vec::new(),
        signature_scheme: scheme
            .parse()
            .map_err(|e| RowError::invalid("signature_scheme", e))?,
        signature_v1a: r.try_get("signature_v1a")?,
        enabled: r.try_get("enabled")?,
        disabled_reason: r.try_get("disabled_reason")?,
        max_in_flight: positive("max_in_flight")?,
        rate_limit_per_sec: r.try_get("rate_limit_per_sec")?,
        connect_timeout_ms: positive("connect_timeout_ms")?,
        timeout_ms: positive("timeout_ms")?,
        headers: serde_json::from_value(headers).map_err(|e| RowError::invalid("headers", e))?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn secret_from_row(r: &Row) -> Result<(EndpointId, EndpointSecret), RowError> {
    let text: String = r.try_get("secret")?;
    let key: Option<String> = r.try_get("signing_key")?;
    Ok((
        r.try_get("endpoint_id")?,
        EndpointSecret {
            secret: text
                .parse()
                .map_err(|_| RowError::invalid("secret", "not a signing secret"))?,
            // A key that does not parse costs the v1a signature, not the secret's v1 one.
            signing_key: key.and_then(|k| {
                k.parse()
                    .inspect_err(|_| tracing::warn!("an endpoint signing key does not parse"))
                    .ok()
            }),
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        },
    ))
}

/// Which endpoints to load.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    All,
    Tenant(&'a TenantId),
    One(&'a EndpointId),
}

/// The endpoints selected, each with every secret it has (newest first: the current secret's
/// signature leads). A row that does not map is skipped with a warning, so one bad row cannot
/// stop the others from loading; a query that fails is the caller's to retry.
pub async fn load(
    client: &impl GenericClient,
    which: Which<'_>,
) -> Result<Vec<Endpoint>, tokio_postgres::Error> {
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let (filter, params): (&str, Vec<Param<'_>>) = match which {
        Which::All => ("", vec![]),
        Which::Tenant(t) => (" WHERE e.tenant_id = $1", vec![t as Param<'_>]),
        Which::One(id) => (" WHERE e.id = $1", vec![id as Param<'_>]),
    };
    let columns = COLUMNS
        .split(", ")
        .map(|c| format!("e.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = client
        .query(
            &format!("SELECT {columns} FROM endpoints e{filter}"),
            &params,
        )
        .await?;
    let secrets = client
        .query(
            &format!(
                "SELECT s.endpoint_id, s.secret, s.signing_key, s.created_at, s.expires_at
                 FROM endpoint_secrets s JOIN endpoints e ON e.id = s.endpoint_id{filter}"
            ),
            &params,
        )
        .await?;
    let mut by_endpoint: HashMap<EndpointId, Vec<EndpointSecret>> = HashMap::new();
    for r in &secrets {
        match secret_from_row(r) {
            Ok((id, s)) => by_endpoint.entry(id).or_default().push(s),
            Err(e) => tracing::warn!(error = %e, "skipping an endpoint secret that does not map"),
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        match from_row(r) {
            Ok(mut e) => {
                let mut secrets = by_endpoint.remove(&e.id).unwrap_or_default();
                secrets.sort_by_key(|s| std::cmp::Reverse(s.created_at));
                e.secrets = secrets;
                out.push(e);
            }
            Err(e) => {
                let id = r.try_get::<_, EndpointId>("id").ok();
                tracing::warn!(endpoint_id = ?id, error = %e, "skipping an endpoint row that does not map");
            }
        }
    }
    Ok(out)
}
