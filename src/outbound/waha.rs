//! WAHA sender (WhatsApp Personal): `sendText`, `reaction`, `sendSeen`, `startTyping`,
//! `stopTyping`, authenticated with `X-Api-Key`. Without an `api_url` it is a dry run.

use super::error::SendError;
use super::graph::{clip, network_error};
use super::message::{OutgoingMessage, Reply, Sent};
use crate::config::Secret;
use serde_json::{json, Value};
use std::fmt;

#[derive(Clone)]
pub struct WahaSender {
    api_url: Option<String>,
    api_key: Option<Secret>,
    session: String,
    http: reqwest::Client,
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
        }
    }

    /// No `api_url` configured: requests are logged, not sent.
    pub fn is_dry_run(&self) -> bool {
        self.api_url.is_none()
    }

    pub async fn send(&self, msg: &OutgoingMessage) -> Result<Sent, SendError> {
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
                match answer {
                    None => Ok(Sent::new(format!("dry-run:{}", msg.outbox_key))),
                    Some(v) => {
                        response_id(&v)
                            .map(Sent::new)
                            .ok_or_else(|| SendError::BadResponse {
                                detail: format!("no message id in {}", clip(&v.to_string())),
                            })
                    }
                }
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
            Reply::Template { .. } | Reply::Interactive { .. } => Err(SendError::Rejected {
                code: 0,
                message: format!("WAHA cannot send {} messages", msg.reply.type_name()),
            }),
        }
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
                body = %body,
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
