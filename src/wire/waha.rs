//! WAHA (WhatsApp HTTP API) webhook envelopes.
//!
//! One envelope per body: `{id?, timestamp?, event, session, me?, payload, engine?,
//! environment?, metadata?}`, one event per envelope. `raw` keeps the whole envelope.
//!
//! | `event` | type | id |
//! | --- | --- | --- |
//! | `message`, `message.any` | `message`, or `echo` when `fromMe` | `waha:{payload.id}` (the same for both names) |
//! | `message.ack`, `message.ack.group` | `status` | `waha:{payload.id}:ack:{ack}` |
//! | `session.status` | `session` | envelope `id`, else `session:{status}:{timestamp}` |
//! | `message.reaction`, `message.edited`, `message.revoked` | `message` (kind `reaction`/`edit`/`revoke`) | `waha:{event}:{payload.id}` |
//! | anything else | `unknown` | envelope `id`, else `waha:` + hash of the body |
//!
//! Bodies of other gateways that also carry an `event` name (GOWA: `device_id`; Evolution API:
//! `instance`) and no `session` are kept as `unknown`: their payloads mean different things.

use super::util::{
    canonical_json, int_of, is_lid, is_phone_jid, nonempty, normalize_jid, path, seconds_to_ms,
    short_hash, string_of,
};
use super::ParseError;
use crate::channel::ChannelKind;
use crate::event::{Contact, Event, EventType, Media, Message, Status};
use serde_json::Value;

/// Parses a WAHA webhook body (one envelope) into its events.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, ParseError> {
    let value: Value = super::util::parse_json(body).map_err(ParseError::from_json)?;
    parse_value(value)
}

pub fn parse_value(value: Value) -> Result<Vec<Event>, ParseError> {
    let name = value
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| ParseError::Shape {
            format: "WAHA",
            reason: "no `event` name".into(),
        })?;
    let name = name.to_string();
    let other_gateway = value.get("session").is_none()
        && (value.get("device_id").is_some() || value.get("instance").is_some());
    let payload = value.get("payload").filter(|p| p.is_object()).cloned();
    let event = match (other_gateway, payload) {
        (true, _) | (false, None) => unknown_event(&name, &value),
        (false, Some(p)) => match name.as_str() {
            "message" | "message.any" if has_id(&p) => message_event(&p, &value),
            "message.ack" | "message.ack.group" if has_id(&p) => ack_event(&p, &value),
            "message.reaction" | "message.edited" | "message.revoked" => {
                change_event(&name, &p, &value)
            }
            "session.status" => session_event(&p, &value),
            "call.received" | "call.accepted" | "call.rejected" if has_id(&p) => {
                call_event(&name, &p, &value)
            }
            _ => unknown_event(&name, &value),
        },
    };
    Ok(vec![event])
}

fn has_id(p: &Value) -> bool {
    nonempty(p.get("id")).is_some()
}

fn base_event(id: String, event_type: EventType, at: i64, envelope: &Value) -> Event {
    Event {
        id,
        channel: string_of(envelope.get("session")).unwrap_or_default(),
        kind: ChannelKind::Personal,
        conversation: String::new(),
        event_type,
        at,
        received_at: None,
        contact: Contact::default(),
        message: None,
        status: None,
        field: None,
        timer: None,
        outbound: None,
        call: None,
        raw: envelope.clone(),
    }
}

/// The envelope's own timestamp (already milliseconds).
fn envelope_ms(envelope: &Value) -> Option<i64> {
    envelope.get("timestamp").and_then(int_of)
}

/// `payload.timestamp` (seconds) in ms, else the envelope timestamp, else 0.
fn at_of(p: &Value, envelope: &Value) -> i64 {
    p.get("timestamp")
        .and_then(seconds_to_ms)
        .or_else(|| envelope_ms(envelope))
        .unwrap_or(0)
}

/// The chat id inside a WAHA message id `{true|false}_{chatId}_{msgId}[_{participant}]`,
/// normalized (`@c.us` → `@s.whatsapp.net`).
pub fn chat_id_from_message_id(id: &str) -> Option<String> {
    let rest = id
        .strip_prefix("true_")
        .or_else(|| id.strip_prefix("false_"))?;
    let (chat, msg) = rest.split_once('_')?;
    (chat.contains('@') && !msg.is_empty()).then(|| normalize_jid(chat))
}

