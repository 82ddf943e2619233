//! The outbound queue in memory: the Redis backend's twin for the single-process mode and the
//! tests. Every step mirrors one of `lua/out_*.lua` (named on each method), so the same calls
//! give the same results on both backends (`tests/outbound_queue.rs`).
//!
//! Time: Redis expires records and markers by its own clock; here expiry is judged against the
//! latest `now` this queue was given (the callers pass wall-clock ms in production, a synthetic
//! clock in tests), so both behave alike whichever clock the caller uses.
//!
//! The idempotency marker and the wamid index live in the process's memory [`Outbox`]: settling
//! a sent message calls [`OutboxBackend::mark_sent`] after this queue's own lock is released, so
//! the marker appears a moment after the record says `sent` (Redis writes both in one script). They
//! keep the outbox's `sent_ttl_ms` (Redis: `record_ttl_ms`). A failed settle writes no audit
//! entry here (the outbox has no call that logs a free code and text); Redis's script does.

use super::{
    broadcast_of, BroadcastRecord, HistoryEntry, Idempotency, LaneGrant, MessageStatus,
    NewBroadcast, OutQueueBackend, OutQueueError, OutQueueOptions, OutRecord, OutStats,
    QueuedMessage, Settle, Submitted, Taken, WaitReason,
};
use crate::outbound::message::Sent;
use crate::outbound::outbox::{Outbox, OutboxBackend, OutboxError, SentRef};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Lanes reclaimed per take at most (`out_take.lua`'s `LIMIT 0 256`).
const RECLAIM_BATCH: usize = 256;

/// Records are swept for expiry when a channel holds at least this many (then at twice the
/// count left), so a long-running process does not keep expired records forever.
const SWEEP_MIN: usize = 1024;

/// (channel, Idempotency-Key) → (body hash, message id, expires at).
/// (channel, key) → (body hash, first message id, expires ms), and when to sweep them.
type IdempotencyKeys = (
    HashMap<(String, String), (String, String, i64)>,
    crate::clock::SweepSchedule,
);

#[derive(Clone)]
pub struct MemoryOutQueue {
    state: Arc<Mutex<State>>,
    /// (channel, Idempotency-Key) → (body hash, message id, expires at): `out:idem:<key>`.
    /// Locked before `state` when both are needed (only `submit` needs both).
    idempotency: Arc<Mutex<IdempotencyKeys>>,
    outbox: Outbox,
    options: OutQueueOptions,
}

impl std::fmt::Debug for MemoryOutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryOutQueue")
    }
}

#[derive(Debug, Default)]
struct State {
    /// The latest `now` any call passed: the clock records expire by.
    clock: i64,
    channels: HashMap<String, Channel>,
}

impl State {
    /// Moves the clock forward to `now_ms` (never back); returns it.
    fn tick(&mut self, now_ms: i64) -> i64 {
        self.clock = self.clock.max(now_ms);
        self.clock
    }
}

/// One channel's keys (`keys.out_*`).
#[derive(Debug, Default)]
struct Channel {
    /// customer → messages, oldest first (`out:lane:<customer>`; absent when empty).
    lanes: HashMap<String, VecDeque<QueuedMessage>>,
    /// customer → ready time (`out:ready`).
    ready: ZSet,
    /// customer → lease expiry (`out:busy`).
    busy: ZSet,
    /// customer → grant token (`out:owner`).
    owner: HashMap<String, String>,
    /// Grant counter (`out:grants`).
    grants: u64,
    /// customer → why its lane waits (`out:wait`).
    wait: HashMap<String, WaitReason>,
    /// id → record (`out:rec:<id>`).
    records: HashMap<String, Record>,
    /// Unsettled ids → queued time (`out:queued`).
    queued: ZSet,
    /// Recorded ids → created time (`out:index`).
    index: ZSet,
    /// Record count at which expired records are next swept.
    sweep_at: usize,
    /// id → broadcast (`bc:<id>` and its recipients list).
    broadcasts: HashMap<String, Broadcast>,
    /// Running broadcast ids → created time (`bc:running`).
    running: ZSet,
}

/// A broadcast (the hash `bc:<id>` and the list `bc:<id>:to`).
#[derive(Clone, Debug, Default)]
struct Broadcast {
    name: String,
    message: String,
    fed: u64,
    state: String,
    created: i64,
    counts: BTreeMap<String, i64>,
    recipients: Vec<String>,
    /// Listed again, left out at creation.
    duplicates: u64,
}

