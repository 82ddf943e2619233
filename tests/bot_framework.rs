//! The Rust bot-author API: filters, the router (first match wins, Continue, observers),
//! start-up validation, the sending rules seen from a handler, and the example bots driven
//! through the test kit (real worker code, in-memory queue and store, manual clock).

#[path = "../examples/echo_bot.rs"]
#[allow(dead_code)]
mod echo_bot;
#[path = "../examples/support_bot.rs"]
#[allow(dead_code)]
mod support_bot;

use coexist::bot::testkit::{TestKit, DEFAULT_CONFIG, START_MS};
use coexist::bot::{
    handler, BuildError, Context, Filter, Flow, HandlerError, On, Router, SendRuleError,
};
use coexist::config::{ChannelConfig, Config};
use coexist::conversation::window::{Effects, Window, SERVICE_WINDOW_MS};
use coexist::conversation::ConversationState;
use coexist::event::{Contact, Event, EventType, Message, Status, Timer};
use coexist::outbound::{Reply, RuleError};
use coexist::ChannelKind;
use std::sync::Arc;
use std::time::Duration;
use support_bot::{Dialogue, COME_BACK_TEMPLATE};

const H: i64 = 3_600_000;
const MIN: i64 = 60_000;
const NUMBER: &str = "16505551234";

// ---------------------------------------------------------------- contexts by hand

fn channel(id: &str) -> Arc<ChannelConfig> {
    let config = Config::from_toml(DEFAULT_CONFIG, "t.toml", &|_| None).unwrap();
    Arc::new(config.channel(id).unwrap().clone())
}

fn event(kind: ChannelKind, event_type: EventType) -> Event {
    let channel = match kind {
        ChannelKind::Waba => TestKit::WABA,
        ChannelKind::Personal => TestKit::PERSONAL,
    };
    Event {
        id: "e1".into(),
        channel: channel.into(),
        kind,
        conversation: NUMBER.into(),
        event_type,
        at: START_MS,
        received_at: None,
        contact: Contact {
            wa_id: Some(NUMBER.into()),
            ..Default::default()
        },
        message: None,
        status: None,
        field: None,
        timer: None,
        outbound: None,
        call: None,
        raw: serde_json::Value::Null,
    }
}

fn message(
    kind: ChannelKind,
    message_type: &str,
    text: Option<&str>,
    button: Option<&str>,
) -> Event {
    let mut e = event(kind, EventType::Message);
    e.message = Some(Message {
        id: "wamid.1".into(),
        kind: message_type.into(),
        text: text.map(str::to_owned),
        button_id: button.map(str::to_owned),
        ..Default::default()
    });
    e
}

fn timer(name: &str) -> Event {
    let mut e = event(ChannelKind::Waba, EventType::Timer);
    e.timer = Some(Timer {
        name: name.into(),
        window_end: START_MS + H,
        lead_ms: Some(10 * MIN),
    });
    e
}

/// A context as the worker makes it; `state` decides the window, `handover` marks an echo
/// that paused the bot.
fn ctx_with(e: Event, state: ConversationState, handover: bool) -> Context {
    let ch = channel(&e.channel);
    let effects = Effects {
        handover_started: handover,
        ..Default::default()
    };
    Context::new(e, ch, state, START_MS).with_effects(effects)
}

fn ctx(e: Event) -> Context {
    let handover = e.event_type == EventType::Echo;
    ctx_with(e, open_window(), handover)
}

fn open_window() -> ConversationState {
    ConversationState {
        window_end_ms: Some(START_MS + H),
        last_inbound_ms: Some(START_MS + H - SERVICE_WINDOW_MS),
        ..Default::default()
    }
}

/// The sample events the filter table runs on, by name.
fn samples() -> Vec<(&'static str, Context)> {
    let mut status = event(ChannelKind::Waba, EventType::Status);
    status.status = Some(Status {
        message_id: "wamid.9".into(),
        status: "read".into(),
        ..Default::default()
    });
    let mut echo = message(ChannelKind::Waba, "text", Some("I'll take it"), None);
    echo.event_type = EventType::Echo;
    let mut api_echo = echo.clone();
    api_echo.message.as_mut().unwrap().source = Some("api".into());
    let mut session = event(ChannelKind::Personal, EventType::Session);
    session.conversation = String::new();
    vec![
        (
            "waba text",
            ctx(message(ChannelKind::Waba, "text", Some("Menu"), None)),
        ),
        (
            "personal text",
            ctx(message(
                ChannelKind::Personal,
                "text",
                Some("  menu please "),
                None,
            )),
        ),
        (
            "waba button",
            ctx(message(
                ChannelKind::Waba,
                "button_reply",
                Some("My order"),
                Some("menu:order"),
            )),
        ),
        (
            "waba image",
            ctx(message(ChannelKind::Waba, "image", None, None)),
        ),
        ("waba status", ctx(status)),
        ("handover echo", ctx(echo)),
        ("api echo", ctx_with(api_echo, open_window(), false)),
        ("personal session", ctx(session)),
        ("expiring", ctx(timer("window.expiring"))),
        ("closed", ctx(timer("window.closed"))),
    ]
}

