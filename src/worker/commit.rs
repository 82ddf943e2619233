//! The one fenced write that ends the handling of an event: the conversation state
//! (version-checked), its window timers (old ones disarmed, new ones armed) and the replies the
//! handler produced (queued in the customer's outbound lane, once per outbox key). In Redis it
//! is one Lua script (`lua/commit.lua`); in memory one locked step. Either all of it happens or
//! none, so a crash or a Redis error between "state saved" and "timers armed" cannot exist.

use crate::conversation::store::{MemoryConversationStore, SaveOutcome, StoreError};
use crate::conversation::ConversationState;
use crate::keys::Keys;
use crate::outbound::queue::redis::{COMMIT, COMMIT_LEAN};
use crate::outbound::queue::MemoryOutQueue;
use crate::outbound::QueuedMessage;
use crate::queue::{Lease, MemoryQueue};
use crate::redis_conn::RedisConn;

/// What one handled event changes.
#[derive(Debug)]
pub(crate) struct Commit<'a> {
    pub lease: &'a Lease,
    pub conversation: &'a str,
    /// The new state, to save at `version`; `None` when the state did not change.
    pub state: Option<&'a ConversationState>,
    /// The version the state was loaded at.
    pub version: u64,
    pub cancel_timers: Vec<String>,
    pub arm_timers: Vec<(String, u64)>,
    pub replies: Vec<QueuedMessage>,
    pub now_ms: i64,
}

impl Commit<'_> {
    /// Nothing to write: the event changed nothing and asked for nothing.
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.cancel_timers.is_empty()
            && self.arm_timers.is_empty()
            && self.replies.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    #[error("commit: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("commit: unexpected reply {0:?}")]
    UnexpectedReply(Vec<i64>),
}

/// Where commits go: the Redis the queue uses, or the in-memory twins of one process.
#[derive(Clone)]
pub(crate) enum Committer {
    Redis {
        con: RedisConn,
        keys: Keys,
        state_ttl_ms: u64,
        record_ttl_ms: u64,
    },
    Memory {
        store: MemoryConversationStore,
        queue: MemoryQueue,
        out: MemoryOutQueue,
    },
}

impl Committer {
    pub async fn commit(&self, c: &Commit<'_>) -> Result<SaveOutcome, CommitError> {
        match self {
            Committer::Redis {
                con,
                keys,
                state_ttl_ms,
                record_ttl_ms,
            } => commit_redis(con, keys, *state_ttl_ms, *record_ttl_ms, c).await,
            Committer::Memory { store, queue, out } => {
                let f = c.lease;
                Ok(
                    store.save_with(f, &f.channel, c.conversation, c.state, c.version, || {
                        queue.replace_timers_now(
                            &f.channel,
                            f.partition,
                            &c.cancel_timers,
                            &c.arm_timers,
                        );
                        out.push_now(&f.channel, c.conversation, &c.replies, c.now_ms);
                    })?,
                )
            }
        }
    }
}

async fn commit_redis(
    con: &RedisConn,
    keys: &Keys,
    state_ttl_ms: u64,
    record_ttl_ms: u64,
    c: &Commit<'_>,
) -> Result<SaveOutcome, CommitError> {
    let f = c.lease;
    let ch = f.channel.as_str();
    let state_json = match c.state {
        Some(state) => {
            let mut next = state.clone();
            next.version = c.version + 1;
            serde_json::to_string(&next).map_err(StoreError::Encode)?
        }
        None => String::new(),
    };
    let script = if c.replies.is_empty() {
        &COMMIT_LEAN
    } else {
        &COMMIT
    };
    let mut inv = script.prepare_invoke();
    inv.key(keys.lease(ch, f.partition))
        .key(keys.conversation(ch, c.conversation))
        .key(keys.timers(ch, f.partition));
    if !c.replies.is_empty() {
        inv.key(keys.out_lane(ch, c.conversation))
            .key(keys.out_ready(ch))
            .key(keys.out_busy(ch))
            .key(keys.out_queued(ch))
            .key(keys.out_index(ch));
    }
    for r in &c.replies {
        inv.key(keys.out_record(ch, &r.msg.outbox_key));
    }
    inv.arg(f.value())
        .arg(c.version)
        .arg(state_json)
        .arg(state_ttl_ms)
        .arg(c.now_ms)
        .arg(record_ttl_ms)
        .arg(c.conversation)
        .arg(c.cancel_timers.len())
        .arg(c.arm_timers.len())
        .arg(c.replies.len());
    for member in &c.cancel_timers {
        inv.arg(member);
    }
    for (member, due) in &c.arm_timers {
        inv.arg(member).arg(due);
    }
    for r in &c.replies {
        inv.arg(&r.msg.outbox_key)
            .arg(r.to_json())
            .arg(r.msg.reply.type_name());
    }
    let mut con = con.clone();
    let reply: Vec<i64> = inv.invoke_async(&mut con).await?;
    match reply.as_slice() {
        [1, v] => Ok(SaveOutcome::Saved { version: *v as u64 }),
        [0, _] => Ok(SaveOutcome::Fenced),
        [2, v] => Ok(SaveOutcome::Conflict {
            stored_version: *v as u64,
        }),
        _ => Err(CommitError::UnexpectedReply(reply)),
    }
}
