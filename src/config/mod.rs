//! The configuration file: one TOML file, `${VAR}` expanded from the environment.
//!
//! Every invalid value is reported with the line and the key it sits on, so an operator can
//! fix a file without guessing. Secrets are read from the environment (`${VAR}`); they are
//! wrapped in [`Secret`], whose `Debug` never prints them.

use crate::channel::ChannelKind;
use serde::Deserialize;
use std::fmt;
use std::path::Path;

mod build;
pub mod defaults;
mod raw;

use build::Ctx;
use raw::RawFile;

/// A secret value: usable, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Missing { path: String, message: String },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    /// `None`: the embedded in-memory queue (one process).
    pub redis: Option<RedisConfig>,
    pub meta: MetaConfig,
    pub channels: Vec<ChannelConfig>,
    pub bot: BotConfig,
    pub worker: WorkerConfig,
    pub sending: SendingConfig,
    /// `[media]`: downloads of inbound media and uploads for sending.
    pub media: MediaConfig,
    /// `[api]`: the send API. `None` (no table): the `/v1` routes answer 404.
    pub api: Option<ApiConfig>,
}

/// `[api]`: who may use the send API, and what a broadcast skips.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Every key accepted in `Authorization: Bearer <key>` (several during a rotation).
    pub keys: Vec<Secret>,
    /// How long an `Idempotency-Key` is remembered (default 86400: one day).
    pub idempotency_ttl_secs: u64,
    /// A customer whose last message is one of these words (any case, trimmed) has opted out:
    /// broadcasts skip them (default STOP, UNSUBSCRIBE, CANCEL, QUIT, END, STOPALL, OPTOUT).
    pub opt_out_words: Vec<String>,
}

/// `[sending]`: how the senders wait and retry. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendingConfig {
    /// Timeout of one HTTP request to the Graph API or the gateway (default 15000).
    pub http_timeout_ms: Option<u64>,
    /// HTTP attempts per reply for retryable errors (default 4).
    pub attempts: Option<u32>,
    /// First retry delay for transient errors and rate limits, doubled each time (default 500).
    pub retry_base_ms: Option<u64>,
    /// First retry delay after Meta's pair rate limit (131056), ×4 each time (default 1000).
    pub pair_retry_base_ms: Option<u64>,
    /// How long a reply whose earlier send may have left before a crash waits for its status
    /// before it is sent again (default 15000).
    pub inflight_wait_ms: Option<u64>,
    /// Ignored: it bounded the rate wait of a direct send, which is gone. Accepted so that
    /// existing files still load; a lane waits at most 1 s for a slot, a further one sets the
    /// lane aside until then.
    pub max_rate_wait_ms: Option<u64>,
    /// Customer lanes one process sends on at once (default 64).
    pub lanes: Option<usize>,
    /// How often a sender looks for lanes made ready by other processes (default 50).
    pub poll_ms: Option<u64>,
    /// How long a sender holds a customer's lane without a sign of life before another
    /// process takes it over (default 30000; renewed at every message).
    pub lane_lease_ms: Option<u64>,
    /// How long the lifecycle of each outbound message is kept (default 2592000: 30 days).
    pub outbox_ttl_secs: Option<u64>,
}

/// `[media]`: how inbound media is fetched, kept and uploads are held. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaConfig {
    /// Largest inbound file a bot or the media route downloads (default 104857600: 100 MB,
    /// Meta's largest document); a bigger one is refused before its body is read.
    pub max_download_bytes: Option<u64>,
    /// Timeout of one whole media download or upload (default 60000).
    pub timeout_ms: Option<u64>,
    /// How long a Personal channel keeps an uploaded file for sending (default 86400): WAHA
    /// has no media store, so coexist holds the file and sends it inline.
    pub upload_ttl_secs: Option<u64>,
    /// `store = "dir:<path>"`: the worker keeps a copy of every inbound media file under
    /// `<path>` before the bot runs (Meta's download URLs expire within minutes), and puts the
    /// file's path in the event (`message.media.stored_path`). `None`: nothing is kept.
    pub store: Option<std::path::PathBuf>,
    /// Days a kept copy stays in `store` before the worker deletes it (default 30).
    pub retention_days: Option<u64>,
}

