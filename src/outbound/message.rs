//! What a bot asks to send, in the forward protocol's JSON shape (DESIGN.md, "Forward bot").
//!
//! A [`Reply`] says nothing about the channel: the same reply goes to a WABA number through
//! the Graph API or to a Personal number through WAHA, and [`super::rules`] decides whether the
//! channel allows it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One reply, tagged by `type` exactly as a forward bot writes it. Meta's own request shape
/// is read too (`{"type":"image","image":{"link":…,"caption":…}}`, `"text":{"body":…}`), so
/// a reply written for the Cloud API works as is; it is always written in the forward shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `{"type":"text","text":"…","preview_url":true}`
    Text {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview_url: Option<bool>,
    },
    /// `{"type":"template","name":"…","language":"en_US","components":[…]}` (WABA only).
    Template {
        name: String,
        language: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        components: Vec<Value>,
    },
    /// `{"type":"interactive","interactive":{…}}`: Meta's interactive object, passed through.
    Interactive { interactive: Value },
    /// `{"type":"reaction","message_id":"…","emoji":"…"}`; an empty emoji removes a reaction.
    Reaction { message_id: String, emoji: String },
    /// `{"type":"mark_read","message_id":"…","typing":true}`: read receipt (+ typing bubble).
    MarkRead {
        message_id: String,
        #[serde(default, skip_serializing_if = "is_false")]
        typing: bool,
    },
    /// `{"type":"image","link":"https://…"|"id":"<media id>","caption":"…"}` (JPEG, PNG).
    Image {
        #[serde(flatten)]
        media: MediaSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// `{"type":"video","link"|"id","caption"}` (MP4, 3GPP).
    Video {
        #[serde(flatten)]
        media: MediaSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// `{"type":"audio","link"|"id","voice":true}`: `voice` sends a voice note (OGG/Opus),
    /// otherwise an audio file. WhatsApp shows no caption on audio.
    Audio {
        #[serde(flatten)]
        media: MediaSource,
        #[serde(default, skip_serializing_if = "is_false")]
        voice: bool,
    },
    /// `{"type":"document","link"|"id","filename":"invoice.pdf","caption"}`.
    Document {
        #[serde(flatten)]
        media: MediaSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// `{"type":"sticker","link"|"id"}` (WebP; WABA only).
    Sticker {
        #[serde(flatten)]
        media: MediaSource,
    },
    /// `{"type":"location","latitude":52.52,"longitude":13.40,"name":"…","address":"…"}`.
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// `{"type":"contacts","contacts":[{"name":{"formatted_name":"…"},"phones":[{"phone":"…"}]}]}`:
    /// Meta's contact objects (one card each).
    Contacts { contacts: Vec<Value> },
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Reply::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Reply, D::Error> {
        let mut value = Value::deserialize(deserializer)?;
        flatten_meta_shape(&mut value);
        Reply::deserialize(value).map_err(serde::de::Error::custom)
    }
}

/// Meta's shape → the forward shape: the fields of the object named by the type move beside
/// `type` (`"image": {"link"}` → `"link"`), `"text": {"body", "preview_url"}` → `"text"`.
fn flatten_meta_shape(value: &mut Value) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str).map(str::to_string) else {
        return;
    };
    match kind.as_str() {
        "image" | "video" | "audio" | "document" | "sticker" | "location"
            if obj.get(&kind).is_some_and(Value::is_object) =>
        {
            if let Some(Value::Object(inner)) = obj.remove(&kind) {
                for (k, v) in inner {
                    obj.entry(k).or_insert(v);
                }
            }
        }
        "text" if obj.get("text").is_some_and(Value::is_object) => {
            if let Some(Value::Object(mut inner)) = obj.remove("text") {
                if let Some(p) = inner.remove("preview_url") {
                    obj.entry("preview_url").or_insert(p);
                }
                obj.insert("text".into(), inner.remove("body").unwrap_or(Value::Null));
            }
        }
        _ => {}
    }
}