#[test]
fn filters_table() {
    let samples = samples();
    let names: Vec<&str> = samples.iter().map(|(n, _)| *n).collect();
    // (filter, the samples it matches)
    let table: Vec<(Filter, Vec<&str>)> = vec![
        (Filter::any(), names.clone()),
        (
            Filter::waba(),
            names
                .iter()
                .copied()
                .filter(|n| !n.starts_with("personal"))
                .collect(),
        ),
        (
            Filter::kind(ChannelKind::Personal),
            vec!["personal text", "personal session"],
        ),
        (
            Filter::channel(TestKit::PERSONAL),
            vec!["personal text", "personal session"],
        ),
        (Filter::event(EventType::Status), vec!["waba status"]),
        (
            Filter::event(EventType::Echo),
            vec!["handover echo", "api echo"],
        ),
        (Filter::event(EventType::Timer), vec!["expiring", "closed"]),
        (Filter::message_type("image"), vec!["waba image"]),
        (Filter::message_type("button_reply"), vec!["waba button"]),
        (Filter::text("Menu"), vec!["waba text"]),
        (Filter::text("menu please"), vec!["personal text"]),
        (Filter::text_ignore_case("MENU"), vec!["waba text"]),
        (Filter::text_prefix("menu"), vec!["personal text"]),
        (
            Filter::regex("(?i)^\\s*menu"),
            vec!["waba text", "personal text"],
        ),
        (Filter::regex("take"), vec!["handover echo", "api echo"]),
        (Filter::button("menu:order"), vec!["waba button"]),
        (Filter::button("menu"), vec![]),
        (Filter::button_prefix("menu:"), vec!["waba button"]),
        (Filter::handover(), vec!["handover echo"]),
        (
            Filter::custom("has timer", |c| c.timer().is_some()),
            vec!["expiring", "closed"],
        ),
        // and / &
        (
            Filter::waba().and(Filter::regex("(?i)menu")),
            vec!["waba text"],
        ),
        (
            Filter::personal() & Filter::event(EventType::Message),
            vec!["personal text"],
        ),
        // or / |
        (
            Filter::button("menu:order").or(Filter::handover()),
            vec!["waba button", "handover echo"],
        ),
        (
            Filter::event(EventType::Status) | Filter::event(EventType::Session),
            vec!["waba status", "personal session"],
        ),
        // not / !
        (
            Filter::waba().not(),
            vec!["personal text", "personal session"],
        ),
        (
            !Filter::event(EventType::Message) & Filter::waba() & !Filter::event(EventType::Timer),
            vec!["waba status", "handover echo", "api echo"],
        ),
        (
            !(Filter::text("Menu") | Filter::personal()) & Filter::event(EventType::Message),
            vec!["waba button", "waba image"],
        ),
        (!!Filter::handover(), vec!["handover echo"]),
        // an invalid regex matches nothing (and build() refuses it)
        (Filter::regex("(unclosed"), vec![]),
    ];
    for (filter, expected) in table {
        let got: Vec<&str> = samples
            .iter()
            .filter(|(_, c)| filter.matches(c))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(got, expected, "{filter}");
    }
}

#[test]
fn filters_print_as_written() {
    let f =
        (Filter::text("a") | Filter::button_prefix("b:")) & !Filter::kind(ChannelKind::Personal);
    assert_eq!(
        f.to_string(),
        "((text(\"a\") | button_prefix(\"b:\")) & !kind(personal))"
    );
    assert!(
        Filter::regex("(").problems()[0].contains("invalid regex"),
        "{:?}",
        Filter::regex("(").problems()
    );
    assert!(Filter::text("x").problems().is_empty());
}

// ---------------------------------------------------------------- the router

fn say(text: &'static str, flow: Flow) -> impl coexist::bot::Handler {
    handler!(|ctx| async move {
        ctx.reply(text)?;
        Ok(flow)
    })
}

