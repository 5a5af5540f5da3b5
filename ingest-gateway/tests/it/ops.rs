//! The gateway starts against the real PostgreSQL and broker, serves its ops endpoints beside
//! the API, and stops when its shutdown token is cancelled.

use crate::common::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_ops_endpoints_and_shuts_down() -> anyhow::Result<()> {
    let app = App::spawn().await?;
    shared::testing::check_ops_endpoints(app.addr).await?;
    app.stop().await
}
