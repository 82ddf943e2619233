//! Media both ways: uploads for sending, and downloads of what customers send.
//!
//! - **WABA** (Graph API): an upload is `POST /{phone_number_id}/media` and answers Meta's media
//!   id; a download asks `GET /{media id}` for a short-lived URL, then fetches it with the
//!   channel's token.
//! - **Personal** (WAHA): the gateway keeps no uploads, so coexist holds an uploaded file
//!   ([`held::HeldUploads`], `[media] upload_ttl_secs`) under an id `cxm_…` and sends it
//!   inline; a download fetches the gateway's file URL with the channel's API key, always
//!   from the configured `api_url` (a payload's host is not trusted with the key).
//!
//! Downloads stream: [`Download::chunk`] hands out the body piece by piece and refuses to go
//! past `[media] max_download_bytes`, so neither a bot nor the media route holds more than it
//! asked for.

pub mod graph;
pub mod held;
pub mod limits;
pub mod store;
pub mod waha;

use crate::channel::ChannelKind;
use crate::config::Config;
use bytes::Bytes;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use held::{HeldUploads, HeldUploadsBackend};
pub use limits::{check_upload, MediaLimit, LIMITS};

/// Why media could not be uploaded or fetched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Unknown id, or a media whose URL / retention expired (Meta keeps media 30 days).
    #[error("media {id:?} does not exist or has expired")]
    NotFound { id: String },
    #[error("{what} is {size} bytes; at most {limit} bytes are allowed")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("media type {mime:?} is not one WhatsApp accepts ({accepted})")]
    UnsupportedType {
        mime: String,
        accepted: &'static str,
    },
    #[error("the file is empty")]
    Empty,
    #[error("this event carries no media")]
    NoMedia,
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    /// No access token (WABA) or `api_url` (Personal): the channel runs dry.
    #[error(
        "channel {0:?} has no sending credentials (dry run): media cannot leave or be fetched"
    )]
    NotConfigured(String),
    #[error("credentials refused: {detail}")]
    Unauthorized { detail: String },
    #[error("refused by the provider (error {code}): {message}")]
    Rejected { code: i64, message: String },
    /// Network error, timeout, 5xx, 429: trying again later can work.
    #[error("transient failure: {detail}")]
    Transient { detail: String },
    #[error("media store: {detail}")]
    Store { detail: String },
}

impl MediaError {
    /// The snake_case code of the error (API answers, logs).
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::NotFound { .. } => "media_not_found",
            MediaError::TooLarge { .. } => "too_large",
            MediaError::UnsupportedType { .. } => "unsupported_type",
            MediaError::Empty => "empty",
            MediaError::NoMedia => "no_media",
            MediaError::UnknownChannel(_) => "unknown_channel",
            MediaError::NotConfigured(_) => "not_configured",
            MediaError::Unauthorized { .. } => "unauthorized",
            MediaError::Rejected { .. } => "rejected",
            MediaError::Transient { .. } => "transient",
            MediaError::Store { .. } => "store_error",
        }
    }

    /// Trying the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MediaError::Transient { .. } | MediaError::Store { .. }
        )
    }
}

pub(crate) fn network_error(e: reqwest::Error) -> MediaError {
    MediaError::Transient {
        detail: crate::outbound::graph::describe_network_error(e),
    }
}

/// A whole file in memory: an upload, or a download collected by [`Download::bytes`].
#[derive(Clone, PartialEq, Eq)]
pub struct MediaFile {
    pub bytes: Bytes,
    /// `image/jpeg`, `audio/ogg; codecs=opus`, …
    pub mime_type: String,
    pub filename: Option<String>,
}

impl MediaFile {
    pub fn new(bytes: impl Into<Bytes>, mime_type: impl Into<String>) -> MediaFile {
        MediaFile {
            bytes: bytes.into(),
            mime_type: mime_type.into(),
            filename: None,
        }
    }

    pub fn with_filename(mut self, filename: impl Into<String>) -> MediaFile {
        self.filename = Some(filename.into());
        self
    }
}

