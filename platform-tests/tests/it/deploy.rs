//! The Kubernetes manifests (deploy/), checked without a cluster: every overlay renders with
//! `kubectl kustomize`; core kinds validate against the Kubernetes schemas (kubernetes-validate)
//! and Strimzi kinds against the Strimzi CRDs; the KafkaTopics are the code's topic catalog and
//! the KafkaUsers grant exactly what each principal uses, both under the configuration the
//! manifests give the pods; the configuration covers every documented key and loads; the
//! Deployments carry probes, resources, grace periods and anti-affinity; only the
//! delivery-consumer may reach the internet; autoscaling follows the consumer groups.
//! Alerts and dashboards: tests/it/monitoring.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::common::manifests::{
    OVERLAYS, SERVICES, config_check, container_env, kind, named, render, root, str_of,
};
use serde_json::{Value, json};

const CORE_API_VERSIONS: [&str; 5] = [
    "v1",
    "apps/v1",
    "policy/v1",
    "networking.k8s.io/v1",
    "autoscaling/v2",
];
/// Kinds validated by neither check here: their operators' CRDs are not vendored. The checks
/// below read them field by field instead (ServiceMonitor, ScaledObject) or in
/// tests/it/monitoring.rs (PrometheusRule).
const OTHER_KINDS: [&str; 4] = [
    "ServiceMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
];

