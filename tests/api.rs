//! The send API end to end (DESIGN.md, "The send API"): real `coexist serve` / `work` / `send`
//! processes on a real Redis, the recorder as the forward bot, the fake Graph API and fake WAHA
//! as the providers.
//!
//! The harness's config has no `[api]` table: [`with_api`] writes `api.toml` beside it (the same
//! deployment with `[api] keys = ["${COEXIST_API_KEY}", "${COEXIST_API_KEY_PREVIOUS}"]`), points
//! `Deployment::config` at it and every process gets the two keys through its environment.
//! `coexist.toml` stays as it was: the same deployment without the send API.
//!
//! 1. every answer of the contract, each with what Redis holds afterwards (a refusal leaves no
//!    record, no lane entry, no idempotency key);
//! 2. idempotency under 50 concurrent requests and across a `serve` restart;
//! 3. the service window (23 h / 25 h ago), templates, the same contact on Personal;
//! 4. status webhooks move an API message forward, never back, as `GET …/messages/{id}` shows;
//! 5. API messages and the bot's replies share the customer's lane, in queueing order;
//! 6. `coexist send`;
//! 7. `docs/openapi.json` against the running server.

mod deploy;
mod fakes;
mod recorder;
mod support;

use deploy::*;

use fakes::{Answer, Recorded};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::Proc;

const API_KEY: &str = "cx-e2e-api-key-4f1c9b2a7d0e";
/// The second key of a rotation: accepted as well.
const API_KEY_PREVIOUS: &str = "cx-e2e-api-key-previous-88e0a1";
/// A key no config names.
const OTHER_KEY: &str = "cx-e2e-api-key-not-configured";
const API_TABLE: &str =
    "\n[api]\nkeys = [\"${COEXIST_API_KEY}\", \"${COEXIST_API_KEY_PREVIOUS}\"]\n";
const API_ENV: [(&str, &str); 2] = [
    ("COEXIST_API_KEY", API_KEY),
    ("COEXIST_API_KEY_PREVIOUS", API_KEY_PREVIOUS),
];
const HOUR_MS: i64 = 3_600_000;

/// The tests that read timing (concurrency, lane order) do not share the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------ deployment helpers

/// A deployment whose config has the `[api]` table, and `server_extra` in `[server]`.
async fn with_api(opts: Opts, server_extra: &str) -> Deployment {
    let mut d = Deployment::new(opts).await;
    let base = std::fs::read_to_string(&d.config).unwrap();
    assert!(base.contains("\n[server]\n"), "{base}");
    let text =
        base.replacen("\n[server]\n", &format!("\n[server]\n{server_extra}\n"), 1) + API_TABLE;
    let path = d.dir.path().join("api.toml");
    std::fs::write(&path, text).unwrap();
    d.config = path;
    d
}

/// The harness's own config: the same deployment without `[api]`.
fn base_config(d: &Deployment) -> PathBuf {
    d.dir.path().join("coexist.toml")
}

/// `coexist <sub>` on the `[api]` config, with the API keys in its environment.
fn spawn(d: &Deployment, sub: &str, name: &str) -> Proc {
    d.spawn_env(sub, name, &API_ENV)
}

/// `coexist <args> --config <config>` with `env`; the exit status is the caller's business.
fn cli(d: &Deployment, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = d.command();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).arg("--config").arg(config).output().unwrap()
}

/// Every partition of every channel has a lease holder (`queues --json` on the `[api]` config).
async fn wait_leased(d: &Deployment) {
    support::eventually(Duration::from_secs(15), "partitions leased", || async {
        let out = cli(d, &d.config, &["queues", "--json"], &API_ENV);
        assert!(
            out.status.success(),
            "coexist queues: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        rows.iter()
            .all(|r| r["lease_owner"].as_str().is_some())
            .then_some(())
    })
    .await;
}

// ------------------------------------------------------------------ HTTP helpers

/// One answer of the API.
#[derive(Debug)]
struct Res {
    status: u16,
    body: Value,
    content_type: String,
    retry_after: Option<String>,
}

impl Res {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
    fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }
    fn id(&self) -> &str {
        self.body["id"].as_str().unwrap_or("")
    }
    /// The `/v1` catch-all answered: no handler has this method and path.
    fn is_catch_all(&self) -> bool {
        self.status == 404 && self.code() == "not_found" && self.message().starts_with("no route ")
    }
}

fn bearer() -> String {
    format!("Bearer {API_KEY}")
}

