//! Fake Graph API and fake WAHA servers for integration tests (any test binary may
//! `mod fakes;`).
//!
//! Each fake is a real actix-web server on `127.0.0.1:<free port>`, on its own thread. It
//! records every request (method, path, headers, JSON body, arrival time) and answers from a
//! script: queued [`Answer`]s, consumed in order (optionally only by requests to one path),
//! and `Answer::Ok` when the script is empty.
//!
//! Media (issue 12), served when the script has nothing for the request (`Answer::Ok`):
//! - Graph: `POST /{pnid}/media` (multipart: `messaging_product`, `type`, `file`) answers
//!   `{"id":"media<N>"}` and records a [`MediaUpload`]; `GET /{media id}` answers the lookup
//!   (`url` = `<origin>/download/<id>`) or 400 code 100 subcode 33 for an unknown id;
//!   `GET /download/<id>` answers the bytes. With [`FakeServer::require_token`] all three
//!   answer 401 (code 190) without `Authorization: Bearer <token>`.
//! - WAHA: `GET /api/files/{session}/{name}` serves [`FakeServer::add_file`]s (401 without
//!   the `X-Api-Key` set by [`FakeServer::require_token`], 404 for an unknown name); every
//!   `/api/send*` except `sendSeen` answers a message id like `sendText`.
#![allow(dead_code)]

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Graph API version the fake serves under (`{url}` already includes it).
pub const GRAPH_VERSION: &str = "v23.0";

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// The body as it came (uploads, multipart).
    pub raw: Vec<u8>,
    /// The query string (without `?`), "" when none.
    pub query: String,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// How the fake answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with a fresh id (Graph: `wamid.fake<N>`, or `{"success":true}` for read receipts;
    /// WAHA: `{"id":{"_serialized":…}}` for every `/api/send*` but sendSeen, `{}` otherwise);
    /// the media endpoints answer as the module documentation says.
    Ok,
    /// A Graph error body `{"error":{"code":…}}` with this HTTP status.
    GraphError {
        status: u16,
        code: Value,
        message: String,
    },
    /// This status with a short text body.
    Status(u16),
    /// Any status and JSON body.
    Json { status: u16, body: Value },
    /// Wait, then answer.
    Slow(Duration, Box<Answer>),
}

