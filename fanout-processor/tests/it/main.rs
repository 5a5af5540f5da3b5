//! The fan-out's integration tests: the real service in-process, with a schema, topic prefix and
//! group of its own (common/), against the real PostgreSQL and broker.

mod common;
mod crash;
mod fanout;
mod gateway_path;
mod ops;
