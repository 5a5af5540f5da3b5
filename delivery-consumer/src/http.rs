//! The outbound HTTP client and what one attempt's response means.
//!
//! reqwest with rustls (ring), pooled connections, HTTP/1.1 and HTTP/2 (ALPN), no proxies, no
//! redirects, the SSRF resolver (ssrf.rs). reqwest sets the connect timeout per client, so there
//! is one client per connect-timeout bucket (rounded up to 250 ms: at most 240 clients, in
//! practice a handful); the total timeout is set per request. The response body is read up to
//! `delivery.max_response_bytes` and then the connection is dropped, so a receiver streaming
//! gigabytes costs nothing; the first 1 KiB is kept for the attempt record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use shared::config::DeliveryConfig;
use shared::domain::ErrorClass;
use shared::records::RESPONSE_EXCERPT_MAX;

use crate::ssrf::{GuardedResolver, Policy, Refused};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid SSRF allow-list")]
    Allow(#[from] ipnet::AddrParseError),
    #[error("building the HTTP client")]
    Build(#[from] reqwest::Error),
    #[error(transparent)]
    ExtraCa(#[from] shared::tls::CaFileError),
}

#[derive(Clone)]
pub struct Http {
    policy: Policy,
    user_agent: String,
    max_response_bytes: usize,
    /// `delivery.extra_ca_file`, trusted besides the system's roots.
    extra_roots: Vec<reqwest::Certificate>,
    clients: Arc<Mutex<HashMap<u32, reqwest::Client>>>,
}

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub status: Option<u16>,
    pub error_class: Option<ErrorClass>,
    /// The transport error, for the attempt record and logs.
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub excerpt: Option<String>,
    pub duration: Duration,
}

const BUCKET_MS: u32 = 250;

impl Http {
    pub fn new(config: &DeliveryConfig) -> Result<Self, ClientError> {
        shared::tls::install_provider();
        let http = Self {
            policy: Policy::new(&config.ssrf_allow)?,
            user_agent: config.user_agent.clone(),
            max_response_bytes: config.max_response_bytes,
            extra_roots: shared::tls::extra_roots(
                "delivery.extra_ca_file",
                config.extra_ca_file.as_deref(),
            )?,
            clients: Arc::default(),
        };
        // Fail at start, not on the first delivery, if the client cannot be built.
        http.client(5_000)?;
        Ok(http)
    }

    fn client(&self, connect_timeout_ms: u32) -> Result<reqwest::Client, reqwest::Error> {
        let bucket = connect_timeout_ms.div_ceil(BUCKET_MS).max(1) * BUCKET_MS;
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(&bucket) {
            return Ok(c.clone());
        }
        let client = shared::tls::http_client()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: self.policy.clone(),
            }))
            .connect_timeout(Duration::from_millis(u64::from(bucket)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .user_agent(&self.user_agent)
            .tls_certs_merge(self.extra_roots.iter().cloned())
            .build()?;
        clients.insert(bucket, client.clone());
        Ok(client)
    }

    /// Sends one POST and classifies the result; never fails (a failure is an outcome).
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
        connect_timeout_ms: u32,
        timeout_ms: u32,
    ) -> Exchange {
        let started = Instant::now();
        let failed = |class, error: String| Exchange {
            status: None,
            error_class: Some(class),
            error: Some(
                shared::text::cut(&shared::text::storable(&error), shared::records::ERROR_MAX)
                    .to_owned(),
            ),
            retry_after: None,
            excerpt: None,
            duration: started.elapsed(),
        };
        let url: reqwest::Url = match url.parse() {
            Ok(u) => u,
            Err(e) => return failed(ErrorClass::Connect, format!("invalid URL: {e}")),
        };
        if let Err(refused) = self.policy.check_url(&url) {
            return failed(ErrorClass::Forbidden, refused.to_string());
        }
        let client = match self.client(connect_timeout_ms) {
            Ok(c) => c,
            Err(e) => return failed(ErrorClass::Connect, shared::error_chain(&e)),
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        let sent = client
            .post(url)
            .headers(headers)
            .body(body)
            .timeout(timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return failed(transport_class(&e), shared::error_chain(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut kept = Vec::new();
        let mut read = 0usize;
        // The request timeout covers the body too; a read error only loses the excerpt.
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = RESPONSE_EXCERPT_MAX.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Whatever the receiver sent (binary, NUL, invalid UTF-8) is kept as storable text.
        let excerpt = (!kept.is_empty()).then(|| shared::records::response_excerpt(&kept));
        Exchange {
            status: Some(status),
            error_class: status_class(status),
            error: None,
            retry_after,
            excerpt,
            duration: started.elapsed(),
        }
    }
}

/// 2xx is success; 410 Gone, 429, 3xx (redirects are not followed), other 4xx and 5xx fail.
pub fn status_class(status: u16) -> Option<ErrorClass> {
    match status {
        200..=299 => None,
        410 => Some(ErrorClass::Gone),
        429 => Some(ErrorClass::RateLimited),
        300..=399 => Some(ErrorClass::Redirect),
        500..=599 => Some(ErrorClass::Http5xx),
        _ => Some(ErrorClass::Http4xx),
    }
}

fn transport_class(e: &reqwest::Error) -> ErrorClass {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<Refused>() {
            return ErrorClass::Forbidden;
        }
        source = err.source();
    }
    if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connect
    }
}

/// `Retry-After` as delay-seconds or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(status_class(200), None);
        assert_eq!(status_class(204), None);
        assert_eq!(status_class(410), Some(ErrorClass::Gone));
        assert_eq!(status_class(429), Some(ErrorClass::RateLimited));
        assert_eq!(status_class(301), Some(ErrorClass::Redirect));
        assert_eq!(status_class(503), Some(ErrorClass::Http5xx));
        assert_eq!(status_class(400), Some(ErrorClass::Http4xx));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(&soon).expect("date");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
