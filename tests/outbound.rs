//! Outbound end to end: rules, outbox idempotency, rate limits and both senders, against a
//! real redis-server and the fake Graph / WAHA servers in `tests/fakes`. Messages go out the
//! way the lane sender sends them: [`Outbound::attempt`] until sent or failed (`send_now`).

mod fakes;
mod support;

use coexist::backend::Backend;
use coexist::channel::ChannelKind;
use coexist::config::Config;
use coexist::conversation::window::Window;
use coexist::keys::Keys;
use coexist::metrics::Metric;
use coexist::metrics::Metrics;
use coexist::outbound::attempt::{failure_code, outcome_label};
use coexist::outbound::now_ms;
use coexist::outbound::outbox::{Outbox, OutboxBackend};
use coexist::outbound::{
    Attempt, Backoff, Bucket, LaneSettings, Limits, Outbound, OutboundOptions, OutboxOptions,
    OutboxState, OutgoingMessage, QueuedMessage, RateBackend, RateLimiter, Reply, RuleError,
    SendError, Sent, SentRef, Take, WaitReason,
};
use coexist::queue::{Queue, RedisQueue};
use fakes::{Answer, FakeServer};
use serde_json::json;
use std::time::{Duration, Instant};

const WABA: &str = "shop-waba";
const PERSONAL: &str = "shop-personal";
const PNID: &str = "106540352242922";
const TOKEN: &str = "waba-token-secret";
const WAHA_KEY: &str = "waha-api-key-secret";
const OPEN: Window = Window::Open { until_ms: i64::MAX };

/// Channel settings of one test.
struct Setup<'a> {
    graph_url: &'a str,
    waha_url: Option<&'a str>,
    token: bool,
    waba_extra: &'a str,
    personal_extra: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            graph_url: "http://127.0.0.1:9/v23.0",
            waha_url: None,
            token: true,
            // No pacing unless a test asks for it.
            waba_extra: "pair_gap_ms = 0\nsend_rate_per_second = 1000",
            personal_extra:
                "pair_gap_ms = 0\njitter_ms = 0\nmax_per_minute = 0\nsend_rate_per_second = 1000",
        }
    }
}

fn config(prefix: &str, s: &Setup) -> Config {
    let token = if s.token {
        "access_token = \"${WABA_TOKEN}\""
    } else {
        ""
    };
    let api_url = s
        .waha_url
        .map(|u| format!("api_url = \"{u}\""))
        .unwrap_or_default();
    let text = format!(
        r#"
[redis]
url = "{redis}"
prefix = "{prefix}"

[meta]
app_secrets = ["${{META_APP_SECRET}}"]
graph_api_url = "{graph}"

[[channels]]
id = "{WABA}"
kind = "waba"
phone_number_id = "{PNID}"
{token}
{waba_extra}

[[channels]]
id = "{PERSONAL}"
kind = "personal"
session = "default"
webhook_secrets = ["${{WAHA_HMAC_KEY}}"]
api_key = "${{WAHA_API_KEY}}"
{api_url}
{personal_extra}
"#,
        redis = support::shared_url(),
        graph = s.graph_url,
        waba_extra = s.waba_extra,
        personal_extra = s.personal_extra,
    );
    Config::from_toml(&text, "test.toml", &|name| match name {
        "META_APP_SECRET" => Some("app-secret".into()),
        "WABA_TOKEN" => Some(TOKEN.into()),
        "WAHA_HMAC_KEY" => Some("hmac".into()),
        "WAHA_API_KEY" => Some(WAHA_KEY.into()),
        _ => None,
    })
    .unwrap()
}

fn fast_options() -> OutboundOptions {
    OutboundOptions {
        max_attempts: 4,
        backoff: Backoff {
            base: Duration::from_millis(10),
            pair_base: Duration::from_millis(25),
            max: Duration::from_millis(200),
        },
        inflight_wait: Duration::from_millis(600),
        http_timeout: Duration::from_millis(700),
        outbox: OutboxOptions::default(),
    }
}