impl Broadcast {
    fn to_record(&self, id: &str) -> BroadcastRecord {
        BroadcastRecord {
            id: id.to_string(),
            name: self.name.clone(),
            message: self.message.clone(),
            total: self.recipients.len() as u64 + self.duplicates,
            size: self.recipients.len() as u64,
            fed: self.fed,
            stored_state: self.state.clone(),
            created_at: self.created,
            counts: self.counts.clone(),
        }
    }
}

impl Channel {
    /// Moves record `id` forward (`lib_move.lua`'s `move`, with its broadcast's counts).
    fn move_record(&mut self, id: &str, status: MessageStatus, at: i64, clock: i64) -> bool {
        let Some(rec) = self.records.get_mut(id).filter(|r| r.expires_at > clock) else {
            return false;
        };
        let from = rec.status;
        if !rec.advance(status, at) {
            return false;
        }
        if let Some(b) = broadcast_of(id).and_then(|bc| self.broadcasts.get_mut(bc)) {
            *b.counts.entry(from.as_str().to_string()).or_default() -= 1;
            *b.counts.entry(status.as_str().to_string()).or_default() += 1;
        }
        true
    }

    fn record(&self, id: &str, clock: i64) -> Option<&Record> {
        self.records.get(id).filter(|r| r.expires_at > clock)
    }

    fn record_mut(&mut self, id: &str, clock: i64) -> Option<&mut Record> {
        self.records.get_mut(id).filter(|r| r.expires_at > clock)
    }

    fn sweep(&mut self, clock: i64) {
        if self.records.len() < self.sweep_at.max(SWEEP_MIN) {
            return;
        }
        self.records.retain(|_, r| r.expires_at > clock);
        self.sweep_at = self.records.len().saturating_mul(2);
    }
}

/// A lifecycle record (the hash `out:rec:<id>`).
#[derive(Clone, Debug)]
struct Record {
    to: String,
    kind: String,
    status: MessageStatus,
    history: Vec<HistoryEntry>,
    wamid: Option<String>,
    error_code: Option<String>,
    error: Option<String>,
    created_at: i64,
    /// Gone (as if absent) once the clock reaches it (`PEXPIRE` at creation).
    expires_at: i64,
}

impl Record {
    /// `lib_move.lua`'s `move`: forward only, history appended.
    fn advance(&mut self, status: MessageStatus, at: i64) -> bool {
        if !self.status.may_move_to(status) {
            return false;
        }
        self.status = status;
        self.history.push(HistoryEntry { status, at });
        true
    }

    fn to_out(&self, channel: &str, id: &str) -> OutRecord {
        OutRecord {
            id: id.to_string(),
            channel: channel.to_string(),
            to: self.to.clone(),
            kind: self.kind.clone(),
            status: self.status,
            wamid: self.wamid.clone(),
            error_code: self.error_code.clone(),
            error: self.error.clone(),
            created_at: self.created_at,
            history: self.history.clone(),
        }
    }
}

/// A sorted set: members ordered by (score, member), as Redis orders them.
#[derive(Debug, Default)]
struct ZSet {
    scores: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
}

impl ZSet {
    fn len(&self) -> usize {
        self.scores.len()
    }

    fn score(&self, member: &str) -> Option<i64> {
        self.scores.get(member).copied()
    }

    /// `ZADD key score member`.
    fn add(&mut self, member: &str, score: i64) {
        if let Some(old) = self.scores.insert(member.to_string(), score) {
            self.order.remove(&(old, member.to_string()));
        }
        self.order.insert((score, member.to_string()));
    }

    /// `ZADD key NX score member`.
    fn add_nx(&mut self, member: &str, score: i64) {
        if !self.scores.contains_key(member) {
            self.add(member, score);
        }
    }

    /// `ZADD key XX score member`.
    fn add_xx(&mut self, member: &str, score: i64) {
        if self.scores.contains_key(member) {
            self.add(member, score);
        }
    }

