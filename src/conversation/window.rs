//! The service-window rules, as pure functions: no I/O, no clock (callers pass `now_ms`).
//!
//! Every rule is written so that the order in which events arrive does not matter: the window
//! is derived from the newest user message timestamp and the newest "window closed" signal, so
//! a late or re-delivered older message never shortens it and never reopens a closed one.

use super::state::{ConversationState, DeliveryStatus};
use crate::channel::ChannelKind;
use crate::event::{Event, EventType, Message, Timer};

/// Meta's customer service window: 24 h from the user's last message.
pub const SERVICE_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// Free entry point after a Click-to-WhatsApp ad / Page CTA referral. Meta counts 72 h from
/// the business's first reply; we count from the user's message, which can only end earlier.
pub const FREE_ENTRY_POINT_MS: i64 = 72 * 3600 * 1000;
/// Timer name: the window closes in `lead_ms`.
pub const WINDOW_EXPIRING: &str = "window.expiring";
/// Timer name: the window has closed.
pub const WINDOW_CLOSED: &str = "window.closed";

/// The state of a time window at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Open {
        until_ms: i64,
    },
    /// Closed since `since_ms`; `None` when it was never open.
    Closed {
        since_ms: Option<i64>,
    },
    /// The channel has no such window (WhatsApp Personal).
    NotApplicable,
}

impl Window {
    /// Free-form sends allowed (open, or no window on this channel).
    pub fn allows_free_form(self) -> bool {
        !matches!(self, Window::Closed { .. })
    }
}

/// How the delivery status of one message changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusUpdate {
    /// The status moved forward (or was first seen).
    Advanced {
        previous: Option<DeliveryStatus>,
        current: DeliveryStatus,
    },
    /// Arrived late or twice: the message already has this status or a later one.
    Stale {
        current: DeliveryStatus,
        received: DeliveryStatus,
    },
    /// A status name we do not rank; recorded nowhere.
    Unranked(String),
}

/// What applying one event did, so the worker knows what to save, re-arm and tell the bot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// The state differs from before: save it.
    pub changed: bool,
    /// `window_end_ms` moved (opened, refreshed or closed): re-arm the window timers.
    pub window_changed: bool,
    /// The free entry point opened or was extended.
    pub free_entry_changed: bool,
    /// A person answered from the phone: the bot is paused until `handover_until_ms`.
    pub handover_started: bool,
    /// For status events.
    pub status: Option<StatusUpdate>,
}

/// What a channel's configuration says about its conversations' windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRules {
    pub kind: ChannelKind,
    /// A WABA number also used in the WhatsApp Business app: its echoes are people.
    pub coexistence: bool,
    /// How long a person's echo pauses the bot (ms).
    pub handover_ms: i64,
}

impl WindowRules {
    pub fn of(channel: &crate::config::ChannelConfig, handover_ms: i64) -> WindowRules {
        WindowRules {
            kind: channel.kind,
            coexistence: channel.coexistence,
            handover_ms,
        }
    }
}

/// Applies one inbound event to a conversation's state.
///
/// `coexistence` matters for echoes without a `source`: on a coexistence number they come from
/// the Business app (Meta never echoes API sends), on any other WABA number nothing on a phone
/// can produce them, so they do not start a handover. Timer events change nothing here; check
/// them with [`is_timer_current`].
pub fn apply_event(
    rules: WindowRules,
    state: &mut ConversationState,
    event: &Event,
    now_ms: i64,
) -> Effects {
    let WindowRules {
        kind,
        coexistence,
        handover_ms,
    } = rules;
    let before = state.clone();
    let mut effects = Effects::default();
    let at = event_time(event, now_ms);
    match event.event_type {
        EventType::Message => {
            state.merge_contact(&event.contact);
            state.last_inbound_ms = Some(state.last_inbound_ms.map_or(at, |t| t.max(at)));
            let referral = event.message.as_ref().is_some_and(|m| m.referral.is_some());
            if referral && kind.has_service_window() {
                let end = at.saturating_add(FREE_ENTRY_POINT_MS);
                state.free_entry_end_ms = Some(state.free_entry_end_ms.map_or(end, |e| e.max(end)));
            }
        }
        EventType::Echo => {
            state.merge_contact(&event.contact);
            state.last_outbound_ms = Some(state.last_outbound_ms.map_or(at, |t| t.max(at)));
            if is_human_echo(kind, coexistence, event.message.as_ref()) {
                start_handover(state, now_ms, handover_ms);
                effects.handover_started = true;
            }
        }
        EventType::Status => {
            if let Some(status) = &event.status {
                effects.status = Some(match DeliveryStatus::parse(&status.status) {
                    None => StatusUpdate::Unranked(status.status.clone()),
                    Some(received) => match state.statuses.advance(&status.message_id, received) {
                        (previous, true) => StatusUpdate::Advanced {
                            previous,
                            current: received,
                        },
                        (previous, false) => StatusUpdate::Stale {
                            current: previous.unwrap_or(received),
                            received,
                        },
                    },
                });
                if DeliveryStatus::parse(&status.status) == Some(DeliveryStatus::Failed)
                    && status.closes_window()
                {
                    note_window_closed(state, at);
                }
            }
        }
        EventType::OutboundFailed => {
            if event.outbound.as_ref().is_some_and(|f| f.closes_window()) {
                note_window_closed(state, at);
            }
        }
        // A customer's call (even unanswered), or the customer accepting the business's call,
        // opens the window like a message does (Meta's pricing rules).
        EventType::Call => {
            state.merge_contact(&event.contact);
            if event.call.as_ref().is_some_and(opens_window) {
                state.last_inbound_ms = Some(state.last_inbound_ms.map_or(at, |t| t.max(at)));
            }
        }
        // History, contact sync, account, session, errors and unknown fields never touch the
        // window (imported history is not a new user message); timers are checked elsewhere.
        EventType::History
        | EventType::ContactSync
        | EventType::Account
        | EventType::Session
        | EventType::Error
        | EventType::Timer
        | EventType::Story
        | EventType::Newsletter
        | EventType::Unknown => {}
    }
    recompute_window(kind, state);
    effects.window_changed = state.window_end_ms != before.window_end_ms;
    effects.free_entry_changed = state.free_entry_end_ms != before.free_entry_end_ms;
    effects.changed = *state != before;
    effects
}

