//! Which replies a channel allows right now: pure, checked before anything is claimed or sent,
//! so a refused reply costs no HTTP request and leaves no outbox entry.
//!
//! | reply       | WABA, window open | WABA, window closed | Personal |
//! | ----------- | ----------------- | ------------------- | -------- |
//! | text        | yes               | `WindowClosed`      | yes |
//! | interactive | yes               | `WindowClosed`      | `UnsupportedOnChannel` (WAHA has no buttons/lists) |
//! | template    | yes               | yes                 | `TemplatesUnsupported` |
//! | reaction    | yes               | `WindowClosed` (a reaction is a message, Meta bills and gates it like free-form) | yes, to a WAHA message id; a `wamid.` id → `UnsupportedOnChannel` |
//! | mark_read   | yes               | yes (a receipt, not a message) | yes (`sendSeen`) |
//! | image, video, audio, document | yes | `WindowClosed` | yes (`sendImage`, `sendVideo`, `sendVoice` / `sendFile`, `sendFile`); by link or by an id from this channel's upload |
//! | sticker     | yes               | `WindowClosed`      | `UnsupportedOnChannel` (WAHA has no sticker send) |
//! | location, contacts | yes        | `WindowClosed`      | yes (`sendLocation`, `sendContactVcard`) |
//!
//! A reply whose own fields are wrong (media without link or id, a location off the globe)
//! is `InvalidReply` on every channel.

use super::message::Reply;
use crate::channel::ChannelKind;
use crate::conversation::window::Window;

/// A reply the channel does not allow; the worker reports it to the bot, never retries it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("the 24 h customer service window is closed{}; only templates can be sent", since(.closed_at))]
    WindowClosed {
        /// When the window closed (ms), `None` when it was never open.
        closed_at: Option<i64>,
    },
    #[error("{kind} channels have no message templates; send free-form text instead")]
    TemplatesUnsupported { kind: ChannelKind },
    #[error("{kind} channels cannot send {what}")]
    UnsupportedOnChannel {
        kind: ChannelKind,
        what: &'static str,
    },
    #[error("invalid {what} message: {reason}")]
    InvalidReply { what: &'static str, reason: String },
}

fn since(at: &Option<i64>) -> String {
    match at {
        Some(t) => format!(" (since {t} ms)"),
        None => " (the customer never wrote)".to_owned(),
    }
}

/// Checks `reply` against the channel kind and the conversation's service window.
pub fn check(kind: ChannelKind, window: Window, reply: &Reply) -> Result<(), RuleError> {
    if let Some((field, reason)) = reply.invalid() {
        return Err(RuleError::InvalidReply {
            what: reply.type_name(),
            reason: format!("{field}: {reason}"),
        });
    }
    match kind {
        ChannelKind::Waba => {
            let free_form = !matches!(reply, Reply::Template { .. } | Reply::MarkRead { .. });
            if reply
                .media()
                .and_then(|m| m.id.as_deref())
                .is_some_and(is_gateway_media_id)
            {
                return Err(RuleError::UnsupportedOnChannel {
                    kind,
                    what: "media uploaded to a Personal channel (upload it to this channel)",
                });
            }
            match window {
                Window::Closed { since_ms } if free_form => Err(RuleError::WindowClosed {
                    closed_at: since_ms,
                }),
                _ => Ok(()),
            }
        }
        ChannelKind::Personal => match reply {
            Reply::Text { .. } | Reply::MarkRead { .. } => Ok(()),
            Reply::Template { .. } => Err(RuleError::TemplatesUnsupported { kind }),
            Reply::Interactive { .. } => Err(RuleError::UnsupportedOnChannel {
                kind,
                what: "interactive messages (buttons, lists)",
            }),
            Reply::Reaction { message_id, .. } if message_id.starts_with("wamid.") => {
                Err(RuleError::UnsupportedOnChannel {
                    kind,
                    what: "reactions to Cloud API message ids (wamid.…)",
                })
            }
            Reply::Reaction { .. } => Ok(()),
            Reply::Sticker { .. } => Err(RuleError::UnsupportedOnChannel {
                kind,
                what: "stickers",
            }),
            Reply::Image { .. }
            | Reply::Video { .. }
            | Reply::Audio { .. }
            | Reply::Document { .. } => match reply.media().and_then(|m| m.id.as_deref()) {
                Some(id) if !is_gateway_media_id(id) => Err(RuleError::UnsupportedOnChannel {
                    kind,
                    what: "Cloud API media ids (send a link, or upload to this channel)",
                }),
                _ => Ok(()),
            },
            Reply::Location { .. } | Reply::Contacts { .. } => Ok(()),
        },
    }
}

/// Prefix of the ids a Personal channel's upload answers: WAHA keeps no uploads, so coexist
/// holds the file and sends it inline.
pub const GATEWAY_MEDIA_PREFIX: &str = "cxm_";