/// Where a message names its chat: `to` for own messages, `from` for received ones.
fn own_chat_key(p: &Value) -> &'static str {
    if p.get("fromMe").and_then(Value::as_bool) == Some(true) {
        "to"
    } else {
        "from"
    }
}

fn is_user_jid(jid: &str) -> bool {
    is_phone_jid(jid) || is_lid(jid)
}

/// Who the message is with: the contact's ids and the conversation key.
/// `chat_key` is the payload field naming the chat when the message id does not (`from` for
/// inbound messages and acks, `to` for own messages).
fn contact_of(p: &Value, envelope: &Value, chat_key: &str) -> (Contact, String) {
    let from_me = p.get("fromMe").and_then(Value::as_bool).unwrap_or(false);
    let jid = |v: Option<&Value>| nonempty(v).map(|s| normalize_jid(&s));
    let me = jid(path(envelope, &["me", "id"]));
    let chat = nonempty(p.get("id"))
        .and_then(|id| chat_id_from_message_id(&id))
        .or_else(|| jid(p.get(chat_key)))
        .unwrap_or_default();
    let key = |k: &str| jid(path(p, &["_data", "key", k]));
    let mut contact = Contact::default();
    let mut consider = |c: Option<String>| {
        let Some(c) = c else { return };
        if Some(&c) == me.as_ref() {
            return;
        }
        if is_phone_jid(&c) && contact.phone_jid.is_none() {
            contact.phone_jid = Some(c);
        } else if is_lid(&c) && contact.lid.is_none() {
            contact.lid = Some(c);
        }
    };
    if is_user_jid(&chat) {
        // A direct chat: the chat is the person; the key's alternates give the other id.
        consider(Some(chat.clone()));
        consider(key("remoteJid"));
        consider(key("remoteJidAlt"));
        if !from_me {
            consider(key("senderPn"));
            consider(key("senderLid"));
        }
        if !from_me {
            consider(jid(p.get("from")));
        }
    } else if !from_me {
        // A group (or broadcast): the person is the participant; the chat stays the conversation.
        consider(jid(p.get("participant")));
        consider(key("participant"));
        consider(key("participantAlt"));
        consider(key("participantPn"));
    }
    if !from_me {
        contact.name = nonempty(path(p, &["_data", "pushName"]))
            .or_else(|| nonempty(path(p, &["_data", "notifyName"])));
    }
    let conversation = if is_story_or_channel(&chat) {
        // Stories and Channel posts belong to no conversation (one shared "status@broadcast"
        // conversation would mix every contact's Stories and let the bot answer them).
        String::new()
    } else if is_user_jid(&chat) || chat.is_empty() {
        contact
            .phone_jid
            .clone()
            .or_else(|| contact.lid.clone())
            .unwrap_or(chat)
    } else {
        chat
    };
    (contact, conversation)
}

/// The chat of a message: from its id, else `chat_key` (`from` / `to`), normalized.
fn chat_of(p: &Value, chat_key: &str) -> String {
    nonempty(p.get("id"))
        .and_then(|id| chat_id_from_message_id(&id))
        .or_else(|| nonempty(p.get(chat_key)).map(|s| normalize_jid(&s)))
        .unwrap_or_default()
}

/// WhatsApp Stories live in the chat `status@broadcast`; Channel (newsletter) posts in
/// `…@newsletter` chats.
fn is_story_or_channel(chat: &str) -> bool {
    chat == STORIES_CHAT || chat.ends_with("@newsletter")
}

/// The chat WhatsApp Web files every contact's Story under.
pub const STORIES_CHAT: &str = "status@broadcast";

