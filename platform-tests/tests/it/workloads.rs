//! The workloads in deploy/, rendered per overlay: what each service's Deployment, Service,
//! PodDisruptionBudget and ServiceMonitor must carry; that only the delivery-consumer may reach
//! the internet; that autoscaling follows the consumer groups and partitions.

use crate::common::manifests::{
    OVERLAYS, SERVICES, config_check, container_env, kind, named, render, str_of,
};
use serde_json::{Value, json};

fn selects(selector: &Value, service: &str) -> bool {
    selector["app.kubernetes.io/name"] == service
        && selector["app.kubernetes.io/part-of"] == "harborhook"
}

fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .as_secs()
}

#[test]
fn every_service_is_deployed_for_operation() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        for service in SERVICES {
            let name = format!("harborhook-{service}");
            let d = named(&docs, "Deployment", &name);
            let pod = &d["spec"]["template"]["spec"];
            assert!(selects(&d["spec"]["selector"]["matchLabels"], service));
            assert!(selects(
                &d["spec"]["template"]["metadata"]["labels"],
                service
            ));
            let replicas = d["spec"]["replicas"].as_i64().expect("replicas");
            if overlay == "dev" {
                assert_eq!(replicas, 1, "{overlay}/{service}");
            } else {
                assert!(replicas >= 2, "{overlay}/{service}: {replicas} replicas");
            }
            let c = &pod["containers"][0];
            assert_eq!(c["name"], service);
            assert_eq!(c["command"], json!([format!("/usr/local/bin/{service}")]));
            assert!(
                str_of(&c["image"]).starts_with("registry.example.com/harborhook:"),
                "{}",
                c["image"]
            );
            // The port the service listens on is the one probed and scraped.
            let env = container_env(&docs, service);
            let listen = match service {
                "ingest-gateway" => &env["HARBORHOOK_GATEWAY__LISTEN"],
                "fanout-processor" => &env["HARBORHOOK_FANOUT__OPS_LISTEN"],
                "delivery-consumer" => &env["HARBORHOOK_DELIVERY__OPS_LISTEN"],
                _ => &env["HARBORHOOK_SCHEDULER__OPS_LISTEN"],
            };
            let port = &c["ports"][0];
            assert_eq!(
                listen,
                &format!("0.0.0.0:{}", port["containerPort"]),
                "{service}"
            );
            for (probe, path) in [
                ("startupProbe", "/healthz"),
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
            ] {
                assert_eq!(c[probe]["httpGet"]["path"], path, "{service} {probe}");
                assert_eq!(
                    c[probe]["httpGet"]["port"], port["name"],
                    "{service} {probe}"
                );
            }
            let r = &c["resources"];
            for field in [
                &r["requests"]["cpu"],
                &r["requests"]["memory"],
                &r["limits"]["memory"],
            ] {
                assert!(field.is_string(), "{overlay}/{service}: resources {r}");
            }
            // SIGTERM → drain → exit must fit in the grace period, with room to commit.
            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace");
            let drain = seconds(&env["HARBORHOOK_DELIVERY__DRAIN_TIMEOUT"]);
            let publish = seconds(&env["HARBORHOOK_GATEWAY__PUBLISH_TIMEOUT"]);
            let needed = match service {
                "delivery-consumer" => drain + 10,
                "ingest-gateway" => publish + 10,
                _ => 30,
            };
            assert!(grace >= needed, "{service}: grace {grace}s < {needed}s");
            let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
            let terms = anti.as_array().expect("anti-affinity");
            assert!(terms.iter().any(|t| {
                t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
                    && selects(
                        &t["podAffinityTerm"]["labelSelector"]["matchLabels"],
                        service,
                    )
            }));
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);

            let pdb = named(&docs, "PodDisruptionBudget", &name);
            assert!(selects(&pdb["spec"]["selector"]["matchLabels"], service));
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            let svc = named(&docs, "Service", &name);
            assert!(selects(&svc["spec"]["selector"], service));
            let svc_port = &svc["spec"]["ports"][0];
            assert_eq!(svc_port["targetPort"], port["name"]);
            let monitor = named(&docs, "ServiceMonitor", &name);
            assert!(selects(
                &monitor["spec"]["selector"]["matchLabels"],
                service
            ));
            assert_eq!(monitor["spec"]["endpoints"][0]["port"], svc_port["name"]);
            assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
        }
    }
}

/// Whether a NetworkPolicy egress rule lets a pod reach public addresses.
fn reaches_internet(rule: &Value) -> bool {
    let Some(to) = rule["to"].as_array() else {
        return true; // No `to`: every destination.
    };
    to.iter().any(|peer| {
        let cidr = str_of(&peer["ipBlock"]["cidr"]);
        if cidr.is_empty() {
            return false; // Pod and namespace selectors stay in the cluster.
        }
        let net: ipnet::IpNet = cidr.parse().expect("cidr");
        // Private, shared, and documentation ranges are not the internet.
        let local: [ipnet::IpNet; 5] = [
            "10.0.0.0/8".parse().expect("net"),
            "172.16.0.0/12".parse().expect("net"),
            "192.168.0.0/16".parse().expect("net"),
            "203.0.113.0/24".parse().expect("net"),
            "fc00::/7".parse().expect("net"),
        ];
        !local.iter().any(|l| l.contains(&net))
    })
}

