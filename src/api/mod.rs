//! The send API: messages a business sends on its own, through the same outbound queue, lanes,
//! limits and send-time rules as a bot's replies. [`SendApi`] is the one code path behind the
//! HTTP routes (`ingress.rs`) and the CLI (`coexist send`); it knows nothing of HTTP.
//!
//! A message is checked before it is queued — against the customer's conversation on that
//! channel only — with the rules a reply meets: free-form outside a WABA window is refused
//! (`window_closed`, with `closed_at`), templates on Personal (`templates_unsupported`),
//! buttons on Personal (`unsupported_on_channel`). Queued, it waits in the customer's lane in
//! order with the bot's replies, and is checked again when its turn comes.

pub mod broadcast;
pub mod media;
pub mod request;

use crate::channel::ChannelKind;
use crate::config::{ApiConfig, ChannelConfig, Config, Secret};
use crate::conversation::window::{self, Window};
use crate::conversation::ConversationBackend;
use crate::conversation::ConversationStore;
use crate::outbound::queue::{BroadcastRecord, NewBroadcast};
use crate::outbound::rules::{self, RuleError};
use crate::outbound::{
    Idempotency, OutQueue, OutQueueBackend, OutRecord, OutgoingMessage, QueuedMessage, Submitted,
};
use crate::queue::Queue;
use crate::queue::QueueBackend;
use request::{FieldError, MessageRequest};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// Why the API said no: an HTTP status, a snake_case code, a message, and fields that go with
/// the code (`closed_at`, `field`, `id`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra.push((key, value));
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(404, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            401,
            "unauthorized",
            "send `Authorization: Bearer <key>` with a key from [api] keys",
        )
    }

    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        // The detail stays in the log, not in the answer.
        tracing::warn!(error = %e, "send API: store unavailable");
        ApiError::new(503, "unavailable", "the queue is unavailable; retry later")
    }

    fn invalid(e: FieldError) -> Self {
        ApiError::new(400, "invalid_request", e.to_string()).with("field", json!(e.field))
    }

    fn unknown_channel(channel: &str) -> Self {
        ApiError::new(404, "unknown_channel", format!("no channel {channel:?}"))
    }

    fn rule(e: RuleError) -> Self {
        match e {
            RuleError::WindowClosed { closed_at } => {
                ApiError::new(422, "window_closed", e.to_string())
                    .with("closed_at", json!(closed_at))
            }
            RuleError::TemplatesUnsupported { .. } => {
                ApiError::new(422, "templates_unsupported", e.to_string())
            }
            RuleError::UnsupportedOnChannel { .. } => {
                ApiError::new(422, "unsupported_on_channel", e.to_string())
            }
            RuleError::InvalidReply { .. } => ApiError::new(400, "invalid_request", e.to_string()),
        }
    }

    /// `{"error": {"code", "message", …}}`
    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        for (k, v) in &self.extra {
            error[*k] = v.clone();
        }
        json!({ "error": error })
    }
}

/// What a sent message looks like from outside (`GET …/messages/{id}`).
pub fn message_view(record: &OutRecord) -> Value {
    let error = match (&record.error_code, &record.error) {
        (None, None) => Value::Null,
        (code, message) => json!({"code": code, "message": message}),
    };
    json!({
        "id": record.id,
        "channel": record.channel,
        "to": record.to,
        "type": record.kind,
        "status": record.status.as_str(),
        "wamid": record.wamid,
        "error": error,
        "created_at": record.created_at,
        "history": record.history.iter().map(|h| json!({"status": h.status.as_str(), "at": h.at})).collect::<Vec<_>>(),
    })
}

/// What `GET …/broadcasts/{id}` answers.
pub fn broadcast_view(channel: &str, b: &BroadcastRecord) -> Value {
    json!({
        "id": b.id,
        "channel": channel,
        "name": b.name,
        "total": b.total,
        "counts": b.view_counts(),
        "state": b.state(),
        "created_at": b.created_at,
    })
}

