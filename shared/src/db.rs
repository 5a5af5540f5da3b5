//! PostgreSQL: the connection pool, TLS, and the migrations.
//!
//! TLS follows the URL's `sslmode`: `require`, `verify-ca` and `verify-full` connect over
//! rustls and verify the server's certificate and host name against the system's roots plus
//! `database.ca_file` (rustls has no unverified mode, so all three mean `verify-full`);
//! `disable`, `prefer` and no `sslmode` connect in the clear. `prefer` is not opportunistic TLS
//! here: a connection that may silently fall back protects nothing, and a server with a
//! self-signed certificate (Debian's default snakeoil) would fail verification.
//!
//! Migrations are the SQL files under `schemas/sql/`, compiled into the binary and applied in
//! version order at start. Several replicas may start at once, so the runner takes a session
//! advisory lock (one per schema) before reading the version table: the first replica applies,
//! the others wait and then find nothing to do. Each migration runs in its own transaction
//! together with its row in `schema_migrations`, so a crash leaves it either applied and
//! recorded or neither. A recorded migration whose file has changed since is an error: editing
//! an applied migration silently diverges environments; write a new one instead.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

use crate::config::DatabaseConfig;

/// How to connect: in the clear, or over verified TLS.
#[derive(Clone)]
pub enum Tls {
    Clear,
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

/// Parses `database.url` (libpq's `verify-ca`/`verify-full`, which tokio-postgres does not
/// know, read as `require`) and picks the TLS its `sslmode` asks for.
pub fn connect_config(config: &DatabaseConfig) -> Result<(tokio_postgres::Config, Tls), DbError> {
    let url = config
        .url
        .expose_secret()
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|_| DbError::Config("database.url is not a valid PostgreSQL URL".into()))?;
    if pg.get_ssl_mode() != SslMode::Require {
        pg.ssl_mode(SslMode::Disable);
        return Ok((pg, Tls::Clear));
    }
    crate::tls::install_provider();
    let mut extra = Vec::new();
    if let Some(path) = &config.ca_file {
        use rustls::pki_types::pem::PemObject as _;
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| DbError::Config(format!("reading database.ca_file {shown}: {e}")))?;
        extra = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DbError::Config(format!("database.ca_file {shown}: {e}")))?;
        if extra.is_empty() {
            return Err(DbError::Config(format!(
                "database.ca_file {shown} holds no PEM certificate"
            )));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| DbError::Config(format!("PostgreSQL TLS roots: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(format!("PostgreSQL TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    Ok((
        pg,
        Tls::Verified(tokio_postgres_rustls::MakeRustlsConnect::new(tls)),
    ))
}

/// One connection outside the pool (LISTEN, harborctl), with the pool's TLS rules.
pub async fn connect(
    pg: &tokio_postgres::Config,
    tls: &Tls,
) -> Result<
    (
        tokio_postgres::Client,
        std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send>,
        >,
    ),
    tokio_postgres::Error,
> {
    match tls {
        Tls::Clear => {
            let (client, connection) = pg.connect(NoTls).await?;
            Ok((client, Box::pin(connection)))
        }
        Tls::Verified(make) => {
            let (client, connection) = pg.connect(make.clone()).await?;
            Ok((client, Box::pin(connection)))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database connection pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database query")]
    Query(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) was changed after it was applied; add a new migration")]
    MigrationChanged { version: i32, name: &'static str },
    #[error(
        "the database has migration {version}, which this build does not know; run a newer build"
    )]
    UnknownMigration { version: i32 },
}

/// One SQL file from `schemas/sql/`.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. `tests/it/migrations.rs` checks that this lists each file in
/// `schemas/sql/` exactly once.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial.sql",
        sql: include_str!("../../schemas/sql/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_config_notify.sql",
        sql: include_str!("../../schemas/sql/0002_config_notify.sql"),
    },
    Migration {
        version: 3,
        name: "0003_dead_letters_and_replays.sql",
        sql: include_str!("../../schemas/sql/0003_dead_letters_and_replays.sql"),
    },
    Migration {
        version: 4,
        name: "0004_payload_text_and_undeliverable.sql",
        sql: include_str!("../../schemas/sql/0004_payload_text_and_undeliverable.sql"),
    },
    Migration {
        version: 5,
        name: "0005_event_ids_per_tenant.sql",
        sql: include_str!("../../schemas/sql/0005_event_ids_per_tenant.sql"),
    },
    Migration {
        version: 6,
        name: "0006_signature_v1a.sql",
        sql: include_str!("../../schemas/sql/0006_signature_v1a.sql"),
    },
];

/// A pool of connections whose `search_path` is the configured schema (if any).
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    let (mut pg, tls) = connect_config(config)?;
    pg.connect_timeout(config.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("harborhook");
    }
    let mut options = format!(
        "-c statement_timeout={}",
        config.statement_timeout.as_millis()
    );
    if let Some(schema) = &config.schema {
        // The schema name was validated as a plain identifier at config load.
        options.push_str(&format!(" -c search_path={schema}"));
    }
    pg.options(options);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Tls::Clear => Manager::from_config(pg, NoTls, manager_config),
        Tls::Verified(make) => Manager::from_config(pg, make, manager_config),
    };
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    pub applied: Vec<i32>,
    pub already: Vec<i32>,
}

