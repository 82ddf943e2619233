//! Workers end to end: several processes of the real binary on one Redis, a forward bot that
//! records what it was given, kills and restarts in the middle.

mod recorder;
mod support;

use coexist::channel::ChannelKind;
use coexist::event::{Contact, Event, EventType, Message};
use coexist::keys::Keys;
use coexist::queue::QueueBackend;
use coexist::queue::{NewEvent, Queue, RedisQueue};
use coexist::redis_conn::Endpoint;
use coexist::routing::partition_of;
use recorder::{Call, Recorder, Script};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{Proc, RedisOptions, RedisServer};

const SECRET: &str = "forward-secret";
const CHANNEL: &str = "shop";
const PARTITIONS: u32 = 8;

struct Deployment {
    dir: tempfile::TempDir,
    config: PathBuf,
    redis: Endpoint,
    keys: Keys,
    recorder: Recorder,
}

impl Deployment {
    fn new(redis_url: &str, worker_extra: &str) -> Deployment {
        Deployment::on(
            &format!("url = {redis_url:?}"),
            Endpoint::Single(redis_url.to_string()),
            worker_extra,
        )
    }

    /// The same deployment on a Redis Cluster.
    fn on_cluster(cluster: &support::cluster::Cluster, worker_extra: &str) -> Deployment {
        Deployment::on(&cluster.toml(), cluster.endpoint(), worker_extra)
    }

    /// `redis_toml`: the `[redis]` line saying where Redis is (`url = …` or `cluster = […]`).
    fn on(redis_toml: &str, redis: Endpoint, worker_extra: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let prefix = support::prefix();
        let recorder = Recorder::start(SECRET);
        let config = dir.path().join("coexist.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[redis]
{redis_toml}
prefix = "{prefix}"

[meta]
app_secrets = ["${{META_APP_SECRET}}"]

[[channels]]
id = "{CHANNEL}"
kind = "waba"
phone_number_id = "106540352242922"
partitions = {PARTITIONS}

[[channels]]
id = "phone"
kind = "personal"
session = "default"
webhook_secrets = ["${{WAHA_HMAC_KEY}}"]
partitions = 2

[bot]
mode = "forward"
url = "{url}"
secret = "${{FORWARD_SECRET}}"
timeout_ms = 5000

[worker]
lease_ms = 1500
block_ms = 200
retry_backoff_ms = 20
max_attempts = 3
window_expiring_minutes = [1]
{worker_extra}
"#,
                url = recorder.url
            ),
        )
        .unwrap();
        Deployment {
            dir,
            config,
            redis,
            keys: Keys::new(prefix),
            recorder,
        }
    }

    /// `coexist <args> --config <this deployment's config>`, with its secrets in the environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coexist"));
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("META_APP_SECRET", "meta")
            .env("WAHA_HMAC_KEY", "waha")
            .env("FORWARD_SECRET", SECRET);
        c
    }

    /// Runs an operator command to completion; it must succeed.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "coexist {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn spawn_worker(&self, name: &str) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Proc(
            self.command(&["work"])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    async fn queue(&self) -> Queue {
        Queue::Redis(
            RedisQueue::connect_to(&self.redis, self.keys.clone(), 3600, 0)
                .await
                .unwrap(),
        )
    }

    fn queues_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.run(&["queues", "--json"]).stdout).unwrap()
    }
}

fn message(channel: &str, kind: ChannelKind, conversation: &str, seq: usize, at_ms: i64) -> Event {
    let id = format!("wamid.{conversation}.{seq}");
    Event {
        id: id.clone(),
        channel: channel.to_string(),
        kind,
        conversation: conversation.to_string(),
        event_type: EventType::Message,
        at: at_ms,
        received_at: Some(now_ms()),
        contact: Contact {
            wa_id: Some(conversation.to_string()),
            ..Default::default()
        },
        message: Some(Message {
            id,
            kind: "text".into(),
            text: Some(seq.to_string()),
            ..Default::default()
        }),
        status: None,
        field: None,
        timer: None,
        outbound: None,
        call: None,
        raw: serde_json::Value::Null,
    }
}

fn new_event(e: &Event, partitions: u32) -> NewEvent {
    NewEvent {
        channel: e.channel.clone(),
        partitions,
        id: e.id.clone(),
        payload: e.to_json(),
        contact_ids: vec![e.conversation.clone()],
    }
}

fn now_ms() -> i64 {
    coexist::ingest::now_ms()
}

/// `conversations` × `per_conversation` messages, interleaved, enqueued in batches.
async fn enqueue_messages(
    queue: &Queue,
    conversations: usize,
    per_conversation: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for seq in 0..per_conversation {
        for c in 0..conversations {
            let e = message(
                CHANNEL,
                ChannelKind::Waba,
                &format!("1555{c:06}"),
                seq,
                now_ms(),
            );
            ids.push(e.id.clone());
            batch.push(new_event(&e, PARTITIONS));
            if batch.len() == 100 {
                queue.enqueue(&batch).await.unwrap();
                batch.clear();
            }
        }
    }
    queue.enqueue(&batch).await.unwrap();
    ids
}