fn texts(ctx: &Context) -> Vec<String> {
    ctx.replies()
        .iter()
        .map(|r| match r {
            Reply::Text { text, .. } => text.clone(),
            other => other.type_name().to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn first_match_wins_unless_continue() {
    let waba_text = || ctx(message(ChannelKind::Waba, "text", Some("Menu"), None));
    // (router, replies to a WABA "Menu")
    let cases: Vec<(&str, Router, Vec<&str>)> = vec![
        (
            "first wins",
            Router::builder()
                .on_text(Filter::text("Menu"), say("first", Flow::Stop))
                .on_text(Filter::any(), say("second", Flow::Stop))
                .build()
                .unwrap(),
            vec!["first"],
        ),
        (
            "continue lets the next one run",
            Router::builder()
                .on_text(Filter::text("Menu"), say("first", Flow::Continue))
                .on_message(Filter::any(), say("second", Flow::Stop))
                .on_any(Filter::any(), say("third", Flow::Stop))
                .build()
                .unwrap(),
            vec!["first", "second"],
        ),
        (
            "a non-matching filter is skipped",
            Router::builder()
                .on_text(Filter::personal(), say("personal", Flow::Stop))
                .on_button(Filter::any(), say("button", Flow::Stop))
                .on_text(Filter::waba(), say("waba", Flow::Stop))
                .build()
                .unwrap(),
            vec!["waba"],
        ),
        (
            "observers always run and never stop",
            Router::builder()
                .observe(Filter::any(), say("seen", Flow::Stop))
                .on_text(Filter::any(), say("answer", Flow::Stop))
                .observe(Filter::any(), say("never: answer stopped", Flow::Stop))
                .build()
                .unwrap(),
            vec!["seen", "answer"],
        ),
    ];
    for (name, router, expected) in cases {
        let mut c = waba_text();
        assert!(router.dispatch(&mut c).await.unwrap(), "{name}");
        assert_eq!(texts(&c), expected, "{name}");
    }

    // Each registration sees only its event type.
    let router = Router::builder()
        .on_status(Filter::any(), say("status", Flow::Stop))
        .on_handover(Filter::any(), say("handover", Flow::Stop))
        .on_echo(Filter::any(), say("echo", Flow::Stop))
        .on_window_expiring(Filter::any(), say("expiring", Flow::Stop))
        .on_window_closed(Filter::any(), say("closed", Flow::Stop))
        .on_button(Filter::button("menu:order"), say("button", Flow::Stop))
        .on_message(Filter::message_type("image"), say("image", Flow::Stop))
        .build()
        .unwrap();
    let expected = [
        ("waba text", None),
        ("waba button", Some("button")),
        ("waba image", Some("image")),
        ("waba status", Some("status")),
        ("handover echo", Some("handover")),
        ("api echo", Some("echo")),
        ("expiring", Some("expiring")),
        ("closed", Some("closed")),
    ];
    let mut samples = samples();
    for (name, reply) in expected {
        let c = &mut samples.iter_mut().find(|(n, _)| *n == name).unwrap().1;
        let matched = router.dispatch(c).await.unwrap();
        assert_eq!(matched, reply.is_some(), "{name}");
        // Timer and status contexts may not allow a reply everywhere; here the window is open.
        assert_eq!(
            texts(c),
            reply.into_iter().map(str::to_owned).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn handler_errors_come_back_to_the_worker() {
    let router = Router::builder()
        .on_text(
            Filter::text("retry"),
            handler!(|_ctx| async move { Err::<(), _>(HandlerError::retry("db down")) }),
        )
        .on_text(
            Filter::any(),
            handler!(|ctx| async move {
                // `?` on a refused reply gives up on the event.
                ctx.send_template("t", "en_US", vec![])?;
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let mut c = ctx(message(ChannelKind::Waba, "text", Some("retry"), None));
    assert_eq!(
        router.dispatch(&mut c).await,
        Err(HandlerError::Retry("db down".into()))
    );
    let mut c = ctx(message(ChannelKind::Personal, "text", Some("hi"), None));
    match router.dispatch(&mut c).await {
        Err(HandlerError::GiveUp(reason)) => {
            assert!(reason.contains("no message templates"), "{reason}")
        }
        other => panic!("expected GiveUp, got {other:?}"),
    }
}

#[test]
fn build_validates_at_start_up() {
    fn nothing() -> impl coexist::bot::Handler {
        handler!(|_ctx| async move { Ok(()) })
    }
    let cases: Vec<(&str, coexist::bot::RouterBuilder, Result<(), BuildError>)> = vec![
        ("empty", Router::builder(), Err(BuildError::Empty)),
        (
            "invalid regex",
            Router::builder().on_text(Filter::regex("(?i)^(hi|hello"), nothing()),
            Err(BuildError::InvalidFilter {
                index: 0,
                on: On::Text,
                filter: "regex(\"(?i)^(hi|hello\")".into(),
                problem: String::new(),
            }),
        ),
        (
            "invalid regex deep inside",
            Router::builder().on_text(Filter::waba(), nothing()).on_any(
                Filter::any() & !(Filter::personal() | Filter::regex("[")),
                nothing(),
            ),
            Err(BuildError::InvalidFilter {
                index: 1,
                on: On::Any,
                filter: String::new(),
                problem: String::new(),
            }),
        ),
        (
            "empty button id",
            Router::builder().on_button(Filter::button(""), nothing()),
            Err(BuildError::InvalidFilter {
                index: 0,
                on: On::Button,
                filter: String::new(),
                problem: String::new(),
            }),
        ),
        (
            "button filter on statuses",
            Router::builder().on_status(Filter::button("buy"), nothing()),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::Status,
                filter: "button(\"buy\")".into(),
            }),
        ),
        (
            "text filter on window timers",
            Router::builder().on_window_closed(Filter::text("x"), nothing()),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::WindowClosed,
                filter: String::new(),
            }),
        ),
        (
            "window timers on Personal",
            Router::builder().on_window_expiring(Filter::personal(), nothing()),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::WindowExpiring,
                filter: String::new(),
            }),
        ),
        (
            "buttons on Personal",
            Router::builder().on_message(Filter::button("a") & Filter::personal(), nothing()),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::Message,
                filter: String::new(),
            }),
        ),
        (
            "sessions on WABA",
            Router::builder().on_session(Filter::channel("x") & Filter::waba(), nothing()),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::Session,
                filter: String::new(),
            }),
        ),
        (
            "a contradiction",
            Router::builder().on_any(
                Filter::event(EventType::Status) & !Filter::event(EventType::Status),
                nothing(),
            ),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::Any,
                filter: String::new(),
            }),
        ),
        (
            "wrong event type for the registration",
            Router::builder().on_message(Filter::event(EventType::Echo), nothing()),
            Err(BuildError::NeverMatches {
                index: 0,
                on: On::Message,
                filter: String::new(),
            }),
        ),
        (
            "after a catch-all",
            Router::builder()
                .on_any(Filter::any(), nothing())
                .on_text(Filter::text("menu"), nothing()),
            Err(BuildError::Unreachable {
                index: 1,
                on: On::Text,
                filter: String::new(),
                shadowed_by: 0,
                by_on: On::Any,
                by_filter: String::new(),
            }),
        ),
        (
            "handover after all echoes",
            Router::builder()
                .on_echo(Filter::any(), nothing())
                .on_handover(Filter::any(), nothing()),
            Err(BuildError::Unreachable {
                index: 1,
                on: On::Handover,
                filter: String::new(),
                shadowed_by: 0,
                by_on: On::Echo,
                by_filter: String::new(),
            }),
        ),
        (
            "personal text after every personal message",
            Router::builder()
                .on_status(Filter::any(), nothing())
                .on_message(Filter::personal(), nothing())
                .on_text(Filter::personal() & Filter::text("1"), nothing()),
            Err(BuildError::Unreachable {
                index: 2,
                on: On::Text,
                filter: String::new(),
                shadowed_by: 1,
                by_on: On::Message,
                by_filter: String::new(),
            }),
        ),
        (
            "catch-all last",
            Router::builder()
                .on_text(Filter::text("menu"), nothing())
                .on_any(Filter::any(), nothing()),
            Ok(()),
        ),
        (
            "after an observer",
            Router::builder()
                .observe(Filter::any(), nothing())
                .on_text(Filter::any(), nothing()),
            Ok(()),
        ),
        (
            "a partial catch-all leaves the rest reachable",
            Router::builder()
                .on_any(Filter::waba(), nothing())
                .on_status(Filter::personal(), nothing()),
            Ok(()),
        ),
        (
            "an unknowable filter shadows nothing",
            Router::builder()
                .on_message(Filter::custom("x", |_| true), nothing())
                .on_text(Filter::any(), nothing()),
            Ok(()),
        ),
        (
            "a single handler",
            Router::builder().on_text(Filter::any(), nothing()),
            Ok(()),
        ),
    ];
    for (name, builder, expected) in cases {
        let got = builder.build().map(|_| ());
        match (&got, &expected) {
            (Ok(()), Ok(())) => {}
            (Err(g), Err(e)) => {
                assert_eq!(
                    std::mem::discriminant(g),
                    std::mem::discriminant(e),
                    "{name}: {g}"
                );
                match (g, e) {
                    (
                        BuildError::InvalidFilter {
                            index,
                            on,
                            filter,
                            problem,
                        },
                        BuildError::InvalidFilter {
                            index: ei,
                            on: eo,
                            filter: ef,
                            ..
                        },
                    ) => {
                        assert_eq!((index, on), (ei, eo), "{name}");
                        assert!(ef.is_empty() || filter == ef, "{name}: {filter}");
                        assert!(!problem.is_empty(), "{name}");
                    }
                    (
                        BuildError::NeverMatches { index, on, filter },
                        BuildError::NeverMatches {
                            index: ei,
                            on: eo,
                            filter: ef,
                        },
                    ) => {
                        assert_eq!((index, on), (ei, eo), "{name}");
                        assert!(ef.is_empty() || filter == ef, "{name}: {filter}");
                    }
                    (
                        BuildError::Unreachable {
                            index,
                            on,
                            shadowed_by,
                            by_on,
                            ..
                        },
                        BuildError::Unreachable {
                            index: ei,
                            on: eo,
                            shadowed_by: es,
                            by_on: eb,
                            ..
                        },
                    ) => assert_eq!((index, on, shadowed_by, by_on), (ei, eo, es, eb), "{name}"),
                    _ => {}
                }
            }
            _ => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }
    let message = Router::builder()
        .on_any(Filter::any(), nothing())
        .on_text(Filter::text("menu"), nothing())
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("handler #1 (on_text") && message.contains("#0 (on_any"),
        "{message}"
    );
    assert!(support_bot::support_bot().is_ok() && echo_bot::echo_bot().is_ok());
}

