//! The bodies of the send API, read into typed requests: plain functions, no I/O. Every
//! refusal names the field it is about.
//!
//! A message is one reply in the forward protocol's shape (`{"type": "text", "text": "…"}`),
//! plus `to`. Where the Cloud API's own request shape differs, it is accepted too, so a body
//! written for Meta's `/messages` works as is: `"text": {"body": "…", "preview_url": true}`,
//! `"template": {"name", "language": {"code"}, "components"}`, `"reaction": {"message_id",
//! "emoji"}`, `"context": {"message_id"}` for a quote-reply.

use crate::channel::ChannelKind;
use crate::outbound::Reply;
use serde_json::{Map, Value};

/// One message to send.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRequest {
    /// The recipient as given (a wa_id, a business-scoped user id, a WAHA chat id).
    pub to: String,
    pub reply: Reply,
    /// Quote-reply to this message id.
    pub reply_to: Option<String>,
}

/// A body the API cannot use, and the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The longest `to` accepted (WhatsApp ids are far shorter).
const MAX_TO: usize = 128;
/// The longest text body WhatsApp accepts.
pub const MAX_TEXT: usize = 4096;

/// Reads `POST /v1/channels/{channel}/messages`.
pub fn message(body: &[u8]) -> Result<MessageRequest, FieldError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!("not JSON: {e} (line {}, column {})", e.line(), e.column()),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(bad("body", "expected a JSON object"));
    };
    message_from(&obj, "")
}

/// Reads one message object; `prefix` names where it sits (`message.` in a broadcast).
pub fn message_from(obj: &Map<String, Value>, prefix: &str) -> Result<MessageRequest, FieldError> {
    let to = recipient(obj.get("to"), &format!("{prefix}to"))?;
    let reply = reply_from(obj, prefix)?;
    let reply_to = match obj.get("context").or(obj.get("reply_to")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Object(c)) => match c.get("message_id") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => {
                return Err(bad(
                    &format!("{prefix}context.message_id"),
                    "expected the id of the message to quote",
                ))
            }
        },
        Some(_) => {
            return Err(bad(
                &format!("{prefix}context"),
                "expected {\"message_id\": \"…\"}",
            ))
        }
    };
    Ok(MessageRequest {
        to,
        reply,
        reply_to,
    })
}

/// A recipient id: non-empty, no spaces, not absurdly long.
pub fn recipient(value: Option<&Value>, field: &str) -> Result<String, FieldError> {
    match value {
        None | Some(Value::Null) => Err(bad(
            field,
            "missing: the recipient's wa_id, business-scoped user id or chat id",
        )),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(bad(field, "empty"))
            } else if s.len() > MAX_TO || s.chars().any(char::is_whitespace) {
                Err(bad(field, "not a WhatsApp id"))
            } else {
                Ok(s.to_string())
            }
        }
        Some(_) => Err(bad(field, "expected a string")),
    }
}

