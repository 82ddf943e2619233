//! The HTTP layer (actix-web) — the only module that knows HTTP servers exist.
//!
//! Routes: `GET|POST /webhooks/meta`, `POST /webhooks/personal/{channel}`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`, and the send API under `/v1` (404 without `[api]`; see
//! [`crate::api`]: JSON in and out, errors as `{"error": {"code", "message", …}}`). Each handler reads the raw body (verification needs the
//! exact bytes), calls [`Ingest`], and maps its typed errors to status codes:
//! missing signature 401, wrong signature 403, unreadable body 400, unknown channel 404,
//! body too large 413, queue unavailable 503 (so Meta and WAHA retry). 200 only after the
//! queue confirmed every event.

use crate::api::{ApiError, SendApi};
use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::Metric;
use crate::queue::QueueBackend;
use crate::verify::SignatureError;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use bytes::BytesMut;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Shared state of the HTTP workers.
#[derive(Clone)]
pub struct AppState {
    pub ingest: Ingest,
    pub max_body_bytes: usize,
    /// The send API; `None` without an `[api]` table (its routes answer 404).
    pub api: Option<SendApi>,
}

#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("could not read the request body: {0}")]
    Body(String),
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        match self {
            HttpError::Ingest(IngestError::Signature(SignatureError::Missing)) => {
                StatusCode::UNAUTHORIZED
            }
            HttpError::Ingest(IngestError::Signature(_)) => StatusCode::FORBIDDEN,
            HttpError::Ingest(IngestError::Parse(_)) => StatusCode::BAD_REQUEST,
            HttpError::Ingest(IngestError::UnknownChannel(_)) => StatusCode::NOT_FOUND,
            HttpError::Ingest(IngestError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Body(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, HttpError::Ingest(IngestError::Unavailable(_))) {
            res.insert_header(("Retry-After", "5"));
        }
        // Queue internals stay in the log, not in the answer to the internet.
        let message = match self {
            HttpError::Ingest(IngestError::Unavailable(e)) => {
                tracing::warn!(error = %e, "queue unavailable: answering 503");
                "queue unavailable, retry later".to_string()
            }
            other => other.to_string(),
        };
        res.content_type("text/plain; charset=utf-8").body(message)
    }
}

fn outcome_of(result: &Result<Accepted, HttpError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(HttpError::Ingest(IngestError::Signature(SignatureError::Missing))) => {
            "missing_signature"
        }
        Err(HttpError::Ingest(IngestError::Signature(_))) => "bad_signature",
        Err(HttpError::Ingest(IngestError::Parse(_))) => "bad_request",
        Err(HttpError::Ingest(IngestError::UnknownChannel(_))) => "unknown_channel",
        Err(HttpError::Ingest(IngestError::Unavailable(_))) => "unavailable",
        Err(HttpError::TooLarge(_)) => "too_large",
        Err(HttpError::Body(_)) => "bad_request",
    }
}

/// Reads the whole body, refusing it as soon as it passes the limit.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, HttpError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(HttpError::TooLarge(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| HttpError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a [u8]> {
    req.headers().get(name).map(|v| v.as_bytes())
}

fn respond(
    state: &AppState,
    route: &'static str,
    result: Result<Accepted, HttpError>,
) -> Result<HttpResponse, HttpError> {
    state.ingest.metrics().inc(
        Metric::HttpRequests,
        &[("route", route), ("outcome", outcome_of(&result))],
    );
    result.map(|_| HttpResponse::Ok().content_type("text/plain").body("OK"))
}

async fn meta_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HttpError> {
    let result = async {
        let body = read_body(&req, payload, state.max_body_bytes).await?;
        Ok(state
            .ingest
            .accept_meta(header(&req, "x-hub-signature-256"), &body)
            .await?)
    }
    .await;
    respond(&state, "meta", result)
}

