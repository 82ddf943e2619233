//! Broadcasts end to end (DESIGN.md, "The send API"): real `coexist serve` / `work` processes
//! (and the CLI) on a real Redis, the fake Graph API and fake WAHA recording every request
//! with its arrival time, the recorder as the forward bot.
//!
//! The harness's config has no `[api]` table: [`deploy`] appends one (`keys =
//! ["${COEXIST_API_KEY}"]`) and every process gets the key through its environment.
//!
//! 1. 10,000 recipients at 200/s, a worker killed twice: each recipient once, the rate held;
//! 2. Meta's messaging limit: 1,000 unique customers a day, the rest wait for the window to roll;
//!    replies inside a window never count;
//! 3. skips at send time: handover, opted out (and back in), listed twice;
//! 4. cancel mid-run;
//! 5. Personal: no templates, a warning above 200 recipients, texts paced;
//! 6. 100,000 recipients as NDJSON;
//! 7. status webhooks move a broadcast's messages and counts;
//! 8. `coexist broadcast create | status | cancel`.
//!
//! The first test measures a rate: it runs alone ([`EXCLUSIVE`]); the others share the
//! machine with each other.

mod deploy;
mod fakes;
mod recorder;
mod support;

use deploy::*;

use coexist::event::EventType;
use fakes::{FakeServer, Recorded};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use support::Proc;

const API_KEY: &str = "cx-broadcast-e2e-key-5b7e21";
const API_ENV: [(&str, &str); 1] = [("COEXIST_API_KEY", API_KEY)];
const HOUR_MS: i64 = 3_600_000;

/// The rate test takes it for writing (alone on the machine); every other test reads.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ------------------------------------------------------------------ deployment helpers

/// The harness's deployment with an `[api]` table appended to its config.
async fn deploy(opts: Opts) -> Deployment {
    use std::io::Write;
    let d = Deployment::new(opts).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.config)
        .unwrap();
    f.write_all(b"\n[api]\nkeys = [\"${COEXIST_API_KEY}\"]\n")
        .unwrap();
    d
}

/// `coexist <sub>` with the API key in its environment.
fn spawn(d: &Deployment, sub: &str, name: &str) -> Proc {
    d.spawn_env(sub, name, &API_ENV)
}

/// `coexist <args>` with the API key in its environment (`--config` is the caller's).
fn cli(d: &Deployment, args: &[&str]) -> Output {
    let mut cmd = d.command();
    cmd.env("COEXIST_API_KEY", API_KEY);
    cmd.args(args).output().unwrap()
}

fn config(d: &Deployment) -> &str {
    d.config.to_str().unwrap()
}

