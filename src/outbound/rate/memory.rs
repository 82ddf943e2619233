//! The memory twin of the Redis buckets, for the single-process mode and tests: the same
//! arithmetic as the Lua scripts, behind one lock per map. It never fails.

use super::{Bucket, Limits, RateBackend, RateError, Slot, Take, REACH_WINDOW_MS};
use crate::clock::SweepSchedule;
use crate::keys::Keys;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The memory twin's reach sets: key → customer → last time reached (ms).
type ReachSets = HashMap<String, HashMap<String, i64>>;

/// The in-memory backend of [`super::RateLimiter`] (one process).
#[derive(Clone)]
pub struct MemoryRates {
    keys: Keys,
    /// bucket key → theoretical arrival time (µs), and when to sweep idle buckets.
    tats: Arc<Mutex<(HashMap<String, u64>, SweepSchedule)>>,
    /// reach key → customer → last time reached.
    reach: Arc<Mutex<ReachSets>>,
    /// reach key → the limit Meta announced.
    announced: Arc<Mutex<HashMap<String, u32>>>,
}

impl MemoryRates {
    pub fn new(keys: Keys) -> MemoryRates {
        MemoryRates {
            keys,
            tats: Arc::default(),
            reach: Arc::default(),
            announced: Arc::default(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

impl RateBackend for MemoryRates {
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
        let mut guard = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        let (tats, sweep) = &mut *guard;
        if sweep.due(tats.len(), 4096) {
            // Idle buckets are full buckets: forget them (Redis expires them).
            tats.retain(|_, tat| *tat + 1_000_000 > slot.now_us);
            sweep.swept(tats.len());
        }
        let (reserved, wait_us, gated) = gcra(
            tats,
            &buckets,
            slot.now_us,
            slot.earliest_us,
            slot.max_wait_us,
        );
        Ok((Take::of(reserved, wait_us), gated))
    }

    async fn reach(
        &self,
        channel: &str,
        limits: &Limits,
        customer: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, RateError> {
        let key = self.keys.reach(channel, limits.reach_portfolio.as_deref());
        let limit = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(limits.reach_per_day) as usize;
        if limit == 0 {
            return Ok(None);
        }
        let mut reach = self.reach.lock().unwrap_or_else(|e| e.into_inner());
        let set = reach.entry(key).or_default();
        set.retain(|_, at| *at > now_ms - REACH_WINDOW_MS);
        if set.contains_key(customer) || set.len() < limit {
            set.insert(customer.to_string(), now_ms);
            return Ok(None);
        }
        let oldest = set.values().min().copied().unwrap_or(now_ms);
        Ok(Some(oldest + REACH_WINDOW_MS + 1))
    }

    async fn announce_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
        limit: u32,
    ) -> Result<(), RateError> {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.keys.reach(channel, portfolio), limit);
        Ok(())
    }

    async fn announced_limit(
        &self,
        channel: &str,
        portfolio: Option<&str>,
    ) -> Result<Option<u32>, RateError> {
        Ok(self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.keys.reach(channel, portfolio))
            .copied())
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
