//! Broadcast bodies, read into a typed request, and each recipient's own message: plain
//! functions, no I/O.
//!
//! JSON: `{"name": "…", "message": {…one message without "to"…}, "recipients": [{"to": "…",
//! "params": …}, …]}`. NDJSON (`application/x-ndjson`, for large lists): a first line with
//! `name` and `message`, then one recipient object per line.
//!
//! `params` fill the message for one recipient: for a template, an array of strings is the
//! body's parameters (`{{1}}`, `{{2}}`, …) and an object `{"components": […]}` replaces the
//! components; for a text, an object's values replace `{{key}}` in the text.

use super::request::{self, FieldError};
use crate::channel::ChannelKind;
use crate::outbound::Reply;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// Most recipients one broadcast may list.
pub const MAX_RECIPIENTS: usize = 1_000_000;
/// Above this many recipients a Personal broadcast gets a warning: a phone number that writes
/// to that many people in a burst risks a ban, paced or not.
pub const PERSONAL_WARNING_AT: usize = 200;

/// A broadcast as asked for, recipients deduplicated.
#[derive(Clone, Debug, PartialEq)]
pub struct BroadcastRequest {
    pub name: String,
    /// The message every recipient gets (before their `params`).
    pub message: Reply,
    /// `{"to", "params"}` JSON per recipient, in order, each `to` once.
    pub recipients: Vec<String>,
    /// Recipients listed again after their first time (left out, counted `skipped`).
    pub duplicates: u64,
}

fn bad(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Only the message of a broadcast body (JSON, or the first NDJSON line), so the channel's
/// rules can refuse it before the list is read. `None` when the body is not readable (the
/// full read says why).
pub fn message_only(body: &[u8], ndjson: bool) -> Option<Reply> {
    let head: Value = if ndjson {
        let text = std::str::from_utf8(body).ok()?;
        let first = text.lines().find(|l| !l.trim().is_empty())?;
        serde_json::from_str(first).ok()?
    } else {
        serde_json::from_slice(body).ok()?
    };
    let m = head.get("message")?.as_object()?;
    request::reply_from(m, "message.").ok()
}

/// Reads a JSON body.
pub fn from_json(body: &[u8], kind: ChannelKind) -> Result<BroadcastRequest, FieldError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad("body", format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad("body", "expected a JSON object"));
    };
    let (name, message) = head(&obj, "")?;
    let Some(Value::Array(list)) = obj.get("recipients") else {
        return Err(bad(
            "recipients",
            "expected an array of {\"to\", \"params\"}",
        ));
    };
    let mut b = Builder::new(name, message);
    for (i, r) in list.iter().enumerate() {
        b.add(r, &format!("recipients[{i}]"), kind)?;
    }
    b.finish()
}

/// Reads an NDJSON body: the first line names the broadcast and its message, then one
/// recipient per line (blank lines ignored). Errors name the line (`line 3: to`).
pub fn from_ndjson(body: &[u8], kind: ChannelKind) -> Result<BroadcastRequest, FieldError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("body", "not UTF-8"))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((n, first)) = lines.next() else {
        return Err(bad("body", "empty: the first line has name and message"));
    };
    let first: Value = serde_json::from_str(first)
        .map_err(|e| bad(&format!("line {}", n + 1), format!("not JSON: {e}")))?;
    let Value::Object(obj) = first else {
        return Err(bad(
            &format!("line {}", n + 1),
            "expected {\"name\", \"message\"}",
        ));
    };
    let (name, message) = head(&obj, "")?;
    let mut b = Builder::new(name, message);
    for (n, line) in lines {
        let field = format!("line {}", n + 1);
        let r: Value =
            serde_json::from_str(line).map_err(|e| bad(&field, format!("not JSON: {e}")))?;
        b.add(&r, &field, kind)?;
    }
    b.finish()
}

fn head(obj: &Map<String, Value>, prefix: &str) -> Result<(String, Reply), FieldError> {
    let name = match obj.get("name") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 200 => s.clone(),
        Some(_) => {
            return Err(bad(
                &format!("{prefix}name"),
                "expected a string (200 at most)",
            ))
        }
    };
    let Some(Value::Object(m)) = obj.get("message") else {
        return Err(bad(
            &format!("{prefix}message"),
            "expected one message object",
        ));
    };
    let message = request::reply_from(m, "message.")?;
    if matches!(message, Reply::Reaction { .. }) {
        return Err(bad(
            "message.type",
            "a reaction answers one message: not for a broadcast",
        ));
    }
    Ok((name, message))
}

struct Builder {
    name: String,
    message: Reply,
    seen: HashSet<String>,
    recipients: Vec<String>,
    duplicates: u64,
}

impl Builder {
    fn new(name: String, message: Reply) -> Self {
        Builder {
            name,
            message,
            seen: HashSet::new(),
            recipients: Vec::new(),
            duplicates: 0,
        }
    }

    fn add(&mut self, r: &Value, field: &str, kind: ChannelKind) -> Result<(), FieldError> {
        let Value::Object(r) = r else {
            return Err(bad(field, "expected {\"to\", \"params\"}"));
        };
        let to = request::recipient(r.get("to"), &format!("{field}.to"))?;
        let params = r.get("params").cloned().unwrap_or(Value::Null);
        // Checked now, so a bad list is refused whole instead of failing one by one later.
        personalize(&self.message, &params).map_err(|m| bad(&format!("{field}.params"), m))?;
        if self.recipients.len() + self.duplicates as usize >= MAX_RECIPIENTS {
            return Err(bad("recipients", format!("more than {MAX_RECIPIENTS}")));
        }
        if !self.seen.insert(request::conversation_id(kind, &to)) {
            self.duplicates += 1;
            return Ok(());
        }
        self.recipients
            .push(json!({"to": to, "params": params}).to_string());
        Ok(())
    }