/// Applies every migration the database lacks (see the module docs for the locking).
pub async fn migrate(pool: &Pool, schema: Option<&str>) -> Result<MigrationReport, DbError> {
    let mut client = pool.get().await?;
    // A migration may rewrite a large table; the pool's statement timeout is for the services'
    // own queries. Reset below, before the connection goes back to the pool.
    client.batch_execute("SET statement_timeout = 0").await?;
    let lock_name = format!("harborhook.migrations:{}", schema.unwrap_or("public"));
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_name])
        .await?;
    let result = migrate_locked(&mut client, schema).await;
    // On an error the connection may be unusable; the lock dies with the session either way.
    let unlock = client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_name])
        .await;
    let reset = client.batch_execute("RESET statement_timeout").await;
    let report = result?;
    unlock?;
    reset?;
    Ok(report)
}

async fn migrate_locked(
    client: &mut deadpool_postgres::Client,
    schema: Option<&str>,
) -> Result<MigrationReport, DbError> {
    if let Some(schema) = schema {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await?;
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let rows = client
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?;
    let mut report = MigrationReport {
        applied: Vec::new(),
        already: Vec::new(),
    };
    for row in &rows {
        let version: i32 = row.get(0);
        if !MIGRATIONS.iter().any(|m| m.version == version) {
            return Err(DbError::UnknownMigration { version });
        }
    }
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match rows.iter().find(|r| r.get::<_, i32>(0) == m.version) {
            Some(row) if row.get::<_, String>(1) == sum => report.already.push(m.version),
            Some(_) => {
                return Err(DbError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                });
            }
            None => {
                let tx = client.transaction().await?;
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &sum],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version = m.version, name = m.name, "applied migration");
                report.applied.push(m.version);
            }
        }
    }
    Ok(report)
}

/// Whether a database error is about the values of this statement (data exceptions, constraint
/// violations, a value over a limit: SQLSTATE classes 22, 23 and 54), so the same statement will
/// fail however often it is retried. Everything else — connections, timeouts, serialization
/// failures, and also schema errors such as a missing table — is treated as transient: retried,
/// never used as a reason to quarantine data, since it says nothing about one row.
pub fn permanent(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let code = db.code().code();
        code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
    })
}

/// Whether an error says the database is away or overloaded rather than anything about the
/// statement: the connection is gone or never came (class 08, an I/O error), the server is
/// shutting down or starting (57P01–57P03), short of resources (class 53), or the statement
/// lost a race it may win next time (statement timeout 57014, serialization failure 40001,
/// deadlock 40P01, lock not available 55P03). Callers answer 503 or wait, never quarantine.
pub fn unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01" | "55P03"
                )
        }
        // No server answer at all: the connection failed or broke (I/O, TLS, timeout).
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// As [`unavailable`], for a pool that could not hand out a connection: a timeout waiting for
/// one or a failed connect is the database's; a closed pool or a misconfiguration is not.
pub fn pool_unavailable(e: &deadpool_postgres::PoolError) -> bool {
    use deadpool_postgres::PoolError as P;
    match e {
        P::Timeout(_) => true,
        P::Backend(e) => unavailable(e) || e.as_db_error().is_none(),
        _ => false,
    }
}

/// `SELECT 1` through the pool: the database half of `/readyz`.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    pool.get().await?.query_one("SELECT 1", &[]).await?;
    Ok(())
}