/// `coexist queues --json`.
fn queues(d: &Deployment) -> Vec<Value> {
    let out = cli(d, &["queues", "--json", "--config", config(d)]);
    assert!(
        out.status.success(),
        "coexist queues: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array().unwrap().clone()
}

/// Every partition of every channel has a lease holder.
async fn wait_leased(d: &Deployment) {
    support::eventually(Duration::from_secs(20), "partitions leased", || async {
        queues(d)
            .iter()
            .all(|r| r["lease_owner"].as_str().is_some())
            .then_some(())
    })
    .await;
}

// ------------------------------------------------------------------ HTTP helpers

#[derive(Debug)]
struct Res {
    status: u16,
    body: Value,
}

impl Res {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn call(d: &Deployment, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Res {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", d.listen))
        .header("authorization", format!("Bearer {API_KEY}"));
    if let Some((content_type, bytes)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    let res = req
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Res { status, body }
}

fn broadcasts_path(channel: &str) -> String {
    format!("/v1/channels/{channel}/broadcasts")
}

async fn create_json(d: &Deployment, channel: &str, body: &Value) -> Res {
    let bytes = body.to_string().into_bytes();
    call(
        d,
        "POST",
        &broadcasts_path(channel),
        Some(("application/json", bytes)),
    )
    .await
}

async fn create_ndjson(d: &Deployment, channel: &str, body: String) -> Res {
    call(
        d,
        "POST",
        &broadcasts_path(channel),
        Some(("application/x-ndjson", body.into_bytes())),
    )
    .await
}

/// A 202 answer's broadcast id (checked: `bc-…`, state running).
fn accepted(r: &Res, total: u64) -> String {
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["total"], total, "{r:?}");
    assert_eq!(r.body["state"], "running", "{r:?}");
    let id = r.body["id"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with("bc-") && id.len() > 10, "{r:?}");
    id
}

/// `GET …/broadcasts/{id}` (must answer 200).
async fn get_broadcast(d: &Deployment, channel: &str, id: &str) -> Value {
    let r = call(
        d,
        "GET",
        &format!("{}/{id}", broadcasts_path(channel)),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["id"], id);
    assert_eq!(r.body["channel"], channel);
    r.body
}

async fn cancel(d: &Deployment, channel: &str, id: &str) -> Res {
    call(
        d,
        "POST",
        &format!("{}/{id}/cancel", broadcasts_path(channel)),
        None,
    )
    .await
}

/// `GET …/messages/{id}` (must answer 200).
async fn get_message(d: &Deployment, channel: &str, id: &str) -> Value {
    let r = call(
        d,
        "GET",
        &format!("/v1/channels/{channel}/messages/{id}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{id}: {r:?}");
    r.body
}

/// The view's counts.
fn counts(v: &Value) -> BTreeMap<String, u64> {
    v["counts"]
        .as_object()
        .unwrap_or_else(|| panic!("no counts: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

fn expect_counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let mut all: BTreeMap<String, u64> =
        ["queued", "sent", "delivered", "read", "failed", "skipped"]
            .iter()
            .map(|k| (k.to_string(), 0))
            .collect();
    for (k, n) in pairs {
        all.insert(k.to_string(), *n);
    }
    all
}

/// The counts add up to the total.
fn assert_adds_up(v: &Value) {
    let c = counts(v);
    assert_eq!(c.len(), 6, "{v}");
    assert_eq!(c.values().sum::<u64>(), v["total"].as_u64().unwrap(), "{v}");
}

async fn wait_broadcast(
    d: &Deployment,
    channel: &str,
    id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let v = get_broadcast(d, channel, id).await;
        assert_adds_up(&v);
        if done(&v) {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One element of a Meta status webhook's `statuses[]`.
fn meta_status(wamid: &str, name: &str, recipient: &str, callback: Option<&str>) -> Value {
    let mut s = json!({"id": wamid, "status": name,
                       "timestamp": (now_ms() / 1000).to_string(), "recipient_id": recipient});
    if let Some(k) = callback {
        s["biz_opaque_callback_data"] = json!(k);
    }
    s
}

/// A customer writes `text` at `at`; waits until the worker handled it.
async fn customer_writes(d: &Deployment, customer: &str, id: &str, at: i64, text: &str) {
    let m = message(WABA, customer, id, at, text);
    d.enqueue(&[&m]).await;
    d.wait_drained(WABA, customer, Duration::from_secs(15))
        .await;
}

// ------------------------------------------------------------------ what the fakes saw

/// The `to` of every message request at the fake Graph API, with how often.
fn per_recipient(reqs: &[Recorded]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in reqs {
        *m.entry(r.body["to"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    m
}

async fn wait_count(fake: &FakeServer, n: usize, timeout: Duration) {
    let start = Instant::now();
    while fake.count() < n {
        assert!(
            start.elapsed() < timeout,
            "{} requests after {timeout:?}, waiting for {n}",
            fake.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Arrivals per second in `[from, to)`.
fn rate_in(arrivals: &[Instant], from: Instant, to: Instant) -> (usize, f64) {
    let n = arrivals.iter().filter(|t| **t >= from && **t < to).count();
    (n, n as f64 / to.duration_since(from).as_secs_f64())
}

/// The longest gap between two arrivals inside `[from, to)`.
fn longest_gap(arrivals: &[Instant], from: Instant, to: Instant) -> Duration {
    arrivals
        .windows(2)
        .filter(|w| w[0] >= from && w[1] < to)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// Meta's part after a worker died: a `sent` status (carrying the outbox key in
/// `biz_opaque_callback_data`, as Meta echoes it) for every message the fake accepted in the
/// 3 s before the kill. Those include the ones the dead worker sent without recording;
/// without a status such a message is sent again once `inflight_wait_ms` passes — by design
/// (DESIGN.md: the crash window is closed by the status). Statuses for messages already
/// recorded change nothing.
async fn statuses_after_kill(d: &Deployment, killed_at: Instant) -> usize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = d.graph.requests();
    let since = killed_at - Duration::from_secs(3);
    let statuses: Vec<Value> = all
        .iter()
        .enumerate()
        .filter(|(_, r)| r.at >= since && r.path.ends_with(MESSAGES))
        .map(|(i, r)| {
            // The fake answers `wamid.fake<N>` in arrival order.
            let to = r.body["to"].as_str().unwrap().trim_start_matches('+');
            meta_status(&format!("wamid.fake{}", i + 1), "sent", to, Some(key_of(r)))
        })
        .collect();
    let n = statuses.len();
    for chunk in statuses.chunks(500) {
        post_statuses(d, chunk.to_vec()).await;
    }
    n
}

async fn hgetall(d: &Deployment, key: &str) -> HashMap<String, String> {
    let mut con = support::connection(&d.redis_url).await;
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap()
}

/// The stored record (`out:rec:<id>`) of each message id, in one pipeline.
async fn records(d: &Deployment, channel: &str, ids: &[String]) -> Vec<HashMap<String, String>> {
    let mut con = support::connection(&d.redis_url).await;
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(d.keys.out_record(channel, id));
    }
    pipe.query_async(&mut con).await.unwrap()
}

fn status_counts(recs: &[HashMap<String, String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in recs {
        *m.entry(r.get("st").cloned().unwrap_or_else(|| "-".into()))
            .or_insert(0) += 1;
    }
    m
}

// ------------------------------------------------------------------ 1. 10,000 at 200/s

/// 10,000 recipients at `send_rate_per_second = 200`, two workers, one of them killed with
/// SIGKILL twice mid-run and started again. Each recipient gets exactly one request (with
/// their own parameter), the counts add up (`sent == 10000`, `done`), and the fake's arrival
/// times show 200/s within 5 % in each stretch without a kill.
///
/// How the rate is measured: arrivals per second at the fake Graph API in three windows that
/// contain no kill: from 2 s after the first request (the channel bucket's initial burst of
/// 200 is left out) to 0.5 s before the first kill; from 3 s after the first kill (lanes of the
/// dead worker come back after `lane_lease_ms = 1500`) to 0.5 s before the second; from 3 s
/// after the second kill to 1 s before the last request. The overall rate and the longest gap
/// around each kill are printed as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_at_200_per_second_through_two_worker_kills_each_recipient_once() {
    let _alone = EXCLUSIVE.write().await;
    const N: usize = 10_000;
    let d = deploy(Opts {
        waba: "send_rate_per_second = 200",
        sending: "lane_lease_ms = 1500\ninflight_wait_ms = 8000",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    let mut w1 = spawn(&d, "work", "w1");
    let _w2 = spawn(&d, "work", "w2");
    wait_serving(&d).await;
    wait_leased(&d).await;

    let to_of = |i: usize| format!("+1555{i:07}");
    let mut body = json!({"name": "ten thousand",
        "message": {"type": "template", "name": "spring_sale", "language": "en_US"}})
    .to_string();
    for i in 0..N {
        body.push('\n');
        body.push_str(&json!({"to": to_of(i), "params": [format!("n{i}")]}).to_string());
    }
    let created = Instant::now();
    let r = create_ndjson(&d, WABA, body).await;
    println!(
        "10,000 recipients accepted in {} ms",
        created.elapsed().as_millis()
    );
    let id = accepted(&r, N as u64);

    // First kill a quarter of the way, second a bit past half.
    wait_count(&d.graph, 2_400, Duration::from_secs(60)).await;
    w1.kill9();
    let kill1 = Instant::now();
    let mut w1b = spawn(&d, "work", "w1b");
    let in_doubt1 = statuses_after_kill(&d, kill1).await;
    wait_count(&d.graph, 5_600, Duration::from_secs(60)).await;
    w1b.kill9();
    let kill2 = Instant::now();
    let _w1c = spawn(&d, "work", "w1c");
    let in_doubt2 = statuses_after_kill(&d, kill2).await;

    let done = wait_broadcast(&d, WABA, &id, Duration::from_secs(90), "done", |v| {
        v["state"] == "done"
    })
    .await;
    // Anything sent twice would arrive within the in-flight wait (8 s) of the last kill.
    let settle_until = kill2 + Duration::from_secs(10);
    if Instant::now() < settle_until {
        tokio::time::sleep(settle_until - Instant::now()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let reqs = d.graph.requests_to(MESSAGES);
    let per = per_recipient(&reqs);
    let twice: Vec<(&String, &usize)> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} recipients got more than one request, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(reqs.len(), N, "one request per recipient");
    let expected: HashSet<String> = (0..N).map(to_of).collect();
    let got: HashSet<String> = per.keys().cloned().collect();
    assert_eq!(got, expected, "every recipient, nobody else");
    for r in &reqs {
        // Message `<id>.<i>` went to recipient i, with their own parameter.
        let key = key_of(r);
        let i: usize = key
            .strip_prefix(&format!("{id}."))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("callback key {key:?}"));
        assert_eq!(r.body["to"], to_of(i), "{}", r.body);
        assert_eq!(r.body["type"], "template");
        assert_eq!(r.body["template"]["name"], "spring_sale");
        assert_eq!(
            r.body["template"]["components"],
            json!([{"type": "body", "parameters": [{"type": "text", "text": format!("n{i}")}]}]),
            "{}",
            r.body
        );
    }
    assert_eq!(
        counts(&done),
        expect_counts(&[("sent", N as u64)]),
        "{done}"
    );
    assert_eq!(done["total"], N);
    assert_eq!(done["state"], "done");
    // The kills hit a running sender: lanes were taken over.
    let logs = d.log("w2") + &d.log("w1b") + &d.log("w1c");
    assert!(
        logs.contains("took over lanes whose sender stopped"),
        "no lane was taken over"
    );
    // Nothing of it is left in Redis's queue.
    let rows = queues(&d);
    let waba = rows.iter().find(|r| r["channel"] == WABA).unwrap();
    assert_eq!(waba["outbound"]["backlog"], 0, "{waba}");

    // The rate, read off the arrival times.
    let arrivals: Vec<Instant> = reqs.iter().map(|r| r.at).collect();
    let (first, last) = (arrivals[0], *arrivals.last().unwrap());
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    let windows = [
        ("start → kill 1", first + s(2), kill1 - ms(500)),
        ("kill 1 → kill 2", kill1 + s(3), kill2 - ms(500)),
        ("kill 2 → end", kill2 + s(3), last - s(1)),
    ];
    let overall = (N - 1) as f64 / last.duration_since(first).as_secs_f64();
    println!(
        "first → last: {:.2} s, {overall:.1}/s overall (initial burst and both kills included)",
        last.duration_since(first).as_secs_f64()
    );
    println!(
        "statuses posted after the kills: {in_doubt1} and {in_doubt2}; longest gap around kill 1: {} ms, kill 2: {} ms",
        longest_gap(&arrivals, kill1 - ms(500), kill1 + s(3)).as_millis(),
        longest_gap(&arrivals, kill2 - ms(500), kill2 + s(3)).as_millis()
    );
    let mut off = Vec::new();
    for (name, from, to) in windows {
        assert!(
            to > from + s(4),
            "{name}: window too short to measure ({:?})",
            to.saturating_duration_since(from)
        );
        let (n, rate) = rate_in(&arrivals, from, to);
        println!(
            "{name}: {n} requests in {:.2} s = {rate:.1}/s ({:+.2} % of 200/s)",
            to.duration_since(from).as_secs_f64(),
            (rate - 200.0) / 2.0
        );
        if (rate - 200.0).abs() > 10.0 {
            off.push(format!("{name}: {rate:.1}/s"));
        }
    }
    assert!(off.is_empty(), "rate off by more than 5 %: {off:?}");
}

// ------------------------------------------------------------------ 2. messaging limit

/// Meta raises or lowers the limit with a `phone_number_quality_update` webhook (no
/// `phone_number_id`: it names the display number): the limit in force becomes the announced
/// tier, even over an unlimited config, `queues` shows it, and a broadcast obeys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_tier_becomes_the_limit_in_force() {
    let _shared = EXCLUSIVE.read().await;
    let d = deploy(Opts {
        waba: "send_rate_per_second = 200",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w1");
    wait_serving(&d).await;
    wait_leased(&d).await;
    let limit_of = |d: &Deployment| {
        queues(d).iter().find(|r| r["channel"] == WABA).unwrap()["messaging_limit"].clone()
    };
    assert_eq!(limit_of(&d), Value::Null, "unlimited by the config");
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "time": now_ms() / 1000, "changes": [{"field": "phone_number_quality_update", "value": {
            "display_phone_number": "15550783881", "event": "DOWNGRADE",
            "current_limit": "TIER_250", "max_daily_conversations_per_business": "TIER_250"}}]}]})
    .to_string();
    let sig = coexist::verify::header_value(
        coexist::verify::Algorithm::Sha256,
        APP_SECRET.as_bytes(),
        body.as_bytes(),
    );
    let res = reqwest::Client::new()
        .post(format!("http://{}/webhooks/meta", d.listen))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    support::eventually(Duration::from_secs(15), "the tier applied", || async {
        (limit_of(&d) == json!(250)).then_some(())
    })
    .await;

    const N: usize = 260;
    let recipients: Vec<Value> = (0..N)
        .map(|i| json!({"to": format!("+1777{i:07}")}))
        .collect();
    let r = create_json(
        &d,
        WABA,
        &json!({"name": "tier", "message": {"type": "template", "name": "promo",
                "language": "en_US"}, "recipients": recipients}),
    )
    .await;
    accepted(&r, N as u64);
    wait_count(&d.graph, 250, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let reqs = d.graph.requests_to(MESSAGES);
    assert_eq!(per_recipient(&reqs).len(), 250, "unique customers reached");
    assert_eq!(
        reqs.len(),
        250,
        "the other 10 wait for the 24 h window to roll"
    );
}

/// `messaging_limit_per_day = 1000`, a template broadcast to 1,500 customers none of whom has
/// a window: exactly 1,000 get a request, the rest wait (`queued`, `waiting.messaging_limit`).
/// A free-form reply inside an open window still leaves and is not counted. The clock is then
/// rolled a day on (the reach set's scores, and the ready time of the lanes set aside for the
/// limit, moved 24 h into the past): the remaining 500 go out, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_limit_holds_back_the_rest_until_the_day_rolls() {
    let _shared = EXCLUSIVE.read().await;
    const N: usize = 1_500;
    let d = deploy(Opts {
        waba: "send_rate_per_second = 200\nmessaging_limit_per_day = 1000",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w1");
    wait_serving(&d).await;
    wait_leased(&d).await;
    // One customer with an open window (not a recipient).
    let open = "15550009999";
    customer_writes(
        &d,
        open,
        "wamid.open.1",
        now_ms() - 60_000,
        "where is my order?",
    )
    .await;

    let to_of = |i: usize| format!("+1666{i:07}");
    let recipients: Vec<Value> = (0..N).map(|i| json!({"to": to_of(i)})).collect();
    let r = create_json(
        &d,
        WABA,
        &json!({"name": "limit", "message": {"type": "template", "name": "promo",
                "language": "en_US"}, "recipients": recipients}),
    )
    .await;
    let id = accepted(&r, N as u64);

    wait_count(&d.graph, 1_000, Duration::from_secs(60)).await;
    // Give the sender time to (wrongly) send more.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let reqs = d.graph.requests_to(MESSAGES);
    let per = per_recipient(&reqs);
    assert_eq!(per.len(), 1_000, "unique customers reached");
    assert_eq!(reqs.len(), 1_000, "one request each");
    let v = get_broadcast(&d, WABA, &id).await;
    assert_eq!(
        counts(&v),
        expect_counts(&[("sent", 1_000), ("queued", 500)]),
        "{v}"
    );
    assert_eq!(v["state"], "running");
    let reach_key = d.keys.reach(WABA, None);
    let mut con = support::connection(&d.redis_url).await;
    let reached: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&reach_key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(reached.len(), 1_000);
    // The waiting ones are queued (fed into lanes, or not yet fed), none on the wire.
    let ids: Vec<String> = (0..N).map(|i| format!("{id}.{i}")).collect();
    let recs = records(&d, WABA, &ids).await;
    let by_status = status_counts(&recs);
    assert_eq!(by_status.get("sent"), Some(&1_000), "{by_status:?}");
    assert_eq!(by_status.get("sending"), None, "{by_status:?}");
    let queued = by_status.get("queued").copied().unwrap_or(0);
    assert!(queued > 0, "fed and waiting: {by_status:?}");
    let rows = queues(&d);
    let waba = rows.iter().find(|r| r["channel"] == WABA).unwrap();
    let waiting = waba["outbound"]["waiting"]["messaging_limit"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        waiting > 0 && waiting as usize <= queued,
        "lanes waiting for the messaging limit: {waba}"
    );

    // A free-form reply inside the open window leaves now and is not counted.
    let r = call(
        &d,
        "POST",
        &format!("/v1/channels/{WABA}/messages"),
        Some((
            "application/json",
            json!({"to": open, "type": "text", "text": "it ships today"})
                .to_string()
                .into_bytes(),
        )),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    let reply_id = r.body["id"].as_str().unwrap().to_string();
    support::eventually(Duration::from_secs(15), "the reply sent", || async {
        (get_message(&d, WABA, &reply_id).await["status"] == "sent").then_some(())
    })
    .await;
    let to_open: Vec<Recorded> = d
        .graph
        .requests_to(MESSAGES)
        .into_iter()
        .filter(|r| r.body["to"] == format!("+{open}"))
        .collect();
    assert_eq!(to_open.len(), 1);
    assert_eq!(to_open[0].body["text"]["body"], "it ships today");
    let card: u64 = redis::cmd("ZCARD")
        .arg(&reach_key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(card, 1_000, "the reply was not counted");
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(&reach_key)
        .arg(open)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(score, None);
    assert_eq!(
        d.graph.requests_to(MESSAGES).len(),
        1_001,
        "still no broadcast message beyond the limit"
    );

    // Roll the clock a day on.
    let mut pipe = redis::pipe();
    for (customer, at) in &reached {
        pipe.cmd("ZADD")
            .arg(&reach_key)
            .arg(*at as i64 - DAY_MS - 1_000)
            .arg(customer)
            .ignore();
    }
    let wait = hgetall(&d, &d.keys.out_wait(WABA)).await;
    let ready_key = d.keys.out_ready(WABA);
    let mut moved = 0;
    for (customer, why) in &wait {
        if why != "messaging_limit" {
            continue;
        }
        let at: Option<f64> = redis::cmd("ZSCORE")
            .arg(&ready_key)
            .arg(customer)
            .query_async(&mut con)
            .await
            .unwrap();
        let at = at.unwrap_or_else(|| panic!("{customer} waits but is not in ready")) as i64;
        assert!(
            at > now_ms() + DAY_MS - HOUR_MS,
            "{customer} is set aside until the oldest reach leaves the day: {at}"
        );
        pipe.cmd("ZADD")
            .arg(&ready_key)
            .arg("XX")
            .arg(at - DAY_MS)
            .arg(customer)
            .ignore();
        moved += 1;
    }
    assert_eq!(moved, waiting, "{wait:?}");
    let () = pipe.query_async(&mut con).await.unwrap();

    let done = wait_broadcast(
        &d,
        WABA,
        &id,
        Duration::from_secs(60),
        "the rest sent",
        |v| v["state"] == "done",
    )
    .await;
    assert_eq!(
        counts(&done),
        expect_counts(&[("sent", N as u64)]),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = d.graph.requests_to(MESSAGES);
    let per = per_recipient(&reqs);
    assert_eq!(reqs.len(), N + 1, "the 1,500 once each, and the reply");
    let expected: HashSet<String> = (0..N).map(to_of).chain([format!("+{open}")]).collect();
    assert_eq!(per.keys().cloned().collect::<HashSet<_>>(), expected);
    let card: u64 = redis::cmd("ZCARD")
        .arg(&reach_key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(card, 500, "the new day counts the 500 reached in it");
}

// ------------------------------------------------------------------ 3. skips

/// At send time a broadcast skips a recipient a person is handling (a Business-app echo on a
/// coexistence number), one who wrote STOP (not one who wrote STOP, then start); a recipient
/// listed twice is counted once as skipped at creation. Skips carry their reason in the
/// record (`ecode`) and make no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_opt_out_and_duplicates_are_skipped_with_their_reason() {
    let _shared = EXCLUSIVE.read().await;
    let d = deploy(Opts {
        waba: "coexistence = true\nsend_rate_per_second = 50",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w1");
    wait_serving(&d).await;
    wait_leased(&d).await;
    let (handover, stop, back, plain, twice) = (
        "15557770001",
        "15557770002",
        "15557770003",
        "15557770004",
        "15557770005",
    );
    let now = now_ms();
    // A person answers `handover` from the Business app: an echo without `source`.
    let mut echo = message(WABA, handover, "wamid.echo.1", now, "I'll take this one");
    echo.event_type = EventType::Echo;
    d.enqueue(&[&echo]).await;
    d.wait_drained(WABA, handover, Duration::from_secs(15))
        .await;
    customer_writes(&d, stop, "wamid.stop.1", now - 5_000, " stop ").await;
    customer_writes(&d, back, "wamid.back.1", now - 5_000, "STOP").await;
    customer_writes(&d, back, "wamid.back.2", now - 4_000, "start").await;
    let h = d.state(WABA, handover).await.unwrap_or(Value::Null);
    assert!(h["handover_until_ms"].as_i64() > Some(now), "{h}");
    let s = d.state(WABA, stop).await.unwrap_or(Value::Null);
    assert!(s["opted_out_at_ms"].is_i64(), "{s}");
    let b = d.state(WABA, back).await.unwrap_or(Value::Null);
    assert!(b["opted_out_at_ms"].is_null(), "opted back in: {b}");
    assert!(b["last_inbound_ms"].is_i64(), "{b}");

    let r = create_json(
        &d,
        WABA,
        &json!({"name": "skips", "message": {"type": "template", "name": "promo",
                "language": "en_US"},
            "recipients": [{"to": handover}, {"to": format!("+{stop}")}, {"to": back},
                           {"to": plain}, {"to": twice}, {"to": format!("+{twice}")}]}),
    )
    .await;
    let id = accepted(&r, 6);
    assert_eq!(r.body["skipped"], 1, "the duplicate: {r:?}");

    let done = wait_broadcast(&d, WABA, &id, Duration::from_secs(20), "done", |v| {
        v["state"] == "done"
    })
    .await;
    assert_eq!(
        counts(&done),
        expect_counts(&[("sent", 3), ("skipped", 3)]),
        "{done}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = per_recipient(&d.graph.requests_to(MESSAGES));
    let expected: HashMap<String, usize> = [back, plain, twice]
        .iter()
        .map(|c| (format!("+{c}"), 1))
        .collect();
    assert_eq!(
        per, expected,
        "only the three that were not skipped, once each"
    );

    // Recipients in order, duplicates left out at creation: 0 handover, 1 stop, 2 back, 3
    // plain, 4 twice.
    for (i, code) in [(0, Some("handover")), (1, Some("opted_out"))] {
        let view = get_message(&d, WABA, &format!("{id}.{i}")).await;
        assert_eq!(view["status"], "skipped", "{view}");
        assert_eq!(view["error"]["code"].as_str(), code, "{view}");
        assert_eq!(view["wamid"], Value::Null, "{view}");
        let rec = hgetall(&d, &d.keys.out_record(WABA, &format!("{id}.{i}"))).await;
        assert_eq!(rec.get("st").map(String::as_str), Some("skipped"));
        assert_eq!(rec.get("ecode").map(String::as_str), code, "{rec:?}");
    }
    for (i, customer) in [(2, back), (3, plain), (4, twice)] {
        let view = get_message(&d, WABA, &format!("{id}.{i}")).await;
        assert_eq!(view["status"], "sent", "{view}");
        assert_eq!(view["to"], customer, "{view}");
        assert_eq!(view["error"], Value::Null, "{view}");
    }
    let none = call(
        &d,
        "GET",
        &format!("/v1/channels/{WABA}/messages/{id}.5"),
        None,
    )
    .await;
    assert_eq!(none.status, 404, "no sixth message: {none:?}");
}

// ------------------------------------------------------------------ 4. cancel

/// 200 recipients at 5/s, cancelled after ten requests: afterwards at most what was already in
/// flight leaves (a lane past its send-time check waits at most `max_inline_wait`, 1 s, for
/// its slot: at 5/s that is 5 messages, plus the one being sent), nothing after that; the
/// state is `cancelled`, the counts add up, and every message fed into a lane ends `sent` or
/// `skipped` with `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_stops_sending_and_skips_what_was_queued() {
    let _shared = EXCLUSIVE.read().await;
    const N: usize = 200;
    let d = deploy(Opts {
        waba: "send_rate_per_second = 5",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w1");
    wait_serving(&d).await;
    wait_leased(&d).await;
    let recipients: Vec<Value> = (0..N)
        .map(|i| json!({"to": format!("1777{i:07}")}))
        .collect();
    let r = create_json(
        &d,
        WABA,
        &json!({"name": "to cancel", "message": {"type": "template", "name": "promo",
                "language": "en_US"}, "recipients": recipients}),
    )
    .await;
    let id = accepted(&r, N as u64);
    wait_count(&d.graph, 10, Duration::from_secs(20)).await;

    let before = d.graph.count();
    let c = cancel(&d, WABA, &id).await;
    let cancelled_at = Instant::now();
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.body["state"], "cancelled", "{c:?}");
    assert_adds_up(&c.body);

    tokio::time::sleep(Duration::from_secs(4)).await;
    let reqs = d.graph.requests_to(MESSAGES);
    let after: Vec<&Recorded> = reqs.iter().filter(|r| r.at > cancelled_at).collect();
    println!(
        "cancel: {before} requests before, {} after (last one {} ms after the cancel)",
        reqs.len() - before,
        after
            .last()
            .map_or(0, |r| r.at.duration_since(cancelled_at).as_millis())
    );
    assert!(
        reqs.len() - before <= 6,
        "{} requests after the cancel",
        reqs.len() - before
    );
    assert!(
        after
            .iter()
            .all(|r| r.at.duration_since(cancelled_at) < Duration::from_millis(2_500)),
        "a request long after the cancel: {:?}",
        after
            .iter()
            .map(|r| r.at.duration_since(cancelled_at))
            .collect::<Vec<_>>()
    );
    assert_eq!(per_recipient(&reqs).len(), reqs.len(), "each once");

    let v = get_broadcast(&d, WABA, &id).await;
    println!("cancelled: {}", v["counts"]);
    assert_eq!(v["state"], "cancelled");
    assert_adds_up(&v);
    let cnt = counts(&v);
    assert_eq!(cnt["sent"], reqs.len() as u64, "{v}");
    assert!(cnt["skipped"] > 0, "the queued ones were skipped: {v}");
    assert_eq!(cnt["failed"], 0, "{v}");
    // Every message fed into a lane has ended: sent, or skipped because of the cancel. The
    // recipients never fed have no message at all: the cancel counted them skipped at once.
    let all: Vec<String> = (0..N).map(|i| format!("{id}.{i}")).collect();
    let recs: Vec<HashMap<String, String>> = records(&d, WABA, &all)
        .await
        .into_iter()
        .filter(|r| !r.is_empty())
        .collect();
    let fed = recs.len();
    assert!(fed < N, "not everything was fed before the cancel: {fed}");
    let bc = hgetall(&d, &d.keys.broadcast(WABA, &id)).await;
    assert_eq!(bc["fed"], N.to_string(), "nothing left to feed: {bc:?}");
    for (i, rec) in recs.iter().enumerate() {
        match rec.get("st").map(String::as_str) {
            Some("sent") => {}
            Some("skipped") => assert_eq!(
                rec.get("ecode").map(String::as_str),
                Some("cancelled"),
                "{id}.{i}: {rec:?}"
            ),
            other => panic!("{id}.{i} is {other:?}: {rec:?}"),
        }
    }
    assert_eq!(
        status_counts(&recs).get("skipped").copied().unwrap_or(0) as u64 + (N - fed) as u64,
        cnt["skipped"],
        "{v}"
    );
    let rows = queues(&d);
    let waba = rows.iter().find(|r| r["channel"] == WABA).unwrap();
    assert_eq!(
        waba["outbound"]["backlog"], 0,
        "nothing left in lanes: {waba}"
    );
    // Cancelling again answers the same; an unknown id is a 404.
    let again = cancel(&d, WABA, &id).await;
    assert_eq!(
        (again.status, &again.body["state"]),
        (200, &json!("cancelled"))
    );
    let unknown = cancel(&d, WABA, "bc-00000000000000000000000000000000").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(d.graph.requests_to(MESSAGES).len(), reqs.len());
}

// ------------------------------------------------------------------ 5. Personal

/// Personal: a template broadcast is refused whole (422 `templates_unsupported`, nothing
/// stored); 200 recipients get no warning, 250 do; the texts reach WAHA with each
/// recipient's params, paced by `max_per_minute` (300: one per 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_refuses_templates_warns_above_200_and_paces_texts() {
    let _shared = EXCLUSIVE.read().await;
    let d = deploy(Opts {
        personal: "jitter_ms = 0\nmax_per_minute = 300\npair_gap_ms = 0\nsend_rate_per_second = 20",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let chat = |i: usize| format!("4917100{i:05}");
    let list = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"to": chat(i), "params": {"name": format!("P{i}")}}))
            .collect()
    };
    let r = create_json(
        &d,
        PERSONAL,
        &json!({"name": "t", "message": {"type": "template", "name": "promo",
                "language": "en_US"}, "recipients": [{"to": chat(0)}, {"to": chat(1)}]}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "templates_unsupported"),
        "{r:?}"
    );
    // Whatever the recipients carry: the channel's rule comes before the list is read.
    let r = create_json(
        &d,
        PERSONAL,
        &json!({"message": {"type": "template", "name": "promo", "language": "en_US"},
                "recipients": [{"to": chat(0), "params": {"name": "x"}}]}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "templates_unsupported"),
        "{r:?}"
    );
    let mut con = support::connection(&d.redis_url).await;
    let running: u64 = redis::cmd("ZCARD")
        .arg(d.keys.broadcasts_running(PERSONAL))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(running, 0, "nothing stored");

    let text = json!({"type": "text", "text": "Hallo {{name}}, neue Angebote!"});
    let r = create_json(
        &d,
        PERSONAL,
        &json!({"name": "200", "message": text, "recipients": list(200)}),
    )
    .await;
    let small = accepted(&r, 200);
    assert!(
        r.body.get("warning").is_none(),
        "200 is not too many: {r:?}"
    );
    assert_eq!(cancel(&d, PERSONAL, &small).await.status, 200);

    let r = create_json(
        &d,
        PERSONAL,
        &json!({"name": "250", "message": text, "recipients": list(250)}),
    )
    .await;
    let id = accepted(&r, 250);
    let warning = r.body["warning"].as_str().unwrap_or("");
    assert!(warning.contains("250"), "{r:?}");

    let _w = spawn(&d, "work", "w1");
    let sends = wait_requests(&d.waha, "/api/sendText", 8, Duration::from_secs(30)).await;
    let sends = &sends[..8];
    for (k, s) in sends.iter().enumerate() {
        assert_eq!(s.header("x-api-key"), Some(WAHA_KEY));
        let i = s.body["chatId"]
            .as_str()
            .and_then(|c| c.strip_suffix("@c.us"))
            .and_then(|c| c.strip_prefix("4917100"))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("chat id: {}", s.body));
        assert_eq!(
            s.body["text"],
            format!("Hallo P{i}, neue Angebote!"),
            "send {k}: {}",
            s.body
        );
        assert_eq!(s.body["session"], "default");
    }
    let gaps: Vec<u128> = sends.windows(2).map(|w| ms_between(&w[0], &w[1])).collect();
    println!("Personal: gaps between the first sends (ms): {gaps:?}");
    // Slots are 200 ms apart; an arrival may lag its slot a little (not more than 150 ms
    // here), so any two sends i < j are at least (j - i) * 200 - 150 ms apart.
    for i in 0..sends.len() {
        for j in i + 1..sends.len() {
            let apart = ms_between(&sends[i], &sends[j]);
            assert!(
                apart + 150 >= (j - i) as u128 * 200,
                "sends {i} and {j} only {apart} ms apart: {gaps:?}"
            );
        }
    }
    // Nothing from the broadcast cancelled before any worker ran: never fed, never sent.
    let sent_texts = d.waha.requests_to("/api/sendText");
    let chats: HashSet<String> = sent_texts
        .iter()
        .map(|r| r.body["chatId"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(chats.len(), sent_texts.len(), "each chat once");
    let never = call(
        &d,
        "GET",
        &format!("/v1/channels/{PERSONAL}/messages/{small}.0"),
        None,
    )
    .await;
    assert_eq!(
        never.status, 404,
        "the cancelled broadcast fed nothing: {never:?}"
    );
    let v = get_broadcast(&d, PERSONAL, &small).await;
    assert_eq!(v["state"], "cancelled");
    assert_adds_up(&v);
    let c = counts(&v);
    assert_eq!(
        c["sent"] + c["delivered"] + c["read"] + c["failed"],
        0,
        "{v}"
    );
    let v = get_broadcast(&d, PERSONAL, &id).await;
    assert_eq!(v["state"], "running");
    assert_adds_up(&v);
    assert_eq!(cancel(&d, PERSONAL, &id).await.status, 200);
}

// ------------------------------------------------------------------ 6. 100,000 as NDJSON

/// 100,000 recipients in one NDJSON body: 202 with the total (the accept time is printed),
/// all stored, shown `queued`; a channel at 1/s only ever has its feed window (2 s of rate,
/// at least 20) in lanes. Cancelled afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_of_100000_recipients_is_accepted_and_queued() {
    let _shared = EXCLUSIVE.read().await;
    const N: usize = 100_000;
    let d = deploy(Opts {
        waba: "send_rate_per_second = 1",
        ..Opts::default()
    })
    .await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w1");
    wait_serving(&d).await;
    let mut body = json!({"name": "big", "message": {"type": "template", "name": "promo",
        "language": "en_US"}})
    .to_string();
    for i in 0..N {
        body.push('\n');
        body.push_str(
            &json!({"to": format!("1888{i:07}"), "params": [format!("c{i}")]}).to_string(),
        );
    }
    let bytes = body.len();
    let started = Instant::now();
    let r = create_ndjson(&d, WABA, body).await;
    let took = started.elapsed();
    println!(
        "NDJSON: {N} recipients ({:.1} MB) accepted in {} ms",
        bytes as f64 / 1e6,
        took.as_millis()
    );
    let id = accepted(&r, N as u64);
    assert!(r.body.get("skipped").is_none(), "{r:?}");
    assert!(took < Duration::from_secs(30), "accepting took {took:?}");

    let mut con = support::connection(&d.redis_url).await;
    let stored: u64 = redis::cmd("LLEN")
        .arg(d.keys.broadcast_recipients(WABA, &id))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stored, N as u64);
    let last: String = redis::cmd("LINDEX")
        .arg(d.keys.broadcast_recipients(WABA, &id))
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["to"], format!("1888{:07}", N - 1));
    assert_eq!(last["params"], json!([format!("c{}", N - 1)]));
    // The feeder ran and stopped at its window.
    support::eventually(Duration::from_secs(10), "first send", || async {
        (d.graph.count() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = get_broadcast(&d, WABA, &id).await;
    assert_adds_up(&v);
    assert_eq!(v["total"], N);
    assert_eq!(v["state"], "running");
    let c = counts(&v);
    assert!(c["queued"] >= N as u64 - 5, "{v}");
    assert_eq!(c["sent"], d.graph.requests_to(MESSAGES).len() as u64, "{v}");
    let fed: u64 = hgetall(&d, &d.keys.broadcast(WABA, &id)).await["fed"]
        .parse()
        .unwrap();
    assert!(
        (20..=40).contains(&fed),
        "2 s at 1/s, at least 20, fed at a time (plus what was sent): {fed}"
    );
    let c = cancel(&d, WABA, &id).await;
    assert_eq!(c.body["state"], "cancelled", "{c:?}");
}

// ------------------------------------------------------------------ 7. statuses

/// Signed status webhooks through `serve` move a broadcast message's record and the
/// broadcast's counts: sent → delivered → read, `failed` with Meta's error, with or without
/// the callback key (found by wamid); a late status never moves anything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_webhooks_move_broadcast_messages_and_counts() {
    let _shared = EXCLUSIVE.read().await;
    let d = deploy(Opts::default()).await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w1");
    wait_serving(&d).await;
    wait_leased(&d).await;
    let to = ["15559990000", "15559990001", "15559990002"];
    let r = create_json(
        &d,
        WABA,
        &json!({"name": "statuses", "message": {"type": "template", "name": "promo",
                "language": "en_US"},
            "recipients": to.iter().map(|t| json!({"to": t})).collect::<Vec<_>>()}),
    )
    .await;
    let id = accepted(&r, 3);
    let v = wait_broadcast(&d, WABA, &id, Duration::from_secs(20), "sent", |v| {
        v["state"] == "done"
    })
    .await;
    assert_eq!(counts(&v), expect_counts(&[("sent", 3)]));
    let mids: Vec<String> = (0..3).map(|i| format!("{id}.{i}")).collect();
    let mut wamids = Vec::new();
    for m in &mids {
        let view = get_message(&d, WABA, m).await;
        assert_eq!(view["status"], "sent");
        wamids.push(view["wamid"].as_str().unwrap().to_string());
    }

    post_statuses(
        &d,
        vec![
            meta_status(&wamids[0], "delivered", to[0], Some(&mids[0])),
            meta_status(&wamids[1], "delivered", to[1], None),
        ],
    )
    .await;
    post_statuses(
        &d,
        vec![meta_status(&wamids[0], "read", to[0], Some(&mids[0]))],
    )
    .await;
    let v = wait_broadcast(&d, WABA, &id, Duration::from_secs(15), "statuses", |v| {
        counts(v) == expect_counts(&[("sent", 1), ("delivered", 1), ("read", 1)])
    })
    .await;
    assert_eq!(v["state"], "done");
    let view = get_message(&d, WABA, &mids[0]).await;
    let history: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["queued", "sending", "sent", "delivered", "read"]);
    assert_eq!(get_message(&d, WABA, &mids[1]).await["status"], "delivered");

    // Late statuses move nothing back; a failure after `sent` counts as failed.
    post_statuses(
        &d,
        vec![
            meta_status(&wamids[0], "delivered", to[0], Some(&mids[0])),
            meta_status(&wamids[1], "sent", to[1], Some(&mids[1])),
        ],
    )
    .await;
    let mut failed = meta_status(&wamids[2], "failed", to[2], Some(&mids[2]));
    failed["errors"] = json!([{"code": 131026, "title": "Message undeliverable"}]);
    post_statuses(&d, vec![failed]).await;
    for c in to {
        d.wait_drained(WABA, c, Duration::from_secs(15)).await;
    }
    let v = wait_broadcast(&d, WABA, &id, Duration::from_secs(15), "failed", |v| {
        counts(v)["failed"] == 1
    })
    .await;
    assert_eq!(
        counts(&v),
        expect_counts(&[("delivered", 1), ("read", 1), ("failed", 1)]),
        "{v}"
    );
    assert_eq!(get_message(&d, WABA, &mids[0]).await["status"], "read");
    assert_eq!(get_message(&d, WABA, &mids[1]).await["status"], "delivered");
    let f = get_message(&d, WABA, &mids[2]).await;
    assert_eq!(f["status"], "failed", "{f}");
    assert_eq!(f["error"]["code"], "131026", "{f}");
    assert_eq!(d.graph.requests_to(MESSAGES).len(), 3, "no resend");
}

// ------------------------------------------------------------------ 8. the CLI

/// `coexist broadcast create --config F --channel C FILE.ndjson` prints the new id (with the
/// total); `status` prints JSON with the counts (stdout is not a terminal here); `cancel`
/// stops it. Refusals print the API's error and exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_follows_and_cancels_a_broadcast() {
    let _shared = EXCLUSIVE.read().await;
    let d = deploy(Opts {
        waba: "send_rate_per_second = 2",
        ..Opts::default()
    })
    .await;
    let _w = spawn(&d, "work", "w1");
    let file = d.dir.path().join("list.ndjson");
    let mut text = json!({"name": "cli", "message": {"type": "template", "name": "promo",
        "language": "en_US"}})
    .to_string();
    for i in 0..50 {
        text.push_str(&format!("\n{}", json!({"to": format!("1999{i:07}")})));
    }
    text.push_str(&format!("\n{}\n", json!({"to": "+19990000000"})));
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    let cfg = config(&d);

    let out = cli(
        &d,
        &[
            "broadcast",
            "create",
            "--config",
            cfg,
            "--channel",
            WABA,
            file,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("stdout: {}", String::from_utf8_lossy(&out.stdout)));
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("bc-"), "{created}");
    assert_eq!(created["total"], 51);
    assert_eq!(created["skipped"], 1);

    wait_count(&d.graph, 2, Duration::from_secs(20)).await;
    let status = |d: &Deployment, id: &str| {
        let out = cli(
            d,
            &[
                "broadcast",
                "status",
                "--config",
                cfg,
                "--channel",
                WABA,
                id,
            ],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = status(&d, &id);
    assert_eq!(code, Some(0), "{stdout}");
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("status prints JSON: {stdout}"));
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["total"], 51);
    assert_adds_up(&v);
    let c = counts(&v);
    assert!(c["sent"] >= 2, "{v}");
    assert_eq!(c["skipped"], 1, "{v}");

    let out = cli(
        &d,
        &[
            "broadcast",
            "cancel",
            "--config",
            cfg,
            "--channel",
            WABA,
            &id,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    let sent_at_cancel = d.graph.count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, stdout) = status(&d, &id);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_adds_up(&v);
    assert!(
        d.graph.count() <= sent_at_cancel + 3,
        "{} sent after the cancel",
        d.graph.count() - sent_at_cancel
    );
    assert_eq!(counts(&v)["sent"], d.graph.count() as u64, "{v}");

    // Refusals: the API's error on stdout, exit 2.
    let (code, stdout) = status(&d, "bc-00000000000000000000000000000000");
    assert_eq!(code, Some(2), "{stdout}");
    let e: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(e["error"]["code"], "not_found", "{e}");
    let out = cli(
        &d,
        &[
            "broadcast",
            "create",
            "--config",
            cfg,
            "--channel",
            PERSONAL,
            file,
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["code"], "templates_unsupported", "{e}");
    let missing = Path::new(cfg).with_file_name("missing.ndjson");
    let out = cli(
        &d,
        &[
            "broadcast",
            "create",
            "--config",
            cfg,
            "--channel",
            WABA,
            missing.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
}