/// A request to `http://<listen><path>`; `body` is (content type, bytes).
async fn call_at(
    listen: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    idempotency_key: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Res {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new().request(method, format!("http://{listen}{path}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    if let Some((content_type, bytes)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    let res = req
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = res.status().as_u16();
    let header = |n: &str| {
        res.headers()
            .get(n)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let bytes = res.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Res {
        status,
        body,
        content_type,
        retry_after,
    }
}

async fn call(
    d: &Deployment,
    method: &str,
    path: &str,
    auth: Option<&str>,
    idempotency_key: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Res {
    call_at(&d.listen, method, path, auth, idempotency_key, body).await
}

fn messages_path(channel: &str) -> String {
    format!("/v1/channels/{channel}/messages")
}

/// `POST /v1/channels/{channel}/messages` with a good key.
async fn post(d: &Deployment, channel: &str, body: &Value, idempotency_key: Option<&str>) -> Res {
    post_bytes(d, channel, body.to_string().into_bytes(), idempotency_key).await
}

async fn post_bytes(
    d: &Deployment,
    channel: &str,
    body: Vec<u8>,
    idempotency_key: Option<&str>,
) -> Res {
    call(
        d,
        "POST",
        &messages_path(channel),
        Some(&bearer()),
        idempotency_key,
        Some(("application/json", body)),
    )
    .await
}

/// `GET /v1/channels/{channel}/messages/{id}` with a good key.
async fn get(d: &Deployment, channel: &str, id: &str) -> Res {
    call(
        d,
        "GET",
        &format!("/v1/channels/{channel}/messages/{id}"),
        Some(&bearer()),
        None,
        None,
    )
    .await
}

/// A 202 with exactly `{"id": "api-<32 hex>", "status": …}`; returns the id.
fn accepted(r: &Res, status: &str, what: &str) -> String {
    assert_eq!(r.status, 202, "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: {r:?}"
    );
    let keys: BTreeSet<&str> = r
        .body
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, BTreeSet::from(["id", "status"]), "{what}: {r:?}");
    assert_eq!(r.body["status"], status, "{what}: {r:?}");
    assert_api_id(r.id());
    r.id().to_string()
}

fn assert_api_id(id: &str) {
    let hex = id.strip_prefix("api-").unwrap_or("");
    assert!(
        hex.len() == 32
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "not an api-<32 hex> id: {id:?}"
    );
}

/// An error answer: this status and code, JSON, a message for people.
fn refused(r: &Res, status: u16, code: &str, what: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: the error is JSON: {r:?}"
    );
    assert!(!r.message().is_empty(), "{what}: {r:?}");
}

/// Waits until `GET …/messages/{id}` says `status`; returns the view.
async fn wait_status(d: &Deployment, channel: &str, id: &str, status: &str) -> Value {
    let what = format!("{id} {status}");
    support::eventually(Duration::from_secs(15), &what, || async {
        let r = get(d, channel, id).await;
        assert_eq!(r.status, 200, "{r:?}");
        (r.body["status"] == status).then_some(r.body)
    })
    .await
}

/// The statuses of a message view's `history`, oldest first.
fn history(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------------ Redis helpers

/// Every outbound key of a channel (`<prefix>:{<channel>}:out:*`), without `<prefix>:{<channel>}:`.
async fn out_keys(d: &Deployment, channel: &str) -> BTreeSet<String> {
    let mut con = support::connection(&d.redis_url).await;
    let head = format!("{}:{{{channel}}}:", d.keys.prefix());
    let pattern = format!("{head}out:*");
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        keys.extend(batch.into_iter().map(|k| k[head.len()..].to_string()));
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The message records of a channel (`out:rec:<id>` → id).
async fn record_ids(d: &Deployment, channel: &str) -> BTreeSet<String> {
    out_keys(d, channel)
        .await
        .into_iter()
        .filter_map(|k| k.strip_prefix("out:rec:").map(String::from))
        .collect()
}

/// Nothing outbound on either channel: no record, lane, index entry, idempotency key.
async fn assert_nothing_queued(d: &Deployment, what: &str) {
    for channel in [WABA, PERSONAL] {
        let keys = out_keys(d, channel).await;
        assert!(keys.is_empty(), "{what}: {channel} holds {keys:?}");
    }
}

/// The ids in a customer's lane, oldest first.
async fn lane(d: &Deployment, channel: &str, customer: &str) -> Vec<String> {
    let mut con = support::connection(&d.redis_url).await;
    let entries: Vec<String> = redis::cmd("LRANGE")
        .arg(d.keys.out_lane(channel, customer))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    entries
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["msg"]["outbox_key"]
                .as_str()
                .unwrap_or_else(|| panic!("lane entry without msg.outbox_key: {e}"))
                .to_string()
        })
        .collect()
}

async fn record(d: &Deployment, channel: &str, id: &str) -> HashMap<String, String> {
    let mut con = support::connection(&d.redis_url).await;
    redis::cmd("HGETALL")
        .arg(d.keys.out_record(channel, id))
        .query_async(&mut con)
        .await
        .unwrap()
}

async fn zscore(d: &Deployment, key: &str, member: &str) -> Option<f64> {
    let mut con = support::connection(&d.redis_url).await;
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query_async(&mut con)
        .await
        .unwrap()
}

async fn pttl(d: &Deployment, key: &str) -> i64 {
    let mut con = support::connection(&d.redis_url).await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut con)
        .await
        .unwrap()
}

// ------------------------------------------------------------------ provider helpers

/// Requests to the fake Graph API carrying this message id as `biz_opaque_callback_data`.
fn graph_sends(d: &Deployment, id: &str) -> Vec<Recorded> {
    d.graph
        .requests_to(MESSAGES)
        .into_iter()
        .filter(|r| key_of(r) == id)
        .collect()
}

async fn wait_graph_send(d: &Deployment, id: &str) -> Recorded {
    support::eventually(
        Duration::from_secs(15),
        &format!("{id} at the fake Graph API"),
        || async { graph_sends(d, id).into_iter().next() },
    )
    .await
}

/// One element of a Meta status webhook's `statuses[]`.
fn meta_status(
    wamid: &str,
    name: &str,
    timestamp_s: i64,
    recipient: &str,
    callback: Option<&str>,
) -> Value {
    let mut s = json!({"id": wamid, "status": name, "timestamp": timestamp_s.to_string(),
                       "recipient_id": recipient});
    if let Some(k) = callback {
        s["biz_opaque_callback_data"] = json!(k);
    }
    s
}

/// A customer writes at `at` (the worker opens the window at the message's own time); waits
/// until the event is handled.
async fn customer_writes(d: &Deployment, channel: &str, customer: &str, id: &str, at: i64) {
    let m = message(channel, customer, id, at, "hello");
    d.recorder.script(&m.id, answer(vec![]));
    d.enqueue(&[&m]).await;
    d.wait_drained(channel, customer, Duration::from_secs(15))
        .await;
    assert!(
        d.recorder.handled().iter().any(|c| c.event_id == id),
        "{id} reached the bot"
    );
}

fn template_to(to: &str, name: &str) -> Value {
    json!({"to": to, "type": "template", "name": name, "language": "en_US"})
}

fn text_to(to: &str, text: &str) -> Value {
    json!({"to": to, "type": "text", "text": text})
}

// ------------------------------------------------------------------ 1. the contract's answers

/// 401 (before anything else), 404, 400 naming the field, 422, 413, 202, replay and 409; after
/// every refusal no outbound key exists; after the 202 exactly the record, its lane entry, its
/// index entries and its idempotency key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_of_the_contract_and_what_redis_holds_after_it() {
    let d = with_api(Opts::default(), "max_body_bytes = 4096").await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let customer = "16505550101";
    let messages = messages_path(WABA);
    let template = template_to(customer, "order_update");
    let template_bytes = template.to_string().into_bytes();

    // ---- 401: no key, a key no config names, a prefix or extension of a key, no Bearer scheme
    let not_keys = [
        None,
        Some(format!("Bearer {OTHER_KEY}")),
        Some(format!("Bearer {API_KEY}x")),
        Some(format!("Bearer {}", &API_KEY[..API_KEY.len() - 1])),
        Some(API_KEY.to_string()),
        Some(format!("Basic {API_KEY}")),
        Some(format!("Token {API_KEY}")),
        Some("Bearer ".to_string()),
        Some("Bearer".to_string()),
    ];
    for auth in &not_keys {
        let r = call(
            &d,
            "POST",
            &messages,
            auth.as_deref(),
            Some("k-401"),
            Some(("application/json", template_bytes.clone())),
        )
        .await;
        refused(&r, 401, "unauthorized", &format!("POST with {auth:?}"));
    }
    // … before anything else: channel, body, size, route and method are not looked at.
    let wrong = format!("Bearer {OTHER_KEY}");
    let probes: [(&str, String, Option<Vec<u8>>); 7] = [
        ("POST", messages_path("nope"), Some(template_bytes.clone())),
        ("POST", messages.clone(), Some(b"{\"to\": ".to_vec())),
        ("POST", messages.clone(), Some(vec![b'x'; 10_000])),
        ("GET", format!("{messages}/api-0"), None),
        ("GET", "/v1/channels/nope/messages/x".into(), None),
        ("POST", "/v1/no/such/route".into(), None),
        ("DELETE", format!("{messages}/api-0"), None),
    ];
    for (method, path, body) in &probes {
        for auth in [None, Some(wrong.as_str())] {
            let body = body.clone().map(|b| ("application/json", b));
            let r = call(&d, method, path, auth, None, body).await;
            refused(
                &r,
                401,
                "unauthorized",
                &format!("{method} {path} with {auth:?}"),
            );
        }
    }
    assert_nothing_queued(&d, "after the 401s").await;

    // ---- 404
    let r = post(&d, "nope", &template, None).await;
    refused(&r, 404, "unknown_channel", "POST to an unknown channel");
    assert!(r.message().contains("nope"), "{r:?}");
    let r = get(&d, "nope", "api-0").await;
    refused(&r, 404, "unknown_channel", "GET on an unknown channel");
    let r = get(&d, WABA, "api-00000000000000000000000000000000").await;
    refused(&r, 404, "not_found", "GET of an unknown id");
    assert!(!r.is_catch_all(), "the GET handler answered: {r:?}");
    for (method, path) in [
        ("GET", "/v1/channels".to_string()),
        ("GET", format!("/v1/channels/{WABA}")),
        ("POST", format!("{messages}/api-0/extra")),
    ] {
        let r = call(&d, method, &path, Some(&bearer()), None, None).await;
        refused(&r, 404, "not_found", &format!("{method} {path}"));
        assert_eq!(r.message(), format!("no route {method} {path}"), "{r:?}");
    }
    assert_nothing_queued(&d, "after the 404s").await;

    // ---- 400: the refusal names the field; also with an Idempotency-Key, none is kept
    let long_text_is_fine = "y".repeat(100);
    let bodies: Vec<(Vec<u8>, &str, &str)> =
        vec![
        (b"{\"to\": ".to_vec(), "body", "invalid JSON"),
        (b"".to_vec(), "body", "an empty body"),
        (b"[{\"to\": \"1\"}]".to_vec(), "body", "an array"),
        (b"\"text\"".to_vec(), "body", "a string"),
        (
            json!({"type": "text", "text": "hi"}).to_string().into_bytes(),
            "to",
            "no to",
        ),
        (text_to("", "hi").to_string().into_bytes(), "to", "empty to"),
        (
            text_to("1650 555 0101", "hi").to_string().into_bytes(),
            "to",
            "spaces in to",
        ),
        (
            json!({"to": 16505550101u64, "type": "text", "text": "hi"})
                .to_string()
                .into_bytes(),
            "to",
            "a number as to",
        ),
        (
            json!({"to": customer}).to_string().into_bytes(),
            "type",
            "no type",
        ),
        (
            json!({"to": customer, "type": "fax", "fax": {}})
                .to_string()
                .into_bytes(),
            "type",
            "an unknown type",
        ),
        (
            json!({"to": customer, "type": "image", "image": {"caption": "no file"}})
                .to_string()
                .into_bytes(),
            "image.link",
            "an image with neither link nor id",
        ),
        (
            json!({"to": customer, "type": "mark_read", "message_id": "wamid.1"})
                .to_string()
                .into_bytes(),
            "type",
            "mark_read",
        ),
        (
            json!({"to": customer, "type": "text"}).to_string().into_bytes(),
            "text",
            "no text",
        ),
        (
            text_to(customer, "   ").to_string().into_bytes(),
            "text",
            "blank text",
        ),
        (
            json!({"to": customer, "type": "template", "language": "en_US"})
                .to_string()
                .into_bytes(),
            "name",
            "a template without name",
        ),
        (
            json!({"to": customer, "type": "template", "template": {"name": "t", "language": {}}})
                .to_string()
                .into_bytes(),
            "template.language.code",
            "Meta's template shape without a language code",
        ),
        (
            json!({"to": customer, "type": "interactive", "interactive": {}})
                .to_string()
                .into_bytes(),
            "interactive",
            "interactive without its type",
        ),
        (
            json!({"to": customer, "type": "text", "text": long_text_is_fine, "context": 3})
                .to_string()
                .into_bytes(),
            "context",
            "a context that is a number",
        ),
    ];
    for (i, (body, field, what)) in bodies.into_iter().enumerate() {
        let key = format!("k-400-{i}");
        let r = post_bytes(&d, WABA, body, Some(&key)).await;
        refused(&r, 400, "invalid_request", what);
        assert_eq!(r.field(), field, "{what}: {r:?}");
        assert!(
            r.message().starts_with(&format!("{field}: ")),
            "{what}: the message names the field: {r:?}"
        );
    }
    let r = post_bytes(&d, WABA, b"{\"to\": ".to_vec(), None).await;
    assert!(
        r.message().contains("line 1"),
        "where the JSON broke: {r:?}"
    );
    // A bad Idempotency-Key with a good body.
    for (key, what) in [
        ("k".repeat(256), "a 256-character key"),
        (String::new(), "an empty key"),
        ("tab\there".to_string(), "a control character"),
    ] {
        let r = post(&d, WABA, &template, Some(&key)).await;
        refused(&r, 400, "invalid_request", what);
        assert_eq!(r.field(), "Idempotency-Key", "{what}: {r:?}");
    }
    assert_nothing_queued(&d, "after the 400s").await;

    // ---- 422: the rules already say no
    let r = post(&d, WABA, &text_to(customer, "hi"), Some("k-422-text")).await;
    refused(
        &r,
        422,
        "window_closed",
        "free-form to a customer who never wrote",
    );
    assert!(
        r.body["error"]
            .as_object()
            .is_some_and(|e| e.get("closed_at") == Some(&Value::Null)),
        "closed_at is there, null (the window never opened): {r:?}"
    );
    for (body, what) in [
        (
            json!({"to": customer, "type": "interactive",
                   "interactive": {"type": "button", "body": {"text": "?"}}}),
            "interactive",
        ),
        (
            json!({"to": customer, "type": "reaction", "message_id": "wamid.X", "emoji": "👍"}),
            "reaction",
        ),
    ] {
        let r = post(&d, WABA, &body, None).await;
        refused(&r, 422, "window_closed", what);
    }
    let r = post(&d, PERSONAL, &template, Some("k-422-tpl")).await;
    refused(&r, 422, "templates_unsupported", "a template on Personal");
    let r = post(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "interactive",
                "interactive": {"type": "button", "body": {"text": "?"}}}),
        None,
    )
    .await;
    refused(&r, 422, "unsupported_on_channel", "interactive on Personal");
    let r = post(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "reaction",
                "reaction": {"message_id": "wamid.HBg", "emoji": "👍"}}),
        None,
    )
    .await;
    refused(
        &r,
        422,
        "unsupported_on_channel",
        "a reaction to a wamid on Personal",
    );
    assert_nothing_queued(&d, "after the 422s").await;
    assert_eq!(
        d.state(WABA, customer).await,
        None,
        "a refusal wrote no conversation"
    );

    // ---- 413 (max_body_bytes = 4096): a body that is valid but one byte too many
    let contact = "16505550102";
    let big = text_to(contact, &"x".repeat(4080)).to_string();
    assert!(big.len() > 4096, "{}", big.len());
    let r = post_bytes(&d, PERSONAL, big.into_bytes(), Some("k-413")).await;
    refused(&r, 413, "too_large", "a body over max_body_bytes");
    assert!(r.message().contains("4096"), "{r:?}");
    assert_nothing_queued(&d, "after the 413").await;
    // Just under the limit: queued (Personal has no window).
    let fits = text_to(contact, &"x".repeat(4000)).to_string();
    assert!(fits.len() <= 4096, "{}", fits.len());
    let r = post_bytes(&d, PERSONAL, fits.into_bytes(), None).await;
    let personal_id = accepted(&r, "queued", "a body within max_body_bytes");
    let chat = format!("{contact}@s.whatsapp.net");
    assert_eq!(lane(&d, PERSONAL, &chat).await, [personal_id.as_str()]);

    // ---- 202 (with the previous key of a rotation), and what Redis holds
    let before = deploy::now_ms();
    let r = call(
        &d,
        "POST",
        &messages,
        Some(&format!("Bearer {API_KEY_PREVIOUS}")),
        Some("order-1001"),
        Some(("application/json", template_bytes.clone())),
    )
    .await;
    let id = accepted(&r, "queued", "a template with the previous key");
    let after = deploy::now_ms();
    assert_eq!(lane(&d, WABA, customer).await, [id.as_str()]);
    let rec = record(&d, WABA, &id).await;
    assert_eq!(rec.get("st").map(String::as_str), Some("queued"), "{rec:?}");
    assert!(
        zscore(&d, &d.keys.out_queued(WABA), &id).await.is_some(),
        "in the unsettled set"
    );
    assert!(
        zscore(&d, &d.keys.out_index(WABA), &id).await.is_some(),
        "in the index"
    );
    let idem_key = d.keys.out_idempotency(WABA, "order-1001");
    let idem = d
        .redis_get(&idem_key)
        .await
        .expect("the Idempotency-Key is kept");
    assert!(idem.ends_with(&format!("\n{id}")), "{idem:?}");
    let ttl = pttl(&d, &idem_key).await;
    assert!(
        ttl > 0 && ttl <= 86_400_000,
        "kept for a day at most: {ttl}"
    );
    let keys = out_keys(&d, WABA).await;
    let mut expected: BTreeSet<String> = [
        format!("out:rec:{id}"),
        format!("out:lane:{customer}"),
        "out:idem:order-1001".to_string(),
        "out:queued".to_string(),
        "out:index".to_string(),
        "out:ready".to_string(),
    ]
    .into();
    // `out:ready` holds the lane (no sender runs here).
    assert_eq!(keys, expected, "what one queued message left in Redis");
    let view = get(&d, WABA, &id).await;
    assert_eq!(view.status, 200, "{view:?}");
    let created = view.body["created_at"].as_i64().unwrap();
    assert!((before..=after).contains(&created), "{view:?}");
    assert_eq!(
        view.body,
        json!({"id": id, "channel": WABA, "to": customer, "type": "template",
               "status": "queued", "wamid": null, "error": null, "created_at": created,
               "history": [{"status": "queued", "at": created}]})
    );

    // ---- the same key, the same message in Meta's shape, pretty-printed: the same id
    let again = serde_json::to_vec_pretty(&json!({"type": "template", "to": customer,
        "template": {"language": {"code": "en_US"}, "name": "order_update"}}))
    .unwrap();
    let r = post_bytes(&d, WABA, again, Some("order-1001")).await;
    assert_eq!(accepted(&r, "queued", "the same body again"), id);
    // ---- the same key with another body: 409 with the first id
    for (body, what) in [
        (template_to(customer, "order_cancelled"), "another template"),
        (
            template_to("16505550199", "order_update"),
            "another customer",
        ),
    ] {
        let r = post(&d, WABA, &body, Some("order-1001")).await;
        refused(&r, 409, "idempotency_conflict", what);
        assert_eq!(r.body["error"]["id"], id.as_str(), "{what}: {r:?}");
    }
    assert_eq!(
        lane(&d, WABA, customer).await,
        [id.as_str()],
        "nothing new queued"
    );
    assert_eq!(out_keys(&d, WABA).await, expected, "nothing new in Redis");
    // Without a key, the same body is another message.
    let r = post(&d, WABA, &template, None).await;
    let id2 = accepted(&r, "queued", "the same body without a key");
    assert_ne!(id2, id);
    assert_eq!(lane(&d, WABA, customer).await, [id.clone(), id2.clone()]);
    expected.insert(format!("out:rec:{id2}"));
    assert_eq!(out_keys(&d, WABA).await, expected);

    // The keys never reach the log.
    let log = d.log("serve");
    assert!(
        !log.contains(API_KEY) && !log.contains(API_KEY_PREVIOUS) && !log.contains(OTHER_KEY),
        "{log}"
    );
}

