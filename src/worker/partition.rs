//! One held partition: read in order, handle one event at a time, commit, ack.
//!
//! Handling an event is: decode → load the conversation → apply the event to the window
//! rules → run the bot → **commit** (state, timers and replies in one fenced step) → ack.
//! Nothing here sends or waits for a rate limit: replies go to the outbound queue in the
//! commit, and the lane sender delivers them. A handler runs again only when it failed (forward
//! bot 5xx, timeout) or its worker died before the commit; the outbox keys of the replies
//! (`<event id>:<index>`) make the commit of a re-handled event queue nothing twice.

use super::commit::Commit;
use super::{Drained, Shared};
use crate::bot::{Context, HandlerError};
use crate::channel::ChannelKind;
use crate::config::ChannelConfig;
use crate::conversation::store::SaveOutcome;
use crate::conversation::window::{self, timers_for, PlannedTimer};
use crate::conversation::ConversationBackend;
use crate::conversation::ConversationState;
use crate::event::{Event, EventType};
use crate::media::store::StoreError;
use crate::metrics::Metric;
use crate::outbound::RateBackend;
use crate::outbound::{MessageStatus, OutQueueBackend, OutgoingMessage, QueuedMessage};
use crate::queue::QueueBackend;
use crate::queue::{timer_member, Entry, Lease, QueueError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How one attempt at an entry ended.
enum Handled {
    /// Handled (or deliberately skipped), committed: ack. Carries the event type for metrics.
    Done(&'static str),
    /// Failed in a way another attempt can fix (bot 5xx, store error, version conflict).
    Retry(String),
    /// Failed for good: dead-letter with this error.
    GiveUp(String),
    /// The lease is gone: stop without acking; the new owner handles the entry.
    LeaseLost,
}

impl From<HandlerError> for Handled {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Retry(m) => Handled::Retry(m),
            HandlerError::GiveUp(m) => Handled::GiveUp(m),
        }
    }
}

/// How the reading loop goes on after an entry or a batch.
enum Next {
    /// Go on (`dead`: the entry was dead-lettered).
    Continue { dead: bool },
    /// The lease is gone, or the task is shutting down: stop without acking.
    Stop,
    /// Acking failed: read again (the entries come back first, order kept).
    Reread,
}

/// The conversations of this partition as this task last saved or loaded them. Only the lease
/// holder writes a partition's conversations (every commit is fenced and version-checked), so
/// while the task holds the lease its copy is current and the load round trip is skipped; a
/// new task (a new lease) starts empty. A stale copy can only cost a version conflict, after
/// which the entry is dropped from the cache and read again.
#[derive(Default)]
pub(crate) struct StateCache {
    states: HashMap<String, Option<ConversationState>>,
}

impl StateCache {
    /// Conversations remembered at most; past that the cache starts over.
    const CAPACITY: usize = 20_000;

    fn get(&self, conversation: &str) -> Option<Option<ConversationState>> {
        self.states.get(conversation).cloned()
    }

    fn put(&mut self, conversation: &str, state: Option<ConversationState>) {
        if self.states.len() >= Self::CAPACITY {
            self.states.clear();
        }
        self.states.insert(conversation.to_string(), state);
    }

    fn forget(&mut self, conversation: &str) {
        self.states.remove(conversation);
    }
}

/// One held partition: the reading loop and the steps of handling one entry.
struct PartitionTask<'a> {
    shared: &'a Shared,
    lease: &'a Lease,
    channel: &'a Arc<ChannelConfig>,
    cache: StateCache,
}

/// What one pass over the partition did.
#[derive(Default)]
struct Pass {
    read: usize,
    handled: u64,
    dead: u64,
}

impl<'a> PartitionTask<'a> {
    fn new(shared: &'a Shared, lease: &'a Lease, channel: &'a Arc<ChannelConfig>) -> Self {
        PartitionTask {
            shared,
            lease,
            channel,
            cache: StateCache::default(),
        }
    }

