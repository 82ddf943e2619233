//! The normalized event: the one type every part of coexist speaks.
//!
//! Ingress turns each element of a webhook (a Meta message, status, echo, error, a change of
//! another field, a WAHA envelope) into one `Event`; the queue stores its JSON; workers and
//! bots read it back. Fields that a payload does not carry are left out of the JSON, and the
//! element's own JSON is kept whole in `raw`, so nothing Meta or a gateway sends is lost.

use crate::channel::ChannelKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an event is about. Serialized in lowercase (`"message"`, `"status"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A message the customer sent to the business.
    Message,
    /// A delivery status of a message the business sent (sent, delivered, read, failed, …).
    Status,
    /// A message the business sent from the phone app (coexistence echo, WAHA `fromMe`).
    Echo,
    /// Coexistence chat history (`history` field).
    History,
    /// Coexistence contact sync (`smb_app_state_sync`).
    ContactSync,
    /// Account, template, quality and other business-level notifications.
    Account,
    /// Personal gateway session status (`session.status`).
    Session,
    /// An `errors[]` element: a system, app or account error not tied to one message.
    Error,
    /// A service-window timer fired (made by workers, never by ingress).
    Timer,
    /// A message the business queued was given up at send time (window closed while it
    /// waited, 131047, undeliverable, …): made by the sender, delivered through the
    /// conversation's partition so the bot can fall back (a template, say).
    #[serde(rename = "outbound.failed")]
    OutboundFailed,
    /// A voice call with the business (Meta's `calls` field: connect, terminate, and call
    /// statuses): the call is in [`Event::call`]. A customer's call opens the service window.
    Call,
    /// A contact's WhatsApp Story (WAHA chat `status@broadcast`): the author is the contact;
    /// it belongs to no conversation and never wakes a message handler.
    Story,
    /// A post in a WhatsApp Channel (newsletter, `…@newsletter`) the number follows: no
    /// conversation, never a message handler.
    Newsletter,
    /// Anything else, kept raw.
    Unknown,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Message => "message",
            EventType::Status => "status",
            EventType::Echo => "echo",
            EventType::History => "history",
            EventType::ContactSync => "contact_sync",
            EventType::Account => "account",
            EventType::Session => "session",
            EventType::Error => "error",
            EventType::Timer => "timer",
            EventType::OutboundFailed => "outbound.failed",
            EventType::Call => "call",
            EventType::Story => "story",
            EventType::Newsletter => "newsletter",
            EventType::Unknown => "unknown",
        }
    }

    pub const ALL: [EventType; 14] = [
        EventType::Message,
        EventType::Status,
        EventType::Echo,
        EventType::History,
        EventType::ContactSync,
        EventType::Account,
        EventType::Session,
        EventType::Error,
        EventType::Timer,
        EventType::OutboundFailed,
        EventType::Call,
        EventType::Story,
        EventType::Newsletter,
        EventType::Unknown,
    ];
}

/// The normalized event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable dedupe key: the same element delivered twice has the same id.
    pub id: String,
    /// Configured channel id (or the `phone_number_id` / WAHA session when parsed without config).
    pub channel: String,
    pub kind: ChannelKind,
    /// The customer's side of the conversation; empty for account-level events.
    pub conversation: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The element's own timestamp in milliseconds (0 when the payload has none).
    pub at: i64,
    /// When ingress accepted the webhook, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<i64>,
    /// Every id the payload gives for the customer; used to keep one person one conversation.
    #[serde(default, skip_serializing_if = "Contact::is_empty")]
    pub contact: Contact,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// For `account`, `history`, `contact_sync`, `unknown` and `error` events: the webhook field
    /// or gateway event name (e.g. `account_update`, `session.status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `timer` events: which timer fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timer>,
    /// For `outbound.failed` events: the message given up and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundFailure>,
    /// For `call` events: which call, and what happened to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Call>,
    /// The element exactly as the payload carried it.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub raw: Value,
}

/// A WhatsApp call (Meta Calling API webhooks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Meta's call id (`wacid.…`).
    pub id: String,
    /// `connect` (ringing: it carries the SDP offer in `raw`), `terminate` (ended), or `status`
    /// (a business-initiated call's progress: see `status`).
    pub event: String,
    /// `USER_INITIATED` or `BUSINESS_INITIATED`, as Meta sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// How it ended or where it stands: `COMPLETED`, `FAILED`, `RINGING`, `ACCEPTED`,
    /// `REJECTED`, … as Meta sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Length of a terminated call, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<i64>,
}

impl Call {
    /// The customer called (rather than the business).
    pub fn is_from_customer(&self) -> bool {
        self.direction
            .as_deref()
            .is_none_or(|d| d.eq_ignore_ascii_case("USER_INITIATED"))
    }
}

