//! Redis Streams queue: one stream per channel partition; dedupe and alias resolution in one
//! Lua script call per channel and round trip (see [`enqueue`]), sent by a thread of its own
//! (see [`committer`]).

mod committer;
mod enqueue;

use super::{
    DeadLetter, Enqueued, Entry, Lease, NewEvent, PartitionStats, QueueBackend, QueueError,
};
use crate::config::Durability;
use crate::keys::{Keys, GROUP};
use crate::redis_conn::{ConnectOptions, Endpoint, RedisConn};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamId, StreamInfoGroupsReply, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, RedisError};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// How long one command (or pipeline) may take before the caller gets an error. Ingress
/// answers 503 on it, so it must stay well under Meta's webhook timeout.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Extra response time a blocking read gets on top of its BLOCK time.
const BLOCK_MARGIN: Duration = Duration::from_secs(5);

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(include_str!(concat!("../lua/", $file))));
    };
}

script!(ENQUEUE, "enqueue.lua");
script!(LEASE_ACQUIRE, "lease_acquire.lua");
script!(LEASE_RENEW, "lease_renew.lua");
script!(LEASE_RELEASE, "lease_release.lua");
script!(CLAIM, "claim.lua");
script!(ACK, "ack.lua");
script!(DEAD_LETTER, "dead_letter.lua");
script!(PROMOTE_TIMERS, "promote_timers.lua");
script!(REPLAY_DEAD_LETTER, "replay_dead_letter.lua");
script!(HEARTBEAT, "heartbeat.lua");

/// The Redis-backed queue. Cheap to clone: every clone shares one multiplexed connection,
/// which pipelines concurrent callers on one socket and reconnects after Redis restarts.
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where blocking-read connections come from.
    blocking_source: BlockingSource,
    conn: RedisConn,
    keys: Keys,
    stream_maxlen: u64,
    /// `durability = "replicated"`: how long a write may wait for one replica (`WAIT 1 t`).
    replication_timeout_ms: Option<u64>,
    /// Idle connections for blocking reads: a blocked XREADGROUP would stall every other
    /// command on a shared socket, and needs a response timeout longer than its BLOCK.
    /// A read takes one out and puts it back only after a clean answer.
    blocking: Mutex<Vec<BlockingConn>>,
    /// Enqueues waiting for the round trip in flight go out together in the next one, sent
    /// from the committer's own thread and connection.
    committer: committer::Committer,
}

/// Opens connections for blocking reads.
enum BlockingSource {
    Single(redis::Client),
    /// Seed nodes: each blocking connection is a cluster connection of its own (it routes the
    /// read to the stream's master and follows it through a failover).
    Cluster(Vec<String>),
}

/// A connection a blocking read has to itself.
enum BlockingConn {
    Single(MultiplexedConnection),
    /// Built with a response timeout for reads that block `block_ms`.
    Cluster {
        conn: ClusterConnection,
        block_ms: u64,
    },
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisQueue")
            .field("keys", &self.inner.keys)
            .finish()
    }
}

impl RedisQueue {
    /// Connects to one node (failing if Redis is unreachable now) and loads the scripts.
    pub async fn connect(
        url: &str,
        keys: Keys,
        dedupe_ttl_secs: u64,
        stream_maxlen: u64,
    ) -> Result<RedisQueue, QueueError> {
        Self::connect_to(
            &Endpoint::Single(url.to_string()),
            keys,
            dedupe_ttl_secs,
            stream_maxlen,
        )
        .await
    }