async fn connection() -> coexist::redis_conn::RedisConn {
    redis::Client::open(support::shared_url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
        .into()
}

/// A Redis backend on its own connection, keys under `prefix` (the config's `[redis] prefix`).
async fn backend(prefix: &str) -> Backend {
    let keys = Keys::new(prefix);
    let queue = RedisQueue::connect(&support::shared_url(), keys, 3600, 0)
        .await
        .unwrap();
    Backend::new(Queue::Redis(queue))
}

/// An `Outbound` on its own Redis connection.
async fn outbound(prefix: &str, setup: &Setup<'_>, metrics: Metrics) -> Outbound {
    Outbound::with_options(
        &config(prefix, setup),
        &backend(prefix).await,
        metrics,
        fast_options(),
    )
    .unwrap()
}

fn waba_msg(to: &str, reply: Reply, key: &str) -> OutgoingMessage {
    OutgoingMessage::new(WABA, to, reply, key)
}

fn personal_msg(to: &str, reply: Reply, key: &str) -> OutgoingMessage {
    OutgoingMessage::new(PERSONAL, to, reply, key)
}

/// The longest one [`send_now`] may take, all of its waits included.
const SEND_DEADLINE: Duration = Duration::from_secs(20);

/// Sends `msg` the way the lane sender works a lane's head: [`Outbound::attempt`] (a slot up to
/// the lane's inline wait away is waited for inside it), and on [`Attempt::Later`] the lane is
/// set aside until `until_ms` (the attempt counted when `bump`) and tried again.
async fn send_now(
    out: &Outbound,
    msg: &OutgoingMessage,
    kind: ChannelKind,
    window: Window,
) -> Result<Sent, SendError> {
    send_traced(out, msg, kind, window).await.0
}

/// [`send_now`], with every `Later` on the way: its reason and whether it counted an attempt.
async fn send_traced(
    out: &Outbound,
    msg: &OutgoingMessage,
    kind: ChannelKind,
    window: Window,
) -> (Result<Sent, SendError>, Vec<(WaitReason, bool)>) {
    let inline = LaneSettings::default().max_inline_wait;
    let mut head = QueuedMessage::new(msg.clone(), now_ms());
    let mut waits = Vec::new();
    let deadline = Instant::now() + SEND_DEADLINE;
    let result = loop {
        match out.attempt(&head, kind, window, now_ms(), inline).await {
            Attempt::Sent(sent) => break Ok(sent),
            Attempt::Failed(e) => break Err(e),
            Attempt::Later {
                until_ms,
                reason,
                bump,
            } => {
                waits.push((reason, bump));
                if bump {
                    head.attempts += 1;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: still not sent after {SEND_DEADLINE:?}: {waits:?}",
                    msg.outbox_key
                );
                let wait = (until_ms - now_ms()).max(1) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    };
    settle(out, msg, result.as_ref()).await;
    (result, waits)
}

/// What the lane sender does with how a message left its lane: the outbox's part of
/// `OutQueue::settle` (the calls its memory twin makes: the sent marker, message-id index and
/// audit entry; an audit entry for a failure) and the `coexist_messages_sent_total` count.
async fn settle(out: &Outbound, msg: &OutgoingMessage, result: Result<&Sent, &SendError>) {
    let now = now_ms();
    match result {
        Ok(sent) if !sent.duplicate => out.outbox().mark_sent(msg, sent, now).await.unwrap(),
        Ok(_) => {}
        Err(e) => out
            .outbox()
            .log_outcome(msg, failure_code(e), &e.to_string(), now)
            .await
            .unwrap(),
    }
    out.metrics().inc(
        Metric::MessagesSent,
        &[
            ("channel", &msg.channel),
            ("outcome", outcome_label(result)),
        ],
    );
}

async fn get(key: &str) -> Option<String> {
    let mut con = support::connection(&support::shared_url()).await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap()
}

// ---------------------------------------------------------------- Graph sender

#[tokio::test]
async fn waba_text_carries_auth_context_and_callback_data() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let metrics = Metrics::new();
    let out = outbound(
        &prefix,
        &Setup {
            graph_url: graph.url(),
            ..Setup::default()
        },
        metrics.clone(),
    )
    .await;
    let mut msg = waba_msg("16505551234", Reply::text("Hello"), "evt.1:0");
    msg.reply_to = Some("wamid.IN".into());
    let sent = send_now(&out, &msg, ChannelKind::Waba, OPEN).await.unwrap();
    assert_eq!(sent.message_id, "wamid.fake1");
    assert!(!sent.duplicate);

    let reqs = graph.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/v23.0/{PNID}/messages"));
    assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
    assert_eq!(
        r.body,
        json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"+16505551234",
               "type":"text","text":{"body":"Hello"},"context":{"message_id":"wamid.IN"},
               "biz_opaque_callback_data":"evt.1:0"})
    );

    let keys = Keys::new(&prefix);
    assert_eq!(
        get(&keys.sent(WABA, "evt.1:0")).await.as_deref(),
        Some("sent:wamid.fake1")
    );
    assert_eq!(
        out.lookup_message(WABA, "wamid.fake1").await.unwrap(),
        Some(SentRef {
            outbox_key: "evt.1:0".into(),
            conversation: "16505551234".into()
        })
    );
    let log = support::xrange(&support::shared_url(), &keys.outbox(WABA)).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].field("outcome"), "sent");
    assert_eq!(log[0].field("message_id"), "wamid.fake1");
    assert_eq!(log[0].field("key"), "evt.1:0");
    assert_eq!(
        metrics.counter(
            Metric::MessagesSent,
            &[("channel", WABA), ("outcome", "sent")]
        ),
        1
    );
    // The token never shows in Debug output.
    assert!(!format!("{out:?}").contains(TOKEN));
}

#[tokio::test]
async fn business_scoped_ids_use_recipient_and_every_body_shape() {
    let graph = FakeServer::graph();
    let out = outbound(
        &support::prefix(),
        &Setup {
            graph_url: graph.url(),
            ..Setup::default()
        },
        Metrics::new(),
    )
    .await;
    let replies = [
        Reply::text("x"),
        Reply::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            components: vec![json!({"type":"body","parameters":[{"type":"text","text":"#1"}]})],
        },
        Reply::Interactive {
            interactive: json!({"type":"button","body":{"text":"?"},"action":{"buttons":[]}}),
        },
        Reply::Reaction {
            message_id: "wamid.IN".into(),
            emoji: "👍".into(),
        },
        Reply::MarkRead {
            message_id: "wamid.IN".into(),
            typing: true,
        },
    ];
    for (i, reply) in replies.iter().enumerate() {
        let msg = waba_msg("US.13491208655302741918", reply.clone(), &format!("e:{i}"));
        let sent = send_now(&out, &msg, ChannelKind::Waba, OPEN).await.unwrap();
        if matches!(reply, Reply::MarkRead { .. }) {
            assert_eq!(sent.message_id, "wamid.IN");
        }
    }
    let bodies: Vec<_> = graph.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 5);
    for b in &bodies[..4] {
        assert_eq!(b["recipient"], "US.13491208655302741918", "{b}");
        assert!(b.get("to").is_none(), "{b}");
        assert!(b["biz_opaque_callback_data"]
            .as_str()
            .unwrap()
            .starts_with("e:"));
    }
    assert_eq!(bodies[1]["template"]["language"], json!({"code":"en_US"}));
    assert_eq!(bodies[2]["interactive"]["type"], "button");
    assert_eq!(
        bodies[3]["reaction"],
        json!({"message_id":"wamid.IN","emoji":"👍"})
    );
    assert_eq!(
        bodies[4],
        json!({"messaging_product":"whatsapp","status":"read","message_id":"wamid.IN",
               "typing_indicator":{"type":"text"}})
    );
}

#[tokio::test]
async fn same_outbox_key_twice_sends_once() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let metrics = Metrics::new();
    let setup = Setup {
        graph_url: graph.url(),
        ..Setup::default()
    };
    let a = outbound(&prefix, &setup, metrics.clone()).await;
    let b = outbound(&prefix, &setup, metrics.clone()).await;
    let msg = waba_msg("1555", Reply::text("once"), "evt:0");
    let first = send_now(&a, &msg, ChannelKind::Waba, OPEN).await.unwrap();
    let again = send_now(&a, &msg, ChannelKind::Waba, OPEN).await.unwrap();
    let other_process = send_now(&b, &msg, ChannelKind::Waba, OPEN).await.unwrap();
    assert_eq!(graph.count(), 1);
    assert_eq!(again.message_id, first.message_id);
    assert!(again.duplicate && other_process.duplicate);
    assert_eq!(
        metrics.counter(
            Metric::MessagesSent,
            &[("channel", WABA), ("outcome", "duplicate")]
        ),
        2
    );

    // Concurrently from two processes while the first request is still in flight: the second
    // waits for the first one's result instead of sending again.
    graph.push(Answer::slow(300));
    let msg = waba_msg("1555", Reply::text("race"), "evt:1");
    let (ra, (rb, waits)) = tokio::join!(send_now(&a, &msg, ChannelKind::Waba, OPEN), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send_traced(&b, &msg, ChannelKind::Waba, OPEN).await
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(waits, [(WaitReason::InFlight, false)]);
    assert_eq!(graph.count(), 2);
    assert_eq!(ra.message_id, rb.message_id);
    assert!(!ra.duplicate && rb.duplicate);
}

