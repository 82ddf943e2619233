//! Send limits shared by every worker process: a token bucket per channel, a per-contact pair
//! limit, and for Personal channels a per-minute cap plus random jitter.
//!
//! Every limit is a GCRA bucket (see `lua/rate_take.lua`): `burst` sends at once, then one per
//! `interval`. One call reserves a slot in all the limits that apply, at one common time, or in
//! none of them. Per-contact limits are gates (they must fit now, else the caller asks again
//! later; the outbound sender then sets that customer's lane aside until the gap ends, so a
//! chat waiting for its gap never holds up other chats); channel limits are queues
//! (a slot may be booked ahead, so waiters in many processes line up). Time is passed in
//! (`now_ms`), so the behaviour suite runs on a synthetic clock.
//!
//! The contract is the [`RateBackend`] trait (docs there), one file per backend: [`RedisRates`]
//! shares the buckets across processes, [`MemoryRates`] runs the same arithmetic for the
//! single-process mode and tests. [`RateLimiter`] is an enum over the two, dispatched by
//! `enum_dispatch` (as the inbound queue is).
//!
//! Chosen limits:
//! - channel: `send_rate_per_second` per second, burst of the same size (Meta: 80 mps, 20 on
//!   coexistence numbers; counts every API call, read receipts included).
//! - pair, WABA: Meta allows 1 message per 6 s per contact with bursts of up to 45 that borrow
//!   from future quota (a burst of 20 then costs a 2 min wait) and answers 131056 beyond it. We
//!   refill one per `pair_gap_ms` (default 6 s) with a burst of [`WABA_PAIR_BURST`]: a multi-part
//!   answer goes out at once, while staying far from Meta's ceiling even when the Business app
//!   also sends on a coexistence number.
//! - pair, Personal: a strict per-chat minimum gap of `pair_gap_ms` (burst 1).
//! - cap, Personal: `max_per_minute` spread evenly (burst 1, one send every 60/N s), which
//!   anti-ban guidance prefers to bursts, and never more than N in any minute.
//! - jitter, Personal: a random extra 0..=`jitter_ms` before each message, shown as "typing…".
//!   It moves the reserved time itself, so per-chat gaps hold on arrival times.
//!
//! Read receipts (`mark_read`) take only the channel bucket: they are not messages.

pub mod memory;
pub mod redis;

pub use self::memory::MemoryRates;
pub use self::redis::RedisRates;

use crate::channel::ChannelKind;
use crate::config::ChannelConfig;
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use enum_dispatch::enum_dispatch;

/// Burst of the WABA pair bucket (see the module doc).
pub const WABA_PAIR_BURST: u32 = 10;

/// The moving window of Meta's messaging limit.
pub const REACH_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// `burst` sends at once, then one per `interval_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub interval_us: u64,
    pub burst: u32,
}

impl Bucket {
    /// `rate` per second with a burst of `rate`; `None` for 0 (unlimited).
    pub fn per_second(rate: u32) -> Option<Bucket> {
        (rate > 0).then(|| Bucket {
            interval_us: 1_000_000u64.div_ceil(u64::from(rate)),
            burst: rate,
        })
    }

    /// One per `gap_ms`, bursts of `burst`; `None` for a zero gap.
    pub fn gap(gap_ms: u64, burst: u32) -> Option<Bucket> {
        (gap_ms > 0).then(|| Bucket {
            interval_us: gap_ms.saturating_mul(1000),
            burst: burst.max(1),
        })
    }

    /// `n` per minute, evenly spread; `None` for 0 (no cap).
    pub fn per_minute(n: u32) -> Option<Bucket> {
        (n > 0).then(|| Bucket {
            interval_us: 60_000_000u64.div_ceil(u64::from(n)),
            burst: 1,
        })
    }
}

/// The limits of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub channel: Option<Bucket>,
    pub pair: Option<Bucket>,
    pub per_minute: Option<Bucket>,
    /// Random extra delay before each message, up to this many ms (0: none).
    pub jitter_ms: u64,
    /// Meta's messaging limit: unique customers reached outside a window per 24 h (0: none).
    pub reach_per_day: u32,
    /// Whose count it is: the channel's own, or its business portfolio's.
    pub reach_portfolio: Option<String>,
}