fn kubernetes_validate() -> String {
    std::env::var("HARBORHOOK_KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into())
}

#[test]
fn every_overlay_renders_and_core_kinds_match_the_kubernetes_schemas() {
    let dir = std::env::temp_dir().join(format!("hh-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let mut core = String::new();
        for d in &docs {
            let api = str_of(&d["apiVersion"]);
            let k = str_of(&d["kind"]);
            if CORE_API_VERSIONS.contains(&api) {
                core.push_str(&format!("---\n{d}\n"));
            } else {
                assert!(
                    api.starts_with("kafka.strimzi.io/") || OTHER_KINDS.contains(&k),
                    "{overlay}: {api} {k} is checked by nothing"
                );
            }
            assert_eq!(d["metadata"]["namespace"], "harborhook", "{overlay}: {k}");
        }
        let file = dir.join(format!("{overlay}.yaml"));
        std::fs::write(&file, core).expect("write");
        // The oldest Kubernetes the manifests support and the newest the validator knows.
        for version in ["1.30.0", "1.37.0"] {
            let out = Command::new(kubernetes_validate())
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file)
                .output()
                .unwrap_or_else(|e| {
                    panic!("running kubernetes-validate: {e} (scripts/test.sh installs it)")
                });
            assert!(
                out.status.success(),
                "{overlay} against Kubernetes {version}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CRD's schema as Kubernetes applies it: properties a structural schema does not declare
/// are pruned (and refused by `kubectl apply --validate=strict`), so here they are errors.
fn strict(schema: &mut Value) {
    if let Value::Object(map) = schema {
        let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if map.contains_key("properties") && !preserve && !map.contains_key("additionalProperties")
        {
            map.insert("additionalProperties".into(), json!(false));
        }
        for (_, v) in map.iter_mut() {
            strict(v);
        }
    } else if let Value::Array(items) = schema {
        items.iter_mut().for_each(strict);
    }
}

fn strimzi_validators() -> BTreeMap<String, jsonschema::Validator> {
    let dir = root().join("deploy/crds/strimzi");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/crds/strimzi") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let crd =
            &crate::common::manifests::parse_yaml(&std::fs::read_to_string(&path).expect("read"))
                [0];
        let version = crd["spec"]["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "v1"))
            .expect("a v1 version");
        let mut schema = version["schema"]["openAPIV3Schema"].clone();
        strict(&mut schema);
        // metadata is the API server's to check; the CRD leaves it open.
        schema["properties"]["metadata"] = json!({"type": "object"});
        let validator = jsonschema::options()
            .build(&schema)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.insert(str_of(&crd["spec"]["names"]["kind"]).to_owned(), validator);
    }
    out
}

#[test]
fn strimzi_resources_match_the_crds() {
    let validators = strimzi_validators();
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let mut seen = BTreeSet::new();
        for d in docs
            .iter()
            .filter(|d| str_of(&d["apiVersion"]) == "kafka.strimzi.io/v1")
        {
            let k = str_of(&d["kind"]);
            let v = validators
                .get(k)
                .unwrap_or_else(|| panic!("no CRD for {k}"));
            let errors: Vec<String> = v
                .iter_errors(d)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{overlay}: {k} {}: {errors:?}",
                d["metadata"]["name"]
            );
            seen.insert(k.to_owned());
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"],
            "{overlay}"
        );
    }
    // The check can fail: a misspelt field and a wrong type are refused.
    let docs = render("production");
    let mut topic = kind(&docs, "KafkaTopic")[0].clone();
    topic["spec"]["partitons"] = json!(6);
    assert!(!validators["KafkaTopic"].is_valid(&topic));
    let mut user = kind(&docs, "KafkaUser")[0].clone();
    user["spec"]["authorization"]["acls"][0]["operations"] = json!(["Scribble"]);
    assert!(!validators["KafkaUser"].is_valid(&user));
}

#[test]
fn kafka_topics_are_the_code_catalog_under_the_manifests_configuration() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let env = container_env(&docs, "delivery-consumer");
        let effective = config_check(&env);
        let replication: i64 = env["HARBORHOOK_TOPICS__REPLICATION_FACTOR"]
            .parse()
            .expect("replication factor");
        if overlay.starts_with("production") {
            assert_eq!(replication, 3, "{overlay}");
        }
        let expected: BTreeMap<String, &Value> = effective["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .map(|t| (str_of(&t["name"]).to_owned(), t))
            .collect();
        let topics = kind(&docs, "KafkaTopic");
        let found: BTreeSet<String> = topics
            .iter()
            .map(|t| str_of(&t["spec"]["topicName"]).to_owned())
            .collect();
        assert_eq!(
            found,
            expected.keys().cloned().collect::<BTreeSet<_>>(),
            "{overlay}: KafkaTopics vs the catalog"
        );
        for t in topics {
            let name = str_of(&t["spec"]["topicName"]);
            let spec = expected[name];
            let s = &t["spec"];
            assert_eq!(s["partitions"], spec["partitions"], "{overlay}: {name}");
            assert_eq!(s["replicas"], json!(replication), "{overlay}: {name}");
            let min_isr = if replication >= 3 { 2 } else { 1 };
            assert_eq!(s["config"]["min.insync.replicas"], json!(min_isr), "{name}");
            assert_eq!(s["config"]["retention.ms"], spec["retention_ms"], "{name}");
            assert_eq!(
                s["config"]["cleanup.policy"], spec["cleanup_policy"],
                "{name}"
            );
            assert_eq!(t["metadata"]["labels"]["strimzi.io/cluster"], "harborhook");
        }
        let kafka = named(&docs, "Kafka", "harborhook");
        let config = &kafka["spec"]["kafka"]["config"];
        assert_eq!(config["default.replication.factor"], json!(replication));
        assert_eq!(config["auto.create.topics.enable"], json!(false));
        let brokers: i64 = kind(&docs, "KafkaNodePool")
            .iter()
            .filter(|p| {
                p["spec"]["roles"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("broker")))
            })
            .map(|p| p["spec"]["replicas"].as_i64().unwrap_or(0))
            .sum();
        assert!(brokers >= replication, "{overlay}: {brokers} brokers");
        assert_eq!(env["HARBORHOOK_KAFKA__ENSURE_TOPICS_ON_START"], "false");
    }
}

/// (resource type, name, pattern) → operations, as a KafkaUser's ACLs grant them.
type Acls = BTreeMap<(String, String, String), BTreeSet<String>>;

fn granted(user: &Value) -> Acls {
    let mut acls = Acls::new();
    for acl in user["spec"]["authorization"]["acls"]
        .as_array()
        .expect("acls")
    {
        let r = &acl["resource"];
        let key = (
            str_of(&r["type"]).to_owned(),
            str_of(&r["name"]).to_owned(),
            str_of(&r["patternType"]).to_owned(),
        );
        let ops = acls.entry(key).or_default();
        for op in acl["operations"].as_array().expect("operations") {
            ops.insert(str_of(op).to_owned());
        }
    }
    acls
}

fn needed(access: &Value) -> Acls {
    let mut acls = Acls::new();
    let mut add = |kind: &str, name: &Value, pattern: &str, ops: &[&str]| {
        let key = (kind.to_owned(), str_of(name).to_owned(), pattern.to_owned());
        acls.entry(key)
            .or_default()
            .extend(ops.iter().map(|o| (*o).to_owned()));
    };
    let list = |field: &str| access[field].as_array().cloned().unwrap_or_default();
    list("reads")
        .iter()
        .for_each(|t| add("topic", t, "literal", &["Read", "Describe"]));
    list("writes")
        .iter()
        .for_each(|t| add("topic", t, "literal", &["Write", "Describe"]));
    list("describes_topics")
        .iter()
        .for_each(|t| add("topic", t, "literal", &["Describe"]));
    if !access["group"].is_null() {
        add("group", &access["group"], "literal", &["Read"]);
    }
    if !access["group_prefix"].is_null() {
        add("group", &access["group_prefix"], "prefix", &["Read"]);
    }
    list("describes_groups")
        .iter()
        .for_each(|g| add("group", g, "literal", &["Describe"]));
    acls
}

#[test]
fn each_kafka_user_grants_exactly_what_its_principal_uses() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let users = kind(&docs, "KafkaUser");
        for service in SERVICES {
            // Under the configuration the service's own pod gets.
            let env = container_env(&docs, service);
            let access = &config_check(&env)["kafka_access"];
            let user_name = format!("harborhook-{service}");
            assert_eq!(env["HARBORHOOK_KAFKA__SASL_USERNAME"], user_name);
            let deployment = named(&docs, "Deployment", &user_name);
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let password = container["env"]
                .as_array()
                .and_then(|e| {
                    e.iter()
                        .find(|v| v["name"] == "HARBORHOOK_KAFKA__SASL_PASSWORD")
                })
                .expect("SASL password from the KafkaUser's Secret");
            assert_eq!(
                password["valueFrom"]["secretKeyRef"],
                json!({"name": user_name, "key": "password"})
            );
            let user = named(&docs, "KafkaUser", &user_name);
            assert_eq!(
                granted(user),
                needed(&access[service]),
                "{overlay}: {user_name}"
            );
        }
        // harborctl and direct producers have no pod here; the shared configuration names
        // the same topics and groups.
        let env = container_env(&docs, "ingest-gateway");
        let access = &config_check(&env)["kafka_access"];
        for principal in ["harborctl", "direct-producer"] {
            let user = named(&docs, "KafkaUser", &format!("harborhook-{principal}"));
            assert_eq!(granted(user), needed(&access[principal]), "{principal}");
        }
        assert_eq!(
            needed(&access["direct-producer"])
                .keys()
                .collect::<Vec<_>>(),
            [&("topic".into(), "harborhook.events".into(), "literal".into())],
            "direct producers may write events and nothing else"
        );
        assert_eq!(
            users.len(),
            SERVICES.len() + 2,
            "{overlay}: one user per principal"
        );
        for user in users {
            assert_eq!(user["spec"]["authentication"]["type"], "scram-sha-512");
        }
    }
}