/// Where a media message's file comes from: a public `link` WhatsApp downloads, or the `id`
/// an upload answered (`POST /v1/channels/{channel}/media`, `ctx.upload`). Exactly one is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl MediaSource {
    /// A file WhatsApp (or the gateway) downloads from a public URL.
    pub fn link(url: impl Into<String>) -> MediaSource {
        MediaSource {
            link: Some(url.into()),
            id: None,
        }
    }

    /// A file uploaded earlier, by the id the upload answered.
    pub fn id(id: impl Into<String>) -> MediaSource {
        MediaSource {
            link: None,
            id: Some(id.into()),
        }
    }
}

/// The longest media caption WhatsApp shows.
pub const MAX_CAPTION: usize = 1024;

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_http_url(link: &str) -> bool {
    let rest = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

impl Reply {
    /// A plain text reply.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text {
            text: text.into(),
            preview_url: None,
        }
    }

    /// The `type` tag (also the metric / audit-log name).
    pub fn type_name(&self) -> &'static str {
        match self {
            Reply::Text { .. } => "text",
            Reply::Template { .. } => "template",
            Reply::Interactive { .. } => "interactive",
            Reply::Reaction { .. } => "reaction",
            Reply::MarkRead { .. } => "mark_read",
            Reply::Image { .. } => "image",
            Reply::Video { .. } => "video",
            Reply::Audio { .. } => "audio",
            Reply::Document { .. } => "document",
            Reply::Sticker { .. } => "sticker",
            Reply::Location { .. } => "location",
            Reply::Contacts { .. } => "contacts",
        }
    }

    /// The file of a media message (image, video, audio, document, sticker).
    pub fn media(&self) -> Option<&MediaSource> {
        match self {
            Reply::Image { media, .. }
            | Reply::Video { media, .. }
            | Reply::Audio { media, .. }
            | Reply::Document { media, .. }
            | Reply::Sticker { media } => Some(media),
            _ => None,
        }
    }

    /// The caption of an image, video or document.
    pub fn caption(&self) -> Option<&str> {
        match self {
            Reply::Image { caption, .. }
            | Reply::Video { caption, .. }
            | Reply::Document { caption, .. } => caption.as_deref(),
            _ => None,
        }
    }

    /// What is wrong with the reply's own fields, whatever the channel: a media message
    /// without exactly one of `link` / `id`, a link that is not http(s), a caption over
    /// [`MAX_CAPTION`], a location off the globe, an empty contact list. Checked with the
    /// sending rules, before anything is queued. `Some((field, reason))`.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if let Some(caption) = self.caption() {
            if caption.chars().count() > MAX_CAPTION {
                return Some((
                    "caption",
                    format!("caption longer than {MAX_CAPTION} characters"),
                ));
            }
        }
        if let Some(media) = self.media() {
            let reason = match (&media.link, &media.id) {
                (Some(_), Some(_)) => "give either link or id, not both".to_string(),
                (None, None) => format!(
                    "a {} message needs a link (https://…) or an uploaded media id",
                    self.type_name()
                ),
                (Some(link), None) if !is_http_url(link) => {
                    format!("link {link:?} is not an http(s) URL")
                }
                (None, Some(id)) if id.trim().is_empty() => {
                    return Some(("id", "empty media id".into()))
                }
                _ => return None,
            };
            return Some(("link", reason));
        }
        match self {
            Reply::Location { latitude, .. } if !(-90.0..=90.0).contains(latitude) => Some((
                "latitude",
                format!("latitude {latitude} is not between -90 and 90"),
            )),
            Reply::Location { longitude, .. } if !(-180.0..=180.0).contains(longitude) => Some((
                "longitude",
                format!("longitude {longitude} is not between -180 and 180"),
            )),
            Reply::Contacts { contacts } if contacts.is_empty() => {
                Some(("contacts", "at least one contact card".into()))
            }
            Reply::Contacts { contacts } if contacts.iter().any(|c| !c.is_object()) => {
                Some(("contacts", "each card is an object".into()))
            }
            _ => None,
        }
    }

    /// A message the user sees as a new chat bubble: counts against per-contact pacing.
    /// Read receipts are not messages and are never paced per contact.
    pub fn is_message(&self) -> bool {
        !matches!(self, Reply::MarkRead { .. })
    }
}

