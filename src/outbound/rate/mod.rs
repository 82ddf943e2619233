//! Send limits shared by every worker process: a token bucket per channel, a per-contact pair
//! limit, and for Personal channels a per-minute cap plus random jitter.
//!
//! Every limit is a GCRA bucket (see `lua/rate_take.lua`): `burst` sends at once, then one per
//! `interval`. One call reserves a slot in all the limits that apply, at one common time, or in
//! none of them. Per-contact limits are gates (they must fit now, else the caller asks again
//! later; the outbound sender then sets that customer's lane aside until the gap ends, so a
//! chat waiting for its gap never holds up other chats); channel limits are queues
//! (a slot may be booked ahead, so waiters in many processes line up). The Redis backend shares the buckets across processes; the memory twin runs
//! the same arithmetic for the single-process mode and tests. Time is passed in (`now_ms`), so
//! the behaviour suite runs on a synthetic clock.
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

use crate::channel::ChannelKind;
use crate::config::ChannelConfig;
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Burst of the WABA pair bucket (see the module doc).
pub const WABA_PAIR_BURST: u32 = 10;

static RATE_TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../lua/rate_take.lua")));
static REACH_TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../lua/reach_take.lua")));

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

#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("rate limiter: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("rate limiter: unexpected reply {0:?}")]
    UnexpectedReply(Vec<i64>),
}

/// Shared (Redis) or single-process (memory) buckets, with the same semantics.
#[derive(Clone)]
pub enum RateLimiter {
    Redis {
        con: RedisConn,
        keys: Keys,
    },
    Memory {
        keys: Keys,
        tats: Arc<Mutex<(HashMap<String, u64>, crate::clock::SweepSchedule)>>,
        /// reach key → customer → last time reached.
        reach: Arc<Mutex<ReachSets>>,
        /// reach key → the limit Meta announced.
        announced: Arc<Mutex<HashMap<String, u32>>>,
    },
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

/// The memory twin's reach sets: key → customer → last time reached (ms).
type ReachSets = HashMap<String, HashMap<String, i64>>;

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimiter::Redis { keys, .. } => write!(f, "RateLimiter::Redis({})", keys.prefix()),
            RateLimiter::Memory { keys, .. } => write!(f, "RateLimiter::Memory({})", keys.prefix()),
        }
    }
}

impl RateLimiter {
    pub fn redis(con: impl Into<RedisConn>, keys: Keys) -> RateLimiter {
        RateLimiter::Redis {
            con: con.into(),
            keys,
        }
    }

    pub fn memory(keys: Keys) -> RateLimiter {
        RateLimiter::Memory {
            keys,
            tats: Arc::default(),
            reach: Arc::default(),
            announced: Arc::default(),
        }
    }

    /// Reserves a slot for one send at or after `now_ms + jitter_ms` in every bucket that
    /// applies, unless that slot is more than `max_wait_ms` away.
    pub async fn take(
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

    /// Meta's messaging limit for one business-initiated message to `customer` outside a
    /// service window: `None` when it may go (the customer is counted), else the time (ms)
    /// when a new customer fits again. The limit is the one Meta last announced
    /// ([`RateLimiter::announce_limit`]), else `messaging_limit_per_day`; 0 means none.
    pub async fn reach(
        &self,
        channel: &str,
        limits: &Limits,
        customer: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, RateError> {
        let portfolio = limits.reach_portfolio.as_deref();
        match self {
            RateLimiter::Redis { con, keys } => {
                let mut con = con.clone();
                let at: i64 = REACH_TAKE
                    .key(keys.reach(channel, portfolio))
                    .key(keys.reach_limit(channel, portfolio))
                    .arg(now_ms)
                    .arg(REACH_WINDOW_MS)
                    .arg(limits.reach_per_day)
                    .arg(customer)
                    .invoke_async(&mut con)
                    .await?;
                Ok((at > 0).then_some(at))
            }
            RateLimiter::Memory {
                keys,
                reach,
                announced,
                ..
            } => {
                let key = keys.reach(channel, portfolio);
                let limit = announced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .copied()
                    .unwrap_or(limits.reach_per_day) as usize;
                if limit == 0 {
                    return Ok(None);
                }
                let mut reach = reach.lock().unwrap_or_else(|e| e.into_inner());
                let set = reach.entry(key).or_default();
                set.retain(|_, at| *at > now_ms - REACH_WINDOW_MS);
                if set.contains_key(customer) || set.len() < limit {
                    set.insert(customer.to_string(), now_ms);
                    return Ok(None);
                }
                let oldest = set.values().min().copied().unwrap_or(now_ms);
                Ok(Some(oldest + REACH_WINDOW_MS + 1))
            }
        }
    }

    /// Meta announced a new messaging limit (`phone_number_quality_update`): it replaces
    /// `messaging_limit_per_day` for the channel (or its portfolio) until the next one; 0 lifts it.
    pub async fn announce_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
        limit: u32,
    ) -> Result<(), RateError> {
        match self {
            RateLimiter::Redis { con, keys } => {
                let mut con = con.clone();
                redis::cmd("SET")
                    .arg(keys.reach_limit(channel, portfolio))
                    .arg(limit)
                    .query_async::<()>(&mut con)
                    .await?;
            }
            RateLimiter::Memory {
                keys, announced, ..
            } => {
                announced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(keys.reach(channel, portfolio), limit);
            }
        }
        Ok(())
    }

    /// The limit Meta last announced for the channel (or its portfolio), if any.
    pub async fn announced_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
    ) -> Result<Option<u32>, RateError> {
        match self {
            RateLimiter::Redis { con, keys } => {
                let mut con = con.clone();
                Ok(redis::cmd("GET")
                    .arg(keys.reach_limit(channel, portfolio))
                    .query_async::<Option<u32>>(&mut con)
                    .await?)
            }
            RateLimiter::Memory {
                keys, announced, ..
            } => Ok(announced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&keys.reach(channel, portfolio))
                .copied()),
        }
    }

    /// [`RateLimiter::take`], also saying whether a per-contact gate (pair gap, per-chat gap)
    /// is what refused the slot (`true`) rather than the channel's own rate.
    pub async fn reserve(
        &self,
        channel: &str,
        contact: Option<&str>,
        limits: &Limits,
        now_ms: i64,
        jitter_ms: u64,
        max_wait_ms: u64,
    ) -> Result<(Take, bool), RateError> {
        let now_us = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000);
        let earliest_us = now_us.saturating_add(jitter_ms.saturating_mul(1000));
        let max_wait_us = max_wait_ms.saturating_mul(1000);
        let (reserved, wait_us, gated) = match self {
            RateLimiter::Redis { con, keys } => {
                let buckets = limits.buckets(keys, channel, contact);
                if buckets.is_empty() {
                    return Ok((ready_or_not(earliest_us - now_us, max_wait_us), false));
                }
                let mut inv = RATE_TAKE.prepare_invoke();
                for (key, _, _) in &buckets {
                    inv.key(key);
                }
                inv.arg(now_us).arg(earliest_us).arg(max_wait_us);
                for (_, b, gate) in &buckets {
                    inv.arg(b.interval_us)
                        .arg(b.burst)
                        .arg(if *gate { 0 } else { 1 });
                }
                let mut con = con.clone();
                let reply: Vec<i64> = inv.invoke_async(&mut con).await?;
                match reply.as_slice() {
                    [r, w, g] if *w >= 0 => (*r == 1, *w as u64, *g == 1),
                    _ => return Err(RateError::UnexpectedReply(reply)),
                }
            }
            RateLimiter::Memory { keys, tats, .. } => {
                let buckets = limits.buckets(keys, channel, contact);
                let mut guard = tats.lock().unwrap_or_else(|e| e.into_inner());
                let (tats, sweep) = &mut *guard;
                if sweep.due(tats.len(), 4096) {
                    // Idle buckets are full buckets: forget them (Redis expires them).
                    tats.retain(|_, tat| *tat + 1_000_000 > now_us);
                    sweep.swept(tats.len());
                }
                gcra(tats, &buckets, now_us, earliest_us, max_wait_us)
            }
        };
        let wait_ms = wait_us.div_ceil(1000);
        let take = if reserved {
            Take::Ready { wait_ms }
        } else {
            Take::NotYet { wait_ms }
        };
        Ok((take, gated))
    }
}