/// An outbound message that was given up: what it was and why (`outbound.failed` events).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboundFailure {
    /// The message id (its outbox key), as `GET /v1/channels/{ch}/messages/{id}` knows it.
    pub id: String,
    /// The message as queued, in the forward protocol's reply shape.
    pub message: Value,
    /// A snake_case code: `window_closed`, `templates_unsupported`, `unsupported_on_channel`,
    /// `undeliverable`, `rejected`, `unauthorized`, `bad_response`, … (see the README).
    pub code: String,
    /// Meta's or the gateway's error code, when it gave one (131047, 131026, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<i64>,
    /// The error, for people.
    pub error: String,
}

impl OutboundFailure {
    /// The customer service window is closed (our rules or Meta's 131047 / 470 said so).
    pub fn closes_window(&self) -> bool {
        self.code == "window_closed"
    }
}

/// Ids of the customer. `wa_id` is the phone-number id, `user_id` Meta's business-scoped id,
/// `lid` a WhatsApp Web hidden id (`…@lid`), `phone_jid` a WhatsApp Web phone JID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_jid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

impl Contact {
    pub fn is_empty(&self) -> bool {
        self.ids().next().is_none() && self.name.is_none() && self.username.is_none()
    }

    /// All ids of this person, most preferred first (phone before business-scoped, per DESIGN).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        [&self.wa_id, &self.phone_jid, &self.user_id, &self.lid]
            .into_iter()
            .filter_map(|id| id.as_deref())
            .filter(|id| !id.is_empty())
    }
}

/// A message, inbound or echoed. Common parts are lifted into fields; the type's own object
/// stays in `Event::raw`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The provider's message id (wamid, or the gateway's id).
    pub id: String,
    /// Message type as the provider names it (`text`, `image`, `interactive`, `button`, …),
    /// with interactive replies named by their subtype (`button_reply`, `list_reply`, `nfm_reply`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Text body, media caption, button text or reply title — whatever text the message shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The id of a tapped reply button or list row, or a template quick-reply payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub button_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// The message this one replies to, reacts to, edits or revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Click-to-WhatsApp ad or Page CTA referral: opens the 72 h free entry point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Value>,
    /// `context` as sent (quoted message, forwarded flags, referred product).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// Errors attached to the message (`unsupported` types carry 131051 / 131060).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorDetail>,
    /// For echoes: sent from the phone app (`app`) or through the API (`api`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// Where the worker kept its copy of the file (`[media] store`), set before the bot runs;
    /// absent when no store is configured or the copy could not be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_path: Option<String>,
}

/// Delivery status of a message the business sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The id of the message this status is about.
    pub message_id: String,
    /// `sent`, `delivered`, `read`, `played`, `failed`, or for gateways `pending`/`server`/…,
    /// mapped onto the same names where they mean the same thing.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorDetail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Value>,
    /// Echo of the value the sender put on the message (coexist puts its outbox key there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biz_opaque_callback_data: Option<String>,
}

impl Status {
    /// True when an error code says the customer service window is closed (131047, legacy 470).
    pub fn closes_window(&self) -> bool {
        self.errors.iter().any(ErrorDetail::is_window_closed)
    }
}

/// An error object as Meta sends it (`code` may arrive as a number or a string).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl ErrorDetail {
    pub fn is_window_closed(&self) -> bool {
        self.code == 131047 || self.code == 470
    }
}

/// Which service-window timer fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// `window.expiring` or `window.closed`.
    pub name: String,
    /// When the window closes, in milliseconds.
    pub window_end: i64,
    /// For `window.expiring`: how long before the end it fired, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_ms: Option<i64>,
}

impl Event {
    /// One JSON line, as `coexist parse` prints it and the queue stores it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an Event always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_omits_absent_fields() {
        let e = Event {
            id: "wamid.X".into(),
            channel: "shop".into(),
            kind: ChannelKind::Waba,
            conversation: "16505551234".into(),
            event_type: EventType::Message,
            at: 1_700_000_000_000,
            received_at: None,
            contact: Contact {
                wa_id: Some("16505551234".into()),
                ..Default::default()
            },
            message: Some(Message {
                id: "wamid.X".into(),
                kind: "text".into(),
                text: Some("hé".into()),
                ..Default::default()
            }),
            status: None,
            field: None,
            timer: None,
            outbound: None,
            call: None,
            raw: Value::Null,
        };
        let json = e.to_json();
        assert!(json.contains(r#""type":"message""#), "{json}");
        assert!(!json.contains("status"), "{json}");
        assert!(!json.contains("raw"), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn contact_ids_prefer_phone() {
        let c = Contact {
            user_id: Some("US.1".into()),
            wa_id: Some("1555".into()),
            ..Default::default()
        };
        assert_eq!(c.ids().collect::<Vec<_>>(), vec!["1555", "US.1"]);
        assert!(Contact::default().is_empty());
    }

    #[test]
    fn window_closing_codes() {
        let s = Status {
            errors: vec![ErrorDetail {
                code: 470,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(s.closes_window());
        let s = Status {
            errors: vec![ErrorDetail {
                code: 131026,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!s.closes_window());
    }
}
