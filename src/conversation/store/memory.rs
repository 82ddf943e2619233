//! Conversation states in memory (one process, bot authors' tests), with the same TTL,
//! versioning and fencing rules as Redis.

use super::{
    check_channel, decode, encode_next, with_outbound, ConversationBackend, SaveOutcome, StoreError,
};
use crate::conversation::state::ConversationState;
use crate::queue::Lease;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Partition leases for the memory store: `(channel, partition) → "<owner>:<token>"`, read from
/// the embedded queue's lease table ([`MemoryLeases::of_queue`]) or from a table of its own
/// that a test grants into, so the memory store fences exactly like the Redis one.
#[derive(Clone)]
pub struct MemoryLeases {
    source: LeaseSource,
}

#[derive(Clone)]
enum LeaseSource {
    /// A table of its own, set by [`MemoryLeases::grant`] (tests, tools).
    Table(Arc<Mutex<HashMap<(String, u32), String>>>),
    /// The embedded queue's own lease table, with its expiry and releases: in `run` a task
    /// whose lease expired or was released cannot save, as in Redis.
    Queue(crate::queue::MemoryQueue),
}

impl std::fmt::Debug for MemoryLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.source {
            LeaseSource::Table(_) => "MemoryLeases(table)",
            LeaseSource::Queue(_) => "MemoryLeases(queue)",
        })
    }
}

impl Default for MemoryLeases {
    fn default() -> Self {
        MemoryLeases {
            source: LeaseSource::Table(Default::default()),
        }
    }
}

impl MemoryLeases {
    pub fn new() -> Self {
        Self::default()
    }

    /// The leases the embedded queue grants (acquire, renew, expire, release).
    pub fn of_queue(queue: crate::queue::MemoryQueue) -> Self {
        MemoryLeases {
            source: LeaseSource::Queue(queue),
        }
    }

    /// Grants `lease` on its partition (replacing any holder). A no-op on the queue's
    /// table: the queue granted it already.
    pub fn grant(&self, lease: &Lease) {
        self.set(&lease.channel, lease.partition, &lease.owner, lease.token);
    }

    pub fn set(&self, channel: &str, partition: u32, owner: &str, token: u64) {
        if let LeaseSource::Table(t) = &self.source {
            lock(t).insert((channel.to_owned(), partition), format!("{owner}:{token}"));
        }
    }

    pub fn clear(&self, channel: &str, partition: u32) {
        if let LeaseSource::Table(t) = &self.source {
            lock(t).remove(&(channel.to_owned(), partition));
        }
    }

    /// The lease value of a partition, as the Redis lease key would hold it (`None` once it
    /// expired or was released).
    pub fn get(&self, channel: &str, partition: u32) -> Option<String> {
        match &self.source {
            LeaseSource::Table(t) => lock(t).get(&(channel.to_owned(), partition)).cloned(),
            LeaseSource::Queue(q) => q.lease_holder(channel, partition),
        }
    }

    pub fn holds(&self, lease: &Lease) -> bool {
        self.get(&lease.channel, lease.partition)
            .is_some_and(|v| v == lease.value())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Entry {
    version: u64,
    json: String,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }
}

#[derive(Default)]
struct MemoryStates {
    map: HashMap<(String, String), Entry>,
    /// Last outbound times noted beside the states (the `lo` field in Redis); only for keys
    /// in `map`, and swept with it.
    outbound: HashMap<(String, String), i64>,
    /// Expired states are swept once the map has doubled since the last sweep (and dropped on
    /// load), so a save costs O(1) amortized, never a scan of every conversation.
    sweep: crate::clock::SweepSchedule,
}

impl MemoryStates {
    /// Drops expired states, and the outbound times noted beside them, when a sweep is due.
    fn sweep_if_due(&mut self, now: Instant) {
        if !self.sweep.due(self.map.len(), 1024) {
            return;
        }
        let MemoryStates { map, outbound, .. } = self;
        map.retain(|_, e| e.live(now));
        outbound.retain(|k, _| map.contains_key(k));
        self.sweep.swept(self.map.len());
    }
}

/// States in memory, stored as JSON (so bot state round-trips as it would through Redis),
/// with the same TTL, versioning and fencing rules.
#[derive(Clone)]
pub struct MemoryConversationStore {
    states: Arc<Mutex<MemoryStates>>,
    leases: MemoryLeases,
    ttl: Option<Duration>,
}

impl MemoryConversationStore {
    /// `ttl` of `Duration::ZERO` = never expire. Leases come from `leases`.
    pub fn new(leases: MemoryLeases, ttl: Duration) -> Self {
        MemoryConversationStore {
            states: Arc::default(),
            leases,
            ttl: (!ttl.is_zero()).then_some(ttl),
        }
    }

    pub fn leases(&self) -> &MemoryLeases {
        &self.leases
    }

    /// The memory twin of the worker's commit: checks the lease and (when `state` is given)
    /// the version, writes the state, then runs `and_then` (timers, replies) — all under the
    /// states lock, so no other writer sees half of it. `state: None` leaves the state as it
    /// is at `version`.
    pub(crate) fn save_with(
        &self,
        lease: &Lease,
        channel: &str,
        contact: &str,
        state: Option<&ConversationState>,
        version: u64,
        and_then: impl FnOnce(),
    ) -> Result<SaveOutcome, StoreError> {
        check_channel(lease, channel)?;
        let json = state.map(encode_next).transpose()?;
        // Lease check and write under the states lock, as the Lua script is atomic in Redis.
        let mut states = self.lock();
        if !self.leases.holds(lease) {
            return Ok(SaveOutcome::Fenced);
        }
        let Some(json) = json else {
            and_then();
            return Ok(SaveOutcome::Saved { version });
        };
        let state_version = version;
        let now = Instant::now();
        states.sweep_if_due(now);
        let key = (channel.to_owned(), contact.to_owned());
        if states.map.get(&key).is_some_and(|e| !e.live(now)) {
            // Expired, not yet swept: it starts over without the old outbound time, as a
            // Redis hash that expired takes its `lo` field with it.
            states.map.remove(&key);
            states.outbound.remove(&key);
        }
        let stored = states.map.get(&key).map_or(0, |e| e.version);
        if stored != state_version {
            return Ok(SaveOutcome::Conflict {
                stored_version: stored,
            });
        }
        let version = stored + 1;
        states.map.insert(
            key,
            Entry {
                version,
                json,
                expires_at: self.ttl.map(|t| now + t),
            },
        );
        and_then();
        Ok(SaveOutcome::Saved { version })
    }

    fn lock(&self) -> MutexGuard<'_, MemoryStates> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConversationBackend for MemoryConversationStore {
    async fn load(
        &self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, StoreError> {
        let key = (channel.to_owned(), contact.to_owned());
        let mut states = self.lock();
        match states.map.get(&key) {
            Some(e) if e.live(Instant::now()) => {
                decode(&format!("{channel}/{contact}"), &e.json, e.version)
                    .map(|s| Some(with_outbound(s, states.outbound.get(&key).copied())))
            }
            Some(_) => {
                states.map.remove(&key);
                states.outbound.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn save(
        &self,
        lease: &Lease,
        channel: &str,
        contact: &str,
        state: &ConversationState,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_with(lease, channel, contact, Some(state), state.version, || {})
    }

    async fn note_outbound(
        &self,
        channel: &str,
        contact: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut states = self.lock();
        let key = (channel.to_owned(), contact.to_owned());
        if states.map.contains_key(&key) {
            let noted = states.outbound.entry(key).or_insert(at_ms);
            *noted = (*noted).max(at_ms);
        }
        Ok(())
    }
}
