//! A test harness for bot authors: your [`Bot`] on the real worker code (state, windows,
//! timers, handover, sending rules, the outbound queue and its lanes), with the in-memory
//! queue and store, a dry-run sender that records what would have been sent, and a clock you
//! move by hand. No Redis, no network, no waiting: `advance(Duration::from_secs(23 * 3600))`
//! fires the window timers due in between, each at its own due time. [`TestKit::with_pacing`]
//! keeps the send limits: replies past Meta's pair rate wait in their lane
//! ([`TestKit::queued`]) until `advance` moves the clock past the gap.
//!
//! ```
//! use coexist::bot::testkit::TestKit;
//! use coexist::bot::echo::EchoBot;
//! use coexist::outbound::Reply;
//!
//! let mut kit = TestKit::new(EchoBot);
//! kit.user_text(TestKit::WABA, "16505551234", "hello");
//! assert_eq!(kit.replies()[0].reply, Reply::text("hello"));
//! ```
//!
//! The kit is synchronous (it runs its own single-threaded runtime): use it from plain
//! `#[test]` functions, not from inside `#[tokio::test]`.

use super::Bot;
use crate::channel::ChannelKind;
use crate::config::Config;
use crate::conversation::window::{self, Window};
use crate::conversation::ConversationBackend;
use crate::conversation::{ConversationState, ConversationStore};
use crate::event::{Contact, Event, EventType, Message};
use crate::ingest::to_new_event;
use crate::media::HeldUploadsBackend;
use crate::metrics::Metrics;
use crate::outbound::{OutQueueBackend, OutgoingMessage, Reply};
use crate::queue::QueueBackend;
use crate::queue::{DeadLetter, Enqueued, Queue};
use crate::routing;
use crate::wire::{self, Format};
use crate::worker::{Clock, Drained, SendObserver, Worker, WorkerSettings};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the kit's clock starts: 2025-06-15T15:06:40Z.
pub const START_MS: i64 = 1_750_000_000_000;

/// The default configuration: one WABA channel (`shop-waba`, the fixtures' phone number id,
/// coexistence on) and one Personal channel (`shop-personal`, WAHA session `default`).
pub const DEFAULT_CONFIG: &str = r#"
[meta]
app_secrets = ["testkit-app-secret"]

[[channels]]
id = "shop-waba"
kind = "waba"
phone_number_id = "106540352242922"
coexistence = true
partitions = 2

[[channels]]
id = "shop-personal"
kind = "personal"
gateway = "waha"
session = "default"
webhook_secrets = ["testkit-waha-key"]
partitions = 2
"#;

/// A reply the sender refused at send time (the rules are checked again there).
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    pub message: OutgoingMessage,
    pub error: String,
}

/// Runs one bot on the real handling code with in-memory everything and a manual clock.
pub struct TestKit {
    runtime: tokio::runtime::Runtime,
    config: Config,
    clock: Clock,
    queue: Queue,
    store: ConversationStore,
    worker: Worker,
    media: crate::media::MediaHub,
    routes: routing::Router,
    leads_ms: Vec<i64>,
    sent: Arc<Mutex<Vec<OutgoingMessage>>>,
    refused: Arc<Mutex<Vec<Refused>>>,
    taken: usize,
    conversations: BTreeSet<(String, String)>,
    next_id: u64,
}

impl TestKit {
    /// The WABA channel of the default configuration.
    pub const WABA: &'static str = "shop-waba";
    /// The Personal channel of the default configuration.
    pub const PERSONAL: &'static str = "shop-personal";

    /// `bot` on the default configuration ([`DEFAULT_CONFIG`]).
    pub fn new(bot: impl Bot) -> TestKit {
        let config = Config::from_toml(DEFAULT_CONFIG, "testkit.toml", &|_| None)
            .expect("the default test config is valid");
        TestKit::with_config(config, bot)
    }

    /// `bot` on your configuration. Whatever it says, the kit uses the in-memory queue, sends
    /// nothing (dry run), paces nothing, and retries a failed handler without real waiting.
    pub fn with_config(config: Config, bot: impl Bot) -> TestKit {
        TestKit::with_arc(config, Arc::new(bot))
    }

    /// Like [`TestKit::with_config`], for a bot already shared.
    pub fn with_arc(config: Config, bot: Arc<dyn Bot>) -> TestKit {
        TestKit::build(config, bot, false)
    }

