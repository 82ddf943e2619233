//! One try at the head of a customer's lane, without ever waiting long: the rules at send time,
//! the rate limits (a closed per-contact gate or a far channel slot means "later", not a
//! sleep), the idempotency claim, one HTTP request. What it comes to says what the lane does
//! next; the lane sender ([`super::lane_sender`]) acts on it.

use super::message::Sent;
use super::queue::{QueuedMessage, WaitReason};
use super::rate::{RateBackend, Take};
use super::rules::{self, RuleError};
use super::{ChannelSender, Outbound, OutboxBackend, OutboxState, Reply, SendError, Sender};
use crate::channel::ChannelKind;
use crate::conversation::window::Window;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a lane whose head may have been sent before a crash looks for its status.
const INFLIGHT_RECHECK_MS: i64 = 1_000;

/// What preparing a send came to: a claim to send with, or already an outcome.
#[derive(Debug)]
pub enum Prepared {
    /// Rules passed, a rate slot is ours and the idempotency key is claimed with this marker:
    /// send now with [`Outbound::deliver_claimed`] (or give the claim up with
    /// [`super::OutboxBackend::release`]).
    Claimed(String),
    /// Already an outcome: found sent, not now, or given up.
    Done(Attempt),
}

/// What one try came to.
#[derive(Debug)]
pub enum Attempt {
    /// Accepted by the provider now, or found already sent (`duplicate`): settle as sent.
    Sent(Sent),
    /// Not now: give the lane back until `until_ms`. `bump`: a failed attempt to count.
    Later {
        until_ms: i64,
        reason: WaitReason,
        bump: bool,
    },
    /// Given up: settle as failed.
    Failed(SendError),
}

/// Every code a given-up message may carry (see [`failure_code`]).
const CODES: [&str; 17] = [
    "window_closed",
    "templates_unsupported",
    "unsupported_on_channel",
    "invalid_reply",
    "media_failed",
    "rate_limited",
    "pair_rate_limited",
    "undeliverable",
    "transient",
    "unauthorized",
    "rejected",
    "bad_response",
    "store_error",
    "unknown_channel",
    "refused",
    "messaging_limit",
    "given_up",
];

/// A stored code as the `'static` one it names (`given_up` for anything unknown).
pub fn static_code(code: &str) -> &'static str {
    CODES.into_iter().find(|c| *c == code).unwrap_or("given_up")
}

/// The snake_case code a given-up message carries in its record and `outbound.failed` event.
pub fn failure_code(e: &SendError) -> &'static str {
    match e {
        SendError::Rule(RuleError::WindowClosed { .. }) | SendError::WindowClosed { .. } => {
            "window_closed"
        }
        SendError::Rule(RuleError::TemplatesUnsupported { .. }) => "templates_unsupported",
        SendError::Rule(RuleError::UnsupportedOnChannel { .. }) => "unsupported_on_channel",
        SendError::Rule(RuleError::InvalidReply { .. }) => "invalid_reply",
        other => other.outcome(),
    }
}

/// The `outcome` label of `coexist_messages_sent_total` for how a message left its lane.
pub fn outcome_label(result: Result<&Sent, &SendError>) -> &'static str {
    match result {
        Ok(s) if s.duplicate => "duplicate",
        Ok(s) if s.message_id.starts_with("dry-run:") => "dry_run",
        Ok(_) => "sent",
        Err(e) => failure_code(e),
    }
}

/// Meta's or the gateway's own error code, when the error carries one.
pub fn provider_code(e: &SendError) -> Option<i64> {
    match e {
        SendError::WindowClosed { code, .. }
        | SendError::Rejected { code, .. }
        | SendError::Media { code, .. } => Some(*code),
        SendError::Undeliverable { .. } => Some(131026),
        SendError::PairRateLimited => Some(131056),
        _ => None,
    }
}