/// `section.key` of every row of docs/configuration.md's tables.
fn documented_keys() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/configuration.md")).expect("read");
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## `[") {
            section = rest.trim_end_matches("]`").to_owned();
        } else if let Some(rest) = line.strip_prefix("| `")
            && !section.is_empty()
        {
            let key = rest.split('`').next().unwrap_or_default();
            keys.insert(format!("{section}.{key}"));
        } else if line.starts_with("## ") {
            section.clear();
        }
    }
    keys
}

#[test]
fn configuration_covers_every_documented_key_and_loads_in_every_pod() {
    let keys = documented_keys();
    assert!(keys.len() > 60, "parsed {} keys", keys.len());
    for overlay in OVERLAYS {
        let docs = render(overlay);
        for service in SERVICES {
            let env = container_env(&docs, service);
            let set: BTreeSet<String> = env
                .keys()
                .filter_map(|k| k.strip_prefix("HARBORHOOK_"))
                .map(|k| k.to_lowercase().replace("__", "."))
                .collect();
            let missing: Vec<&String> = keys.difference(&set).collect();
            assert!(
                missing.is_empty(),
                "{overlay}/{service}: not configured: {missing:?}"
            );
            let unknown: Vec<&String> = set.difference(&keys).collect();
            assert!(
                unknown.is_empty(),
                "{overlay}/{service}: undocumented: {unknown:?}"
            );
            let effective = config_check(&env);
            assert_eq!(effective["kafka"]["security_protocol"], "sasl_ssl");
            assert_eq!(effective["database"]["schema"], "harborhook");
        }
    }
}