    /// `ZREM key member`.
    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.order.remove(&(old, member.to_string()));
        }
    }

    /// `ZRANGEBYSCORE key -inf max LIMIT 0 limit`.
    fn up_to(&self, max: i64, limit: usize) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(score, _)| *score <= max)
            .take(limit)
            .map(|(_, member)| member.clone())
            .collect()
    }

    /// `ZRANGE key 0 0 WITHSCORES`.
    fn first(&self) -> Option<(i64, &str)> {
        self.order.first().map(|(s, m)| (*s, m.as_str()))
    }

    /// `ZREMRANGEBYSCORE key -inf (min`.
    fn remove_below(&mut self, min: i64) {
        while let Some((score, _)) = self.order.first() {
            if *score >= min {
                break;
            }
            if let Some((_, member)) = self.order.pop_first() {
                self.scores.remove(&member);
            }
        }
    }

    /// `ZREVRANGE key 0 -1`.
    fn iter_rev(&self) -> impl Iterator<Item = &str> {
        self.order.iter().rev().map(|(_, m)| m.as_str())
    }
}

/// A duration option as ms to add to a time.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn outbox_error(e: OutboxError) -> OutQueueError {
    match e {
        OutboxError::Redis(e) => OutQueueError::Redis(e),
        OutboxError::UnexpectedReply(s) => OutQueueError::UnexpectedReply(s),
    }
}

impl MemoryOutQueue {
    /// `outbox` holds the idempotency markers and the wamid index (the process's memory
    /// outbox, the one its senders consult).
    pub fn new(outbox: Outbox, options: OutQueueOptions) -> Self {
        MemoryOutQueue {
            state: Arc::default(),
            idempotency: Arc::default(),
            outbox,
            options,
        }
    }

    pub fn options(&self) -> OutQueueOptions {
        self.options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `out_push.lua` (the `push` helper of `lib_push.lua`), synchronously: the worker's
    /// in-memory commit calls it inside its own locked step.
    pub(crate) fn push_now(
        &self,
        channel: &str,
        customer: &str,
        messages: &[QueuedMessage],
        now_ms: i64,
    ) -> usize {
        if messages.is_empty() {
            return 0;
        }
        let ttl = ms(self.options.record_ttl_ms);
        let mut guard = self.lock();
        let st = &mut *guard;
        let clock = st.tick(now_ms);
        let ch = st.channels.entry(channel.to_string()).or_default();
        let mut added = 0;
        for m in messages {
            let id = &m.msg.outbox_key;
            if ch.record(id, clock).is_some() {
                continue;
            }
            ch.records.insert(
                id.clone(),
                Record {
                    to: customer.to_string(),
                    kind: m.msg.reply.type_name().to_string(),
                    status: MessageStatus::Queued,
                    history: vec![HistoryEntry {
                        status: MessageStatus::Queued,
                        at: now_ms,
                    }],
                    wamid: None,
                    error_code: None,
                    error: None,
                    created_at: now_ms,
                    expires_at: now_ms.saturating_add(ttl),
                },
            );
            ch.lanes
                .entry(customer.to_string())
                .or_default()
                .push_back(m.clone());
            ch.queued.add(id, now_ms);
            ch.index.add(id, now_ms);
            added += 1;
        }
        if added > 0 {
            ch.index.remove_below(now_ms.saturating_sub(ttl));
            if ch.busy.score(customer).is_none() {
                ch.ready.add_nx(customer, now_ms);
            }
            ch.sweep(clock);
        }
        added
    }

    /// `out_settle.lua`, except the marker and the wamid index (written by
    /// [`MemoryOutQueue::settle`] through the outbox). Returns whether the head was popped.
    fn settle_now(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        outcome: &Settle,
        now_ms: i64,
    ) -> bool {
        let lease = ms(self.options.lane_lease_ms);
        let id = &head.msg.outbox_key;
        let mut guard = self.lock();
        let st = &mut *guard;
        let clock = st.tick(now_ms);
        let ch = st.channels.entry(grant.channel.clone()).or_default();
        let mut popped = false;
        if let Some(lane) = ch.lanes.get_mut(&grant.customer) {
            if lane.front().map(|h| &h.msg.outbox_key) == Some(id) {
                lane.pop_front();
                popped = true;
            }
            if lane.is_empty() {
                ch.lanes.remove(&grant.customer);
            }
        }
        ch.queued.remove(id);
        let (status, code, error) = match outcome {
            Settle::Sent { wamid } => {
                if let Some(rec) = ch.record_mut(id, clock) {
                    if rec.wamid.is_none() {
                        rec.wamid = Some(wamid.clone());
                    }
                }
                (MessageStatus::Sent, None, None)
            }
            Settle::Failed { code, error } => (MessageStatus::Failed, Some(code), Some(error)),
            Settle::Skipped { reason } => {
                (MessageStatus::Skipped, Some(reason), Some(&String::new()))
            }
        };
        if ch.move_record(id, status, now_ms, clock) {
            if let (Some(code), Some(rec)) = (code, ch.record_mut(id, clock)) {
                rec.error_code = Some(code.clone());
                rec.error = error.cloned();
            }
        }
        if ch.owner.get(&grant.customer) == Some(&grant.token) {
            ch.busy
                .add_xx(&grant.customer, now_ms.saturating_add(lease));
        }
        popped
    }

    /// Whether the outbox already holds `msg` as sent with `wamid` (and the index, for a
    /// message that has one).
    async fn marked(
        &self,
        msg: &crate::outbound::OutgoingMessage,
        wamid: &str,
        now_ms: i64,
    ) -> Result<bool, OutQueueError> {
        let marker = self
            .outbox
            .get(&msg.channel, &msg.outbox_key, now_ms)
            .await
            .map_err(outbox_error)?;
        if marker.as_deref() != Some(format!("sent:{wamid}").as_str()) {
            return Ok(false);
        }
        if !msg.reply.is_message() {
            return Ok(true);
        }
        let found = self
            .outbox
            .lookup_message(&msg.channel, wamid, now_ms)
            .await
            .map_err(outbox_error)?;
        Ok(found
            == Some(SentRef {
                outbox_key: msg.outbox_key.clone(),
                conversation: msg.to.clone(),
            }))
    }
}

impl OutQueueBackend for MemoryOutQueue {
    async fn push(
        &self,
        channel: &str,
        customer: &str,
        messages: &[QueuedMessage],
        now_ms: i64,
    ) -> Result<usize, OutQueueError> {
        Ok(self.push_now(channel, customer, messages, now_ms))
    }

