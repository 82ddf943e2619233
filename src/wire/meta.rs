//! Meta WhatsApp Cloud API webhook payloads.
//!
//! Envelope `{object, entry:[{id, time?, changes:[{field, value}]}]}`. Every entry, every change
//! and every element is read (never index 0 only):
//!
//! | `field` | events |
//! | --- | --- |
//! | `messages` | one `message` per `messages[]`, one `status` per `statuses[]`, one `error` per `errors[]` |
//! | `smb_message_echoes` | one `echo` per `message_echoes[]` |
//! | `history` | one `history` per change |
//! | `smb_app_state_sync` | one `contact_sync` per change |
//! | account, template, quality, preference … fields | one `account` per change |
//! | anything else | one `unknown` per change |
//!
//! Event ids (dedupe keys, stable across Meta's retries): message → wamid; status →
//! `{wamid}:{status}` (group statuses: `{wamid}:{status}:{participant}`); echo → `echo:{id}`; error → `error:` + 32 hex of SHA-256 over
//! entry id + field + canonical JSON of the error + entry time; per-change events →
//! `{field}:` + 32 hex of SHA-256 over entry id + canonical JSON of the value.

use super::util::{
    canonical_json, error_details, int_of, nonempty, path, seconds_to_ms, short_hash, string_of,
};
use super::ParseError;
use crate::channel::ChannelKind;
use crate::event::{Contact, Event, EventType, Media, Message, Status};
use serde_json::Value;

/// Parses a Meta webhook body into one event per element.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, ParseError> {
    let value: Value = super::util::parse_json(body).map_err(ParseError::from_json)?;
    parse_value(value)
}

/// Webhook fields that are business-level notifications (type `account`).
pub const ACCOUNT_FIELDS: &[&str] = &[
    "account_update",
    "account_alerts",
    "account_review_update",
    "account_settings_update",
    "automatic_events",
    "business_capability_update",
    "business_status_update",
    "business_username_updates",
    "message_template_components_update",
    "message_template_quality_update",
    "message_template_status_update",
    "partner_solutions",
    "payment_configuration_update",
    "phone_number_name_update",
    "phone_number_quality_update",
    "security",
    "template_category_update",
    "template_correct_category_detection",
    "user_id_update",
    "user_preferences",
];

/// Media message types whose object carries `{id, url, mime_type, sha256, filename?, caption?}`.
const MEDIA_TYPES: &[&str] = &["image", "video", "audio", "document", "sticker"];

/// What every event of one change shares.
struct ChangeCtx<'a> {
    entry_id: &'a str,
    entry_time: Option<&'a Value>,
    field: &'a str,
    channel: String,
    contacts: &'a [Value],
}

impl ChangeCtx<'_> {
    /// An event of this change; `raw` is moved in by the caller (no copy of the element).
    fn event(&self, id: String, event_type: EventType, at: Option<i64>) -> Event {
        Event {
            id,
            channel: self.channel.clone(),
            kind: ChannelKind::Waba,
            conversation: String::new(),
            event_type,
            at: at
                .or_else(|| self.entry_time.and_then(seconds_to_ms))
                .unwrap_or(0),
            received_at: None,
            contact: Contact::default(),
            message: None,
            status: None,
            field: None,
            timer: None,
            outbound: None,
            call: None,
            raw: Value::Null,
        }
    }

    fn entry_time_text(&self) -> String {
        match self.entry_time {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    }
}

pub fn parse_value(mut value: Value) -> Result<Vec<Event>, ParseError> {
    // The tree is taken apart as it is read: each element moves into its event's `raw`
    // instead of being copied (the hot path of ingress).
    let entries = match value.get_mut("entry").and_then(Value::as_array_mut) {
        Some(entries) => std::mem::take(entries),
        None => {
            return Err(ParseError::Shape {
                format: "Meta",
                reason: "no `entry` array".into(),
            })
        }
    };
    let mut events = Vec::new();
    for mut entry in entries {
        let entry_id = string_of(entry.get("id")).unwrap_or_default();
        let entry_time = entry.get_mut("time").map(Value::take);
        let changes = entry
            .get_mut("changes")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        for mut change in changes {
            let field = change
                .get("field")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let value = change
                .get_mut("value")
                .map(Value::take)
                .unwrap_or(Value::Null);
            let channel = nonempty(path(&value, &["metadata", "phone_number_id"]))
                .unwrap_or_else(|| format!("waba:{entry_id}"));
            parse_change(
                &entry_id,
                entry_time.as_ref(),
                &field,
                channel,
                value,
                &mut events,
            );
        }
    }
    Ok(events)
}

