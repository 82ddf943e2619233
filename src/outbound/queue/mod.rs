//! The outbound queue of a channel: every message to a customer waits here, in order per
//! customer, until a sender takes its customer's **lane**.
//!
//! Shape (BullMQ Pro's "groups"): one FIFO list per (channel, customer) — the lane — and one
//! sorted set of lanes that are ready, scored by the time they may next send (the end of a pair
//! gap, a backoff, a rate slot). A sender takes the lanes whose time has come (`ZRANGEBYSCORE
//! ready -inf now`), works the head of each, and gives each lane back with its next ready time.
//! A customer waiting for its gap is simply not in the due part of the set, so it never delays
//! anybody else; taking the next ready lane is O(log n) whatever the number of customers.
//!
//! Taken lanes are leased (`busy`: customer → lease expiry, `owner`: customer → grant token). A
//! sender that dies loses its lanes when the lease expires; the next `take` by any process puts
//! them back in `ready`, with their messages untouched and in order, so per-customer order holds
//! across a takeover. Giving a lane back and deferring it are fenced by the grant token;
//! settling a message is not (a result the provider gave is the truth whoever records it) but
//! pops the lane head only if it is still that message.
//!
//! Each message also has a lifecycle record (`queued → sending → sent → delivered → read`, or
//! `failed`), moved only forward, kept `record_ttl_ms` (`[sending] outbox_ttl_secs`).
//!
//! The contract is the [`OutQueueBackend`] trait (docs there), one file per backend; [`OutQueue`]
//! is an enum over the two, dispatched by `enum_dispatch`. The Redis backend and the in-memory
//! twin behave the same; `tests/outbound_queue.rs` runs one behaviour suite on both.

pub mod memory;
pub mod redis;

pub use self::memory::MemoryOutQueue;
pub use self::redis::RedisOutQueue;

use super::message::OutgoingMessage;
use enum_dispatch::enum_dispatch;
use serde::{Deserialize, Serialize};

/// One message in a lane (stored as JSON in the lane list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub msg: OutgoingMessage,
    /// When it was queued (ms): the age an operator sees.
    pub queued_at: i64,
    /// Failed attempts so far (retryable errors); bumped by [`OutQueueBackend::defer`].
    #[serde(default)]
    pub attempts: u32,
}

impl QueuedMessage {
    pub fn new(msg: OutgoingMessage, queued_at: i64) -> Self {
        QueuedMessage {
            msg,
            queued_at,
            attempts: 0,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a queued message serializes")
    }

    pub fn from_json(s: &str) -> Result<Self, OutQueueError> {
        serde_json::from_str(s).map_err(|e| OutQueueError::Decode(e.to_string()))
    }
}

/// Where one outbound message stands. Ordered: a status only ever moves to a later one,
/// except `Failed` and `Skipped` (a broadcast recipient left out), which may follow anything
/// but `Read`, `Failed` or `Skipped` (Meta can report a failure after `sent` or `delivered`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Skipped,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 7] = [
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
        MessageStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The rank the Lua scripts compare (`queued` 0 … `read` 4, `failed` 5, `skipped` 6).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// Whether a record at `self` may move to `next`.
    pub fn may_move_to(self, next: MessageStatus) -> bool {
        let done = matches!(self, MessageStatus::Failed | MessageStatus::Skipped);
        match next {
            MessageStatus::Failed | MessageStatus::Skipped => self != MessageStatus::Read && !done,
            _ => !done && next > self,
        }
    }
}

/// The lifecycle record of one outbound message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OutRecord {
    /// The message id: its outbox key.
    pub id: String,
    pub channel: String,
    pub to: String,
    /// The reply's `type` (`text`, `template`, …).
    #[serde(rename = "type")]
    pub kind: String,
    pub status: MessageStatus,
    /// Meta's wamid or the gateway's id, once known.
    pub wamid: Option<String>,
    /// Why it failed: a snake_case code (`window_closed`, `undeliverable`, …) …
    pub error_code: Option<String>,
    /// … and the message.
    pub error: Option<String>,
    pub created_at: i64,
    /// Every status it reached, with the time (ms), oldest first.
    pub history: Vec<HistoryEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: MessageStatus,
    pub at: i64,
}

/// A lane a sender took: work its head, then give it back ([`OutQueueBackend::release`] or
/// [`OutQueueBackend::defer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneGrant {
    pub channel: String,
    pub customer: String,
    /// `<owner>:<n>`, what the owner hash holds while the grant is valid.
    pub token: String,
}

