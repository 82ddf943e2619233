//! Conversation states in Redis: one hash per conversation, saved by a fenced Lua script.

use super::{
    check_channel, decode, encode_next, with_outbound, ConversationBackend, SaveOutcome, StoreError,
};
use crate::conversation::state::ConversationState;
use crate::keys::Keys;
use crate::queue::Lease;
use crate::redis_conn::RedisConn;
use redis::Script;
use std::sync::LazyLock;

static SAVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/conv_save.lua")));
static NOTE_OUTBOUND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/conv_note_outbound.lua")));

/// States in Redis: one hash per conversation (`v` = version, `s` = JSON), with a TTL.
#[derive(Clone)]
pub struct RedisConversationStore {
    con: RedisConn,
    keys: Keys,
    ttl_ms: u64,
}

impl RedisConversationStore {
    /// `ttl_secs` = `[worker] conversation_ttl_secs`: a state expires after that much inactivity.
    pub fn new(con: impl Into<RedisConn>, keys: Keys, ttl_secs: u64) -> Self {
        RedisConversationStore {
            con: con.into(),
            keys,
            ttl_ms: ttl_secs.saturating_mul(1000),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The TTL of a saved state, in ms (0 = none).
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }
}

impl ConversationBackend for RedisConversationStore {
    async fn load(
        &self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, StoreError> {
        let key = self.keys.conversation(channel, contact);
        let mut con = self.con.clone();
        let (json, version, outbound): (Option<String>, Option<u64>, Option<i64>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg("s")
                .arg("v")
                .arg("lo")
                .query_async(&mut con)
                .await?;
        match json {
            None => Ok(None),
            Some(json) => decode(&key, &json, version.unwrap_or(0))
                .map(|state| Some(with_outbound(state, outbound))),
        }
    }

    async fn note_outbound(
        &self,
        channel: &str,
        contact: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: i64 = NOTE_OUTBOUND
            .key(self.keys.conversation(channel, contact))
            .arg(at_ms)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    async fn save(
        &self,
        lease: &Lease,
        channel: &str,
        contact: &str,
        state: &ConversationState,
    ) -> Result<SaveOutcome, StoreError> {
        check_channel(lease, channel)?;
        let json = encode_next(state)?;
        let mut con = self.con.clone();
        let reply: Vec<i64> = SAVE
            .key(self.keys.lease(&lease.channel, lease.partition))
            .key(self.keys.conversation(channel, contact))
            .arg(lease.value())
            .arg(state.version)
            .arg(json)
            .arg(self.ttl_ms)
            .invoke_async(&mut con)
            .await?;
        match reply.as_slice() {
            [1, v] => Ok(SaveOutcome::Saved { version: *v as u64 }),
            [0, _] => Ok(SaveOutcome::Fenced),
            [2, v] => Ok(SaveOutcome::Conflict {
                stored_version: *v as u64,
            }),
            _ => Err(StoreError::UnexpectedReply(reply)),
        }
    }
}
