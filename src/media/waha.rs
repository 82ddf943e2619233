//! Media on a Personal channel (WAHA): uploads are held by coexist and sent inline; inbound
//! files are fetched from the gateway's `/api/files/…` with the channel's API key.

use super::{
    check_upload, network_error, Download, HeldUploads, HeldUploadsBackend, MediaError, MediaFile,
};
use crate::config::Secret;
use crate::outbound::rules::is_gateway_media_id;
use std::fmt;

/// Largest file a Personal channel holds for sending (it sits in Redis until sent).
pub const MAX_HELD_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct WahaMedia {
    channel: String,
    api_url: Option<String>,
    api_key: Option<Secret>,
    session: String,
    http: reqwest::Client,
    held: HeldUploads,
    limit: u64,
}

impl fmt::Debug for WahaMedia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WahaMedia")
            .field("channel", &self.channel)
            .field("api_url", &self.api_url)
            .field("session", &self.session)
            .finish()
    }
}

impl WahaMedia {
    pub fn new(
        channel: &str,
        api_url: Option<String>,
        api_key: Option<Secret>,
        session: String,
        http: reqwest::Client,
        held: HeldUploads,
        limit: u64,
    ) -> WahaMedia {
        WahaMedia {
            channel: channel.to_string(),
            api_url: api_url
                .map(|u| u.trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty()),
            api_key,
            session,
            http,
            held,
            limit,
        }
    }

    /// Holds `file` for sending (Meta's type table, at most [`MAX_HELD_BYTES`]).
    pub async fn upload(&self, file: MediaFile) -> Result<String, MediaError> {
        check_upload(
            &file.mime_type,
            file.bytes.len() as u64,
            Some(MAX_HELD_BYTES),
        )?;
        self.held.put(&self.channel, file).await
    }

    /// A held upload (`cxm_…`), or a file the gateway keeps (`/api/files/{session}/{id}`).
    pub async fn open(&self, id: &str) -> Result<Download, MediaError> {
        if is_gateway_media_id(id) {
            return Ok(Download::held(self.held.get(&self.channel, id).await?));
        }
        if id.is_empty() || id.contains(['/', '?', '#', '\\']) || id.starts_with('.') {
            return Err(MediaError::NotFound { id: id.to_string() });
        }
        let path = format!("/api/files/{}/{}", self.session, id);
        self.fetch(&path, id).await
    }

    /// The file of an inbound message: the payload's URL, fetched from the configured
    /// gateway (only its path is taken, so the API key never goes to another host, and a
    /// gateway that announces itself as `localhost` is still reached).
    pub async fn open_event_media(
        &self,
        media: &crate::event::Media,
    ) -> Result<Download, MediaError> {
        if let Some(url) = &media.url {
            let parsed = reqwest::Url::parse(url).map_err(|_| MediaError::NoMedia)?;
            let mut path = parsed.path().to_string();
            if let Some(q) = parsed.query() {
                path = format!("{path}?{q}");
            }
            return self.fetch(&path, url).await;
        }
        match &media.id {
            Some(id) => self.open(id).await,
            None => Err(MediaError::NoMedia),
        }
    }

    async fn fetch(&self, path: &str, id: &str) -> Result<Download, MediaError> {
        let base = self
            .api_url
            .as_ref()
            .ok_or_else(|| MediaError::NotConfigured(self.channel.clone()))?;
        let mut request = self.http.get(format!("{base}{path}"));
        if let Some(key) = &self.api_key {
            request = request.header("X-Api-Key", key.expose());
        }
        let response = request.send().await.map_err(network_error)?;
        match response.status().as_u16() {
            200..=299 => Download::http(response, None, self.limit),
            404 | 410 => Err(MediaError::NotFound { id: id.to_string() }),
            401 | 403 => Err(MediaError::Unauthorized {
                detail: format!("WAHA HTTP {}", response.status().as_u16()),
            }),
            s @ (408 | 429 | 500..=599) => Err(MediaError::Transient {
                detail: format!("WAHA HTTP {s}"),
            }),
            s => Err(MediaError::Rejected {
                code: i64::from(s),
                message: format!("WAHA HTTP {s}"),
            }),
        }
    }
}
