//! Crash points for tests: `COEXIST_FAILPOINTS=worker.after_commit` (a comma-separated list of
//! names, each optionally `name:N` to crash at the N-th hit) makes the process abort at that
//! point, as a `kill -9` there would: no destructor, no lease release, no flush. Tests use it to
//! stop a worker between two writes that must both happen and check what the next owner sees.
//! Unset (always, in production) it costs one relaxed load per hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The crash points, in the order a handled event and its replies reach them.
pub const NAMES: [&str; 4] = [
    // The bot has run; nothing of the event is written yet.
    "worker.before_commit",
    // State, timers and replies are committed; the entry is not acked yet.
    "worker.after_commit",
    // The provider accepted a message; its result is not recorded yet.
    "sender.after_send",
    // A message was given up and its `outbound.failed` event queued; it is not settled yet.
    "sender.before_settle_failed",
];

struct Armed {
    /// name → (crash at this hit, hits so far)
    points: HashMap<String, (u64, AtomicU64)>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("COEXIST_FAILPOINTS").ok()?;
            let points: HashMap<String, (u64, AtomicU64)> = spec
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.split_once(':') {
                    Some((name, n)) => (
                        name.to_string(),
                        (n.parse().unwrap_or(1).max(1), AtomicU64::new(0)),
                    ),
                    None => (s.to_string(), (1, AtomicU64::new(0))),
                })
                .collect();
            (!points.is_empty()).then_some(Armed { points })
        })
        .as_ref()
}

/// Aborts the process if `name` is armed and this is the hit it waits for.
pub fn hit(name: &'static str) {
    let Some(armed) = armed() else {
        return;
    };
    if let Some((at, hits)) = armed.points.get(name) {
        if hits.fetch_add(1, Ordering::Relaxed) + 1 == *at {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}
