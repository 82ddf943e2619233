//! Wiring shared by the commands: build the queue, stores, bot and sender a config asks for.

use crate::bot::echo::EchoBot;
use crate::bot::forward::ForwardBot;
use crate::bot::{Bot, NoBot};
use crate::config::{BotMode, Config};
use crate::conversation::{ConversationStore, MemoryConversationStore, MemoryLeases, RedisConversationStore};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::queue::{MemoryQueue, Queue, RedisQueue};
use crate::worker::Worker;
use std::sync::Arc;
use std::time::Duration;

/// The queue of this process: Redis when `[redis]` is configured, else the embedded twin.
pub async fn connect_queue(config: &Config) -> anyhow::Result<Queue> {
    Ok(match &config.redis {
        Some(r) => Queue::Redis(
            RedisQueue::connect(r.url.expose(), Keys::new(r.prefix.clone()), r.dedupe_ttl_secs, r.stream_maxlen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to redis: {e}"))?,
        ),
        None => {
            tracing::info!("no [redis] table: using the embedded in-memory queue (one process, not durable)");
            Queue::Memory(MemoryQueue::with_options(8 * 24 * 3600, 0))
        }
    })
}

/// The conversation store next to `queue`: the same Redis, or the in-memory twin.
pub fn conversation_store(config: &Config, queue: &Queue) -> ConversationStore {
    match queue {
        Queue::Redis(q) => {
            RedisConversationStore::new(q.conn(), q.keys().clone(), config.worker.conversation_ttl_secs).into()
        }
        Queue::Memory(_) => MemoryConversationStore::new(
            MemoryLeases::new(),
            Duration::from_secs(config.worker.conversation_ttl_secs),
        )
        .into(),
    }
}

/// The configured bot (`[bot] mode`).
pub fn bot(config: &Config, worker_id: &str) -> Arc<dyn Bot> {
    match config.bot.mode {
        BotMode::Echo => Arc::new(EchoBot),
        BotMode::None => Arc::new(NoBot),
        BotMode::Forward => Arc::new(ForwardBot::new(
            config.bot.url.clone().expect("validated: forward has a url"),
            config.bot.secret.clone().expect("validated: forward has a secret"),
            Duration::from_millis(config.bot.timeout_ms),
            worker_id.to_string(),
        )),
    }
}

/// A worker for this process, sharing `queue` (and its Redis connection).
pub fn worker(config: &Config, queue: Queue, metrics: Metrics, id: String) -> anyhow::Result<Worker> {
    let store = conversation_store(config, &queue);
    let outbound = outbound(config, &queue, metrics.clone())?;
    Ok(Worker::new(config, queue, store, bot(config, &id), outbound, metrics, id))
}

/// The sender next to `queue`: outbox and rate limits in the same Redis, or in memory.
pub fn outbound(config: &Config, queue: &Queue, metrics: Metrics) -> anyhow::Result<Outbound> {
    let connection = match queue {
        Queue::Redis(q) => Some(q.conn()),
        Queue::Memory(_) => None,
    };
    Outbound::new(config, connection, metrics).map_err(|e| anyhow::anyhow!("cannot set up the sender: {e}"))
}

/// The outbox a stand-alone ingress (`serve`) records statuses of our own sends into: the
/// workers' outbox in the same Redis. With the in-memory queue there is no worker in a
/// `serve` process, so nothing to tell.
pub fn ingress_outbox(queue: &Queue) -> Option<crate::outbound::Outbox> {
    match queue {
        Queue::Redis(q) => Some(crate::outbound::Outbox::redis(
            q.conn(),
            q.keys().clone(),
            crate::outbound::OutboxOptions::default(),
        )),
        Queue::Memory(_) => None,
    }
}
