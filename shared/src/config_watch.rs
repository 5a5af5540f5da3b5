//! Keeps an in-memory copy of tenant configuration fresh: the fanout-processor's subscription
//! cache and the delivery-consumer's endpoint cache both use it.
//!
//! **Freshness.** Triggers on `tenants`, `endpoints` and `subscriptions` (migration 0002)
//! `NOTIFY harborhook_config.<schema>` with the tenant id on every change, whoever makes it
//! (secret rotation touches its endpoint row, so it notifies too). A listener holds its own
//! connection with `LISTEN` and reloads that tenant on each notification, so a change through
//! the API reaches the services in milliseconds. A notification can be lost when the listening
//! connection drops; so after every (re)connect the whole cache is reloaded before
//! notifications are trusted again, and a full reload also runs every `reload_interval` as a
//! backstop.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::ids::TenantId;

/// A cache that can load everything, or one tenant.
pub trait Reload: Send + Sync + 'static {
    fn reload_all(
        &self,
        client: &deadpool_postgres::Client,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;
    fn reload_tenant(
        &self,
        client: &deadpool_postgres::Client,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("loading configuration")]
    Query(#[from] tokio_postgres::Error),
    #[error("loading configuration")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("the LISTEN connection closed")]
    ListenerClosed,
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
pub async fn maintain<C: Reload>(
    cache: C,
    pool: Pool,
    config: Config,
    reload_interval: Duration,
    ready: tokio::sync::watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let watch = Watch {
            cache: &cache,
            pool: &pool,
            config: &config,
            reload_interval,
        };
        match watch.listen_once(&ready, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "configuration listener lost; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

struct Watch<'a, C> {
    cache: &'a C,
    pool: &'a Pool,
    config: &'a Config,
    reload_interval: Duration,
}

impl<C: Reload> Watch<'_, C> {
    async fn listen_once(
        &self,
        ready: &tokio::sync::watch::Sender<bool>,
        shutdown: &CancellationToken,
    ) -> Result<(), WatchError> {
        let (client, mut connection) =
            tokio_postgres::connect(self.config.database.url.expose_secret(), NoTls).await?;
        // Notifications arrive through the connection object; forward them, bounded.
        let (tx, mut notifications) = mpsc::channel::<String>(1024);
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        // A full channel means a burst of changes: dropping is safe only
                        // because the overflow marker below asks for a full reload.
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
            .batch_execute(&format!("LISTEN \"{}\"", channel(self.config)))
            .await?;
        // Only after LISTEN is active: changes from now on are notified, earlier ones loaded.
        self.cache.reload_all(&self.pool.get().await?).await?;
        let _ = ready.send(true);
        let mut full = tokio::time::interval(self.reload_interval);
        full.tick().await;
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = full.tick() => self.cache.reload_all(&self.pool.get().await?).await?,
                payload = notifications.recv() => match payload {
                    None => break Err(WatchError::ListenerClosed),
                    Some(p) => match p.parse::<TenantId>() {
                        Ok(tenant) => {
                            self.cache.reload_tenant(&self.pool.get().await?, &tenant).await?;
                        }
                        Err(_) => self.cache.reload_all(&self.pool.get().await?).await?,
                    },
                },
            }
        };
        driver.abort();
        result
    }
}