#[tokio::test]
async fn in_flight_send_after_a_crash_waits_for_a_status_then_resends() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let out = outbound(
        &prefix,
        &Setup {
            graph_url: graph.url(),
            ..Setup::default()
        },
        Metrics::new(),
    )
    .await;
    let outbox = Outbox::redis(
        connection().await,
        Keys::new(&prefix),
        OutboxOptions::default(),
    );

    // A sender claimed the key and crashed; its status arrives while the lane waits. The lane
    // looks again every second, so the in-flight wait here is longer than that: the status, not
    // the end of the wait, settles it.
    let inflight_wait = Duration::from_millis(3_000);
    let patient = Outbound::with_options(
        &config(
            &prefix,
            &Setup {
                graph_url: graph.url(),
                ..Setup::default()
            },
        ),
        &backend(&prefix).await,
        Metrics::new(),
        OutboundOptions {
            inflight_wait,
            ..fast_options()
        },
    )
    .unwrap();
    let msg = waba_msg("1555", Reply::text("x"), "crash:0");
    let now = now_ms();
    assert!(matches!(
        outbox.record(&msg, now).await.unwrap(),
        OutboxState::Claimed { .. }
    ));
    let started = Instant::now();
    let ((sent, waits), _) = tokio::join!(
        send_traced(&patient, &msg, ChannelKind::Waba, OPEN),
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            out.mark_status_seen(WABA, "crash:0", "wamid.BEFORE")
                .await
                .unwrap()
        }
    );
    let sent = sent.unwrap();
    assert_eq!(sent.message_id, "wamid.BEFORE");
    assert!(sent.duplicate);
    assert_eq!(graph.count(), 0, "the status proved it was sent");
    assert_eq!(waits, [(WaitReason::InFlight, false)]);
    assert!(started.elapsed() < inflight_wait, "{:?}", started.elapsed());

    // No status ever comes: after the bounded wait the claim is taken over and sent again.
    let msg = waba_msg("1555", Reply::text("y"), "crash:1");
    outbox.record(&msg, now_ms()).await.unwrap();
    let started = Instant::now();
    let (sent, waits) = send_traced(&out, &msg, ChannelKind::Waba, OPEN).await;
    assert!(!sent.unwrap().duplicate);
    assert!(!waits.is_empty());
    assert!(
        waits.iter().all(|w| *w == (WaitReason::InFlight, false)),
        "{waits:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(graph.count(), 1);
    assert_eq!(
        graph.requests()[0].body["biz_opaque_callback_data"],
        "crash:1"
    );
}

#[tokio::test]
async fn rules_refuse_before_any_request() {
    let graph = FakeServer::graph();
    let waha = FakeServer::waha();
    let prefix = support::prefix();
    let out = outbound(
        &prefix,
        &Setup {
            graph_url: graph.url(),
            waha_url: Some(waha.url()),
            ..Setup::default()
        },
        Metrics::new(),
    )
    .await;
    let closed = Window::Closed { since_ms: Some(42) };
    let e = send_now(
        &out,
        &waba_msg("1", Reply::text("late"), "r:0"),
        ChannelKind::Waba,
        closed,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        SendError::Rule(RuleError::WindowClosed {
            closed_at: Some(42)
        })
    );
    assert!(e.closes_window() && !e.is_retryable());
    // Templates and read receipts still go out when the window is closed.
    let template = Reply::Template {
        name: "hello".into(),
        language: "en_US".into(),
        components: vec![],
    };
    send_now(
        &out,
        &waba_msg("1", template.clone(), "r:1"),
        ChannelKind::Waba,
        closed,
    )
    .await
    .unwrap();
    let read = Reply::MarkRead {
        message_id: "wamid.X".into(),
        typing: false,
    };
    send_now(&out, &waba_msg("1", read, "r:2"), ChannelKind::Waba, closed)
        .await
        .unwrap();
    assert_eq!(graph.count(), 2);

    let e = send_now(
        &out,
        &personal_msg("1@c.us", template, "p:0"),
        ChannelKind::Personal,
        Window::NotApplicable,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        SendError::Rule(RuleError::TemplatesUnsupported {
            kind: ChannelKind::Personal
        })
    );
    let e = send_now(
        &out,
        &personal_msg(
            "1@c.us",
            Reply::Interactive {
                interactive: json!({}),
            },
            "p:1",
        ),
        ChannelKind::Personal,
        Window::NotApplicable,
    )
    .await
    .unwrap_err();
    assert!(matches!(
        e,
        SendError::Rule(RuleError::UnsupportedOnChannel { .. })
    ));
    assert_eq!(waha.count(), 0);
    // A refused reply claims nothing.
    assert_eq!(get(&Keys::new(&prefix).sent(WABA, "r:0")).await, None);
}

