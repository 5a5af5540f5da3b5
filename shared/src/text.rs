//! Text from outside, on its way into PostgreSQL or a record.
//!
//! Two directions, two rules. What a *client* sends in a free-text field (a tenant name, a
//! URL, a reason, an idempotency key) is checked with [`check`] and refused with a message
//! naming the field when it holds what cannot be stored or should not be shown (NUL, other
//! control characters). What a *receiver* answers, or a transport error says, is never
//! refused: it is an observation, so [`storable`] keeps it with NUL replaced (PostgreSQL text
//! cannot hold U+0000) and [`cut`] bounds it on a character boundary.

use std::borrow::Cow;

/// Why a client's text was refused; safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("at most {max} characters")]
    TooLong { max: usize },
    #[error("must not contain control characters (found U+{0:04X})")]
    Control(u32),
}

/// Which control characters a field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// One line: no control character at all (keys, names, URLs).
    Single,
    /// Prose: tab, newline and carriage return allowed (descriptions, reasons).
    Multi,
}

/// Checks a client's text: not empty (after trimming), at most `max` characters (Unicode scalar
/// values, as JSON Schema's `maxLength` and PostgreSQL's `length()` count), no control
/// characters beyond what `lines` allows.
pub fn check(text: &str, max: usize, lines: Lines) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    check_optional(text, max, lines)
}

/// As [`check`], for a field that may be empty (a description).
pub fn check_optional(text: &str, max: usize, lines: Lines) -> Result<(), TextError> {
    // Bytes bound characters from above: count only when it could matter.
    if text.len() > max && text.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    let allowed = |c: char| lines == Lines::Multi && matches!(c, '\t' | '\n' | '\r');
    match text.chars().find(|c| c.is_control() && !allowed(*c)) {
        Some(c) => Err(TextError::Control(u32::from(c))),
        None => Ok(()),
    }
}

/// `text` with every NUL replaced by U+FFFD, so PostgreSQL can store it.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bytes from a receiver as storable text of at most `max` bytes: invalid UTF-8 and NUL become
/// U+FFFD, then the result is cut.
pub fn from_receiver(bytes: &[u8], max: usize) -> String {
    let lossy = String::from_utf8_lossy(bytes);
    cut(&storable(&lossy), max).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_checked() {
        assert_eq!(check("ok", 10, Lines::Single), Ok(()));
        assert_eq!(check("  ", 10, Lines::Single), Err(TextError::Empty));
        assert_eq!(
            check("éééé", 4, Lines::Single),
            Ok(()),
            "characters, not bytes"
        );
        assert_eq!(
            check("abcdef", 5, Lines::Single),
            Err(TextError::TooLong { max: 5 })
        );
        assert_eq!(check("a\0b", 10, Lines::Multi), Err(TextError::Control(0)));
        assert_eq!(
            check("a\nb", 10, Lines::Single),
            Err(TextError::Control(10))
        );
        assert_eq!(check("a\nb\tc", 10, Lines::Multi), Ok(()));
        assert_eq!(
            check("a\u{85}b", 10, Lines::Multi),
            Err(TextError::Control(0x85))
        );
        assert_eq!(check_optional("", 10, Lines::Multi), Ok(()));
    }

    #[test]
    fn receiver_text_is_kept_storable_and_bounded() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        let kept = from_receiver(b"\0\xff ok", 1024);
        assert_eq!(kept, "\u{FFFD}\u{FFFD} ok");
        // Replacement grows the text (1 byte -> 3): the cut comes after, so the bound holds.
        let nuls = vec![0u8; 1024];
        let kept = from_receiver(&nuls, 1024);
        assert!(kept.len() <= 1024 && kept.len() >= 1021, "{}", kept.len());
        assert!(kept.chars().all(|c| c == '\u{FFFD}'));
        assert_eq!(cut("é", 1), "");
    }
}
