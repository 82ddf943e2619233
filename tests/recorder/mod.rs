//! A forward-bot endpoint for tests: records every event POSTed to it (with arrival and answer
//! times and the worker that sent it), verifies the signature, and answers as scripted.
#![allow(dead_code)]

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Call {
    pub event: serde_json::Value,
    pub event_id: String,
    pub worker: String,
    pub started: Instant,
    pub finished: Instant,
    pub status: u16,
    pub signature_ok: bool,
}

impl Call {
    pub fn conversation(&self) -> &str {
        self.event["conversation"].as_str().unwrap_or("")
    }
    pub fn text(&self) -> &str {
        self.event["message"]["text"].as_str().unwrap_or("")
    }
    pub fn event_type(&self) -> &str {
        self.event["type"].as_str().unwrap_or("")
    }
}

/// How the endpoint answers one event id.
#[derive(Clone, Debug)]
pub enum Script {
    /// Answer 500 this many times, then 200.
    FailTimes(u32),
    /// Always 500.
    AlwaysFail,
    /// 200 with this JSON body.
    Answer(serde_json::Value),
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    scripts: HashMap<String, Script>,
    /// Answer for every event whose id has no script.
    default_answer: Option<serde_json::Value>,
    delay: Duration,
}

#[derive(Clone)]
pub struct Recorder {
    state: Arc<Mutex<State>>,
    pub url: String,
    secret: String,
}

impl Recorder {
    pub fn start(secret: &str) -> Recorder {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        let secret_owned = secret.to_string();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = listener.local_addr().unwrap().port();
                let data = web::Data::new((shared, secret_owned));
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/events", web::post().to(handle))
                })
                .workers(2)
                .listen(listener)
                .unwrap()
                .run();
                tx.send(port).unwrap();
                server.await.unwrap();
            })
        });
        let port = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Recorder {
            state,
            url: format!("http://127.0.0.1:{port}/events"),
            secret: secret.to_string(),
        }
    }

    pub fn script(&self, event_id: &str, script: Script) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(event_id.to_string(), script);
    }

    pub fn answer_all(&self, body: serde_json::Value) {
        self.state.lock().unwrap().default_answer = Some(body);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Successful (2xx) calls only.
    pub fn handled(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.status < 300)
            .collect()
    }

    pub fn distinct_handled(&self) -> usize {
        let mut ids: Vec<String> = self.handled().into_iter().map(|c| c.event_id).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Call]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.calls()) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} calls recorded",
                    self.calls().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    data: web::Data<(Arc<Mutex<State>>, String)>,
) -> HttpResponse {
    let started = Instant::now();
    let (state, secret) = (&data.0, &data.1);
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let expected =
        coexist::verify::header_value(coexist::verify::Algorithm::Sha256, secret.as_bytes(), &body);
    let signature_ok = header("x-coexist-signature") == expected;
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let event_id = header("x-coexist-event-id");
    let delay = state.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, answer) = {
        let mut st = state.lock().unwrap();
        let default = st.default_answer.clone();
        match st.scripts.get_mut(&event_id) {
            Some(Script::FailTimes(n)) if *n > 0 => {
                *n -= 1;
                (500, None)
            }
            Some(Script::AlwaysFail) => (500, None),
            Some(Script::Answer(v)) => (200, Some(v.clone())),
            _ => (200, default),
        }
    };
    let call = Call {
        event,
        event_id,
        worker: header("x-coexist-worker"),
        started,
        finished: Instant::now(),
        status,
        signature_ok,
    };
    state.lock().unwrap().calls.push(call);
    let mut res = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    match answer {
        Some(v) => res.content_type("application/json").body(v.to_string()),
        None => res.finish(),
    }
}
