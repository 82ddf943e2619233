//! The outbound queue end to end: handling an event ends with one commit that queues the bot's
//! replies in the customer's **lane**, and the lane sender of every `work` process delivers
//! them. Real `coexist work` / `serve` processes on a real Redis, the recorder as the forward
//! bot, the fake Graph API / fake WAHA recording every request with its arrival time.
//!
//! 1. one chatty customer waiting for its pair gap never delays 200 other customers;
//! 2. the same on a Personal channel (per-chat gap): another chat is not paced behind chat A;
//! 3. a free-form reply whose window closed while it waited in its lane is refused at send
//!    time, becomes `failed` / `window_closed`, and its `outbound.failed` event reaches the bot,
//!    whose answer (a template) is sent;
//! 4. the lifecycle record of a reply moves queued → sending → sent → delivered → read through
//!    signed status webhooks, never back, and a status naming no recipient still finds it.
//!
//! The tests hold one lock while they run: their timing figures (latencies, gaps) are not
//! disturbed by another test of this file loading the same two cores.

mod deploy;
mod fakes;
mod recorder;
mod support;

use deploy::*;

use coexist::event::Event;
use coexist::queue::QueueBackend;
use coexist::routing::partition_of;
use fakes::Recorded;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------ helpers

/// The lifecycle record of an outbound message (`HGETALL keys.out_record(channel, id)`).
async fn out_record(d: &Deployment, channel: &str, id: &str) -> HashMap<String, String> {
    let mut con = support::connection(&d.redis_url).await;
    redis::cmd("HGETALL")
        .arg(d.keys.out_record(channel, id))
        .query_async(&mut con)
        .await
        .unwrap()
}

