//! Harborhook's shared foundation: configuration, typed ids, domain and record types (and how
//! records go on the wire), Kafka and PostgreSQL clients, the rows several crates share
//! (`store`: endpoints, attempts, replays), telemetry, the ops endpoints and graceful shutdown.

pub mod asymmetric;
pub mod config;
pub mod config_watch;
pub mod db;
pub mod domain;
pub mod ids;
pub mod jwt;
pub mod kafka;
pub mod liveness;
pub mod ops;
pub mod payload;
pub mod records;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod text;
pub mod tls;
pub mod versioned;

pub use config::Config;

/// `error: cause: cause`, for a log line or a CLI message that keeps the whole chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs a blocking librdkafka call (metadata, offsets) without stalling the async workers where
/// the runtime allows it; on a current-thread runtime (some tests) it simply runs inline.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
