//! Media both ways (issue 12) end to end: real `coexist serve` / `work` processes on a real
//! Redis, the recorder as the forward bot, the fake Graph API and fake WAHA (with their media
//! endpoints) as the providers.
//!
//! 1. every kind through `/v1/channels/{ch}/messages` on both channel kinds: the exact
//!    provider request, or the typed refusal and nothing sent;
//! 2. the same kinds in forward answers: refused replies skipped, the others sent in order;
//! 3. uploads: WABA multipart with the bearer token, Personal held (`cxm_…`) and sent inline;
//!    the refusals (type, size, key, channel) reach no provider;
//! 4. the download route: bytes, type, length, the credentials it used, 401 / 404; a 20 MB
//!    file streamed through `serve` without its peak RSS growing by the file; the size cap;
//! 5. Meta's media error codes (retried / final `media_failed`), an expired held upload;
//! 6. inbound media (WAHA and Meta webhooks): the forward bot gets an id the route opens.
//!
//! The harness's config has no `[api]` table: [`deployment`] appends `[api]` (keys from the
//! environment) and a `[media]` table.

mod deploy;
mod fakes;
mod recorder;
mod support;

use base64::Engine as _;
use deploy::*;
use fakes::{Answer, Recorded};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::Proc;

const API_KEY: &str = "cx-e2e-media-key-5b1d9e";
const API_ENV: [(&str, &str); 1] = [("COEXIST_API_KEY", API_KEY)];
const MB: usize = 1024 * 1024;

// ------------------------------------------------------------------ deployment helpers

/// A deployment with `[api]` and `[media] <media>`; the fakes require the channels'
/// credentials on their media endpoints.
async fn deployment(opts: Opts, media: &str) -> Deployment {
    let d = Deployment::new(opts).await;
    let base = std::fs::read_to_string(&d.config).unwrap();
    let text = format!("{base}\n[api]\nkeys = [\"${{COEXIST_API_KEY}}\"]\n\n[media]\n{media}\n");
    std::fs::write(&d.config, text).unwrap();
    d.graph.require_token(GRAPH_TOKEN);
    d.waha.require_token(WAHA_KEY);
    d
}

fn spawn(d: &Deployment, sub: &str, name: &str) -> Proc {
    d.spawn_env(sub, name, &API_ENV)
}

/// `serve` and one `work`, serving.
async fn serve_and_work(d: &Deployment) -> (Proc, Proc) {
    let serve = spawn(d, "serve", "serve");
    let work = spawn(d, "work", "w0");
    wait_serving(d).await;
    (serve, work)
}

// ------------------------------------------------------------------ HTTP helpers

#[derive(Debug)]
struct Res {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
    body: Value,
}

