//! The retry-scheduler's integration tests: the real service in-process against the real
//! PostgreSQL and broker.

mod ops;
mod timing;
