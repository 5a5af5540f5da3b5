//! PostgreSQL over TLS: a PostgreSQL server of the test's own (initdb in a temporary directory,
//! `ssl = on` with a `localhost` certificate from a throwaway CA) and the pool the services use.
//! `sslmode=require` (and libpq's `verify-full`) connects over verified TLS with
//! `database.ca_file`, migrates and queries; without the CA the server's certificate is refused;
//! without `sslmode` the connection is in the clear.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use shared::config::DatabaseConfig;

/// The server's binaries: `pg_config --bindir`, else Debian's layout.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|d| d.join("initdb").exists())
        .expect("PostgreSQL server binaries (scripts/stack.sh up installs them)")
}

/// PostgreSQL refuses to run as root: as root, run as the `postgres` account.
fn as_server_user(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown_to_server_user(path: &Path) {
    // Only as root (as_server_user); the postgres account's ids from its own files.
    if let Ok(meta) = std::fs::metadata("/var/lib/postgresql") {
        use std::os::unix::fs::MetadataExt as _;
        let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
    }
}

async fn tls_server() -> anyhow::Result<Server> {
    let bin = bindir();
    let dir = std::env::temp_dir().join(format!("hh-pgtls-{}", uuid::Uuid::now_v7().simple()));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    chown_to_server_user(&dir);
    let out = as_server_user(&bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = shared::testing::tls::localhost_cert()?;
    for (name, text, mode) in [
        ("server.crt", &cert.cert_pem, 0o644),
        ("server.key", &cert.key_pem, 0o600),
    ] {
        let path = data.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        chown_to_server_user(&path);
    }
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &cert.ca_pem)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let child = as_server_user(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "ssl=on", "-c", "ssl_cert_file=server.crt"])
        .args(["-c", "ssl_key_file=server.key"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server {
        child,
        dir,
        port,
        ca,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    while tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the TLS PostgreSQL did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

fn database(url: String, ca_file: Option<PathBuf>) -> DatabaseConfig {
    DatabaseConfig {
        url: SecretString::from(url),
        ca_file,
        schema: Some("hh_tls".into()),
        pool_size: 2,
        connect_timeout: Duration::from_secs(5),
        ..DatabaseConfig::default()
    }
}

/// Whether this pool's connection is encrypted, as the server sees it.
async fn encrypted(config: &DatabaseConfig) -> anyhow::Result<bool> {
    let pool = shared::db::pool(config)?;
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_verified_tls() -> anyhow::Result<()> {
    let server = tls_server().await?;
    let base = format!("postgres://postgres@localhost:{}/postgres", server.port);

    let tls = database(format!("{base}?sslmode=require"), Some(server.ca.clone()));
    assert!(encrypted(&tls).await?, "sslmode=require is TLS");
    // The services' own work over it: the migrations, then a query of their tables.
    let pool = shared::db::pool(&tls)?;
    pool.get()
        .await?
        .batch_execute("CREATE SCHEMA IF NOT EXISTS hh_tls")
        .await?;
    shared::db::migrate(&pool, Some("hh_tls")).await?;
    let tenants: i64 = pool
        .get()
        .await?
        .query_one("SELECT count(*) FROM tenants", &[])
        .await?
        .get(0);
    assert_eq!(tenants, 0);

    // libpq's spelling works too, and means the same (rustls always verifies).
    let full = database(
        format!("{base}?sslmode=verify-full"),
        Some(server.ca.clone()),
    );
    assert!(encrypted(&full).await?, "sslmode=verify-full is TLS");

    // Without the CA the certificate is not trusted: no connection, not an unverified one.
    let untrusted = database(format!("{base}?sslmode=require"), None);
    let err = encrypted(&untrusted)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(!err.is_empty(), "an unknown CA must be refused");

    // The host name is checked: the certificate is for localhost, not 127.0.0.2's name.
    let wrong_name = database(
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            server.port
        ),
        Some(server.ca.clone()),
    );
    assert!(
        encrypted(&wrong_name).await.is_err(),
        "a certificate for another name is refused"
    );

    // No sslmode (or prefer): in the clear, as before.
    let clear = database(base.clone(), None);
    assert!(!encrypted(&clear).await?, "no sslmode is plain");
    let prefer = database(format!("{base}?sslmode=prefer"), None);
    assert!(
        !encrypted(&prefer).await?,
        "prefer is plain, never unverified TLS"
    );
    drop(server);
    Ok(())
}

#[test]
fn a_ca_file_without_a_certificate_is_refused() {
    let dir = std::env::temp_dir().join(format!("hh-pgca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let config = database(
        "postgres://postgres@localhost:5432/postgres?sslmode=require".into(),
        Some(junk),
    );
    let err = shared::db::pool(&config).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("holds no PEM certificate")),
        "{err:?}"
    );
}
