//! Request extractors that turn every malformed input into a clear `ApiError`: JSON bodies
//! (415 for another content type, 413 over the size limit, 400 naming the unknown field or the
//! path of a wrongly typed value, 400 for a body that is not UTF-8) and query strings (400 for
//! an unknown or malformed parameter, and for a control character in any value: no query
//! parameter can mean one, and PostgreSQL text cannot hold NUL).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"))
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// The configured body limit, put in request extensions so errors can quote it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Parses `bytes` as `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(
                "malformed_json",
                format!("request body is not valid JSON: {inner}"),
            );
        }
        let message = inner.to_string();
        let field = if path == "." { None } else { Some(path) };
        let code = if message.starts_with("unknown field") {
            "unknown_field"
        } else {
            "invalid_request"
        };
        let text = match &field {
            Some(f) => format!("{f}: {message}"),
            None => message.clone(),
        };
        ApiError::BadRequest {
            code,
            message: text,
            details: vec![json!({"field": field, "message": message})],
        }
    })
}

/// A query string of type `T`; unknown or malformed parameters are a 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            if let Some(c) = key.chars().chain(value.chars()).find(|c| c.is_control()) {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "query parameter `{}`: control character U+{:04X} not allowed",
                        key.chars().filter(|c| !c.is_control()).collect::<String>(),
                        u32::from(c)
                    ),
                ));
            }
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))
    }
}
