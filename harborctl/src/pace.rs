//! What replays take from the command line besides their selection: a send rate (`--rate`)
//! and points in time (`--since`, `--until`).

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// RFC 3339, or a duration meaning that long ago (`90m`, `2h`, `1d`).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}` is neither RFC 3339 (2026-11-28T10:00:00Z) nor a duration ago (2h)")
    })?;
    chrono::Duration::from_std(ago)
        .map(|d| Utc::now() - d)
        .map_err(|e| e.to_string())
}

/// Paces sends to `rate` per second (no burst); unlimited without a rate.
pub struct Limiter(Option<DefaultDirectRateLimiter>);

impl Limiter {
    pub fn new(rate: Option<f64>) -> Self {
        Self(rate.filter(|r| *r > 0.0).and_then(|r| {
            Quota::with_period(Duration::from_secs_f64(1.0 / r))
                .map(|q| RateLimiter::direct(q.allow_burst(NonZeroU32::MIN)))
        }))
    }
}

impl shared::store::replay::Pace for Limiter {
    async fn ready(&self) {
        if let Some(l) = &self.0 {
            l.until_ready().await;
        }
    }
}
