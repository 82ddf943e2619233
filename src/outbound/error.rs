//! Why a send failed, and whether (and when) trying again can help.
//!
//! Both senders map their HTTP answers onto [`SendError`], so the retry loop and the worker
//! decide on one type: retryable errors come back with a delay, the others are final.

use super::rules::RuleError;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Refused before sending (window closed, no templates, unsupported on the channel).
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Meta says the window is closed (131047, legacy 470): send a template instead.
    #[error("the 24 h customer service window is closed (Meta error {code}): {message}")]
    WindowClosed { code: i64, message: String },
    /// Throughput limit (130429, HTTP 429) or our own limiter would wait too long.
    #[error("rate limited{}", after(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// Meta's per-contact pair rate (131056): retry after 4^attempt s.
    #[error("pair rate limit reached for this contact (Meta error 131056)")]
    PairRateLimited,
    /// Not a WhatsApp user, terms not accepted, outdated app (131026): never retried blindly.
    #[error("message undeliverable to this recipient (Meta error 131026): {message}")]
    Undeliverable { message: String },
    /// 5xx, 131000/131016, network errors and timeouts.
    #[error("transient failure: {detail}")]
    Transient { detail: String },
    /// The credentials were refused (190, HTTP 401/403): the channel is marked unhealthy.
    #[error("credentials refused, channel marked unhealthy: {detail}")]
    Unauthorized { detail: String },
    /// Meta could not fetch or use the message's media: 131053 (upload of the linked file
    /// failed) and 131052 (download failed) are worth another try; 100 / 131009 about the
    /// media (a bad link, a wrong type) and 131051 are not.
    #[error("media failed (error {code}): {message}")]
    Media {
        code: i64,
        message: String,
        retryable: bool,
    },
    /// Any other refusal: the request must change, retrying the same one cannot help.
    #[error("rejected (error {code}): {message}")]
    Rejected { code: i64, message: String },
    /// A 2xx answer we cannot read (no message id): it may have been sent, so never resent.
    #[error("unexpected response from the send API: {detail}")]
    BadResponse { detail: String },
    /// Redis (outbox or rate limiter) failed before anything was sent.
    #[error("outbox store: {detail}")]
    Store { detail: String },
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    /// An earlier attempt gave this message up for good (`code`) before its sender stopped.
    #[error("given up earlier ({code})")]
    GivenUp { code: &'static str },
}

fn after(d: &Option<Duration>) -> String {
    d.map(|d| format!(", retry after {} ms", d.as_millis()))
        .unwrap_or_default()
}

/// Base delays of the retry schedule (configurable so tests run fast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Transient errors and rate limits without a hint: `base * 2^attempt`, capped at `max`.
    pub base: Duration,
    /// Pair rate (131056): `pair_base * 4^attempt` (Meta: 1, 4, 16 … s).
    pub pair_base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            pair_base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    pub fn delay(&self, error: &SendError, attempt: u32) -> Duration {
        let exp = |base: Duration, factor: u32| {
            crate::clock::backoff(base, factor, attempt, Duration::MAX)
        };
        match error {
            SendError::PairRateLimited => exp(self.pair_base, 4),
            SendError::RateLimited {
                retry_after: Some(d),
            } => *d,
            SendError::RateLimited { retry_after: None }
            | SendError::Transient { .. }
            | SendError::Store { .. }
            | SendError::Media {
                retryable: true, ..
            } => exp(self.base, 2).min(self.max),
            _ => Duration::ZERO,
        }
    }
}

impl SendError {
    /// Trying the same send again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SendError::RateLimited { .. }
                | SendError::PairRateLimited
                | SendError::Transient { .. }
                | SendError::Store { .. }
                | SendError::Media {
                    retryable: true,
                    ..
                }
        )
    }

    /// The conversation's window is closed (refused by our rules or by Meta): the worker
    /// records it (`window::mark_window_closed`) and the bot should send a template.
    pub fn closes_window(&self) -> bool {
        matches!(
            self,
            SendError::WindowClosed { .. } | SendError::Rule(RuleError::WindowClosed { .. })
        )
    }

    /// The `outcome` label of `coexist_messages_sent_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            SendError::Rule(_) => "refused",
            SendError::WindowClosed { .. } => "window_closed",
            SendError::RateLimited { .. } => "rate_limited",
            SendError::PairRateLimited => "pair_rate_limited",
            SendError::Undeliverable { .. } => "undeliverable",
            SendError::Transient { .. } => "transient",
            SendError::Unauthorized { .. } => "unauthorized",
            SendError::Rejected { .. } => "rejected",
            SendError::Media { .. } => "media_failed",
            SendError::BadResponse { .. } => "bad_response",
            SendError::Store { .. } => "store_error",
            SendError::UnknownChannel(_) => "unknown_channel",
            SendError::GivenUp { code } => code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule() {
        let pair = SendError::PairRateLimited;
        let secs: Vec<u64> = (0..3)
            .map(|a| Backoff::default().delay(&pair, a).as_secs())
            .collect();
        assert_eq!(secs, [1, 4, 16]);
        let t = SendError::Transient { detail: "x".into() };
        assert_eq!(Backoff::default().delay(&t, 0), Duration::from_millis(500));
        assert_eq!(Backoff::default().delay(&t, 2), Duration::from_secs(2));
        assert_eq!(Backoff::default().delay(&t, 30), Duration::from_secs(60));
        let hinted = SendError::RateLimited {
            retry_after: Some(Duration::from_millis(1500)),
        };
        assert_eq!(
            Backoff::default().delay(&hinted, 5),
            Duration::from_millis(1500)
        );
        let final_ = SendError::Undeliverable {
            message: "x".into(),
        };
        assert!(!final_.is_retryable());
        assert_eq!(Backoff::default().delay(&final_, 0), Duration::ZERO);
    }

    #[test]
    fn retryable_classes() {
        let retryable = [
            SendError::RateLimited { retry_after: None },
            SendError::PairRateLimited,
            SendError::Transient { detail: "".into() },
            SendError::Store { detail: "".into() },
        ];
        assert!(retryable.iter().all(SendError::is_retryable));
        let final_ = [
            SendError::WindowClosed {
                code: 131047,
                message: "".into(),
            },
            SendError::Undeliverable { message: "".into() },
            SendError::Unauthorized { detail: "".into() },
            SendError::Rejected {
                code: 100,
                message: "".into(),
            },
            SendError::BadResponse { detail: "".into() },
            SendError::Rule(RuleError::WindowClosed { closed_at: None }),
        ];
        assert!(final_.iter().all(|e| !e.is_retryable()));
        assert!(final_[0].closes_window() && final_[5].closes_window());
    }
}
