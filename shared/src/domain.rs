//! Domain types shared by the services: event types and subscription patterns, signing secrets
//! and schemes, the endpoint as the delivery-consumer holds it, delivery statuses and error
//! classes.
//!
//! Values that arrive from outside (event types, patterns, secrets, schemes) have a type whose
//! only constructor validates them, so code past the boundary never re-checks. Endpoint URLs
//! are checked where they are accepted (the gateway) and where they are dialled (ssrf.rs).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{EndpointId, TenantId};

/// Why a value from outside was rejected; the message is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("event type must be 1 to 255 characters of letters, digits, `.`, `_` and `-`")]
    EventType,
    #[error(
        "event type pattern must be an event type, `*`, or an event type prefix followed by `.*`"
    )]
    EventTypePattern,
    #[error("signing secret must be `whsec_` followed by base64 of 24 to 64 bytes")]
    SigningSecret,
    #[error("unknown {what} `{value}`")]
    UnknownVariant { what: &'static str, value: String },
}

const EVENT_TYPE_MAX: usize = 255;

fn is_event_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= EVENT_TYPE_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Serialises as its string form and deserialises through `FromStr`, so JSON input is validated
/// exactly like path and query input.
macro_rules! string_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An event type such as `invoice.paid`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

impl EventType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EventType {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_event_type(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::EventType)
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

string_serde!(EventType);

/// Which event types a subscription receives: one exact type, every type under a dotted prefix
/// (`invoice.*` matches `invoice.paid` and `invoice.line.added`, not `invoice`), or all (`*`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum EventTypePattern {
    Exact(EventType),
    /// The prefix without the trailing `.*`.
    Prefix(String),
    All,
}

impl EventTypePattern {
    pub fn matches(&self, event_type: &EventType) -> bool {
        match self {
            Self::Exact(t) => t == event_type,
            Self::Prefix(p) => event_type
                .as_str()
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
            Self::All => true,
        }
    }
}

impl FromStr for EventTypePattern {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = s.strip_suffix(".*") {
            return if is_event_type(prefix) && !prefix.ends_with('.') {
                Ok(Self::Prefix(prefix.to_owned()))
            } else {
                Err(DomainError::EventTypePattern)
            };
        }
        s.parse()
            .map(Self::Exact)
            .map_err(|_| DomainError::EventTypePattern)
    }
}

impl fmt::Display for EventTypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(t) => write!(f, "{t}"),
            Self::Prefix(p) => write!(f, "{p}.*"),
            Self::All => f.write_str("*"),
        }
    }
}

string_serde!(EventTypePattern);

/// An endpoint's signing secret, `whsec_<base64>`; the HMAC key is the decoded bytes.
///
/// `Debug` never shows the secret, so it cannot leak through a log line of a struct holding it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    pub const PREFIX: &'static str = "whsec_";
    const GENERATED_LEN: usize = 32;

    /// A fresh secret of 32 random bytes.
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut key = vec![0u8; Self::GENERATED_LEN];
        // ThreadRng is a CSPRNG seeded from the operating system.
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The `whsec_…` text: for the create/rotate responses and storage only.
    pub fn expose(&self) -> String {
        format!("{}{}", Self::PREFIX, BASE64.encode(&self.key))
    }
}

impl FromStr for SigningSecret {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .strip_prefix(Self::PREFIX)
            .ok_or(DomainError::SigningSecret)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| DomainError::SigningSecret)?;
        if (24..=64).contains(&key.len()) {
            Ok(Self { key })
        } else {
            Err(DomainError::SigningSecret)
        }
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(redacted)")
    }
}

/// How deliveries to an endpoint are signed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    #[default]
    StandardWebhooks,
    /// The replaced system's `X-HarborHook-Timestamp` / `X-HarborHook-Signature: sha256=<hex>`.
    HarborhookLegacy,
}

impl SignatureScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard_webhooks",
            Self::HarborhookLegacy => "harborhook_legacy",
        }
    }
}

impl FromStr for SignatureScheme {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard_webhooks" => Ok(Self::StandardWebhooks),
            "harborhook_legacy" => Ok(Self::HarborhookLegacy),
            other => Err(DomainError::UnknownVariant {
                what: "signature scheme",
                value: other.to_owned(),
            }),
        }
    }
}

/// A secret that signs deliveries; during rotation the old one has `expires_at` set and both sign.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSecret {
    pub secret: SigningSecret,
    /// The `v1a` key rotated with this secret; set on every row of an endpoint with
    /// `signature_v1a` (the API generates it), absent otherwise.
    pub signing_key: Option<crate::asymmetric::SigningKey>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: EndpointId,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: String,
    pub secrets: Vec<EndpointSecret>,
    pub signature_scheme: SignatureScheme,
    /// Standard Webhooks `v1a` (ed25519) signatures beside `v1`.
    pub signature_v1a: bool,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Most deliveries in flight to this endpoint at once.
    pub max_in_flight: u32,
    /// Requests per second, when the endpoint asked to be rate limited.
    pub rate_limit_per_sec: Option<f64>,
    pub connect_timeout_ms: u32,
    pub timeout_ms: u32,
    pub headers: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// The secrets that sign a delivery at `now`: the current one, plus a rotated-out one whose
    /// overlap has not ended.
    pub fn active_secrets(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SigningSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|t| t > now))
            .map(|s| &s.secret)
    }

    /// The `v1a` keys that sign a delivery at `now`, as [`Self::active_secrets`]; none unless
    /// the endpoint has `signature_v1a`.
    pub fn active_signing_keys(
        &self,
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = &crate::asymmetric::SigningKey> {
        self.secrets
            .iter()
            .filter(move |s| self.signature_v1a && s.expires_at.is_none_or(|t| t > now))
            .filter_map(|s| s.signing_key.as_ref())
    }
}

