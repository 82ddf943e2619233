//! Wiring shared by the commands: build the queue, stores, bot and sender a config asks for.

use crate::backend::Backend;
use crate::bot::echo::EchoBot;
use crate::bot::forward::ForwardBot;
use crate::bot::{Bot, NoBot};
use crate::config::{defaults, BotMode, Config};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::queue::{MemoryQueue, Queue, RedisQueue};
use crate::worker::Worker;
use std::sync::Arc;
use std::time::Duration;

/// Connection attempts at start-up (0.5 s, 1 s, 1.5 s … apart: ~7.5 s in all).
const CONNECT_ATTEMPTS: u32 = 6;

/// The backend of this process, built once: Redis when `[redis]` is configured, else the
/// embedded in-memory twins. Every store comes from it.
pub async fn connect(config: &Config) -> anyhow::Result<Backend> {
    Ok(Backend::new(connect_queue(config).await?))
}

/// The queue of this process: Redis when `[redis]` is configured, else the embedded twin.
async fn connect_queue(config: &Config) -> anyhow::Result<Queue> {
    Ok(match &config.redis {
        Some(r) => {
            // A Redis that is still starting (loading its AOF after a restart) gets a few
            // seconds; a wrong URL still fails at start-up.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let keys = Keys::new(r.prefix.clone());
                match RedisQueue::connect_to(
                    &r.endpoint(),
                    keys,
                    r.dedupe_ttl_secs,
                    r.stream_maxlen,
                )
                .await
                {
                    Ok(q) => {
                        break Queue::Redis(
                            q.with_durability(r.durability, r.replication_timeout_ms),
                        )
                    }
                    Err(e) if attempt < CONNECT_ATTEMPTS => {
                        tracing::warn!(attempt, error = %e, "redis not ready; retrying");
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    }
                    Err(e) => {
                        anyhow::bail!("cannot connect to redis after {attempt} attempts: {e}")
                    }
                }
            }
        }
        None => {
            tracing::info!(
                "no [redis] table: using the embedded in-memory queue (one process, not durable)"
            );
            Queue::Memory(MemoryQueue::with_options(
                defaults::DEDUPE_TTL_SECS,
                defaults::STREAM_MAXLEN,
            ))
        }
    })
}

/// The configured bot (`[bot] mode`).
pub fn bot(config: &Config, worker_id: &str) -> Arc<dyn Bot> {
    match config.bot.mode {
        BotMode::Echo => Arc::new(EchoBot),
        BotMode::None => Arc::new(NoBot),
        BotMode::Forward => Arc::new(
            ForwardBot::new(
                config
                    .bot
                    .url
                    .clone()
                    .expect("validated: forward has a url"),
                config
                    .bot
                    .secret
                    .clone()
                    .expect("validated: forward has a secret"),
                Duration::from_millis(config.bot.timeout_ms),
                worker_id.to_string(),
            )
            .with_limits(crate::bot::forward::AnswerLimits {
                max_bytes: config.bot.max_answer_bytes,
                max_replies: config.bot.max_replies,
            }),
        ),
    }
}

/// A worker for this process on `backend` (sharing its queue and Redis connection).
pub fn worker(
    config: &Config,
    backend: &Backend,
    metrics: Metrics,
    id: String,
) -> anyhow::Result<Worker> {
    let bot = bot(config, &id);
    worker_with_bot(config, backend, metrics, id, bot)
}

/// A worker running your own bot (e.g. a [`crate::bot::Router`]) instead of `[bot] mode`.
pub fn worker_with_bot(
    config: &Config,
    backend: &Backend,
    metrics: Metrics,
    id: String,
    bot: Arc<dyn Bot>,
) -> anyhow::Result<Worker> {
    let store = backend.conversation_store(config);
    let outbound = outbound(config, backend, metrics.clone())?;
    Ok(Worker::new(
        config, backend, store, bot, outbound, metrics, id,
    ))
}

/// A watch that turns true on SIGTERM / SIGINT (call it inside a tokio runtime).
pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            tracing::error!("cannot listen for SIGTERM");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
    });
    rx
}

/// What `coexist work` does, with your bot: a worker process on the configured Redis, until
/// SIGTERM / SIGINT (then in-flight events finish and leases are released).
pub fn work_with_bot(config: &Config, bot: Arc<dyn Bot>) -> anyhow::Result<()> {
    work_as(config, crate::worker::worker_id(), bot)
}

/// `coexist work`: a worker process running the bot `[bot] mode` names.
pub fn work(config: &Config) -> anyhow::Result<()> {
    let id = crate::worker::worker_id();
    let bot = bot(config, &id);
    work_as(config, id, bot)
}

