//! Fake Graph API and fake WAHA servers for integration tests (any test binary may
//! `mod fakes;`).
//!
//! Each fake is a real actix-web server on `127.0.0.1:<free port>`, on its own thread. It
//! records every request (method, path, headers, JSON body, arrival time) and answers from a
//! script: queued [`Answer`]s, consumed in order (optionally only by requests to one path),
//! and `Answer::Ok` when the script is empty.
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
    /// WAHA: `{"id":{"_serialized":…}}` for sendText, `{}` otherwise).
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

struct Shared {
    flavour: Flavour,
    requests: Mutex<Vec<Recorded>>,
    /// (path suffix filter, answer)
    script: Mutex<VecDeque<(Option<String>, Answer)>>,
    counter: AtomicU64,
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
            requests: Mutex::default(),
            script: Mutex::default(),
            counter: AtomicU64::new(0),
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
                            .app_data(web::PayloadConfig::new(1 << 20))
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
}

async fn handle(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let at = Instant::now();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = req.path().to_string();
    shared.requests.lock().unwrap().push(Recorded {
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
        at,
    });
    let answer = {
        let mut script = shared.script.lock().unwrap();
        let pos = script
            .iter()
            .position(|(filter, _)| filter.as_ref().is_none_or(|f| path.ends_with(f.as_str())));
        pos.and_then(|i| script.remove(i))
            .map(|(_, a)| a)
            .unwrap_or(Answer::Ok)
    };
    respond(&shared, answer, &path, &body).await
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
                Flavour::Waha if path.ends_with("/sendText") => {
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