    /// `out_submit.lua`.
    async fn submit(
        &self,
        message: &QueuedMessage,
        customer: &str,
        idempotency: Option<&Idempotency>,
        now_ms: i64,
    ) -> Result<Submitted, OutQueueError> {
        let channel = &message.msg.channel;
        let id = &message.msg.outbox_key;
        let mut guard = self.idempotency.lock().unwrap_or_else(|e| e.into_inner());
        let (keys, sweep) = &mut *guard;
        if let Some(i) = idempotency {
            if sweep.due(keys.len(), 4096) {
                keys.retain(|_, (_, _, exp)| *exp > now_ms);
                sweep.swept(keys.len());
            }
            let slot = (channel.clone(), i.key.clone());
            match keys.get(&slot).filter(|(_, _, exp)| *exp > now_ms) {
                Some((hash, first, _)) if *hash == i.body_hash => {
                    return Ok(Submitted::Existing(first.clone()))
                }
                Some((_, first, _)) => return Ok(Submitted::Conflict(first.clone())),
                None => {
                    let exp = now_ms.saturating_add(ms(i.ttl_ms));
                    keys.insert(slot, (i.body_hash.clone(), id.clone(), exp));
                }
            }
        }
        self.push_now(channel, customer, std::slice::from_ref(message), now_ms);
        Ok(Submitted::Queued(id.clone()))
    }

    /// `out_take.lua`.
    async fn take(
        &self,
        channel: &str,
        owner: &str,
        now_ms: i64,
        max: usize,
    ) -> Result<Taken, OutQueueError> {
        let lease = ms(self.options.lane_lease_ms);
        let mut guard = self.lock();
        let st = &mut *guard;
        st.tick(now_ms);
        let Some(ch) = st.channels.get_mut(channel) else {
            return Ok(Taken::default());
        };
        let expired = ch.busy.up_to(now_ms, RECLAIM_BATCH);
        for c in &expired {
            ch.busy.remove(c);
            ch.owner.remove(c);
            ch.ready.add(c, now_ms);
        }
        let mut lanes = Vec::new();
        if max > 0 {
            for customer in ch.ready.up_to(now_ms, max.min(super::redis::MAX_TAKE)) {
                ch.grants += 1;
                let token = format!("{owner}:{}", ch.grants);
                ch.ready.remove(&customer);
                ch.busy.add(&customer, now_ms.saturating_add(lease));
                ch.owner.insert(customer.clone(), token.clone());
                ch.wait.remove(&customer);
                lanes.push(LaneGrant {
                    channel: channel.to_string(),
                    customer,
                    token,
                });
            }
        }
        Ok(Taken {
            lanes,
            // The script answers -1 for "none", which the Redis backend reads as `None`.
            next_ready_ms: ch.ready.first().map(|(s, _)| s).filter(|s| *s >= 0),
            reclaimed: u32::try_from(expired.len()).unwrap_or(u32::MAX),
        })
    }

