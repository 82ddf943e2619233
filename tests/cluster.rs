//! coexist on a real Redis Cluster (started by the harness, tests/support/cluster.rs):
//! a webhook batch whose events live on every master, ingress end to end with channels spread
//! over all masters, `durability = "replicated"` on one node, and a failover (kill -9 of the
//! master holding a busy channel while webhooks keep coming).
//!
//! The queue, store and outbound-queue behaviour suites and the worker kill test run on the
//! cluster in their own binaries (`cluster` backends of tests/queue_behaviour.rs,
//! tests/conversation_store.rs, tests/outbound_queue.rs; tests/workers.rs).

mod fakes;
mod recorder;
mod support;

use coexist::config::Durability;
use coexist::keys::Keys;
use coexist::queue::QueueBackend;
use coexist::queue::{Enqueued, NewEvent, Queue, QueueError, RedisQueue};
use fakes::FakeServer;
use recorder::{Call, Recorder};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::cluster::{key_slot, sync_query, Cluster};
use support::{Proc, RedisOptions, RedisServer};

const APP_SECRET: &str = "meta-app-secret";
const FORWARD_SECRET: &str = "forward-secret";
const PARTITIONS: u32 = 4;

/// `n` channel ids (with `n` ≥ masters) whose hash tags put every master to work: channels
/// are taken in name order until each master serves at least `n / masters` of them.
fn channels_on_every_master(cluster: &Cluster, keys: &Keys, n: usize) -> Vec<String> {
    let masters = cluster.masters();
    let per_master = n / masters.len();
    let mut taken: HashMap<u16, Vec<String>> = HashMap::new();
    for i in 0.. {
        let id = format!("ch{i}");
        let owner = cluster.master_of(&keys.stream(&id, 0));
        let list = taken.entry(owner).or_default();
        if list.len() < per_master {
            list.push(id);
        }
        if masters
            .iter()
            .all(|m| taken.get(m).is_some_and(|l| l.len() == per_master))
        {
            break;
        }
    }
    let mut all: Vec<String> = taken.into_values().flatten().collect();
    all.sort();
    all
}

fn phone_number_id(channel: &str) -> String {
    format!("9{:0>9}", channel.trim_start_matches("ch"))
}

/// A deployment of real `coexist` processes on a cluster, with a forward bot (the recorder)
/// and a fake Graph API.
struct Deployment {
    dir: tempfile::TempDir,
    config: PathBuf,
    keys: Keys,
    listen: String,
    recorder: Recorder,
    graph: FakeServer,
}

