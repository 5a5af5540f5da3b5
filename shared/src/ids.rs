//! Typed, prefixed identifiers.
//!
//! Every id is a UUID shown as `<prefix>_<32 lowercase hex digits>` (`evt_0190c5…`). Each kind is
//! its own type, so passing an endpoint id where an event id is expected does not compile, and
//! text from outside (URL paths, JSON bodies, Kafka records) becomes an id only through
//! [`FromStr`], which checks the prefix. In PostgreSQL the ids are stored as `uuid` (16 bytes),
//! without the prefix.
//!
//! New ids are UUIDv7 (time-ordered, so b-tree inserts stay local). Delivery ids are the one
//! exception: they are UUIDv5 of (event id, endpoint id), so a fan-out re-run after a crash, a
//! retry and a replay all carry the same `webhook-id` and receivers can deduplicate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected an id starting with `{expected}_`")]
    WrongPrefix { expected: &'static str },
    #[error("an id is `{prefix}_` followed by 32 lowercase hex digits")]
    Malformed { prefix: &'static str },
}

/// Namespace of the UUIDv5 delivery ids. Changing it would change every delivery id, so never do.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x6861_7262_6f72_686f_6f6b_2d64_6c76_0001);

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps a UUID read from storage (PostgreSQL keeps ids without their prefix).
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_prefixed(s, $prefix).map(Self)
            }
        }

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

        impl tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut tokio_postgres::types::private::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <Uuid as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Uuid::from_sql(ty, raw).map(Self)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <Uuid as tokio_postgres::types::FromSql<'_>>::accepts(ty)
            }
        }
    };
}

typed_id!(
    /// A tenant: the unit of isolation. Every other resource belongs to exactly one.
    TenantId, "ten"
);
typed_id!(
    /// A customer HTTP endpoint that receives webhooks.
    EndpointId, "ep"
);
typed_id!(
    /// The link between an endpoint and an event-type pattern.
    SubscriptionId, "sub"
);
typed_id!(
    /// One published event.
    EventId, "evt"
);
typed_id!(
    /// One (event, endpoint) pair; sent to receivers as `webhook-id`.
    DeliveryId, "dlv"
);

impl DeliveryId {
    /// The delivery id of `event` at `endpoint`: the same inputs always give the same id.
    pub fn derive(event: &EventId, endpoint: &EndpointId) -> Self {
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(event.as_uuid().as_bytes());
        name[16..].copy_from_slice(endpoint.as_uuid().as_bytes());
        Self(Uuid::new_v5(&DELIVERY_NAMESPACE, &name))
    }
}

fn parse_prefixed(s: &str, prefix: &'static str) -> Result<Uuid, IdError> {
    let rest = s
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .ok_or(IdError::WrongPrefix { expected: prefix })?;
    // Only the canonical form is accepted, so an id has exactly one spelling (URLs, logs, joins).
    let canonical = rest.len() == 32
        && rest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !canonical {
        return Err(IdError::Malformed { prefix });
    }
    Uuid::try_parse(rest).map_err(|_| IdError::Malformed { prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_json() {
        let id = EventId::new();
        let text = id.to_string();
        assert!(text.starts_with("evt_"));
        assert_eq!(text.len(), 4 + 32);
        assert_eq!(text.parse::<EventId>(), Ok(id));
        let json = serde_json::to_string(&id).expect("serialise");
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<EventId>(&json).expect("parse"), id);
    }

    #[test]
    fn rejects_another_kinds_prefix() {
        let endpoint = EndpointId::new().to_string();
        assert_eq!(
            endpoint.parse::<EventId>(),
            Err(IdError::WrongPrefix { expected: "evt" })
        );
        let err = serde_json::from_str::<TenantId>(&format!("\"{endpoint}\""))
            .expect_err("an endpoint id is not a tenant id");
        assert!(err.to_string().contains("ten_"), "{err}");
    }

    #[test]
    fn rejects_malformed_bodies() {
        let good = SubscriptionId::new().to_string();
        let upper = format!("sub_{}", good[4..].to_uppercase());
        let hyphenated = format!("sub_{}", SubscriptionId::new().as_uuid().hyphenated());
        for bad in [
            "sub_",
            "sub",
            "",
            "sub_123",
            upper.as_str(),
            hyphenated.as_str(),
            "sub_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            &format!("{good}0"),
            &format!(" {good}"),
        ] {
            assert!(bad.parse::<SubscriptionId>().is_err(), "accepted {bad:?}");
        }
        assert!(good.parse::<SubscriptionId>().is_ok());
    }

    #[test]
    fn delivery_ids_are_deterministic_and_distinct() {
        let event = EventId::new();
        let a = EndpointId::new();
        let b = EndpointId::new();
        assert_eq!(
            DeliveryId::derive(&event, &a),
            DeliveryId::derive(&event, &a)
        );
        assert_ne!(
            DeliveryId::derive(&event, &a),
            DeliveryId::derive(&event, &b)
        );
        assert_ne!(
            DeliveryId::derive(&event, &a),
            DeliveryId::derive(&EventId::new(), &a)
        );
    }

    #[test]
    fn delivery_id_derivation_is_stable_across_releases() {
        // Receivers deduplicate on this value: it must never change for the same inputs.
        let event: EventId = "evt_0190c5a1b2c37d4e8f9a0b1c2d3e4f50"
            .parse()
            .expect("event id");
        let endpoint: EndpointId = "ep_0190c5a1b2c37d4e8f9a0b1c2d3e4f51"
            .parse()
            .expect("endpoint");
        // Computed once with the namespace above; a different value means receivers would see
        // new ids for old deliveries after an upgrade.
        assert_eq!(
            DeliveryId::derive(&event, &endpoint).to_string(),
            "dlv_a57cba482ff05a2bb78e910604e3469d"
        );
    }
}
