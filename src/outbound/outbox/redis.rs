//! The outbox in Redis: every multi-step change is one script of `lua/outbox_*.lua`, every key
//! it touches passed through `KEYS`.

use super::{
    audit_entry, in_flight, message_reference, new_marker, sent_ref, sent_value, unhealthy_value,
    OutboxBackend, OutboxError, OutboxOptions, OutboxState, SentRef,
};
use crate::keys::Keys;
use crate::outbound::message::{OutgoingMessage, Sent};
use crate::redis_conn::RedisConn;
use std::sync::LazyLock;

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(include_str!(concat!("../../lua/", $file))));
    };
}

script!(CLAIM, "outbox_claim.lua");
script!(SENT, "outbox_sent.lua");
script!(RELEASE, "outbox_release.lua");
script!(GIVE_UP, "outbox_give_up.lua");
script!(STATUS, "outbox_status.lua");

/// The Redis-backed outbox. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisOutbox {
    con: RedisConn,
    pub(super) keys: Keys,
    options: OutboxOptions,
}

impl RedisOutbox {
    pub fn new(con: impl Into<RedisConn>, keys: Keys, options: OutboxOptions) -> Self {
        RedisOutbox {
            con: con.into(),
            keys,
            options,
        }
    }

    /// `outbox_claim.lua`: the key is ours when free or still holding `expected` (a marker
    /// seen before, to take over; empty to claim only a free key).
    async fn claim(
        &self,
        msg: &OutgoingMessage,
        expected: &str,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError> {
        let marker = new_marker(now_ms);
        let reply: Vec<String> = CLAIM
            .key(self.keys.sent(&msg.channel, &msg.outbox_key))
            .arg(&marker)
            .arg(self.options.sent_ttl_ms)
            .arg(expected)
            .invoke_async(&mut self.con.clone())
            .await?;
        let [state, value] = <[String; 2]>::try_from(reply)
            .map_err(|r| OutboxError::UnexpectedReply(format!("{r:?}")))?;
        match state.as_str() {
            "claimed" => Ok(OutboxState::Claimed { marker }),
            "sent" => Ok(OutboxState::AlreadySent(value)),
            "failed" => Ok(OutboxState::GivenUp(value)),
            "pending" => Ok(in_flight(value)),
            other => Err(OutboxError::UnexpectedReply(other.to_string())),
        }
    }

    async fn get_key(&self, key: String) -> Result<Option<String>, OutboxError> {
        Ok(redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.con.clone())
            .await?)
    }
}

impl OutboxBackend for RedisOutbox {
    async fn record(&self, msg: &OutgoingMessage, now_ms: i64) -> Result<OutboxState, OutboxError> {
        self.claim(msg, "", now_ms).await
    }

    async fn take_over(
        &self,
        msg: &OutgoingMessage,
        seen_marker: &str,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError> {
        self.claim(msg, seen_marker, now_ms).await
    }

    async fn mark_sent(
        &self,
        msg: &OutgoingMessage,
        sent: &Sent,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let mut inv = SENT.prepare_invoke();
        inv.key(self.keys.sent(&msg.channel, &msg.outbox_key))
            .key(self.keys.sent_message(&msg.channel, &sent.message_id))
            .key(self.keys.outbox(&msg.channel))
            .arg(sent_value(&sent.message_id))
            .arg(self.options.sent_ttl_ms)
            .arg(message_reference(msg))
            .arg(self.options.audit_maxlen);
        for (k, v) in &audit_entry(msg, "sent", &sent.message_id, "", now_ms) {
            inv.arg(k).arg(v);
        }
        let _: String = inv.invoke_async(&mut self.con.clone()).await?;
        Ok(())
    }

    async fn log_outcome(
        &self,
        msg: &OutgoingMessage,
        outcome: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let maxlen = self.options.audit_maxlen;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.outbox(&msg.channel));
        if maxlen > 0 {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*");
        for (k, v) in &audit_entry(msg, outcome, "", error, now_ms) {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut self.con.clone()).await?;
        Ok(())
    }

    async fn give_up(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        code: &str,
        _now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let written: i64 = GIVE_UP
            .key(self.keys.sent(&msg.channel, &msg.outbox_key))
            .arg(marker)
            .arg(code)
            .arg(self.options.sent_ttl_ms)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(written == 1)
    }

    async fn release(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        _now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let released: i64 = RELEASE
            .key(self.keys.sent(&msg.channel, &msg.outbox_key))
            .arg(marker)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(released == 1)
    }

    async fn mark_status_seen(
        &self,
        channel: &str,
        outbox_key: &str,
        message_id: &str,
        _now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let changed: i64 = STATUS
            .key(self.keys.sent(channel, outbox_key))
            .arg(sent_value(message_id))
            .arg(self.options.sent_ttl_ms)
            .invoke_async(&mut self.con.clone())
            .await?;
        Ok(changed == 1)
    }

    async fn get(
        &self,
        channel: &str,
        outbox_key: &str,
        _now_ms: i64,
    ) -> Result<Option<String>, OutboxError> {
        self.get_key(self.keys.sent(channel, outbox_key)).await
    }

    async fn lookup_message(
        &self,
        channel: &str,
        message_id: &str,
        _now_ms: i64,
    ) -> Result<Option<SentRef>, OutboxError> {
        let reference = self
            .get_key(self.keys.sent_message(channel, message_id))
            .await?;
        Ok(sent_ref(reference))
    }

    async fn set_unhealthy(
        &self,
        channel: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let _: () = redis::cmd("SET")
            .arg(self.keys.health(channel))
            .arg(unhealthy_value(reason, now_ms))
            .query_async(&mut self.con.clone())
            .await?;
        Ok(())
    }

    async fn clear_health(&self, channel: &str) -> Result<(), OutboxError> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.health(channel))
            .query_async(&mut self.con.clone())
            .await?;
        Ok(())
    }

    async fn health(&self, channel: &str, _now_ms: i64) -> Result<Option<String>, OutboxError> {
        self.get_key(self.keys.health(channel)).await
    }
}
