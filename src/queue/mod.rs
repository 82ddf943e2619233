//! The queue behind the ingress and the workers: Redis Streams, or an in-memory twin that
//! behaves the same for one process (`coexist run` without `[redis]`, and bot unit tests).
//!
//! The contract is the [`QueueBackend`] trait (docs there), one file per backend; [`Queue`] is
//! an enum over the two, dispatched by `enum_dispatch`: two backends known at compile time,
//! async methods without boxing (svix's cache backends are the model).

pub mod memory;
pub mod redis;

pub use self::memory::MemoryQueue;
pub use self::redis::RedisQueue;
use enum_dispatch::enum_dispatch;

/// One event to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Configured channel id (or `_unrouted`).
    pub channel: String,
    /// Number of partitions of the channel.
    pub partitions: u32,
    /// Stable dedupe key of the event (`Event::id`).
    pub id: String,
    /// The normalized event JSON, stored as is.
    pub payload: String,
    /// Every id the payload gives for the customer, preferred first (`Event::contact.ids()`,
    /// or the conversation alone). Empty for account-level events (they go to partition 0).
    /// The queue keeps an alias map per channel so that one person stays one conversation
    /// (and one partition) when a later payload carries only one of these ids.
    pub contact_ids: Vec<String>,
}

/// What happened to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended to `partition`'s stream; `conversation` is the canonical conversation id
    /// (after alias resolution; empty for account-level events).
    Added {
        partition: u32,
        conversation: String,
        entry_id: String,
    },
    /// Seen before (within the dedupe TTL): not appended again.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis unreachable or answering with an error: the caller must not acknowledge the
    /// webhook (ingress answers 503 so the sender retries).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("queue: {0}")]
    Other(String),
    /// The partition lease is no longer held with this token (expired, or taken over): the
    /// worker must stop handling the partition; a newer owner re-handles what was not acked.
    #[error("lease on {channel} partition {partition} lost")]
    LeaseLost { channel: String, partition: u32 },
    /// `durability = "replicated"`: no replica acknowledged the write in time. It may be on
    /// the master only: the caller must not acknowledge it (ingress 503, send API 503).
    #[error("no replica acknowledged the write of {channel} within {timeout_ms} ms")]
    NotReplicated { channel: String, timeout_ms: u64 },
}

/// A held partition lease. `token` is the fencing token: it only ever grows per partition,
/// and every write a worker makes for the partition is checked against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub channel: String,
    pub partition: u32,
    pub owner: String,
    pub token: u64,
}

impl Lease {
    /// The value stored in the lease key: `<owner>:<token>`.
    pub fn value(&self) -> String {
        format!("{}:{}", self.owner, self.token)
    }
}

/// One entry handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stream entry id (`<ms>-<seq>`), what [`QueueBackend::ack`] takes.
    pub id: String,
    /// The normalized event JSON as enqueued (or a promoted timer's payload).
    pub payload: String,
    /// Canonical conversation ("" for account-level events).
    pub conversation: String,
    /// How many times the entry has been handed out, this time included (1 = first).
    pub deliveries: u64,
}

/// What `coexist queues` shows for one channel partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStats {
    /// Entries in the stream (acked entries are deleted, so: pending + not yet delivered).
    pub length: u64,
    /// Delivered to a worker, not yet acknowledged.
    pub pending: u64,
    /// Not yet delivered to any worker.
    pub lag: u64,
    /// Length of the channel's dead-letter stream (channel-level, same for every partition).
    pub dead: u64,
    /// Owner of the partition lease, if held.
    pub lease_owner: Option<String>,
    /// Armed timers of the partition.
    pub timers: u64,
}

/// One entry of a channel's dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Id in the dead-letter stream (what [`QueueBackend::replay_dead_letter`] takes).
    pub id: String,
    pub payload: String,
    pub conversation: String,
    pub error: String,
    pub partition: u32,
    /// Id the entry had in its partition stream.
    pub source_id: String,
}

/// A timer's ZSET member: `{"c": conversation, "e": payload}` as JSON (keys sorted, so the
/// same timer always gives the same member and re-arming overwrites its due time).
/// Promotion turns it back into a stream entry with fields `e` and `c`.
pub fn timer_member(payload: &str, conversation: &str) -> String {
    serde_json::json!({ "c": conversation, "e": payload }).to_string()
}

