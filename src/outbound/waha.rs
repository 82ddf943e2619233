//! WAHA sender (WhatsApp Personal): `sendText`, `reaction`, `sendSeen`, `startTyping`,
//! `stopTyping`, authenticated with `X-Api-Key`. Without an `api_url` it is a dry run.

use super::error::SendError;
use super::graph::{clip, network_error};
use super::message::{MediaSource, OutgoingMessage, Reply, Sent};
use super::ChannelSender;
use crate::config::Secret;
use crate::media::{HeldUploads, HeldUploadsBackend, MediaError};
use base64::Engine as _;
use serde_json::{json, Value};
use std::fmt;

#[derive(Clone)]
pub struct WahaSender {
    api_url: Option<String>,
    api_key: Option<Secret>,
    session: String,
    http: reqwest::Client,
    /// Files uploaded to this channel (`cxm_…` ids), sent inline.
    held: Option<(String, HeldUploads)>,
}

impl fmt::Debug for WahaSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WahaSender")
            .field("api_url", &self.api_url)
            .field("session", &self.session)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// WAHA's chat id for a conversation id: `…@s.whatsapp.net` becomes `…@c.us` (WAHA's form),
/// a bare phone number gets `@c.us`, `@lid` / `@g.us` / `@c.us` stay as they are.
pub fn chat_id(to: &str) -> String {
    if let Some(user) = to.strip_suffix("@s.whatsapp.net") {
        // Drop a device suffix (`123:12@s.whatsapp.net`): a chat is the user, not a device.
        let user = user.split(':').next().unwrap_or(user);
        return format!("{user}@c.us");
    }
    if to.contains('@') {
        return to.to_string();
    }
    format!("{}@c.us", to.trim_start_matches('+'))
}

impl WahaSender {
    pub fn new(
        api_url: Option<String>,
        api_key: Option<Secret>,
        session: impl Into<String>,
        http: reqwest::Client,
    ) -> WahaSender {
        WahaSender {
            api_url: api_url
                .map(|u| u.trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty()),
            api_key,
            session: session.into(),
            http,
            held: None,
        }
    }

    /// Sends files uploaded to `channel` (ids `cxm_…`) from `held`.
    pub fn with_held_uploads(mut self, channel: &str, held: HeldUploads) -> WahaSender {
        self.held = Some((channel.to_string(), held));
        self
    }
}

impl ChannelSender for WahaSender {
    /// No `api_url` configured: requests are logged, not sent.
    fn is_dry_run(&self) -> bool {
        self.api_url.is_none()
    }

    async fn send(&self, msg: &OutgoingMessage) -> Result<Sent, SendError> {
        let chat = chat_id(&msg.to);
        match &msg.reply {
            Reply::Text { text, preview_url } => {
                let mut body = json!({ "session": self.session, "chatId": chat, "text": text });
                if let Some(id) = &msg.reply_to {
                    body["reply_to"] = json!(id);
                }
                if let Some(p) = preview_url {
                    body["linkPreview"] = json!(p);
                }
                let answer = self
                    .call(msg, reqwest::Method::POST, "sendText", body)
                    .await?;
                sent_from(msg, answer)
            }
            Reply::Reaction { message_id, emoji } => {
                let body =
                    json!({ "session": self.session, "messageId": message_id, "reaction": emoji });
                let answer = self
                    .call(msg, reqwest::Method::PUT, "reaction", body)
                    .await?;
                Ok(Sent::new(match answer {
                    None => format!("dry-run:{}", msg.outbox_key),
                    Some(v) => response_id(&v).unwrap_or_else(|| message_id.clone()),
                }))
            }
            Reply::MarkRead { message_id, typing } => {
                let answer = self.seen_or_typing(msg, "sendSeen", &chat).await?;
                if *typing {
                    self.seen_or_typing(msg, "startTyping", &chat).await?;
                }
                Ok(Sent::new(match answer {
                    None => format!("dry-run:{}", msg.outbox_key),
                    Some(_) => message_id.clone(),
                }))
            }
            Reply::Template { .. } | Reply::Interactive { .. } | Reply::Sticker { .. } => {
                Err(SendError::Rejected {
                    code: 0,
                    message: format!("WAHA cannot send {} messages", msg.reply.type_name()),
                })
            }
            _ => {
                let (endpoint, body) = self.rich_body(msg, &chat).await?;
                let answer = self
                    .call(msg, reqwest::Method::POST, endpoint, body)
                    .await?;
                sent_from(msg, answer)
            }
        }
    }
}

