//! The outbox: each reply is sent once per outbox key (`<source event id>:<reply index>`),
//! however often its event is handled.
//!
//! Before sending, the key `keys.sent(ch, outbox_key)` is claimed (`pending:<ms>:<token>`);
//! after the send it says `sent:<message id>`. A second handling of the event finds `sent:` and
//! skips. The one window left is a crash after the request left and before `mark_sent`: the
//! key then stays `pending`. Meta echoes the outbox key (`biz_opaque_callback_data`) in the
//! message's status webhooks, and [`OutboxBackend::mark_status_seen`] turns the key into `sent:`
//! when one arrives; a later handler that finds `pending` gets [`OutboxState::InFlight`], waits
//! a bounded time for such a status, then takes the claim over and sends again.
//!
//! Every outcome is appended to the channel's audit stream `keys.outbox(ch)` (`MAXLEN ~`).
//!
//! The contract is the [`OutboxBackend`] trait (docs there), one file per backend: [`redis`]
//! runs `lua/outbox_*.lua`, [`memory`] is the twin for the single-process mode and behaves the
//! same. [`Outbox`] is an enum over the two, dispatched by `enum_dispatch` (like the queue's).

pub mod memory;
pub mod redis;

pub use self::memory::MemoryOutbox;
pub use self::redis::RedisOutbox;

use super::message::{OutgoingMessage, Sent};
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use enum_dispatch::enum_dispatch;

/// Where an outbox key stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboxState {
    /// Ours to send; `marker` identifies our claim (to release it on failure).
    Claimed { marker: String },
    /// Already sent, with this message id: skip.
    AlreadySent(String),
    /// Another send of this key started at `since_ms` and has not been confirmed: it may have
    /// left before a crash. Wait for a status, then [`OutboxBackend::take_over`] with `marker`.
    InFlight { since_ms: i64, marker: String },
    /// Given up for good with this code ([`OutboxBackend::give_up`]): never sent.
    GivenUp(String),
}

/// What a status webhook's `biz_opaque_callback_data` led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentRef {
    pub outbox_key: String,
    pub conversation: String,
}

