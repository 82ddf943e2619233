//! Cloud API sender: `POST {graph_api_url}/{phone_number_id}/messages`.
//!
//! Every message carries its outbox key in `biz_opaque_callback_data`: Meta echoes it in the
//! message's status webhooks, which is how a send that left just before a crash is recognised
//! (see [`super::outbox`]). Without an access token the sender is a dry run.

use super::error::SendError;
use super::message::{MediaSource, OutgoingMessage, Reply, Sent};
use super::ChannelSender;
use crate::config::Secret;
use serde_json::{json, Map, Value};
use std::fmt;
use std::time::Duration;

/// Longest Graph error text kept in an error (the rest is noise for logs and dead letters).
const MAX_ERROR_TEXT: usize = 300;

#[derive(Clone)]
pub struct GraphSender {
    endpoint: String,
    access_token: Option<Secret>,
    http: reqwest::Client,
}

impl fmt::Debug for GraphSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphSender")
            .field("endpoint", &self.endpoint)
            .field("dry_run", &self.access_token.is_none())
            .finish()
    }
}

impl GraphSender {
    /// `graph_api_url` includes the version (`https://graph.facebook.com/v23.0`).
    pub fn new(
        graph_api_url: &str,
        phone_number_id: &str,
        access_token: Option<Secret>,
        http: reqwest::Client,
    ) -> GraphSender {
        GraphSender {
            endpoint: format!(
                "{}/{}/messages",
                graph_api_url.trim_end_matches('/'),
                phone_number_id
            ),
            access_token,
            http,
        }
    }
}

impl ChannelSender for GraphSender {
    /// No access token configured: requests are logged, not sent.
    fn is_dry_run(&self) -> bool {
        self.access_token.is_none()
    }

    async fn send(&self, msg: &OutgoingMessage) -> Result<Sent, SendError> {
        let body = request_body(msg);
        let Some(token) = &self.access_token else {
            tracing::info!(
                channel = %msg.channel,
                outbox_key = %msg.outbox_key,
                endpoint = %self.endpoint,
                body = %body,
                "dry run (no access token): would send to the Graph API"
            );
            return Ok(Sent::new(format!("dry-run:{}", msg.outbox_key)));
        };
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(token.expose())
            .json(&body)
            .send()
            .await
            .map_err(network_error)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(network_error)?;
        if (200..300).contains(&status) {
            parse_success(msg, &bytes)
        } else {
            Err(map_error(status, &bytes, retry_after))
        }
    }
}

pub(crate) fn network_error(e: reqwest::Error) -> SendError {
    SendError::Transient {
        detail: describe_network_error(e),
    }
}

/// `timeout: …`, `connection failed: …` or `request failed: …`, without the URL (it may
/// carry a token in its query).
pub(crate) fn describe_network_error(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {}", e.without_url())
}

/// The JSON body of the send request (spec §7).
pub fn request_body(msg: &OutgoingMessage) -> Value {
    if let Reply::MarkRead { message_id, typing } = &msg.reply {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        });
        if *typing {
            body["typing_indicator"] = json!({"type": "text"});
        }
        return body;
    }
    let mut body = Map::new();
    body.insert("messaging_product".into(), json!("whatsapp"));
    body.insert("recipient_type".into(), json!("individual"));
    if is_business_scoped(&msg.to) {
        body.insert("recipient".into(), json!(msg.to));
    } else {
        body.insert(
            "to".into(),
            json!(format!("+{}", msg.to.trim_start_matches('+'))),
        );
    }
    let (kind, content) = match &msg.reply {
        Reply::Text { text, preview_url } => {
            let mut t = json!({ "body": text });
            if let Some(p) = preview_url {
                t["preview_url"] = json!(p);
            }
            ("text", t)
        }
        Reply::Template {
            name,
            language,
            components,
        } => {
            let mut t = json!({ "name": name, "language": { "code": language } });
            if !components.is_empty() {
                t["components"] = json!(components);
            }
            ("template", t)
        }
        Reply::Interactive { interactive } => ("interactive", interactive.clone()),
        Reply::Reaction { message_id, emoji } => (
            "reaction",
            json!({ "message_id": message_id, "emoji": emoji }),
        ),
        Reply::MarkRead { .. } => unreachable!("handled above"),
        Reply::Image { media, caption } | Reply::Video { media, caption } => (
            msg.reply.type_name(),
            media_object(media, caption.as_deref(), None),
        ),
        // Meta shows an OGG/Opus file as a voice note by itself: there is no flag to send.
        Reply::Audio { media, .. } | Reply::Sticker { media } => {
            (msg.reply.type_name(), media_object(media, None, None))
        }
        Reply::Document {
            media,
            filename,
            caption,
        } => (
            "document",
            media_object(media, caption.as_deref(), filename.as_deref()),
        ),
        Reply::Location {
            latitude,
            longitude,
            name,
            address,
        } => {
            let mut l = json!({ "latitude": latitude, "longitude": longitude });
            if let Some(n) = name {
                l["name"] = json!(n);
            }
            if let Some(a) = address {
                l["address"] = json!(a);
            }
            ("location", l)
        }
        Reply::Contacts { contacts } => ("contacts", json!(contacts)),
    };
    body.insert("type".into(), json!(kind));
    body.insert(kind.into(), content);
    if let Some(id) = &msg.reply_to {
        body.insert("context".into(), json!({ "message_id": id }));
    }
    body.insert("biz_opaque_callback_data".into(), json!(msg.outbox_key));
    Value::Object(body)
}