// ---------------------------------------------------------------- the rules, from a handler

#[test]
fn sending_rules_from_a_context() {
    // WABA, window closed since a known time: WindowClosed says when.
    let closed_at = START_MS - 2 * H;
    let state = ConversationState {
        window_end_ms: Some(closed_at),
        last_inbound_ms: Some(closed_at - SERVICE_WINDOW_MS),
        ..Default::default()
    };
    let mut c = ctx_with(
        message(ChannelKind::Waba, "text", Some("hi"), None),
        state,
        false,
    );
    assert_eq!(
        c.window(),
        Window::Closed {
            since_ms: Some(closed_at)
        }
    );
    let err = c.reply("hello").unwrap_err();
    assert_eq!(
        err,
        SendRuleError::Rule(RuleError::WindowClosed {
            closed_at: Some(closed_at)
        })
    );
    assert!(err.to_string().contains(&closed_at.to_string()), "{err}");
    assert_eq!(
        c.send_buttons("pick", &[("a", "A")]),
        Err(SendRuleError::Rule(RuleError::WindowClosed {
            closed_at: Some(closed_at)
        }))
    );
    // Templates are allowed outside the window.
    c.send_template("hello_world", "en_US", vec![]).unwrap();
    // Never opened: closed with no time.
    let mut c = ctx_with(
        message(ChannelKind::Waba, "text", Some("hi"), None),
        ConversationState::default(),
        false,
    );
    assert_eq!(
        c.reply("x"),
        Err(SendRuleError::Rule(RuleError::WindowClosed {
            closed_at: None
        }))
    );

    // Personal: no window, no templates, no interactive messages.
    let mut p = ctx_with(
        message(ChannelKind::Personal, "text", Some("hi"), None),
        ConversationState::default(),
        false,
    );
    assert_eq!(p.window(), Window::NotApplicable);
    p.reply("free-form is always fine").unwrap();
    assert_eq!(
        p.send_template("hello_world", "en_US", vec![]),
        Err(SendRuleError::Rule(RuleError::TemplatesUnsupported {
            kind: ChannelKind::Personal
        }))
    );
    match p.send_buttons("pick", &[("a", "A")]) {
        Err(SendRuleError::Rule(RuleError::UnsupportedOnChannel {
            kind: ChannelKind::Personal,
            what,
        })) => {
            assert!(what.contains("interactive"), "{what}")
        }
        other => panic!("expected UnsupportedOnChannel, got {other:?}"),
    }
    assert_eq!(texts(&p), vec!["free-form is always fine"]);
    // Account-level events have nobody to answer.
    let mut s = ctx(samples()
        .into_iter()
        .find(|(n, _)| *n == "personal session")
        .unwrap()
        .1
        .event);
    assert_eq!(s.reply("x"), Err(SendRuleError::NoConversation));
}

