//! The queue behind the ingress and the workers: Redis Streams, or an in-memory twin that
//! behaves the same for one process (`coexist run` without `[redis]`, and bot unit tests).
//!
//! [`Queue`] is an enum rather than a trait object: two backends, known at compile time,
//! and async methods without boxing.

pub mod memory;
pub mod redis;

pub use self::memory::MemoryQueue;
pub use self::redis::RedisQueue;

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
    Added { partition: u32, conversation: String, entry_id: String },
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
}

/// The queue, Redis-backed or in memory.
#[derive(Clone)]
pub enum Queue {
    Redis(RedisQueue),
    Memory(MemoryQueue),
}

impl Queue {
    /// Enqueues every event of one webhook, each atomically deduplicated, in one round trip.
    /// Returns one outcome per input, in order; an error means nothing can be assumed durable.
    pub async fn enqueue(&self, batch: &[NewEvent]) -> Result<Vec<Enqueued>, QueueError> {
        match self {
            Queue::Redis(q) => q.enqueue(batch).await,
            Queue::Memory(q) => q.enqueue(batch).await,
        }
    }

    /// Readiness: is the backing store reachable?
    pub async fn ping(&self) -> Result<(), QueueError> {
        match self {
            Queue::Redis(q) => q.ping().await,
            Queue::Memory(_) => Ok(()),
        }
    }
}
