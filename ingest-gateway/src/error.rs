//! `ApiError`: every failure an API handler can return, mapped to a status code and the body
//! `{"error": {"code": "...", "message": "...", "details": [...]}}`.
//!
//! Client mistakes are 4xx with a message that says what to fix. Only our own failures are 5xx,
//! and for those the cause chain goes to the log (not to the client).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        details: Vec<Value>,
    },
    #[error("{0}")]
    Unauthorized(String),
    /// With the methods the route takes (the `Allow` header).
    #[error("this route does not take that method")]
    MethodNotAllowed(Vec<&'static str>),
    #[error("this operation needs the operator scope")]
    Forbidden,
    /// Unknown ids, and ids of another tenant (404, not 403, so ids do not leak).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("expected content-type application/json")]
    UnsupportedMediaType,
    #[error("{message}")]
    Unprocessable {
        message: String,
        details: Vec<Value>,
    },
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A value that parsed but means nothing valid (a bad event type, URL, pattern).
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::Unprocessable {
            message: format!("{field}: {message}"),
            details: vec![json!({"field": field, "message": message.to_string()})],
        }
    }

    /// A client's free-text field checked for what can be stored and shown (shared::text).
    pub fn text(
        field: &str,
        value: &str,
        max: usize,
        lines: shared::text::Lines,
    ) -> Result<(), Self> {
        shared::text::check(value, max, lines).map_err(|e| Self::invalid(field, e))
    }

    /// As [`ApiError::text`], for a field that may be empty.
    pub fn optional_text(
        field: &str,
        value: &str,
        max: usize,
        lines: shared::text::Lines,
    ) -> Result<(), Self> {
        shared::text::check_optional(value, max, lines).map_err(|e| Self::invalid(field, e))
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(e))
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<shared::db::DbError> for ApiError {
    fn from(e: shared::db::DbError) -> Self {
        // A pool that cannot hand out a connection is an outage of a dependency, not a bug:
        // answer 503 so clients retry.
        match e {
            shared::db::DbError::Pool(_) => Self::Unavailable {
                message: "the database is unavailable".into(),
                retry_after_secs: 1,
            },
            other => Self::internal(other),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A value the database refused (a data exception, a constraint): the handlers check
        // values before they get here, so this is the net behind them. It is the request's
        // fault, not ours: 422 naming what was refused, never a 500 (and logged, since a check
        // at the door is missing).
        if shared::db::permanent(&e)
            && let Some(db) = e.as_db_error()
        {
            tracing::warn!(error = %shared::error_chain(&e), "the database refused a value the API let through");
            return Self::Unprocessable {
                message: format!("the database refused a value: {}", db.message()),
                details: vec![json!({"sqlstate": db.code().code()})],
            };
        }
        // Away, restarting, overloaded or a lost race (shared::db::unavailable): retry.
        if shared::db::unavailable(&e) {
            return Self::Unavailable {
                message: "the database is unavailable or busy; retry".into(),
                retry_after_secs: 1,
            };
        }
        Self::internal(e)
    }
}

impl From<shared::store::RowError> for ApiError {
    fn from(e: shared::store::RowError) -> Self {
        match e {
            shared::store::RowError::Column(e) => e.into(),
            // A stored row the API could not have written: ours, not the request's.
            e @ shared::store::RowError::Invalid { .. } => Self::internal(e),
        }
    }
}

impl From<shared::store::replay::ReplayError> for ApiError {
    fn from(e: shared::store::replay::ReplayError) -> Self {
        use shared::store::replay::ReplayError as E;
        match e {
            E::Text { field, source } => Self::invalid(field, source),
            E::Database(e) => e.into(),
            E::Unavailable { .. } => {
                tracing::warn!(error = %shared::error_chain(&e), "replay produce failed");
                Self::Unavailable {
                    message: "the delivery log is unavailable; retry".into(),
                    retry_after_secs: 2,
                }
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        shared::db::DbError::Pool(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %shared::error_chain(&self), status = status.as_u16(), "request failed");
        }
        let details = match &self {
            Self::BadRequest { details, .. } | Self::Unprocessable { details, .. } => {
                details.clone()
            }
            _ => Vec::new(),
        };
        let body =
            json!({"error": {"code": code, "message": self.to_string(), "details": details}});
        let mut response = (status, axum::Json(body)).into_response();
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs }
            | Self::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Self::MethodNotAllowed(allowed) = &self
            && let Ok(value) = HeaderValue::from_str(&allowed.join(", "))
        {
            response.headers_mut().insert(header::ALLOW, value);
        }
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
