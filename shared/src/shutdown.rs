//! Graceful shutdown: SIGTERM (Kubernetes) and SIGINT (Ctrl-C) cancel one token that every task
//! of a service watches. On cancellation a service stops fetching, finishes or hands back its
//! in-flight work, commits its offsets and returns from `run`.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers a service would die uncleanly on SIGTERM; fall back to Ctrl-C.
        _ => {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for shutdown signals");
                std::future::pending::<()>().await;
            }
        }
    }
}
