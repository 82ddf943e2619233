//! Media on the Cloud API: `POST /{phone_number_id}/media` (multipart) to upload,
//! `GET /{media id}` for the short-lived download URL, then the download with the token.

use super::{check_upload, network_error, Download, MediaError, MediaFile};
use crate::config::Secret;
use crate::outbound::graph::clip;
use serde_json::Value;
use std::fmt;

#[derive(Clone)]
pub struct GraphMedia {
    base: String,
    phone_number_id: String,
    access_token: Option<Secret>,
    http: reqwest::Client,
    limit: u64,
}

impl fmt::Debug for GraphMedia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphMedia")
            .field("base", &self.base)
            .field("phone_number_id", &self.phone_number_id)
            .field("dry_run", &self.access_token.is_none())
            .finish()
    }
}

impl GraphMedia {
    pub fn new(
        graph_api_url: &str,
        phone_number_id: &str,
        access_token: Option<Secret>,
        http: reqwest::Client,
        limit: u64,
    ) -> GraphMedia {
        GraphMedia {
            base: graph_api_url.trim_end_matches('/').to_string(),
            phone_number_id: phone_number_id.to_string(),
            access_token,
            http,
            limit,
        }
    }

    fn token(&self) -> Result<&Secret, MediaError> {
        self.access_token
            .as_ref()
            .ok_or_else(|| MediaError::NotConfigured(self.phone_number_id.clone()))
    }

    /// Uploads `file` (checked against Meta's table first); answers Meta's media id.
    pub async fn upload(&self, file: MediaFile) -> Result<String, MediaError> {
        check_upload(&file.mime_type, file.bytes.len() as u64, None)?;
        let token = self.token()?;
        let (content_type, body) = multipart(&file);
        let request = self
            .http
            .post(format!("{}/{}/media", self.base, self.phone_number_id))
            .bearer_auth(token.expose())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let (status, value) = graph_json(request, "").await?;
        match value.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(MediaError::Rejected {
                code: i64::from(status),
                message: format!("no media id in {}", clip(&value.to_string())),
            }),
        }
    }

    /// Looks the media up, then starts downloading it.
    pub async fn open(&self, id: &str) -> Result<Download, MediaError> {
        if id.is_empty() || id.contains(['/', '?', '#']) {
            return Err(MediaError::NotFound { id: id.to_string() });
        }
        let token = self.token()?;
        let request = self
            .http
            .get(format!("{}/{}", self.base, id))
            .query(&[("phone_number_id", &self.phone_number_id)])
            .bearer_auth(token.expose());
        let (_, info) = graph_json(request, id).await?;
        let Some(url) = info.get("url").and_then(Value::as_str) else {
            return Err(MediaError::NotFound { id: id.to_string() });
        };
        let size = info.get("file_size").and_then(|s| {
            s.as_u64()
                .or_else(|| s.as_str().and_then(|s| s.parse().ok()))
        });
        if let Some(size) = size.filter(|s| *s > self.limit) {
            return Err(MediaError::TooLarge {
                what: format!("media {id}"),
                size,
                limit: self.limit,
            });
        }
        let mime = info
            .get("mime_type")
            .and_then(Value::as_str)
            .map(str::to_string);
        // The URL came from the Graph API over its own connection: it gets the token.
        let response = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(network_error)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(map_error(status, &bytes, id));
        }
        Download::http(response, mime, self.limit)
    }
}

/// Sends a Graph request and reads its JSON answer (`Null` when not JSON); an error status
/// becomes a [`MediaError`] about `id`.
async fn graph_json(
    request: reqwest::RequestBuilder,
    id: &str,
) -> Result<(u16, Value), MediaError> {
    let response = request.send().await.map_err(network_error)?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(network_error)?;
    if !(200..300).contains(&status) {
        return Err(map_error(status, &bytes, id));
    }
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// `multipart/form-data` with `messaging_product`, `type` and `file`, as Meta's upload wants.
fn multipart(file: &MediaFile) -> (String, Vec<u8>) {
    let boundary = format!("coexist{:016x}", rand::random::<u64>());
    let filename = file
        .filename
        .as_deref()
        .unwrap_or("upload")
        .replace(['"', '\r', '\n'], "_");
    let mime = file.mime_type.replace(['\r', '\n'], "");
    let mut body = Vec::with_capacity(file.bytes.len() + 512);
    for (name, value) in [("messaging_product", "whatsapp"), ("type", mime.as_str())] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&file.bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A Graph error answer as a [`MediaError`]: an unknown or expired id is `NotFound`.
fn map_error(status: u16, body: &[u8], id: &str) -> MediaError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = value.get("error").unwrap_or(&Value::Null);
    let code = err.get("code").and_then(|c| {
        c.as_i64()
            .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
    });
    let subcode = err.get("error_subcode").and_then(Value::as_i64);
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(clip)
        .unwrap_or_else(|| format!("HTTP {status}: {}", clip(&String::from_utf8_lossy(body))));
    match code {
        Some(190) => MediaError::Unauthorized { detail: message },
        // "Unsupported get request. Object with ID … does not exist" (100 / subcode 33).
        Some(100) if subcode == Some(33) || status == 404 => {
            MediaError::NotFound { id: id.to_string() }
        }
        _ if status == 401 || status == 403 => MediaError::Unauthorized { detail: message },
        _ if status == 404 || status == 410 => MediaError::NotFound { id: id.to_string() },
        _ if status == 429 || status >= 500 => MediaError::Transient { detail: message },
        Some(131052 | 131053) => MediaError::Transient { detail: message },
        Some(code) => MediaError::Rejected { code, message },
        None => MediaError::Rejected {
            code: i64::from(status),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_carries_the_fields_and_the_bytes() {
        let file = MediaFile::new(&b"\x89PNG..."[..], "image/png").with_filename("a\"b.png");
        let (ct, body) = multipart(&file);
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("name=\"messaging_product\"\r\n\r\nwhatsapp\r\n"));
        assert!(text.contains("name=\"type\"\r\n\r\nimage/png\r\n"));
        assert!(
            text.contains("filename=\"a_b.png\"\r\nContent-Type: image/png\r\n\r\n\u{fffd}PNG...")
        );
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
    }

    #[test]
    fn errors() {
        let e = |status, v: Value| map_error(status, v.to_string().as_bytes(), "M1");
        assert_eq!(
            e(
                400,
                serde_json::json!({"error":{"code":100,"error_subcode":33,"message":"Unsupported get request"}})
            ),
            MediaError::NotFound { id: "M1".into() }
        );
        assert_eq!(
            e(404, Value::Null),
            MediaError::NotFound { id: "M1".into() }
        );
        assert!(matches!(
            e(
                401,
                serde_json::json!({"error":{"code":190,"message":"expired"}})
            ),
            MediaError::Unauthorized { .. }
        ));
        assert!(e(503, Value::Null).is_retryable());
        assert!(matches!(
            e(
                400,
                serde_json::json!({"error":{"code":131053,"message":"Media upload error"}})
            ),
            MediaError::Transient { .. }
        ));
        assert!(matches!(
            e(
                400,
                serde_json::json!({"error":{"code":100,"message":"Param file must be a file"}})
            ),
            MediaError::Rejected { code: 100, .. }
        ));
    }
}
