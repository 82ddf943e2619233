//! Where conversation states live: Redis for real deployments, memory for one process and for
//! bot authors' tests. Both behave the same, fencing included, and one test suite runs on both.
//!
//! Writes are **fenced**: a save names the partition lease the writer believes it holds, and
//! is refused (`SaveOutcome::Fenced`) unless the lease key still holds exactly that
//! `"<owner>:<token>"`. A worker that was paused or cut off and lost its lease therefore cannot
//! overwrite what the new owner wrote. Saves are also versioned: a save made from a copy older
//! than the stored state is refused (`SaveOutcome::Conflict`).

mod memory;
mod redis;

pub use self::memory::{MemoryConversationStore, MemoryLeases};
pub use self::redis::RedisConversationStore;
use super::state::ConversationState;
use crate::queue::Lease;
use enum_dispatch::enum_dispatch;

/// The state with the last outbound time noted beside it (`lo`) merged in.
pub(super) fn with_outbound(mut state: ConversationState, noted: Option<i64>) -> ConversationState {
    if let Some(at) = noted {
        state.last_outbound_ms = Some(state.last_outbound_ms.map_or(at, |t| t.max(at)));
    }
    state
}

/// Result of a save that reached the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Written; the stored state now has this version (keep it for the next save).
    Saved { version: u64 },
    /// The lease is no longer ours: nothing written. Stop handling this partition.
    Fenced,
    /// The stored state is newer than the copy we saved from: nothing written. Reload.
    Conflict { stored_version: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("conversation state at {key} is not valid JSON: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("conversation state does not serialize: {0}")]
    Encode(serde_json::Error),
    #[error("the lease is for channel {lease:?} but the save is for channel {channel:?}")]
    WrongChannel { lease: String, channel: String },
    #[error("unexpected reply from the save script: {0:?}")]
    UnexpectedReply(Vec<i64>),
}

/// What a conversation store does, on either backend (one behaviour suite,
/// `tests/conversation_store.rs`, runs on both). Native `async fn`: callers hold a concrete
/// [`ConversationStore`], so the futures stay `Send`.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait ConversationBackend {
    /// The stored state, or `None` for a conversation never saved (or expired).
    async fn load(
        &self,
        channel: &str,
        contact: &str,
    ) -> Result<Option<ConversationState>, StoreError>;

    /// Writes `state` if `lease` (the fencing token) still holds the partition lease and
    /// `state.version` is the stored version; refreshes the TTL.
    async fn save(
        &self,
        lease: &Lease,
        channel: &str,
        contact: &str,
        state: &ConversationState,
    ) -> Result<SaveOutcome, StoreError>;

    /// Notes a message the business sent outside any handled event (the send API): the
    /// conversation's last outbound time moves to `at_ms` if that is later. Kept beside the
    /// state (not in it), because only the partition's lease holder writes the state; `load`
    /// merges it. It never touches the window.
    async fn note_outbound(
        &self,
        channel: &str,
        contact: &str,
        at_ms: i64,
    ) -> Result<(), StoreError>;
}

/// The store, Redis or memory; every [`ConversationBackend`] method dispatches to the backend.
#[enum_dispatch(ConversationBackend)]
#[derive(Clone)]
pub enum ConversationStore {
    Redis(RedisConversationStore),
    Memory(MemoryConversationStore),
}

pub(super) fn check_channel(lease: &Lease, channel: &str) -> Result<(), StoreError> {
    if lease.channel == channel {
        Ok(())
    } else {
        Err(StoreError::WrongChannel {
            lease: lease.channel.clone(),
            channel: channel.to_owned(),
        })
    }
}

/// The JSON written for a save: the state with its version already bumped.
pub(super) fn encode_next(state: &ConversationState) -> Result<String, StoreError> {
    let mut next = state.clone();
    next.version = state.version + 1;
    serde_json::to_string(&next).map_err(StoreError::Encode)
}

pub(super) fn decode(key: &str, json: &str, version: u64) -> Result<ConversationState, StoreError> {
    let mut state: ConversationState =
        serde_json::from_str(json).map_err(|source| StoreError::Decode {
            key: key.to_owned(),
            source,
        })?;
    state.version = version;
    Ok(state)
}
