//! What reaches WhatsApp users: rules, outbox, rate limits, senders.
//!
//! [`Outbound::send`] is the one step a worker calls per reply:
//! rules (window, templates, channel capabilities) → outbox claim (once per outbox key) →
//! rate limits shared by all processes (bounded wait) → HTTP send with bounded retries →
//! `mark_sent`. Each step's failure comes back as a [`SendError`] that says whether a retry
//! can help.

pub mod attempt;
pub mod error;
pub mod graph;
pub mod lane_sender;
pub mod message;
pub mod outbox;
pub mod queue;
pub mod rate;
pub mod rules;
pub mod waha;

pub use attempt::Attempt;
pub use error::{Backoff, SendError};
pub use graph::GraphSender;
pub use lane_sender::{LaneSender, LaneSettings};
pub use message::{MediaSource, OutgoingMessage, Reply, Sent};
pub use outbox::{Outbox, OutboxBackend, OutboxError, OutboxOptions, OutboxState, SentRef};
pub use queue::{
    Idempotency, LaneGrant, MessageStatus, OutQueue, OutQueueBackend, OutQueueError,
    OutQueueOptions, OutRecord, OutStats, QueuedMessage, Settle, Submitted, WaitReason,
};
pub use rate::{Bucket, Limits, RateBackend, RateLimiter, Take};
pub use rules::RuleError;
pub use waha::WahaSender;

use crate::channel::ChannelKind;
use crate::config::Config;
use crate::conversation::window::Window;
use crate::keys::Keys;
use crate::metrics::{Metric, Metrics};
use crate::redis_conn::RedisConn;
use enum_dispatch::enum_dispatch;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds on waiting and retrying inside one [`Outbound::send`]; the worker's own retries
/// (with the partition waiting) take over beyond them.
#[derive(Clone, Debug)]
pub struct OutboundOptions {
    /// Longest wait for a rate-limit slot; beyond it `send` returns `RateLimited`.
    pub max_rate_wait: Duration,
    /// HTTP attempts per message (retryable errors only): per `send`, or per queued message
    /// across the lane's backoffs.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Longest total sleep between attempts of one `send`.
    pub max_retry_wait: Duration,
    /// How long an unconfirmed earlier send of the same outbox key is given for its status to
    /// arrive before this send takes over and sends again.
    pub inflight_wait: Duration,
    /// How often the outbox key is re-read while waiting for that status.
    pub inflight_poll: Duration,
    /// Timeout of one HTTP request.
    pub http_timeout: Duration,
    pub outbox: OutboxOptions,
}

impl OutboundOptions {
    /// The defaults, with what `[sending]` sets.
    pub fn from_config(c: &crate::config::SendingConfig) -> Self {
        let d = OutboundOptions::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        OutboundOptions {
            max_rate_wait: ms(c.max_rate_wait_ms, d.max_rate_wait),
            max_attempts: c.attempts.unwrap_or(d.max_attempts).max(1),
            backoff: Backoff {
                base: ms(c.retry_base_ms, d.backoff.base),
                pair_base: ms(c.pair_retry_base_ms, d.backoff.pair_base),
                ..d.backoff
            },
            inflight_wait: ms(c.inflight_wait_ms, d.inflight_wait),
            http_timeout: ms(c.http_timeout_ms, d.http_timeout),
            ..d
        }
    }
}

impl Default for OutboundOptions {
    fn default() -> Self {
        OutboundOptions {
            max_rate_wait: Duration::from_secs(5),
            max_attempts: 6,
            backoff: Backoff::default(),
            max_retry_wait: Duration::from_secs(30),
            inflight_wait: Duration::from_secs(15),
            inflight_poll: Duration::from_millis(250),
            http_timeout: Duration::from_secs(15),
            outbox: OutboxOptions::default(),
        }
    }
}

/// What a channel's sender does, on either API: the Cloud API ([`GraphSender`]) or WAHA
/// ([`WahaSender`]). Native `async fn`: every caller holds a concrete [`Sender`], so the
/// futures stay `Send` where the sender's are.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait ChannelSender {
    /// Sends one message, without pacing or retrying (the caller does both): the provider's
    /// message id, or a [`SendError`] that says whether a retry can help. In a dry run the
    /// request is logged and the id is `dry-run:<outbox key>`.
    async fn send(&self, msg: &OutgoingMessage) -> Result<Sent, SendError>;

    /// No credentials or URL configured: requests are logged, not sent.
    fn is_dry_run(&self) -> bool;
}

/// One channel's sender; every [`ChannelSender`] method dispatches to it (`enum_dispatch`).
#[enum_dispatch(ChannelSender)]
#[derive(Clone, Debug)]
pub enum Sender {
    Graph(GraphSender),
    Waha(WahaSender),
}

