//! The outbox: each reply is sent once per outbox key (`<source event id>:<reply index>`),
//! however often its event is handled.
//!
//! Before sending, the key `keys.sent(ch, outbox_key)` is claimed (`pending:<ms>:<token>`);
//! after the send it says `sent:<message id>`. A second handling of the event finds `sent:` and
//! skips. The one window left is a crash after the request left and before `mark_sent`: the
//! key then stays `pending`. Meta echoes the outbox key (`biz_opaque_callback_data`) in the
//! message's status webhooks, and [`Outbox::mark_status_seen`] turns the key into `sent:` when
//! one arrives; a later handler that finds `pending` gets [`OutboxState::InFlight`], waits a
//! bounded time for such a status, then takes the claim over and sends again.
//!
//! Every outcome is appended to the channel's audit stream `keys.outbox(ch)` (`MAXLEN ~`).
//! The Redis and memory variants behave the same; the memory one serves the single-process mode.

use super::error::SendError;
use super::message::{OutgoingMessage, Sent};
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

static CLAIM: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/outbox_claim.lua")));
static SENT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/outbox_sent.lua")));
static FAIL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/outbox_fail.lua")));
static RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/outbox_release.lua")));
static GIVE_UP: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/outbox_give_up.lua")));
static STATUS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../../lua/outbox_status.lua")));

/// Where an outbox key stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxState {
    /// Ours to send; `marker` identifies our claim (to release it on failure).
    Claimed { marker: String },
    /// Already sent, with this message id: skip.
    AlreadySent(String),
    /// Another send of this key started at `since_ms` and has not been confirmed: it may have
    /// left before a crash. Wait for a status, then [`Outbox::take_over`] with `marker`.
    InFlight { since_ms: i64, marker: String },
    /// Given up for good with this code ([`Outbox::give_up`]): never sent.
    GivenUp(String),
}

/// What a status webhook's `biz_opaque_callback_data` led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentRef {
    pub outbox_key: String,
    pub conversation: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("outbox: unexpected reply {0:?}")]
    UnexpectedReply(String),
}

/// TTL and audit-log size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxOptions {
    /// How long a sent key is remembered: longer than Meta's webhook retries (7 days), so a
    /// re-delivered event never sends its replies again.
    pub sent_ttl_ms: u64,
    /// Approximate cap of each channel's audit stream.
    pub audit_maxlen: u64,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        OutboxOptions {
            sent_ttl_ms: 8 * 24 * 3600 * 1000,
            audit_maxlen: 10_000,
        }
    }
}

#[derive(Clone)]
pub enum Outbox {
    Redis {
        con: RedisConn,
        keys: Keys,
        options: OutboxOptions,
    },
    Memory {
        keys: Keys,
        options: OutboxOptions,
        state: Arc<Mutex<MemoryState>>,
    },
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outbox::Redis { keys, .. } => write!(f, "Outbox::Redis({})", keys.prefix()),
            Outbox::Memory { keys, .. } => write!(f, "Outbox::Memory({})", keys.prefix()),
        }
    }
}

/// The memory twin's data, keyed by the same strings as the Redis keys.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// key → (value, expires at ms)
    values: HashMap<String, (String, i64)>,
    /// audit stream key → entries
    logs: HashMap<String, Vec<Vec<(String, String)>>>,
    sweep: crate::clock::SweepSchedule,
}

impl MemoryState {
    fn get(&self, key: &str, now_ms: i64) -> Option<&str> {
        self.values
            .get(key)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| v.as_str())
    }

    fn set(&mut self, key: String, value: String, ttl_ms: u64, now_ms: i64) {
        if self.sweep.due(self.values.len(), 4096) {
            self.values.retain(|_, (_, exp)| *exp > now_ms);
            self.sweep.swept(self.values.len());
        }
        let exp = now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        self.values.insert(key, (value, exp));
    }

    fn log(&mut self, key: String, entry: Vec<(String, String)>, maxlen: u64) {
        let log = self.logs.entry(key).or_default();
        log.push(entry);
        let max = usize::try_from(maxlen).unwrap_or(usize::MAX);
        if max > 0 && log.len() > max {
            let extra = log.len() - max;
            log.drain(..extra);
        }
    }
}