/// `{"link"|"id", "caption"?, "filename"?}` of a media message.
fn media_object(media: &MediaSource, caption: Option<&str>, filename: Option<&str>) -> Value {
    let mut o = Map::new();
    if let Some(link) = &media.link {
        o.insert("link".into(), json!(link));
    }
    if let Some(id) = &media.id {
        o.insert("id".into(), json!(id));
    }
    if let Some(c) = caption {
        o.insert("caption".into(), json!(c));
    }
    if let Some(f) = filename {
        o.insert("filename".into(), json!(f));
    }
    Value::Object(o)
}

/// Business-scoped user ids look like `US.13491208655302741918`; phone wa_ids are digits.
fn is_business_scoped(to: &str) -> bool {
    to.contains('.')
}

fn parse_success(msg: &OutgoingMessage, bytes: &[u8]) -> Result<Sent, SendError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| SendError::BadResponse {
        detail: format!("not JSON: {e}"),
    })?;
    if let Some(id) = value
        .pointer("/messages/0/id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return Ok(Sent::new(id));
    }
    if let Reply::MarkRead { message_id, .. } = &msg.reply {
        if value.get("success").and_then(Value::as_bool) == Some(true) {
            return Ok(Sent::new(message_id.clone()));
        }
    }
    Err(SendError::BadResponse {
        detail: format!("no messages[0].id in {}", clip(&value.to_string())),
    })
}

/// Maps a non-2xx Graph answer onto [`SendError`] (spec §6.6; `code` may be a string).
pub fn map_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> SendError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = value.get("error").unwrap_or(&Value::Null);
    let code = err.get("code").and_then(as_code);
    let mut message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(details) = err.pointer("/error_data/details").and_then(Value::as_str) {
        if !details.is_empty() && details != message {
            message = if message.is_empty() {
                details.to_string()
            } else {
                format!("{message}: {details}")
            };
        }
    }
    if message.is_empty() {
        message = format!("HTTP {status}: {}", clip(&String::from_utf8_lossy(body)));
    }
    let message = clip(&message);
    match code {
        Some(131047) | Some(470) => SendError::WindowClosed {
            code: code.unwrap_or_default(),
            message,
        },
        Some(130429) | Some(4) | Some(80007) => SendError::RateLimited { retry_after },
        // Account in maintenance during a throughput upgrade: Meta says about a minute.
        Some(131057) => SendError::RateLimited {
            retry_after: Some(retry_after.unwrap_or(Duration::from_secs(60))),
        },
        Some(131056) => SendError::PairRateLimited,
        // Meta could not fetch the linked file or store the upload: another try may work.
        Some(c @ (131052 | 131053)) => SendError::Media {
            code: c,
            message,
            retryable: true,
        },
        // A bad link, an unsupported or oversized file, an unknown media id: the request must change.
        Some(c @ (100 | 131009 | 131051)) if is_about_media(&message) => SendError::Media {
            code: c,
            message,
            retryable: false,
        },
        Some(131026) => SendError::Undeliverable { message },
        Some(190) => SendError::Unauthorized { detail: message },
        Some(131000) | Some(131016) => SendError::Transient { detail: message },
        _ if status == 401 => SendError::Unauthorized { detail: message },
        _ if status == 429 => SendError::RateLimited { retry_after },
        _ if status >= 500 => SendError::Transient { detail: message },
        Some(code) => SendError::Rejected { code, message },
        None => SendError::Rejected {
            code: i64::from(status),
            message,
        },
    }
}

