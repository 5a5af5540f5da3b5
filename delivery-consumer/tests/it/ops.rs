//! The service starts against the real PostgreSQL and broker, serves its ops endpoints, and
//! stops when its shutdown token is cancelled.

use shared::testing::{TestEnv, check_ops_endpoints};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_ops_endpoints_and_shuts_down() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let shutdown = CancellationToken::new();
    let running = delivery_consumer::start(env.config.clone(), shutdown.clone()).await?;
    check_ops_endpoints(running.local_addr).await?;
    shutdown.cancel();
    running.wait().await?;
    env.cleanup().await
}