    /// `bot` on your configuration with its send limits kept (Meta's pair rate, the channel
    /// rate, Personal pacing): replies beyond a limit wait in their customer's lane
    /// ([`TestKit::queued`]) until [`TestKit::advance`] moves the clock past their time.
    pub fn with_pacing(config: Config, bot: impl Bot) -> TestKit {
        TestKit::build(config, Arc::new(bot), true)
    }

    fn build(mut config: Config, bot: Arc<dyn Bot>, keep_limits: bool) -> TestKit {
        config.redis = None;
        for c in &mut config.channels {
            c.access_token = None;
            c.api_url = None;
            if !keep_limits {
                c.send_rate_per_second = 0;
                c.pair_gap_ms = 0;
                c.max_per_minute = 0;
                c.jitter_ms = 0;
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let clock = Clock::manual(START_MS);
        let backend = crate::backend::Backend::memory();
        let queue = backend.queue().clone();
        let metrics = Metrics::new();
        let store = backend.conversation_store(&config);
        let outbound = crate::runtime::outbound(&config, &backend, metrics.clone())
            .expect("the dry-run sender builds");
        let sent: Arc<Mutex<Vec<OutgoingMessage>>> = Arc::default();
        let refused: Arc<Mutex<Vec<Refused>>> = Arc::default();
        let observer: SendObserver = {
            let (sent, refused) = (sent.clone(), refused.clone());
            Arc::new(move |message, outcome| match outcome {
                Ok(s) if s.duplicate => {}
                Ok(_) => sent.lock().unwrap().push(message.clone()),
                Err(e) => refused.lock().unwrap().push(Refused {
                    message: message.clone(),
                    error: e.to_string(),
                }),
            })
        };
        let mut settings = WorkerSettings::from_config(&config);
        settings.retry_backoff_ms = 1;
        settings.lease_ms = 3_600_000;
        let leads_ms = settings.leads_ms.clone();
        let media = outbound.media().clone();
        let worker = Worker::new(
            &config,
            &backend,
            store.clone(),
            bot,
            outbound,
            metrics,
            "testkit".into(),
        )
        .with_clock(clock.clone())
        .with_send_observer(observer)
        .with_settings(settings);
        TestKit {
            runtime,
            routes: routing::Router::new(&config),
            config,
            clock,
            queue,
            store,
            worker,
            media,
            leads_ms,
            sent,
            refused,
            taken: 0,
            conversations: BTreeSet::new(),
            next_id: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The kit's clock (share it, or read it: `clock().now_ms()`).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    // ------------------------------------------------------------------ feeding events

    /// Enqueues `event` on its channel (`event.channel` is a configured channel id) as ingress
    /// would, then handles everything due: the bot runs before this returns.
    pub fn feed(&mut self, mut event: Event) -> Drained {
        let route = self
            .routes
            .channel(&event.channel)
            .unwrap_or_else(|| {
                panic!(
                    "testkit: no channel {:?} in the configuration",
                    event.channel
                )
            })
            .clone();
        event.kind = route.kind;
        let new = to_new_event(&mut event, &route, self.now_ms());
        let outcome = self
            .runtime
            .block_on(self.queue.enqueue(&[new]))
            .expect("the in-memory queue accepts events");
        if let Some(Enqueued::Added { conversation, .. }) = outcome.first() {
            if !conversation.is_empty() {
                self.conversations
                    .insert((route.channel.clone(), conversation.clone()));
            }
        }
        self.drain()
    }

    /// Feeds a recorded webhook (Meta or WAHA) as if it had just arrived: its timestamps are
    /// moved so that its newest event happened now (recorded fixtures are months old; the
    /// window opens at a message's own timestamp). Meta events go to the channel of their
    /// `phone_number_id`, WAHA events to the Personal channel of their session (or the first
    /// Personal channel). Events of numbers no channel claims are skipped.
    pub fn feed_fixture(&mut self, path: impl AsRef<Path>) -> Drained {
        self.feed_webhook(path.as_ref(), true)
    }

    /// Like [`TestKit::feed_fixture`], keeping the recorded timestamps.
    pub fn feed_fixture_as_recorded(&mut self, path: impl AsRef<Path>) -> Drained {
        self.feed_webhook(path.as_ref(), false)
    }

    fn feed_webhook(&mut self, path: &Path, fresh: bool) -> Drained {
        let body = std::fs::read(path)
            .unwrap_or_else(|e| panic!("testkit: cannot read {}: {e}", path.display()));
        let (format, mut events) = wire::parse_any(&body)
            .unwrap_or_else(|e| panic!("testkit: {} is not a webhook: {e}", path.display()));
        if fresh {
            if let Some(newest) = events.iter().map(|e| e.at).filter(|at| *at > 0).max() {
                let shift = self.now_ms() - newest;
                for e in events.iter_mut().filter(|e| e.at > 0) {
                    e.at += shift;
                }
            }
        }
        let mut total = Drained::default();
        for mut event in events {
            let channel = match format {
                Format::Meta => {
                    let route = self.routes.route_meta(&mut event);
                    if !route.routed {
                        continue;
                    }
                    route.channel
                }
                Format::Waha => match self.routes.route_waha_session(&mut event) {
                    Some(route) => route.channel,
                    None => continue,
                },
            };
            event.channel = channel;
            let d = self.feed(event);
            total.handled += d.handled;
            total.dead += d.dead;
        }
        total
    }

    /// A customer's text message on `channel`, written now (not fed: change it, then [`TestKit::feed`]).
    /// `contact`: a phone number; on Personal channels a bare number becomes its chat id
    /// (`<number>@s.whatsapp.net`, as the WAHA parser names conversations).
    pub fn text_event(&mut self, channel: &str, contact: &str, text: &str) -> Event {
        let mut event = self.base_event(channel, contact, EventType::Message);
        if let Some(m) = event.message.as_mut() {
            m.kind = "text".into();
            m.text = Some(text.into());
        }
        event
    }

    /// A customer's tap on a reply button (`button_reply`) with this id and title.
    pub fn button_event(&mut self, channel: &str, contact: &str, id: &str, title: &str) -> Event {
        let mut event = self.base_event(channel, contact, EventType::Message);
        if let Some(m) = event.message.as_mut() {
            m.kind = "button_reply".into();
            m.text = Some(title.into());
            m.button_id = Some(id.into());
        }
        event
    }

    /// A customer's photo (`image` message) whose file is `media_id` (from
    /// [`TestKit::put_media`]), with an optional caption.
    pub fn image_event(
        &mut self,
        channel: &str,
        contact: &str,
        media_id: &str,
        caption: Option<&str>,
    ) -> Event {
        let mut event = self.base_event(channel, contact, EventType::Message);
        if let Some(m) = event.message.as_mut() {
            m.kind = "image".into();
            m.text = caption.map(str::to_string);
            m.media = Some(crate::event::Media {
                id: Some(media_id.into()),
                mime_type: Some("image/jpeg".into()),
                ..Default::default()
            });
        }
        event
    }

    /// Makes `file` a media the bot can open on `channel` (`ctx.media()`); answers its id, to
    /// put in an event ([`TestKit::image_event`]). Files a bot uploads (`ctx.upload`) are kept
    /// the same way.
    pub fn put_media(&mut self, channel: &str, file: crate::media::MediaFile) -> String {
        let media = self.media.clone();
        let kind = self
            .config
            .channels
            .iter()
            .find(|c| c.id == channel)
            .map(|c| c.kind)
            .unwrap_or_else(|| panic!("testkit: no channel {channel:?} in the configuration"));
        self.next_id += 1;
        let id = format!("testkit-media-{}", self.next_id);
        // Personal sends only ids of its own uploads (`cxm_…`); WABA ids must not look so.
        let id = match kind {
            ChannelKind::Personal => {
                format!("{}{id}", crate::outbound::rules::GATEWAY_MEDIA_PREFIX)
            }
            ChannelKind::Waba => id,
        };
        self.runtime
            .block_on(media.held().put_as(channel, &id, file))
            .expect("the in-memory media store keeps files");
        id
    }

    /// A message a person sent from the business's phone app (an echo with source `app`):
    /// it starts a handover.
    pub fn echo_event(&mut self, channel: &str, contact: &str, text: &str) -> Event {
        let mut event = self.base_event(channel, contact, EventType::Echo);
        if let Some(m) = event.message.as_mut() {
            m.kind = "text".into();
            m.text = Some(text.into());
            m.source = Some("app".into());
        }
        event
    }

    /// Feeds a customer's text message written now.
    pub fn user_text(&mut self, channel: &str, contact: &str, text: &str) -> Drained {
        let event = self.text_event(channel, contact, text);
        self.feed(event)
    }

    /// Feeds a tap on a reply button.
    pub fn user_button(&mut self, channel: &str, contact: &str, id: &str, title: &str) -> Drained {
        let event = self.button_event(channel, contact, id, title);
        self.feed(event)
    }

    /// Feeds an echo of a person answering from the phone.
    pub fn phone_echo(&mut self, channel: &str, contact: &str, text: &str) -> Drained {
        let event = self.echo_event(channel, contact, text);
        self.feed(event)
    }

    fn base_event(&mut self, channel: &str, contact: &str, event_type: EventType) -> Event {
        let kind = self
            .config
            .channel(channel)
            .unwrap_or_else(|| panic!("testkit: no channel {channel:?} in the configuration"))
            .kind;
        let conversation = self.conversation_id(channel, contact);
        self.next_id += 1;
        let n = self.next_id;
        let (message_id, contact) = match kind {
            ChannelKind::Waba => (
                format!("wamid.TESTKIT{n:08}"),
                Contact {
                    wa_id: Some(conversation.clone()),
                    ..Default::default()
                },
            ),
            ChannelKind::Personal => (
                format!(
                    "{}_{}_TESTKIT{n:08}",
                    event_type == EventType::Echo,
                    conversation
                ),
                Contact {
                    phone_jid: Some(conversation.clone()),
                    ..Default::default()
                },
            ),
        };
        let prefix = if event_type == EventType::Echo {
            "echo:"
        } else {
            ""
        };
        Event {
            id: format!("{prefix}{message_id}"),
            channel: channel.into(),
            kind,
            conversation,
            event_type,
            at: self.now_ms(),
            received_at: None,
            contact,
            message: Some(Message {
                id: message_id,
                ..Default::default()
            }),
            status: None,
            field: None,
            timer: None,
            outbound: None,
            call: None,
            raw: serde_json::Value::Null,
        }
    }

    /// The conversation id of `contact` on `channel` (see [`TestKit::text_event`]).
    pub fn conversation_id(&self, channel: &str, contact: &str) -> String {
        match self.config.channel(channel).map(|c| c.kind) {
            Some(ChannelKind::Personal) if !contact.contains('@') => {
                format!("{contact}@s.whatsapp.net")
            }
            _ => contact.to_string(),
        }
    }

    // ------------------------------------------------------------------ time

    /// Moves the clock forward by `by`, firing every window timer that falls due on the way at
    /// its own due time (the bot sees `ctx.now_ms()` = the timer's due time), and sending every
    /// queued reply whose lane comes due on the way (a pair gap ending, a backoff) at that time.
    pub fn advance(&mut self, by: Duration) -> Drained {
        let target = self
            .now_ms()
            .saturating_add(by.as_millis().min(i64::MAX as u128) as i64);
        let mut total = self.drain();
        loop {
            let next = [self.next_timer_due(target), self.next_lane_ready(target)]
                .into_iter()
                .flatten()
                .min();
            self.clock.set_ms(next.unwrap_or(target));
            let d = self.drain();
            total.handled += d.handled;
            total.dead += d.dead;
            total.sent += d.sent;
            total.failed_sends += d.failed_sends;
            if next.is_none() {
                return total;
            }
        }
    }

    /// The earliest time after now and at or before `until` when a waiting lane is ready.
    fn next_lane_ready(&self, until: i64) -> Option<i64> {
        let now = self.now_ms();
        let out = self.worker.out_queue().clone();
        let channels: Vec<String> = self.config.channels.iter().map(|c| c.id.clone()).collect();
        self.runtime.block_on(async {
            let mut next = None::<i64>;
            for channel in &channels {
                // `max` 0 takes nothing: it only says when the next lane is due.
                if let Ok(taken) = out.take(channel, "testkit", now, 0).await {
                    if let Some(at) = taken.next_ready_ms.filter(|t| *t > now && *t <= until) {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
            }
            next
        })
    }

    /// The replies waiting in a customer's lane (for a limit, or a backoff), oldest first.
    pub fn queued(&self, channel: &str, contact: &str) -> Vec<OutgoingMessage> {
        let conversation = self.conversation_id(channel, contact);
        let out = self.worker.out_queue().clone();
        self.runtime
            .block_on(out.lane(channel, &conversation))
            .unwrap_or_default()
            .into_iter()
            .map(|q| q.msg)
            .collect()
    }

    /// Sets the clock to `ms` (forward only), firing timers on the way like [`TestKit::advance`].
    pub fn advance_to(&mut self, ms: i64) -> Drained {
        let by = (ms - self.now_ms()).max(0) as u64;
        self.advance(Duration::from_millis(by))
    }

    /// The earliest window timer due after now and at or before `until`: the worker armed the
    /// timers `timers_for` plans for each conversation's window; the queue fires them.
    fn next_timer_due(&self, until: i64) -> Option<i64> {
        let now = self.now_ms();
        self.conversations
            .iter()
            .filter(|(channel, _)| {
                self.config
                    .channel(channel)
                    .is_some_and(|c| c.kind == ChannelKind::Waba)
            })
            .filter_map(|(channel, conv)| {
                let state = self.conversation(channel, conv)?;
                window::timers_for(ChannelKind::Waba, &state, now, &self.leads_ms)
                    .into_iter()
                    .map(|t| t.due_ms)
                    .filter(|due| *due > now && *due <= until)
                    .min()
            })
            .min()
    }

    /// Handles whatever is waiting and whatever timer is due now.
    pub fn drain(&mut self) -> Drained {
        self.runtime
            .block_on(self.worker.drain())
            .expect("the in-memory queue does not fail")
    }

    // ------------------------------------------------------------------ what happened

    /// Every reply sent so far (dry run), in order: channel, recipient, reply, outbox key.
    pub fn replies(&self) -> Vec<OutgoingMessage> {
        self.sent.lock().unwrap().clone()
    }

    /// The replies sent since the last call of `take_replies`.
    pub fn take_replies(&mut self) -> Vec<OutgoingMessage> {
        let sent = self.sent.lock().unwrap();
        let new = sent[self.taken..].to_vec();
        self.taken = sent.len();
        new
    }

    /// The texts of the replies sent so far (other reply types left out).
    pub fn reply_texts(&self) -> Vec<String> {
        self.replies()
            .into_iter()
            .filter_map(|m| match m.reply {
                Reply::Text { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    }

    /// Replies the sender refused at send time.
    pub fn refused(&self) -> Vec<Refused> {
        self.refused.lock().unwrap().clone()
    }

    /// The bot state of a conversation, as `T`.
    pub fn state<T: DeserializeOwned>(&self, channel: &str, contact: &str) -> Option<T> {
        let state = self.conversation(channel, contact)?;
        serde_json::from_value(state.bot_state?).ok()
    }

    /// The stored conversation (`None`: never seen).
    pub fn conversation(&self, channel: &str, contact: &str) -> Option<ConversationState> {
        let conversation = self.conversation_id(channel, contact);
        self.runtime
            .block_on(self.store.load(channel, &conversation))
            .expect("the in-memory store does not fail")
    }

    /// The service window of a conversation now.
    pub fn window(&self, channel: &str, contact: &str) -> Window {
        let kind = self
            .config
            .channel(channel)
            .map(|c| c.kind)
            .unwrap_or(ChannelKind::Waba);
        window::window(
            kind,
            &self.conversation(channel, contact).unwrap_or_default(),
            self.now_ms(),
        )
    }

    /// Is the bot paused for this conversation (a person answered from the phone)?
    pub fn in_handover(&self, channel: &str, contact: &str) -> bool {
        window::handover_active(
            &self.conversation(channel, contact).unwrap_or_default(),
            self.now_ms(),
        )
    }

    /// Timers armed on a channel (all partitions).
    pub fn armed_timers(&self, channel: &str) -> u64 {
        let partitions = self
            .config
            .channel(channel)
            .map(|c| c.partitions)
            .unwrap_or(0);
        (0..partitions)
            .map(|p| {
                self.runtime
                    .block_on(self.queue.partition_stats(channel, p))
                    .map(|s| s.timers)
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Events of a channel that went to the dead-letter stream, with their errors.
    pub fn dead_letters(&self, channel: &str) -> Vec<DeadLetter> {
        self.runtime
            .block_on(self.queue.dead_letters(channel, 1000))
            .expect("the in-memory queue does not fail")
    }
}
