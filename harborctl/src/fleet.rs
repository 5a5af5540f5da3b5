//! The service processes `harborctl bench` measures and disrupts.
//!
//! Services are found by their pid files in `.stack/services/` (as `harborctl dev up` writes
//! them). A disruption (`--disrupt delivery-consumer:kill@10+60`) stops one as a crash
//! (SIGKILL) or a deployment (SIGTERM, then SIGKILL after 30 s) would, waits the given time,
//! and starts it again with the executable, working directory and environment of the process
//! it replaces, read from `/proc`: the restarted process is configured exactly as the old one
//! was, whatever started it. Extra delivery-consumer replicas (`--replicas`) are started the
//! same way from the first one, each with its own ops port, and stopped at the end.
//!
//! CPU seconds are accounted per service name across restarts: a process's usage is sampled
//! just before it is stopped and carried over, so a restarted service's figure covers the
//! whole run, not only its last process.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::CliError;

const DIR: &str = ".stack/services";
const LOGS: &str = ".stack/logs";
const SERVICES: [&str; 4] = [
    "ingest-gateway",
    "fanout-processor",
    "delivery-consumer",
    "retry-scheduler",
];
/// How long a SIGTERMed service may drain before it is killed (the Kubernetes default grace).
const GRACE: Duration = Duration::from_secs(30);
const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Kill,
    Term,
}

/// `SERVICE[#REPLICA]:kill|term@SECONDS[+DOWN_SECONDS]`: at SECONDS into the load, stop the
/// service, keep it down DOWN_SECONDS (default 0), start it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Disruption {
    pub service: String,
    pub stop: Stop,
    pub at: Duration,
    pub down: Duration,
}

impl std::fmt::Display for Disruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stop = if self.stop == Stop::Kill {
            "kill"
        } else {
            "term"
        };
        write!(f, "{}:{stop}@{}", self.service, self.at.as_secs_f64())?;
        if !self.down.is_zero() {
            write!(f, "+{}", self.down.as_secs_f64())?;
        }
        Ok(())
    }
}

impl FromStr for Disruption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let form = "SERVICE[#N]:kill|term@SECONDS[+DOWN]";
        let (service, rest) = s.split_once(':').ok_or(format!("{s}: expected {form}"))?;
        let (stop, when) = rest
            .split_once('@')
            .ok_or(format!("{s}: expected {form}"))?;
        let stop = match stop {
            "kill" => Stop::Kill,
            "term" => Stop::Term,
            other => return Err(format!("{other}: kill (SIGKILL) or term (SIGTERM)")),
        };
        let (at, down) = when.split_once('+').unwrap_or((when, "0"));
        let secs = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0 && *x < 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!("{v}: seconds (a number, 0 or more)"))
        };
        let (base, replica) = service.split_once('#').unwrap_or((service, "1"));
        if !SERVICES.contains(&base) {
            return Err(format!("{base}: one of {}", SERVICES.join(", ")));
        }
        // The number, not the text: `#02` and `#2` are one replica.
        let service = match replica.parse::<usize>() {
            Ok(1) => base.to_owned(),
            Ok(n) if (2..=64).contains(&n) && base == "delivery-consumer" => format!("{base}#{n}"),
            _ => {
                return Err(format!(
                    "#{replica}: only delivery-consumer has replicas, #2 to #64"
                ));
            }
        };
        Ok(Self {
            service,
            stop,
            at: secs(at)?,
            down: secs(down)?,
        })
    }
}

/// What a process was started with.
#[derive(Debug, Clone)]
struct Launch {
    exe: PathBuf,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Launch {
    fn of(pid: u32) -> std::io::Result<Self> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        // A binary rebuilt while the process ran reads "… (deleted)": start the new one.
        let exe = PathBuf::from(
            exe.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned(),
        );
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
        let raw = std::fs::read(format!("/proc/{pid}/environ"))?;
        let env = raw
            .split(|b| *b == 0)
            .filter_map(|e| {
                let i = e.iter().position(|b| *b == b'=')?;
                let k = std::ffi::OsStr::from_bytes(&e[..i]).to_owned();
                Some((k, std::ffi::OsStr::from_bytes(&e[i + 1..]).to_owned()))
            })
            .collect();
        Ok(Self { exe, cwd, env })
    }

    fn spawn(&self, name: &str, extra: &[(&str, String)]) -> std::io::Result<Child> {
        std::fs::create_dir_all(LOGS)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{LOGS}/{name}.log"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.current_dir(&self.cwd)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        // Its own process group, as `dev up` starts them: a Ctrl-C to the bench leaves it be.
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
    }