/// Where a delivery stands; stored in `deliveries.status`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Retrying,
    DeadLettered,
    /// Not sent because the endpoint was disabled when the event fanned out.
    Skipped,
}

impl DeliveryStatus {
    /// Every status, as the `deliveries.status` CHECK lists them (tests/it/protocol.rs).
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Delivered,
        Self::Retrying,
        Self::DeadLettered,
        Self::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::DeadLettered => "dead_lettered",
            Self::Skipped => "skipped",
        }
    }
}

/// Why an attempt failed, coarse enough to alert and retry on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Timeout,
    Connect,
    /// The target resolved to an address the SSRF policy forbids.
    Forbidden,
    Http5xx,
    Http4xx,
    RateLimited,
    Gone,
    Redirect,
    CircuitOpen,
}

impl ErrorClass {
    pub const ALL: [Self; 9] = [
        Self::Timeout,
        Self::Connect,
        Self::Forbidden,
        Self::Http5xx,
        Self::Http4xx,
        Self::RateLimited,
        Self::Gone,
        Self::Redirect,
        Self::CircuitOpen,
    ];

    /// The stored and serialised name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Forbidden => "forbidden",
            Self::Http5xx => "http5xx",
            Self::Http4xx => "http4xx",
            Self::RateLimited => "rate_limited",
            Self::Gone => "gone",
            Self::Redirect => "redirect",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn et(s: &str) -> EventType {
        s.parse().expect("valid event type")
    }

    #[test]
    fn event_types_are_validated() {
        for good in ["invoice.paid", "a", "user_created-v2", &"x".repeat(255)] {
            assert!(good.parse::<EventType>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "invoice paid",
            "invoice/paid",
            "ünïcode",
            &"x".repeat(256),
            "*",
        ] {
            assert_eq!(
                bad.parse::<EventType>(),
                Err(DomainError::EventType),
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        let exact: EventTypePattern = "invoice.paid".parse().expect("exact");
        let prefix: EventTypePattern = "invoice.*".parse().expect("prefix");
        let all: EventTypePattern = "*".parse().expect("all");
        assert!(exact.matches(&et("invoice.paid")));
        assert!(!exact.matches(&et("invoice.paid.late")));
        assert!(prefix.matches(&et("invoice.paid")));
        assert!(prefix.matches(&et("invoice.line.added")));
        assert!(!prefix.matches(&et("invoice")));
        assert!(!prefix.matches(&et("invoices.paid")));
        assert!(all.matches(&et("anything")));
        for text in ["invoice.paid", "invoice.*", "*"] {
            assert_eq!(
                text.parse::<EventTypePattern>().expect("parse").to_string(),
                text
            );
        }
        for bad in ["invoice*", ".*", "invoice..*", "in voice.*", "**", ""] {
            assert!(bad.parse::<EventTypePattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_round_trip_and_never_print() {
        let secret = SigningSecret::generate();
        assert_eq!(secret.key().len(), 32);
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(text.parse::<SigningSecret>().expect("parse"), secret);
        assert!(!format!("{secret:?}").contains(&text[6..]));
        assert_ne!(SigningSecret::generate(), secret);
        for bad in ["whsec_", "whsec_!!!", "sk_abc", "whsec_c2hvcnQ="] {
            assert!(bad.parse::<SigningSecret>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rotated_secrets_sign_only_during_overlap() {
        let now = Utc::now();
        let old = SigningSecret::generate();
        let new = SigningSecret::generate();
        let mut endpoint = Endpoint {
            id: EndpointId::new(),
            tenant_id: TenantId::new(),
            url: "https://example.com/hook".into(),
            description: String::new(),
            secrets: vec![
                EndpointSecret {
                    secret: new.clone(),
                    signing_key: Some(crate::asymmetric::SigningKey::generate()),
                    created_at: now,
                    expires_at: None,
                },
                EndpointSecret {
                    secret: old.clone(),
                    signing_key: Some(crate::asymmetric::SigningKey::generate()),
                    created_at: now,
                    expires_at: Some(now + chrono::Duration::hours(1)),
                },
            ],
            signature_scheme: SignatureScheme::default(),
            signature_v1a: false,
            enabled: true,
            disabled_reason: None,
            max_in_flight: 10,
            rate_limit_per_sec: None,
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            headers: BTreeMap::new(),
            created_at: now,
            updated_at: now,
        };
        assert_eq!(endpoint.active_secrets(now).count(), 2);
        // Keys sign only when the endpoint opted in to v1a, and expire with their secret.
        assert_eq!(endpoint.active_signing_keys(now).count(), 0);
        endpoint.signature_v1a = true;
        assert_eq!(endpoint.active_signing_keys(now).count(), 2);
        let later = now + chrono::Duration::hours(2);
        assert_eq!(
            endpoint.active_secrets(later).collect::<Vec<_>>(),
            vec![&new]
        );
        assert_eq!(
            endpoint.active_signing_keys(later).collect::<Vec<_>>(),
            vec![endpoint.secrets[0].signing_key.as_ref().expect("key")]
        );
        endpoint.secrets.truncate(1);
        assert_eq!(endpoint.active_secrets(now).count(), 1);
    }
}
