//! `harborctl events produce`: write event envelopes to `events` straight from JSON lines, as
//! a direct producer would (for local testing and for people integrating a producer).

#![allow(clippy::print_stdout)] // A CLI's output is its job.

use std::io::BufRead as _;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use serde_json::json;
use shared::Config;
use shared::kafka::TopicCatalog;

/// Sends each line of standard input as one record. The key is the envelope's `ordering_key`,
/// else its `event_id`; a line that is not an envelope is sent as is (to try the invalid path).
pub async fn produce(config: &Config, json_out: bool) -> anyhow::Result<()> {
    let producer = shared::kafka::producer(&config.kafka, "harborctl")?;
    let topic = TopicCatalog::new(config).events().to_owned();
    let (mut sent, mut not_envelopes) = (0u64, 0u64);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let key = value.as_ref().and_then(|v| {
            v["ordering_key"]
                .as_str()
                .or_else(|| v["event_id"].as_str())
                .map(str::to_owned)
        });
        if serde_json::from_str::<shared::records::EventEnvelope>(&line).is_err() {
            not_envelopes += 1;
        }
        let mut record = FutureRecord::to(&topic).payload(line.as_bytes());
        if let Some(key) = &key {
            record = record.key(key.as_bytes());
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        sent += 1;
    }
    if json_out {
        println!(
            "{}",
            json!({"topic": topic, "sent": sent, "not_envelopes": not_envelopes})
        );
    } else {
        println!("sent {sent} record(s) to {topic}");
        if not_envelopes > 0 {
            println!(
                "{not_envelopes} of them are not valid envelopes and will land on the invalid-events topic"
            );
        }
    }
    Ok(())
}
