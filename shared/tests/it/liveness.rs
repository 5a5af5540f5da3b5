//! A dead loop is a dead service: a supervised task that panics or ends early stops the others
//! and makes `Running::wait` fail (so `main` exits non-zero); `/healthz` fails for a loop that
//! hangs, and for a busy loop without progress while the broker and the database answer, but
//! not while they are away (that is an outage, not a reason to restart).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use shared::liveness::Liveness;
use shared::ops::{Health, Readiness};
use shared::service::ServiceError;
use shared::testing::TestEnv;
use tokio_util::sync::CancellationToken;

async fn running(shutdown: &CancellationToken) -> anyhow::Result<shared::service::Running> {
    let listener = shared::service::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    Ok(shared::service::serve(
        listener,
        axum::Router::new(),
        shutdown.clone(),
    )?)
}

/// A task that runs until shutdown and says whether it was told to stop.
fn patient(shutdown: &CancellationToken, stopped: &Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (shutdown, stopped) = (shutdown.clone(), stopped.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopped.store(true, Ordering::SeqCst);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_stops_the_service_with_an_error() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stopped = Arc::new(AtomicBool::new(false));
    let doomed = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        panic!("dispatcher bug");
    });
    let r = running(&shutdown)
        .await?
        .with_task("patient", patient(&shutdown, &stopped))
        .with_task("doomed", doomed);
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), r.wait()).await?;
    match result {
        Err(ServiceError::TaskPanicked { task, message }) => {
            assert_eq!(task, "doomed");
            assert!(message.contains("dispatcher bug"), "{message}");
        }
        other => panic!("expected a panicked task, got {other:?}"),
    }
    assert!(shutdown.is_cancelled(), "the others were told to stop");
    assert!(stopped.load(Ordering::SeqCst), "and did");
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_early_stops_the_service_with_an_error() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stopped = Arc::new(AtomicBool::new(false));
    let r = running(&shutdown)
        .await?
        .with_task("patient", patient(&shutdown, &stopped))
        .with_task("quitter", tokio::spawn(async {}));
    let result = tokio::time::timeout(Duration::from_secs(10), r.wait()).await?;
    assert!(
        matches!(&result, Err(ServiceError::TaskEnded { task }) if task == "quitter"),
        "{result:?}"
    );
    assert!(stopped.load(Ordering::SeqCst));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_shutdown_is_clean() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stopped = Arc::new(AtomicBool::new(false));
    let r = running(&shutdown)
        .await?
        .with_task("patient", patient(&shutdown, &stopped));
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), r.wait()).await?;
    assert!(result.is_ok(), "{result:?}");
    assert!(stopped.load(Ordering::SeqCst));
    Ok(())
}

async fn healthz(health: Health, readiness: Readiness) -> anyhow::Result<(u16, serde_json::Value)> {
    let router = shared::ops::router(
        Arc::new(prometheus_client::registry::Registry::default()),
        readiness,
        health,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let r = shared::tls::http_client()
        .build()?
        .get(format!("http://{addr}/healthz"))
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    server.abort();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_for_hung_and_stuck_loops_but_not_during_an_outage() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let up = Readiness {
        pool: shared::db::pool(&env.config.database)?,
        producer: shared::kafka::producer(&env.config.kafka, "liveness-test")?,
    };
    let mut away = env.config.clone();
    away.database.url = SecretString::from("postgres://postgres@127.0.0.1:1/none");
    away.database.connect_timeout = Duration::from_millis(300);
    away.kafka.bootstrap = "127.0.0.1:1".into();
    let down = Readiness {
        pool: shared::db::pool(&away.database)?,
        producer: shared::kafka::producer(&away.kafka, "liveness-test")?,
    };
    let stall = Duration::from_millis(300);

    // Loops that run and progress: healthy.
    let liveness = Liveness::default();
    let worker = liveness.register("worker");
    worker.busy(true);
    let health = Health {
        liveness: liveness.clone(),
        stall_timeout: stall,
    };
    assert_eq!(healthz(health.clone(), up.clone()).await?.0, 200);

    // Busy, running (retrying) but not progressing, the dependencies answering: stuck.
    tokio::time::sleep(Duration::from_millis(400)).await;
    worker.ran();
    let (code, body) = healthz(health.clone(), up.clone()).await?;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["loops"][0]["kind"], "stuck", "{body}");
    // The same while the database and the broker are away: an outage, not a restart.
    let (code, body) = healthz(health.clone(), down).await?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "waiting_on_dependency", "{body}");
    worker.progressed();
    assert_eq!(healthz(health.clone(), up.clone()).await?.0, 200);

    // A loop that does not even run any more: hung, whatever the dependencies.
    let _silent = liveness.register("silent");
    tokio::time::sleep(Duration::from_millis(400)).await;
    worker.progressed();
    let (code, body) = healthz(health, up).await?;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["loops"][0]["name"], "silent", "{body}");
    assert_eq!(body["loops"][0]["kind"], "hung", "{body}");
    Ok(())
}
