//! Migrations against the real PostgreSQL: applied once, a second run changes nothing, several
//! runners at once apply each migration exactly once, and the schema has what the API needs.

use std::path::PathBuf;

use shared::db::{self, MIGRATIONS};
use shared::testing::TestEnv;
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_once_then_is_a_no_op() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let pool = db::pool(&env.config.database)?;
    let schema = env.config.database.schema.as_deref();

    let first = db::migrate(&pool, schema).await?;
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all);
    assert!(first.already.is_empty());

    let second = db::migrate(&pool, schema).await?;
    assert!(
        second.applied.is_empty(),
        "second run applied {:?}",
        second.applied
    );
    assert_eq!(second.already, all);

    let client = env.db().await?;
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await?
        .get(0);
    assert_eq!(recorded, i64::try_from(MIGRATIONS.len())?);
    // The tables landed in the test's own schema, not in public.
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&env.schema],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in [
        "deliveries",
        "delivery_attempts",
        "endpoint_secrets",
        "endpoints",
        "events",
        "idempotency_keys",
        "schema_migrations",
        "subscriptions",
        "tenants",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "missing table {table}: {tables:?}"
        );
    }
    env.drop_schema().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runners_apply_each_migration_once() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let schema = env.config.database.schema.clone();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        // Separate pools, as separate replicas would have.
        let pool = db::pool(&env.config.database)?;
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            db::migrate(&pool, schema.as_deref()).await
        }));
    }
    let mut applied = Vec::new();
    for task in tasks {
        let report = task.await??;
        applied.extend(report.applied);
    }
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    applied.sort_unstable();
    assert_eq!(applied, all, "each migration applied by exactly one runner");
    env.drop_schema().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let pool = db::pool(&env.config.database)?;
    db::migrate(&pool, Some(&env.schema)).await?;
    let client = env.db().await?;
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await?;
    let err = db::migrate(&pool, Some(&env.schema))
        .await
        .expect_err("edited migration");
    assert!(
        err.to_string().contains("was changed after it was applied"),
        "{err}"
    );
    client
        .execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'x', 'y')",
            &[],
        )
        .await?;
    client
        .execute("DELETE FROM schema_migrations WHERE version = 1", &[])
        .await?;
    let err = db::migrate(&pool, Some(&env.schema))
        .await
        .expect_err("unknown migration");
    assert!(err.to_string().contains("migration 999"), "{err}");
    env.drop_schema().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_reject_bad_rows() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let pool = db::pool(&env.config.database)?;
    db::migrate(&pool, Some(&env.schema)).await?;
    let client = env.db().await?;
    let tenant = uuid_v7();
    client
        .execute(
            "INSERT INTO tenants (id, name) VALUES ($1, 'acme')",
            &[&tenant],
        )
        .await?;
    let endpoint = uuid_v7();
    client
        .execute(
            "INSERT INTO endpoints (id, tenant_id, url) VALUES ($1, $2, 'https://example.com/hook')",
            &[&endpoint, &tenant],
        )
        .await?;
    // A disabled endpoint must say why.
    let err = client
        .execute(
            "UPDATE endpoints SET enabled = false WHERE id = $1",
            &[&endpoint],
        )
        .await
        .expect_err("disabled without reason");
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err:?}");
    // One subscription per (endpoint, pattern).
    let insert_sub = "INSERT INTO subscriptions (id, tenant_id, endpoint_id, event_type_pattern) VALUES ($1, $2, $3, 'invoice.*')";
    client
        .execute(insert_sub, &[&uuid_v7(), &tenant, &endpoint])
        .await?;
    let err = client
        .execute(insert_sub, &[&uuid_v7(), &tenant, &endpoint])
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    // Only one current (non-expiring) secret per endpoint.
    let insert_secret =
        "INSERT INTO endpoint_secrets (endpoint_id, secret) VALUES ($1, 'whsec_abc')";
    client.execute(insert_secret, &[&endpoint]).await?;
    let err = client
        .execute(insert_secret, &[&endpoint])
        .await
        .expect_err("two current secrets");
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION), "{err:?}");
    // Deleting the tenant removes its endpoints and subscriptions.
    client
        .execute("DELETE FROM tenants WHERE id = $1", &[&tenant])
        .await?;
    let left: i64 = client
        .query_one("SELECT count(*) FROM subscriptions", &[])
        .await?
        .get(0);
    assert_eq!(left, 0);
    env.drop_schema().await
}

#[test]
fn every_sql_file_is_listed_once_in_order() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/sql");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("schemas/sql")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
    assert_eq!(files, listed);
    for (i, m) in MIGRATIONS.iter().enumerate() {
        assert_eq!(
            m.version,
            i32::try_from(i + 1).expect("small"),
            "versions are 1, 2, 3, ..."
        );
        assert!(
            m.name.starts_with(&format!("{:04}_", m.version)),
            "{} does not match its version",
            m.name
        );
    }
}

fn uuid_v7() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
