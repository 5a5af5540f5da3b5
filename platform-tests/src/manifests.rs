//! The Kubernetes manifests under deploy/, rendered by `kubectl kustomize` as an operator would,
//! and read as JSON values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;

pub const OVERLAYS: [&str; 3] = ["dev", "production", "production-hpa"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `HARBORHOOK_KUBECTL`, else `kubectl` on the PATH (scripts/test.sh installs Debian's
/// kubernetes-client when there is none).
pub fn kubectl() -> String {
    std::env::var("HARBORHOOK_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Every document of `deploy/overlays/<overlay>`, rendered.
pub fn render(overlay: &str) -> Vec<Value> {
    let dir = root().join("deploy/overlays").join(overlay);
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `{} kustomize`: {e} (install kubectl: scripts/test.sh does)",
                kubectl()
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_yaml(&String::from_utf8_lossy(&out.stdout))
}

/// A multi-document YAML stream as JSON values (empty documents skipped).
pub fn parse_yaml(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

pub fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The four services, as their Deployments, binaries and containers are named.
pub const SERVICES: [&str; 4] = [
    "ingest-gateway",
    "fanout-processor",
    "delivery-consumer",
    "retry-scheduler",
];

/// The environment a service's container starts with: the ConfigMap and Secret it loads
/// (`envFrom`), then its own `env` (later wins, as in Kubernetes). A value from a Secret the
/// cluster creates (the Strimzi user's password) is a placeholder.
pub fn container_env(docs: &[Value], service: &str) -> BTreeMap<String, String> {
    let deployment = named(docs, "Deployment", &format!("harborhook-{service}"));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let map = named(docs, "ConfigMap", name);
            for (k, v) in map["data"].as_object().into_iter().flatten() {
                env.insert(k.clone(), str_of(v).to_owned());
            }
        }
        if let Some(name) = source["secretRef"]["name"].as_str() {
            let secret = named(docs, "Secret", name);
            for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
                env.insert(k.clone(), str_of(v).to_owned());
            }
            assert!(
                secret["data"].is_null(),
                "{name}: keep secret.yaml in stringData"
            );
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let value = if var["valueFrom"]["secretKeyRef"].is_object() {
            "from-a-cluster-secret".to_owned()
        } else {
            str_of(&var["value"]).to_owned()
        };
        env.insert(str_of(&var["name"]).to_owned(), value);
    }
    env
}

/// `harborctl config check --json` under `env` (and nothing else of this process's
/// environment): the configuration a pod would load, validated by the code that loads it.
pub fn config_check(env: &BTreeMap<String, String>) -> Value {
    let out = Command::new(crate::binary("harborctl"))
        .args(["config", "check", "--json"])
        .env_clear()
        .envs(env)
        .output()
        .expect("harborctl runs");
    assert!(
        out.status.success(),
        "the manifests' configuration does not load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("config check --json prints JSON")
}
