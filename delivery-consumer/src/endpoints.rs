//! The endpoint cache: URL, secrets, scheme, caps and timeouts of every endpoint, in memory so
//! a delivery makes no PostgreSQL query. Kept fresh by `shared::config_watch` (a change through
//! the API, including a secret rotation, is seen within milliseconds); an endpoint missing from
//! the cache (created a moment ago) is loaded on first use. Every load, and this process's own
//! change (a 410 disables the endpoint), is applied through `shared::versioned`: an older load
//! finishing later never overwrites newer data.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use deadpool_postgres::Pool;
use shared::domain::{Endpoint, EndpointSecret};
use shared::ids::{EndpointId, TenantId};
use shared::versioned::{Scope, Stamps, Versioned};
use tokio_postgres::GenericClient;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading an endpoint")]
    Query(#[from] tokio_postgres::Error),
    #[error("loading an endpoint")]
    Pool(#[from] deadpool_postgres::PoolError),
}

type Map = Versioned<EndpointId, Arc<Endpoint>>;

#[derive(Clone, Default)]
pub struct EndpointCache {
    current: Arc<RwLock<Arc<Map>>>,
    stamps: Arc<Stamps>,
}

fn entries(endpoints: Vec<Endpoint>) -> Vec<(EndpointId, TenantId, Arc<Endpoint>)> {
    endpoints
        .into_iter()
        .map(|e| (e.id, e.tenant_id, Arc::new(e)))
        .collect()
}

const ENDPOINTS_SQL: &str = "SELECT id, tenant_id, url, description, signature_scheme, enabled,
    disabled_reason, max_in_flight, rate_limit_per_sec, connect_timeout_ms, timeout_ms, headers,
    created_at, updated_at FROM endpoints e";
const SECRETS_SQL: &str = "SELECT s.endpoint_id, s.secret, s.created_at, s.expires_at
    FROM endpoint_secrets s JOIN endpoints e ON e.id = s.endpoint_id";

/// Rows the API could not have written (a bad scheme or secret) are skipped with a warning.
fn build(rows: &[tokio_postgres::Row], secrets: &[tokio_postgres::Row]) -> Vec<Endpoint> {
    let mut by_endpoint: HashMap<EndpointId, Vec<EndpointSecret>> = HashMap::new();
    for r in secrets {
        let text: String = r.get(1);
        match text.parse() {
            Ok(secret) => by_endpoint
                .entry(r.get(0))
                .or_default()
                .push(EndpointSecret {
                    secret,
                    created_at: r.get(2),
                    expires_at: r.get(3),
                }),
            Err(_) => tracing::warn!("skipping an endpoint secret that does not parse"),
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: EndpointId = r.get(0);
        let scheme: String = r.get(4);
        let headers: serde_json::Value = r.get(11);
        let (Ok(signature_scheme), Ok(headers)) = (scheme.parse(), serde_json::from_value(headers))
        else {
            tracing::warn!(endpoint_id = %id, "skipping an endpoint row that does not parse");
            continue;
        };
        let mut secrets = by_endpoint.remove(&id).unwrap_or_default();
        // Newest first: the current secret's signature leads.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let int = |i: usize| u32::try_from(r.get::<_, i32>(i)).unwrap_or(1);
        out.push(Endpoint {
            id,
            tenant_id: r.get(1),
            url: r.get(2),
            description: r.get(3),
            secrets,
            signature_scheme,
            enabled: r.get(5),
            disabled_reason: r.get(6),
            max_in_flight: int(7),
            rate_limit_per_sec: r.get(8),
            connect_timeout_ms: int(9),
            timeout_ms: int(10),
            headers,
            created_at: r.get(12),
            updated_at: r.get(13),
        });
    }
    out
}

impl EndpointCache {
    pub fn get(&self, id: &EndpointId) -> Option<Arc<Endpoint>> {
        self.snapshot().get(id).cloned()
    }

    fn snapshot(&self) -> Arc<Map> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Map)) {
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Map::clone(&guard);
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// The endpoint, from the cache or else from PostgreSQL; `None` when it does not exist.
    pub async fn get_or_load(
        &self,
        pool: &Pool,
        id: &EndpointId,
    ) -> Result<Option<Arc<Endpoint>>, LoadError> {
        if let Some(e) = self.get(id) {
            return Ok(Some(e));
        }
        let stamp = self.stamps.take();
        let client = pool.get().await?;
        let rows = client
            .query(&format!("{ENDPOINTS_SQL} WHERE e.id = $1"), &[id])
            .await?;
        let secrets = client
            .query(&format!("{SECRETS_SQL} WHERE e.id = $1"), &[id])
            .await?;
        let fresh = entries(build(&rows, &secrets));
        let found = fresh.first().map(|(_, _, e)| e.clone());
        self.update(|m| {
            m.apply(stamp, Scope::One(*id), fresh);
        });
        Ok(found)
    }

    /// Disables an endpoint that answered 410 Gone (the API shows the reason; re-enabling it
    /// is the tenant's decision) and reflects it here at once.
    pub async fn disable(
        &self,
        pool: &Pool,
        id: &EndpointId,
        reason: &str,
    ) -> Result<(), LoadError> {
        pool.get()
            .await?
            .execute(
                "UPDATE endpoints SET enabled = false, disabled_reason = $2, disabled_at = now(),
                 updated_at = now() WHERE id = $1 AND enabled",
                &[id, &reason],
            )
            .await?;
        // As new as a load starting now: loads that started before the update cannot undo it.
        let stamp = self.stamps.take();
        self.update(|m| {
            if let Some(e) = m.get(id) {
                let mut e = Endpoint::clone(e);
                e.enabled = false;
                e.disabled_reason = Some(reason.to_owned());
                m.set(stamp, *id, e.tenant_id, Arc::new(e));
            }
        });
        Ok(())
    }

    async fn load_all(&self, client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
        let stamp = self.stamps.take();
        let rows = client.query(ENDPOINTS_SQL, &[]).await?;
        let secrets = client.query(SECRETS_SQL, &[]).await?;
        let fresh = entries(build(&rows, &secrets));
        tracing::debug!(endpoints = fresh.len(), "endpoint cache reloaded");
        self.update(|m| {
            m.apply(stamp, Scope::All, fresh);
        });
        Ok(())
    }

    async fn load_tenant(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
    ) -> Result<(), tokio_postgres::Error> {
        let stamp = self.stamps.take();
        let rows = client
            .query(
                &format!("{ENDPOINTS_SQL} WHERE e.tenant_id = $1"),
                &[tenant],
            )
            .await?;
        let secrets = client
            .query(&format!("{SECRETS_SQL} WHERE e.tenant_id = $1"), &[tenant])
            .await?;
        let fresh = entries(build(&rows, &secrets));
        self.update(|m| {
            m.apply(stamp, Scope::Tenant(*tenant), fresh);
        });
        Ok(())
    }
}

impl shared::config_watch::Reload for EndpointCache {
    async fn reload_all(
        &self,
        client: &deadpool_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let client: &tokio_postgres::Client = client;
        self.load_all(client).await
    }

    async fn reload_tenant(
        &self,
        client: &deadpool_postgres::Client,
        tenant: &TenantId,
    ) -> Result<(), tokio_postgres::Error> {
        let client: &tokio_postgres::Client = client;
        self.load_tenant(client, tenant).await
    }
}
