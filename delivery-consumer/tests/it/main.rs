//! The delivery-consumer's integration tests: the real service in-process, real HTTP receivers
//! on loopback (common/), against the real PostgreSQL and broker.

mod common;
mod crash;
mod delivery;
mod ops;
mod outcomes;
mod rebalance;
mod tls;