    /// Connects to one node or a cluster (failing if Redis is unreachable now) and loads the
    /// scripts.
    pub async fn connect_to(
        endpoint: &Endpoint,
        keys: Keys,
        dedupe_ttl_secs: u64,
        stream_maxlen: u64,
    ) -> Result<RedisQueue, QueueError> {
        let blocking_source = match endpoint {
            Endpoint::Single(url) => BlockingSource::Single(redis::Client::open(url.as_str())?),
            Endpoint::Cluster(seeds) => BlockingSource::Cluster(seeds.clone()),
        };
        let options = ConnectOptions {
            response_timeout: RESPONSE_TIMEOUT,
            connection_timeout: CONNECT_TIMEOUT,
        };
        let mut conn = RedisConn::connect(endpoint, options).await?;
        ENQUEUE.load_async(&mut conn).await?;
        let rounds = enqueue::Rounds {
            keys: keys.clone(),
            dedupe_ttl_secs: dedupe_ttl_secs.max(1),
            stream_maxlen,
        };
        let committer = committer::Committer::start(endpoint, options, rounds).await?;
        Ok(RedisQueue {
            inner: Arc::new(Inner {
                blocking_source,
                conn,
                keys,
                stream_maxlen,
                replication_timeout_ms: None,
                blocking: Mutex::new(Vec::new()),
                committer,
            }),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// `[redis] durability`: with `Replicated`, [`QueueBackend::enqueue`] and
    /// [`RedisQueue::confirm_durable_channels`] wait for one replica (`WAIT 1 timeout_ms`). Call before
    /// the queue is cloned.
    pub fn with_durability(mut self, durability: Durability, timeout_ms: u64) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("with_durability before any clone");
        inner.replication_timeout_ms =
            (durability == Durability::Replicated).then_some(timeout_ms.max(1));
        inner
            .committer
            .set_replication_timeout(inner.replication_timeout_ms);
        self
    }

    /// Waits for one replica of each node holding one of `channels` to have every write made
    /// so far on the shared connection (the WAIT runs on the connection that carried the
    /// writes, so it covers them; enqueues wait on their own, see [`enqueue::Rounds`]). Nothing
    /// to do with `durability = "local"`.
    pub async fn confirm_durable_channels<'a>(
        &self,
        channels: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), QueueError> {
        match self.inner.replication_timeout_ms {
            None => Ok(()),
            Some(timeout_ms) => {
                confirm_durable_on(&self.conn(), &self.inner.keys, timeout_ms, channels).await
            }
        }
    }

    /// The shared multiplexed connection (cheap clone).
    pub(crate) fn conn(&self) -> RedisConn {
        self.inner.conn.clone()
    }
}

/// One WAIT per slot of `channels` on `conn`, all at once (on a cluster, several masters wait
/// in parallel; on one node each WAIT after the first finds the replica already there): Err
/// unless one replica has every write `conn` made so far.
async fn confirm_durable_on<'a>(
    conn: &RedisConn,
    keys: &Keys,
    timeout_ms: u64,
    channels: impl IntoIterator<Item = &'a str>,
) -> Result<(), QueueError> {
    let mut channels: Vec<&str> = channels.into_iter().collect();
    channels.sort_unstable();
    channels.dedup();
    let waits = channels.iter().map(|ch| {
        let mut conn = conn.clone();
        let key = keys.aliases(ch);
        async move {
            let acked = conn.wait_for_replicas(&key, 1, timeout_ms).await?;
            if acked < 1 {
                return Err(QueueError::NotReplicated {
                    channel: ch.to_string(),
                    timeout_ms,
                });
            }
            Ok(())
        }
    });
    for r in futures_util::future::join_all(waits).await {
        r?;
    }
    Ok(())
}