impl Outbound {
    /// Tries to send `head` now: [`Outbound::prepare`], then [`Outbound::deliver_claimed`].
    pub async fn attempt(
        &self,
        head: &QueuedMessage,
        kind: ChannelKind,
        window: Window,
        now_ms: i64,
        max_inline_wait: Duration,
    ) -> Attempt {
        match self
            .prepare(head, kind, window, now_ms, max_inline_wait)
            .await
        {
            Prepared::Claimed(marker) => self.deliver_claimed(head, &marker, now_ms).await,
            Prepared::Done(outcome) => outcome,
        }
    }

    /// Everything before the HTTP request: the rules at send time (`window` is the
    /// conversation's service window now), a rate slot (one up to `max_inline_wait` away is
    /// waited for here — this lane's own wait, other lanes go on; anything further is
    /// [`Attempt::Later`]), and the idempotency claim (a key already sent is never sent again;
    /// one whose earlier send may have left before a crash waits for its status first).
    pub async fn prepare(
        &self,
        head: &QueuedMessage,
        kind: ChannelKind,
        window: Window,
        now_ms: i64,
        max_inline_wait: Duration,
    ) -> Prepared {
        use Prepared::Done;
        let msg = &head.msg;
        // What the key says comes first: a message already sent (or given up) is settled as
        // such whatever the rules say now, and one that may be on the wire is waited for.
        if let Some(known) = self.known_outcome(msg, now_ms).await {
            return Done(known);
        }
        if let Err(e) = rules::check(kind, window, &msg.reply) {
            return Done(Attempt::Failed(e.into()));
        }
        let Some(ch) = self.inner.channels.get(&msg.channel) else {
            return Done(Attempt::Failed(SendError::UnknownChannel(
                msg.channel.clone(),
            )));
        };
        let opts = &self.inner.options;
        let store_trouble = |attempts: u32| {
            Done(Attempt::Later {
                until_ms: now_ms
                    + opts.backoff.base.as_millis() as i64 * i64::from(attempts.min(10) + 1),
                reason: WaitReason::Backoff,
                bump: false,
            })
        };

        // Meta's messaging limit: a template outside the customer's window reaches a customer
        // the business may not have reached in 24 h; beyond the limit, wait for the window to
        // roll.
        let business_initiated = !window.allows_free_form() && msg.reply.is_message();
        if kind == ChannelKind::Waba && business_initiated {
            match self
                .inner
                .rate
                .reach(&msg.channel, &ch.limits, &msg.to, now_ms)
                .await
            {
                Ok(None) => {}
                Ok(Some(until_ms)) => {
                    return Done(Attempt::Later {
                        until_ms,
                        reason: WaitReason::MessagingLimit,
                        bump: false,
                    })
                }
                Err(e) => {
                    tracing::warn!(channel = %msg.channel, error = %e, "messaging limit unavailable");
                    return store_trouble(head.attempts);
                }
            }
        }

        // Rate limits: reserve a slot, or set the lane aside until one can be had.
        let contact = msg.reply.is_message().then_some(msg.to.as_str());
        let jitter = if contact.is_some() && ch.limits.jitter_ms > 0 {
            rand::random_range(0..=ch.limits.jitter_ms)
        } else {
            0
        };
        let inline_ms = max_inline_wait.as_millis() as u64;
        let wait_ms = match self
            .inner
            .rate
            .reserve(&msg.channel, contact, &ch.limits, now_ms, jitter, inline_ms)
            .await
        {
            Ok((Take::Ready { wait_ms }, _)) => wait_ms,
            Ok((Take::NotYet { wait_ms }, gated)) => {
                return Done(Attempt::Later {
                    until_ms: now_ms + wait_ms.max(1) as i64,
                    reason: if gated {
                        WaitReason::PairGap
                    } else {
                        WaitReason::Rate
                    },
                    bump: false,
                })
            }
            Err(e) => {
                tracing::warn!(channel = %msg.channel, error = %e, "rate limiter unavailable");
                return store_trouble(head.attempts);
            }
        };
        if wait_ms > 0 {
            self.wait_for_slot(ch, msg, Duration::from_millis(wait_ms))
                .await;
        }

        // The idempotency claim: a key already sent is never sent again.
        let outbox = &self.inner.outbox;
        let claim_now = super::now_ms().max(now_ms);
        let mut state = match outbox.record(msg, claim_now).await {
            Ok(s) => s,
            Err(_) => return store_trouble(head.attempts),
        };
        if let OutboxState::InFlight { since_ms, marker } = &state {
            let ready_at = self.inflight_deadline(&msg.outbox_key, *since_ms, claim_now);
            if claim_now < ready_at {
                // Look again soon: a status carrying the key ends the wait early.
                return Done(Attempt::Later {
                    until_ms: ready_at.min(now_ms + INFLIGHT_RECHECK_MS),
                    reason: WaitReason::InFlight,
                    bump: false,
                });
            }
            tracing::warn!(channel = %msg.channel, outbox_key = %msg.outbox_key, since_ms,
                "no status for an earlier send of this message: sending again");
            state = match outbox.take_over(msg, marker, claim_now).await {
                Ok(s) => s,
                Err(_) => return store_trouble(head.attempts),
            };
        }
        self.forget_inflight(&msg.outbox_key);
        match state {
            OutboxState::Claimed { marker } => Prepared::Claimed(marker),
            OutboxState::GivenUp(code) => Done(Attempt::Failed(SendError::GivenUp {
                code: static_code(&code),
            })),
            OutboxState::AlreadySent(message_id) => Done(Attempt::Sent(Sent {
                message_id,
                duplicate: true,
            })),
            // Someone else took it over just now.
            OutboxState::InFlight { since_ms, .. } => Done(Attempt::Later {
                until_ms: (since_ms + opts.inflight_wait.as_millis() as i64)
                    .min(now_ms + INFLIGHT_RECHECK_MS),
                reason: WaitReason::InFlight,
                bump: false,
            }),
        }
    }