/// Without an `[api]` table every `/v1` route answers 404 (with or without a key), and nothing
/// is queued; the rest of ingress serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_table_every_v1_route_answers_404() {
    let d = Deployment::new(Opts::default()).await;
    assert!(!std::fs::read_to_string(&d.config)
        .unwrap()
        .contains("[api]"));
    let _serve = d.spawn_env("serve", "serve", &API_ENV);
    wait_serving(&d).await;
    let template = template_to("16505550201", "order_update").to_string();
    let wrong = format!("Bearer {OTHER_KEY}");
    let good = bearer();
    for (method, path) in [
        ("POST", messages_path(WABA)),
        ("GET", format!("{}/api-0", messages_path(WABA))),
        ("POST", messages_path("nope")),
        ("POST", format!("/v1/channels/{WABA}/broadcasts")),
        ("GET", "/v1/anything".to_string()),
    ] {
        for auth in [Some(good.as_str()), Some(wrong.as_str()), None] {
            let body =
                (method == "POST").then(|| ("application/json", template.clone().into_bytes()));
            let r = call(&d, method, &path, auth, Some("k-off"), body).await;
            refused(
                &r,
                404,
                "not_found",
                &format!("{method} {path} with {auth:?}"),
            );
            assert!(r.message().contains("[api]"), "says why: {r:?}");
        }
    }
    assert_nothing_queued(&d, "the API is off").await;
    let health = reqwest::get(format!("http://{}/healthz", d.listen))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// The store goes down: every request answers 503 JSON (`unavailable`, `Retry-After: 5`, no
