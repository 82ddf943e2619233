//! The sender that drains a process's channels' outbound queues, lane by lane.
//!
//! Every `work` process (and `run`) runs one. It takes the lanes whose time has come (up to
//! `[sending] lanes` at once), and for each works the head: rules at send time, rate limits,
//! claim, one HTTP request ([`Outbound::attempt`]). A lane that must wait (pair gap, channel
//! rate, backoff, an unconfirmed earlier send) is given back with its ready time and the task
//! moves on, so one customer's wait never delays another customer. A lane is worked for a few
//! messages per grant, then given back, so busy customers take turns.
//!
//! What a provider accepted is never sent again: the result is recorded with
//! [`OutQueue::settle`], retried with backoff while Redis is away (the lane waits, holding the
//! result in this process). A message given up becomes an `outbound.failed` event in the
//! conversation's partition (queued before the message is settled, with a stable id, so a crash
//! in between neither loses it nor doubles it).

use super::attempt::{failure_code, outcome_label, provider_code, Attempt, Prepared};
use super::message::{OutgoingMessage, Reply};
use super::queue::broadcast_of;
use super::queue::{LaneGrant, OutQueue, OutQueueBackend, QueuedMessage, Settle};
use super::{Outbound, OutboxBackend, SendError, Sent};
use crate::api::broadcast::personalize;
use crate::api::request::conversation_id;
use crate::config::ChannelConfig;
use crate::conversation::window;
use crate::conversation::ConversationBackend;
use crate::conversation::{ConversationState, ConversationStore};
use crate::event::{Event, EventType, OutboundFailure};
use crate::metrics::{Metric, Metrics};
use crate::queue::QueueBackend;
use crate::queue::{NewEvent, Queue};
use crate::worker::{Clock, SendObserver};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Tunables of the lane sender (`[sending]`).
#[derive(Clone, Debug)]
pub struct LaneSettings {
    /// Lanes worked at once by this process.
    pub lanes: usize,
    /// Messages sent per lane grant before the lane is given back (fairness).
    pub per_grant: usize,
    /// How often the ready lanes are looked at when nothing wakes the sender sooner
    /// (commits in this process wake it at once; other processes' commits are seen here).
    pub poll: Duration,
    /// A channel slot at most this far away is waited for inside the lane.
    pub max_inline_wait: Duration,
    /// How long a result is held in memory, retried, while Redis does not answer.
    pub record_patience: Duration,
}

impl Default for LaneSettings {
    fn default() -> Self {
        LaneSettings {
            lanes: 64,
            per_grant: 8,
            poll: Duration::from_millis(50),
            max_inline_wait: Duration::from_millis(1_000),
            record_patience: Duration::from_secs(600),
        }
    }
}

impl LaneSettings {
    pub fn from_config(c: &crate::config::SendingConfig) -> Self {
        let d = LaneSettings::default();
        LaneSettings {
            lanes: c.lanes.unwrap_or(d.lanes).max(1),
            poll: c.poll_ms.map_or(d.poll, Duration::from_millis),
            ..d
        }
    }
}

/// Drains the outbound queues of a process's channels.
pub struct LaneSender {
    id: String,
    channels: HashMap<String, Arc<ChannelConfig>>,
    out: OutQueue,
    outbound: Outbound,
    store: ConversationStore,
    queue: Queue,
    metrics: Metrics,
    clock: Clock,
    observer: Option<SendObserver>,
    settings: LaneSettings,
    wake: Arc<Notify>,
}

/// What [`LaneSender::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SentCount {
    pub sent: u64,
    pub failed: u64,
}