#[test]
fn a_bot_falls_back_to_a_template_when_the_window_is_closed() {
    let bot = Router::builder()
        .on_text(
            Filter::any(),
            handler!(|ctx| async move {
                match ctx.reply("free-form answer") {
                    Ok(()) => {}
                    Err(SendRuleError::Rule(RuleError::WindowClosed { closed_at })) => {
                        ctx.set_state(&closed_at)?;
                        ctx.send_template("follow_up", "en_US", vec![])?;
                    }
                    Err(e) => return Err(e.into()),
                }
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let mut kit = TestKit::new(bot);
    // A message written 25 h ago arrives only now (a delayed webhook): its window is over.
    let mut late = kit.text_event(TestKit::WABA, NUMBER, "hello?");
    late.at = kit.now_ms() - 25 * H;
    kit.feed(late);
    let closed_at = START_MS - 25 * H + SERVICE_WINDOW_MS;
    assert_eq!(
        kit.state::<Option<i64>>(TestKit::WABA, NUMBER),
        Some(Some(closed_at))
    );
    assert_eq!(
        kit.window(TestKit::WABA, NUMBER),
        Window::Closed {
            since_ms: Some(closed_at)
        }
    );
    let replies = kit.replies();
    assert_eq!(replies.len(), 1);
    assert!(
        matches!(&replies[0].reply, Reply::Template { name, .. } if name == "follow_up"),
        "{replies:?}"
    );
    // A fresh message gets the free-form answer.
    kit.user_text(TestKit::WABA, NUMBER, "still there?");
    assert_eq!(kit.reply_texts(), vec!["free-form answer"]);
}

/// A bot that answers every text with `n` numbered texts.
fn chatty(n: usize) -> Router {
    Router::builder()
        .on_text(
            Filter::any(),
            handler!(|ctx| async move {
                for i in 0..n {
                    ctx.reply(format!("part {i}"))?;
                }
                Ok(())
            }),
        )
        .build()
        .unwrap()
}

#[test]
fn paced_replies_wait_in_their_lane_until_the_clock_passes_the_pair_gap() {
    let config = Config::from_toml(DEFAULT_CONFIG, "t.toml", &|_| None).unwrap();
    let gap = config.channel(TestKit::WABA).unwrap().pair_gap_ms as i64;
    assert!(gap > 0, "the default WABA pair gap applies");
    let mut kit = TestKit::with_pacing(config, chatty(12));
    let d = kit.user_text(TestKit::WABA, NUMBER, "hi");
    // Meta's pair rate: a burst of 10 at once, the rest wait in the customer's lane.
    assert_eq!(d.sent, 10);
    assert_eq!(kit.replies().len(), 10);
    let waiting: Vec<Reply> = kit
        .queued(TestKit::WABA, NUMBER)
        .into_iter()
        .map(|m| m.reply)
        .collect();
    assert_eq!(waiting, [Reply::text("part 10"), Reply::text("part 11")]);
    // Another customer is not held up by the first one's gap.
    kit.user_text(TestKit::WABA, "16505550000", "me too");
    assert_eq!(kit.replies().len(), 20);
    assert_eq!(kit.queued(TestKit::WABA, "16505550000").len(), 2);
    // Just before the gap ends nothing moves; at its end the next reply leaves, in order.
    kit.advance(Duration::from_millis(gap as u64 - 1));
    assert_eq!(kit.replies().len(), 20);
    kit.advance(Duration::from_millis(1));
    let texts: Vec<String> = kit
        .replies()
        .iter()
        .filter(|m| m.to == NUMBER)
        .filter_map(|m| match &m.reply {
            Reply::Text { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 11);
    assert_eq!(texts[10], "part 10");
    kit.advance(Duration::from_millis(gap as u64));
    assert!(kit.queued(TestKit::WABA, NUMBER).is_empty());
    assert_eq!(kit.replies().len(), 24);
    assert_eq!(
        kit.replies()
            .iter()
            .rfind(|m| m.to == NUMBER)
            .map(|m| m.reply.clone()),
        Some(Reply::text("part 11"))
    );
}

#[test]
fn a_reply_whose_window_closes_while_it_waits_reaches_on_outbound_failed() {
    let bot = Router::builder()
        .on_outbound_failed(
            Filter::any(),
            handler!(|ctx| async move {
                let failure = ctx.outbound_failure().cloned().expect("the failure");
                assert_eq!(failure.code, "window_closed");
                ctx.set_state(&failure.id)?;
                ctx.send_template("follow_up", "en_US", vec![])?;
                Ok(())
            }),
        )
        .on_text(
            Filter::any(),
            handler!(|ctx| async move {
                for i in 0..11 {
                    ctx.reply(format!("part {i}"))?;
                }
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let config = Config::from_toml(DEFAULT_CONFIG, "t.toml", &|_| None).unwrap();
    let gap = config.channel(TestKit::WABA).unwrap().pair_gap_ms as i64;
    let mut kit = TestKit::with_pacing(config, bot);
    // The customer wrote almost 24 h ago: the window closes before the pair gap ends.
    let mut msg = kit.text_event(TestKit::WABA, NUMBER, "hi");
    msg.at = kit.now_ms() - SERVICE_WINDOW_MS + gap / 2;
    let event_id = msg.id.clone();
    kit.feed(msg);
    assert_eq!(kit.replies().len(), 10);
    assert_eq!(kit.queued(TestKit::WABA, NUMBER).len(), 1);
    let d = kit.advance(Duration::from_millis(gap as u64));
    assert_eq!(d.failed_sends, 1, "the 11th text is refused at send time");
    let replies = kit.replies();
    assert_eq!(replies.len(), 11, "{replies:?}");
    assert!(
        matches!(&replies[10].reply, Reply::Template { name, .. } if name == "follow_up"),
        "the bot's fallback went out instead: {replies:?}"
    );
    assert_eq!(
        kit.state::<String>(TestKit::WABA, NUMBER),
        Some(format!("{event_id}:10"))
    );
    assert!(kit.queued(TestKit::WABA, NUMBER).is_empty());
    assert!(matches!(
        kit.window(TestKit::WABA, NUMBER),
        Window::Closed { .. }
    ));
}

#[test]
fn failing_handlers_are_retried_then_dead_lettered() {
    let bot = Router::builder()
        .on_text(
            Filter::text("flaky"),
            handler!(|_ctx| async move { Err::<(), _>(HandlerError::retry("backend down")) }),
        )
        .on_text(
            Filter::text("broken"),
            handler!(|_ctx| async move { Err::<(), _>(HandlerError::give_up("cannot parse")) }),
        )
        .build()
        .unwrap();
    let mut kit = TestKit::new(bot);
    let d = kit.user_text(TestKit::WABA, NUMBER, "flaky");
    assert_eq!((d.handled, d.dead), (0, 1));
    let d = kit.user_text(TestKit::WABA, NUMBER, "broken");
    assert_eq!((d.handled, d.dead), (0, 1));
    let dead = kit.dead_letters(TestKit::WABA);
    assert_eq!(dead.len(), 2);
    assert!(
        dead[0].error.contains("backend down") && dead[0].error.contains("attempts"),
        "{}",
        dead[0].error
    );
    assert!(dead[1].error.contains("cannot parse"), "{}", dead[1].error);
}

// ---------------------------------------------------------------- the examples through the kit

#[test]
fn echo_bot_answers_a_recorded_webhook() {
    let mut kit = TestKit::new(echo_bot::echo_bot().unwrap());
    let d = kit.feed_fixture("fixtures/meta/text_message.json");
    assert_eq!(d.handled, 1);
    let replies = kit.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].channel, TestKit::WABA);
    assert_eq!(replies[0].to, NUMBER);
    assert_eq!(
        replies[0].reply,
        Reply::text("Does it come in another color?")
    );
    // Recorded timestamps as they are: the window closed long ago, the echo is not allowed.
    let mut kit = TestKit::new(echo_bot::echo_bot().unwrap());
    kit.feed_fixture_as_recorded("fixtures/meta/text_message.json");
    assert!(kit.replies().is_empty());
    assert!(matches!(
        kit.window(TestKit::WABA, NUMBER),
        Window::Closed { since_ms: Some(_) }
    ));
    // A WAHA webhook goes to the Personal channel, which has no window.
    let mut kit = TestKit::new(echo_bot::echo_bot().unwrap());
    kit.feed_fixture_as_recorded("fixtures/personal/waha_message_text.json");
    let replies = kit.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        (replies[0].channel.as_str(), replies[0].to.as_str()),
        (TestKit::PERSONAL, "16505551234@s.whatsapp.net")
    );
}

fn is_menu_buttons(reply: &Reply) -> bool {
    match reply {
        Reply::Interactive { interactive } => {
            let ids: Vec<&str> = interactive["action"]["buttons"]
                .as_array()
                .map(|b| b.iter().filter_map(|b| b["reply"]["id"].as_str()).collect())
                .unwrap_or_default();
            ids == ["menu:order", "menu:hours", "menu:human"]
        }
        _ => false,
    }
}

/// A Story reaches `on_story` (with its author), never `on_message`, and cannot be answered in
/// a conversation; a customer's call reaches `on_call` and opens the window for a follow-up.
#[test]
fn stories_and_calls_have_their_own_handlers() {
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let bot = Router::builder()
        .on_story(
            Filter::any(),
            handler!(|ctx| {
                let seen = s1.clone();
                async move {
                    let author = ctx.event.contact.phone_jid.clone().unwrap_or_default();
                    seen.lock().unwrap().push(format!("story by {author}"));
                    assert_eq!(ctx.reply("nice story"), Err(SendRuleError::NoConversation));
                    Ok(())
                }
            }),
        )
        .on_call(
            Filter::any(),
            handler!(|ctx| {
                let seen = s2.clone();
                async move {
                    let call = ctx.event.call.clone().unwrap();
                    seen.lock().unwrap().push(format!("call {}", call.event));
                    ctx.reply("Sorry we missed your call; how can we help?")?;
                    Ok(())
                }
            }),
        )
        .on_message(
            Filter::any(),
            handler!(|ctx| {
                let seen = s3.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(format!("message {}", ctx.conversation()));
                    Ok(())
                }
            }),
        )
        .build()
        .unwrap();
    let mut kit = TestKit::new(bot);
    kit.feed_fixture_as_recorded(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/personal/waha_story.json"
    ));
    kit.feed_fixture(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/meta/call_connect.json"
    ));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "story by 16505551234@s.whatsapp.net".to_string(),
            "call connect".to_string()
        ]
    );
    // The call opened the WABA window: the free-form follow-up went out.
    assert_eq!(
        new_texts(&mut kit),
        vec!["Sorry we missed your call; how can we help?"]
    );
    assert!(matches!(
        kit.window(TestKit::WABA, "16505551234"),
        Window::Open { .. }
    ));
}