/// A message the API accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// `queued` for a new message; for a repeated Idempotency-Key, where the first one is.
    pub status: String,
    /// A repeated Idempotency-Key: nothing new was queued.
    pub replayed: bool,
}

/// The send API over one deployment's stores (cheap to clone).
#[derive(Clone)]
pub struct SendApi {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Vec<Secret>,
    idempotency_ttl_ms: u64,
    channels: HashMap<String, Arc<ChannelConfig>>,
    queue: Queue,
    store: ConversationStore,
    out: OutQueue,
    /// Wakes the sender of this process (`coexist run`), so a message leaves at once.
    wake: Option<Arc<Notify>>,
    /// Uploads and downloads (`/v1/channels/{channel}/media`).
    media: Option<crate::media::MediaHub>,
}

impl SendApi {
    /// The API of `config` over these stores: the queue resolves customer ids to
    /// conversations, the store gives their windows, `out` queues. Without an `[api]` table no
    /// key is accepted (the HTTP routes are not served then; the CLI needs none).
    pub fn new(config: &Config, queue: Queue, store: ConversationStore, out: OutQueue) -> SendApi {
        let api: Option<&ApiConfig> = config.api.as_ref();
        SendApi {
            inner: Arc::new(Inner {
                keys: api.map(|a| a.keys.clone()).unwrap_or_default(),
                idempotency_ttl_ms: api
                    .map_or(crate::config::defaults::IDEMPOTENCY_TTL_SECS, |a| {
                        a.idempotency_ttl_secs
                    })
                    .saturating_mul(1000),
                channels: config
                    .channels
                    .iter()
                    .map(|c| (c.id.clone(), Arc::new(c.clone())))
                    .collect(),
                queue,
                store,
                out,
                wake: None,
                media: None,
            }),
        }
    }