fn array<'a>(value: &'a Value, key: &str) -> Option<&'a [Value]> {
    value.get(key).and_then(Value::as_array).map(Vec::as_slice)
}

fn parse_change(
    entry_id: &str,
    entry_time: Option<&Value>,
    field: &str,
    channel: String,
    mut value: Value,
    out: &mut Vec<Event>,
) {
    let mut take = |key: &str| -> Option<Vec<Value>> {
        value
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
    };
    let (messages, statuses, errors, echoes) = match field {
        "messages" => (take("messages"), take("statuses"), take("errors"), None),
        "smb_message_echoes" => (None, None, None, take("message_echoes")),
        _ => (None, None, None, None),
    };
    let (calls, call_statuses) = match field {
        "calls" => (take("calls"), take("statuses")),
        _ => (None, None),
    };
    // Whole-change fields need no contacts: their value moves into the event uncopied.
    let whole = |event_type: EventType, value: Value| {
        let ctx = ChangeCtx {
            entry_id,
            entry_time,
            field,
            channel: channel.clone(),
            contacts: &[],
        };
        change_event(&ctx, value, event_type)
    };
    match field {
        "messages" | "smb_message_echoes" => {}
        "calls" if calls.is_some() || call_statuses.is_some() => {}
        "history" => return out.push(whole(EventType::History, value)),
        "smb_app_state_sync" => return out.push(whole(EventType::ContactSync, value)),
        f if ACCOUNT_FIELDS.contains(&f) => return out.push(whole(EventType::Account, value)),
        _ => return out.push(whole(EventType::Unknown, value)),
    }
    let ctx = ChangeCtx {
        entry_id,
        entry_time,
        field,
        channel,
        contacts: array(&value, "contacts").unwrap_or(&[]),
    };
    if field == "calls" {
        let calls = calls.into_iter().flatten().map(|c| (c, false));
        let statuses = call_statuses.into_iter().flatten().map(|c| (c, true));
        for (c, is_status) in calls.chain(statuses) {
            let mut e = call_event(&ctx, &c, is_status);
            e.raw = c;
            out.push(e);
        }
        return;
    }
    if messages.is_none() && statuses.is_none() && errors.is_none() && echoes.is_none() {
        // A `messages` / echoes change with none of the known arrays: keep it, raw.
        return out.push(change_event(&ctx, value.clone(), EventType::Unknown));
    }
    let count = messages.as_ref().map_or(0, Vec::len);
    for m in messages.unwrap_or_default() {
        let mut e = message_event(&ctx, &m, count);
        e.raw = m;
        out.push(e);
    }
    for s in statuses.unwrap_or_default() {
        let mut e = status_event(&ctx, &s);
        e.raw = s;
        out.push(e);
    }
    for err in errors.unwrap_or_default() {
        let mut e = error_event(&ctx, &err);
        e.raw = err;
        out.push(e);
    }
    for m in echoes.unwrap_or_default() {
        let mut e = echo_event(&ctx, &m);
        e.raw = m;
        out.push(e);
    }
}

/// One event for a whole change (`history`, `contact_sync`, `account`, `unknown`).
fn change_event(ctx: &ChangeCtx<'_>, value: Value, event_type: EventType) -> Event {
    let id = format!(
        "{}:{}",
        ctx.field,
        short_hash(&[ctx.entry_id, &canonical_json(&value)])
    );
    let mut e = ctx.event(id, event_type, change_timestamp(&value));
    e.field = Some(ctx.field.to_string());
    e.raw = value;
    e
}

