//! What every service does the same way: connect to PostgreSQL and apply migrations, create the
//! producer, ensure topics (when configured), serve the ops endpoints, and the process `main`.
//!
//! A service crate's `run(config, shutdown)` builds on [`prepare`] and [`serve`]; its `main.rs`
//! is one call to [`main`]. Tests call `start` in-process with port 0 and their own topic prefix
//! and schema.
//!
//! **Supervision.** A service is its HTTP server plus named tasks (consumer loops, writers,
//! cache maintenance). [`Running::wait`] watches all of them at once: a task that ends before
//! shutdown was asked for, or panics, is a dead service — the others are told to stop (they
//! get [`SHUTDOWN_GRACE`] to hand back their work) and `wait` returns the error, so `main`
//! exits non-zero and Kubernetes restarts the pod. A process whose work loop died never keeps
//! answering `/healthz`.

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
use crate::liveness::Liveness;
use crate::ops::{Health, Readiness};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the other tasks get to finish after one of them died.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
    /// A task stopped before shutdown was asked for.
    #[error("task {task} ended unexpectedly")]
    TaskEnded { task: String },
    #[error("task {task} panicked: {message}")]
    TaskPanicked { task: String, message: String },
}

/// The connections and catalog a service starts with.
pub struct Foundation {
    pub pool: Pool,
    pub producer: FutureProducer,
    pub catalog: TopicCatalog,
    /// Where the service's loops report that they run (`/healthz`).
    pub liveness: Liveness,
    pub stall_timeout: Duration,
}

impl Foundation {
    pub fn readiness(&self) -> Readiness {
        Readiness {
            pool: self.pool.clone(),
            producer: self.producer.clone(),
        }
    }

    pub fn health(&self) -> Health {
        Health {
            liveness: self.liveness.clone(),
            stall_timeout: self.stall_timeout,
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
        liveness: Liveness::default(),
        stall_timeout: config.liveness.stall_timeout,
    })
}

/// A service started in the background.
pub struct Running {
    /// Where its HTTP listener (API or ops) is bound: tests start on port 0 and read it here.
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    /// The HTTP server and the workers (consumer loops, writers, cache maintenance).
    tasks: Vec<(String, JoinHandle<Result<(), ServiceError>>)>,
}

type TaskOutcome = (
    String,
    Result<Result<(), ServiceError>, tokio::task::JoinError>,
);

impl Running {
    /// Adds a named worker task to supervise.
    pub fn with_task(mut self, name: impl Into<String>, task: JoinHandle<()>) -> Self {
        let handle = tokio::spawn(async move {
            match task.await {
                Ok(()) => Ok(()),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(()),
            }
        });
        self.tasks.push((name.into(), handle));
        self
    }

    pub fn with_tasks(self, tasks: Vec<(String, JoinHandle<()>)>) -> Self {
        tasks
            .into_iter()
            .fold(self, |running, (name, task)| running.with_task(name, task))
    }

    /// Waits until the service has shut down: after its shutdown token was cancelled, the
    /// workers have finished their work and committed and the HTTP server has stopped. A task
    /// that ends early or panics stops the service (module docs) and is the error returned.
    pub async fn wait(self) -> Result<(), ServiceError> {
        use futures::StreamExt as _;
        let shutdown = self.shutdown.clone();
        let mut pending: futures::stream::FuturesUnordered<_> = self
            .tasks
            .into_iter()
            .map(|(name, handle)| async move { (name, handle.await) })
            .collect();
        let mut failure: Option<ServiceError> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::error!(left = pending.len(), "tasks did not stop in time");
                        break;
                    }
                },
                None => pending.next().await,
            };
            let Some(outcome) = next else { break };
            if let Some(e) = judge(outcome, shutdown.is_cancelled()) {
                tracing::error!(error = %crate::error_chain(&e), "service task failed; stopping");
                failure.get_or_insert(e);
            }
            if failure.is_some() && deadline.is_none() {
                shutdown.cancel();
                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// What a finished task means: nothing when it ended because shutdown was asked for.
fn judge((name, outcome): TaskOutcome, shutting_down: bool) -> Option<ServiceError> {
    match outcome {
        Ok(Ok(())) if shutting_down => None,
        Ok(Ok(())) => Some(ServiceError::TaskEnded { task: name }),
        Ok(Err(e)) => Some(e),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            Some(ServiceError::TaskPanicked {
                task: name,
                message,
            })
        }
        Err(_) => (!shutting_down).then_some(ServiceError::TaskEnded { task: name }),
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
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .map_err(ServiceError::Serve)
    });
    Ok(Running {
        local_addr,
        shutdown,
        tasks: vec![("http-server".to_owned(), handle)],
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
    let router = crate::ops::router(
        std::sync::Arc::new(registry),
        foundation.readiness(),
        foundation.health(),
    );
    let running = serve(listener, router, shutdown)?;
    tracing::info!(service, addr = %running.local_addr, "ops endpoints listening");
    Ok((foundation, running))
}