/// Per conversation, the order in which events were first handled must be their send order,
/// and every event must have been handled.
fn assert_complete_and_ordered(calls: &[Call], expected: &[String], per_conversation: usize) {
    let mut firsts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut ordered = calls.iter().filter(|c| c.status < 300).collect::<Vec<_>>();
    ordered.sort_by_key(|c| c.started);
    for c in ordered {
        assert!(c.signature_ok, "forward requests are signed");
        if seen.insert(c.event_id.clone()) {
            firsts
                .entry(c.conversation().to_string())
                .or_default()
                .push(c.text().parse().unwrap());
        }
    }
    for id in expected {
        assert!(seen.contains(id), "event {id} was never handled");
    }
    for (conv, seqs) in &firsts {
        let want: Vec<usize> = (0..per_conversation).collect();
        assert_eq!(seqs, &want, "conversation {conv} handled out of order");
    }
}

/// No two different live workers handled events of one partition at overlapping times.
fn assert_one_owner_at_a_time(calls: &[Call], dead_worker: Option<&str>) {
    let mut by_partition: HashMap<u32, Vec<&Call>> = HashMap::new();
    for c in calls {
        by_partition
            .entry(partition_of(c.conversation(), PARTITIONS))
            .or_default()
            .push(c);
    }
    for (p, mut list) in by_partition {
        list.sort_by_key(|c| c.started);
        for pair in list.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.worker != b.worker
                && Some(a.worker.as_str()) != dead_worker
                && Some(b.worker.as_str()) != dead_worker
            {
                assert!(
                    b.started >= a.finished,
                    "partition {p}: {} and {} overlapped",
                    a.worker,
                    b.worker
                );
            }
            if a.worker == b.worker {
                assert!(
                    b.started >= a.finished,
                    "partition {p}: one worker ran two events of a partition at once"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_nothing_lost_order_kept() {
    let url = support::shared_url();
    one_of_three_workers_killed(Deployment::new(&url, "")).await;
}

/// The same on a 3-master Redis Cluster: leases, blocking reads, scripts and acks routed to
/// the channel's master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_nothing_lost_order_kept_on_a_cluster() {
    let cluster = support::cluster::shared();
    one_of_three_workers_killed(Deployment::on_cluster(cluster, "")).await;
}

/// 3,000 events (300 conversations × 10) to three workers; the busiest one is killed with
/// SIGKILL: every event handled, in order per conversation, one owner per partition at a time.
async fn one_of_three_workers_killed(d: Deployment) {
    let queue = d.queue().await;
    let mut workers: Vec<Proc> = (0..3).map(|i| d.spawn_worker(&format!("w{i}"))).collect();
    let ids = enqueue_messages(&queue, 300, 10).await;

    d.recorder
        .wait_for("a third of the events", Duration::from_secs(60), |c| {
            c.len() >= 1000
        })
        .await;
    // The victim is the worker that has handled the most so far: it surely holds partitions.
    let mut handled_by: HashMap<String, usize> = HashMap::new();
    for c in d.recorder.calls() {
        *handled_by.entry(c.worker).or_default() += 1;
    }
    let victim_name = handled_by
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(w, _)| w)
        .unwrap();
    let index = workers
        .iter()
        .position(|w| victim_name.contains(&format!("-{}-", w.id())))
        .expect("the busiest worker is one of ours");
    let victim = workers.remove(index);
    let mut victim = victim;
    victim.kill().unwrap(); // SIGKILL: no goodbye, leases expire
    victim.wait().unwrap();
    // A request the victim wrote just before it died may still sit in the recorder's socket
    // and be picked up a moment later (seen on a loaded 2-core machine): a short grace.
    let killed_at = Instant::now() + Duration::from_millis(250);

    let total = ids.len();
    d.recorder
        .wait_for("every event handled", Duration::from_secs(90), |_| {
            d.recorder.distinct_handled() >= total
        })
        .await;
    let calls = d.recorder.calls();
    assert_complete_and_ordered(&calls, &ids, 10);
    assert_one_owner_at_a_time(&calls, Some(&victim_name));
    assert!(
        !victim_name.is_empty(),
        "the victim had handled events before the kill"
    );
    let after_kill: std::collections::HashSet<_> = calls
        .iter()
        .filter(|c| c.started > killed_at)
        .map(|c| c.worker.clone())
        .collect();
    assert!(
        !after_kill.contains(&victim_name),
        "the killed worker handled nothing after its death"
    );
    assert!(
        after_kill.len() >= 2,
        "both survivors took part: {after_kill:?}"
    );

    for w in &workers {
        w.sigterm();
    }
    for (i, mut w) in workers.into_iter().enumerate() {
        let status = w
            .wait_exit(Duration::from_secs(20))
            .expect("worker exits after SIGTERM");
        assert!(
            status.success(),
            "worker {i} exit status {status}:\n{}",
            d.log(&format!("w{}", i + 1))
        );
    }
    // Everything acknowledged: nothing pending, nothing left unread, no lease held.
    let rows = d.queues_json();
    for row in rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["channel"] == CHANNEL)
    {
        assert_eq!(row["pending"], 0, "{row}");
        assert_eq!(row["lag"], 0, "{row}");
        assert!(
            row["lease_owner"].is_null(),
            "leases released on SIGTERM: {row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_run_workers_reconnect_and_finish() {
    let redis = RedisServer::start(RedisOptions { appendonly: true });
    let d = Deployment::new(&redis.url(), "");
    let queue = d.queue().await;
    let workers: Vec<Proc> = (0..2).map(|i| d.spawn_worker(&format!("w{i}"))).collect();
    let ids = enqueue_messages(&queue, 200, 8).await;
    d.recorder
        .wait_for("some events", Duration::from_secs(60), |c| c.len() >= 400)
        .await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    let total = ids.len();
    d.recorder
        .wait_for(
            "every event after the restart",
            Duration::from_secs(90),
            |_| d.recorder.distinct_handled() >= total,
        )
        .await;
    assert_complete_and_ordered(&d.recorder.calls(), &ids, 8);
    for mut w in workers {
        w.sigterm();
        assert!(w
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handler_retries_in_order_then_dead_letters_and_replays() {
    let url = support::shared_url();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Deployment::new(
        &url,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let queue = d.queue().await;
    let conv = "15550001111";
    let events: Vec<Event> = (0..4)
        .map(|i| message(CHANNEL, ChannelKind::Waba, conv, i, now_ms()))
        .collect();
    d.recorder.script(&events[1].id, Script::FailTimes(1)); // flaky: succeeds on attempt 2
    d.recorder.script(&events[2].id, Script::AlwaysFail); // poison: 3 attempts, then dead letter
    let batch: Vec<NewEvent> = events.iter().map(|e| new_event(e, PARTITIONS)).collect();
    queue.enqueue(&batch).await.unwrap();
    let mut w = d.spawn_worker("w0");

    let last = events[3].id.clone();
    d.recorder
        .wait_for(
            "the event after the poison one",
            Duration::from_secs(30),
            |c| c.iter().any(|c| c.event_id == last && c.status == 200),
        )
        .await;
    let calls = d.recorder.calls();
    let order: Vec<(String, u16)> = calls
        .iter()
        .filter(|c| c.conversation() == conv)
        .map(|c| (c.text().to_string(), c.status))
        .collect();
    let want: Vec<(String, u16)> = vec![
        ("0", 200),
        ("1", 500),
        ("1", 200),
        ("2", 500),
        ("2", 500),
        ("2", 500),
        ("3", 200),
    ]
    .into_iter()
    .map(|(t, s)| (t.to_string(), s))
    .collect();
    assert_eq!(order, want, "retries keep the partition waiting; after 3 attempts the event is dead-lettered and the next one runs");

    let dead = queue.dead_letters(CHANNEL, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].payload.contains(&events[2].id));
    assert!(dead[0].error.contains("500"), "{}", dead[0].error);

    // The worker's own /metrics tells the same story.
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "coexist_events_handled_total{channel=\"shop\",type=\"message\",outcome=\"ok\"} 3",
        "coexist_handler_retries_total{channel=\"shop\"} 3",
        "coexist_dead_letters_total{channel=\"shop\"} 1",
        "coexist_webhook_to_handler_seconds_count{channel=\"shop\"}",
        "coexist_leases_held{worker=",
    ] {
        assert!(
            text.contains(needle),
            "worker metrics lack {needle:?}:\n{text}"
        );
    }

    // The operator fixes the endpoint and replays the dead letter.
    d.recorder.script(&events[2].id, Script::FailTimes(0));
    d.run(&["dlq", "replay", "--channel", CHANNEL]);
    let poison = events[2].id.clone();
    d.recorder
        .wait_for("the replayed event", Duration::from_secs(30), |c| {
            c.iter().any(|c| c.event_id == poison && c.status == 200)
        })
        .await;
    assert!(queue.dead_letters(CHANNEL, 10).await.unwrap().is_empty());
    w.sigterm();
    assert!(w
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_worker_gets_its_share_and_a_leaving_one_hands_over() {
    let url = support::shared_url();
    let d = Deployment::new(&url, "");
    let owners = |d: &Deployment| -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for row in d.queues_json().as_array().unwrap() {
            if let Some(o) = row["lease_owner"].as_str() {
                *m.entry(o.split(':').next().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        m
    };
    let total = (PARTITIONS + 2) as usize;
    let mut first = d.spawn_worker("w0");
    support::eventually(
        Duration::from_secs(15),
        "one worker holds every partition",
        || async { (owners(&d).values().sum::<usize>() == total).then_some(()) },
    )
    .await;
    let mut second = d.spawn_worker("w1");
    let started = Instant::now();
    support::eventually(
        Duration::from_secs(15),
        "two workers share the partitions",
        || async {
            let o = owners(&d);
            (o.len() == 2 && o.values().all(|n| *n == total / 2)).then_some(())
        },
    )
    .await;
    let rebalance = started.elapsed();
    assert!(
        rebalance < Duration::from_secs(10),
        "rebalanced in {rebalance:?}"
    );

    first.sigterm();
    assert!(
        first
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "{}",
        d.log("w0")
    );
    support::eventually(
        Duration::from_secs(15),
        "the remaining worker holds everything",
        || async {
            let o = owners(&d);
            (o.len() == 1 && o.values().sum::<usize>() == total).then_some(())
        },
    )
    .await;
    second.sigterm();
    assert!(second
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_timers_fire_per_channel_and_stale_ones_are_dropped() {
    let url = support::shared_url();
    let d = Deployment::new(&url, "");
    let queue = d.queue().await;
    let day = 24 * 3600 * 1000;
    let now = now_ms();
    // a: window closes in 3 s (no expiring timer: 1 min lead already past).
    let a = message(
        CHANNEL,
        ChannelKind::Waba,
        "15550000001",
        0,
        now - day + 3_000,
    );
    // b: the 1-minute expiring timer fires in 2 s; the window closes a minute later.
    let b = message(
        CHANNEL,
        ChannelKind::Waba,
        "15550000002",
        0,
        now - day + 62_000,
    );
    // c: would close in 3 s, but a fresh message re-arms it a day ahead: nothing may fire.
    let c1 = message(
        CHANNEL,
        ChannelKind::Waba,
        "15550000003",
        0,
        now - day + 3_000,
    );
    let c2 = message(CHANNEL, ChannelKind::Waba, "15550000003", 1, now);
    // The same phone number as `a`, on the Personal channel: no window, no timers, separate state.
    let p = message(
        "phone",
        ChannelKind::Personal,
        "15550000001",
        0,
        now - day + 3_000,
    );
    let mut batch: Vec<NewEvent> = [&a, &b, &c1, &c2]
        .iter()
        .map(|e| new_event(e, PARTITIONS))
        .collect();
    batch.push(new_event(&p, 2));
    queue.enqueue(&batch).await.unwrap();
    let mut w = d.spawn_worker("w0");

    d.recorder
        .wait_for(
            "window.closed for a and window.expiring for b",
            Duration::from_secs(20),
            |calls| {
                let timer = |conv: &str, name: &str| {
                    calls.iter().any(|c| {
                        c.event_type() == "timer"
                            && c.conversation() == conv
                            && c.event["timer"]["name"] == name
                    })
                };
                timer("15550000001", "window.closed") && timer("15550000002", "window.expiring")
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = d.recorder.calls();
    let timers: Vec<&Call> = calls.iter().filter(|c| c.event_type() == "timer").collect();
    assert!(
        timers.iter().all(|c| c.conversation() != "15550000003"),
        "a re-armed window fires no stale timer"
    );
    assert!(
        timers.iter().all(|c| c.event["channel"] == CHANNEL),
        "no timers on the Personal channel"
    );
    assert_eq!(
        timers
            .iter()
            .filter(|c| c.conversation() == "15550000001")
            .count(),
        1,
        "a fired once"
    );
    let closed = timers
        .iter()
        .find(|c| c.conversation() == "15550000001")
        .unwrap();
    assert_eq!(closed.event["timer"]["window_end"], a.at + day);

    // Two conversations for one number: WABA has a window that ended, Personal has none.
    let store_state = |channel: &str, contact: &str| {
        let key = d.keys.conversation(channel, contact);
        let url = url.clone();
        async move {
            let mut con = support::connection(&url).await;
            let s: Option<String> = redis::cmd("HGET")
                .arg(key)
                .arg("s")
                .query_async(&mut con)
                .await
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&s.expect("state saved")).unwrap()
        }
    };
    let waba = store_state(CHANNEL, "15550000001").await;
    let personal = store_state("phone", "15550000001").await;
    assert_eq!(waba["window_end_ms"], a.at + day);
    assert!(
        personal.get("window_end_ms").is_none(),
        "personal channels have no window: {personal}"
    );
    w.sigterm();
    assert!(w
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
}
