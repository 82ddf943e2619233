//! In-memory twin of the Redis queue: the same semantics (dedupe with TTL, aliases,
//! per-partition streams with `<ms>-<seq>` entry ids) for one process — `coexist run` without
//! `[redis]`, and bot unit tests without a server.
//!
//! One `std::sync::Mutex` guards the whole state; it is never held across an `.await`.

use super::{
    DeadLetter, Enqueued, Entry, Lease, NewEvent, PartitionStats, QueueBackend, QueueError,
};
use crate::routing::partition_of;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::config::defaults;

/// The in-memory queue. Cloning shares the state.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes blocked readers when entries are appended.
    appended: Notify,
    dedupe_ttl: Duration,
    stream_maxlen: u64,
}

/// A stream entry id, ordered like Redis's (`<ms>-<seq>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct StoredEntry {
    pub payload: String,
    pub conversation: String,
}

#[derive(Default)]
pub(crate) struct Stream {
    pub entries: BTreeMap<EntryId, StoredEntry>,
    pub last_id: EntryId,
    /// The consumer group, like `XGROUP CREATE … 0 MKSTREAM` made it.
    group: Option<Group>,
}

#[derive(Default)]
struct Group {
    last_delivered: EntryId,
    /// The pending entries list: entry id → (consumer, deliveries).
    pending: BTreeMap<EntryId, (String, u64)>,
}

#[derive(Clone)]
struct DeadRecord {
    payload: String,
    conversation: String,
    error: String,
    partition: u32,
    source_id: String,
}

#[derive(Default)]
struct DeadStream {
    entries: BTreeMap<EntryId, DeadRecord>,
    last_id: EntryId,
}

