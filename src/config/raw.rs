//! The file's shape as serde reads it: every key optional, spans kept for error lines.

use super::SendingConfig;
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) server: RawServer,
    pub(super) redis: Option<RawRedis>,
    #[serde(default)]
    pub(super) meta: RawMeta,
    #[serde(default)]
    pub(super) channels: Vec<Spanned<RawChannel>>,
    #[serde(default)]
    pub(super) bot: Option<Spanned<RawBot>>,
    #[serde(default)]
    pub(super) worker: RawWorker,
    #[serde(default)]
    pub(super) sending: SendingConfig,
    #[serde(default)]
    pub(super) media: RawMedia,
    pub(super) api: Option<Spanned<RawApi>>,
}

/// `[media]` (see [`super::MediaConfig`] for what each key means).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMedia {
    pub(super) max_download_bytes: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) upload_ttl_secs: Option<u64>,
    pub(super) store: Option<Spanned<String>>,
    pub(super) retention_days: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    #[serde(default)]
    pub(super) keys: Vec<Spanned<String>>,
    pub(super) idempotency_ttl_secs: Option<u64>,
    pub(super) opt_out_words: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) workers: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) url: Option<Spanned<String>>,
    pub(super) cluster: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) durability: Option<Spanned<String>>,
    pub(super) replication_timeout_ms: Option<u64>,
    pub(super) prefix: Option<String>,
    pub(super) dedupe_ttl_secs: Option<u64>,
    pub(super) stream_maxlen: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeta {
    pub(super) verify_token: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) app_secrets: Vec<Spanned<String>>,
    pub(super) app_secret: Option<Spanned<String>>,
    pub(super) graph_api_url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub(super) id: Spanned<String>,
    pub(super) kind: Spanned<String>,
    pub(super) partitions: Option<Spanned<i64>>,
    pub(super) phone_number_id: Option<Spanned<String>>,
    pub(super) access_token: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) coexistence: bool,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) session: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) webhook_secrets: Vec<Spanned<String>>,
    pub(super) api_url: Option<Spanned<String>>,
    pub(super) api_key: Option<Spanned<String>>,
    pub(super) send_rate_per_second: Option<u32>,
    pub(super) pair_gap_ms: Option<u64>,
    pub(super) max_per_minute: Option<u32>,
    pub(super) jitter_ms: Option<u64>,
    pub(super) messaging_limit_per_day: Option<u32>,
    pub(super) portfolio: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBot {
    pub(super) mode: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) secret: Option<Spanned<String>>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) handover_secs: Option<u64>,
    pub(super) max_answer_bytes: Option<usize>,
    pub(super) max_replies: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    pub(super) lease_ms: Option<u64>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_backoff_ms: Option<u64>,
    pub(super) concurrency: Option<usize>,
    pub(super) window_expiring_minutes: Option<Vec<u64>>,
    pub(super) conversation_ttl_secs: Option<u64>,
    pub(super) block_ms: Option<u64>,
    pub(super) metrics_listen: Option<Spanned<String>>,
}
