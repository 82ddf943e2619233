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
    fn fnv_matches_the_reference_values() {
        assert_eq!(Fnv64::default().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv64::default().write(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(
            Fnv64::default().write(b"fo").write(b"obar").finish(),
            0x85944171f73967e8
        );
    }
}
