//! Channel identity and the capability table: what each kind of channel allows.
//!
//! Every rule that differs between WhatsApp Business API and WhatsApp Personal channels is
//! answered here, so callers ask "does this channel have a service window?" instead of matching
//! on the kind in many places.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The two kinds of channel a business runs side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// WhatsApp Business API (Meta Cloud API).
    Waba,
    /// WhatsApp Personal: a phone linked by QR through a WhatsApp Web gateway (WAHA).
    Personal,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Waba => "waba",
            ChannelKind::Personal => "personal",
        }
    }

    /// Free-form replies are limited to the 24 h customer service window (WABA only).
    pub fn has_service_window(self) -> bool {
        matches!(self, ChannelKind::Waba)
    }

    /// Message templates exist only on the Business API.
    pub fn supports_templates(self) -> bool {
        matches!(self, ChannelKind::Waba)
    }

    /// Default outbound messages per second for a channel of this kind.
    /// Meta: 80 mps per number, 20 for coexistence numbers. Personal channels are paced
    /// per chat and per minute instead (see `outbound`), so this is only an upper bound.
    pub fn default_send_rate_per_second(self, coexistence: bool) -> u32 {
        match (self, coexistence) {
            (ChannelKind::Waba, false) => 80,
            (ChannelKind::Waba, true) => 20,
            (ChannelKind::Personal, _) => 1,
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pseudo-channel that keeps webhooks for numbers no configured channel claims.
pub const UNROUTED_CHANNEL: &str = "_unrouted";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_table() {
        assert!(ChannelKind::Waba.has_service_window());
        assert!(!ChannelKind::Personal.has_service_window());
        assert!(ChannelKind::Waba.supports_templates());
        assert!(!ChannelKind::Personal.supports_templates());
        assert_eq!(ChannelKind::Waba.default_send_rate_per_second(false), 80);
        assert_eq!(ChannelKind::Waba.default_send_rate_per_second(true), 20);
    }

    #[test]
    fn kind_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&ChannelKind::Personal).unwrap(),
            "\"personal\""
        );
        let k: ChannelKind = serde_json::from_str("\"waba\"").unwrap();
        assert_eq!(k, ChannelKind::Waba);
    }
}
