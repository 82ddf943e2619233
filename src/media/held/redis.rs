//! Held uploads in Redis: one hash (`mime`, `name`, `data`) per file, with a TTL.

use super::HeldUploadsBackend;
use crate::keys::Keys;
use crate::media::{MediaError, MediaFile};
use crate::redis_conn::RedisConn;

#[derive(Clone)]
pub struct RedisHeldUploads {
    con: RedisConn,
    keys: Keys,
    pub(super) ttl_secs: u64,
}

fn store_error(e: redis::RedisError) -> MediaError {
    MediaError::Store {
        detail: e.to_string(),
    }
}

impl RedisHeldUploads {
    pub fn new(con: impl Into<RedisConn>, keys: Keys, ttl_secs: u64) -> RedisHeldUploads {
        RedisHeldUploads {
            con: con.into(),
            keys,
            ttl_secs,
        }
    }
}

impl HeldUploadsBackend for RedisHeldUploads {
    async fn put_as(&self, channel: &str, id: &str, file: MediaFile) -> Result<(), MediaError> {
        let key = self.keys.media_upload(channel, id);
        let mut con = self.con.clone();
        // One MULTI: the file never exists without its expiry.
        redis::pipe()
            .atomic()
            .hset(&key, "mime", &file.mime_type)
            .hset(&key, "name", file.filename.as_deref().unwrap_or(""))
            .hset(&key, "data", file.bytes.as_ref())
            .expire(&key, self.ttl_secs as i64)
            .query_async::<()>(&mut con)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, channel: &str, id: &str) -> Result<MediaFile, MediaError> {
        let mut con = self.con.clone();
        let (mime, name, data): (Option<String>, Option<String>, Option<Vec<u8>>) =
            redis::cmd("HMGET")
                .arg(self.keys.media_upload(channel, id))
                .arg("mime")
                .arg("name")
                .arg("data")
                .query_async(&mut con)
                .await
                .map_err(store_error)?;
        let (Some(mime), Some(data)) = (mime, data) else {
            return Err(MediaError::NotFound { id: id.to_string() });
        };
        Ok(MediaFile {
            bytes: data.into(),
            mime_type: mime,
            filename: name.filter(|n| !n.is_empty()),
        })
    }
}
