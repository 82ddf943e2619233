//! The end-to-end harness of the sending tests: a config for one WABA and one Personal
//! channel on a real Redis, the recorder as the forward bot, the fake Graph API and fake WAHA
//! as providers, and helpers to spawn `coexist` processes, enqueue events and read Redis.
#![allow(dead_code)]

use crate::fakes::{FakeServer, Recorded};
use crate::recorder::{Recorder, Script};
use crate::support::{self, Proc};
use coexist::channel::ChannelKind;
use coexist::event::{Contact, Event, EventType, Message, Status};
use coexist::keys::Keys;
use coexist::queue::QueueBackend;
use coexist::queue::{NewEvent, Queue, RedisQueue};
use coexist::routing::partition_of;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const FORWARD_SECRET: &str = "forward-secret";
pub const APP_SECRET: &str = "meta-app-secret";
pub const GRAPH_TOKEN: &str = "graph-token-e2e";
pub const WAHA_KEY: &str = "waha-api-key-e2e";
pub const WABA: &str = "shop";
pub const PERSONAL: &str = "phone";
pub const PHONE_NUMBER_ID: &str = "106540352242922";
pub const PERSONAL_PARTITIONS: u32 = 2;
pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// What differs between deployments.
pub struct Opts {
    /// Extra keys of the WABA channel table.
    pub waba: &'static str,
    /// Extra keys of the Personal channel table.
    pub personal: &'static str,
    pub waba_partitions: u32,
    pub lease_ms: u64,
    pub retry_backoff_ms: u64,
    pub max_attempts: u32,
    /// The body of a `[sending]` table ("" = the defaults).
    pub sending: &'static str,
    /// A Redis of the test's own (to stop and restart it); `None`: the shared one.
    pub redis_url: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            waba: "",
            // No pacing unless a test asks for it: replies leave at once.
            personal: "jitter_ms = 0\nmax_per_minute = 0\npair_gap_ms = 0",
            waba_partitions: 4,
            lease_ms: 1000,
            retry_backoff_ms: 50,
            max_attempts: 3,
            sending: "",
            redis_url: None,
        }
    }
}

pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub redis_url: String,
    pub keys: Keys,
    pub recorder: Recorder,
    pub graph: FakeServer,
    pub waha: FakeServer,
    pub listen: String,
    pub queue: Queue,
    pub waba_partitions: u32,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Deployment {
    pub async fn new(opts: Opts) -> Deployment {
        let redis_url = opts.redis_url.clone().unwrap_or_else(support::shared_url);
        let dir = tempfile::tempdir().unwrap();
        let prefix = support::prefix();
        let recorder = Recorder::start(FORWARD_SECRET);
        let graph = FakeServer::graph();
        let waha = FakeServer::waha();
        let listen = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("coexist.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "{listen}"

[redis]
url = "{redis_url}"
prefix = "{prefix}"

[meta]
app_secrets = ["${{META_APP_SECRET}}"]
graph_api_url = "{graph_url}"

[[channels]]
id = "{WABA}"
kind = "waba"
phone_number_id = "{PHONE_NUMBER_ID}"
access_token = "${{WABA_TOKEN}}"
partitions = {waba_partitions}
{waba}

[[channels]]
id = "{PERSONAL}"
kind = "personal"
session = "default"
webhook_secrets = ["${{WAHA_HMAC_KEY}}"]
api_url = "{waha_url}"
api_key = "${{WAHA_API_KEY}}"
partitions = {PERSONAL_PARTITIONS}
{personal}

[bot]
mode = "forward"
url = "{bot_url}"
secret = "${{FORWARD_SECRET}}"
timeout_ms = 5000
handover_secs = 600

[worker]
lease_ms = {lease_ms}
block_ms = 100
retry_backoff_ms = {retry_backoff_ms}
max_attempts = {max_attempts}

[sending]
{sending}
"#,
                graph_url = graph.url(),
                waha_url = waha.url(),
                bot_url = recorder.url,
                waba_partitions = opts.waba_partitions,
                waba = opts.waba,
                personal = opts.personal,
                lease_ms = opts.lease_ms,
                retry_backoff_ms = opts.retry_backoff_ms,
                max_attempts = opts.max_attempts,
                sending = opts.sending,
            ),
        )
        .unwrap();
        let keys = Keys::new(prefix);
        let queue = Queue::Redis(
            RedisQueue::connect(&redis_url, keys.clone(), 3600, 0)
                .await
                .unwrap(),
        );
        Deployment {
            dir,
            config,
            redis_url,
            keys,
            recorder,
            graph,
            waha,
            listen,
            queue,
            waba_partitions: opts.waba_partitions,
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_coexist"));
        cmd.env("META_APP_SECRET", APP_SECRET)
            .env("WAHA_HMAC_KEY", "waha-hmac")
            .env("FORWARD_SECRET", FORWARD_SECRET)
            .env("WABA_TOKEN", GRAPH_TOKEN)
            .env("WAHA_API_KEY", WAHA_KEY)
            .env("RUST_LOG", "info");
        cmd
    }

    /// `coexist <sub> --config …` with its log in `<name>.log`.
    pub fn spawn(&self, sub: &str, name: &str) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Proc(
            self.command()
                .arg(sub)
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Like [`Deployment::spawn`], with extra environment variables (e.g. `COEXIST_FAILPOINTS`).
    pub fn spawn_env(&self, sub: &str, name: &str, env: &[(&str, &str)]) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = self.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc(
            cmd.arg(sub)
                .arg("--config")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    pub fn spawn_worker(&self, name: &str) -> Proc {
        self.spawn("work", name)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self
            .command()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "coexist {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn partitions(&self, channel: &str) -> u32 {
        if channel == WABA {
            self.waba_partitions
        } else {
            PERSONAL_PARTITIONS
        }
    }

    pub async fn enqueue(&self, events: &[&Event]) {
        let batch: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent {
                channel: e.channel.clone(),
                partitions: self.partitions(&e.channel),
                id: e.id.clone(),
                payload: e.to_json(),
                contact_ids: vec![e.conversation.clone()],
            })
            .collect();
        self.queue.enqueue(&batch).await.unwrap();
    }

    /// Waits until every event of the conversation's partition is acknowledged (or
    /// dead-lettered): nothing left in the stream.
    pub async fn wait_drained(&self, channel: &str, conversation: &str, timeout: Duration) {
        let p = partition_of(conversation, self.partitions(channel));
        let what = format!("{channel}/{p} drained");
        support::eventually(timeout, &what, || async {
            let s = self.queue.partition_stats(channel, p).await.unwrap();
            (s.length == 0 && s.pending == 0 && s.lag == 0).then_some(())
        })
        .await;
    }

    /// Waits until every partition of every channel has a lease holder, and returns how many
    /// distinct workers hold them.
    pub async fn wait_leased(&self, workers: usize) {
        support::eventually(Duration::from_secs(15), "partitions leased", || async {
            let out = self.run(&["queues", "--json"]);
            let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
            let rows = rows.as_array().unwrap();
            let mut owners: Vec<String> = rows
                .iter()
                .filter_map(|r| r["lease_owner"].as_str())
                .map(|o| o.split(':').next().unwrap().to_string())
                .collect();
            let all = owners.len() == rows.len();
            owners.sort();
            owners.dedup();
            (all && owners.len() == workers).then_some(())
        })
        .await;
    }

    pub async fn redis_get(&self, key: &str) -> Option<String> {
        let mut con = support::connection(&self.redis_url).await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap()
    }

    /// The outbox value of a key (`pending:…` / `sent:<id>`).
    pub async fn outbox(&self, channel: &str, outbox_key: &str) -> Option<String> {
        self.redis_get(&self.keys.sent(channel, outbox_key)).await
    }

    /// The stored conversation state (`HGET <prefix>:{ch}:conv:<contact> s`).
    pub async fn state(&self, channel: &str, contact: &str) -> Option<Value> {
        let mut con = support::connection(&self.redis_url).await;
        let s: Option<String> = redis::cmd("HGET")
            .arg(self.keys.conversation(channel, contact))
            .arg("s")
            .query_async(&mut con)
            .await
            .unwrap();
        s.map(|s| serde_json::from_str(&s).unwrap())
    }
}

pub fn now_ms() -> i64 {
    coexist::ingest::now_ms()
}

pub fn message(channel: &str, conversation: &str, id: &str, at: i64, text: &str) -> Event {
    let kind = if channel == WABA {
        ChannelKind::Waba
    } else {
        ChannelKind::Personal
    };
    Event {
        id: id.to_string(),
        channel: channel.to_string(),
        kind,
        conversation: conversation.to_string(),
        event_type: EventType::Message,
        at,
        received_at: None,
        contact: Contact {
            wa_id: Some(conversation.to_string()),
            ..Default::default()
        },
        message: Some(Message {
            id: id.to_string(),
            kind: "text".into(),
            text: Some(text.to_string()),
            ..Default::default()
        }),
        status: None,
        field: None,
        timer: None,
        outbound: None,
        call: None,
        raw: Value::Null,
    }
}

/// A delivery status of a message we sent (never opens the window).
pub fn status(conversation: &str, message_id: &str, name: &str) -> Event {
    Event {
        id: format!("{message_id}:{name}"),
        channel: WABA.to_string(),
        kind: ChannelKind::Waba,
        conversation: conversation.to_string(),
        event_type: EventType::Status,
        at: now_ms(),
        received_at: None,
        contact: Contact {
            wa_id: Some(conversation.to_string()),
            ..Default::default()
        },
        message: None,
        status: Some(Status {
            message_id: message_id.to_string(),
            status: name.to_string(),
            recipient: Some(conversation.to_string()),
            ..Default::default()
        }),
        field: None,
        timer: None,
        outbound: None,
        call: None,
        raw: Value::Null,
    }
}

pub fn text(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

pub fn template(name: &str) -> Value {
    json!({"type": "template", "name": name, "language": "en_US"})
}

pub fn answer(replies: Vec<Value>) -> Script {
    Script::Answer(json!({ "replies": replies }))
}

/// Waits until `fake` recorded at least `n` requests whose path ends with `suffix`.
pub async fn wait_requests(
    fake: &FakeServer,
    suffix: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Recorded> {
    support::eventually(timeout, &format!("{n} request(s) to {suffix}"), || async {
        let r = fake.requests_to(suffix);
        (r.len() >= n).then_some(r)
    })
    .await
}

pub fn key_of(r: &Recorded) -> &str {
    r.body["biz_opaque_callback_data"].as_str().unwrap_or("")
}

pub fn ms_between(a: &Recorded, b: &Recorded) -> u128 {
    b.at.duration_since(a.at).as_millis()
}

pub const MESSAGES: &str = "/messages";

/// Signs (`X-Hub-Signature-256` with the app secret) and POSTs one Meta webhook carrying
/// these `statuses[]` elements to `coexist serve`; asserts the 200.
pub async fn post_statuses(d: &Deployment, statuses: Vec<Value>) {
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "statuses": statuses}}]}]})
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
}

/// Waits until `coexist serve` answers `/healthz`.
pub async fn wait_serving(d: &Deployment) {
    support::eventually(Duration::from_secs(15), "ingress up", || async {
        reqwest::get(format!("http://{}/healthz", d.listen))
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}
