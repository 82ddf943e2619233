//! What reaches WhatsApp users: rules, outbox, rate limits, senders.
//!
//! [`Outbound::attempt`] is the one step the lane sender ([`lane_sender`]) takes per queued
//! message: rules (window, templates, channel capabilities) → rate limits shared by all
//! processes (a short wait inline, anything longer sets the lane aside) → outbox claim (once per
//! outbox key) → one HTTP request. What it comes to ([`Attempt`]) says whether the message was
//! sent, must wait (and why), or failed for good.

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

use crate::backend::Backend;
use crate::channel::ChannelKind;
use crate::config::Config;
use crate::metrics::{Metric, Metrics};
use enum_dispatch::enum_dispatch;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bounds on retrying and waiting of [`Outbound::attempt`] (the lane sender backs off between
/// attempts).
#[derive(Clone, Debug)]
pub struct OutboundOptions {
    /// HTTP attempts per queued message (retryable errors only), across the lane's backoffs.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// How long an unconfirmed earlier send of the same outbox key is given for its status to
    /// arrive before it is sent again.
    pub inflight_wait: Duration,
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
            max_attempts: 6,
            backoff: Backoff::default(),
            inflight_wait: Duration::from_secs(15),
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

impl Outbound {
    /// Senders for every configured channel; outbox and limits in `backend` (Redis, or this
    /// process's memory).
    pub fn new(
        config: &Config,
        backend: &Backend,
        metrics: Metrics,
    ) -> Result<Outbound, OutboundError> {
        Outbound::with_options(
            config,
            backend,
            metrics,
            OutboundOptions::from_config(&config.sending),
        )
    }

    pub fn with_options(
        config: &Config,
        backend: &Backend,
        metrics: Metrics,
        options: OutboundOptions,
    ) -> Result<Outbound, OutboundError> {
        let http = reqwest::Client::builder()
            .timeout(options.http_timeout)
            .connect_timeout(options.http_timeout.min(Duration::from_secs(5)))
            .build()?;
        let media = crate::media::MediaHub::new(config, backend)?;
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
        let (outbox, rate) = (backend.outbox(options.outbox), backend.rate_limiter());
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
}