impl Answer {
    pub fn graph_error(status: u16, code: i64, message: &str) -> Answer {
        Answer::GraphError {
            status,
            code: json!(code),
            message: message.into(),
        }
    }
    /// 400, 131047: outside the 24 h window.
    pub fn window_closed() -> Answer {
        Answer::graph_error(400, 131047, "(#131047) Re-engagement message")
    }
    /// 429, 130429: throughput.
    pub fn rate_limited() -> Answer {
        Answer::graph_error(429, 130429, "(#130429) Rate limit hit")
    }
    /// 400, 131056: pair rate.
    pub fn pair_rate_limited() -> Answer {
        Answer::graph_error(
            400,
            131056,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
        )
    }
    /// 400, 131026: undeliverable.
    pub fn undeliverable() -> Answer {
        Answer::graph_error(400, 131026, "(#131026) Message Undeliverable")
    }
    /// 401, 190: token expired.
    pub fn unauthorized() -> Answer {
        Answer::graph_error(
            401,
            190,
            "Error validating access token: Session has expired",
        )
    }
    pub fn server_error() -> Answer {
        Answer::Status(500)
    }
    pub fn slow(ms: u64) -> Answer {
        Answer::Slow(Duration::from_millis(ms), Box::new(Answer::Ok))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Graph,
    Waha,
}

/// One upload the fake Graph API accepted (`POST /{pnid}/media`).
#[derive(Clone, Debug)]
pub struct MediaUpload {
    /// The id the fake answered (`media<N>`).
    pub id: String,
    /// The multipart text fields (`messaging_product`, `type`, …).
    pub fields: HashMap<String, String>,
    /// The `file` part's bytes, file name and type.
    pub file: Vec<u8>,
    pub filename: Option<String>,
    pub file_content_type: Option<String>,
    pub authorization: Option<String>,
}

/// A file the fake serves (Graph media or a WAHA file).
#[derive(Clone)]
struct StoredMedia {
    bytes: web::Bytes,
    mime: String,
    /// Graph: the lookup declares `file_size`.
    declare_size: bool,
    /// Graph: the lookup still works but the download URL answers 404 (Meta's URLs expire
    /// within minutes).
    url_expired: bool,
    /// Served chunked (no `Content-Length`), in 64 KiB pieces.
    chunked: bool,
}

impl StoredMedia {
    fn respond(self) -> HttpResponse {
        let mut res = HttpResponse::Ok();
        res.content_type(self.mime);
        if !self.chunked {
            return res.body(self.bytes);
        }
        let pieces: Vec<Result<web::Bytes, actix_web::Error>> = self
            .bytes
            .chunks(64 * 1024)
            .map(|c| Ok(web::Bytes::copy_from_slice(c)))
            .collect();
        res.streaming(futures_util::stream::iter(pieces))
    }
}

struct Shared {
    flavour: Flavour,
    /// `http://127.0.0.1:<port>`.
    origin: String,
    requests: Mutex<Vec<Recorded>>,
    /// (path suffix filter, answer)
    script: Mutex<VecDeque<(Option<String>, Answer)>>,
    counter: AtomicU64,
    /// Graph: media id → file; WAHA: file name → file.
    media: Mutex<HashMap<String, StoredMedia>>,
    uploads: Mutex<Vec<MediaUpload>>,
    media_counter: AtomicU64,
    /// Graph: the bearer token; WAHA: the `X-Api-Key` the media endpoints require.
    token: Mutex<Option<String>>,
}

/// A running fake server (it lives until the test process exits).
pub struct FakeServer {
    base: String,
    shared: Arc<Shared>,
}

impl FakeServer {
    /// A fake Graph API; [`FakeServer::url`] is the `graph_api_url` (with the version).
    pub fn graph() -> FakeServer {
        FakeServer::start(Flavour::Graph)
    }

    /// A fake WAHA; [`FakeServer::url`] is the channel's `api_url`.
    pub fn waha() -> FakeServer {
        FakeServer::start(Flavour::Waha)
    }

