//! Standard Webhooks `v1a` keys (shared::asymmetric): one ed25519 key per secret row, so a key
//! rotates with its secret and signs for the same overlap; the tenant fetches the public halves
//! to verify with.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use shared::asymmetric::SigningKey;
use shared::ids::EndpointId;
use tokio_postgres::GenericClient;

use super::endpoints::ids;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Gives every secret row of endpoint `id` that has no usable key a fresh one: on create with
/// `signature_v1a`, on turning it on, for the new secret of a rotation, and to repair a row a
/// previous release's gateway rotated without a key (or whose key does not parse). Keys already
/// there stay, so switching v1a off and on again keeps the public keys of the secrets not
/// rotated meanwhile. Runs in the caller's transaction, which holds the endpoint row.
pub async fn ensure(client: &impl GenericClient, id: &EndpointId) -> ApiResult<()> {
    let rows = client
        .query(
            "SELECT id, signing_key FROM endpoint_secrets WHERE endpoint_id = $1",
            &[id],
        )
        .await?;
    for row in rows {
        let key: Option<String> = row.try_get(1)?;
        if key.is_some_and(|k| k.parse::<SigningKey>().is_ok()) {
            continue;
        }
        let secret_row: i64 = row.try_get(0)?;
        client
            .execute(
                "UPDATE endpoint_secrets SET signing_key = $2 WHERE id = $1",
                &[&secret_row, &SigningKey::generate().expose()],
            )
            .await?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct PublicKeyView {
    public_key: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// The public keys of the secrets that sign now, the current one first; `None` when one of
/// them has no usable key (a row to repair).
async fn active(
    client: &impl GenericClient,
    id: &EndpointId,
) -> ApiResult<Option<Vec<PublicKeyView>>> {
    let rows = client
        .query(
            "SELECT signing_key, created_at, expires_at FROM endpoint_secrets
             WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())
             ORDER BY expires_at IS NOT NULL, created_at DESC",
            &[id],
        )
        .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        let text: Option<String> = r.try_get(0)?;
        let Some(key) = text.and_then(|t| t.parse::<SigningKey>().ok()) else {
            return Ok(None);
        };
        keys.push(PublicKeyView {
            public_key: key.public_key().to_string(),
            created_at: r.try_get(1)?,
            expires_at: r.try_get(2)?,
        });
    }
    Ok(Some(keys))
}

/// `GET …/endpoints/{id}/public-key`: the keys that verify the endpoint's `v1a` signatures now,
/// the current one first, then any still overlapping after a rotation. 404 unless the endpoint
/// has `signature_v1a`. A signing secret without a usable key is given one first (under the
/// endpoint's row lock, as every key write), so the answer is never a previous key shown as
/// the current one.
pub async fn public_key(
    State(state): State<AppState>,
    principal: Principal,
    Path((tenant, endpoint)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let (tenant, id) = ids(&principal, &tenant, &endpoint)?;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await?;
    let v1a = |row: Option<tokio_postgres::Row>| -> ApiResult<bool> {
        Ok(row.ok_or(ApiError::NotFound("endpoint"))?.try_get(0)?)
    };
    let enabled = v1a(tx
        .query_opt(
            "SELECT signature_v1a FROM endpoints WHERE id = $1 AND tenant_id = $2",
            &[&id, &tenant],
        )
        .await?)?;
    if !enabled {
        return Err(ApiError::NotFound("public key"));
    }
    let keys = match active(&*tx, &id).await? {
        Some(keys) => keys,
        None => {
            tracing::warn!(endpoint_id = %id, "a v1a endpoint's secret had no usable key; generating one");
            let locked = v1a(
                tx.query_opt(
                    "SELECT signature_v1a FROM endpoints WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                    &[&id, &tenant],
                )
                .await?,
            )?;
            if !locked {
                return Err(ApiError::NotFound("public key"));
            }
            ensure(&*tx, &id).await?;
            // Deliveries pick the new key up through the endpoint's change notification.
            tx.execute(
                "UPDATE endpoints SET updated_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
            active(&*tx, &id).await?.ok_or_else(|| {
                ApiError::internal(std::io::Error::other(
                    "a generated signing key does not parse",
                ))
            })?
        }
    };
    tx.commit().await?;
    let mut keys = keys.into_iter();
    let current = keys.next().ok_or(ApiError::NotFound("public key"))?;
    Ok(Json(json!({
        "public_key": current.public_key,
        "created_at": current.created_at,
        "previous": keys.collect::<Vec<_>>(),
    })))
}