/// One reply addressed to one conversation of one channel, with its idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    /// Channel id (`[[channels]] id`).
    pub channel: String,
    /// The conversation id: a phone `wa_id`, a business-scoped user id (`US.123…`), or a
    /// WAHA chat id (`…@s.whatsapp.net`, `…@c.us`, `…@lid`, `…@g.us`).
    pub to: String,
    pub reply: Reply,
    /// `<source event id>:<reply index>`: the same reply of the same event is sent once.
    pub outbox_key: String,
    /// Quote-reply to this message id (Meta `context.message_id`, WAHA `reply_to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl OutgoingMessage {
    pub fn new(
        channel: impl Into<String>,
        to: impl Into<String>,
        reply: Reply,
        outbox_key: impl Into<String>,
    ) -> OutgoingMessage {
        OutgoingMessage {
            channel: channel.into(),
            to: to.into(),
            reply,
            outbox_key: outbox_key.into(),
            reply_to: None,
        }
    }

    /// The outbox key of reply `index` of event `event_id`.
    pub fn outbox_key_for(event_id: &str, index: usize) -> String {
        format!("{event_id}:{index}")
    }
}

/// The send went out (or had already gone out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// wamid / gateway message id; `dry-run:<outbox key>` without credentials; for
    /// `mark_read` the id of the message marked read.
    pub message_id: String,
    /// The outbox already held this key as sent: nothing was sent this time.
    pub duplicate: bool,
}

impl Sent {
    pub fn new(message_id: impl Into<String>) -> Sent {
        Sent {
            message_id: message_id.into(),
            duplicate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forward_protocol_shapes_round_trip() {
        let cases = [
            (json!({"type":"text","text":"hi"}), Reply::text("hi")),
            (
                json!({"type":"text","text":"see https://x","preview_url":true}),
                Reply::Text {
                    text: "see https://x".into(),
                    preview_url: Some(true),
                },
            ),
            (
                json!({"type":"template","name":"order_update","language":"en_US",
                       "components":[{"type":"body","parameters":[{"type":"text","text":"#1"}]}]}),
                Reply::Template {
                    name: "order_update".into(),
                    language: "en_US".into(),
                    components: vec![
                        json!({"type":"body","parameters":[{"type":"text","text":"#1"}]}),
                    ],
                },
            ),
            (
                json!({"type":"interactive","interactive":{"type":"button","body":{"text":"?"}}}),
                Reply::Interactive {
                    interactive: json!({"type":"button","body":{"text":"?"}}),
                },
            ),
            (
                json!({"type":"reaction","message_id":"wamid.1","emoji":"👍"}),
                Reply::Reaction {
                    message_id: "wamid.1".into(),
                    emoji: "👍".into(),
                },
            ),
            (
                json!({"type":"mark_read","message_id":"wamid.1","typing":true}),
                Reply::MarkRead {
                    message_id: "wamid.1".into(),
                    typing: true,
                },
            ),
        ];
        for (value, reply) in cases {
            let parsed: Reply = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(parsed, reply);
            assert_eq!(serde_json::to_value(&reply).unwrap(), value);
        }
        let r: Reply =
            serde_json::from_value(json!({"type":"mark_read","message_id":"m"})).unwrap();
        assert_eq!(
            r,
            Reply::MarkRead {
                message_id: "m".into(),
                typing: false
            }
        );
        assert!(serde_json::from_value::<Reply>(json!({"type":"poll"})).is_err());
        let bare: Reply = serde_json::from_value(json!({"type":"sticker"})).unwrap();
        assert!(bare.invalid().unwrap().1.contains("needs a link"));
        // Meta's request shape is read as well, and written back in the forward shape.
        let nested: Reply = serde_json::from_value(
            json!({"type":"image","image":{"link":"https://x/a.jpg","caption":"c"}}),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&nested).unwrap(),
            json!({"type":"image","link":"https://x/a.jpg","caption":"c"})
        );
        let text: Reply =
            serde_json::from_value(json!({"type":"text","text":{"body":"hi","preview_url":true}}))
                .unwrap();
        assert_eq!(
            text,
            Reply::Text {
                text: "hi".into(),
                preview_url: Some(true)
            }
        );
    }
}