/// The reply a message object describes (without `to`).
pub fn reply_from(obj: &Map<String, Value>, prefix: &str) -> Result<Reply, FieldError> {
    let f = |name: &str| format!("{prefix}{name}");
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None => return Err(bad(&f("type"), format!("missing: {TYPES}"))),
        Some(_) => return Err(bad(&f("type"), "expected a string")),
    };
    match kind {
        "text" => {
            let (text, preview) = match obj.get("text") {
                Some(Value::String(s)) => {
                    (s.clone(), obj.get("preview_url").and_then(Value::as_bool))
                }
                Some(Value::Object(t)) => match t.get("body") {
                    Some(Value::String(s)) => {
                        (s.clone(), t.get("preview_url").and_then(Value::as_bool))
                    }
                    _ => return Err(bad(&f("text.body"), "expected the text")),
                },
                _ => return Err(bad(&f("text"), "expected the text")),
            };
            if text.trim().is_empty() {
                return Err(bad(&f("text"), "empty"));
            }
            if text.chars().count() > MAX_TEXT {
                return Err(bad(
                    &f("text"),
                    format!("longer than {MAX_TEXT} characters"),
                ));
            }
            Ok(Reply::Text {
                text,
                preview_url: preview,
            })
        }
        "template" => {
            // Forward shape (name/language/components beside type) or Meta's nested one.
            let (t, base) = match obj.get("template") {
                Some(Value::Object(t)) => (t, f("template.")),
                Some(_) => return Err(bad(&f("template"), "expected an object")),
                None => (obj, prefix.to_string()),
            };
            let name = match t.get("name") {
                Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
                _ => return Err(bad(&format!("{base}name"), "expected the template's name")),
            };
            let language = match t.get("language") {
                Some(Value::String(l)) if !l.is_empty() => l.clone(),
                Some(Value::Object(l)) => match l.get("code") {
                    Some(Value::String(c)) if !c.is_empty() => c.clone(),
                    _ => {
                        return Err(bad(
                            &format!("{base}language.code"),
                            "expected a language code such as en_US",
                        ))
                    }
                },
                _ => {
                    return Err(bad(
                        &format!("{base}language"),
                        "expected a language code such as en_US",
                    ))
                }
            };
            let components = match t.get("components") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(c)) if c.iter().all(Value::is_object) => c.clone(),
                Some(_) => {
                    return Err(bad(
                        &format!("{base}components"),
                        "expected an array of objects",
                    ))
                }
            };
            Ok(Reply::Template {
                name,
                language,
                components,
            })
        }
        "interactive" => match obj.get("interactive") {
            Some(Value::Object(i)) if i.get("type").is_some_and(Value::is_string) => {
                Ok(Reply::Interactive {
                    interactive: Value::Object(i.clone()),
                })
            }
            _ => Err(bad(
                &f("interactive"),
                "expected Meta's interactive object (with its type)",
            )),
        },
        "reaction" => {
            let r = match obj.get("reaction") {
                Some(Value::Object(r)) => r,
                _ => obj,
            };
            let message_id = match r.get("message_id") {
                Some(Value::String(m)) if !m.is_empty() => m.clone(),
                _ => {
                    return Err(bad(
                        &f("message_id"),
                        "expected the id of the message to react to",
                    ))
                }
            };
            let emoji = match r.get("emoji") {
                Some(Value::String(e)) => e.clone(),
                None | Some(Value::Null) => String::new(),
                Some(_) => return Err(bad(&f("emoji"), "expected a string")),
            };
            Ok(Reply::Reaction { message_id, emoji })
        }
        "mark_read" => Err(bad(
            &f("type"),
            "mark_read answers an inbound message: bots send it, the API does not",
        )),
        "image" | "video" | "audio" | "document" | "sticker" | "location" | "contacts" => {
            rich_reply(obj, kind, prefix)
        }
        other => Err(bad(&f("type"), format!("unknown type {other:?}: {TYPES}"))),
    }
}

/// Every `type` a message may have.
const TYPES: &str = "text, template, interactive, reaction, image, video, audio, document, \
sticker, location or contacts";

