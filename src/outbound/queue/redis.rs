//! The outbound queue in Redis: lanes are lists, ready/busy lanes sorted sets, records hashes
//! (see `lua/out_*.lua` for every multi-step change).

use super::{
    broadcast_of, BroadcastRecord, HistoryEntry, Idempotency, LaneGrant, MessageStatus,
    NewBroadcast, OutQueueBackend, OutQueueError, OutQueueOptions, OutRecord, OutStats,
    QueuedMessage, Settle, Submitted, Taken, WaitReason,
};
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use std::collections::HashMap;
use std::sync::LazyLock;

/// A script of `lua/`, with the helpers (`lib_*.lua`) it uses prepended.
macro_rules! out_script {
    ($file:literal $(, $lib:literal)*) => {
        LazyLock::new(|| {
            redis::Script::new(concat!(
                $(include_str!(concat!("../../lua/lib_", $lib, ".lua")), "\n",)*
                include_str!(concat!("../../lua/", $file))
            ))
        })
    };
}

static PUSH: LazyLock<redis::Script> = out_script!("out_push.lua", "push");
static SUBMIT: LazyLock<redis::Script> = out_script!("out_submit.lua", "push");
static BC_CREATE: LazyLock<redis::Script> = out_script!("bc_create.lua");
static BC_FEED: LazyLock<redis::Script> = out_script!("bc_feed.lua", "push");
static BC_CANCEL: LazyLock<redis::Script> = out_script!("bc_cancel.lua");
static TAKE: LazyLock<redis::Script> = out_script!("out_take.lua");
static BEGIN: LazyLock<redis::Script> = out_script!("out_begin.lua", "move");
static SETTLE: LazyLock<redis::Script> = out_script!("out_settle.lua", "move", "head");
static DEFER: LazyLock<redis::Script> = out_script!("out_defer.lua");
static ADVANCE: LazyLock<redis::Script> = out_script!("out_advance.lua", "move");
/// The worker's commit (state + timers + replies): it queues through the same `push` helper.
pub(crate) static COMMIT: LazyLock<redis::Script> = out_script!("commit.lua", "push");
/// The same commit for an event that queues no reply (most of them): without the helper, and
/// with only the keys of the state and the timers (the rest are used for replies only).
pub(crate) static COMMIT_LEAN: LazyLock<redis::Script> = out_script!("commit.lua");

/// Most lanes one take hands out (a Lua number must stay an integer for `LIMIT`).
pub(crate) const MAX_TAKE: usize = 10_000;

/// Approximate cap of a channel's audit stream.
const AUDIT_MAXLEN: u64 = 10_000;

#[derive(Clone)]
pub struct RedisOutQueue {
    con: RedisConn,
    keys: Keys,
    options: OutQueueOptions,
}

impl std::fmt::Debug for RedisOutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisOutQueue({})", self.keys.prefix())
    }
}

impl RedisOutQueue {
    pub fn new(con: impl Into<RedisConn>, keys: Keys, options: OutQueueOptions) -> Self {
        RedisOutQueue {
            con: con.into(),
            keys,
            options,
        }
    }

    pub fn options(&self) -> OutQueueOptions {
        self.options
    }

    /// The hash counting a broadcast message's statuses, and whether `id` has one.
    fn counter(&self, channel: &str, id: &str) -> (String, &'static str) {
        match broadcast_of(id) {
            Some(bc) => (self.keys.broadcast(channel, bc), "1"),
            None => (self.keys.broadcast(channel, ""), "0"),
        }
    }
}

impl OutQueueBackend for RedisOutQueue {
    async fn push(
        &self,
        channel: &str,
        customer: &str,
        messages: &[QueuedMessage],
        now_ms: i64,
    ) -> Result<usize, OutQueueError> {
        if messages.is_empty() {
            return Ok(0);
        }
        let k = &self.keys;
        let mut inv = PUSH.prepare_invoke();
        inv.key(k.out_lane(channel, customer))
            .key(k.out_ready(channel))
            .key(k.out_busy(channel))
            .key(k.out_queued(channel))
            .key(k.out_index(channel));
        for m in messages {
            inv.key(k.out_record(channel, &m.msg.outbox_key));
        }
        inv.arg(customer)
            .arg(now_ms)
            .arg(self.options.record_ttl_ms);
        for m in messages {
            inv.arg(&m.msg.outbox_key)
                .arg(m.to_json())
                .arg(m.msg.reply.type_name());
        }
        let mut con = self.con.clone();
        let added: i64 = inv.invoke_async(&mut con).await?;
        Ok(added.max(0) as usize)
    }