/// A timestamp carried inside a per-change value, if any.
fn change_timestamp(value: &Value) -> Option<i64> {
    let first = |key: &str, ts: &[&str]| {
        array(value, key).and_then(|a| a.iter().find_map(|el| path(el, ts).and_then(seconds_to_ms)))
    };
    first("state_sync", &["metadata", "timestamp"])
        .or_else(|| first("user_preferences", &["timestamp"]))
        .or_else(|| value.get("timestamp").and_then(seconds_to_ms))
}

fn error_event(ctx: &ChangeCtx<'_>, error: &Value) -> Event {
    let hash = short_hash(&[
        ctx.entry_id,
        ctx.field,
        &canonical_json(error),
        &ctx.entry_time_text(),
    ]);
    let mut e = ctx.event(format!("error:{hash}"), EventType::Error, None);
    e.field = Some(ctx.field.to_string());
    e
}

/// The `contacts[]` entry whose `wa_id` or `user_id` matches one of the given ids.
fn find_contact<'a>(
    contacts: &'a [Value],
    wa_id: Option<&str>,
    user_id: Option<&str>,
) -> Option<&'a Value> {
    contacts.iter().find(|c| {
        let c_wa = c.get("wa_id").and_then(Value::as_str);
        let c_user = c.get("user_id").and_then(Value::as_str);
        (wa_id.is_some() && c_wa == wa_id) || (user_id.is_some() && c_user == user_id)
    })
}

/// Completes `contact` from the change's `contacts[]` entry that names the same person.
fn complete_from_contacts(ctx: &ChangeCtx<'_>, contact: &mut Contact) {
    if let Some(c) = find_contact(
        ctx.contacts,
        contact.wa_id.as_deref(),
        contact.user_id.as_deref(),
    ) {
        merge_contact(contact, c);
    }
}

/// Fills the ids the element lacks from a matched `contacts[]` entry, plus name and username.
fn merge_contact(contact: &mut Contact, c: &Value) {
    if contact.wa_id.is_none() {
        contact.wa_id = nonempty(c.get("wa_id"));
    }
    if contact.user_id.is_none() {
        contact.user_id = nonempty(c.get("user_id"));
    }
    if contact.parent_user_id.is_none() {
        contact.parent_user_id = nonempty(c.get("parent_user_id"));
    }
    contact.name = nonempty(path(c, &["profile", "name"]));
    contact.username = nonempty(path(c, &["profile", "username"]));
}

fn conversation_of(contact: &Contact) -> String {
    contact
        .wa_id
        .clone()
        .or_else(|| contact.user_id.clone())
        .unwrap_or_default()
}

fn message_event(ctx: &ChangeCtx<'_>, m: &Value, messages_in_change: usize) -> Event {
    let mut contact = Contact {
        wa_id: nonempty(m.get("from")),
        user_id: nonempty(m.get("from_user_id")),
        parent_user_id: nonempty(m.get("from_parent_user_id")),
        ..Default::default()
    };
    let matched = find_contact(
        ctx.contacts,
        contact.wa_id.as_deref(),
        contact.user_id.as_deref(),
    )
    .or({
        if ctx.contacts.len() == 1 && messages_in_change == 1 {
            ctx.contacts.first()
        } else {
            None
        }
    });
    if let Some(c) = matched {
        merge_contact(&mut contact, c);
    }
    let message = normalize_message(m, None);
    let id = if message.id.is_empty() {
        format!(
            "message:{}",
            short_hash(&[ctx.entry_id, &canonical_json(m)])
        )
    } else {
        message.id.clone()
    };
    message_like(ctx, id, EventType::Message, m, contact, message)
}