    /// Wakes `wake` after queueing (the sender in the same process).
    pub fn with_waker(mut self, wake: Arc<Notify>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.wake = Some(wake);
        }
        self
    }

    /// Serves the media routes with `media` (the same hub as the sender's, so a Personal
    /// upload held in memory by `run` is the one its sender sends).
    pub fn with_media(mut self, media: crate::media::MediaHub) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.media = Some(media);
        }
        self
    }

    /// Checks `Authorization: Bearer <key>` against every configured key, in constant time.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        use subtle::ConstantTimeEq;
        // The scheme is case-insensitive (RFC 9110): `Bearer`, `bearer`, `BEARER`.
        let given = authorization
            .filter(|h| h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|h| h[7..].trim_ascii())
            .filter(|k| !k.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        // Compare with every key (no early exit), so timing says nothing about which matched.
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.inner.keys {
            let key = key.expose().as_bytes();
            if key.len() == given.len() {
                ok |= key.ct_eq(given);
            }
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    fn channel(&self, channel: &str) -> Result<&Arc<ChannelConfig>, ApiError> {
        self.inner
            .channels
            .get(channel)
            .ok_or_else(|| ApiError::unknown_channel(channel))
    }

    /// `POST /v1/channels/{channel}/messages` with this body.
    pub async fn send_body(
        &self,
        channel: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
        now_ms: i64,
    ) -> Result<Accepted, ApiError> {
        self.channel(channel)?;
        let request = request::message(body).map_err(ApiError::invalid)?;
        self.send(channel, &request, idempotency_key, now_ms).await
    }

    /// Checks one message against the customer's conversation and queues it in their lane.
    pub async fn send(
        &self,
        channel: &str,
        request: &MessageRequest,
        idempotency_key: Option<&str>,
        now_ms: i64,
    ) -> Result<Accepted, ApiError> {
        let ch = self.channel(channel)?.clone();
        if let Some(key) = idempotency_key {
            check_idempotency_key(key)?;
        }
        let conversation = self.conversation(&ch, &request.to).await?;
        // Hashed over the conversation `to` names: `+1555…` and `1555…` are one request.
        let idempotency = idempotency_key.map(|key| self.idempotency(key, &conversation, request));
        let window = self.window(&ch, &conversation, now_ms).await?;
        rules::check(ch.kind, window, &request.reply).map_err(ApiError::rule)?;
        let mut msg = OutgoingMessage::new(
            channel,
            &conversation,
            request.reply.clone(),
            new_message_id(),
        );
        msg.reply_to = request.reply_to.clone();
        let queued = QueuedMessage::new(msg, now_ms);
        let submitted = self
            .inner
            .out
            .submit(&queued, &conversation, idempotency.as_ref(), now_ms)
            .await
            .map_err(ApiError::unavailable)?;
        // `durability = "replicated"`: 202 only once a replica has the message (a replayed
        // key too: its first copy may be the one a replica has not acknowledged).
        self.inner
            .queue
            .confirm_durable(channel)
            .await
            .map_err(ApiError::unavailable)?;
        match submitted {
            Submitted::Queued(id) => {
                if request.reply.is_message() {
                    // The business wrote: last outbound time (never the window).
                    if let Err(e) = self
                        .inner
                        .store
                        .note_outbound(channel, &conversation, now_ms)
                        .await
                    {
                        tracing::warn!(channel, error = %e, "noting the last outbound time failed");
                    }
                }
                if let Some(wake) = &self.inner.wake {
                    wake.notify_one();
                }
                Ok(Accepted {
                    id,
                    status: "queued".into(),
                    replayed: false,
                })
            }
            Submitted::Existing(id) => {
                let status = self
                    .inner
                    .out
                    .record(channel, &id)
                    .await
                    .map_err(ApiError::unavailable)?
                    .map_or("queued", |r| r.status.as_str())
                    .to_string();
                Ok(Accepted {
                    id,
                    status,
                    replayed: true,
                })
            }
            Submitted::Conflict(id) => Err(ApiError::new(
                409,
                "idempotency_conflict",
                "this Idempotency-Key was used with another body",
            )
            .with("id", json!(id))),
        }
    }

    /// `GET /v1/channels/{channel}/messages/{id}`.
    pub async fn message(&self, channel: &str, id: &str) -> Result<Value, ApiError> {
        self.channel(channel)?;
        match self
            .inner
            .out
            .record(channel, id)
            .await
            .map_err(ApiError::unavailable)?
        {
            Some(record) => Ok(message_view(&record)),
            None => Err(ApiError::not_found(format!(
                "no message {id:?} on {channel}"
            ))),
        }
    }

    /// `POST /v1/channels/{channel}/broadcasts`: JSON, or NDJSON when `ndjson`. The
    /// message is checked against the channel kind now (a template on Personal: 422); each
    /// recipient's window, handover and opt-out are checked when their turn comes.
    pub async fn create_broadcast(
        &self,
        channel: &str,
        body: &[u8],
        ndjson: bool,
        now_ms: i64,
    ) -> Result<Value, ApiError> {
        let ch = self.channel(channel)?.clone();
        // The channel's own rules (no window yet: that is per recipient, at send time),
        // before the list: a template on Personal is 422 whatever its recipients say.
        let open = match ch.kind {
            ChannelKind::Waba => Window::Open { until_ms: i64::MAX },
            ChannelKind::Personal => Window::NotApplicable,
        };
        if let Some(message) = broadcast::message_only(body, ndjson) {
            rules::check(ch.kind, open, &message).map_err(ApiError::rule)?;
        }
        let request = if ndjson {
            broadcast::from_ndjson(body, ch.kind)
        } else {
            broadcast::from_json(body, ch.kind)
        }
        .map_err(ApiError::invalid)?;
        rules::check(ch.kind, open, &request.message).map_err(ApiError::rule)?;
        let id = format!("bc-{:032x}", rand::random::<u128>());
        let new = NewBroadcast {
            id: id.clone(),
            name: request.name.clone(),
            message: serde_json::to_string(&request.message)
                .map_err(|e| ApiError::new(400, "invalid_request", e.to_string()))?,
            recipients: request.recipients,
            skipped: request.duplicates,
        };
        let total = new.recipients.len() as u64 + new.skipped;
        self.inner
            .out
            .create_broadcast(channel, &new, now_ms)
            .await
            .map_err(ApiError::unavailable)?;
        self.inner
            .queue
            .confirm_durable(channel)
            .await
            .map_err(ApiError::unavailable)?;
        if let Some(wake) = &self.inner.wake {
            wake.notify_one();
        }
        let mut answer = json!({"id": id, "total": total, "state": "running"});
        if ch.kind == ChannelKind::Personal && new.recipients.len() > broadcast::PERSONAL_WARNING_AT
        {
            answer["warning"] = json!(format!(
                "{} recipients is a lot for a Personal number: WhatsApp bans numbers that write to many people at once; they are paced at the channel's per-chat gap and per-minute cap",
                new.recipients.len()
            ));
        }
        if new.skipped > 0 {
            answer["skipped"] = json!(new.skipped);
        }
        Ok(answer)
    }

    /// `GET /v1/channels/{channel}/broadcasts/{id}`.
    pub async fn broadcast(&self, channel: &str, id: &str) -> Result<Value, ApiError> {
        self.channel(channel)?;
        match self
            .inner
            .out
            .broadcast(channel, id)
            .await
            .map_err(ApiError::unavailable)?
        {
            Some(b) => Ok(broadcast_view(channel, &b)),
            None => Err(ApiError::not_found(format!(
                "no broadcast {id:?} on {channel}"
            ))),
        }
    }

    /// `POST /v1/channels/{channel}/broadcasts/{id}/cancel`: nothing more is sent; what was
    /// queued is skipped (`cancelled`) when its turn comes.
    pub async fn cancel_broadcast(&self, channel: &str, id: &str) -> Result<Value, ApiError> {
        self.channel(channel)?;
        match self
            .inner
            .out
            .cancel_broadcast(channel, id)
            .await
            .map_err(ApiError::unavailable)?
        {
            Some(b) => Ok(broadcast_view(channel, &b)),
            None => Err(ApiError::not_found(format!(
                "no broadcast {id:?} on {channel}"
            ))),
        }
    }

    fn idempotency(&self, key: &str, conversation: &str, request: &MessageRequest) -> Idempotency {
        // The body as understood (not its bytes): the same request reformatted is the same.
        let canonical = json!({
            "to": conversation,
            "reply": request.reply,
            "reply_to": request.reply_to,
        });
        Idempotency {
            key: key.to_string(),
            body_hash: hex::encode(Sha256::digest(canonical.to_string().as_bytes())),
            ttl_ms: self.inner.idempotency_ttl_ms,
        }
    }

    /// The conversation `to` names on this channel: its Personal chat id form, then the alias
    /// map ingress keeps (a business-scoped id seen with a phone number is that conversation).
    async fn conversation(&self, ch: &ChannelConfig, to: &str) -> Result<String, ApiError> {
        let id = request::conversation_id(ch.kind, to);
        let known = self
            .inner
            .queue
            .conversation_of(&ch.id, &id)
            .await
            .map_err(ApiError::unavailable)?;
        Ok(known.unwrap_or(id))
    }

    async fn window(
        &self,
        ch: &ChannelConfig,
        conversation: &str,
        now: i64,
    ) -> Result<Window, ApiError> {
        if ch.kind == ChannelKind::Personal {
            return Ok(Window::NotApplicable);
        }
        let state = self
            .inner
            .store
            .load(&ch.id, conversation)
            .await
            .map_err(ApiError::unavailable)?
            .unwrap_or_default();
        Ok(window::window(ch.kind, &state, now))
    }
}

fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 255 || key.chars().any(|c| c.is_control()) {
        return Err(ApiError::new(
            400,
            "invalid_request",
            "Idempotency-Key: 1 to 255 printable characters",
        )
        .with("field", json!("Idempotency-Key")));
    }
    Ok(())
}

/// A new message id: `api-` and 128 random bits (also the outbox key).
fn new_message_id() -> String {
    format!("api-{:032x}", rand::random::<u128>())
}