    fn start(flavour: Flavour) -> FakeServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            flavour,
            origin: format!("http://127.0.0.1:{port}"),
            requests: Mutex::default(),
            script: Mutex::default(),
            counter: AtomicU64::new(0),
            media: Mutex::default(),
            uploads: Mutex::default(),
            media_counter: AtomicU64::new(0),
            token: Mutex::default(),
        });
        let data = web::Data::from(shared.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("fake-{flavour:?}-{port}"))
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(32 << 20))
                            .default_service(web::to(handle))
                    })
                    .workers(1)
                    .disable_signals()
                    .listen(listener)
                    .unwrap()
                    .run();
                    ready_tx.send(()).unwrap();
                    let _ = server.await;
                })
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let base = match flavour {
            Flavour::Graph => format!("http://127.0.0.1:{port}/{GRAPH_VERSION}"),
            Flavour::Waha => format!("http://127.0.0.1:{port}"),
        };
        FakeServer { base, shared }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Queues an answer for the next request (any path).
    pub fn push(&self, answer: Answer) {
        self.shared.script.lock().unwrap().push_back((None, answer));
    }

    /// Queues an answer for the next request whose path ends with `path_suffix`.
    pub fn push_for(&self, path_suffix: &str, answer: Answer) {
        self.shared
            .script
            .lock()
            .unwrap()
            .push_back((Some(path_suffix.to_string()), answer));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests whose path ends with `path_suffix`, in arrival order.
    pub fn requests_to(&self, path_suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(path_suffix))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// `http://127.0.0.1:<port>` (no API version).
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The media endpoints answer 401 without this credential (Graph: `Authorization: Bearer
    /// <token>`; WAHA: `X-Api-Key: <token>`).
    pub fn require_token(&self, token: &str) {
        *self.shared.token.lock().unwrap() = Some(token.to_string());
    }

    /// Graph: a media id the lookup and the download know (with `file_size`). WAHA: a file
    /// served at `/api/files/<session>/<id>`.
    pub fn add_media(&self, id: &str, bytes: impl Into<web::Bytes>, mime: &str) {
        self.store(id, bytes.into(), mime, true);
    }

    /// Graph: like [`FakeServer::add_media`], but the lookup declares no `file_size`.
    pub fn add_media_undeclared(&self, id: &str, bytes: impl Into<web::Bytes>, mime: &str) {
        self.store(id, bytes.into(), mime, false);
    }

    /// Like [`FakeServer::add_media_undeclared`] (Graph) / [`FakeServer::add_file`] (WAHA),
    /// served chunked: no length is declared anywhere.
    pub fn add_media_chunked(&self, id: &str, bytes: impl Into<web::Bytes>, mime: &str) {
        self.store(id, bytes.into(), mime, false);
        if let Some(m) = self.shared.media.lock().unwrap().get_mut(id) {
            m.chunked = true;
        }
    }

    /// WAHA: a file at `/api/files/<session>/<name>` (same as [`FakeServer::add_media`]).
    pub fn add_file(&self, name: &str, bytes: impl Into<web::Bytes>, mime: &str) {
        self.store(name, bytes.into(), mime, true);
    }

    fn store(&self, id: &str, bytes: web::Bytes, mime: &str, declare_size: bool) {
        self.shared.media.lock().unwrap().insert(
            id.to_string(),
            StoredMedia {
                bytes,
                mime: mime.to_string(),
                declare_size,
                url_expired: false,
                chunked: false,
            },
        );
    }

    /// The media is gone: the lookup answers 400 code 100 subcode 33 (WAHA: 404).
    pub fn expire_media(&self, id: &str) {
        self.shared.media.lock().unwrap().remove(id);
    }

    /// Graph: the lookup still answers, but the short-lived download URL answers 404.
    pub fn expire_media_url(&self, id: &str) {
        if let Some(m) = self.shared.media.lock().unwrap().get_mut(id) {
            m.url_expired = true;
        }
    }

    /// Every upload the fake Graph API accepted, in arrival order.
    pub fn uploads(&self) -> Vec<MediaUpload> {
        self.shared.uploads.lock().unwrap().clone()
    }

    /// The bytes of an upload the fake accepted (`media<N>`), or of a preloaded media.
    pub fn media_bytes(&self, id: &str) -> Option<Vec<u8>> {
        self.shared
            .media
            .lock()
            .unwrap()
            .get(id)
            .map(|m| m.bytes.to_vec())
    }
}

async fn handle(req: HttpRequest, raw: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let at = Instant::now();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let path = req.path().to_string();
    let recorded = Recorded {
        method: req.method().to_string(),
        path: path.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
        body: body.clone(),
        raw: raw.to_vec(),
        query: req.query_string().to_string(),
        at,
    };
    shared.requests.lock().unwrap().push(recorded.clone());
    let answer = {
        let mut script = shared.script.lock().unwrap();
        let pos = script
            .iter()
            .position(|(filter, _)| filter.as_ref().is_none_or(|f| path.ends_with(f.as_str())));
        pos.and_then(|i| script.remove(i))
            .map(|(_, a)| a)
            .unwrap_or(Answer::Ok)
    };
    if matches!(answer, Answer::Ok) {
        if let Some(res) = media_endpoint(&shared, &recorded) {
            return res;
        }
    }
    respond(&shared, answer, &path, &body).await
}

