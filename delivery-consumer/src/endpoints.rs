//! The endpoint cache: URL, secrets, scheme, caps and timeouts of every endpoint, in memory so
//! a delivery makes no PostgreSQL query (rows mapped by shared::store::endpoints, as for the API). Kept fresh by `shared::config_watch` (a change through
//! the API, including a secret rotation, is seen within milliseconds); an endpoint missing from
//! the cache (created a moment ago) is loaded on first use. Every load, and this process's own
//! change (a 410 disables the endpoint), is applied through `shared::versioned`: an older load
//! finishing later never overwrites newer data.

use std::sync::{Arc, RwLock};

use deadpool_postgres::Pool;
use shared::domain::Endpoint;
use shared::ids::{EndpointId, TenantId};
use shared::store::endpoints::{self, Which};
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
        let fresh = entries(endpoints::load(&**client, Which::One(id)).await?);
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
        let fresh = entries(endpoints::load(client, Which::All).await?);
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
        let fresh = entries(endpoints::load(client, Which::Tenant(tenant)).await?);
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
