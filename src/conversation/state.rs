//! What coexist remembers about one conversation (channel, contact).
//!
//! Serialized as JSON into `cx:{ch}:conv:{contact}`. Every field has a serde default so that a
//! state written by an older build still loads after a field is added.

use crate::event::Contact;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;

/// How many message statuses a conversation remembers. Statuses of older messages are
/// forgotten; a late status for a forgotten message is then taken as new, which is harmless.
pub const STATUS_MEMORY: usize = 64;

/// The state of one conversation. Absence of a stored state means "never seen" — callers must
/// not write a default state for every chat (see teloxide#731).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConversationState {
    /// When the 24 h customer service window closes (WABA only; `None` = never opened).
    /// Derived from `last_inbound_ms` and `window_closed_at_ms` by the window rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end_ms: Option<i64>,
    /// When Meta told us the window is closed (131047 / 470): the earliest such signal after
    /// the last user message; ignored once a newer user message arrives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_closed_at_ms: Option<i64>,
    /// End of the 72 h free entry point opened by an ad / Page CTA referral (WABA only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_entry_end_ms: Option<i64>,
    /// Own timestamp of the newest user message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_inbound_ms: Option<i64>,
    /// Newest message the business sent (API send or echo from the phone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outbound_ms: Option<i64>,
    /// The bot stays quiet until then: a person answered from the phone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover_until_ms: Option<i64>,
    /// Latest delivery status of the last [`STATUS_MEMORY`] messages sent.
    #[serde(skip_serializing_if = "StatusLog::is_empty")]
    pub statuses: StatusLog,
    /// When the customer opted out of business-initiated messages (their message was one of
    /// `[api] opt_out_words`); cleared when they opt in again (START, SUBSCRIBE, UNSTOP).
    /// Broadcasts skip them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opted_out_at_ms: Option<i64>,
    /// The bot author's typed state, as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot_state: Option<Value>,
    /// Incremented by every successful save; the store refuses a save made from a stale copy.
    pub version: u64,
    /// Every id seen for this contact (phone, business-scoped id, WhatsApp Web ids, name).
    #[serde(skip_serializing_if = "Contact::is_empty")]
    pub contact: Contact,
}

impl ConversationState {
    /// Remembers ids and names this event carries that the state does not know yet.
    pub fn merge_contact(&mut self, seen: &Contact) {
        let c = &mut self.contact;
        for (mine, theirs) in [
            (&mut c.wa_id, &seen.wa_id),
            (&mut c.user_id, &seen.user_id),
            (&mut c.parent_user_id, &seen.parent_user_id),
            (&mut c.phone_jid, &seen.phone_jid),
            (&mut c.lid, &seen.lid),
            (&mut c.name, &seen.name),
            (&mut c.username, &seen.username),
        ] {
            if let Some(v) = theirs.as_ref().filter(|v| !v.is_empty()) {
                if mine.as_ref() != Some(v) {
                    *mine = Some(v.clone());
                }
            }
        }
    }
}

/// Delivery status of a sent message, ordered by progress. `Failed` is terminal: nothing
/// moves a message out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Delivered,
    Read,
    Played,
    Failed,
}

impl DeliveryStatus {
    /// Parses Meta's names and the gateway names the wire layer may pass through
    /// (`server` = sent, `device` = delivered, `error` = failed). Unknown names give `None`.
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        Some(match name.to_ascii_lowercase().as_str() {
            "pending" => DeliveryStatus::Pending,
            "sent" | "server" => DeliveryStatus::Sent,
            "delivered" | "device" => DeliveryStatus::Delivered,
            "read" => DeliveryStatus::Read,
            "played" => DeliveryStatus::Played,
            "failed" | "error" => DeliveryStatus::Failed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Played => "played",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounded memory of message id → latest status, most recently updated last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatusLog(VecDeque<(String, DeliveryStatus)>);

impl StatusLog {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, message_id: &str) -> Option<DeliveryStatus> {
        self.0
            .iter()
            .find(|(id, _)| id == message_id)
            .map(|(_, s)| *s)
    }

    /// Records `status` unless the message already reached it or a later one. Returns the
    /// previous status and whether the record moved forward.
    pub fn advance(
        &mut self,
        message_id: &str,
        status: DeliveryStatus,
    ) -> (Option<DeliveryStatus>, bool) {
        let pos = self.0.iter().position(|(id, _)| id == message_id);
        let previous = pos.map(|i| self.0[i].1);
        if previous.is_some_and(|p| p >= status) {
            return (previous, false);
        }
        if let Some(i) = pos {
            self.0.remove(i);
        }
        self.0.push_back((message_id.to_owned(), status));
        while self.0.len() > STATUS_MEMORY {
            self.0.pop_front();
        }
        (previous, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_order_and_names() {
        use DeliveryStatus::*;
        assert!(
            Pending < Sent
                && Sent < Delivered
                && Delivered < Read
                && Read < Played
                && Played < Failed
        );
        for (name, s) in [
            ("SERVER", Sent),
            ("device", Delivered),
            ("error", Failed),
            ("played", Played),
        ] {
            assert_eq!(DeliveryStatus::parse(name), Some(s), "{name}");
        }
        assert_eq!(DeliveryStatus::parse("deleted"), None);
    }

    #[test]
    fn status_log_is_bounded_and_monotonic() {
        let mut log = StatusLog::default();
        for i in 0..(STATUS_MEMORY + 10) {
            log.advance(&format!("m{i}"), DeliveryStatus::Sent);
        }
        assert_eq!(log.len(), STATUS_MEMORY);
        assert_eq!(log.get("m0"), None, "oldest forgotten");
        assert_eq!(
            log.advance("m70", DeliveryStatus::Read),
            (Some(DeliveryStatus::Sent), true)
        );
        assert_eq!(
            log.advance("m70", DeliveryStatus::Delivered),
            (Some(DeliveryStatus::Read), false)
        );
        assert_eq!(log.get("m70"), Some(DeliveryStatus::Read));
    }

    #[test]
    fn empty_state_serializes_small_and_loads_from_partial_json() {
        let json = serde_json::to_string(&ConversationState::default()).unwrap();
        assert_eq!(json, r#"{"version":0}"#);
        let s: ConversationState =
            serde_json::from_str(r#"{"window_end_ms":5,"future_field":1}"#).unwrap();
        assert_eq!(s.window_end_ms, Some(5));
    }

    #[test]
    fn merge_contact_keeps_known_ids() {
        let mut s = ConversationState::default();
        s.merge_contact(&Contact {
            wa_id: Some("1555".into()),
            ..Default::default()
        });
        s.merge_contact(&Contact {
            user_id: Some("US.1".into()),
            wa_id: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(s.contact.wa_id.as_deref(), Some("1555"));
        assert_eq!(s.contact.user_id.as_deref(), Some("US.1"));
    }
}
