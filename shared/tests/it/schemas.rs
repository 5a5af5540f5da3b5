//! The Rust record types and the JSON Schemas under `schemas/` agree: every serialised sample
//! validates, every schema property is produced by the Rust type, and what the schema rejects
//! (missing fields, wrong id prefixes, unknown versions) Rust rejects too, where Rust is strict.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{TimeZone as _, Utc};
use serde_json::{Value, json};
use shared::domain::ErrorClass;
use shared::ids::{DeliveryId, EndpointId, EventId, TenantId};
use shared::records::{
    AttemptSummary, DeadLetterReason, DeadLetterRecord, DeliveryRecord, EventEnvelope,
    InvalidEventRecord, ReplayInfo, RetryRecord, SchemaVersion, SourcePosition,
};

fn schema(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema(name))
        .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

fn assert_valid(v: &jsonschema::Validator, sample: &Value) {
    let errors: Vec<String> = v
        .iter_errors(sample)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "sample rejected: {errors:?}\n{sample:#}");
}

fn assert_invalid(v: &jsonschema::Validator, sample: &Value, why: &str) {
    assert!(
        !v.is_valid(sample),
        "schema accepted a sample with {why}: {sample:#}"
    );
}

/// Every property a schema object declares appears in the full sample, recursively: a field
/// renamed or removed in Rust leaves the schema describing something no writer produces.
fn assert_schema_properties_present(schema_root: &Value, node: &Value, sample: &Value, path: &str) {
    let node = resolve(schema_root, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        let declared: BTreeSet<&str> = props.keys().map(String::as_str).collect();
        let obj = sample
            .as_object()
            .unwrap_or_else(|| panic!("{path} is not an object"));
        let produced: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        let missing: Vec<_> = declared.difference(&produced).collect();
        assert!(
            missing.is_empty(),
            "{path}: schema declares {missing:?} but Rust does not write them"
        );
        for (key, sub) in props {
            let value = &obj[key];
            if value.is_object() && key != "payload" {
                assert_schema_properties_present(schema_root, sub, value, &format!("{path}.{key}"));
            }
            if let (Some(items), Some(first)) =
                (sub.get("items"), value.as_array().and_then(|a| a.first()))
            {
                assert_schema_properties_present(
                    schema_root,
                    items,
                    first,
                    &format!("{path}.{key}[0]"),
                );
            }
        }
    }
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            resolve(
                root,
                root.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => node,
    }
}

fn full_delivery() -> DeliveryRecord {
    let event_id = EventId::new();
    let endpoint_id = EndpointId::new();
    let at = Utc
        .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
        .single()
        .expect("time");
    DeliveryRecord {
        schema_version: SchemaVersion::CURRENT,
        delivery_id: DeliveryId::derive(&event_id, &endpoint_id),
        event_id,
        tenant_id: TenantId::new(),
        endpoint_id,
        event_type: "invoice.paid".parse().expect("event type"),
        payload: shared::payload::Payload::from_value(
            &json!({"amount": 42, "nested": {"a": [1, 2]}}),
        ),
        occurred_at: at,
        attempt: 3,
        attempts: vec![
            AttemptSummary {
                attempt: 1,
                at,
                duration_ms: 120,
                status_code: Some(503),
                error_class: Some(ErrorClass::Http5xx),
            },
            AttemptSummary {
                attempt: 2,
                at,
                duration_ms: 5000,
                status_code: None,
                error_class: Some(ErrorClass::Timeout),
            },
        ],
        replay: Some(ReplayInfo {
            replay_id: "rpl_1".into(),
            reason: "endpoint fixed".into(),
            requested_by: "ops@example.com".into(),
            replayed_at: at,
        }),
        deferred_since: Some(at),
    }
}

fn full_envelope() -> EventEnvelope {
    EventEnvelope {
        schema_version: SchemaVersion::CURRENT,
        event_id: EventId::new(),
        tenant_id: TenantId::new(),
        event_type: "invoice.paid".parse().expect("event type"),
        payload: shared::payload::Payload::from_value(&json!({"id": "in_1"})),
        occurred_at: Utc::now(),
        idempotency_key: Some("key-1".into()),
        ordering_key: Some("customer-7".into()),
    }
}

fn source() -> SourcePosition {
    SourcePosition {
        topic: "harborhook.deliveries".into(),
        partition: 2,
        offset: 1234,
    }
}

#[test]
fn event_envelope_agrees_with_its_schema() {
    let v = validator("event-envelope.schema.json");
    let full = serde_json::to_value(full_envelope()).expect("serialise");
    assert_valid(&v, &full);
    assert_schema_properties_present(
        &schema("event-envelope.schema.json"),
        &schema("event-envelope.schema.json"),
        &full,
        "envelope",
    );
    let minimal = serde_json::to_value(EventEnvelope {
        idempotency_key: None,
        ordering_key: None,
        ..full_envelope()
    })
    .expect("serialise");
    assert_valid(&v, &minimal);

    // What the schema rejects, the Rust type (the envelope is strict) rejects too.
    let mut cases: Vec<(Value, &str)> = Vec::new();
    for field in [
        "schema_version",
        "event_id",
        "tenant_id",
        "event_type",
        "payload",
        "occurred_at",
    ] {
        let mut s = full.clone();
        s.as_object_mut().expect("object").remove(field);
        cases.push((s, field));
    }
    let mut s = full.clone();
    s["event_id"] = json!(EndpointId::new().to_string());
    cases.push((s, "an endpoint id as event id"));
    let mut s = full.clone();
    s["schema_version"] = json!(2);
    cases.push((s, "an unknown schema version"));
    let mut s = full.clone();
    s["payload"] = json!([1, 2]);
    cases.push((s, "an array payload"));
    let mut s = full.clone();
    s["event_type"] = json!("has space");
    cases.push((s, "a bad event type"));
    let mut s = full.clone();
    s["surprise"] = json!(true);
    cases.push((s, "an unknown field"));
    for (sample, why) in cases {
        assert_invalid(&v, &sample, why);
        assert!(
            serde_json::from_value::<EventEnvelope>(sample).is_err(),
            "Rust accepted {why}"
        );
    }
    assert_eq!(
        serde_json::from_value::<EventEnvelope>(full)
            .expect("parse back")
            .ordering_key
            .as_deref(),
        Some("customer-7")
    );
}