    /// `LINDEX lane 0`.
    async fn head(
        &self,
        channel: &str,
        customer: &str,
    ) -> Result<Option<QueuedMessage>, OutQueueError> {
        let st = self.lock();
        Ok(st
            .channels
            .get(channel)
            .and_then(|ch| ch.lanes.get(customer))
            .and_then(|lane| lane.front().cloned()))
    }

    /// `LRANGE lane 0 -1`.
    async fn lane(
        &self,
        channel: &str,
        customer: &str,
    ) -> Result<Vec<QueuedMessage>, OutQueueError> {
        let st = self.lock();
        Ok(st
            .channels
            .get(channel)
            .and_then(|ch| ch.lanes.get(customer))
            .map(|lane| lane.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// `out_begin.lua`.
    async fn begin(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        now_ms: i64,
    ) -> Result<bool, OutQueueError> {
        let lease = ms(self.options.lane_lease_ms);
        let mut guard = self.lock();
        let st = &mut *guard;
        let clock = st.tick(now_ms);
        let Some(ch) = st.channels.get_mut(&grant.channel) else {
            return Ok(false);
        };
        if ch.owner.get(&grant.customer) != Some(&grant.token) {
            return Ok(false);
        }
        ch.busy
            .add_xx(&grant.customer, now_ms.saturating_add(lease));
        ch.move_record(&head.msg.outbox_key, MessageStatus::Sending, now_ms, clock);
        Ok(true)
    }

    /// `out_settle.lua`: the queue's part under its lock, then the outbox's (marker, wamid
    /// index and, when the head was popped now, the audit entry).
    async fn settle(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        outcome: &Settle,
        now_ms: i64,
    ) -> Result<(), OutQueueError> {
        let popped = self.settle_now(grant, head, outcome, now_ms);
        // The keys the script writes: the grant's channel and customer.
        let mut msg = head.msg.clone();
        msg.channel = grant.channel.clone();
        msg.to = grant.customer.clone();
        let wamid = match outcome {
            Settle::Sent { wamid } => wamid,
            Settle::Failed { code, error } => {
                if popped {
                    self.outbox
                        .log_outcome(&msg, code, error, now_ms)
                        .await
                        .map_err(outbox_error)?;
                }
                return Ok(());
            }
            Settle::Skipped { reason } => {
                if popped {
                    self.outbox
                        .log_outcome(&msg, reason, "", now_ms)
                        .await
                        .map_err(outbox_error)?;
                }
                return Ok(());
            }
        };
        // A settle that popped nothing writes no audit entry in Redis: skip `mark_sent` when
        // the marker and the index already say this (its one extra write is the audit entry).
        if !popped && self.marked(&msg, wamid, now_ms).await? {
            return Ok(());
        }
        self.outbox
            .mark_sent(&msg, &Sent::new(wamid.clone()), now_ms)
            .await
            .map_err(outbox_error)
    }

    /// `out_defer.lua`.
    async fn defer(
        &self,
        grant: &LaneGrant,
        until_ms: i64,
        reason: Option<WaitReason>,
        bump: Option<&QueuedMessage>,
    ) -> Result<bool, OutQueueError> {
        let mut st = self.lock();
        let Some(ch) = st.channels.get_mut(&grant.channel) else {
            return Ok(false);
        };
        let customer = grant.customer.as_str();
        if ch.owner.get(customer) != Some(&grant.token) {
            return Ok(false);
        }
        ch.busy.remove(customer);
        ch.owner.remove(customer);
        let lane = ch.lanes.get_mut(customer);
        let mut non_empty = false;
        if let Some(lane) = lane {
            if let (Some(bump), Some(first)) = (bump, lane.front_mut()) {
                if *first == *bump {
                    first.attempts = bump.attempts.saturating_add(1);
                }
            }
            non_empty = !lane.is_empty();
        }
        if non_empty {
            ch.ready.add(customer, until_ms);
            match reason {
                Some(r) => {
                    ch.wait.insert(customer.to_string(), r);
                }
                None => {
                    ch.wait.remove(customer);
                }
            }
        } else {
            ch.lanes.remove(customer);
            ch.wait.remove(customer);
        }
        Ok(true)
    }

    /// `out_advance.lua`. `at_ms` does not move the expiry clock: a status's own time may lie
    /// anywhere.
    async fn advance(
        &self,
        channel: &str,
        id: &str,
        status: MessageStatus,
        at_ms: i64,
        wamid: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Result<bool, OutQueueError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let clock = st.clock;
        let Some(ch) = st.channels.get_mut(channel) else {
            return Ok(false);
        };
        if !ch.move_record(id, status, at_ms, clock) {
            return Ok(false);
        }
        let Some(rec) = ch.record_mut(id, clock) else {
            return Ok(false);
        };
        if let Some(w) = wamid.filter(|w| !w.is_empty()) {
            if rec.wamid.is_none() {
                rec.wamid = Some(w.to_string());
            }
        }
        if status == MessageStatus::Failed {
            // The script writes each field only when it is given.
            let (code, text) = error.unwrap_or(("", ""));
            if !code.is_empty() {
                rec.error_code = Some(code.to_string());
            }
            if !text.is_empty() {
                rec.error = Some(text.to_string());
            }
        }
        Ok(true)
    }

    /// `bc_create.lua`.
    async fn create_broadcast(
        &self,
        channel: &str,
        b: &NewBroadcast,
        now_ms: i64,
    ) -> Result<bool, OutQueueError> {
        let mut st = self.lock();
        st.tick(now_ms);
        let ch = st.channels.entry(channel.to_string()).or_default();
        if ch.broadcasts.contains_key(&b.id) {
            return Ok(false);
        }
        let mut counts = BTreeMap::new();
        counts.insert("skipped".to_string(), b.skipped as i64);
        counts.insert("queued".to_string(), 0);
        ch.broadcasts.insert(
            b.id.clone(),
            Broadcast {
                name: b.name.clone(),
                message: b.message.clone(),
                fed: 0,
                state: "running".into(),
                created: now_ms,
                counts,
                recipients: b.recipients.clone(),
                duplicates: b.skipped,
            },
        );
        ch.running.add(&b.id, now_ms);
        Ok(true)
    }

    async fn broadcast(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<BroadcastRecord>, OutQueueError> {
        let st = self.lock();
        Ok(st
            .channels
            .get(channel)
            .and_then(|ch| ch.broadcasts.get(id))
            .map(|b| b.to_record(id)))
    }

    async fn running_broadcasts(&self, channel: &str) -> Result<Vec<String>, OutQueueError> {
        let st = self.lock();
        Ok(st
            .channels
            .get(channel)
            .map(|ch| ch.running.up_to(i64::MAX, usize::MAX))
            .unwrap_or_default())
    }

    async fn broadcast_recipients(
        &self,
        channel: &str,
        id: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<String>, OutQueueError> {
        let st = self.lock();
        Ok(st
            .channels
            .get(channel)
            .and_then(|ch| ch.broadcasts.get(id))
            .map(|b| {
                b.recipients
                    .iter()
                    .skip(usize::try_from(from).unwrap_or(usize::MAX))
                    .take(n)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `bc_feed.lua`.
    async fn feed_broadcast(
        &self,
        channel: &str,
        id: &str,
        cursor: u64,
        items: &[(String, QueuedMessage)],
        now_ms: i64,
    ) -> Result<Option<usize>, OutQueueError> {
        {
            let st = self.lock();
            let b = st
                .channels
                .get(channel)
                .and_then(|ch| ch.broadcasts.get(id));
            if !b.is_some_and(|b| b.state == "running" && b.fed == cursor) {
                return Ok(None);
            }
        }
        // One process: no other feeder can move the cursor between the check and here
        // except this queue's own callers, which the lane sender serializes per channel.
        let mut added = 0;
        for (customer, m) in items {
            added += self.push_now(channel, customer, std::slice::from_ref(m), now_ms);
        }
        let mut st = self.lock();
        if let Some(b) = st
            .channels
            .get_mut(channel)
            .and_then(|ch| ch.broadcasts.get_mut(id))
        {
            b.fed += items.len() as u64;
            *b.counts.entry("queued".into()).or_default() += added as i64;
        }
        Ok(Some(added))
    }

    async fn retire_broadcast(&self, channel: &str, id: &str) -> Result<(), OutQueueError> {
        if let Some(ch) = self.lock().channels.get_mut(channel) {
            ch.running.remove(id);
        }
        Ok(())
    }

    async fn cancel_broadcast(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<BroadcastRecord>, OutQueueError> {
        let mut st = self.lock();
        let Some(ch) = st.channels.get_mut(channel) else {
            return Ok(None);
        };
        ch.running.remove(id);
        Ok(ch.broadcasts.get_mut(id).map(|b| {
            if b.state == "running" {
                // Never fed: skipped now (`bc_cancel.lua`).
                let unfed = (b.recipients.len() as u64).saturating_sub(b.fed);
                *b.counts.entry("skipped".into()).or_default() += unfed as i64;
                b.fed = b.recipients.len() as u64;
                b.state = "cancelled".into();
            }
            b.to_record(id)
        }))
    }

    /// The wamid index (`keys.sent_message`), in the outbox.
    async fn find_by_wamid(
        &self,
        channel: &str,
        wamid: &str,
    ) -> Result<Option<(String, String)>, OutQueueError> {
        let clock = self.lock().clock;
        let found = self
            .outbox
            .lookup_message(channel, wamid, clock)
            .await
            .map_err(outbox_error)?;
        Ok(found.map(|r| (r.outbox_key, r.conversation)))
    }

    /// `HGETALL out:rec:<id>`.
    async fn record(&self, channel: &str, id: &str) -> Result<Option<OutRecord>, OutQueueError> {
        let st = self.lock();
        Ok(st
            .channels
            .get(channel)
            .and_then(|ch| ch.record(id, st.clock))
            .map(|r| r.to_out(channel, id)))
    }

    /// The index trimmed to the TTL, newest first (`ZREVRANGE`), records at `status` only.
    async fn list(
        &self,
        channel: &str,
        status: Option<MessageStatus>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<OutRecord>, OutQueueError> {
        let ttl = ms(self.options.record_ttl_ms);
        let mut guard = self.lock();
        let st = &mut *guard;
        let clock = st.tick(now_ms);
        let Some(ch) = st.channels.get_mut(channel) else {
            return Ok(Vec::new());
        };
        ch.index.remove_below(now_ms.saturating_sub(ttl));
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        for id in ch.index.iter_rev() {
            let Some(rec) = ch.record(id, clock) else {
                continue;
            };
            if status.is_none_or(|s| rec.status == s) {
                found.push(rec.to_out(channel, id));
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Counts, as the Redis backend reads them.
    async fn stats(&self, channel: &str, now_ms: i64) -> Result<OutStats, OutQueueError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.tick(now_ms);
        let Some(ch) = st.channels.get(channel) else {
            return Ok(OutStats::default());
        };
        let mut waiting = BTreeMap::new();
        for reason in ch.wait.values() {
            *waiting.entry(reason.as_str().to_string()).or_insert(0) += 1;
        }
        let waiting_total: u64 = waiting.values().sum();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Ok(OutStats {
            backlog: count(ch.queued.len()),
            lanes_ready: count(ch.ready.len()).saturating_sub(waiting_total),
            lanes_busy: count(ch.busy.len()),
            waiting,
            oldest_ms: ch.queued.first().map_or(0, |(at, _)| {
                u64::try_from(now_ms.saturating_sub(at).max(0)).unwrap_or(0)
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zset_orders_by_score_then_member() {
        let mut z = ZSet::default();
        z.add("b", 5);
        z.add("a", 5);
        z.add("c", 1);
        z.add_nx("c", 9);
        z.add_xx("d", 0);
        assert_eq!(z.up_to(5, 10), ["c", "a", "b"]);
        assert_eq!(z.up_to(5, 2), ["c", "a"]);
        assert_eq!(z.first(), Some((1, "c")));
        assert_eq!(z.iter_rev().collect::<Vec<_>>(), ["b", "a", "c"]);
        z.add("c", 7);
        assert_eq!(z.up_to(i64::MAX, 10), ["a", "b", "c"]);
        z.remove_below(6);
        assert_eq!(z.len(), 1);
        assert_eq!(z.score("c"), Some(7));
        z.remove("c");
        assert_eq!(z.first(), None);
    }
}
