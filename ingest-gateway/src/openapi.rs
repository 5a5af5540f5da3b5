//! The OpenAPI 3.1 document (`schemas/openapi.yaml`), compiled in and served as JSON at
//! `/openapi.json`. `tests/it/openapi.rs` checks it against the router route by route.

use std::sync::OnceLock;

static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
const YAML: &str = include_str!("../../schemas/openapi.yaml");

pub fn document() -> &'static serde_json::Value {
    DOCUMENT.get_or_init(|| {
        // The YAML is checked by a test; a broken document must not take the API down.
        serde_norway::from_str(YAML).unwrap_or_else(|e| {
            tracing::error!(error = %e, "schemas/openapi.yaml does not parse");
            serde_json::json!({"openapi": "3.1.0", "info": {"title": "Harborhook API", "version": "unavailable"}, "paths": {}})
        })
    })
}
