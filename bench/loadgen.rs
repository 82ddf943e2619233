//! `coexist-loadgen`: a load generator for `POST /webhooks/meta`.
//!
//! Every request is a distinct, signed Meta Cloud API webhook (unique wamids, thousands of
//! contacts, non-ASCII text escaped the way Meta sends it, a share of status webhooks and of
//! batched POSTs). All requests are built and signed before the timed phase, so neither JSON
//! building nor HMAC runs in the timed loop.
//!
//! The timed phase writes pre-serialized HTTP/1.1 requests on keep-alive `TcpStream`s and reads
//! responses with a minimal parser (status line + Content-Length): much cheaper than a full HTTP
//! client, so the generator takes less CPU from the server it measures.
//!
//! Two modes:
//! - closed loop (default): every connection sends its next request as soon as the previous
//!   response arrived: maximum throughput; latency = send → response.
//! - fixed rate (`--rate R`): request `i` is scheduled at `start + i / R` by a pacer thread; a free
//!   connection takes the next due request. Latency is measured from the *scheduled* time, so a
//!   server stall shows up in every request that should have been sent meanwhile (no coordinated
//!   omission). The send → response time is reported too ("service time").
//!
//! See bench/README.md.

use anyhow::{bail, Context, Result};
use clap::Parser;
use coexist::verify::{header_value, Algorithm};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "coexist-loadgen",
    about = "Signed Meta webhook load generator (closed loop or fixed rate)"
)]
struct Args {
    /// Target URL (plain http): http://HOST:PORT/PATH
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/meta")]
    url: String,
    /// Meta app secret used for X-Hub-Signature-256.
    #[arg(long, env = "META_APP_SECRET", hide_env_values = true)]
    secret: String,
    /// metadata.phone_number_id of every payload (must match a configured channel).
    #[arg(long, default_value = "106540352242922")]
    phone_number_id: String,
    /// metadata.display_phone_number of every payload.
    #[arg(long, default_value = "15550783881")]
    display_phone_number: String,
    /// WhatsApp Business Account id (entry[].id).
    #[arg(long, default_value = "102290129340398")]
    waba_id: String,
    /// Number of distinct customer phone numbers.
    #[arg(long, default_value_t = 5000)]
    contacts: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Length of the measured phase, in seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of load before the measured phase (sent and checked, not in the figures).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Fixed-rate (open-loop) mode: requests per second. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Share of POSTs that are status webhooks (sent/delivered/read) rather than messages.
    #[arg(long, default_value_t = 0.3)]
    status_share: f64,
    /// Share of POSTs that carry several messages/statuses.
    #[arg(long, default_value_t = 0.1)]
    batch_share: f64,
    /// Elements per batched POST.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Share of POSTs that are byte-identical re-sends of an earlier POST (Meta retries):
    /// exercises dedupe; such events must not be enqueued twice.
    #[arg(long, default_value_t = 0.0)]
    dup_share: f64,
    /// Requests to pre-generate (default: rate x time, or 70,000/s x time in closed loop).
    /// A closed-loop run that uses them all stops early and says so.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Threads used to pre-generate and sign requests (before the timed phase).
    #[arg(long)]
    gen_threads: Option<usize>,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sample this process's RSS (VmRSS every 100 ms, VmHWM) and CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also report the CPU time of this process (e.g. redis-server).
    #[arg(long)]
    redis_pid: Option<u32>,
    /// After the run, count stream entries (XLEN over `<prefix>:{<channel>}:in:*`) and compare
    /// with the events of the POSTs answered 200.
    #[arg(long)]
    check_redis: Option<String>,
    #[arg(long, default_value = "cx")]
    prefix: String,
    #[arg(long, default_value = "shop")]
    channel: String,
    /// Print one JSON object on stdout (the human report goes to stderr).
    #[arg(long)]
    json: bool,
    /// Label of this run in the report.
    #[arg(long, default_value = "")]
    label: String,
}

// ------------------------------------------------------------------ payloads

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// A wamid shaped like Meta's (`wamid.HBgL` + base64), unique per (run seed, sequence number).
fn wamid(seed: u64, seq: u64, phone: &str, rng: &mut Rng) -> String {
    let mut raw = Vec::with_capacity(48);
    raw.extend_from_slice(&[0x1c, 0x18, 0x0b]);
    raw.extend_from_slice(phone.as_bytes());
    raw.extend_from_slice(&[0x15, 0x02, 0x00, 0x12, 0x18, 0x14]);
    raw.extend_from_slice(&seed.to_be_bytes());
    raw.extend_from_slice(&seq.to_be_bytes());
    raw.extend_from_slice(&rng.next().to_be_bytes()[..4]);
    let mut s = String::from("wamid.");
    base64(&raw, &mut s);
    s
}

struct Contact {
    wa_id: String,
    /// JSON-escaped profile name, as Meta writes it.
    name: &'static str,
}

const NAMES: &[&str] = &[
    "Jos\\u00e9 M\\u00fcller",
    "Ana",
    "Zo\\u00eb Br\\u00f8ndum",
    "\\u5f20\\u4f1f",
    "Pablo M.",
    "Fran\\u00e7ois",
    "\\u0410\\u043d\\u043d\\u0430",
    "Mike",
    "Priya \\ud83c\\udf38",
    "\\u0645\\u062d\\u0645\\u062f",
];

