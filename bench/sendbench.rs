//! `coexist-sendbench`: a benchmark of the outbound sender (`coexist work`'s lane sender)
//! against an in-process fake Graph API.
//!
//! Two scenarios, each against a Redis the caller started (fresh, see `bench/sender.sh`) and real
//! `coexist work` processes this tool spawns and kills:
//!
//! - `throughput`: channel limits off (`send_rate_per_second = 0`, `pair_gap_ms = 0`), no bot.
//!   N template messages over C customers are pushed straight into the outbound queue
//!   (`OutQueue::push`, the path of messages with no inbound event), so only the sender is
//!   measured: no webhook, no handler, no commit. Then K work processes start; the figure is
//!   distinct messages / time between the first and the last request the fake received. Every
//!   message id (`biz_opaque_callback_data`) must arrive exactly once, and in push order per
//!   customer.
//! - `isolation`: the default WABA limits (80/s channel rate, 6 s pair gap with a burst of 10),
//!   the echo bot, one work process. One customer sends 40 messages at once, then 200 other
//!   customers one each (normalized events enqueued straight into the partition streams, with
//!   `received_at` = now). For the 200: latency from their enqueue to the fake's arrival of their
//!   reply. For the chatty one: when its replies arrived.
//!
//! The fake Graph API is a minimal HTTP/1.1 server on loopback (keep-alive, Content-Length
//! bodies): it records the arrival time and `biz_opaque_callback_data` of every request and
//! answers 200 with a unique wamid in Meta's shape at once.
//!
//! One JSON object on stdout, the human report on stderr. See bench/README.md.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use coexist::event::Event;
use coexist::keys::Keys;
use coexist::outbound::queue::QueuedMessage;
use coexist::outbound::{OutQueue, OutQueueBackend, OutgoingMessage, Reply};
use coexist::queue::QueueBackend;
use coexist::queue::{NewEvent, Queue, RedisQueue};
use coexist::Config;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const CHANNEL: &str = "shop";
const PHONE_NUMBER_ID: &str = "106540352242922";
const TOKEN_VAR: &str = "SENDBENCH_GRAPH_TOKEN";
const SECRET_VAR: &str = "SENDBENCH_APP_SECRET";
const TOKEN: &str = "sendbench-token";
const APP_SECRET: &str = "sendbench-app-secret";

#[derive(Parser, Debug)]
#[command(
    name = "coexist-sendbench",
    about = "Outbound sender benchmark: real `coexist work` processes against a fake Graph API"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Limits off, N messages pushed straight into the outbound queue, K work processes drain it.
    Throughput(ThroughputArgs),
    /// Default limits, echo bot: one chatty customer (40 messages) then 200 others (1 each).
    Isolation(IsolationArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The (fresh, empty) Redis the work processes and this tool use.
    #[arg(long)]
    redis_url: String,
    /// PID of redis-server, to report its CPU time.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// The `coexist` binary to run as `coexist work`.
    #[arg(long, default_value = "target/release/coexist")]
    bin: PathBuf,
    /// Where the config and the work processes' logs are written.
    #[arg(long, default_value = "target/bench/sendbench")]
    dir: PathBuf,
    /// Appends the PID of every process started here, one per line (for the caller's trap).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// `[redis] prefix`.
    #[arg(long, default_value = "cx")]
    prefix: String,
    /// Partitions of the channel.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// `[sending] lanes` (lanes per process); the product's default when not given.
    #[arg(long)]
    lanes: Option<usize>,
    /// Work processes.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// RUST_LOG of the work processes.
    #[arg(long, default_value = "warn")]
    worker_log: String,
    /// Name of the run in the reports.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    /// Messages pushed into the outbound queue.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Distinct customers (lanes) they are spread over.
    #[arg(long, default_value_t = 5_000)]
    customers: usize,
    /// Concurrent pushes while filling the queue.
    #[arg(long, default_value_t = 64)]
    push_concurrency: usize,
    /// Give up waiting after this many seconds from the start of the work processes.
    #[arg(long, default_value_t = 90.0)]
    timeout: f64,
    /// Stop waiting when no request arrived for this long while messages are missing.
    #[arg(long, default_value_t = 20.0)]
    stall: f64,
    /// After the last expected message, keep listening this long for duplicates.
    #[arg(long, default_value_t = 1.0)]
    linger: f64,
}