impl Deployment {
    /// `redis_extra`: more keys of `[redis]`; `tables`: more tables at the end.
    fn new(redis_toml: &str, channels: &[String], redis_extra: &str, tables: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let prefix = support::prefix();
        let recorder = Recorder::start(FORWARD_SECRET);
        let graph = FakeServer::graph();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut text = format!(
            r#"
[server]
listen = "{listen}"

[redis]
{redis_toml}
prefix = "{prefix}"
{redis_extra}

[meta]
app_secrets = ["${{META_APP_SECRET}}"]
graph_api_url = "{graph}"

[bot]
mode = "forward"
url = "{bot}"
secret = "${{FORWARD_SECRET}}"
timeout_ms = 5000

[worker]
lease_ms = 1500
block_ms = 200
retry_backoff_ms = 50
max_attempts = 20

{tables}
"#,
            graph = graph.url(),
            bot = recorder.url,
        );
        for ch in channels {
            text.push_str(&format!(
                "\n[[channels]]\nid = \"{ch}\"\nkind = \"waba\"\nphone_number_id = \"{}\"\naccess_token = \"${{WABA_TOKEN}}\"\npartitions = {PARTITIONS}\npair_gap_ms = 0\n",
                phone_number_id(ch)
            ));
        }
        let config = dir.path().join("coexist.toml");
        std::fs::write(&config, text).unwrap();
        Deployment {
            dir,
            config,
            keys: Keys::new(prefix),
            listen,
            recorder,
            graph,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_coexist"));
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("META_APP_SECRET", APP_SECRET)
            .env("FORWARD_SECRET", FORWARD_SECRET)
            .env("WABA_TOKEN", "graph-token")
            .env("RUST_LOG", "info");
        c
    }

    fn spawn(&self, sub: &str, name: &str) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Proc(
            self.command(&[sub])
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

    fn queues(&self) -> Value {
        let out = self.command(&["queues", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "coexist queues: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn wait_serving(&self) {
        support::eventually(Duration::from_secs(20), "ingress up", || async {
            reqwest::get(format!("http://{}/healthz", self.listen))
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
    }

    /// Signs and POSTs one Meta webhook; the status code (0: no answer).
    async fn post(&self, http: &reqwest::Client, body: &str) -> u16 {
        let sig = coexist::verify::header_value(
            coexist::verify::Algorithm::Sha256,
            APP_SECRET.as_bytes(),
            body.as_bytes(),
        );
        match http
            .post(format!("http://{}/webhooks/meta", self.listen))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One text message from `from` on `channel`, as Meta sends it (one entry).
fn entry(channel: &str, from: &str, id: &str, text: &str) -> Value {
    let ts = (coexist::ingest::now_ms() / 1000).to_string();
    json!({"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id(channel)},
        "contacts": [{"profile": {"name": "Tester"}, "wa_id": from}],
        "messages": [{"from": from, "id": id, "timestamp": ts, "type": "text", "text": {"body": text}}]}}]})
}

fn webhook(entries: Vec<Value>) -> String {
    json!({"object": "whatsapp_business_account", "entry": entries}).to_string()
}

/// Per (channel, conversation), the texts in the order they were first handled.
fn first_handling_order(calls: &[Call]) -> BTreeMap<(String, String), Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut ordered: Vec<&Call> = calls.iter().filter(|c| c.status < 300).collect();
    ordered.sort_by_key(|c| c.started);
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for c in ordered {
        assert!(c.signature_ok);
        if seen.insert(c.event_id.clone()) {
            let channel = c.event["channel"].as_str().unwrap_or("").to_string();
            out.entry((channel, c.conversation().to_string()))
                .or_default()
                .push(c.text().to_string());
        }
    }
    out
}

// ---------------------------------------------------------------- the tests

/// One enqueue call whose events belong to channels on three different masters: the pipeline
/// is split by slot, every event lands on its channel's master, a retry is deduplicated.
#[tokio::test]
async fn one_batch_spanning_every_master_lands_each_event_on_its_master() {
    let cluster = support::cluster::shared();
    let keys = support::keys();
    let channels = channels_on_every_master(cluster, &keys, 3);
    let q = RedisQueue::connect_to(&cluster.endpoint(), keys.clone(), 3600, 0)
        .await
        .unwrap();
    let batch: Vec<NewEvent> = (0..30)
        .map(|i| NewEvent {
            channel: channels[i % 3].clone(),
            partitions: 1,
            id: format!("wamid.{i}"),
            payload: format!(r#"{{"n":{i}}}"#),
            contact_ids: vec![format!("1555{i:04}")],
        })
        .collect();
    let outcomes = q.enqueue(&batch).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Enqueued::Added { .. })));
    // Each stream sits on its own master, with its events in batch order.
    let mut owners = BTreeSet::new();
    for (c, ch) in channels.iter().enumerate() {
        let stream = keys.stream(ch, 0);
        let owner = cluster.master_of(&stream);
        owners.insert(owner);
        let slot: u16 =
            sync_query(owner, redis::cmd("CLUSTER").arg("KEYSLOT").arg(&stream)).unwrap();
        assert_eq!(slot, key_slot(&stream), "our slot arithmetic is Redis's");
        let entries: Vec<(String, Vec<(String, String)>)> =
            sync_query(owner, redis::cmd("XRANGE").arg(&stream).arg("-").arg("+")).unwrap();
        let payloads: Vec<String> = entries
            .iter()
            .map(|(_, f)| f.iter().find(|(k, _)| k == "e").unwrap().1.clone())
            .collect();
        let want: Vec<String> = (0..30)
            .filter(|i| i % 3 == c)
            .map(|i| format!(r#"{{"n":{i}}}"#))
            .collect();
        assert_eq!(payloads, want, "{ch} on node {owner}");
    }
    assert_eq!(owners.len(), 3, "three channels on three masters");
    let again = q.enqueue(&batch).await.unwrap();
    assert!(again.iter().all(|o| *o == Enqueued::Duplicate));
}

/// `coexist serve` and `coexist work` on a 3-master cluster, six channels spread over every
/// master (checked with CLUSTER KEYSLOT and CLUSTER NODES), webhooks carrying one message per
/// channel: every event handled once, in order per conversation; `queues` sees every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_end_to_end_with_channels_on_every_master() {
    let cluster = support::cluster::shared();
    let probe = support::keys();
    let channels = channels_on_every_master(cluster, &probe, 6);
    let d = Deployment::new(&cluster.toml(), &channels, "", "");
    // The deployment's own keys (its prefix) spread the same way: the tag is the channel.
    let masters: BTreeSet<u16> = channels
        .iter()
        .map(|ch| cluster.master_of(&d.keys.stream(ch, 0)))
        .collect();
    assert_eq!(
        masters,
        cluster.masters().into_iter().collect::<BTreeSet<u16>>(),
        "channels on every master"
    );
    let serve = d.spawn("serve", "serve");
    let work = d.spawn("work", "work");
    d.wait_serving().await;

    let http = reqwest::Client::new();
    let rounds = 15;
    let mut first = None;
    for seq in 0..rounds {
        let entries = channels
            .iter()
            .enumerate()
            .map(|(c, ch)| {
                entry(
                    ch,
                    &format!("1555000{c}"),
                    &format!("wamid.{ch}.{seq}"),
                    &seq.to_string(),
                )
            })
            .collect();
        let body = webhook(entries);
        assert_eq!(d.post(&http, &body).await, 200, "{}", d.log("serve"));
        first.get_or_insert(body);
    }
    // Meta retrying a webhook: 200 again, nothing enqueued twice.
    assert_eq!(d.post(&http, first.as_ref().unwrap()).await, 200);

    let total = rounds * channels.len();
    d.recorder
        .wait_for("every event handled", Duration::from_secs(60), |_| {
            d.recorder.distinct_handled() >= total
        })
        .await;
    let order = first_handling_order(&d.recorder.calls());
    assert_eq!(order.len(), channels.len(), "{order:?}");
    let want: Vec<String> = (0..rounds).map(|s| s.to_string()).collect();
    for (conv, texts) in &order {
        assert_eq!(texts, &want, "{conv:?} in order");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        d.recorder.calls().len(),
        total,
        "each event handled once (the retried webhook was deduplicated)"
    );
    // `queues` reads every channel's partitions from its own master.
    let rows = support::eventually(Duration::from_secs(20), "queues drained", || async {
        let rows = d.queues();
        let rows: Vec<Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| channels.iter().any(|c| r["channel"] == c.as_str()))
            .cloned()
            .collect();
        rows.iter()
            .all(|r| r["pending"] == 0 && r["lag"] == 0 && r["length"] == 0)
            .then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), channels.len() * PARTITIONS as usize);
    assert!(rows.iter().all(|r| !r["lease_owner"].is_null()));
    work.stop();
    serve.stop();
}

/// `durability = "replicated"` on one node: with no replica an enqueue is refused
/// (`NotReplicated`: ingress answers 503) and leaves the event for a retry; once a replica
/// follows, the retry is accepted.
#[tokio::test]
async fn replicated_durability_needs_a_replica() {
    let master = RedisServer::start(RedisOptions { appendonly: true });
    let keys = support::keys();
    let q = RedisQueue::connect(&master.url(), keys.clone(), 3600, 0)
        .await
        .unwrap()
        .with_durability(Durability::Replicated, 200);
    let ev = NewEvent {
        channel: "shop".into(),
        partitions: 1,
        id: "wamid.r1".into(),
        payload: "{}".into(),
        contact_ids: vec!["1555".into()],
    };
    let started = Instant::now();
    let err = q.enqueue(std::slice::from_ref(&ev)).await.unwrap_err();
    assert!(matches!(err, QueueError::NotReplicated { .. }), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited for the replica"
    );

    let replica = RedisServer::start(RedisOptions { appendonly: true });
    let _: () = sync_query(
        replica.port(),
        redis::cmd("REPLICAOF").arg("127.0.0.1").arg(master.port()),
    )
    .unwrap();
    support::eventually(Duration::from_secs(20), "replica in sync", || async {
        let info: String =
            sync_query(replica.port(), redis::cmd("INFO").arg("replication")).unwrap();
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    // The retry: a duplicate (the first attempt did write), now acknowledged by the replica.
    // A longer wait than the 200 ms above: on a loaded 2-core machine the replica's answer to
    // WAIT's GETACK can take longer (seen in CI), and this half checks the acknowledgement.
    let q = RedisQueue::connect(&master.url(), keys.clone(), 3600, 0)
        .await
        .unwrap()
        .with_durability(Durability::Replicated, 10_000);
    let again = q.enqueue(std::slice::from_ref(&ev)).await.unwrap();
    assert_eq!(again, vec![Enqueued::Duplicate]);
    let next = NewEvent {
        id: "wamid.r2".into(),
        ..ev.clone()
    };
    assert!(matches!(
        q.enqueue(std::slice::from_ref(&next)).await.unwrap()[0],
        Enqueued::Added { .. }
    ));
    let len: u64 = sync_query(
        replica.port(),
        redis::cmd("XLEN").arg(keys.stream("shop", 0)),
    )
    .unwrap();
    assert_eq!(len, 2, "both events are on the replica");
    // Local durability never waits.
    let local = RedisQueue::connect(&master.url(), keys, 3600, 0)
        .await
        .unwrap();
    assert!(Queue::Redis(local).confirm_durable("shop").await.is_ok());
}

/// 3 masters + 3 replicas, `durability = "replicated"`: while signed webhooks keep coming for
/// a busy channel (and one channel on each other master), the master holding the busy channel
/// is killed with SIGKILL and its replica promoted (cluster-node-timeout 1 s, no manual
/// failover). Every webhook answered 200 is handled, in order per conversation, and no reply
/// reaches the (fake) Graph API twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_loses_no_acknowledged_webhook() {
    let cluster = Cluster::start(3, 1, 1000);
    let probe = support::keys();
    let channels = channels_on_every_master(&cluster, &probe, 3);
    let d = Deployment::new(
        &cluster.toml(),
        &channels,
        "durability = \"replicated\"\nreplication_timeout_ms = 1000",
        // A lane whose grant was lost in the failover (taken on the old master, not yet
        // replicated, or its answer lost) is free again after the lane lease: short here.
        "[sending]\nlane_lease_ms = 3000",
    );
    let busy = channels[0].clone();
    let victim = cluster.master_of(&d.keys.stream(&busy, 0));
    d.recorder
        .answer_all(json!({"replies": [{"type": "text", "text": "got it"}]}));
    let serve = d.spawn("serve", "serve");
    let workers = [d.spawn("work", "w1"), d.spawn("work", "w2")];
    d.wait_serving().await;

    // Posters: four conversations on the busy channel, one on each other channel. Each posts
    // its messages one after the other and, like Meta, repeats a webhook until it gets 200.
    let per_conversation = 40;
    let mut conversations: Vec<(String, String)> = (0..4)
        .map(|c| (busy.clone(), format!("1666000{c}")))
        .collect();
    conversations.extend(
        channels[1..]
            .iter()
            .map(|ch| (ch.clone(), "16660009".to_string())),
    );
    let d = std::sync::Arc::new(d);
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posters: Vec<_> = conversations
        .iter()
        .cloned()
        .map(|(ch, from)| {
            let d = d.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for seq in 0..per_conversation {
                    let body = webhook(vec![entry(
                        &ch,
                        &from,
                        &format!("wamid.{ch}.{from}.{seq}"),
                        &seq.to_string(),
                    )]);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while d.post(&http, &body).await != 200 {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        assert!(Instant::now() < deadline, "webhook never accepted");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();

    // Let a backlog build on the busy channel, then kill its master.
    d.recorder
        .wait_for("traffic before the kill", Duration::from_secs(30), |c| {
            c.len() >= 40
        })
        .await;
    cluster.node(victim).kill();
    let killed_at = Instant::now();
    cluster.wait_ready(Duration::from_secs(30));
    let promoted = cluster.master_of(&d.keys.stream(&busy, 0));
    assert_ne!(promoted, victim, "the replica took the busy channel's slot");
    let failover = killed_at.elapsed();
    // The promoted master has no replica now: with `durability = "replicated"` the busy
    // channel is refused (503, Meta retries) until one follows it. The dead node comes back
    // (as an orchestrator would restart it) and rejoins as the new master's replica.
    cluster.node(victim).restart();
    cluster.wait_ready(Duration::from_secs(30));
    let replica_back = killed_at.elapsed();

    for p in posters {
        p.await.unwrap();
    }
    eprintln!("failover: posters done after {:?}", killed_at.elapsed());
    let total = conversations.len() * per_conversation;
    d.recorder
        .wait_for(
            "every acknowledged webhook handled",
            Duration::from_secs(90),
            |_| d.recorder.distinct_handled() >= total,
        )
        .await;
    eprintln!("failover: all handled after {:?}", killed_at.elapsed());
    let order = first_handling_order(&d.recorder.calls());
    let want: Vec<String> = (0..per_conversation).map(|s| s.to_string()).collect();
    assert_eq!(order.len(), conversations.len());
    for (conv, texts) in &order {
        assert_eq!(texts, &want, "{conv:?}: every message handled, in order");
    }
    // One reply per event, each sent once: the outbox keys the Graph API saw are unique.
    let sends = support::eventually(Duration::from_secs(60), "every reply sent", || async {
        let sends = d.graph.requests_to("/messages");
        (sends.len() >= total).then_some(sends)
    })
    .await;
    eprintln!("failover: all sent after {:?}", killed_at.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sends = d.graph.requests_to("/messages").len().max(sends.len());
    let keys: BTreeSet<String> = d
        .graph
        .requests_to("/messages")
        .iter()
        .map(|r| {
            r.body["biz_opaque_callback_data"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), total, "one reply per event");
    assert_eq!(sends, total, "no reply sent twice");
    eprintln!(
        "failover: promoted {promoted} in {failover:?} after killing {victim}, replica back after {replica_back:?}; {} webhook posts refused (retried) meanwhile",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    for w in workers {
        w.stop();
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "while the busy channel had no master, then no replica, its webhooks were refused (503)"
    );
    let d = std::sync::Arc::try_unwrap(d).ok().expect("posters done");
    serve.stop();
    drop(d);
}