fn policy_applies_to(policy: &Value, service: &str) -> bool {
    let selector = &policy["spec"]["podSelector"]["matchLabels"];
    selector["app.kubernetes.io/part-of"] == "harborhook"
        && (selector["app.kubernetes.io/name"].is_null()
            || selector["app.kubernetes.io/name"] == service)
}

#[test]
fn only_the_delivery_consumer_reaches_the_internet() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let policies = kind(&docs, "NetworkPolicy");
        // A default deny covers every Harborhook pod in both directions.
        assert!(policies.iter().any(|p| {
            p["spec"]["podSelector"]["matchLabels"]
                == json!({"app.kubernetes.io/part-of": "harborhook"})
                && p["spec"]["policyTypes"] == json!(["Ingress", "Egress"])
                && p["spec"]["egress"].is_null()
                && p["spec"]["ingress"].is_null()
        }));
        for service in SERVICES {
            let open: Vec<&str> = policies
                .iter()
                .filter(|p| policy_applies_to(p, service))
                .filter(|p| {
                    p["spec"]["egress"]
                        .as_array()
                        .is_some_and(|rules| rules.iter().any(reaches_internet))
                })
                .map(|p| str_of(&p["metadata"]["name"]))
                .collect();
            if service == "delivery-consumer" {
                assert_eq!(open, ["harborhook-delivery-consumer-internet"], "{overlay}");
            } else {
                assert!(
                    open.is_empty(),
                    "{overlay}: {service} reaches the internet via {open:?}"
                );
            }
        }
        // The delivery-consumer's internet excludes what the SSRF guard refuses.
        let internet = named(
            &docs,
            "NetworkPolicy",
            "harborhook-delivery-consumer-internet",
        );
        let blocks: Vec<&Value> = internet["spec"]["egress"][0]["to"]
            .as_array()
            .expect("to")
            .iter()
            .map(|p| &p["ipBlock"])
            .collect();
        let except: Vec<Value> = blocks
            .iter()
            .flat_map(|b| b["except"].as_array().cloned().unwrap_or_default())
            .collect();
        for private in [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "fc00::/7",
            "fe80::/10",
        ] {
            assert!(
                except.contains(&json!(private)),
                "{overlay}: {private} not excluded"
            );
        }
    }
}

#[test]
fn consumers_scale_on_their_own_group_and_topic() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let env = container_env(&docs, "delivery-consumer");
        let effective = config_check(&env);
        let partitions = |topic: &str| {
            effective["topics"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["name"] == topic))
                .and_then(|t| t["partitions"].as_i64())
                .unwrap_or_else(|| panic!("{topic} not in the catalog"))
        };
        let workers: i64 = env["HARBORHOOK_FANOUT__WORKERS"].parse().expect("workers");
        let scaled = kind(&docs, "ScaledObject");
        let hpas = kind(&docs, "HorizontalPodAutoscaler");
        match overlay {
            "dev" => assert!(scaled.is_empty() && hpas.is_empty()),
            "production" => assert_eq!(scaled.len(), 2),
            _ => assert!(scaled.is_empty()),
        }
        for so in &scaled {
            let target = str_of(&so["spec"]["scaleTargetRef"]["name"]);
            let service = target.trim_start_matches("harborhook-");
            named(&docs, "Deployment", target);
            let access = &effective["kafka_access"][service];
            let trigger = so["spec"]["triggers"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["type"] == "kafka"))
                .expect("a kafka trigger");
            let m = &trigger["metadata"];
            assert_eq!(m["consumerGroup"], access["group"], "{service}");
            assert_eq!(json!([m["topic"]]), access["reads"], "{service}");
            let auth = str_of(&trigger["authenticationRef"]["name"]);
            let auth = named(&docs, "TriggerAuthentication", auth);
            assert_eq!(auth["spec"]["secretTargetRef"][0]["name"], target);
            // More consumers than partitions would idle.
            let per_pod = if service == "fanout-processor" {
                workers
            } else {
                1
            };
            let max = so["spec"]["maxReplicaCount"].as_i64().expect("max");
            assert!(
                max * per_pod <= partitions(str_of(&m["topic"])),
                "{service}: {max}"
            );
            assert!(so["spec"]["fallback"]["replicas"].as_i64().is_some());
        }
        if overlay == "production-hpa" {
            for service in ["fanout-processor", "delivery-consumer", "ingest-gateway"] {
                let hpa = named(
                    &docs,
                    "HorizontalPodAutoscaler",
                    &format!("harborhook-{service}"),
                );
                assert_eq!(
                    hpa["spec"]["scaleTargetRef"]["name"],
                    format!("harborhook-{service}")
                );
            }
        }
    }
}
