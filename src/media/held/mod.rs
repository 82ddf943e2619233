//! Files uploaded to a Personal channel, held until they are sent: WAHA has no media store of
//! its own, so coexist keeps the file (Redis hash `mime`, `name`, `data` with a TTL, or this
//! process's memory) under an id `cxm_…` and the WAHA sender sends it inline.
//!
//! The contract is the [`HeldUploadsBackend`] trait (docs there), one file per backend;
//! [`HeldUploads`] is an enum over the two, dispatched by `enum_dispatch`.

pub mod memory;
pub mod redis;

pub use self::memory::MemoryHeldUploads;
pub use self::redis::RedisHeldUploads;

use super::{MediaError, MediaFile};
use crate::keys::Keys;
use crate::outbound::rules::GATEWAY_MEDIA_PREFIX;
use crate::redis_conn::RedisConn;
use enum_dispatch::enum_dispatch;
use std::fmt;

/// A new id for a held upload: `cxm_` and 128 random bits.
fn new_id() -> String {
    format!("{GATEWAY_MEDIA_PREFIX}{:032x}", rand::random::<u128>())
}

/// What a store of held uploads does, on either backend: `tests/held_uploads.rs` runs one
/// behaviour suite on both.
#[allow(async_fn_in_trait)]
#[enum_dispatch]
pub trait HeldUploadsBackend {
    /// Keeps `file` for `channel`; answers its id (`cxm_…`).
    async fn put(&self, channel: &str, file: MediaFile) -> Result<String, MediaError> {
        let id = new_id();
        self.put_as(channel, &id, file).await?;
        Ok(id)
    }

    /// Keeps `file` for `channel` under `id`.
    async fn put_as(&self, channel: &str, id: &str, file: MediaFile) -> Result<(), MediaError>;

    /// The file held under `id` on `channel`.
    async fn get(&self, channel: &str, id: &str) -> Result<MediaFile, MediaError>;
}

/// The held uploads of every Personal channel, in Redis or in memory; every
/// [`HeldUploadsBackend`] method dispatches to the backend.
#[enum_dispatch(HeldUploadsBackend)]
#[derive(Clone)]
pub enum HeldUploads {
    Redis(RedisHeldUploads),
    Memory(MemoryHeldUploads),
}

impl fmt::Debug for HeldUploads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldUploads::Redis(r) => write!(f, "HeldUploads::Redis(ttl {} s)", r.ttl_secs),
            HeldUploads::Memory(m) => write!(f, "HeldUploads::Memory(ttl {:?})", m.ttl),
        }
    }
}

impl HeldUploads {
    pub fn redis(con: impl Into<RedisConn>, keys: Keys, ttl_secs: u64) -> HeldUploads {
        HeldUploads::Redis(RedisHeldUploads::new(con, keys, ttl_secs))
    }

    pub fn memory(ttl_secs: u64) -> HeldUploads {
        HeldUploads::Memory(MemoryHeldUploads::new(ttl_secs))
    }
}
