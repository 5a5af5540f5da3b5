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
//! backstop. A burst of changes larger than the notification buffer sets an overflow flag
//! (never dropped, unlike a marker in the full buffer would be) that asks for a full reload.
//! Loads may overlap (a full reload and a tenant's, or a cache miss): the caches apply them
//! through `shared::versioned`, so an older load never overwrites a newer one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt as _;
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
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
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
    heartbeat: crate::liveness::Heartbeat,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        heartbeat.ran();
        let watch = Watch {
            cache: &cache,
            pool: &pool,
            config: &config,
            reload_interval,
            heartbeat: &heartbeat,
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

/// Notifications held for the reloading loop; a burst beyond this asks for a full reload.
const BUFFER: usize = 1024;

/// Hands notifications to the reloading loop without ever blocking the connection driver.
struct Forward {
    tx: mpsc::Sender<String>,
    overflow: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Forward {
    fn new(capacity: usize) -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity);
        let forward = Self {
            tx,
            overflow: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        (forward, rx)
    }

    /// A full channel means a burst of changes: dropping the notification is safe because the
    /// flag asks for a full reload, and a flag — unlike a marker sent into the full channel —
    /// cannot itself be dropped; `Notify` keeps the wake-up until the loop waits for it.
    fn offer(&self, payload: &str) {
        if self.tx.try_send(payload.to_owned()).is_err() {
            self.overflow.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }
}

/// How often an idle listener reports that it runs (liveness).
const HEARTBEAT: Duration = Duration::from_secs(10);

struct Watch<'a, C> {
    cache: &'a C,
    pool: &'a Pool,
    config: &'a Config,
    reload_interval: Duration,
    heartbeat: &'a crate::liveness::Heartbeat,
}

/// Drives the LISTEN connection, handing its notifications to `forward`.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    forward: Forward,
) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => forward.offer(n.payload()),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "listener connection error");
                    break;
                }
            }
        }
    })
}

impl<C: Reload> Watch<'_, C> {
    async fn listen_once(
        &self,
        ready: &tokio::sync::watch::Sender<bool>,
        shutdown: &CancellationToken,
    ) -> Result<(), WatchError> {
        let (mut pg, tls) = crate::db::connect_config(&self.config.database)?;
        // A connect that never completes would hang this loop (liveness), not fail it.
        pg.connect_timeout(self.config.database.connect_timeout);
        // Notifications arrive through the connection object; forward them, bounded.
        let (forward, mut notifications) = Forward::new(BUFFER);
        let (overflow, overflowed) = (forward.overflow.clone(), forward.wake.clone());
        let (client, driver) = match tls {
            crate::db::Tls::Clear => {
                let (client, connection) = pg.connect(NoTls).await?;
                (client, drive(connection, forward))
            }
            crate::db::Tls::Verified(make) => {
                let (client, connection) = pg.connect(make).await?;
                (client, drive(connection, forward))
            }
        };
        client
            .batch_execute(&format!("LISTEN \"{}\"", channel(self.config)))
            .await?;
        // Only after LISTEN is active: changes from now on are notified, earlier ones loaded.
        self.cache.reload_all(&self.pool.get().await?).await?;
        let _ = ready.send(true);
        self.heartbeat.progressed();
        let mut full = tokio::time::interval(self.reload_interval);
        full.tick().await;
        let mut beat = tokio::time::interval(HEARTBEAT);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = beat.tick() => self.heartbeat.ran(),
                _ = full.tick() => self.cache.reload_all(&self.pool.get().await?).await?,
                () = overflowed.notified() => {
                    if overflow.swap(false, Ordering::SeqCst) {
                        tracing::info!("notification burst overflowed; reloading everything");
                        self.cache.reload_all(&self.pool.get().await?).await?;
                    }
                }
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
            self.heartbeat.progressed();
        };
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overflow_is_never_lost() {
        let (forward, mut rx) = Forward::new(2);
        for tenant in ["a", "b", "c", "d"] {
            forward.offer(tenant);
        }
        // Two were kept, two dropped: the flag and a stored wake-up say so.
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        assert_eq!(rx.recv().await.as_deref(), Some("b"));
        tokio::time::timeout(Duration::from_secs(1), forward.wake.notified())
            .await
            .expect("the wake-up was kept for the loop");
        assert!(forward.overflow.swap(false, Ordering::SeqCst));
        // With room again, nothing overflows.
        forward.offer("e");
        assert!(!forward.overflow.load(Ordering::SeqCst));
        assert_eq!(rx.recv().await.as_deref(), Some("e"));
    }
}
