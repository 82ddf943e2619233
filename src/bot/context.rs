//! The context a handler gets for one event: the event, its channel, the conversation, and
//! the actions (replies, state, handover) the handler asks for.
//!
//! Sending rules are enforced here, before anything leaves: a free-form reply outside a WABA
//! service window, or a template on a Personal channel, fails at once with a typed error the
//! bot can act on (e.g. send a template instead). Replies always leave on the channel the
//! event came from: the context has no way to address another one.

use crate::channel::ChannelKind;
use crate::config::ChannelConfig;
use crate::conversation::window::{self, Effects, Window};
use crate::conversation::ConversationState;
use crate::event::{Event, EventType, Timer};
use crate::media::{Download, MediaError, MediaFile, MediaHub};
use crate::outbound::rules::{self, RuleError};
use crate::outbound::Reply;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Why a reply was refused before any HTTP call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRuleError {
    /// Window closed, templates on Personal, a feature the channel kind lacks.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// The event has no message to react to or mark read.
    #[error("{0}")]
    NoTarget(&'static str),
    /// Account-level events have no conversation to reply into.
    #[error("this event belongs to no conversation; nothing can be sent in reply")]
    NoConversation,
}

/// Everything about one event that a handler may read or ask for.
pub struct Context {
    pub event: Event,
    pub channel: Arc<ChannelConfig>,
    state: ConversationState,
    now_ms: i64,
    replies: Vec<Reply>,
    /// For each queued reply, its position among every reply the handler asked for, refused
    /// ones included: the outbox key. A reply refused on a later handling of the same event
    /// (the window closed meanwhile) must not shift the keys of the replies after it.
    reply_slots: Vec<usize>,
    requested: usize,
    effects: Effects,
    media: Option<MediaHub>,
}

impl Context {
    pub fn new(
        event: Event,
        channel: Arc<ChannelConfig>,
        state: ConversationState,
        now_ms: i64,
    ) -> Self {
        Context {
            event,
            channel,
            state,
            now_ms,
            replies: Vec::new(),
            reply_slots: Vec::new(),
            requested: 0,
            effects: Effects::default(),
            media: None,
        }
    }

    /// Lets the handler fetch and upload media on its channel (the worker sets it).
    pub fn with_media(mut self, media: MediaHub) -> Self {
        self.media = Some(media);
        self
    }

    fn media_hub(&self) -> Result<&MediaHub, MediaError> {
        self.media
            .as_ref()
            .ok_or_else(|| MediaError::NotConfigured(self.channel.id.clone()))
    }

    /// The media this event's message carries (photo, voice note, document…), downloaded
    /// whole with the channel's credentials, at most `[media] max_download_bytes`.
    /// `MediaError::NoMedia` when the message has none; `NotFound` when it expired.
    pub async fn media(&self) -> Result<MediaFile, MediaError> {
        self.open_media().await?.bytes().await
    }

    /// Like [`Context::media`], but streaming: read it with [`Download::chunk`].
    pub async fn open_media(&self) -> Result<Download, MediaError> {
        let media = self
            .event
            .message
            .as_ref()
            .and_then(|m| m.media.as_ref())
            .ok_or(MediaError::NoMedia)?;
        self.media_hub()?
            .open_event_media(&self.channel.id, media)
            .await
    }

    /// Uploads a file for sending on this channel (checked against WhatsApp's types and
    /// sizes first); send it with `MediaSource::id(the answer)`.
    pub async fn upload(
        &self,
        bytes: impl Into<bytes::Bytes>,
        mime_type: &str,
    ) -> Result<String, MediaError> {
        self.media_hub()?
            .upload(&self.channel.id, MediaFile::new(bytes, mime_type))
            .await
    }

    /// What applying the event to the conversation did (the worker sets it): whether this
    /// echo started a handover, whether the window moved, how a status changed.
    pub fn with_effects(mut self, effects: Effects) -> Self {
        self.effects = effects;
        self
    }

    /// What applying the event to the conversation did.
    pub fn effects(&self) -> &Effects {
        &self.effects
    }

    /// This event is an echo of a person answering from the phone: the bot is now paused for
    /// this conversation (its messages do not reach the bot until the handover ends).
    pub fn is_handover_event(&self) -> bool {
        self.event.event_type == EventType::Echo && self.effects.handover_started
    }

    /// The message's type as the provider names it (`text`, `image`, `button_reply`, …).
    pub fn message_type(&self) -> Option<&str> {
        self.event.message.as_ref().map(|m| m.kind.as_str())
    }

    /// The id of the tapped reply button or list row, or the template quick-reply payload.
    pub fn button_id(&self) -> Option<&str> {
        self.event
            .message
            .as_ref()
            .and_then(|m| m.button_id.as_deref())
    }

    /// For `timer` events: which window timer fired.
    pub fn timer(&self) -> Option<&Timer> {
        self.event
            .timer
            .as_ref()
            .filter(|_| self.event.event_type == EventType::Timer)
    }

    /// A `window.expiring` timer: the window closes in `lead` (WABA only).
    /// For `outbound.failed` events: the message that was given up and why.
    pub fn outbound_failure(&self) -> Option<&crate::event::OutboundFailure> {
        self.event.outbound.as_ref()
    }

    pub fn is_window_expiring(&self) -> bool {
        self.timer()
            .is_some_and(|t| t.name == window::WINDOW_EXPIRING)
    }

    /// A `window.closed` timer: from now on only templates reach the customer (WABA only).
    pub fn is_window_closed_event(&self) -> bool {
        self.timer()
            .is_some_and(|t| t.name == window::WINDOW_CLOSED)
    }

    /// The customer's display name, from this event or remembered from earlier ones.
    pub fn contact_name(&self) -> Option<&str> {
        self.event
            .contact
            .name
            .as_deref()
            .or(self.state.contact.name.as_deref())
    }

    pub fn kind(&self) -> ChannelKind {
        self.channel.kind
    }

    pub fn channel_id(&self) -> &str {
        &self.channel.id
    }

    /// The customer's id in this channel ("" for account-level events).
    pub fn conversation(&self) -> &str {
        &self.event.conversation
    }

    pub fn event_type(&self) -> EventType {
        self.event.event_type
    }

    /// The message text, if the event is a message that shows text.
    pub fn text(&self) -> Option<&str> {
        self.event.message.as_ref().and_then(|m| m.text.as_deref())
    }

    /// The conversation as stored (window, statuses, handover, bot state).
    pub fn conversation_state(&self) -> &ConversationState {
        &self.state
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The customer service window: open until / closed since / not applicable (Personal).
    pub fn window(&self) -> Window {
        window::window(self.kind(), &self.state, self.now_ms)
    }

    /// Is a person handling this conversation right now (the bot is paused)?
    pub fn in_handover(&self) -> bool {
        window::handover_active(&self.state, self.now_ms)
    }

    /// Queues any reply for this conversation, after checking the channel's sending rules.
    /// It leaves (in order, once) after the handler returns.
    pub fn send(&mut self, reply: Reply) -> Result<(), SendRuleError> {
        if self.event.conversation.is_empty() {
            return Err(SendRuleError::NoConversation);
        }
        let slot = self.requested;
        self.requested += 1;
        rules::check(self.kind(), self.window(), &reply)?;
        self.replies.push(reply);
        self.reply_slots.push(slot);
        Ok(())
    }

    /// Free-form text. On WABA only inside the 24 h window.
    pub fn reply(&mut self, text: impl Into<String>) -> Result<(), SendRuleError> {
        self.send(Reply::text(text))
    }

    /// An approved template (WABA only; allowed outside the window).
    pub fn send_template(
        &mut self,
        name: impl Into<String>,
        language: impl Into<String>,
        components: Vec<serde_json::Value>,
    ) -> Result<(), SendRuleError> {
        self.send(Reply::Template {
            name: name.into(),
            language: language.into(),
            components,
        })
    }

    /// An interactive message (buttons, list): a Meta `interactive` object. WABA only.
    pub fn send_interactive(
        &mut self,
        interactive: serde_json::Value,
    ) -> Result<(), SendRuleError> {
        self.send(Reply::Interactive { interactive })
    }

    /// Up to three reply buttons under `body` (WABA only; Personal channels refuse interactive
    /// messages with [`RuleError::UnsupportedOnChannel`]). `buttons`: `(id, title)`; a tap
    /// comes back as a message whose [`Context::button_id`] is the id.
    pub fn send_buttons(
        &mut self,
        body: impl Into<String>,
        buttons: &[(&str, &str)],
    ) -> Result<(), SendRuleError> {
        let buttons: Vec<serde_json::Value> = buttons
            .iter()
            .map(|(id, title)| serde_json::json!({"type": "reply", "reply": {"id": id, "title": title}}))
            .collect();
        self.send_interactive(serde_json::json!({
            "type": "button",
            "body": {"text": body.into()},
            "action": {"buttons": buttons},
        }))
    }

    /// Reacts to the event's message.
    pub fn react(&mut self, emoji: impl Into<String>) -> Result<(), SendRuleError> {
        let message_id = self
            .message_id()
            .ok_or(SendRuleError::NoTarget("no message to react to"))?;
        self.send(Reply::Reaction {
            message_id,
            emoji: emoji.into(),
        })
    }

    /// Marks the event's message as read.
    pub fn mark_read(&mut self) -> Result<(), SendRuleError> {
        let message_id = self
            .message_id()
            .ok_or(SendRuleError::NoTarget("no message to mark read"))?;
        self.send(Reply::MarkRead {
            message_id,
            typing: false,
        })
    }

    fn message_id(&self) -> Option<String> {
        self.event
            .message
            .as_ref()
            .map(|m| m.id.clone())
            .filter(|id| !id.is_empty())
    }

    /// The bot author's typed state of this conversation (`None` if never set or not of `T`'s shape).
    pub fn state<T: DeserializeOwned>(&self) -> Option<T> {
        self.state
            .bot_state
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Stores the bot author's typed state; saved with the conversation after the handler.
    pub fn set_state<T: Serialize>(&mut self, value: &T) -> Result<(), serde_json::Error> {
        self.state.bot_state = Some(serde_json::to_value(value)?);
        Ok(())
    }

    /// Forgets the bot state of this conversation.
    pub fn clear_state(&mut self) {
        self.state.bot_state = None;
    }

    /// Pauses the bot for this conversation (a person takes over).
    pub fn handover(&mut self, duration: Duration) {
        // Saturating: a forward answer of 10^16 seconds must not wrap to a negative or tiny
        // pause (found by fuzzing); it pauses the bot for good.
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        window::start_handover(&mut self.state, self.now_ms, ms);
    }

    /// Lets the bot answer again.
    pub fn resume(&mut self) {
        window::end_handover(&mut self.state);
    }

    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// Hands back what the worker needs after the handler: the state and the replies, each
    /// with its slot (the index in its outbox key).
    /// The state is saved whether or not the handler touched it: the event itself moves the
    /// window and the statuses.
    pub fn into_parts(self) -> (Event, ConversationState, Vec<(usize, Reply)>) {
        let replies = self.reply_slots.into_iter().zip(self.replies).collect();
        (self.event, self.state, replies)
    }
}