/// The message kind: `text` for a body without media, else the media type.
fn kind_of(p: &Value) -> String {
    if let Some(mime) = nonempty(path(p, &["media", "mimetype"])) {
        let top = mime.split('/').next().unwrap_or("");
        return match top {
            "image" | "video" | "audio" => top.to_string(),
            _ => "document".to_string(),
        };
    }
    let data_type = nonempty(path(p, &["_data", "type"]));
    match data_type.as_deref() {
        Some("chat") => return "text".into(),
        Some("ptt") => return "audio".into(),
        Some("vcard") | Some("multi_vcard") => return "contacts".into(),
        _ => {}
    }
    if p.get("hasMedia").and_then(Value::as_bool) == Some(true) {
        return data_type.unwrap_or_else(|| "media".into());
    }
    if nonempty(p.get("body")).is_some() {
        return "text".into();
    }
    if p.get("location").is_some_and(|l| !l.is_null()) {
        return "location".into();
    }
    if p.get("vCards")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return "contacts".into();
    }
    data_type.unwrap_or_else(|| "unknown".into())
}

fn media_of(p: &Value) -> Option<Media> {
    let m = p.get("media").filter(|m| m.is_object())?;
    let url = nonempty(m.get("url"));
    Some(Media {
        // The gateway's file name (`/api/files/<session>/<name>`): what the media route and
        // `ctx.media()` fetch the file by.
        id: url.as_deref().and_then(file_name),
        url,
        mime_type: nonempty(m.get("mimetype")),
        sha256: None,
        filename: nonempty(m.get("filename")),
        stored_path: None,
    })
}

/// The last path segment of a WAHA file URL (`…/api/files/default/ABC.jpeg` → `ABC.jpeg`).
fn file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let (_, rest) = path.split_once("/api/files/")?;
    let name = rest.rsplit('/').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

fn reply_to_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => nonempty(o.get("id")),
        _ => None,
    }
}

fn message_event(p: &Value, envelope: &Value) -> Event {
    let from_me = p.get("fromMe").and_then(Value::as_bool).unwrap_or(false);
    let id = nonempty(p.get("id")).unwrap_or_default();
    let (contact, conversation) = contact_of(p, envelope, own_chat_key(p));
    let chat = chat_of(p, own_chat_key(p));
    let event_type = if chat == STORIES_CHAT {
        EventType::Story
    } else if chat.ends_with("@newsletter") {
        EventType::Newsletter
    } else if from_me {
        EventType::Echo
    } else {
        EventType::Message
    };
    let mut e = base_event(
        format!("waha:{id}"),
        event_type,
        at_of(p, envelope),
        envelope,
    );
    e.conversation = conversation;
    e.contact = contact;
    e.message = Some(Message {
        id,
        kind: kind_of(p),
        text: nonempty(p.get("body")),
        media: media_of(p),
        reply_to: reply_to_of(p.get("replyTo")),
        source: if from_me {
            nonempty(p.get("source"))
        } else {
            None
        },
        ..Default::default()
    });
    e
}

/// `call.received` / `call.accepted` / `call.rejected`: a call from a contact.
fn call_event(name: &str, p: &Value, envelope: &Value) -> Event {
    let id = nonempty(p.get("id")).unwrap_or_default();
    let (event, status) = match name {
        "call.received" => ("connect", None),
        "call.accepted" => ("status", Some("ACCEPTED")),
        _ => ("terminate", Some("REJECTED")),
    };
    let (contact, conversation) = contact_of(p, envelope, "from");
    let mut e = base_event(
        format!("waha:call:{id}:{event}"),
        EventType::Call,
        at_of(p, envelope),
        envelope,
    );
    // A group call has no one conversation.
    if p.get("isGroup").and_then(Value::as_bool) != Some(true) {
        e.conversation = conversation;
    }
    e.contact = contact;
    e.call = Some(crate::event::Call {
        id,
        event: event.into(),
        direction: Some("USER_INITIATED".into()),
        status: status.map(str::to_string),
        duration_secs: None,
    });
    e
}

/// WAHA ack → the status name coexist uses. `ack` wins over `ackName` when both are present.
pub fn ack_status(ack: Option<i64>, ack_name: Option<&str>) -> String {
    let by_number = match ack {
        Some(-1) => Some("failed"),
        Some(0) => Some("pending"),
        Some(1) => Some("sent"),
        Some(2) => Some("delivered"),
        Some(3) => Some("read"),
        Some(4) => Some("played"),
        _ => None,
    };
    let by_name = match ack_name.map(str::to_ascii_uppercase).as_deref() {
        Some("ERROR") => Some("failed"),
        Some("PENDING") => Some("pending"),
        Some("SERVER") => Some("sent"),
        Some("DEVICE") => Some("delivered"),
        Some("READ") => Some("read"),
        Some("PLAYED") => Some("played"),
        _ => None,
    };
    by_number
        .or(by_name)
        .map(str::to_string)
        .or_else(|| ack_name.map(str::to_ascii_lowercase))
        .unwrap_or_else(|| "unknown".into())
}