fn work_as(config: &Config, id: String, bot: Arc<dyn Bot>) -> anyhow::Result<()> {
    if config.redis.is_none() {
        anyhow::bail!("a worker shares its queue with other processes through Redis: add a [redis] table, or run ingress and worker together (`run_with_bot`)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    if let Some(addr) = &config.worker.metrics_listen {
        use anyhow::Context as _;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} (worker.metrics_listen)"))?;
        crate::ingress::spawn_metrics_endpoint(metrics.clone(), listener)?;
        tracing::info!(listen = %addr, "worker metrics at /metrics");
    }
    runtime.block_on(async move {
        let backend = connect(config).await?;
        let worker = worker_with_bot(config, &backend, metrics, id, bot)?;
        worker.run(shutdown_signal()).await?;
        Ok(())
    })
}

/// What `coexist run` does, with your bot: ingress, worker and sender in one process (on the
/// embedded in-memory queue without `[redis]`), until SIGTERM / SIGINT.
pub fn run_with_bot(config: &Config, bot: Arc<dyn Bot>) -> anyhow::Result<()> {
    run_as(config, crate::worker::worker_id(), bot)
}

/// `coexist run`: ingress, worker and sender in one process with the bot `[bot] mode` names.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let id = crate::worker::worker_id();
    let bot = bot(config, &id);
    run_as(config, id, bot)
}

fn run_as(config: &Config, id: String, bot: Arc<dyn Bot>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let system = actix_web::rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    system.block_on(async move {
        let metrics = Metrics::new();
        let backend = connect(config).await?;
        let worker = worker_with_bot(config, &backend, metrics.clone(), id, bot)?;
        // Statuses of our own sends go into the worker's outbox as they arrive.
        let outbox = worker.outbox();
        // The send API queues into the worker's own outbound queue and wakes its sender.
        let api = worker.send_api(config);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let worker_task = tokio::spawn(worker.run(stopped));
        let ingest = crate::ingest::Ingest::new(config, backend.queue().clone(), metrics)
            .with_outbox(outbox);
        let listener = std::net::TcpListener::bind(&config.server.listen)
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        tracing::info!(listen = %config.server.listen, channels = config.channels.len(), "coexist running (ingress + worker + sender)");
        let state = crate::ingress::AppState { ingest, max_body_bytes: config.server.max_body_bytes, api };
        // The HTTP server stops on SIGTERM / SIGINT; then the worker finishes in-flight events.
        let served = crate::ingress::server(state, listener, Some(config.server.http_workers(config.redis.as_ref())))?.await;
        let _ = stop.send(true);
        worker_task.await??;
        served?;
        Ok(())
    })
}

/// The sender on `backend`: outbox and rate limits in the same Redis, or in memory.
pub fn outbound(config: &Config, backend: &Backend, metrics: Metrics) -> anyhow::Result<Outbound> {
    Outbound::new(config, backend, metrics)
        .map_err(|e| anyhow::anyhow!("cannot set up the sender: {e}"))
}

/// The outbound queue in the Redis of `backend`, for operator commands (`None` in the
/// embedded mode: it lives inside the `run` process).
pub fn out_queue(config: &Config, backend: &Backend) -> Option<crate::outbound::OutQueue> {
    backend.shared_out_queue(crate::outbound::OutQueueOptions::from_config(
        &config.sending,
    ))
}

/// The send API over the Redis of `backend` (`None` without `[api]`, or in the embedded
/// mode: a `serve` process has no sender of its own; `run` builds its API from its worker).
pub fn send_api(config: &Config, backend: &Backend) -> Option<crate::api::SendApi> {
    config.api.as_ref()?;
    send_api_of(config, backend)
}

/// The send API over the Redis of `backend` whatever `[api]` says (the CLI's `send`);
/// `None` in the embedded mode.
pub fn send_api_of(config: &Config, backend: &Backend) -> Option<crate::api::SendApi> {
    let out = out_queue(config, backend)?;
    let api = crate::api::SendApi::new(
        config,
        backend.queue().clone(),
        backend.conversation_store(config),
        out,
    );
    match crate::media::MediaHub::new(config, backend) {
        Ok(media) => Some(api.with_media(media)),
        Err(e) => {
            tracing::error!(error = %e, "media client not built: the media routes answer 404");
            Some(api)
        }
    }
}

/// The ingress pipeline on `backend`, recording statuses of our own sends in the workers'
/// outbox (a `serve` process next to workers; nothing to record in the embedded mode).
pub fn ingest(config: &Config, backend: &Backend, metrics: Metrics) -> crate::ingest::Ingest {
    let ingest = crate::ingest::Ingest::new(config, backend.queue().clone(), metrics);
    match backend.shared_outbox() {
        Some(outbox) => ingest.with_outbox(outbox),
        None => ingest,
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); colours only on a terminal.
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// What a bot program does with a config: with `[redis]` it is a worker process (ingress is
/// `coexist serve`), without it ingress, worker and sender run together in this process.
pub fn run_bot(config: &Config, bot: Arc<dyn Bot>) -> anyhow::Result<()> {
    if config.redis.is_some() {
        work_with_bot(config, bot)
    } else {
        run_with_bot(config, bot)
    }
}