    // ---------------------------------------------------------------- the reading loop

    /// One read → handle each → flush acks round, shared by [`run`] and [`drain`]: promotes
    /// due timers, reads up to a batch (waiting up to `block_ms`), handles the entries in
    /// order, then acks them together (a crash before that only means they are handled again
    /// by the next owner: at-least-once). `Err(next)` when the loop must stop or read again.
    async fn pass(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        block_ms: u64,
    ) -> Result<Pass, (Next, QueueError)> {
        let (shared, lease) = (self.shared, self.lease);
        let now = shared.clock.now_ms().max(0) as u64;
        match shared.queue.promote_due_timers(lease, now, 256).await {
            Ok(_) => {}
            Err(e @ QueueError::LeaseLost { .. }) => return Err((Next::Stop, e)),
            Err(e) => {
                tracing::warn!(channel = %lease.channel, partition = lease.partition, error = %e, "promoting timers failed");
            }
        }
        let entries = match shared
            .queue
            .read(lease, &shared.id, shared.settings.batch, block_ms)
            .await
        {
            Ok(entries) => entries,
            Err(e @ QueueError::LeaseLost { .. }) => return Err((Next::Stop, e)),
            Err(e) => return Err((Next::Reread, e)),
        };
        let mut pass = Pass {
            read: entries.len(),
            ..Pass::default()
        };
        let mut acks = Vec::with_capacity(entries.len());
        let mut after = Next::Continue { dead: false };
        for entry in &entries {
            after = self.step(entry, stop, &mut acks).await;
            match after {
                Next::Continue { dead: true } => pass.dead += 1,
                Next::Continue { dead: false } => pass.handled += 1,
                _ => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        let flushed = self.flush_acks(&mut acks).await;
        let lost = || QueueError::LeaseLost {
            channel: lease.channel.clone(),
            partition: lease.partition,
        };
        match (after, flushed) {
            (Next::Stop, _) | (_, Some(Next::Stop)) => Err((Next::Stop, lost())),
            (Next::Reread, _) | (_, Some(Next::Reread)) => Err((
                Next::Reread,
                QueueError::Other("acking failed; the entries are handled again".into()),
            )),
            _ => Ok(pass),
        }
    }

    /// Acks what was handled; `Some(next)` when the loop must stop or read again.
    async fn flush_acks(&self, acks: &mut Vec<String>) -> Option<Next> {
        if acks.is_empty() {
            return None;
        }
        let ids: Vec<&str> = acks.iter().map(String::as_str).collect();
        let result = self.shared.queue.ack_many(self.lease, &ids).await;
        acks.clear();
        match result {
            Ok(Some(_)) => None,
            Ok(None) | Err(QueueError::LeaseLost { .. }) => Some(Next::Stop),
            Err(e) => {
                tracing::warn!(channel = %self.lease.channel, error = %e, "ack failed; the entries will be handled again");
                Some(Next::Reread)
            }
        }
    }

    /// Handles one entry (with retries), then queues its ack or dead-letters it.
    async fn step(
        &mut self,
        entry: &Entry,
        stop: &mut watch::Receiver<bool>,
        acks: &mut Vec<String>,
    ) -> Next {
        let (shared, lease) = (self.shared, self.lease);
        let error = match self.handle_with_retries(entry, stop).await {
            Some(Handled::Done(_)) => {
                acks.push(entry.id.clone());
                return Next::Continue { dead: false };
            }
            Some(Handled::GiveUp(error)) => error,
            Some(Handled::Retry(_) | Handled::LeaseLost) | None => return Next::Stop,
        };
        shared
            .metrics
            .inc(Metric::DeadLetters, &[("channel", &lease.channel)]);
        tracing::warn!(channel = %lease.channel, entry = %entry.id, error = %error, "event dead-lettered");
        match shared.queue.dead_letter(lease, entry, &error).await {
            Ok(true) => Next::Continue { dead: true },
            Ok(false) | Err(QueueError::LeaseLost { .. }) => Next::Stop,
            Err(e) => {
                tracing::warn!(channel = %lease.channel, entry = %entry.id, error = %e, "ack failed; the entry will be handled again");
                Next::Reread
            }
        }
    }

    /// Handles one entry, retrying with backoff while the partition waits (order is kept).
    /// `Done`, `GiveUp` (retries used up included) or `LeaseLost`; `None` when shutting down
    /// while the entry waits for a retry (it stays pending for the next owner).
    async fn handle_with_retries(
        &mut self,
        entry: &Entry,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Handled> {
        let (shared, lease) = (self.shared, self.lease);
        let s = &shared.settings;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.handle(entry).await;
            shared.metrics.observe_seconds(
                Metric::HandlerSeconds,
                &[("channel", &lease.channel)],
                started.elapsed().as_secs_f64(),
            );
            match result {
                Handled::Done(event_type) => {
                    shared.metrics.inc(
                        Metric::EventsHandled,
                        &[
                            ("channel", &lease.channel),
                            ("type", event_type),
                            ("outcome", "ok"),
                        ],
                    );
                    return Some(result);
                }
                Handled::Retry(e) if attempt >= s.max_attempts => {
                    return Some(Handled::GiveUp(format!("{e} (after {attempt} attempts)")));
                }
                Handled::Retry(e) => {
                    shared
                        .metrics
                        .inc(Metric::HandlerRetries, &[("channel", &lease.channel)]);
                    tracing::info!(channel = %lease.channel, entry = %entry.id, attempt, error = %e, "handler failed; retrying");
                    if wait_or_stop(stop, backoff(s.retry_backoff_ms, attempt)).await {
                        return None;
                    }
                }
                other => return Some(other),
            }
        }
    }

    // ---------------------------------------------------------------- handling one entry

    /// One attempt: decode, load, apply, run the bot, commit.
    async fn handle(&mut self, entry: &Entry) -> Handled {
        let mut event = match self.decode(entry) {
            Ok(event) => event,
            Err(e) => return Handled::GiveUp(e),
        };
        let event_type = event.event_type.as_str();
        self.keep_media(&mut event).await;
        let now = self.shared.clock.now_ms();
        // Account-level events, and statuses that named no recipient (the wamid index tells
        // the bot whose they are, but they were queued in another partition than the
        // conversation's: its state stays with its own partition).
        let account_level = event.conversation.is_empty();
        self.track_status(&mut event).await;
        if account_level {
            return self.handle_without_conversation(event, now).await;
        }
        let loaded = match self.load(&event.conversation).await {
            Ok(state) => state,
            Err(e) => return Handled::Retry(e),
        };
        let mut state = loaded.clone().unwrap_or_default();
        if let (EventType::Timer, Some(timer)) = (event.event_type, event.timer.as_ref()) {
            if !window::is_timer_current(&state, timer.window_end) {
                // A newer message moved the window end after this timer was armed.
                return Handled::Done("timer_stale");
            }
            self.shared.metrics.inc(
                Metric::TimersFired,
                &[("channel", &self.lease.channel), ("timer", &timer.name)],
            );
        }
        let before = state.clone();
        let effects = window::apply_event(
            window::WindowRules::of(self.channel.as_ref(), self.shared.settings.handover_ms),
            &mut state,
            &event,
            now,
        );
        if let (EventType::Message, Some(text)) = (
            event.event_type,
            event.message.as_ref().and_then(|m| m.text.as_deref()),
        ) {
            let at = window::event_time(&event, now);
            window::note_consent(&mut state, text, at, &self.shared.settings.opt_out_words);
        }
        // While a person handles the conversation, customer messages are acked without the bot
        // seeing them (the person answers them on the phone); everything else still reaches the
        // bot. When the handover ends, the bot sees the messages that come after.
        let paused = event.event_type == EventType::Message && window::handover_active(&state, now);
        let (event, mut state, replies) = if paused {
            (event, state, Vec::new())
        } else {
            let mut ctx = Context::new(event, self.channel.clone(), state, now)
                .with_effects(effects)
                .with_media(self.shared.outbound.media().clone());
            if let Err(e) = self.shared.bot.handle(&mut ctx).await {
                return e.into();
            }
            let (event, state, replies) = ctx.into_parts();
            (event, state, replies)
        };
        let replies = self.queue_replies(&event, &mut state, replies, now);
        match self
            .commit(&event, loaded.as_ref(), &before, &state, replies, now)
            .await
        {
            Handled::Done(_) => Handled::Done(event_type),
            other => other,
        }
    }

    /// `[media] store`: copies the message's file before anyone sees the event and notes
    /// the copy's path in it. A copy that cannot be made is logged and counted, and the event
    /// goes on without it (the bot can still try `ctx.media()`): a lost photo must not hold the
    /// conversation.
    async fn keep_media(&self, event: &mut Event) {
        let Some(store) = &self.shared.media_store else {
            return;
        };
        if event.event_type != EventType::Message {
            return;
        }
        let Some(message) = event.message.as_mut() else {
            return;
        };
        let Some(media) = message.media.as_mut().filter(|m| m.stored_path.is_none()) else {
            return;
        };
        let kept = store
            .keep(
                self.shared.outbound.media(),
                &event.channel,
                &message.id,
                media,
            )
            .await;
        let outcome = match kept {
            Ok(path) => {
                media.stored_path = Some(path.display().to_string());
                "kept"
            }
            Err(e) => {
                tracing::warn!(channel = %event.channel, message = %message.id, error = %e, "could not keep a copy of the media; the event goes on without it");
                match &e {
                    StoreError::Media(m) => m.code(),
                    StoreError::Io { .. } => "io_error",
                }
            }
        };
        self.shared.metrics.inc(
            Metric::MediaStored,
            &[("channel", &self.lease.channel), ("outcome", outcome)],
        );
    }

    fn decode(&self, entry: &Entry) -> Result<Event, String> {
        let mut event: Event = serde_json::from_str(&entry.payload)
            .map_err(|e| format!("stored event is not valid JSON: {e}"))?;
        if !entry.conversation.is_empty() {
            // The queue resolved aliases: one person, one conversation.
            event.conversation = entry.conversation.clone();
        }
        if let Some(received_at) = event.received_at {
            // Wall clock on purpose (not the injectable one): this is a latency of the deployment.
            let waited_ms = crate::ingest::now_ms().saturating_sub(received_at).max(0);
            self.shared.metrics.observe_seconds(
                Metric::WebhookToHandlerSeconds,
                &[("channel", &self.lease.channel)],
                waited_ms as f64 / 1000.0,
            );
        }
        Ok(event)
    }

    /// A status of a message we queued moves its lifecycle record forward (never back). A
    /// status that names no recipient finds its conversation through the wamid index, and is
    /// tracked before the bot sees it; any other is tracked beside the handling (records only
    /// move forward, so the order of two updates does not matter), so the partition does not
    /// wait for the lookup.
    async fn track_status(&self, event: &mut Event) {
        let Some(status) = event.status.clone() else {
            return;
        };
        let at = window::event_time(event, self.shared.clock.now_ms());
        let tracker = StatusTracker {
            channel: self.lease.channel.clone(),
            out: self.shared.out.clone(),
            outbound: self.shared.outbound.clone(),
        };
        if event.conversation.is_empty() {
            if let Some(customer) = tracker.track(&status, at).await {
                event.conversation = customer;
            }
        } else {
            tokio::spawn(async move {
                tracker.track(&status, at).await;
            });
        }
    }

    /// A `phone_number_quality_update` that names the messaging limit now in force: the
    /// sender uses it instead of `messaging_limit_per_day` (for the channel's portfolio when it
    /// has one: Meta's limit is per business portfolio).
    async fn apply_announced_limit(
        &self,
        event: &Event,
    ) -> Result<(), crate::outbound::rate::RateError> {
        if event.field.as_deref() != Some("phone_number_quality_update")
            || self.channel.kind != ChannelKind::Waba
        {
            return Ok(());
        }
        let Some(limit) = crate::outbound::rate::announced_tier(&event.raw) else {
            return Ok(());
        };
        let portfolio = self.channel.portfolio.as_deref();
        self.shared
            .outbound
            .rate_limiter()
            .announce_limit(&self.channel.id, portfolio, limit)
            .await?;
        tracing::info!(channel = %self.channel.id, portfolio, limit, "Meta announced a new messaging limit (0 = unlimited)");
        Ok(())
    }

    /// Account-level events (and statuses of another partition's conversation): the bot sees
    /// them; there is no conversation state, and replies have nobody to go to.
    async fn handle_without_conversation(&self, event: Event, now: i64) -> Handled {
        if let Err(e) = self.apply_announced_limit(&event).await {
            return Handled::Retry(format!("messaging limit not recorded: {e}"));
        }
        let event_type = event.event_type.as_str();
        let mut ctx = Context::new(
            event,
            self.channel.clone(),
            ConversationState::default(),
            now,
        )
        .with_media(self.shared.outbound.media().clone());
        if let Err(e) = self.shared.bot.handle(&mut ctx).await {
            return e.into();
        }
        let (event, _, replies) = ctx.into_parts();
        if !replies.is_empty() && event.conversation.is_empty() {
            tracing::warn!(channel = %self.lease.channel, event = %event.id, replies = replies.len(),
                "replies to an event with no conversation are dropped");
        }
        Handled::Done(event_type)
    }

    async fn load(&mut self, conversation: &str) -> Result<Option<ConversationState>, String> {
        if let Some(state) = self.cache.get(conversation) {
            return Ok(state);
        }
        let loaded = self
            .shared
            .store
            .load(&self.lease.channel, conversation)
            .await
            .map_err(|e| format!("loading conversation: {e}"))?;
        self.cache.put(conversation, loaded.clone());
        Ok(loaded)
    }

    /// The replies as queued messages (outbox key `<event id>:<slot>`); each message counts as
    /// outbound for the conversation.
    fn queue_replies(
        &self,
        event: &Event,
        state: &mut ConversationState,
        replies: Vec<(usize, crate::outbound::Reply)>,
        now: i64,
    ) -> Vec<QueuedMessage> {
        replies
            .into_iter()
            .map(|(index, reply)| {
                if reply.is_message() {
                    window::record_outbound(state, now);
                }
                QueuedMessage::new(
                    OutgoingMessage::new(
                        &self.lease.channel,
                        &event.conversation,
                        reply,
                        OutgoingMessage::outbox_key_for(&event.id, index),
                    ),
                    now,
                )
            })
            .collect()
    }

    /// The one fenced write: state (if changed), the new window's timers, the replies.
    async fn commit(
        &mut self,
        event: &Event,
        loaded: Option<&ConversationState>,
        before: &ConversationState,
        state: &ConversationState,
        replies: Vec<QueuedMessage>,
        now: i64,
    ) -> Handled {
        let (cancel_timers, arm_timers) = self.plan_timers(event, before, state, now);
        let has_replies = !replies.is_empty();
        let commit = Commit {
            lease: self.lease,
            conversation: &event.conversation,
            state: (state != before || loaded.is_none() && has_replies).then_some(state),
            version: before.version,
            cancel_timers,
            arm_timers,
            replies,
            now_ms: now,
        };
        if commit.is_empty() {
            return Handled::Done("");
        }
        crate::failpoint::hit("worker.before_commit");
        let committed = self.shared.committer.commit(&commit).await;
        if committed.is_ok() {
            crate::failpoint::hit("worker.after_commit");
        }
        match committed {
            Ok(SaveOutcome::Saved { version }) => {
                if commit.state.is_some() {
                    let mut saved = state.clone();
                    saved.version = version;
                    self.cache.put(&event.conversation, Some(saved));
                }
                if has_replies {
                    self.shared.metrics.add(
                        Metric::OutboundQueued,
                        &[("channel", &self.lease.channel)],
                        commit.replies.len() as u64,
                    );
                    self.shared.wake.notify_one();
                }
                Handled::Done("")
            }
            Ok(SaveOutcome::Fenced) => Handled::LeaseLost,
            Ok(SaveOutcome::Conflict { stored_version }) => {
                self.cache.forget(&event.conversation);
                Handled::Retry(format!(
                    "conversation changed under us (version {stored_version})"
                ))
            }
            Err(e) => {
                // It may or may not have been written: read the state again next time.
                self.cache.forget(&event.conversation);
                Handled::Retry(e.to_string())
            }
        }
    }

    /// Timers to disarm (planned for the old window end) and to arm (for the new one), when
    /// the window end moved on a WABA channel.
    fn plan_timers(
        &self,
        event: &Event,
        before: &ConversationState,
        after: &ConversationState,
        now: i64,
    ) -> (Vec<String>, Vec<(String, u64)>) {
        if self.channel.kind != ChannelKind::Waba || before.window_end_ms == after.window_end_ms {
            return (Vec::new(), Vec::new());
        }
        let leads = &self.shared.settings.leads_ms;
        let member =
            |t: &PlannedTimer| timer_member(&timer_event(event, t).to_json(), &event.conversation);
        // Plan the old timers as of their own window (now may be past some of them: use 0).
        let cancel = timers_for(ChannelKind::Waba, before, 0, leads)
            .iter()
            .map(member)
            .collect();
        let arm = timers_for(ChannelKind::Waba, after, now, leads)
            .iter()
            .map(|t| (member(t), t.due_ms.max(0) as u64))
            .collect();
        (cancel, arm)
    }
}

/// Moves the lifecycle record of the message a status is about.
struct StatusTracker {
    channel: String,
    out: crate::outbound::OutQueue,
    outbound: crate::outbound::Outbound,
}

impl StatusTracker {
    /// Finds the message (by `biz_opaque_callback_data`, else the wamid index), moves its
    /// record forward; returns the customer when the index named one.
    async fn track(&self, status: &crate::event::Status, at: i64) -> Option<String> {
        let ch = &self.channel;
        let (id, customer) = match &status.biz_opaque_callback_data {
            Some(key) => {
                if let Err(e) = self
                    .outbound
                    .mark_status_seen(ch, key, &status.message_id)
                    .await
                {
                    tracing::warn!(channel = %ch, error = %e, "recording a status for the outbox failed");
                }
                (key.clone(), None)
            }
            // Gateways echo nothing, and Meta is not documented to echo the key on every
            // status: the wamid index finds the message.
            None => {
                let (id, customer) = self
                    .out
                    .find_by_wamid(ch, &status.message_id)
                    .await
                    .ok()
                    .flatten()?;
                (id, Some(customer).filter(|c| !c.is_empty()))
            }
        };
        if let Some(next) = lifecycle_status(&status.status) {
            let error = status.errors.first().map(|e| {
                (
                    e.code.to_string(),
                    e.title.clone().or(e.message.clone()).unwrap_or_default(),
                )
            });
            if let Err(e) = self
                .out
                .advance(
                    ch,
                    &id,
                    next,
                    at,
                    Some(&status.message_id),
                    error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
                )
                .await
            {
                tracing::warn!(channel = %ch, error = %e, "moving an outbound record forward failed");
            }
        }
        customer
    }
}

/// The lifecycle status a provider status names (`played` counts as read; gateway-only
/// statuses such as `pending` move nothing).
fn lifecycle_status(name: &str) -> Option<MessageStatus> {
    match name {
        "sent" | "server" => Some(MessageStatus::Sent),
        "delivered" | "device" => Some(MessageStatus::Delivered),
        "read" | "played" => Some(MessageStatus::Read),
        "failed" | "error" => Some(MessageStatus::Failed),
        _ => None,
    }
}

/// The partition task: runs until told to stop or the lease is lost.
pub(crate) async fn run(shared: Arc<Shared>, lease: Lease, mut stop: watch::Receiver<bool>) {
    let s = &shared.settings;
    let mut failures = 0u32;
    while let Err(e) = shared
        .queue
        .ensure_group(&lease.channel, lease.partition)
        .await
    {
        failures += 1;
        tracing::warn!(channel = %lease.channel, partition = lease.partition, error = %e, "cannot create the consumer group; retrying");
        if wait_or_stop(&mut stop, backoff(s.retry_backoff_ms, failures)).await {
            return;
        }
    }
    let Some(channel) = shared.channels.get(&lease.channel).cloned() else {
        tracing::error!(channel = %lease.channel, "lease on a channel that is not configured");
        return;
    };
    let mut task = PartitionTask::new(&shared, &lease, &channel);
    failures = 0;
    while !*stop.borrow() {
        match task.pass(&mut stop, s.block_ms).await {
            Ok(_) => failures = 0,
            Err((Next::Stop, _)) => return,
            Err((_, e)) => {
                failures += 1;
                tracing::warn!(channel = %lease.channel, partition = lease.partition, error = %e, "reading again");
                if wait_or_stop(&mut stop, backoff(s.retry_backoff_ms, failures)).await {
                    return;
                }
            }
        }
    }
}

/// Handles everything the partition holds now (timers due at the clock's now included), on the
/// calling task, then returns: [`super::Worker::drain`].
pub(crate) async fn drain(
    shared: &Shared,
    lease: &Lease,
    channel: &Arc<ChannelConfig>,
) -> Result<Drained, QueueError> {
    shared
        .queue
        .ensure_group(&lease.channel, lease.partition)
        .await?;
    // Nobody ever stops a drain: it ends when the partition is empty.
    let (_never, mut stop) = watch::channel(false);
    let mut task = PartitionTask::new(shared, lease, channel);
    let mut drained = Drained::default();
    let mut rereads = 0;
    loop {
        match task.pass(&mut stop, 0).await {
            Ok(pass) if pass.read == 0 => return Ok(drained),
            Ok(pass) => {
                drained.handled += pass.handled;
                drained.dead += pass.dead;
            }
            Err((Next::Stop, e)) => return Err(e),
            Err((_, e)) => {
                rereads += 1;
                if rereads > 3 {
                    return Err(QueueError::Other(format!(
                        "{} partition {} keeps failing: {e}",
                        lease.channel, lease.partition
                    )));
                }
            }
        }
    }
}

/// Sleeps `d` unless told to stop first; `true` when stopping.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(d) => *stop.borrow(),
    }
}

/// Handler retry delay: `base_ms` after the first failure, doubled each time, at most 30 s.
fn backoff(base_ms: u64, attempt: u32) -> Duration {
    crate::clock::backoff(
        Duration::from_millis(base_ms),
        2,
        attempt.saturating_sub(1).min(10),
        Duration::from_secs(30),
    )
}

/// The event a timer produces when it fires. Its id is stable for one window end and slot,
/// so arming the same timer twice yields the same member.
pub(crate) fn timer_event(source: &Event, timer: &PlannedTimer) -> Event {
    Event {
        id: format!(
            "timer:{}:{}:{}",
            source.conversation,
            timer.slot(),
            timer.window_end_ms
        ),
        channel: source.channel.clone(),
        kind: source.kind,
        conversation: source.conversation.clone(),
        event_type: EventType::Timer,
        at: timer.due_ms,
        received_at: None,
        contact: Default::default(),
        message: None,
        status: None,
        field: None,
        timer: Some(timer.to_timer()),
        outbound: None,
        call: None,
        raw: serde_json::Value::Null,
    }
}