/// What [`OutQueueBackend::take`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub lanes: Vec<LaneGrant>,
    /// The earliest ready time of the lanes left waiting (ms), if any: when to look again.
    pub next_ready_ms: Option<i64>,
    /// Lanes whose lease had expired (their sender died) and were put back as ready.
    pub reclaimed: u32,
}

/// Why a lane waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The customer's pair gap (WABA) or per-chat gap (Personal).
    PairGap,
    /// The channel's rate (or the Personal per-minute cap).
    Rate,
    /// Backing off after a retryable error (130429, 131056, 5xx, timeout).
    Backoff,
    /// An earlier send of the head may have left before a crash: waiting for its status.
    InFlight,
    /// Meta's messaging limit (unique customers outside a window in 24 h) is reached.
    MessagingLimit,
}

impl WaitReason {
    pub const ALL: [WaitReason; 5] = [
        WaitReason::PairGap,
        WaitReason::Rate,
        WaitReason::Backoff,
        WaitReason::InFlight,
        WaitReason::MessagingLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::PairGap => "pair_gap",
            WaitReason::Rate => "rate",
            WaitReason::Backoff => "backoff",
            WaitReason::InFlight => "in_flight",
            WaitReason::MessagingLimit => "messaging_limit",
        }
    }

    pub fn parse(s: &str) -> Option<WaitReason> {
        WaitReason::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

/// How a message left its lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Accepted by Meta / the gateway with this id (or found already sent).
    Sent { wamid: String },
    /// Given up: a snake_case code and the error text.
    Failed { code: String, error: String },
    /// Left out on purpose (a broadcast recipient in a handover, opted out, or the broadcast
    /// cancelled): the reason.
    Skipped { reason: String },
}

/// The broadcast a message id belongs to: broadcast messages are `<broadcast id>.<index>`
/// with broadcast ids `bc-…`.
pub fn broadcast_of(message_id: &str) -> Option<&str> {
    message_id
        .strip_prefix("bc-")
        .and_then(|_| message_id.rsplit_once('.'))
        .map(|(bc, _)| bc)
}

/// A broadcast as it is created: its recipients (`{"to", "params"}` JSON each, duplicates
/// already left out and counted in `skipped`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBroadcast {
    pub id: String,
    pub name: String,
    /// The message (a reply in the forward protocol's shape) every recipient gets.
    pub message: String,
    pub recipients: Vec<String>,
    pub skipped: u64,
}

/// A broadcast as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BroadcastRecord {
    pub id: String,
    pub name: String,
    pub message: String,
    /// Recipients listed (duplicates included: they count as skipped).
    pub total: u64,
    /// Recipients stored to be messaged (each `to` once).
    pub size: u64,
    /// Recipients moved into lanes so far.
    pub fed: u64,
    /// `running` or `cancelled` as stored (`done` is derived: see [`BroadcastRecord::state`]).
    pub stored_state: String,
    pub created_at: i64,
    /// Messages per status (`queued` counts those fed and not yet settled).
    pub counts: std::collections::BTreeMap<String, i64>,
}

impl BroadcastRecord {
    fn count(&self, status: &str) -> u64 {
        self.counts.get(status).copied().unwrap_or(0).max(0) as u64
    }

    /// Recipients that reached an end: sent, delivered, read, failed or skipped.
    pub fn finished(&self) -> u64 {
        ["sent", "delivered", "read", "failed", "skipped"]
            .iter()
            .map(|s| self.count(s))
            .sum()
    }

    /// Fed and not settled yet.
    pub fn in_flight(&self) -> u64 {
        self.count("queued") + self.count("sending")
    }

    /// `cancelled`, `done` (every recipient fed and settled), or `running`.
    pub fn state(&self) -> &'static str {
        if self.stored_state == "cancelled" {
            "cancelled"
        } else if self.fed >= self.size && self.in_flight() == 0 {
            "done"
        } else {
            "running"
        }
    }

    /// `{"queued", "sent", "delivered", "read", "failed", "skipped"}`, adding up to `total`
    /// (queued: everything not finished, fed or not).
    pub fn view_counts(&self) -> serde_json::Value {
        let done = ["sent", "delivered", "read", "failed", "skipped"];
        let mut counts = serde_json::Map::new();
        counts.insert(
            "queued".into(),
            (self.total.saturating_sub(self.finished())).into(),
        );
        for s in done {
            counts.insert(s.into(), self.count(s).into());
        }
        serde_json::Value::Object(counts)
    }
}

