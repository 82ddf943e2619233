//! Turns the raw file into a [`Config`]: one builder per table, every default named in
//! [`super::defaults`], every error with its line and key.

use super::defaults as d;
use super::raw::*;
use super::*;
use crate::channel::UNROUTED_CHANNEL;
use std::collections::HashMap;
use std::path::PathBuf;
use toml::Spanned;

pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a str,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    pub(super) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    pub(super) fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl fmt::Display,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            path: self.path.into(),
            line: self.line(span.start),
            message: format!("`{key}`: {message}"),
        })
    }

    /// Expands `${VAR}` and `${VAR:-default}`. `Ok(None)`: a variable it needs is unset.
    fn expand(&self, value: &Spanned<String>, key: &str) -> Result<Option<String>, ConfigError> {
        expand_vars(value.get_ref(), self.env).map_err(|m| ConfigError::Invalid {
            path: self.path.into(),
            line: self.line(value.span().start),
            message: format!("`{key}`: {m}"),
        })
    }

    /// An `http(s)://` URL (variables allowed, all must be set).
    fn http_url(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let url = self.required(value, key)?;
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(url),
            _ => self.err(
                value.span(),
                key,
                format!("{url:?} is not an http(s):// URL"),
            ),
        }
    }

    /// A required plain value (variables allowed, all must be set).
    fn required(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        match self.expand(value, key)? {
            Some(v) => Ok(v),
            None => self.err(
                value.span(),
                key,
                format!(
                    "{} uses an environment variable that is not set",
                    value.get_ref()
                ),
            ),
        }
    }

    /// An optional secret: an unset variable means "not configured".
    fn secret(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<Secret>, ConfigError> {
        let Some(v) = value else { return Ok(None) };
        warn_if_literal_secret(v.get_ref(), key);
        Ok(self.expand(v, key)?.filter(|s| !s.is_empty()).map(Secret))
    }

    /// A list of secrets: entries whose variable is unset are skipped (e.g. no previous secret
    /// outside a rotation).
    fn secrets(&self, values: &[Spanned<String>], key: &str) -> Result<Vec<Secret>, ConfigError> {
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let k = format!("{key}[{i}]");
            warn_if_literal_secret(v.get_ref(), &k);
            if let Some(s) = self.expand(v, &k)?.filter(|s| !s.is_empty()) {
                out.push(Secret(s));
            }
        }
        Ok(out)
    }

    /// `[api]`: keys only through `${VAR}` (a key written in the file is refused), at least
    /// one set.
    fn api(&self, raw: &Option<Spanned<RawApi>>) -> Result<Option<ApiConfig>, ConfigError> {
        let Some(spanned) = raw else {
            return Ok(None);
        };
        let a = spanned.get_ref();
        for (i, k) in a.keys.iter().enumerate() {
            if !k.get_ref().contains("${") || k.get_ref().contains(":-") {
                return self.err(
                    k.span(),
                    &format!("api.keys[{i}]"),
                    "API keys come from the environment: write \"${VAR}\" (no default) and export VAR",
                );
            }
        }
        let keys = self.secrets(&a.keys, "api.keys")?;
        if keys.is_empty() {
            return self.err(
                spanned.span(),
                "api.keys",
                "no API key is set: keys = [\"${COEXIST_API_KEY}\"] and export the variable (or remove the [api] table to turn the send API off)",
            );
        }
        Ok(Some(ApiConfig {
            keys,
            idempotency_ttl_secs: a
                .idempotency_ttl_secs
                .unwrap_or(d::IDEMPOTENCY_TTL_SECS)
                .max(1),
            opt_out_words: a
                .opt_out_words
                .clone()
                .unwrap_or_else(|| d::OPT_OUT_WORDS.map(String::from).to_vec()),
        }))
    }

    /// `[redis] cluster`: the seed nodes (URLs, `${VAR}` allowed); never together with `url`.
    fn redis_cluster(&self, r: &RawRedis) -> Result<Vec<Secret>, ConfigError> {
        let Some(seeds) = &r.cluster else {
            return Ok(Vec::new());
        };
        if let Some(url) = &r.url {
            let (span, key) = if url.span().start > seeds.span().start {
                (url.span(), "redis.url")
            } else {
                (seeds.span(), "redis.cluster")
            };
            return self.err(
                span,
                key,
                "`redis.url` and `redis.cluster` are both set: use `url` for one node or `cluster` (seed nodes) for a Redis Cluster, not both",
            );
        }
        if seeds.get_ref().is_empty() {
            return self.err(
                seeds.span(),
                "redis.cluster",
                "no seed node: list at least one \"redis://host:port\" (or use `url` for one node)",
            );
        }
        let mut out = Vec::new();
        for (i, seed) in seeds.get_ref().iter().enumerate() {
            let key = format!("redis.cluster[{i}]");
            let url = self.required(seed, &key)?;
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return self.err(
                    seed.span(),
                    &key,
                    "a cluster seed is a redis:// or rediss:// URL (host and port)",
                );
            }
            out.push(Secret(url));
        }
        Ok(out)
    }

    /// The whole file, table by table.
    pub(super) fn build(&self, raw: RawFile) -> Result<Config, ConfigError> {
        let meta = self.meta(&raw.meta)?;
        Ok(Config {
            server: self.server(&raw.server)?,
            redis: raw.redis.as_ref().map(|r| self.redis(r)).transpose()?,
            channels: self.channels(&raw.channels, &meta)?,
            meta,
            bot: self.bot(raw.bot.as_ref())?,
            worker: self.worker(&raw.worker)?,
            sending: raw.sending.clone(),
            media: self.media(&raw.media)?,
            api: self.api(&raw.api)?,
        })
    }

    /// `[media]`: `store` must be `dir:<path>` (the one kind of store there is).
    fn media(&self, m: &RawMedia) -> Result<MediaConfig, ConfigError> {
        let store = match &m.store {
            None => None,
            Some(value) => {
                let spec = self.required(value, "media.store")?;
                match spec.strip_prefix("dir:") {
                    Some(path) if !path.trim().is_empty() => Some(PathBuf::from(path)),
                    _ => {
                        return self.err(
                            value.span(),
                            "media.store",
                            format!("{spec:?} is not a store; write \"dir:<path>\""),
                        )
                    }
                }
            }
        };
        Ok(MediaConfig {
            max_download_bytes: m.max_download_bytes,
            timeout_ms: m.timeout_ms,
            upload_ttl_secs: m.upload_ttl_secs,
            store,
            retention_days: m.retention_days,
        })
    }

    /// `[server]`.
    fn server(&self, s: &RawServer) -> Result<ServerConfig, ConfigError> {
        Ok(ServerConfig {
            listen: match &s.listen {
                Some(l) => self.required(l, "server.listen")?,
                None => d::LISTEN.into(),
            },
            max_body_bytes: s.max_body_bytes.unwrap_or(d::MAX_BODY_BYTES),
            workers: s.workers,
        })
    }

    /// `[redis]` (present: Redis; absent: the embedded queue).
    fn redis(&self, r: &RawRedis) -> Result<RedisConfig, ConfigError> {
        Ok(RedisConfig {
            url: match &r.url {
                Some(u) => Secret(self.required(u, "redis.url")?),
                None => Secret(d::REDIS_URL.into()),
            },
            cluster: self.redis_cluster(r)?,
            durability: self.durability(r.durability.as_ref())?,
            replication_timeout_ms: r
                .replication_timeout_ms
                .unwrap_or(d::REPLICATION_TIMEOUT_MS)
                .max(1),
            prefix: r.prefix.clone().unwrap_or_else(|| d::REDIS_PREFIX.into()),
            dedupe_ttl_secs: r.dedupe_ttl_secs.unwrap_or(d::DEDUPE_TTL_SECS),
            stream_maxlen: r.stream_maxlen.unwrap_or(d::STREAM_MAXLEN),
        })
    }

    /// `[redis] durability`.
    fn durability(&self, raw: Option<&Spanned<String>>) -> Result<Durability, ConfigError> {
        let Some(value) = raw else {
            return Ok(Durability::default());
        };
        match value.get_ref().as_str() {
            "local" => Ok(Durability::Local),
            "replicated" => Ok(Durability::Replicated),
            other => self.err(
                value.span(),
                "redis.durability",
                format!("unknown durability {other:?} (expected \"local\" or \"replicated\")"),
            ),
        }
    }

    /// `[meta]`: `app_secret` (one) goes first, before `app_secrets` (rotation).
    fn meta(&self, m: &RawMeta) -> Result<MetaConfig, ConfigError> {
        let mut app_secrets = self.secrets(&m.app_secrets, "meta.app_secrets")?;
        if let Some(s) = self.secret(&m.app_secret, "meta.app_secret")? {
            app_secrets.insert(0, s);
        }
        let graph_api_url = match &m.graph_api_url {
            Some(u) => self.http_url(u, "meta.graph_api_url")?,
            None => d::GRAPH_API_URL.into(),
        };
        Ok(MetaConfig {
            verify_token: self.secret(&m.verify_token, "meta.verify_token")?,
            app_secrets,
            graph_api_url: graph_api_url.trim_end_matches('/').to_string(),
        })
    }

    /// `[[channels]]`: each one checked alone, then ids, phone number ids and sessions unique.
    fn channels(
        &self,
        raw: &[Spanned<RawChannel>],
        meta: &MetaConfig,
    ) -> Result<Vec<ChannelConfig>, ConfigError> {
        let mut unique = UniqueChannelKeys::default();
        let mut channels = Vec::with_capacity(raw.len());
        for (i, spanned) in raw.iter().enumerate() {
            let channel = self.channel(i, spanned, meta)?;
            unique.check(self, i, spanned, &channel)?;
            channels.push(channel);
        }
        debug_assert!(channels.iter().all(|c| c.id != UNROUTED_CHANNEL));
        Ok(channels)
    }

    /// One `[[channels]]` entry, with the defaults of its kind.
    fn channel(
        &self,
        i: usize,
        spanned: &Spanned<RawChannel>,
        meta: &MetaConfig,
    ) -> Result<ChannelConfig, ConfigError> {
        let c = spanned.get_ref();
        let key = |k: &str| channel_key(i, k);
        let id = self.channel_id(&c.id, &key("id"))?;
        let kind = match c.kind.get_ref().as_str() {
            "waba" => ChannelKind::Waba,
            "personal" => ChannelKind::Personal,
            other => {
                return self.err(
                    c.kind.span(),
                    &key("kind"),
                    format!("unknown kind {other:?} (expected \"waba\" or \"personal\")"),
                )
            }
        };
        let partitions = match &c.partitions {
            None => d::PARTITIONS,
            Some(p) if d::PARTITIONS_RANGE.contains(p.get_ref()) => *p.get_ref() as u32,
            Some(p) => {
                return self.err(
                    p.span(),
                    &key("partitions"),
                    format!("{} is out of range (1 to 1024)", p.get_ref()),
                )
            }
        };
        let phone_number_id = self.optional(&c.phone_number_id, &key("phone_number_id"))?;
        let session = self.optional(&c.session, &key("session"))?;
        let webhook_secrets = self.secrets(&c.webhook_secrets, &key("webhook_secrets"))?;
        match kind {
            ChannelKind::Waba => self.check_waba(i, spanned, &id, &phone_number_id, meta)?,
            ChannelKind::Personal => {
                self.check_personal(i, spanned, &id, &phone_number_id, &webhook_secrets)?
            }
        }
        let personal = kind == ChannelKind::Personal;
        Ok(ChannelConfig {
            id,
            kind,
            partitions,
            phone_number_id,
            access_token: self.secret(&c.access_token, &key("access_token"))?,
            coexistence: c.coexistence,
            gateway: c
                .gateway
                .as_ref()
                .map(|g| g.get_ref().clone())
                .or_else(|| personal.then(|| d::GATEWAY.into())),
            session: session.or_else(|| personal.then(|| d::WAHA_SESSION.into())),
            webhook_secrets,
            api_url: match &c.api_url {
                Some(u) => Some(self.http_url(u, &key("api_url"))?),
                None => None,
            },
            api_key: self.secret(&c.api_key, &key("api_key"))?,
            send_rate_per_second: c.send_rate_per_second.unwrap_or(by_kind(
                personal,
                kind.default_send_rate_per_second(c.coexistence),
                d::PERSONAL_SEND_RATE_PER_SECOND,
            )),
            pair_gap_ms: c.pair_gap_ms.unwrap_or(by_kind(
                personal,
                d::WABA_PAIR_GAP_MS,
                d::PERSONAL_PAIR_GAP_MS,
            )),
            max_per_minute: c.max_per_minute.unwrap_or(d::MAX_PER_MINUTE),
            jitter_ms: c
                .jitter_ms
                .unwrap_or(by_kind(personal, 0, d::PERSONAL_JITTER_MS)),
            messaging_limit_per_day: c.messaging_limit_per_day.unwrap_or(0),
            portfolio: c.portfolio.clone().filter(|p| !p.is_empty()),
        })
    }

    /// A channel id: letters, digits, `-`, `_`, `.`; never starting with `_` (reserved for
    /// coexist's own keys, such as the unrouted channel).
    fn channel_id(&self, raw: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let id = self.required(raw, key)?;
        let valid_char = |ch: char| ch.is_ascii_alphanumeric() || "-_.".contains(ch);
        if id.is_empty() || id.starts_with('_') || !id.chars().all(valid_char) {
            return self.err(raw.span(), key, format!("{id:?} is not a valid channel id (letters, digits, '-', '_', '.'; not starting with '_')"));
        }
        Ok(id)
    }

    /// A WABA channel: a phone number id, a Meta app secret to verify it, no gateway keys.
    fn check_waba(
        &self,
        i: usize,
        spanned: &Spanned<RawChannel>,
        id: &str,
        phone_number_id: &Option<String>,
        meta: &MetaConfig,
    ) -> Result<(), ConfigError> {
        let c = spanned.get_ref();
        if phone_number_id.is_none() {
            return self.err(
                spanned.span(),
                &channel_key(i, "phone_number_id"),
                format!("channel {id:?} of kind \"waba\" needs a phone_number_id"),
            );
        }
        if meta.app_secrets.is_empty() {
            return self.err(spanned.span(), "meta.app_secrets", format!("channel {id:?} is a waba channel but no Meta app secret is set (set meta.app_secrets = [\"${{META_APP_SECRET}}\"] and export the variable)"));
        }
        if c.session.is_some() || c.gateway.is_some() {
            return self.err(
                spanned.span(),
                &channel_key(i, "kind"),
                "gateway/session belong to personal channels, not waba",
            );
        }
        Ok(())
    }

    /// A personal channel: a known gateway and a webhook secret (unsigned webhooks are never
    /// accepted); no phone number id.
    fn check_personal(
        &self,
        i: usize,
        spanned: &Spanned<RawChannel>,
        id: &str,
        phone_number_id: &Option<String>,
        webhook_secrets: &[Secret],
    ) -> Result<(), ConfigError> {
        let c = spanned.get_ref();
        if phone_number_id.is_some() {
            return self.err(
                spanned.span(),
                &channel_key(i, "phone_number_id"),
                "phone_number_id belongs to waba channels, not personal",
            );
        }
        if let Some(g) = &c.gateway {
            if g.get_ref() != d::GATEWAY {
                return self.err(
                    g.span(),
                    &channel_key(i, "gateway"),
                    format!("unknown gateway {:?} (supported: \"waha\")", g.get_ref()),
                );
            }
        }
        if webhook_secrets.is_empty() {
            return self.err(spanned.span(), &channel_key(i, "webhook_secrets"), format!("personal channel {id:?} has no webhook secret set (webhook_secrets = [\"${{WAHA_HMAC_KEY}}\"] and export the variable): unsigned webhooks are never accepted"));
        }
        Ok(())
    }

    /// `[bot]`: echo when absent; forward needs a URL and a signing secret.
    fn bot(&self, raw: Option<&Spanned<RawBot>>) -> Result<BotConfig, ConfigError> {
        let Some(b) = raw else {
            return Ok(BotConfig {
                mode: BotMode::Echo,
                url: None,
                secret: None,
                timeout_ms: d::BOT_TIMEOUT_MS,
                handover_secs: d::HANDOVER_SECS,
                max_answer_bytes: d::MAX_ANSWER_BYTES,
                max_replies: d::MAX_REPLIES,
            });
        };
        let r = b.get_ref();
        let mode = match &r.mode {
            None => BotMode::Echo,
            Some(m) => match m.get_ref().as_str() {
                "echo" => BotMode::Echo,
                "forward" => BotMode::Forward,
                "none" => BotMode::None,
                other => {
                    return self.err(
                        m.span(),
                        "bot.mode",
                        format!(
                            "unknown mode {other:?} (expected \"echo\", \"forward\" or \"none\")"
                        ),
                    )
                }
            },
        };
        let url = self.optional(&r.url, "bot.url")?;
        let secret = self.secret(&r.secret, "bot.secret")?;
        if mode == BotMode::Forward {
            if url.is_none() {
                return self.err(b.span(), "bot.url", "mode \"forward\" needs a url");
            }
            if secret.is_none() {
                return self.err(b.span(), "bot.secret", "mode \"forward\" needs a secret to sign requests (secret = \"${FORWARD_SECRET}\" and export the variable)");
            }
        }
        Ok(BotConfig {
            mode,
            url,
            secret,
            timeout_ms: r.timeout_ms.unwrap_or(d::BOT_TIMEOUT_MS),
            handover_secs: r.handover_secs.unwrap_or(d::HANDOVER_SECS),
            max_answer_bytes: r.max_answer_bytes.unwrap_or(d::MAX_ANSWER_BYTES).max(2),
            max_replies: r.max_replies.unwrap_or(d::MAX_REPLIES),
        })
    }

    /// `[worker]`.
    fn worker(&self, w: &RawWorker) -> Result<WorkerConfig, ConfigError> {
        Ok(WorkerConfig {
            lease_ms: w.lease_ms.unwrap_or(d::LEASE_MS),
            max_attempts: w.max_attempts.unwrap_or(d::MAX_ATTEMPTS).max(1),
            retry_backoff_ms: w.retry_backoff_ms.unwrap_or(d::RETRY_BACKOFF_MS),
            concurrency: w.concurrency.unwrap_or(d::CONCURRENCY).max(1),
            window_expiring_minutes: w
                .window_expiring_minutes
                .clone()
                .unwrap_or_else(|| d::WINDOW_EXPIRING_MINUTES.to_vec()),
            conversation_ttl_secs: w.conversation_ttl_secs.unwrap_or(d::CONVERSATION_TTL_SECS),
            block_ms: w.block_ms.unwrap_or(d::BLOCK_MS),
            metrics_listen: self.optional(&w.metrics_listen, "worker.metrics_listen")?,
        })
    }

    /// An optional plain value: absent is `None`; present must expand.
    fn optional(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<String>, ConfigError> {
        value.as_ref().map(|v| self.required(v, key)).transpose()
    }
}

