//! Where conversation states live: Redis for real deployments, memory for one process and for
//! bot authors' tests. Both behave the same, fencing included, and one test suite runs on both.
//!
//! Writes are **fenced**: a save names the partition lease the writer believes it holds, and
//! is refused (`SaveOutcome::Fenced`) unless the lease key still holds exactly that
//! `"<owner>:<token>"`. A worker that was paused or cut off and lost its lease therefore cannot
//! overwrite what the new owner wrote. Saves are also versioned: a save made from a copy older
//! than the stored state is refused (`SaveOutcome::Conflict`).

use super::state::ConversationState;
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use redis::Script;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SAVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/conv_save.lua")));
static NOTE_OUTBOUND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/conv_note_outbound.lua")));

/// The state with the last outbound time noted beside it (`lo`) merged in.
fn with_outbound(mut state: ConversationState, noted: Option<i64>) -> ConversationState {
    if let Some(at) = noted {
        state.last_outbound_ms = Some(state.last_outbound_ms.map_or(at, |t| t.max(at)));
    }
    state
}

/// The partition lease a writer holds. The queue's lease converts into this.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    pub channel: String,
    pub partition: u32,
    pub owner: String,
    pub token: u64,
}

impl Fence {
    /// The value the lease key holds while this fence is valid: `"<owner>:<token>"`.
    pub fn lease_value(&self) -> String {
        format!("{}:{}", self.owner, self.token)
    }
}