fn ready_or_not(wait_us: u64, max_wait_us: u64) -> Take {
    let wait_ms = wait_us.div_ceil(1000);
    if wait_us > max_wait_us {
        Take::NotYet { wait_ms }
    } else {
        Take::Ready { wait_ms }
    }
}

/// The memory twin of `rate_take.lua`, line for line: (reserved, wait, a gate refused).
fn gcra(
    tats: &mut HashMap<String, u64>,
    buckets: &[(String, Bucket, bool)],
    now: u64,
    earliest: u64,
    max_wait: u64,
) -> (bool, u64, bool) {
    let mut t = earliest;
    let mut gate_wait = 0;
    let mut current = Vec::with_capacity(buckets.len());
    for (key, b, gate) in buckets {
        let tat = tats.get(key).copied().unwrap_or(0).max(now);
        current.push(tat);
        let allowed_at =
            tat.saturating_sub(u64::from(b.burst.saturating_sub(1)).saturating_mul(b.interval_us));
        if *gate {
            if allowed_at > earliest {
                gate_wait = gate_wait.max(allowed_at - now);
            }
        } else {
            t = t.max(allowed_at);
        }
    }
    if gate_wait > 0 {
        return (false, gate_wait, true);
    }
    let wait = t - now;
    if wait > max_wait {
        return (false, wait, false);
    }
    for ((key, b, _), tat) in buckets.iter().zip(current) {
        tats.insert(key.clone(), tat.max(t) + b.interval_us);
    }
    (true, wait, false)
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

    #[test]
    fn memory_gcra_burst_then_interval() {
        let mut tats = HashMap::new();
        let b = vec![(
            "k".to_string(),
            Bucket {
                interval_us: 1000,
                burst: 3,
            },
            false,
        )];
        let waits: Vec<(bool, u64, bool)> =
            (0..5).map(|_| gcra(&mut tats, &b, 0, 0, 10_000)).collect();
        assert_eq!(
            waits,
            [
                (true, 0, false),
                (true, 0, false),
                (true, 0, false),
                (true, 1000, false),
                (true, 2000, false)
            ]
        );
        // Too far: nothing reserved.
        assert_eq!(gcra(&mut tats, &b, 0, 0, 1000), (false, 3000, false));
        assert_eq!(gcra(&mut tats, &b, 0, 0, 3000), (true, 3000, false));
        // A closed gate says so.
        let gate = vec![(
            "g".to_string(),
            Bucket {
                interval_us: 5000,
                burst: 1,
            },
            true,
        )];
        assert_eq!(gcra(&mut tats, &gate, 0, 0, 0), (true, 0, false));
        assert_eq!(gcra(&mut tats, &gate, 0, 0, 0), (false, 5000, true));
    }
}