/// Consumer side: leases, reads, acks, dead letters, timers, stats.
impl RedisQueue {
    /// Marks `worker` live for `ttl_ms` and returns how many workers are live.
    pub(crate) async fn beat(
        &self,
        worker: &str,
        ttl_ms: u64,
        live: bool,
    ) -> Result<usize, QueueError> {
        let n: i64 = HEARTBEAT
            .key(self.inner.keys.workers())
            .arg(worker)
            .arg(ttl_ms.max(1))
            .arg(if live { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n.max(0) as usize)
    }

    /// Fenced XAUTOCLAIM of every pending entry (claim.lua).
    async fn claim(
        &self,
        lease: &Lease,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        let keys = &self.inner.keys;
        let rows: Result<Vec<(String, String, String, u64)>, RedisError> = CLAIM
            .key(keys.lease(&lease.channel, lease.partition))
            .key(keys.stream(&lease.channel, lease.partition))
            .arg(lease.value())
            .arg(GROUP)
            .arg(consumer)
            .arg(count)
            .invoke_async(&mut self.conn())
            .await;
        match rows {
            Ok(rows) => Ok(rows
                .into_iter()
                .map(|(id, payload, conversation, deliveries)| Entry {
                    id,
                    payload,
                    conversation,
                    deliveries,
                })
                .collect()),
            Err(e) if is_lease_lost(&e) => Err(lease_lost(lease)),
            Err(e) => Err(e.into()),
        }
    }

    /// XREADGROUP `>` on a dedicated connection (BLOCK only when `block_ms > 0`).
    async fn read_new(
        &self,
        lease: &Lease,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Entry>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS")
            .arg(self.inner.keys.stream(&lease.channel, lease.partition))
            .arg(">");
        let (mut conn, mut pooled) = self.blocking_connection(block_ms).await?;
        let reply: Option<StreamReadReply> = loop {
            let answer = match &mut conn {
                BlockingConn::Single(c) => {
                    c.set_response_timeout(Duration::from_millis(block_ms) + BLOCK_MARGIN);
                    cmd.query_async(c).await
                }
                BlockingConn::Cluster { conn, .. } => cmd.query_async(conn).await,
            };
            match answer {
                Ok(reply) => break reply,
                // A pooled connection may have died idle (Redis restarted): every pooled one
                // is suspect, so drop them all and try once on a fresh connection. Retrying is
                // safe: if Redis did deliver, the entries sit in the PEL for the next claim.
                Err(e) if pooled && (e.is_unrecoverable_error() || e.is_io_error()) => {
                    self.inner
                        .blocking
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    conn = self.new_blocking_connection(block_ms).await?;
                    pooled = false;
                }
                // On error the connection is dropped, not pooled: its state is unknown.
                Err(e) => return Err(e.into()),
            }
        };
        self.inner
            .blocking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|sid| Entry {
                payload: field(&sid, "e"),
                conversation: field(&sid, "c"),
                id: sid.id,
                deliveries: 1,
            })
            .collect())
    }

    /// An idle pooled connection (`true`) or a new one (`false`) for reads blocking `block_ms`.
    async fn blocking_connection(&self, block_ms: u64) -> Result<(BlockingConn, bool), QueueError> {
        let idle = {
            let mut pool = self
                .inner
                .blocking
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // A cluster connection's response timeout is fixed when it is built: only one
            // built for this block time fits.
            let fits = |c: &BlockingConn| match c {
                BlockingConn::Single(_) => true,
                BlockingConn::Cluster { block_ms: b, .. } => *b == block_ms,
            };
            pool.iter().rposition(fits).map(|i| pool.swap_remove(i))
        };
        match idle {
            Some(conn) => Ok((conn, true)),
            None => Ok((self.new_blocking_connection(block_ms).await?, false)),
        }
    }

    async fn new_blocking_connection(&self, block_ms: u64) -> Result<BlockingConn, QueueError> {
        match &self.inner.blocking_source {
            BlockingSource::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                Ok(BlockingConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            BlockingSource::Cluster(seeds) => {
                let client = crate::redis_conn::cluster_client(
                    seeds,
                    Duration::from_millis(block_ms) + BLOCK_MARGIN,
                    CONNECT_TIMEOUT,
                )?;
                Ok(BlockingConn::Cluster {
                    conn: client.get_async_connection().await?,
                    block_ms,
                })
            }
        }
    }
}

fn dead_letter_of(sid: &StreamId) -> DeadLetter {
    DeadLetter {
        id: sid.id.clone(),
        payload: field(sid, "e"),
        conversation: field(sid, "c"),
        error: field(sid, "error"),
        partition: field(sid, "partition").parse().unwrap_or(0),
        source_id: field(sid, "source"),
    }
}

/// Is this error Redis saying a consumer group or its stream is gone (restart without
/// persistence)? Also when raised inside a script.
fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// A fenced script refused: the lease is not ours.
fn is_lease_lost(e: &RedisError) -> bool {
    e.code() == Some("LEASELOST") || e.to_string().contains("LEASELOST")
}

fn lease_lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost {
        channel: lease.channel.clone(),
        partition: lease.partition,
    }
}

/// Field `name` of a stream entry as a string ("" when absent).
fn field(sid: &StreamId, name: &str) -> String {
    sid.get::<String>(name).unwrap_or_default()
}

/// The owner part of a lease value `<owner>:<token>`.
fn owner_of(value: &str) -> String {
    match value.rsplit_once(':') {
        Some((owner, _)) => owner.to_string(),
        None => value.to_string(),
    }
}

impl QueueBackend for RedisQueue {
    /// Enqueues a webhook's events: in the next round trip to Redis, together with every other
    /// caller's that arrived while the previous one was in flight (group commit, one script
    /// call per channel). Returns one outcome per input, in order. Any error means some events
    /// may not be durable: the caller must not acknowledge the webhook (a retry is safe, dedupe
    /// makes it land once).
    async fn enqueue(&self, batch: &[NewEvent]) -> Result<Vec<Enqueued>, QueueError> {
        self.enqueue_owned(batch.to_vec()).await
    }

