//! Consumer lag as the services report it in their metrics.

use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::{Consumer, ConsumerContext};

/// Per assigned partition: `(topic, partition, lag)`, the high watermark minus the next offset
/// to read (or minus the low watermark before the first fetch). Makes a metadata round trip
/// per partition: call it from a timer, off any hot path.
pub fn partition_lag<X: ConsumerContext, C: Consumer<X>>(consumer: &C) -> Vec<(String, i32, i64)> {
    let Ok(assignment) = consumer.assignment() else {
        return Vec::new();
    };
    let positions = consumer.position().unwrap_or_default();
    let mut out = Vec::new();
    for e in assignment.elements() {
        let Ok((low, high)) = crate::blocking(|| {
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
        }) else {
            continue;
        };
        let next = positions
            .find_partition(e.topic(), e.partition())
            .and_then(|p| match p.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(low);
        out.push((e.topic().to_owned(), e.partition(), (high - next).max(0)));
    }
    out
}

/// How often the services measure their lag: often enough for an alert and for KEDA's polling,
/// rarely enough that the per-partition metadata round trips stay negligible.
pub const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Until `shutdown`: every [`LAG_INTERVAL`], measures `consumer`'s lag per assigned partition
/// (off the async threads: [`partition_lag`] blocks) and hands each `(partition, lag)` to `set`,
/// which writes the service's gauge.
pub async fn report_lag<X, C>(
    consumer: std::sync::Arc<C>,
    shutdown: tokio_util::sync::CancellationToken,
    mut set: impl FnMut(i32, i64),
) where
    X: ConsumerContext,
    C: Consumer<X> + Send + Sync + 'static,
{
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = consumer.clone();
        let Ok(lags) = tokio::task::spawn_blocking(move || partition_lag(&*c)).await else {
            continue;
        };
        for (_, partition, lag) in lags {
            set(partition, lag);
        }
    }
}
