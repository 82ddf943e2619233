//! The media routes of the send API: `POST /v1/channels/{channel}/media` uploads a file for
//! sending, `GET /v1/channels/{channel}/media/{id}` streams a customer's file through coexist,
//! so a bot in any language needs only its API key, never the channel's token.

use super::{ApiError, SendApi};
use crate::media::{Download, MediaError, MediaFile};
use serde_json::{json, Value};

/// The largest upload the route reads (Meta's largest kind, documents: 100 MB).
pub const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;

impl ApiError {
    /// A media failure as an answer: the client's mistakes are 4xx, the provider's 502/503.
    pub fn media(e: MediaError) -> ApiError {
        let (status, code) = match &e {
            MediaError::NotFound { .. } | MediaError::NoMedia => (404, "media_not_found"),
            MediaError::TooLarge { .. } => (413, "too_large"),
            MediaError::UnsupportedType { .. } => (415, "unsupported_type"),
            MediaError::Empty => (400, "invalid_request"),
            MediaError::UnknownChannel(_) => (404, "unknown_channel"),
            MediaError::NotConfigured(_) => (422, "not_configured"),
            MediaError::Unauthorized { .. } => (502, "upstream_unauthorized"),
            MediaError::Rejected { .. } => (502, "upstream_rejected"),
            MediaError::Transient { .. } => (503, "upstream_unavailable"),
            MediaError::Store { .. } => return ApiError::unavailable(e),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl SendApi {
    fn media_hub(&self) -> Result<&crate::media::MediaHub, ApiError> {
        self.inner.media.as_ref().ok_or_else(|| {
            ApiError::not_found("media is not available in this process (no sender configured)")
        })
    }

    /// Uploads `bytes` of type `content_type` for sending on `channel`: 201
    /// `{"id", "mime_type", "size"}`; the id goes in a media message's `id`.
    pub async fn upload_media(
        &self,
        channel: &str,
        bytes: bytes::Bytes,
        content_type: Option<&str>,
        filename: Option<&str>,
    ) -> Result<(u16, Value), ApiError> {
        self.channel(channel)?;
        let mime = content_type
            .map(str::trim)
            .filter(|m| !m.is_empty() && !m.starts_with("multipart/"))
            .ok_or_else(|| {
                ApiError::new(
                    415,
                    "unsupported_type",
                    "send the file itself as the body, with its type in Content-Type (image/jpeg, application/pdf, …)",
                )
            })?;
        let size = bytes.len();
        let mut file = MediaFile::new(bytes, mime);
        if let Some(name) = filename.filter(|n| !n.is_empty()) {
            file = file.with_filename(name);
        }
        let id = self
            .media_hub()?
            .upload(channel, file)
            .await
            .map_err(ApiError::media)?;
        Ok((201, json!({"id": id, "mime_type": mime, "size": size})))
    }

    /// Opens media `id` of `channel` for streaming to the client.
    pub async fn open_media(&self, channel: &str, id: &str) -> Result<Download, ApiError> {
        self.channel(channel)?;
        self.media_hub()?
            .open(channel, id)
            .await
            .map_err(ApiError::media)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_errors_map_to_statuses() {
        let cases = [
            (MediaError::NotFound { id: "x".into() }, 404),
            (
                MediaError::TooLarge {
                    what: "f".into(),
                    size: 2,
                    limit: 1,
                },
                413,
            ),
            (
                MediaError::UnsupportedType {
                    mime: "image/gif".into(),
                    accepted: "",
                },
                415,
            ),
            (MediaError::Unauthorized { detail: "".into() }, 502),
            (MediaError::Transient { detail: "".into() }, 503),
            (MediaError::Store { detail: "".into() }, 503),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::media(e.clone()).status, status, "{e:?}");
        }
    }
}