#[test]
fn delivery_and_retry_records_agree_with_their_schemas() {
    let delivery_schema = schema("delivery.schema.json");
    let v = validator("delivery.schema.json");
    let full = serde_json::to_value(full_delivery()).expect("serialise");
    assert_valid(&v, &full);
    assert_schema_properties_present(&delivery_schema, &delivery_schema, &full, "delivery");
    let first = DeliveryRecord {
        attempt: 1,
        attempts: vec![],
        replay: None,
        deferred_since: None,
        ..full_delivery()
    };
    assert_valid(&v, &serde_json::to_value(&first).expect("serialise"));
    let mut bad = full.clone();
    bad["attempt"] = json!(0);
    assert_invalid(&v, &bad, "attempt 0");
    let mut bad = full.clone();
    bad["delivery_id"] = json!(EventId::new().to_string());
    assert_invalid(&v, &bad, "an event id as delivery id");
    assert!(serde_json::from_value::<DeliveryRecord>(bad).is_err());
    let mut bad = full.clone();
    bad["attempts"][0]["error_class"] = json!("meteor");
    assert_invalid(&v, &bad, "an unknown error class");
    assert!(serde_json::from_value::<DeliveryRecord>(bad).is_err());

    let retry_schema = schema("retry.schema.json");
    let v = validator("retry.schema.json");
    let retry = RetryRecord {
        schema_version: SchemaVersion::CURRENT,
        due_at: Utc::now(),
        tier: "5m".into(),
        delivery: full_delivery(),
    };
    let sample = serde_json::to_value(&retry).expect("serialise");
    assert_valid(&v, &sample);
    assert_schema_properties_present(&retry_schema, &retry_schema, &sample, "retry");
    let mut bad = sample.clone();
    bad["tier"] = json!("5 minutes");
    assert_invalid(&v, &bad, "a tier name with a space");
    let mut bad = sample;
    bad.as_object_mut().expect("object").remove("due_at");
    assert_invalid(&v, &bad, "no due_at");
    assert!(serde_json::from_value::<RetryRecord>(bad).is_err());
}

#[test]
fn dead_letter_record_agrees_with_its_schema() {
    let root = schema("dead-letter.schema.json");
    let v = validator("dead-letter.schema.json");
    let record = DeadLetterRecord {
        schema_version: SchemaVersion::CURRENT,
        reason: DeadLetterReason::Exhausted,
        dead_lettered_at: Utc::now(),
        delivery: full_delivery(),
        last_status: Some(500),
        error_class: Some(ErrorClass::Http5xx),
        response_body: Some(shared::records::response_excerpt(
            "x".repeat(5000).as_bytes(),
        )),
        error: Some("the broker refused the record".into()),
        source: source(),
    };
    let sample = serde_json::to_value(&record).expect("serialise");
    assert_valid(&v, &sample);
    assert_schema_properties_present(&root, &root, &sample, "dead_letter");
    let mut bad = sample.clone();
    bad["response_body"] = json!("x".repeat(1025));
    assert_invalid(&v, &bad, "an over-long response body");
    let mut bad = sample.clone();
    bad["reason"] = json!("bored");
    assert_invalid(&v, &bad, "an unknown reason");
    assert!(serde_json::from_value::<DeadLetterRecord>(bad).is_err());
    let mut bad = sample;
    bad["source"]["offset"] = json!(-1);
    assert_invalid(&v, &bad, "a negative offset");
}

#[test]
fn invalid_event_record_agrees_with_its_schema() {
    let root = schema("invalid-event.schema.json");
    let v = validator("invalid-event.schema.json");
    let record = InvalidEventRecord {
        schema_version: SchemaVersion::CURRENT,
        reason: "payload: expected an object".into(),
        received_at: Utc::now(),
        source: SourcePosition {
            topic: "harborhook.events".into(),
            partition: 0,
            offset: 7,
        },
        key_base64: Some("a2V5".into()),
        key_truncated: true,
        value_base64: "bm90IGpzb24=".into(),
        value_truncated: true,
        value_bytes: 8,
    };
    let sample = serde_json::to_value(&record).expect("serialise");
    assert_valid(&v, &sample);
    assert_schema_properties_present(&root, &root, &sample, "invalid_event");
    let mut bad = sample;
    bad.as_object_mut().expect("object").remove("value_base64");
    assert_invalid(&v, &bad, "no value");
    assert!(serde_json::from_value::<InvalidEventRecord>(bad).is_err());
}

#[test]
fn every_schema_file_is_covered_by_a_test() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("schemas dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".schema.json"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "dead-letter.schema.json",
            "delivery.schema.json",
            "event-envelope.schema.json",
            "invalid-event.schema.json",
            "retry.schema.json",
        ]
    );
}
