//! The subscription cache: which endpoints each tenant's event types go to, held in memory so
//! fan-out makes no PostgreSQL query per event.
//!
//! **Freshness.** `shared::config_watch` reloads a tenant's routes on each change notification
//! and everything after a reconnect and every `fanout.cache_reload_interval`.
//!
//! Snapshots are immutable and swapped whole (`Arc`), so a batch sees one consistent view.
//! Loads overlap (a full reload, a notification's tenant reload, a batch's check of a tenant it
//! does not know yet); each is applied through `shared::versioned`, so an older load never
//! overwrites a newer one and a deleted tenant cannot be brought back by a slow full reload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use shared::domain::{EventType, EventTypePattern};
use shared::ids::{EndpointId, TenantId};
use shared::versioned::{Scope, Stamps, Versioned};
use tokio_postgres::GenericClient;

/// One subscription of an endpoint, with the endpoint's state.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: EventTypePattern,
    pub endpoint: EndpointId,
    pub enabled: bool,
}

/// Each existing tenant's routes (an entry per tenant, empty when it has none).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    tenants: Versioned<TenantId, Vec<Route>>,
}

impl Snapshot {
    pub fn has_tenant(&self, tenant: &TenantId) -> bool {
        self.tenants.get(tenant).is_some()
    }

    /// The endpoints `event_type` goes to, each once, with whether it is enabled.
    pub fn targets(&self, tenant: &TenantId, event_type: &EventType) -> Vec<(EndpointId, bool)> {
        let mut out: Vec<(EndpointId, bool)> = Vec::new();
        for route in self.tenants.get(tenant).into_iter().flatten() {
            if route.pattern.matches(event_type) && !out.iter().any(|(e, _)| *e == route.endpoint) {
                out.push((route.endpoint, route.enabled));
            }
        }
        out
    }
}

#[derive(Clone, Default)]
pub struct Cache {
    current: Arc<RwLock<Arc<Snapshot>>>,
    stamps: Arc<Stamps>,
}

const ROUTES_SQL: &str = "SELECT s.tenant_id, s.event_type_pattern, s.endpoint_id, e.enabled
     FROM subscriptions s JOIN endpoints e ON e.id = s.endpoint_id";

fn routes_from(rows: &[tokio_postgres::Row]) -> Vec<(TenantId, Route)> {
    rows.iter()
        .filter_map(|r| {
            let pattern: String = r.get(1);
            // A pattern the API would not have accepted is skipped, not fatal.
            let pattern = pattern.parse().ok()?;
            Some((
                r.get(0),
                Route {
                    pattern,
                    endpoint: r.get(2),
                    enabled: r.get(3),
                },
            ))
        })
        .collect()
}

impl Cache {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Applies a load to the current snapshot, under the write lock (no lost updates).
    fn apply(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Snapshot::clone(&guard);
        f(&mut next);
        *guard = Arc::new(next);
    }

    pub async fn reload_all(
        &self,
        client: &impl GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        let stamp = self.stamps.take();
        let tenants = client.query("SELECT id FROM tenants", &[]).await?;
        let rows = client.query(ROUTES_SQL, &[]).await?;
        let mut routes: HashMap<TenantId, Vec<Route>> =
            tenants.iter().map(|r| (r.get(0), Vec::new())).collect();
        for (tenant, route) in routes_from(&rows) {
            // A route of a tenant created after the first query waits for its own reload.
            if let Some(list) = routes.get_mut(&tenant) {
                list.push(route);
            }
        }
        tracing::debug!(tenants = routes.len(), "subscription cache reloaded");
        self.apply(|s| {
            s.tenants.apply(
                stamp,
                Scope::All,
                routes.into_iter().map(|(t, r)| (t, t, r)),
            );
        });
        Ok(())
    }

    pub async fn reload_tenant(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
    ) -> Result<(), tokio_postgres::Error> {
        let stamp = self.stamps.take();
        let exists = client
            .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[tenant])
            .await?
            .is_some();
        let rows = client
            .query(&format!("{ROUTES_SQL} WHERE s.tenant_id = $1"), &[tenant])
            .await?;
        let routes: Vec<Route> = routes_from(&rows).into_iter().map(|(_, r)| r).collect();
        let fresh = exists.then_some((*tenant, *tenant, routes));
        self.apply(|s| {
            s.tenants.apply(stamp, Scope::One(*tenant), fresh);
        });
        Ok(())
    }
}

impl shared::config_watch::Reload for Cache {
    async fn reload_all(
        &self,
        client: &deadpool_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        let client: &tokio_postgres::Client = client;
        Cache::reload_all(self, client).await
    }

    async fn reload_tenant(
        &self,
        client: &deadpool_postgres::Client,
        tenant: &TenantId,
    ) -> Result<(), tokio_postgres::Error> {
        let client: &tokio_postgres::Client = client;
        Cache::reload_tenant(self, client, tenant).await
    }
}