/// Text bodies, JSON-escaped the way Meta does (`\uXXXX` for non-ASCII, `\/` for slashes).
const TEXTS: &[&str] = &[
    "caf\\u00e9 \\ud83d\\ude00 menu: https:\\/\\/example.com\\/menu",
    "Hi, is my order on its way?",
    "Ol\\u00e1! Quero saber o pre\\u00e7o",
    "\\ud83d\\udc4d",
    "Can I change the delivery address to 221B Baker St?",
    "\\u00bfTienen env\\u00edo a domicilio?",
    "Gr\\u00fc\\u00dfe aus M\\u00fcnchen \\ud83c\\udf7a",
    "\\u4f60\\u597d\\uff0c\\u8bf7\\u95ee\\u8425\\u4e1a\\u65f6\\u95f4\\uff1f",
    "Thanks!",
    "I need help with order #",
];

fn make_contacts(n: usize, seed: u64) -> Vec<Contact> {
    let mut rng = Rng(seed ^ 0xC047_AC75);
    let prefixes = ["1555", "5511", "4915", "9198", "4477", "3361", "5255"];
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n.max(1) {
        let p = prefixes[rng.below(prefixes.len())];
        let wa_id = format!("{p}{:08}", rng.next() % 100_000_000);
        if seen.insert(wa_id.clone()) {
            out.push(Contact {
                wa_id,
                name: NAMES[rng.below(NAMES.len())],
            });
        }
    }
    out
}

struct Gen<'a> {
    args: &'a Args,
    contacts: &'a [Contact],
    now: u64,
    rng: Rng,
}

impl Gen<'_> {
    fn message(&mut self, seq: u64, c: &Contact, out: &mut String) {
        let id = wamid(self.args.seed, seq, &c.wa_id, &mut self.rng);
        let ts = self.now - self.rng.below(5) as u64;
        let kind = self.rng.below(100);
        let _ = write!(
            out,
            r#"{{"from":"{}","id":"{}","timestamp":"{}","#,
            c.wa_id, id, ts
        );
        if kind < 80 {
            let text = TEXTS[self.rng.below(TEXTS.len())];
            if kind < 10 {
                let ctx = wamid(
                    self.args.seed ^ 0xABCD,
                    seq,
                    &self.args.display_phone_number,
                    &mut self.rng,
                );
                let _ = write!(
                    out,
                    r#""context":{{"from":"{}","id":"{}"}},"#,
                    self.args.display_phone_number, ctx
                );
            }
            let _ = write!(out, r#""text":{{"body":"{text} {seq}"}},"type":"text"}}"#);
        } else if kind < 90 {
            let _ = write!(
                out,
                r#""type":"image","image":{{"caption":"foto do produto \u00e9 {seq}","mime_type":"image\/jpeg","sha256":"{:016x}{:016x}","id":"{}"}}}}"#,
                self.rng.next(),
                self.rng.next(),
                1_000_000_000_000_000u64 + seq
            );
        } else if kind < 95 {
            let target = wamid(self.args.seed ^ 0x5EED, seq, &c.wa_id, &mut self.rng);
            let _ = write!(
                out,
                r#""type":"reaction","reaction":{{"message_id":"{target}","emoji":"\ud83d\udc4d"}}}}"#
            );
        } else {
            let _ = write!(
                out,
                r#""context":{{"from":"{}","id":"{}"}},"type":"interactive","interactive":{{"type":"button_reply","button_reply":{{"id":"opt_{}","title":"S\u00ed, confirmar"}}}}}}"#,
                self.args.display_phone_number,
                wamid(self.args.seed ^ 0xB7, seq, &c.wa_id, &mut self.rng),
                seq % 3
            );
        }
    }

    fn status(&mut self, seq: u64, c: &Contact, out: &mut String) {
        let id = wamid(self.args.seed ^ 0x57A7, seq, &c.wa_id, &mut self.rng);
        let status = ["sent", "delivered", "read"][self.rng.below(3)];
        let ts = self.now - self.rng.below(5) as u64;
        let _ = write!(
            out,
            r#"{{"id":"{id}","status":"{status}","timestamp":"{ts}","recipient_id":"{}""#,
            c.wa_id
        );
        if status != "read" {
            let _ = write!(
                out,
                r#","conversation":{{"id":"{:032x}","origin":{{"type":"service"}}}},"pricing":{{"billable":true,"pricing_model":"PMP","type":"regular","category":"service"}}"#,
                (u128::from(self.rng.next()) << 64) | u128::from(self.rng.next())
            );
        }
        out.push('}');
    }

    /// One POST body: its events count, and the body.
    fn body(&mut self, first_seq: u64, out: &mut String) -> usize {
        let statuses = self.rng.chance(self.args.status_share);
        let n = if self.rng.chance(self.args.batch_share) {
            self.args.batch_size.max(2)
        } else {
            1
        };
        let who: Vec<usize> = (0..n)
            .map(|_| self.rng.below(self.contacts.len()))
            .collect();
        let _ = write!(
            out,
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{}","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"{}","phone_number_id":"{}"}},"#,
            self.args.waba_id, self.args.display_phone_number, self.args.phone_number_id
        );
        if statuses {
            out.push_str(r#""statuses":["#);
            for (k, &w) in who.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                let contacts = self.contacts;
                self.status(first_seq + k as u64, &contacts[w], out);
            }
        } else {
            out.push_str(r#""contacts":["#);
            let mut listed: Vec<usize> = Vec::new();
            for &w in &who {
                if listed.contains(&w) {
                    continue;
                }
                if !listed.is_empty() {
                    out.push(',');
                }
                listed.push(w);
                let c = &self.contacts[w];
                let _ = write!(
                    out,
                    r#"{{"profile":{{"name":"{}"}},"wa_id":"{}"}}"#,
                    c.name, c.wa_id
                );
            }
            out.push_str(r#"],"messages":["#);
            for (k, &w) in who.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                let contacts = self.contacts;
                self.message(first_seq + k as u64, &contacts[w], out);
            }
        }
        out.push_str(r#"]},"field":"messages"}]}]}"#);
        n
    }
}