/// A media, location or contacts message: its fields beside `type` (forward shape) or in an
/// object named by the type (Meta's shape: `"image": {"link", "caption"}`); `contacts` is
/// the list itself in both.
fn rich_reply(obj: &Map<String, Value>, kind: &str, prefix: &str) -> Result<Reply, FieldError> {
    let (mut fields, base) = match obj.get(kind) {
        Some(Value::Object(inner)) => (inner.clone(), format!("{prefix}{kind}.")),
        Some(Value::Array(list)) if kind == "contacts" => {
            let mut m = Map::new();
            m.insert("contacts".into(), Value::Array(list.clone()));
            (m, prefix.to_string())
        }
        Some(Value::Null) | None => {
            let mut m = obj.clone();
            for envelope in [
                "to",
                "context",
                "reply_to",
                "messaging_product",
                "recipient_type",
            ] {
                m.remove(envelope);
            }
            (m, prefix.to_string())
        }
        Some(_) => return Err(bad(&format!("{prefix}{kind}"), "expected an object")),
    };
    fields.insert("type".into(), Value::String(kind.to_string()));
    let reply: Reply = serde_json::from_value(Value::Object(fields)).map_err(|e| {
        let text = e.to_string();
        // serde names the field in its message (`missing field `latitude``, `invalid type …`).
        let field = text
            .split('`')
            .nth(1)
            .filter(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(kind);
        bad(&format!("{base}{field}"), text)
    })?;
    if let Some((field, reason)) = reply.invalid() {
        return Err(bad(&format!("{base}{field}"), reason));
    }
    Ok(reply)
}

/// The conversation id a recipient names on a channel kind: a WAHA chat id for Personal
/// (`16505551234` and `…@c.us` become `…@s.whatsapp.net`, as ingress names them), the id as
/// given on WABA (a leading `+` dropped: wa_ids have none).
pub fn conversation_id(kind: ChannelKind, to: &str) -> String {
    match kind {
        ChannelKind::Waba => to.strip_prefix('+').unwrap_or(to).to_string(),
        ChannelKind::Personal => {
            let bare = to.strip_prefix('+').unwrap_or(to);
            match bare.split_once('@') {
                None if bare.chars().all(|c| c.is_ascii_digit()) => {
                    format!("{bare}@s.whatsapp.net")
                }
                Some((user, "c.us")) => format!("{user}@s.whatsapp.net"),
                _ => bare.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Result<MessageRequest, FieldError> {
        message(v.to_string().as_bytes())
    }

    #[test]
    fn both_shapes_of_every_type() {
        let cases = [
            (
                json!({"to": "1555", "type": "text", "text": "hi"}),
                Reply::text("hi"),
            ),
            (
                json!({"to": "1555", "type": "text", "text": {"body": "see x", "preview_url": true}}),
                Reply::Text {
                    text: "see x".into(),
                    preview_url: Some(true),
                },
            ),
            (
                json!({"to": "1555", "type": "template", "name": "t", "language": "en_US"}),
                Reply::Template {
                    name: "t".into(),
                    language: "en_US".into(),
                    components: vec![],
                },
            ),
            (
                json!({"to": "1555", "type": "template", "template": {"name": "t",
                       "language": {"code": "pt_BR"}, "components": [{"type": "body"}]}}),
                Reply::Template {
                    name: "t".into(),
                    language: "pt_BR".into(),
                    components: vec![json!({"type": "body"})],
                },
            ),
            (
                json!({"to": "1555", "type": "interactive", "interactive": {"type": "button"}}),
                Reply::Interactive {
                    interactive: json!({"type": "button"}),
                },
            ),
            (
                json!({"to": "1555", "type": "reaction", "reaction": {"message_id": "wamid.1", "emoji": "👍"}}),
                Reply::Reaction {
                    message_id: "wamid.1".into(),
                    emoji: "👍".into(),
                },
            ),
        ];
        for (body, reply) in cases {
            assert_eq!(read(body.clone()).unwrap().reply, reply, "{body}");
        }
        let quoted = read(
            json!({"to": "1", "type": "text", "text": "x", "context": {"message_id": "wamid.q"}}),
        );
        assert_eq!(quoted.unwrap().reply_to.as_deref(), Some("wamid.q"));
    }

    #[test]
    fn media_location_and_contacts_in_both_shapes() {
        use crate::outbound::message::MediaSource;
        let image = Reply::Image {
            media: MediaSource::link("https://cdn.example/mug.jpg"),
            caption: Some("Blue mug".into()),
        };
        let doc = Reply::Document {
            media: MediaSource::id("1234"),
            filename: Some("invoice.pdf".into()),
            caption: None,
        };
        let place = Reply::Location {
            latitude: 52.5,
            longitude: 13.4,
            name: Some("Shop".into()),
            address: None,
        };
        let card = json!({"name": {"formatted_name": "Ana"}, "phones": [{"phone": "+1555"}]});
        let cases = [
            (
                json!({"to": "1", "type": "image", "link": "https://cdn.example/mug.jpg", "caption": "Blue mug"}),
                image.clone(),
            ),
            (
                json!({"to": "1", "type": "image", "image": {"link": "https://cdn.example/mug.jpg", "caption": "Blue mug"}}),
                image,
            ),
            (
                json!({"to": "1", "type": "document", "id": "1234", "filename": "invoice.pdf"}),
                doc.clone(),
            ),
            (
                json!({"to": "1", "type": "document", "document": {"id": "1234", "filename": "invoice.pdf"}}),
                doc,
            ),
            (
                json!({"to": "1", "type": "audio", "id": "cxm_1", "voice": true}),
                Reply::Audio {
                    media: MediaSource::id("cxm_1"),
                    voice: true,
                },
            ),
            (
                json!({"to": "1", "type": "location", "latitude": 52.5, "longitude": 13.4, "name": "Shop"}),
                place.clone(),
            ),
            (
                json!({"to": "1", "type": "location", "location": {"latitude": 52.5, "longitude": 13.4, "name": "Shop"}}),
                place,
            ),
            (
                json!({"to": "1", "type": "contacts", "contacts": [card.clone()]}),
                Reply::Contacts {
                    contacts: vec![card],
                },
            ),
        ];
        for (body, reply) in cases {
            assert_eq!(read(body.clone()).unwrap().reply, reply, "{body}");
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        let cases = [
            (json!([]), "body"),
            (json!({"type": "text", "text": "x"}), "to"),
            (json!({"to": 5, "type": "text", "text": "x"}), "to"),
            (json!({"to": "a b", "type": "text", "text": "x"}), "to"),
            (json!({"to": "1"}), "type"),
            (json!({"to": "1", "type": "fax"}), "type"),
            (json!({"to": "1", "type": "image"}), "link"),
            (
                json!({"to": "1", "type": "image", "image": {"link": "ftp://x/a.png"}}),
                "image.link",
            ),
            (
                json!({"to": "1", "type": "document", "link": "https://x/a.pdf", "id": "9"}),
                "link",
            ),
            (json!({"to": "1", "type": "image", "image": "x"}), "image"),
            (
                json!({"to": "1", "type": "location", "latitude": 1.0}),
                "longitude",
            ),
            (
                json!({"to": "1", "type": "location", "location": {"latitude": 91.0, "longitude": 0.0}}),
                "location.latitude",
            ),
            (
                json!({"to": "1", "type": "location", "latitude": 1.0, "longitude": -181.0}),
                "longitude",
            ),
            (
                json!({"to": "1", "type": "video", "link": "https://x/v.mp4", "caption": "x".repeat(1025)}),
                "caption",
            ),
            (
                json!({"to": "1", "type": "location", "latitude": "north", "longitude": 0.0}),
                "location",
            ),
            (
                json!({"to": "1", "type": "contacts", "contacts": []}),
                "contacts",
            ),
            (
                json!({"to": "1", "type": "mark_read", "message_id": "m"}),
                "type",
            ),
            (json!({"to": "1", "type": "text"}), "text"),
            (json!({"to": "1", "type": "text", "text": "  "}), "text"),
            (
                json!({"to": "1", "type": "text", "text": {"preview_url": true}}),
                "text.body",
            ),
            (
                json!({"to": "1", "type": "template", "language": "en"}),
                "name",
            ),
            (
                json!({"to": "1", "type": "template", "name": "t"}),
                "language",
            ),
            (
                json!({"to": "1", "type": "template", "template": {"name": "t", "language": {}}}),
                "template.language.code",
            ),
            (
                json!({"to": "1", "type": "template", "name": "t", "language": "en", "components": [1]}),
                "components",
            ),
            (
                json!({"to": "1", "type": "interactive", "interactive": {}}),
                "interactive",
            ),
            (
                json!({"to": "1", "type": "reaction", "emoji": "x"}),
                "message_id",
            ),
            (
                json!({"to": "1", "type": "text", "text": "x", "context": 3}),
                "context",
            ),
        ];
        for (body, field) in cases {
            let e = read(body.clone()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
        let e = message(b"{\"to\": ").unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");
        let long = "x".repeat(MAX_TEXT + 1);
        assert_eq!(
            read(json!({"to": "1", "type": "text", "text": long}))
                .unwrap_err()
                .field,
            "text"
        );
    }

    #[test]
    fn recipients_become_the_conversation_ingress_names() {
        use ChannelKind::*;
        assert_eq!(conversation_id(Waba, "+16505551234"), "16505551234");
        assert_eq!(
            conversation_id(Waba, "US.13491208655302741918"),
            "US.13491208655302741918"
        );
        assert_eq!(
            conversation_id(Personal, "16505551234"),
            "16505551234@s.whatsapp.net"
        );
        assert_eq!(
            conversation_id(Personal, "16505551234@c.us"),
            "16505551234@s.whatsapp.net"
        );
        assert_eq!(conversation_id(Personal, "123@lid"), "123@lid");
        assert_eq!(conversation_id(Personal, "120363@g.us"), "120363@g.us");
    }
}