/// An `Idempotency-Key` with what it guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// A hash of the request body: the same key with another body is a conflict.
    pub body_hash: String,
    pub ttl_ms: u64,
}

/// What [`OutQueueBackend::submit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued now under this id.
    Queued(String),
    /// The key was used before with the same body: that message's id, nothing queued.
    Existing(String),
    /// The key was used before with another body: nothing queued.
    Conflict(String),
}

/// What `coexist queues` shows for one channel's outbound side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutStats {
    /// Messages queued and not yet settled.
    pub backlog: u64,
    /// Lanes whose time has come or will come (not taken).
    pub lanes_ready: u64,
    /// Lanes a sender holds now.
    pub lanes_busy: u64,
    /// Lanes set aside until a later time, by reason (`pair_gap`, `rate`, `backoff`, `in_flight`).
    pub waiting: std::collections::BTreeMap<String, u64>,
    /// Age of the oldest unsettled message (ms), 0 when none.
    pub oldest_ms: u64,
}

/// Tunables shared by both backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutQueueOptions {
    /// How long a lifecycle record (and the list index entry) is kept.
    pub record_ttl_ms: u64,
    /// How long a lane grant lasts before another sender may take the lane over.
    pub lane_lease_ms: u64,
}

impl Default for OutQueueOptions {
    fn default() -> Self {
        OutQueueOptions {
            record_ttl_ms: 30 * 24 * 3600 * 1000,
            lane_lease_ms: 30_000,
        }
    }
}

