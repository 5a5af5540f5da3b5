//! `harborctl bench --disrupt` really disrupts: against the running services (found by their
//! pid files, as `harborctl dev up` writes them) it SIGKILLs the delivery-consumer mid-run,
//! starts it again configured as before, and reports the catch-up: every delivery arrived,
//! none was deferred to a retry tier, the restart made some late, and the new process is the
//! one the pid file names.

use std::process::Command;

use crate::common::World;
use crate::common::platform::{Platform, SERVICES};
use serde_json::Value;

const DELIVERY_CONSUMER: usize = 2;

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// Kills the process the bench started, whatever the test's outcome.
struct Restarted(std::path::PathBuf);

impl Drop for Restarted {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_disrupt_restarts_a_service_and_reports_the_catch_up() -> anyhow::Result<()> {
    let p = Platform::start(World::new().await?).await?;
    let dir = tempfile_dir(&p.world.env.schema)?;
    let services = dir.join(".stack/services");
    std::fs::create_dir_all(&services)?;
    for (i, name) in SERVICES.iter().enumerate() {
        let pid = p.pid(i).expect("running");
        std::fs::write(services.join(format!("{name}.pid")), format!("{pid}\n"))?;
    }
    let original = p.pid(DELIVERY_CONSUMER).expect("running");
    let pid_file = services.join("delivery-consumer.pid");
    let _restarted = Restarted(pid_file.clone());

    let report = dir.join("report.json");
    let c = &p.world.env.config;
    let out = tokio::task::spawn_blocking({
        let (dir, report, api, token) = (dir.clone(), report.clone(), p.api.clone(), p.token(None));
        let (bootstrap, prefix) = (c.kafka.bootstrap.clone(), c.kafka.topic_prefix.clone());
        move || {
            Command::new(platform_tests::binary("harborctl"))
                .current_dir(&dir)
                .env_clear()
                .env("HARBORHOOK_URL", api)
                .env("HARBORHOOK_TOKEN", token)
                .env("HARBORHOOK_KAFKA__BOOTSTRAP", bootstrap)
                .env("HARBORHOOK_KAFKA__TOPIC_PREFIX", prefix)
                .env("HARBORHOOK_RETRY__SCHEDULE", "1s,2s")
                .args(["--json", "bench", "--tenants", "1", "--fanout", "2"])
                .args(["--seconds", "10", "--rate", "40", "--batch", "4"])
                .args(["--disrupt", "delivery-consumer:kill@3"])
                .arg("--report")
                .arg(&report)
                .output()
        }
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report)?)?;

    let expected = r["healthy_deliveries_expected"].as_u64().unwrap_or(0);
    assert!(expected >= 600, "the load ran: {r}");
    assert_eq!(
        r["healthy_deliveries_received"], expected,
        "every delivery arrived: {r}"
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(
        r["deferred_total"], 0,
        "a restart defers nothing of a healthy endpoint: {r}"
    );
    let d = &r["disruptions"][0];
    assert_eq!(d["disruption"], "delivery-consumer:kill@3", "{r}");
    assert!(
        d["ready_at_s"].is_number(),
        "the restarted consumer became ready: {d}"
    );
    assert!(
        d["late_deliveries"].as_u64().unwrap_or(0) > 0,
        "a SIGKILLed consumer's partitions wait out its session: some deliveries are late: {d}"
    );
    assert!(
        d["backlog_cleared_after_restart_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{d}"
    );
    let timeline: u64 = r["timeline"]["delivered_per_second"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(Value::as_u64).sum());
    assert_eq!(
        timeline, expected,
        "the timeline counts every first delivery"
    );

    // The old process is gone; the pid file names the new one, running the same executable.
    assert!(!alive(original), "the original consumer was killed");
    let new: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert_ne!(new, original);
    assert!(alive(new), "the restarted consumer still runs");
    assert_eq!(
        std::fs::read_link(format!("/proc/{new}/exe"))?,
        std::fs::read_link(format!("/proc/{}/exe", p.pid(0).expect("gateway")))?
            .with_file_name("delivery-consumer"),
    );
    let environ = std::fs::read(format!("/proc/{new}/environ"))?;
    let schema = format!("HARBORHOOK_DATABASE__SCHEMA={}", p.world.env.schema);
    assert!(
        environ.split(|b| *b == 0).any(|e| e == schema.as_bytes()),
        "restarted with the environment of the process it replaced"
    );
    let cpu = r["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["service"] == "delivery-consumer"))
        .and_then(|x| x["cpu_seconds"].as_f64());
    assert!(
        cpu.is_some_and(|c| c > 0.0),
        "CPU counted across the restart: {r}"
    );
    std::fs::remove_dir_all(&dir)?;
    p.world.cleanup().await
}

fn tempfile_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-bench"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