impl MediaConfig {
    pub fn max_download_bytes(&self) -> u64 {
        self.max_download_bytes
            .unwrap_or(defaults::MAX_DOWNLOAD_BYTES)
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.timeout_ms.unwrap_or(defaults::MEDIA_TIMEOUT_MS).max(1),
        )
    }

    pub fn retention(&self) -> std::time::Duration {
        let days = self
            .retention_days
            .unwrap_or(defaults::MEDIA_RETENTION_DAYS)
            .max(1);
        std::time::Duration::from_secs(days.saturating_mul(86_400))
    }

    pub fn upload_ttl_secs(&self) -> u64 {
        self.upload_ttl_secs
            .unwrap_or(defaults::UPLOAD_TTL_SECS)
            .max(1)
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    /// HTTP worker threads; `None`: see [`ServerConfig::http_workers`].
    pub workers: Option<usize>,
}

impl ServerConfig {
    /// HTTP worker threads: as configured, else one per core — less one when Redis runs on this
    /// machine (a local URL), so the two do not fight over every core. On the 2-core bench
    /// machine one worker beside a local Redis serves ~5 % more webhooks than two
    /// (BENCHMARKS.md).
    pub fn http_workers(&self, redis: Option<&RedisConfig>) -> usize {
        if let Some(n) = self.workers {
            return n.max(1);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let is_local = |url: &str| {
            url.starts_with("unix:")
                || url.starts_with("redis+unix:")
                || ["//127.0.0.1", "//localhost", "//[::1]"]
                    .iter()
                    .any(|h| url.contains(h))
        };
        let local_redis = redis.is_some_and(|r| match r.cluster.is_empty() {
            true => is_local(r.url.expose()),
            false => r.cluster.iter().any(|u| is_local(u.expose())),
        });
        if local_redis {
            cores.saturating_sub(1).max(1)
        } else {
            cores
        }
    }
}

#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// One node (ignored when `cluster` is set).
    pub url: Secret,
    /// Redis Cluster seed nodes; empty: the single node at `url`.
    pub cluster: Vec<Secret>,
    /// What a 200 (ingress) or 202 (send API) waits for.
    pub durability: Durability,
    /// `durability = "replicated"`: how long to wait for a replica before answering 503.
    pub replication_timeout_ms: u64,
    pub prefix: String,
    /// How long an event id is remembered for dedupe. Meta retries for up to 7 days.
    pub dedupe_ttl_secs: u64,
    /// Approximate cap on each inbound stream (`MAXLEN ~`), 0 = none.
    pub stream_maxlen: u64,
}

/// `[redis] durability`: what must hold a write before ingress answers 200 (and the send API
/// 202).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// The node that took the write said yes (its AOF fsync policy decides the rest).
    #[default]
    Local,
    /// The node that took the write and at least one replica (`WAIT 1 <timeout>`).
    Replicated,
}