    /// The events move into the committer's line (no copy).
    async fn enqueue_owned(&self, batch: Vec<NewEvent>) -> Result<Vec<Enqueued>, QueueError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.committer.commit(batch).await
    }

    async fn acquire_lease(
        &self,
        channel: &str,
        partition: u32,
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, QueueError> {
        let keys = &self.inner.keys;
        let token: Option<u64> = LEASE_ACQUIRE
            .key(keys.lease(channel, partition))
            .key(keys.fence(channel, partition))
            .arg(owner)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(token.map(|token| Lease {
            channel: channel.to_string(),
            partition,
            owner: owner.to_string(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, QueueError> {
        let renewed: i64 = LEASE_RENEW
            .key(self.inner.keys.lease(&lease.channel, lease.partition))
            .arg(lease.value())
            .arg(ttl_ms.max(1))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<bool, QueueError> {
        let released: i64 = LEASE_RELEASE
            .key(self.inner.keys.lease(&lease.channel, lease.partition))
            .arg(lease.value())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(released == 1)
    }

    async fn ensure_group(&self, channel: &str, partition: u32) -> Result<(), QueueError> {
        let stream = self.inner.keys.stream(channel, partition);
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        lease: &Lease,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Entry>, QueueError> {
        let count = count.max(1);
        // Recreating the group once covers a Redis restart without persistence.
        let claimed = match self.claim(lease, consumer, count).await {
            Err(QueueError::Redis(e)) if is_nogroup(&e) => {
                self.ensure_group(&lease.channel, lease.partition).await?;
                self.claim(lease, consumer, count).await?
            }
            other => other?,
        };
        if !claimed.is_empty() {
            return Ok(claimed);
        }
        match self.read_new(lease, consumer, count, block_ms).await {
            Err(QueueError::Redis(e)) if is_nogroup(&e) => {
                self.ensure_group(&lease.channel, lease.partition).await?;
                self.read_new(lease, consumer, count, block_ms).await
            }
            other => other,
        }
    }

    async fn ack(&self, lease: &Lease, entry_id: &str) -> Result<bool, QueueError> {
        Ok(self.ack_many(lease, &[entry_id]).await? == Some(1))
    }

    /// Acks several entries in one round trip; `None` when the lease is not ours.
    async fn ack_many(
        &self,
        lease: &Lease,
        entry_ids: &[&str],
    ) -> Result<Option<usize>, QueueError> {
        if entry_ids.is_empty() {
            return Ok(Some(0));
        }
        let keys = &self.inner.keys;
        let mut invocation = ACK.key(keys.lease(&lease.channel, lease.partition));
        invocation
            .key(keys.stream(&lease.channel, lease.partition))
            .arg(lease.value())
            .arg(GROUP);
        for id in entry_ids {
            invocation.arg(*id);
        }
        let acked: i64 = invocation.invoke_async(&mut self.conn()).await?;
        Ok((acked >= 0).then_some(acked as usize))
    }

    async fn dead_letter(
        &self,
        lease: &Lease,
        entry: &Entry,
        error: &str,
    ) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let moved: i64 = DEAD_LETTER
            .key(keys.lease(&lease.channel, lease.partition))
            .key(keys.stream(&lease.channel, lease.partition))
            .key(keys.dead_letters(&lease.channel))
            .arg(lease.value())
            .arg(GROUP)
            .arg(&entry.id)
            .arg(&entry.payload)
            .arg(&entry.conversation)
            .arg(error)
            .arg(lease.partition)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(moved == 1)
    }

    /// Disarms `cancel` and arms `arm` (member, due ms) in one atomic round trip.
    async fn replace_timers(
        &self,
        channel: &str,
        partition: u32,
        cancel: &[String],
        arm: &[(String, u64)],
    ) -> Result<(), QueueError> {
        let key = self.inner.keys.timers(channel, partition);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !cancel.is_empty() {
            pipe.cmd("ZREM").arg(&key).arg(cancel).ignore();
        }
        if !arm.is_empty() {
            let cmd = pipe.cmd("ZADD").arg(&key);
            for (member, due) in arm {
                cmd.arg(*due).arg(member);
            }
            cmd.ignore();
        }
        if cancel.is_empty() && arm.is_empty() {
            return Ok(());
        }
        let () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn promote_due_timers(
        &self,
        lease: &Lease,
        now_ms: u64,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let keys = &self.inner.keys;
        let moved: Result<usize, RedisError> = PROMOTE_TIMERS
            .key(keys.lease(&lease.channel, lease.partition))
            .key(keys.timers(&lease.channel, lease.partition))
            .key(keys.stream(&lease.channel, lease.partition))
            .arg(lease.value())
            .arg(now_ms)
            .arg(limit)
            .arg(self.inner.stream_maxlen)
            .invoke_async(&mut self.conn())
            .await;
        match moved {
            Err(e) if is_lease_lost(&e) => Err(lease_lost(lease)),
            other => Ok(other?),
        }
    }

    async fn partition_stats(
        &self,
        channel: &str,
        partition: u32,
    ) -> Result<PartitionStats, QueueError> {
        let keys = &self.inner.keys;
        let stream = keys.stream(channel, partition);
        let mut conn = self.conn();
        let (length, dead, lease, timers): (u64, u64, Option<String>, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("XLEN")
            .arg(keys.dead_letters(channel))
            .cmd("GET")
            .arg(keys.lease(channel, partition))
            .cmd("ZCARD")
            .arg(keys.timers(channel, partition))
            .query_async(&mut conn)
            .await?;
        let groups: Result<StreamInfoGroupsReply, RedisError> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await;
        let group = match groups {
            Ok(reply) => reply.groups.into_iter().find(|g| g.name == GROUP),
            // No stream yet: nothing pending, nothing to deliver.
            Err(e) if e.to_string().contains("no such key") => None,
            Err(e) => return Err(e.into()),
        };
        let (pending, lag) = match group {
            // Acked entries are deleted, so the stream holds exactly pending + undelivered:
            // when Redis cannot tell the lag, that difference is it.
            Some(g) => {
                let pending = g.pending as u64;
                (
                    pending,
                    g.lag
                        .map(|l| l as u64)
                        .unwrap_or(length.saturating_sub(pending)),
                )
            }
            None => (0, length),
        };
        Ok(PartitionStats {
            length,
            pending,
            lag,
            dead,
            lease_owner: lease.as_deref().map(owner_of),
            timers,
        })
    }

    async fn dead_letters(
        &self,
        channel: &str,
        count: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.inner.keys.dead_letters(channel))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn())
            .await?;
        Ok(reply.ids.iter().map(dead_letter_of).collect())
    }

    async fn replay_dead_letter(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<String>, QueueError> {
        let keys = &self.inner.keys;
        let dlq = keys.dead_letters(channel);
        // The partition (and so the stream key the script must declare) is in the entry.
        let found: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&dlq)
            .arg(id)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        let Some(dl) = found.ids.first().map(dead_letter_of) else {
            return Ok(None);
        };
        let new_id: Option<String> = REPLAY_DEAD_LETTER
            .key(&dlq)
            .key(keys.stream(channel, dl.partition))
            .arg(id)
            .arg(dl.partition)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(new_id)
    }

    async fn conversations_of(
        &self,
        channel: &str,
        contacts: &[String],
    ) -> Result<Vec<Option<String>>, QueueError> {
        if contacts.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.inner.keys.aliases(channel))
            .arg(contacts)
            .query_async(&mut self.conn())
            .await?;
        // `<partition>:<canonical conversation>`
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|v| v.split_once(':').map(|(_, c)| c.to_string())))
            .collect())
    }

    /// Readiness probe.
    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn confirm_durable(&self, channel: &str) -> Result<(), QueueError> {
        self.confirm_durable_channels([channel]).await
    }

    async fn heartbeat(&self, worker: &str, ttl_ms: u64) -> Result<usize, QueueError> {
        self.beat(worker, ttl_ms, true).await
    }

    async fn leave(&self, worker: &str) -> Result<(), QueueError> {
        self.beat(worker, 60_000, false).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_owner_is_everything_before_the_last_colon() {
        assert_eq!(owner_of("host:42:abc:7"), "host:42:abc");
        assert_eq!(owner_of("w:1"), "w");
        assert_eq!(owner_of("odd"), "odd");
    }

    #[test]
    fn every_script_documents_its_keys_and_args() {
        for src in [
            include_str!("../lua/enqueue.lua"),
            include_str!("../lua/lease_acquire.lua"),
            include_str!("../lua/lease_renew.lua"),
            include_str!("../lua/lease_release.lua"),
            include_str!("../lua/claim.lua"),
            include_str!("../lua/ack.lua"),
            include_str!("../lua/dead_letter.lua"),
            include_str!("../lua/promote_timers.lua"),
            include_str!("../lua/replay_dead_letter.lua"),
        ] {
            assert!(
                src.contains("-- KEYS[1]") && src.contains("-- ARGV[1]"),
                "{src}"
            );
        }
    }
}
