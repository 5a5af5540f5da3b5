//! harborctl's management commands against a real gateway (and fan-out) in-process: every
//! endpoints / subscriptions / events / deliveries command, table and JSON output, and the
//! exit codes and hints of a bad token and an unknown id.

use std::time::Duration;

use crate::common::World;
use serde_json::{Value, json};
use shared::ids::TenantId;
use shared::jwt::{Claims, DevKeys};
use tokio_util::sync::CancellationToken;

struct Api {
    world: World,
    url: String,
    token: String,
    tenant: TenantId,
    shutdown: CancellationToken,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        let mut world = World::new().await?;
        let keys_dir = std::env::temp_dir().join(format!("{}-keys", world.env.schema));
        let keys = DevKeys::load_or_create(&keys_dir)?;
        world.env.config.gateway.auth.jwks_file =
            Some(shared::jwt::jwks_path(&keys_dir).display().to_string());
        let shutdown = CancellationToken::new();
        let gateway = ingest_gateway::start(world.env.config.clone(), shutdown.clone()).await?;
        fanout_processor::start(world.env.config.clone(), shutdown.clone()).await?;
        let url = format!("http://{}", gateway.local_addr);
        let auth = &world.env.config.gateway.auth;
        let claims = |tenant, operator| {
            Claims::new(
                &auth.issuer,
                &auth.audience,
                "harborctl-test",
                tenant,
                operator,
                Duration::from_secs(600),
            )
        };
        let operator = keys.issue(&claims(None, true))?;
        let created: Value = shared::tls::http_client()
            .build()?
            .post(format!("{url}/v1/tenants"))
            .bearer_auth(&operator)
            .json(&json!({"name": "acme"}))
            .send()
            .await?
            .json()
            .await?;
        let tenant: TenantId = created["id"].as_str().expect("tenant id").parse()?;
        let token = keys.issue(&claims(Some(tenant), false))?;
        Ok(Self {
            world,
            url,
            token,
            tenant,
            shutdown,
        })
    }

    fn env(&self) -> Vec<(&str, String)> {
        vec![
            ("HARBORHOOK_URL", self.url.clone()),
            ("HARBORHOOK_TOKEN", self.token.clone()),
            ("HARBORHOOK_TENANT", self.tenant.to_string()),
        ]
    }

    fn json(&self, args: &[&str]) -> Value {
        let env = self.env();
        let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.world.json(args, &extra)
    }

    fn run(&self, args: &[&str], token: &str) -> std::process::Output {
        let tenant = self.tenant.to_string();
        self.world.run(
            args,
            &[
                ("HARBORHOOK_URL", &self.url),
                ("HARBORHOOK_TOKEN", token),
                ("HARBORHOOK_TENANT", &tenant),
            ],
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_commands_drive_the_api() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let created = api.json(&[
        "endpoints",
        "create",
        "--url",
        "https://hooks.example.com/in",
        "--max-in-flight",
        "4",
        "--header",
        "X-Team: billing",
    ]);
    let ep = created["id"].as_str().expect("endpoint id").to_owned();
    assert!(
        created["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "{created}"
    );
    let list = api.json(&["endpoints", "list"]);
    assert_eq!(list["data"][0]["id"], ep);
    let table = String::from_utf8(api.run(&["endpoints", "list"], &api.token).stdout)?;
    assert!(table.starts_with("ID") && table.contains(&ep), "{table}");
    assert_eq!(api.json(&["endpoints", "get", &ep])["max_in_flight"], 4);
    assert_eq!(
        api.json(&["endpoints", "update", &ep, "--max-in-flight", "7"])["max_in_flight"],
        7
    );
    assert_eq!(
        api.json(&["endpoints", "disable", &ep, "--reason", "maintenance"])["enabled"],
        false
    );
    assert_eq!(api.json(&["endpoints", "enable", &ep])["enabled"], true);
    let rotated = api.json(&["endpoints", "rotate-secret", &ep]);
    assert!(rotated.to_string().contains("whsec_"), "{rotated}");

    let sub = api.json(&[
        "subscriptions",
        "create",
        "--endpoint",
        &ep,
        "--type",
        "order.*",
    ]);
    let sub_id = sub["id"].as_str().expect("subscription id").to_owned();
    assert_eq!(
        api.json(&["subscriptions", "list"])["data"][0]["id"],
        sub_id
    );

    let published = api.json(&[
        "events",
        "publish",
        "--type",
        "order.created",
        "--data",
        r#"{"n": 1}"#,
    ]);
    let event = published["event_id"].as_str().expect("event id").to_owned();
    // Fan-out records the event and its delivery; wait for it.
    let mut deliveries = Value::Null;
    for _ in 0..100 {
        let out = api.run(
            &["--json", "deliveries", "list", "--event", &event],
            &api.token,
        );
        if out.status.success() {
            deliveries = serde_json::from_slice(&out.stdout)?;
            if deliveries["data"].as_array().is_some_and(|d| !d.is_empty()) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivery = deliveries["data"][0]["id"]
        .as_str()
        .expect("a delivery")
        .to_owned();
    assert_eq!(
        api.json(&["events", "get", &event])["event_type"],
        "order.created"
    );
    assert_eq!(
        api.json(&["events", "list", "--type", "order.created"])["data"][0]["id"],
        event
    );
    assert_eq!(api.json(&["deliveries", "get", &delivery])["id"], delivery);
    assert!(api.json(&["deliveries", "attempts", &delivery])["data"].is_array());
    let replayed = api.json(&[
        "deliveries",
        "replay",
        &delivery,
        "--reason",
        "customer asked",
    ]);
    assert_eq!(replayed["delivery_id"], delivery);

    // The same settings from a file instead of the environment.
    let file = std::env::temp_dir().join(format!("{}-harborctl.toml", api.world.env.schema));
    std::fs::write(
        &file,
        format!(
            "url = \"{}\"\ntoken = \"{}\"\ntenant = \"{}\"\n",
            api.url, api.token, api.tenant
        ),
    )?;
    let path = file.display().to_string();
    let from_file = api.world.json(
        &["subscriptions", "list"],
        &[("HARBORHOOK_CLI_CONFIG", &path)],
    );
    assert_eq!(
        from_file["data"][0]["id"], sub_id,
        "url, token and tenant from the config file"
    );
    std::fs::remove_file(&file)?;

    assert_eq!(
        api.json(&["subscriptions", "delete", &sub_id])["deleted"],
        sub_id
    );
    assert_eq!(api.json(&["endpoints", "delete", &ep])["deleted"], ep);

    let missing = api.run(&["endpoints", "get", &ep], &api.token);
    assert_eq!(missing.status.code(), Some(3), "not found");
    let forged = api.run(&["endpoints", "list"], "not-a-token");
    assert_eq!(forged.status.code(), Some(4), "unauthorised");
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("hint: set --token or HARBORHOOK_TOKEN")
    );
    let nowhere = api.world.run(
        &["endpoints", "list"],
        &[
            ("HARBORHOOK_URL", "http://127.0.0.1:9"),
            ("HARBORHOOK_TENANT", "ten_x"),
        ],
    );
    assert_eq!(nowhere.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("is the gateway running?"));

    api.shutdown.cancel();
    api.world.cleanup().await
}
