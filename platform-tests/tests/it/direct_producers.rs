//! The direct-producer examples of docs/direct-producers.md, taken from the document as they
//! are and run by their own languages with their own Kafka clients (confluent-kafka in Python,
//! @platformatic/kafka in Node.js; installed by `scripts/stack.sh tools`) against the platform:
//! the event each publishes is delivered to the tenant's endpoint under the `webhook-id` its
//! event id derives, and the refused one is reported with the fan-out's reason, found on
//! `events.invalid` by the key it was sent with.

use std::path::PathBuf;
use std::process::Command;

use crate::common::World;
use crate::common::platform::{Platform, Receiver, verified};
use serde_json::Value;
use shared::ids::{DeliveryId, EndpointId, EventId};

fn doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/direct-producers.md"
    ))
    .expect("docs/direct-producers.md")
}

/// The one fenced block of `lang`.
fn block(doc: &str, lang: &str) -> String {
    let fence = format!("```{lang}\n");
    let mut found = doc.match_indices(&fence);
    let (start, _) = found.next().unwrap_or_else(|| panic!("no {lang} block"));
    assert!(found.next().is_none(), "one {lang} block");
    let body = &doc[start + fence.len()..];
    body[..body.find("```").expect("closed fence")].to_owned()
}

fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is unset: source .stack/tools.env (scripts/stack.sh tools installs the clients)"
        )
    })
}

/// Runs an example; its last line of stdout is its JSON report.
fn run(program: &str, dir: &PathBuf, file: &str, code: &str, env: &[(&str, String)]) -> Value {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join(file);
    std::fs::write(&path, code).expect("write example");
    let out = Command::new(program)
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{file}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{file}: {e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_examples_publish_events_that_are_delivered() -> anyhow::Result<()> {
    let doc = doc();
    let python = block(&doc, "python");
    let node = block(&doc, "js");
    let p = Platform::start(World::new().await?).await?;
    let (receiver, addr) = Receiver::start().await?;
    let (tenant, token) = p.tenant().await?;
    let (endpoint, secret) = p
        .endpoint(
            &tenant,
            &token,
            format!("http://{addr}/direct"),
            "invoice.*",
        )
        .await?;
    let endpoint: EndpointId = endpoint.parse()?;
    let env = vec![
        (
            "BOOTSTRAP_SERVERS",
            p.world.env.config.kafka.bootstrap.clone(),
        ),
        ("EVENTS_TOPIC", p.world.env.catalog().events().to_owned()),
        ("TENANT_ID", tenant.to_string()),
    ];

    let node_dir = PathBuf::from(tool("HARBORHOOK_STACK_NODE_TOOLS"));
    let reports = [
        (
            "python",
            run(
                &tool("HARBORHOOK_STACK_PYTHON"),
                &std::env::temp_dir().join(format!("hh-direct-{}", std::process::id())),
                "producer.py",
                &python,
                &env,
            ),
        ),
        (
            "node",
            // In the tools directory, so its `import '@platformatic/kafka'` resolves there.
            run(
                &node_dir
                    .join("node_modules/.bin/node")
                    .display()
                    .to_string(),
                &node_dir,
                &format!("producer-{}.mjs", std::process::id()),
                &node,
                &env,
            ),
        ),
    ];

    for (n, (lang, report)) in reports.iter().enumerate() {
        let published: EventId = report["published"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("{lang}: published: {e}: {report}"))?;
        let refused = report["refused"].as_str().unwrap_or_default();
        let reason = report["reasons"][refused].as_str().unwrap_or_default();
        assert!(
            reason.contains("event type must be"),
            "{lang}: the refusal names its cause: {report}"
        );
        let want = DeliveryId::derive(&published, &endpoint).to_string();
        let got = receiver.wait("direct", n + 1, 60).await?;
        let delivery = got
            .iter()
            .find(|(_, h, _)| h.get("webhook-id").and_then(|v| v.to_str().ok()) == Some(&want))
            .ok_or_else(|| anyhow::anyhow!("{lang}: no delivery {want} of {published}"))?;
        assert!(
            verified(&secret, &delivery.1, &delivery.2),
            "{lang}: signed"
        );
        let body: Value = serde_json::from_slice(&delivery.2)?;
        assert_eq!(body["amount"], 4200, "{lang}: the payload as published");
    }
    // Each accepted event arrived once (a quiet run: no retries, so no repeats).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(receiver.requests("direct").len(), 2);
    p.world.cleanup().await
}