fn ack_event(p: &Value, envelope: &Value) -> Event {
    let id = nonempty(p.get("id")).unwrap_or_default();
    let ack = p.get("ack").and_then(int_of);
    let ack_name = p.get("ackName").and_then(Value::as_str);
    let status = ack_status(ack, ack_name);
    let ack_text = ack.map(|a| a.to_string()).unwrap_or_else(|| status.clone());
    let (contact, conversation) = contact_of(p, envelope, "from");
    let mut e = base_event(
        format!("waha:{id}:ack:{ack_text}"),
        EventType::Status,
        at_of(p, envelope),
        envelope,
    );
    e.status = Some(Status {
        message_id: id,
        status,
        recipient: (!conversation.is_empty()).then(|| conversation.clone()),
        ..Default::default()
    });
    e.conversation = conversation;
    e.contact = contact;
    e
}

fn session_event(p: &Value, envelope: &Value) -> Event {
    let status = nonempty(p.get("status")).unwrap_or_default();
    let ts = envelope_ms(envelope);
    let id = nonempty(envelope.get("id")).unwrap_or_else(|| {
        format!(
            "session:{status}:{}",
            ts.map(|t| t.to_string()).unwrap_or_default()
        )
    });
    let mut e = base_event(id, EventType::Session, ts.unwrap_or(0), envelope);
    e.field = Some("session.status".into());
    e
}

/// `message.reaction`, `message.edited`, `message.revoked`: a `message` event about another message.
fn change_event(name: &str, p: &Value, envelope: &Value) -> Event {
    // `message.revoked` carries the message in `after` (and `before`), not at the top.
    let inner = if has_id(p) {
        p
    } else {
        p.get("after").filter(|a| has_id(a)).unwrap_or(p)
    };
    let id = nonempty(inner.get("id"))
        .or_else(|| nonempty(p.get("revokedMessageId")))
        .unwrap_or_else(|| short_hash(&[&canonical_json(envelope)]));
    let (contact, conversation) = contact_of(inner, envelope, own_chat_key(inner));
    let (kind, text, reply_to) = match name {
        "message.reaction" => (
            "reaction",
            nonempty(path(p, &["reaction", "text"])),
            nonempty(path(p, &["reaction", "messageId"])),
        ),
        "message.edited" => (
            "edit",
            nonempty(p.get("body")),
            nonempty(p.get("editedMessageId"))
                .or_else(|| nonempty(path(p, &["_data", "editedMessageId"]))),
        ),
        _ => (
            "revoke",
            None,
            nonempty(p.get("revokedMessageId"))
                .or_else(|| nonempty(path(p, &["before", "id"])))
                .or_else(|| nonempty(path(p, &["after", "id"]))),
        ),
    };
    let from_me = inner
        .get("fromMe")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut e = base_event(
        format!("waha:{name}:{id}"),
        EventType::Message,
        at_of(inner, envelope),
        envelope,
    );
    e.conversation = conversation;
    e.contact = contact;
    e.message = Some(Message {
        id,
        kind: kind.into(),
        text,
        reply_to,
        source: if from_me {
            nonempty(inner.get("source"))
        } else {
            None
        },
        ..Default::default()
    });
    e
}

