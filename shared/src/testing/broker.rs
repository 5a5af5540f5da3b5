//! A broker and databases of a test's own, for tests that stop and restart infrastructure
//! (broker outage, chaos) without disturbing the tests running beside them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nisshi_binary() -> String {
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let candidate = format!("{home}/bin/nisshi");
    if std::path::Path::new(&candidate).exists() {
        candidate
    } else {
        "nisshi".into()
    }
}

/// A nisshi broker on `port` keeping its data in PostgreSQL (`storage`, a [`TestDb`] URL), so
/// that, like Kafka, it comes back from a restart with its topics, records, offsets and
/// producer state.
pub fn start_broker(port: u16, storage: &str) -> anyhow::Result<Child> {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(nisshi_binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args([
            "--storage-engine",
            storage,
            "--group-initial-rebalance-delay",
            "0s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "nisshi did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Kills the test's broker when the test ends, pass or fail.
pub struct BrokerGuard(pub Child);

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PostgreSQL database of the test's own (`hh_test_broker_*`, which the test script drops
/// when a crashed run left one behind).
pub struct BrokerDb {
    pub name: String,
    /// The database's URL (`?sslmode=disable`, as nisshi needs).
    pub url: String,
}

/// The same database under another name, for the services of a chaos test.
pub type TestDb = BrokerDb;

impl BrokerDb {
    fn admin_url() -> String {
        let url = super::database_url();
        let base = url.split('?').next().unwrap_or(&url);
        let (server, _db) = base.rsplit_once('/').unwrap_or((base, ""));
        format!("{server}/postgres")
    }

    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("hh_test_broker_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = tokio_postgres::connect(&Self::admin_url(), NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let server = Self::admin_url().trim_end_matches("/postgres").to_owned();
        Ok(Self {
            url: format!("{server}/{name}?sslmode=disable"),
            name,
        })
    }

    /// Drops every connection to the database, as a PostgreSQL restart does to its clients.
    pub async fn terminate_connections(&self) -> anyhow::Result<u64> {
        let (client, conn) = tokio_postgres::connect(&Self::admin_url(), NoTls).await?;
        tokio::spawn(conn);
        let n = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .await?
            .len();
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn drop_db(self) -> anyhow::Result<()> {
        let (client, conn) = tokio_postgres::connect(&Self::admin_url(), NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

/// A PostgreSQL server of the test's own (initdb in a temporary directory, a free port), so a
/// test can restart it. As root it runs as the unprivileged `harborhook` user (created if
/// missing), as the stack script does.
pub struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    root: bool,
}

impl PrivatePostgres {
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "harborhook", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, mut c: Command, what: &str) -> anyhow::Result<()> {
        let out = c.stdout(Stdio::null()).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn start() -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .max()
            .ok_or_else(|| {
                anyhow::anyhow!("no PostgreSQL server binaries under /usr/lib/postgresql")
            })?;
        let uid = Command::new("id").arg("-u").output()?;
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir =
            std::env::temp_dir().join(format!("hh-test-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        if root {
            // Exists already on a second run: the error is fine.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "harborhook",
                ])
                .output();
            let chown = Command::new("chown")
                .arg("-R")
                .arg("harborhook")
                .arg(&dir)
                .status()?;
            anyhow::ensure!(chown.success(), "chown of {} failed", dir.display());
        }
        let pg = Self {
            bin,
            port: free_port()?,
            dir,
            root,
        };
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-U", "postgres", "--auth=trust"]);
        pg.run(initdb, "initdb")?;
        pg.pg_ctl("start")?;
        Ok(pg)
    }

    fn pg_ctl(&self, action: &str) -> anyhow::Result<()> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-m", "fast", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.dir.display()
            ))
            .arg(action);
        self.run(c, &format!("pg_ctl {action}"))
    }

    /// `postgres://…/postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fast shutdown and a start: every client connection is cut and refused meanwhile.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl("restart")
    }

    /// A crash and a start: the postmaster is SIGKILLed (its backends follow it as soon as they
    /// notice), so nothing is flushed or said to clients, and the start runs crash recovery.
    pub fn crash_restart(&self) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))?;
        let pid = pid_file
            .lines()
            .next()
            .map(str::trim)
            .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| anyhow::anyhow!("no postmaster pid in postmaster.pid"))?
            .to_owned();
        let killed = Command::new("kill").args(["-KILL", &pid]).status()?;
        anyhow::ensure!(killed.success(), "kill -KILL {pid} failed");
        let proc_dir = std::path::Path::new("/proc").join(&pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while proc_dir.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Orphaned backends may hold the shared memory for a moment: the start is retried.
        let mut last = None;
        for _ in 0..20 {
            match self.pg_ctl("start") {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