/// An outbox call that failed: only the Redis backend fails (the memory twin never does).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: {0}")]
    Redis(#[from] ::redis::RedisError),
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

/// What an outbox does, on either backend: one behaviour suite (`outbox_suite` in
/// `tests/outbound.rs`) runs on both. Native `async fn`: every caller holds a concrete
/// [`Outbox`], so the futures stay `Send` where the backend's are.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait OutboxBackend {
    /// Claims `msg.outbox_key` for sending (`SET NX`), or says why not.
    async fn record(&self, msg: &OutgoingMessage, now_ms: i64) -> Result<OutboxState, OutboxError>;

    /// Takes over an in-flight claim whose sender gave no sign of life (no status within the
    /// bounded wait). Only succeeds while the key still holds `seen_marker` (or nothing).
    async fn take_over(
        &self,
        msg: &OutgoingMessage,
        seen_marker: &str,
        now_ms: i64,
    ) -> Result<OutboxState, OutboxError>;

    /// Records the send: `sent:<id>` on the outbox key, message id → `<outbox key>\n<to>` so
    /// later statuses find the conversation, and an audit entry.
    async fn mark_sent(
        &self,
        msg: &OutgoingMessage,
        sent: &Sent,
        now_ms: i64,
    ) -> Result<(), OutboxError>;

    /// Appends an audit entry for `msg` with this outcome (the outbound queue's memory twin
    /// logs failures through it; in Redis `out_settle.lua` writes the entry itself).
    async fn log_outcome(
        &self,
        msg: &OutgoingMessage,
        outcome: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError>;

    /// The message failed for good: our claim becomes `failed:<code>`, so it is never sent
    /// after a crash either. Returns whether the claim was ours.
    async fn give_up(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        code: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError>;

    /// Gives our claim (`marker`) up without logging: the attempt failed and the message will
    /// be tried again (the outbound queue logs the final outcome). Returns whether it was ours.
    async fn release(
        &self,
        msg: &OutgoingMessage,
        marker: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError>;

    /// A status webhook carried `biz_opaque_callback_data = outbox_key`: that reply was sent
    /// as `message_id`. Returns true when this changed the key (it was pending or unknown).
    /// Call it as early as possible (ingress, or before the status reaches the partition's
    /// queue): a worker waiting on an in-flight key must see it.
    async fn mark_status_seen(
        &self,
        channel: &str,
        outbox_key: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError>;

    /// The current value of an outbox key (`pending:…` / `sent:…`), for operators and tests.
    async fn get(
        &self,
        channel: &str,
        outbox_key: &str,
        now_ms: i64,
    ) -> Result<Option<String>, OutboxError>;

    /// Which reply (and conversation) a sent message id belongs to.
    async fn lookup_message(
        &self,
        channel: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<Option<SentRef>, OutboxError>;

    /// Marks the channel unhealthy (credentials refused) until [`OutboxBackend::clear_health`];
    /// the value (`unhealthy since <ms>: <reason>`) is what an operator command shows.
    async fn set_unhealthy(
        &self,
        channel: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), OutboxError>;

    /// Takes the mark of [`OutboxBackend::set_unhealthy`] away: the channel is healthy again.
    async fn clear_health(&self, channel: &str) -> Result<(), OutboxError>;

    /// `None`: healthy; `Some(description)`: marked unhealthy.
    async fn health(&self, channel: &str, now_ms: i64) -> Result<Option<String>, OutboxError>;
}

/// The outbox, Redis-backed or in memory; every [`OutboxBackend`] method dispatches to the
/// backend (`enum_dispatch`: no boxing, no forwarding written by hand).
#[enum_dispatch(OutboxBackend)]
#[derive(Clone)]
pub enum Outbox {
    Redis(RedisOutbox),
    Memory(MemoryOutbox),
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outbox::Redis(o) => write!(f, "Outbox::Redis({})", o.keys.prefix()),
            Outbox::Memory(o) => write!(f, "Outbox::Memory({})", o.keys.prefix()),
        }
    }
}

impl Outbox {
    pub fn redis(con: impl Into<RedisConn>, keys: Keys, options: OutboxOptions) -> Outbox {
        Outbox::Redis(RedisOutbox::new(con, keys, options))
    }

    pub fn memory(keys: Keys, options: OutboxOptions) -> Outbox {
        Outbox::Memory(MemoryOutbox::new(keys, options))
    }

    /// The memory twin's audit entries of a channel (the Redis twin: `XRANGE keys.outbox(ch)`).
    pub fn memory_log(&self, channel: &str) -> Vec<Vec<(String, String)>> {
        match self {
            Outbox::Redis(_) => Vec::new(),
            Outbox::Memory(o) => o.log(channel),
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

/// Someone else's claim, found holding the key: `marker` is its value.
fn in_flight(marker: String) -> OutboxState {
    OutboxState::InFlight {
        since_ms: marker_since(&marker),
        marker,
    }
}

/// The outbox key's value once sent (or once a status echoed it): `sent:<message id>`.
fn sent_value(message_id: &str) -> String {
    format!("sent:{message_id}")
}

/// What the message id maps to (`<outbox key>\n<to>`); empty for read receipts (not
/// messages: no status refers back to them).
fn message_reference(msg: &OutgoingMessage) -> String {
    if msg.reply.is_message() {
        format!("{}\n{}", msg.outbox_key, msg.to)
    } else {
        String::new()
    }
}

/// Reads a message id's mapping back (see [`message_reference`]).
fn sent_ref(reference: Option<String>) -> Option<SentRef> {
    reference.and_then(|v| {
        v.split_once('\n').map(|(k, c)| SentRef {
            outbox_key: k.to_string(),
            conversation: c.to_string(),
        })
    })
}

/// The health key's value while the channel is marked unhealthy.
fn unhealthy_value(reason: &str, now_ms: i64) -> String {
    format!("unhealthy since {now_ms}: {reason}")
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
        assert!(o.release(&m, &marker, 2).await.unwrap(), "our claim");
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