    /// One HTTP request for a claimed message, and what it means for the lane: sent, later
    /// (a retryable error, with backoff; the claim is given up), or failed for good.
    pub async fn deliver_claimed(
        &self,
        head: &QueuedMessage,
        marker: &str,
        now_ms: i64,
    ) -> Attempt {
        let msg = &head.msg;
        let Some(ch) = self.inner.channels.get(&msg.channel) else {
            return Attempt::Failed(SendError::UnknownChannel(msg.channel.clone()));
        };
        let opts = &self.inner.options;
        let outbox = &self.inner.outbox;

        // One HTTP request.
        match ch.sender.send(msg).await {
            Ok(sent) => {
                if ch.unhealthy.swap(false, Ordering::Relaxed) {
                    self.set_healthy(&msg.channel).await;
                }
                Attempt::Sent(sent)
            }
            Err(e) => {
                if let SendError::Unauthorized { detail } = &e {
                    self.set_unhealthy(ch, &msg.channel, detail).await;
                }
                let retry = e.is_retryable() && head.attempts + 1 < opts.max_attempts.max(1);
                // A 2xx we could not read may have been sent: keep the claim pending. A retry
                // gives the claim back; a final failure writes it into the key, so that a crash
                // before the failure is recorded cannot make the next sender try again.
                let kept = if matches!(e, SendError::BadResponse { .. }) {
                    Ok(true)
                } else if retry {
                    outbox.release(msg, marker, super::now_ms()).await
                } else {
                    outbox
                        .give_up(msg, marker, failure_code(&e), super::now_ms())
                        .await
                };
                if let Err(store) = kept {
                    tracing::warn!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                        error = %store, "could not update the outbox claim");
                }
                if retry {
                    let delay = opts.backoff.delay(&e, head.attempts).min(opts.backoff.max);
                    tracing::info!(channel = %msg.channel, outbox_key = %msg.outbox_key,
                        attempt = head.attempts + 1, delay_ms = delay.as_millis() as u64,
                        error = %e, "send failed; the lane backs off");
                    Attempt::Later {
                        until_ms: super::now_ms().max(now_ms) + delay.as_millis() as i64,
                        reason: WaitReason::Backoff,
                        bump: true,
                    }
                } else {
                    Attempt::Failed(e)
                }
            }
        }
    }

    /// What the idempotency key already says, before anything else is tried: sent (settle as
    /// sent), given up (settle as failed), or possibly on the wire (wait for its status). `None`
    /// when the key is free, or when an unconfirmed send has been waited for long enough.
    async fn known_outcome(&self, msg: &super::OutgoingMessage, now_ms: i64) -> Option<Attempt> {
        if self.is_held(&msg.outbox_key) {
            // This process holds the provider's answer and is recording it (Redis away).
            return Some(Attempt::Later {
                until_ms: now_ms + INFLIGHT_RECHECK_MS,
                reason: WaitReason::InFlight,
                bump: false,
            });
        }
        let now = super::now_ms().max(now_ms);
        let value = match self
            .inner
            .outbox
            .get(&msg.channel, &msg.outbox_key, now)
            .await
        {
            Ok(v) => v?,
            Err(_) => {
                return Some(Attempt::Later {
                    until_ms: now_ms + self.inner.options.backoff.base.as_millis() as i64,
                    reason: WaitReason::Backoff,
                    bump: false,
                })
            }
        };
        if let Some(id) = value.strip_prefix("sent:") {
            self.forget_inflight(&msg.outbox_key);
            return Some(Attempt::Sent(Sent {
                message_id: id.to_string(),
                duplicate: true,
            }));
        }
        if let Some(code) = value.strip_prefix("failed:") {
            return Some(Attempt::Failed(SendError::GivenUp {
                code: static_code(code),
            }));
        }
        let since = super::outbox::marker_since(&value);
        let ready_at = self.inflight_deadline(&msg.outbox_key, since, now);
        (now < ready_at).then(|| Attempt::Later {
            until_ms: ready_at.min(now_ms + INFLIGHT_RECHECK_MS),
            reason: WaitReason::InFlight,
            bump: false,
        })
    }

    /// When an unconfirmed claim made at `since_ms` may be taken over: `inflight_wait` after
    /// the claim, and never sooner than `inflight_wait` after this process first saw it
    /// pending — a sender that held its answer through a long Redis outage records it within
    /// that time once Redis is back.
    fn inflight_deadline(&self, key: &str, since_ms: i64, now_ms: i64) -> i64 {
        let wait = self.inner.options.inflight_wait.as_millis() as i64;
        let mut guard = self
            .inner
            .inflight_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (seen, sweep) = &mut *guard;
        if sweep.due(seen.len(), 1024) {
            seen.retain(|_, at| now_ms - *at < 10 * wait);
            sweep.swept(seen.len());
        }
        let first_seen = *seen.entry(key.to_string()).or_insert(now_ms);
        since_ms.max(first_seen) + wait
    }

    fn forget_inflight(&self, key: &str) {
        self.inner
            .inflight_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .remove(key);
    }

    /// Marks `key` as held by this process (its answer not recorded yet) until [`Outbound::release_held`].
    pub fn hold(&self, key: &str) {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string());
    }

    pub fn release_held(&self, key: &str) {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn is_held(&self, key: &str) -> bool {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// Waits for a reserved slot `wait` away, showing "typing…" on WAHA while a text waits
    /// (best effort: a failed receipt or bubble never stops the message).
    async fn wait_for_slot(
        &self,
        ch: &super::ChannelOut,
        msg: &super::OutgoingMessage,
        wait: Duration,
    ) {
        let typing = match (&ch.sender, &msg.reply) {
            (Sender::Waha(w), Reply::Text { .. }) => Some(w),
            _ => None,
        };
        if let Some(w) = typing {
            if let Err(e) = w.send_seen(msg).await {
                tracing::debug!(error = %e, "sendSeen failed");
            }
            if let Err(e) = w.start_typing(msg).await {
                tracing::debug!(error = %e, "startTyping failed");
            }
        }
        tokio::time::sleep(wait).await;
        if let Some(w) = typing {
            if let Err(e) = w.stop_typing(msg).await {
                tracing::debug!(error = %e, "stopTyping failed");
            }
        }
    }
}
