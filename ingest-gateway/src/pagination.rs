//! Cursor pagination, newest first. A cursor is the (created_at, id) of the last item of the
//! previous page: `v1.<microseconds>.<32 hex digits>` (`grammar::CURSOR_PATTERN`, documented so that
//! a generated request is a cursor this API can read). Clients treat it as opaque. Keyset
//! pagination stays fast on deep pages and never skips or repeats an item when rows are
//! inserted between page reads.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 250;

#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "v1.{}.{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        )
    }

    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
        let rest = text.strip_prefix("v1.").ok_or_else(bad)?;
        let (micros, id) = rest.split_once('.').ok_or_else(bad)?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        let canonical = (1..=16).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical {
            return Err(bad());
        }
        let created_at =
            DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
        Ok(Self {
            created_at,
            id: Uuid::try_parse(id).map_err(|_| bad())?,
        })
    }
}

/// `limit` checked against 1..=250; `cursor` decoded.
pub fn page_params(
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<(i64, Option<Cursor>), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok((limit, cursor.map(Cursor::decode).transpose()?))
}

/// Time filters (`from`, `to`) within what PostgreSQL's timestamps hold (years 1 to 9999; the
/// parser accepts far more), so a filter is a 422 naming it rather than a database error.
pub fn time_filters(filters: &[(&str, Option<DateTime<Utc>>)]) -> Result<(), ApiError> {
    for (field, value) in filters {
        if let Some(t) = value
            && !(1..=9999).contains(&chrono::Datelike::year(t))
        {
            return Err(ApiError::invalid(
                field,
                "the year must be between 1 and 9999",
            ));
        }
    }
    Ok(())
}

/// One page of a list: the items and, when there are more, the cursor of the next page.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` were fetched with `limit + 1`: the extra one only says there is a next page.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last().map(|r| key(r).encode())
        } else {
            None
        };
        Self {
            data: rows,
            next_cursor,
        }
    }
}

/// The SQL condition and parameters of a cursor, for `ORDER BY created_at DESC, id DESC`.
/// `far_future` stands in when there is no cursor, so one prepared statement serves both.
pub fn cursor_bounds(cursor: Option<Cursor>) -> (DateTime<Utc>, Uuid) {
    cursor.map_or((DateTime::<Utc>::MAX_UTC, Uuid::max()), |c| {
        (c.created_at, c.id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at: Utc::now(),
            id: Uuid::now_v7(),
        };
        let back = Cursor::decode(&c.encode()).expect("decode");
        assert_eq!(back.id, c.id);
        assert_eq!(
            back.created_at.timestamp_micros(),
            c.created_at.timestamp_micros()
        );
        let pattern = regex::Regex::new(crate::grammar::CURSOR_PATTERN).expect("pattern");
        assert!(pattern.is_match(&c.encode()), "{}", c.encode());
        let hex = c.id.simple().to_string();
        for bad in [
            "",
            "!!!",
            "bm9waXBl",
            "v1.1.nope",
            "v1..abc",
            &format!("v1.{}.{hex}", "9".repeat(17)),
            &format!("v1.1.{}", hex.to_uppercase()),
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
            assert!(!pattern.is_match(bad) || bad.is_empty(), "{bad}");
        }
        assert!(
            Cursor::decode(&format!("v1.-5.{hex}")).is_ok(),
            "before 1970"
        );
    }

    #[test]
    fn limits_are_bounded() {
        assert!(page_params(Some(0), None).is_err());
        assert!(page_params(Some(251), None).is_err());
        assert_eq!(page_params(None, None).expect("default").0, DEFAULT_LIMIT);
        assert_eq!(page_params(Some(250), None).expect("max").0, 250);
    }
}
