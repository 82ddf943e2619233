//! Held uploads in this process's memory: the Redis store's twin for `coexist run` without
//! `[redis]`. Expiry is judged on each read, and expired files are pruned on each upload.

use super::HeldUploadsBackend;
use crate::media::{MediaError, MediaFile};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (channel, id) → the file and when it expires.
type MemoryFiles = Arc<Mutex<HashMap<(String, String), (MediaFile, Instant)>>>;

#[derive(Clone)]
pub struct MemoryHeldUploads {
    files: MemoryFiles,
    pub(super) ttl: Duration,
}

impl MemoryHeldUploads {
    pub fn new(ttl_secs: u64) -> MemoryHeldUploads {
        MemoryHeldUploads {
            files: Default::default(),
            ttl: Duration::from_secs(ttl_secs),
        }
    }
}

impl HeldUploadsBackend for MemoryHeldUploads {
    async fn put_as(&self, channel: &str, id: &str, file: MediaFile) -> Result<(), MediaError> {
        let now = Instant::now();
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        // Uploads are rare next to messages: pruning on each is cheap enough.
        files.retain(|_, (_, expires)| *expires > now);
        files.insert(
            (channel.to_string(), id.to_string()),
            (file, now + self.ttl),
        );
        Ok(())
    }

    async fn get(&self, channel: &str, id: &str) -> Result<MediaFile, MediaError> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        match files.get(&(channel.to_string(), id.to_string())) {
            Some((file, expires)) if *expires > Instant::now() => Ok(file.clone()),
            _ => Err(MediaError::NotFound { id: id.to_string() }),
        }
    }
}
