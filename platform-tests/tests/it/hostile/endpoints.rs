//! Attacks through what a customer endpoint does: never answer, answer garbage, huge or slow,
//! stand behind an address the SSRF guard refuses.

use std::time::Duration;

use crate::common::hostile::{Answer, status_of};
use reqwest::Method;
use serde_json::{Value, json};

use super::{Suite, event_id};

/// A receiver answering 500 with NUL and invalid UTF-8 in its body: the attempt is stored with
/// the body sanitised (U+FFFD), the delivery retried as usual.
pub(super) async fn receiver_body_with_nul(s: &Suite) -> anyhow::Result<()> {
    s.endpoint("nul500", "nul500.*", json!({})).await?;
    s.receiver
        .answer("nul500", Answer::Status(500, b"bad\0body\xff".to_vec()));
    let (status, v) = s
        .publish_raw(r#"{"event_type":"nul500.x","payload":{"a":1}}"#)
        .await?;
    anyhow::ensure!(status == 202, "{status} {v}");
    let event = event_id(&v);
    s.eventually(15, "the attempt recorded", || async {
        Ok(s.attempts(&event)
            .await?
            .iter()
            .any(|a| a["status_code"] == 500 && a["response_excerpt"] == "bad\u{FFFD}body\u{FFFD}"))
    })
    .await
}

/// An endpoint that accepts connections and never answers, with the largest caps the API
/// allows, and hundreds of records: it holds only its share of the budgets.
pub(super) async fn never_answering_endpoint(s: &Suite) -> anyhow::Result<()> {
    s.endpoint(
        "hang",
        "hang.*",
        json!({"max_in_flight": 1000, "timeout_ms": 300000}),
    )
    .await?;
    s.receiver.answer("hang", Answer::Hang);
    let events: Vec<Value> = (0..450)
        .map(|n| json!({"event_type": "hang.x", "payload": {"n": n}}))
        .collect();
    let (st, v) = status_of(
        &s.p,
        Method::POST,
        &format!("/v1/tenants/{}/events:batch", s.attacker),
        &s.token,
        Some(json!({"events": events})),
    )
    .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    // Let the records reach the consumer before the victim's check below.
    s.receiver
        .wait_for("hang", Duration::from_secs(10), |_| true)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Receivers that answer huge, slow, binary, with an absurd status, never finish the body, or
/// never answer: the status decides (a 2xx whose body never ends is delivered, its body cut at
/// the timeout), the body is kept sanitised and bounded, and silence is a timeout.
pub(super) async fn hostile_receivers(s: &Suite) -> anyhow::Result<()> {
    s.endpoint("huge", "rx.*", json!({})).await?;
    s.endpoint("drip", "rx.*", json!({"timeout_ms": 1000}))
        .await?;
    s.endpoint("silent", "rx.*", json!({"timeout_ms": 1000}))
        .await?;
    s.endpoint("binary", "rx.*", json!({})).await?;
    s.endpoint("weird", "rx.*", json!({})).await?;
    s.receiver.answer("huge", Answer::Huge(8 * 1024 * 1024));
    s.receiver.answer("drip", Answer::Drip);
    s.receiver.answer("silent", Answer::Hang);
    s.receiver.answer(
        "binary",
        Answer::Status(502, (0u8..=255).cycle().take(5000).collect()),
    );
    s.receiver
        .answer("weird", Answer::Status(799, b"?".to_vec()));
    let (st, v) = s
        .publish_raw(r#"{"event_type":"rx.x","payload":{"r":1}}"#)
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let event = event_id(&v);
    let result = s
        .eventually(15, "every receiver's first attempt recorded", || async {
            let attempts = s.attempts(&event).await?;
            let classes: Vec<&str> = attempts
                .iter()
                .map(|a| a["error_class"].as_str().unwrap_or("none"))
                .collect();
            let excerpts_bounded = attempts.iter().all(|a| {
                a["response_excerpt"]
                    .as_str()
                    .is_none_or(|e| e.len() <= 1024 && !e.contains('\0'))
            });
            Ok(attempts.len() >= 5
                && excerpts_bounded
                && classes.contains(&"timeout")
                && classes.contains(&"http5xx")
                && classes.iter().filter(|c| **c == "none").count() >= 2)
        })
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let seen = s.attempts(&event).await.unwrap_or_default();
            Err(anyhow::anyhow!("{e:#}; attempts: {seen:?}"))
        }
    }
}

/// Targets the SSRF guard refuses: the delivery fails as `forbidden`, nothing is sent.
pub(super) async fn ssrf_targets(s: &Suite) -> anyhow::Result<()> {
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/x",
        "http://0.0.0.0:9/",
    ] {
        s.endpoint_at(url, "ssrf.x", json!({})).await?;
    }
    let (st, v) = s
        .publish_raw(r#"{"event_type":"ssrf.x","payload":{}}"#)
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let event = event_id(&v);
    s.eventually(15, "refused as forbidden", || async {
        let attempts = s.attempts(&event).await?;
        Ok(attempts.len() >= 3 && attempts.iter().all(|a| a["error_class"] == "forbidden"))
    })
    .await
}