#[derive(Debug)]
struct ChannelOut {
    limits: Limits,
    sender: Sender,
    /// This process marked the channel unhealthy (so a success clears the mark once).
    unhealthy: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The sending step, shared by all of a process's workers (cheap to clone).
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("channels", &self.inner.channels)
            .field("outbox", &self.inner.outbox)
            .field("rate", &self.inner.rate)
            .finish()
    }
}

struct Inner {
    channels: HashMap<String, ChannelOut>,
    outbox: Outbox,
    rate: RateLimiter,
    metrics: Metrics,
    options: OutboundOptions,
    /// Outbox keys first seen pending (an unconfirmed send) by this process, with when.
    inflight_seen: std::sync::Mutex<(HashMap<String, i64>, crate::clock::SweepSchedule)>,
    /// Outbox keys whose provider answer this process holds, not recorded yet.
    held: std::sync::Mutex<std::collections::HashSet<String>>,
    media: crate::media::MediaHub,
}

pub use crate::clock::now_ms;

enum Claim {
    Mine(String),
    Done(String),
}

impl Outbound {
    /// Senders for every configured channel; outbox and limits in Redis when `redis` is
    /// given (keys under `[redis] prefix`), else in memory (one process).
    pub fn new(
        config: &Config,
        redis: Option<RedisConn>,
        metrics: Metrics,
    ) -> Result<Outbound, OutboundError> {
        Outbound::with_options(
            config,
            redis,
            metrics,
            OutboundOptions::from_config(&config.sending),
        )
    }

    pub fn with_options(
        config: &Config,
        redis: Option<RedisConn>,
        metrics: Metrics,
        options: OutboundOptions,
    ) -> Result<Outbound, OutboundError> {
        let keys = Keys::new(
            config
                .redis
                .as_ref()
                .map(|r| r.prefix.clone())
                .unwrap_or_else(|| "cx".into()),
        );
        let http = reqwest::Client::builder()
            .timeout(options.http_timeout)
            .connect_timeout(options.http_timeout.min(Duration::from_secs(5)))
            .build()?;
        let media = crate::media::MediaHub::new(config, redis.clone())?;
        let mut channels = HashMap::new();
        for c in &config.channels {
            let sender = match c.kind {
                ChannelKind::Waba => Sender::Graph(GraphSender::new(
                    &config.meta.graph_api_url,
                    c.phone_number_id.as_deref().unwrap_or_default(),
                    c.access_token.clone(),
                    http.clone(),
                )),
                ChannelKind::Personal => Sender::Waha(
                    WahaSender::new(
                        c.api_url.clone(),
                        c.api_key.clone(),
                        c.session.clone().unwrap_or_else(|| "default".into()),
                        http.clone(),
                    )
                    .with_held_uploads(&c.id, media.held().clone()),
                ),
            };
            if sender.is_dry_run() {
                tracing::info!(channel = %c.id, "no sending credentials/url configured: dry run");
            }
            metrics.set_gauge(Metric::ChannelUnhealthy, &[("channel", &c.id)], 0);
            channels.insert(
                c.id.clone(),
                ChannelOut {
                    limits: Limits::for_channel(c),
                    sender,
                    unhealthy: AtomicBool::new(false),
                },
            );
        }
        let (outbox, rate) = match redis {
            Some(con) => (
                Outbox::redis(con.clone(), keys.clone(), options.outbox),
                RateLimiter::redis(con, keys),
            ),
            None => (
                Outbox::memory(keys.clone(), options.outbox),
                RateLimiter::memory(keys),
            ),
        };
        Ok(Outbound {
            inner: Arc::new(Inner {
                channels,
                outbox,
                rate,
                metrics,
                options,
                inflight_seen: Default::default(),
                held: Default::default(),
                media,
            }),
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// The metrics this sending step reports to (the channel health gauge).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Uploads and downloads of media on every channel.
    pub fn media(&self) -> &crate::media::MediaHub {
        &self.inner.media
    }

    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.inner.rate
    }

    /// The limits in force on a channel.
    pub fn limits(&self, channel: &str) -> Option<&Limits> {
        self.inner.channels.get(channel).map(|c| &c.limits)
    }

    /// Sends one reply at most once per outbox key. `kind` and `window` are the channel's kind
    /// and the conversation's service window now (`conversation::window::window`).
    ///
    /// `Ok` with `duplicate: true`: the key had already been sent (nothing sent now).
    /// `Err(e)`: `e.is_retryable()` says whether handling the event again can help;
    /// `e.closes_window()` says the window is closed (record it, suggest a template).
    pub async fn send(
        &self,
        msg: &OutgoingMessage,
        kind: ChannelKind,
        window: Window,
    ) -> Result<Sent, SendError> {
        let result = self.send_inner(msg, kind, window).await;
        let outcome = match &result {
            Ok(s) if s.duplicate => "duplicate",
            Ok(s) if s.message_id.starts_with("dry-run:") => "dry_run",
            Ok(_) => "sent",
            Err(e) => e.outcome(),
        };
        self.inner.metrics.inc(
            Metric::MessagesSent,
            &[("channel", &msg.channel), ("outcome", outcome)],
        );
        match &result {
            Ok(s) => tracing::debug!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                message_id = %s.message_id, outcome, "reply sent"),
            Err(e) => tracing::warn!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                error = %e, outcome, "reply not sent"),
        }
        result
    }