/// The WABA default or the Personal one.
fn by_kind<T>(personal: bool, waba: T, personal_value: T) -> T {
    if personal {
        personal_value
    } else {
        waba
    }
}

fn channel_key(i: usize, key: &str) -> String {
    format!("channels[{i}].{key}")
}

/// What must be unique across `[[channels]]`, with where each was first seen.
#[derive(Default)]
struct UniqueChannelKeys {
    /// Channel id → line of its first definition.
    ids: HashMap<String, usize>,
    /// WABA phone number id → index of its channel.
    phone_ids: HashMap<String, usize>,
    /// WAHA session → index of its channel.
    sessions: HashMap<String, usize>,
}

impl UniqueChannelKeys {
    fn check(
        &mut self,
        ctx: &Ctx<'_>,
        i: usize,
        spanned: &Spanned<RawChannel>,
        channel: &ChannelConfig,
    ) -> Result<(), ConfigError> {
        let c = spanned.get_ref();
        let span_of = |v: &Option<Spanned<String>>| v.as_ref().map_or(spanned.span(), |p| p.span());
        let line = ctx.line(c.id.span().start);
        if let Some(prev) = self.ids.insert(channel.id.clone(), line) {
            return ctx.err(
                c.id.span(),
                &channel_key(i, "id"),
                format!(
                    "duplicate channel id {:?} (first defined on line {prev})",
                    channel.id
                ),
            );
        }
        if let (ChannelKind::Waba, Some(pid)) = (channel.kind, &channel.phone_number_id) {
            if let Some(prev) = self.phone_ids.insert(pid.clone(), i) {
                return ctx.err(
                    span_of(&c.phone_number_id),
                    &channel_key(i, "phone_number_id"),
                    format!("duplicate phone_number_id {pid:?} (also on channels[{prev}])"),
                );
            }
        }
        if let (ChannelKind::Personal, Some(s)) = (channel.kind, &channel.session) {
            if let Some(prev) = self.sessions.insert(s.clone(), i) {
                return ctx.err(
                    span_of(&c.session),
                    &channel_key(i, "session"),
                    format!("duplicate session {s:?} (also on channels[{prev}])"),
                );
            }
        }
        Ok(())
    }
}

fn warn_if_literal_secret(value: &str, key: &str) {
    if !value.contains("${") && !value.is_empty() {
        tracing::warn!(key, "a secret is written in the config file itself; use ${{VAR}} and the environment instead");
    }
}
