//! Ingress end to end: the real HTTP server, a real redis-server, every fixture.
//!
//! Each test starts `coexist::ingress` on a free port against Redis with its own key prefix,
//! posts signed (and wrongly signed) webhooks, and checks what landed in the streams.

mod support;

use coexist::config::Config;
use coexist::event::Event;
use coexist::ingest::Ingest;
use coexist::ingress::{self, AppState};
use coexist::keys::Keys;
use coexist::metrics::Metric;
use coexist::metrics::Metrics;
use coexist::queue::{Queue, RedisQueue};
use coexist::verify::{header_value, Algorithm};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::RedisServer;

const META_SECRET: &str = "meta-app-secret";
const META_OLD_SECRET: &str = "meta-app-secret-previous";
const WAHA_SECRET: &str = "waha-hmac-key";
const WABA: &str = "shop-waba";
const PERSONAL: &str = "shop-personal";
const PHONE_NUMBER_ID: &str = "106540352242922";

/// Channel id → partitions, as configured below.
const CHANNELS: [(&str, u32); 3] = [(WABA, 4), (PERSONAL, 2), ("_unrouted", 1)];

fn config(redis_url: &str, prefix: &str, max_body: usize) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = {max_body}

[redis]
url = "{redis_url}"
prefix = "{prefix}"

[meta]
verify_token = "${{VERIFY}}"
app_secrets = ["${{META_APP_SECRET}}", "${{META_APP_SECRET_PREVIOUS}}"]

[[channels]]
id = "{WABA}"
kind = "waba"
phone_number_id = "{PHONE_NUMBER_ID}"
coexistence = true
partitions = 4

[[channels]]
id = "{PERSONAL}"
kind = "personal"
session = "default"
webhook_secrets = ["${{WAHA_HMAC_KEY}}"]
partitions = 2
"#
    );
    let env = |name: &str| match name {
        "VERIFY" => Some("verify-me".to_string()),
        "META_APP_SECRET" => Some(META_SECRET.to_string()),
        "META_APP_SECRET_PREVIOUS" => Some(META_OLD_SECRET.to_string()),
        "WAHA_HMAC_KEY" => Some(WAHA_SECRET.to_string()),
        _ => None,
    };
    Config::from_toml(&text, "test.toml", &env).unwrap()
}

/// A running ingress; stopped on drop.
struct Ingress {
    base: String,
    handle: actix_web::dev::ServerHandle,
    metrics: Metrics,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || futures_executor(handle.stop(false)));
    }
}

fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn start_ingress(config: Config) -> Ingress {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let redis = config.redis.clone().unwrap();
            let queue = RedisQueue::connect(
                redis.url.expose(),
                Keys::new(redis.prefix.clone()),
                redis.dedupe_ttl_secs,
                0,
            )
            .await
            .unwrap();
            let metrics = Metrics::new();
            let queue = Queue::Redis(queue);
            let outbox = coexist::backend::Backend::new(queue.clone())
                .shared_outbox()
                .expect("redis ingress has an outbox");
            let ingest = Ingest::new(&config, queue, metrics.clone()).with_outbox(outbox);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let state = AppState {
                ingest,
                max_body_bytes: config.server.max_body_bytes,
                api: None,
            };
            let server = ingress::server(state, listener, Some(1)).unwrap();
            tx.send((format!("http://127.0.0.1:{port}"), server.handle(), metrics))
                .unwrap();
            server.await.unwrap();
        })
    });
    let (base, handle, metrics) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    Ingress {
        base,
        handle,
        metrics,
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[derive(serde::Deserialize)]
struct Expectation {
    types: Vec<String>,
    ids: Vec<String>,
}

fn manifest() -> BTreeMap<String, Expectation> {
    let text = std::fs::read_to_string(fixtures_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post_meta(base: &str, body: &[u8], secret: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/webhooks/meta"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            header_value(Algorithm::Sha256, secret.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn post_personal(base: &str, channel: &str, body: &[u8], secret: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/webhooks/personal/{channel}"))
        .header("content-type", "application/json")
        .header(
            "x-webhook-hmac",
            header_value(Algorithm::Sha512, secret.as_bytes(), body),
        )
        .header("x-webhook-hmac-algorithm", "sha512")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Posts a fixture the way its sender would sign it.
async fn post_fixture(base: &str, name: &str) -> reqwest::Response {
    let body = std::fs::read(fixtures_dir().join(name)).unwrap();
    if name.starts_with("personal/") {
        post_personal(base, PERSONAL, &body, WAHA_SECRET).await
    } else {
        post_meta(base, &body, META_SECRET).await
    }
}

/// Every event in every stream of the test's channels: (channel, partition, event, canonical conversation).
async fn all_entries(url: &str, keys: &Keys) -> Vec<(String, u32, Event, String)> {
    let mut out = Vec::new();
    for (channel, partitions) in CHANNELS {
        for p in 0..partitions {
            for entry in support::xrange(url, &keys.stream(channel, p)).await {
                let event: Event = serde_json::from_str(entry.field("e")).unwrap();
                out.push((channel.to_string(), p, event, entry.field("c").to_string()));
            }
        }
    }
    out
}

async fn key_count(url: &str, prefix: &str) -> usize {
    let mut con = support::connection(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_enqueued_once_even_when_posted_twice() {
    let url = support::shared_url();
    let prefix = support::prefix();
    let keys = Keys::new(prefix.clone());
    let ingress = start_ingress(config(&url, &prefix, 4 * 1024 * 1024));
    let manifest = manifest();
    assert!(
        manifest.len() >= 40,
        "the corpus has {} fixtures, at least 40 expected",
        manifest.len()
    );

    let mut expected_ids: HashMap<String, String> = HashMap::new();
    for (name, expectation) in &manifest {
        let response = post_fixture(&ingress.base, name).await;
        assert_eq!(
            response.status(),
            200,
            "{name}: {}",
            response.text().await.unwrap()
        );
        for (id, ty) in expectation.ids.iter().zip(&expectation.types) {
            expected_ids.insert(id.clone(), ty.clone());
        }
        // What this fixture carried is now in Redis (checked after each POST, not only at the end).
        let entries = all_entries(&url, &keys).await;
        for id in &expectation.ids {
            assert!(
                entries.iter().any(|(_, _, e, _)| &e.id == id),
                "{name}: event {id} not in any stream"
            );
        }
    }

    let first = all_entries(&url, &keys).await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (channel, partition, event, conversation) in &first {
        *count.entry(event.id.as_str()).or_default() += 1;
        assert_eq!(
            &event.channel, channel,
            "event {} carries its channel",
            event.id
        );
        assert!(
            event.received_at.is_some(),
            "received_at stamped on {}",
            event.id
        );
        assert_eq!(
            expected_ids.get(&event.id).map(String::as_str),
            Some(event.event_type.as_str()),
            "type of {}",
            event.id
        );
        if !conversation.is_empty() {
            let partitions = CHANNELS.iter().find(|(c, _)| c == channel).unwrap().1;
            assert!(*partition < partitions);
        }
    }
    for (id, n) in &count {
        assert_eq!(*n, 1, "event {id} enqueued {n} times");
    }
    assert_eq!(
        count.len(),
        expected_ids.len(),
        "every distinct event of the corpus is enqueued"
    );

    // Meta retries: the same POSTs again change nothing.
    for name in manifest.keys() {
        let response = post_fixture(&ingress.base, name).await;
        assert_eq!(response.status(), 200, "{name} (retry)");
    }
    let second = all_entries(&url, &keys).await;
    assert_eq!(
        second.len(),
        first.len(),
        "a retried POST enqueues nothing new"
    );
    let dupes = ingress
        .metrics
        .counter(Metric::EventsDuplicate, &[("channel", WABA)]);
    assert!(dupes > 0, "duplicates are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_webhooks_enqueue_nothing() {
    let url = support::shared_url();
    let prefix = support::prefix();
    let ingress = start_ingress(config(&url, &prefix, 64 * 1024));
    let base = &ingress.base;
    let body = std::fs::read(fixtures_dir().join("meta/text_message.json")).unwrap();
    let c = client();

    // Missing signature header → 401.
    let r = c
        .post(format!("{base}/webhooks/meta"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Wrong secret → 403.
    assert_eq!(post_meta(base, &body, "not-the-secret").await.status(), 403);
    // Tampered body: signed, then one byte changed → 403.
    let sig = header_value(Algorithm::Sha256, META_SECRET.as_bytes(), &body);
    let mut tampered = body.clone();
    let at = tampered
        .iter()
        .position(|b| *b == b'?')
        .unwrap_or(tampered.len() / 2);
    tampered[at] = b'!';
    let r = c
        .post(format!("{base}/webhooks/meta"))
        .header("x-hub-signature-256", sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Malformed header → 403.
    let r = c
        .post(format!("{base}/webhooks/meta"))
        .header("x-hub-signature-256", "sha256=nothex")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Oversized body (the limit here is 64 KiB) → 413, even correctly signed.
    let mut big = br#"{"object":"whatsapp_business_account","entry":[],"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\"}");
    assert_eq!(post_meta(base, &big, META_SECRET).await.status(), 413);
    // Malformed JSON, correctly signed → 400 with a precise message.
    let r = post_meta(
        base,
        b"{\"object\": \"whatsapp_business_account\", \"entry\": [",
        META_SECRET,
    )
    .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("line 1"), "{text}");
    // Signed JSON that is not a webhook → 400.
    assert_eq!(
        post_meta(base, b"{\"hello\":1}", META_SECRET)
            .await
            .status(),
        400
    );
    // Unknown personal channel → 404; a WABA channel id on the personal route → 404.
    let waha = std::fs::read(fixtures_dir().join("personal/waha-message-ack.json")).unwrap();
    assert_eq!(
        post_personal(base, "nope", &waha, WAHA_SECRET)
            .await
            .status(),
        404
    );
    assert_eq!(
        post_personal(base, WABA, &waha, WAHA_SECRET).await.status(),
        404
    );
    // Personal channel: missing HMAC → 401, wrong key → 403, Meta's secret → 403.
    let r = c
        .post(format!("{base}/webhooks/personal/{PERSONAL}"))
        .body(waha.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        post_personal(base, PERSONAL, &waha, "wrong").await.status(),
        403
    );
    assert_eq!(
        post_personal(base, PERSONAL, &waha, META_SECRET)
            .await
            .status(),
        403
    );

    assert_eq!(
        key_count(&url, &prefix).await,
        0,
        "nothing may reach Redis from a refused webhook"
    );
    let m = &ingress.metrics;
    assert_eq!(
        m.counter(
            Metric::HttpRequests,
            &[("route", "meta"), ("outcome", "missing_signature")]
        ),
        1
    );
    assert_eq!(
        m.counter(
            Metric::HttpRequests,
            &[("route", "meta"), ("outcome", "too_large")]
        ),
        1
    );
    assert!(m.counter(Metric::SignatureFailures, &[("route", "meta")]) >= 3);

    // A signed POST still goes through afterwards, with the previous secret too (rotation).
    assert_eq!(post_meta(base, &body, META_OLD_SECRET).await.status(), 200);
    assert!(key_count(&url, &prefix).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_and_the_retry_lands_every_event_once() {
    let redis = RedisServer::start(support::RedisOptions { appendonly: true });
    let url = redis.url();
    let prefix = support::prefix();
    let keys = Keys::new(prefix.clone());
    let ingress = start_ingress(config(&url, &prefix, 4 * 1024 * 1024));
    let base = ingress.base.clone();

    let before = std::fs::read(fixtures_dir().join("meta/text_message.json")).unwrap();
    assert_eq!(post_meta(&base, &before, META_SECRET).await.status(), 200);

    let batch_name = manifest()
        .keys()
        .find(|k| k.contains("batch"))
        .cloned()
        .expect("a batch fixture");
    let batch = std::fs::read(fixtures_dir().join(&batch_name)).unwrap();
    let batch_ids = manifest()[&batch_name].ids.clone();
    assert!(batch_ids.len() >= 2);

    redis.stop();
    let r = post_meta(&base, &batch, META_SECRET).await;
    assert_eq!(r.status(), 503, "Redis down must never be answered 200");
    assert!(r.headers().contains_key("retry-after"));
    let ready = client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    redis.restart();
    // Meta retries until it gets a 200; the connection comes back within a few attempts.
    let mut status = 0;
    for _ in 0..50 {
        status = post_meta(&base, &batch, META_SECRET)
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "the retry after Redis came back is accepted");
    // And one more retry, as Meta may send after a timeout on its side.
    assert_eq!(post_meta(&base, &batch, META_SECRET).await.status(), 200);
    assert_eq!(
        client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let entries = all_entries(&url, &keys).await;
    for id in &batch_ids {
        let n = entries.iter().filter(|(_, _, e, _)| &e.id == id).count();
        assert_eq!(
            n, 1,
            "event {id} of the retried batch is in Redis exactly once"
        );
    }
    // The event accepted before the outage survived the restart (AOF).
    let first_id = &manifest()["meta/text_message.json"].ids[0];
    assert!(entries.iter().any(|(_, _, e, _)| &e.id == first_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_health_and_metrics() {
    let url = support::shared_url();
    let prefix = support::prefix();
    let ingress = start_ingress(config(&url, &prefix, 4 * 1024 * 1024));
    let base = &ingress.base;
    let c = client();
    let get = |path: String| {
        let c = c.clone();
        async move { c.get(path).send().await.unwrap() }
    };

    let r = get(format!("{base}/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1158201444");
    let r = get(format!(
        "{base}/webhooks/meta?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1"
    ))
    .await;
    assert_eq!(r.status(), 403);
    let r = get(format!(
        "{base}/webhooks/meta?hub.mode=unsubscribe&hub.verify_token=verify-me&hub.challenge=1"
    ))
    .await;
    assert_eq!(r.status(), 403);
    let r = get(format!("{base}/webhooks/meta")).await;
    assert_eq!(r.status(), 403);

    assert_eq!(get(format!("{base}/healthz")).await.status(), 200);
    assert_eq!(get(format!("{base}/readyz")).await.status(), 200);

    assert_eq!(
        post_fixture(base, "meta/text_message.json").await.status(),
        200
    );
    assert_eq!(
        post_fixture(base, "meta/text_message.json").await.status(),
        200
    );
    let text = get(format!("{base}/metrics")).await.text().await.unwrap();
    for needle in [
        "coexist_http_requests_total{route=\"meta\",outcome=\"ok\"} 2",
        "coexist_events_enqueued_total{channel=\"shop-waba\",type=\"message\"} 1",
        "coexist_events_duplicate_total{channel=\"shop-waba\"} 1",
        "# TYPE coexist_enqueue_seconds histogram",
        "coexist_enqueue_seconds_count 2",
        "coexist_http_requests_total{route=\"meta_handshake\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    // What the server exports parses as Prometheus text, and every family has HELP and TYPE.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses");
    assert!(scrape.samples.len() >= 6, "{text}");
    for sample in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| sample.metric.strip_suffix(s))
            .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(&sample.metric);
        assert!(
            scrape.docs.contains_key(family) && text.contains(&format!("# TYPE {family} ")),
            "{} has no HELP/TYPE:\n{text}",
            sample.metric
        );
    }
}

/// One person, one conversation: a contact first seen with phone + business-scoped id, later
/// with only the business-scoped id, stays in the same conversation and partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_scoped_ids_keep_one_conversation() {
    let url = support::shared_url();
    let prefix = support::prefix();
    let keys = Keys::new(prefix.clone());
    let ingress = start_ingress(config(&url, &prefix, 4 * 1024 * 1024));
    let message = |id: &str, from: Option<&str>, text: &str| {
        let from = from
            .map(|f| format!(r#""from":"{f}","#))
            .unwrap_or_default();
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{PHONE_NUMBER_ID}"}},"contacts":[{{"profile":{{"name":"P"}},"user_id":"US.777"}}],"messages":[{{{from}"from_user_id":"US.777","id":"{id}","timestamp":"1750000000","type":"text","text":{{"body":"{text}"}}}}]}}}}]}}]}}"#
        )
    };
    let r = post_meta(
        &ingress.base,
        message("wamid.A1", Some("15551230000"), "hi").as_bytes(),
        META_SECRET,
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post_meta(
        &ingress.base,
        message("wamid.A2", None, "caf\\u00e9").as_bytes(),
        META_SECRET,
    )
    .await;
    assert_eq!(r.status(), 200);
    let entries = all_entries(&url, &keys).await;
    let a1 = entries
        .iter()
        .find(|(_, _, e, _)| e.id == "wamid.A1")
        .unwrap();
    let a2 = entries
        .iter()
        .find(|(_, _, e, _)| e.id == "wamid.A2")
        .unwrap();
    assert_eq!(a1.3, "15551230000");
    assert_eq!(
        a2.3, "15551230000",
        "the business-scoped id resolves to the first conversation"
    );
    assert_eq!(a1.1, a2.1, "same partition, so order is kept");
    assert_eq!(a2.2.message.as_ref().unwrap().text.as_deref(), Some("café"));
}

/// A status of one of our own sends (it carries our outbox key in `biz_opaque_callback_data`)
/// is recorded in the outbox as it arrives, so a worker recovering an in-flight send sees it
/// without waiting for the status to come through the (blocked) partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_of_our_sends_reach_the_outbox_on_arrival() {
    let url = support::shared_url();
    let prefix = support::prefix();
    let keys = Keys::new(prefix.clone());
    let ingress = start_ingress(config(&url, &prefix, 4 * 1024 * 1024));
    let name = "meta/status_biz_opaque_callback_data.json";
    let body = std::fs::read(fixtures_dir().join(name)).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let status = &value["entry"][0]["changes"][0]["value"]["statuses"][0];
    let outbox_key = status["biz_opaque_callback_data"].as_str().unwrap();
    let wamid = status["id"].as_str().unwrap();

    let mut con = support::connection(&url).await;
    let before: Option<String> = redis::cmd("GET")
        .arg(keys.sent(WABA, outbox_key))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(before, None);
    assert_eq!(post_fixture(&ingress.base, name).await.status(), 200);
    let after: Option<String> = redis::cmd("GET")
        .arg(keys.sent(WABA, outbox_key))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(after, Some(format!("sent:{wamid}")));
}