impl fmt::Debug for MediaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaFile")
            .field("bytes", &self.bytes.len())
            .field("mime_type", &self.mime_type)
            .field("filename", &self.filename)
            .finish()
    }
}

/// A download in progress: its type and length are known, its body is read piece by piece.
pub struct Download {
    mime_type: String,
    length: Option<u64>,
    filename: Option<String>,
    body: Body,
    limit: u64,
    read: u64,
}

enum Body {
    Http(reqwest::Response),
    Held(Option<Bytes>),
}

impl Download {
    /// Starts reading `response`; refuses at once a declared length above `limit`.
    pub(crate) fn http(
        response: reqwest::Response,
        mime_type: Option<String>,
        limit: u64,
    ) -> Result<Download, MediaError> {
        let length = response.content_length();
        if let Some(len) = length.filter(|l| *l > limit) {
            return Err(MediaError::TooLarge {
                what: "the media file".into(),
                size: len,
                limit,
            });
        }
        let mime_type = mime_type
            .or_else(|| {
                response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "application/octet-stream".into());
        Ok(Download {
            mime_type,
            length,
            filename: None,
            body: Body::Http(response),
            limit,
            read: 0,
        })
    }

    pub(crate) fn held(file: MediaFile) -> Download {
        Download {
            length: Some(file.bytes.len() as u64),
            limit: file.bytes.len() as u64,
            mime_type: file.mime_type,
            filename: file.filename,
            body: Body::Held(Some(file.bytes)),
            read: 0,
        }
    }

    pub fn mime_type(&self) -> &str {
        &self.mime_type
    }

    /// The length the provider declared, when it did.
    pub fn content_length(&self) -> Option<u64> {
        self.length
    }

    pub fn filename(&self) -> Option<&str> {
        self.filename.as_deref()
    }

    /// The next piece of the body; `None` at the end. Fails once more than the limit came.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, MediaError> {
        let piece = match &mut self.body {
            Body::Held(bytes) => bytes.take(),
            Body::Http(response) => response.chunk().await.map_err(network_error)?,
        };
        if let Some(p) = &piece {
            self.read += p.len() as u64;
            if self.read > self.limit {
                return Err(MediaError::TooLarge {
                    what: "the media file".into(),
                    size: self.read,
                    limit: self.limit,
                });
            }
        }
        Ok(piece)
    }

    /// Reads the whole body (within the limit).
    pub async fn bytes(mut self) -> Result<MediaFile, MediaError> {
        let mut buf = Vec::with_capacity(self.length.unwrap_or(0).min(self.limit) as usize);
        while let Some(piece) = self.chunk().await? {
            buf.extend_from_slice(&piece);
        }
        Ok(MediaFile {
            bytes: buf.into(),
            mime_type: self.mime_type,
            filename: self.filename,
        })
    }
}

/// One channel's media client.
#[derive(Clone, Debug)]
enum ChannelMedia {
    Graph(graph::GraphMedia),
    Waha(waha::WahaMedia),
    /// A channel without credentials (dry run, the bot test kit): uploads are held in this
    /// process and only held files can be opened.
    Offline {
        channel: String,
        kind: ChannelKind,
    },
}

impl ChannelMedia {
    async fn upload_offline(
        held: &HeldUploads,
        channel: &str,
        kind: ChannelKind,
        file: MediaFile,
    ) -> Result<String, MediaError> {
        check_upload(&file.mime_type, file.bytes.len() as u64, None)?;
        match kind {
            // Personal ids are what the WAHA sender sends inline; WABA ones must not look so.
            ChannelKind::Personal => held.put(channel, file).await,
            ChannelKind::Waba => {
                let id = format!("dryrun{:020}", rand::random::<u64>());
                held.put_as(channel, &id, file).await?;
                Ok(id)
            }
        }
    }

    async fn open_offline(
        held: &HeldUploads,
        channel: &str,
        id: &str,
    ) -> Result<Download, MediaError> {
        // Without credentials nothing else can be reached: an id not held here is not found.
        Ok(Download::held(held.get(channel, id).await?))
    }
}