/// `pending:<ms>:<token>`
fn new_marker(now_ms: i64) -> String {
    format!("pending:{now_ms}:{:016x}", rand::random::<u64>())
}

pub(crate) fn marker_since(marker: &str) -> i64 {
    marker
        .split(':')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn audit_entry(
    msg: &OutgoingMessage,
    outcome: &str,
    message_id: &str,
    error: &str,
    now_ms: i64,
) -> Vec<(String, String)> {
    let reply = serde_json::to_string(&msg.reply).unwrap_or_default();
    let mut e = vec![
        ("key".to_string(), msg.outbox_key.clone()),
        ("to".to_string(), msg.to.clone()),
        ("type".to_string(), msg.reply.type_name().to_string()),
        ("outcome".to_string(), outcome.to_string()),
        ("at".to_string(), now_ms.to_string()),
        ("reply".to_string(), reply),
    ];
    if !message_id.is_empty() {
        e.push(("message_id".into(), message_id.into()));
    }
    if !error.is_empty() {
        e.push(("error".into(), error.into()));
    }
    e
}

impl Outbox {
    pub fn redis(con: impl Into<RedisConn>, keys: Keys, options: OutboxOptions) -> Outbox {
        Outbox::Redis {
            con: con.into(),
            keys,
            options,
        }
    }

    pub fn memory(keys: Keys, options: OutboxOptions) -> Outbox {
        Outbox::Memory {
            keys,
            options,
            state: Arc::default(),
        }
    }

    fn keys(&self) -> &Keys {
        match self {
            Outbox::Redis { keys, .. } | Outbox::Memory { keys, .. } => keys,
        }
    }

    fn options(&self) -> OutboxOptions {
        match self {
            Outbox::Redis { options, .. } | Outbox::Memory { options, .. } => *options,
        }
    }

    fn memory_state(state: &Mutex<MemoryState>) -> std::sync::MutexGuard<'_, MemoryState> {
        state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `msg.outbox_key` for sending (`SET NX`), or says why not.
    pub async fn record(
        &self,
        msg: &OutgoingMessage,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError> {
        self.claim(msg, "", now_ms).await
    }

    /// Takes over an in-flight claim whose sender gave no sign of life (no status within the
    /// bounded wait). Only succeeds while the key still holds `seen_marker`.
    pub async fn take_over(
        &self,
        msg: &OutgoingMessage,
        seen_marker: &str,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError> {
        self.claim(msg, seen_marker, now_ms).await
    }

    async fn claim(
        &self,
        msg: &OutgoingMessage,
        expected: &str,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError> {
        let key = self.keys().sent(&msg.channel, &msg.outbox_key);
        let marker = new_marker(now_ms);
        let ttl = self.options().sent_ttl_ms;
        let (state, value): (String, String) = match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                let reply: Vec<String> = CLAIM
                    .key(&key)
                    .arg(&marker)
                    .arg(ttl)
                    .arg(expected)
                    .invoke_async(&mut con)
                    .await?;
                match <[String; 2]>::try_from(reply) {
                    Ok([s, v]) => (s, v),
                    Err(r) => return Err(OutboxError::UnexpectedReply(format!("{r:?}"))),
                }
            }
            Outbox::Memory { state, .. } => {
                let mut st = Self::memory_state(state);
                match st.get(&key, now_ms).map(str::to_owned) {
                    Some(v) if v.starts_with("sent:") => ("sent".into(), v[5..].to_string()),
                    Some(v) if v.starts_with("failed:") => ("failed".into(), v[7..].to_string()),
                    current if current.is_none() || current.as_deref() == Some(expected) => {
                        st.set(key, marker.clone(), ttl, now_ms);
                        ("claimed".into(), String::new())
                    }
                    Some(v) => ("pending".into(), v),
                    None => unreachable!("handled by the arm above"),
                }
            }
        };
        match state.as_str() {
            "claimed" => Ok(OutboxState::Claimed { marker }),
            "sent" => Ok(OutboxState::AlreadySent(value)),
            "failed" => Ok(OutboxState::GivenUp(value)),
            "pending" => Ok(OutboxState::InFlight {
                since_ms: marker_since(&value),
                marker: value,
            }),
            other => Err(OutboxError::UnexpectedReply(other.to_string())),
        }
    }

    /// Records the send: `sent:<id>` on the outbox key, message id → `<outbox key>\n<to>` so
    /// later statuses find the conversation, and an audit entry.
    pub async fn mark_sent(
        &self,
        msg: &OutgoingMessage,
        sent: &Sent,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let keys = self.keys();
        let options = self.options();
        let sent_key = keys.sent(&msg.channel, &msg.outbox_key);
        let message_key = keys.sent_message(&msg.channel, &sent.message_id);
        let stream = keys.outbox(&msg.channel);
        let value = format!("sent:{}", sent.message_id);
        let reference = if msg.reply.is_message() {
            format!("{}\n{}", msg.outbox_key, msg.to)
        } else {
            String::new()
        };
        let entry = audit_entry(msg, "sent", &sent.message_id, "", now_ms);
        match self {
            Outbox::Redis { con, .. } => {
                let mut inv = SENT.prepare_invoke();
                inv.key(&sent_key)
                    .key(&message_key)
                    .key(&stream)
                    .arg(&value)
                    .arg(options.sent_ttl_ms)
                    .arg(&reference)
                    .arg(options.audit_maxlen);
                for (k, v) in &entry {
                    inv.arg(k).arg(v);
                }
                let mut con = con.clone();
                let _: String = inv.invoke_async(&mut con).await?;
            }
            Outbox::Memory { state, .. } => {
                let mut st = Self::memory_state(state);
                st.set(sent_key, value, options.sent_ttl_ms, now_ms);
                if !reference.is_empty() {
                    st.set(message_key, reference, options.sent_ttl_ms, now_ms);
                }
                st.log(stream, entry, options.audit_maxlen);
            }
        }
        Ok(())
    }

    /// The send failed for good: release our claim (`marker`, from
    /// [`OutboxState::Claimed`]; empty when nothing was claimed) and log the error.
    pub async fn mark_failed(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        error: &SendError,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let keys = self.keys();
        let options = self.options();
        let sent_key = keys.sent(&msg.channel, &msg.outbox_key);
        let stream = keys.outbox(&msg.channel);
        let entry = audit_entry(msg, error.outcome(), "", &error.to_string(), now_ms);
        match self {
            Outbox::Redis { con, .. } => {
                let mut inv = FAIL.prepare_invoke();
                inv.key(&sent_key)
                    .key(&stream)
                    .arg(marker)
                    .arg(options.audit_maxlen);
                for (k, v) in &entry {
                    inv.arg(k).arg(v);
                }
                let mut con = con.clone();
                let _: i64 = inv.invoke_async(&mut con).await?;
            }
            Outbox::Memory { state, .. } => {
                let mut st = Self::memory_state(state);
                if !marker.is_empty() && st.get(&sent_key, now_ms) == Some(marker) {
                    st.values.remove(&sent_key);
                }
                st.log(stream, entry, options.audit_maxlen);
            }
        }
        Ok(())
    }

    /// Appends an audit entry for `msg` with this outcome (the outbound queue's memory twin
    /// logs failures through it; in Redis `out_settle.lua` writes the entry itself).
    pub async fn log_outcome(
        &self,
        msg: &OutgoingMessage,
        outcome: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let stream = self.keys().outbox(&msg.channel);
        let entry = audit_entry(msg, outcome, "", error, now_ms);
        let maxlen = self.options().audit_maxlen;
        match self {
            Outbox::Redis { con, .. } => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&stream);
                if maxlen > 0 {
                    cmd.arg("MAXLEN").arg("~").arg(maxlen);
                }
                cmd.arg("*");
                for (k, v) in &entry {
                    cmd.arg(k).arg(v);
                }
                let mut con = con.clone();
                let _: String = cmd.query_async(&mut con).await?;
            }
            Outbox::Memory { state, .. } => {
                Self::memory_state(state).log(stream, entry, maxlen);
            }
        }
        Ok(())
    }

    /// The message failed for good: our claim becomes `failed:<code>`, so it is never sent
    /// after a crash either. Returns whether the claim was ours.
    pub async fn give_up(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let key = self.keys().sent(&msg.channel, &msg.outbox_key);
        let ttl = self.options().sent_ttl_ms;
        match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                let written: i64 = GIVE_UP
                    .key(&key)
                    .arg(marker)
                    .arg(code)
                    .arg(ttl)
                    .invoke_async(&mut con)
                    .await?;
                Ok(written == 1)
            }
            Outbox::Memory { state, .. } => {
                let mut st = Self::memory_state(state);
                let ours = st.get(&key, now_ms) == Some(marker);
                if ours {
                    st.set(key, format!("failed:{code}"), ttl, now_ms);
                }
                Ok(ours)
            }
        }
    }

    /// Gives our claim (`marker`) up without logging: the attempt failed and the message will
    /// be tried again (the outbound queue logs the final outcome). Returns whether it was ours.
    pub async fn release(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let key = self.keys().sent(&msg.channel, &msg.outbox_key);
        match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                let released: i64 = RELEASE.key(&key).arg(marker).invoke_async(&mut con).await?;
                Ok(released == 1)
            }
            Outbox::Memory { state, .. } => {
                let mut st = Self::memory_state(state);
                let ours = st.get(&key, now_ms) == Some(marker);
                if ours {
                    st.values.remove(&key);
                }
                Ok(ours)
            }
        }
    }

    /// A status webhook carried `biz_opaque_callback_data = outbox_key`: that reply was sent
    /// as `message_id`. Returns true when this changed the key (it was pending or unknown).
    /// Call it as early as possible (ingress, or before the status reaches the partition's
    /// queue): a worker waiting on an in-flight key must see it.
    pub async fn mark_status_seen(
        &self,
        channel: &str,
        outbox_key: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        let key = self.keys().sent(channel, outbox_key);
        let value = format!("sent:{message_id}");
        let ttl = self.options().sent_ttl_ms;
        match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                let changed: i64 = STATUS
                    .key(&key)
                    .arg(&value)
                    .arg(ttl)
                    .invoke_async(&mut con)
                    .await?;
                Ok(changed == 1)
            }
            Outbox::Memory { state, .. } => {
                let mut st = Self::memory_state(state);
                if st.get(&key, now_ms).is_some_and(|v| v.starts_with("sent:")) {
                    return Ok(false);
                }
                st.set(key, value, ttl, now_ms);
                Ok(true)
            }
        }
    }

    /// The current value of an outbox key (`pending:…` / `sent:…`), for operators and tests.
    pub async fn get(
        &self,
        channel: &str,
        outbox_key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, OutboxError> {
        self.get_key(self.keys().sent(channel, outbox_key), now_ms)
            .await
    }

    /// Which reply (and conversation) a sent message id belongs to.
    pub async fn lookup_message(
        &self,
        channel: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<Option<SentRef>, OutboxError> {
        let v = self
            .get_key(self.keys().sent_message(channel, message_id), now_ms)
            .await?;
        Ok(v.and_then(|v| {
            v.split_once('\n').map(|(k, c)| SentRef {
                outbox_key: k.to_string(),
                conversation: c.to_string(),
            })
        }))
    }

    async fn get_key(&self, key: String, now_ms: i64) -> Result<Option<String>, OutboxError> {
        match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                Ok(redis::cmd("GET").arg(&key).query_async(&mut con).await?)
            }
            Outbox::Memory { state, .. } => Ok(Self::memory_state(state)
                .get(&key, now_ms)
                .map(str::to_owned)),
        }
    }

    /// Marks the channel unhealthy (credentials refused) until [`Outbox::clear_health`]; the
    /// value (`unhealthy since <ms>: <reason>`) is what an operator command shows.
    pub async fn set_unhealthy(
        &self,
        channel: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError> {
        let key = self.keys().health(channel);
        let value = format!("unhealthy since {now_ms}: {reason}");
        match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .query_async(&mut con)
                    .await?;
            }
            Outbox::Memory { state, .. } => {
                Self::memory_state(state).set(key, value, u64::MAX / 4, now_ms);
            }
        }
        Ok(())
    }

    pub async fn clear_health(&self, channel: &str) -> Result<(), OutboxError> {
        let key = self.keys().health(channel);
        match self {
            Outbox::Redis { con, .. } => {
                let mut con = con.clone();
                let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut con).await?;
            }
            Outbox::Memory { state, .. } => {
                Self::memory_state(state).values.remove(&key);
            }
        }
        Ok(())
    }

    /// `None`: healthy; `Some(description)`: marked unhealthy.
    pub async fn health(&self, channel: &str, now_ms: i64) -> Result<Option<String>, OutboxError> {
        self.get_key(self.keys().health(channel), now_ms).await
    }

    /// The memory twin's audit entries of a channel (the Redis twin: `XRANGE keys.outbox(ch)`).
    pub fn memory_log(&self, channel: &str) -> Vec<Vec<(String, String)>> {
        match self {
            Outbox::Redis { .. } => Vec::new(),
            Outbox::Memory { keys, state, .. } => Self::memory_state(state)
                .logs
                .get(&keys.outbox(channel))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::message::Reply;

    fn msg() -> OutgoingMessage {
        OutgoingMessage::new("shop", "1555", Reply::text("hi"), "evt:0")
    }

    #[tokio::test]
    async fn memory_claim_send_skip() {
        let o = Outbox::memory(Keys::new("t"), OutboxOptions::default());
        let m = msg();
        let OutboxState::Claimed { marker } = o.record(&m, 1000).await.unwrap() else {
            panic!("first record claims");
        };
        assert_eq!(marker_since(&marker), 1000);
        match o.record(&m, 2000).await.unwrap() {
            OutboxState::InFlight { since_ms, .. } => assert_eq!(since_ms, 1000),
            other => panic!("{other:?}"),
        }
        o.mark_sent(&m, &Sent::new("wamid.1"), 3000).await.unwrap();
        assert_eq!(
            o.record(&m, 4000).await.unwrap(),
            OutboxState::AlreadySent("wamid.1".into())
        );
        assert_eq!(
            o.lookup_message("shop", "wamid.1", 4000).await.unwrap(),
            Some(SentRef {
                outbox_key: "evt:0".into(),
                conversation: "1555".into()
            })
        );
        assert_eq!(o.memory_log("shop").len(), 1);
    }

    #[tokio::test]
    async fn memory_failure_releases_and_takeover_is_conditional() {
        let o = Outbox::memory(Keys::new("t"), OutboxOptions::default());
        let m = msg();
        let OutboxState::Claimed { marker } = o.record(&m, 1).await.unwrap() else {
            panic!()
        };
        let err = SendError::Transient { detail: "x".into() };
        o.mark_failed(&m, &marker, &err, 2).await.unwrap();
        let OutboxState::Claimed { .. } = o.record(&m, 3).await.unwrap() else {
            panic!("released claim is free again")
        };
        let OutboxState::InFlight { marker: seen, .. } = o.record(&m, 4).await.unwrap() else {
            panic!()
        };
        assert!(matches!(
            o.take_over(&m, &seen, 5).await.unwrap(),
            OutboxState::Claimed { .. }
        ));
        // The stale marker no longer matches: a second taker does not claim.
        assert!(matches!(
            o.take_over(&m, &seen, 6).await.unwrap(),
            OutboxState::InFlight { .. }
        ));
        assert!(o
            .mark_status_seen("shop", "evt:0", "wamid.9", 7)
            .await
            .unwrap());
        assert!(!o
            .mark_status_seen("shop", "evt:0", "wamid.9", 8)
            .await
            .unwrap());
        assert_eq!(
            o.record(&m, 9).await.unwrap(),
            OutboxState::AlreadySent("wamid.9".into())
        );
    }
}