/// The statuses of a record's `hist` ("status:ms,…"), oldest first.
fn hist_statuses(rec: &HashMap<String, String>) -> Vec<String> {
    rec.get("hist")
        .map(|h| {
            h.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.split(':').next().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the record of `id` has reached `st`, and returns it.
async fn wait_record(
    d: &Deployment,
    channel: &str,
    id: &str,
    st: &str,
    timeout: Duration,
) -> HashMap<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let rec = out_record(d, channel, id).await;
        if rec.get("st").map(String::as_str) == Some(st) {
            return rec;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for record {id} at {st}; now {rec:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Percentile `p` (0..=100) of sorted values.
fn percentile(sorted: &[u128], p: usize) -> u128 {
    let i = ((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// One element of a Meta status webhook's `statuses[]`.
fn meta_status(
    wamid: &str,
    name: &str,
    timestamp_s: i64,
    recipient: Option<&str>,
    callback_key: Option<&str>,
) -> Value {
    let mut s = json!({"id": wamid, "status": name, "timestamp": timestamp_s.to_string()});
    if let Some(r) = recipient {
        s["recipient_id"] = json!(r);
    }
    if let Some(k) = callback_key {
        s["biz_opaque_callback_data"] = json!(k);
    }
    if name == "failed" {
        s["errors"] = json!([{"code": 131026, "title": "Message undeliverable"}]);
    }
    s
}

/// Requests to the fake Graph API whose outbox key starts with `prefix`, in arrival order.
fn graph_sends(d: &Deployment, prefix: &str) -> Vec<Recorded> {
    d.graph
        .requests_to(MESSAGES)
        .into_iter()
        .filter(|r| key_of(r).starts_with(prefix))
        .collect()
}

// ------------------------------------------------------------------ 1. isolation (WABA)

/// One customer writes 40 messages in a burst (one reply each): 10 leave at once, then its lane
/// waits 6 s per message (the default pair rate). 200 other customers write right after: each
/// reply reaches Graph within 1 s of its event being queued, and every event reached the bot once.
///
/// The channel rate is raised to 1000/s: at the default 80/s (burst 80) the 210 replies of the
/// first second cannot all leave within one second whatever the lanes do (the 210th slot is
/// 1.6 s away). The pair rate is the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_waiting_for_its_pair_gap_never_delays_two_hundred_others() {
    const CHATTY: usize = 40;
    const OTHERS: usize = 200;
    let _serial = SERIAL.lock().await;
    let d = Deployment::new(Opts {
        waba: "send_rate_per_second = 1000",
        ..Opts::default()
    })
    .await;
    assert_eq!(d.waba_partitions, 4);
    d.recorder.answer_all(json!({"replies": [text("thanks")]}));
    let _w0 = d.spawn_worker("w0");
    let _w1 = d.spawn_worker("w1");
    d.wait_leased(2).await;
    // Warm up (connections, scripts loaded): one reply through each worker's partitions.
    let warm: Vec<Event> = (0..8)
        .map(|i| {
            message(
                WABA,
                &format!("1666000{i:04}"),
                &format!("wamid.warm.{i}"),
                now_ms(),
                "hi",
            )
        })
        .collect();
    d.enqueue(&warm.iter().collect::<Vec<_>>()).await;
    wait_requests(&d.graph, MESSAGES, warm.len(), Duration::from_secs(15)).await;

    let chatty = "16505550100";
    let now = now_ms();
    let burst: Vec<Event> = (0..CHATTY)
        .map(|i| {
            message(
                WABA,
                chatty,
                &format!("wamid.chatty.{i:02}"),
                now + i as i64,
                &format!("m{i}"),
            )
        })
        .collect();
    d.enqueue(&burst.iter().collect::<Vec<_>>()).await;
    let others: Vec<Event> = (0..OTHERS)
        .map(|i| {
            message(
                WABA,
                &format!("1777000{i:04}"),
                &format!("wamid.other.{i:03}"),
                now_ms(),
                "one question",
            )
        })
        .collect();
    let chatty_partition = partition_of(chatty, d.waba_partitions);
    let behind_chatty = others
        .iter()
        .filter(|e| partition_of(&e.conversation, d.waba_partitions) == chatty_partition)
        .count();
    let mut enqueued = Vec::with_capacity(OTHERS);
    for e in &others {
        enqueued.push(Instant::now());
        d.enqueue(&[e]).await;
    }

    // Every other customer's reply, and its latency from our enqueue to the fake's arrival.
    support::eventually(
        Duration::from_secs(15),
        "a reply to every other customer",
        || async { (graph_sends(&d, "wamid.other.").len() >= OTHERS).then_some(()) },
    )
    .await;
    let sent = graph_sends(&d, "wamid.other.");
    let mut latencies: Vec<u128> = others
        .iter()
        .zip(&enqueued)
        .map(|(e, at)| {
            let key = format!("{}:0", e.id);
            let r = sent
                .iter()
                .find(|r| key_of(r) == key)
                .unwrap_or_else(|| panic!("no reply {key}"));
            r.at.saturating_duration_since(*at).as_millis()
        })
        .collect();
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        *latencies.last().unwrap(),
    );
    println!(
        "{OTHERS} other customers ({behind_chatty} in the chatty customer's partition): \
         enqueue → Graph p50 {p50} ms, p99 {p99} ms, max {max} ms"
    );
    assert!(
        max < 1_000,
        "every other customer's reply within 1 s: p50 {p50} ms, p99 {p99} ms, max {max} ms"
    );

    // The chatty customer: in order, 10 at once, then one per pair gap (6 s).
    let c = wait_requests_prefixed(&d, "wamid.chatty.", 12, Duration::from_secs(20)).await;
    let keys: Vec<&str> = c.iter().map(key_of).collect();
    let want: Vec<String> = (0..12).map(|i| format!("wamid.chatty.{i:02}:0")).collect();
    assert_eq!(keys, want, "the chatty customer's replies in event order");
    let burst_ms = ms_between(&c[0], &c[9]);
    let to_11th = ms_between(&c[0], &c[10]);
    let gap_12th = ms_between(&c[10], &c[11]);
    println!(
        "chatty customer: first 10 within {burst_ms} ms, 11th {to_11th} ms after the 1st, \
         12th {gap_12th} ms after the 11th (pair gap 6000 ms, burst 10)"
    );
    assert!(
        burst_ms < 1_000,
        "the burst of 10 leaves at once: {burst_ms} ms"
    );
    assert!(
        (5_900..7_000).contains(&to_11th),
        "the 11th waits for the pair gap: {to_11th} ms after the 1st"
    );
    assert!(
        gap_12th >= 5_900,
        "the 12th waits another gap: {gap_12th} ms"
    );
    assert_eq!(
        graph_sends(&d, "wamid.chatty.").len(),
        12,
        "nothing of the chatty customer left before its gap"
    );
    // Its lane is set aside, waiting for the pair gap.
    let mut con = support::connection(&d.redis_url).await;
    let wait: Option<String> = redis::cmd("HGET")
        .arg(d.keys.out_wait(WABA))
        .arg(chatty)
        .query_async(&mut con)
        .await
        .unwrap();
    let remaining: u64 = redis::cmd("LLEN")
        .arg(d.keys.out_lane(WABA, chatty))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(wait.as_deref(), Some("pair_gap"));
    assert_eq!(
        remaining,
        (CHATTY - 12) as u64,
        "the rest waits in the lane"
    );

    // The bot saw every event exactly once (no redelivery), each answered 200.
    let calls = d.recorder.calls();
    let mut per_event: HashMap<&str, usize> = HashMap::new();
    for call in &calls {
        *per_event.entry(call.event_id.as_str()).or_default() += 1;
    }
    for e in warm.iter().chain(&burst).chain(&others) {
        assert_eq!(
            per_event.get(e.id.as_str()).copied(),
            Some(1),
            "event {} reached the bot once",
            e.id
        );
    }
    assert_eq!(calls.len(), warm.len() + CHATTY + OTHERS, "no other call");
    assert!(calls.iter().all(|c| c.status == 200));
    // Two workers, one channel: no reply left twice.
    let reqs = d.graph.requests_to(MESSAGES);
    let mut all_keys: Vec<&str> = reqs.iter().map(key_of).collect();
    all_keys.sort();
    let n = all_keys.len();
    all_keys.dedup();
    assert_eq!(all_keys.len(), n, "a reply was sent twice");
    assert!(d.queue.dead_letters(WABA, 10).await.unwrap().is_empty());
}

async fn wait_requests_prefixed(
    d: &Deployment,
    prefix: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Recorded> {
    support::eventually(timeout, &format!("{n} sends of {prefix}*"), || async {
        let r = graph_sends(d, prefix);
        (r.len() >= n).then_some(r)
    })
    .await
}

// ------------------------------------------------------------------ 2. isolation (Personal)

/// Chat A's event makes the bot answer 20 texts, paced 1 s apart (per-chat gap). Chat B, on the
/// same partition, writes once A's stream has started: its reply arrives within 1 s, between
/// two of A's, and A's replies stay in order, each at least the gap after the previous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_another_chat_is_not_paced_behind_a_chat_with_twenty_replies() {
    const N: usize = 20;
    const GAP_MS: u128 = 1_000;
    let _serial = SERIAL.lock().await;
    let d = Deployment::new(Opts {
        personal: "pair_gap_ms = 1000\njitter_ms = 0\nmax_per_minute = 0",
        ..Opts::default()
    })
    .await;
    let chats: Vec<String> = (0..50)
        .map(|i| format!("4917100000{i:02}@s.whatsapp.net"))
        .collect();
    let a = chats[0].clone();
    // Same partition: handling B's event never waits for A's sends either.
    let b = chats[1..]
        .iter()
        .find(|c| partition_of(c, PERSONAL_PARTITIONS) == partition_of(&a, PERSONAL_PARTITIONS))
        .unwrap()
        .clone();
    let ma = message(PERSONAL, &a, "waha:LANE-A", now_ms(), "tell me everything");
    let mb = message(PERSONAL, &b, "waha:LANE-B", now_ms(), "quick one");
    d.recorder.script(
        &ma.id,
        answer((0..N).map(|i| text(&format!("a{i}"))).collect()),
    );
    d.recorder.script(&mb.id, answer(vec![text("b0")]));
    let _w = d.spawn_worker("w0");
    d.wait_leased(1).await;

    let c_us = |chat: &str| chat.replace("@s.whatsapp.net", "@c.us");
    let sends_to = |chat: &str| -> Vec<Recorded> {
        let id = c_us(chat);
        d.waha
            .requests_to("/api/sendText")
            .into_iter()
            .filter(|r| r.body["chatId"] == id.as_str())
            .collect()
    };
    d.enqueue(&[&ma]).await;
    // B writes while A's lane is mid-stream (its second text has left).
    support::eventually(Duration::from_secs(15), "A's second text", || async {
        (sends_to(&a).len() >= 2).then_some(())
    })
    .await;
    let b_enqueued = Instant::now();
    d.enqueue(&[&mb]).await;
    let sb = support::eventually(Duration::from_secs(10), "B's reply", || async {
        let s = sends_to(&b);
        (!s.is_empty()).then_some(s)
    })
    .await;
    let b_latency = sb[0].at.duration_since(b_enqueued).as_millis();

    wait_requests(&d.waha, "/api/sendText", N + 1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sa = sends_to(&a);
    let texts: Vec<&str> = sa
        .iter()
        .map(|r| r.body["text"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("a{i}")).collect();
    assert_eq!(texts, want, "A's replies in order, once each");
    assert_eq!(sends_to(&b).len(), 1);
    let gaps: Vec<u128> = sa.windows(2).map(|w| ms_between(&w[0], &w[1])).collect();
    println!(
        "Personal: B's reply {b_latency} ms after its enqueue; A's {N} replies gaps min {} ms, \
         max {} ms (pair_gap_ms {GAP_MS}): {gaps:?}",
        gaps.iter().min().unwrap(),
        gaps.iter().max().unwrap()
    );
    assert!(
        b_latency < 1_000,
        "B's reply waited {b_latency} ms behind chat A"
    );
    assert!(
        sb[0].at < sa[2].at,
        "B's reply arrives before A's third (A waits for its gap, B does not)"
    );
    for g in &gaps {
        assert!(
            *g >= GAP_MS - 50,
            "per-chat gap {g} ms < {GAP_MS}: {gaps:?}"
        );
    }
    assert_eq!(d.graph.count(), 0);
    assert_eq!(
        d.recorder.calls().len(),
        2,
        "each event reached the bot once"
    );
}

// ------------------------------------------------------------------ 3. refused at send time

/// The window closes 2 s after the customer's message; the bot answers 11 texts and the pair
/// gap is 4 s: 10 leave at once, the 11th waits in its lane past the window's end. At send time
/// it is refused (`failed` / `window_closed`, no request), the bot receives `outbound.failed`
/// for it and answers with a template, which is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_window_closed_while_queued_fails_and_the_bots_template_is_sent() {
    let _serial = SERIAL.lock().await;
    let d = Deployment::new(Opts {
        waba: "pair_gap_ms = 4000",
        ..Opts::default()
    })
    .await;
    let _w = d.spawn_worker("w0");
    d.wait_leased(1).await;
    let contact = "16505550301";
    let m = message(WABA, contact, "wamid.wc.1", now_ms() - DAY_MS + 2_000, "hi");
    let closes = Instant::now() + Duration::from_millis(2_000);
    let late_id = "wamid.wc.1:10";
    let failed_event = format!("outbound.failed:{late_id}");
    d.recorder.script(
        &m.id,
        answer((0..11).map(|i| text(&format!("part {i}"))).collect()),
    );
    d.recorder
        .script(&failed_event, answer(vec![template("reengage")]));
    d.enqueue(&[&m]).await;

    let reqs = wait_requests(&d.graph, MESSAGES, 11, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reqs_now = d.graph.requests();
    assert_eq!(
        reqs_now.len(),
        11,
        "10 texts and the template, nothing else"
    );
    let keys: Vec<&str> = reqs.iter().map(key_of).collect();
    let want: Vec<String> = (0..10)
        .map(|i| format!("wamid.wc.1:{i}"))
        .chain([format!("{failed_event}:0")])
        .collect();
    assert_eq!(keys, want);
    assert!(
        reqs.iter().all(|r| key_of(r) != late_id),
        "the refused message never reached Graph"
    );
    assert!(reqs[..10].iter().all(|r| r.body["type"] == "text"));
    let t = &reqs[10];
    assert_eq!(t.body["type"], "template");
    assert_eq!(t.body["template"]["name"], "reengage");
    assert_eq!(t.body["to"], "+16505550301");
    assert!(t.at > closes, "the template left after the window closed");
    let burst = ms_between(&reqs[0], &reqs[9]);
    let to_template = ms_between(&reqs[0], t);
    println!("10 texts within {burst} ms; the template {to_template} ms after the first");
    assert!(burst < 1_000, "the burst of 10 leaves at once: {burst} ms");

    // The refused message's record.
    let rec = wait_record(&d, WABA, late_id, "failed", Duration::from_secs(5)).await;
    println!("record of {late_id}: {rec:?}");
    assert_eq!(rec.get("ecode").map(String::as_str), Some("window_closed"));
    assert!(!rec.contains_key("wamid"), "never sent: {rec:?}");
    assert_eq!(
        hist_statuses(&rec).last().map(String::as_str),
        Some("failed")
    );
    assert!(!hist_statuses(&rec).iter().any(|s| s == "sent"), "{rec:?}");
    for i in 0..10 {
        let r = out_record(&d, WABA, &format!("wamid.wc.1:{i}")).await;
        assert_eq!(r.get("st").map(String::as_str), Some("sent"), "{i}: {r:?}");
    }
    wait_record(
        &d,
        WABA,
        &format!("{failed_event}:0"),
        "sent",
        Duration::from_secs(5),
    )
    .await;

    // The bot was told, once, through the conversation's partition.
    let calls = d.recorder.calls();
    let told: Vec<_> = calls
        .iter()
        .filter(|c| c.event_type() == "outbound.failed")
        .collect();
    assert_eq!(
        told.len(),
        1,
        "{:?}",
        calls.iter().map(|c| &c.event_id).collect::<Vec<_>>()
    );
    let f = told[0];
    assert_eq!(f.event_id, failed_event);
    assert_eq!(f.event["id"], failed_event.as_str());
    assert_eq!(f.conversation(), contact);
    assert!(f.signature_ok);
    let o = &f.event["outbound"];
    assert_eq!(o["id"], late_id, "{o}");
    assert_eq!(o["code"], "window_closed", "{o}");
    assert_eq!(o["message"]["type"], "text", "{o}");
    assert_eq!(o["message"]["text"], "part 10", "{o}");
    assert!(o["error"].as_str().is_some_and(|e| !e.is_empty()), "{o}");
    assert_eq!(
        calls.iter().filter(|c| c.event_id == m.id).count(),
        1,
        "the message event was handled once"
    );
    assert!(d.queue.dead_letters(WABA, 10).await.unwrap().is_empty());
}

// ------------------------------------------------------------------ 4. lifecycle

/// A reply is sent; Meta's status webhooks (signed, through `coexist serve`) say delivered,
/// read, then a late `sent` and a `failed`: the record ends `read` with the history
/// queued → sending → sent → delivered → read. A second reply's `delivered` status names no
/// recipient and carries no callback key: the wamid index still finds the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_webhooks_move_the_record_forward_never_back() {
    let _serial = SERIAL.lock().await;
    let d = Deployment::new(Opts::default()).await;
    let _ingress = d.spawn("serve", "serve");
    let _w = d.spawn_worker("w0");
    wait_serving(&d).await;
    d.wait_leased(1).await;
    let contact = "16505550401";
    let m = message(WABA, contact, "wamid.life.1", now_ms(), "hi");
    let id = "wamid.life.1:0";
    d.recorder.script(&m.id, answer(vec![text("tracked")]));
    d.enqueue(&[&m]).await;

    wait_requests(&d.graph, MESSAGES, 1, Duration::from_secs(15)).await;
    let rec = wait_record(&d, WABA, id, "sent", Duration::from_secs(5)).await;
    let wamid = rec.get("wamid").cloned().expect("the wamid Graph returned");
    assert!(wamid.starts_with("wamid.fake"), "{rec:?}");
    assert_eq!(hist_statuses(&rec), ["queued", "sending", "sent"]);
    assert_eq!(rec.get("to").map(String::as_str), Some(contact));

    let ts = now_ms() / 1000;
    post_statuses(
        &d,
        vec![meta_status(
            &wamid,
            "delivered",
            ts,
            Some(contact),
            Some(id),
        )],
    )
    .await;
    wait_record(&d, WABA, id, "delivered", Duration::from_secs(10)).await;
    post_statuses(
        &d,
        vec![meta_status(&wamid, "read", ts + 1, Some(contact), Some(id))],
    )
    .await;
    wait_record(&d, WABA, id, "read", Duration::from_secs(10)).await;
    // Late and out of order: a `sent` and a `failed` after `read` (one webhook).
    post_statuses(
        &d,
        vec![
            meta_status(&wamid, "sent", ts - 1, Some(contact), Some(id)),
            meta_status(&wamid, "failed", ts + 2, Some(contact), Some(id)),
        ],
    )
    .await;
    let late = [format!("{wamid}:sent"), format!("{wamid}:failed")];
    d.recorder
        .wait_for("the late statuses handled", Duration::from_secs(10), |c| {
            late.iter().all(|l| c.iter().any(|c| &c.event_id == l))
        })
        .await;
    d.wait_drained(WABA, contact, Duration::from_secs(10)).await;
    let rec = out_record(&d, WABA, id).await;
    println!("record after delivered, read, late sent, late failed: {rec:?}");
    assert_eq!(rec.get("st").map(String::as_str), Some("read"), "{rec:?}");
    assert_eq!(
        hist_statuses(&rec),
        ["queued", "sending", "sent", "delivered", "read"],
        "{rec:?}"
    );
    assert_eq!(rec.get("wamid"), Some(&wamid));
    assert!(
        !rec.contains_key("ecode"),
        "a failed after read changes nothing: {rec:?}"
    );
    // Every status reached the bot, in order, once.
    let status_calls: Vec<String> = d
        .recorder
        .calls()
        .into_iter()
        .filter(|c| c.event_type() == "status")
        .map(|c| c.event_id)
        .collect();
    assert_eq!(
        status_calls,
        [
            format!("{wamid}:delivered"),
            format!("{wamid}:read"),
            format!("{wamid}:sent"),
            format!("{wamid}:failed"),
        ]
    );

    // A second reply; its status names no recipient and carries no callback key.
    let m2 = message(WABA, contact, "wamid.life.2", now_ms(), "again");
    let id2 = "wamid.life.2:0";
    d.recorder.script(&m2.id, answer(vec![text("tracked too")]));
    d.enqueue(&[&m2]).await;
    let rec2 = wait_record(&d, WABA, id2, "sent", Duration::from_secs(10)).await;
    let wamid2 = rec2.get("wamid").cloned().unwrap();
    assert_ne!(wamid2, wamid);
    post_statuses(
        &d,
        vec![meta_status(
            &wamid2,
            "delivered",
            now_ms() / 1000,
            None,
            None,
        )],
    )
    .await;
    let rec2 = wait_record(&d, WABA, id2, "delivered", Duration::from_secs(10)).await;
    assert_eq!(
        hist_statuses(&rec2),
        ["queued", "sending", "sent", "delivered"]
    );
    let ev = format!("{wamid2}:delivered");
    d.recorder
        .wait_for(
            "the anonymous status at the bot",
            Duration::from_secs(10),
            |c| c.iter().any(|c| c.event_id == ev),
        )
        .await;
    let call = d
        .recorder
        .calls()
        .into_iter()
        .find(|c| c.event_id == ev)
        .unwrap();
    assert_eq!(
        call.conversation(),
        contact,
        "the wamid index named the conversation: {}",
        call.event
    );
    assert_eq!(
        d.graph.requests_to(MESSAGES).len(),
        2,
        "no status sent anything"
    );
    assert!(d.queue.dead_letters(WABA, 10).await.unwrap().is_empty());
}