impl WahaSender {
    /// The endpoint and body of a media, location or contact message.
    async fn rich_body(
        &self,
        msg: &OutgoingMessage,
        chat: &str,
    ) -> Result<(&'static str, Value), SendError> {
        let mut body = json!({ "session": self.session, "chatId": chat });
        let (endpoint, default_mime) = match &msg.reply {
            Reply::Image { caption, .. } => {
                set_opt(&mut body, "caption", caption.as_deref());
                ("sendImage", "image/jpeg")
            }
            Reply::Video { caption, .. } => {
                set_opt(&mut body, "caption", caption.as_deref());
                body["asNote"] = json!(false);
                ("sendVideo", "video/mp4")
            }
            Reply::Audio { voice: true, .. } => ("sendVoice", "audio/ogg; codecs=opus"),
            Reply::Audio { voice: false, .. } => ("sendFile", "audio/mpeg"),
            Reply::Document { caption, .. } => {
                set_opt(&mut body, "caption", caption.as_deref());
                ("sendFile", "application/octet-stream")
            }
            Reply::Location {
                latitude,
                longitude,
                name,
                address,
            } => {
                body["latitude"] = json!(latitude);
                body["longitude"] = json!(longitude);
                let title = match (name, address) {
                    (Some(n), Some(a)) => Some(format!("{n}\n{a}")),
                    (n, a) => n.clone().or_else(|| a.clone()),
                };
                set_opt(&mut body, "title", title.as_deref());
                ("sendLocation", "")
            }
            Reply::Contacts { contacts } => {
                body["contacts"] = json!(contacts
                    .iter()
                    .map(|c| json!({ "vcard": vcard(c) }))
                    .collect::<Vec<_>>());
                ("sendContactVcard", "")
            }
            other => unreachable!("{} is not a rich message", other.type_name()),
        };
        if let Some(media) = msg.reply.media() {
            let filename = match &msg.reply {
                Reply::Document { filename, .. } => filename.clone(),
                _ => None,
            };
            body["file"] = self.file_object(msg, media, default_mime, filename).await?;
        }
        if let Some(id) = &msg.reply_to {
            body["reply_to"] = json!(id);
        }
        Ok((endpoint, body))
    }

    /// WAHA's `file`: `{mimetype, filename, url}` for a link, `{…, data}` (base64) for a file
    /// uploaded to this channel.
    async fn file_object(
        &self,
        msg: &OutgoingMessage,
        media: &MediaSource,
        default_mime: &str,
        filename: Option<String>,
    ) -> Result<Value, SendError> {
        if let Some(link) = &media.link {
            let name = filename.or_else(|| link_file_name(link));
            let mime = name
                .as_deref()
                .and_then(mime_from_extension)
                .unwrap_or(default_mime);
            let mut f = json!({ "mimetype": mime, "url": link });
            set_opt(&mut f, "filename", name.as_deref());
            return Ok(f);
        }
        let id = media.id.as_deref().unwrap_or_default();
        let Some((channel, held)) = &self.held else {
            return Err(media_gone(id, "no upload store"));
        };
        let file = held.get(channel, id).await.map_err(|e| match e {
            MediaError::NotFound { .. } => media_gone(id, "expired or never uploaded here"),
            other => SendError::Store {
                detail: other.to_string(),
            },
        })?;
        tracing::debug!(channel = %msg.channel, id, bytes = file.bytes.len(), "sending a held upload inline");
        let mut f = json!({
            "mimetype": file.mime_type,
            "data": base64::engine::general_purpose::STANDARD.encode(&file.bytes),
        });
        set_opt(&mut f, "filename", filename.or(file.filename).as_deref());
        Ok(f)
    }

    /// `POST /api/sendSeen`: the chat shows our read receipts (human-like pacing).
    pub async fn send_seen(&self, msg: &OutgoingMessage) -> Result<(), SendError> {
        self.seen_or_typing(msg, "sendSeen", &chat_id(&msg.to))
            .await
            .map(drop)
    }

    /// `POST /api/startTyping`: "typing…" shows while the pacing delay runs.
    pub async fn start_typing(&self, msg: &OutgoingMessage) -> Result<(), SendError> {
        self.seen_or_typing(msg, "startTyping", &chat_id(&msg.to))
            .await
            .map(drop)
    }

