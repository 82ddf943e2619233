//! `[media] store = "dir:<path>"`: a copy of every inbound media file, kept by the worker before
//! the bot runs. Meta's download URLs expire within minutes and a WAHA gateway forgets its
//! files; a bot that answers a day later still needs the photo. Copies are deleted after
//! `retention_days`.
//!
//! Layout: `<dir>/<channel>/<message id>.<ext>`, both names reduced to safe characters. A copy
//! is written to `<name>.part`, synced, then renamed: a crash leaves a `.part` (removed by the
//! next prune), never a truncated file under the final name. Handling an event again finds
//! the finished copy and reuses it.

use super::{MediaError, MediaHub};
use crate::clock::{backoff, Fnv64};
use crate::event::Media;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// Attempts at one copy while the provider answers with a retryable error.
const ATTEMPTS: u32 = 3;
/// A `.part` file older than this belongs to a copy that will never finish.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(3600);
/// Longest file-name stem kept as written (longer ones are cut and hashed).
const MAX_STEM: usize = 96;

/// Why a copy could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("media: {0}")]
    Media(#[from] MediaError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The directory copies are kept in, for how long, and how long one copy may take.
#[derive(Clone, Debug)]
pub struct MediaStore {
    dir: PathBuf,
    retention: Duration,
    budget: Duration,
}

impl MediaStore {
    /// `budget`: the most one [`MediaStore::keep`] may take, retries included.
    pub fn new(dir: impl Into<PathBuf>, retention: Duration, budget: Duration) -> MediaStore {
        MediaStore {
            dir: dir.into(),
            retention,
            budget,
        }
    }

    /// Where the copy of `message_id`'s file on `channel` lives.
    pub fn path_for(&self, channel: &str, message_id: &str, media: &Media) -> PathBuf {
        let name = format!("{}.{}", safe_name(message_id), extension(media));
        self.dir.join(safe_name(channel)).join(name)
    }

    /// Keeps a copy of `media` (the file `message_id` carries on `channel`) and answers its
    /// path; a copy made earlier is reused. Retryable provider errors are tried again, up to
    /// [`ATTEMPTS`] in all, but every attempt and wait must fit in the store's `budget` (one
    /// media timeout): the partition's other customers wait behind this, so a provider that
    /// keeps failing costs them one timeout, not one per attempt.
    pub async fn keep(
        &self,
        hub: &MediaHub,
        channel: &str,
        message_id: &str,
        media: &Media,
    ) -> Result<PathBuf, StoreError> {
        let path = self.path_for(channel, message_id, media);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let deadline = tokio::time::Instant::now() + self.budget;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let copied = tokio::time::timeout_at(deadline, self.copy(hub, channel, media, &path))
                .await
                .unwrap_or_else(|_| Err(out_of_time(self.budget)));
            match copied {
                Err(StoreError::Media(e)) if e.is_retryable() && attempt < ATTEMPTS => {
                    let wait = backoff(
                        Duration::from_millis(250),
                        2,
                        attempt,
                        Duration::from_secs(2),
                    );
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(StoreError::Media(e));
                    }
                    tracing::info!(channel, message = message_id, attempt, error = %e, "media copy failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other.map(|()| path),
            }
        }
    }

    /// One attempt: stream the file into `<path>.part`, sync it, rename it into place.
    async fn copy(
        &self,
        hub: &MediaHub,
        channel: &str,
        media: &Media,
        path: &Path,
    ) -> Result<(), StoreError> {
        let mut download = hub.open_event_media(channel, media).await?;
        let partial = path.with_extension(format!(
            "{}.part",
            path.extension().and_then(|e| e.to_str()).unwrap_or("bin")
        ));
        let io = |source| StoreError::Io {
            path: partial.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let written = async {
            while let Some(chunk) = download.chunk().await? {
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            Ok::<(), StoreError>(())
        }
        .await;
        drop(file);
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, path).await.map_err(io)
    }

    /// Deletes copies older than the retention and abandoned `.part` files; answers how many
    /// files went. Blocking (directory walk): run it off the async threads.
    pub fn prune(&self, now: SystemTime) -> std::io::Result<usize> {
        let channels = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for channel in channels.flatten() {
            if !channel.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for file in std::fs::read_dir(channel.path())?.flatten() {
                let Ok(meta) = file.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                let partial = file.path().extension().is_some_and(|e| e == "part");
                let limit = if partial {
                    PARTIAL_MAX_AGE
                } else {
                    self.retention
                };
                if age > limit && std::fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A copy whose attempts did not fit in `budget`.
fn out_of_time(budget: Duration) -> StoreError {
    StoreError::Media(MediaError::Transient {
        detail: format!("no copy within {} ms", budget.as_millis()),
    })
}

/// `name` with every character outside `[A-Za-z0-9._-]` replaced, no leading dot, at most
/// [`MAX_STEM`] long; when anything had to change, a hash of the original keeps two names
/// apart that would otherwise reduce to the same (`wamid.A+B=` vs `wamid.A/B=`).
fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM)
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out != name || out.is_empty() {
        let hash = Fnv64::default().write(name.as_bytes()).finish();
        out.push_str(&format!("-{hash:016x}"));
    }
    out
}

/// The file's extension: the one of its own file name when it has a short plain one, else one
/// for its MIME type, else `bin`.
fn extension(media: &Media) -> String {
    let plain =
        |e: &str| !e.is_empty() && e.len() <= 8 && e.chars().all(|c| c.is_ascii_alphanumeric());
    if let Some(ext) = media
        .filename
        .as_deref()
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .filter(|e| plain(e))
    {
        return ext;
    }
    let mime = media.mime_type.as_deref().unwrap_or("");
    let essence = mime.split(';').next().unwrap_or("").trim();
    let known = match essence {
        "image/jpeg" => "jpg",
        "audio/mpeg" => "mp3",
        "audio/mp4" => "m4a",
        "text/plain" => "txt",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    match essence.split_once('/') {
        Some((_, sub)) if plain(sub) => sub.to_ascii_lowercase(),
        _ => "bin".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(mime: &str, filename: Option<&str>) -> Media {
        Media {
            mime_type: Some(mime.into()),
            filename: filename.map(Into::into),
            ..Media::default()
        }
    }

    #[test]
    fn names_are_safe_and_distinct() {
        let a = safe_name("wamid.HBgL+A/B=");
        let b = safe_name("wamid.HBgL_A_B_");
        assert!(a.starts_with("wamid.HBgL_A_B_-"), "{a}");
        assert_ne!(a, b, "a hash keeps reduced names apart");
        assert_eq!(
            safe_name("plain-id_1.x"),
            "plain-id_1.x",
            "safe names stay as written"
        );
        for hostile in ["../../etc/passwd", "..", "/", "", "a\0b", "é"] {
            let s = safe_name(hostile);
            assert!(
                !s.contains('/') && !s.starts_with('.') && !s.is_empty(),
                "{hostile:?} -> {s}"
            );
        }
        assert!(safe_name(&"x".repeat(500)).len() < 120);
    }

    #[test]
    fn extensions_come_from_the_file_name_then_the_mime_type() {
        assert_eq!(
            extension(&media("application/pdf", Some("Invoice 7.PDF"))),
            "pdf"
        );
        assert_eq!(extension(&media("image/jpeg", None)), "jpg");
        assert_eq!(extension(&media("audio/ogg; codecs=opus", None)), "ogg");
        assert_eq!(
            extension(&media("image/webp", Some("no-extension"))),
            "webp"
        );
        assert_eq!(
            extension(&media(
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                None
            )),
            "bin"
        );
        assert_eq!(extension(&Media::default()), "bin");
    }

    #[test]
    fn paths_stay_inside_the_store() {
        let store = MediaStore::new(
            "/srv/media",
            Duration::from_secs(86_400),
            Duration::from_secs(60),
        );
        let p = store.path_for("../shop", "../../x", &media("image/png", None));
        assert!(p.starts_with("/srv/media"));
        assert!(
            !p.components().any(|c| c == std::path::Component::ParentDir),
            "{p:?}"
        );
        assert_eq!(p.extension().unwrap(), "png");
    }

    #[test]
    fn prune_removes_old_copies_and_abandoned_parts_only() {
        let dir = std::env::temp_dir().join(format!("coexist-store-{}", rand::random::<u64>()));
        let shop = dir.join("shop");
        std::fs::create_dir_all(&shop).unwrap();
        let now = SystemTime::now();
        let touch = |name: &str, age: Duration| {
            let path = shop.join(name);
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(now - age).unwrap();
            path
        };
        let day = Duration::from_secs(86_400);
        let old = touch("old.jpg", day * 8);
        let fresh = touch("fresh.jpg", day * 6);
        let stale_part = touch("gone.jpg.part", Duration::from_secs(7200));
        let live_part = touch("busy.jpg.part", Duration::from_secs(60));
        let store = MediaStore::new(&dir, day * 7, day);
        assert_eq!(store.prune(now).unwrap(), 2);
        assert!(!old.exists() && !stale_part.exists());
        assert!(fresh.exists() && live_part.exists());
        assert_eq!(
            MediaStore::new(dir.join("none"), day, day)
                .prune(now)
                .unwrap(),
            0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