/// What a queue does, on either backend: one behaviour suite (`tests/queue_behaviour.rs`) runs
/// on both. Native `async fn`: every caller holds a concrete [`Queue`], so the futures stay
/// `Send` where the backend's are.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait QueueBackend {
    /// Enqueues every event of one webhook, each atomically deduplicated, in one round trip.
    /// Returns one outcome per input, in order; an error means nothing can be assumed durable.
    async fn enqueue(&self, batch: &[NewEvent]) -> Result<Vec<Enqueued>, QueueError>;

    /// [`QueueBackend::enqueue`] for a caller done with its events: a backend that hands them
    /// to another task (Redis's committer thread) takes them instead of copying them.
    async fn enqueue_owned(&self, batch: Vec<NewEvent>) -> Result<Vec<Enqueued>, QueueError> {
        self.enqueue(&batch).await
    }

    /// `durability = "replicated"`: waits until a replica has every write made so far to the
    /// node holding `channel`'s keys (`WAIT`); `NotReplicated` if none did in time. Nothing to
    /// wait for with `durability = "local"` or the embedded queue.
    async fn confirm_durable(&self, channel: &str) -> Result<(), QueueError>;

    /// Takes the partition's lease if it is free, with a new fencing token.
    async fn acquire_lease(
        &self,
        channel: &str,
        partition: u32,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, QueueError>;

    /// Extends the lease; `false` when it is no longer ours (stop handling the partition).
    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, QueueError>;

    /// Marks a worker process live for `ttl_ms` and returns how many are live: each worker
    /// takes its fair share (partitions / live workers), so joining or leaving rebalances.
    async fn heartbeat(&self, worker: &str, ttl_ms: u64) -> Result<usize, QueueError>;

    /// A worker leaves: the others' shares grow at their next round.
    async fn leave(&self, worker: &str) -> Result<(), QueueError>;

    /// Gives the lease up (only if still ours); `true` when released.
    async fn release_lease(&self, lease: &Lease) -> Result<bool, QueueError>;

    /// Creates the partition's consumer group (and stream) if missing.
    async fn ensure_group(&self, channel: &str, partition: u32) -> Result<(), QueueError>;

    /// Next entries of the leased partition, in order: first every entry handed out before and
    /// not acknowledged (any previous owner's, or ours), then new ones, waiting up to
    /// `block_ms` for them (0 = do not wait). Call it again only after acking or
    /// dead-lettering what the previous call returned, or those entries come back first.
    /// `Err(LeaseLost)` when the lease is not ours.
    async fn read(
        &self,
        lease: &Lease,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Entry>, QueueError>;

    /// Acknowledges (and deletes) one entry, fenced: `false` when the lease is not ours (the
    /// new owner handles the entry again) or the entry was not pending.
    async fn ack(&self, lease: &Lease, entry_id: &str) -> Result<bool, QueueError>;

    /// Acknowledges (and deletes) handled entries in one round trip, fenced: `None` when the
    /// lease is not ours (the new owner handles them again), else how many were pending.
    async fn ack_many(
        &self,
        lease: &Lease,
        entry_ids: &[&str],
    ) -> Result<Option<usize>, QueueError>;

    /// Moves one entry to the channel's dead-letter stream with the error, then acks it;
    /// fenced like [`QueueBackend::ack`].
    async fn dead_letter(
        &self,
        lease: &Lease,
        entry: &Entry,
        error: &str,
    ) -> Result<bool, QueueError>;

    /// Disarms `cancel` and arms `arm` (member from [`timer_member`], due ms) in one atomic
    /// step, unfenced: for tools and tests. Workers never call it: a handled event's timers
    /// change inside its fenced commit, together with the state they follow from.
    async fn replace_timers(
        &self,
        channel: &str,
        partition: u32,
        cancel: &[String],
        arm: &[(String, u64)],
    ) -> Result<(), QueueError>;

    /// Moves up to `limit` timers due at `now_ms` into the partition stream (earliest first),
    /// atomically and fenced. Returns how many moved; `Err(LeaseLost)` when not ours.
    async fn promote_due_timers(
        &self,
        lease: &Lease,
        now_ms: u64,
        limit: usize,
    ) -> Result<usize, QueueError>;

    /// Length, pending, lag, dead letters, lease owner and timers of one partition.
    async fn partition_stats(
        &self,
        channel: &str,
        partition: u32,
    ) -> Result<PartitionStats, QueueError>;

    /// The oldest `count` dead letters of a channel.
    async fn dead_letters(
        &self,
        channel: &str,
        count: usize,
    ) -> Result<Vec<DeadLetter>, QueueError>;

    /// Puts a dead letter back at the tail of its partition stream and removes it from the
    /// dead-letter stream. Returns the new entry id, `None` when no such dead letter.
    async fn replay_dead_letter(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<String>, QueueError>;

    /// [`QueueBackend::conversation_of`] for many ids in one round trip, in order.
    async fn conversations_of(
        &self,
        channel: &str,
        contacts: &[String],
    ) -> Result<Vec<Option<String>>, QueueError>;

    /// Readiness: is the backing store reachable?
    async fn ping(&self) -> Result<(), QueueError>;

    /// The canonical conversation an id of a customer belongs to on a channel (the alias map
    /// ingress keeps: one person, one conversation), `None` when the id was never seen.
    async fn conversation_of(
        &self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<String>, QueueError> {
        let mut one = self
            .conversations_of(channel, std::slice::from_ref(&contact.to_string()))
            .await?;
        Ok(one.pop().flatten())
    }
}

/// The queue, Redis-backed or in memory; every [`QueueBackend`] method dispatches to the
/// backend (`enum_dispatch`: no boxing, no forwarding written by hand).
#[enum_dispatch(QueueBackend)]
#[derive(Clone)]
pub enum Queue {
    Redis(RedisQueue),
    Memory(MemoryQueue),
}