fn echo_event(ctx: &ChangeCtx<'_>, m: &Value) -> Event {
    let mut contact = Contact {
        wa_id: nonempty(m.get("to")).map(|to| to.trim_start_matches('+').to_string()),
        user_id: nonempty(m.get("to_user_id")),
        parent_user_id: nonempty(m.get("to_parent_user_id")),
        ..Default::default()
    };
    complete_from_contacts(ctx, &mut contact);
    let message = normalize_message(m, Some("app"));
    let id = if message.id.is_empty() {
        format!("echo:{}", short_hash(&[ctx.entry_id, &canonical_json(m)]))
    } else {
        format!("echo:{}", message.id)
    };
    message_like(ctx, id, EventType::Echo, m, contact, message)
}

/// A message or an echo: its own timestamp, the customer as the conversation.
fn message_like(
    ctx: &ChangeCtx<'_>,
    id: String,
    event_type: EventType,
    m: &Value,
    contact: Contact,
    message: Message,
) -> Event {
    let mut e = ctx.event(id, event_type, m.get("timestamp").and_then(seconds_to_ms));
    e.conversation = conversation_of(&contact);
    e.contact = contact;
    e.message = Some(message);
    e
}

/// One element of a `calls` change: a call (`connect`, `terminate`) or, from `statuses[]`, the
/// progress of a business-initiated call (`RINGING`, `ACCEPTED`, `REJECTED`).
fn call_event(ctx: &ChangeCtx<'_>, c: &Value, is_status: bool) -> Event {
    let call_id = nonempty(c.get("id")).unwrap_or_default();
    let direction = nonempty(c.get("direction"));
    let event = if is_status {
        "status".to_string()
    } else {
        nonempty(c.get("event")).unwrap_or_else(|| "unknown".into())
    };
    let status = nonempty(c.get("status"));
    // The customer: the caller of their own call; the callee of the business's.
    let business_called = is_status
        || direction
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case("BUSINESS_INITIATED"));
    let customer = if is_status {
        nonempty(c.get("recipient_id")).or_else(|| nonempty(c.get("to")))
    } else if business_called {
        nonempty(c.get("to"))
    } else {
        nonempty(c.get("from"))
    };
    let mut contact = Contact {
        wa_id: customer.map(|w| w.trim_start_matches('+').to_string()),
        user_id: nonempty(c.get(if business_called {
            "to_user_id"
        } else {
            "from_user_id"
        })),
        ..Default::default()
    };
    complete_from_contacts(ctx, &mut contact);
    let id = if call_id.is_empty() {
        format!("call:{}", short_hash(&[ctx.entry_id, &canonical_json(c)]))
    } else {
        let what = if is_status {
            status.as_deref().unwrap_or("status")
        } else {
            event.as_str()
        };
        format!("call:{call_id}:{}", what.to_ascii_lowercase())
    };
    let mut e = ctx.event(
        id,
        EventType::Call,
        c.get("timestamp").and_then(seconds_to_ms),
    );
    e.conversation = conversation_of(&contact);
    e.contact = contact;
    e.field = Some(ctx.field.to_string());
    e.call = Some(crate::event::Call {
        id: call_id,
        event,
        direction,
        status,
        duration_secs: c.get("duration").and_then(int_of),
    });
    e
}

fn status_event(ctx: &ChangeCtx<'_>, s: &Value) -> Event {
    let group = s.get("recipient_type").and_then(Value::as_str) == Some("group");
    let recipient_id = nonempty(s.get("recipient_id"));
    let mut contact = Contact {
        wa_id: if group { None } else { recipient_id.clone() },
        user_id: nonempty(s.get("recipient_user_id")),
        parent_user_id: nonempty(s.get("recipient_parent_user_id")),
        ..Default::default()
    };
    complete_from_contacts(ctx, &mut contact);
    let message_id = nonempty(s.get("id")).unwrap_or_default();
    let status_name = nonempty(s.get("status")).unwrap_or_default();
    let status = Status {
        message_id: message_id.clone(),
        status: status_name.clone(),
        recipient: recipient_id.clone().or_else(|| contact.user_id.clone()),
        errors: error_details(s.get("errors")),
        pricing: s.get("pricing").cloned(),
        conversation: s.get("conversation").cloned(),
        biz_opaque_callback_data: nonempty(s.get("biz_opaque_callback_data")),
    };
    // Group statuses are aggregated per participant: each participant's status is its own element.
    let participant = if group {
        nonempty(s.get("recipient_participant_id"))
            .or_else(|| nonempty(s.get("recipient_participant_user_id")))
    } else {
        None
    };
    let id = match (message_id.is_empty(), participant) {
        (true, _) => format!("status:{}", short_hash(&[ctx.entry_id, &canonical_json(s)])),
        (false, Some(p)) => format!("{message_id}:{status_name}:{p}"),
        (false, None) => format!("{message_id}:{status_name}"),
    };
    let mut e = ctx.event(
        id,
        EventType::Status,
        s.get("timestamp").and_then(seconds_to_ms),
    );
    // A group status is about the group: the group is the conversation.
    e.conversation = if group {
        recipient_id.unwrap_or_else(|| conversation_of(&contact))
    } else {
        conversation_of(&contact)
    };
    e.contact = contact;
    e.status = Some(status);
    e
}