impl OutQueueOptions {
    /// The defaults, with what `[sending]` sets (`outbox_ttl_secs`, `lane_lease_ms`).
    pub fn from_config(c: &crate::config::SendingConfig) -> Self {
        let d = OutQueueOptions::default();
        OutQueueOptions {
            record_ttl_ms: c
                .outbox_ttl_secs
                .map_or(d.record_ttl_ms, |s| s.saturating_mul(1000)),
            lane_lease_ms: c.lane_lease_ms.unwrap_or(d.lane_lease_ms).max(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutQueueError {
    #[error("outbound queue: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("outbound queue: stored message is not valid: {0}")]
    Decode(String),
    #[error("outbound queue: unexpected reply {0}")]
    UnexpectedReply(String),
}

/// What an outbound queue does, on either backend: one behaviour suite
/// (`tests/outbound_queue.rs`) runs on both. Native `async fn`: every caller holds a concrete
/// [`OutQueue`] (or backend), so the futures stay `Send` where the backend's are.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait OutQueueBackend {
    /// Queues messages to `customer` of `channel`, in order, each once per outbox key (a key
    /// already recorded is skipped). Creates each record (`queued`), appends to the lane, and
    /// makes the lane ready now unless it is taken or already waiting. Returns how many were
    /// new. (Replies of a handled event are queued by the worker's commit instead, in the same
    /// atomic step as the state; this is for messages with no inbound event.)
    async fn push(
        &self,
        channel: &str,
        customer: &str,
        messages: &[QueuedMessage],
        now_ms: i64,
    ) -> Result<usize, OutQueueError>;

    /// Queues one message that no inbound event produced (the send API), at most once per
    /// `idempotency` key, atomically: the key and the message are written together or not at
    /// all, so concurrent requests with one key queue one message.
    async fn submit(
        &self,
        message: &QueuedMessage,
        customer: &str,
        idempotency: Option<&Idempotency>,
        now_ms: i64,
    ) -> Result<Submitted, OutQueueError>;

    /// Takes up to `max` lanes of `channel` whose ready time is `<= now_ms`, leased to `owner`
    /// for `lane_lease_ms`. First puts back as ready every lane whose lease expired.
    async fn take(
        &self,
        channel: &str,
        owner: &str,
        now_ms: i64,
        max: usize,
    ) -> Result<Taken, OutQueueError>;

    /// The head of a lane (the next message to send to that customer), if any.
    async fn head(
        &self,
        channel: &str,
        customer: &str,
    ) -> Result<Option<QueuedMessage>, OutQueueError>;

    /// Everything waiting in a customer's lane, oldest first (for operators and tests).
    async fn lane(
        &self,
        channel: &str,
        customer: &str,
    ) -> Result<Vec<QueuedMessage>, OutQueueError>;

    /// The head is being sent: its record moves to `sending` (if it was `queued`), and the
    /// lane lease is extended. `false` when the grant is no longer valid (stop working the lane).
    async fn begin(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        now_ms: i64,
    ) -> Result<bool, OutQueueError>;

    /// The head left its lane: pops it (only if it is still the head), records the outcome
    /// (sent: wamid, the idempotency marker `sent:<wamid>`, the wamid → message index; failed:
    /// code and error), moves the record forward, and extends the grant if still held.
    /// Idempotent: settling the same message twice changes nothing the second time.
    async fn settle(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        outcome: &Settle,
        now_ms: i64,
    ) -> Result<(), OutQueueError>;

    /// Gives the lane back, to be taken again at `until_ms` (`reason` says why it waits;
    /// `None` when it is simply ready). With `bump` the head's attempt count goes up by one
    /// (only if `head` is still the head). Fenced: nothing happens when the grant is stale.
    /// An empty lane is dropped instead of made ready. Returns whether the grant was valid.
    async fn defer(
        &self,
        grant: &LaneGrant,
        until_ms: i64,
        reason: Option<WaitReason>,
        bump: Option<&QueuedMessage>,
    ) -> Result<bool, OutQueueError>;

    /// Gives the lane back ready now: [`OutQueueBackend::defer`] with no wait.
    async fn release(&self, grant: &LaneGrant, now_ms: i64) -> Result<bool, OutQueueError> {
        self.defer(grant, now_ms, None, None).await
    }

    /// A status webhook for message `id`: moves its record forward (never back; `failed` never
    /// after `read`), keeping `wamid` and `error` when given. `false` when nothing changed
    /// (unknown id, or not a move forward).
    async fn advance(
        &self,
        channel: &str,
        id: &str,
        status: MessageStatus,
        at_ms: i64,
        wamid: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Result<bool, OutQueueError>;

    /// The message id (outbox key) a provider message id belongs to, with its customer.
    async fn find_by_wamid(
        &self,
        channel: &str,
        wamid: &str,
    ) -> Result<Option<(String, String)>, OutQueueError>;

    /// One message's record.
    async fn record(&self, channel: &str, id: &str) -> Result<Option<OutRecord>, OutQueueError>;

    /// The newest `limit` records of a channel (newest first), only those at `status` if given.
    async fn list(
        &self,
        channel: &str,
        status: Option<MessageStatus>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<OutRecord>, OutQueueError>;

    /// Stores a broadcast whole (or nothing, on an error): `false` when its id exists.
    async fn create_broadcast(
        &self,
        channel: &str,
        broadcast: &NewBroadcast,
        now_ms: i64,
    ) -> Result<bool, OutQueueError>;

    /// One broadcast, with its counts.
    async fn broadcast(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<BroadcastRecord>, OutQueueError>;

    /// The ids of the channel's running broadcasts, oldest first.
    async fn running_broadcasts(&self, channel: &str) -> Result<Vec<String>, OutQueueError>;

    /// `n` recipients of a broadcast from index `from` (their JSON).
    async fn broadcast_recipients(
        &self,
        channel: &str,
        id: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<String>, OutQueueError>;

    /// Queues the next recipients' messages (`(customer, message)` each) if the broadcast is
    /// running and its cursor is still `cursor`; `None` when another feeder was first.
    async fn feed_broadcast(
        &self,
        channel: &str,
        id: &str,
        cursor: u64,
        items: &[(String, QueuedMessage)],
        now_ms: i64,
    ) -> Result<Option<usize>, OutQueueError>;

    /// Takes a broadcast off the running set (done, cancelled or gone).
    async fn retire_broadcast(&self, channel: &str, id: &str) -> Result<(), OutQueueError>;

    /// Cancels a running broadcast: nothing more is fed, and what is queued is skipped when its
    /// turn comes. The record after, `None` for an unknown id.
    async fn cancel_broadcast(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<BroadcastRecord>, OutQueueError>;

    /// Backlog, lanes ready / busy / waiting by reason, oldest message age.
    async fn stats(&self, channel: &str, now_ms: i64) -> Result<OutStats, OutQueueError>;
}

/// The outbound queue, Redis-backed or in memory; every [`OutQueueBackend`] method dispatches
/// to the backend (`enum_dispatch`: no boxing, no forwarding written by hand).
#[enum_dispatch(OutQueueBackend)]
#[derive(Clone, Debug)]
pub enum OutQueue {
    Redis(RedisOutQueue),
    Memory(MemoryOutQueue),
}
