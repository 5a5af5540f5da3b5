//! The workspace's TLS for HTTP clients: rustls with the ring provider (outbound webhooks, the
//! JWKS, OTLP export), and the extra CA bundles operators name for servers behind a private CA
//! (`delivery.extra_ca_file`, `gateway.auth.jwks_ca_file`, `telemetry.otlp_ca_file`).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("reading {key} {path}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {path} holds no PEM certificate")]
    NoCertificate { key: &'static str, path: String },
}

/// Installs ring as the process's rustls provider (reqwest's rustls backend needs one); a
/// second call is a no-op.
pub fn install_provider() {
    // An error means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder on the workspace's one TLS stack (rustls, ring). Every reqwest client is
/// built here (clippy.toml disallows `reqwest::Client::new` and `::builder` elsewhere): reqwest's
/// rustls backend panics when no provider is installed, so the provider must be installed first,
/// and one place is easier to keep right than each caller.
#[allow(clippy::disallowed_methods)]
pub fn http_client() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder().tls_backend_rustls()
}

/// [`http_client`] for the blocking client (the OTLP exporter's).
#[allow(clippy::disallowed_methods)]
pub fn blocking_http_client() -> reqwest::blocking::ClientBuilder {
    install_provider();
    reqwest::blocking::Client::builder().tls_backend_rustls()
}

/// The certificates of the CA bundle `key` names, trusted besides the system's roots; none when
/// unset. A file that cannot be read or holds no certificate is an error at start, rather than
/// every request failing later.
pub fn extra_roots(
    key: &'static str,
    path: Option<&Path>,
) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        key,
        path: shown.clone(),
        source,
    })?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(CaFileError::NoCertificate { key, path: shown }),
    }
}