    fn finish(self) -> Result<BroadcastRequest, FieldError> {
        if self.recipients.is_empty() {
            return Err(bad("recipients", "no recipient"));
        }
        Ok(BroadcastRequest {
            name: self.name,
            message: self.message,
            recipients: self.recipients,
            duplicates: self.duplicates,
        })
    }
}

/// One recipient's message: `message` filled with their `params` (see the module doc).
pub fn personalize(message: &Reply, params: &Value) -> Result<Reply, String> {
    match (message, params) {
        (_, Value::Null) => Ok(message.clone()),
        (
            Reply::Template {
                name,
                language,
                components,
            },
            Value::Array(values),
        ) => {
            if !values.iter().all(Value::is_string) {
                return Err(
                    "a template's params: an array of strings, or {\"components\": […]}".into(),
                );
            }
            let body = json!({
                "type": "body",
                "parameters": values.iter().map(|v| json!({"type": "text", "text": v})).collect::<Vec<_>>(),
            });
            let mut components: Vec<Value> = components
                .iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("body"))
                .cloned()
                .collect();
            components.push(body);
            Ok(Reply::Template {
                name: name.clone(),
                language: language.clone(),
                components,
            })
        }
        (Reply::Template { name, language, .. }, Value::Object(o)) => match o.get("components") {
            Some(Value::Array(c)) if c.iter().all(Value::is_object) => Ok(Reply::Template {
                name: name.clone(),
                language: language.clone(),
                components: c.clone(),
            }),
            _ => Err("a template's params: an array of strings, or {\"components\": […]}".into()),
        },
        (Reply::Text { text, preview_url }, Value::Object(o)) => {
            let mut out = text.clone();
            for (k, v) in o {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(format!("{k}: a text's params are strings or numbers")),
                };
                out = out.replace(&format!("{{{{{k}}}}}"), &v);
            }
            if out.chars().count() > request::MAX_TEXT {
                return Err(format!(
                    "the text becomes longer than {} characters",
                    request::MAX_TEXT
                ));
            }
            Ok(Reply::Text {
                text: out,
                preview_url: *preview_url,
            })
        }
        (Reply::Text { .. }, _) => Err("a text's params: an object of {\"key\": value}".into()),
        _ => Err("this message type takes no params".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_ndjson_give_the_same_broadcast_and_duplicates_are_counted() {
        let message = json!({"type": "template", "name": "promo", "language": "en_US"});
        let json_body = json!({"name": "spring", "message": message, "recipients": [
            {"to": "1555", "params": ["Ann"]}, {"to": "1666"}, {"to": "+1555", "params": ["again"]}]});
        let a = from_json(json_body.to_string().as_bytes(), ChannelKind::Waba).unwrap();
        let nd = format!(
            "{}\n{}\n\n{}\n{}\n",
            json!({"name": "spring", "message": message}),
            json!({"to": "1555", "params": ["Ann"]}),
            json!({"to": "1666"}),
            json!({"to": "+1555", "params": ["again"]}),
        );
        let b = from_ndjson(nd.as_bytes(), ChannelKind::Waba).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.recipients.len(), 2);
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.name, "spring");
    }

    #[test]
    fn refusals_name_the_recipient_or_the_line() {
        let m = json!({"type": "text", "text": "hi {{name}}"});
        let cases = [
            (json!({"message": m, "recipients": []}), "recipients"),
            (json!({"message": m}), "recipients"),
            (json!({"recipients": [{"to": "1"}]}), "message"),
            (
                json!({"message": {"type": "fax"}, "recipients": [{"to": "1"}]}),
                "message.type",
            ),
            (
                json!({"message": m, "recipients": [{"to": "1"}, {"to": ""}]}),
                "recipients[1].to",
            ),
            (
                json!({"message": m, "recipients": [{"to": "1", "params": [1]}]}),
                "recipients[0].params",
            ),
        ];
        for (body, field) in cases {
            let e = from_json(body.to_string().as_bytes(), ChannelKind::Waba).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
        let nd = format!(
            "{}\n{{\"to\": \"1\"}}\n{{\"to\": 5}}\n",
            json!({"message": m})
        );
        let e = from_ndjson(nd.as_bytes(), ChannelKind::Waba).unwrap_err();
        assert_eq!(e.field, "line 3.to", "{e}");
    }

    #[test]
    fn params_fill_templates_and_texts() {
        let t = Reply::Template {
            name: "t".into(),
            language: "en".into(),
            components: vec![
                json!({"type": "header"}),
                json!({"type": "body", "parameters": []}),
            ],
        };
        let Reply::Template { components, .. } = personalize(&t, &json!(["a", "b"])).unwrap()
        else {
            panic!()
        };
        assert_eq!(components.len(), 2);
        assert_eq!(components[1]["parameters"][1]["text"], "b");
        let text = Reply::text("Hi {{name}}, order {{n}}");
        assert_eq!(
            personalize(&text, &json!({"name": "Ann", "n": 7})).unwrap(),
            Reply::text("Hi Ann, order 7")
        );
        assert!(personalize(&text, &json!(["x"])).is_err());
    }
}