impl LaneSender {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        channels: HashMap<String, Arc<ChannelConfig>>,
        out: OutQueue,
        outbound: Outbound,
        store: ConversationStore,
        queue: Queue,
        metrics: Metrics,
        settings: LaneSettings,
    ) -> Self {
        LaneSender {
            id,
            channels,
            out,
            outbound,
            store,
            queue,
            metrics,
            clock: Clock::System,
            observer: None,
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_observer(mut self, observer: Option<SendObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Shares a waker with whoever queues messages in this process.
    pub fn with_waker(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Wakes the sender now (a commit in this process queued messages).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn out_queue(&self) -> &OutQueue {
        &self.out
    }

    /// Runs until `stop` turns true, then lets the lanes in hand finish their current message
    /// (bounded) and returns.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.settings.lanes));
        let mut channels: Vec<String> = self.channels.keys().cloned().collect();
        channels.sort();
        tracing::info!(sender = %self.id, lanes = self.settings.lanes, "outbound sender started");
        let mut fed_at = 0i64;
        while !*stop.borrow() {
            let now = self.clock.now_ms();
            let mut next = now + self.settings.poll.as_millis() as i64;
            if now - fed_at >= FEED_EVERY_MS {
                fed_at = now;
                for channel in &channels {
                    if let Some(c) = self.channels.get(channel) {
                        self.feed_broadcasts(c).await;
                    }
                }
            }
            for channel in &channels {
                let free = permits.available_permits();
                if free == 0 {
                    break;
                }
                match self.out.take(channel, &self.id, now, free).await {
                    Ok(taken) => {
                        if let Some(at) = taken.next_ready_ms {
                            next = next.min(at);
                        }
                        if taken.reclaimed > 0 {
                            tracing::info!(channel = %channel, lanes = taken.reclaimed,
                                "took over lanes whose sender stopped");
                        }
                        for grant in taken.lanes {
                            let Ok(permit) = permits.clone().try_acquire_owned() else {
                                // Cannot happen (we took at most `free`); give it back.
                                let _ = self.out.release(&grant, now).await;
                                continue;
                            };
                            let me = self.clone();
                            tokio::spawn(async move {
                                me.work_lane(grant, me.settings.max_inline_wait).await;
                                drop(permit);
                                me.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %channel, error = %e, "taking outbound lanes failed");
                        next = next.max(now + 500);
                    }
                }
            }
            let sleep = Duration::from_millis((next - self.clock.now_ms()).clamp(1, 1_000) as u64);
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        // Let the lanes in hand finish (each ends after its current message).
        let grace = self.settings.record_patience;
        let all = self.settings.lanes as u32;
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(sender = %self.id, "outbound lanes still busy at shutdown; their leases will expire");
        }
        tracing::info!(sender = %self.id, "outbound sender stopped");
    }

    /// Sends everything that is ready at the clock's now, on the calling task, without waiting
    /// for any gap (a lane that must wait is left waiting): for the bot test kit and tools.
    pub async fn drain(&self) -> SentCount {
        let mut total = SentCount::default();
        let mut channels: Vec<&String> = self.channels.keys().collect();
        channels.sort();
        loop {
            let mut worked = false;
            for channel in &channels {
                if let Some(c) = self.channels.get(*channel) {
                    worked |= self.feed_broadcasts(c).await > 0;
                }
                let now = self.clock.now_ms();
                let Ok(taken) = self.out.take(channel, &self.id, now, 64).await else {
                    return total;
                };
                for grant in taken.lanes {
                    worked = true;
                    let c = self.work_lane(grant, Duration::ZERO).await;
                    total.sent += c.sent;
                    total.failed += c.failed;
                }
            }
            if !worked {
                return total;
            }
        }
    }

    /// Works one lane's head, message after message, until it must wait, is empty, or has had
    /// its turn. A channel slot up to `inline_wait` away is waited for in the lane.
    async fn work_lane(&self, grant: LaneGrant, inline_wait: Duration) -> SentCount {
        let mut count = SentCount::default();
        let Some(channel) = self.channels.get(&grant.channel).cloned() else {
            return count;
        };
        for _ in 0..self.settings.per_grant.max(1) {
            let now = self.clock.now_ms();
            let head = match self.out.head(&grant.channel, &grant.customer).await {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(e) => {
                    // The lease expires and another take puts the lane back.
                    tracing::warn!(channel = %grant.channel, error = %e, "reading a lane failed");
                    return count;
                }
            };
            let Some(state) = self.conversation(&channel, &head.msg.to).await else {
                self.defer(&grant, now + 1_000, super::WaitReason::Backoff, None)
                    .await;
                return count;
            };
            if let Some(reason) = self.skip_reason(&channel, &head, &state, now).await {
                self.settle(
                    &grant,
                    &head,
                    &Settle::Skipped {
                        reason: reason.into(),
                    },
                )
                .await;
                self.metrics.inc(
                    Metric::MessagesSent,
                    &[("channel", &grant.channel), ("outcome", "skipped")],
                );
                continue;
            }
            let window = window::window(channel.kind, &state, now);
            let started = Instant::now();
            let prepared = self
                .outbound
                .prepare(&head, channel.kind, window, now, inline_wait)
                .await;
            let attempt = match prepared {
                Prepared::Done(outcome) => outcome,
                Prepared::Claimed(marker) => {
                    // The record says `sending` only now, with a slot and the claim in hand.
                    match self.out.begin(&grant, &head, self.clock.now_ms()).await {
                        Ok(true) => {}
                        Ok(false) | Err(_) => {
                            // Taken over meanwhile (or the store is away): not ours to send.
                            let _ = self
                                .outbound
                                .outbox()
                                .release(&head.msg, &marker, super::now_ms())
                                .await;
                            return count;
                        }
                    }
                    self.outbound.deliver_claimed(&head, &marker, now).await
                }
            };
            match attempt {
                Attempt::Sent(sent) => {
                    crate::failpoint::hit("sender.after_send");
                    self.observe_latency(&grant.channel, &head, started);
                    self.settle(
                        &grant,
                        &head,
                        &Settle::Sent {
                            wamid: sent.message_id.clone(),
                        },
                    )
                    .await;
                    self.record_outcome(&head, Ok(&sent));
                    count.sent += u64::from(!sent.duplicate);
                }
                Attempt::Later {
                    until_ms,
                    reason,
                    bump,
                } => {
                    self.metrics.inc(
                        Metric::OutboundLaneWaits,
                        &[("channel", &grant.channel), ("reason", reason.as_str())],
                    );
                    self.defer(&grant, until_ms, reason, bump.then_some(&head))
                        .await;
                    return count;
                }
                Attempt::Failed(error) => {
                    self.give_up(&grant, &channel, &head, &error).await;
                    self.record_outcome(&head, Err(&error));
                    count.failed += 1;
                }
            }
        }
        if let Err(e) = self.out.release(&grant, self.clock.now_ms()).await {
            tracing::warn!(channel = %grant.channel, error = %e, "giving a lane back failed; its lease will expire");
        }
        count
    }

    /// The conversation as stored now (default when never seen); `None` when the store cannot
    /// be read.
    async fn conversation(&self, channel: &ChannelConfig, to: &str) -> Option<ConversationState> {
        match self.store.load(&channel.id, to).await {
            Ok(state) => Some(state.unwrap_or_default()),
            Err(e) => {
                tracing::warn!(channel = %channel.id, error = %e, "loading the conversation for a send failed");
                None
            }
        }
    }

    /// Why a broadcast's message must not go to this customer now: the broadcast was
    /// cancelled, a person is handling the conversation, or the customer opted out.
    async fn skip_reason(
        &self,
        channel: &ChannelConfig,
        head: &QueuedMessage,
        state: &ConversationState,
        now: i64,
    ) -> Option<&'static str> {
        let bc = broadcast_of(&head.msg.outbox_key)?;
        if let Ok(Some(b)) = self.out.broadcast(&channel.id, bc).await {
            if b.stored_state == "cancelled" {
                return Some("cancelled");
            }
        }
        if window::handover_active(state, now) {
            return Some("handover");
        }
        state.opted_out_at_ms.map(|_| "opted_out")
    }

    /// Moves the next recipients of the channel's running broadcasts into their lanes, keeping
    /// about two seconds of the channel's rate in flight per broadcast: the rest waits in the
    /// broadcast's list, so a reply to a customer never queues behind a whole campaign.
    pub async fn feed_broadcasts(&self, channel: &ChannelConfig) -> usize {
        let ids = match self.out.running_broadcasts(&channel.id).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(channel = %channel.id, error = %e, "reading running broadcasts failed");
                return 0;
            }
        };
        let mut fed = 0;
        for id in ids {
            fed += self.feed_one(channel, &id).await.unwrap_or_else(|e| {
                tracing::warn!(channel = %channel.id, broadcast = %id, error = %e, "feeding a broadcast failed");
                0
            });
        }
        fed
    }

    async fn feed_one(
        &self,
        channel: &ChannelConfig,
        id: &str,
    ) -> Result<usize, super::OutQueueError> {
        let out = &self.out;
        let Some(b) = out.broadcast(&channel.id, id).await? else {
            out.retire_broadcast(&channel.id, id).await?;
            return Ok(0);
        };
        if b.stored_state == "cancelled" || (b.fed >= b.size && b.in_flight() == 0) {
            out.retire_broadcast(&channel.id, id).await?;
            return Ok(0);
        }
        let room = feed_window(channel).saturating_sub(b.in_flight());
        let n = room.min(500).min(b.size.saturating_sub(b.fed)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let message: Reply = serde_json::from_str(&b.message)
            .map_err(|e| super::OutQueueError::Decode(e.to_string()))?;
        let now = self.clock.now_ms();
        let mut items = Vec::with_capacity(n);
        let recipients = out.broadcast_recipients(&channel.id, id, b.fed, n).await?;
        let mut parsed = Vec::with_capacity(recipients.len());
        for r in &recipients {
            let r: serde_json::Value =
                serde_json::from_str(r).map_err(|e| super::OutQueueError::Decode(e.to_string()))?;
            let to = conversation_id(channel.kind, r["to"].as_str().unwrap_or_default());
            parsed.push((to, r));
        }
        // One round trip for every recipient's conversation (the alias map ingress keeps).
        let ids: Vec<String> = parsed.iter().map(|(to, _)| to.clone()).collect();
        let known = self
            .queue
            .conversations_of(&channel.id, &ids)
            .await
            .unwrap_or_else(|_| vec![None; ids.len()]);
        for (i, ((to, r), known)) in parsed.into_iter().zip(known).enumerate() {
            let reply = personalize(&message, &r["params"]).unwrap_or_else(|_| message.clone());
            let customer = known.unwrap_or(to);
            let msg = OutgoingMessage::new(
                &channel.id,
                &customer,
                reply,
                format!("{id}.{}", b.fed + i as u64),
            );
            items.push((customer, QueuedMessage::new(msg, now)));
        }
        Ok(out
            .feed_broadcast(&channel.id, id, b.fed, &items, now)
            .await?
            .unwrap_or(0))
    }

    async fn defer(
        &self,
        grant: &LaneGrant,
        until_ms: i64,
        reason: super::WaitReason,
        bump: Option<&QueuedMessage>,
    ) {
        if let Err(e) = self.out.defer(grant, until_ms, Some(reason), bump).await {
            tracing::warn!(channel = %grant.channel, error = %e, "setting a lane aside failed; its lease will expire");
        }
    }

    /// A given-up message: tell the bot (an `outbound.failed` event through the conversation's
    /// partition) first, then settle it as failed.
    async fn give_up(
        &self,
        grant: &LaneGrant,
        channel: &ChannelConfig,
        head: &QueuedMessage,
        error: &SendError,
    ) {
        let code = failure_code(error);
        tracing::info!(channel = %grant.channel, id = %head.msg.outbox_key, code, error = %error, "outbound message failed");
        if head.msg.reply.is_message() {
            let event = failure_event(channel, head, error, self.clock.now_ms());
            let new = NewEvent {
                channel: channel.id.clone(),
                partitions: channel.partitions,
                id: event.id.clone(),
                payload: event.to_json(),
                contact_ids: vec![head.msg.to.clone()],
            };
            self.persist("queueing outbound.failed", || {
                self.queue.enqueue(std::slice::from_ref(&new))
            })
            .await;
            crate::failpoint::hit("sender.before_settle_failed");
        }
        self.settle(
            grant,
            head,
            &Settle::Failed {
                code: code.to_string(),
                error: error.to_string(),
            },
        )
        .await;
    }

    /// Records how a message left its lane, holding the result and retrying while the store
    /// does not answer: a message the provider accepted must never look unsent.
    async fn settle(&self, grant: &LaneGrant, head: &QueuedMessage, outcome: &Settle) {
        let now = self.clock.now_ms();
        let key = &head.msg.outbox_key;
        let sent = matches!(outcome, Settle::Sent { .. });
        if sent {
            // Until it is recorded, this process is the only one that knows it was sent:
            // any lane of ours that reaches the key waits instead of sending it again.
            self.outbound.hold(key);
        }
        let recorded = self
            .persist("recording a send", || {
                self.out.settle(grant, head, outcome, now)
            })
            .await;
        if recorded || !sent {
            self.outbound.release_held(key);
        }
    }

    /// Runs `write` until it succeeds, with backoff, for at most `record_patience`; whether it
    /// succeeded.
    async fn persist<T, E, F, Fut>(&self, what: &str, write: F) -> bool
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            match write().await {
                Ok(_) => return true,
                Err(e) if started.elapsed() < self.settings.record_patience => {
                    tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "{what} failed; holding the result and retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, "{what} failed for good; the lane will be taken over");
                    return false;
                }
            }
        }
    }

    fn observe_latency(&self, channel: &str, head: &QueuedMessage, started: Instant) {
        let queued_ms = self.clock.now_ms().saturating_sub(head.queued_at).max(0);
        self.metrics.observe_seconds(
            Metric::OutboundQueueAgeSeconds,
            &[("channel", channel)],
            queued_ms as f64 / 1000.0,
        );
        self.metrics.observe_seconds(
            Metric::OutboundSendSeconds,
            &[("channel", channel)],
            started.elapsed().as_secs_f64(),
        );
    }

    fn record_outcome(&self, head: &QueuedMessage, result: Result<&Sent, &SendError>) {
        self.metrics.inc(
            Metric::MessagesSent,
            &[
                ("channel", &head.msg.channel),
                ("outcome", outcome_label(result)),
            ],
        );
        if let Some(observe) = &self.observer {
            observe(&head.msg, result);
        }
    }
}