/// Redis detail), promptly. Back up: exactly what was queued before is there, nothing of the
/// refused requests (their Idempotency-Key included), and the API queues again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_answers_503_and_leaves_nothing_half_written() {
    let redis = support::RedisServer::start(support::RedisOptions { appendonly: true });
    let d = with_api(
        Opts {
            redis_url: Some(redis.url()),
            ..Opts::default()
        },
        "",
    )
    .await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let (c1, c2) = ("16505550301", "16505550302");
    let first = accepted(
        &post(&d, WABA, &template_to(c1, "order_update"), Some("before")).await,
        "queued",
        "before the outage",
    );
    let before = out_keys(&d, WABA).await;
    assert!(before.contains(&format!("out:rec:{first}")), "{before:?}");

    redis.stop();
    let requests: [(&str, Value, Option<&str>); 4] = [
        (WABA, template_to(c2, "order_update"), Some("during")),
        (WABA, template_to(c1, "order_update"), Some("before")),
        (WABA, template_to(c2, "order_update"), None),
        (PERSONAL, text_to(c2, "hi"), None),
    ];
    for (channel, body, key) in &requests {
        let started = Instant::now();
        let r = post(&d, channel, body, *key).await;
        let took = started.elapsed();
        refused(
            &r,
            503,
            "unavailable",
            &format!("{channel} {body} while Redis is down"),
        );
        assert_eq!(r.retry_after.as_deref(), Some("5"), "{r:?}");
        assert!(
            !r.message().contains("127.0.0.1") && !r.message().to_lowercase().contains("refused"),
            "the store's detail stays in the log: {r:?}"
        );
        assert!(took < Duration::from_secs(10), "answered in {took:?}");
    }
    let r = get(&d, WABA, &first).await;
    refused(&r, 503, "unavailable", "GET while Redis is down");
    // The checks that need no store still answer first.
    let r = post(&d, "nope", &template_to(c2, "t"), None).await;
    refused(
        &r,
        404,
        "unknown_channel",
        "unknown channel while Redis is down",
    );
    let r = post_bytes(&d, WABA, b"{".to_vec(), None).await;
    refused(&r, 400, "invalid_request", "bad body while Redis is down");

    redis.restart();
    assert_eq!(
        out_keys(&d, WABA).await,
        before,
        "after the restart: exactly what was queued before"
    );
    assert!(out_keys(&d, PERSONAL).await.is_empty());
    assert_eq!(
        d.redis_get(&d.keys.out_idempotency(WABA, "during")).await,
        None
    );
    assert_eq!(lane(&d, WABA, c1).await, [first.as_str()]);
    assert!(lane(&d, WABA, c2).await.is_empty());
    // The API comes back by itself; "during" was never used, "before" still is.
    let r = support::eventually(Duration::from_secs(20), "the API back", || async {
        let r = post(&d, WABA, &template_to(c2, "order_update"), Some("during")).await;
        (r.status != 503).then_some(r)
    })
    .await;
    let during = accepted(&r, "queued", "the refused key, after the outage");
    assert_ne!(during, first);
    let r = post(&d, WABA, &template_to(c1, "order_update"), Some("before")).await;
    assert_eq!(accepted(&r, "queued", "the key of before"), first);
    assert_eq!(lane(&d, WABA, c2).await, [during]);
    let log = d.log("serve");
    assert!(log.contains("unavailable"), "the outage is logged:\n{log}");
}

// ------------------------------------------------------------------ 2. idempotency

/// 50 concurrent POSTs with one key and one body: one id for all, one message queued, one
/// request at the fake Graph API. After a `serve` restart the same key still answers that id
/// (and its current status), another body still 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_posts_with_one_key_send_once_also_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let d = with_api(Opts::default(), "").await;
    let serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w0");
    wait_serving(&d).await;
    wait_leased(&d).await;
    let customer = "16505550401";
    let body = template_to(customer, "order_update").to_string();

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (listen, body, barrier) = (d.listen.clone(), body.clone(), barrier.clone());
        set.spawn(async move {
            barrier.wait().await;
            call_at(
                &listen,
                "POST",
                &messages_path(WABA),
                Some(&bearer()),
                Some("campaign-7"),
                Some(("application/json", body.into_bytes())),
            )
            .await
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap());
    }
    assert_eq!(answers.len(), 50);
    let ids: BTreeSet<String> = answers.iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids.len(), 1, "one id for all: {answers:?}");
    let id = ids.into_iter().next().unwrap();
    for r in &answers {
        assert_eq!(r.status, 202, "{r:?}");
        assert_api_id(r.id());
        let st = r.body["status"].as_str().unwrap_or("");
        assert!(["queued", "sending", "sent"].contains(&st), "{r:?}");
    }
    assert_eq!(record_ids(&d, WABA).await, BTreeSet::from([id.clone()]));

    let sent = wait_graph_send(&d, &id).await;
    assert_eq!(sent.body["template"]["name"], "order_update");
    wait_status(&d, WABA, &id, "sent").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(d.graph.requests_to(MESSAGES).len(), 1, "sent once");

    // Restart `serve`: the key lives in Redis, not in the process.
    serve.stop();
    let _serve = spawn(&d, "serve", "serve2");
    wait_serving(&d).await;
    let r = post_bytes(&d, WABA, body.clone().into_bytes(), Some("campaign-7")).await;
    assert_eq!(accepted(&r, "sent", "the same key after a restart"), id);
    let r = post(
        &d,
        WABA,
        &template_to(customer, "other"),
        Some("campaign-7"),
    )
    .await;
    refused(
        &r,
        409,
        "idempotency_conflict",
        "another body after a restart",
    );
    assert_eq!(r.body["error"]["id"], id.as_str());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(d.graph.requests_to(MESSAGES).len(), 1, "still sent once");
    assert_eq!(record_ids(&d, WABA).await, BTreeSet::from([id]));
}

