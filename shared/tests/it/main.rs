//! shared's integration tests: configuration loading, Kafka clients, liveness, migrations,
//! OTLP export, the receiver examples in docs/ and the JSON Schemas of the records, against the
//! real PostgreSQL and broker.

mod config;
mod kafka;
mod liveness;
mod migrations;
mod otlp;
mod postgres_tls;
mod protocol;
mod receiver_examples;
mod schemas;
