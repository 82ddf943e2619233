//! WAHA (WhatsApp HTTP API) webhook envelopes.

use super::ParseError;
use crate::event::Event;
use serde_json::Value;

/// Parses a WAHA webhook body (one envelope) into its events.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(ParseError::from_json)?;
    parse_value(value)
}

pub fn parse_value(_value: Value) -> Result<Vec<Event>, ParseError> {
    Err(ParseError::Shape { format: "WAHA", reason: "parser not written yet".into() })
}