#[derive(Args, Debug, Clone)]
struct IsolationArgs {
    #[command(flatten)]
    common: Common,
    /// Messages the chatty customer sends at once.
    #[arg(long, default_value_t = 40)]
    chatty: usize,
    /// Other customers, one message each, enqueued right after the chatty ones.
    #[arg(long, default_value_t = 200)]
    others: usize,
    /// Give up waiting for the others' replies after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// After the others' last reply, keep watching the chatty customer's replies this long
    /// (0: stop at once; 13 s shows two replies after the burst at a 6 s pair gap).
    #[arg(long, default_value_t = 13.0)]
    chatty_watch: f64,
    /// Extra keys of the channel table (default: none, i.e. the product's default limits).
    #[arg(long, default_value = "")]
    channel_extra: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = runtime.block_on(async move {
        let run = async {
            match cli.scenario {
                Scenario::Throughput(a) => throughput(a).await,
                Scenario::Isolation(a) => isolation(a).await,
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // On a signal the run is dropped, and with it the work processes (killed on drop).
        tokio::select! {
            r = run => r.map(|()| 0),
            _ = tokio::signal::ctrl_c() => Ok(130),
            _ = term.recv() => Ok(143),
        }
    })?;
    if code != 0 {
        // The shell's convention for "killed by SIGINT/SIGTERM", so `sender.sh` stops too.
        eprintln!("coexist-sendbench: interrupted; the work processes were killed");
        std::process::exit(code);
    }
    Ok(())
}

// ---------------------------------------------------------------- fake Graph API

/// One request the fake received.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    /// `biz_opaque_callback_data`: the message id (outbox key).
    key: String,
}

#[derive(Default)]
struct Fake {
    hits: Mutex<Vec<Hit>>,
    count: AtomicU64,
    /// Requests that were not a POST to `/{phone_number_id}/messages` with a key.
    unexpected: AtomicU64,
    /// Requests without the bearer token.
    unauthorized: AtomicU64,
    connections: AtomicU64,
    seq: AtomicU64,
}

impl Fake {
    async fn start() -> Result<(Arc<Fake>, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v23.0", listener.local_addr()?);
        let fake = Arc::new(Fake::default());
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                f.connections.fetch_add(1, Ordering::Relaxed);
                let f = f.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, f).await;
                });
            }
        });
        Ok((fake, url))
    }

    fn snapshot(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Handles one request; returns the status line and body of the answer.
    fn handle(&self, head: &str, body: &[u8], at: Instant) -> (&'static str, String) {
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let authorized = lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {TOKEN}")
            })
        });
        if !authorized {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        let expected_path = format!("/v23.0/{PHONE_NUMBER_ID}/messages");
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let key = parsed
            .as_ref()
            .and_then(|v| v.get("biz_opaque_callback_data"))
            .and_then(Value::as_str);
        let (Some(v), Some(key), true) = (&parsed, key, method == "POST" && path == expected_path)
        else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return (
                "400 Bad Request",
                r#"{"error":{"message":"sendbench fake: unexpected request","code":100}}"#.into(),
            );
        };
        let to = v
            .get("to")
            .or_else(|| v.get("recipient"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let answer = format!(
            r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"{to}","wa_id":"{}"}}],"messages":[{{"id":"wamid.HBgLU0VOREJFTkNI{seq:016X}"}}]}}"#,
            to.trim_start_matches('+')
        );
        self.hits.lock().unwrap().push(Hit {
            at,
            key: key.to_string(),
        });
        self.count.fetch_add(1, Ordering::Relaxed);
        ("200 OK", answer)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Keep-alive HTTP/1.1 with Content-Length bodies (what reqwest sends for a JSON body).