/// Result of a save that reached the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Written; the stored state now has this version (keep it for the next save).
    Saved { version: u64 },
    /// The lease is no longer ours: nothing written. Stop handling this partition.
    Fenced,
    /// The stored state is newer than the copy we saved from: nothing written. Reload.
    Conflict { stored_version: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("conversation state at {key} is not valid JSON: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("conversation state does not serialize: {0}")]
    Encode(serde_json::Error),
    #[error("fence is for channel {fence:?} but the save is for channel {channel:?}")]
    WrongChannel { fence: String, channel: String },
    #[error("unexpected reply from the save script: {0:?}")]
    UnexpectedReply(Vec<i64>),
}

/// The store, Redis or memory. An enum rather than a trait object: two backends, known here.
#[derive(Clone)]
pub enum ConversationStore {
    Redis(RedisConversationStore),
    Memory(MemoryConversationStore),
}

impl ConversationStore {
    /// The stored state, or `None` for a conversation never saved (or expired).
    pub async fn load(
        &self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, StoreError> {
        match self {
            ConversationStore::Redis(s) => s.load(channel, contact).await,
            ConversationStore::Memory(s) => s.load(channel, contact),
        }
    }

    /// Writes `state` if `fence` still holds the partition lease and `state.version` is the
    /// stored version; refreshes the TTL.
    pub async fn save(
        &self,
        fence: &Fence,
        channel: &str,
        contact: &str,
        state: &ConversationState,
    ) -> Result<SaveOutcome, StoreError> {
        match self {
            ConversationStore::Redis(s) => s.save(fence, channel, contact, state).await,
            ConversationStore::Memory(s) => s.save(fence, channel, contact, state),
        }
    }

    /// Notes a message the business sent outside any handled event (the send API): the
    /// conversation's last outbound time moves to `at_ms` if that is later. Kept beside the
    /// state (not in it), because only the partition's lease holder writes the state; `load`
    /// merges it. It never touches the window.
    pub async fn note_outbound(
        &self,
        channel: &str,
        contact: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        match self {
            ConversationStore::Redis(s) => s.note_outbound(channel, contact, at_ms).await,
            ConversationStore::Memory(s) => {
                s.note_outbound(channel, contact, at_ms);
                Ok(())
            }
        }
    }

    /// Tells the store a lease was granted. Redis reads the lease key itself; the in-memory
    /// twin learns leases this way (the in-memory queue and store live in one process).
    pub fn grant(&self, fence: &Fence) {
        if let ConversationStore::Memory(s) = self {
            s.leases().grant(fence);
        }
    }
}

impl From<RedisConversationStore> for ConversationStore {
    fn from(s: RedisConversationStore) -> Self {
        ConversationStore::Redis(s)
    }
}

impl From<MemoryConversationStore> for ConversationStore {
    fn from(s: MemoryConversationStore) -> Self {
        ConversationStore::Memory(s)
    }
}

fn check_channel(fence: &Fence, channel: &str) -> Result<(), StoreError> {
    if fence.channel == channel {
        Ok(())
    } else {
        Err(StoreError::WrongChannel {
            fence: fence.channel.clone(),
            channel: channel.to_owned(),
        })
    }
}

/// The JSON written for a save: the state with its version already bumped.
fn encode_next(state: &ConversationState) -> Result<String, StoreError> {
    let mut next = state.clone();
    next.version = state.version + 1;
    serde_json::to_string(&next).map_err(StoreError::Encode)
}

fn decode(key: &str, json: &str, version: u64) -> Result<ConversationState, StoreError> {
    let mut state: ConversationState =
        serde_json::from_str(json).map_err(|source| StoreError::Decode {
            key: key.to_owned(),
            source,
        })?;
    state.version = version;
    Ok(state)
}

// ---------------------------------------------------------------- redis

/// States in Redis: one hash per conversation (`v` = version, `s` = JSON), with a TTL.
#[derive(Clone)]
pub struct RedisConversationStore {
    con: RedisConn,
    keys: Keys,
    ttl_ms: u64,
}

impl RedisConversationStore {
    /// `ttl_secs` = `[worker] conversation_ttl_secs`: a state expires after that much inactivity.
    pub fn new(con: impl Into<RedisConn>, keys: Keys, ttl_secs: u64) -> Self {
        RedisConversationStore {
            con: con.into(),
            keys,
            ttl_ms: ttl_secs.saturating_mul(1000),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The TTL of a saved state, in ms (0 = none).
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    pub async fn load(
        &self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, StoreError> {
        let key = self.keys.conversation(channel, contact);
        let mut con = self.con.clone();
        let (json, version, outbound): (Option<String>, Option<u64>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg("s")
                .arg("v")
                .arg("lo")
                .query_async(&mut con)
                .await?;
        match json {
            None => Ok(None),
            Some(json) => decode(&key, &json, version.unwrap_or(0))
                .map(|state| Some(with_outbound(state, outbound))),
        }
    }

    pub async fn note_outbound(
        &self,
        channel: &str,
        contact: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: i64 = NOTE_OUTBOUND
            .key(self.keys.conversation(channel, contact))
            .arg(at_ms)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    pub async fn save(
        &self,
        fence: &Fence,
        channel: &str,
        contact: &str,
        state: &ConversationState,
    ) -> Result<SaveOutcome, StoreError> {
        check_channel(fence, channel)?;
        let json = encode_next(state)?;
        let mut con = self.con.clone();
        let reply: Vec<i64> = SAVE
            .key(self.keys.lease(&fence.channel, fence.partition))
            .key(self.keys.conversation(channel, contact))
            .arg(fence.lease_value())
            .arg(state.version)
            .arg(json)
            .arg(self.ttl_ms)
            .invoke_async(&mut con)
            .await?;
        match reply.as_slice() {
            [1, v] => Ok(SaveOutcome::Saved { version: *v as u64 }),
            [0, _] => Ok(SaveOutcome::Fenced),
            [2, v] => Ok(SaveOutcome::Conflict {
                stored_version: *v as u64,
            }),
            _ => Err(StoreError::UnexpectedReply(reply)),
        }
    }
}

// ---------------------------------------------------------------- memory

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

    /// Grants the lease on a partition to `fence` (replacing any holder). A no-op on the
    /// queue's table: the queue granted it already.
    pub fn grant(&self, fence: &Fence) {
        self.set(&fence.channel, fence.partition, &fence.owner, fence.token);
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

    pub fn holds(&self, fence: &Fence) -> bool {
        self.get(&fence.channel, fence.partition)
            .is_some_and(|v| v == fence.lease_value())
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
    /// Last outbound times noted beside the states (the `lo` field in Redis).
    outbound: HashMap<(String, String), i64>,
    saves: u64,
}

/// Expired states are swept once per this many saves (and dropped on load), so a save is not
/// a scan of every conversation.
const SWEEP_EVERY: u64 = 1024;

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

    pub fn load(
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
                Ok(None)
            }
            None => Ok(None),
        }
    }

    pub fn save(
        &self,
        fence: &Fence,
        channel: &str,
        contact: &str,
        state: &ConversationState,
    ) -> Result<SaveOutcome, StoreError> {
        self.save_with(fence, channel, contact, Some(state), state.version, || {})
    }

    /// The memory twin of the worker's commit: checks the fence and (when `state` is given)
    /// the version, writes the state, then runs `and_then` (timers, replies) — all under the
    /// states lock, so no other writer sees half of it. `state: None` leaves the state as it
    /// is at `version`.
    pub(crate) fn save_with(
        &self,
        fence: &Fence,
        channel: &str,
        contact: &str,
        state: Option<&ConversationState>,
        version: u64,
        and_then: impl FnOnce(),
    ) -> Result<SaveOutcome, StoreError> {
        check_channel(fence, channel)?;
        let json = state.map(encode_next).transpose()?;
        // Lease check and write under the states lock, as the Lua script is atomic in Redis.
        let mut states = self.lock();
        if !self.leases.holds(fence) {
            return Ok(SaveOutcome::Fenced);
        }
        let Some(json) = json else {
            and_then();
            return Ok(SaveOutcome::Saved { version });
        };
        let state_version = version;
        let now = Instant::now();
        states.saves += 1;
        if states.saves % SWEEP_EVERY == 0 {
            states.map.retain(|_, e| e.live(now));
        }
        let key = (channel.to_owned(), contact.to_owned());
        let stored = states
            .map
            .get(&key)
            .filter(|e| e.live(now))
            .map_or(0, |e| e.version);
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

    pub fn note_outbound(&self, channel: &str, contact: &str, at_ms: i64) {
        let mut states = self.lock();
        if states.outbound.len() > 100_000 {
            let live: std::collections::HashSet<(String, String)> =
                states.map.keys().cloned().collect();
            states.outbound.retain(|k, _| live.contains(k));
        }
        let key = (channel.to_owned(), contact.to_owned());
        if states.map.contains_key(&key) {
            let noted = states.outbound.entry(key).or_insert(at_ms);
            *noted = (*noted).max(at_ms);
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryStates> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}