impl Limits {
    /// The limits a channel's config asks for (see the module doc for the choices).
    pub fn for_channel(c: &ChannelConfig) -> Limits {
        match c.kind {
            ChannelKind::Waba => Limits {
                channel: Bucket::per_second(c.send_rate_per_second),
                pair: Bucket::gap(c.pair_gap_ms, WABA_PAIR_BURST),
                per_minute: None,
                jitter_ms: c.jitter_ms,
                reach_per_day: c.messaging_limit_per_day,
                reach_portfolio: c.portfolio.clone(),
            },
            ChannelKind::Personal => Limits {
                channel: Bucket::per_second(c.send_rate_per_second),
                pair: Bucket::gap(c.pair_gap_ms, 1),
                per_minute: Bucket::per_minute(c.max_per_minute),
                jitter_ms: c.jitter_ms,
                reach_per_day: 0,
                reach_portfolio: None,
            },
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Limits {
        Limits {
            channel: None,
            pair: None,
            per_minute: None,
            jitter_ms: 0,
            reach_per_day: 0,
            reach_portfolio: None,
        }
    }

    /// The buckets that apply to one send, with their keys. `contact`: `Some` for a message to
    /// that contact, `None` for a read receipt.
    /// `(key, bucket, is_gate)` for every bucket that applies.
    fn buckets(
        &self,
        keys: &Keys,
        channel: &str,
        contact: Option<&str>,
    ) -> Vec<(String, Bucket, bool)> {
        let mut out = Vec::with_capacity(3);
        if let Some(b) = self.channel {
            out.push((keys.send_rate(channel), b, false));
        }
        if let Some(contact) = contact {
            if let Some(b) = self.pair {
                out.push((keys.pair_rate(channel, contact), b, true));
            }
            if let Some(b) = self.per_minute {
                out.push((keys.send_cap(channel), b, false));
            }
        }
        out
    }
}

/// The result of asking for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Reserved: send after waiting `wait_ms` (0: now).
    Ready { wait_ms: u64 },
    /// Nothing reserved: ask again in `wait_ms` (a per-contact gap is still running, or the
    /// slot is further away than the caller accepts).
    NotYet { wait_ms: u64 },
}

impl Take {
    /// A backend's answer in microseconds: reserved or not, the wait rounded up to ms.
    fn of(reserved: bool, wait_us: u64) -> Take {
        let wait_ms = wait_us.div_ceil(1000);
        if reserved {
            Take::Ready { wait_ms }
        } else {
            Take::NotYet { wait_ms }
        }
    }
}

/// One reservation's times, in microseconds.
#[derive(Clone, Copy, Debug)]
struct Slot {
    now_us: u64,
    /// `now` plus the pacing jitter: no slot before it.
    earliest_us: u64,
    /// Longest acceptable wait from now.
    max_wait_us: u64,
}

impl Slot {
    fn new(now_ms: i64, jitter_ms: u64, max_wait_ms: u64) -> Slot {
        let now_us = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
        Slot {
            now_us,
            earliest_us: now_us.saturating_add(jitter_ms.saturating_mul(1000)),
            max_wait_us: max_wait_ms.saturating_mul(1000),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("rate limiter: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("rate limiter: unexpected reply {0:?}")]
    UnexpectedReply(Vec<i64>),
}

/// What a rate limiter does, on either backend: one behaviour suite (`rate_suite` and
/// `reach_suite` in `tests/outbound.rs`) runs on both. Native `async fn`: every caller holds a
/// concrete [`RateLimiter`], so the futures stay `Send` where the backend's are.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait RateBackend {
    /// Reserves a slot for one send at or after `now_ms + jitter_ms` in every bucket that
    /// applies, unless that slot is more than `max_wait_ms` away.
    async fn take(
        &self,
        channel: &str,
        contact: Option<&str>,
        limits: &Limits,
        now_ms: i64,
        jitter_ms: u64,
        max_wait_ms: u64,
    ) -> Result<Take, RateError> {
        self.reserve(channel, contact, limits, now_ms, jitter_ms, max_wait_ms)
            .await
            .map(|(take, _)| take)
    }

    /// [`RateBackend::take`], also saying whether a per-contact gate (pair gap, per-chat gap)
    /// is what refused the slot (`true`) rather than the channel's own rate.
    async fn reserve(
        &self,
        channel: &str,
        contact: Option<&str>,
        limits: &Limits,
        now_ms: i64,
        jitter_ms: u64,
        max_wait_ms: u64,
    ) -> Result<(Take, bool), RateError>;

    /// Meta's messaging limit for one business-initiated message to `customer` outside a
    /// service window: `None` when it may go (the customer is counted), else the time (ms)
    /// when a new customer fits again. The limit is the one Meta last announced
    /// ([`RateBackend::announce_limit`]), else `messaging_limit_per_day`; 0 means none.
    async fn reach(
        &self,
        channel: &str,
        limits: &Limits,
        customer: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, RateError>;

    /// Meta announced a new messaging limit (`phone_number_quality_update`): it replaces
    /// `messaging_limit_per_day` for the channel (or its portfolio) until the next one; 0 lifts it.
    async fn announce_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
        limit: u32,
    ) -> Result<(), RateError>;

    /// The limit Meta last announced for the channel (or its portfolio), if any.
    async fn announced_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
    ) -> Result<Option<u32>, RateError>;
}

/// Shared (Redis) or single-process (memory) buckets, with the same semantics; every
/// [`RateBackend`] method dispatches to the backend (`enum_dispatch`).
#[enum_dispatch(RateBackend)]
#[derive(Clone)]
pub enum RateLimiter {
    Redis(RedisRates),
    Memory(MemoryRates),
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimiter::Redis(r) => write!(f, "RateLimiter::Redis({})", r.keys().prefix()),
            RateLimiter::Memory(m) => write!(f, "RateLimiter::Memory({})", m.keys().prefix()),
        }
    }
}