/// Pre-serialized requests: bytes live in a few large arenas.
struct Pool {
    arenas: Vec<Vec<u8>>,
    /// (arena, offset, len, original request index, events)
    index: Vec<(u32, u32, u32, u32, u32)>,
    /// Total body bytes (for the average body size).
    body_bytes: u64,
}

impl Pool {
    fn request(&self, i: usize) -> &[u8] {
        let (a, off, len, _, _) = self.index[i];
        &self.arenas[a as usize][off as usize..(off + len) as usize]
    }
}

/// One generator thread's output: arena, (offset, len, events) per request, body bytes.
type GenPart = (Vec<u8>, Vec<(u32, u32, u32)>, u64);

fn build_pool(args: &Args, host: &str, path: &str, n: usize) -> Pool {
    let contacts = make_contacts(args.contacts, args.seed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let threads = args
        .gen_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |p| p.get()))
        .max(1);
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<GenPart> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let contacts = &contacts;
                s.spawn(move || {
                    let start = t * chunk;
                    let end = ((t + 1) * chunk).min(n);
                    let mut gen = Gen {
                        args,
                        contacts,
                        now,
                        rng: Rng(args.seed.wrapping_mul(1_000_003) ^ (t as u64 + 1) << 40),
                    };
                    let mut arena: Vec<u8> = Vec::with_capacity((end.saturating_sub(start)) * 1100);
                    let mut idx = Vec::with_capacity(end.saturating_sub(start));
                    let mut body = String::with_capacity(4096);
                    let mut body_bytes = 0u64;
                    for i in start..end {
                        body.clear();
                        // Sequence numbers leave room for the elements of a batch.
                        let events = gen.body(i as u64 * 16, &mut body);
                        body_bytes += body.len() as u64;
                        let sig = header_value(
                            Algorithm::Sha256,
                            args.secret.as_bytes(),
                            body.as_bytes(),
                        );
                        let off = arena.len();
                        let _ = std::io::Write::write_all(
                            &mut arena,
                            format!(
                                "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: facebookexternalua\r\nAccept: */*\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        );
                        arena.extend_from_slice(body.as_bytes());
                        idx.push((off as u32, (arena.len() - off) as u32, events as u32));
                    }
                    (arena, idx, body_bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread"))
            .collect()
    });
    let mut pool = Pool {
        arenas: Vec::new(),
        index: Vec::with_capacity(n),
        body_bytes: 0,
    };
    for (a, (arena, idx, bytes)) in parts.into_iter().enumerate() {
        for (off, len, events) in idx {
            let i = pool.index.len() as u32;
            pool.index.push((a as u32, off, len, i, events));
        }
        pool.arenas.push(arena);
        pool.body_bytes += bytes;
    }
    // Meta retries: replace a share of requests by exact copies of an earlier one.
    if args.dup_share > 0.0 {
        let mut rng = Rng(args.seed ^ 0xD0_0B1E);
        for i in 1..pool.index.len() {
            if rng.chance(args.dup_share) {
                let j = i - 1 - rng.below(i.min(1000));
                pool.index[i] = pool.index[j];
            }
        }
    }
    pool
}

// ------------------------------------------------------------------ HTTP

/// Reads one HTTP/1.1 response; returns (status, close requested).
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = &buf[..end];
            if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
                bail!("bad status line");
            }
            let status: u16 = std::str::from_utf8(&head[9..12])?.parse()?;
            let mut length: Option<usize> = None;
            let mut close = false;
            for line in head.split(|&b| b == b'\n').skip(1) {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    continue;
                };
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"content-length") {
                    length = Some(std::str::from_utf8(value)?.parse()?);
                } else if name.eq_ignore_ascii_case(b"connection") {
                    close = value.eq_ignore_ascii_case(b"close");
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    bail!("chunked responses are not supported");
                }
            }
            let total = end + 4 + length.unwrap_or(0);
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok((status, close));
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ------------------------------------------------------------------ run

#[derive(Default)]
struct Stats {
    /// Latency (µs) of measured requests: from the scheduled time in fixed-rate mode.
    latency_us: Vec<u32>,
    /// Send → response (µs) of measured requests.
    service_us: Vec<u32>,
    status: BTreeMap<u16, u64>,
    errors: u64,
    /// Requests of the measured window (sent at or after the warmup).
    measured: u64,
    measured_ok: u64,
    /// All requests, warmup included.
    sent: u64,
    answered_200: Vec<u32>,
    /// Requests written but never answered (connection error or cut at the end).
    unanswered: u64,
    /// Connections (re)opened during the run (the server closed one, or an error).
    connects: u64,
    /// The worst latencies: (µs since the start of the run of the scheduled/sent time, latency µs).
    worst: Vec<(u64, u32)>,
}

