//! Every value a key takes when the file leaves it out, named once: the config builder, the
//! embedded mode (`runtime`) and the in-memory twins read them from here.

/// `[server] listen`.
pub const LISTEN: &str = "127.0.0.1:8080";
/// `[server] max_body_bytes`: 4 MiB, far above Meta's largest batch.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `[redis] url` when the table is present without one.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// `[redis] prefix` of every key.
pub const REDIS_PREFIX: &str = "cx";
/// `[redis] replication_timeout_ms`: how long `durability = "replicated"` waits for a replica.
pub const REPLICATION_TIMEOUT_MS: u64 = 1_000;
/// `[redis] dedupe_ttl_secs`: Meta retries a webhook for up to 7 days; one more for clock skew.
/// The embedded queue remembers event ids as long.
pub const DEDUPE_TTL_SECS: u64 = 8 * 24 * 3600;
/// `[redis] stream_maxlen`: 0, no cap (a capped stream can drop unhandled events).
pub const STREAM_MAXLEN: u64 = 0;

/// `[meta] graph_api_url`.
pub const GRAPH_API_URL: &str = "https://graph.facebook.com/v23.0";

/// `[[channels]] partitions`.
pub const PARTITIONS: u32 = 4;
/// `[[channels]] partitions` accepted range.
pub const PARTITIONS_RANGE: std::ops::RangeInclusive<i64> = 1..=1024;
/// `[[channels]] session` of a personal channel (WAHA's default session).
pub const WAHA_SESSION: &str = "default";
/// `[[channels]] gateway` of a personal channel.
pub const GATEWAY: &str = "waha";
/// `[[channels]] send_rate_per_second` of a personal channel (WABA: per kind and coexistence,
/// `ChannelKind::default_send_rate_per_second`).
pub const PERSONAL_SEND_RATE_PER_SECOND: u32 = 5;
/// `[[channels]] pair_gap_ms` on WABA: Meta's pair rate, one message per customer per 6 s.
pub const WABA_PAIR_GAP_MS: u64 = 6_000;
/// `[[channels]] pair_gap_ms` on Personal: a human-looking gap per chat.
pub const PERSONAL_PAIR_GAP_MS: u64 = 3_000;
/// `[[channels]] max_per_minute` (Personal pacing).
pub const MAX_PER_MINUTE: u32 = 30;
/// `[[channels]] jitter_ms` on Personal (WABA: none).
pub const PERSONAL_JITTER_MS: u64 = 1_500;

/// `[bot] timeout_ms` of one forward request.
pub const BOT_TIMEOUT_MS: u64 = 10_000;
/// `[bot] handover_secs`: how long a human answering from the phone pauses the bot.
pub const HANDOVER_SECS: u64 = 1_800;
/// `[bot] max_answer_bytes`.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// `[bot] max_replies` per event.
pub const MAX_REPLIES: usize = 20;

/// `[worker] lease_ms`.
pub const LEASE_MS: u64 = 10_000;
/// `[worker] max_attempts` before an event is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;
/// `[worker] retry_backoff_ms`.
pub const RETRY_BACKOFF_MS: u64 = 200;
/// `[worker] concurrency`: partitions one process handles at once.
pub const CONCURRENCY: usize = 64;
/// `[worker] window_expiring_minutes`.
pub const WINDOW_EXPIRING_MINUTES: [u64; 2] = [60, 10];
/// `[worker] conversation_ttl_secs`: 30 days of inactivity.
pub const CONVERSATION_TTL_SECS: u64 = 30 * 24 * 3600;
/// `[worker] block_ms` of one blocking read.
pub const BLOCK_MS: u64 = 2_000;

/// `[api] idempotency_ttl_secs`: one day.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// `[api] opt_out_words`.
pub const OPT_OUT_WORDS: [&str; 7] = [
    "STOP",
    "UNSUBSCRIBE",
    "CANCEL",
    "QUIT",
    "END",
    "STOPALL",
    "OPTOUT",
];

/// `[media] max_download_bytes`: 100 MB, Meta's largest document.
pub const MAX_DOWNLOAD_BYTES: u64 = 100 * 1024 * 1024;
/// `[media] timeout_ms` of one whole download or upload.
pub const MEDIA_TIMEOUT_MS: u64 = 60_000;
/// `[media] upload_ttl_secs`: how long a Personal channel holds an uploaded file.
pub const UPLOAD_TTL_SECS: u64 = 86_400;
/// `[media] retention_days`: how long a kept copy of an inbound file stays in `store`.
pub const MEDIA_RETENTION_DAYS: u64 = 30;
