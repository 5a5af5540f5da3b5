//! The event payload: a JSON object, carried as the exact text the publisher sent.
//!
//! **Carried, not re-encoded.** The payload is a `RawValue`: the gateway (or a direct
//! producer) hands over JSON text, and that same text is what `events` holds, what every
//! delivery, retry and dead-letter record embeds, what PostgreSQL stores (`events.payload` is
//! `text`, migration 0004) and what the receiver gets as the request body. Nothing re-parses it
//! into numbers and re-prints it, so a 30-digit integer, `1e2`, key order and `\u0000` reach
//! the receiver as sent, and a record's size is the payload's size plus a bounded envelope
//! (records.rs computes the bound). docs/api.md lists what is carried and what is refused.
//!
//! **Checked once, at the door.** [`Payload::parse`] (the gateway) and [`Payload::check`] (the
//! fan-out, for direct producers) refuse what a receiver could not rely on: anything but an
//! object at the top, nesting deeper than [`MAX_DEPTH`], a key repeated in one object, a number
//! outside the range of a double, and text that is not valid Unicode (lone surrogates, invalid
//! UTF-8). Deserialising a payload from an internal record does not check again: whatever is on
//! an internal topic passed the door.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Deepest nesting of objects and arrays accepted, the top-level object counting as one.
pub const MAX_DEPTH: usize = 64;

/// Why a payload was refused; the message is safe to show to the publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("must be a JSON object")]
    NotAnObject,
    #[error("{0}")]
    Invalid(String),
}

/// A checked JSON object, as text.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Parses and checks `text` (see the module docs).
    pub fn parse(text: &str) -> Result<Self, PayloadError> {
        let raw = RawValue::from_string(text.trim().to_owned())
            .map_err(|e| PayloadError::Invalid(e.to_string()))?;
        let payload = Self(raw);
        payload.check()?;
        Ok(payload)
    }

    /// Checks a payload that arrived inside a record (a direct producer's envelope).
    pub fn check(&self) -> Result<(), PayloadError> {
        let text = self.0.get();
        if !text.starts_with('{') {
            return Err(PayloadError::NotAnObject);
        }
        let mut json = serde_json::Deserializer::from_str(text);
        let mut track = serde_path_to_error::Track::new();
        let result = Check { depth: 0 }
            .deserialize(serde_path_to_error::Deserializer::new(
                &mut json, &mut track,
            ))
            .and_then(|()| json.end());
        result.map_err(|e| {
            let path = track.path().to_string();
            if path == "." || path == "?" {
                PayloadError::Invalid(e.to_string())
            } else {
                PayloadError::Invalid(format!("{path}: {e}"))
            }
        })
    }

    /// A payload read back from storage (`events.payload`): it passed the door when it was
    /// published, so it is not checked again.
    pub fn stored(raw: Box<RawValue>) -> Self {
        Self(raw)
    }

    /// An object built in code (tests).
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Self {
        let text = serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned());
        Self(RawValue::from_string(text).unwrap_or_else(|_| Self::empty_raw()))
    }

    /// An object built in code from a JSON value (tests); anything else is `{}`.
    pub fn from_value(value: &serde_json::Value) -> Self {
        value.as_object().map_or_else(Self::empty, Self::from_map)
    }

    /// `{}`.
    pub fn empty() -> Self {
        Self(Self::empty_raw())
    }

    fn empty_raw() -> Box<RawValue> {
        RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("`{{}}` is JSON"))
    }

    /// The JSON text, exactly as carried.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.get().as_bytes()
    }

    /// Size in bytes of the JSON text (what each record embeds).
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload parsed, for code that inspects it (tests, the demo receiver).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Only the shape is checked here (an object, as every record's schema says); the full check is
/// [`Payload::check`], at the door.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if raw.get().starts_with('{') {
            Ok(Self(raw))
        } else {
            Err(de::Error::custom("payload must be a JSON object"))
        }
    }
}

/// Walks a value without building it: depth, duplicate keys, and (through serde_json's own
/// parsing of every token) number range and Unicode validity.
#[derive(Clone, Copy)]
struct Check {
    depth: usize,
}

impl Check {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!(
                "nested deeper than {MAX_DEPTH} objects and arrays"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested()?;
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if !keys.insert(key) {
                return Err(de::Error::custom("a key appears twice in one object"));
            }
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_text_as_sent() {
        let text = r#"{"b": 1e2, "a": 123456789012345678901234567890, "n": "\u0000", "z": [ ]}"#;
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Record {
            payload: Payload,
        }
        let p = Payload::parse(text).expect("valid");
        assert_eq!(p.as_str(), text);
        let record = serde_json::to_string(&Record { payload: p.clone() }).expect("serialise");
        assert!(record.contains(text), "embedded verbatim: {record}");
        let back: Record = serde_json::from_str(&record).expect("read back");
        assert_eq!(back.payload.as_str(), text, "read back verbatim");
    }

    #[test]
    fn refuses_what_receivers_cannot_rely_on() {
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let cases = [
            ("[1]", "object"),
            ("\"x\"", "object"),
            (r#"{"a": 1, "a": 2}"#, "twice"),
            (r#"{"a": {"b": 1, "b": 1}}"#, "a: a key appears twice"),
            (r#"{"a": 1e400}"#, "out of range"),
            (r#"{"a": "\ud800"}"#, "escape"),
            (r#"{"a": 1"#, "EOF"),
            (deep.as_str(), "nested deeper"),
        ];
        for (text, why) in cases {
            let err = Payload::parse(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(Payload::parse(&ok).is_ok(), "exactly at the depth limit");
        assert!(Payload::parse(r#"{"a": {"x": 1}, "b": {"x": 2}}"#).is_ok());
    }

    #[test]
    fn checks_payloads_inside_records() {
        #[derive(serde::Deserialize)]
        struct R {
            payload: Payload,
        }
        let r: R = serde_json::from_str(r#"{"payload": {"k": 1, "k": 2}}"#).expect("raw");
        assert!(
            r.payload.check().is_err(),
            "duplicate key found after the fact"
        );
        assert!(
            serde_json::from_str::<R>(r#"{"payload": [1]}"#).is_err(),
            "the shape is checked on every read"
        );
    }
}