/// The kind of a message as coexist names it: the `type`, except interactive replies, which
/// are named by their subtype (`button_reply`, `list_reply`, `nfm_reply`, …).
pub fn message_kind(m: &Value) -> String {
    let kind = m.get("type").and_then(Value::as_str).unwrap_or("unknown");
    if kind == "interactive" {
        if let Some(sub) = path(m, &["interactive", "type"]).and_then(Value::as_str) {
            return sub.to_string();
        }
    }
    kind.to_string()
}

/// The text a message shows: body, caption, button text, reply title, reaction emoji, the new
/// text of an edit, the system notice.
fn text_of(m: &Value, kind: &str) -> Option<String> {
    let type_name = m.get("type").and_then(Value::as_str).unwrap_or(kind);
    match type_name {
        "text" => nonempty(path(m, &["text", "body"])),
        t if MEDIA_TYPES.contains(&t) => nonempty(path(m, &[t, "caption"])),
        "button" => nonempty(path(m, &["button", "text"])),
        "interactive" => {
            let i = m.get("interactive")?;
            nonempty(path(i, &[kind, "title"])).or_else(|| nonempty(path(i, &[kind, "body"])))
        }
        "reaction" => nonempty(path(m, &["reaction", "emoji"])),
        "edit" => {
            let inner = path(m, &["edit", "message"])?;
            text_of(inner, &message_kind(inner))
        }
        "system" => nonempty(path(m, &["system", "body"])),
        "order" => nonempty(path(m, &["order", "text"])),
        _ => None,
    }
}

fn button_id_of(m: &Value, kind: &str) -> Option<String> {
    match kind {
        "button_reply" | "list_reply" => nonempty(path(m, &["interactive", kind, "id"])),
        "button" => nonempty(path(m, &["button", "payload"])),
        _ => None,
    }
}

fn media_of(m: &Value) -> Option<Media> {
    let t = m.get("type").and_then(Value::as_str)?;
    if t == "edit" {
        return media_of(path(m, &["edit", "message"])?);
    }
    if !MEDIA_TYPES.contains(&t) {
        return None;
    }
    let o = m.get(t)?;
    Some(Media {
        id: nonempty(o.get("id")),
        url: nonempty(o.get("url")),
        mime_type: nonempty(o.get("mime_type")),
        sha256: nonempty(o.get("sha256")),
        filename: nonempty(o.get("filename")),
        stored_path: None,
    })
}

fn reply_to_of(m: &Value) -> Option<String> {
    nonempty(path(m, &["reaction", "message_id"]))
        .or_else(|| nonempty(path(m, &["edit", "original_message_id"])))
        .or_else(|| nonempty(path(m, &["revoke", "original_message_id"])))
        .or_else(|| nonempty(path(m, &["context", "id"])))
}