    async fn send_inner(
        &self,
        msg: &OutgoingMessage,
        kind: ChannelKind,
        window: Window,
    ) -> Result<Sent, SendError> {
        rules::check(kind, window, &msg.reply)?;
        let ch = self
            .inner
            .channels
            .get(&msg.channel)
            .ok_or_else(|| SendError::UnknownChannel(msg.channel.clone()))?;
        let marker = match self.claim(msg).await? {
            Claim::Done(message_id) => {
                return Ok(Sent {
                    message_id,
                    duplicate: true,
                })
            }
            Claim::Mine(marker) => marker,
        };
        match self.deliver(ch, msg).await {
            Ok(sent) => {
                if let Err(e) = self.inner.outbox.mark_sent(msg, &sent, now_ms()).await {
                    // Sent, but not recorded: the key stays pending, so a re-handled event
                    // waits for the status carrying the key instead of sending blindly.
                    tracing::error!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                        error = %e, "sent, but recording it in the outbox failed");
                }
                if ch.unhealthy.swap(false, Ordering::Relaxed) {
                    self.set_healthy(&msg.channel).await;
                }
                Ok(sent)
            }
            Err(e) => {
                if let SendError::Unauthorized { detail } = &e {
                    self.set_unhealthy(ch, &msg.channel, detail).await;
                }
                // A 2xx we could not read may have been sent: keep the claim pending.
                let release = if matches!(e, SendError::BadResponse { .. }) {
                    ""
                } else {
                    marker.as_str()
                };
                if let Err(store) = self
                    .inner
                    .outbox
                    .mark_failed(msg, release, &e, now_ms())
                    .await
                {
                    tracing::error!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                        error = %store, "could not release the outbox claim");
                }
                Err(e)
            }
        }
    }

    /// Claims the outbox key, waiting a bounded time on an unconfirmed earlier send.
    async fn claim(&self, msg: &OutgoingMessage) -> Result<Claim, SendError> {
        let outbox = &self.inner.outbox;
        let opts = &self.inner.options;
        let wait_ms = opts.inflight_wait.as_millis() as i64;
        let started = Instant::now();
        let mut state = outbox.record(msg, now_ms()).await.map_err(store_error)?;
        loop {
            match state {
                OutboxState::Claimed { marker } => return Ok(Claim::Mine(marker)),
                OutboxState::AlreadySent(id) => return Ok(Claim::Done(id)),
                OutboxState::GivenUp(code) => {
                    return Err(SendError::GivenUp {
                        code: attempt::static_code(&code),
                    })
                }
                OutboxState::InFlight { since_ms, marker } => {
                    let age = now_ms() - since_ms;
                    if age >= wait_ms {
                        tracing::warn!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                            since_ms, "no status for an earlier send of this reply: sending again");
                        state = outbox
                            .take_over(msg, &marker, now_ms())
                            .await
                            .map_err(store_error)?;
                        continue;
                    }
                    // Someone keeps taking it over: let the worker retry later.
                    if started.elapsed() > opts.inflight_wait.saturating_mul(2) {
                        return Err(SendError::InFlight { since_ms });
                    }
                    let left = Duration::from_millis((wait_ms - age).max(1) as u64);
                    tokio::time::sleep(left.min(opts.inflight_poll)).await;
                    state = outbox.record(msg, now_ms()).await.map_err(store_error)?;
                }
            }
        }
    }

    /// Paced HTTP attempts with bounded retries on retryable errors.
    async fn deliver(&self, ch: &ChannelOut, msg: &OutgoingMessage) -> Result<Sent, SendError> {
        let opts = &self.inner.options;
        let mut slept = Duration::ZERO;
        let mut attempt = 0;
        loop {
            self.pace(ch, msg).await?;
            let error = match ch.sender.send(msg).await {
                Ok(sent) => return Ok(sent),
                Err(e) => e,
            };
            attempt += 1;
            if !error.is_retryable() || attempt >= opts.max_attempts.max(1) {
                return Err(error);
            }
            let delay = opts.backoff.delay(&error, attempt - 1);
            if slept + delay > opts.max_retry_wait {
                return Err(error);
            }
            tracing::info!(channel = %msg.channel, outbox_key = %msg.outbox_key, attempt,
                delay_ms = delay.as_millis() as u64, error = %error, "send failed, retrying");
            tokio::time::sleep(delay).await;
            slept += delay;
        }
    }

    /// Waits for a slot in the channel's limits (plus jitter on Personal channels), showing
    /// "typing…" on WAHA while a text waits, or returns `RateLimited` when the slot is further
    /// away than `max_rate_wait`.
    async fn pace(&self, ch: &ChannelOut, msg: &OutgoingMessage) -> Result<(), SendError> {
        let contact = msg.reply.is_message().then_some(msg.to.as_str());
        let budget = self.inner.options.max_rate_wait;
        let started = Instant::now();
        let typing = match (&ch.sender, &msg.reply) {
            (Sender::Waha(w), Reply::Text { .. }) => Some(w),
            _ => None,
        };
        let mut typing_shown = false;
        let result = loop {
            let jitter = if contact.is_some() && ch.limits.jitter_ms > 0 {
                rand::random_range(0..=ch.limits.jitter_ms)
            } else {
                0
            };
            let left = budget.saturating_sub(started.elapsed()).as_millis() as u64;
            let take = self
                .inner
                .rate
                .take(&msg.channel, contact, &ch.limits, now_ms(), jitter, left)
                .await
                .map_err(|e| SendError::Store {
                    detail: e.to_string(),
                });
            let (wait_ms, done) = match take {
                Err(e) => break Err(e),
                Ok(Take::Ready { wait_ms: 0 }) => break Ok(()),
                Ok(Take::Ready { wait_ms }) => (wait_ms, true),
                Ok(Take::NotYet { wait_ms }) if wait_ms > left => {
                    break Err(SendError::RateLimited {
                        retry_after: Some(Duration::from_millis(wait_ms)),
                    })
                }
                Ok(Take::NotYet { wait_ms }) => (wait_ms.max(1), false),
            };
            if let (Some(w), false) = (typing, typing_shown) {
                typing_shown = true;
                // Best effort: a failed receipt or typing bubble must not stop the message.
                if let Err(e) = w.send_seen(msg).await {
                    tracing::debug!(error = %e, "sendSeen failed");
                }
                if let Err(e) = w.start_typing(msg).await {
                    tracing::debug!(error = %e, "startTyping failed");
                }
            }
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            if done {
                break Ok(());
            }
        };
        if let (Some(w), true) = (typing, typing_shown) {
            if let Err(e) = w.stop_typing(msg).await {
                tracing::debug!(error = %e, "stopTyping failed");
            }
        }
        result
    }

    async fn set_unhealthy(&self, ch: &ChannelOut, channel: &str, detail: &str) {
        ch.unhealthy.store(true, Ordering::Relaxed);
        self.inner
            .metrics
            .set_gauge(Metric::ChannelUnhealthy, &[("channel", channel)], 1);
        tracing::error!(
            channel,
            detail,
            "credentials refused: channel marked unhealthy"
        );
        if let Err(e) = self
            .inner
            .outbox
            .set_unhealthy(channel, detail, now_ms())
            .await
        {
            tracing::error!(channel, error = %e, "could not store the unhealthy flag");
        }
    }

    async fn set_healthy(&self, channel: &str) {
        self.inner
            .metrics
            .set_gauge(Metric::ChannelUnhealthy, &[("channel", channel)], 0);
        if let Err(e) = self.inner.outbox.clear_health(channel).await {
            tracing::error!(channel, error = %e, "could not clear the unhealthy flag");
        }
    }

    /// A status webhook carried `biz_opaque_callback_data`: see
    /// [`OutboxBackend::mark_status_seen`].
    pub async fn mark_status_seen(
        &self,
        channel: &str,
        outbox_key: &str,
        message_id: &str,
    ) -> Result<bool, OutboxError> {
        self.inner
            .outbox
            .mark_status_seen(channel, outbox_key, message_id, now_ms())
            .await
    }

    /// Which reply and conversation a sent message id belongs to (for status events).
    pub async fn lookup_message(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<SentRef>, OutboxError> {
        self.inner
            .outbox
            .lookup_message(channel, message_id, now_ms())
            .await
    }

    /// `None` when healthy; else why the channel was marked unhealthy (operator commands).
    pub async fn channel_health(&self, channel: &str) -> Result<Option<String>, OutboxError> {
        self.inner.outbox.health(channel, now_ms()).await
    }
}

fn store_error(e: OutboxError) -> SendError {
    SendError::Store {
        detail: e.to_string(),
    }
}