    async fn submit(
        &self,
        message: &QueuedMessage,
        customer: &str,
        idempotency: Option<&Idempotency>,
        now_ms: i64,
    ) -> Result<Submitted, OutQueueError> {
        let k = &self.keys;
        let ch = &message.msg.channel;
        let id = &message.msg.outbox_key;
        let (use_key, idem_key, hash, ttl) = match idempotency {
            Some(i) => (
                "1",
                k.out_idempotency(ch, &i.key),
                i.body_hash.as_str(),
                i.ttl_ms,
            ),
            None => ("0", k.out_idempotency(ch, ""), "", 0),
        };
        let mut con = self.con.clone();
        let (outcome, first): (String, String) = SUBMIT
            .key(idem_key)
            .key(k.out_lane(ch, customer))
            .key(k.out_ready(ch))
            .key(k.out_busy(ch))
            .key(k.out_queued(ch))
            .key(k.out_index(ch))
            .key(k.out_record(ch, id))
            .arg(use_key)
            .arg(hash)
            .arg(id)
            .arg(message.to_json())
            .arg(message.msg.reply.type_name())
            .arg(customer)
            .arg(now_ms)
            .arg(self.options.record_ttl_ms)
            .arg(ttl)
            .invoke_async(&mut con)
            .await?;
        match outcome.as_str() {
            "queued" => Ok(Submitted::Queued(first)),
            "existing" => Ok(Submitted::Existing(first)),
            "conflict" => Ok(Submitted::Conflict(first)),
            other => Err(OutQueueError::UnexpectedReply(other.to_string())),
        }
    }

    async fn take(
        &self,
        channel: &str,
        owner: &str,
        now_ms: i64,
        max: usize,
    ) -> Result<Taken, OutQueueError> {
        let k = &self.keys;
        let mut con = self.con.clone();
        let reply: Vec<redis::Value> = TAKE
            .key(k.out_ready(channel))
            .key(k.out_busy(channel))
            .key(k.out_owner(channel))
            .key(k.out_grants(channel))
            .key(k.out_wait(channel))
            .arg(now_ms)
            .arg(self.options.lane_lease_ms)
            .arg(owner)
            .arg(max.min(MAX_TAKE))
            .invoke_async(&mut con)
            .await?;
        let text = |v: &redis::Value| -> Result<String, OutQueueError> {
            redis::from_redis_value_ref::<String>(v)
                .map_err(|e| OutQueueError::UnexpectedReply(e.to_string()))
        };
        let int = |v: &redis::Value| -> Result<i64, OutQueueError> {
            redis::from_redis_value_ref::<i64>(v)
                .map_err(|e| OutQueueError::UnexpectedReply(e.to_string()))
        };
        if reply.len() < 2 || reply.len() % 2 != 0 {
            return Err(OutQueueError::UnexpectedReply(format!("{reply:?}")));
        }
        let next = int(&reply[1])?;
        let mut lanes = Vec::with_capacity(reply.len() / 2 - 1);
        for pair in reply[2..].chunks(2) {
            lanes.push(LaneGrant {
                channel: channel.to_string(),
                customer: text(&pair[0])?,
                token: text(&pair[1])?,
            });
        }
        Ok(Taken {
            lanes,
            next_ready_ms: (next >= 0).then_some(next),
            reclaimed: int(&reply[0])?.max(0) as u32,
        })
    }

    async fn head(
        &self,
        channel: &str,
        customer: &str,
    ) -> Result<Option<QueuedMessage>, OutQueueError> {
        let mut con = self.con.clone();
        let raw: Option<String> = redis::cmd("LINDEX")
            .arg(self.keys.out_lane(channel, customer))
            .arg(0)
            .query_async(&mut con)
            .await?;
        raw.as_deref().map(QueuedMessage::from_json).transpose()
    }

