//! What a bot asks to send, in the forward protocol's JSON shape (DESIGN.md, "Forward bot").
//!
//! A [`Reply`] says nothing about the channel: the same reply goes to a WABA number through
//! the Graph API or to a Personal number through WAHA, and [`super::rules`] decides whether the
//! channel allows it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One reply, tagged by `type` exactly as a forward bot writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `{"type":"text","text":"…","preview_url":true}`
    Text {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview_url: Option<bool>,
    },
    /// `{"type":"template","name":"…","language":"en_US","components":[…]}` (WABA only).
    Template {
        name: String,
        language: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        components: Vec<Value>,
    },
    /// `{"type":"interactive","interactive":{…}}`: Meta's interactive object, passed through.
    Interactive { interactive: Value },
    /// `{"type":"reaction","message_id":"…","emoji":"…"}`; an empty emoji removes a reaction.
    Reaction { message_id: String, emoji: String },
    /// `{"type":"mark_read","message_id":"…","typing":true}`: read receipt (+ typing bubble).
    MarkRead {
        message_id: String,
        #[serde(default, skip_serializing_if = "is_false")]
        typing: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Reply {
    /// A plain text reply.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text {
            text: text.into(),
            preview_url: None,
        }
    }

    /// The `type` tag (also the metric / audit-log name).
    pub fn type_name(&self) -> &'static str {
        match self {
            Reply::Text { .. } => "text",
            Reply::Template { .. } => "template",
            Reply::Interactive { .. } => "interactive",
            Reply::Reaction { .. } => "reaction",
            Reply::MarkRead { .. } => "mark_read",
        }
    }

    /// A message the user sees as a new chat bubble: counts against per-contact pacing.
    /// Read receipts are not messages and are never paced per contact.
    pub fn is_message(&self) -> bool {
        !matches!(self, Reply::MarkRead { .. })
    }
}

/// One reply addressed to one conversation of one channel, with its idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Channel id (`[[channels]] id`).
    pub channel: String,
    /// The conversation id: a phone `wa_id`, a business-scoped user id (`US.123…`), or a
    /// WAHA chat id (`…@s.whatsapp.net`, `…@c.us`, `…@lid`, `…@g.us`).
    pub to: String,
    pub reply: Reply,
    /// `<source event id>:<reply index>`: the same reply of the same event is sent once.
    pub outbox_key: String,
    /// Quote-reply to this message id (Meta `context.message_id`, WAHA `reply_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl OutgoingMessage {
    pub fn new(
        channel: impl Into<String>,
        to: impl Into<String>,
        reply: Reply,
        outbox_key: impl Into<String>,
    ) -> OutgoingMessage {
        OutgoingMessage {
            channel: channel.into(),
            to: to.into(),
            reply,
            outbox_key: outbox_key.into(),
            reply_to: None,
        }
    }

    /// The outbox key of reply `index` of event `event_id`.
    pub fn outbox_key_for(event_id: &str, index: usize) -> String {
        format!("{event_id}:{index}")
    }
}

/// The send went out (or had already gone out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// wamid / gateway message id; `dry-run:<outbox key>` without credentials; for
    /// `mark_read` the id of the message marked read.
    pub message_id: String,
    /// The outbox already held this key as sent: nothing was sent this time.
    pub duplicate: bool,
}

impl Sent {
    pub fn new(message_id: impl Into<String>) -> Sent {
        Sent {
            message_id: message_id.into(),
            duplicate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forward_protocol_shapes_round_trip() {
        let cases = [
            (json!({"type":"text","text":"hi"}), Reply::text("hi")),
            (
                json!({"type":"text","text":"see https://x","preview_url":true}),
                Reply::Text {
                    text: "see https://x".into(),
                    preview_url: Some(true),
                },
            ),
            (
                json!({"type":"template","name":"order_update","language":"en_US",
                       "components":[{"type":"body","parameters":[{"type":"text","text":"#1"}]}]}),
                Reply::Template {
                    name: "order_update".into(),
                    language: "en_US".into(),
                    components: vec![
                        json!({"type":"body","parameters":[{"type":"text","text":"#1"}]}),
                    ],
                },
            ),
            (
                json!({"type":"interactive","interactive":{"type":"button","body":{"text":"?"}}}),
                Reply::Interactive {
                    interactive: json!({"type":"button","body":{"text":"?"}}),
                },
            ),
            (
                json!({"type":"reaction","message_id":"wamid.1","emoji":"👍"}),
                Reply::Reaction {
                    message_id: "wamid.1".into(),
                    emoji: "👍".into(),
                },
            ),
            (
                json!({"type":"mark_read","message_id":"wamid.1","typing":true}),
                Reply::MarkRead {
                    message_id: "wamid.1".into(),
                    typing: true,
                },
            ),
        ];
        for (value, reply) in cases {
            let parsed: Reply = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(parsed, reply);
            assert_eq!(serde_json::to_value(&reply).unwrap(), value);
        }
        let r: Reply =
            serde_json::from_value(json!({"type":"mark_read","message_id":"m"})).unwrap();
        assert_eq!(
            r,
            Reply::MarkRead {
                message_id: "m".into(),
                typing: false
            }
        );
        assert!(serde_json::from_value::<Reply>(json!({"type":"sticker"})).is_err());
    }
}
