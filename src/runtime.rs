//! Wiring shared by the commands: build the queue, stores, bot and sender a config asks for.

use crate::config::Config;
use crate::keys::Keys;
use crate::queue::{MemoryQueue, Queue, RedisQueue};

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