struct Shared {
    pool: Pool,
    addr: String,
    next: AtomicUsize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Fixed-rate: slots due so far, by the pacer.
    due: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>>,
    closed_loop: bool,
    exhausted: AtomicBool,
    late_schedule_us: AtomicU64,
}

async fn connect(addr: &str) -> Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connection(shared: Arc<Shared>, mut stream: Option<TcpStream>) -> Stats {
    let mut st = Stats::default();
    let mut buf = Vec::with_capacity(8192);
    loop {
        // The next request and its scheduled time.
        let (i, scheduled) = if shared.closed_loop {
            if Instant::now() >= shared.end {
                break;
            }
            let i = shared.next.fetch_add(1, Ordering::Relaxed);
            if i >= shared.pool.index.len() {
                shared.exhausted.store(true, Ordering::Relaxed);
                break;
            }
            (i, None)
        } else {
            let mut rx = shared.due.lock().await;
            match rx.recv().await {
                Some((i, at)) => (i, Some(at)),
                None => break,
            }
        };
        if stream.is_none() {
            match connect(&shared.addr).await {
                Ok(s) => {
                    st.connects += 1;
                    stream = Some(s);
                }
                Err(_) => {
                    st.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected");
        let sent_at = Instant::now();
        let from = scheduled.unwrap_or(sent_at);
        let measured = from >= shared.measure_from;
        st.sent += 1;
        let result = async {
            s.write_all(shared.pool.request(i)).await?;
            read_response(s, &mut buf).await
        }
        .await;
        let done = Instant::now();
        match result {
            Ok((code, close)) => {
                *st.status.entry(code).or_default() += 1;
                if code == 200 {
                    st.answered_200.push(i as u32);
                }
                if measured {
                    st.measured += 1;
                    if code == 200 {
                        st.measured_ok += 1;
                    }
                    let l = us(done - from);
                    st.latency_us.push(l);
                    if st.worst.len() < 8 || l > st.worst[0].1 {
                        if st.worst.len() >= 8 {
                            st.worst.remove(0);
                        }
                        st.worst.push((
                            from.saturating_duration_since(shared.start).as_micros() as u64,
                            l,
                        ));
                        st.worst.sort_unstable_by_key(|w| w.1);
                    }
                    st.service_us.push(us(done - sent_at));
                }
                if close {
                    stream = None;
                    buf.clear();
                }
            }
            Err(_) => {
                st.errors += 1;
                st.unanswered += 1;
                if measured {
                    st.measured += 1;
                }
                stream = None;
                buf.clear();
            }
        }
    }
    st
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Fixed-rate pacer: a plain thread with precise sleeps (tokio's timer ticks in whole ms).
fn pacer(
    tx: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
    start: Instant,
    rate: f64,
    total: usize,
    late: &AtomicU64,
) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut i = 0usize;
    while i < total {
        let now = Instant::now();
        let mut sched = start + interval.mul_f64(i as f64);
        while sched <= now && i < total {
            if tx.send((i, sched)).is_err() {
                return;
            }
            late.fetch_max(us(now - sched) as u64, Ordering::Relaxed);
            i += 1;
            sched = start + interval.mul_f64(i as f64);
        }
        if i < total {
            let now = Instant::now();
            if sched > now {
                std::thread::sleep(sched - now);
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

// ------------------------------------------------------------------ /proc

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process (all threads), in seconds (USER_HZ = 100).
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// (busy without softirq, total) jiffies of the whole machine, from the first line of /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user). Softirq time
    // is left out of "busy": on loopback it is mostly this benchmark's own TCP traffic, which no
    // process is charged for, and would read as "other processes".
    let total: u64 = f.iter().take(8).sum();
    let not_busy = f.get(3)? + f.get(4).unwrap_or(&0) + f.get(6).unwrap_or(&0);
    Some((total - not_busy, total))
}

fn self_pid() -> u32 {
    std::process::id()
}

// ------------------------------------------------------------------ redis check

async fn stream_entries(url: &str, prefix: &str, channel: &str) -> Result<(u64, usize)> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{prefix}:{{{channel}}}:in:*");
    let mut cursor: u64 = 0;
    let mut keys: Vec<String> = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    let mut total = 0u64;
    for k in &keys {
        let n: u64 = redis::cmd("XLEN").arg(k).query_async(&mut conn).await?;
        total += n;
    }
    Ok((total, keys.len()))
}

// ------------------------------------------------------------------ main

fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

fn main() -> Result<()> {
    let setup = Setup::from_args(Args::parse())?;
    let args = &setup.args;
    let pool = setup.build_pool();
    let runtime = setup.runtime()?;
    let redis_before = setup.redis_entries(&runtime, "before")?;

    let sampler = RssSampler::start(args.server_pid);
    let before = Snapshot::before(args);
    let mut load = Load::start(&setup, pool);
    let wall = load.drive(&runtime, args.connections)?;
    let finished = Instant::now();
    let peak_rss_kb = sampler.stop();
    load.join_pacer();
    let after = Snapshot::after(args);

    let totals = Totals::merge(load.take_stats(), &load.shared.pool);
    let redis_after = setup.redis_entries_after(&runtime)?;
    let report = Report {
        args,
        shared: &load.shared,
        secs: wall.as_secs_f64().max(1e-9),
        rss: Rss::new(&before, peak_rss_kb, &after),
        cpu: CpuUse::between(&before, &after, finished.duration_since(load.shared.start)),
        redis: RedisCheck::new(redis_before, redis_after, totals.expected_events),
        totals,
    };
    report.print();
    if report.redis.as_ref().is_some_and(|r| !r.ok()) {
        std::process::exit(4);
    }
    Ok(())
}

/// The checked flags and what follows from them, fixed before any request is built.
struct Setup {
    args: Args,
    /// `host:port` of `--url`.
    addr: String,
    path: String,
    /// Requests to pre-generate.
    requests: usize,
}

impl Setup {
    /// Refuses flags that would give an empty, unpaced or unindexable run.
    fn from_args(args: Args) -> Result<Self> {
        if args.duration <= 0.0 || args.connections == 0 {
            bail!("--duration and --connections must be positive");
        }
        if let Some(r) = args.rate {
            if r.is_nan() || r <= 0.0 {
                bail!("--rate must be positive");
            }
        }
        let (addr, path) = parse_url(&args.url)?;
        let total_secs = args.duration + args.warmup;
        let requests = args.max_requests.unwrap_or(match args.rate {
            Some(r) => (r * total_secs).ceil() as usize,
            None => (70_000.0 * total_secs).ceil() as usize,
        });
        // The pool indexes requests with u32.
        if requests == 0 || requests > u32::MAX as usize {
            bail!("request count out of range: {requests}");
        }
        Ok(Self {
            args,
            addr,
            path,
            requests,
        })
    }

    /// Builds and signs every request up front (so the timed loop only writes bytes) and says
    /// what was built.
    fn build_pool(&self) -> Pool {
        let t = Instant::now();
        let pool = build_pool(&self.args, &self.addr, &self.path, self.requests);
        let gen_secs = t.elapsed().as_secs_f64();
        let events_total: u64 = pool.index.iter().map(|r| u64::from(r.4)).sum();
        let originals = pool
            .index
            .iter()
            .enumerate()
            .filter(|(i, r)| r.3 as usize == *i)
            .count();
        eprintln!(
            "loadgen: {} requests pre-generated and signed in {:.1}s ({} distinct, {} events, avg body {} B, {} contacts)",
            pool.index.len(),
            gen_secs,
            originals,
            events_total,
            pool.body_bytes / pool.index.len() as u64,
            self.args.contacts
        );
        pool
    }

    fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.args.threads.max(1))
            .enable_all()
            .build()?)
    }

    /// `--check-redis`: (stream entries, streams) now; `when` names the moment in errors.
    fn redis_entries(
        &self,
        runtime: &tokio::runtime::Runtime,
        when: &str,
    ) -> Result<Option<(u64, usize)>> {
        let Some(url) = &self.args.check_redis else {
            return Ok(None);
        };
        runtime
            .block_on(stream_entries(url, &self.args.prefix, &self.args.channel))
            .with_context(|| format!("--check-redis {when} the run"))
            .map(Some)
    }

    /// Like `redis_entries`, after a pause that lets in-flight pipelines land (only matters if
    /// requests were abandoned).
    fn redis_entries_after(
        &self,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Option<(u64, usize)>> {
        if self.args.check_redis.is_some() {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.redis_entries(runtime, "after")
    }
}

/// The timed phase: the state the connections share, the pacer thread, their results.
struct Load {
    shared: Arc<Shared>,
    pacer: Option<std::thread::JoinHandle<()>>,
    results: Arc<Mutex<Vec<Stats>>>,
}

impl Load {
    /// Fixes the start 20 ms ahead (time to open the connections) and, in fixed-rate mode,
    /// starts the pacer.
    fn start(setup: &Setup, pool: Pool) -> Self {
        let args = &setup.args;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now() + Duration::from_millis(20);
        let shared = Arc::new(Shared {
            pool,
            addr: setup.addr.clone(),
            next: AtomicUsize::new(0),
            start,
            measure_from: start + Duration::from_secs_f64(args.warmup),
            end: start + Duration::from_secs_f64(args.duration + args.warmup),
            due: tokio::sync::Mutex::new(rx),
            closed_loop: args.rate.is_none(),
            exhausted: AtomicBool::new(false),
            late_schedule_us: AtomicU64::new(0),
        });
        // Closed loop: `tx` is dropped here; nothing reads `rx`.
        let pacer = args.rate.map(|rate| {
            let shared = shared.clone();
            let total = shared.pool.index.len();
            std::thread::spawn(move || {
                pacer(tx, shared.start, rate, total, &shared.late_schedule_us)
            })
        });
        Self {
            shared,
            pacer,
            results: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Opens the connections before the clock starts, runs one task per connection and waits
    /// for them (at most 10 s past the end); returns the length of the measured window.
    fn drive(&self, runtime: &tokio::runtime::Runtime, connections: usize) -> Result<Duration> {
        let shared = &self.shared;
        runtime.block_on(async {
            let mut conns = Vec::with_capacity(connections);
            for _ in 0..connections {
                conns.push(connect(&shared.addr).await);
            }
            let failed = conns.iter().filter(|c| c.is_err()).count();
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|c| {
                    let shared = shared.clone();
                    let results = self.results.clone();
                    // A task whose socket failed (or is closed later) reconnects by itself.
                    tokio::spawn(async move {
                        let st = connection(shared, c.ok()).await;
                        results.lock().expect("results").push(st);
                    })
                })
                .collect();
            if failed == connections {
                bail!("cannot connect to {}", shared.addr);
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(shared.start)).await;
            // Bounded: tasks still waiting for a response this long after the end are abandoned.
            let deadline = shared.end + Duration::from_secs(10);
            for t in tasks {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, t).await.is_err() {
                    break;
                }
            }
            Ok(shared.end.min(Instant::now()).max(shared.measure_from) - shared.measure_from)
        })
    }

    fn join_pacer(&mut self) {
        if let Some(p) = self.pacer.take() {
            let _ = p.join();
        }
    }

    /// The stats of the connections that finished (abandoned ones are missing).
    fn take_stats(&self) -> Vec<Stats> {
        std::mem::take(&mut *self.results.lock().expect("results"))
    }
}

// ------------------------------------------------------------------ measurement

/// Samples the server's VmRSS every 100 ms: VmHWM also counts what happened before the run.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let thread = pid.map(|pid| {
            let stop = stop.clone();
            let peak = peak_kb.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = proc_status_kb(pid, "VmRSS:") {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        Self {
            stop,
            peak_kb,
            thread,
        }
    }

    /// Stops sampling; returns the peak (0 without `--server-pid`).
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread {
            let _ = t.join();
        }
        self.peak_kb.load(Ordering::Relaxed)
    }
}

/// /proc readings taken just before and just after the timed phase.
struct Snapshot {
    rss_kb: Option<u64>,
    /// Only read after the run.
    hwm_kb: Option<u64>,
    machine: Option<(u64, u64)>,
    cpu: CpuSecs,
}

/// CPU seconds used so far by (server, redis, this process).
type CpuSecs = (Option<f64>, Option<f64>, Option<f64>);

impl Snapshot {
    fn before(args: &Args) -> Self {
        let rss_kb = args.server_pid.and_then(|p| proc_status_kb(p, "VmRSS:"));
        let machine = machine_jiffies();
        let cpu = cpu_secs(args);
        Self {
            rss_kb,
            hwm_kb: None,
            machine,
            cpu,
        }
    }

    /// CPU counters first, so they end as close to the run's end as possible.
    fn after(args: &Args) -> Self {
        let machine = machine_jiffies();
        let cpu = cpu_secs(args);
        let hwm_kb = args.server_pid.and_then(|p| proc_status_kb(p, "VmHWM:"));
        let rss_kb = args.server_pid.and_then(|p| proc_status_kb(p, "VmRSS:"));
        Self {
            rss_kb,
            hwm_kb,
            machine,
            cpu,
        }
    }
}

fn cpu_secs(args: &Args) -> CpuSecs {
    (
        args.server_pid.and_then(proc_cpu_secs),
        args.redis_pid.and_then(proc_cpu_secs),
        proc_cpu_secs(self_pid()),
    )
}

/// Cores busy on average over the run; "other" is what the machine did beside the three
/// processes, so a busy machine can be told from a slow server.
struct CpuUse {
    server: Option<f64>,
    redis: Option<f64>,
    loadgen: Option<f64>,
    machine: Option<f64>,
    other: Option<f64>,
    ncpu: f64,
}

impl CpuUse {
    fn between(before: &Snapshot, after: &Snapshot, run: Duration) -> Self {
        let cpu = |b: Option<f64>, a: Option<f64>| match (b, a) {
            (Some(b), Some(a)) => Some((a - b) / run.as_secs_f64()),
            _ => None,
        };
        let server = cpu(before.cpu.0, after.cpu.0);
        let redis = cpu(before.cpu.1, after.cpu.1);
        let loadgen = cpu(before.cpu.2, after.cpu.2);
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine = match (before.machine, after.machine) {
            (Some(b), Some(a)) if a.1 > b.1 => Some((a.0 - b.0) as f64 / (a.1 - b.1) as f64 * ncpu),
            _ => None,
        };
        let other = machine.map(|m| {
            (m - server.unwrap_or(0.0) - redis.unwrap_or(0.0) - loadgen.unwrap_or(0.0)).max(0.0)
        });
        Self {
            server,
            redis,
            loadgen,
            machine,
            other,
            ncpu,
        }
    }
}

// ------------------------------------------------------------------ report

/// Every connection's `Stats` added up, latencies sorted for the percentiles.
struct Totals {
    latency_us: Vec<u32>,
    service_us: Vec<u32>,
    /// Only the codes that occurred.
    status: BTreeMap<u16, u64>,
    errors: u64,
    measured: u64,
    measured_ok: u64,
    sent: u64,
    unanswered: u64,
    connects: u64,
    /// The five worst (µs since the start, latency µs), worst first.
    worst: Vec<(u64, u32)>,
    /// Events of the distinct POSTs answered 200 at least once: what Redis must have gained.
    expected_events: u64,
    /// Connections that finished in time (the others were abandoned).
    finished_tasks: usize,
}

impl Totals {
    fn merge(stats: Vec<Stats>, pool: &Pool) -> Self {
        let mut t = Self {
            latency_us: Vec::new(),
            service_us: Vec::new(),
            status: BTreeMap::new(),
            errors: 0,
            measured: 0,
            measured_ok: 0,
            sent: 0,
            unanswered: 0,
            connects: 0,
            worst: Vec::new(),
            expected_events: 0,
            finished_tasks: stats.len(),
        };
        // By original request: a re-sent duplicate enqueues nothing new.
        let mut accepted = vec![false; pool.index.len()];
        for st in stats {
            t.latency_us.extend(st.latency_us);
            t.service_us.extend(st.service_us);
            for (k, v) in st.status {
                *t.status.entry(k).or_default() += v;
            }
            t.errors += st.errors;
            t.measured += st.measured;
            t.measured_ok += st.measured_ok;
            t.sent += st.sent;
            t.unanswered += st.unanswered;
            t.connects += st.connects;
            t.worst.extend(st.worst);
            for i in st.answered_200 {
                let orig = pool.index[i as usize].3 as usize;
                accepted[orig] = true;
            }
        }
        t.status.retain(|_, v| *v > 0);
        t.expected_events = accepted
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| u64::from(pool.index[i].4))
            .sum();
        t.latency_us.sort_unstable();
        t.worst.sort_unstable_by_key(|w| std::cmp::Reverse(w.1));
        t.worst.truncate(5);
        t.service_us.sort_unstable();
        t
    }
}

/// p50, p90, p99, p99.9 and max of sorted µs values, in ms.
fn summary(sorted: &[u32]) -> [f64; 5] {
    let [p50, p90, p99, p999] = [50.0, 90.0, 99.0, 99.9].map(|p| percentile(sorted, p));
    let max = sorted.last().map_or(0.0, |&m| f64::from(m) / 1000.0);
    [p50, p90, p99, p999, max]
}

/// The server's memory in kB (`None`, peak 0, without `--server-pid`).
struct Rss {
    before: Option<u64>,
    peak_sampled: u64,
    after: Option<u64>,
    hwm: Option<u64>,
}

impl Rss {
    fn new(before: &Snapshot, peak_sampled: u64, after: &Snapshot) -> Self {
        Self {
            before: before.rss_kb,
            peak_sampled,
            after: after.rss_kb,
            hwm: after.hwm_kb,
        }
    }
}

/// `--check-redis`: stream entries added during the run against the events answered 200.
struct RedisCheck {
    before: u64,
    after: u64,
    streams: usize,
    expected: u64,
}

impl RedisCheck {
    fn new(
        before: Option<(u64, usize)>,
        after: Option<(u64, usize)>,
        expected: u64,
    ) -> Option<Self> {
        let ((before, _), (after, streams)) = (before?, after?);
        Some(Self {
            before,
            after,
            streams,
            expected,
        })
    }

    fn new_entries(&self) -> u64 {
        self.after - self.before
    }

    /// Every 200 enqueued, and only once.
    fn ok(&self) -> bool {
        self.new_entries() == self.expected
    }
}

/// Everything printed at the end: the human report on stderr, `--json` on stdout.
struct Report<'a> {
    args: &'a Args,
    /// For the pacer's lateness, the exhausted flag and the pool size.
    shared: &'a Shared,
    /// Length of the measured window.
    secs: f64,
    totals: Totals,
    rss: Rss,
    cpu: CpuUse,
    redis: Option<RedisCheck>,
}

impl Report<'_> {
    fn print(&self) {
        let mut h = String::new();
        self.write_traffic(&mut h);
        self.write_latency(&mut h);
        self.write_notes(&mut h);
        self.write_resources(&mut h);
        eprint!("{h}");
        if self.args.json {
            println!("{}", self.json());
        }
    }

    /// The run's settings, what was sent and how it was answered.
    fn write_traffic(&self, h: &mut String) {
        let (args, t, secs) = (self.args, &self.totals, self.secs);
        let mode = match args.rate {
            Some(r) => format!("fixed-rate {r}/s"),
            None => "closed-loop".to_string(),
        };
        let _ = writeln!(
            h,
            "== {}{} | {} connections, {:.1}s measured (+{:.1}s warmup) -> {}",
            if args.label.is_empty() {
                String::new()
            } else {
                format!("[{}] ", args.label)
            },
            mode,
            args.connections,
            secs,
            args.warmup,
            args.url
        );
        let _ = writeln!(
            h,
            "requests: {} sent in total, {} in the measured window ({} answered 200) | {:.0} req/s, {:.0} OK req/s",
            t.sent,
            t.measured,
            t.measured_ok,
            t.measured as f64 / secs,
            t.measured_ok as f64 / secs
        );
        let codes: Vec<String> = t.status.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            h,
            "responses by status: {{{}}}, transport errors: {}, unanswered: {}",
            codes.join(", "),
            t.errors,
            t.unanswered
        );
        if t.connects > 0 {
            let _ = writeln!(h, "connections reopened during the run: {}", t.connects);
        }
    }

    /// The slowest requests and the percentiles; fixed-rate runs add the service time and the
    /// pacer's lateness (latency the generator, not the server, caused).
    fn write_latency(&self, h: &mut String) {
        let slowest: Vec<String> = self
            .totals
            .worst
            .iter()
            .map(|(at, l)| {
                format!(
                    "{:.1} ms at t={:.3}s",
                    f64::from(*l) / 1000.0,
                    *at as f64 / 1e6
                )
            })
            .collect();
        let _ = writeln!(h, "slowest: {}", slowest.join(", "));
        let name = if self.args.rate.is_some() {
            "latency from scheduled send"
        } else {
            "latency"
        };
        let l = summary(&self.totals.latency_us);
        let _ = writeln!(
            h,
            "{name} ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l[0], l[1], l[2], l[3], l[4]
        );
        if self.args.rate.is_some() {
            let s = summary(&self.totals.service_us);
            let _ = writeln!(
                h,
                "service time (send -> response) ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                s[0], s[1], s[2], s[3], s[4]
            );
            let _ = writeln!(
                h,
                "pacer: worst lateness {} us",
                self.shared.late_schedule_us.load(Ordering::Relaxed)
            );
        }
    }

    /// Why the figures may cover less than was asked for.
    fn write_notes(&self, h: &mut String) {
        if self.shared.exhausted.load(Ordering::Relaxed) {
            let _ = writeln!(
                h,
                "NOTE: all {} pre-generated requests were used before the time was up (raise --max-requests)",
                self.shared.pool.index.len()
            );
        }
        let connections = self.args.connections;
        if self.totals.finished_tasks < connections {
            let _ = writeln!(
                h,
                "NOTE: {} connections still waited for a response 10 s after the end (abandoned)",
                connections - self.totals.finished_tasks
            );
        }
    }

    /// Memory and CPU of the processes involved, and the Redis check.
    fn write_resources(&self, h: &mut String) {
        let (rss, cpu) = (&self.rss, &self.cpu);
        if let Some(pid) = self.args.server_pid {
            let _ = writeln!(
                h,
                "server pid {pid}: VmRSS before {} MB, peak sampled {} MB, after {} MB, VmHWM {} MB",
                mb(rss.before),
                mb(Some(rss.peak_sampled)),
                mb(rss.after),
                mb(rss.hwm)
            );
        }
        let cores = |c: Option<f64>| c.map_or("n/a".to_string(), |c| format!("{c:.2}"));
        let _ = writeln!(
            h,
            "CPU (cores busy, avg over the run): server {}, redis {}, loadgen {}; whole machine {} of {} (without softirq), other processes {}",
            cores(cpu.server),
            cores(cpu.redis),
            cores(cpu.loadgen),
            cores(cpu.machine),
            cpu.ncpu,
            cores(cpu.other)
        );
        if cpu.other.is_some_and(|o| o > 0.15) {
            let _ = writeln!(
                h,
                "WARNING: other processes used {} cores during the run: the figures understate this server",
                cores(cpu.other)
            );
        }
        if let Some(r) = &self.redis {
            let _ = writeln!(
                h,
                "redis check: {} new stream entries over {} streams; events in POSTs answered 200: {} -> {}",
                r.new_entries(),
                r.streams,
                r.expected,
                if r.ok() { "OK, every 200 is enqueued (once)" } else { "MISMATCH" }
            );
        }
    }

    fn json(&self) -> serde_json::Value {
        let (args, t, rss, cpu, secs) = (self.args, &self.totals, &self.rss, &self.cpu, self.secs);
        let pct = |v: &[f64]| serde_json::json!({"p50": v[0], "p90": v[1], "p99": v[2], "p99_9": v[3], "max": v[4]});
        let redis_json = self.redis.as_ref().map_or(serde_json::Value::Null, |r| {
            serde_json::json!({
                "streams": r.streams, "entries_before": r.before, "entries_after": r.after,
                "new_entries": r.new_entries(), "expected": r.expected, "ok": r.ok(),
            })
        });
        serde_json::json!({
            "label": args.label,
            "mode": if args.rate.is_some() { "fixed-rate" } else { "closed-loop" },
            "rate": args.rate,
            "connections": args.connections,
            "measured_secs": secs,
            "warmup_secs": args.warmup,
            "sent_total": t.sent,
            "measured_requests": t.measured,
            "measured_ok": t.measured_ok,
            "requests_per_sec": t.measured as f64 / secs,
            "ok_per_sec": t.measured_ok as f64 / secs,
            "status": t.status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "transport_errors": t.errors,
            "unanswered": t.unanswered,
            "reconnects": t.connects,
            "latency_ms": pct(&summary(&t.latency_us)),
            "service_time_ms": pct(&summary(&t.service_us)),
            "pool_exhausted": self.shared.exhausted.load(Ordering::Relaxed),
            "events_in_200_posts": t.expected_events,
            "server_rss_kb": {"before": rss.before, "peak_sampled": args.server_pid.map(|_| rss.peak_sampled), "after": rss.after, "vmhwm": rss.hwm},
            "cpu_cores": {"server": cpu.server, "redis": cpu.redis, "loadgen": cpu.loadgen, "machine": cpu.machine, "other": cpu.other, "cpus": cpu.ncpu},
            "redis_check": redis_json,
        })
    }
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}