/// A forward answer asking for an absurd handover (10^16 s, found by fuzzing) pauses the bot
/// for good; it must not wrap into a negative or a few-millisecond pause.
#[test]
fn an_absurd_handover_saturates_instead_of_wrapping() {
    for body in [
        &br#"{"handover":{"seconds":10000000000000000}}"#[..],
        br#"{"handover":{"seconds":18446744073709551615}}"#,
    ] {
        let mut c = ctx(message(ChannelKind::Waba, "text", Some("hi"), None));
        let answer = coexist::bot::forward::parse_answer(body).unwrap();
        coexist::bot::forward::apply_answer(&mut c, answer);
        assert!(c.in_handover(), "{}", String::from_utf8_lossy(body));
        let (_, state, _) = c.into_parts();
        assert_eq!(state.handover_until_ms, Some(i64::MAX));
    }
}

/// The texts of the replies sent since the last look.
fn new_texts(kit: &mut TestKit) -> Vec<String> {
    kit.take_replies()
        .into_iter()
        .map(|m| match m.reply {
            Reply::Text { text, .. } => text,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn support_bot_sends_a_product_photo_and_reads_the_customers_photo() {
    use coexist::media::MediaFile;
    use coexist::outbound::MediaSource;
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    for channel in [TestKit::WABA, TestKit::PERSONAL] {
        kit.user_text(channel, NUMBER, "can I see a photo?");
        let sent = kit.take_replies();
        assert_eq!(sent.len(), 1, "{channel}: {sent:?}");
        assert_eq!(
            sent[0].reply,
            Reply::Image {
                media: MediaSource::link(support_bot::PRODUCT_PHOTO_URL),
                caption: Some("Our blue mug, 350 ml".into()),
            },
            "{channel}"
        );

        // A 3000-byte photo with a caption: downloaded through ctx.media(), caption echoed.
        let id = kit.put_media(channel, MediaFile::new(vec![7u8; 3000], "image/jpeg"));
        let photo = kit.image_event(channel, NUMBER, &id, Some("my broken mug"));
        kit.feed(photo);
        assert_eq!(
            new_texts(&mut kit),
            vec!["Got your photo (3 KB), your caption: my broken mug"],
            "{channel}"
        );

        // A photo whose media is gone: the customer is told, nothing is retried or dead-lettered.
        let gone = kit.image_event(channel, NUMBER, "no-such-media", None);
        kit.feed(gone);
        assert_eq!(
            new_texts(&mut kit),
            vec!["That photo has expired before I could open it; please send it again."],
            "{channel}"
        );
        assert!(kit.dead_letters(channel).is_empty(), "{channel}");
    }
}

#[test]
fn a_bot_uploads_a_file_and_sends_it_by_id() {
    use coexist::outbound::MediaSource;
    let bot = Router::builder()
        .on_text(
            Filter::any(),
            handler!(|ctx| async move {
                let id = ctx
                    .upload(b"%PDF-1.7 invoice".to_vec(), "application/pdf")
                    .await?;
                ctx.send(Reply::Document {
                    media: MediaSource::id(id),
                    filename: Some("invoice.pdf".into()),
                    caption: None,
                })?;
                // A GIF is not a WhatsApp type: refused before anything leaves.
                let refused = ctx.upload(b"GIF89a".to_vec(), "image/gif").await;
                assert!(matches!(
                    refused,
                    Err(coexist::media::MediaError::UnsupportedType { .. })
                ));
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let mut kit = TestKit::new(bot);
    for channel in [TestKit::WABA, TestKit::PERSONAL] {
        kit.user_text(channel, NUMBER, "invoice please");
        let sent = kit.take_replies();
        assert_eq!(
            sent.len(),
            1,
            "{channel}: {sent:?} refused {:?}",
            kit.refused()
        );
        let Reply::Document {
            media, filename, ..
        } = &sent[0].reply
        else {
            panic!("{sent:?}");
        };
        assert_eq!(filename.as_deref(), Some("invoice.pdf"));
        let id = media.id.as_deref().unwrap();
        // Personal sends only its own uploads (held by coexist); WABA ids are Meta's kind.
        assert_eq!(
            id.starts_with("cxm_"),
            channel == TestKit::PERSONAL,
            "{channel}: {id}"
        );
        assert!(kit.dead_letters(channel).is_empty());
    }
}

#[test]
fn support_bot_menu_button_and_dialogue() {
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    kit.user_text(TestKit::WABA, NUMBER, "hello");
    let sent = kit.take_replies();
    assert_eq!(sent.len(), 1);
    assert!(is_menu_buttons(&sent[0].reply), "{sent:?}");
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::Menu)
    );

    kit.user_button(TestKit::WABA, NUMBER, "menu:order", "Where is my order?");
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::AwaitingOrder)
    );
    kit.user_text(TestKit::WABA, NUMBER, "#12345");
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::Start)
    );
    let texts: Vec<String> = kit
        .take_replies()
        .into_iter()
        .map(|m| match m.reply {
            Reply::Text { text, .. } => text,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            "Please send your order number (e.g. 12345).",
            "Order #12345 is on its way and should arrive tomorrow."
        ]
    );

    // "Talk to a person": the bot hands over and stays quiet.
    kit.user_text(TestKit::WABA, NUMBER, "menu");
    kit.user_button(TestKit::WABA, NUMBER, "menu:human", "Talk to a person");
    assert!(kit.in_handover(TestKit::WABA, NUMBER));
    kit.take_replies();
    kit.user_text(TestKit::WABA, NUMBER, "hello??");
    assert!(kit.take_replies().is_empty());
    // After the handover the bot answers again.
    kit.advance(support_bot::HANDOVER);
    kit.user_text(TestKit::WABA, NUMBER, "hello again");
    assert_eq!(kit.take_replies().len(), 1);
}

