//! Time and the small arithmetic every module shares: the wall clock in milliseconds (the one
//! Redis scores, markers and events are written in), exponential backoff, and a stable hash.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch: shared by every process (Redis scores, lease
/// and send markers, event times), so never a monotonic clock. 0 if the clock is before 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `base × factor^attempt`, capped at `max`, without overflow (attempt 0 is `base`).
pub fn backoff(base: Duration, factor: u32, attempt: u32, max: Duration) -> Duration {
    let mult = factor.checked_pow(attempt).unwrap_or(u32::MAX);
    base.saturating_mul(mult).min(max)
}

/// When to sweep expired entries out of a map that is otherwise only inserted into: once it
/// has doubled since the last sweep (and holds at least `min`), so an insert costs O(1)
/// amortized. (Sweeping on every insert past a fixed size is quadratic once the live entries
/// alone exceed that size: `run` slowed to a crawl after ~50,000 replies.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepSchedule {
    next_at: usize,
}

impl SweepSchedule {
    /// A map of `len` entries should be swept now.
    pub fn due(&self, len: usize, min: usize) -> bool {
        len >= self.next_at.max(min)
    }

    /// The map was swept down to `len` entries: next time when it has doubled.
    pub fn swept(&mut self, len: usize) {
        self.next_at = len.saturating_mul(2);
    }
}

/// Incremental 64-bit FNV-1a. Never Rust's `DefaultHasher`, which is randomized per process:
/// every process must send one conversation to the same partition.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let ms = Duration::from_millis;
        let d: Vec<u128> = (0..5)
            .map(|a| backoff(ms(100), 2, a, ms(1000)).as_millis())
            .collect();
        assert_eq!(d, [100, 200, 400, 800, 1000]);
        assert_eq!(
            backoff(ms(1), 4, 200, ms(60_000)),
            ms(60_000),
            "no overflow"
        );
    }

    #[test]
    fn sweeps_come_once_per_doubling() {
        let mut s = SweepSchedule::default();
        let mut sweeps = 0;
        // 1,000,000 inserts, none expiring: a sweep at 100, 200, 400 … — ~14, not 999,900.
        for len in 1..=1_000_000usize {
            if s.due(len, 100) {
                sweeps += 1;
                s.swept(len);
            }
        }
        assert_eq!(sweeps, 14);
        // After a sweep that freed most entries, the next one waits for the size to double.
        s.swept(10);
        assert!(!s.due(99, 100) && s.due(100, 100));
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(Fnv64::default().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv64::default().write(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(
            Fnv64::default().write(b"fo").write(b"obar").finish(),
            0x85944171f73967e8
        );
    }
}
