//! Buckets in Redis, shared by every worker process: one Lua script reserves a slot in all the
//! buckets of a send (`lua/rate_take.lua`), another counts Meta's messaging limit
//! (`lua/reach_take.lua`). Every key goes through `KEYS`.

use super::{Limits, RateBackend, RateError, Slot, Take, REACH_WINDOW_MS};
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use std::sync::LazyLock;

static RATE_TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/rate_take.lua")));
static REACH_TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/reach_take.lua")));

/// The Redis backend of [`super::RateLimiter`].
#[derive(Clone)]
pub struct RedisRates {
    con: RedisConn,
    keys: Keys,
}

impl RedisRates {
    pub fn new(con: impl Into<RedisConn>, keys: Keys) -> RedisRates {
        RedisRates {
            con: con.into(),
            keys,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl RateBackend for RedisRates {
    async fn reserve(
        &self,
        channel: &str,
        contact: Option<&str>,
        limits: &Limits,
        now_ms: i64,
        jitter_ms: u64,
        max_wait_ms: u64,
    ) -> Result<(Take, bool), RateError> {
        let slot = Slot::new(now_ms, jitter_ms, max_wait_ms);
        let buckets = limits.buckets(&self.keys, channel, contact);
        if buckets.is_empty() {
            let wait_us = slot.earliest_us - slot.now_us;
            return Ok((Take::of(wait_us <= slot.max_wait_us, wait_us), false));
        }
        let mut inv = RATE_TAKE.prepare_invoke();
        for (key, _, _) in &buckets {
            inv.key(key);
        }
        inv.arg(slot.now_us)
            .arg(slot.earliest_us)
            .arg(slot.max_wait_us);
        for (_, b, gate) in &buckets {
            inv.arg(b.interval_us)
                .arg(b.burst)
                .arg(if *gate { 0 } else { 1 });
        }
        let mut con = self.con.clone();
        let reply: Vec<i64> = inv.invoke_async(&mut con).await?;
        match reply.as_slice() {
            [r, w, g] if *w >= 0 => Ok((Take::of(*r == 1, *w as u64), *g == 1)),
            _ => Err(RateError::UnexpectedReply(reply)),
        }
    }

    async fn reach(
        &self,
        channel: &str,
        limits: &Limits,
        customer: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, RateError> {
        let portfolio = limits.reach_portfolio.as_deref();
        let mut con = self.con.clone();
        let at: i64 = REACH_TAKE
            .key(self.keys.reach(channel, portfolio))
            .key(self.keys.reach_limit(channel, portfolio))
            .arg(now_ms)
            .arg(REACH_WINDOW_MS)
            .arg(limits.reach_per_day)
            .arg(customer)
            .invoke_async(&mut con)
            .await?;
        Ok((at > 0).then_some(at))
    }

    async fn announce_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
        limit: u32,
    ) -> Result<(), RateError> {
        let mut con = self.con.clone();
        redis::cmd("SET")
            .arg(self.keys.reach_limit(channel, portfolio))
            .arg(limit)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    async fn announced_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
    ) -> Result<Option<u32>, RateError> {
        let mut con = self.con.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.reach_limit(channel, portfolio))
            .query_async::<Option<u32>>(&mut con)
            .await?)
    }
}