/// Next id after `last` like XADD `*`: ids strictly increase even if the clock goes back.
fn next_id(last: EntryId) -> EntryId {
    let ms = now_ms();
    if ms > last.ms {
        EntryId { ms, seq: 0 }
    } else {
        EntryId {
            ms: last.ms,
            seq: last.seq + 1,
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// (channel, event id) → when the dedupe marker expires.
    /// Keyed by [`seen_key`], a 128-bit hash: ~64 bytes a marker instead of two strings (the
    /// markers live 8 days, so they are most of the embedded mode's memory).
    seen: HashMap<u128, Instant>,
    /// The markers of `seen` in the order they expire (every marker lives the same TTL, so
    /// insertion order is expiry order): expiring them is amortized O(1) per event.
    expiries: std::collections::VecDeque<(Instant, u128)>,
    /// channel → contact id → (partition, canonical conversation).
    aliases: HashMap<String, HashMap<String, (u32, String)>>,
    /// (channel, partition) → stream.
    pub streams: HashMap<(String, u32), Stream>,
    /// (channel, partition) → (value `<owner>:<token>`, expiry).
    leases: HashMap<(String, u32), (String, Instant)>,
    /// (channel, partition) → last fencing token.
    fences: HashMap<(String, u32), u64>,
    /// (channel, partition) → member → due ms.
    timers: HashMap<(String, u32), HashMap<String, u64>>,
    /// channel → dead letters.
    dead: HashMap<String, DeadStream>,
    /// worker id → when its heartbeat expires.
    workers: HashMap<String, Instant>,
}

/// The dedupe key of (channel, event id): two independent 64-bit FNV-1a hashes side by side.
/// A collision would need ~2^64 markers alive at once.
fn seen_key(channel: &str, id: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = crate::clock::Fnv64::default();
        h.write(&[salt])
            .write(channel.as_bytes())
            .write(&[0xff])
            .write(id.as_bytes());
        h.finish()
    };
    (u128::from(half(0x01)) << 64) | u128::from(half(0x02))
}

impl State {
    /// Forgets the dedupe markers that expired by `now`, oldest first.
    fn expire_seen(&mut self, now: Instant) {
        while let Some((expires, _)) = self.expiries.front() {
            if *expires > now {
                break;
            }
            let (_, key) = self.expiries.pop_front().expect("front exists");
            // Only if the marker was not set again later (its own entry is further back).
            if self.seen.get(&key).is_some_and(|e| *e <= now) {
                self.seen.remove(&key);
            }
        }
    }

    fn lease_value(&self, channel: &str, partition: u32, now: Instant) -> Option<&str> {
        match self.leases.get(&(channel.to_string(), partition)) {
            Some((value, expires)) if *expires > now => Some(value),
            _ => None,
        }
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.lease_value(&lease.channel, lease.partition, Instant::now()) == Some(&lease.value())
    }

    fn stream(&mut self, channel: &str, partition: u32) -> &mut Stream {
        self.streams
            .entry((channel.to_string(), partition))
            .or_default()
    }
}

fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

impl Stream {
    /// Appends like XADD `*`: ids strictly increase even if the clock goes back.
    pub(crate) fn add(&mut self, entry: StoredEntry, maxlen: u64) -> EntryId {
        let ms = now_ms();
        let id = if ms > self.last_id.ms {
            EntryId { ms, seq: 0 }
        } else {
            EntryId {
                ms: self.last_id.ms,
                seq: self.last_id.seq + 1,
            }
        };
        self.last_id = id;
        self.entries.insert(id, entry);
        if maxlen > 0 {
            while self.entries.len() as u64 > maxlen {
                self.entries.pop_first();
            }
        }
        id
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new()
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        MemoryQueue::with_options(defaults::DEDUPE_TTL_SECS, defaults::STREAM_MAXLEN)
    }

    /// Same knobs as [`super::RedisQueue::connect`]: dedupe memory and stream cap (0 = none).
    pub fn with_options(dedupe_ttl_secs: u64, stream_maxlen: u64) -> Self {
        MemoryQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                appended: Notify::new(),
                dedupe_ttl: Duration::from_secs(dedupe_ttl_secs.max(1)),
                stream_maxlen,
            }),
        }
    }

    /// The state, even if a panicking thread poisoned the lock (the state stays consistent:
    /// every change is made under one lock with no await in between).
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue_one(&self, st: &mut State, ev: &NewEvent, now: Instant) -> Enqueued {
        let seen_key = seen_key(&ev.channel, &ev.id);
        if st.seen.get(&seen_key).is_some_and(|expires| *expires > now) {
            return Enqueued::Duplicate;
        }
        let partitions = ev.partitions.max(1);
        let (partition, conversation) = if ev.contact_ids.is_empty() {
            (0, String::new())
        } else {
            let aliases = st.aliases.entry(ev.channel.clone()).or_default();
            let (mut partition, conversation) = ev
                .contact_ids
                .iter()
                .find_map(|id| aliases.get(id).cloned())
                .unwrap_or_else(|| {
                    let first = &ev.contact_ids[0];
                    (partition_of(first, partitions), first.clone())
                });
            // The partition count may have changed since the alias was learned.
            if partition >= partitions {
                partition %= partitions;
            }
            for id in &ev.contact_ids {
                aliases
                    .entry(id.clone())
                    .or_insert_with(|| (partition, conversation.clone()));
            }
            (partition, conversation)
        };
        let stream = st
            .streams
            .entry((ev.channel.clone(), partition))
            .or_default();
        let entry = StoredEntry {
            payload: ev.payload.clone(),
            conversation: conversation.clone(),
        };
        let id = stream.add(entry, self.inner.stream_maxlen);
        let expires = now + self.inner.dedupe_ttl;
        st.expiries.push_back((expires, seen_key));
        st.seen.insert(seen_key, expires);
        Enqueued::Added {
            partition,
            conversation,
            entry_id: id.to_string(),
        }
    }

    /// Entries of one partition stream, oldest first: (entry id, payload, conversation).
    /// For tests and inspection.
    pub fn entries(&self, channel: &str, partition: u32) -> Vec<(String, String, String)> {
        let st = self.state();
        st.streams
            .get(&(channel.to_string(), partition))
            .map(|s| {
                s.entries
                    .iter()
                    .map(|(id, e)| (id.to_string(), e.payload.clone(), e.conversation.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Consumer side: the same semantics as the Redis scripts (see `src/lua/*.lua`).
impl MemoryQueue {
    /// The value (`<owner>:<token>`) of the live lease on a partition, if any: what the Redis
    /// lease key would hold (the memory conversation store fences saves with it).
    pub fn lease_holder(&self, channel: &str, partition: u32) -> Option<String> {
        self.state()
            .lease_value(channel, partition, Instant::now())
            .map(str::to_string)
    }

    /// Marks `worker` live for `ttl_ms` (or removes it) and returns how many workers are live.
    pub(crate) async fn beat(
        &self,
        worker: &str,
        ttl_ms: u64,
        live: bool,
    ) -> Result<usize, QueueError> {
        let now = Instant::now();
        let mut st = self.state();
        if live {
            st.workers.insert(
                worker.to_string(),
                now + Duration::from_millis(ttl_ms.max(1)),
            );
        } else {
            st.workers.remove(worker);
        }
        st.workers.retain(|_, expires| *expires > now);
        Ok(st.workers.len())
    }

    /// Claim pending entries (any consumer's) in id order, else deliver new ones.
    fn read_now(
        &self,
        lease: &Lease,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        let mut st = self.state();
        if !st.holds(lease) {
            return Err(QueueError::LeaseLost {
                channel: lease.channel.clone(),
                partition: lease.partition,
            });
        }
        let stream = st.stream(&lease.channel, lease.partition);
        let Stream { entries, group, .. } = stream;
        let group = group.get_or_insert_with(Group::default);
        // Entries trimmed away while pending leave the PEL, as XAUTOCLAIM does on Redis 7.
        group.pending.retain(|id, _| entries.contains_key(id));
        let mut out = Vec::new();
        for (id, (owner, deliveries)) in group.pending.iter_mut().take(count) {
            *owner = consumer.to_string();
            *deliveries += 1;
            let e = &entries[id];
            out.push(Entry {
                id: id.to_string(),
                payload: e.payload.clone(),
                conversation: e.conversation.clone(),
                deliveries: *deliveries,
            });
        }
        if !out.is_empty() {
            return Ok(out);
        }
        let start = std::ops::Bound::Excluded(group.last_delivered);
        for (id, e) in entries
            .range((start, std::ops::Bound::Unbounded))
            .take(count)
        {
            group.pending.insert(*id, (consumer.to_string(), 1));
            group.last_delivered = *id;
            out.push(Entry {
                id: id.to_string(),
                payload: e.payload.clone(),
                conversation: e.conversation.clone(),
                deliveries: 1,
            });
        }
        Ok(out)
    }

    /// XACK + XDEL when the lease is ours and the entry pending.
    fn ack_locked(st: &mut State, lease: &Lease, entry_id: &str) -> bool {
        if !st.holds(lease) {
            return false;
        }
        let Some(id) = EntryId::parse(entry_id) else {
            return false;
        };
        let stream = st.stream(&lease.channel, lease.partition);
        let acked = stream
            .group
            .as_mut()
            .is_some_and(|g| g.pending.remove(&id).is_some());
        if acked {
            stream.entries.remove(&id);
        }
        acked
    }

    /// The canonical conversation of a customer id, now (see
    /// [`QueueBackend::conversation_of`]).
    pub fn conversation_now(&self, channel: &str, contact: &str) -> Option<String> {
        self.state()
            .aliases
            .get(channel)
            .and_then(|a| a.get(contact))
            .map(|(_, c)| c.clone())
    }

    /// [`MemoryQueue::replace_timers`] without the async wrapper, for the worker's commit.
    pub(crate) fn replace_timers_now(
        &self,
        channel: &str,
        partition: u32,
        cancel: &[String],
        arm: &[(String, u64)],
    ) {
        let mut st = self.state();
        let timers = st
            .timers
            .entry((channel.to_string(), partition))
            .or_default();
        for member in cancel {
            timers.remove(member);
        }
        for (member, due) in arm {
            timers.insert(member.clone(), *due);
        }
    }
}

/// Payload and conversation of a timer member (see `super::timer_member`); a member that is
/// not such an object is the payload itself, like promote_timers.lua does.
fn decode_timer_member(member: &str) -> (String, String) {
    let parsed: Option<serde_json::Value> = serde_json::from_str(member).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("e"))
        .and_then(|e| e.as_str())
    {
        Some(e) => {
            let c = parsed
                .as_ref()
                .and_then(|v| v.get("c"))
                .and_then(|c| c.as_str());
            (e.to_string(), c.unwrap_or("").to_string())
        }
        None => (member.to_string(), String::new()),
    }
}

impl QueueBackend for MemoryQueue {
    /// Enqueues a batch with the semantics of enqueue.lua, atomically per event.
    async fn enqueue(&self, batch: &[NewEvent]) -> Result<Vec<Enqueued>, QueueError> {
        let now = Instant::now();
        let mut st = self.state();
        st.expire_seen(now);
        let mut out = Vec::with_capacity(batch.len());
        for ev in batch {
            out.push(self.enqueue_one(&mut st, ev, now));
        }
        drop(st);
        self.inner.appended.notify_waiters();
        Ok(out)
    }

    async fn acquire_lease(
        &self,
        channel: &str,
        partition: u32,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, QueueError> {
        let now = Instant::now();
        let mut st = self.state();
        if st.lease_value(channel, partition, now).is_some() {
            return Ok(None);
        }
        let key = (channel.to_string(), partition);
        let token = {
            let fence = st.fences.entry(key.clone()).or_default();
            *fence += 1;
            *fence
        };
        let lease = Lease {
            channel: channel.to_string(),
            partition,
            owner: owner.to_string(),
            token,
        };
        let expires = now + Duration::from_millis(ttl_ms.max(1));
        st.leases.insert(key, (lease.value(), expires));
        Ok(Some(lease))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, QueueError> {
        let mut st = self.state();
        if !st.holds(lease) {
            return Ok(false);
        }
        let expires = Instant::now() + Duration::from_millis(ttl_ms.max(1));
        st.leases.insert(
            (lease.channel.clone(), lease.partition),
            (lease.value(), expires),
        );
        Ok(true)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, QueueError> {
        let mut st = self.state();
        if !st.holds(lease) {
            return Ok(false);
        }
        st.leases.remove(&(lease.channel.clone(), lease.partition));
        Ok(true)
    }

    async fn ensure_group(&self, channel: &str, partition: u32) -> Result<(), QueueError> {
        let mut st = self.state();
        let stream = st.stream(channel, partition);
        stream.group.get_or_insert_with(Group::default);
        Ok(())
    }

    async fn read(
        &self,
        lease: &Lease,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Entry>, QueueError> {
        let deadline = Instant::now() + Duration::from_millis(block_ms);
        loop {
            // Register for wake-ups before looking, so an append in between is not missed.
            let appended = self.inner.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let entries = self.read_now(lease, consumer, count.max(1))?;
            let now = Instant::now();
            if !entries.is_empty() || now >= deadline {
                return Ok(entries);
            }
            let _ = tokio::time::timeout(deadline - now, appended).await;
        }
    }

    async fn ack(&self, lease: &Lease, entry_id: &str) -> Result<bool, QueueError> {
        Ok(Self::ack_locked(&mut self.state(), lease, entry_id))
    }

    /// Acks several entries at once; `None` when the lease is not ours.
    async fn ack_many(
        &self,
        lease: &Lease,
        entry_ids: &[&str],
    ) -> Result<Option<usize>, QueueError> {
        let mut st = self.state();
        if !st.holds(lease) {
            return Ok(None);
        }
        Ok(Some(
            entry_ids
                .iter()
                .filter(|id| Self::ack_locked(&mut st, lease, id))
                .count(),
        ))
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        entry: &Entry,
        error: &str,
    ) -> Result<bool, QueueError> {
        let mut st = self.state();
        if !Self::ack_locked(&mut st, lease, &entry.id) {
            return Ok(false);
        }
        let dead = st.dead.entry(lease.channel.clone()).or_default();
        let id = next_id(dead.last_id);
        dead.last_id = id;
        dead.entries.insert(
            id,
            DeadRecord {
                payload: entry.payload.clone(),
                conversation: entry.conversation.clone(),
                error: error.to_string(),
                partition: lease.partition,
                source_id: entry.id.clone(),
            },
        );
        Ok(true)
    }

    /// Disarms `cancel` and arms `arm` (member, due ms) at once.
    async fn replace_timers(
        &self,
        channel: &str,
        partition: u32,
        cancel: &[String],
        arm: &[(String, u64)],
    ) -> Result<(), QueueError> {
        self.replace_timers_now(channel, partition, cancel, arm);
        Ok(())
    }

    async fn promote_due_timers(
        &self,
        lease: &Lease,
        now_ms: u64,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let mut st = self.state();
        if !st.holds(lease) {
            return Err(QueueError::LeaseLost {
                channel: lease.channel.clone(),
                partition: lease.partition,
            });
        }
        let key = (lease.channel.clone(), lease.partition);
        let timers = st.timers.entry(key).or_default();
        // ZRANGEBYSCORE order: by due time, then by member.
        let mut due: Vec<(u64, String)> = timers
            .iter()
            .filter(|(_, due)| **due <= now_ms)
            .map(|(m, due)| (*due, m.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        for (_, member) in &due {
            timers.remove(member);
        }
        let maxlen = self.inner.stream_maxlen;
        let stream = st.stream(&lease.channel, lease.partition);
        for (_, member) in &due {
            let (payload, conversation) = decode_timer_member(member);
            stream.add(
                StoredEntry {
                    payload,
                    conversation,
                },
                maxlen,
            );
        }
        drop(st);
        if !due.is_empty() {
            self.inner.appended.notify_waiters();
        }
        Ok(due.len())
    }

    async fn partition_stats(
        &self,
        channel: &str,
        partition: u32,
    ) -> Result<PartitionStats, QueueError> {
        let st = self.state();
        let key = (channel.to_string(), partition);
        let (length, pending, lag) = match st.streams.get(&key) {
            None => (0, 0, 0),
            Some(s) => {
                let length = s.entries.len() as u64;
                match &s.group {
                    None => (length, 0, length),
                    Some(g) => {
                        let start = std::ops::Bound::Excluded(g.last_delivered);
                        let lag = s.entries.range((start, std::ops::Bound::Unbounded)).count();
                        (length, g.pending.len() as u64, lag as u64)
                    }
                }
            }
        };
        let lease_owner = st.lease_value(channel, partition, Instant::now()).map(|v| {
            v.rsplit_once(':')
                .map(|(owner, _)| owner.to_string())
                .unwrap_or(v.to_string())
        });
        Ok(PartitionStats {
            length,
            pending,
            lag,
            dead: st
                .dead
                .get(channel)
                .map(|d| d.entries.len() as u64)
                .unwrap_or(0),
            lease_owner,
            timers: st.timers.get(&key).map(|t| t.len() as u64).unwrap_or(0),
        })
    }

    async fn dead_letters(
        &self,
        channel: &str,
        count: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let st = self.state();
        let Some(dead) = st.dead.get(channel) else {
            return Ok(Vec::new());
        };
        Ok(dead
            .entries
            .iter()
            .take(count.max(1))
            .map(|(id, r)| DeadLetter {
                id: id.to_string(),
                payload: r.payload.clone(),
                conversation: r.conversation.clone(),
                error: r.error.clone(),
                partition: r.partition,
                source_id: r.source_id.clone(),
            })
            .collect())
    }

    async fn replay_dead_letter(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<String>, QueueError> {
        let mut st = self.state();
        let Some(dead_id) = EntryId::parse(id) else {
            return Ok(None);
        };
        let Some(record) = st
            .dead
            .get_mut(channel)
            .and_then(|d| d.entries.remove(&dead_id))
        else {
            return Ok(None);
        };
        let maxlen = self.inner.stream_maxlen;
        let stream = st.stream(channel, record.partition);
        let entry = StoredEntry {
            payload: record.payload,
            conversation: record.conversation,
        };
        let new_id = stream.add(entry, maxlen);
        drop(st);
        self.inner.appended.notify_waiters();
        Ok(Some(new_id.to_string()))
    }

    async fn confirm_durable(&self, _channel: &str) -> Result<(), QueueError> {
        Ok(())
    }

    async fn heartbeat(&self, worker: &str, ttl_ms: u64) -> Result<usize, QueueError> {
        self.beat(worker, ttl_ms, true).await
    }

    async fn leave(&self, worker: &str) -> Result<(), QueueError> {
        self.beat(worker, 60_000, false).await.map(|_| ())
    }

    async fn conversations_of(
        &self,
        channel: &str,
        contacts: &[String],
    ) -> Result<Vec<Option<String>>, QueueError> {
        Ok(contacts
            .iter()
            .map(|c| self.conversation_now(channel, c))
            .collect())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::timer_member;

    #[test]
    fn dedupe_keys_tell_channels_and_ids_apart() {
        let keys = [
            seen_key("ch", "e1"),
            seen_key("ch", "e2"),
            seen_key("ch2", "e1"),
            seen_key("c", "h\u{ff}e1"),
            seen_key("", ""),
        ];
        let distinct: std::collections::HashSet<u128> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(seen_key("ch", "e1"), seen_key("ch", "e1"), "stable");
    }

    #[test]
    fn dedupe_markers_expire_oldest_first_without_scanning() {
        let mut st = State::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mark = |st: &mut State, id: &str, at: Instant| {
            let key = seen_key("ch", id);
            st.expiries.push_back((at + ttl, key));
            st.seen.insert(key, at + ttl);
        };
        for i in 0..1000 {
            mark(&mut st, &format!("e{i}"), t0);
        }
        mark(&mut st, "late", t0 + Duration::from_secs(5));
        // "e0" seen again after it expired: a new marker, the old entry must not remove it.
        st.expire_seen(t0 + ttl);
        assert_eq!(st.seen.len(), 1, "the 1000 expired, `late` not yet");
        assert_eq!(st.expiries.len(), 1);
        mark(&mut st, "e0", t0 + ttl);
        st.expire_seen(t0 + ttl + Duration::from_secs(5));
        assert!(st.seen.contains_key(&seen_key("ch", "e0")));
        assert!(!st.seen.contains_key(&seen_key("ch", "late")));
        // A marker renewed while the old one is still queued survives the old one's expiry.
        let mut st = State::default();
        mark(&mut st, "x", t0);
        mark(&mut st, "x", t0 + Duration::from_secs(3));
        st.expire_seen(t0 + ttl);
        assert!(st.seen.contains_key(&seen_key("ch", "x")));
        st.expire_seen(t0 + ttl + Duration::from_secs(3));
        assert!(st.seen.is_empty() && st.expiries.is_empty());
    }

    #[test]
    fn entry_ids_increase_and_round_trip() {
        let mut last = EntryId {
            ms: u64::MAX / 2,
            seq: 7,
        }; // a clock "ahead" of now
        for _ in 0..3 {
            let next = next_id(last);
            assert!(next > last);
            assert_eq!(EntryId::parse(&next.to_string()), Some(next));
            last = next;
        }
        assert!(EntryId::parse("12-x").is_none());
        assert!(EntryId { ms: 2, seq: 0 } > EntryId { ms: 1, seq: 9 });
    }

    #[test]
    fn timer_members_decode_like_the_lua_script() {
        let m = timer_member(r#"{"a":"\"é\""}"#, "1555");
        assert_eq!(m, timer_member(r#"{"a":"\"é\""}"#, "1555"), "deterministic");
        assert_eq!(
            decode_timer_member(&m),
            (r#"{"a":"\"é\""}"#.into(), "1555".into())
        );
        assert_eq!(
            decode_timer_member("plain"),
            ("plain".into(), String::new())
        );
        assert_eq!(
            decode_timer_member(r#"{"e":1}"#),
            (r#"{"e":1}"#.into(), String::new())
        );
    }

    #[tokio::test]
    async fn stream_cap_drops_oldest() {
        let q = MemoryQueue::with_options(60, 3);
        let batch: Vec<NewEvent> = (0..5)
            .map(|i| NewEvent {
                channel: "c".into(),
                partitions: 1,
                id: format!("e{i}"),
                payload: format!("p{i}"),
                contact_ids: vec![],
            })
            .collect();
        q.enqueue(&batch).await.unwrap();
        let kept: Vec<String> = q.entries("c", 0).into_iter().map(|e| e.1).collect();
        assert_eq!(kept, ["p2", "p3", "p4"]);
    }
}
