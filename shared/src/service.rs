//! What every service does the same way: connect to PostgreSQL and apply migrations, create the
//! producer, ensure topics (when configured), serve the ops endpoints, and the process `main`.
//!
//! A service crate's `run(config, shutdown)` builds on [`prepare`] and [`serve`]; its `main.rs`
//! is one call to [`main`]. Tests call `start` in-process with port 0 and their own topic prefix
//! and schema.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use deadpool_postgres::Pool;
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::db::{self, DbError};
use crate::kafka::{self, KafkaError, TopicCatalog};
use crate::ops::Readiness;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The build's version: `HARBORHOOK_BUILD_VERSION` at compile time (the image build sets it
/// from git), else the crate version.
pub const VERSION: &str = match option_env!("HARBORHOOK_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("kafka")]
    Kafka(#[from] KafkaError),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http server")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// A service's own start-up step failed (what, and why).
    #[error("{what}")]
    Start {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A service-specific dependency that failed at start (e.g. the gateway's token keys).
    #[error("start-up dependency")]
    Dependency(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The connections and catalog a service starts with.
pub struct Foundation {
    pub pool: Pool,
    pub producer: FutureProducer,
    pub catalog: TopicCatalog,
}

impl Foundation {
    pub fn readiness(&self) -> Readiness {
        Readiness {
            pool: self.pool.clone(),
            producer: self.producer.clone(),
        }
    }
}

/// Connects, migrates and (if `kafka.ensure_topics_on_start`) creates missing topics.
pub async fn prepare(service: &'static str, config: &Config) -> Result<Foundation, ServiceError> {
    let pool = db::pool(&config.database)?;
    let report = db::migrate(&pool, config.database.schema.as_deref()).await?;
    tracing::info!(service, applied = ?report.applied, "database ready");
    let catalog = TopicCatalog::new(config);
    if config.kafka.ensure_topics_on_start {
        let admin = kafka::admin(&config.kafka, service)?;
        let report = kafka::ensure_topics(&admin, &catalog, ADMIN_TIMEOUT).await?;
        for m in &report.mismatched {
            tracing::warn!(topic = %m.topic, expected = m.expected, actual = m.actual,
                "topic partition count differs from the configuration");
        }
        tracing::info!(service, created = ?report.created, "topics ready");
    }
    let producer = kafka::producer(&config.kafka, service)?;
    Ok(Foundation {
        pool,
        producer,
        catalog,
    })
}

/// A service started in the background.
pub struct Running {
    /// Where its HTTP listener (API or ops) is bound: tests start on port 0 and read it here.
    pub local_addr: SocketAddr,
    handle: JoinHandle<Result<(), ServiceError>>,
    /// The service's workers (consumer loops, cache maintenance), awaited on shutdown.
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn with_tasks(mut self, tasks: Vec<JoinHandle<()>>) -> Self {
        self.tasks.extend(tasks);
        self
    }

    /// Waits until the service has shut down (after its shutdown token was cancelled): the
    /// workers have finished their work and committed, and the HTTP server has stopped.
    pub async fn wait(self) -> Result<(), ServiceError> {
        for task in self.tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        match self.handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Listen { addr, source })
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish.
pub fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<Running, ServiceError> {
    let local_addr = listener.local_addr().map_err(ServiceError::Serve)?;
    let handle = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(ServiceError::Serve)
    });
    Ok(Running {
        local_addr,
        handle,
        tasks: Vec::new(),
    })
}

/// The whole `main` of a service binary: load and validate the configuration, install
/// telemetry, run until SIGTERM/SIGINT, and exit non-zero with the cause chain on failure.
pub fn main<F, Fut>(service: &'static str, run: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match crate::telemetry::init(service, &config.telemetry) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("{service}: {}", crate::error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(service, version = VERSION, "starting");
        match run(config, crate::shutdown::on_signals()).await {
            Ok(()) => {
                tracing::info!(service, "stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(service, error = %crate::error_chain(&e), "failed");
                eprintln!("{service}: {}", crate::error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

/// Starts a service whose only HTTP surface is the ops endpoints, on `listen`.
pub async fn start_ops(
    service: &'static str,
    listen: SocketAddr,
    config: &Config,
    registry: prometheus_client::registry::Registry,
    shutdown: CancellationToken,
) -> Result<(Foundation, Running), ServiceError> {
    let foundation = prepare(service, config).await?;
    let listener = bind(listen).await?;
    let router = crate::ops::router(std::sync::Arc::new(registry), foundation.readiness());
    let running = serve(listener, router, shutdown)?;
    tracing::info!(service, addr = %running.local_addr, "ops endpoints listening");
    Ok((foundation, running))
}
