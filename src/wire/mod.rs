//! Payload formats: bytes of a webhook in, normalized [`Event`]s out. Pure, no I/O.
//!
//! The parsers never fail on content they do not know (new message types, new fields,
//! new webhook fields): such elements become events of type `unknown` with the raw JSON kept.
//! They fail only when the body is not JSON or not a webhook of that format at all.
//!
//! Events come out addressed by the payload itself: `channel` is the Meta `phone_number_id`
//! (or `waba:<entry id>` for account-level changes that name no number), or the WAHA session.
//! [`crate::routing`] maps that address to a configured channel.

pub mod meta;
pub mod util;
pub mod waha;

use crate::event::Event;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The body is not JSON. `line`/`column` point into the body.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON, but not a webhook of the expected format (e.g. no `entry` array, no `event`).
    #[error("not a {format} webhook: {reason}")]
    Shape {
        format: &'static str,
        reason: String,
    },
}

impl ParseError {
    pub(crate) fn from_json(e: serde_json::Error) -> Self {
        ParseError::Json {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        }
    }
}

/// Which format a body is in, guessed from its top-level keys (for `coexist parse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Meta,
    Waha,
}

/// Parses a body of either format, choosing by shape: an `entry` array means Meta,
/// an `event` string means a WAHA envelope.
pub fn parse_any(body: &[u8]) -> Result<(Format, Vec<Event>), ParseError> {
    let value: serde_json::Value = util::parse_json(body).map_err(ParseError::from_json)?;
    if value.get("entry").is_some() || value.get("object").is_some() {
        Ok((Format::Meta, meta::parse_value(value)?))
    } else if value.get("event").is_some() {
        Ok((Format::Waha, waha::parse_value(value)?))
    } else {
        Err(ParseError::Shape {
            format: "Meta or WAHA",
            reason: "neither an `entry` array nor an `event` name".into(),
        })
    }
}

/// Rewrites every `"timestamp"` value that looks like Unix seconds (a 10-digit string or
/// number) to `now_secs`, byte for byte elsewhere. For `coexist replay --fresh`: a recorded
/// message then opens a service window as if the customer had just written.
pub fn refresh_timestamps(body: &[u8], now_secs: i64) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len());
    let mut rest: &str = &text;
    let key = "\"timestamp\"";
    while let Some(at) = rest.find(key) {
        let (head, tail) = rest.split_at(at + key.len());
        out.push_str(head);
        let trimmed = tail.trim_start_matches(|c: char| c == ':' || c.is_whitespace());
        let sep_len = tail.len() - trimmed.len();
        let (quoted, digits_start) = match trimmed.strip_prefix('"') {
            Some(t) => (true, t),
            None => (false, trimmed),
        };
        let digits = digits_start.bytes().take_while(u8::is_ascii_digit).count();
        if sep_len > 0 && digits == 10 && (!quoted || digits_start[digits..].starts_with('"')) {
            out.push_str(&tail[..sep_len]);
            if quoted {
                out.push('"');
            }
            out.push_str(&now_secs.to_string());
            rest = &digits_start[digits..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_rewrites_second_timestamps_only() {
        let body = br#"{"timestamp": "1749416383", "x": {"timestamp":1750699027}, "timestamp":"1700000000000", "t":"1749416383"}"#;
        let out = String::from_utf8(refresh_timestamps(body, 1800000000)).unwrap();
        assert_eq!(
            out,
            r#"{"timestamp": "1800000000", "x": {"timestamp":1800000000}, "timestamp":"1700000000000", "t":"1749416383"}"#
        );
    }
}
