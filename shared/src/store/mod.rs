//! The rows more than one crate reads or writes, read and written in one place: endpoints with
//! their secrets (the gateway's API, the delivery-consumer's cache), a delivery's attempts (the
//! API, `harborctl dlq show`) and replays (the API, `harborctl dlq replay`, `harborctl events
//! replay`). Each crate's own rows stay in that crate.

pub mod attempts;
pub mod endpoints;
pub mod replay;

/// A row that cannot be what its table promises (a column of the wrong type, a value the API
/// could not have written): the one row is the problem, not the database.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("reading a column")]
    Column(#[from] tokio_postgres::Error),
    #[error("column {column}: {reason}")]
    Invalid {
        column: &'static str,
        reason: String,
    },
}

impl RowError {
    fn invalid(column: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            column,
            reason: reason.to_string(),
        }
    }
}
