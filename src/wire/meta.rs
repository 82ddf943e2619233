//! Meta WhatsApp Cloud API webhook payloads.

use super::ParseError;
use crate::event::Event;
use serde_json::Value;

/// Parses a Meta webhook body into one event per element.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(ParseError::from_json)?;
    parse_value(value)
}

pub fn parse_value(_value: Value) -> Result<Vec<Event>, ParseError> {
    Err(ParseError::Shape { format: "Meta", reason: "parser not written yet".into() })
}