impl RedisConfig {
    /// Where to connect: the cluster seeds when configured, else the one node.
    pub fn endpoint(&self) -> crate::redis_conn::Endpoint {
        use crate::redis_conn::Endpoint;
        if self.cluster.is_empty() {
            Endpoint::Single(self.url.expose().to_string())
        } else {
            Endpoint::Cluster(
                self.cluster
                    .iter()
                    .map(|s| s.expose().to_string())
                    .collect(),
            )
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct MetaConfig {
    pub verify_token: Option<Secret>,
    /// Every secret accepted for `X-Hub-Signature-256` (several during a rotation).
    pub app_secrets: Vec<Secret>,
    /// Graph API base URL including the version, e.g. `https://graph.facebook.com/v23.0`.
    pub graph_api_url: String,
}

#[derive(Clone, Debug)]
pub struct ChannelConfig {
    pub id: String,
    pub kind: ChannelKind,
    pub partitions: u32,
    // WABA
    pub phone_number_id: Option<String>,
    pub access_token: Option<Secret>,
    pub coexistence: bool,
    // Personal
    pub gateway: Option<String>,
    pub session: Option<String>,
    pub webhook_secrets: Vec<Secret>,
    pub api_url: Option<String>,
    pub api_key: Option<Secret>,
    // Sending
    pub send_rate_per_second: u32,
    /// Minimum gap between two messages to one contact (Meta pair rate; Personal per-chat gap).
    pub pair_gap_ms: u64,
    /// Personal channels: at most this many messages per minute on the channel.
    pub max_per_minute: u32,
    /// Personal channels: random extra delay up to this many ms before each send.
    pub jitter_ms: u64,
    /// WABA: unique customers reached outside a service window in a moving 24 h (Meta's
    /// messaging limit tier); 0 = unlimited.
    pub messaging_limit_per_day: u32,
    /// WABA channels with the same portfolio share one messaging-limit counter (Meta counts
    /// per business portfolio); `None`: the channel counts alone.
    pub portfolio: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BotMode {
    /// Reply with the text received (the quick start's bot).
    Echo,
    /// POST each event to `url` (any language, any framework).
    Forward,
    /// Handle nothing but state and windows (no replies).
    None,
}

#[derive(Clone, Debug)]
pub struct BotConfig {
    pub mode: BotMode,
    pub url: Option<String>,
    pub secret: Option<Secret>,
    pub timeout_ms: u64,
    /// How long an echo (a human answering from the phone) pauses the bot for that conversation.
    pub handover_secs: u64,
    /// A forward bot's answer larger than this is refused (the event is dead-lettered, nothing
    /// is sent). Default 1 MiB.
    pub max_answer_bytes: usize,
    /// A forward bot's answer asking for more replies than this to one event is refused the
    /// same way. Default 20.
    pub max_replies: usize,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    /// Partitions handled at once by one worker process.
    pub concurrency: usize,
    /// Lead times of `window.expiring` timers, in minutes before the window closes.
    pub window_expiring_minutes: Vec<u64>,
    /// Conversation state expires after this much inactivity.
    pub conversation_ttl_secs: u64,
    pub block_ms: u64,
    /// `work` serves `/metrics` and `/healthz` here when set (e.g. "127.0.0.1:9101").
    pub metrics_listen: Option<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses `text`; `env` looks up variables for `${VAR}` (injected so tests need no globals).
    pub fn from_toml(
        text: &str,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let ctx = Ctx { text, path, env };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| ctx.line(s.start)).unwrap_or(1);
            ConfigError::Invalid {
                path: path.into(),
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        ctx.build(raw)
    }

    pub fn channel(&self, id: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.id == id)
    }

    /// A config with no channels and the embedded queue: what `parse` uses without `--config`.
    pub fn empty() -> Config {
        Ctx {
            text: "",
            path: "",
            env: &|_| None,
        }
        .build(RawFile::default())
        .expect("the empty config is valid")
    }
}

/// Expands `${NAME}` and `${NAME:-default}`. Returns `Ok(None)` when a variable without a
/// default is unset, `Err` for malformed syntax.
pub fn expand_vars(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed \"${{\" in {input:?}"));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{:?} is not a valid variable name", name));
        }
        match env(name)
            .filter(|v| !v.is_empty())
            .or_else(|| default.map(str::to_string))
        {
            Some(v) => out.push_str(&v),
            None => return Ok(None),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "META_APP_SECRET" => Some("s3cret".into()),
            "WAHA_HMAC_KEY" => Some("waha-key".into()),
            "FORWARD_SECRET" => Some("fwd".into()),
            "GRAPH_PORT" => Some("18081".into()),
            _ => None,
        }
    }

    const DESIGN_EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 4194304

[redis]
url = "redis://127.0.0.1:6379"
prefix = "cx"

[meta]
verify_token = "${META_VERIFY_TOKEN}"
app_secrets = ["${META_APP_SECRET}", "${META_APP_SECRET_PREVIOUS}"]
graph_api_url = "https://graph.facebook.com/v23.0"

[[channels]]
id = "shop-waba"
kind = "waba"
phone_number_id = "106540352242922"
access_token = "${WABA_TOKEN}"
coexistence = true
partitions = 4

[[channels]]
id = "shop-personal"
kind = "personal"
gateway = "waha"
session = "default"
webhook_secrets = ["${WAHA_HMAC_KEY}"]
api_url = "http://127.0.0.1:3000"
api_key = "${WAHA_API_KEY}"
partitions = 4