/// How often a sender moves broadcast recipients into lanes.
const FEED_EVERY_MS: i64 = 200;

/// How many of one broadcast's messages may wait in lanes at once: about two seconds of the
/// channel's rate (at least 20; 1,000 when the rate is unlimited).
fn feed_window(channel: &ChannelConfig) -> u64 {
    match channel.send_rate_per_second {
        0 => 1_000,
        rate => (u64::from(rate) * 2).clamp(20, 5_000),
    }
}

/// The `outbound.failed` event of a given-up message (its id is stable per message, so a
/// retried give-up is deduplicated by the queue).
pub fn failure_event(
    channel: &ChannelConfig,
    head: &QueuedMessage,
    error: &SendError,
    now_ms: i64,
) -> Event {
    let msg = &head.msg;
    Event {
        id: format!("outbound.failed:{}", msg.outbox_key),
        channel: channel.id.clone(),
        kind: channel.kind,
        conversation: msg.to.clone(),
        event_type: EventType::OutboundFailed,
        at: now_ms,
        received_at: Some(now_ms),
        contact: Default::default(),
        message: None,
        status: None,
        field: None,
        timer: None,
        outbound: Some(OutboundFailure {
            id: msg.outbox_key.clone(),
            message: serde_json::to_value(&msg.reply).unwrap_or_default(),
            code: failure_code(error).to_string(),
            provider_code: provider_code(error),
            error: error.to_string(),
        }),
        call: None,
        raw: serde_json::Value::Null,
    }
}
