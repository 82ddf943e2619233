//! Files uploaded to a Personal channel, held until they are sent: WAHA has no media store of
//! its own, so coexist keeps the file (Redis hash `mime`, `name`, `data` with a TTL, or this
//! process's memory) under an id `cxm_…` and the WAHA sender sends it inline.

use super::{MediaError, MediaFile};
use crate::keys::Keys;
use crate::outbound::rules::GATEWAY_MEDIA_PREFIX;
use crate::redis_conn::RedisConn;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (channel, id) → the file and when it expires.
type MemoryFiles = Arc<Mutex<HashMap<(String, String), (MediaFile, Instant)>>>;

/// The held uploads of every Personal channel.
#[derive(Clone)]
pub enum HeldUploads {
    Redis {
        con: RedisConn,
        keys: Keys,
        ttl_secs: u64,
    },
    Memory {
        files: MemoryFiles,
        ttl: Duration,
    },
}

impl fmt::Debug for HeldUploads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldUploads::Redis { ttl_secs, .. } => {
                write!(f, "HeldUploads::Redis(ttl {ttl_secs} s)")
            }
            HeldUploads::Memory { ttl, .. } => write!(f, "HeldUploads::Memory(ttl {ttl:?})"),
        }
    }
}

fn store_error(e: redis::RedisError) -> MediaError {
    MediaError::Store {
        detail: e.to_string(),
    }
}

/// A new id for a held upload: `cxm_` and 128 random bits.
fn new_id() -> String {
    format!("{GATEWAY_MEDIA_PREFIX}{:032x}", rand::random::<u128>())
}

impl HeldUploads {
    pub fn redis(con: impl Into<RedisConn>, keys: Keys, ttl_secs: u64) -> HeldUploads {
        HeldUploads::Redis {
            con: con.into(),
            keys,
            ttl_secs,
        }
    }

    pub fn memory(ttl_secs: u64) -> HeldUploads {
        HeldUploads::Memory {
            files: Default::default(),
            ttl: Duration::from_secs(ttl_secs),
        }
    }

    /// Keeps `file` for `channel`; answers its id (`cxm_…`).
    pub async fn put(&self, channel: &str, file: MediaFile) -> Result<String, MediaError> {
        let id = new_id();
        self.put_as(channel, &id, file).await?;
        Ok(id)
    }

    /// Keeps `file` for `channel` under `id`.
    pub async fn put_as(&self, channel: &str, id: &str, file: MediaFile) -> Result<(), MediaError> {
        match self {
            HeldUploads::Redis {
                con,
                keys,
                ttl_secs,
            } => {
                let key = keys.media_upload(channel, id);
                let mut con = con.clone();
                // One MULTI: the file never exists without its expiry.
                redis::pipe()
                    .atomic()
                    .hset(&key, "mime", &file.mime_type)
                    .hset(&key, "name", file.filename.as_deref().unwrap_or(""))
                    .hset(&key, "data", file.bytes.as_ref())
                    .expire(&key, *ttl_secs as i64)
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(store_error)?;
            }
            HeldUploads::Memory { files, ttl } => {
                let now = Instant::now();
                let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
                // Uploads are rare next to messages: pruning on each is cheap enough.
                files.retain(|_, (_, expires)| *expires > now);
                files.insert((channel.to_string(), id.to_string()), (file, now + *ttl));
            }
        }
        Ok(())
    }

    /// The file held under `id` on `channel`.
    pub async fn get(&self, channel: &str, id: &str) -> Result<MediaFile, MediaError> {
        let not_found = || MediaError::NotFound { id: id.to_string() };
        match self {
            HeldUploads::Redis { con, keys, .. } => {
                let mut con = con.clone();
                let (mime, name, data): (Option<String>, Option<String>, Option<Vec<u8>>) =
                    redis::cmd("HMGET")
                        .arg(keys.media_upload(channel, id))
                        .arg("mime")
                        .arg("name")
                        .arg("data")
                        .query_async(&mut con)
                        .await
                        .map_err(store_error)?;
                let (Some(mime), Some(data)) = (mime, data) else {
                    return Err(not_found());
                };
                Ok(MediaFile {
                    bytes: data.into(),
                    mime_type: mime,
                    filename: name.filter(|n| !n.is_empty()),
                })
            }
            HeldUploads::Memory { files, .. } => {
                let files = files.lock().unwrap_or_else(|p| p.into_inner());
                match files.get(&(channel.to_string(), id.to_string())) {
                    Some((file, expires)) if *expires > Instant::now() => Ok(file.clone()),
                    _ => Err(not_found()),
                }
            }
        }
    }
}
