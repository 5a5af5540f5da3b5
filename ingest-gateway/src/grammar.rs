//! The grammar of request values that JSON Schema can state: the OpenAPI document
//! (`scripts/gen/openapi.py`) carries these same patterns, and `tests/it/openapi.rs` checks that
//! they are the ones the server enforces, so a client generating requests from the document
//! (and schemathesis, in CI) finds exactly what the server accepts.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer};

/// An endpoint URL: `http(s)://`, an ASCII host (a DNS name whose last label starts with a
/// letter, an IPv4 address, or an IPv6 address in full form or `[::1]`; international names in
/// their `xn--` form), an optional port 1–65535, and a path, query and fragment of printable
/// ASCII. No credentials (there is no `@` before the path), no spaces, no control characters.
pub const URL_PATTERN: &str = concat!(
    r"^https?://",
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?",
    r"|(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}",
    r"|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\]|\[::1\])",
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?",
    r"(?:[/?#][\x21-\x7e]*)?$"
);

/// A list cursor (pagination.rs).
pub const CURSOR_PATTERN: &str = r"^v1\.-?[0-9]{1,16}\.[0-9a-f]{32}$";

/// A signing secret: `whsec_` and the canonical base64 of 24 to 64 bytes (the padding, and the
/// unused low bits of the last character, as the decoder requires).
pub const SECRET_PATTERN: &str = concat!(
    r"^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?",
    r"|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/][AQgw]==)?)$"
);

/// A custom header value: what an HTTP header value may hold (no control character but tab).
pub const HEADER_VALUE_PATTERN: &str = r"^[^\x00-\x08\x0a-\x1f\x7f]*$";

/// One line of text: no control character, at least one character that is not white space.
pub const LINE_PATTERN: &str = concat!(
    r"^[^\x00-\x1f\x7f-\x9f]*",
    r"[^\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]",
    r"[^\x00-\x1f\x7f-\x9f]*$"
);

/// Prose (a reason): tab, newline and carriage return allowed besides.
pub const PROSE_PATTERN: &str = concat!(
    r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*",
    r"[^\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\x00-\x1f\x7f-\x9f]",
    r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
);

/// Prose that may be empty (a description).
pub const OPTIONAL_PROSE_PATTERN: &str = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$";

/// A key (idempotency, ordering): no control character; may be all spaces.
pub const KEY_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]+$";

static URL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(URL_PATTERN).ok());

/// Whether `url` is in the documented URL grammar.
pub fn url_matches(url: &str) -> bool {
    URL.as_ref().is_some_and(|r| r.is_match(url))
}

/// An integer field that also takes an integral number written with a fraction (`2200.0`),
/// as JSON Schema's `integer` does; anything else, or out of the `i32` range, is refused.
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let value = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    });
    value
        .and_then(|v| i32::try_from(v).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer in range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_grammar_takes_what_endpoints_use_and_nothing_else() {
        for good in [
            "https://example.com/webhooks",
            "http://127.0.0.1:8080/hook?x=1#f",
            "https://a.b-c.xn--p1ai:443/",
            "http://[::1]:9/x",
            "http://[2001:db8:0:0:0:0:0:1]/",
            "https://localhost",
        ] {
            assert!(url_matches(good), "{good}");
            assert!(reqwest::Url::parse(good).is_ok(), "{good} parses");
        }
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://exa mple.com/",
            "https://example.com/\u{0}",
            "https://example.com:0/",
            "https://example.com:65536/",
            "https://1.2.3.999/",
            "https://ex\u{e4}mple.com/",
            "https:///path",
            "https://-a.com/",
        ] {
            assert!(!url_matches(bad), "{bad}");
        }
    }

    #[test]
    fn the_secret_pattern_is_what_the_secret_parser_takes() {
        use base64::Engine as _;
        let pattern = Regex::new(SECRET_PATTERN).expect("pattern");
        for n in 0..=70usize {
            let text = format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(vec![0xa5u8; n])
            );
            let parses = text.parse::<shared::domain::SigningSecret>().is_ok();
            assert_eq!(pattern.is_match(&text), parses, "{n} bytes: {text}");
            assert_eq!(parses, (24..=64).contains(&n), "{n} bytes");
        }
        // Non-canonical last characters are refused by both.
        let odd = format!("whsec_{}Qx==", "A".repeat(32));
        assert!(!pattern.is_match(&odd));
        assert!(odd.parse::<shared::domain::SigningSecret>().is_err());
    }

    #[test]
    fn the_text_patterns_compile() {
        for p in [
            LINE_PATTERN,
            PROSE_PATTERN,
            OPTIONAL_PROSE_PATTERN,
            KEY_PATTERN,
            CURSOR_PATTERN,
            HEADER_VALUE_PATTERN,
        ] {
            assert!(Regex::new(p).is_ok(), "{p}");
        }
        let line = Regex::new(LINE_PATTERN).expect("line");
        assert!(line.is_match("acme"));
        assert!(!line.is_match("   "));
        assert!(!line.is_match("a\u{0}b"));
        assert!(!line.is_match("a\nb"));
        let prose = Regex::new(PROSE_PATTERN).expect("prose");
        assert!(prose.is_match("fixed\nthe receiver"));
        assert!(!prose.is_match("\u{85}x"));
    }
}
