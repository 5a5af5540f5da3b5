//! The subscription cache: which endpoints each tenant's event types go to, held in memory so
//! fan-out makes no PostgreSQL query per event.
//!
//! **Freshness.** Triggers on `tenants`, `endpoints` and `subscriptions` (migration 0002)
//! `NOTIFY harborhook_config.<schema>` with the tenant id on every change, whoever makes it.
//! A listener task holds its own connection with `LISTEN` and reloads that tenant's routes on
//! each notification, so a change through the API reaches fan-out in milliseconds. A
//! notification can be lost when the listening connection drops; so after every (re)connect
//! the whole cache is reloaded before notifications are trusted again, and a full reload also
//! runs every `fanout.cache_reload_interval` as a backstop.
//!
//! Snapshots are immutable and swapped whole (`Arc`), so a batch sees one consistent view.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;
use shared::Config;
use shared::domain::{EventType, EventTypePattern};
use shared::ids::{EndpointId, TenantId};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls};
use tokio_util::sync::CancellationToken;

/// One subscription of an endpoint, with the endpoint's state.
#[derive(Debug, Clone)]
pub struct Route {
    pub pattern: EventTypePattern,
    pub endpoint: EndpointId,
    pub enabled: bool,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    tenants: HashSet<TenantId>,
    routes: HashMap<TenantId, Vec<Route>>,
}

impl Snapshot {
    pub fn has_tenant(&self, tenant: &TenantId) -> bool {
        self.tenants.contains(tenant)
    }

    /// The endpoints `event_type` goes to, each once, with whether it is enabled.
    pub fn targets(&self, tenant: &TenantId, event_type: &EventType) -> Vec<(EndpointId, bool)> {
        let mut out: Vec<(EndpointId, bool)> = Vec::new();
        for route in self.routes.get(tenant).into_iter().flatten() {
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
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("loading subscriptions")]
    Query(#[from] tokio_postgres::Error),
    #[error("loading subscriptions")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("the LISTEN connection closed")]
    ListenerClosed,
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

    fn swap(&self, next: Snapshot) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
    }

    pub async fn reload_all(
        &self,
        client: &impl GenericClient,
    ) -> Result<(), tokio_postgres::Error> {
        let tenants = client.query("SELECT id FROM tenants", &[]).await?;
        let rows = client.query(ROUTES_SQL, &[]).await?;
        let mut next = Snapshot {
            tenants: tenants.iter().map(|r| r.get(0)).collect(),
            routes: HashMap::new(),
        };
        for (tenant, route) in routes_from(&rows) {
            next.routes.entry(tenant).or_default().push(route);
        }
        tracing::debug!(tenants = next.tenants.len(), "subscription cache reloaded");
        self.swap(next);
        Ok(())
    }

    pub async fn reload_tenant(
        &self,
        client: &impl GenericClient,
        tenant: &TenantId,
    ) -> Result<(), tokio_postgres::Error> {
        let exists = client
            .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[tenant])
            .await?
            .is_some();
        let rows = client
            .query(&format!("{ROUTES_SQL} WHERE s.tenant_id = $1"), &[tenant])
            .await?;
        let old = self.snapshot();
        let mut next = Snapshot {
            tenants: old.tenants.clone(),
            routes: old.routes.clone(),
        };
        if exists {
            next.tenants.insert(*tenant);
        } else {
            next.tenants.remove(tenant);
        }
        let routes: Vec<Route> = routes_from(&rows).into_iter().map(|(_, r)| r).collect();
        if routes.is_empty() {
            next.routes.remove(tenant);
        } else {
            next.routes.insert(*tenant, routes);
        }
        self.swap(next);
        Ok(())
    }
}

/// The notification channel of this installation's schema.
pub fn channel(config: &Config) -> String {
    format!(
        "harborhook_config.{}",
        config.database.schema.as_deref().unwrap_or("public")
    )
}

/// Keeps `cache` fresh until `shutdown` (see the module docs). Signals `ready` after the first
/// full load.
pub async fn maintain(
    cache: Cache,
    pool: Pool,
    config: Config,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match listen_once(&cache, &pool, &config, &ready, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %shared::error_chain(&e), "subscription listener lost; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn listen_once(
    cache: &Cache,
    pool: &Pool,
    config: &Config,
    ready: &tokio::sync::watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), CacheError> {
    let (client, mut connection) =
        tokio_postgres::connect(config.database.url.expose_secret(), NoTls).await?;
    // Notifications arrive through the connection object; forward them, bounded.
    let (tx, mut notifications) = mpsc::channel::<String>(1024);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    // A full channel means a burst of changes: dropping is safe only because
                    // the overflow is followed by a full reload (below).
                    if tx.try_send(n.payload().to_owned()).is_err() {
                        let _ = tx.try_send(String::new());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "listener connection error");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel(config)))
        .await?;
    // Only after LISTEN is active: changes from now on are notified, earlier ones are loaded.
    cache.reload_all(&**pool.get().await?).await?;
    let _ = ready.send(true);
    let mut full = tokio::time::interval(config.fanout.cache_reload_interval);
    full.tick().await;
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = full.tick() => cache.reload_all(&**pool.get().await?).await?,
            payload = notifications.recv() => match payload {
                None => break Err(CacheError::ListenerClosed),
                Some(p) => match p.parse::<TenantId>() {
                    Ok(tenant) => cache.reload_tenant(&**pool.get().await?, &tenant).await?,
                    Err(_) => cache.reload_all(&**pool.get().await?).await?,
                },
            },
        }
    };
    driver.abort();
    result
}