#[tokio::test]
async fn graph_error_paths() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let metrics = Metrics::new();
    let out = outbound(
        &prefix,
        &Setup {
            graph_url: graph.url(),
            ..Setup::default()
        },
        metrics.clone(),
    )
    .await;
    let keys = Keys::new(&prefix);
    let send = |key: &str| {
        let msg = waba_msg("1555", Reply::text("x"), key);
        let out = out.clone();
        async move { send_traced(&out, &msg, ChannelKind::Waba, OPEN).await }
    };
    let retried = |n: usize| vec![(WaitReason::Backoff, true); n];

    // 131047: window closed, no retry; the key is given up (no sender tries it again).
    graph.push(Answer::window_closed());
    let (e, waits) = send("k:131047").await;
    let e = e.unwrap_err();
    assert_eq!(waits, []);
    assert!(
        matches!(e, SendError::WindowClosed { code: 131047, .. }),
        "{e:?}"
    );
    assert!(e.closes_window());
    assert_eq!(graph.count(), 1);
    assert_eq!(
        get(&keys.sent(WABA, "k:131047")).await.as_deref(),
        Some("failed:window_closed")
    );

    // 131026: undeliverable, no retry.
    graph.push(Answer::undeliverable());
    let (e, waits) = send("k:131026").await;
    let e = e.unwrap_err();
    assert!(matches!(e, SendError::Undeliverable { .. }), "{e:?}");
    assert_eq!(waits, []);
    assert_eq!(graph.count(), 2);

    // 130429 then OK: retried (the lane backs off, counting the attempt).
    graph.push(Answer::rate_limited());
    let (sent, waits) = send("k:130429").await;
    sent.unwrap();
    assert_eq!(waits, retried(1));
    assert_eq!(graph.count(), 4);

    // 131056 twice then OK: retried after 1x and 4x the pair base (25 ms, 100 ms).
    graph.push(Answer::pair_rate_limited());
    graph.push(Answer::pair_rate_limited());
    let (sent, waits) = send("k:131056").await;
    sent.unwrap();
    assert_eq!(waits, retried(2));
    let reqs = graph.requests();
    assert_eq!(reqs.len(), 7);
    let gap1 = reqs[5].at - reqs[4].at;
    let gap2 = reqs[6].at - reqs[5].at;
    assert!(gap1 >= Duration::from_millis(25), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(100), "{gap2:?}");

    // 500 then OK: retried; 500 every time: Transient after max_attempts (4 requests, 3
    // backoffs), and the key is given up: trying it again sends nothing and reports the code.
    graph.push(Answer::server_error());
    let (sent, waits) = send("k:500").await;
    sent.unwrap();
    assert_eq!(waits, retried(1));
    assert_eq!(graph.count(), 9);
    for _ in 0..4 {
        graph.push(Answer::server_error());
    }
    let (e, waits) = send("k:500x4").await;
    let e = e.unwrap_err();
    assert!(
        matches!(e, SendError::Transient { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert_eq!(waits, retried(3));
    assert_eq!(graph.count(), 13);
    assert_eq!(
        get(&keys.sent(WABA, "k:500x4")).await.as_deref(),
        Some("failed:transient")
    );
    let (e, waits) = send("k:500x4").await;
    assert_eq!(e.unwrap_err(), SendError::GivenUp { code: "transient" });
    assert_eq!(waits, []);
    assert_eq!(graph.count(), 13);

    // 131000 (something went wrong) is transient too.
    graph.push(Answer::graph_error(500, 131000, "Something went wrong"));
    let (sent, waits) = send("k:131000").await;
    sent.unwrap();
    assert_eq!(waits, retried(1));
    assert_eq!(graph.count(), 15);

    // A slow answer beyond the HTTP timeout: retried.
    graph.push(Answer::slow(2_000));
    let (sent, waits) = send("k:slow").await;
    sent.unwrap();
    assert_eq!(waits, retried(1));
    assert_eq!(graph.count(), 17);

    // Other 4xx: rejected, no retry; the code may arrive as a string.
    graph.push(Answer::GraphError {
        status: 400,
        code: json!("100"),
        message: "(#100) Invalid parameter".into(),
    });
    let (e, waits) = send("k:100").await;
    let e = e.unwrap_err();
    assert!(matches!(e, SendError::Rejected { code: 100, .. }), "{e:?}");
    assert_eq!(waits, []);
    assert_eq!(graph.count(), 18);
    let by = |outcome| {
        metrics.counter(
            Metric::MessagesSent,
            &[("channel", WABA), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (
            by("window_closed"),
            by("undeliverable"),
            by("transient"),
            by("rejected"),
            by("sent")
        ),
        // "transient" twice: the given-up key's second try reports its code again.
        (1, 1, 2, 1, 5)
    );
    let log = support::xrange(&support::shared_url(), &keys.outbox(WABA)).await;
    assert!(log.iter().any(|e| e.field("outcome") == "window_closed"
        && e.field("key") == "k:131047"
        && e.field("error").contains("131047")));
}

#[tokio::test]
async fn token_refused_marks_the_channel_unhealthy() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let metrics = Metrics::new();
    let setup = Setup {
        graph_url: graph.url(),
        ..Setup::default()
    };
    let out = outbound(&prefix, &setup, metrics.clone()).await;
    let gauge = |m: &Metrics| {
        m.render()
            .lines()
            .find(|l| l.starts_with(&format!("coexist_channel_unhealthy{{channel=\"{WABA}\"}}")))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(gauge(&metrics).as_deref(), Some("0"));
    assert_eq!(out.outbox().health(WABA, now_ms()).await.unwrap(), None);

    graph.push(Answer::unauthorized());
    let e = send_now(
        &out,
        &waba_msg("1", Reply::text("x"), "u:0"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, SendError::Unauthorized { .. }) && !e.is_retryable(),
        "{e:?}"
    );
    assert_eq!(graph.count(), 1, "no retry");
    assert_eq!(gauge(&metrics).as_deref(), Some("1"));
    // The flag is in Redis: another process (an operator command) sees it.
    let other = outbound(&prefix, &setup, Metrics::new()).await;
    let health = other
        .outbox()
        .health(WABA, now_ms())
        .await
        .unwrap()
        .unwrap();
    assert!(health.starts_with("unhealthy since"), "{health}");
    assert!(!health.contains(TOKEN));

    // Plain HTTP 401 without a Graph body counts too.
    graph.push(Answer::Status(401));
    let e = send_now(
        &out,
        &waba_msg("1", Reply::text("x"), "u:1"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SendError::Unauthorized { .. }), "{e:?}");

    // A later success (token fixed) clears it.
    send_now(
        &out,
        &waba_msg("1", Reply::text("x"), "u:2"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap();
    assert_eq!(gauge(&metrics).as_deref(), Some("0"));
    assert_eq!(out.outbox().health(WABA, now_ms()).await.unwrap(), None);
}

#[tokio::test]
async fn dry_run_without_credentials() {
    let graph = FakeServer::graph();
    let metrics = Metrics::new();
    let out = outbound(
        &support::prefix(),
        &Setup {
            graph_url: graph.url(),
            token: false,
            waha_url: None,
            ..Setup::default()
        },
        metrics.clone(),
    )
    .await;
    let sent = send_now(
        &out,
        &waba_msg("1", Reply::text("x"), "d:0"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap();
    assert_eq!(sent.message_id, "dry-run:d:0");
    let sent = send_now(
        &out,
        &personal_msg("1@s.whatsapp.net", Reply::text("x"), "d:1"),
        ChannelKind::Personal,
        Window::NotApplicable,
    )
    .await
    .unwrap();
    assert_eq!(sent.message_id, "dry-run:d:1");
    assert_eq!(graph.count(), 0);
    assert_eq!(
        metrics.counter(
            Metric::MessagesSent,
            &[("channel", WABA), ("outcome", "dry_run")]
        ),
        1
    );
    // Still once per key.
    let again = send_now(
        &out,
        &waba_msg("1", Reply::text("x"), "d:0"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap();
    assert!(again.duplicate);
}

#[tokio::test]
async fn unknown_channel_and_memory_mode() {
    let graph = FakeServer::graph();
    let mut cfg = config(
        &support::prefix(),
        &Setup {
            graph_url: graph.url(),
            ..Setup::default()
        },
    );
    cfg.redis = None;
    let out =
        Outbound::with_options(&cfg, &Backend::memory(), Metrics::new(), fast_options()).unwrap();
    let e = send_now(
        &out,
        &OutgoingMessage::new("nope", "1", Reply::text("x"), "n:0"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap_err();
    assert_eq!(e, SendError::UnknownChannel("nope".into()));
    let msg = waba_msg("1", Reply::text("x"), "m:0");
    send_now(&out, &msg, ChannelKind::Waba, OPEN).await.unwrap();
    assert!(
        send_now(&out, &msg, ChannelKind::Waba, OPEN)
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(graph.count(), 1);
    assert_eq!(out.outbox().memory_log(WABA).len(), 1);
}

/// A channel slot further away than the lane's inline wait: the attempt claims nothing and
/// sends nothing, and sets the lane aside (`Rate`, not counted as an attempt) until the slot;
/// tried then, it is sent.
#[tokio::test]
async fn rate_slot_too_far_sets_the_lane_aside_until_it() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let out = outbound(
        &prefix,
        &Setup {
            graph_url: graph.url(),
            waba_extra: "pair_gap_ms = 0\nsend_rate_per_second = 1",
            ..Setup::default()
        },
        Metrics::new(),
    )
    .await;
    send_now(
        &out,
        &waba_msg("1", Reply::text("a"), "rl:0"),
        ChannelKind::Waba,
        OPEN,
    )
    .await
    .unwrap();
    let head = QueuedMessage::new(waba_msg("2", Reply::text("b"), "rl:1"), now_ms());
    let now = now_ms();
    let inline = Duration::from_millis(100);
    let until_ms = match out
        .attempt(&head, ChannelKind::Waba, OPEN, now, inline)
        .await
    {
        Attempt::Later {
            until_ms,
            reason: WaitReason::Rate,
            bump: false,
        } => until_ms,
        other => panic!("{other:?}"),
    };
    assert!(until_ms - now > 500, "{}", until_ms - now);
    assert_eq!(graph.count(), 1);
    // Nothing was claimed: tried again at the slot, it is sent.
    assert_eq!(get(&Keys::new(&prefix).sent(WABA, "rl:1")).await, None);
    tokio::time::sleep(Duration::from_millis((until_ms - now_ms()).max(0) as u64)).await;
    assert!(matches!(
        out.attempt(&head, ChannelKind::Waba, OPEN, now_ms(), inline)
            .await,
        Attempt::Sent(Sent {
            duplicate: false,
            ..
        })
    ));
    assert_eq!(graph.count(), 2);
}

// ---------------------------------------------------------------- token bucket across processes

/// Largest number of arrivals within any window of `width` starting at an arrival.
fn max_in_window(arrivals: &[Instant], width: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t - sorted[i] < width)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn token_bucket_holds_across_two_processes() {
    let graph = FakeServer::graph();
    let prefix = support::prefix();
    let setup = Setup {
        graph_url: graph.url(),
        waba_extra: "pair_gap_ms = 0\nsend_rate_per_second = 5",
        ..Setup::default()
    };
    // Two independent instances with separate Redis connections, as two worker processes.
    let a = outbound(&prefix, &setup, Metrics::new()).await;
    let b = outbound(&prefix, &setup, Metrics::new()).await;
    let started = Instant::now();
    let task = |out: Outbound, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..12 {
                let msg = waba_msg(
                    &format!("1555{i}"),
                    Reply::text("x"),
                    &format!("{name}:{i}"),
                );
                send_now(&out, &msg, ChannelKind::Waba, OPEN).await.unwrap();
            }
        })
    };
    let (ra, rb) = tokio::join!(task(a, "a"), task(b, "b"));
    ra.unwrap();
    rb.unwrap();
    let arrivals: Vec<Instant> = graph.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 24);
    let peak = max_in_window(&arrivals, Duration::from_secs(1));
    // rate 5/s + burst 5.
    assert!(peak <= 10, "{peak} requests within one second");
    // 24 sends at 5/s after a burst of 5 take at least (24 - 5) / 5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(3_600),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- WAHA sender and pacing

#[tokio::test]
async fn waha_send_text_seen_typing_reaction() {
    let waha = FakeServer::waha();
    let out = outbound(
        &support::prefix(),
        &Setup {
            waha_url: Some(waha.url()),
            ..Setup::default()
        },
        Metrics::new(),
    )
    .await;
    let na = Window::NotApplicable;
    let mut msg = personal_msg(
        "491711234567@s.whatsapp.net",
        Reply::text("Hi there!"),
        "w:0",
    );
    msg.reply_to = Some("false_491711234567@c.us_AAA".into());
    let sent = send_now(&out, &msg, ChannelKind::Personal, na)
        .await
        .unwrap();
    assert_eq!(sent.message_id, "true_491711234567@c.us_FAKE1");
    let r = &waha.requests_to("/api/sendText")[0];
    assert_eq!(r.header("x-api-key"), Some(WAHA_KEY));
    assert_eq!(
        r.body,
        json!({"session":"default","chatId":"491711234567@c.us","text":"Hi there!",
               "reply_to":"false_491711234567@c.us_AAA"})
    );

    let read = personal_msg(
        "123456789@lid",
        Reply::MarkRead {
            message_id: "false_123456789@lid_BBB".into(),
            typing: true,
        },
        "w:1",
    );
    send_now(&out, &read, ChannelKind::Personal, na)
        .await
        .unwrap();
    let seen = waha.requests_to("/api/sendSeen");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body,
        json!({"session":"default","chatId":"123456789@lid"})
    );
    assert_eq!(waha.requests_to("/api/startTyping").len(), 1);

    let react = personal_msg(
        "1203630@g.us",
        Reply::Reaction {
            message_id: "false_1203630@g.us_CCC".into(),
            emoji: "👍".into(),
        },
        "w:2",
    );
    send_now(&out, &react, ChannelKind::Personal, na)
        .await
        .unwrap();
    let r = &waha.requests_to("/api/reaction")[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(
        r.body,
        json!({"session":"default","messageId":"false_1203630@g.us_CCC","reaction":"👍"})
    );
}

#[tokio::test]
async fn waha_error_paths() {
    let waha = FakeServer::waha();
    let prefix = support::prefix();
    let out = outbound(
        &prefix,
        &Setup {
            waha_url: Some(waha.url()),
            ..Setup::default()
        },
        Metrics::new(),
    )
    .await;
    let send = |key: &str| {
        let msg = personal_msg("1@c.us", Reply::text("x"), key);
        let out = out.clone();
        async move { send_now(&out, &msg, ChannelKind::Personal, Window::NotApplicable).await }
    };
    waha.push(Answer::Status(401));
    let e = send("we:401").await.unwrap_err();
    assert!(matches!(e, SendError::Unauthorized { .. }), "{e:?}");
    assert!(out
        .outbox()
        .health(PERSONAL, now_ms())
        .await
        .unwrap()
        .is_some());
    waha.push(Answer::Status(500));
    send("we:500").await.unwrap();
    waha.push(Answer::Status(422));
    let e = send("we:422").await.unwrap_err();
    assert!(matches!(e, SendError::Rejected { code: 422, .. }), "{e:?}");
    waha.push(Answer::slow(2_000));
    send("we:slow").await.unwrap();
    assert_eq!(waha.requests_to("/api/sendText").len(), 6);
}

/// Sends reserved `slot` apart, the first no earlier than `started`: an arrival at the fake can
/// come late (scheduling noise on a loaded 2-core run delayed one by 28 ms, so the next gap looked
/// short), but never before its slot. Unpaced sends arrive ~1 ms apart, so each gap must still be
/// a good part of a slot.
fn assert_paced(started: Instant, sends: &[Instant], slot: Duration) {
    const CLOCK_SLACK: Duration = Duration::from_millis(20);
    for (n, at) in sends.iter().enumerate() {
        let slot_at = slot * n as u32;
        assert!(
            *at - started + CLOCK_SLACK >= slot_at,
            "send {n} arrived {:?} after the start, before its slot at {slot_at:?}",
            *at - started,
        );
    }
    for w in sends.windows(2) {
        assert!(w[1] - w[0] >= slot / 2, "gap {:?}", w[1] - w[0]);
    }
}

#[tokio::test]
async fn personal_pacing_per_chat_gap_and_per_minute_cap() {
    let waha = FakeServer::waha();
    let prefix = support::prefix();
    // Per-chat gap 400 ms, jitter up to 100 ms, shared by two processes.
    let setup = Setup {
        waha_url: Some(waha.url()),
        personal_extra:
            "pair_gap_ms = 400\njitter_ms = 100\nmax_per_minute = 0\nsend_rate_per_second = 100",
        ..Setup::default()
    };
    let a = outbound(&prefix, &setup, Metrics::new()).await;
    let b = outbound(&prefix, &setup, Metrics::new()).await;
    let task = |out: Outbound, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..3 {
                let msg = personal_msg(
                    "491711234567@s.whatsapp.net",
                    Reply::text("x"),
                    &format!("{name}:{i}"),
                );
                send_now(&out, &msg, ChannelKind::Personal, Window::NotApplicable)
                    .await
                    .unwrap();
            }
        })
    };
    let started = Instant::now();
    let (ra, rb) = tokio::join!(task(a, "a"), task(b, "b"));
    ra.unwrap();
    rb.unwrap();
    let mut sends: Vec<Instant> = waha
        .requests_to("/api/sendText")
        .iter()
        .map(|r| r.at)
        .collect();
    sends.sort();
    assert_eq!(sends.len(), 6);
    assert_paced(started, &sends, Duration::from_millis(400));
    // Waiting sends show "typing…" first.
    assert!(!waha.requests_to("/api/startTyping").is_empty());
    assert_eq!(
        waha.requests_to("/api/startTyping").len(),
        waha.requests_to("/api/stopTyping").len()
    );

    // Per-minute cap: 300/min = one every 200 ms on the channel, different chats.
    let waha = FakeServer::waha();
    let prefix = support::prefix();
    let setup = Setup {
        waha_url: Some(waha.url()),
        personal_extra:
            "pair_gap_ms = 0\njitter_ms = 0\nmax_per_minute = 300\nsend_rate_per_second = 100",
        ..Setup::default()
    };
    let out = outbound(&prefix, &setup, Metrics::new()).await;
    let started = Instant::now();
    for i in 0..4 {
        let msg = personal_msg(
            &format!("4917{i}@c.us"),
            Reply::text("x"),
            &format!("c:{i}"),
        );
        send_now(&out, &msg, ChannelKind::Personal, Window::NotApplicable)
            .await
            .unwrap();
    }
    let sends: Vec<Instant> = waha
        .requests_to("/api/sendText")
        .iter()
        .map(|r| r.at)
        .collect();
    assert_eq!(sends.len(), 4);
    assert_paced(started, &sends, Duration::from_millis(200));
    // Every text after the first waited for its slot inside the lane, showing "typing…".
    assert_eq!(waha.requests_to("/api/startTyping").len(), 3);
    assert_eq!(waha.requests_to("/api/stopTyping").len(), 3);
}

// ---------------------------------------------------------------- one behaviour suite, two backends

async fn rate_suite(rate: RateLimiter) {
    let per_second = Limits {
        channel: Bucket::per_second(5),
        pair: None,
        per_minute: None,
        jitter_ms: 0,
        ..Limits::unlimited()
    };
    let t0 = 1_700_000_000_000i64;
    let take = |ch: &'static str,
                contact: Option<&'static str>,
                limits: Limits,
                now: i64,
                jitter: u64,
                max: u64| {
        let rate = rate.clone();
        async move {
            rate.take(ch, contact, &limits, now, jitter, max)
                .await
                .unwrap()
        }
    };
    // Burst of 5, then one every 200 ms.
    let mut waits = Vec::new();
    for _ in 0..7 {
        waits.push(take("c1", Some("a"), per_second.clone(), t0, 0, 10_000).await);
    }
    let ready = |w| Take::Ready { wait_ms: w };
    let not_yet = |w| Take::NotYet { wait_ms: w };
    assert_eq!(
        waits,
        [
            ready(0),
            ready(0),
            ready(0),
            ready(0),
            ready(0),
            ready(200),
            ready(400)
        ]
    );
    // Too far: nothing reserved, the same wait is offered again.
    assert_eq!(
        take("c1", Some("a"), per_second.clone(), t0, 0, 100).await,
        Take::NotYet { wait_ms: 600 }
    );
    assert_eq!(
        take("c1", Some("a"), per_second.clone(), t0, 0, 600).await,
        ready(600)
    );
    // Time passes: refilled.
    assert_eq!(
        take("c1", None, per_second.clone(), t0 + 10_000, 0, 0).await,
        ready(0)
    );
    // Channels are independent.
    assert_eq!(
        take("c2", Some("a"), per_second.clone(), t0, 0, 0).await,
        ready(0)
    );

    // Pair: a per-contact gate, independent of other contacts (a chat waiting for its gap
    // books nothing, so it never holds up the channel); read receipts (no contact) skip it.
    let pair = Limits {
        channel: Bucket::per_second(100),
        pair: Bucket::gap(1_000, 1),
        per_minute: None,
        jitter_ms: 0,
        ..Limits::unlimited()
    };
    assert_eq!(
        take("c3", Some("a"), pair.clone(), t0, 0, 10_000).await,
        ready(0)
    );
    assert_eq!(
        take("c3", Some("a"), pair.clone(), t0, 0, 10_000).await,
        not_yet(1_000)
    );
    assert_eq!(
        take("c3", Some("b"), pair.clone(), t0, 0, 10_000).await,
        ready(0)
    );
    assert_eq!(
        take("c3", None, pair.clone(), t0, 0, 10_000).await,
        ready(0)
    );
    // WABA-style pair burst: 3 at once, then one per gap.
    let burst = Limits {
        channel: None,
        pair: Bucket::gap(6_000, 3),
        per_minute: None,
        jitter_ms: 0,
        ..Limits::unlimited()
    };
    let mut waits = Vec::new();
    for _ in 0..4 {
        waits.push(take("c4", Some("a"), burst.clone(), t0, 0, 60_000).await);
    }
    assert_eq!(waits, [ready(0), ready(0), ready(0), not_yet(6_000)]);

    // Jitter moves the slot, and the next slot is counted from it (gaps hold on arrival).
    assert_eq!(
        take("c5", Some("a"), pair.clone(), t0, 70, 10_000).await,
        ready(70)
    );
    assert_eq!(
        take("c5", Some("a"), pair.clone(), t0, 0, 10_000).await,
        not_yet(1_070)
    );

    // Per-minute cap: 60/min = one per second, burst 1, across contacts.
    let cap = Limits {
        channel: None,
        pair: None,
        per_minute: Bucket::per_minute(60),
        jitter_ms: 0,
        ..Limits::unlimited()
    };
    assert_eq!(
        take("c6", Some("a"), cap.clone(), t0, 0, 10_000).await,
        ready(0)
    );
    assert_eq!(
        take("c6", Some("b"), cap.clone(), t0, 0, 10_000).await,
        ready(1_000)
    );
    assert_eq!(take("c6", None, cap.clone(), t0, 0, 10_000).await, ready(0));

    // Several limits agree on one slot; a refusal reserves in none of them.
    let all = Limits {
        channel: Bucket::per_second(1),
        pair: Bucket::gap(3_000, 1),
        per_minute: None,
        jitter_ms: 0,
        ..Limits::unlimited()
    };
    assert_eq!(
        take("c7", Some("a"), all.clone(), t0, 0, 10_000).await,
        ready(0)
    );
    assert_eq!(
        take("c7", Some("a"), all.clone(), t0, 0, 1_000).await,
        Take::NotYet { wait_ms: 3_000 }
    );
    // The channel bucket was not charged by the refusal: another contact goes at 1 s.
    assert_eq!(
        take("c7", Some("b"), all.clone(), t0, 0, 10_000).await,
        ready(1_000)
    );
    assert_eq!(
        take("c7", Some("a"), all.clone(), t0, 0, 10_000).await,
        not_yet(3_000)
    );
    // When the gap has passed, the channel slot after b's (t0 + 2 s) is free at t0 + 3 s.
    assert_eq!(
        take("c7", Some("a"), all.clone(), t0 + 3_000, 0, 10_000).await,
        ready(0)
    );
    // Too far for the caller: nothing reserved, same answer again.
    assert_eq!(
        take("c7", Some("c"), all.clone(), t0 + 3_000, 0, 500).await,
        not_yet(1_000)
    );
    assert_eq!(
        take("c7", Some("c"), all.clone(), t0 + 3_000, 0, 1_000).await,
        ready(1_000)
    );
}

#[tokio::test]
async fn rate_suite_redis() {
    rate_suite(RateLimiter::redis(connection().await, support::keys())).await;
}

#[tokio::test]
async fn rate_suite_memory() {
    rate_suite(RateLimiter::memory(support::keys())).await;
}

/// Meta's messaging limit: the configured one, then the one a `phone_number_quality_update`
/// announced (which wins, also over "unlimited", and 0 lifts it), shared by a portfolio.
async fn reach_suite(rate: RateLimiter) {
    let t0 = 1_700_000_000_000i64;
    let limits = |per_day: u32, portfolio: Option<&str>| Limits {
        reach_per_day: per_day,
        reach_portfolio: portfolio.map(str::to_string),
        ..Limits::unlimited()
    };
    let reach = |ch: &'static str, l: Limits, who: &'static str, now: i64| {
        let rate = rate.clone();
        async move { rate.reach(ch, &l, who, now).await.unwrap() }
    };
    // Configured: 2 customers a day; a third waits until the first leaves the 24 h window.
    assert_eq!(reach("c1", limits(2, None), "a", t0).await, None);
    assert_eq!(reach("c1", limits(2, None), "b", t0 + 1).await, None);
    assert_eq!(
        reach("c1", limits(2, None), "c", t0 + 2).await,
        Some(t0 + 86_400_000 + 1)
    );
    assert_eq!(
        reach("c1", limits(2, None), "a", t0 + 3).await,
        None,
        "already reached"
    );
    // Meta announces 3 (TIER…): the third fits now, a fourth does not.
    assert_eq!(rate.announced_limit("c1", None).await.unwrap(), None);
    rate.announce_limit("c1", None, 3).await.unwrap();
    assert_eq!(rate.announced_limit("c1", None).await.unwrap(), Some(3));
    assert_eq!(reach("c1", limits(2, None), "c", t0 + 4).await, None);
    assert!(reach("c1", limits(2, None), "d", t0 + 5).await.is_some());
    // Unlimited (0) in the config: the announced limit still holds.
    rate.announce_limit("c2", None, 1).await.unwrap();
    assert_eq!(reach("c2", limits(0, None), "a", t0).await, None);
    assert!(reach("c2", limits(0, None), "b", t0).await.is_some());
    // TIER_UNLIMITED (0) lifts the configured limit.
    rate.announce_limit("c1", None, 0).await.unwrap();
    assert_eq!(reach("c1", limits(2, None), "z", t0 + 6).await, None);
    // One portfolio, two numbers: one count, one announced limit.
    rate.announce_limit("p1", Some("acme"), 1).await.unwrap();
    assert_eq!(reach("p1", limits(0, Some("acme")), "a", t0).await, None);
    assert!(reach("p2", limits(0, Some("acme")), "b", t0)
        .await
        .is_some());
    assert_eq!(
        rate.announced_limit("p2", Some("acme")).await.unwrap(),
        Some(1)
    );
}

#[tokio::test]
async fn reach_suite_redis() {
    reach_suite(RateLimiter::redis(connection().await, support::keys())).await;
}

#[tokio::test]
async fn reach_suite_memory() {
    reach_suite(RateLimiter::memory(support::keys())).await;
}

async fn outbox_suite(o: Outbox) {
    let m = waba_msg("1555", Reply::text("x"), "ev:0");
    let OutboxState::Claimed { marker } = o.record(&m, 1_000).await.unwrap() else {
        panic!("a fresh key is claimed")
    };
    assert!(marker.starts_with("pending:1000:"), "{marker}");
    let OutboxState::InFlight {
        since_ms,
        marker: seen,
    } = o.record(&m, 2_000).await.unwrap()
    else {
        panic!("a claimed key is in flight")
    };
    assert_eq!((since_ms, seen.as_str()), (1_000, marker.as_str()));
    assert_eq!(
        o.get(WABA, "ev:0", 2_000).await.unwrap(),
        Some(marker.clone())
    );

    // Take-over is conditional on the marker seen.
    let OutboxState::Claimed { marker: mine } = o.take_over(&m, &seen, 3_000).await.unwrap() else {
        panic!("take-over of the seen marker")
    };
    assert!(matches!(
        o.take_over(&m, &seen, 3_001).await.unwrap(),
        OutboxState::InFlight {
            since_ms: 3_000,
            ..
        }
    ));
    // A failed attempt releases only our own claim.
    assert!(
        !o.release(&m, &marker, 3_002).await.unwrap(),
        "not ours any more"
    );
    assert!(matches!(
        o.record(&m, 3_003).await.unwrap(),
        OutboxState::InFlight { .. }
    ));
    assert!(o.release(&m, &mine, 3_004).await.unwrap(), "ours");
    let OutboxState::Claimed { .. } = o.record(&m, 3_005).await.unwrap() else {
        panic!("released")
    };

    // Sent: skipped from now on, message id maps back to the conversation.
    o.mark_sent(&m, &Sent::new("wamid.S"), 4_000).await.unwrap();
    assert_eq!(
        o.record(&m, 5_000).await.unwrap(),
        OutboxState::AlreadySent("wamid.S".into())
    );
    assert_eq!(
        o.lookup_message(WABA, "wamid.S", 5_000).await.unwrap(),
        Some(SentRef {
            outbox_key: "ev:0".into(),
            conversation: "1555".into()
        })
    );
    // A status never overwrites a recorded send; it completes a pending one.
    assert!(!o
        .mark_status_seen(WABA, "ev:0", "wamid.OTHER", 5_000)
        .await
        .unwrap());
    let m1 = waba_msg("1555", Reply::text("y"), "ev:1");
    o.record(&m1, 6_000).await.unwrap();
    assert!(o
        .mark_status_seen(WABA, "ev:1", "wamid.T", 6_100)
        .await
        .unwrap());
    assert_eq!(
        o.record(&m1, 6_200).await.unwrap(),
        OutboxState::AlreadySent("wamid.T".into())
    );
    // Read receipts leave no message-id mapping.
    let read = waba_msg(
        "1555",
        Reply::MarkRead {
            message_id: "wamid.IN".into(),
            typing: false,
        },
        "ev:2",
    );
    o.record(&read, 7_000).await.unwrap();
    o.mark_sent(&read, &Sent::new("wamid.IN"), 7_000)
        .await
        .unwrap();
    assert_eq!(
        o.lookup_message(WABA, "wamid.IN", 7_000).await.unwrap(),
        None
    );
    // Giving up: only our own claim becomes `failed:<code>`, which every later claim reports
    // and nothing but a status changes.
    let m3 = waba_msg("1555", Reply::text("z"), "ev:3");
    let OutboxState::Claimed { marker: ours } = o.record(&m3, 7_100).await.unwrap() else {
        panic!("a fresh key is claimed")
    };
    assert!(!o
        .give_up(&m3, "pending:1:other", "expired", 7_101)
        .await
        .unwrap());
    assert!(o.give_up(&m3, &ours, "expired", 7_102).await.unwrap());
    assert_eq!(
        o.get(WABA, "ev:3", 7_103).await.unwrap().as_deref(),
        Some("failed:expired")
    );
    let given_up = OutboxState::GivenUp("expired".into());
    assert_eq!(o.record(&m3, 7_104).await.unwrap(), given_up);
    assert_eq!(o.take_over(&m3, &ours, 7_105).await.unwrap(), given_up);
    assert!(!o.release(&m3, &ours, 7_106).await.unwrap());
    assert!(!o.give_up(&m3, &ours, "other", 7_107).await.unwrap());
    assert_eq!(o.record(&m3, 7_108).await.unwrap(), given_up);
    assert!(o
        .mark_status_seen(WABA, "ev:3", "wamid.U", 7_109)
        .await
        .unwrap());
    assert_eq!(
        o.record(&m3, 7_110).await.unwrap(),
        OutboxState::AlreadySent("wamid.U".into())
    );

    // Releasing: only our own claim, without an audit entry. Taking over a marker that has
    // vanished meanwhile claims the free key.
    let m4 = waba_msg("1555", Reply::text("w"), "ev:4");
    let OutboxState::Claimed { marker: first } = o.record(&m4, 7_200).await.unwrap() else {
        panic!("a fresh key is claimed")
    };
    assert!(!o.release(&m4, "pending:1:other", 7_201).await.unwrap());
    assert!(o.release(&m4, &first, 7_202).await.unwrap());
    assert!(!o.release(&m4, &first, 7_203).await.unwrap());
    assert_eq!(o.get(WABA, "ev:4", 7_203).await.unwrap(), None);
    let OutboxState::Claimed { marker: second } = o.take_over(&m4, &first, 7_204).await.unwrap()
    else {
        panic!("the key of a vanished marker is free")
    };
    assert!(second.starts_with("pending:7204:"), "{second}");
    assert_ne!(second, first);
    // An audit entry with a free outcome (the outbound queue's memory twin logs through it).
    o.log_outcome(&m4, "skipped", "window closed", 7_300)
        .await
        .unwrap();

    // Health flag.
    assert_eq!(o.health(WABA, 8_000).await.unwrap(), None);
    o.set_unhealthy(WABA, "token expired", 8_000).await.unwrap();
    assert_eq!(
        o.health(WABA, 8_001).await.unwrap().as_deref(),
        Some("unhealthy since 8000: token expired")
    );
    o.clear_health(WABA).await.unwrap();
    assert_eq!(o.health(WABA, 8_002).await.unwrap(), None);
}

#[tokio::test]
async fn outbox_suite_redis() {
    let keys = support::keys();
    let o = Outbox::redis(connection().await, keys.clone(), OutboxOptions::default());
    outbox_suite(o).await;
    // The audit stream: one entry per outcome (2 sends, 1 logged outcome; a released claim
    // logs nothing: the outbound queue logs the final outcome).
    let log = support::xrange(&support::shared_url(), &keys.outbox(WABA)).await;
    let outcomes: Vec<&str> = log.iter().map(|e| e.field("outcome")).collect();
    assert_eq!(outcomes, ["sent", "sent", "skipped"]);
    assert_eq!(log[0].field("reply"), r#"{"type":"text","text":"x"}"#);
    assert_eq!(log[0].field("to"), "1555");
    assert_eq!(log[2].field("key"), "ev:4");
    assert_eq!(log[2].field("error"), "window closed");
    assert_eq!(log[2].field("message_id"), "");
}

#[tokio::test]
async fn outbox_suite_memory() {
    let o = Outbox::memory(support::keys(), OutboxOptions::default());
    outbox_suite(o.clone()).await;
    // The same entries as the Redis stream's.
    let log = o.memory_log(WABA);
    let field = |i: usize, name: &str| {
        let entry: &Vec<(String, String)> = &log[i];
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let outcomes: Vec<String> = (0..log.len()).map(|i| field(i, "outcome")).collect();
    assert_eq!(outcomes, ["sent", "sent", "skipped"]);
    assert_eq!(field(0, "reply"), r#"{"type":"text","text":"x"}"#);
    assert_eq!(field(0, "to"), "1555");
    assert_eq!(field(2, "key"), "ev:4");
    assert_eq!(field(2, "error"), "window closed");
    assert_eq!(field(2, "message_id"), "");
}