[bot]
mode = "forward"
url = "http://127.0.0.1:9000/events"
secret = "${FORWARD_SECRET}"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", &env)
    }

    #[test]
    fn media_store_is_a_dir_with_a_retention() {
        let with = |media: &str| {
            parse(&format!(
                "[meta]\napp_secrets = [\"${{META_APP_SECRET}}\"]\n\
                 [[channels]]\nid = \"p\"\nkind = \"personal\"\nwebhook_secrets = [\"${{WAHA_HMAC_KEY}}\"]\n\
                 [media]\n{media}\n"
            ))
        };
        let c = with("").unwrap();
        assert_eq!(c.media.store, None);
        assert_eq!(c.media.retention().as_secs(), 30 * 86_400);
        let c = with("store = \"dir:/var/lib/coexist/media\"\nretention_days = 2").unwrap();
        assert_eq!(
            c.media.store.as_deref(),
            Some(std::path::Path::new("/var/lib/coexist/media"))
        );
        assert_eq!(c.media.retention().as_secs(), 2 * 86_400);
        for bad in ["s3://bucket", "dir:", "/var/lib/coexist/media"] {
            let e = with(&format!("store = \"{bad}\"")).unwrap_err().to_string();
            assert!(
                e.contains("line 8") && e.contains("media.store") && e.contains("dir:<path>"),
                "{bad}: {e}"
            );
        }
        let e = with("stor = \"dir:/x\"").unwrap_err().to_string();
        assert!(e.contains("stor"), "{e}");
    }

    #[test]
    fn urls_expand_variables_and_must_be_http() {
        let with = |meta_extra: &str, channel_extra: &str| {
            parse(&format!(
                "[meta]\napp_secrets = [\"${{META_APP_SECRET}}\"]\n{meta_extra}\n\
                 [[channels]]\nid = \"p\"\nkind = \"personal\"\nwebhook_secrets = [\"${{WAHA_HMAC_KEY}}\"]\n{channel_extra}\n"
            ))
        };
        let c = with(
            "graph_api_url = \"http://127.0.0.1:${GRAPH_PORT}/v23.0/\"",
            "api_url = \"http://127.0.0.1:${GRAPH_PORT}\"",
        )
        .unwrap();
        assert_eq!(c.meta.graph_api_url, "http://127.0.0.1:18081/v23.0");
        assert_eq!(
            c.channels[0].api_url.as_deref(),
            Some("http://127.0.0.1:18081")
        );
        let e = with("graph_api_url = \"ftp://x\"", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("meta.graph_api_url") && e.contains("http"),
            "{e}"
        );
        let e = with("", "api_url = \"http://${UNSET_PORT}\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_url") && e.contains("not set"), "{e}");
    }

    #[test]
    fn design_example_loads() {
        let c = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(c.channels.len(), 2);
        assert_eq!(c.meta.app_secrets, vec![Secret::new("s3cret")]);
        assert!(c.meta.verify_token.is_none());
        let w = c.channel("shop-waba").unwrap();
        assert_eq!(
            w.send_rate_per_second, 20,
            "coexistence numbers default to 20 mps"
        );
        assert!(w.access_token.is_none(), "unset token = dry run");
        assert_eq!(
            c.channel("shop-personal").unwrap().webhook_secrets,
            vec![Secret::new("waha-key")]
        );
        assert_eq!(c.bot.mode, BotMode::Forward);
        assert_eq!(c.redis.unwrap().prefix, "cx");
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_kind_names_line_and_key() {
        let e = error_of("[meta]\napp_secrets=[\"${META_APP_SECRET}\"]\n[[channels]]\nid = \"a\"\nkind = \"wabba\"\nphone_number_id = \"1\"\n");
        assert!(e.contains("line 5"), "{e}");
        assert!(e.contains("channels[0].kind"), "{e}");
        assert!(e.contains("wabba"), "{e}");
    }

    #[test]
    fn duplicate_channel_id() {
        let e = error_of("[meta]\napp_secrets=[\"${META_APP_SECRET}\"]\n[[channels]]\nid = \"a\"\nkind = \"waba\"\nphone_number_id = \"1\"\n[[channels]]\nid = \"a\"\nkind = \"waba\"\nphone_number_id = \"2\"\n");
        assert!(
            e.contains("line 8") && e.contains("duplicate channel id"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_phone_number_id() {
        let e = error_of("[meta]\napp_secrets=[\"${META_APP_SECRET}\"]\n[[channels]]\nid = \"a\"\nkind = \"waba\"\nphone_number_id = \"1\"\n[[channels]]\nid = \"b\"\nkind = \"waba\"\nphone_number_id = \"1\"\n");
        assert!(
            e.contains("line 10") && e.contains("duplicate phone_number_id"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_session_counts_the_default_one() {
        // The first channel leaves `session` out: it is "default", like the second's.
        let e = error_of("[[channels]]\nid = \"p\"\nkind = \"personal\"\nwebhook_secrets = [\"${WAHA_HMAC_KEY}\"]\n[[channels]]\nid = \"q\"\nkind = \"personal\"\nsession = \"default\"\nwebhook_secrets = [\"${WAHA_HMAC_KEY}\"]\n");
        assert!(e.contains("line 8"), "{e}");
        assert!(e.contains("channels[1].session"), "{e}");
        assert!(e.contains("duplicate session \"default\""), "{e}");
    }

    #[test]
    fn left_out_keys_take_the_named_defaults_per_kind() {
        let c = parse("[redis]\n[meta]\napp_secrets=[\"${META_APP_SECRET}\"]\n[[channels]]\nid = \"w\"\nkind = \"waba\"\nphone_number_id = \"1\"\n[[channels]]\nid = \"p\"\nkind = \"personal\"\nwebhook_secrets = [\"${WAHA_HMAC_KEY}\"]\n").unwrap();
        let redis = c.redis.as_ref().unwrap();
        assert_eq!(redis.url.expose(), defaults::REDIS_URL);
        assert_eq!(
            redis.dedupe_ttl_secs,
            8 * 24 * 3600,
            "longer than Meta's 7 days of retries"
        );
        assert_eq!(c.server.max_body_bytes, defaults::MAX_BODY_BYTES);
        assert_eq!(c.worker.window_expiring_minutes, vec![60, 10]);
        let (w, p) = (c.channel("w").unwrap(), c.channel("p").unwrap());
        assert_eq!((w.pair_gap_ms, p.pair_gap_ms), (6_000, 3_000));
        assert_eq!(
            (w.jitter_ms, p.jitter_ms),
            (0, defaults::PERSONAL_JITTER_MS)
        );
        assert_eq!(
            p.send_rate_per_second,
            defaults::PERSONAL_SEND_RATE_PER_SECOND
        );
        assert_eq!(
            w.send_rate_per_second,
            ChannelKind::Waba.default_send_rate_per_second(false)
        );
        assert_eq!(
            (w.session.as_deref(), p.session.as_deref()),
            (None, Some("default"))
        );
        assert_eq!(
            (w.gateway.as_deref(), p.gateway.as_deref()),
            (None, Some("waha"))
        );
        let bot = &c.bot;
        assert_eq!((bot.max_answer_bytes, bot.max_replies), (1024 * 1024, 20));
    }

    #[test]
    fn missing_meta_secret() {
        let e = error_of("[meta]\napp_secrets=[\"${NOT_SET}\"]\n[[channels]]\nid = \"a\"\nkind = \"waba\"\nphone_number_id = \"1\"\n");
        assert!(
            e.contains("meta.app_secrets") && e.contains("no Meta app secret"),
            "{e}"
        );
    }

    #[test]
    fn missing_personal_secret() {
        let e = error_of("[[channels]]\nid = \"p\"\nkind = \"personal\"\n");
        assert!(e.contains("channels[0].webhook_secrets"), "{e}");
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let e = error_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n");
        assert!(e.contains("line 3") && e.contains("lisen"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = error_of("[server]\nlisten = \n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn http_workers_leave_a_core_to_a_local_redis() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = parse("[redis]\nurl = \"redis://127.0.0.1:6379\"\n").unwrap();
        assert_eq!(
            c.server.http_workers(c.redis.as_ref()),
            cores.saturating_sub(1).max(1)
        );
        let c = parse("[redis]\nurl = \"redis://redis.internal:6379\"\n").unwrap();
        assert_eq!(c.server.http_workers(c.redis.as_ref()), cores);
        let c =
            parse("[server]\nworkers = 3\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n").unwrap();
        assert_eq!(c.server.http_workers(c.redis.as_ref()), 3);
        let c = parse("").unwrap();
        assert_eq!(c.server.http_workers(None), cores);
    }

    #[test]
    fn sending_table_is_optional_and_checked() {
        assert_eq!(parse("").unwrap().sending, SendingConfig::default());
        let c = parse("[sending]\nhttp_timeout_ms = 2000\nattempts = 2\n").unwrap();
        assert_eq!(
            (c.sending.http_timeout_ms, c.sending.attempts),
            (Some(2000), Some(2))
        );
        let e = error_of("[sending]\nhttp_timeout_ms = 2000\ntimeout = 1\n");
        assert!(e.contains("line 3") && e.contains("timeout"), "{e}");
    }

    #[test]
    fn no_redis_table_means_embedded_queue() {
        assert!(parse("").unwrap().redis.is_none());
    }

    #[test]
    fn redis_cluster_seeds_durability_and_their_errors() {
        use crate::redis_conn::Endpoint;
        let c = parse("[redis]\nurl = \"redis://10.0.0.9:6379\"\n").unwrap();
        let r = c.redis.unwrap();
        assert_eq!(
            r.endpoint(),
            Endpoint::Single("redis://10.0.0.9:6379".into())
        );
        assert_eq!(r.durability, Durability::Local);
        assert_eq!(r.replication_timeout_ms, 1000);

        let c = parse(
            "[redis]\ncluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\ndurability = \"replicated\"\nreplication_timeout_ms = 250\n",
        )
        .unwrap();
        let r = c.redis.unwrap();
        assert_eq!(
            r.endpoint(),
            Endpoint::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ])
        );
        assert_eq!(r.durability, Durability::Replicated);
        assert_eq!(r.replication_timeout_ms, 250);
        assert!(!format!("{r:?}").contains("10.0.0.1"), "seeds are secrets");

        let e =
            parse("[redis]\nprefix = \"cx\"\nurl = \"redis://a:1\"\ncluster = [\"redis://b:2\"]\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("line 4") && e.contains("redis.url") && e.contains("redis.cluster"),
            "{e}"
        );
        let e = parse("[redis]\ncluster = []\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("redis.cluster"), "{e}");
        let e = parse("[redis]\ncluster = [\"10.0.0.1:7000\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("redis.cluster[0]"),
            "{e}"
        );
        let e = parse("[redis]\n\ndurability = \"replica\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("redis.durability"),
            "{e}"
        );
    }

    #[test]
    fn expansion() {
        assert_eq!(
            expand_vars("a${META_APP_SECRET}b", &env)
                .unwrap()
                .as_deref(),
            Some("as3cretb")
        );
        assert_eq!(
            expand_vars("${NOPE:-dflt}", &env).unwrap().as_deref(),
            Some("dflt")
        );
        assert_eq!(expand_vars("${NOPE}", &env).unwrap(), None);
        assert!(expand_vars("${OPEN", &env).is_err());
    }

    #[test]
    fn secrets_never_debug_print() {
        let c = parse(DESIGN_EXAMPLE).unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret") && !dbg.contains("waha-key") && !dbg.contains("fwd"),
            "{dbg}"
        );
    }

    // ---------------------------------------------------------------- [api]

    /// The tests' environment plus the send API's keys (`EMPTY_KEY` is set, to "").
    fn api_env(name: &str) -> Option<String> {
        match name {
            "COEXIST_API_KEY" => Some("key-now".into()),
            "COEXIST_API_KEY_PREVIOUS" => Some("key-before".into()),
            "EMPTY_KEY" => Some(String::new()),
            other => env(other),
        }
    }

    fn parse_api(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", &api_env)
    }

    fn api_error_of(text: &str) -> String {
        parse_api(text).unwrap_err().to_string()
    }

    #[test]
    fn without_an_api_table_the_send_api_is_off() {
        assert!(parse_api("").unwrap().api.is_none());
        assert!(parse_api(DESIGN_EXAMPLE).unwrap().api.is_none());
    }

    #[test]
    fn api_keys_come_from_the_environment_and_rotate() {
        let c = parse_api(&format!(
            "{DESIGN_EXAMPLE}\n[api]\nkeys = [\"${{COEXIST_API_KEY}}\", \"${{COEXIST_API_KEY_PREVIOUS}}\"]\n"
        ))
        .unwrap();
        let api = c.api.expect("[api] read");
        assert_eq!(
            api.keys,
            vec![Secret::new("key-now"), Secret::new("key-before")]
        );
        assert_eq!(api.idempotency_ttl_secs, 24 * 3600, "a day by default");
        assert_eq!(
            api.opt_out_words,
            defaults::OPT_OUT_WORDS.map(String::from).to_vec()
        );
        // Outside a rotation the previous key's variable is unset: that entry is skipped.
        let c = parse_api("[api]\nkeys = [\"${COEXIST_API_KEY}\", \"${NOT_SET}\"]\n").unwrap();
        assert_eq!(c.api.unwrap().keys, vec![Secret::new("key-now")]);
    }

    #[test]
    fn a_literal_api_key_is_refused_with_its_index_and_line() {
        let e =
            api_error_of("[api]\nkeys = [\n  \"${COEXIST_API_KEY}\",\n  \"sk-live-literal\",\n]\n");
        assert!(e.contains("api.keys[1]"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("${VAR}"), "says what to write instead: {e}");
        assert!(!e.contains("sk-live-literal"), "the key is not echoed: {e}");
        let e = api_error_of("[api]\nkeys = [\"sk-live-literal\"]\n");
        assert!(e.contains("api.keys[0]") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn an_api_table_with_no_key_set_is_an_error() {
        for text in [
            "[api]\nkeys = [\"${NOT_SET}\"]\n",
            "[api]\nkeys = [\"${EMPTY_KEY}\"]\n",
            "[api]\nkeys = []\n",
            "[api]\nidempotency_ttl_secs = 60\n",
        ] {
            let e = api_error_of(text);
            assert!(
                e.contains("`api.keys`") && e.contains("no API key is set"),
                "{text}: {e}"
            );
            assert!(e.contains("line 1"), "{text}: {e}");
        }
    }

    #[test]
    fn api_idempotency_ttl_and_opt_out_words_are_read_and_checked() {
        let c = parse_api(
            "[api]\nkeys = [\"${COEXIST_API_KEY}\"]\nidempotency_ttl_secs = 600\nopt_out_words = [\"STOP\", \"PARAR\"]\n",
        )
        .unwrap();
        let api = c.api.unwrap();
        assert_eq!(api.idempotency_ttl_secs, 600);
        assert_eq!(api.opt_out_words, ["STOP", "PARAR"]);
        // 0 would forget every key at once: one second at least.
        let c = parse_api("[api]\nkeys = [\"${COEXIST_API_KEY}\"]\nidempotency_ttl_secs = 0\n")
            .unwrap();
        assert_eq!(c.api.unwrap().idempotency_ttl_secs, 1);
        let e = api_error_of("[api]\nkeys = [\"${COEXIST_API_KEY}\"]\nidempotency_ttl = 600\n");
        assert!(e.contains("line 3") && e.contains("idempotency_ttl"), "{e}");
        let e = api_error_of("[api]\nkeys = \"${COEXIST_API_KEY}\"\n");
        assert!(e.contains("line 2"), "keys is a list: {e}");
        let e = api_error_of("[api]\nkeys = [\"${COEXIST_API_KEY}\"]\nidempotency_ttl_secs = -1\n");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn api_keys_never_debug_print() {
        let c =
            parse_api("[api]\nkeys = [\"${COEXIST_API_KEY}\", \"${COEXIST_API_KEY_PREVIOUS}\"]\n")
                .unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("key-now") && !dbg.contains("key-before"),
            "{dbg}"
        );
    }
}