    async fn lane(
        &self,
        channel: &str,
        customer: &str,
    ) -> Result<Vec<QueuedMessage>, OutQueueError> {
        let mut con = self.con.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.out_lane(channel, customer))
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await?;
        raw.iter().map(|s| QueuedMessage::from_json(s)).collect()
    }

    async fn begin(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        now_ms: i64,
    ) -> Result<bool, OutQueueError> {
        let k = &self.keys;
        let ch = &grant.channel;
        let mut con = self.con.clone();
        let (counter, counted) = self.counter(ch, &head.msg.outbox_key);
        let held: i64 = BEGIN
            .key(k.out_record(ch, &head.msg.outbox_key))
            .key(k.out_busy(ch))
            .key(k.out_owner(ch))
            .key(counter)
            .arg(&grant.customer)
            .arg(&grant.token)
            .arg(now_ms)
            .arg(self.options.lane_lease_ms)
            .arg(counted)
            .invoke_async(&mut con)
            .await?;
        Ok(held == 1)
    }

    async fn settle(
        &self,
        grant: &LaneGrant,
        head: &QueuedMessage,
        outcome: &Settle,
        now_ms: i64,
    ) -> Result<(), OutQueueError> {
        let k = &self.keys;
        let ch = &grant.channel;
        let id = &head.msg.outbox_key;
        let (kind, detail, error) = match outcome {
            Settle::Sent { wamid } => ("sent", wamid.as_str(), ""),
            Settle::Failed { code, error } => ("failed", code.as_str(), error.as_str()),
            Settle::Skipped { reason } => ("skipped", reason.as_str(), ""),
        };
        let wamid_key = match outcome {
            Settle::Sent { wamid } => k.sent_message(ch, wamid),
            Settle::Failed { .. } | Settle::Skipped { .. } => k.sent_message(ch, ""),
        };
        let (counter, counted) = self.counter(ch, id);
        let mut con = self.con.clone();
        let _: i64 = SETTLE
            .key(k.out_lane(ch, &grant.customer))
            .key(k.out_record(ch, id))
            .key(k.out_queued(ch))
            .key(k.out_busy(ch))
            .key(k.out_owner(ch))
            .key(k.sent(ch, id))
            .key(wamid_key)
            .key(k.outbox(ch))
            .key(counter)
            .arg(head.to_json())
            .arg(id)
            .arg(&grant.customer)
            .arg(&grant.token)
            .arg(now_ms)
            .arg(self.options.lane_lease_ms)
            .arg(self.options.record_ttl_ms)
            .arg(kind)
            .arg(detail)
            .arg(error)
            .arg(head.msg.reply.type_name())
            .arg(if head.msg.reply.is_message() {
                "1"
            } else {
                "0"
            })
            .arg(AUDIT_MAXLEN)
            .arg(counted)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    async fn defer(
        &self,
        grant: &LaneGrant,
        until_ms: i64,
        reason: Option<WaitReason>,
        bump: Option<&QueuedMessage>,
    ) -> Result<bool, OutQueueError> {
        let k = &self.keys;
        let ch = &grant.channel;
        let (old, new) = match bump {
            Some(head) => {
                let mut next = head.clone();
                next.attempts += 1;
                (head.to_json(), next.to_json())
            }
            None => (String::new(), String::new()),
        };
        let mut con = self.con.clone();
        let held: i64 = DEFER
            .key(k.out_lane(ch, &grant.customer))
            .key(k.out_ready(ch))
            .key(k.out_busy(ch))
            .key(k.out_owner(ch))
            .key(k.out_wait(ch))
            .arg(&grant.customer)
            .arg(&grant.token)
            .arg(until_ms)
            .arg(reason.map_or("", WaitReason::as_str))
            .arg(old)
            .arg(new)
            .invoke_async(&mut con)
            .await?;
        Ok(held == 1)
    }

    async fn advance(
        &self,
        channel: &str,
        id: &str,
        status: MessageStatus,
        at_ms: i64,
        wamid: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Result<bool, OutQueueError> {
        let (code, text) = error.unwrap_or(("", ""));
        let (counter, counted) = self.counter(channel, id);
        let mut con = self.con.clone();
        let moved: i64 = ADVANCE
            .key(self.keys.out_record(channel, id))
            .key(counter)
            .arg(status.as_str())
            .arg(at_ms)
            .arg(wamid.unwrap_or(""))
            .arg(code)
            .arg(text)
            .arg(counted)
            .invoke_async(&mut con)
            .await?;
        Ok(moved == 1)
    }

    async fn create_broadcast(
        &self,
        channel: &str,
        b: &NewBroadcast,
        now_ms: i64,
    ) -> Result<bool, OutQueueError> {
        let k = &self.keys;
        let staging = k.broadcast_staging(channel, &b.id);
        let mut con = self.con.clone();
        // Recipients go to a staging list first (it expires if we die half-way), in chunks.
        for chunk in b.recipients.chunks(1000) {
            let mut pipe = redis::pipe();
            pipe.cmd("RPUSH").arg(&staging).arg(chunk).ignore();
            pipe.cmd("PEXPIRE").arg(&staging).arg(3_600_000).ignore();
            let () = pipe.query_async(&mut con).await?;
        }
        let created: i64 = BC_CREATE
            .key(k.broadcast(channel, &b.id))
            .key(k.broadcast_recipients(channel, &b.id))
            .key(&staging)
            .key(k.broadcasts_running(channel))
            .arg(&b.name)
            .arg(&b.message)
            .arg(b.recipients.len())
            .arg(b.skipped)
            .arg(now_ms)
            .arg(self.options.record_ttl_ms)
            .arg(&b.id)
            .invoke_async(&mut con)
            .await?;
        Ok(created == 1)
    }

    async fn broadcast(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<BroadcastRecord>, OutQueueError> {
        let mut con = self.con.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.broadcast(channel, id))
            .query_async(&mut con)
            .await?;
        Ok(decode_broadcast(id, &fields))
    }

    async fn running_broadcasts(&self, channel: &str) -> Result<Vec<String>, OutQueueError> {
        let mut con = self.con.clone();
        Ok(redis::cmd("ZRANGE")
            .arg(self.keys.broadcasts_running(channel))
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await?)
    }

    async fn broadcast_recipients(
        &self,
        channel: &str,
        id: &str,
        from: u64,
        n: usize,
    ) -> Result<Vec<String>, OutQueueError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        Ok(redis::cmd("LRANGE")
            .arg(self.keys.broadcast_recipients(channel, id))
            .arg(from)
            .arg(from + n as u64 - 1)
            .query_async(&mut con)
            .await?)
    }

    async fn feed_broadcast(
        &self,
        channel: &str,
        id: &str,
        cursor: u64,
        items: &[(String, QueuedMessage)],
        now_ms: i64,
    ) -> Result<Option<usize>, OutQueueError> {
        let k = &self.keys;
        let mut inv = BC_FEED.prepare_invoke();
        inv.key(k.broadcast(channel, id))
            .key(k.out_ready(channel))
            .key(k.out_busy(channel))
            .key(k.out_queued(channel))
            .key(k.out_index(channel))
            .key(k.broadcast_recipients(channel, id));
        for (customer, m) in items {
            inv.key(k.out_lane(channel, customer))
                .key(k.out_record(channel, &m.msg.outbox_key));
        }
        inv.arg(cursor).arg(now_ms).arg(self.options.record_ttl_ms);
        for (customer, m) in items {
            inv.arg(customer)
                .arg(&m.msg.outbox_key)
                .arg(m.to_json())
                .arg(m.msg.reply.type_name());
        }
        let mut con = self.con.clone();
        let added: i64 = inv.invoke_async(&mut con).await?;
        Ok((added >= 0).then_some(added as usize))
    }

    async fn retire_broadcast(&self, channel: &str, id: &str) -> Result<(), OutQueueError> {
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.broadcasts_running(channel))
            .arg(id)
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    async fn cancel_broadcast(
        &self,
        channel: &str,
        id: &str,
    ) -> Result<Option<BroadcastRecord>, OutQueueError> {
        let key = self.keys.broadcast(channel, id);
        let mut con = self.con.clone();
        // Only an existing broadcast is marked (HSET on a missing key would create one).
        let exists: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut con).await?;
        if exists == 0 {
            return Ok(None);
        }
        let _: i64 = BC_CANCEL
            .key(&key)
            .key(self.keys.broadcasts_running(channel))
            .arg(id)
            .invoke_async(&mut con)
            .await?;
        self.broadcast(channel, id).await
    }

    async fn find_by_wamid(
        &self,
        channel: &str,
        wamid: &str,
    ) -> Result<Option<(String, String)>, OutQueueError> {
        let mut con = self.con.clone();
        let v: Option<String> = redis::cmd("GET")
            .arg(self.keys.sent_message(channel, wamid))
            .query_async(&mut con)
            .await?;
        Ok(v.and_then(|v| {
            v.split_once('\n')
                .map(|(id, to)| (id.to_string(), to.to_string()))
        }))
    }

    async fn record(&self, channel: &str, id: &str) -> Result<Option<OutRecord>, OutQueueError> {
        let mut con = self.con.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.out_record(channel, id))
            .query_async(&mut con)
            .await?;
        Ok(decode_record(channel, id, &fields))
    }

    async fn list(
        &self,
        channel: &str,
        status: Option<MessageStatus>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<OutRecord>, OutQueueError> {
        let index = self.keys.out_index(channel);
        let mut con = self.con.clone();
        let oldest = now_ms.saturating_sub(self.options.record_ttl_ms as i64);
        let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(format!("({oldest}"))
            .query_async(&mut con)
            .await?;
        const PAGE: usize = 200;
        let mut found = Vec::new();
        let mut start = 0;
        while found.len() < limit {
            let ids: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&index)
                .arg(start)
                .arg(start + PAGE - 1)
                .query_async(&mut con)
                .await?;
            if ids.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGETALL").arg(self.keys.out_record(channel, id));
            }
            let records: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
            for (id, fields) in ids.iter().zip(records) {
                if let Some(r) = decode_record(channel, id, &fields) {
                    if status.is_none_or(|s| r.status == s) && found.len() < limit {
                        found.push(r);
                    }
                }
            }
            start += PAGE;
        }
        Ok(found)
    }

    async fn stats(&self, channel: &str, now_ms: i64) -> Result<OutStats, OutQueueError> {
        let k = &self.keys;
        let mut con = self.con.clone();
        let (backlog, oldest, ready, busy, waits): (
            u64,
            Vec<(String, f64)>,
            u64,
            u64,
            Vec<String>,
        ) = redis::pipe()
            .cmd("ZCARD")
            .arg(k.out_queued(channel))
            .cmd("ZRANGE")
            .arg(k.out_queued(channel))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZCARD")
            .arg(k.out_ready(channel))
            .cmd("ZCARD")
            .arg(k.out_busy(channel))
            .cmd("HVALS")
            .arg(k.out_wait(channel))
            .query_async(&mut con)
            .await?;
        let mut waiting = std::collections::BTreeMap::new();
        for w in waits {
            *waiting.entry(w).or_insert(0) += 1;
        }
        let waiting_total: u64 = waiting.values().sum();
        Ok(OutStats {
            backlog,
            lanes_ready: ready.saturating_sub(waiting_total),
            lanes_busy: busy,
            waiting,
            oldest_ms: oldest
                .first()
                .map_or(0, |(_, at)| now_ms.saturating_sub(*at as i64).max(0) as u64),
        })
    }
}