impl Res {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }
    fn id(&self) -> &str {
        self.body["id"].as_str().unwrap_or("")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A request to `serve`; `auth` is the API key (`None`: no Authorization header).
async fn call(
    d: &Deployment,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Res {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, format!("http://{}{path}", d.listen));
    if let Some(k) = auth {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some((ct, bytes)) = body {
        req = req.header("content-type", ct).body(bytes);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap().to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Res {
        status,
        headers,
        bytes,
        body,
    }
}

async fn post(d: &Deployment, channel: &str, body: &Value) -> Res {
    call(
        d,
        "POST",
        &format!("/v1/channels/{channel}/messages"),
        Some(API_KEY),
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
}

/// A 202 for this body; returns the message id.
async fn accepted(d: &Deployment, channel: &str, body: &Value) -> String {
    let r = post(d, channel, body).await;
    assert_eq!(r.status, 202, "{channel} {body}: {r:?}");
    r.id().to_string()
}

/// The refusal of this body: status, code, and (for 400s) the field it names.
async fn refused(d: &Deployment, channel: &str, body: &Value, status: u16, code: &str) -> Res {
    let r = post(d, channel, body).await;
    assert_eq!(
        (r.status, r.code()),
        (status, code),
        "{channel} {body}: {r:?}"
    );
    r
}

async fn get_message(d: &Deployment, channel: &str, id: &str) -> Value {
    let r = call(
        d,
        "GET",
        &format!("/v1/channels/{channel}/messages/{id}"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Waits until `GET …/messages/{id}` says `status`; returns the view.
async fn wait_status(d: &Deployment, channel: &str, id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = get_message(d, channel, id).await;
        if view["status"] == status {
            return view;
        }
        if Instant::now() > deadline {
            panic!("{id} never became {status}; last view {last}; now {view}");
        }
        last = view;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /v1/channels/{channel}/media[?filename=…]`.
async fn upload(
    d: &Deployment,
    channel: &str,
    bytes: Vec<u8>,
    mime: Option<&str>,
    filename: Option<&str>,
    auth: Option<&str>,
) -> Res {
    let mut path = format!("/v1/channels/{channel}/media");
    if let Some(f) = filename {
        path = format!("{path}?filename={f}");
    }
    let method = reqwest::Method::POST;
    let mut req = client().request(method, format!("http://{}{path}", d.listen));
    if let Some(k) = auth {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if let Some(m) = mime {
        req = req.header("content-type", m);
    }
    let res = req.body(bytes).send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap().to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Res {
        status,
        headers,
        bytes,
        body,
    }
}

async fn download(d: &Deployment, channel: &str, id: &str, auth: Option<&str>) -> Res {
    call(
        d,
        "GET",
        &format!("/v1/channels/{channel}/media/{id}"),
        auth,
        None,
    )
    .await
}

/// Deterministic, incompressible-looking bytes.
fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Requests to the fake Graph API's `/messages` carrying this key as callback data.
fn graph_sends(d: &Deployment, key: &str) -> Vec<Recorded> {
    d.graph
        .requests_to(MESSAGES)
        .into_iter()
        .filter(|r| key_of(r) == key)
        .collect()
}

async fn wait_graph_send(d: &Deployment, key: &str) -> Recorded {
    support::eventually(
        Duration::from_secs(20),
        &format!("{key} at the fake Graph API"),
        || async { graph_sends(d, key).into_iter().next() },
    )
    .await
}

/// The fake WAHA's message sends (every `/api/send*` but `sendSeen`), in arrival order.
fn waha_sends(d: &Deployment) -> Vec<Recorded> {
    d.waha
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/send") && r.path != "/api/sendSeen")
        .collect()
}

/// A customer writes on WABA now (opens the window); waits until it is handled.
async fn customer_writes(d: &Deployment, customer: &str, id: &str) {
    let m = message(WABA, customer, id, now_ms(), "hello");
    d.recorder.script(&m.id, answer(vec![]));
    d.enqueue(&[&m]).await;
    d.wait_drained(WABA, customer, Duration::from_secs(20))
        .await;
}

/// Peak resident set size of a process (`VmHWM` in `/proc/<pid>/status`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ------------------------------------------------------------------ 1. every kind via /v1

/// Every media, location and contacts message through `/v1/…/messages`: on WABA the exact
/// Graph body (both request shapes), on Personal the exact WAHA endpoint and body; the kinds a
/// channel cannot send and the malformed ones are refused with their typed error, and none of
/// them reaches a provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_via_the_api_is_sent_to_the_right_endpoint_or_refused_typed() {
    let d = deployment(Opts::default(), "").await;
    let (_serve, _work) = serve_and_work(&d).await;
    let customer = "16505557001";
    customer_writes(&d, customer, "wamid.media.open").await;

    let card = json!({"name": {"formatted_name": "Ana Souza", "first_name": "Ana"},
                      "phones": [{"phone": "+1 555 0100", "type": "CELL"}]});
    // ---- WABA: request → the kind's object in the Graph body
    let waba_cases: Vec<(Value, &str, Value)> = vec![
        (
            json!({"to": customer, "type": "image", "link": "https://cdn.example/mug.jpg", "caption": "Blue mug"}),
            "image",
            json!({"link": "https://cdn.example/mug.jpg", "caption": "Blue mug"}),
        ),
        (
            json!({"to": customer, "type": "image", "image": {"id": "1003383421387256"}}),
            "image",
            json!({"id": "1003383421387256"}),
        ),
        (
            json!({"to": customer, "type": "video", "video": {"link": "https://cdn.example/v.mp4", "caption": "How to"}}),
            "video",
            json!({"link": "https://cdn.example/v.mp4", "caption": "How to"}),
        ),
        (
            json!({"to": customer, "type": "audio", "link": "https://cdn.example/note.ogg", "voice": true}),
            "audio",
            json!({"link": "https://cdn.example/note.ogg"}),
        ),
        (
            json!({"to": customer, "type": "document", "link": "https://cdn.example/i.pdf",
                   "filename": "invoice.pdf", "caption": "Your invoice"}),
            "document",
            json!({"link": "https://cdn.example/i.pdf", "filename": "invoice.pdf", "caption": "Your invoice"}),
        ),
        (
            json!({"to": customer, "type": "sticker", "link": "https://cdn.example/s.webp"}),
            "sticker",
            json!({"link": "https://cdn.example/s.webp"}),
        ),
        (
            json!({"to": customer, "type": "location", "latitude": 52.52, "longitude": 13.405,
                   "name": "Shop", "address": "Unter den Linden 1"}),
            "location",
            json!({"latitude": 52.52, "longitude": 13.405, "name": "Shop", "address": "Unter den Linden 1"}),
        ),
        (
            json!({"to": customer, "type": "location", "location": {"latitude": -33.86, "longitude": 151.2}}),
            "location",
            json!({"latitude": -33.86, "longitude": 151.2}),
        ),
        (
            json!({"to": customer, "type": "contacts", "contacts": [card.clone()]}),
            "contacts",
            json!([card.clone()]),
        ),
    ];
    for (body, kind, content) in &waba_cases {
        let id = accepted(&d, WABA, body).await;
        let sent = wait_graph_send(&d, &id).await;
        assert_eq!(
            sent.path,
            format!("/{}/{PHONE_NUMBER_ID}/messages", fakes::GRAPH_VERSION)
        );
        assert_eq!(
            sent.header("authorization"),
            Some(format!("Bearer {GRAPH_TOKEN}").as_str())
        );
        let mut want = json!({"messaging_product": "whatsapp", "recipient_type": "individual",
            "to": format!("+{customer}"), "type": kind, "biz_opaque_callback_data": id});
        want[*kind] = content.clone();
        assert_eq!(sent.body, want, "{body}");
        let view = wait_status(&d, WABA, &id, "sent").await;
        assert_eq!(view["type"], *kind, "{view}");
    }

    // ---- WABA refusals: nothing queued, nothing sent
    let before = d.graph.count();
    let r = refused(
        &d,
        WABA,
        &json!({"to": customer, "type": "image", "id": "cxm_0123456789abcdef0123456789abcdef"}),
        422,
        "unsupported_on_channel",
    )
    .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Personal"),
        "{r:?}"
    );
    let bad: Vec<(Value, &str)> = vec![
        (json!({"to": customer, "type": "image"}), "link"),
        (
            json!({"to": customer, "type": "image", "caption": "no file"}),
            "link",
        ),
        (
            json!({"to": customer, "type": "document", "link": "https://x/a.pdf", "id": "123"}),
            "link",
        ),
        (
            json!({"to": customer, "type": "video", "link": "ftp://x/v.mp4"}),
            "link",
        ),
        (
            json!({"to": customer, "type": "image", "image": {"link": "file:///etc/passwd"}}),
            "image.link",
        ),
        (
            json!({"to": customer, "type": "location", "latitude": 1.0}),
            "longitude",
        ),
        (
            json!({"to": customer, "type": "contacts", "contacts": []}),
            "contacts",
        ),
    ];
    for (body, field) in &bad {
        let r = refused(&d, WABA, body, 400, "invalid_request").await;
        assert_eq!(r.field(), *field, "{body}: {r:?}");
    }
    // Off the globe: refused, the field says it is the location.
    let r = refused(
        &d,
        WABA,
        &json!({"to": customer, "type": "location", "latitude": 91.0, "longitude": 0.0}),
        400,
        "invalid_request",
    )
    .await;
    assert!(
        r.field().contains("location") || r.field().contains("latitude"),
        "{r:?}"
    );
    // A caption longer than 1024 characters: the refusal names the caption.
    let r = refused(
        &d,
        WABA,
        &json!({"to": customer, "type": "image", "link": "https://cdn.example/a.jpg",
                "caption": "x".repeat(1025)}),
        400,
        "invalid_request",
    )
    .await;
    let caption_field = r.field().to_string();
    // 1024 is fine.
    let id = accepted(
        &d,
        WABA,
        &json!({"to": customer, "type": "image", "link": "https://cdn.example/a.jpg",
                "caption": "x".repeat(1024)}),
    )
    .await;
    wait_status(&d, WABA, &id, "sent").await;
    // The window: a customer who never wrote gets no free-form media.
    refused(
        &d,
        WABA,
        &json!({"to": "16505557999", "type": "image", "link": "https://cdn.example/a.jpg"}),
        422,
        "window_closed",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        d.graph.count(),
        before + 1,
        "only the 1024-character caption left"
    );

    // ---- Personal: request → (endpoint, body)
    let chat = format!("{customer}@c.us");
    let personal_cases: Vec<(Value, &str, Value)> = vec![
        (
            json!({"to": customer, "type": "image", "link": "https://cdn.example/mug.jpg", "caption": "Blue mug"}),
            "/api/sendImage",
            json!({"file": {"mimetype": "image/jpeg", "filename": "mug.jpg", "url": "https://cdn.example/mug.jpg"},
                   "caption": "Blue mug"}),
        ),
        (
            json!({"to": customer, "type": "video", "video": {"link": "https://cdn.example/v.mp4"}}),
            "/api/sendVideo",
            json!({"file": {"mimetype": "video/mp4", "filename": "v.mp4", "url": "https://cdn.example/v.mp4"},
                   "asNote": false}),
        ),
        (
            json!({"to": customer, "type": "audio", "link": "https://cdn.example/note.ogg", "voice": true}),
            "/api/sendVoice",
            json!({"file": {"mimetype": "audio/ogg; codecs=opus", "filename": "note.ogg",
                            "url": "https://cdn.example/note.ogg"}}),
        ),
        (
            json!({"to": customer, "type": "audio", "link": "https://cdn.example/song.mp3"}),
            "/api/sendFile",
            json!({"file": {"mimetype": "audio/mpeg", "filename": "song.mp3", "url": "https://cdn.example/song.mp3"}}),
        ),
        (
            json!({"to": customer, "type": "document", "link": "https://cdn.example/dl?id=7",
                   "filename": "invoice.pdf", "caption": "Your invoice"}),
            "/api/sendFile",
            json!({"file": {"mimetype": "application/pdf", "filename": "invoice.pdf",
                            "url": "https://cdn.example/dl?id=7"},
                   "caption": "Your invoice"}),
        ),
        (
            json!({"to": customer, "type": "location", "latitude": 52.52, "longitude": 13.405,
                   "name": "Shop", "address": "Unter den Linden 1"}),
            "/api/sendLocation",
            json!({"latitude": 52.52, "longitude": 13.405, "title": "Shop\nUnter den Linden 1"}),
        ),
    ];
    for (body, endpoint, extra) in &personal_cases {
        let n = waha_sends(&d).len();
        let id = accepted(&d, PERSONAL, body).await;
        let all = support::eventually(Duration::from_secs(20), "the WAHA send", || async {
            let s = waha_sends(&d);
            (s.len() > n).then_some(s)
        })
        .await;
        let sent = &all[n];
        assert_eq!(sent.path, *endpoint, "{body}");
        assert_eq!(sent.header("x-api-key"), Some(WAHA_KEY));
        let mut want = json!({"session": "default", "chatId": chat});
        for (k, v) in extra.as_object().unwrap() {
            want[k] = v.clone();
        }
        assert_eq!(sent.body, want, "{body}");
        let view = wait_status(&d, PERSONAL, &id, "sent").await;
        assert!(
            view["wamid"].as_str().is_some_and(|w| w.contains("FAKE")),
            "the id WAHA answered is recorded: {view}"
        );
    }
    // Contacts: one vCard per Meta contact object.
    let n = waha_sends(&d).len();
    let id = accepted(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "contacts", "contacts": [card.clone()]}),
    )
    .await;
    let all = support::eventually(Duration::from_secs(20), "the vCard send", || async {
        let s = waha_sends(&d);
        (s.len() > n).then_some(s)
    })
    .await;
    let sent = &all[n];
    assert_eq!(sent.path, "/api/sendContactVcard");
    assert_eq!(sent.body["chatId"], chat);
    let cards = sent.body["contacts"].as_array().expect("contacts list");
    assert_eq!(cards.len(), 1, "{}", sent.body);
    let vcard = cards[0]["vcard"].as_str().unwrap();
    assert!(
        vcard.starts_with("BEGIN:VCARD") && vcard.ends_with("END:VCARD"),
        "{vcard}"
    );
    assert!(vcard.contains("FN:Ana Souza"), "{vcard}");
    assert!(vcard.contains("TEL;type=CELL:+1 555 0100"), "{vcard}");
    wait_status(&d, PERSONAL, &id, "sent").await;

    // ---- Personal refusals
    let n = d.waha.count();
    let r = refused(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "sticker", "link": "https://cdn.example/s.webp"}),
        422,
        "unsupported_on_channel",
    )
    .await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sticker"),
        "{r:?}"
    );
    refused(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "document", "id": "1003383421387256"}),
        422,
        "unsupported_on_channel",
    )
    .await;
    refused(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "image", "link": "not a url"}),
        400,
        "invalid_request",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(d.waha.count(), n, "no refused message reached WAHA");
    assert_eq!(
        caption_field, "caption",
        "a caption over 1024 characters is refused naming `caption`"
    );
}

// ------------------------------------------------------------------ 2. forward answers

/// A forward bot answers every kind: on WABA and on Personal the replies the channel cannot
/// send (a held id on WABA, a sticker or a Meta media id on Personal, a media without a file)
/// are skipped, the others leave in the answer's order with their slot's outbox key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_answers_send_every_allowed_kind_in_order_and_skip_the_refused() {
    let d = deployment(Opts::default(), "").await;
    let customer = "16505557101";
    let card = json!({"name": {"formatted_name": "Shop"}, "phones": [{"phone": "+1 555 0199"}]});
    let m = message(WABA, customer, "wamid.fwd.media", now_ms(), "photo please");
    d.recorder.script(
        &m.id,
        answer(vec![
            json!({"type": "image", "link": "https://cdn.example/mug.jpg", "caption": "Blue mug"}),
            json!({"type": "sticker", "id": "778899"}),
            json!({"type": "image", "id": "cxm_00000000000000000000000000000001"}),
            json!({"type": "location", "latitude": 1.5, "longitude": 2.5, "name": "Shop"}),
            json!({"type": "document", "id": "556677", "filename": "invoice.pdf"}),
            json!({"type": "image"}),
            json!({"type": "contacts", "contacts": [card.clone()]}),
            json!({"type": "audio", "link": "https://cdn.example/n.ogg", "voice": true}),
        ]),
    );
    let chat = "491711234567@s.whatsapp.net";
    let p = message(PERSONAL, chat, "waha:MEDIA1", now_ms(), "foto bitte");
    d.recorder.script(
        &p.id,
        answer(vec![
            json!({"type": "image", "link": "https://cdn.example/mug.png", "caption": "Becher"}),
            json!({"type": "sticker", "link": "https://cdn.example/s.webp"}),
            json!({"type": "audio", "link": "https://cdn.example/n.ogg", "voice": true}),
            json!({"type": "document", "id": "556677", "filename": "r.pdf"}),
            json!({"type": "location", "latitude": 52.5, "longitude": 13.4}),
            json!({"type": "video", "link": "https://cdn.example/v.mp4", "caption": "so"}),
            json!({"type": "contacts", "contacts": [card.clone()]}),
        ]),
    );
    d.enqueue(&[&m, &p]).await;
    let _w = spawn(&d, "work", "w0");

    wait_requests(&d.graph, MESSAGES, 6, Duration::from_secs(20)).await;
    d.wait_drained(WABA, customer, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sends = d.graph.requests_to(MESSAGES);
    let got: Vec<(String, String)> = sends
        .iter()
        .map(|r| {
            (
                key_of(r).to_string(),
                r.body["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        (0, "image"),
        (1, "sticker"),
        (3, "location"),
        (4, "document"),
        (6, "contacts"),
        (7, "audio"),
    ]
    .iter()
    .map(|(i, k)| (format!("wamid.fwd.media:{i}"), k.to_string()))
    .collect();
    assert_eq!(
        got, want,
        "WABA: refused replies skipped, the rest in order"
    );
    assert_eq!(
        sends[0].body["image"],
        json!({"link": "https://cdn.example/mug.jpg", "caption": "Blue mug"})
    );
    assert_eq!(sends[1].body["sticker"], json!({"id": "778899"}));
    assert_eq!(
        sends[2].body["location"],
        json!({"latitude": 1.5, "longitude": 2.5, "name": "Shop"})
    );
    assert_eq!(
        sends[3].body["document"],
        json!({"id": "556677", "filename": "invoice.pdf"})
    );
    assert_eq!(sends[4].body["contacts"], json!([card]));
    assert_eq!(
        sends[5].body["audio"],
        json!({"link": "https://cdn.example/n.ogg"})
    );
    assert!(
        !d.graph
            .requests()
            .iter()
            .any(|r| r.body.to_string().contains("cxm_")),
        "the held id never reached Meta"
    );

    wait_requests(&d.waha, "/api/sendContactVcard", 1, Duration::from_secs(20)).await;
    d.wait_drained(PERSONAL, chat, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = waha_sends(&d).iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/api/sendImage",
            "/api/sendVoice",
            "/api/sendLocation",
            "/api/sendVideo",
            "/api/sendContactVcard"
        ],
        "Personal: sticker and the Meta media id skipped, the rest in order"
    );
    let image = &waha_sends(&d)[0];
    assert_eq!(
        image.body,
        json!({"session": "default", "chatId": "491711234567@c.us", "caption": "Becher",
               "file": {"mimetype": "image/png", "filename": "mug.png", "url": "https://cdn.example/mug.png"}})
    );
    for (slot, sent) in [
        (0, true),
        (1, false),
        (2, true),
        (3, false),
        (4, true),
        (5, true),
        (6, true),
    ] {
        let v = d.outbox(PERSONAL, &format!("waha:MEDIA1:{slot}")).await;
        assert_eq!(v.is_some(), sent, "slot {slot}: {v:?}");
    }
    let log = d.log("w0");
    assert!(log.contains("refused"), "the refusals are logged:\n{log}");
}

// ------------------------------------------------------------------ 3. uploads

/// WABA: the upload is Meta's multipart (`messaging_product`, `type`, the file with its name)
/// with the bearer token, its id is what the route answers, and a document sent by that id
/// carries it. Personal: the upload stays in coexist (`cxm_…`, nothing reaches WAHA), an image
/// sent by it goes to `sendImage` inline as base64 of the exact bytes, and the route serves it
/// back; the held id is refused on WABA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_then_sends_by_id_on_both_channels() {
    let d = deployment(Opts::default(), "").await;
    let (_serve, _work) = serve_and_work(&d).await;
    let customer = "16505557201";
    customer_writes(&d, customer, "wamid.upload.open").await;

    // ---- WABA
    let pdf = [b"%PDF-1.7\n".to_vec(), bytes_of(300_000, 1)].concat();
    let r = upload(
        &d,
        WABA,
        pdf.clone(),
        Some("application/pdf"),
        Some("invoice.pdf"),
        Some(API_KEY),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.body,
        json!({"id": "media1", "mime_type": "application/pdf", "size": pdf.len()})
    );
    let ups = d.graph.uploads();
    assert_eq!(ups.len(), 1, "{ups:?}");
    let up = &ups[0];
    assert_eq!(
        up.fields.get("messaging_product").map(String::as_str),
        Some("whatsapp")
    );
    assert_eq!(
        up.fields.get("type").map(String::as_str),
        Some("application/pdf")
    );
    assert!(
        up.file == pdf,
        "the exact bytes ({} vs {})",
        up.file.len(),
        pdf.len()
    );
    assert_eq!(up.filename.as_deref(), Some("invoice.pdf"));
    assert_eq!(up.file_content_type.as_deref(), Some("application/pdf"));
    assert_eq!(
        up.authorization.as_deref(),
        Some(format!("Bearer {GRAPH_TOKEN}").as_str())
    );
    let req = &d.graph.requests_to("/media")[0];
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/{}/{PHONE_NUMBER_ID}/media", fakes::GRAPH_VERSION)
    );
    assert!(
        req.header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary="),
        "{:?}",
        req.header("content-type")
    );
    let id = accepted(
        &d,
        WABA,
        &json!({"to": customer, "type": "document", "id": "media1", "filename": "invoice.pdf"}),
    )
    .await;
    let sent = wait_graph_send(&d, &id).await;
    assert_eq!(sent.body["type"], "document");
    assert_eq!(
        sent.body["document"],
        json!({"id": "media1", "filename": "invoice.pdf"})
    );
    wait_status(&d, WABA, &id, "sent").await;
    // An image upload without a file name.
    let png = [b"\x89PNG\r\n\x1a\n".to_vec(), bytes_of(1000, 2)].concat();
    let r = upload(
        &d,
        WABA,
        png.clone(),
        Some("image/png"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!((r.status, r.id()), (201, "media2"), "{r:?}");
    assert_eq!(d.graph.uploads()[1].fields["type"], "image/png");
    assert!(d.graph.uploads()[1].file == png);

    // ---- Personal
    let photo = [b"\x89PNG\r\n\x1a\n".to_vec(), bytes_of(200_000, 3)].concat();
    let r = upload(
        &d,
        PERSONAL,
        photo.clone(),
        Some("image/png"),
        Some("mug.png"),
        Some(API_KEY),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let held = r.id().to_string();
    assert!(held.starts_with("cxm_") && held.len() > 20, "{r:?}");
    assert_eq!(r.body["mime_type"], "image/png");
    assert_eq!(r.body["size"], photo.len());
    assert_eq!(
        d.waha.count(),
        0,
        "WAHA keeps no uploads: nothing reached it"
    );
    assert_eq!(d.graph.uploads().len(), 2, "nor did the Graph API get it");
    // The route serves a held upload back.
    let back = download(&d, PERSONAL, &held, Some(API_KEY)).await;
    assert_eq!(back.status, 200, "{back:?}");
    assert!(back.bytes == photo);
    assert_eq!(back.header("content-type"), "image/png");
    assert_eq!(back.header("content-length"), photo.len().to_string());
    assert!(
        back.header("content-disposition").contains("mug.png"),
        "{:?}",
        back.headers
    );
    // Sent by its id: inline, base64 of the exact bytes.
    let id = accepted(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "image", "id": held, "caption": "Becher"}),
    )
    .await;
    let sends = wait_requests(&d.waha, "/api/sendImage", 1, Duration::from_secs(20)).await;
    let s = &sends[0].body;
    assert_eq!(s["chatId"], format!("{customer}@c.us"));
    assert_eq!(s["caption"], "Becher");
    assert_eq!(s["file"]["mimetype"], "image/png");
    assert_eq!(s["file"]["filename"], "mug.png");
    assert!(s["file"].get("url").is_none(), "{}", s["file"]);
    assert!(
        s["file"]["data"].as_str() == Some(b64(&photo).as_str()),
        "file.data is the base64 of the uploaded bytes"
    );
    wait_status(&d, PERSONAL, &id, "sent").await;
    // A document by a held id: its file name comes with it; a voice note by a held id.
    let ogg = bytes_of(5000, 4);
    let r = upload(
        &d,
        PERSONAL,
        ogg.clone(),
        Some("audio/ogg; codecs=opus"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let voice = r.id().to_string();
    let id = accepted(
        &d,
        PERSONAL,
        &json!({"to": customer, "type": "audio", "id": voice, "voice": true}),
    )
    .await;
    let s = &wait_requests(&d.waha, "/api/sendVoice", 1, Duration::from_secs(20)).await[0].body;
    assert_eq!(s["file"]["mimetype"], "audio/ogg; codecs=opus");
    assert!(s["file"]["data"].as_str() == Some(b64(&ogg).as_str()));
    wait_status(&d, PERSONAL, &id, "sent").await;

    // The held id belongs to Personal: refused on WABA.
    refused(
        &d,
        WABA,
        &json!({"to": customer, "type": "image", "id": held}),
        422,
        "unsupported_on_channel",
    )
    .await;
}

/// The upload refusals: a type WhatsApp does not take (415), a JPEG over 5 MB (413), no
/// Content-Type (415), no or a wrong key (401), an unknown channel (404), an empty body; none
/// reaches a provider or is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_refusals_reach_no_provider() {
    let d = deployment(Opts::default(), "").await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let small = bytes_of(1000, 5);
    let six_mb = bytes_of(6 * MB, 6);
    for channel in [WABA, PERSONAL] {
        let r = upload(
            &d,
            channel,
            small.clone(),
            Some("image/gif"),
            None,
            Some(API_KEY),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (415, "unsupported_type"),
            "{channel}: {r:?}"
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("image/jpeg"),
            "{r:?}"
        );
        let r = upload(&d, channel, small.clone(), None, None, Some(API_KEY)).await;
        assert_eq!(
            (r.status, r.code()),
            (415, "unsupported_type"),
            "{channel} no type: {r:?}"
        );
        let r = upload(
            &d,
            channel,
            six_mb.clone(),
            Some("image/jpeg"),
            None,
            Some(API_KEY),
        )
        .await;
        assert_eq!((r.status, r.code()), (413, "too_large"), "{channel}: {r:?}");
        let r = upload(&d, channel, small.clone(), Some("image/jpeg"), None, None).await;
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{channel}: {r:?}"
        );
        let r = upload(
            &d,
            channel,
            small.clone(),
            Some("image/jpeg"),
            None,
            Some("not-the-key"),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{channel}: {r:?}"
        );
        let r = upload(
            &d,
            channel,
            Vec::new(),
            Some("image/jpeg"),
            None,
            Some(API_KEY),
        )
        .await;
        assert_eq!(r.status, 400, "{channel} empty: {r:?}");
    }
    let r = upload(
        &d,
        "nope",
        small.clone(),
        Some("image/jpeg"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!((r.status, r.code()), (404, "unknown_channel"), "{r:?}");
    // A sticker over 500 KB, and the same bytes as a document: the kind's limit decides.
    let r = upload(
        &d,
        WABA,
        bytes_of(600 * 1024, 7),
        Some("image/webp"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!((r.status, r.code()), (413, "too_large"), "{r:?}");
    assert_eq!(d.graph.count(), 0, "no refusal reached the Graph API");
    assert_eq!(d.waha.count(), 0, "no refusal reached WAHA");
    let r = upload(
        &d,
        WABA,
        six_mb.clone(),
        Some("application/pdf"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!(r.status, 201, "6 MB is fine for a document: {r:?}");
    assert!(d.graph.uploads()[0].file == six_mb);
    // 17 MB: a document on WABA (Meta takes 100 MB), too much for Personal to hold (16 MB).
    let seventeen = bytes_of(17 * MB, 8);
    let r = upload(
        &d,
        PERSONAL,
        seventeen.clone(),
        Some("application/pdf"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!((r.status, r.code()), (413, "too_large"), "{r:?}");
    let r = upload(
        &d,
        WABA,
        seventeen.clone(),
        Some("application/pdf"),
        Some("big.pdf"),
        Some(API_KEY),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(d.graph.uploads()[1].file == seventeen);
    // The Graph API refuses or fails the upload: 502 with Meta's reason, 503.
    d.graph.push_for(
        "/media",
        Answer::graph_error(
            400,
            100,
            "(#100) Param file must be a file with one of the following types: ...",
        ),
    );
    let r = upload(
        &d,
        WABA,
        small.clone(),
        Some("image/jpeg"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!((r.status, r.code()), (502, "upstream_rejected"), "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Param file"),
        "{r:?}"
    );
    d.graph.push_for("/media", Answer::server_error());
    let r = upload(
        &d,
        WABA,
        small.clone(),
        Some("image/jpeg"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!((r.status, r.code()), (503, "upstream_unavailable"), "{r:?}");
    d.graph.require_token("another-token");
    let r = upload(
        &d,
        WABA,
        small.clone(),
        Some("image/jpeg"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (502, "upstream_unauthorized"),
        "{r:?}"
    );
    assert_eq!(
        d.graph.uploads().len(),
        2,
        "no refused upload was recorded as stored"
    );
    // Nothing held for Personal.
    let mut con = support::connection(&d.redis_url).await;
    let held: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*media*", d.keys.prefix()))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(held.is_empty(), "{held:?}");
}

// ------------------------------------------------------------------ 4. downloads

/// WABA: the route looks the media up and downloads it with the bearer token, answering the
/// exact bytes with Content-Type and Content-Length; 401 without a key (the fake sees
/// nothing), 404 `media_not_found` for an unknown id, an id whose media expired and an
/// expired download URL. Personal: the file comes from WAHA's `/api/files/{session}/{name}`
/// with the API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_route_streams_provider_files_with_their_credentials() {
    let d = deployment(Opts::default(), "").await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let photo = bytes_of(300_000, 8);
    d.graph
        .add_media("1003383421387256", photo.clone(), "image/jpeg");

    let r = download(&d, WABA, "1003383421387256", Some(API_KEY)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.bytes == photo,
        "the exact bytes ({} vs {})",
        r.bytes.len(),
        photo.len()
    );
    assert_eq!(r.header("content-type"), "image/jpeg");
    assert_eq!(r.header("content-length"), photo.len().to_string());
    let reqs = d.graph.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let (lookup, fetch) = (&reqs[0], &reqs[1]);
    assert_eq!(
        (lookup.method.as_str(), lookup.path.as_str()),
        ("GET", "/v23.0/1003383421387256")
    );
    assert_eq!(lookup.query, format!("phone_number_id={PHONE_NUMBER_ID}"));
    assert_eq!(
        (fetch.method.as_str(), fetch.path.as_str()),
        ("GET", "/download/1003383421387256")
    );
    for r in [lookup, fetch] {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {GRAPH_TOKEN}").as_str()),
            "{}",
            r.path
        );
    }

    // No key, a wrong key: 401 before the provider is asked.
    for auth in [None, Some("wrong")] {
        let r = download(&d, WABA, "1003383421387256", auth).await;
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{auth:?}: {r:?}"
        );
        let r = download(&d, "nope", "1", auth).await;
        assert_eq!(r.status, 401, "{auth:?}: {r:?}");
    }
    assert_eq!(d.graph.count(), 2, "the 401s asked nothing");
    let r = download(&d, "nope", "1", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (404, "unknown_channel"), "{r:?}");

    // Unknown, expired, an expired URL: 404 media_not_found.
    let r = download(&d, WABA, "999000999", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (404, "media_not_found"), "{r:?}");
    d.graph
        .add_media("4455", bytes_of(10, 9), "application/pdf");
    d.graph.expire_media_url("4455");
    let r = download(&d, WABA, "4455", Some(API_KEY)).await;
    assert_eq!(
        (r.status, r.code()),
        (404, "media_not_found"),
        "expired URL: {r:?}"
    );
    d.graph.expire_media("1003383421387256");
    let r = download(&d, WABA, "1003383421387256", Some(API_KEY)).await;
    assert_eq!(
        (r.status, r.code()),
        (404, "media_not_found"),
        "expired: {r:?}"
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1003383421387256"),
        "{r:?}"
    );

    // The Graph API refuses the token: not a 404, not a 200.
    d.graph.require_token("another-token");
    d.graph.add_media("7788", bytes_of(10, 10), "image/jpeg");
    let r = download(&d, WABA, "7788", Some(API_KEY)).await;
    assert_eq!(
        (r.status, r.code()),
        (502, "upstream_unauthorized"),
        "{r:?}"
    );
    d.graph.require_token(GRAPH_TOKEN);
    // The lookup fails (500): 503, worth another try.
    d.graph.add_media("8899", bytes_of(10, 10), "image/jpeg");
    d.graph.push_for("/8899", Answer::server_error());
    let r = download(&d, WABA, "8899", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (503, "upstream_unavailable"), "{r:?}");
    assert_eq!(download(&d, WABA, "8899", Some(API_KEY)).await.status, 200);

    // ---- Personal
    let voice = bytes_of(50_000, 11);
    d.waha
        .add_file("3EB0AA11BB22.oga", voice.clone(), "audio/ogg; codecs=opus");
    let r = download(&d, PERSONAL, "3EB0AA11BB22.oga", Some(API_KEY)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.bytes == voice);
    assert_eq!(r.header("content-type"), "audio/ogg; codecs=opus");
    assert_eq!(r.header("content-length"), voice.len().to_string());
    let got = d.waha.requests_to("/api/files/default/3EB0AA11BB22.oga");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].header("x-api-key"), Some(WAHA_KEY));
    let r = download(&d, PERSONAL, "3EB0NOPE.jpeg", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (404, "media_not_found"), "{r:?}");
    let r = download(
        &d,
        PERSONAL,
        "cxm_00000000000000000000000000000000",
        Some(API_KEY),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "media_not_found"),
        "an unknown held id: {r:?}"
    );
    let r = download(&d, PERSONAL, "3EB0AA11BB22.oga", None).await;
    assert_eq!(r.status, 401, "{r:?}");
    // WAHA refuses the key: 502, not the file and not a 404.
    d.waha.require_token("another-key");
    let r = download(&d, PERSONAL, "3EB0AA11BB22.oga", Some(API_KEY)).await;
    assert_eq!(
        (r.status, r.code()),
        (502, "upstream_unauthorized"),
        "{r:?}"
    );
    d.waha.require_token(WAHA_KEY);
    // Path tricks never reach another WAHA path.
    for id in ["..", "%2E%2E", "a%2Fb", "..%2Fsessions"] {
        let r = download(&d, PERSONAL, id, Some(API_KEY)).await;
        assert_eq!(r.status, 404, "{id}: {r:?}");
    }
    assert!(
        d.waha
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/api/files/default/")
                && !r.path["/api/files/default/".len()..].contains('/')),
        "{:?}",
        d.waha
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
}

/// Streams `GET /v1/channels/shop/media/{id}` in pieces, pausing `pause_ms` every 512 KB;
/// answers (bytes read, SHA-256 hex).
async fn stream_download(
    d: &Deployment,
    id: &str,
    len: usize,
    mime: &str,
    pause_ms: u64,
) -> (usize, String) {
    let mut res = client()
        .get(format!("http://{}/v1/channels/{WABA}/media/{id}", d.listen))
        .header("authorization", format!("Bearer {API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.content_length(), Some(len as u64));
    assert_eq!(res.headers()["content-type"], mime);
    let mut hasher = Sha256::new();
    let (mut total, mut since_pause) = (0usize, 0usize);
    while let Some(piece) = res.chunk().await.unwrap() {
        hasher.update(&piece);
        total += piece.len();
        since_pause += piece.len();
        if since_pause >= 512 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
    }
    (total, hex::encode(hasher.finalize()))
}

/// A 20 MB file through `GET /v1/channels/shop/media/{id}` on a `serve` process of its own:
/// the bytes arrive whole (SHA-256) with their length, read in pieces by a slow reader, and the
/// process's peak RSS (`VmHWM`) grows by far less than the file (< 8 MB) — a server that
/// collects the file first grows by at least 20 MB. An 8 MB warm-up read the same way comes
/// first: without it the allocator's first segments alone move the peak by up to 8 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_download_streams_without_holding_the_file() {
    let d = deployment(Opts::default(), "").await;
    let serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let pid = serve.id();
    let big = bytes_of(20 * MB, 12);
    let want = sha(&big);
    d.graph.add_media("2020202020", big, "video/mp4");
    // Warm up with an 8 MB download read the same way as the measured one (the same slow
    // reader), so the buffers, pools and allocator segments streaming needs exist before the
    // baseline: with a 4 MB warm-up read at full speed, a loaded CI run saw the measured read
    // still move the peak by 8 MB of first-time segments.
    let warm = bytes_of(8 * MB, 13);
    let warm_sha = sha(&warm);
    d.graph.add_media("1", warm, "image/jpeg");
    assert_eq!(
        stream_download(&d, "1", 8 * MB, "image/jpeg", 10).await,
        (8 * MB, warm_sha)
    );
    let before = peak_rss(pid);

    // A slow reader: the server must wait for it, not read ahead into memory.
    let got = stream_download(&d, "2020202020", 20 * MB, "video/mp4", 10).await;
    assert_eq!(got, (20 * MB, want), "the bytes arrived intact");
    let after = peak_rss(pid);
    let grew = after.saturating_sub(before);
    eprintln!("serve peak RSS {before} -> {after} (+{grew} bytes)");
    assert!(
        grew < 8 * MB as u64,
        "peak RSS grew by {grew} bytes downloading 20 MB ({before} -> {after})"
    );
}

/// `[media] max_download_bytes = 1048576`: a file of exactly 1 MB passes; one byte more is
/// 413 `too_large` — before the download when the Graph lookup declares the size, from the
/// declared Content-Length otherwise (Graph without `file_size`, WAHA); a chunked file that
/// declares nothing is cut short past the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_download_bytes_caps_declared_and_undeclared_files() {
    let d = deployment(Opts::default(), "max_download_bytes = 1048576").await;
    let _serve = spawn(&d, "serve", "serve");
    wait_serving(&d).await;
    let exact = bytes_of(MB, 14);
    let over = bytes_of(MB + 1, 15);
    d.graph.add_media("100", exact.clone(), "application/pdf");
    d.graph.add_media("101", over.clone(), "application/pdf");
    d.graph
        .add_media_undeclared("102", over.clone(), "application/pdf");
    d.waha.add_file("A.pdf", exact.clone(), "application/pdf");
    d.waha.add_file("B.pdf", over.clone(), "application/pdf");

    let r = download(&d, WABA, "100", Some(API_KEY)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.bytes == exact);
    let r = download(&d, WABA, "101", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (413, "too_large"), "{r:?}");
    assert!(
        d.graph.requests_to("/download/101").is_empty(),
        "the declared file_size refused it before the download"
    );
    let r = download(&d, WABA, "102", Some(API_KEY)).await;
    assert_eq!(
        (r.status, r.code()),
        (413, "too_large"),
        "Content-Length: {r:?}"
    );
    let r = download(&d, PERSONAL, "A.pdf", Some(API_KEY)).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes == exact);
    let r = download(&d, PERSONAL, "B.pdf", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (413, "too_large"), "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576"),
        "{r:?}"
    );
    // No length declared anywhere (chunked): the body is cut once the cap is passed — the
    // client never gets the whole file as if it had succeeded.
    let two_mb = bytes_of(2 * MB, 19);
    d.graph
        .add_media_chunked("103", two_mb.clone(), "application/pdf");
    d.waha
        .add_media_chunked("C.pdf", two_mb.clone(), "application/pdf");
    for (channel, id) in [(WABA, "103"), (PERSONAL, "C.pdf")] {
        let res = client()
            .get(format!(
                "http://{}/v1/channels/{channel}/media/{id}",
                d.listen
            ))
            .header("authorization", format!("Bearer {API_KEY}"))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.bytes().await;
        match (status, body) {
            (200, Ok(b)) => panic!(
                "{channel}/{id}: a 2 MB undeclared file passed a 1 MB cap whole ({} bytes)",
                b.len()
            ),
            (200, Err(_)) => {} // cut short
            (413, Ok(_)) => {}
            (s, b) => panic!("{channel}/{id}: {s} {b:?}"),
        }
    }
    // Within the cap, undeclared: streamed whole.
    d.waha
        .add_media_chunked("D.pdf", exact.clone(), "application/pdf");
    let r = download(&d, PERSONAL, "D.pdf", Some(API_KEY)).await;
    assert_eq!(r.status, 200);
    assert!(r.bytes == exact);
}

// ------------------------------------------------------------------ 5. media errors

/// 131053 (Meta could not fetch the link) is retried and the message ends `sent`; 100 about
/// the link is final: `failed` with `media_failed` after exactly one request; a Personal send
/// by a held id that expired, or never existed, is `failed` `media_failed` and nothing reaches
/// WAHA's send endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_errors_are_retried_or_final_with_media_failed() {
    let d = deployment(Opts::default(), "upload_ttl_secs = 1").await;
    let (_serve, _work) = serve_and_work(&d).await;
    let customer = "16505557501";
    customer_writes(&d, customer, "wamid.err.open").await;

    // 131053: retried, then sent.
    d.graph.push_for(
        MESSAGES,
        Answer::graph_error(400, 131053, "(#131053) Media upload error"),
    );
    let id = accepted(
        &d,
        WABA,
        &json!({"to": customer, "type": "image", "link": "https://cdn.example/flaky.jpg"}),
    )
    .await;
    let view = wait_status(&d, WABA, &id, "sent").await;
    let sends = graph_sends(&d, &id);
    assert_eq!(sends.len(), 2, "one failure, one retry: {view}");
    assert_eq!(sends[0].body, sends[1].body, "the same request again");
    assert_eq!(view["error"], Value::Null, "{view}");

    // 100 about the link: final.
    d.graph.push_for(
        MESSAGES,
        Answer::graph_error(
            400,
            100,
            "(#100) Invalid parameter: Param image['link'] is not a valid URL",
        ),
    );
    let id = accepted(
        &d,
        WABA,
        &json!({"to": customer, "type": "image", "link": "https://cdn.example/bad.jpg"}),
    )
    .await;
    let view = wait_status(&d, WABA, &id, "failed").await;
    assert_eq!(view["error"]["code"], "media_failed", "{view}");
    assert!(
        view["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("link"),
        "the reason is kept: {view}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(graph_sends(&d, &id).len(), 1, "not retried");

    // 131052 (download of the media failed) is retried too; the retry is refused with a
    // 131051: final, media_failed.
    d.graph.push_for(
        MESSAGES,
        Answer::graph_error(400, 131052, "(#131052) Media download error"),
    );
    d.graph.push_for(
        MESSAGES,
        Answer::graph_error(400, 131051, "(#131051) Unsupported message type: media"),
    );
    let id = accepted(
        &d,
        WABA,
        &json!({"to": customer, "type": "video", "link": "https://cdn.example/v.mp4"}),
    )
    .await;
    let view = wait_status(&d, WABA, &id, "failed").await;
    assert_eq!(view["error"]["code"], "media_failed", "{view}");
    assert_eq!(graph_sends(&d, &id).len(), 2, "{view}");

    // A 100 that is not about media stays what it was (not media_failed).
    d.graph.push_for(
        MESSAGES,
        Answer::graph_error(400, 100, "(#100) Invalid parameter: to"),
    );
    let id = accepted(
        &d,
        WABA,
        &json!({"to": customer, "type": "location", "latitude": 1.0, "longitude": 1.0}),
    )
    .await;
    let view = wait_status(&d, WABA, &id, "failed").await;
    assert_ne!(view["error"]["code"], "media_failed", "{view}");

    // ---- Personal: a held id that never existed, and one that expired.
    let chat = "16505557502";
    let never = accepted(
        &d,
        PERSONAL,
        &json!({"to": chat, "type": "image", "id": "cxm_0123456789abcdef0123456789abcdef"}),
    )
    .await;
    let view = wait_status(&d, PERSONAL, &never, "failed").await;
    assert_eq!(view["error"]["code"], "media_failed", "{view}");
    let r = upload(
        &d,
        PERSONAL,
        bytes_of(2000, 16),
        Some("image/jpeg"),
        None,
        Some(API_KEY),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let held = r.id().to_string();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = download(&d, PERSONAL, &held, Some(API_KEY)).await;
    assert_eq!(
        (r.status, r.code()),
        (404, "media_not_found"),
        "expired upload: {r:?}"
    );
    let expired = accepted(
        &d,
        PERSONAL,
        &json!({"to": chat, "type": "document", "id": held, "filename": "x.jpg"}),
    )
    .await;
    let view = wait_status(&d, PERSONAL, &expired, "failed").await;
    assert_eq!(view["error"]["code"], "media_failed", "{view}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waha_sends(&d).is_empty(), "{:?}", waha_sends(&d));
    // The lane goes on: a text after them is sent.
    let text = accepted(
        &d,
        PERSONAL,
        &json!({"to": chat, "type": "text", "text": "sorry"}),
    )
    .await;
    wait_status(&d, PERSONAL, &text, "sent").await;
}

// ------------------------------------------------------------------ 6. inbound media

/// A signed WAHA image webhook through `serve`: the forward bot's event carries `media.id` =
/// the gateway's file name (and the type), and the route opens the file by that id with the
/// channel's API key — from the configured `api_url`, not the payload's host. The same for a
/// Meta image webhook: `media.id` is Meta's id and the route fetches it with the token; once
/// it expired the route says `media_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_bot_opens_inbound_media_by_the_id_in_its_event() {
    let d = deployment(Opts::default(), "").await;
    let (_serve, _work) = serve_and_work(&d).await;
    d.recorder.answer_all(json!({}));
    let photo = bytes_of(120_000, 17);
    let event = waha_image_event(&d, &photo).await;
    let media = &event["message"]["media"];
    assert_eq!(event["message"]["type"], "image", "{event}");
    assert_eq!(media["id"], WAHA_FILE, "{event}");
    assert_eq!(media["mime_type"], "image/jpeg", "{event}");
    let r = download(&d, PERSONAL, media["id"].as_str().unwrap(), Some(API_KEY)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.bytes == photo);
    assert_eq!(r.header("content-type"), "image/jpeg");
    let got = d
        .waha
        .requests_to(&format!("/api/files/default/{WAHA_FILE}"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-api-key"), Some(WAHA_KEY));

    // ---- Meta
    let jpeg = bytes_of(90_000, 18);
    d.graph
        .add_media("1003383421387256", jpeg.clone(), "image/jpeg");
    let body = std::fs::read("fixtures/meta/image_message.json").unwrap();
    post_meta(&d, &serde_json::from_slice(&body).unwrap()).await;
    d.recorder
        .wait_for("the Meta image event", Duration::from_secs(20), |c| {
            c.iter().any(|c| c.event["channel"] == WABA)
        })
        .await;
    let call = d
        .recorder
        .calls()
        .into_iter()
        .find(|c| c.event["channel"] == WABA)
        .unwrap();
    let media = call.event["message"]["media"].clone();
    assert_eq!(media["id"], "1003383421387256", "{}", call.event);
    assert_eq!(media["mime_type"], "image/jpeg", "{}", call.event);
    let r = download(&d, WABA, media["id"].as_str().unwrap(), Some(API_KEY)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.bytes == jpeg);
    d.graph.expire_media("1003383421387256");
    let r = download(&d, WABA, "1003383421387256", Some(API_KEY)).await;
    assert_eq!((r.status, r.code()), (404, "media_not_found"), "{r:?}");
    let ids: BTreeSet<String> = d
        .recorder
        .calls()
        .iter()
        .map(|c| c.event["channel"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([PERSONAL.to_string(), WABA.to_string()])
    );
}

/// POSTs a Meta webhook body, signed, and expects 200.
async fn post_meta(d: &Deployment, body: &Value) {
    let bytes = body.to_string().into_bytes();
    let sig = coexist::verify::header_value(
        coexist::verify::Algorithm::Sha256,
        APP_SECRET.as_bytes(),
        &bytes,
    );
    let res = client()
        .post(format!("http://{}/webhooks/meta", d.listen))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sig)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

/// The forward bot's view of the event with message id `id`, once it arrived.
async fn bot_event(d: &Deployment, id: &str) -> Value {
    let found = |c: &[recorder::Call]| c.iter().any(|c| c.event["message"]["id"] == id);
    d.recorder
        .wait_for(id, Duration::from_secs(20), found)
        .await;
    d.recorder
        .calls()
        .into_iter()
        .find(|c| c.event["message"]["id"] == id)
        .unwrap()
        .event
}

/// The gateway's file name of the WAHA image fixture.
const WAHA_FILE: &str = "3EB0C0FFEE0123456789.jpeg";

/// Puts `photo` at the fake WAHA, POSTs the WAHA image fixture pointing at it (signed) and
/// answers the event the forward bot got.
async fn waha_image_event(d: &Deployment, photo: &[u8]) -> Value {
    d.waha.add_file(WAHA_FILE, photo.to_vec(), "image/jpeg");
    let mut body: Value = serde_json::from_slice(
        &std::fs::read("fixtures/personal/waha_message_image.json").unwrap(),
    )
    .unwrap();
    // The gateway announces itself by another host name: coexist still asks its api_url.
    body["payload"]["media"]["url"] = json!(format!(
        "http://localhost:3000/api/files/default/{WAHA_FILE}"
    ));
    let bytes = body.to_string().into_bytes();
    let sig =
        coexist::verify::header_value(coexist::verify::Algorithm::Sha512, b"waha-hmac", &bytes);
    let res = client()
        .post(format!("http://{}/webhooks/personal/{PERSONAL}", d.listen))
        .header("content-type", "application/json")
        .header("x-webhook-hmac", sig)
        .header("x-webhook-hmac-algorithm", "sha512")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let id = body["payload"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let event = bot_event(d, &id).await;
    assert_eq!(event["channel"], PERSONAL, "{event}");
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_store_keeps_inbound_files_before_the_bot_runs() {
    let dir = std::env::temp_dir().join(format!("coexist-media-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = deployment(
        Opts::default(),
        &format!(
            "store = \"dir:{}\"\nretention_days = 3\ntimeout_ms = 1000\n",
            dir.display()
        ),
    )
    .await;
    // A copy past `retention_days` (3) from an earlier run, and one still within it: the
    // worker prunes the first when it starts.
    std::fs::create_dir_all(dir.join(WABA)).unwrap();
    let aged = |name: &str, days: u64| {
        let path = dir.join(WABA).join(name);
        let file = std::fs::File::create(&path).unwrap();
        let at = std::time::SystemTime::now() - Duration::from_secs(days * 86_400);
        file.set_modified(at).unwrap();
        path
    };
    let expired = aged("wamid.OLD0001.jpg", 4);
    let recent = aged("wamid.RECENT0001.jpg", 2);
    let (_serve, _work) = serve_and_work(&d).await;
    d.recorder.answer_all(json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while expired.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!expired.exists(), "a copy past retention_days is pruned");
    assert!(recent.exists(), "a copy within retention_days stays");
    std::fs::remove_file(&recent).unwrap();

    // ---- Meta: the copy is the provider's bytes, and outlives the provider's URL.
    let jpeg = bytes_of(300_000, 31);
    d.graph
        .add_media("1003383421387256", jpeg.clone(), "image/jpeg");
    let body: Value =
        serde_json::from_slice(&std::fs::read("fixtures/meta/image_message.json").unwrap())
            .unwrap();
    post_meta(&d, &body).await;
    let wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        .as_str()
        .unwrap();
    let event = bot_event(&d, wamid).await;
    let path = event["message"]["media"]["stored_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no stored_path in {event}"));
    let path = std::path::PathBuf::from(path);
    assert!(path.starts_with(dir.join(WABA)), "{path:?}");
    assert_eq!(path.extension().unwrap(), "jpg");
    assert!(
        std::fs::read(&path).unwrap() == jpeg,
        "the copy holds the provider's bytes"
    );
    d.graph.expire_media("1003383421387256");
    assert!(
        std::fs::read(&path).unwrap() == jpeg,
        "the copy outlives the provider"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join(WABA))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // ---- Meta, media already gone at the provider: the bot still gets the message, with
    // no stored_path, and nothing half-written stays behind.
    let mut gone = body.clone();
    let message = &mut gone["entry"][0]["changes"][0]["value"]["messages"][0];
    message["id"] = json!("wamid.GONE0000000000000000000000000000000000000000000000000001");
    message["image"]["id"] = json!("9999999999999999");
    post_meta(&d, &gone).await;
    let event = bot_event(
        &d,
        "wamid.GONE0000000000000000000000000000000000000000000000000001",
    )
    .await;
    assert_eq!(
        event["message"]["media"]["id"], "9999999999999999",
        "{event}"
    );
    assert!(
        event["message"]["media"].get("stored_path").is_none(),
        "{event}"
    );
    assert_eq!(std::fs::read_dir(dir.join(WABA)).unwrap().count(), 1);

    // ---- Handled again after a crash: a finished copy is reused without asking the provider
    // (which no longer has the file), and a half-written one is replaced.
    let again = |id: &str, media_id: &str| {
        let mut b = body.clone();
        let m = &mut b["entry"][0]["changes"][0]["value"]["messages"][0];
        m["id"] = json!(id);
        m["image"]["id"] = json!(media_id);
        b
    };
    let finished = dir.join(WABA).join("wamid.AGAIN0001.jpg");
    std::fs::write(&finished, b"the copy made before the crash").unwrap();
    post_meta(&d, &again("wamid.AGAIN0001", "9999999999999998")).await;
    let event = bot_event(&d, "wamid.AGAIN0001").await;
    assert_eq!(
        event["message"]["media"]["stored_path"],
        finished.display().to_string(),
        "{event}"
    );
    assert_eq!(
        std::fs::read(&finished).unwrap(),
        b"the copy made before the crash"
    );
    let half = dir.join(WABA).join("wamid.AGAIN0002.jpg.part");
    std::fs::write(&half, b"half of a file").unwrap();
    let png = bytes_of(50_000, 33);
    d.graph
        .add_media("9999999999999997", png.clone(), "image/jpeg");
    post_meta(&d, &again("wamid.AGAIN0002", "9999999999999997")).await;
    let event = bot_event(&d, "wamid.AGAIN0002").await;
    let path = dir.join(WABA).join("wamid.AGAIN0002.jpg");
    assert_eq!(
        event["message"]["media"]["stored_path"],
        path.display().to_string(),
        "{event}"
    );
    assert!(std::fs::read(&path).unwrap() == png);
    assert!(!half.exists(), "the half-written copy was replaced");

    // ---- A provider error that may pass is tried again: the copy is made on the second try.
    let flaky = bytes_of(40_000, 34);
    d.graph
        .add_media("9999999999999996", flaky.clone(), "image/jpeg");
    d.graph
        .push_for("/9999999999999996", Answer::server_error());
    post_meta(&d, &again("wamid.AGAIN0003", "9999999999999996")).await;
    let event = bot_event(&d, "wamid.AGAIN0003").await;
    let path = dir.join(WABA).join("wamid.AGAIN0003.jpg");
    assert_eq!(
        event["message"]["media"]["stored_path"],
        path.display().to_string(),
        "{event}"
    );
    assert!(std::fs::read(&path).unwrap() == flaky);
    let asked = d.graph.requests_to("/9999999999999996");
    let downloads = asked.iter().filter(|r| r.path.starts_with("/download/"));
    assert_eq!(
        (asked.len(), downloads.count()),
        (3, 1),
        "two lookups (the first refused), one download"
    );

    // ---- ... but only within one media timeout (1 s here): a provider that hangs costs the
    // partition one timeout, and no second attempt starts after it.
    d.graph
        .add_media("9999999999999995", flaky.clone(), "image/jpeg");
    for _ in 0..3 {
        d.graph.push_for("/9999999999999995", Answer::slow(3000));
    }
    post_meta(&d, &again("wamid.AGAIN0004", "9999999999999995")).await;
    let event = bot_event(&d, "wamid.AGAIN0004").await;
    assert!(
        event["message"]["media"].get("stored_path").is_none(),
        "{event}"
    );
    assert_eq!(d.graph.requests_to("/9999999999999995").len(), 1);

    // ---- WAHA: the gateway's file, fetched with its API key.
    let photo = bytes_of(120_000, 32);
    let event = waha_image_event(&d, &photo).await;
    let path = event["message"]["media"]["stored_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no stored_path in {event}"));
    assert!(
        std::path::Path::new(path).starts_with(dir.join(PERSONAL)),
        "{path}"
    );
    assert!(std::fs::read(path).unwrap() == photo);
    let got = d
        .waha
        .requests_to(&format!("/api/files/default/{WAHA_FILE}"));
    assert_eq!(got.len(), 1, "one download for the copy");
    assert_eq!(got[0].header("x-api-key"), Some(WAHA_KEY));
    let _ = std::fs::remove_dir_all(&dir);
}