async fn personal_post(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HttpError> {
    let result = async {
        let body = read_body(&req, payload, state.max_body_bytes).await?;
        Ok(state
            .ingest
            .accept_personal(
                &path,
                header(&req, "x-webhook-hmac"),
                header(&req, "x-webhook-hmac-algorithm"),
                &body,
            )
            .await?)
    }
    .await;
    respond(&state, "personal", result)
}

async fn meta_handshake(
    query: web::Query<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let q = |k: &str| query.get(k).map(String::as_str);
    match state
        .ingest
        .handshake(q("hub.mode"), q("hub.verify_token"), q("hub.challenge"))
    {
        Some(challenge) => {
            state.ingest.metrics().inc(
                Metric::HttpRequests,
                &[("route", "meta_handshake"), ("outcome", "ok")],
            );
            HttpResponse::Ok()
                .content_type("text/plain")
                .body(challenge)
        }
        None => {
            state.ingest.metrics().inc(
                Metric::HttpRequests,
                &[("route", "meta_handshake"), ("outcome", "refused")],
            );
            HttpResponse::Forbidden()
                .content_type("text/plain")
                .body("verification failed")
        }
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.ingest.queue().ping().await {
        Ok(()) => HttpResponse::Ok().content_type("text/plain").body("ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("queue unreachable")
        }
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.ingest.metrics().render())
}

// ------------------------------------------------------------------ the send API

fn api_response(
    route: &'static str,
    state: &AppState,
    result: Result<(u16, serde_json::Value), ApiError>,
) -> HttpResponse {
    let (status, body, outcome) = match result {
        Ok((status, body)) => (status, body, "ok"),
        Err(e) => (e.status, e.body(), e.code),
    };
    state.ingest.metrics().inc(
        Metric::HttpRequests,
        &[("route", route), ("outcome", outcome)],
    );
    let mut res = HttpResponse::build(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    );
    if status == 503 {
        res.insert_header(("Retry-After", "5"));
    }
    if status == 401 {
        res.insert_header(("WWW-Authenticate", "Bearer"));
    }
    res.content_type("application/json").body(body.to_string())
}

/// The API of this state after the key check: 404 without `[api]`, 401 without a good key.
fn api_of<'a>(req: &HttpRequest, state: &'a AppState) -> Result<&'a SendApi, ApiError> {
    let api = state
        .api
        .as_ref()
        .ok_or_else(|| {
            ApiError::not_found(
                "the send API is off: no [api] table (or `serve` on the embedded queue, which has no sender: use `run`)",
            )
        })?;
    api.authorize(header(req, "authorization"))?;
    Ok(api)
}

async fn api_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    read_body(req, payload, limit).await.map_err(|e| match e {
        HttpError::TooLarge(n) => ApiError {
            status: 413,
            code: "too_large",
            message: format!("body larger than {n} bytes"),
            extra: Vec::new(),
        },
        other => ApiError {
            status: 400,
            code: "invalid_request",
            message: other.to_string(),
            extra: Vec::new(),
        },
    })
}

async fn api_send(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let api = api_of(&req, &state)?;
        let body = api_body(&req, payload, state.max_body_bytes).await?;
        let key = match req.headers().get("idempotency-key") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| ApiError {
                status: 400,
                code: "invalid_request",
                message: "Idempotency-Key: 1 to 255 printable characters".into(),
                extra: vec![("field", serde_json::json!("Idempotency-Key"))],
            })?),
        };
        let accepted = api
            .send_body(&path, &body, key, crate::ingest::now_ms())
            .await?;
        Ok((
            202,
            serde_json::json!({"id": accepted.id, "status": accepted.status}),
        ))
    }
    .await;
    api_response("api_messages", &state, result)
}

async fn api_broadcast_create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let api = api_of(&req, &state)?;
        // A broadcast's list may be far larger than one webhook: 64 MiB at most.
        let limit = state.max_body_bytes.max(64 * 1024 * 1024);
        let body = api_body(&req, payload, limit).await?;
        let ndjson = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.starts_with("application/x-ndjson") || t.starts_with("application/ndjson")
            });
        let answer = api
            .create_broadcast(&path, &body, ndjson, crate::ingest::now_ms())
            .await?;
        Ok((202, answer))
    }
    .await;
    api_response("api_broadcasts", &state, result)
}

/// The `/v1` reads and actions on one message or broadcast: `…/{channel}/…/{id}[/cancel]`.
#[derive(Clone, Copy)]
enum ById {
    Message,
    Broadcast,
    CancelBroadcast,
}

async fn api_by_id(
    what: ById,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (route, result) = (
        match what {
            ById::Message => "api_message",
            ById::Broadcast => "api_broadcast",
            ById::CancelBroadcast => "api_broadcast_cancel",
        },
        async {
            let api = api_of(&req, &state)?;
            let (channel, id) = path.into_inner();
            let body = match what {
                ById::Message => api.message(&channel, &id).await?,
                ById::Broadcast => api.broadcast(&channel, &id).await?,
                ById::CancelBroadcast => api.cancel_broadcast(&channel, &id).await?,
            };
            Ok((200, body))
        }
        .await,
    );
    api_response(route, &state, result)
}

async fn api_message(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    api_by_id(ById::Message, req, path, state).await
}

async fn api_broadcast(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    api_by_id(ById::Broadcast, req, path, state).await
}

async fn api_broadcast_cancel(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    api_by_id(ById::CancelBroadcast, req, path, state).await
}

/// `POST /v1/channels/{channel}/media`: the file is the body, its type `Content-Type`, an
/// optional `?filename=`.
async fn api_media_upload(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let result = async {
        let api = api_of(&req, &state)?;
        let body = api_body(&req, payload, crate::api::media::MAX_UPLOAD_BYTES).await?;
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        api.upload_media(
            &path,
            body.freeze(),
            content_type,
            query.get("filename").map(String::as_str),
        )
        .await
    }
    .await;
    api_response("api_media_upload", &state, result)
}