/// An id from a Personal channel's upload (held by coexist, not by Meta).
pub fn is_gateway_media_id(id: &str) -> bool {
    id.starts_with(GATEWAY_MEDIA_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replies() -> [(&'static str, Reply); 5] {
        [
            ("text", Reply::text("hi")),
            (
                "template",
                Reply::Template {
                    name: "t".into(),
                    language: "en_US".into(),
                    components: vec![],
                },
            ),
            (
                "interactive",
                Reply::Interactive {
                    interactive: json!({"type":"button"}),
                },
            ),
            (
                "reaction",
                Reply::Reaction {
                    message_id: "false_1@c.us_ABC".into(),
                    emoji: "👍".into(),
                },
            ),
            (
                "mark_read",
                Reply::MarkRead {
                    message_id: "m".into(),
                    typing: true,
                },
            ),
        ]
    }

    #[test]
    fn rules_table() {
        use ChannelKind::{Personal, Waba};
        let open = Window::Open { until_ms: 10 };
        let closed = Window::Closed { since_ms: Some(5) };
        let never = Window::Closed { since_ms: None };
        let na = Window::NotApplicable;
        let wc = |at| Err(RuleError::WindowClosed { closed_at: at });
        let unsupported = |what| {
            Err(RuleError::UnsupportedOnChannel {
                kind: Personal,
                what,
            })
        };
        // (kind, window, reply type, expected)
        let table: Vec<(ChannelKind, Window, &str, Result<(), RuleError>)> = vec![
            (Waba, open, "text", Ok(())),
            (Waba, open, "template", Ok(())),
            (Waba, open, "interactive", Ok(())),
            (Waba, open, "reaction", Ok(())),
            (Waba, open, "mark_read", Ok(())),
            (Waba, closed, "text", wc(Some(5))),
            (Waba, closed, "template", Ok(())),
            (Waba, closed, "interactive", wc(Some(5))),
            (Waba, closed, "reaction", wc(Some(5))),
            (Waba, closed, "mark_read", Ok(())),
            (Waba, never, "text", wc(None)),
            (Waba, never, "template", Ok(())),
            (Personal, na, "text", Ok(())),
            (
                Personal,
                na,
                "template",
                Err(RuleError::TemplatesUnsupported { kind: Personal }),
            ),
            (
                Personal,
                na,
                "interactive",
                unsupported("interactive messages (buttons, lists)"),
            ),
            (Personal, na, "reaction", Ok(())),
            (Personal, na, "mark_read", Ok(())),
            // A Personal channel has no window: even a stale "closed" never blocks it.
            (Personal, closed, "text", Ok(())),
        ];
        for (kind, window, name, expected) in table {
            let reply = replies().into_iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(
                check(kind, window, &reply),
                expected,
                "{kind} {window:?} {name}"
            );
        }
    }

    #[test]
    fn media_capabilities_per_channel_kind() {
        use crate::outbound::message::MediaSource;
        use ChannelKind::{Personal, Waba};
        let open = Window::Open { until_ms: 10 };
        let closed = Window::Closed { since_ms: Some(5) };
        let na = Window::NotApplicable;
        let link = || MediaSource::link("https://cdn.example/f.jpg");
        let image = Reply::Image {
            media: link(),
            caption: None,
        };
        let sticker = Reply::Sticker { media: link() };
        let meta_id_doc = Reply::Document {
            media: MediaSource::id("1234567890"),
            filename: None,
            caption: None,
        };
        let held_voice = Reply::Audio {
            media: MediaSource::id("cxm_ab"),
            voice: true,
        };
        let place = Reply::Location {
            latitude: 1.0,
            longitude: 2.0,
            name: None,
            address: None,
        };
        let cards = Reply::Contacts {
            contacts: vec![json!({"name": {"formatted_name": "A"}})],
        };
        let ok = |k, w, r: &Reply| check(k, w, r) == Ok(());
        let code = |k, w, r: &Reply| match check(k, w, r) {
            Err(RuleError::WindowClosed { .. }) => "window_closed",
            Err(RuleError::UnsupportedOnChannel { .. }) => "unsupported_on_channel",
            Err(RuleError::InvalidReply { .. }) => "invalid_reply",
            Err(RuleError::TemplatesUnsupported { .. }) => "templates_unsupported",
            Ok(()) => "ok",
        };
        for r in [&image, &sticker, &meta_id_doc, &place, &cards] {
            assert!(ok(Waba, open, r), "{r:?}");
            assert_eq!(code(Waba, closed, r), "window_closed", "{r:?}");
        }
        assert_eq!(code(Waba, open, &held_voice), "unsupported_on_channel");
        for r in [&image, &held_voice, &place, &cards] {
            assert!(ok(Personal, na, r), "{r:?}");
        }
        assert_eq!(code(Personal, na, &sticker), "unsupported_on_channel");
        assert_eq!(code(Personal, na, &meta_id_doc), "unsupported_on_channel");
        let nowhere = Reply::Image {
            media: MediaSource::default(),
            caption: None,
        };
        assert_eq!(code(Waba, open, &nowhere), "invalid_reply");
        assert_eq!(code(Personal, na, &nowhere), "invalid_reply");
        let long = Reply::Image {
            media: link(),
            caption: Some("x".repeat(1025)),
        };
        assert_eq!(code(Waba, open, &long), "invalid_reply");
    }

    #[test]
    fn personal_cannot_react_to_a_wamid() {
        let r = Reply::Reaction {
            message_id: "wamid.HBgL".into(),
            emoji: "👍".into(),
        };
        let e = check(ChannelKind::Personal, Window::NotApplicable, &r).unwrap_err();
        assert!(matches!(e, RuleError::UnsupportedOnChannel { .. }));
        assert!(
            e.to_string().contains("personal channels cannot send"),
            "{e}"
        );
    }

    #[test]
    fn messages_are_readable() {
        let e = RuleError::WindowClosed { closed_at: Some(7) };
        assert!(e.to_string().contains("only templates"), "{e}");
        let e = RuleError::TemplatesUnsupported {
            kind: ChannelKind::Personal,
        };
        assert!(e.to_string().contains("no message templates"), "{e}");
    }
}
