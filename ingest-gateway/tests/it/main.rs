//! The gateway's integration tests: the real service in-process on port 0, with a schema and
//! topic prefix of its own (common/), against the real PostgreSQL and broker.

mod auth;
mod broker_outage;
mod common;
mod idp_tokens;
mod jwks_hostile;
mod jwks_url;
mod management;
mod migration_doc;
mod openapi;
mod ops;
mod publish;
mod reads;
mod schemathesis;