/// `GET /v1/channels/{channel}/media/{id}`: the file streamed through, with its type and
/// length; never more than `[media] max_download_bytes` is read.
async fn api_media_download(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let opened = async {
        let api = api_of(&req, &state)?;
        let (channel, id) = path.into_inner();
        api.open_media(&channel, &id).await
    }
    .await;
    let download = match opened {
        Ok(d) => d,
        Err(e) => return api_response("api_media", &state, Err(e)),
    };
    state.ingest.metrics().inc(
        Metric::HttpRequests,
        &[("route", "api_media"), ("outcome", "ok")],
    );
    let mut res = HttpResponse::Ok();
    res.content_type(download.mime_type().to_string());
    if let Some(name) = download.filename() {
        let safe: String = name
            .chars()
            .filter(|c| !c.is_control() && *c != '"')
            .collect();
        res.insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{safe}\""),
        ));
    }
    if let Some(len) = download.content_length() {
        res.no_chunking(len);
    }
    let body = futures_util::stream::unfold(Some(download), |download| async move {
        let mut d = download?;
        match d.chunk().await {
            Ok(Some(piece)) => Some((Ok(piece), Some(d))),
            Ok(None) => None,
            Err(e) => {
                // The status line is gone: cutting the body short is all that is left to say.
                tracing::warn!(error = %e, "media download cut short");
                Some((Err(actix_web::error::ErrorBadGateway(e.to_string())), None))
            }
        }
    });
    res.streaming(body)
}

/// Any other `/v1` path: JSON 404 (or 401 first, so paths are not probed without a key).
async fn api_unknown(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let result = api_of(&req, &state).and_then(|_| {
        Err(ApiError::not_found(format!(
            "no route {} {}",
            req.method(),
            req.path()
        )))
    });
    api_response("api_unknown", &state, result)
}

/// The routes, for `App::configure`; the handlers read `web::Data<AppState>`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Webhooks first: the router tries routes in order, and every `/v1` route before a match
    // costs a regex run (5 % of ingress CPU when they came first).
    cfg.route("/webhooks/meta", web::post().to(meta_post))
        .route("/webhooks/meta", web::get().to(meta_handshake))
        .route(
            "/webhooks/personal/{channel}",
            web::post().to(personal_post),
        )
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
    cfg.route("/v1/channels/{channel}/messages", web::post().to(api_send))
        .route(
            "/v1/channels/{channel}/messages/{id}",
            web::get().to(api_message),
        )
        .route(
            "/v1/channels/{channel}/broadcasts",
            web::post().to(api_broadcast_create),
        )
        .route(
            "/v1/channels/{channel}/broadcasts/{id}",
            web::get().to(api_broadcast),
        )
        .route(
            "/v1/channels/{channel}/broadcasts/{id}/cancel",
            web::post().to(api_broadcast_cancel),
        )
        .route(
            "/v1/channels/{channel}/media",
            web::post().to(api_media_upload),
        )
        .route(
            "/v1/channels/{channel}/media/{id}",
            web::get().to(api_media_download),
        )
        .route("/v1/{tail:.*}", web::route().to(api_unknown));
}

/// Builds the state of one HTTP worker thread. Called once per worker, on that worker's own
/// runtime, so a Redis connection made here is driven by the same thread that serves the
/// requests (no hop to another thread per request).
pub type StateFactory =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<AppState, String>>>> + Send + Sync>;

/// A factory that hands every worker the same state (the in-memory queue, tests).
pub fn shared_state(state: AppState) -> StateFactory {
    Arc::new(move || {
        let state = state.clone();
        Box::pin(async move { Ok(state) })
    })
}

/// Serves on an already bound listener (tests bind port 0) until the server is stopped.
pub fn server(
    state: AppState,
    listener: std::net::TcpListener,
    workers: Option<usize>,
) -> std::io::Result<actix_web::dev::Server> {
    server_with(shared_state(state), listener, workers)
}

/// Like [`server`], with state built per HTTP worker by `factory`.
pub fn server_with(
    factory: StateFactory,
    listener: std::net::TcpListener,
    workers: Option<usize>,
) -> std::io::Result<actix_web::dev::Server> {
    let mut server = HttpServer::new(move || {
        let factory = factory.clone();
        App::new().data_factory(move || factory()).configure(routes)
    })
    .backlog(4096)
    .max_connection_rate(1024)
    .shutdown_timeout(10)
    .listen(listener)?;
    if let Some(n) = workers {
        server = server.workers(n);
    }
    Ok(server.run())
}

/// A worker process's own small HTTP endpoint (`[worker] metrics_listen`): `GET /metrics`
/// (Prometheus text) and `GET /healthz`. Runs on a thread of its own with its own actix
/// runtime, beside the worker's tokio runtime.
pub fn spawn_metrics_endpoint(
    metrics: crate::metrics::Metrics,
    listener: std::net::TcpListener,
) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let metrics = metrics.clone();
                    App::new()
                        .route(
                            "/metrics",
                            web::get().to(move || {
                                let text = metrics.render();
                                async move {
                                    HttpResponse::Ok()
                                        .content_type("text/plain; version=0.0.4")
                                        .body(text)
                                }
                            }),
                        )
                        .route("/healthz", web::get().to(healthz))
                })
                .workers(1)
                .disable_signals()
                .listen(listener);
                match server {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = server.run().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("metrics endpoint thread ended")))
}