#[test]
fn support_bot_follows_up_before_the_window_closes_then_sends_a_template() {
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    // The customer wrote 23 h 30 min ago (the webhook arrives late): the window closes in 30 min.
    let mut hello = kit.text_event(TestKit::WABA, NUMBER, "hi");
    hello.at = kit.now_ms() - 23 * H - 30 * MIN;
    let end = hello.at + SERVICE_WINDOW_MS;
    kit.feed(hello);
    assert_eq!(
        kit.window(TestKit::WABA, NUMBER),
        Window::Open { until_ms: end }
    );
    assert!(is_menu_buttons(&kit.take_replies()[0].reply));
    // Armed: the 10-minute warning and the close (the 60-minute one was already past).
    assert_eq!(kit.armed_timers(TestKit::WABA), 2);

    kit.advance(Duration::from_secs(15 * 60));
    assert!(kit.take_replies().is_empty(), "nothing due yet");
    kit.advance(Duration::from_secs(5 * 60));
    let follow_up = kit.take_replies();
    assert_eq!(follow_up.len(), 1, "{follow_up:?}");
    assert_eq!(
        follow_up[0].reply,
        Reply::text(
            "Are you still there? This chat closes in 10 minutes; just answer to keep it open."
        )
    );
    assert_eq!(kit.now_ms(), end - 10 * MIN);
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::Reminded)
    );

    kit.advance(Duration::from_secs(3600));
    let after = kit.take_replies();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        matches!(&after[0].reply, Reply::Template { name, .. } if name == COME_BACK_TEMPLATE),
        "{after:?}"
    );
    assert_eq!(
        kit.window(TestKit::WABA, NUMBER),
        Window::Closed {
            since_ms: Some(end)
        }
    );
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::Invited)
    );
    assert_eq!(kit.armed_timers(TestKit::WABA), 0);
    assert!(kit.refused().is_empty(), "{:?}", kit.refused());
}

