//! The `coexist` command line: one small function per command, nothing else.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use coexist::config::Config;
use coexist::outbound::OutQueueBackend;
use coexist::queue::QueueBackend;
use coexist::verify::{self, Algorithm};
use coexist::wire::{self, ParseError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "coexist",
    version,
    about = "WhatsApp Business API and WhatsApp Personal channels side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks: verify, parse, enqueue (the ingress).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Handle events: hold partition leases, keep conversations and windows, run the bot.
    Work {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ingress, worker and sender in one process (the embedded in-memory queue without [redis]).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Per channel and partition: stream length, pending, lag, dead letters, lease owner, timers.
    Queues {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list them, or put them back on their partition stream.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Send one message on a channel, through the send API's code path: checked against the
    /// customer's window, queued in their lane; prints {"id", "status"}.
    Send {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        /// The recipient: wa_id, business-scoped user id, or WAHA chat id.
        #[arg(long)]
        to: String,
        /// A free-form text.
        #[arg(
            long,
            conflicts_with = "template",
            required_unless_present = "template"
        )]
        text: Option<String>,
        /// An approved template's name (WABA only).
        #[arg(long)]
        template: Option<String>,
        /// The template's language code.
        #[arg(long, default_value = "en_US", requires = "template")]
        language: String,
        /// Template parameters: a JSON array of strings (the body's {{1}}, {{2}}, …) or of
        /// component objects as Meta takes them.
        #[arg(long, requires = "template")]
        params: Option<String>,
        /// Sends once per key, also when the command is run again.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Broadcasts: create one from a JSON or NDJSON file, follow it, cancel it (the send API's
    /// code path).
    Broadcast {
        #[command(subcommand)]
        action: BroadcastAction,
    },
    /// Outbound messages and their lifecycle (queued, sending, sent, delivered, read, failed).
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Print one normalized event per line for a webhook body (file or stdin).
    Parse {
        file: Option<PathBuf>,
        /// Route events to configured channels; without it the channel is the payload's own
        /// phone_number_id or WAHA session.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the signature header value for the exact bytes of a body (file or stdin).
    Sign {
        #[arg(long, env = "COEXIST_SIGN_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, value_enum, default_value_t = Algo::Sha256)]
        algo: Algo,
        file: Option<PathBuf>,
    },
    /// Sign and POST webhook files to a URL; prints each response code.
    Replay {
        #[arg(long)]
        url: String,
        #[arg(long, env = "COEXIST_SIGN_SECRET", hide_env_values = true)]
        secret: String,
        /// sha256 (Meta, X-Hub-Signature-256) or sha512 (WAHA, X-Webhook-Hmac). Default: sha512
        /// when the URL is a /webhooks/personal/ route, else sha256.
        #[arg(long, value_enum)]
        algo: Option<Algo>,
        /// Rewrite every Unix-seconds `timestamp` in the files to now before signing, so a
        /// recorded message opens a service window (recorded fixtures are months old).
        #[arg(long)]
        fresh: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show the oldest dead letters of a channel.
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue dead letters (all of the channel's, or the given ids) at the tail of their partition.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        /// Dead-letter ids (from `dlq list`); none = every dead letter of the channel.
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BroadcastAction {
    /// Creates a broadcast from FILE (`.ndjson`: a first line with name and message, then one
    /// recipient per line; else the JSON body of the API) and prints its id.
    Create {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        /// The list (also `--file FILE`).
        #[arg(required_unless_present = "file_flag")]
        file: Option<PathBuf>,
        #[arg(long = "file", id = "file_flag", conflicts_with = "file")]
        file_flag: Option<PathBuf>,
    },
    /// Counts and state of a broadcast; on a terminal, a progress bar (`--watch`: until done).
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        /// The broadcast id (also `--id ID`).
        #[arg(required_unless_present = "id_flag")]
        id: Option<String>,
        #[arg(long = "id", id = "id_flag", conflicts_with = "id")]
        id_flag: Option<String>,
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stops a broadcast: nothing more is sent.
    Cancel {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        /// The broadcast id (also `--id ID`).
        #[arg(required_unless_present = "id_flag")]
        id: Option<String>,
        #[arg(long = "id", id = "id_flag", conflicts_with = "id")]
        id_flag: Option<String>,
    },
}

#[derive(Subcommand)]
enum OutboxAction {
    /// The newest messages of a channel, newest first, with their status and error.
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        channel: String,
        /// Only messages at this status: queued, sending, sent, delivered, read, failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Algo {
    Sha256,
    Sha512,
}

impl From<Algo> for Algorithm {
    fn from(a: Algo) -> Self {
        match a {
            Algo::Sha256 => Algorithm::Sha256,
            Algo::Sha512 => Algorithm::Sha512,
        }
    }
}

fn main() -> ExitCode {
    coexist::runtime::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Work { config } => work(&config),
        Command::Run { config } => run_all(&config),
        Command::Queues { config, json } => queues(&config, json),
        Command::Dlq { action } => dlq(action),
        Command::Outbox { action } => outbox(action),
        Command::Broadcast { action } => broadcast(action),
        Command::Send {
            config,
            channel,
            to,
            text,
            template,
            language,
            params,
            idempotency_key,
        } => send(
            &config,
            &channel,
            SendWhat {
                to,
                text,
                template,
                language,
                params,
            },
            idempotency_key.as_deref(),
        ),
        Command::Parse { file, config } => parse(file.as_deref(), config.as_deref()),
        Command::Sign { secret, algo, file } => sign(&secret, algo.into(), file.as_deref()),
        Command::Replay {
            url,
            secret,
            algo,
            fresh,
            files,
        } => replay(&url, &secret, algo, fresh, &files),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coexist: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn read_input(file: Option<&Path>) -> Result<Vec<u8>> {
    match file {
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            Ok(buf)
        }
    }
}

fn serve(config_path: &Path) -> Result<ExitCode> {
    let config = std::sync::Arc::new(load_config(config_path)?);
    actix_web::rt::System::new().block_on(async move {
        let metrics = coexist::metrics::Metrics::new();
        // Connect once up front so a wrong URL or a Redis that is down fails at start-up.
        let backend = coexist::runtime::connect(&config).await?;
        let listener = std::net::TcpListener::bind(&config.server.listen)
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        tracing::info!(listen = %config.server.listen, channels = config.channels.len(), "ingress listening");
        let workers = Some(config.server.http_workers(config.redis.as_ref()));
        let factory: coexist::ingress::StateFactory = if backend.is_embedded() {
            coexist::ingress::shared_state(coexist::ingress::AppState {
                ingest: coexist::runtime::ingest(&config, &backend, metrics),
                max_body_bytes: config.server.max_body_bytes,
                // No sender runs in a `serve` on the embedded queue: the API lives in `run`.
                api: None,
            })
        } else {
            // One Redis connection per HTTP worker, made on the worker's own thread.
            std::sync::Arc::new(move || {
                let (config, metrics) = (config.clone(), metrics.clone());
                Box::pin(async move {
                    let backend = coexist::runtime::connect(&config).await.map_err(|e| format!("{e:#}"))?;
                    Ok(coexist::ingress::AppState {
                        api: coexist::runtime::send_api(&config, &backend),
                        ingest: coexist::runtime::ingest(&config, &backend, metrics),
                        max_body_bytes: config.server.max_body_bytes,
                    })
                })
            })
        };
        coexist::ingress::server_with(factory, listener, workers)?.await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn work(config_path: &Path) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    if config.redis.is_none() {
        bail!("`work` shares its queue with other processes through Redis: add a [redis] table to {}, or use `coexist run` for the embedded in-memory queue", config_path.display());
    }
    coexist::runtime::work(&config)?;
    Ok(ExitCode::SUCCESS)
}

fn run_all(config_path: &Path) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    coexist::runtime::run(&config)?;
    Ok(ExitCode::SUCCESS)
}

/// Operator commands read the shared Redis; the embedded queue lives inside a `run` process.
fn require_redis(config: &Config, path: &Path, command: &str) -> Result<()> {
    if config.redis.is_none() {
        bail!("`{command}` reads the queue in Redis, but {} has no [redis] table: the embedded in-memory queue lives inside the `coexist run` process (see its /metrics)", path.display());
    }
    Ok(())
}

fn queues(config_path: &Path, json: bool) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    require_redis(&config, config_path, "queues")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let backend = coexist::runtime::connect(&config).await?;
        let report =
            coexist::ops::queues_report(&config, &backend, coexist::clock::now_ms()).await?;
        if json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.render());
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// What `coexist send` was asked to send.
struct SendWhat {
    to: String,
    text: Option<String>,
    template: Option<String>,
    language: String,
    params: Option<String>,
}

impl SendWhat {
    /// The request body the API would get for these flags.
    fn body(&self) -> Result<serde_json::Value> {
        use serde_json::json;
        match (&self.text, &self.template) {
            (Some(text), _) => Ok(json!({"to": self.to, "type": "text", "text": text})),
            (None, Some(name)) => {
                let components = match &self.params {
                    None => json!([]),
                    Some(p) => {
                        let v: serde_json::Value =
                            serde_json::from_str(p).context("--params: expected a JSON array")?;
                        match v.as_array() {
                            Some(a) if a.iter().all(|x| x.is_string()) => json!([{
                                "type": "body",
                                "parameters": a.iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>(),
                            }]),
                            Some(a) if a.iter().all(|x| x.is_object()) => v.clone(),
                            _ => {
                                bail!("--params: a JSON array of strings, or of component objects")
                            }
                        }
                    }
                };
                Ok(json!({"to": self.to, "type": "template", "name": name,
                          "language": self.language, "components": components}))
            }
            (None, None) => bail!("--text or --template"),
        }
    }
}

fn send(
    config_path: &Path,
    channel: &str,
    what: SendWhat,
    idempotency_key: Option<&str>,
) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let body = what.body()?.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let api = cli_api(&config, config_path, "send").await?;
        match api
            .send_body(
                channel,
                body.as_bytes(),
                idempotency_key,
                coexist::ingest::now_ms(),
            )
            .await
        {
            Ok(accepted) => {
                println!(
                    "{}",
                    serde_json::json!({"id": accepted.id, "status": accepted.status})
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("{}", e.body());
                eprintln!("coexist: not sent: {e}");
                Ok(ExitCode::from(if e.status == 503 { 1 } else { 2 }))
            }
        }
    })
}

/// The send API of a config (Redis only: the embedded queue lives inside `run`).
async fn cli_api(config: &Config, path: &Path, what: &str) -> Result<coexist::api::SendApi> {
    require_redis(config, path, what)?;
    let backend = coexist::runtime::connect(config).await?;
    coexist::runtime::send_api_of(config, &backend).context("no outbound queue")
}

fn broadcast(action: BroadcastAction) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let answer = match action {
            BroadcastAction::Create {
                config: path,
                channel,
                file,
                file_flag,
            } => {
                let file = file
                    .or(file_flag)
                    .context("the list: FILE or --file FILE")?;
                let config = load_config(&path)?;
                let body = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let ndjson = file
                    .extension()
                    .is_some_and(|e| e == "ndjson" || e == "jsonl");
                let api = cli_api(&config, &path, "broadcast create").await?;
                api.create_broadcast(&channel, &body, ndjson, coexist::ingest::now_ms())
                    .await
            }
            BroadcastAction::Status {
                config: path,
                channel,
                id,
                id_flag,
                watch,
                json,
            } => {
                let id = id.or(id_flag).context("the broadcast: ID or --id ID")?;
                let config = load_config(&path)?;
                let api = cli_api(&config, &path, "broadcast status").await?;
                return broadcast_status(&api, &channel, &id, watch, json).await;
            }
            BroadcastAction::Cancel {
                config: path,
                channel,
                id,
                id_flag,
            } => {
                let id = id.or(id_flag).context("the broadcast: ID or --id ID")?;
                let config = load_config(&path)?;
                let api = cli_api(&config, &path, "broadcast cancel").await?;
                api.cancel_broadcast(&channel, &id).await
            }
        };
        match answer {
            Ok(v) => {
                println!("{v}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("{}", e.body());
                eprintln!("coexist: {e}");
                Ok(ExitCode::from(if e.status == 503 { 1 } else { 2 }))
            }
        }
    })
}

/// Prints a broadcast's counts: JSON, or on a terminal a progress bar (redrawn with `--watch`
/// until the broadcast is done or cancelled).
async fn broadcast_status(
    api: &coexist::api::SendApi,
    channel: &str,
    id: &str,
    watch: bool,
    json: bool,
) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal() && !json;
    loop {
        let v = match api.broadcast(channel, id).await {
            Ok(v) => v,
            Err(e) => {
                println!("{}", e.body());
                return Ok(ExitCode::from(2));
            }
        };
        let state = v["state"].as_str().unwrap_or("").to_string();
        if terminal {
            print!("\r{}", progress_line(&v));
            std::io::stdout().flush()?;
        } else {
            println!("{v}");
        }
        if !watch || state != "running" {
            if terminal {
                println!();
            }
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `[#########-----------]  45%  4500/10000  sent 4400 delivered 80 read 20 failed 0 skipped 0  running`
fn progress_line(v: &serde_json::Value) -> String {
    let total = v["total"].as_u64().unwrap_or(0);
    let c = &v["counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let done = total.saturating_sub(n("queued"));
    let width = 30u64;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!(
        "[{}{}] {:>3}%  {done}/{total}  sent {} delivered {} read {} failed {} skipped {}  {}",
        "#".repeat(filled as usize),
        "-".repeat((width - filled) as usize),
        (done * 100).checked_div(total).unwrap_or(100),
        n("sent"),
        n("delivered"),
        n("read"),
        n("failed"),
        n("skipped"),
        v["state"].as_str().unwrap_or("")
    )
}

fn outbox(action: OutboxAction) -> Result<ExitCode> {
    let OutboxAction::List {
        config: config_path,
        channel,
        status,
        count,
        json,
    } = action;
    let config = load_config(&config_path)?;
    require_redis(&config, &config_path, "outbox list")?;
    if config.channel(&channel).is_none() {
        bail!("no channel {channel:?} in the config");
    }
    let status = match status.as_deref() {
        None => None,
        Some(s) => Some(coexist::outbound::MessageStatus::parse(s).with_context(|| {
            format!("unknown status {s:?}: queued, sending, sent, delivered, read or failed")
        })?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let backend = coexist::runtime::connect(&config).await?;
        let out = coexist::runtime::out_queue(&config, &backend).context("no outbound queue")?;
        let records = out
            .list(&channel, status, count, coexist::ingest::now_ms())
            .await?;
        if json {
            println!("{}", serde_json::to_string(&records)?);
        } else {
            for r in &records {
                println!(
                    "{:<40} {:<10} {:<22} {:<12} {}",
                    r.id,
                    r.status.as_str(),
                    r.to,
                    r.kind,
                    match (&r.error_code, &r.error) {
                        (Some(code), Some(e)) => format!("{code}: {e}"),
                        _ => r.wamid.clone().unwrap_or_default(),
                    }
                );
            }
            eprintln!("{} message(s) on {channel}", records.len());
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn dlq(action: DlqAction) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match action {
            DlqAction::List {
                config,
                channel,
                count,
                json,
            } => {
                let config = load_config(&config)?;
                if config.channel(&channel).is_none() {
                    bail!("no channel {channel:?} in the config");
                }
                let backend = coexist::runtime::connect(&config).await?;
                let queue = backend.queue();
                let dead = queue.dead_letters(&channel, count).await?;
                if json {
                    println!("{}", serde_json::to_string(&dead)?);
                } else {
                    print!("{}", coexist::ops::render_dead_letters(&dead));
                    eprintln!("{} dead letter(s) on {channel}", dead.len());
                }
            }
            DlqAction::Replay {
                config,
                channel,
                ids,
            } => {
                let config = load_config(&config)?;
                if config.channel(&channel).is_none() {
                    bail!("no channel {channel:?} in the config");
                }
                let backend = coexist::runtime::connect(&config).await?;
                let queue = backend.queue();
                let all = ids.is_empty();
                let mut pending = ids;
                let mut replayed = 0;
                loop {
                    if all {
                        // Each round takes the oldest page; replayed letters leave the stream.
                        pending = queue
                            .dead_letters(&channel, 1000)
                            .await?
                            .into_iter()
                            .map(|d| d.id)
                            .collect();
                    }
                    if pending.is_empty() {
                        break;
                    }
                    for id in pending.drain(..) {
                        match queue.replay_dead_letter(&channel, &id).await? {
                            Some(new_id) => {
                                replayed += 1;
                                println!("{id} -> {new_id}");
                            }
                            None => eprintln!("{id}: no such dead letter"),
                        }
                    }
                    if !all {
                        break;
                    }
                }
                eprintln!("{replayed} dead letter(s) replayed on {channel}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn parse(file: Option<&Path>, config: Option<&Path>) -> Result<ExitCode> {
    let body = read_input(file)?;
    let (format, mut events) = match wire::parse_any(&body) {
        Ok(parsed) => parsed,
        Err(e @ (ParseError::Json { .. } | ParseError::Shape { .. })) => {
            eprintln!(
                "coexist parse: {}: {e}",
                file.map_or("stdin".into(), |p| p.display().to_string())
            );
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(path) = config {
        let config = load_config(path)?;
        let router = coexist::routing::Router::new(&config);
        for e in events.iter_mut() {
            match format {
                wire::Format::Meta => {
                    router.route_meta(e);
                }
                wire::Format::Waha => {
                    if router.route_waha_session(e).is_none() {
                        eprintln!(
                            "coexist parse: no Personal channel in the config; {:?} stays the session name",
                            e.channel
                        );
                    }
                }
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in &events {
        writeln!(out, "{}", e.to_json())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn sign(secret: &str, algo: Algorithm, file: Option<&Path>) -> Result<ExitCode> {
    let body = read_input(file)?;
    println!("{}", verify::header_value(algo, secret.as_bytes(), &body));
    Ok(ExitCode::SUCCESS)
}

fn replay(
    url: &str,
    secret: &str,
    algo: Option<Algo>,
    fresh: bool,
    files: &[PathBuf],
) -> Result<ExitCode> {
    let algo: Algorithm = match algo {
        Some(a) => a.into(),
        None if url.contains("/webhooks/personal/") => Algorithm::Sha512,
        None => Algorithm::Sha256,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut failures = 0;
        for file in files {
            let mut body =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            if fresh {
                body = coexist::wire::refresh_timestamps(&body, coexist::ingest::now_ms() / 1000);
            }
            let signature = verify::header_value(algo, secret.as_bytes(), &body);
            let mut request = client
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            request = match algo {
                Algorithm::Sha256 => request.header("x-hub-signature-256", signature),
                Algorithm::Sha512 => request
                    .header("x-webhook-hmac", signature)
                    .header("x-webhook-hmac-algorithm", "sha512"),
            };
            match request.send().await {
                Ok(response) => {
                    let code = response.status().as_u16();
                    if code != 200 {
                        failures += 1;
                    }
                    println!("{code} {}", file.display());
                }
                Err(e) => bail!("POST {url} failed: {e}"),
            }
        }
        Ok(if failures == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        })
    })
}