    fn var(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }
}

/// (CPU seconds, peak RSS in MiB) of a process, from /proc.
fn usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks / 100.0, hwm_kb / 1024.0))
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

fn pid_file(name: &str) -> String {
    format!("{DIR}/{name}.pid")
}

fn read_pid(name: &str) -> Option<u32> {
    std::fs::read_to_string(pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The ops (or API) address whose `/readyz` says the service is ready.
fn ready_addr(name: &str, launch: &Launch) -> String {
    let base = name.split('#').next().unwrap_or(name);
    let (key, default) = match base {
        "ingest-gateway" => ("HARBORHOOK_GATEWAY__LISTEN", "127.0.0.1:8080"),
        "fanout-processor" => ("HARBORHOOK_FANOUT__OPS_LISTEN", "127.0.0.1:9101"),
        "retry-scheduler" => ("HARBORHOOK_SCHEDULER__OPS_LISTEN", "127.0.0.1:9103"),
        _ => ("HARBORHOOK_DELIVERY__OPS_LISTEN", "127.0.0.1:9102"),
    };
    launch.var(key).unwrap_or_else(|| default.to_owned())
}

async fn wait_ready(addr: &str) -> bool {
    let Ok(http) = shared::tls::http_client().build() else {
        return false;
    };
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        let ok = http
            .get(format!("http://{addr}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// What the bench knows of the running services.
#[derive(Debug, Default)]
pub struct Fleet {
    /// name → (pid, CPU seconds at the bench's start or 0 for a process started since).
    baseline: HashMap<String, (u32, f64)>,
    /// CPU seconds of processes of that name that were stopped during the run.
    retired: HashMap<String, f64>,
    /// Processes this bench started (restarts, replicas), to reap them.
    children: HashMap<String, Child>,
    /// Replicas this bench added, stopped at the end.
    replicas: Vec<String>,
}

impl Fleet {
    /// The services running now, with their CPU use so far as the baseline.
    pub fn sample() -> Self {
        let mut fleet = Self::default();
        let Ok(dir) = std::fs::read_dir(DIR) else {
            return fleet;
        };
        for e in dir.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".pid") else {
                continue;
            };
            if let Some(pid) = read_pid(name).filter(|p| alive(*p)) {
                let cpu = usage(pid).map_or(0.0, |u| u.0);
                fleet.baseline.insert(name.to_owned(), (pid, cpu));
            }
        }
        fleet
    }

    fn launch_of(&self, name: &str) -> Result<(u32, Launch), CliError> {
        let hint = "start the services with `harborctl dev up` (scripts/dev.sh --detach)";
        let pid = read_pid(name)
            .filter(|p| alive(*p))
            .ok_or_else(|| CliError::failed(format!("{name} is not running"), hint))?;
        let launch = Launch::of(pid)
            .map_err(|e| CliError::failed(format!("{name} (pid {pid}): {e}"), hint))?;
        // A stale pid file whose pid now belongs to another program must not be signalled.
        let base = name.split('#').next().unwrap_or(name);
        if launch.exe.file_name().and_then(|n| n.to_str()) != Some(base) {
            return Err(CliError::failed(
                format!(
                    "{name}: pid {pid} in {} runs {}, not {base}",
                    pid_file(name),
                    launch.exe.display()
                ),
                hint,
            ));
        }
        Ok((pid, launch))
    }

    /// Refuses, before any load, disruptions of services that are not running or of replicas
    /// the run will not have.
    pub fn check(
        &self,
        disruptions: &[Disruption],
        replicas: usize,
        seconds: u64,
    ) -> Result<(), CliError> {
        if !(1..=64).contains(&replicas) {
            return Err(CliError::usage("--replicas: 1 to 64", ""));
        }
        let mut plan: Vec<&Disruption> = disruptions.iter().collect();
        plan.sort_by_key(|d| d.at);
        for (i, d) in plan.iter().enumerate() {
            if d.at >= Duration::from_secs(seconds) {
                return Err(CliError::usage(
                    format!("--disrupt {d}: at or after the load's end ({seconds} s)"),
                    "",
                ));
            }
            // One service is down once at a time: a second stop during the first's downtime
            // would run late and be reported under the wrong time.
            if let Some(prev) = plan[..i]
                .iter()
                .rev()
                .find(|p| p.service == d.service && p.at + p.down >= d.at)
            {
                return Err(CliError::usage(
                    format!("--disrupt {d}: {} is still down then ({prev})", d.service),
                    "",
                ));
            }
        }
        for d in disruptions {
            let n = d
                .service
                .split_once('#')
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .unwrap_or(1);
            if n > replicas.max(1) {
                return Err(CliError::usage(
                    format!(
                        "--disrupt {d}: the run has {} delivery-consumer replica(s); add --replicas {n}",
                        replicas.max(1)
                    ),
                    "",
                ));
            }
            if n == 1 {
                self.launch_of(&d.service)?;
            }
        }
        Ok(())
    }

    fn start(
        &mut self,
        name: &str,
        launch: &Launch,
        extra: &[(&str, String)],
    ) -> Result<u32, CliError> {
        let child = launch
            .spawn(name, extra)
            .map_err(|e| CliError::failed(format!("starting {name}: {e}"), ""))?;
        let pid = child.id();
        std::fs::write(pid_file(name), format!("{pid}\n"))
            .map_err(|e| CliError::failed(format!("{}: {e}", pid_file(name)), ""))?;
        self.children.insert(name.to_owned(), child);
        self.baseline.insert(name.to_owned(), (pid, 0.0));
        Ok(pid)
    }

    /// Starts delivery-consumer replicas #2..=n from the first one's launch, each with its own
    /// ops port (9102 + 10 per replica), and waits until each is ready.
    pub async fn add_replicas(&mut self, n: usize) -> Result<(), CliError> {
        if n <= 1 {
            return Ok(());
        }
        let (_, launch) = self.launch_of("delivery-consumer")?;
        for i in 2..=n {
            let name = format!("delivery-consumer#{i}");
            if let Some(pid) = read_pid(&name).filter(|p| alive(*p)) {
                return Err(CliError::failed(
                    format!("{name} is already running (pid {pid})"),
                    format!("stop it, or remove {} if it is stale", pid_file(&name)),
                ));
            }
            let port = 9102 + 10 * (i - 1);
            let addr = format!("127.0.0.1:{port}");
            self.start(
                &name,
                &launch,
                &[("HARBORHOOK_DELIVERY__OPS_LISTEN", addr.clone())],
            )?;
            self.replicas.push(name.clone());
            if !wait_ready(&addr).await {
                return Err(CliError::failed(
                    format!("{name} was not ready on {addr} within {READY_WITHIN:?}"),
                    format!("see {LOGS}/{name}.log"),
                ));
            }
        }
        Ok(())
    }

    /// Stops `name` as `stop` says and waits until it is gone.
    async fn stop(&mut self, name: &str, stop: Stop) -> Result<(), CliError> {
        let (pid, _) = self.launch_of(name)?;
        let base = self
            .baseline
            .get(name)
            .filter(|b| b.0 == pid)
            .map_or(0.0, |b| b.1);
        let signal = |sig: &'static str| async move {
            let status = tokio::task::spawn_blocking(move || {
                Command::new("kill").args([sig, &pid.to_string()]).status()
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| CliError::failed(format!("kill {sig} {pid}: {e}"), ""))?;
            // `kill` fails when the process is gone already (fine) or is not ours (not fine).
            if status.success() || !alive(pid) {
                Ok(())
            } else {
                Err(CliError::failed(
                    format!("kill {sig} {pid} failed ({status})"),
                    "",
                ))
            }
        };
        // The last CPU reading before the process vanished (a draining SIGTERMed process
        // keeps working): counted once it is gone, never for a process still running.
        let mut cpu = usage(pid).map_or(0.0, |u| u.0);
        signal(if stop == Stop::Kill { "-KILL" } else { "-TERM" }).await?;
        let deadline = Instant::now() + GRACE;
        let mut killed = stop == Stop::Kill;
        let mut killed_at = Instant::now();
        loop {
            if let Some(child) = self.children.get_mut(name) {
                let _ = child.try_wait();
            }
            if !alive(pid) {
                break;
            }
            cpu = usage(pid).map_or(cpu, |u| u.0);
            if !killed && Instant::now() >= deadline {
                signal("-KILL").await?;
                killed = true;
                killed_at = Instant::now();
            }
            if killed && killed_at.elapsed() > Duration::from_secs(10) {
                return Err(CliError::failed(
                    format!("{name} (pid {pid}) is still alive 10 s after SIGKILL"),
                    "it may be stuck in the kernel (state D): see /proc/PID/stat",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mut child) = self.children.remove(name) {
            let _ = child.wait();
        }
        *self.retired.entry(name.to_owned()).or_default() += (cpu - base).max(0.0);
        if let Some(entry) = self.baseline.get_mut(name) {
            // Not running until started again: `processes` reports it with pid null.
            entry.0 = 0;
        }
        Ok(())
    }

    /// Runs one disruption; returns when the service was stopped and when it was started
    /// again and when it was ready (or None if it did not become ready in time).
    pub async fn disrupt(
        &mut self,
        d: &Disruption,
    ) -> Result<(Instant, Instant, Option<Instant>), CliError> {
        let (_, launch) = self.launch_of(&d.service)?;
        let stopped = Instant::now();
        self.stop(&d.service, d.stop).await?;
        tokio::time::sleep(d.down).await;
        let started = Instant::now();
        self.start(&d.service, &launch, &[])?;
        let ready = wait_ready(&ready_addr(&d.service, &launch))
            .await
            .then(Instant::now);
        Ok((stopped, started, ready))
    }

    /// CPU seconds and peak RSS per service name since the bench's start, restarts included.
    pub fn processes(&self) -> Vec<Value> {
        let mut names: Vec<&String> = self.baseline.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let (pid, base) = self.baseline[name];
                let retired = self.retired.get(name).copied().unwrap_or(0.0);
                // A service that is down (stopped and not back, or died) keeps its row: its
                // CPU until then still counts, and the null pid says it is not running.
                match (pid != 0 && alive(pid)).then(|| usage(pid)).flatten() {
                    Some((cpu, rss)) => json!({
                        "service": name, "pid": pid, "cpu_seconds": cpu - base + retired,
                        "peak_rss_mib": rss,
                    }),
                    None => json!({
                        "service": name, "pid": null, "cpu_seconds": retired,
                        "peak_rss_mib": null,
                    }),
                }
            })
            .collect()
    }

    /// Stops the replicas this bench added (SIGTERM: they commit and leave the group).
    pub async fn stop_replicas(&mut self) {
        for name in std::mem::take(&mut self.replicas) {
            if let Err(e) = self.stop(&name, Stop::Term).await {
                eprintln!("stopping {name}: {}", e.message);
            }
            let _ = std::fs::remove_file(pid_file(&name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_that_cannot_run_as_written_are_refused_before_the_load() {
        let fleet = Fleet::default();
        let d = |s: &str| s.parse::<Disruption>().expect("parses");
        let refused = |plan: &[Disruption], replicas: usize| {
            fleet
                .check(plan, replicas, 30)
                .err()
                .map(|e| e.message)
                .unwrap_or_default()
        };
        assert!(refused(&[], 0).contains("--replicas"));
        assert!(refused(&[], 65).contains("--replicas"));
        assert!(refused(&[d("fanout-processor:kill@30")], 1).contains("load's end"));
        assert!(
            refused(
                &[
                    d("delivery-consumer:term@20"),
                    d("delivery-consumer:kill@10+60")
                ],
                1
            )
            .contains("still down")
        );
        assert!(refused(&[d("delivery-consumer#3:kill@5")], 2).contains("--replicas 3"));
        // Valid plans get as far as looking for the running service (none here).
        assert!(refused(&[d("fanout-processor:kill@5")], 1).contains("is not running"));
    }

    #[test]
    fn disruptions_parse_and_bad_ones_say_why() {
        let d: Disruption = "delivery-consumer:term@10+60".parse().expect("parses");
        assert_eq!(
            d,
            Disruption {
                service: "delivery-consumer".into(),
                stop: Stop::Term,
                at: Duration::from_secs(10),
                down: Duration::from_secs(60),
            }
        );
        let d: Disruption = "fanout-processor:kill@2.5".parse().expect("parses");
        assert_eq!(
            (d.stop, d.at, d.down),
            (Stop::Kill, Duration::from_millis(2500), Duration::ZERO)
        );
        let d: Disruption = "delivery-consumer#2:term@20".parse().expect("parses");
        assert_eq!(d.service, "delivery-consumer#2");
        let d: Disruption = "delivery-consumer#02:term@20".parse().expect("parses");
        assert_eq!(d.service, "delivery-consumer#2", "one name per replica");
        assert_eq!(
            "delivery-consumer#1:kill@1"
                .parse::<Disruption>()
                .map(|d| d.service),
            Ok("delivery-consumer".to_owned())
        );
        for bad in [
            "delivery-consumer",
            "delivery-consumer:stop@1",
            "postgres:kill@1",
            "fanout-processor#2:kill@1",
            "delivery-consumer#0:kill@1",
            "delivery-consumer#65:kill@1",
            "delivery-consumer:kill@-1",
            "delivery-consumer:kill@1+x",
            "delivery-consumer:kill@NaN",
        ] {
            assert!(bad.parse::<Disruption>().is_err(), "{bad} must be refused");
        }
    }
}
