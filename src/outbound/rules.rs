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
}

fn since(at: &Option<i64>) -> String {
    at.map(|t| format!(" (since {t} ms)")).unwrap_or_default()
}

/// Checks `reply` against the channel kind and the conversation's service window.
pub fn check(kind: ChannelKind, window: Window, reply: &Reply) -> Result<(), RuleError> {
    match kind {
        ChannelKind::Waba => {
            let free_form = match reply {
                Reply::Text { .. } | Reply::Interactive { .. } | Reply::Reaction { .. } => true,
                Reply::Template { .. } | Reply::MarkRead { .. } => false,
            };
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
        },
    }
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