/// A broadcast from its hash fields (`None` when the hash is empty).
pub(crate) fn decode_broadcast(id: &str, f: &HashMap<String, String>) -> Option<BroadcastRecord> {
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let stored_state = f.get("state")?.clone();
    Some(BroadcastRecord {
        id: id.to_string(),
        name: f.get("name").cloned().unwrap_or_default(),
        message: f.get("message").cloned().unwrap_or_default(),
        total: num("total").max(0) as u64,
        size: num("size").max(0) as u64,
        fed: num("fed").max(0) as u64,
        stored_state,
        created_at: num("created"),
        counts: f
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("c:")?.to_string(), v.parse().ok()?)))
            .collect(),
    })
}

/// A record from its hash fields (`None` when the hash is empty or unreadable).
pub(crate) fn decode_record(
    channel: &str,
    id: &str,
    f: &HashMap<String, String>,
) -> Option<OutRecord> {
    let status = MessageStatus::parse(f.get("st")?)?;
    Some(OutRecord {
        id: id.to_string(),
        channel: channel.to_string(),
        to: f.get("to").cloned().unwrap_or_default(),
        kind: f.get("type").cloned().unwrap_or_default(),
        status,
        wamid: f.get("wamid").cloned(),
        error_code: f.get("ecode").cloned(),
        error: f.get("err").cloned(),
        created_at: f.get("created").and_then(|c| c.parse().ok()).unwrap_or(0),
        history: decode_history(f.get("hist").map_or("", String::as_str)),
    })
}

/// `"queued:1700…,sending:1700…"` → entries.
pub(crate) fn decode_history(s: &str) -> Vec<HistoryEntry> {
    s.split(',')
        .filter_map(|part| {
            let (status, at) = part.split_once(':')?;
            Some(HistoryEntry {
                status: MessageStatus::parse(status)?,
                at: at.parse().ok()?,
            })
        })
        .collect()
}