/// Every channel's media client, built once per process.
#[derive(Clone, Debug)]
pub struct MediaHub {
    channels: Arc<HashMap<String, ChannelMedia>>,
    held: HeldUploads,
}

impl MediaHub {
    /// Clients for every configured channel; Personal uploads are held in `backend` (Redis,
    /// or this process's memory).
    pub fn new(
        config: &Config,
        backend: &crate::backend::Backend,
    ) -> Result<MediaHub, reqwest::Error> {
        let held = backend.held_uploads(config.media.upload_ttl_secs());
        let timeout = config.media.timeout();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
            .build()?;
        let limit = config.media.max_download_bytes();
        let channels = config
            .channels
            .iter()
            .map(|c| {
                let dry_run = match c.kind {
                    ChannelKind::Waba => c.access_token.is_none(),
                    ChannelKind::Personal => c.api_url.as_deref().is_none_or(str::is_empty),
                };
                let media = match c.kind {
                    _ if dry_run => ChannelMedia::Offline {
                        channel: c.id.clone(),
                        kind: c.kind,
                    },
                    ChannelKind::Waba => ChannelMedia::Graph(graph::GraphMedia::new(
                        &config.meta.graph_api_url,
                        c.phone_number_id.as_deref().unwrap_or_default(),
                        c.access_token.clone(),
                        http.clone(),
                        limit,
                    )),
                    ChannelKind::Personal => ChannelMedia::Waha(waha::WahaMedia::new(
                        &c.id,
                        c.api_url.clone(),
                        c.api_key.clone(),
                        c.session.clone().unwrap_or_else(|| "default".into()),
                        http.clone(),
                        held.clone(),
                        limit,
                    )),
                };
                (c.id.clone(), media)
            })
            .collect();
        Ok(MediaHub {
            channels: Arc::new(channels),
            held,
        })
    }

    /// The store of Personal uploads (the WAHA sender reads it to send them inline).
    pub fn held(&self) -> &HeldUploads {
        &self.held
    }

    fn channel(&self, channel: &str) -> Result<&ChannelMedia, MediaError> {
        self.channels
            .get(channel)
            .ok_or_else(|| MediaError::UnknownChannel(channel.to_string()))
    }

    /// Uploads `file` for sending on `channel`; answers the media id to send it by.
    pub async fn upload(&self, channel: &str, file: MediaFile) -> Result<String, MediaError> {
        match self.channel(channel)? {
            ChannelMedia::Graph(g) => g.upload(file).await,
            ChannelMedia::Waha(w) => w.upload(file).await,
            ChannelMedia::Offline { channel, kind } => {
                ChannelMedia::upload_offline(&self.held, channel, *kind, file).await
            }
        }
    }

    /// Opens the media `id` names on `channel` (a Meta media id, a WAHA file name, or a held
    /// upload).
    pub async fn open(&self, channel: &str, id: &str) -> Result<Download, MediaError> {
        match self.channel(channel)? {
            ChannelMedia::Graph(g) => g.open(id).await,
            ChannelMedia::Waha(w) => w.open(id).await,
            ChannelMedia::Offline { channel, .. } => {
                ChannelMedia::open_offline(&self.held, channel, id).await
            }
        }
    }

    /// Opens the media an inbound event carries.
    pub async fn open_event_media(
        &self,
        channel: &str,
        media: &crate::event::Media,
    ) -> Result<Download, MediaError> {
        match self.channel(channel)? {
            ChannelMedia::Graph(g) => {
                g.open(media.id.as_deref().ok_or(MediaError::NoMedia)?)
                    .await
            }
            ChannelMedia::Waha(w) => w.open_event_media(media).await,
            ChannelMedia::Offline { channel, .. } => {
                let id = media.id.as_deref().ok_or(MediaError::NoMedia)?;
                ChannelMedia::open_offline(&self.held, channel, id).await
            }
        }
    }
}
