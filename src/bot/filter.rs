//! Composable filters: which events a handler wants.
//!
//! Leaves test one property of the event (channel kind, channel id, event type, message type,
//! text, button id, handover); [`Filter::and`], [`Filter::or`], [`Filter::not`] and the
//! operators `&`, `|`, `!` combine them:
//!
//! ```
//! use coexist::bot::Filter;
//! use coexist::ChannelKind;
//!
//! let greeting = Filter::regex("(?i)^(hi|hello)") | Filter::text_ignore_case("start");
//! let waba_greeting = greeting & Filter::kind(ChannelKind::Waba) & !Filter::channel("test-number");
//! # let _ = waba_greeting;
//! ```
//!
//! A filter is checked when the router is built: an invalid regex, an empty button id, or a
//! filter that can never match the events its handler receives (a button filter on
//! `on_status`, `kind(Personal)` on a window timer) is a [`super::BuildError`] at start-up.

use super::Context;
use crate::channel::ChannelKind;
use crate::conversation::window::{WINDOW_CLOSED, WINDOW_EXPIRING};
use crate::event::EventType;
use std::fmt;
use std::sync::Arc;

/// Which events a handler wants. Cheap to clone.
#[derive(Clone)]
pub struct Filter(Node);

#[derive(Clone)]
enum Node {
    Any,
    Kind(ChannelKind),
    Channel(String),
    Event(EventType),
    MessageType(String),
    Text(TextMatch),
    Button(ButtonMatch),
    Handover,
    Predicate(&'static str, Arc<dyn Fn(&Context) -> bool + Send + Sync>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
}

#[derive(Clone)]
enum TextMatch {
    Exact(String),
    IgnoreCase(String),
    Prefix(String),
    /// The pattern as written and its compiled form (or why it does not compile).
    Regex(String, Result<regex_lite::Regex, String>),
}

#[derive(Clone)]
enum ButtonMatch {
    Exact(String),
    Prefix(String),
}

impl Filter {
    /// Every event.
    pub fn any() -> Filter {
        Filter(Node::Any)
    }

    /// Events of channels of this kind.
    pub fn kind(kind: ChannelKind) -> Filter {
        Filter(Node::Kind(kind))
    }

    /// Shorthand for `kind(ChannelKind::Waba)`.
    pub fn waba() -> Filter {
        Filter::kind(ChannelKind::Waba)
    }

    /// Shorthand for `kind(ChannelKind::Personal)`.
    pub fn personal() -> Filter {
        Filter::kind(ChannelKind::Personal)
    }

    /// Events of the channel with this configured id.
    pub fn channel(id: impl Into<String>) -> Filter {
        Filter(Node::Channel(id.into()))
    }

    /// Events of this type.
    pub fn event(event_type: EventType) -> Filter {
        Filter(Node::Event(event_type))
    }

    /// Messages (and echoes) of this provider type: `text`, `image`, `button_reply`, `list_reply`, …
    pub fn message_type(kind: impl Into<String>) -> Filter {
        Filter(Node::MessageType(kind.into()))
    }

    /// Messages whose text is exactly `text` (surrounding whitespace ignored).
    pub fn text(text: impl Into<String>) -> Filter {
        Filter(Node::Text(TextMatch::Exact(text.into())))
    }

    /// Messages whose text is `text`, ignoring case and surrounding whitespace.
    pub fn text_ignore_case(text: impl Into<String>) -> Filter {
        Filter(Node::Text(TextMatch::IgnoreCase(text.into())))
    }

    /// Messages whose text starts with `prefix` (leading whitespace ignored).
    pub fn text_prefix(prefix: impl Into<String>) -> Filter {
        Filter(Node::Text(TextMatch::Prefix(prefix.into())))
    }

    /// Messages whose text matches the regex (`regex-lite` syntax; `(?i)` for any case). An
    /// invalid pattern is reported by the router's `build()`.
    pub fn regex(pattern: impl Into<String>) -> Filter {
        let pattern = pattern.into();
        let compiled = regex_lite::Regex::new(&pattern).map_err(|e| e.to_string());
        Filter(Node::Text(TextMatch::Regex(pattern, compiled)))
    }