async fn serve_connection(mut sock: TcpStream, fake: Arc<Fake>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let header_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            buf.reserve(16 * 1024);
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let mut length = 0usize;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        if chunked {
            // Not what reqwest sends for `.json()`; answer and close rather than misparse.
            fake.unexpected.fetch_add(1, Ordering::Relaxed);
            sock.write_all(
                b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
        while buf.len() < header_end + length {
            buf.reserve(header_end + length - buf.len());
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let at = Instant::now();
        let (status, body) = fake.handle(&head, &buf[header_end..header_end + length], at);
        out.clear();
        write!(
            &mut StrBuf(&mut out),
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("writing to a Vec");
        sock.write_all(&out).await?;
        buf.drain(..header_end + length);
    }
}

/// `fmt::Write` into a byte vector.
struct StrBuf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// ---------------------------------------------------------------- deployment

fn config_text(c: &Common, graph_url: &str, bot: &str, channel_extra: &str) -> String {
    let lanes = c
        .lanes
        .map(|l| format!("lanes = {l}\n"))
        .unwrap_or_default();
    format!(
        r#"# written by coexist-sendbench
[redis]
url = "{redis}"
prefix = "{prefix}"

[meta]
app_secrets = ["${{{SECRET_VAR}}}"]
graph_api_url = "{graph_url}"

[[channels]]
id = "{CHANNEL}"
kind = "waba"
phone_number_id = "{PHONE_NUMBER_ID}"
access_token = "${{{TOKEN_VAR}}}"
partitions = {partitions}
{channel_extra}

[bot]
mode = "{bot}"

[worker]
metrics_listen = "127.0.0.1:@METRICS_PORT@"

[sending]
{lanes}"#,
        redis = c.redis_url,
        prefix = c.prefix,
        partitions = c.partitions,
    )
}

/// Writes the config and parses it with the product's own loader (so a bad key fails here).
fn write_config(c: &Common, text: &str) -> Result<(PathBuf, Config)> {
    std::fs::create_dir_all(&c.dir).with_context(|| format!("creating {}", c.dir.display()))?;
    let path = c.dir.join("sendbench.toml");
    std::fs::write(&path, text)?;
    let text = &text.replace("@METRICS_PORT@", "0");
    let env = |name: &str| match name {
        TOKEN_VAR => Some(TOKEN.to_string()),
        SECRET_VAR => Some(APP_SECRET.to_string()),
        _ => None,
    };
    let config = Config::from_toml(text, &path.display().to_string(), &env)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((path, config))
}

struct Backends {
    queue: Queue,
    out: OutQueue,
}

async fn backends(c: &Common, config: &Config) -> Result<Backends> {
    let queue = Queue::Redis(
        RedisQueue::connect(&c.redis_url, Keys::new(c.prefix.clone()), 3600, 0)
            .await
            .context("connecting to Redis")?,
    );
    let backend = coexist::backend::Backend::new(queue.clone());
    let out = coexist::runtime::out_queue(config, &backend).context("no Redis outbound queue")?;
    Ok(Backends { queue, out })
}

/// The work processes; killed when dropped (every exit path, a signal included).
struct Workers {
    children: Vec<Child>,
    pids: Vec<u32>,
    logs: Vec<PathBuf>,
    /// Each one's `/metrics` address.
    metrics: Vec<String>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Workers {
    /// `config`: the config written by [`write_config`]; each process gets a copy with its own
    /// metrics port.
    fn spawn(c: &Common, config: &Path) -> Result<Workers> {
        let mut w = Workers {
            children: Vec::new(),
            pids: Vec::new(),
            logs: Vec::new(),
            metrics: Vec::new(),
        };
        let template = std::fs::read_to_string(config)?;
        for i in 1..=c.workers {
            let log_path = c.dir.join(format!("work{i}.log"));
            let log = std::fs::File::create(&log_path)?;
            let port = free_port()?;
            let own = c.dir.join(format!("work{i}.toml"));
            std::fs::write(&own, template.replace("@METRICS_PORT@", &port.to_string()))?;
            let child = Command::new(&c.bin)
                .arg("work")
                .arg("--config")
                .arg(&own)
                .env(TOKEN_VAR, TOKEN)
                .env(SECRET_VAR, APP_SECRET)
                .env("RUST_LOG", &c.worker_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {} work", c.bin.display()))?;
            let pid = child.id().unwrap_or(0);
            if let Some(f) = &c.pid_file {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)?;
                writeln!(file, "{pid}")?;
            }
            w.children.push(child);
            w.pids.push(pid);
            w.logs.push(log_path);
            w.metrics.push(format!("http://127.0.0.1:{port}/metrics"));
        }
        Ok(w)
    }

    /// Messages each process sent (`coexist_messages_sent_total{outcome="sent"}`), `None`
    /// where `/metrics` did not answer.
    async fn sent_per_worker(&self) -> Vec<Option<u64>> {
        let http = reqwest::Client::new();
        let mut out = Vec::new();
        for url in &self.metrics {
            let text = match http.get(url).timeout(Duration::from_secs(2)).send().await {
                Ok(r) => r.text().await.ok(),
                Err(_) => None,
            };
            out.push(text.map(|t| {
                t.lines()
                    .filter(|l| {
                        l.starts_with("coexist_messages_sent_total{")
                            && l.contains("outcome=\"sent\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            }));
        }
        out
    }

    fn cpu_ticks(&self) -> u64 {
        self.pids.iter().map(|p| cpu_ticks(&p.to_string())).sum()
    }

    /// Dies early? Then the figures mean nothing.
    fn check_alive(&mut self) -> Result<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "work process {} exited early ({status}); log {}:\n{}",
                    i + 1,
                    self.logs[i].display(),
                    tail(&self.logs[i], 20)
                );
            }
        }
        Ok(())
    }

    fn vmhwm_kb(&self) -> Vec<u64> {
        self.pids.iter().map(|p| vmhwm_kb(*p)).collect()
    }

    /// SIGTERM, up to 10 s to stop, then SIGKILL. Returns how long the stop took (ms) and
    /// how many processes had to be killed.
    async fn stop(mut self) -> (f64, usize) {
        let started = Instant::now();
        for pid in &self.pids {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let mut killed = 0;
        for c in &mut self.children {
            let left = Duration::from_secs(10).saturating_sub(started.elapsed());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                killed += 1;
                let _ = c.kill().await;
            }
        }
        (ms(started.elapsed()), killed)
    }
}

/// WARN/ERROR lines of the work processes' logs (`work<i>.log` in `dir`): count and the first
/// few (read after the stop, so shutdown trouble shows too).
fn workers_logs(dir: &Path, workers: usize) -> (usize, Vec<String>) {
    let mut n = 0;
    let mut first = Vec::new();
    for i in 1..=workers {
        let text = std::fs::read_to_string(dir.join(format!("work{i}.log"))).unwrap_or_default();
        for line in text.lines() {
            if line.contains("WARN") || line.contains("ERROR") {
                n += 1;
                if first.len() < 5 {
                    first.push(strip_ansi(line).chars().take(300).collect());
                }
            }
        }
    }
    (n, first)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// utime + stime of a process (`self` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    // After the command: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn vmhwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time of the work processes, Redis and this tool (the fake) over a window.
struct CpuSample {
    at: Instant,
    workers: u64,
    redis: u64,
    me: u64,
    /// Busy ticks of the whole machine (`/proc/stat`, all CPUs).
    machine: u64,
}

/// Busy clock ticks of all CPUs together: everything but idle and iowait.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

impl CpuSample {
    fn take(workers: &Workers, redis_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            workers: workers.cpu_ticks(),
            redis: redis_pid.map_or(0, |p| cpu_ticks(&p.to_string())),
            me: cpu_ticks("self"),
            machine: machine_busy_ticks(),
        }
    }

    /// Cores busy between `self` and `later`.
    fn cores(&self, later: &CpuSample, hz: f64) -> Value {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-6);
        let c = |a: u64, b: u64| round3(b.saturating_sub(a) as f64 / hz / secs);
        let ours = later.workers + later.redis + later.me - self.workers - self.redis - self.me;
        let machine = later.machine.saturating_sub(self.machine);
        json!({
            "workers": c(self.workers, later.workers),
            "redis": c(self.redis, later.redis),
            "bench_and_fake": c(self.me, later.me),
            "machine": c(self.machine, later.machine),
            // Everything else on the machine (compilers, tests …): above ~0.15 the figures
            // are not the product's alone.
            "other_processes": c(ours.min(machine), machine),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1000.0)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn label(c: &Common, default: String) -> String {
    c.label.clone().unwrap_or(default)
}

// ---------------------------------------------------------------- throughput

async fn throughput(a: ThroughputArgs) -> Result<()> {
    let c = &a.common;
    if a.customers == 0 || a.messages < a.customers {
        bail!("--messages must be at least --customers (and both > 0)");
    }
    let hz = clock_ticks_per_sec();
    let (fake, graph_url) = Fake::start().await?;
    let text = config_text(
        c,
        &graph_url,
        "none",
        "send_rate_per_second = 0\npair_gap_ms = 0",
    );
    let (config_path, config) = write_config(c, &text)?;
    let b = backends(c, &config).await?;

    // Fill the outbound queue: customer i gets messages `sb:<i>:<n>`, n = 0, 1, … in order.
    let per = a.messages / a.customers;
    let extra = a.messages % a.customers;
    let customers: Vec<(String, usize)> = (0..a.customers)
        .map(|i| (format!("1555{:07}", i), per + usize::from(i < extra)))
        .collect();
    let fill_started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.push_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (customer, n)) in customers.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let out = b.out.clone();
        let customer = customer.clone();
        let n = *n;
        tasks.spawn(async move {
            let now = coexist::outbound::now_ms();
            let batch: Vec<QueuedMessage> = (0..n)
                .map(|k| {
                    let msg = OutgoingMessage::new(
                        CHANNEL,
                        customer.clone(),
                        Reply::Template {
                            name: "sendbench".into(),
                            language: "en_US".into(),
                            components: vec![],
                        },
                        format!("sb:{i}:{k}"),
                    );
                    QueuedMessage::new(msg, now)
                })
                .collect();
            let r = out.push(CHANNEL, &customer, &batch, now).await;
            drop(permit);
            r.map(|added| (added, n))
        });
        while let Some(done) = tasks.try_join_next() {
            let (added, n) = done??;
            if added != n {
                bail!("push queued {added} of {n} messages");
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        let (added, n) = done??;
        if added != n {
            bail!("push queued {added} of {n} messages");
        }
    }
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let stats = b.out.stats(CHANNEL, coexist::outbound::now_ms()).await?;
    if stats.backlog != a.messages as u64 {
        bail!(
            "the outbound queue holds {} messages after the fill, expected {}",
            stats.backlog,
            a.messages
        );
    }
    eprintln!(
        "filled the outbound queue: {} messages over {} customers in {:.2} s ({:.0}/s)",
        a.messages,
        a.customers,
        fill_secs,
        a.messages as f64 / fill_secs
    );

    // Drain it.
    let started = Instant::now();
    let mut workers = Workers::spawn(c, &config_path)?;
    let expected = a.messages as u64;
    let timeout = Duration::from_secs_f64(a.timeout);
    let stall = Duration::from_secs_f64(a.stall);
    let mut cpu0: Option<CpuSample> = None;
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    let mut stalled = false;
    let mut timed_out = false;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        workers.check_alive()?;
        let n = fake.count();
        if n > 0 && cpu0.is_none() {
            cpu0 = Some(CpuSample::take(&workers, c.redis_pid));
        }
        if n != last_count {
            last_count = n;
            last_progress = Instant::now();
        }
        if distinct_at_least(&fake, n, expected) {
            break;
        }
        if n > 0 && last_progress.elapsed() > stall {
            stalled = true;
            break;
        }
        if started.elapsed() > timeout {
            timed_out = true;
            break;
        }
    }
    let cpu1 = CpuSample::take(&workers, c.redis_pid);
    // Late duplicates (a lane worked twice) would arrive just after the last message.
    tokio::time::sleep(Duration::from_secs_f64(a.linger)).await;
    let hits = fake.snapshot();
    // The queue must be empty once everything was sent (settle follows the answer closely).
    let mut after = b.out.stats(CHANNEL, coexist::outbound::now_ms()).await?;
    for _ in 0..50 {
        if after.backlog == 0 || stalled || timed_out {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = b.out.stats(CHANNEL, coexist::outbound::now_ms()).await?;
    }
    let vmhwm = workers.vmhwm_kb();
    let sent_by_worker = workers.sent_per_worker().await;
    let (stop_ms, killed) = workers.stop().await;
    let (problems, first_problems) = workers_logs(&c.dir, c.workers);

    // Every id exactly once, in order per customer.
    let mut seen: HashMap<&str, u32> = HashMap::with_capacity(hits.len());
    let mut next_per_customer: HashMap<usize, usize> = HashMap::new();
    let mut order_violations = 0u64;
    let mut unknown = 0u64;
    let mut first_violation: Option<String> = None;
    for h in &hits {
        let count = seen.entry(h.key.as_str()).or_insert(0);
        *count += 1;
        if *count > 1 {
            continue;
        }
        let parsed = h
            .key
            .strip_prefix("sb:")
            .and_then(|r| r.split_once(':'))
            .and_then(|(i, k)| Some((i.parse::<usize>().ok()?, k.parse::<usize>().ok()?)));
        let Some((i, k)) = parsed.filter(|(i, k)| *i < customers.len() && *k < customers[*i].1)
        else {
            unknown += 1;
            continue;
        };
        let next = next_per_customer.entry(i).or_insert(0);
        if k != *next {
            order_violations += 1;
            if first_violation.is_none() {
                first_violation = Some(format!("customer {i}: got message {k}, expected {next}"));
            }
        }
        *next = (*next).max(k + 1);
    }
    let duplicates: u64 = seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
    let duplicated_ids = seen.values().filter(|&&n| n > 1).count();
    let distinct = seen.len() as u64 - unknown;
    let missing = expected - distinct.min(expected);

    let mut times: Vec<Instant> = hits.iter().map(|h| h.at).collect();
    times.sort();
    let (first, last) = (times.first().copied(), times.last().copied());
    let window = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    let window_s = window.as_secs_f64();
    let rate = if window_s > 0.0 {
        (distinct.saturating_sub(1)) as f64 / window_s
    } else {
        0.0
    };
    // The middle 80 % of the requests: no start-up, no tail.
    let rate_mid = if times.len() >= 10 {
        let lo = times[times.len() / 10];
        let hi = times[times.len() * 9 / 10];
        let s = hi.duration_since(lo).as_secs_f64();
        if s > 0.0 {
            (times.len() * 9 / 10 - times.len() / 10) as f64 / s
        } else {
            0.0
        }
    } else {
        0.0
    };
    let startup = first.map(|f| f.duration_since(started));
    // Requests per second over time (1 s buckets from the first request): stalls show here.
    let per_second: Vec<u64> = match first {
        Some(f) => {
            let mut v = vec![0u64; window_s.floor() as usize + 1];
            for t in &times {
                v[t.duration_since(f).as_secs() as usize] += 1;
            }
            v
        }
        None => vec![],
    };
    // The longest gap between two consecutive requests.
    let max_gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let cpu = cpu0.map(|c0| c0.cores(&cpu1, hz)).unwrap_or(Value::Null);
    let ok = duplicates == 0
        && missing == 0
        && unknown == 0
        && order_violations == 0
        && after.backlog == 0
        && fake.unexpected.load(Ordering::Relaxed) == 0
        && fake.unauthorized.load(Ordering::Relaxed) == 0
        && !stalled
        && !timed_out;

    let report = json!({
        "scenario": "throughput",
        "label": label(c, format!("throughput-{}w", c.workers)),
        "ok": ok,
        "workers": c.workers,
        "lanes_per_process": c.lanes.unwrap_or(coexist::outbound::LaneSettings::default().lanes),
        "partitions": c.partitions,
        "messages": a.messages,
        "customers": a.customers,
        "fill_seconds": round3(fill_secs),
        "startup_ms": startup.map(ms),
        "window_seconds": round3(window_s),
        "requests": hits.len(),
        "distinct_sent": distinct,
        "sent_per_second": round3(rate),
        "sent_per_second_middle_80pct": round3(rate_mid),
        "max_gap_ms": ms(max_gap),
        "per_second": per_second,
        "duplicates": duplicates,
        "duplicated_ids": duplicated_ids,
        "missing": missing,
        "unknown_ids": unknown,
        "order_violations": order_violations,
        "first_order_violation": first_violation,
        "backlog_after": after.backlog,
        "lanes_busy_after": after.lanes_busy,
        "waiting_after": after.waiting,
        "unexpected_requests": fake.unexpected.load(Ordering::Relaxed),
        "unauthorized_requests": fake.unauthorized.load(Ordering::Relaxed),
        "fake_connections": fake.connections.load(Ordering::Relaxed),
        "stalled": stalled,
        "timed_out": timed_out,
        "cpu_cores": cpu,
        "worker_vmhwm_kb": vmhwm,
        "sent_by_worker": sent_by_worker,
        "worker_stop_ms": stop_ms,
        "workers_killed_at_stop": killed,
        "worker_log_warnings": problems,
        "worker_log_first_warnings": first_problems,
    });
    println!("{report}");

    let mut h = String::new();
    let _ = writeln!(
        h,
        "== throughput: {} work process(es), {} lanes each, limits off, {} messages / {} customers",
        c.workers, report["lanes_per_process"], a.messages, a.customers
    );
    let _ = writeln!(
        h,
        "sent {distinct} distinct messages ({} requests) in {:.3} s from the first request to the last: {:.0} msg/s (middle 80 %: {:.0} msg/s)",
        hits.len(),
        window_s,
        rate,
        rate_mid
    );
    let _ = writeln!(
        h,
        "start-up (spawn → first request) {:.0} ms; longest gap between two requests {:.1} ms",
        startup.map_or(f64::NAN, ms),
        ms(max_gap)
    );
    let _ = writeln!(h, "requests per second: {per_second:?}");
    let _ = writeln!(
        h,
        "duplicates {duplicates} ({duplicated_ids} ids), missing {missing}, unknown ids {unknown}, per-customer order violations {order_violations}, backlog after {}{}{}",
        after.backlog,
        if stalled { ", STALLED (no request for --stall seconds)" } else { "" },
        if timed_out { ", TIMED OUT" } else { "" },
    );
    if let Some(v) = &first_violation {
        let _ = writeln!(h, "first order violation: {v}");
    }
    let _ = writeln!(
        h,
        "CPU (cores busy over the window): {cpu}; worker VmHWM (kB): {vmhwm:?}; sent by each worker (its metrics): {sent_by_worker:?}"
    );
    let _ = writeln!(
        h,
        "work processes stopped (SIGTERM) in {stop_ms:.0} ms; killed after 10 s: {killed}"
    );
    if problems > 0 {
        let _ = writeln!(h, "worker logs: {problems} WARN/ERROR line(s), first:");
        for l in &first_problems {
            let _ = writeln!(h, "  {l}");
        }
    }
    let _ = writeln!(h, "{}", if ok { "OK" } else { "NOT OK" });
    eprint!("{h}");
    if !ok {
        std::process::exit(4);
    }
    Ok(())
}

/// Cheap check first (the count), the exact one (distinct ids) only when it can be true.
fn distinct_at_least(fake: &Fake, n: u64, expected: u64) -> bool {
    if n < expected {
        return false;
    }
    let hits = fake.hits.lock().unwrap();
    let mut keys: Vec<&str> = hits.iter().map(|h| h.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len() as u64 >= expected
}

// ---------------------------------------------------------------- isolation

fn text_event(customer: &str, id: &str, text: &str, now: i64) -> Result<NewEvent> {
    // Built from JSON and parsed with the product's own type, so the payload is what it reads.
    let event: Event = serde_json::from_value(json!({
        "id": id,
        "channel": CHANNEL,
        "kind": "waba",
        "conversation": customer,
        "type": "message",
        "at": now,
        "received_at": now,
        "contact": {"wa_id": customer},
        "message": {"id": format!("wamid.{id}"), "type": "text", "text": text},
    }))
    .context("building an event")?;
    Ok(NewEvent {
        channel: CHANNEL.to_string(),
        partitions: 0, // set by the caller
        id: event.id.clone(),
        payload: event.to_json(),
        contact_ids: vec![customer.to_string()],
    })
}

/// The event id a reply's outbox key (`<event id>:<reply index>`) belongs to.
fn event_of(key: &str) -> &str {
    key.rsplit_once(':').map_or(key, |(e, _)| e)
}

async fn isolation(a: IsolationArgs) -> Result<()> {
    let c = &a.common;
    let (fake, graph_url) = Fake::start().await?;
    let text = config_text(c, &graph_url, "echo", &a.channel_extra);
    let (config_path, config) = write_config(c, &text)?;
    let ch = config.channel(CHANNEL).context("channel")?;
    let limits = json!({
        "send_rate_per_second": ch.send_rate_per_second,
        "pair_gap_ms": ch.pair_gap_ms,
        "pair_burst": coexist::outbound::rate::WABA_PAIR_BURST,
    });
    let b = backends(c, &config).await?;
    let event = |customer: &str, id: &str, text: &str| -> Result<NewEvent> {
        let mut e = text_event(customer, id, text, coexist::outbound::now_ms())?;
        e.partitions = c.partitions;
        Ok(e)
    };

    let mut workers = Workers::spawn(c, &config_path)?;
    // Warm-up: one message through the whole path proves the worker holds its partitions and
    // the sender reaches the fake (and opens the keep-alive connection).
    let warm_started = Instant::now();
    b.queue
        .enqueue(&[event("15559999999", "sb.warm", "warm-up")?])
        .await?;
    loop {
        workers.check_alive()?;
        if fake
            .snapshot()
            .iter()
            .any(|h| event_of(&h.key) == "sb.warm")
        {
            break;
        }
        if warm_started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the warm-up reply did not arrive in 30 s; worker log:\n{}",
                tail(&workers.logs[0], 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warm_ms = ms(warm_started.elapsed());
    // Let the pair bucket of the warm-up customer and the channel bucket be as on a quiet
    // channel (the channel bucket refills 80/s: one slot used, refilled in 12.5 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The chatty customer: all at once, in order.
    let chatty_customer = "15550000000";
    let chatty: Vec<NewEvent> = (0..a.chatty)
        .map(|i| {
            event(
                chatty_customer,
                &format!("sb.chatty.{i}"),
                &format!("chatty {i}"),
            )
        })
        .collect::<Result<_>>()?;
    let chatty_at = Instant::now();
    b.queue.enqueue(&chatty).await?;
    // Then everybody else, one message each.
    let others: Vec<NewEvent> = (0..a.others)
        .map(|i| {
            event(
                &format!("1555100{i:04}"),
                &format!("sb.other.{i}"),
                &format!("hello {i}"),
            )
        })
        .collect::<Result<_>>()?;
    let others_at = Instant::now();
    b.queue.enqueue(&others).await?;
    let enqueue_ms = ms(others_at.elapsed());

    let timeout = Duration::from_secs_f64(a.timeout);
    let mut others_done: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        workers.check_alive()?;
        let hits = fake.snapshot();
        let n_others = count_distinct(&hits, "sb.other.");
        if others_done.is_none() && n_others >= a.others {
            others_done = Some(Instant::now());
        }
        let n_chatty = count_distinct(&hits, "sb.chatty.");
        if let Some(done) = others_done {
            if done.elapsed().as_secs_f64() >= a.chatty_watch || n_chatty >= a.chatty {
                break;
            }
        } else if others_at.elapsed() > timeout {
            timed_out = true;
            break;
        }
    }
    let hits = fake.snapshot();
    let vmhwm = workers.vmhwm_kb();

    // Per event: the first arrival of its reply, and how many requests carried it.
    let mut first_at: HashMap<&str, Instant> = HashMap::new();
    let mut requests_per_key: HashMap<&str, u32> = HashMap::new();
    for h in &hits {
        first_at.entry(event_of(&h.key)).or_insert(h.at);
        *requests_per_key.entry(h.key.as_str()).or_insert(0) += 1;
    }
    let duplicates: u64 = requests_per_key
        .values()
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();

    // The others: enqueue → reply at the fake.
    let mut lat: Vec<f64> = Vec::with_capacity(a.others);
    let mut missing_others = 0;
    for i in 0..a.others {
        match first_at.get(format!("sb.other.{i}").as_str()) {
            Some(t) => lat.push(ms(t.duration_since(others_at))),
            None => missing_others += 1,
        }
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    // Where the time went, from the message records (wall-clock ms): enqueue → reply queued by
    // the worker's commit ("handled"), and queued → sent.
    let others_wall = coexist::outbound::now_ms() - others_at.elapsed().as_millis() as i64;
    let mut handled_ms: Vec<f64> = Vec::new();
    let mut queued_to_sent_ms: Vec<f64> = Vec::new();
    for i in 0..a.others {
        let id = format!("sb.other.{i}:0");
        if let Some(r) = b.out.record(CHANNEL, &id).await? {
            let at = |s: &str| {
                r.history
                    .iter()
                    .find(|e| e.status.as_str() == s)
                    .map(|e| e.at)
            };
            if let Some(q) = at("queued") {
                handled_ms.push((q - others_wall) as f64);
                if let Some(s) = at("sent") {
                    queued_to_sent_ms.push((s - q) as f64);
                }
            }
        }
    }
    handled_ms.sort_by(|x, y| x.total_cmp(y));
    queued_to_sent_ms.sort_by(|x, y| x.total_cmp(y));

    // The chatty customer: arrival of each reply, from its enqueue, in arrival order.
    let mut chatty_arrivals: Vec<(usize, f64)> = hits
        .iter()
        .filter_map(|h| {
            let e = event_of(&h.key);
            let i: usize = e.strip_prefix("sb.chatty.")?.parse().ok()?;
            (first_at.get(e) == Some(&h.at)).then(|| (i, ms(h.at.duration_since(chatty_at))))
        })
        .collect();
    chatty_arrivals.sort_by(|x, y| x.1.total_cmp(&y.1));
    let chatty_in_order = chatty_arrivals.windows(2).all(|w| w[0].0 < w[1].0);
    let first10: Vec<f64> = chatty_arrivals.iter().take(10).map(|x| x.1).collect();
    let spacing: Vec<f64> = chatty_arrivals
        .windows(2)
        .skip(9)
        .map(|w| round3(w[1].1 - w[0].1))
        .collect();
    let others_last = lat.last().copied();
    let chatty_during_others = others_last.map_or(0, |last| {
        let offset = ms(others_at.duration_since(chatty_at));
        chatty_arrivals
            .iter()
            .filter(|x| x.1 <= last + offset)
            .count()
    });
    let stats = b.out.stats(CHANNEL, coexist::outbound::now_ms()).await?;
    let (stop_ms, killed) = workers.stop().await;
    let (problems, first_problems) = workers_logs(&c.dir, c.workers);

    let q = |v: &[f64], p: f64| {
        let x = percentile(v, p);
        if x.is_nan() {
            Value::Null
        } else {
            json!(x)
        }
    };
    let ok = missing_others == 0
        && duplicates == 0
        && chatty_in_order
        && !timed_out
        && fake.unexpected.load(Ordering::Relaxed) == 0;
    let report = json!({
        "scenario": "isolation",
        "label": label(c, "isolation".into()),
        "ok": ok,
        "workers": c.workers,
        "partitions": c.partitions,
        "limits": limits,
        "chatty_messages": a.chatty,
        "others": a.others,
        "warmup_ms": warm_ms,
        "enqueue_others_ms": enqueue_ms,
        "others_latency_ms": {
            "p50": q(&lat, 0.5), "p90": q(&lat, 0.9), "p99": q(&lat, 0.99),
            "max": others_last, "min": lat.first().copied(), "arrived": lat.len(),
        },
        "others_handled_ms": {"p50": q(&handled_ms, 0.5), "p99": q(&handled_ms, 0.99), "max": handled_ms.last().copied()},
        "others_queued_to_sent_ms": {"p50": q(&queued_to_sent_ms, 0.5), "p99": q(&queued_to_sent_ms, 0.99), "max": queued_to_sent_ms.last().copied()},
        "missing_others": missing_others,
        "timed_out": timed_out,
        "chatty_first10_ms": first10,
        "chatty_spacing_after_10_ms": spacing,
        "chatty_arrived": chatty_arrivals.len(),
        "chatty_arrived_while_others_were_sent": chatty_during_others,
        "chatty_in_order": chatty_in_order,
        "duplicates": duplicates,
        "requests": hits.len(),
        "unexpected_requests": fake.unexpected.load(Ordering::Relaxed),
        "outbound_after": {
            "backlog": stats.backlog, "lanes_ready": stats.lanes_ready,
            "lanes_busy": stats.lanes_busy, "waiting": stats.waiting,
        },
        "worker_vmhwm_kb": vmhwm,
        "worker_stop_ms": stop_ms,
        "workers_killed_at_stop": killed,
        "worker_log_warnings": problems,
        "worker_log_first_warnings": first_problems,
    });
    println!("{report}");

    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let l = &report["others_latency_ms"];
    let mut h = String::new();
    let _ = writeln!(
        h,
        "== isolation: 1 chatty customer × {} messages, then {} customers × 1; limits {limits}; echo bot; {} work process(es)",
        a.chatty, a.others, c.workers
    );
    let _ = writeln!(
        h,
        "others, enqueue → reply at the fake: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} of {} arrived{})",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"]),
        lat.len(),
        a.others,
        if timed_out { ", TIMED OUT" } else { "" }
    );
    let _ = writeln!(
        h,
        "  of which enqueue → reply queued by the handler: p50 {} / p99 {} / max {} ms; queued → sent: p50 {} / p99 {} / max {} ms",
        f(&report["others_handled_ms"]["p50"]),
        f(&report["others_handled_ms"]["p99"]),
        f(&report["others_handled_ms"]["max"]),
        f(&report["others_queued_to_sent_ms"]["p50"]),
        f(&report["others_queued_to_sent_ms"]["p99"]),
        f(&report["others_queued_to_sent_ms"]["max"]),
    );
    let _ = writeln!(
        h,
        "chatty customer: {} of {} replies arrived ({} while the others were being sent), in order: {}",
        chatty_arrivals.len(),
        a.chatty,
        chatty_during_others,
        chatty_in_order
    );
    let _ = writeln!(h, "  first 10 at (ms from its enqueue): {first10:?}");
    let _ = writeln!(h, "  then spaced by (ms): {spacing:?}");
    let _ = writeln!(
        h,
        "duplicates {duplicates}; outbound after: backlog {} (chatty replies still waiting), waiting {:?}",
        stats.backlog, stats.waiting
    );
    let _ = writeln!(
        h,
        "work process stopped (SIGTERM) in {stop_ms:.0} ms; killed after 10 s: {killed}"
    );
    if problems > 0 {
        let _ = writeln!(h, "worker logs: {problems} WARN/ERROR line(s), first:");
        for l in &first_problems {
            let _ = writeln!(h, "  {l}");
        }
    }
    let _ = writeln!(h, "{}", if ok { "OK" } else { "NOT OK" });
    eprint!("{h}");
    if !ok {
        std::process::exit(4);
    }
    Ok(())
}

fn count_distinct(hits: &[Hit], prefix: &str) -> usize {
    let mut keys: Vec<&str> = hits
        .iter()
        .map(|h| event_of(&h.key))
        .filter(|k| k.starts_with(prefix))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}
