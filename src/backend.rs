//! Where this process keeps its queues and stores, chosen once at start-up: one Redis (a node
//! or a cluster) or the embedded in-memory twins. Every store is built here from that one
//! handle, so no other module reaches into the queue's Redis connection, and the memory twins
//! that must agree (the store fences on the memory queue's leases) are wired in one place.

use crate::config::Config;
use crate::conversation::{
    ConversationStore, MemoryConversationStore, MemoryLeases, RedisConversationStore,
};
use crate::keys::Keys;
use crate::media::HeldUploads;
use crate::outbound::queue::RedisOutQueue;
use crate::outbound::{OutQueue, OutQueueOptions, Outbox, OutboxOptions, RateLimiter};
use crate::queue::{MemoryQueue, Queue};
use crate::redis_conn::RedisConn;
use std::time::Duration;

/// The backend of one process: build it once (`runtime::connect`), then ask it for stores.
#[derive(Clone)]
pub struct Backend {
    queue: Queue,
}

impl Backend {
    /// The backend behind a connected queue: its Redis, or the embedded queue.
    pub fn new(queue: Queue) -> Backend {
        Backend { queue }
    }

    /// The embedded mode with a fresh in-memory queue (one process; tests and tools).
    pub fn memory() -> Backend {
        Backend::new(Queue::Memory(MemoryQueue::new()))
    }

    /// The inbound queue (cheap clone: the same connection or the same memory).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// `true` for the embedded in-memory mode: nothing is shared with other processes.
    pub fn is_embedded(&self) -> bool {
        matches!(self.queue, Queue::Memory(_))
    }

    /// The key builder every store of this backend uses (the `[redis] prefix`).
    pub fn keys(&self) -> Keys {
        match &self.queue {
            Queue::Redis(q) => q.keys().clone(),
            Queue::Memory(_) => Keys::default(),
        }
    }

    /// The Redis connection, for the few writes that span several stores in one script (the
    /// worker's commit). `None` in the embedded mode.
    pub(crate) fn redis(&self) -> Option<RedisConn> {
        match &self.queue {
            Queue::Redis(q) => Some(q.conn()),
            Queue::Memory(_) => None,
        }
    }

    /// The conversation store: Redis, or memory fenced by the embedded queue's own leases
    /// (expiry and release included). In memory every call makes a new, empty store: build it
    /// once and share it (the worker and the test kit do).
    pub(crate) fn conversation_store(&self, config: &Config) -> ConversationStore {
        let ttl_secs = config.worker.conversation_ttl_secs;
        match &self.queue {
            Queue::Redis(q) => {
                RedisConversationStore::new(q.conn(), q.keys().clone(), ttl_secs).into()
            }
            Queue::Memory(q) => MemoryConversationStore::new(
                MemoryLeases::of_queue(q.clone()),
                Duration::from_secs(ttl_secs),
            )
            .into(),
        }
    }

    /// The outbox (idempotency keys and lifecycle records of sent messages). In memory it is
    /// a new one: the process keeps the one it builds (the worker's `Outbound`).
    pub(crate) fn outbox(&self, options: OutboxOptions) -> Outbox {
        match &self.queue {
            Queue::Redis(q) => Outbox::redis(q.conn(), q.keys().clone(), options),
            Queue::Memory(_) => Outbox::memory(self.keys(), options),
        }
    }

    /// The workers' outbox as another process sees it (a `serve` ingress recording statuses
    /// of our sends, operator commands); `None` in the embedded mode, where it lives inside
    /// the `run` process.
    pub fn shared_outbox(&self) -> Option<Outbox> {
        (!self.is_embedded()).then(|| self.outbox(OutboxOptions::default()))
    }

    /// The send-rate limiter (channel buckets, pair gaps, messaging-limit reach). In memory a
    /// new one each call, like the outbox: the process keeps the one its `Outbound` built.
    pub(crate) fn rate_limiter(&self) -> RateLimiter {
        match &self.queue {
            Queue::Redis(q) => RateLimiter::redis(q.conn(), q.keys().clone()),
            Queue::Memory(_) => RateLimiter::memory(self.keys()),
        }
    }

    /// The outbound queue in Redis; `None` in the embedded mode (the `run` process's worker
    /// owns the memory one).
    pub fn shared_out_queue(&self, options: OutQueueOptions) -> Option<OutQueue> {
        match &self.queue {
            Queue::Redis(q) => Some(OutQueue::Redis(RedisOutQueue::new(
                q.conn(),
                q.keys().clone(),
                options,
            ))),
            Queue::Memory(_) => None,
        }
    }

    /// Where a Personal channel holds uploaded files until they are sent (`ttl_secs`).
    pub(crate) fn held_uploads(&self, ttl_secs: u64) -> HeldUploads {
        match &self.queue {
            Queue::Redis(q) => HeldUploads::redis(q.conn(), q.keys().clone(), ttl_secs),
            Queue::Memory(_) => HeldUploads::memory(ttl_secs),
        }
    }
}
