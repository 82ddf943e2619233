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
    Json { line: usize, column: usize, message: String },
    /// JSON, but not a webhook of the expected format (e.g. no `entry` array, no `event`).
    #[error("not a {format} webhook: {reason}")]
    Shape { format: &'static str, reason: String },
}

impl ParseError {
    pub(crate) fn from_json(e: serde_json::Error) -> Self {
        ParseError::Json { line: e.line(), column: e.column(), message: e.to_string() }
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
    let value: serde_json::Value = serde_json::from_slice(body).map_err(ParseError::from_json)?;
    if value.get("entry").is_some() || value.get("object").is_some() {
        Ok((Format::Meta, meta::parse_value(value)?))
    } else if value.get("event").is_some() {
        Ok((Format::Waha, waha::parse_value(value)?))
    } else {
        Err(ParseError::Shape { format: "Meta or WAHA", reason: "neither an `entry` array nor an `event` name".into() })
    }
}