/// Meta answered a send with 131047 / 470 (synchronously): the window is closed as of `at_ms`.
/// Returns true when the window end moved (re-arm timers).
pub fn mark_window_closed(kind: ChannelKind, state: &mut ConversationState, at_ms: i64) -> bool {
    if !kind.has_service_window() {
        return false;
    }
    let before = state.window_end_ms;
    note_window_closed(state, at_ms);
    recompute_window(kind, state);
    state.window_end_ms != before
}

/// Words that take an opt-out back (any case, trimmed).
pub const OPT_IN_WORDS: [&str; 3] = ["START", "SUBSCRIBE", "UNSTOP"];

/// A customer's message that is exactly an opt-out word (`words`, any case, trimmed) opts
/// them out of business-initiated messages; one of [`OPT_IN_WORDS`] opts them back in. Any
/// other message changes nothing. Returns true when the state changed.
pub fn note_consent(
    state: &mut ConversationState,
    text: &str,
    at_ms: i64,
    words: &[String],
) -> bool {
    let said = text.trim();
    if words.iter().any(|w| w.eq_ignore_ascii_case(said)) {
        if state.opted_out_at_ms.is_none() {
            state.opted_out_at_ms = Some(at_ms);
            return true;
        }
    } else if OPT_IN_WORDS.iter().any(|w| w.eq_ignore_ascii_case(said)) {
        return state.opted_out_at_ms.take().is_some();
    }
    false
}

/// Records a message the business sent through the API (does not touch the window).
pub fn record_outbound(state: &mut ConversationState, at_ms: i64) {
    state.last_outbound_ms = Some(state.last_outbound_ms.map_or(at_ms, |t| t.max(at_ms)));
}

/// Pauses the bot until `now + handover` (never shortens a running handover).
pub fn start_handover(state: &mut ConversationState, now_ms: i64, handover_ms: i64) {
    let until = now_ms.saturating_add(handover_ms.max(0));
    state.handover_until_ms = Some(state.handover_until_ms.map_or(until, |u| u.max(until)));
}

/// Ends a handover early (the bot takes over again).
pub fn end_handover(state: &mut ConversationState) {
    state.handover_until_ms = None;
}

/// The bot is paused: a person answered from the phone less than the handover time ago.
pub fn handover_active(state: &ConversationState, now_ms: i64) -> bool {
    state.handover_until_ms.is_some_and(|u| now_ms < u)
}

/// The 24 h customer service window at `now_ms`.
pub fn window(kind: ChannelKind, state: &ConversationState, now_ms: i64) -> Window {
    if !kind.has_service_window() {
        return Window::NotApplicable;
    }
    open_or_closed(state.window_end_ms, now_ms)
}

/// The 72 h free entry point at `now_ms` (`Closed { since_ms: None }` when never opened).
pub fn free_entry_point(kind: ChannelKind, state: &ConversationState, now_ms: i64) -> Window {
    if !kind.has_service_window() {
        return Window::NotApplicable;
    }
    open_or_closed(state.free_entry_end_ms, now_ms)
}

/// One window timer to arm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTimer {
    /// [`WINDOW_EXPIRING`] or [`WINDOW_CLOSED`].
    pub name: &'static str,
    pub due_ms: i64,
    /// The window end this timer was planned for; a fired timer whose end no longer matches
    /// the state is stale.
    pub window_end_ms: i64,
    /// For `window.expiring`: how long before the end.
    pub lead_ms: Option<i64>,
}

