//! Issue 4's sending guarantees end to end: real `coexist work` processes on a real Redis, the
//! recorder as a forward bot whose answers carry replies, and the fake Graph API / fake WAHA
//! as the providers (they record every request with its arrival time and answer as scripted).
//!
//! What the worker's sender does is read off the fakes: bodies, headers, how many requests
//! per outbox key, and the spacing of arrival times (rate limits, pair gaps, Personal pacing).
//!
//! The sender's retry knobs come from `[sending]` (defaults: backoff base 500 ms, pair base 1 s,
//! HTTP timeout 15 s, in-flight wait 15 s); the slowest tests shorten them there.

mod deploy;
mod fakes;
mod recorder;
mod support;

use deploy::*;

use coexist::event::Event;
use coexist::queue::QueueBackend;
use coexist::routing::partition_of;
use fakes::{Answer, Recorded};
use recorder::Script;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ 1. rules and error paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_inside_the_window_reaches_graph_with_plus_callback_key_and_bearer() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505551234";
    let m = message(WABA, contact, "wamid.inside.1", now_ms(), "hello");
    d.recorder.script(&m.id, answer(vec![text("Hi there")]));
    d.enqueue(&[&m]).await;
    let _w = d.spawn_worker("w0");

    let reqs = wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(15)).await;
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/v23.0/{PHONE_NUMBER_ID}/messages"));
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {GRAPH_TOKEN}").as_str())
    );
    assert_eq!(
        r.body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
               "to": "+16505551234", "type": "text", "text": {"body": "Hi there"},
               "biz_opaque_callback_data": "wamid.inside.1:0"})
    );
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    // The outbox remembers the send under its key, with the id the fake gave.
    assert_eq!(
        d.outbox(WABA, "wamid.inside.1:0").await.as_deref(),
        Some("sent:wamid.fake1")
    );
    let audit = support::xrange(&d.redis_url, &d.keys.outbox(WABA)).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].field("outcome"), "sent");
    assert_eq!(audit[0].field("key"), "wamid.inside.1:0");
    let state = d.state(WABA, contact).await.expect("state saved");
    assert!(state["last_outbound_ms"].as_i64().is_some(), "{state}");
    assert_eq!(d.graph.count(), 1, "exactly one request");
    assert_eq!(d.waha.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_window_refuses_free_form_before_http_while_the_template_is_sent() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550002";
    // The user's last message is 25 h old: the window closed an hour ago.
    let m = message(
        WABA,
        contact,
        "wamid.closed.1",
        now_ms() - DAY_MS - 3_600_000,
        "late",
    );
    d.recorder.script(
        &m.id,
        answer(vec![text("free-form, refused"), template("order_update")]),
    );
    d.enqueue(&[&m]).await;
    let _w = d.spawn_worker("w0");

    d.wait_drained(WABA, contact, Duration::from_secs(15)).await;
    // The template leaves after the commit (sending drains): wait for it, then a moment for
    // anything that should not come.
    wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reqs = d.graph.requests();
    assert_eq!(
        reqs.len(),
        1,
        "only the template left: {:?}",
        reqs.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let t = &reqs[0].body;
    assert_eq!(t["type"], "template");
    assert_eq!(
        t["template"],
        json!({"name": "order_update", "language": {"code": "en_US"}})
    );
    assert_eq!(t["to"], "+16505550002");
    assert!(
        key_of(&reqs[0]).starts_with("wamid.closed.1:"),
        "{}",
        reqs[0].body
    );
    assert!(
        d.log("w0").contains("refused"),
        "the refusal is logged:\n{}",
        d.log("w0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_refuses_templates_and_sends_text_to_waha_with_api_key_and_c_us_chat_id() {
    let d = Deployment::new(Opts::default()).await;
    let chat = "491711234567@s.whatsapp.net";
    let m = message(PERSONAL, chat, "waha:ABC123", now_ms(), "hallo");
    d.recorder.script(
        &m.id,
        answer(vec![template("order_update"), text("Hallo zurück")]),
    );
    d.enqueue(&[&m]).await;
    let _w = d.spawn_worker("w0");

    wait_requests(&d.waha, "/api/sendText", 1, Duration::from_secs(15)).await;
    d.wait_drained(PERSONAL, chat, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sends = d.waha.requests_to("/api/sendText");
    assert_eq!(sends.len(), 1, "one text, the template never left");
    let s = &sends[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.header("x-api-key"), Some(WAHA_KEY));
    assert_eq!(
        s.body,
        json!({"session": "default", "chatId": "491711234567@c.us", "text": "Hallo zurück"})
    );
    assert_eq!(d.graph.count(), 0, "nothing went to the Graph API");
    assert!(
        d.waha
            .requests()
            .iter()
            .all(|r| !r.body.to_string().contains("order_update")),
        "no template reached WAHA"
    );
    // The text is the answer's second reply: its outbox key keeps that slot even though
    // the first (the template) was refused.
    assert!(
        d.outbox(PERSONAL, "waha:ABC123:1")
            .await
            .is_some_and(|v| v.starts_with("sent:true_491711234567@c.us_FAKE")),
        "{:?}",
        d.outbox(PERSONAL, "waha:ABC123:1").await
    );
    assert_eq!(
        d.outbox(PERSONAL, "waha:ABC123:0").await,
        None,
        "the refused template claimed nothing"
    );
    assert!(
        d.log("w0").contains("no message templates"),
        "{}",
        d.log("w0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_131047_is_final_and_closes_the_window_for_the_next_free_form_reply() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550003";
    let m = message(WABA, contact, "wamid.w131047.1", now_ms(), "hi");
    d.recorder.script(&m.id, answer(vec![text("first")]));
    d.graph.push(Answer::window_closed());
    d.enqueue(&[&m]).await;
    let _w = d.spawn_worker("w0");

    wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(15)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let state = d.state(WABA, contact).await.expect("state saved");
    assert!(
        state["window_closed_at_ms"].as_i64().is_some(),
        "131047 recorded the window as closed: {state}"
    );
    // A status (which never opens the window) makes the bot answer a text and a template: the
    // text is refused before any HTTP call, the template leaves.
    let s = status(contact, "wamid.someothersend", "delivered");
    d.recorder.script(
        &s.id,
        answer(vec![text("second, refused"), template("reengage")]),
    );
    d.enqueue(&[&s]).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    // The template leaves after the commit (sending drains): wait for it, then a moment for
    // anything that should not come.
    wait_requests(&d.graph, MESSAGES, 2, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reqs = d.graph.requests();
    let kinds: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (key_of(r), r.body["type"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds.len(),
        2,
        "131047 not retried, second text refused: {kinds:?}"
    );
    assert_eq!(kinds[0], ("wamid.w131047.1:0", "text"));
    assert_eq!(kinds[1].1, "template");
    assert_eq!(
        d.recorder
            .calls()
            .iter()
            .filter(|c| c.event_id == m.id)
            .count(),
        1
    );
    assert!(d.queue.dead_letters(WABA, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_130429_and_pair_rate_131056_are_retried_with_backoff_then_delivered() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550004";
    let m1 = message(WABA, contact, "wamid.rl.1", now_ms(), "a");
    let m2 = message(WABA, contact, "wamid.rl.2", now_ms(), "b");
    d.recorder.script(&m1.id, answer(vec![text("one")]));
    d.recorder.script(&m2.id, answer(vec![text("two")]));
    d.graph.push(Answer::rate_limited());
    d.graph.push(Answer::Ok);
    d.graph.push(Answer::pair_rate_limited());
    d.enqueue(&[&m1, &m2]).await;
    let _w = d.spawn_worker("w0");

    let reqs = wait_requests(&d.graph, MESSAGES, 4, Duration::from_secs(20)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let keys: Vec<String> = d
        .graph
        .requests()
        .iter()
        .map(|r| key_of(r).to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "wamid.rl.1:0",
            "wamid.rl.1:0",
            "wamid.rl.2:0",
            "wamid.rl.2:0"
        ],
        "each retried once, then delivered"
    );
    let rl_gap = ms_between(&reqs[0], &reqs[1]);
    let pair_gap = ms_between(&reqs[2], &reqs[3]);
    assert!(rl_gap >= 450, "130429 backoff {rl_gap} ms (base 500 ms)");
    assert!(
        pair_gap >= 950,
        "131056 backoff {pair_gap} ms (1 s, then 4 s)"
    );
    assert_eq!(reqs[0].body, reqs[1].body, "the retry is the same request");
    assert!(d
        .outbox(WABA, "wamid.rl.1:0")
        .await
        .unwrap()
        .starts_with("sent:"));
    assert!(d
        .outbox(WABA, "wamid.rl.2:0")
        .await
        .unwrap()
        .starts_with("sent:"));
    // The sender retried inside one handling: the bot was asked once per event.
    assert_eq!(d.recorder.calls().len(), 2);
    println!("130429 retry after {rl_gap} ms, 131056 retry after {pair_gap} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_131026_is_not_retried_and_a_500_is() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550005";
    let m1 = message(WABA, contact, "wamid.final.1", now_ms(), "a");
    let m2 = message(WABA, contact, "wamid.final.2", now_ms(), "b");
    d.recorder.script(&m1.id, answer(vec![text("to nobody")]));
    d.recorder
        .script(&m2.id, answer(vec![text("after two 500s")]));
    d.graph.push(Answer::undeliverable());
    d.graph.push(Answer::server_error());
    d.graph.push(Answer::server_error());
    d.enqueue(&[&m1, &m2]).await;
    let _w = d.spawn_worker("w0");

    wait_requests(&d.graph, MESSAGES, 4, Duration::from_secs(20)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reqs = d.graph.requests();
    let keys: Vec<String> = reqs.iter().map(|r| key_of(r).to_string()).collect();
    assert_eq!(
        keys,
        [
            "wamid.final.1:0",
            "wamid.final.2:0",
            "wamid.final.2:0",
            "wamid.final.2:0"
        ],
        "131026 once; 500, 500, then delivered"
    );
    assert!(ms_between(&reqs[1], &reqs[2]) >= 450);
    assert!(ms_between(&reqs[2], &reqs[3]) >= 950, "backoff doubles");
    // 131026: the key says it was given up (a sender after a crash will not try again),
    // nothing recorded as sent; the audit says why.
    assert_eq!(
        d.outbox(WABA, "wamid.final.1:0").await.as_deref(),
        Some("failed:undeliverable")
    );
    let audit = support::xrange(&d.redis_url, &d.keys.outbox(WABA)).await;
    let outcomes: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.field("key"), e.field("outcome")))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("wamid.final.1:0", "undeliverable"),
            ("wamid.final.2:0", "sent")
        ]
    );
    // Neither event was retried by the worker nor dead-lettered; the bot was told of the
    // undeliverable reply by an `outbound.failed` event.
    let calls = d.recorder.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let failed = calls
        .iter()
        .find(|c| c.event_type() == "outbound.failed")
        .unwrap();
    assert_eq!(failed.event["outbound"]["id"], "wamid.final.1:0");
    assert_eq!(failed.event["outbound"]["code"], "undeliverable");
    assert_eq!(failed.event["outbound"]["provider_code"], 131026);
    assert_eq!(failed.conversation(), contact);
    assert!(d.queue.dead_letters(WABA, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_190_is_final_and_marks_the_channel_unhealthy_until_a_send_succeeds() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550006";
    let m1 = message(WABA, contact, "wamid.auth.1", now_ms(), "a");
    d.recorder
        .script(&m1.id, answer(vec![text("refused token")]));
    d.graph.push(Answer::unauthorized());
    d.enqueue(&[&m1]).await;
    let _w = d.spawn_worker("w0");

    wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(15)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let health = d.redis_get(&d.keys.health(WABA)).await;
    assert!(
        health
            .as_deref()
            .is_some_and(|h| h.starts_with("unhealthy since") && h.contains("access token")),
        "health key: {health:?}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(d.graph.count(), 1, "190 is not retried");
    let calls = d.recorder.calls();
    assert_eq!(
        calls.iter().filter(|c| c.event_id == m1.id).count(),
        1,
        "nor is the event"
    );
    assert!(
        calls.iter().any(|c| c.event_type() == "outbound.failed"
            && c.event["outbound"]["code"] == "unauthorized"),
        "the bot is told: {calls:?}"
    );
    assert!(d.log("w0").contains("marked unhealthy"), "{}", d.log("w0"));
    // Operators see it in `coexist queues`.
    let rows: serde_json::Value =
        serde_json::from_slice(&d.run(&["queues", "--json"]).stdout).unwrap();
    for row in rows.as_array().unwrap() {
        let health = row["health"].as_str().unwrap();
        if row["channel"] == WABA {
            assert!(health.starts_with("unhealthy since"), "{row}");
        } else {
            assert_eq!(health, "ok", "{row}");
        }
    }

    // The token is fixed: the next send succeeds and clears the mark.
    let m2 = message(WABA, contact, "wamid.auth.2", now_ms(), "b");
    d.recorder.script(&m2.id, answer(vec![text("token ok")]));
    d.enqueue(&[&m2]).await;
    wait_requests(&d.graph, MESSAGES, 2, Duration::from_secs(10)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    assert_eq!(d.redis_get(&d.keys.health(WABA)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_answer_slower_than_the_http_timeout_is_retried() {
    let d = Deployment::new(Opts {
        sending: "http_timeout_ms = 2000",
        ..Opts::default()
    })
    .await;
    let contact = "16505550007";
    let m = message(WABA, contact, "wamid.slow.1", now_ms(), "a");
    d.recorder.script(&m.id, answer(vec![text("eventually")]));
    // `[sending] http_timeout_ms = 2000`: answer after 3 s.
    d.graph
        .push(Answer::Slow(Duration::from_secs(3), Box::new(Answer::Ok)));
    d.enqueue(&[&m]).await;
    let _w = d.spawn_worker("w0");

    let reqs = wait_requests(&d.graph, MESSAGES, 2, Duration::from_secs(15)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let gap = ms_between(&reqs[0], &reqs[1]);
    assert!(
        (2_000..4_000).contains(&gap),
        "retried after the 2 s timeout + 500 ms backoff: {gap} ms"
    );
    assert_eq!(key_of(&reqs[0]), key_of(&reqs[1]));
    assert!(d
        .outbox(WABA, "wamid.slow.1:0")
        .await
        .unwrap()
        .starts_with("sent:wamid.fake"));
    assert_eq!(d.graph.count(), 2);
}

// ------------------------------------------------------------------ 2. crashes and the outbox

/// A lane backing off after 5xx answers survives its worker: the worker dies (SIGKILL) while
/// reply B of an event waits for its next try (reply A already sent and recorded, the event
/// committed and acked). Another worker takes the lane over when its lease expires and sends B;
/// A is not sent again, the event is not handled again, and later replies follow B in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_backing_off_survives_its_worker_and_keeps_order() {
    let d = Deployment::new(Opts {
        sending: "lane_lease_ms = 1500\nretry_base_ms = 4000",
        ..Opts::default()
    })
    .await;
    let contact = "16505550010";
    let m = message(WABA, contact, "wamid.crash.1", now_ms(), "a");
    d.recorder
        .script(&m.id, answer(vec![text("reply A"), text("reply B")]));
    // A goes out; B fails once, and its lane backs off for 4 s.
    d.graph.push(Answer::Ok);
    d.graph.push(Answer::server_error());
    d.enqueue(&[&m]).await;
    let mut w0 = d.spawn_worker("w0");

    wait_requests(&d.graph, MESSAGES, 2, Duration::from_secs(20)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(5)).await;
    assert!(d
        .outbox(WABA, "wamid.crash.1:0")
        .await
        .unwrap()
        .starts_with("sent:"));
    // The next reply of the conversation queues behind B.
    let m2 = message(WABA, contact, "wamid.crash.2", now_ms(), "b");
    d.recorder.script(&m2.id, answer(vec![text("later")]));
    d.enqueue(&[&m2]).await;
    d.wait_drained(WABA, contact, Duration::from_secs(5)).await;
    w0.kill9();
    let killed = Instant::now();

    let _w1 = d.spawn_worker("w1");
    let reqs = wait_requests(&d.graph, MESSAGES, 4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs_after = d.graph.requests_to(MESSAGES);
    assert_eq!(
        reqs_after.len(),
        4,
        "nothing more: {:?}",
        reqs_after.iter().map(key_of).collect::<Vec<_>>()
    );
    let keys: Vec<&str> = reqs.iter().map(key_of).collect();
    assert_eq!(
        keys,
        [
            "wamid.crash.1:0",
            "wamid.crash.1:1",
            "wamid.crash.1:1",
            "wamid.crash.2:0"
        ],
        "A once; B failed, then sent by the new worker; then the later reply, in order"
    );
    assert!(reqs[2].at > killed, "B's retry came after the kill");
    // Handled once each: the sends never made an event run again.
    let calls = d.recorder.calls();
    assert_eq!(calls.iter().filter(|c| c.event_id == m.id).count(), 1);
    assert_eq!(calls.iter().filter(|c| c.event_id == m2.id).count(), 1);
    assert!(d
        .outbox(WABA, "wamid.crash.1:1")
        .await
        .unwrap()
        .starts_with("sent:"));
}

// ------------------------------------------------------------------ 3. rate limits

/// Most requests whose arrival times fall in any half-open window of `window`.
fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| {
            t[i..]
                .iter()
                .take_while(|x| x.duration_since(t[i]) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_rate_holds_across_two_worker_processes() {
    const RATE: usize = 5;
    const N: usize = 60;
    let d = Deployment::new(Opts {
        waba: "send_rate_per_second = 5",
        waba_partitions: 8,
        ..Opts::default()
    })
    .await;
    let _w0 = d.spawn_worker("w0");
    let _w1 = d.spawn_worker("w1");
    d.wait_leased(2).await;
    d.recorder.answer_all(json!({"replies": [text("thanks")]}));
    let now = now_ms();
    let events: Vec<Event> = (0..N)
        .map(|i| {
            message(
                WABA,
                &format!("1444555{i:04}"),
                &format!("wamid.rate.{i}"),
                now,
                "x",
            )
        })
        .collect();
    d.enqueue(&events.iter().collect::<Vec<_>>()).await;

    wait_requests(&d.graph, MESSAGES, N, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = d.graph.requests();
    let mut keys: Vec<&str> = reqs.iter().map(key_of).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), N, "every message answered");
    assert_eq!(reqs.len(), N, "and only once");
    let times: Vec<Instant> = reqs.iter().map(|r| r.at).collect();
    let max1 = max_in_window(&times, Duration::from_secs(1));
    let first = *times.iter().min().unwrap();
    let span = times.iter().max().unwrap().duration_since(first);
    let workers: std::collections::HashSet<String> =
        d.recorder.handled().into_iter().map(|c| c.worker).collect();
    println!(
        "{N} sends by {} workers in {span:?}: max {max1} in any 1 s window (rate {RATE}, burst {RATE})",
        workers.len()
    );
    assert!(
        max1 <= 2 * RATE,
        "at most rate + burst in any second: {max1}"
    );
    // Shared bucket: 5 at once, then one per 200 ms for both processes together (two
    // per-process buckets would have finished in half the time).
    assert!(
        span >= Duration::from_millis(((N - RATE) * 1000 / RATE) as u64 - 500),
        "{N} sends took only {span:?}"
    );
    assert_eq!(
        workers.len(),
        2,
        "both workers handled and sent: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_rate_spaces_replies_to_one_contact_beyond_the_burst() {
    const GAP_MS: u128 = 400;
    let d = Deployment::new(Opts {
        waba: "pair_gap_ms = 400",
        ..Opts::default()
    })
    .await;
    let contact = "16505550020";
    let m = message(WABA, contact, "wamid.pair.1", now_ms(), "many");
    // WABA pair bucket: a burst of 10, then one per pair_gap_ms.
    let replies: Vec<Value> = (0..13).map(|i| text(&format!("part {i}"))).collect();
    d.recorder.script(&m.id, answer(replies));
    d.enqueue(&[&m]).await;
    let _w = d.spawn_worker("w0");

    let reqs = wait_requests(&d.graph, MESSAGES, 13, Duration::from_secs(15)).await;
    let keys: Vec<String> = reqs.iter().map(|r| key_of(r).to_string()).collect();
    let want: Vec<String> = (0..13).map(|i| format!("wamid.pair.1:{i}")).collect();
    assert_eq!(keys, want, "in order, once each");
    let burst = ms_between(&reqs[0], &reqs[9]);
    let gaps: Vec<u128> = reqs[9..]
        .windows(2)
        .map(|w| ms_between(&w[0], &w[1]))
        .collect();
    println!("burst of 10 in {burst} ms, then gaps {gaps:?} ms (pair_gap_ms {GAP_MS})");
    assert!(burst < 300, "the burst leaves at once: {burst} ms");
    for g in &gaps {
        assert!(
            *g >= GAP_MS - 60,
            "gap {g} ms < pair_gap_ms {GAP_MS}: {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_pacing_keeps_the_per_chat_gap_on_arrival_times() {
    const GAP_MS: u128 = 500;
    let d = Deployment::new(Opts {
        personal: "pair_gap_ms = 500\njitter_ms = 150\nmax_per_minute = 600",
        ..Opts::default()
    })
    .await;
    // Two chats on different partitions: the gap is per chat.
    let chats: Vec<String> = (0..50)
        .map(|i| format!("4917100000{i:02}@s.whatsapp.net"))
        .collect();
    let a = chats[0].clone();
    let b = chats
        .iter()
        .find(|c| partition_of(c, PERSONAL_PARTITIONS) != partition_of(&a, PERSONAL_PARTITIONS))
        .unwrap()
        .clone();
    let ma = message(PERSONAL, &a, "waha:PACE-A", now_ms(), "a");
    let mb = message(PERSONAL, &b, "waha:PACE-B", now_ms(), "b");
    d.recorder.script(
        &ma.id,
        answer((0..4).map(|i| text(&format!("a{i}"))).collect()),
    );
    d.recorder
        .script(&mb.id, answer(vec![text("b0"), text("b1")]));
    d.enqueue(&[&ma, &mb]).await;
    let _w = d.spawn_worker("w0");

    wait_requests(&d.waha, "/api/sendText", 6, Duration::from_secs(15)).await;
    d.wait_drained(PERSONAL, &a, Duration::from_secs(10)).await;
    d.wait_drained(PERSONAL, &b, Duration::from_secs(10)).await;
    let all = d.waha.requests();
    assert!(all.iter().all(|r| r.header("x-api-key") == Some(WAHA_KEY)));
    let sends = d.waha.requests_to("/api/sendText");
    assert_eq!(sends.len(), 6);
    let of = |chat: &str| -> Vec<Recorded> {
        let c_us = chat.replace("@s.whatsapp.net", "@c.us");
        sends
            .iter()
            .filter(|r| r.body["chatId"] == c_us.as_str())
            .cloned()
            .collect()
    };
    let (sa, sb) = (of(&a), of(&b));
    assert_eq!(
        sa.iter()
            .map(|r| r.body["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a0", "a1", "a2", "a3"]
    );
    assert_eq!(sb.len(), 2);
    let gaps_a: Vec<u128> = sa.windows(2).map(|w| ms_between(&w[0], &w[1])).collect();
    let gaps_b: Vec<u128> = sb.windows(2).map(|w| ms_between(&w[0], &w[1])).collect();
    println!("per-chat gaps: a {gaps_a:?} ms, b {gaps_b:?} ms (pair_gap_ms {GAP_MS}, jitter 150)");
    for g in gaps_a.iter().chain(&gaps_b) {
        assert!(*g >= GAP_MS - 40, "per-chat gap {g} ms < {GAP_MS}");
    }
    // The other chat does not wait for this chat's gap: b's first text arrives before a's last.
    assert!(sb[0].at < sa[3].at, "chats are paced independently");
    // While a text waits for its slot, the chat shows "typing…".
    assert!(!d.waha.requests_to("/api/startTyping").is_empty());
    assert!(!d.waha.requests_to("/api/stopTyping").is_empty());
    assert_eq!(d.graph.count(), 0);
}

// ------------------------------------------------------------------ 4. the forward protocol

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_protocol_signature_event_id_empty_answers_and_state() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550030";
    let now = now_ms();
    let m: Vec<Event> = (0..4)
        .map(|i| {
            message(
                WABA,
                contact,
                &format!("wamid.proto.{i}"),
                now,
                &i.to_string(),
            )
        })
        .collect();
    d.recorder.script(&m[0].id, Script::Answer(json!({}))); // `{}`: nothing to do
                                                            // m[1]: no script → 200 with an empty body: nothing to do
    d.recorder.script(
        &m[2].id,
        Script::Answer(json!({"state": {"step": "asked_size"}, "replies": [text("Which size?")]})),
    );
    d.recorder
        .script(&m[3].id, Script::Answer(json!({"state": null})));
    d.enqueue(&[&m[0], &m[1], &m[2]]).await;
    let w = d.spawn_worker("w0");

    d.wait_drained(WABA, contact, Duration::from_secs(15)).await;
    let calls = d.recorder.calls();
    assert_eq!(calls.len(), 3);
    for (c, e) in calls.iter().zip(&m) {
        assert!(c.signature_ok, "X-Coexist-Signature verifies");
        assert_eq!(c.event_id, e.id, "X-Coexist-Event-Id");
        assert_eq!(c.event["id"], e.id.as_str());
        assert_eq!(c.event["type"], "message");
        assert!(
            c.worker.contains(&format!("-{}-", w.0.id())),
            "{}",
            c.worker
        );
        assert_eq!(c.status, 200);
    }
    // Sending drains after the commit, so the reply may leave after the stream is drained:
    // wait for it. A reply of m[0] or m[1] would sit ahead of it in the customer's lane.
    wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(15)).await;
    let reqs = d.graph.requests();
    assert_eq!(reqs.len(), 1, "{{}} and an empty body send nothing");
    assert_eq!(key_of(&reqs[0]), "wamid.proto.2:0");
    let state = d.state(WABA, contact).await.unwrap();
    assert_eq!(state["bot_state"], json!({"step": "asked_size"}));

    // `"state": null` clears the stored state.
    d.enqueue(&[&m[3]]).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let state = d.state(WABA, contact).await.unwrap();
    assert!(
        state.get("bot_state").is_none(),
        "\"state\": null clears the bot state: {state}"
    );
    assert!(d.queue.dead_letters(WABA, 10).await.unwrap().is_empty());
    // SIGTERM: a clean exit.
    w.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_handover_pauses_resume_resumes_and_a_non_answer_dead_letters() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550031";
    let now = now_ms();
    let m1 = message(WABA, contact, "wamid.ho.1", now, "agent please");
    let m2 = message(WABA, contact, "wamid.ho.2", now, "hello?");
    let s = status(contact, "wamid.agent-sent", "read");
    let m3 = message(WABA, contact, "wamid.ho.3", now, "back to the bot");
    let bad = message(WABA, contact, "wamid.ho.bad", now, "x");
    let m4 = message(WABA, contact, "wamid.ho.4", now, "after the bad one");
    d.recorder.script(
        &m1.id,
        Script::Answer(
            json!({"handover": {"seconds": 600}, "replies": [text("A person will answer")]}),
        ),
    );
    d.recorder
        .script(&m2.id, answer(vec![text("must not be asked")]));
    d.recorder
        .script(&s.id, Script::Answer(json!({"handover": "resume"})));
    d.recorder.script(&m3.id, answer(vec![text("bot again")]));
    // 2xx whose body is JSON but not an answer (the recorder can only answer with JSON).
    d.recorder
        .script(&bad.id, Script::Answer(json!("this is not an answer")));
    d.recorder.script(&m4.id, answer(vec![text("still going")]));
    d.enqueue(&[&m1, &m2]).await;
    let _w = d.spawn_worker("w0");

    d.wait_drained(WABA, contact, Duration::from_secs(15)).await;
    let state = d.state(WABA, contact).await.unwrap();
    assert!(
        state["handover_until_ms"]
            .as_i64()
            .is_some_and(|u| u > now_ms() + 500_000),
        "paused for 600 s: {state}"
    );
    let ids: Vec<String> = d.recorder.calls().into_iter().map(|c| c.event_id).collect();
    assert_eq!(
        ids.as_slice(),
        std::slice::from_ref(&m1.id),
        "the message during the handover is not forwarded"
    );

    // Non-message events still reach the bot: a status answered with "resume".
    d.enqueue(&[&s]).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let state = d.state(WABA, contact).await.unwrap();
    assert!(state.get("handover_until_ms").is_none(), "{state}");
    d.enqueue(&[&m3, &bad, &m4]).await;
    d.wait_drained(WABA, contact, Duration::from_secs(15)).await;
    let ids: Vec<String> = d.recorder.calls().into_iter().map(|c| c.event_id).collect();
    assert_eq!(
        ids,
        [
            m1.id.clone(),
            s.id.clone(),
            m3.id.clone(),
            bad.id.clone(),
            m4.id.clone()
        ],
        "resumed; the bad answer is not retried"
    );
    let texts: Vec<String> = d
        .graph
        .requests()
        .iter()
        .map(|r| r.body["text"]["body"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(texts, ["A person will answer", "bot again", "still going"]);

    let out = d.run(&["dlq", "list", "--channel", WABA, "--json"]);
    let dead: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["payload"]
        .as_str()
        .unwrap()
        .contains("wamid.ho.bad"));
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("forward answer is not valid"),
        "{}",
        dead[0]
    );
}

/// Outbox keys are `<event id>:<index>`, fixed when the event's replies are committed. The
/// old design counted the index on each handling, so a reply refused on a retry shifted later
/// replies onto keys already sent and they were silently dropped. Now the event is handled
/// once, its replies queued with their keys, and a template that fails four times is still
/// delivered on its own key, after the text, while the window closes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_keeps_failing_keeps_its_key_and_is_delivered() {
    let d = Deployment::new(Opts {
        sending: "retry_base_ms = 250",
        ..Opts::default()
    })
    .await;
    let _w = d.spawn_worker("w0");
    d.wait_leased(1).await;
    let contact = "16505550040";
    // The window closes 2.5 s from now; the template's four failing attempts take ~4 s.
    let m = message(
        WABA,
        contact,
        "wamid.shift.1",
        now_ms() - DAY_MS + 2_500,
        "x",
    );
    d.recorder.script(
        &m.id,
        answer(vec![text("inside the window"), template("follow_up")]),
    );
    d.graph.push(Answer::Ok);
    for _ in 0..4 {
        d.graph.push(Answer::server_error());
    }
    d.enqueue(&[&m]).await;

    let reqs = wait_requests(&d.graph, MESSAGES, 6, Duration::from_secs(20)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let sent: Vec<(String, String)> = reqs
        .iter()
        .map(|r| {
            (
                key_of(r).to_string(),
                r.body["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(sent[0], ("wamid.shift.1:0".to_string(), "text".to_string()));
    assert!(
        sent[1..]
            .iter()
            .all(|(k, t)| k == "wamid.shift.1:1" && t == "template"),
        "{sent:?}"
    );
    assert_eq!(sent.len(), 6, "four failures, then the template: {sent:?}");
    assert!(d
        .outbox(WABA, "wamid.shift.1:1")
        .await
        .unwrap()
        .starts_with("sent:"));
    assert_eq!(
        d.recorder
            .calls()
            .iter()
            .filter(|c| c.event_id == m.id)
            .count(),
        1,
        "the event was handled once"
    );
}

/// A forward bot's answer is hostile input: one asking for more replies than `[bot]
/// max_replies`, or larger than `max_answer_bytes`, is refused whole — the event is
/// dead-lettered with the reason, nothing reaches the customer — and the conversation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_forward_answer_is_dead_lettered_and_nothing_is_sent() {
    let d = Deployment::new(Opts::default()).await;
    let contact = "16505550050";
    let flood = message(WABA, contact, "wamid.flood.1", now_ms(), "a");
    let huge = message(WABA, contact, "wamid.huge.1", now_ms(), "b");
    let fine = message(WABA, contact, "wamid.fine.1", now_ms(), "c");
    let many: Vec<Value> = (0..21).map(|i| text(&format!("part {i}"))).collect();
    d.recorder.script(&flood.id, answer(many));
    d.recorder.script(
        &huge.id,
        Script::Answer(json!({"replies": [text("hi")], "state": {"blob": "x".repeat(1_100_000)}})),
    );
    d.recorder.script(&fine.id, answer(vec![text("after")]));
    d.enqueue(&[&flood, &huge, &fine]).await;
    let _w = d.spawn_worker("w0");

    let reqs = wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(20)).await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys: Vec<&str> = reqs.iter().map(key_of).collect();
    assert_eq!(
        keys,
        ["wamid.fine.1:0"],
        "only the sane answer's reply left"
    );
    assert_eq!(d.graph.requests_to(MESSAGES).len(), 1);
    let dead = d.queue.dead_letters(WABA, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let error_of = |id: &str| {
        dead.iter()
            .find(|l| l.payload.contains(id))
            .map(|l| l.error.clone())
            .unwrap_or_default()
    };
    let e = error_of("wamid.flood.1");
    assert!(e.contains("21 replies") && e.contains("max_replies"), "{e}");
    let e = error_of("wamid.huge.1");
    assert!(
        e.contains("larger than") && e.contains("max_answer_bytes"),
        "{e}"
    );
    // Refused answers are not retried: the bot was asked once for each.
    let calls = d.recorder.calls();
    for id in [&flood.id, &huge.id] {
        assert_eq!(
            calls.iter().filter(|c| &c.event_id == id).count(),
            1,
            "{id}"
        );
    }
    assert!(d
        .state(WABA, contact)
        .await
        .is_some_and(|s| s.get("bot_state").is_none()));
}