    /// `POST /api/stopTyping`.
    pub async fn stop_typing(&self, msg: &OutgoingMessage) -> Result<(), SendError> {
        self.seen_or_typing(msg, "stopTyping", &chat_id(&msg.to))
            .await
            .map(drop)
    }

    async fn seen_or_typing(
        &self,
        msg: &OutgoingMessage,
        endpoint: &str,
        chat: &str,
    ) -> Result<Option<Value>, SendError> {
        let body = json!({ "session": self.session, "chatId": chat });
        self.call(msg, reqwest::Method::POST, endpoint, body).await
    }

    /// One API call; `Ok(None)` in dry-run mode.
    async fn call(
        &self,
        msg: &OutgoingMessage,
        method: reqwest::Method,
        endpoint: &str,
        body: Value,
    ) -> Result<Option<Value>, SendError> {
        let Some(base) = &self.api_url else {
            tracing::info!(
                channel = %msg.channel,
                outbox_key = %msg.outbox_key,
                endpoint,
                body = %clip(&body.to_string()),
                "dry run (no api_url): would call WAHA"
            );
            return Ok(None);
        };
        let mut request = self
            .http
            .request(method, format!("{base}/api/{endpoint}"))
            .json(&body);
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let response = request.send().await.map_err(network_error)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(network_error)?;
        if (200..300).contains(&status) {
            // Some endpoints answer 201 with an empty body.
            return Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null)));
        }
        Err(map_status(status, &bytes))
    }
}

/// What a send endpoint answered, as the sent message (its id is required).
fn sent_from(msg: &OutgoingMessage, answer: Option<Value>) -> Result<Sent, SendError> {
    match answer {
        None => Ok(Sent::new(format!("dry-run:{}", msg.outbox_key))),
        Some(v) => response_id(&v)
            .map(Sent::new)
            .ok_or_else(|| SendError::BadResponse {
                detail: format!("no message id in {}", clip(&v.to_string())),
            }),
    }
}

fn set_opt(v: &mut Value, key: &str, value: Option<&str>) {
    if let Some(x) = value {
        v[key] = json!(x);
    }
}

/// A held upload that is no longer there: the message cannot be sent as it is.
fn media_gone(id: &str, why: &str) -> SendError {
    SendError::Media {
        code: 404,
        message: format!("uploaded media {id}: {why}"),
        retryable: false,
    }
}

fn link_file_name(link: &str) -> Option<String> {
    let path = link.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    (name.contains('.') && !path.ends_with("//")).then(|| name.to_string())
}

/// The MIME type of a file name's extension, for the types WhatsApp sends.
fn mime_from_extension(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "3gp" => "video/3gpp",
        "ogg" | "oga" | "opus" => "audio/ogg; codecs=opus",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "amr" => "audio/amr",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => return None,
    })
}

/// A vCard 3.0 from one of Meta's contact objects (name, phones, emails, org, urls).
pub fn vcard(contact: &Value) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace(';', "\\;")
            .replace(['\r', '\n'], " ")
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(esc);
    let mut lines = vec!["BEGIN:VCARD".to_string(), "VERSION:3.0".to_string()];
    let name = contact.get("name");
    let formatted = text(name.and_then(|n| n.get("formatted_name")))
        .or_else(|| text(name.and_then(|n| n.get("first_name"))))
        .unwrap_or_default();
    lines.push(format!("FN:{formatted}"));
    if let (Some(last), first) = (
        text(name.and_then(|n| n.get("last_name"))),
        text(name.and_then(|n| n.get("first_name"))),
    ) {
        lines.push(format!("N:{last};{};;;", first.unwrap_or_default()));
    }
    if let Some(company) = text(contact.pointer("/org/company")) {
        lines.push(format!("ORG:{company}"));
    }
    for phone in contact
        .get("phones")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(number) = text(phone.get("phone")) else {
            continue;
        };
        let kind = text(phone.get("type")).unwrap_or_else(|| "CELL".into());
        match text(phone.get("wa_id")) {
            Some(wa) => lines.push(format!("TEL;type={kind};waid={wa}:{number}")),
            None => lines.push(format!("TEL;type={kind}:{number}")),
        }
    }
    for email in contact
        .get("emails")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(e) = text(email.get("email")) {
            lines.push(format!("EMAIL:{e}"));
        }
    }
    for url in contact
        .get("urls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(u) = text(url.get("url")) {
            lines.push(format!("URL:{u}"));
        }
    }
    lines.push("END:VCARD".to_string());
    lines.join("\n")
}