/// The media endpoints (`None`: not one of them).
fn media_endpoint(shared: &Shared, r: &Recorded) -> Option<HttpResponse> {
    let token = shared.token.lock().unwrap().clone();
    match shared.flavour {
        Flavour::Graph => {
            let rest = r.path.strip_prefix(&format!("/{GRAPH_VERSION}/"));
            let authorized = token
                .as_ref()
                .is_none_or(|t| r.header("authorization") == Some(format!("Bearer {t}").as_str()));
            let unauthorized = || {
                HttpResponse::Unauthorized().json(json!({"error":{
                    "message": "Invalid OAuth access token - Cannot parse access token",
                    "type": "OAuthException", "code": 190, "fbtrace_id": "AbCdEf"}}))
            };
            if r.method == "GET" {
                if let Some(id) = r.path.strip_prefix("/download/") {
                    if !authorized {
                        return Some(HttpResponse::Unauthorized().body("no token"));
                    }
                    let media = shared.media.lock().unwrap().get(id).cloned();
                    return Some(match media {
                        Some(m) if !m.url_expired => m.respond(),
                        _ => HttpResponse::NotFound().body("URL signature expired"),
                    });
                }
                let id = rest.filter(|id| !id.is_empty() && !id.contains('/'))?;
                if !authorized {
                    return Some(unauthorized());
                }
                let media = shared.media.lock().unwrap().get(id).cloned();
                return Some(match media {
                    Some(m) => {
                        let mut info = json!({
                            "messaging_product": "whatsapp",
                            "url": format!("{}/download/{id}", shared.origin),
                            "mime_type": m.mime,
                            "sha256": hex_sha256(&m.bytes),
                            "id": id,
                        });
                        if m.declare_size {
                            info["file_size"] = json!(m.bytes.len());
                        }
                        HttpResponse::Ok().json(info)
                    }
                    None => HttpResponse::BadRequest().json(json!({"error":{
                        "message": format!("Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."),
                        "type": "GraphMethodException", "code": 100, "error_subcode": 33,
                        "fbtrace_id": "AbCdEf"}})),
                });
            }
            if r.method == "POST" && rest.is_some_and(|p| p.ends_with("/media")) {
                if !authorized {
                    return Some(unauthorized());
                }
                let Some(parts) = parse_multipart(r) else {
                    return Some(HttpResponse::BadRequest().json(json!({"error":{
                        "message": "(#100) The parameter file is required",
                        "type": "OAuthException", "code": 100, "fbtrace_id": "AbCdEf"}})));
                };
                let n = shared.media_counter.fetch_add(1, Ordering::Relaxed) + 1;
                let id = format!("media{n}");
                let mut upload = MediaUpload {
                    id: id.clone(),
                    fields: HashMap::new(),
                    file: Vec::new(),
                    filename: None,
                    file_content_type: None,
                    authorization: r.header("authorization").map(str::to_string),
                };
                for p in parts {
                    if p.name == "file" {
                        upload.file = p.data;
                        upload.filename = p.filename;
                        upload.file_content_type = p.content_type;
                    } else {
                        upload
                            .fields
                            .insert(p.name, String::from_utf8_lossy(&p.data).into_owned());
                    }
                }
                if upload.fields.get("messaging_product").map(String::as_str) != Some("whatsapp")
                    || upload.file.is_empty()
                {
                    return Some(HttpResponse::BadRequest().json(json!({"error":{
                        "message": "(#100) Param messaging_product and file are required",
                        "type": "OAuthException", "code": 100, "fbtrace_id": "AbCdEf"}})));
                }
                let mime = upload
                    .fields
                    .get("type")
                    .cloned()
                    .or_else(|| upload.file_content_type.clone())
                    .unwrap_or_default();
                shared.media.lock().unwrap().insert(
                    id.clone(),
                    StoredMedia {
                        bytes: upload.file.clone().into(),
                        mime,
                        declare_size: true,
                        url_expired: false,
                        chunked: false,
                    },
                );
                shared.uploads.lock().unwrap().push(upload);
                return Some(HttpResponse::Ok().json(json!({ "id": id })));
            }
            None
        }
        Flavour::Waha => {
            let rest = r.path.strip_prefix("/api/files/")?;
            if r.method != "GET" {
                return None;
            }
            if token.is_some_and(|t| r.header("x-api-key") != Some(t.as_str())) {
                return Some(
                    HttpResponse::Unauthorized()
                        .json(json!({"message":"Unauthorized","statusCode":401})),
                );
            }
            let name = rest.rsplit('/').next().unwrap_or("");
            let media = shared.media.lock().unwrap().get(name).cloned();
            Some(match media {
                Some(m) => m.respond(),
                None => HttpResponse::NotFound()
                    .json(json!({"message":"File not found","statusCode":404})),
            })
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One part of a `multipart/form-data` body.
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// Splits a recorded `multipart/form-data` body into its parts (`None`: not multipart, or
/// malformed).
pub fn parse_multipart(r: &Recorded) -> Option<Vec<Part>> {
    let ct = r.header("content-type")?;
    let (kind, params) = ct.split_once(';')?;
    if kind.trim() != "multipart/form-data" {
        return None;
    }
    let boundary = params
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let body = &r.raw;
    let mut parts = Vec::new();
    let mut pos = find(body, &delimiter, 0)? + delimiter.len();
    loop {
        if body[pos..].starts_with(b"--") {
            return Some(parts);
        }
        pos += 2; // CRLF after the delimiter
        let head_end = find(body, b"\r\n\r\n", pos)?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).into_owned();
        let next = find(
            body,
            &[b"\r\n".as_slice(), &delimiter].concat(),
            head_end + 4,
        )?;
        let data = body[head_end + 4..next].to_vec();
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data,
        };
        for line in head.split("\r\n") {
            let (h, v) = line.split_once(':')?;
            match h.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for param in v.split(';').skip(1) {
                        let (k, val) = param.trim().split_once('=')?;
                        let val = val.trim_matches('"').to_string();
                        match k {
                            "name" => part.name = val,
                            "filename" => part.filename = Some(val),
                            _ => {}
                        }
                    }
                }
                "content-type" => part.content_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
        parts.push(part);
        pos = next + 2 + delimiter.len();
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

async fn respond(shared: &Shared, mut answer: Answer, path: &str, body: &Value) -> HttpResponse {
    while let Answer::Slow(delay, inner) = answer {
        actix_web::rt::time::sleep(delay).await;
        answer = *inner;
    }
    let status = |s: u16| actix_web::http::StatusCode::from_u16(s).unwrap();
    match answer {
        Answer::Ok => {
            let n = shared.counter.fetch_add(1, Ordering::Relaxed) + 1;
            let json = match shared.flavour {
                Flavour::Graph if body["status"] == "read" => json!({"success": true}),
                Flavour::Graph => {
                    let input = body
                        .get("to")
                        .or_else(|| body.get("recipient"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    json!({"messaging_product":"whatsapp",
                           "contacts":[{"input": input, "wa_id": "1"}],
                           "messages":[{"id": format!("wamid.fake{n}")}]})
                }
                Flavour::Waha if path.starts_with("/api/send") && !path.ends_with("/sendSeen") => {
                    let chat = body["chatId"].as_str().unwrap_or("");
                    json!({"id":{"fromMe":true,"remote":chat,"id":format!("FAKE{n}"),
                                 "_serialized":format!("true_{chat}_FAKE{n}")}})
                }
                Flavour::Waha => json!({}),
            };
            HttpResponse::Ok().json(json)
        }
        Answer::GraphError {
            status: s,
            code,
            message,
        } => HttpResponse::build(status(s)).json(json!({"error":{
            "message": message, "type": "OAuthException", "code": code,
            "error_data": {"messaging_product":"whatsapp","details": "fake details"},
            "fbtrace_id": "AbCdEf"}})),
        Answer::Status(s) => HttpResponse::build(status(s)).body(format!("fake status {s}")),
        Answer::Json { status: s, body } => HttpResponse::build(status(s)).json(body),
        Answer::Slow(..) => unreachable!("unwrapped above"),
    }
}
