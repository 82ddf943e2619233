//! What WhatsApp accepts as media: the types and sizes of Meta's "Supported media types"
//! table, checked before an upload leaves (pure, no I/O).
//!
//! | kind     | types                                                        | max     |
//! | -------- | ------------------------------------------------------------ | ------- |
//! | image    | image/jpeg, image/png                                        | 5 MB    |
//! | video    | video/mp4, video/3gpp                                        | 16 MB   |
//! | audio    | audio/aac, audio/amr, audio/mpeg, audio/mp4, audio/ogg       | 16 MB   |
//! | sticker  | image/webp                                                   | 500 KB  |
//! | document | text/plain, application/pdf, MS Office and OpenXML documents | 100 MB  |

use super::MediaError;

const MB: u64 = 1024 * 1024;

/// One row of the table: a WhatsApp media kind, the types it takes and its size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaLimit {
    pub kind: &'static str,
    pub mime_types: &'static [&'static str],
    pub max_bytes: u64,
}

/// Meta's table (Cloud API "Supported media types").
pub const LIMITS: [MediaLimit; 5] = [
    MediaLimit {
        kind: "image",
        mime_types: &["image/jpeg", "image/png"],
        max_bytes: 5 * MB,
    },
    MediaLimit {
        kind: "video",
        mime_types: &["video/mp4", "video/3gpp"],
        max_bytes: 16 * MB,
    },
    MediaLimit {
        kind: "audio",
        mime_types: &[
            "audio/aac",
            "audio/amr",
            "audio/mpeg",
            "audio/mp4",
            "audio/ogg",
        ],
        max_bytes: 16 * MB,
    },
    MediaLimit {
        kind: "sticker",
        mime_types: &["image/webp"],
        max_bytes: 500 * 1024,
    },
    MediaLimit {
        kind: "document",
        mime_types: &[
            "text/plain",
            "application/pdf",
            "application/msword",
            "application/vnd.ms-excel",
            "application/vnd.ms-powerpoint",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        ],
        max_bytes: 100 * MB,
    },
];

/// Every accepted type, for error messages.
const ACCEPTED: &str = "image/jpeg, image/png, video/mp4, video/3gpp, audio/aac, audio/amr, \
audio/mpeg, audio/mp4, audio/ogg, image/webp, text/plain, application/pdf, MS Office / OpenXML";

/// `audio/ogg; codecs=opus` → `audio/ogg` (lower case, parameters dropped).
pub fn essence(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The row a MIME type belongs to.
pub fn limit_for(mime: &str) -> Result<&'static MediaLimit, MediaError> {
    let essence = essence(mime);
    LIMITS
        .iter()
        .find(|l| l.mime_types.contains(&essence.as_str()))
        .ok_or(MediaError::UnsupportedType {
            mime: mime.to_string(),
            accepted: ACCEPTED,
        })
}

/// Checks a file about to be uploaded: its type is one WhatsApp takes and its size within
/// the limit of its kind (and within `cap`, the channel's own limit, when smaller).
pub fn check_upload(mime: &str, size: u64, cap: Option<u64>) -> Result<&'static str, MediaError> {
    let limit = limit_for(mime)?;
    if size == 0 {
        return Err(MediaError::Empty);
    }
    let max = cap.map_or(limit.max_bytes, |c| c.min(limit.max_bytes));
    if size > max {
        return Err(MediaError::TooLarge {
            what: format!("{} ({})", limit.kind, essence(mime)),
            size,
            limit: max,
        });
    }
    Ok(limit.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: [(&str, u64, Result<&str, &str>); 12] = [
            ("image/jpeg", 5 * MB, Ok("image")),
            ("image/jpeg", 5 * MB + 1, Err("too_large")),
            ("IMAGE/PNG", 10, Ok("image")),
            ("image/gif", 10, Err("unsupported_type")),
            ("video/mp4", 16 * MB, Ok("video")),
            ("audio/ogg; codecs=opus", 100, Ok("audio")),
            ("audio/ogg", 16 * MB + 1, Err("too_large")),
            ("image/webp", 500 * 1024, Ok("sticker")),
            ("image/webp", 500 * 1024 + 1, Err("too_large")),
            ("application/pdf", 100 * MB, Ok("document")),
            ("application/x-msdownload", 1, Err("unsupported_type")),
            ("text/plain", 0, Err("empty")),
        ];
        for (mime, size, want) in cases {
            let got = check_upload(mime, size, None).map_err(|e| e.code());
            assert_eq!(got, want, "{mime} {size}");
        }
    }

    #[test]
    fn a_channel_cap_lowers_the_limit() {
        let e = check_upload("application/pdf", 20 * MB, Some(16 * MB)).unwrap_err();
        assert!(e.to_string().contains("16777216"), "{e}");
        assert_eq!(check_upload("image/png", MB, Some(16 * MB)), Ok("image"));
    }

    #[test]
    fn refusals_say_what_is_accepted() {
        let e = check_upload("image/gif", 1, None).unwrap_err();
        assert!(e.to_string().contains("image/jpeg"), "{e}");
    }
}