impl RateLimiter {
    pub fn redis(con: impl Into<RedisConn>, keys: Keys) -> RateLimiter {
        RedisRates::new(con, keys).into()
    }

    pub fn memory(keys: Keys) -> RateLimiter {
        MemoryRates::new(keys).into()
    }
}

/// The messaging limit a `phone_number_quality_update` value announces:
/// `max_daily_conversations_per_business` or `current_limit` as `TIER_250`, `TIER_1K`, `TIER_2K`,
/// `TIER_10K`, `TIER_100K` (customers per 24 h) or `TIER_UNLIMITED` (0 = no limit).
pub fn announced_tier(value: &serde_json::Value) -> Option<u32> {
    let tier = ["current_limit", "max_daily_conversations_per_business"]
        .iter()
        .find_map(|k| value.get(*k).and_then(serde_json::Value::as_str))?;
    let t = tier.trim().to_ascii_uppercase();
    let t = t.strip_prefix("TIER_").unwrap_or(&t);
    if t == "UNLIMITED" {
        return Some(0);
    }
    let (digits, mult) = match t.strip_suffix('K') {
        Some(d) => (d, 1000),
        None => (t, 1),
    };
    digits.parse::<u32>().ok().map(|n| n.saturating_mul(mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_tiers() {
        use serde_json::json;
        let cases = [
            (
                json!({"max_daily_conversations_per_business": "TIER_10K"}),
                Some(10_000),
            ),
            (
                json!({"current_limit": "TIER_2K", "max_daily_conversations_per_business": "TIER_1K"}),
                Some(2_000),
            ),
            (json!({"current_limit": "TIER_250"}), Some(250)),
            (json!({"current_limit": "TIER_100K"}), Some(100_000)),
            (json!({"current_limit": "TIER_UNLIMITED"}), Some(0)),
            (json!({"event": "FLAGGED"}), None),
            (json!({"current_limit": "TIER_SOMETHING"}), None),
        ];
        for (v, want) in cases {
            assert_eq!(announced_tier(&v), want, "{v}");
        }
    }

    #[test]
    fn buckets_from_config_numbers() {
        assert_eq!(
            Bucket::per_second(80),
            Some(Bucket {
                interval_us: 12_500,
                burst: 80
            })
        );
        assert_eq!(Bucket::per_second(0), None);
        assert_eq!(
            Bucket::per_minute(30),
            Some(Bucket {
                interval_us: 2_000_000,
                burst: 1
            })
        );
        assert_eq!(Bucket::gap(0, 5), None);
    }
}
