//! Every Redis key coexist uses, built in this one module.
//!
//! Keys are `<prefix>:{<channel>}:<what>`: the channel sits in a hash tag so that all of a
//! channel's keys land in one Redis Cluster slot and every Lua script touches one slot.
//! Nothing else in the crate formats a key.

/// The consumer group every worker joins on every partition stream.
pub const GROUP: &str = "workers";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("cx")
    }
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn channel_key(&self, channel: &str, rest: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, channel, rest)
    }

    /// Inbound stream of one channel partition.
    pub fn stream(&self, channel: &str, partition: u32) -> String {
        self.channel_key(channel, &format!("in:{partition}"))
    }

    /// Dedupe marker for one event id (`SET NX EX`).
    pub fn seen(&self, channel: &str, event_id: &str) -> String {
        self.channel_key(channel, &format!("seen:{event_id}"))
    }

    /// Hash: contact id → `<partition>:<canonical conversation id>` (one person, one conversation).
    pub fn aliases(&self, channel: &str) -> String {
        self.channel_key(channel, "alias")
    }

    /// Dead-letter stream of a channel.
    pub fn dead_letters(&self, channel: &str) -> String {
        self.channel_key(channel, "dead")
    }

    /// Conversation state of one contact.
    pub fn conversation(&self, channel: &str, contact: &str) -> String {
        self.channel_key(channel, &format!("conv:{contact}"))
    }

    /// Lease on one partition (value: `<owner>:<fencing token>`).
    pub fn lease(&self, channel: &str, partition: u32) -> String {
        self.channel_key(channel, &format!("lease:{partition}"))
    }

    /// Monotonic fencing-token counter of one partition.
    pub fn fence(&self, channel: &str, partition: u32) -> String {
        self.channel_key(channel, &format!("fence:{partition}"))
    }

    /// Sorted set of armed window timers of one partition (score = due time in ms).
    pub fn timers(&self, channel: &str, partition: u32) -> String {
        self.channel_key(channel, &format!("timers:{partition}"))
    }

    /// Outbound queue of a channel.
    pub fn outbox(&self, channel: &str) -> String {
        self.channel_key(channel, "outbox")
    }

    /// Idempotency marker of one outbound message (source event id + reply index).
    pub fn sent(&self, channel: &str, outbox_key: &str) -> String {
        self.channel_key(channel, &format!("sent:{outbox_key}"))
    }

    /// Token bucket shared by every worker sending on a channel.
    pub fn send_rate(&self, channel: &str) -> String {
        self.channel_key(channel, "rate")
    }

    /// Per-contact pacing marker (pair rate, Personal per-chat gap).
    pub fn pair_rate(&self, channel: &str, contact: &str) -> String {
        self.channel_key(channel, &format!("pair:{contact}"))
    }

    /// Personal channels: pacing state of the per-minute send cap.
    pub fn send_cap(&self, channel: &str) -> String {
        self.channel_key(channel, "cap")
    }

    /// Sent message id (wamid / gateway id) → outbox key, so statuses find their conversation.
    pub fn sent_message(&self, channel: &str, message_id: &str) -> String {
        self.channel_key(channel, &format!("msg:{message_id}"))
    }

    /// Channel health (e.g. marked unhealthy after an auth error).
    pub fn health(&self, channel: &str) -> String {
        self.channel_key(channel, "health")
    }

    /// Outbound lane of one customer: a list of queued messages (JSON), oldest first.
    pub fn out_lane(&self, channel: &str, customer: &str) -> String {
        self.channel_key(channel, &format!("out:lane:{customer}"))
    }

    /// Sorted set of lanes not taken by a sender: customer → ready time (ms).
    pub fn out_ready(&self, channel: &str) -> String {
        self.channel_key(channel, "out:ready")
    }

    /// Sorted set of lanes a sender holds: customer → lease expiry (ms).
    pub fn out_busy(&self, channel: &str) -> String {
        self.channel_key(channel, "out:busy")
    }

    /// Hash: customer → grant token of the sender holding the lane.
    pub fn out_owner(&self, channel: &str) -> String {
        self.channel_key(channel, "out:owner")
    }

    /// Counter behind lane grant tokens.
    pub fn out_grants(&self, channel: &str) -> String {
        self.channel_key(channel, "out:grants")
    }

    /// Hash: customer → why its lane waits (`pair_gap`, `rate`, `backoff`, `in_flight`).
    pub fn out_wait(&self, channel: &str) -> String {
        self.channel_key(channel, "out:wait")
    }

    /// Lifecycle record of one outbound message (hash).
    pub fn out_record(&self, channel: &str, id: &str) -> String {
        self.channel_key(channel, &format!("out:rec:{id}"))
    }

    /// Sorted set of unsettled messages: id → queued time (backlog and oldest age).
    pub fn out_queued(&self, channel: &str) -> String {
        self.channel_key(channel, "out:queued")
    }

    /// Sorted set of every recorded message: id → created time (for listing).
    pub fn out_index(&self, channel: &str) -> String {
        self.channel_key(channel, "out:index")
    }

    /// An `Idempotency-Key` of the send API: `<body hash>\n<message id>`.
    pub fn out_idempotency(&self, channel: &str, key: &str) -> String {
        self.channel_key(channel, &format!("out:idem:{key}"))
    }

    /// A file uploaded to a Personal channel, held for sending (hash: mime, name, data).
    pub fn media_upload(&self, channel: &str, id: &str) -> String {
        self.channel_key(channel, &format!("media:{id}"))
    }

    /// A broadcast (hash: name, message, total, fed, state, created, `c:<status>` counts).
    pub fn broadcast(&self, channel: &str, id: &str) -> String {
        self.channel_key(channel, &format!("bc:{id}"))
    }

    /// A broadcast's recipients (list of `{"to", "params"}` JSON, in order).
    pub fn broadcast_recipients(&self, channel: &str, id: &str) -> String {
        self.channel_key(channel, &format!("bc:{id}:to"))
    }

    /// Where a broadcast's recipients are appended before it is made visible.
    pub fn broadcast_staging(&self, channel: &str, id: &str) -> String {
        self.channel_key(channel, &format!("bc:{id}:staging"))
    }

    /// Sorted set of the channel's running broadcasts (id → created ms).
    pub fn broadcasts_running(&self, channel: &str) -> String {
        self.channel_key(channel, "bc:running")
    }

    /// Customers reached outside a service window in the last 24 h (Meta's messaging limit):
    /// customer → last time. Per channel, or per business portfolio when the channel names one
    /// (its own hash tag: every WABA channel of the portfolio shares it).
    pub fn reach(&self, channel: &str, portfolio: Option<&str>) -> String {
        match portfolio {
            Some(p) => format!("{}:{{portfolio:{p}}}:reach", self.prefix),
            None => self.channel_key(channel, "reach"),
        }
    }

    /// The messaging limit Meta last announced for the reach set beside it (a
    /// `phone_number_quality_update`): overrides `messaging_limit_per_day`. Same hash tag as
    /// [`Keys::reach`], so one script reads both.
    pub fn reach_limit(&self, channel: &str, portfolio: Option<&str>) -> String {
        format!("{}:limit", self.reach(channel, portfolio))
    }

    /// Registry of live workers (not per channel: one key for the whole deployment). Its own
    /// fixed hash tag, `{_workers}`: no channel id starts with `_`, so it never shares a
    /// channel's tag, and a script given it may only ever touch it.
    pub fn workers(&self) -> String {
        format!("{}:{{_workers}}:workers", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_key_carries_the_hash_tag() {
        let k = Keys::new("cx");
        for key in [
            k.stream("shop", 3),
            k.seen("shop", "wamid.1"),
            k.aliases("shop"),
            k.dead_letters("shop"),
            k.conversation("shop", "1555"),
            k.lease("shop", 0),
            k.fence("shop", 0),
            k.timers("shop", 1),
            k.outbox("shop"),
            k.sent("shop", "e:0"),
            k.send_rate("shop"),
            k.send_cap("shop"),
            k.pair_rate("shop", "1555"),
            k.sent_message("shop", "wamid.2"),
            k.health("shop"),
            k.out_lane("shop", "1555"),
            k.out_ready("shop"),
            k.out_busy("shop"),
            k.out_owner("shop"),
            k.out_grants("shop"),
            k.out_wait("shop"),
            k.out_record("shop", "e:0"),
            k.out_queued("shop"),
            k.out_index("shop"),
            k.out_idempotency("shop", "k-1"),
            k.broadcast("shop", "bc-1"),
            k.broadcast_recipients("shop", "bc-1"),
            k.broadcast_staging("shop", "bc-1"),
            k.broadcasts_running("shop"),
            k.media_upload("shop", "cxm_1"),
            k.reach("shop", None),
            k.reach_limit("shop", None),
        ] {
            assert!(key.starts_with("cx:{shop}:"), "{key}");
        }
        assert_eq!(k.stream("shop", 3), "cx:{shop}:in:3");
        assert_eq!(k.workers(), "cx:{_workers}:workers");
        assert_eq!(k.reach("shop", Some("acme")), "cx:{portfolio:acme}:reach");
    }

    #[test]
    fn prefix_is_configurable() {
        assert_eq!(Keys::new("t1").seen("c", "x"), "t1:{c}:seen:x");
    }
}