/// WAHA answers with HTTP status codes (no structured error codes).
pub fn map_status(status: u16, body: &[u8]) -> SendError {
    let text = clip(&String::from_utf8_lossy(body));
    match status {
        401 | 403 => SendError::Unauthorized {
            detail: format!("WAHA HTTP {status}"),
        },
        429 => SendError::RateLimited { retry_after: None },
        408 | 500..=599 => SendError::Transient {
            detail: format!("WAHA HTTP {status}: {text}"),
        },
        _ => SendError::Rejected {
            code: i64::from(status),
            message: format!("WAHA HTTP {status}: {text}"),
        },
    }
}

/// The sent message's id: `id` (string), `id._serialized`, or `key.id` depending on the engine.
pub fn response_id(v: &Value) -> Option<String> {
    let s = v
        .get("id")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/id/_serialized").and_then(Value::as_str))
        .or_else(|| v.pointer("/key/id").and_then(Value::as_str))?;
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcards_from_meta_contact_objects() {
        let v = vcard(&json!({
            "name": {"formatted_name": "Ana Souza", "first_name": "Ana", "last_name": "Souza"},
            "org": {"company": "Loja; Ltda"},
            "phones": [{"phone": "+55 11 98888-0000", "wa_id": "5511988880000", "type": "CELL"},
                       {"phone": "+55 11 3333-0000", "type": "WORK"}],
            "emails": [{"email": "ana@example.com"}]
        }));
        assert_eq!(
            v,
            "BEGIN:VCARD\nVERSION:3.0\nFN:Ana Souza\nN:Souza;Ana;;;\nORG:Loja\\; Ltda\n\
             TEL;type=CELL;waid=5511988880000:+55 11 98888-0000\nTEL;type=WORK:+55 11 3333-0000\n\
             EMAIL:ana@example.com\nEND:VCARD"
        );
    }

    #[test]
    fn file_names_and_types_of_links() {
        assert_eq!(
            link_file_name("https://x/a/b.PDF?sig=1").as_deref(),
            Some("b.PDF")
        );
        assert_eq!(link_file_name("https://x/a/"), None);
        assert_eq!(mime_from_extension("b.PDF"), Some("application/pdf"));
        assert_eq!(mime_from_extension("v.oga"), Some("audio/ogg; codecs=opus"));
        assert_eq!(mime_from_extension("x.bin"), None);
    }

    #[test]
    fn chat_ids() {
        assert_eq!(chat_id("491711234567@s.whatsapp.net"), "491711234567@c.us");
        assert_eq!(
            chat_id("491711234567:12@s.whatsapp.net"),
            "491711234567@c.us"
        );
        assert_eq!(chat_id("491711234567@c.us"), "491711234567@c.us");
        assert_eq!(chat_id("123456789@lid"), "123456789@lid");
        assert_eq!(chat_id("1203630@g.us"), "1203630@g.us");
        assert_eq!(chat_id("+491711234567"), "491711234567@c.us");
    }

    #[test]
    fn response_ids() {
        assert_eq!(response_id(&json!({"id":"ABC"})).as_deref(), Some("ABC"));
        assert_eq!(
            response_id(&json!({"id":{"fromMe":true,"id":"X","_serialized":"true_1@c.us_X"}}))
                .as_deref(),
            Some("true_1@c.us_X")
        );
        assert_eq!(
            response_id(&json!({"key":{"id":"K1","fromMe":true}})).as_deref(),
            Some("K1")
        );
        assert_eq!(response_id(&json!({})), None);
    }

    #[test]
    fn status_mapping() {
        assert!(matches!(
            map_status(401, b""),
            SendError::Unauthorized { .. }
        ));
        assert!(matches!(
            map_status(403, b""),
            SendError::Unauthorized { .. }
        ));
        assert!(matches!(map_status(502, b""), SendError::Transient { .. }));
        assert!(matches!(
            map_status(422, b"bad"),
            SendError::Rejected { code: 422, .. }
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let s = WahaSender::new(
            Some("http://w".into()),
            Some(Secret::new("k-secret")),
            "default",
            reqwest::Client::new(),
        );
        assert!(!format!("{s:?}").contains("k-secret"));
    }
}