#[test]
fn support_bot_answering_resets_the_window_timers() {
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    kit.user_text(TestKit::WABA, NUMBER, "hi");
    kit.advance(Duration::from_secs(20 * 3600));
    kit.user_button(TestKit::WABA, NUMBER, "menu:order", "Where is my order?");
    kit.take_replies();
    // The old window's timers are stale now: 4 h later nothing fires; the new window lasts 24 h.
    kit.advance(Duration::from_secs(4 * 3600 + 60));
    assert!(kit.take_replies().is_empty());
    kit.advance(Duration::from_secs(20 * 3600));
    let sent = kit.take_replies();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        matches!(&sent[0].reply, Reply::Text { text, .. } if text.contains("60 minutes")),
        "{sent:?}"
    );
    assert!(matches!(&sent[1].reply, Reply::Template { .. }), "{sent:?}");
}

#[test]
fn support_bot_is_quiet_during_a_handover_from_the_phone() {
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    kit.user_text(TestKit::WABA, NUMBER, "hi");
    assert_eq!(kit.take_replies().len(), 1);
    // A person answers from the WhatsApp Business app: an echo, which pauses the bot.
    kit.phone_echo(TestKit::WABA, NUMBER, "Hi Sheena, I'll help you myself.");
    assert!(kit.in_handover(TestKit::WABA, NUMBER));
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::Start),
        "on_handover ran"
    );
    assert!(kit.take_replies().is_empty(), "on_handover says nothing");
    kit.user_text(TestKit::WABA, NUMBER, "thanks!");
    kit.user_button(TestKit::WABA, NUMBER, "menu:hours", "Opening hours");
    assert!(
        kit.take_replies().is_empty(),
        "messages during the handover do not reach the bot"
    );
    // The same echo recorded from Meta: it pauses too.
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    kit.feed_fixture("fixtures/meta/smb_message_echoes.json");
    assert!(kit.in_handover(TestKit::WABA, NUMBER));
    kit.user_text(TestKit::WABA, NUMBER, "hello");
    assert!(kit.replies().is_empty());
}

#[test]
fn support_bot_on_personal_uses_a_numbered_menu_and_no_timers() {
    let mut kit = TestKit::new(support_bot::support_bot().unwrap());
    kit.user_text(TestKit::WABA, NUMBER, "hi");
    kit.user_text(TestKit::PERSONAL, NUMBER, "hi");
    let sent = kit.take_replies();
    assert_eq!(sent.len(), 2);
    assert!(is_menu_buttons(&sent[0].reply));
    assert_eq!(sent[1].channel, TestKit::PERSONAL);
    assert_eq!(sent[1].to, "16505551234@s.whatsapp.net");
    match &sent[1].reply {
        Reply::Text { text, .. } => {
            assert!(
                text.contains("1. Where is my order?") && text.contains("3. Talk to a person"),
                "{text}"
            )
        }
        other => panic!("expected a numbered text menu, got {other:?}"),
    }
    assert_eq!(kit.window(TestKit::PERSONAL, NUMBER), Window::NotApplicable);
    assert_eq!(kit.armed_timers(TestKit::PERSONAL), 0);
    assert_eq!(kit.armed_timers(TestKit::WABA), 3);

    kit.user_text(TestKit::PERSONAL, NUMBER, "1");
    assert_eq!(
        kit.state::<Dialogue>(TestKit::PERSONAL, NUMBER),
        Some(Dialogue::AwaitingOrder)
    );
    assert_eq!(
        kit.take_replies()[0].reply,
        Reply::text("Please send your order number (e.g. 12345).")
    );
    // Two conversations: the WABA one did not move.
    assert_eq!(
        kit.state::<Dialogue>(TestKit::WABA, NUMBER),
        Some(Dialogue::Menu)
    );
    // A day later: WABA gets its follow-up and template, Personal nothing.
    kit.advance(Duration::from_secs(25 * 3600));
    let later = kit.take_replies();
    assert!(
        later.iter().all(|m| m.channel == TestKit::WABA),
        "{later:?}"
    );
    assert_eq!(later.len(), 2, "{later:?}");
    assert!(
        matches!(&later[0].reply, Reply::Text { text, .. } if text.contains("60 minutes")),
        "{later:?}"
    );
    assert!(
        matches!(&later[1].reply, Reply::Template { .. }),
        "{later:?}"
    );
}