fn unknown_event(name: &str, envelope: &Value) -> Event {
    let id = nonempty(envelope.get("id"))
        .unwrap_or_else(|| format!("waha:{}", short_hash(&[&canonical_json(envelope)])));
    let at = envelope_ms(envelope).unwrap_or(0);
    let mut e = base_event(id, EventType::Unknown, at, envelope);
    e.field = Some(name.to_string());
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_ids_from_message_ids() {
        assert_eq!(
            chat_id_from_message_id("false_11111111111@c.us_AAAA").as_deref(),
            Some("11111111111@s.whatsapp.net")
        );
        assert_eq!(
            chat_id_from_message_id("true_120363@g.us_BBBB_2222@c.us").as_deref(),
            Some("120363@g.us")
        );
        assert_eq!(
            chat_id_from_message_id("false_4639135154355@lid_297A").as_deref(),
            Some("4639135154355@lid")
        );
        assert_eq!(chat_id_from_message_id("3EB0C127D7BACC83D6A1"), None);
        assert_eq!(chat_id_from_message_id("true_nochat"), None);
    }

    #[test]
    fn ack_mapping() {
        assert_eq!(ack_status(Some(-1), None), "failed");
        assert_eq!(ack_status(Some(0), Some("PENDING")), "pending");
        assert_eq!(ack_status(None, Some("SERVER")), "sent");
        assert_eq!(ack_status(Some(2), None), "delivered");
        assert_eq!(ack_status(Some(3), Some("READ")), "read");
        assert_eq!(ack_status(None, Some("played")), "played");
        assert_eq!(ack_status(Some(9), Some("FUTURE")), "future");
        assert_eq!(ack_status(None, None), "unknown");
    }

    #[test]
    fn missing_event_is_shape_error_missing_payload_is_unknown() {
        assert!(matches!(
            parse_value(json!({"session": "default"})),
            Err(ParseError::Shape { .. })
        ));
        let ev = parse_value(json!({"event": "message", "session": "default"})).unwrap();
        assert_eq!(ev[0].event_type, EventType::Unknown);
        assert!(ev[0].id.starts_with("waha:"));
        assert_eq!(ev[0].channel, "default");
    }

    #[test]
    fn device_suffix_and_alternate_ids() {
        let env = json!({"event": "message", "session": "s", "me": {"id": "999@c.us"},
            "payload": {"id": "false_4639@lid_ABC", "timestamp": "1750699027", "from": "4639:7@lid", "fromMe": false,
                        "body": "oi", "_data": {"key": {"remoteJid": "4639@lid", "remoteJidAlt": "5511987654321:12@s.whatsapp.net"},
                        "notifyName": "Ana"}}});
        let ev = parse_value(env).unwrap();
        let e = &ev[0];
        assert_eq!(e.contact.lid.as_deref(), Some("4639@lid"));
        assert_eq!(
            e.contact.phone_jid.as_deref(),
            Some("5511987654321@s.whatsapp.net")
        );
        assert_eq!(e.conversation, "5511987654321@s.whatsapp.net");
        assert_eq!(e.contact.name.as_deref(), Some("Ana"));
        assert_eq!(e.at, 1_750_699_027_000);
        assert_eq!(e.message.as_ref().unwrap().kind, "text");
    }

    #[test]
    fn ack_without_chat_in_id_falls_back_to_from() {
        let env = json!({"event": "message.ack", "session": "s", "timestamp": 1750000000123_i64,
            "payload": {"id": "3EB0ABC", "from": "16505551234@c.us", "to": "me@c.us", "fromMe": true, "ack": 2}});
        let e = &parse_value(env).unwrap()[0];
        assert_eq!(e.id, "waha:3EB0ABC:ack:2");
        assert_eq!(e.conversation, "16505551234@s.whatsapp.net");
        assert_eq!(e.at, 1_750_000_000_123);
        assert_eq!(e.status.as_ref().unwrap().status, "delivered");
    }

    #[test]
    fn own_message_without_chat_in_id_uses_to() {
        let env = json!({"event": "message.any", "session": "s", "me": {"id": "15550783881@c.us"},
            "payload": {"id": "3EB0DEF", "from": "15550783881@c.us", "to": "16505551234@c.us", "fromMe": true,
                        "source": "api", "body": "hi"}});
        let e = &parse_value(env).unwrap()[0];
        assert_eq!(e.event_type, EventType::Echo);
        assert_eq!(e.conversation, "16505551234@s.whatsapp.net");
        assert_eq!(e.message.as_ref().unwrap().source.as_deref(), Some("api"));
    }

    #[test]
    fn reply_to_string_or_object() {
        assert_eq!(reply_to_of(Some(&json!("x"))).as_deref(), Some("x"));
        assert_eq!(
            reply_to_of(Some(&json!({"id": "y", "body": "b"}))).as_deref(),
            Some("y")
        );
        assert_eq!(reply_to_of(Some(&json!(null))), None);
    }
}