/// Meta's generic parameter errors (100, 131009) name the media field or the file when the
/// media is what is wrong.
fn is_about_media(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "media", "link", "image", "video", "audio", "document", "sticker", "mime", "file",
    ]
    .iter()
    .any(|w| m.contains(w))
}

fn as_code(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

pub(crate) fn clip(s: &str) -> String {
    if s.len() <= MAX_ERROR_TEXT {
        return s.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str, reply: Reply) -> OutgoingMessage {
        OutgoingMessage::new("shop", to, reply, "evt1:0")
    }

    #[test]
    fn text_body_with_plus_context_and_callback_data() {
        let mut m = msg("16505551234", Reply::text("Hello"));
        m.reply_to = Some("wamid.IN".into());
        assert_eq!(
            request_body(&m),
            json!({"messaging_product":"whatsapp","recipient_type":"individual",
                   "to":"+16505551234","type":"text","text":{"body":"Hello"},
                   "context":{"message_id":"wamid.IN"},"biz_opaque_callback_data":"evt1:0"})
        );
        let m = msg("+16505551234", Reply::text("x"));
        assert_eq!(request_body(&m)["to"], "+16505551234");
    }

    #[test]
    fn business_scoped_ids_go_in_recipient() {
        let b = request_body(&msg("US.1349120865", Reply::text("x")));
        assert_eq!(b["recipient"], "US.1349120865");
        assert!(b.get("to").is_none());
    }

    #[test]
    fn template_interactive_reaction_mark_read() {
        let t = request_body(&msg(
            "1",
            Reply::Template {
                name: "order_update".into(),
                language: "en_US".into(),
                components: vec![json!({"type":"body"})],
            },
        ));
        assert_eq!(
            t["template"],
            json!({"name":"order_update","language":{"code":"en_US"},"components":[{"type":"body"}]})
        );
        assert_eq!(t["type"], "template");
        let i = request_body(&msg(
            "1",
            Reply::Interactive {
                interactive: json!({"type":"button"}),
            },
        ));
        assert_eq!(i["interactive"], json!({"type":"button"}));
        let r = request_body(&msg(
            "1",
            Reply::Reaction {
                message_id: "wamid.X".into(),
                emoji: "😀".into(),
            },
        ));
        assert_eq!(r["reaction"], json!({"message_id":"wamid.X","emoji":"😀"}));
        let read = request_body(&msg(
            "1",
            Reply::MarkRead {
                message_id: "wamid.X".into(),
                typing: true,
            },
        ));
        assert_eq!(
            read,
            json!({"messaging_product":"whatsapp","status":"read","message_id":"wamid.X",
                   "typing_indicator":{"type":"text"}})
        );
    }

    fn graph_error(code: Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"error":{"message":"(#x) boom","type":"OAuthException",
            "code":code,"error_data":{"messaging_product":"whatsapp","details":"more"}}}),
        )
        .unwrap()
    }

    #[test]
    fn error_mapping() {
        let e = |status, code: Value| map_error(status, &graph_error(code), None);
        assert!(matches!(
            e(400, json!(131047)),
            SendError::WindowClosed { code: 131047, .. }
        ));
        assert!(matches!(
            e(400, json!("470")),
            SendError::WindowClosed { code: 470, .. }
        ));
        assert!(matches!(
            e(429, json!(130429)),
            SendError::RateLimited { .. }
        ));
        assert_eq!(e(400, json!(131056)), SendError::PairRateLimited);
        assert!(matches!(
            e(400, json!(131026)),
            SendError::Undeliverable { .. }
        ));
        assert!(matches!(e(401, json!(190)), SendError::Unauthorized { .. }));
        assert!(matches!(
            e(400, json!("190")),
            SendError::Unauthorized { .. }
        ));
        assert!(matches!(e(500, json!(131000)), SendError::Transient { .. }));
        assert!(matches!(e(503, json!(131016)), SendError::Transient { .. }));
        assert!(matches!(
            map_error(502, b"<html>", None),
            SendError::Transient { .. }
        ));
        assert!(matches!(
            map_error(401, b"", None),
            SendError::Unauthorized { .. }
        ));
        match e(400, json!(100)) {
            SendError::Rejected { code, message } => {
                assert_eq!(code, 100);
                assert_eq!(message, "(#x) boom: more");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            map_error(404, b"nope", None),
            SendError::Rejected {
                code: 404,
                message: "HTTP 404: nope".into()
            }
        );
    }

    #[test]
    fn media_location_and_contacts_bodies() {
        let b = request_body(&msg(
            "1",
            Reply::Image {
                media: MediaSource::link("https://cdn.example/p.jpg"),
                caption: Some("Blue mug".into()),
            },
        ));
        assert_eq!(b["type"], "image");
        assert_eq!(
            b["image"],
            json!({"link":"https://cdn.example/p.jpg","caption":"Blue mug"})
        );
        let d = request_body(&msg(
            "1",
            Reply::Document {
                media: MediaSource::id("1234"),
                filename: Some("invoice.pdf".into()),
                caption: None,
            },
        ));
        assert_eq!(d["document"], json!({"id":"1234","filename":"invoice.pdf"}));
        let a = request_body(&msg(
            "1",
            Reply::Audio {
                media: MediaSource::id("9"),
                voice: true,
            },
        ));
        assert_eq!(
            (a["type"].clone(), a["audio"].clone()),
            (json!("audio"), json!({"id":"9"}))
        );
        let s = request_body(&msg(
            "1",
            Reply::Sticker {
                media: MediaSource::link("https://x/s.webp"),
            },
        ));
        assert_eq!(s["sticker"], json!({"link":"https://x/s.webp"}));
        let v = request_body(&msg(
            "1",
            Reply::Video {
                media: MediaSource::id("7"),
                caption: None,
            },
        ));
        assert_eq!(v["video"], json!({"id":"7"}));
        let l = request_body(&msg(
            "1",
            Reply::Location {
                latitude: 52.52,
                longitude: -13.4,
                name: Some("Shop".into()),
                address: None,
            },
        ));
        assert_eq!(
            l["location"],
            json!({"latitude":52.52,"longitude":-13.4,"name":"Shop"})
        );
        let card = json!({"name":{"formatted_name":"Ana"},"phones":[{"phone":"+1555"}]});
        let c = request_body(&msg(
            "1",
            Reply::Contacts {
                contacts: vec![card.clone()],
            },
        ));
        assert_eq!(
            (c["type"].clone(), c["contacts"].clone()),
            (json!("contacts"), json!([card]))
        );
        assert_eq!(c["biz_opaque_callback_data"], "evt1:0");
    }

    #[test]
    fn media_error_codes() {
        let err = |code: i64, text: &str| {
            serde_json::to_vec(&json!({"error":{"message":text,"code":code}})).unwrap()
        };
        let e = map_error(400, &err(131053, "Media upload error"), None);
        assert!(
            matches!(
                e,
                SendError::Media {
                    code: 131053,
                    retryable: true,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.is_retryable());
        let e = map_error(400, &err(131052, "Media download error"), None);
        assert!(e.is_retryable() && e.outcome() == "media_failed");
        let e = map_error(
            400,
            &err(100, "Param image['link'] is not a valid URI"),
            None,
        );
        assert!(
            matches!(
                e,
                SendError::Media {
                    code: 100,
                    retryable: false,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_retryable());
        // A 100 about something else stays a plain rejection.
        let e = map_error(400, &err(100, "Invalid parameter: to"), None);
        assert!(matches!(e, SendError::Rejected { code: 100, .. }), "{e:?}");
    }

    #[test]
    fn success_needs_a_message_id() {
        let m = msg("1", Reply::text("x"));
        let ok = parse_success(&m, br#"{"messages":[{"id":"wamid.A"}]}"#).unwrap();
        assert_eq!(ok.message_id, "wamid.A");
        assert!(matches!(
            parse_success(&m, br#"{"success":true}"#),
            Err(SendError::BadResponse { .. })
        ));
        let read = msg(
            "1",
            Reply::MarkRead {
                message_id: "wamid.R".into(),
                typing: false,
            },
        );
        assert_eq!(
            parse_success(&read, br#"{"success":true}"#)
                .unwrap()
                .message_id,
            "wamid.R"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let s = GraphSender::new(
            "http://x/v23.0",
            "123",
            Some(Secret::new("tok-secret")),
            reqwest::Client::new(),
        );
        let d = format!("{s:?}");
        assert!(
            !d.contains("tok-secret") && d.contains("/123/messages"),
            "{d}"
        );
    }
}