// ------------------------------------------------------------------ 3. the window

/// A customer who wrote 23 h ago gets free-form; one who wrote 25 h ago does not (422 with
/// `closed_at` = that message + 24 h) but gets a template. On the Personal channel the same
/// contact gets free-form (WAHA) and no template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_decides_free_form_and_templates_go_out_on_waba_only() {
    let d = with_api(Opts::default(), "").await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w0");
    wait_serving(&d).await;
    let (open, closed) = ("16505550501", "16505550502");
    let now = deploy::now_ms();
    let (t_open, t_closed) = (now - 23 * HOUR_MS, now - 25 * HOUR_MS);
    customer_writes(&d, WABA, open, "wamid.win.open", t_open).await;
    customer_writes(&d, WABA, closed, "wamid.win.closed", t_closed).await;

    // 23 h ago: free-form is queued and sent.
    let id = accepted(
        &post(&d, WABA, &text_to(open, "still open"), None).await,
        "queued",
        "text 23 h after",
    );
    let sent = wait_graph_send(&d, &id).await;
    assert_eq!(
        sent.body,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
               "to": format!("+{open}"), "type": "text", "text": {"body": "still open"},
               "biz_opaque_callback_data": id})
    );
    let view = wait_status(&d, WABA, &id, "sent").await;
    assert!(
        view["wamid"]
            .as_str()
            .is_some_and(|w| w.starts_with("wamid.fake")),
        "{view}"
    );
    // The wa_id written with a `+` is the same customer (the same open window).
    let plus = accepted(
        &post(&d, WABA, &text_to(&format!("+{open}"), "with a plus"), None).await,
        "queued",
        "text to +wa_id",
    );
    assert_eq!(
        wait_graph_send(&d, &plus).await.body["to"],
        format!("+{open}")
    );
    assert_eq!(wait_status(&d, WABA, &plus, "sent").await["to"], open);

    // 25 h ago: refused, with when it closed; nothing queued for that customer.
    for body in [
        text_to(closed, "too late"),
        json!({"to": closed, "type": "interactive", "interactive": {"type": "button"}}),
    ] {
        let r = post(&d, WABA, &body, None).await;
        refused(&r, 422, "window_closed", "free-form 25 h after");
        assert_eq!(
            r.body["error"]["closed_at"],
            json!(t_closed + DAY_MS),
            "closed 24 h after the customer's message: {r:?}"
        );
    }
    assert!(
        !out_keys(&d, WABA)
            .await
            .contains(&format!("out:lane:{closed}")),
        "no lane for the refused customer"
    );
    // … but a template goes.
    let tid = accepted(
        &post(&d, WABA, &template_to(closed, "reengage"), None).await,
        "queued",
        "template 25 h after",
    );
    let sent = wait_graph_send(&d, &tid).await;
    assert_eq!(sent.body["type"], "template");
    assert_eq!(sent.body["to"], format!("+{closed}"));
    assert_eq!(
        sent.body["template"],
        json!({"name": "reengage", "language": {"code": "en_US"}})
    );
    wait_status(&d, WABA, &tid, "sent").await;

    // The same contact on Personal: no window, no templates.
    let pid = accepted(
        &post(&d, PERSONAL, &text_to(closed, "on the phone"), None).await,
        "queued",
        "text on Personal",
    );
    let waha = wait_requests(&d.waha, "/api/sendText", 1, Duration::from_secs(15)).await;
    assert_eq!(
        waha[0].body,
        json!({"session": "default", "chatId": format!("{closed}@c.us"), "text": "on the phone"})
    );
    let view = wait_status(&d, PERSONAL, &pid, "sent").await;
    assert_eq!(view["to"], format!("{closed}@s.whatsapp.net"));
    let r = post(&d, PERSONAL, &template_to(closed, "reengage"), None).await;
    refused(&r, 422, "templates_unsupported", "a template on Personal");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        d.graph.requests_to(MESSAGES).len(),
        3,
        "the two texts and the template"
    );
    assert_eq!(d.waha.requests_to("/api/sendText").len(), 1);
    assert!(
        d.waha
            .requests()
            .iter()
            .all(|r| !r.body.to_string().contains("reengage")),
        "no template reached WAHA"
    );
}

// ------------------------------------------------------------------ 4. statuses

/// Signed status webhooks through `serve` move an API message to delivered, then read (found
/// by its callback key, then by its wamid alone); a late `sent` never moves it back; `history`
/// has every status once, in order, at the webhooks' own times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_webhooks_move_an_api_message_forward_never_back() {
    let d = with_api(Opts::default(), "").await;
    d.recorder.answer_all(json!({"replies": []}));
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w0");
    wait_serving(&d).await;
    let customer = "16505550601";
    customer_writes(&d, WABA, customer, "wamid.st.in", deploy::now_ms()).await;

    let id = accepted(
        &post(&d, WABA, &text_to(customer, "tracked"), None).await,
        "queued",
        "a tracked text",
    );
    let view = wait_status(&d, WABA, &id, "sent").await;
    let wamid = view["wamid"].as_str().unwrap().to_string();
    assert!(wamid.starts_with("wamid.fake"), "{view}");
    assert_eq!(history(&view), ["queued", "sending", "sent"]);

    let ts = deploy::now_ms() / 1000 + 1;
    post_statuses(
        &d,
        vec![meta_status(&wamid, "delivered", ts, customer, Some(&id))],
    )
    .await;
    wait_status(&d, WABA, &id, "delivered").await;
    // `read` carries no callback key: the wamid finds the message.
    post_statuses(
        &d,
        vec![meta_status(&wamid, "read", ts + 1, customer, None)],
    )
    .await;
    wait_status(&d, WABA, &id, "read").await;
    // Late: `sent` after `read`.
    post_statuses(
        &d,
        vec![meta_status(&wamid, "sent", ts - 5, customer, Some(&id))],
    )
    .await;
    let late = format!("{wamid}:sent");
    d.recorder
        .wait_for("the late sent handled", Duration::from_secs(10), |c| {
            c.iter().any(|c| c.event_id == late)
        })
        .await;
    d.wait_drained(WABA, customer, Duration::from_secs(10))
        .await;

    let r = get(&d, WABA, &id).await;
    assert_eq!(r.status, 200, "{r:?}");
    let view = r.body;
    assert_eq!(view["status"], "read", "never downgraded: {view}");
    assert_eq!(view["wamid"], wamid.as_str());
    assert_eq!(view["error"], Value::Null);
    assert_eq!(view["to"], customer);
    assert_eq!(view["type"], "text");
    assert_eq!(
        history(&view),
        ["queued", "sending", "sent", "delivered", "read"],
        "{view}"
    );
    let at: Vec<i64> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["at"].as_i64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "in time order: {view}");
    assert_eq!(at[0], view["created_at"].as_i64().unwrap());
    assert_eq!(
        (at[3], at[4]),
        (ts * 1000, (ts + 1) * 1000),
        "delivered and read at the webhooks' timestamps: {view}"
    );

    // Unknown ids: 404 not_found from the handler; a message of another channel is not there.
    for (channel, unknown) in [
        (WABA, "api-ffffffffffffffffffffffffffffffff".to_string()),
        (WABA, "no-such-id".to_string()),
        (PERSONAL, id.clone()),
    ] {
        let r = get(&d, channel, &unknown).await;
        refused(&r, 404, "not_found", &format!("{channel}/{unknown}"));
        assert!(!r.is_catch_all() && r.message().contains(&unknown), "{r:?}");
    }
    assert_eq!(
        d.graph.requests_to(MESSAGES).len(),
        1,
        "statuses sent nothing"
    );
}