    /// A tapped reply button or list row with this id, or a template quick-reply payload.
    pub fn button(id: impl Into<String>) -> Filter {
        Filter(Node::Button(ButtonMatch::Exact(id.into())))
    }

    /// A tapped button whose id starts with `prefix` (e.g. `"size:"`).
    pub fn button_prefix(prefix: impl Into<String>) -> Filter {
        Filter(Node::Button(ButtonMatch::Prefix(prefix.into())))
    }

    /// An echo of a person answering from the phone, which paused the bot.
    pub fn handover() -> Filter {
        Filter(Node::Handover)
    }

    /// Any test on the context. `name` appears in error messages. The router cannot see
    /// inside it, so it never counts as always or never matching.
    pub fn custom(
        name: &'static str,
        predicate: impl Fn(&Context) -> bool + Send + Sync + 'static,
    ) -> Filter {
        Filter(Node::Predicate(name, Arc::new(predicate)))
    }

    /// Both filters.
    pub fn and(self, other: Filter) -> Filter {
        Filter(Node::And(Box::new(self.0), Box::new(other.0)))
    }

    /// Either filter.
    pub fn or(self, other: Filter) -> Filter {
        Filter(Node::Or(Box::new(self.0), Box::new(other.0)))
    }

    /// Everything this filter does not match.
    #[allow(clippy::should_implement_trait)] // `!filter` works too (std::ops::Not below)
    pub fn not(self) -> Filter {
        Filter(Node::Not(Box::new(self.0)))
    }

    /// Does the event in `ctx` pass? (An invalid regex matches nothing.)
    pub fn matches(&self, ctx: &Context) -> bool {
        self.0.matches(ctx)
    }

    /// Why this filter is malformed (invalid regex, empty button id), if it is.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.0.problems(&mut out);
        out
    }

    /// The (channel kind, event class) pairs the filter may match, and those it surely matches.
    pub(crate) fn classes(&self) -> (Classes, Classes) {
        self.0.classes()
    }
}

impl Node {
    fn matches(&self, ctx: &Context) -> bool {
        match self {
            Node::Any => true,
            Node::Kind(k) => ctx.kind() == *k,
            Node::Channel(id) => ctx.channel_id() == id,
            Node::Event(t) => ctx.event_type() == *t,
            Node::MessageType(t) => ctx.message_type() == Some(t.as_str()),
            Node::Text(m) => ctx.text().is_some_and(|text| m.matches(text)),
            Node::Button(m) => ctx.button_id().is_some_and(|id| m.matches(id)),
            Node::Handover => ctx.is_handover_event(),
            Node::Predicate(_, f) => f(ctx),
            Node::And(a, b) => a.matches(ctx) && b.matches(ctx),
            Node::Or(a, b) => a.matches(ctx) || b.matches(ctx),
            Node::Not(a) => !a.matches(ctx),
        }
    }

    fn problems(&self, out: &mut Vec<String>) {
        match self {
            Node::Text(TextMatch::Regex(pattern, Err(e))) => {
                out.push(format!("invalid regex {pattern:?}: {e}"))
            }
            Node::Button(ButtonMatch::Exact(id)) if id.is_empty() => {
                out.push("empty button id (a tapped button always has an id)".into())
            }
            Node::Channel(id) if id.is_empty() => out.push("empty channel id".into()),
            Node::MessageType(t) if t.is_empty() => out.push("empty message type".into()),
            Node::And(a, b) | Node::Or(a, b) => {
                a.problems(out);
                b.problems(out);
            }
            Node::Not(a) => a.problems(out),
            _ => {}
        }
    }