/// The normalized part of an inbound message or an echo.
fn normalize_message(m: &Value, source: Option<&str>) -> Message {
    let kind = message_kind(m);
    Message {
        id: nonempty(m.get("id")).unwrap_or_default(),
        text: text_of(m, &kind),
        button_id: button_id_of(m, &kind),
        media: media_of(m),
        reply_to: reply_to_of(m),
        referral: m.get("referral").cloned(),
        context: m.get("context").cloned(),
        errors: error_details(m.get("errors")),
        source: source.map(str::to_string),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(field: &str, value: Value) -> Value {
        json!({"object": "whatsapp_business_account",
               "entry": [{"id": "1", "time": 1700000000, "changes": [{"field": field, "value": value}]}]})
    }

    #[test]
    fn no_entry_is_shape_error_and_empty_entry_is_fine() {
        assert!(matches!(
            parse_value(json!({"object": "x"})),
            Err(ParseError::Shape { .. })
        ));
        assert!(matches!(
            parse(b"{\n  \"entry\": ["),
            Err(ParseError::Json { line: 2, .. })
        ));
        assert_eq!(parse_value(json!({"entry": []})).unwrap(), vec![]);
        // entries or changes of the wrong shape produce nothing, never a panic
        assert_eq!(
            parse_value(json!({"entry": [1, {"changes": "x"}, {"changes": [7]}]}))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn kinds_and_texts() {
        let m = json!({"type": "interactive", "interactive": {"type": "list_reply",
            "list_reply": {"id": "row-1", "title": "Express"}}});
        assert_eq!(message_kind(&m), "list_reply");
        let n = normalize_message(&m, None);
        assert_eq!(
            (n.text.as_deref(), n.button_id.as_deref()),
            (Some("Express"), Some("row-1"))
        );
        assert_eq!(message_kind(&json!({"type": "interactive"})), "interactive");
        assert_eq!(message_kind(&json!({})), "unknown");
        let edit = json!({"type": "edit", "edit": {"original_message_id": "wamid.A",
            "message": {"type": "text", "text": {"body": "new"}}}});
        let n = normalize_message(&edit, None);
        assert_eq!(
            (n.text.as_deref(), n.reply_to.as_deref()),
            (Some("new"), Some("wamid.A"))
        );
        let r = normalize_message(
            &json!({"type": "reaction", "reaction": {"message_id": "wamid.B", "emoji": ""}}),
            None,
        );
        assert_eq!((r.text, r.reply_to.as_deref()), (None, Some("wamid.B")));
    }

    #[test]
    fn single_contact_pairs_with_single_message_and_ids_are_optional() {
        let v = json!({"metadata": {"phone_number_id": "P"},
            "contacts": [{"profile": {"name": "N", "username": "u"}, "user_id": "US.1"}],
            "messages": [{"from_user_id": "US.1", "id": "wamid.M", "timestamp": 1700000001, "type": "text",
                          "text": {"body": "hi"}}]});
        let ev = parse_value(envelope("messages", v)).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].conversation, "US.1");
        assert_eq!(ev[0].contact.wa_id, None);
        assert_eq!(ev[0].contact.username.as_deref(), Some("u"));
        assert_eq!(ev[0].at, 1_700_000_001_000);
        assert_eq!(ev[0].channel, "P");
    }

    #[test]
    fn account_level_change_uses_waba_channel_and_entry_time() {
        let ev = parse_value(envelope(
            "account_update",
            json!({"event": "VERIFIED_ACCOUNT"}),
        ))
        .unwrap();
        assert_eq!(ev[0].event_type, EventType::Account);
        assert_eq!(ev[0].channel, "waba:1");
        assert_eq!(ev[0].at, 1_700_000_000_000);
        assert_eq!(ev[0].field.as_deref(), Some("account_update"));
        assert!(ev[0].id.starts_with("account_update:"));
        let again = parse_value(envelope(
            "account_update",
            json!({"event": "VERIFIED_ACCOUNT"}),
        ))
        .unwrap();
        assert_eq!(ev[0].id, again[0].id);
        let ev = parse_value(envelope("calls_v9", json!({"x": 1}))).unwrap();
        assert_eq!(ev[0].event_type, EventType::Unknown);
        assert_eq!(ev[0].raw, json!({"x": 1}));
    }
}