// ------------------------------------------------------------------ 5. one lane

/// API messages and the bot's replies to the same customer share one lane: an API text is in
/// flight (the fake Graph answers slowly); meanwhile another API text is posted while the bot
/// thinks, the bot answers three texts, and a third API text follows. The lane holds them in
/// queueing order behind the one in flight, and they reach the fake Graph API in that order,
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_messages_and_bot_replies_leave_in_queueing_order() {
    let _serial = SERIAL.lock().await;
    let d = with_api(Opts::default(), "").await;
    let _serve = spawn(&d, "serve", "serve");
    let _w = spawn(&d, "work", "w0");
    wait_serving(&d).await;
    wait_leased(&d).await;
    let customer = "16505550701";
    customer_writes(&d, WABA, customer, "wamid.order.0", deploy::now_ms()).await;

    d.graph.push_for(
        MESSAGES,
        Answer::Slow(Duration::from_millis(4000), Box::new(Answer::Ok)),
    );
    let a1 = accepted(
        &post(&d, WABA, &text_to(customer, "a1"), None).await,
        "queued",
        "a1",
    );
    wait_graph_send(&d, &a1).await;
    // a1 is in flight for 4 s. The bot takes 1.5 s to answer the next message.
    d.recorder.set_delay(Duration::from_millis(1500));
    let m = message(
        WABA,
        customer,
        "wamid.order.1",
        deploy::now_ms(),
        "three please",
    );
    d.recorder
        .script(&m.id, answer(vec![text("r1"), text("r2"), text("r3")]));
    d.enqueue(&[&m]).await;
    let a2 = accepted(
        &post(&d, WABA, &text_to(customer, "a2"), None).await,
        "queued",
        "a2",
    );
    let replies: Vec<String> = (0..3).map(|i| format!("wamid.order.1:{i}")).collect();
    support::eventually(
        Duration::from_secs(10),
        "the bot's replies queued",
        || async {
            let ids = record_ids(&d, WABA).await;
            replies.iter().all(|r| ids.contains(r)).then_some(())
        },
    )
    .await;
    let a3 = accepted(
        &post(&d, WABA, &text_to(customer, "a3"), None).await,
        "queued",
        "a3",
    );
    let queued = lane(&d, WABA, customer).await;
    let behind: Vec<String> = [a2.clone()]
        .into_iter()
        .chain(replies.iter().cloned())
        .chain([a3.clone()])
        .collect();
    assert!(
        queued.ends_with(&behind) && queued.len() <= behind.len() + 1,
        "the lane, while a1 is in flight: {queued:?}"
    );
    assert_eq!(
        graph_sends(&d, &a2).len(),
        0,
        "a2 waits behind a1 (the snapshot was taken while a1 was in flight)"
    );

    let expected: Vec<String> = [a1.clone()].into_iter().chain(behind).collect();
    wait_requests(&d.graph, MESSAGES, expected.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reqs = d.graph.requests_to(MESSAGES);
    let order: Vec<&str> = reqs.iter().map(key_of).collect();
    assert_eq!(order, expected, "arrival order = queueing order, each once");
    let texts: Vec<&str> = reqs
        .iter()
        .map(|r| r.body["text"]["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, ["a1", "a2", "r1", "r2", "r3", "a3"]);
    for id in [&a1, &a2, &a3] {
        wait_status(&d, WABA, id, "sent").await;
    }
    // The bot's replies are messages of the API too.
    let view = wait_status(&d, WABA, &replies[0], "sent").await;
    assert_eq!(
        (view["to"].as_str(), view["type"].as_str()),
        (Some(customer), Some("text"))
    );
}

// ------------------------------------------------------------------ 6. the CLI

/// `coexist send`: a text and a template with parameters reach the fake Graph API; a refusal
/// exits 2 with the error JSON on stdout; an Idempotency-Key sends once; a store error exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coexist_send_queues_through_the_same_code_path() {
    let d = with_api(Opts::default(), "").await;
    let _w = spawn(&d, "work", "w0");
    wait_leased(&d).await;
    let (c1, c2, c3, c4) = ("16505550801", "16505550802", "16505550803", "16505550804");
    customer_writes(&d, WABA, c1, "wamid.cli.in", deploy::now_ms()).await;
    let send = |args: &[&str]| {
        let mut all = vec!["send"];
        all.extend_from_slice(args);
        cli(&d, &d.config, &all, &API_ENV)
    };
    let printed = |out: &Output| -> Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
    };
    let ok = |out: &Output, what: &str| -> String {
        assert!(
            out.status.success(),
            "{what}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v = printed(out);
        assert_eq!(v["status"], "queued", "{what}: {v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{what}: {v}");
        let id = v["id"].as_str().unwrap().to_string();
        assert_api_id(&id);
        id
    };

    // --text
    let id = ok(
        &send(&["--channel", WABA, "--to", c1, "--text", "from the CLI"]),
        "--text",
    );
    let sent = wait_graph_send(&d, &id).await;
    assert_eq!(sent.body["type"], "text");
    assert_eq!(sent.body["text"], json!({"body": "from the CLI"}));
    assert_eq!(sent.body["to"], format!("+{c1}"));

    // --template with --params: the two body parameters
    let tid = ok(
        &send(&[
            "--channel",
            WABA,
            "--to",
            c2,
            "--template",
            "order_update",
            "--language",
            "pt_BR",
            "--params",
            r#"["a","b"]"#,
        ]),
        "--template --params",
    );
    let sent = wait_graph_send(&d, &tid).await;
    assert_eq!(
        sent.body["template"],
        json!({"name": "order_update", "language": {"code": "pt_BR"},
               "components": [{"type": "body", "parameters": [
                   {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})
    );

    // Refusals: exit 2, the error JSON on stdout, nothing queued.
    for (args, code) in [
        (
            vec![
                "--channel",
                PERSONAL,
                "--to",
                c1,
                "--template",
                "order_update",
            ],
            "templates_unsupported",
        ),
        (
            vec!["--channel", WABA, "--to", c3, "--text", "hi"],
            "window_closed",
        ),
        (
            vec!["--channel", "nope", "--to", c1, "--text", "hi"],
            "unknown_channel",
        ),
        (
            vec!["--channel", WABA, "--to", "a b", "--text", "hi"],
            "invalid_request",
        ),
    ] {
        let out = send(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let v = printed(&out);
        assert_eq!(v["error"]["code"], code, "{args:?}: {v}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not sent"),
            "{args:?}: {out:?}"
        );
    }
    assert!(out_keys(&d, PERSONAL).await.is_empty());
    assert!(!out_keys(&d, WABA).await.contains(&format!("out:lane:{c3}")));

    // --idempotency-key twice: one id, one send.
    let args = [
        "--channel",
        WABA,
        "--to",
        c4,
        "--template",
        "order_update",
        "--idempotency-key",
        "cli-1",
    ];
    let first = ok(&send(&args), "first --idempotency-key");
    let out = send(&args);
    assert!(out.status.success(), "{out:?}");
    let again = printed(&out);
    assert_eq!(again["id"], first.as_str(), "the same id: {again}");
    assert!(
        ["queued", "sending", "sent"].contains(&again["status"].as_str().unwrap_or("")),
        "{again}"
    );
    wait_graph_send(&d, &first).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(graph_sends(&d, &first).len(), 1, "sent once");

    // The CLI needs no key: the config without [api] sends too.
    let out = cli(
        &d,
        &base_config(&d),
        &[
            "send",
            "--channel",
            WABA,
            "--to",
            c2,
            "--template",
            "order_update",
        ],
        &[],
    );
    let bid = ok(&out, "send on the config without [api]");
    wait_graph_send(&d, &bid).await;
    // With [api] but its key unset: a config error naming the key.
    let out = cli(
        &d,
        &d.config,
        &["send", "--channel", WABA, "--to", c2, "--text", "x"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api.keys"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The store unreachable: exit 1.
    let dead = d.dir.path().join("dead.toml");
    let port = free_port();
    let text = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace(&d.redis_url, &format!("redis://127.0.0.1:{port}/"));
    assert!(text.contains(&format!("127.0.0.1:{port}")));
    std::fs::write(&dead, text).unwrap();
    let out = cli(
        &d,
        &dead,
        &[
            "send",
            "--channel",
            WABA,
            "--to",
            c2,
            "--template",
            "order_update",
        ],
        &API_ENV,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

// ------------------------------------------------------------------ 7. OpenAPI

fn openapi() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every (METHOD, path) of the document.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// The routes the server serves under `/v1` (src/ingress.rs `routes`), OpenAPI-style.
const SERVED: [(&str, &str); 5] = [
    ("POST", "/v1/channels/{channel}/messages"),
    ("GET", "/v1/channels/{channel}/messages/{id}"),
    ("POST", "/v1/channels/{channel}/broadcasts"),
    ("GET", "/v1/channels/{channel}/broadcasts/{id}"),
    ("POST", "/v1/channels/{channel}/broadcasts/{id}/cancel"),
];

fn concrete(path: &str) -> String {
    path.replace("{channel}", WABA)
        .replace("{id}", "api-00000000000000000000000000000000")
}

/// What the server answers a request with a valid key (and a `{}` body for POST) on this route.
async fn probe(d: &Deployment, method: &str, path: &str) -> Res {
    let body = (method == "POST").then(|| ("application/json", b"{}".to_vec()));
    call(d, method, &concrete(path), Some(&bearer()), None, body).await
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {r}"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// Where `value` breaks `schema` (the JSON Schema keywords the document uses).
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let s = resolve(doc, schema);
    let mut out = Vec::new();
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = types.iter().any(|t| match *t {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "null" => value.is_null(),
            _ => false,
        });
        if !fits {
            out.push(format!("{at}: {value} is not {types:?}"));
            return out;
        }
    }
    if let Some(c) = s.get("const") {
        if c != value {
            out.push(format!("{at}: {value} is not {c}"));
        }
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        if !e.contains(value) {
            out.push(format!("{at}: {value} not in {e:?}"));
        }
    }
    if let (Some(p), Some(v)) = (s.get("pattern").and_then(Value::as_str), value.as_str()) {
        if !regex_lite::Regex::new(p).unwrap().is_match(v) {
            out.push(format!("{at}: {v:?} does not match {p}"));
        }
    }
    if let Some(obj) = value.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                out.push(format!("{at}: no {r}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(p) => out.extend(violations(doc, p, v, &format!("{at}.{k}"))),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{at}.{k}: not in the schema"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            out.extend(violations(doc, items, v, &format!("{at}[{i}]")));
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            out.extend(violations(doc, sub, value, at));
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alternatives)) = s.get(key) {
            let fitting = alternatives
                .iter()
                .filter(|a| violations(doc, a, value, at).is_empty())
                .count();
            if fitting == 0 || (key == "oneOf" && fitting > 1) {
                out.push(format!("{at}: {value} fits {fitting} of its {key}"));
            }
        }
    }
    out
}

/// The document's JSON schema of (method, path)'s `status` response.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    let response = op["responses"]
        .get(status.to_string())
        .unwrap_or_else(|| panic!("{method} {path}: {status} is not documented"));
    let response = resolve(doc, response);
    response["content"]["application/json"]["schema"]
        .as_object()
        .map(|_| &response["content"]["application/json"]["schema"])
        .unwrap_or_else(|| panic!("{method} {path} {status}: no application/json schema"))
}

/// `r` is what the document says (method, path) answers with its status.
fn documented(doc: &Value, method: &str, path: &str, r: &Res) {
    let schema = response_schema(doc, method, path, r.status);
    let v = violations(doc, schema, &r.body, "$");
    assert!(
        v.is_empty(),
        "{method} {path} answered {r:?}, not as documented: {v:?}"
    );
}

/// The document is OpenAPI 3.1 with a bearer scheme every operation requires; its references
/// resolve; every route the server serves is in it; and what the server really answers on the
/// messages routes (202, 200, every error code) fits the documented schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_what_the_server_answers() {
    let doc = openapi();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("securitySchemes");
    let bearer_scheme: Vec<&String> = schemes
        .iter()
        .filter(|(_, s)| s["type"] == "http" && s["scheme"] == "bearer")
        .map(|(name, _)| name)
        .collect();
    assert_eq!(bearer_scheme.len(), 1, "one bearer scheme: {schemes:?}");
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in &all_refs {
        resolve(&doc, &json!({"$ref": r}));
    }
    let ops = operations(&doc);
    for (method, path) in &ops {
        let op = &doc["paths"][path][method.to_lowercase()];
        let security = op.get("security").unwrap_or(&doc["security"]);
        assert!(
            security.as_array().is_some_and(
                |s| !s.is_empty() && s.iter().all(|r| r.get(bearer_scheme[0]).is_some())
            ),
            "{method} {path} requires the bearer key: {security}"
        );
        for status in ["401", "503"] {
            assert!(
                op["responses"].get(status).is_some(),
                "{method} {path}: no {status}"
            );
        }
        // Every path parameter is declared.
        let declared: Vec<String> = doc["paths"][path]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(op["parameters"].as_array().into_iter().flatten())
            .map(|p| resolve(&doc, p))
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                declared.iter().any(|d| d == name),
                "{method} {path}: {name} undeclared"
            );
        }
    }
    for route in SERVED.iter() {
        assert!(
            ops.iter().any(|(m, p)| (m.as_str(), p.as_str()) == *route),
            "{route:?} is not in docs/openapi.json"
        );
    }
    let ndjson =
        &doc["paths"]["/v1/channels/{channel}/broadcasts"]["post"]["requestBody"]["content"];
    assert!(
        ndjson.get("application/json").is_some() && ndjson.get("application/x-ndjson").is_some(),
        "broadcasts take JSON and NDJSON: {ndjson}"
    );
    // Every /v1 route src/ingress.rs registers (but the catch-all) is a documented path.
    let ingress =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ingress.rs")).unwrap();
    let registered: Vec<&str> = ingress
        .split('"')
        .filter(|s| s.starts_with("/v1/") && !s.contains("{tail"))
        .collect();
    assert!(registered.len() >= 2, "{registered:?}");
    for path in registered {
        assert!(
            doc["paths"].get(path).is_some(),
            "src/ingress.rs serves {path}, docs/openapi.json does not describe it"
        );
    }

    // What the server answers fits the document.
    let d = with_api(Opts::default(), "max_body_bytes = 4096").await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    for (method, path) in SERVED {
        let r = probe(&d, method, path).await;
        assert!(
            !r.is_catch_all() && r.status != 405,
            "{method} {path} is served: {r:?}"
        );
    }
    let (post_path, get_path) = (SERVED[0].1, SERVED[1].1);
    let customer = "16505550901";
    // The document's own request examples are understood (202, or 422 for free-form to a
    // customer who never wrote; never 400).
    let examples = doc["paths"][post_path]["post"]["requestBody"]["content"]["application/json"]
        ["examples"]
        .as_object()
        .expect("request examples");
    for (name, example) in examples {
        let r = post(&d, WABA, &example["value"], None).await;
        assert!(
            r.status == 202 || r.code() == "window_closed",
            "example {name}: {r:?}"
        );
        documented(&doc, "POST", post_path, &r);
    }
    let r = post(
        &d,
        WABA,
        &template_to(customer, "order_update"),
        Some("oa-1"),
    )
    .await;
    documented(&doc, "POST", post_path, &r);
    let id = accepted(&r, "queued", "a template");
    let r = get(&d, WABA, &id).await;
    assert_eq!(r.status, 200);
    documented(&doc, "GET", get_path, &r);
    let answers = [
        post(&d, WABA, &template_to(customer, "other"), Some("oa-1")).await,
        post(&d, WABA, &json!({"type": "text"}), None).await,
        post_bytes(&d, WABA, b"nope".to_vec(), None).await,
        post(&d, "nope", &template_to(customer, "t"), None).await,
        post(&d, WABA, &text_to(customer, "hi"), None).await,
        post(&d, PERSONAL, &template_to(customer, "t"), None).await,
        post(
            &d,
            PERSONAL,
            &json!({"to": customer, "type": "interactive",
                                   "interactive": {"type": "button"}}),
            None,
        )
        .await,
        post_bytes(&d, WABA, vec![b' '; 5000], None).await,
        call(&d, "POST", &concrete(post_path), None, None, None).await,
    ];
    let codes: BTreeSet<&str> = answers.iter().map(Res::code).collect();
    assert_eq!(
        codes,
        BTreeSet::from([
            "idempotency_conflict",
            "invalid_request",
            "unknown_channel",
            "window_closed",
            "templates_unsupported",
            "unsupported_on_channel",
            "too_large",
            "unauthorized",
        ])
    );
    for r in &answers {
        documented(&doc, "POST", post_path, r);
    }
    for r in [
        get(&d, WABA, "api-ffffffffffffffffffffffffffffffff").await,
        get(&d, "nope", "x").await,
        call(&d, "GET", &concrete(get_path), Some("Bearer x"), None, None).await,
    ] {
        documented(&doc, "GET", get_path, &r);
    }

    // Broadcasts: created from JSON and from NDJSON, read, cancelled, refused.
    let (create, status, cancel) = (SERVED[2].1, SERVED[3].1, SERVED[4].1);
    let broadcasts = |channel: &str| format!("/v1/channels/{channel}/broadcasts");
    let bc_post = |channel: &str, content_type: &'static str, body: Vec<u8>| {
        let path = broadcasts(channel);
        let listen = d.listen.clone();
        async move {
            call_at(
                &listen,
                "POST",
                &path,
                Some(&bearer()),
                None,
                Some((content_type, body)),
            )
            .await
        }
    };
    let bc_body = &doc["paths"][create]["post"]["requestBody"]["content"];
    let json_example = serde_json::to_vec(&bc_body["application/json"]["example"]).unwrap();
    let r = bc_post(WABA, "application/json", json_example).await;
    assert_eq!(r.status, 202, "the document's JSON example: {r:?}");
    assert_eq!(
        (&r.body["total"], &r.body["state"]),
        (&json!(2), &json!("running"))
    );
    documented(&doc, "POST", create, &r);
    let first = r.body["id"].as_str().unwrap().to_string();
    let ndjson_example = bc_body["application/x-ndjson"]["example"]
        .as_str()
        .expect("an NDJSON example")
        .to_string();
    // The example with its first recipient listed again (written with a `+`): skipped.
    let ndjson = format!("{ndjson_example}\n{}\n", json!({"to": "+16505551234"}));
    let r = bc_post(WABA, "application/x-ndjson", ndjson.into_bytes()).await;
    assert_eq!(r.status, 202, "the document's NDJSON example: {r:?}");
    assert_eq!(
        (&r.body["total"], &r.body["skipped"]),
        (&json!(3), &json!(1)),
        "{r:?}"
    );
    documented(&doc, "POST", create, &r);
    let second = r.body["id"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let bc_path = |p: &str, id: &str| p.replace("{channel}", WABA).replace("{id}", id);
    let r = call(
        &d,
        "GET",
        &bc_path(status, &first),
        Some(&bearer()),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["total"], 2, "{r:?}");
    documented(&doc, "GET", status, &r);
    let r = call(
        &d,
        "POST",
        &bc_path(cancel, &second),
        Some(&bearer()),
        None,
        None,
    )
    .await;
    assert_eq!(
        (r.status, &r.body["state"]),
        (200, &json!("cancelled")),
        "{r:?}"
    );
    documented(&doc, "POST", cancel, &r);
    let r = call(
        &d,
        "GET",
        &bc_path(status, &second),
        Some(&bearer()),
        None,
        None,
    )
    .await;
    assert_eq!(
        (r.status, &r.body["state"]),
        (200, &json!("cancelled")),
        "{r:?}"
    );
    documented(&doc, "GET", status, &r);
    let template = json!({"type": "template", "name": "promo", "language": "en_US"});
    let refusals = [
        (
            bc_post(
                WABA,
                "application/json",
                json!({"name": "x", "message": template, "recipients": []})
                    .to_string()
                    .into_bytes(),
            )
            .await,
            "recipients",
        ),
        (
            bc_post(
                WABA,
                "application/json",
                json!({"message": template, "recipients": [{"to": "1"}, {"to": ""}]})
                    .to_string()
                    .into_bytes(),
            )
            .await,
            "recipients[1].to",
        ),
        (
            bc_post(
                WABA,
                "application/x-ndjson",
                format!(
                    "{}\n{{\"to\": \"1\"}}\n{{\"to\": 5}}\n",
                    json!({"message": template})
                )
                .into_bytes(),
            )
            .await,
            "line 3.to",
        ),
        (
            bc_post(WABA, "application/json", b"{".to_vec()).await,
            "body",
        ),
    ];
    for (r, field) in &refusals {
        refused(r, 400, "invalid_request", field);
        assert_eq!(r.field(), *field, "{r:?}");
        documented(&doc, "POST", create, r);
    }
    let list = json!({"message": template, "recipients": [{"to": "16505551234"}]})
        .to_string()
        .into_bytes();
    let r = bc_post(PERSONAL, "application/json", list.clone()).await;
    refused(
        &r,
        422,
        "templates_unsupported",
        "a template broadcast on Personal",
    );
    documented(&doc, "POST", create, &r);
    let r = bc_post("nope", "application/json", list.clone()).await;
    refused(
        &r,
        404,
        "unknown_channel",
        "a broadcast on an unknown channel",
    );
    documented(&doc, "POST", create, &r);
    let r = call(
        &d,
        "POST",
        &broadcasts(WABA),
        None,
        None,
        Some(("application/json", list)),
    )
    .await;
    refused(&r, 401, "unauthorized", "a broadcast without a key");
    documented(&doc, "POST", create, &r);
    for (method, path) in [("GET", status), ("POST", cancel)] {
        let unknown = bc_path(path, "bc-00000000000000000000000000000000");
        let r = call(&d, method, &unknown, Some(&bearer()), None, None).await;
        refused(&r, 404, "not_found", &unknown);
        assert!(!r.is_catch_all(), "{r:?}");
        documented(&doc, method, path, &r);
    }
}

/// Every operation of docs/openapi.json is answered by a real handler of a running `serve`,
/// not by the `/v1` catch-all (an unknown id answering `not_found` from its handler is fine).
/// Nothing is skipped: a documented route the server does not serve fails this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let doc = openapi();
    let d = with_api(Opts::default(), "").await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let mut unserved = Vec::new();
    let ops = operations(&doc);
    assert!(ops.len() >= SERVED.len(), "{ops:?}");
    for (method, path) in &ops {
        let r = probe(&d, method, path).await;
        println!("{method} {path} -> {} {}", r.status, r.body);
        if r.is_catch_all() || r.status == 405 {
            unserved.push(format!("{method} {path} ({} {})", r.status, r.body));
        }
    }
    assert!(
        unserved.is_empty(),
        "documented in docs/openapi.json but not served by `coexist serve`:\n{}",
        unserved.join("\n")
    );
}