impl PlannedTimer {
    /// Stable name of the timer's slot in a conversation (`window.expiring:600000`,
    /// `window.closed`): re-arming writes the same slot, so a timer set holds one per slot.
    pub fn slot(&self) -> String {
        match self.lead_ms {
            Some(lead) => format!("{}:{lead}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// The `timer` part of the event the timer produces when it fires.
    pub fn to_timer(&self) -> Timer {
        Timer {
            name: self.name.to_owned(),
            window_end: self.window_end_ms,
            lead_ms: self.lead_ms,
        }
    }
}

/// Lead times from config minutes (`[worker] window_expiring_minutes`) to milliseconds.
pub fn leads_from_minutes(minutes: &[u64]) -> Vec<i64> {
    minutes
        .iter()
        .map(|m| {
            i64::try_from(*m)
                .unwrap_or(i64::MAX / 60_000)
                .saturating_mul(60_000)
        })
        .collect()
}

/// Timers to arm for the window as it stands at `now_ms`: one `window.expiring` per lead whose
/// due time is still ahead, and one `window.closed` at the end. None when the window is not
/// open, and never on Personal channels.
pub fn timers_for(
    kind: ChannelKind,
    state: &ConversationState,
    now_ms: i64,
    leads_ms: &[i64],
) -> Vec<PlannedTimer> {
    let Window::Open { until_ms: end } = window(kind, state, now_ms) else {
        return Vec::new();
    };
    let mut leads: Vec<i64> = leads_ms.iter().copied().filter(|l| *l > 0).collect();
    leads.sort_unstable_by(|a, b| b.cmp(a));
    leads.dedup();
    let mut timers: Vec<PlannedTimer> = leads
        .into_iter()
        .map(|lead| PlannedTimer {
            name: WINDOW_EXPIRING,
            due_ms: end - lead,
            window_end_ms: end,
            lead_ms: Some(lead),
        })
        .filter(|t| t.due_ms > now_ms)
        .collect();
    timers.push(PlannedTimer {
        name: WINDOW_CLOSED,
        due_ms: end,
        window_end_ms: end,
        lead_ms: None,
    });
    timers
}

/// A fired timer is current only if it was planned for the window end the state has now;
/// otherwise a newer message (or a 131047) moved the end and re-armed the timers.
pub fn is_timer_current(state: &ConversationState, timer_window_end_ms: i64) -> bool {
    state.window_end_ms == Some(timer_window_end_ms)
}

fn open_or_closed(end: Option<i64>, now_ms: i64) -> Window {
    match end {
        Some(until_ms) if now_ms < until_ms => Window::Open { until_ms },
        Some(end) => Window::Closed {
            since_ms: Some(end),
        },
        None => Window::Closed { since_ms: None },
    }
}

/// How far an event's own timestamp may lie after the moment it was received (clock skew).
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// An event's own timestamp; payloads without one (or with 0 or less) fall back to when
/// ingress got it, then now. A timestamp from the future — later than its arrival plus
/// [`MAX_FUTURE_SKEW_MS`], such as a 20-digit one — is not believed either: it would keep a
/// window open for ever. The arrival time stands in for it.
pub fn event_time(event: &Event, now_ms: i64) -> i64 {
    let arrived = event.received_at.filter(|t| *t > 0).unwrap_or(now_ms);
    if event.at > 0 && event.at <= arrived.saturating_add(MAX_FUTURE_SKEW_MS) {
        event.at
    } else {
        arrived
    }
}

/// A call that counts as the customer reaching out: their own call ringing, or their accepting
/// the business's call.
fn opens_window(call: &crate::event::Call) -> bool {
    match call.event.as_str() {
        "connect" => call.is_from_customer(),
        "status" => call
            .status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("ACCEPTED")),
        _ => false,
    }
}

/// An echo is a person on the phone unless it says it came through the API.
fn is_human_echo(kind: ChannelKind, coexistence: bool, message: Option<&Message>) -> bool {
    match message.and_then(|m| m.source.as_deref()) {
        Some(source) => !source.eq_ignore_ascii_case("api"),
        None => kind == ChannelKind::Personal || coexistence,
    }
}

/// Keeps the earliest "closed" signal after the newest user message: the window is closed
/// from then on, and later signals must not move its end (that would re-arm timers). Signals
/// not after the newest message are stale (the user wrote again since).
fn note_window_closed(state: &mut ConversationState, at_ms: i64) {
    let opened = state.last_inbound_ms.unwrap_or(i64::MIN);
    if at_ms <= opened {
        return;
    }
    state.window_closed_at_ms = Some(match state.window_closed_at_ms {
        Some(t) if t > opened => t.min(at_ms),
        _ => at_ms,
    });
}

/// `window_end = last user message + 24 h`, cut short by a "closed" signal newer than that
/// message. A signal in the same millisecond as the message (statuses have 1 s resolution)
/// is taken as older, so a send that raced the user's message does not close the new window.
fn recompute_window(kind: ChannelKind, state: &mut ConversationState) {
    if !kind.has_service_window() {
        state.window_end_ms = None;
        state.window_closed_at_ms = None;
        state.free_entry_end_ms = None;
        return;
    }
    state.window_end_ms = match (state.last_inbound_ms, state.window_closed_at_ms) {
        (None, _) => None,
        (Some(opened), Some(closed)) if closed > opened => {
            Some((opened + SERVICE_WINDOW_MS).min(closed))
        }
        (Some(opened), _) => Some(opened.saturating_add(SERVICE_WINDOW_MS)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Contact, ErrorDetail, Status};
    use crate::outbound::rules::{self, RuleError};
    use crate::outbound::Reply;
    use serde_json::{json, Value};

    const H: i64 = 3600 * 1000;
    const NOW: i64 = 1_700_000_000_000;
    const HANDOVER: i64 = 30 * 60 * 1000;

    fn event(kind: ChannelKind, event_type: EventType, at: i64) -> Event {
        Event {
            id: format!("e{at}"),
            channel: "ch".into(),
            kind,
            conversation: "1555".into(),
            event_type,
            at,
            // Events arrive when they happen (a later `at` is not from the future).
            received_at: (at > 0).then_some(at),
            contact: Contact {
                wa_id: Some("1555".into()),
                ..Default::default()
            },
            message: None,
            status: None,
            field: None,
            timer: None,
            outbound: None,
            call: None,
            raw: Value::Null,
        }
    }

    fn message(kind: ChannelKind, at: i64) -> Event {
        let mut e = event(kind, EventType::Message, at);
        e.message = Some(Message {
            id: format!("wamid.{at}"),
            kind: "text".into(),
            ..Default::default()
        });
        e
    }

    fn referral(kind: ChannelKind, at: i64) -> Event {
        let mut e = message(kind, at);
        e.message.as_mut().unwrap().referral = Some(json!({"source_type": "ad", "ctwa_clid": "x"}));
        e
    }

    fn echo(kind: ChannelKind, at: i64, source: Option<&str>) -> Event {
        let mut e = event(kind, EventType::Echo, at);
        e.message = Some(Message {
            id: "wamid.echo".into(),
            kind: "text".into(),
            source: source.map(Into::into),
            ..Default::default()
        });
        e
    }

    fn status(kind: ChannelKind, at: i64, id: &str, name: &str, codes: &[i64]) -> Event {
        let mut e = event(kind, EventType::Status, at);
        e.status = Some(Status {
            message_id: id.into(),
            status: name.into(),
            errors: codes
                .iter()
                .map(|c| ErrorDetail {
                    code: *c,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        e
    }

    fn apply(kind: ChannelKind, state: &mut ConversationState, e: &Event) -> Effects {
        apply_event(
            WindowRules {
                kind,
                coexistence: true,
                handover_ms: HANDOVER,
            },
            state,
            e,
            NOW,
        )
    }

    fn waba_after(events: &[Event]) -> ConversationState {
        let mut s = ConversationState::default();
        for e in events {
            apply(ChannelKind::Waba, &mut s, e);
        }
        s
    }

    #[test]
    fn a_customers_call_opens_the_window_like_a_message() {
        let k = ChannelKind::Waba;
        let call = |what: &str, direction: &str, status: Option<&str>| {
            let mut e = event(k, EventType::Call, NOW);
            e.call = Some(crate::event::Call {
                id: "wacid.1".into(),
                event: what.into(),
                direction: Some(direction.into()),
                status: status.map(str::to_string),
                duration_secs: None,
            });
            e
        };
        let open = Window::Open {
            until_ms: NOW + 24 * H,
        };
        for (e, expected) in [
            (call("connect", "USER_INITIATED", None), open),
            // Even unanswered: the terminate that follows changes nothing.
            (call("status", "BUSINESS_INITIATED", Some("ACCEPTED")), open),
            (
                call("connect", "BUSINESS_INITIATED", None),
                Window::Closed { since_ms: None },
            ),
            (
                call("status", "BUSINESS_INITIATED", Some("REJECTED")),
                Window::Closed { since_ms: None },
            ),
            (
                call("terminate", "USER_INITIATED", Some("COMPLETED")),
                Window::Closed { since_ms: None },
            ),
        ] {
            let s = waba_after(std::slice::from_ref(&e));
            assert_eq!(window(k, &s, NOW + H), expected, "{:?}", e.call);
        }
        // A Story or a Channel post never touches a conversation's window.
        for t in [EventType::Story, EventType::Newsletter] {
            let s = waba_after(&[event(k, t, NOW)]);
            assert_eq!(s, ConversationState::default());
        }
    }

    #[test]
    fn event_time_does_not_believe_the_future() {
        let mut e = message(ChannelKind::Waba, 1_000_000);
        e.received_at = Some(1_000_500);
        assert_eq!(event_time(&e, 2_000_000), 1_000_000);
        e.at = 1_000_500 + MAX_FUTURE_SKEW_MS;
        assert_eq!(event_time(&e, 2_000_000), e.at, "within the skew");
        e.at += 1;
        assert_eq!(
            event_time(&e, 2_000_000),
            1_000_500,
            "beyond it: the arrival"
        );
        e.at = i64::MAX;
        assert_eq!(event_time(&e, 2_000_000), 1_000_500);
        e.received_at = None;
        assert_eq!(event_time(&e, 2_000_000), 2_000_000, "no arrival: now");
        e.at = -5;
        assert_eq!(event_time(&e, 2_000_000), 2_000_000);
    }

    #[test]
    fn window_from_the_message_own_timestamp_not_receive_time() {
        // Sent 23 h 59 min 57 s ago, handled now: 3 s of window left.
        let at = NOW - (24 * H - 3_000);
        let mut m = message(ChannelKind::Waba, at);
        m.received_at = Some(NOW);
        let s = waba_after(&[m]);
        let cases = [
            (
                NOW,
                Window::Open {
                    until_ms: NOW + 3_000,
                },
            ),
            (
                NOW + 2_999,
                Window::Open {
                    until_ms: NOW + 3_000,
                },
            ),
            (
                NOW + 3_000,
                Window::Closed {
                    since_ms: Some(NOW + 3_000),
                },
            ),
            (
                at + 24 * H + 1,
                Window::Closed {
                    since_ms: Some(at + 24 * H),
                },
            ),
        ];
        for (now, expected) in cases {
            assert_eq!(window(ChannelKind::Waba, &s, now), expected, "now = {now}");
        }
        let text = Reply::text("hi");
        assert_eq!(
            rules::check(ChannelKind::Waba, window(ChannelKind::Waba, &s, NOW), &text),
            Ok(())
        );
        assert_eq!(
            rules::check(
                ChannelKind::Waba,
                window(ChannelKind::Waba, &s, at + 24 * H + 1),
                &text
            ),
            Err(RuleError::WindowClosed {
                closed_at: Some(at + 24 * H)
            })
        );
    }

    #[test]
    fn window_table() {
        use ChannelKind::*;
        struct Case {
            name: &'static str,
            kind: ChannelKind,
            events: Vec<Event>,
            at: i64,
            expected: Window,
        }
        let cases = [
            Case {
                name: "never wrote",
                kind: Waba,
                events: vec![],
                at: NOW,
                expected: Window::Closed { since_ms: None },
            },
            Case {
                name: "one message",
                kind: Waba,
                events: vec![message(Waba, NOW)],
                at: NOW + H,
                expected: Window::Open {
                    until_ms: NOW + 24 * H,
                },
            },
            Case {
                name: "newer message refreshes",
                kind: Waba,
                events: vec![message(Waba, NOW), message(Waba, NOW + 5 * H)],
                at: NOW + 25 * H,
                expected: Window::Open {
                    until_ms: NOW + 29 * H,
                },
            },
            Case {
                name: "re-delivered older message does not shorten",
                kind: Waba,
                events: vec![message(Waba, NOW + 5 * H), message(Waba, NOW)],
                at: NOW + 25 * H,
                expected: Window::Open {
                    until_ms: NOW + 29 * H,
                },
            },
            Case {
                name: "echo does not open",
                kind: Waba,
                events: vec![echo(Waba, NOW, None)],
                at: NOW + 1,
                expected: Window::Closed { since_ms: None },
            },
            Case {
                name: "echo does not extend",
                kind: Waba,
                events: vec![message(Waba, NOW), echo(Waba, NOW + 10 * H, None)],
                at: NOW + 24 * H,
                expected: Window::Closed {
                    since_ms: Some(NOW + 24 * H),
                },
            },
            Case {
                name: "131047 closes",
                kind: Waba,
                events: vec![
                    message(Waba, NOW),
                    status(Waba, NOW + H, "wamid.out", "failed", &[131047]),
                ],
                at: NOW + H + 1,
                expected: Window::Closed {
                    since_ms: Some(NOW + H),
                },
            },
            Case {
                name: "legacy 470 closes",
                kind: Waba,
                events: vec![
                    message(Waba, NOW),
                    status(Waba, NOW + H, "wamid.out", "failed", &[470]),
                ],
                at: NOW + 2 * H,
                expected: Window::Closed {
                    since_ms: Some(NOW + H),
                },
            },
            Case {
                name: "other failure leaves it open",
                kind: Waba,
                events: vec![
                    message(Waba, NOW),
                    status(Waba, NOW + H, "wamid.out", "failed", &[131026]),
                ],
                at: NOW + 2 * H,
                expected: Window::Open {
                    until_ms: NOW + 24 * H,
                },
            },
            Case {
                name: "a newer message reopens after 131047",
                kind: Waba,
                events: vec![
                    message(Waba, NOW),
                    status(Waba, NOW + H, "w", "failed", &[131047]),
                    message(Waba, NOW + 2 * H),
                ],
                at: NOW + 3 * H,
                expected: Window::Open {
                    until_ms: NOW + 26 * H,
                },
            },
            Case {
                name: "131047 arriving after a newer message does not close it",
                kind: Waba,
                events: vec![
                    message(Waba, NOW + 2 * H),
                    status(Waba, NOW + H, "w", "failed", &[131047]),
                ],
                at: NOW + 3 * H,
                expected: Window::Open {
                    until_ms: NOW + 26 * H,
                },
            },
            Case {
                name: "re-delivered older message does not reopen after 131047",
                kind: Waba,
                events: vec![
                    message(Waba, NOW),
                    status(Waba, NOW + H, "w", "failed", &[131047]),
                    message(Waba, NOW - H),
                ],
                at: NOW + 2 * H,
                expected: Window::Closed {
                    since_ms: Some(NOW + H),
                },
            },
            Case {
                name: "the earliest close signal wins, whatever the order",
                kind: Waba,
                events: vec![
                    message(Waba, NOW),
                    status(Waba, NOW + 3 * H, "w2", "failed", &[131047]),
                    status(Waba, NOW + H, "w1", "failed", &[131047]),
                    status(Waba, NOW + 5 * H, "w3", "failed", &[131047]),
                ],
                at: NOW + 2 * H,
                expected: Window::Closed {
                    since_ms: Some(NOW + H),
                },
            },
            Case {
                name: "a close signal before any message, then an older message",
                kind: Waba,
                events: vec![
                    status(Waba, NOW + H, "w", "failed", &[131047]),
                    message(Waba, NOW),
                ],
                at: NOW + 2 * H,
                expected: Window::Closed {
                    since_ms: Some(NOW + H),
                },
            },
            Case {
                name: "history never opens",
                kind: Waba,
                events: vec![
                    event(Waba, EventType::History, NOW),
                    event(Waba, EventType::ContactSync, NOW),
                    event(Waba, EventType::Account, NOW),
                ],
                at: NOW + 1,
                expected: Window::Closed { since_ms: None },
            },
            Case {
                name: "personal has no window",
                kind: Personal,
                events: vec![],
                at: NOW,
                expected: Window::NotApplicable,
            },
            Case {
                name: "personal message still no window",
                kind: Personal,
                events: vec![
                    message(Personal, NOW),
                    status(Personal, NOW + 1, "w", "failed", &[131047]),
                ],
                at: NOW + 48 * H,
                expected: Window::NotApplicable,
            },
        ];
        for case in cases {
            let mut s = ConversationState::default();
            for e in &case.events {
                apply(case.kind, &mut s, e);
            }
            assert_eq!(
                window(case.kind, &s, case.at),
                case.expected,
                "{}",
                case.name
            );
            if case.kind == Personal {
                assert_eq!(s.window_end_ms, None, "{}", case.name);
            }
        }
    }

    #[test]
    fn message_without_timestamp_uses_receive_time_then_now() {
        let mut m = message(ChannelKind::Waba, 0);
        m.received_at = Some(NOW - H);
        assert_eq!(waba_after(&[m]).window_end_ms, Some(NOW + 23 * H));
        assert_eq!(
            waba_after(&[message(ChannelKind::Waba, 0)]).window_end_ms,
            Some(NOW + 24 * H)
        );
    }

    #[test]
    fn referral_opens_the_free_entry_point() {
        let s = waba_after(&[referral(ChannelKind::Waba, NOW)]);
        assert_eq!(
            free_entry_point(ChannelKind::Waba, &s, NOW + 71 * H),
            Window::Open {
                until_ms: NOW + 72 * H
            }
        );
        assert_eq!(
            free_entry_point(ChannelKind::Waba, &s, NOW + 72 * H),
            Window::Closed {
                since_ms: Some(NOW + 72 * H)
            }
        );
        assert_eq!(
            window(ChannelKind::Waba, &s, NOW + 23 * H),
            Window::Open {
                until_ms: NOW + 24 * H
            }
        );
        // An older referral never shortens it, a plain message never opens one.
        let s = waba_after(&[
            referral(ChannelKind::Waba, NOW),
            referral(ChannelKind::Waba, NOW - H),
            message(ChannelKind::Waba, NOW + H),
        ]);
        assert_eq!(s.free_entry_end_ms, Some(NOW + 72 * H));
        assert_eq!(
            free_entry_point(
                ChannelKind::Waba,
                &waba_after(&[message(ChannelKind::Waba, NOW)]),
                NOW
            ),
            Window::Closed { since_ms: None }
        );
        let mut p = ConversationState::default();
        apply(
            ChannelKind::Personal,
            &mut p,
            &referral(ChannelKind::Personal, NOW),
        );
        assert_eq!(
            free_entry_point(ChannelKind::Personal, &p, NOW),
            Window::NotApplicable
        );
        assert_eq!(p.free_entry_end_ms, None);
    }

    #[test]
    fn echoes_and_handover() {
        use ChannelKind::*;
        // (kind, coexistence, source, handover expected)
        let cases = [
            (Waba, true, None, true),
            (Waba, true, Some("app"), true),
            (Waba, true, Some("api"), false),
            (Waba, false, None, false),
            (Waba, false, Some("app"), true),
            (Personal, false, Some("app"), true),
            (Personal, false, Some("API"), false),
            (Personal, false, None, true),
        ];
        for (kind, coex, source, expected) in cases {
            let mut s = ConversationState::default();
            let fx = apply_event(
                WindowRules {
                    kind,
                    coexistence: coex,
                    handover_ms: HANDOVER,
                },
                &mut s,
                &echo(kind, NOW - 5_000, source),
                NOW,
            );
            assert_eq!(
                fx.handover_started, expected,
                "{kind} coex={coex} source={source:?}"
            );
            assert_eq!(
                handover_active(&s, NOW + HANDOVER - 1),
                expected,
                "{kind} {source:?}"
            );
            assert!(!handover_active(&s, NOW + HANDOVER));
            assert_eq!(s.last_outbound_ms, Some(NOW - 5_000));
            assert!(!fx.window_changed);
            assert_eq!(s.window_end_ms, None);
        }
        // A later echo extends, an earlier-handled one never shortens.
        let mut s = ConversationState::default();
        apply_event(
            WindowRules {
                kind: Waba,
                coexistence: true,
                handover_ms: HANDOVER,
            },
            &mut s,
            &echo(Waba, NOW, None),
            NOW + 10_000,
        );
        apply_event(
            WindowRules {
                kind: Waba,
                coexistence: true,
                handover_ms: HANDOVER,
            },
            &mut s,
            &echo(Waba, NOW, None),
            NOW,
        );
        assert_eq!(s.handover_until_ms, Some(NOW + 10_000 + HANDOVER));
        end_handover(&mut s);
        assert!(!handover_active(&s, NOW));
    }

    #[test]
    fn statuses_are_monotonic_and_failed_is_terminal() {
        use DeliveryStatus::*;
        let k = ChannelKind::Waba;
        let mut s = ConversationState::default();
        let seq = [
            (
                "sent",
                StatusUpdate::Advanced {
                    previous: None,
                    current: Sent,
                },
            ),
            (
                "read",
                StatusUpdate::Advanced {
                    previous: Some(Sent),
                    current: Read,
                },
            ),
            (
                "delivered",
                StatusUpdate::Stale {
                    current: Read,
                    received: Delivered,
                },
            ),
            (
                "read",
                StatusUpdate::Stale {
                    current: Read,
                    received: Read,
                },
            ),
            (
                "played",
                StatusUpdate::Advanced {
                    previous: Some(Read),
                    current: Played,
                },
            ),
            (
                "failed",
                StatusUpdate::Advanced {
                    previous: Some(Played),
                    current: Failed,
                },
            ),
            (
                "read",
                StatusUpdate::Stale {
                    current: Failed,
                    received: Read,
                },
            ),
            ("deleted", StatusUpdate::Unranked("deleted".into())),
        ];
        for (name, expected) in seq {
            let fx = apply(k, &mut s, &status(k, NOW, "wamid.1", name, &[]));
            assert_eq!(fx.status, Some(expected), "{name}");
        }
        assert_eq!(s.statuses.get("wamid.1"), Some(Failed));
        // Each message has its own rank.
        let fx = apply(k, &mut s, &status(k, NOW, "wamid.2", "delivered", &[]));
        assert_eq!(
            fx.status,
            Some(StatusUpdate::Advanced {
                previous: None,
                current: Delivered
            })
        );
        assert!(fx.changed);
        // A stale status changes nothing to save.
        let fx = apply(k, &mut s, &status(k, NOW, "wamid.2", "sent", &[]));
        assert!(!fx.changed);
    }

    #[test]
    fn effects_say_what_to_save_and_rearm() {
        let k = ChannelKind::Waba;
        let mut s = ConversationState::default();
        let fx = apply(k, &mut s, &message(k, NOW));
        assert!(fx.changed && fx.window_changed && !fx.free_entry_changed);
        let fx = apply(k, &mut s, &message(k, NOW - H));
        assert!(!fx.window_changed, "older message: timers stay");
        let fx = apply(k, &mut s, &referral(k, NOW));
        assert!(fx.free_entry_changed && !fx.window_changed);
        let fx = apply(k, &mut s, &event(k, EventType::History, NOW + H));
        assert_eq!(fx, Effects::default());
        let fx = apply(k, &mut s, &status(k, NOW + H, "w", "failed", &[131047]));
        assert!(fx.window_changed);
    }

    #[test]
    fn synchronous_131047_and_outbound() {
        let mut s = waba_after(&[message(ChannelKind::Waba, NOW)]);
        record_outbound(&mut s, NOW + H);
        record_outbound(&mut s, NOW);
        assert_eq!(s.last_outbound_ms, Some(NOW + H));
        assert!(mark_window_closed(ChannelKind::Waba, &mut s, NOW + 2 * H));
        assert_eq!(
            window(ChannelKind::Waba, &s, NOW + 2 * H),
            Window::Closed {
                since_ms: Some(NOW + 2 * H)
            }
        );
        assert!(
            !mark_window_closed(ChannelKind::Waba, &mut s, NOW + 3 * H),
            "already closed earlier"
        );
        let mut p = ConversationState::default();
        assert!(!mark_window_closed(ChannelKind::Personal, &mut p, NOW));
        assert_eq!(p, ConversationState::default());
    }

    #[test]
    fn sending_rules() {
        let never = ConversationState::default();
        let at = |kind, reply: &Reply| rules::check(kind, window(kind, &never, NOW), reply);
        let text = Reply::text("hi");
        let template = Reply::Template {
            name: "t".into(),
            language: "en_US".into(),
            components: vec![],
        };
        assert_eq!(
            at(ChannelKind::Waba, &text),
            Err(RuleError::WindowClosed { closed_at: None })
        );
        assert_eq!(at(ChannelKind::Personal, &text), Ok(()));
        assert_eq!(at(ChannelKind::Waba, &template), Ok(()));
        let err = at(ChannelKind::Personal, &template).unwrap_err();
        assert_eq!(
            err,
            RuleError::TemplatesUnsupported {
                kind: ChannelKind::Personal
            }
        );
        assert!(err.to_string().contains("personal"), "{err}");
        let closed = RuleError::WindowClosed { closed_at: None }.to_string();
        assert!(closed.contains("never wrote"), "{closed}");
        assert!(
            Window::NotApplicable.allows_free_form()
                && !Window::Closed { since_ms: None }.allows_free_form()
        );
    }

    #[test]
    fn timers_plan() {
        let leads = leads_from_minutes(&[60, 10]);
        assert_eq!(leads, vec![60 * 60_000, 10 * 60_000]);
        let s = waba_after(&[message(ChannelKind::Waba, NOW)]);
        let end = NOW + 24 * H;
        let timers = timers_for(ChannelKind::Waba, &s, NOW, &leads);
        assert_eq!(
            timers,
            vec![
                PlannedTimer {
                    name: WINDOW_EXPIRING,
                    due_ms: end - H,
                    window_end_ms: end,
                    lead_ms: Some(H)
                },
                PlannedTimer {
                    name: WINDOW_EXPIRING,
                    due_ms: end - 600_000,
                    window_end_ms: end,
                    lead_ms: Some(600_000)
                },
                PlannedTimer {
                    name: WINDOW_CLOSED,
                    due_ms: end,
                    window_end_ms: end,
                    lead_ms: None
                },
            ]
        );
        assert_eq!(timers[1].slot(), "window.expiring:600000");
        assert_eq!(timers[2].slot(), "window.closed");
        assert_eq!(
            timers[0].to_timer(),
            Timer {
                name: "window.expiring".into(),
                window_end: end,
                lead_ms: Some(H)
            }
        );
        // Leads already past are skipped; duplicates and non-positive leads ignored.
        let late = timers_for(
            ChannelKind::Waba,
            &s,
            end - 30 * 60_000,
            &[H, 600_000, 600_000, 0, -5],
        );
        assert_eq!(
            late.iter().map(PlannedTimer::slot).collect::<Vec<_>>(),
            vec!["window.expiring:600000", "window.closed"]
        );
        // Closed or never-open windows and personal channels plan nothing.
        assert!(timers_for(ChannelKind::Waba, &s, end, &leads).is_empty());
        assert!(timers_for(
            ChannelKind::Waba,
            &ConversationState::default(),
            NOW,
            &leads
        )
        .is_empty());
        let mut p = ConversationState::default();
        apply(
            ChannelKind::Personal,
            &mut p,
            &message(ChannelKind::Personal, NOW),
        );
        assert!(timers_for(ChannelKind::Personal, &p, NOW, &leads).is_empty());
    }

    #[test]
    fn a_new_message_makes_old_timers_stale() {
        let k = ChannelKind::Waba;
        let mut s = waba_after(&[message(k, NOW)]);
        let armed = timers_for(k, &s, NOW, &[H]);
        assert!(armed.iter().all(|t| is_timer_current(&s, t.window_end_ms)));
        apply(k, &mut s, &message(k, NOW + H));
        assert!(armed.iter().all(|t| !is_timer_current(&s, t.window_end_ms)));
        let rearmed = timers_for(k, &s, NOW + H, &[H]);
        assert!(rearmed
            .iter()
            .all(|t| is_timer_current(&s, t.window_end_ms)));
        assert!(!is_timer_current(&ConversationState::default(), NOW));
    }

    #[test]
    fn contact_ids_are_remembered() {
        let mut m = message(ChannelKind::Waba, NOW);
        m.contact.user_id = Some("US.1".into());
        m.contact.name = Some("Ana".into());
        let s = waba_after(&[m]);
        assert_eq!(s.contact.user_id.as_deref(), Some("US.1"));
        assert_eq!(s.contact.name.as_deref(), Some("Ana"));
    }
}