    fn classes(&self) -> (Classes, Classes) {
        let all = Classes::ALL;
        match self {
            Node::Any => (all, all),
            Node::Kind(k) => (all.of_kind(*k), all.of_kind(*k)),
            Node::Event(t) => (Classes::event(*t), Classes::event(*t)),
            Node::Handover => (
                Classes::class(Class::EchoHandover),
                Classes::class(Class::EchoHandover),
            ),
            // Only messages and echoes carry a message (type, text).
            Node::MessageType(_) | Node::Text(_) => (Classes::messages_and_echoes(), Classes::NONE),
            // Buttons exist only on the WhatsApp Business API, in customers' messages.
            Node::Button(_) => (
                Classes::class(Class::Message).of_kind(ChannelKind::Waba),
                Classes::NONE,
            ),
            Node::Channel(_) | Node::Predicate(..) => (all, Classes::NONE),
            Node::And(a, b) => {
                let (ma, sa) = a.classes();
                let (mb, sb) = b.classes();
                (ma.and(mb), sa.and(sb))
            }
            Node::Or(a, b) => {
                let (ma, sa) = a.classes();
                let (mb, sb) = b.classes();
                (ma.or(mb), sa.or(sb))
            }
            Node::Not(a) => {
                let (ma, sa) = a.classes();
                (sa.complement(), ma.complement())
            }
        }
    }
}

impl TextMatch {
    fn matches(&self, text: &str) -> bool {
        match self {
            TextMatch::Exact(s) => text.trim() == s,
            TextMatch::IgnoreCase(s) => text.trim().to_lowercase() == s.to_lowercase(),
            TextMatch::Prefix(p) => text.trim_start().starts_with(p.as_str()),
            TextMatch::Regex(_, Ok(re)) => re.is_match(text),
            TextMatch::Regex(_, Err(_)) => false,
        }
    }
}

impl ButtonMatch {
    fn matches(&self, id: &str) -> bool {
        match self {
            ButtonMatch::Exact(s) => id == s,
            ButtonMatch::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

impl std::ops::BitAnd for Filter {
    type Output = Filter;
    fn bitand(self, rhs: Filter) -> Filter {
        self.and(rhs)
    }
}

impl std::ops::BitOr for Filter {
    type Output = Filter;
    fn bitor(self, rhs: Filter) -> Filter {
        self.or(rhs)
    }
}

impl std::ops::Not for Filter {
    type Output = Filter;
    fn not(self) -> Filter {
        Filter::not(self)
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Written the way it was built: `text("menu") & !kind(personal)`.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Any => f.write_str("any()"),
            Node::Kind(k) => write!(f, "kind({k})"),
            Node::Channel(id) => write!(f, "channel({id:?})"),
            Node::Event(t) => write!(f, "event({})", t.as_str()),
            Node::MessageType(t) => write!(f, "message_type({t:?})"),
            Node::Text(TextMatch::Exact(s)) => write!(f, "text({s:?})"),
            Node::Text(TextMatch::IgnoreCase(s)) => write!(f, "text_ignore_case({s:?})"),
            Node::Text(TextMatch::Prefix(s)) => write!(f, "text_prefix({s:?})"),
            Node::Text(TextMatch::Regex(p, _)) => write!(f, "regex({p:?})"),
            Node::Button(ButtonMatch::Exact(s)) => write!(f, "button({s:?})"),
            Node::Button(ButtonMatch::Prefix(s)) => write!(f, "button_prefix({s:?})"),
            Node::Handover => f.write_str("handover()"),
            Node::Predicate(name, _) => write!(f, "custom({name:?})"),
            Node::And(a, b) => write!(f, "({a} & {b})"),
            Node::Or(a, b) => write!(f, "({a} | {b})"),
            Node::Not(a) => write!(f, "!{a}"),
        }
    }
}

/// What kind of event, finer than [`EventType`] where handlers care: echoes that paused the bot,
/// and the two window timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Message,
    Status,
    EchoHandover,
    EchoOther,
    History,
    ContactSync,
    Account,
    Session,
    Error,
    TimerExpiring,
    TimerClosed,
    TimerOther,
    OutboundFailed,
    Call,
    Story,
    Newsletter,
    Unknown,
}

impl Class {
    const COUNT: u32 = 17;

    pub(crate) fn of(ctx: &Context) -> Class {
        match ctx.event_type() {
            EventType::Message => Class::Message,
            EventType::Status => Class::Status,
            EventType::Echo if ctx.is_handover_event() => Class::EchoHandover,
            EventType::Echo => Class::EchoOther,
            EventType::History => Class::History,
            EventType::ContactSync => Class::ContactSync,
            EventType::Account => Class::Account,
            EventType::Session => Class::Session,
            EventType::Error => Class::Error,
            EventType::Timer => match ctx.timer().map(|t| t.name.as_str()) {
                Some(WINDOW_EXPIRING) => Class::TimerExpiring,
                Some(WINDOW_CLOSED) => Class::TimerClosed,
                _ => Class::TimerOther,
            },
            EventType::OutboundFailed => Class::OutboundFailed,
            EventType::Call => Class::Call,
            EventType::Story => Class::Story,
            EventType::Newsletter => Class::Newsletter,
            EventType::Unknown => Class::Unknown,
        }
    }
}

/// A set of (channel kind, event class) pairs, as bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Classes(u64);

impl Classes {
    pub(crate) const NONE: Classes = Classes(0);
    /// Every pair that can occur: no timers on Personal channels (no service window), no
    /// gateway session events, Stories or Channel posts on WABA channels.
    pub(crate) const ALL: Classes = Classes(
        ((1 << (2 * Class::COUNT)) - 1)
            & !(Classes::bit(ChannelKind::Personal, Class::TimerExpiring)
                | Classes::bit(ChannelKind::Personal, Class::TimerClosed)
                | Classes::bit(ChannelKind::Personal, Class::TimerOther)
                | Classes::bit(ChannelKind::Waba, Class::Session)
                | Classes::bit(ChannelKind::Waba, Class::Story)
                | Classes::bit(ChannelKind::Waba, Class::Newsletter)),
    );

    const fn bit(kind: ChannelKind, class: Class) -> u64 {
        let offset = match kind {
            ChannelKind::Waba => 0,
            ChannelKind::Personal => Class::COUNT,
        };
        1 << (offset + class as u32)
    }

    pub(crate) fn of(ctx: &Context) -> Classes {
        Classes(Classes::bit(ctx.kind(), Class::of(ctx)))
    }

    /// One class on both kinds (where it can occur).
    pub(crate) fn class(class: Class) -> Classes {
        Classes(Classes::bit(ChannelKind::Waba, class) | Classes::bit(ChannelKind::Personal, class))
            .and(Classes::ALL)
    }

    pub(crate) fn event(t: EventType) -> Classes {
        match t {
            EventType::Message => Classes::class(Class::Message),
            EventType::Status => Classes::class(Class::Status),
            EventType::Echo => {
                Classes::class(Class::EchoHandover).or(Classes::class(Class::EchoOther))
            }
            EventType::History => Classes::class(Class::History),
            EventType::ContactSync => Classes::class(Class::ContactSync),
            EventType::Account => Classes::class(Class::Account),
            EventType::Session => Classes::class(Class::Session),
            EventType::Error => Classes::class(Class::Error),
            EventType::Timer => Classes::class(Class::TimerExpiring)
                .or(Classes::class(Class::TimerClosed))
                .or(Classes::class(Class::TimerOther)),
            EventType::OutboundFailed => Classes::class(Class::OutboundFailed),
            EventType::Call => Classes::class(Class::Call),
            EventType::Story => Classes::class(Class::Story),
            EventType::Newsletter => Classes::class(Class::Newsletter),
            EventType::Unknown => Classes::class(Class::Unknown),
        }
    }

    fn messages_and_echoes() -> Classes {
        Classes::event(EventType::Message).or(Classes::event(EventType::Echo))
    }

    pub(crate) fn of_kind(self, kind: ChannelKind) -> Classes {
        let mask = ((1u64 << Class::COUNT) - 1)
            << match kind {
                ChannelKind::Waba => 0,
                ChannelKind::Personal => Class::COUNT,
            };
        Classes(self.0 & mask)
    }

    pub(crate) fn and(self, other: Classes) -> Classes {
        Classes(self.0 & other.0)
    }

    pub(crate) fn or(self, other: Classes) -> Classes {
        Classes(self.0 | other.0)
    }

    pub(crate) fn complement(self) -> Classes {
        Classes(Classes::ALL.0 & !self.0)
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every pair of `other` is in `self`.
    pub(crate) fn covers(self, other: Classes) -> bool {
        other.0 & !self.0 == 0
    }
}
