//! One held partition: read in order, handle one event at a time, ack after success.

use super::{Drained, Shared};
use crate::bot::{Context, HandlerError};
use crate::channel::ChannelKind;
use crate::config::ChannelConfig;
use crate::conversation::store::{Fence, SaveOutcome};
use crate::conversation::window::{self, timers_for, PlannedTimer};
use crate::conversation::ConversationState;
use crate::event::{Event, EventType};
use crate::outbound::OutgoingMessage;
use crate::queue::{timer_member, Entry, Lease, QueueError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub(crate) fn fence(lease: &Lease) -> Fence {
    Fence {
        channel: lease.channel.clone(),
        partition: lease.partition,
        owner: lease.owner.clone(),
        token: lease.token,
    }
}

/// How handling one entry ended.
enum Outcome {
    /// Handled (or deliberately skipped): acknowledge.
    Done,
    /// Failed for good: dead-letter with this error.
    Dead(String),
    /// The lease is gone: stop without acking; the new owner handles the entry.
    LeaseLost,
    /// Shutting down while the entry waits for a retry: leave it unacked for the next owner.
    Abandoned,
}

/// Why one attempt failed.
enum AttemptError {
    Retry(String),
    GiveUp(String),
    LeaseLost,
}

impl From<HandlerError> for AttemptError {
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Retry(m) => AttemptError::Retry(m),
            HandlerError::GiveUp(m) => AttemptError::GiveUp(m),
        }
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
    failures = 0;
    let mut cache = StateCache::default();
    'reading: while !*stop.borrow() {
        if let Err(e) = shared
            .queue
            .promote_due_timers(&lease, shared.clock.now_ms().max(0) as u64, 256)
            .await
        {
            if matches!(e, QueueError::LeaseLost { .. }) {
                return;
            }
            tracing::warn!(channel = %lease.channel, partition = lease.partition, error = %e, "promoting timers failed");
        }
        let entries = match shared
            .queue
            .read(&lease, &shared.id, s.batch, s.block_ms)
            .await
        {
            Ok(entries) => {
                failures = 0;
                entries
            }
            Err(QueueError::LeaseLost { .. }) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(channel = %lease.channel, partition = lease.partition, error = %e, "read failed; retrying");
                if wait_or_stop(&mut stop, backoff(s.retry_backoff_ms, failures)).await {
                    break;
                }
                continue;
            }
        };
        // Handled entries are acked together after the batch (one round trip); a crash before
        // that only means they are handled again by the next owner (at-least-once).
        let mut acks = Vec::with_capacity(entries.len());
        let mut after = Step::Next { dead: false };
        for entry in entries {
            after = step(
                &shared, &lease, &channel, &entry, &mut stop, &mut cache, &mut acks,
            )
            .await;
            if !matches!(after, Step::Next { .. }) || *stop.borrow() {
                break;
            }
        }
        let flushed = flush_acks(&shared, &lease, &mut acks).await;
        match (after, flushed) {
            (Step::Stop, _) | (_, Some(Step::Stop)) => return,
            (Step::Reread, _) | (_, Some(Step::Reread)) => {
                wait_or_stop(&mut stop, backoff(s.retry_backoff_ms, 1)).await;
                continue 'reading;
            }
            _ => {}
        }
    }
}

/// Acks what was handled; `Some(step)` when the loop must stop or read again.
async fn flush_acks(shared: &Shared, lease: &Lease, acks: &mut Vec<String>) -> Option<Step> {
    if acks.is_empty() {
        return None;
    }
    let ids: Vec<&str> = acks.iter().map(String::as_str).collect();
    let result = shared.queue.ack_many(lease, &ids).await;
    acks.clear();
    match result {
        Ok(Some(_)) => None,
        Ok(None) | Err(QueueError::LeaseLost { .. }) => Some(Step::Stop),
        Err(e) => {
            tracing::warn!(channel = %lease.channel, error = %e, "ack failed; the entries will be handled again");
            Some(Step::Reread)
        }
    }
}

/// The conversations of this partition as this task last saved or loaded them. Only the lease
/// holder writes a partition's conversations (every save is fenced and version-checked), so
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

/// What the reading loop does after one entry.
enum Step {
    /// Handled and acked (`dead`: dead-lettered): go on with the next entry.
    Next { dead: bool },
    /// The lease is gone or the task is shutting down: stop without acking.
    Stop,
    /// Acking failed: read again (the entry comes back first, order kept).
    Reread,
}

/// Handles one entry (with retries), then queues its ack (see [`flush_acks`]) or dead-letters
/// it. Shared by the partition task and [`drain`], so both follow the same rules.
async fn step(
    shared: &Shared,
    lease: &Lease,
    channel: &Arc<ChannelConfig>,
    entry: &Entry,
    stop: &mut watch::Receiver<bool>,
    cache: &mut StateCache,
    acks: &mut Vec<String>,
) -> Step {
    let outcome = handle_with_retries(shared, lease, channel, entry, stop, cache).await;
    let dead = matches!(outcome, Outcome::Dead(_));
    let finished = match outcome {
        Outcome::Done => {
            acks.push(entry.id.clone());
            return Step::Next { dead: false };
        }
        Outcome::Dead(error) => {
            shared
                .metrics
                .inc("coexist_dead_letters_total", &[("channel", &lease.channel)]);
            tracing::warn!(channel = %lease.channel, entry = %entry.id, error = %error, "event dead-lettered");
            shared.queue.dead_letter(lease, entry, &error).await
        }
        Outcome::LeaseLost | Outcome::Abandoned => return Step::Stop,
    };
    match finished {
        Ok(true) => Step::Next { dead },
        Ok(false) | Err(QueueError::LeaseLost { .. }) => Step::Stop,
        Err(e) => {
            tracing::warn!(channel = %lease.channel, entry = %entry.id, error = %e, "ack failed; the entry will be handled again");
            Step::Reread
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
    let mut drained = Drained::default();
    let mut rereads = 0;
    let mut cache = StateCache::default();
    loop {
        shared
            .queue
            .promote_due_timers(lease, shared.clock.now_ms().max(0) as u64, 256)
            .await?;
        let entries = shared
            .queue
            .read(lease, &shared.id, shared.settings.batch, 0)
            .await?;
        if entries.is_empty() {
            return Ok(drained);
        }
        let mut acks = Vec::new();
        let mut reread = false;
        for entry in &entries {
            match step(
                shared, lease, channel, entry, &mut stop, &mut cache, &mut acks,
            )
            .await
            {
                Step::Next { dead: true } => drained.dead += 1,
                Step::Next { dead: false } => drained.handled += 1,
                Step::Stop => {
                    return Err(QueueError::LeaseLost {
                        channel: lease.channel.clone(),
                        partition: lease.partition,
                    })
                }
                Step::Reread => {
                    reread = true;
                    break;
                }
            }
        }
        match flush_acks(shared, lease, &mut acks).await {
            Some(Step::Stop) => {
                return Err(QueueError::LeaseLost {
                    channel: lease.channel.clone(),
                    partition: lease.partition,
                })
            }
            Some(_) => reread = true,
            None => {}
        }
        if reread {
            rereads += 1;
            if rereads > 3 {
                return Err(QueueError::Other(format!(
                    "acking on {} partition {} keeps failing",
                    lease.channel, lease.partition
                )));
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

fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(10));
    Duration::from_millis(exp.min(30_000))
}

/// Handles one entry, retrying with backoff while the partition waits (order is kept).
async fn handle_with_retries(
    shared: &Shared,
    lease: &Lease,
    channel: &Arc<ChannelConfig>,
    entry: &Entry,
    stop: &mut watch::Receiver<bool>,
    cache: &mut StateCache,
) -> Outcome {
    let s = &shared.settings;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result = handle_once(shared, lease, channel, entry, cache).await;
        shared.metrics.observe_seconds(
            "coexist_handler_seconds",
            &[("channel", &lease.channel)],
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(event_type) => {
                shared.metrics.inc(
                    "coexist_events_handled_total",
                    &[
                        ("channel", &lease.channel),
                        ("type", event_type),
                        ("outcome", "ok"),
                    ],
                );
                return Outcome::Done;
            }
            Err(AttemptError::LeaseLost) => return Outcome::LeaseLost,
            Err(AttemptError::GiveUp(e)) => return Outcome::Dead(e),
            Err(AttemptError::Retry(e)) if attempt >= s.max_attempts => {
                return Outcome::Dead(format!("{e} (after {attempt} attempts)"));
            }
            Err(AttemptError::Retry(e)) => {
                shared.metrics.inc(
                    "coexist_handler_retries_total",
                    &[("channel", &lease.channel)],
                );
                tracing::info!(channel = %lease.channel, entry = %entry.id, attempt, error = %e, "handler failed; retrying");
                if wait_or_stop(stop, backoff(s.retry_backoff_ms, attempt)).await {
                    // Shutdown: the entry stays pending and is handled again by the next owner.
                    return Outcome::Abandoned;
                }
            }
        }
    }
}

/// One attempt: state, window, bot, replies, save, timers. Returns the event type for metrics.
async fn handle_once(
    shared: &Shared,
    lease: &Lease,
    channel: &Arc<ChannelConfig>,
    entry: &Entry,
    cache: &mut StateCache,
) -> Result<&'static str, AttemptError> {
    let mut event: Event = serde_json::from_str(&entry.payload)
        .map_err(|e| AttemptError::GiveUp(format!("stored event is not valid JSON: {e}")))?;
    if !entry.conversation.is_empty() {
        // The queue resolved aliases: one person, one conversation.
        event.conversation = entry.conversation.clone();
    }
    let event_type = event.event_type.as_str();
    if let Some(received_at) = event.received_at {
        // Wall clock on purpose (not the injectable one): this is a latency of the deployment.
        let waited_ms = crate::ingest::now_ms().saturating_sub(received_at).max(0);
        shared.metrics.observe_seconds(
            "coexist_webhook_to_handler_seconds",
            &[("channel", &lease.channel)],
            waited_ms as f64 / 1000.0,
        );
    }
    let now = shared.clock.now_ms();

    if event.conversation.is_empty() {
        // Account-level: no conversation state; the bot still sees it.
        let mut ctx = Context::new(event, channel.clone(), ConversationState::default(), now);
        shared.bot.handle(&mut ctx).await?;
        return Ok(event_type);
    }

    let fence = fence(lease);
    let stored = match cache.get(&event.conversation) {
        Some(state) => state,
        None => {
            let loaded = shared
                .store
                .load(&lease.channel, &event.conversation)
                .await
                .map_err(|e| AttemptError::Retry(format!("loading conversation: {e}")))?;
            cache.put(&event.conversation, loaded.clone());
            loaded
        }
    };
    let mut state = stored.clone().unwrap_or_default();
    let before = state.clone();

    if let (EventType::Timer, Some(timer)) = (event.event_type, event.timer.as_ref()) {
        if !window::is_timer_current(&state, timer.window_end) {
            // A newer message moved the window end after this timer was armed.
            return Ok("timer_stale");
        }
        shared.metrics.inc(
            "coexist_timers_fired_total",
            &[("channel", &lease.channel), ("timer", &timer.name)],
        );
    }

    state.merge_contact(&event.contact);
    let effects = window::apply_event(
        channel.kind,
        channel.coexistence,
        &mut state,
        &event,
        now,
        shared.settings.handover_ms,
    );
    if let Some(status) = &event.status {
        if let Some(key) = &status.biz_opaque_callback_data {
            if let Err(e) = shared
                .outbound
                .mark_status_seen(&lease.channel, key, &status.message_id)
                .await
            {
                tracing::warn!(channel = %lease.channel, error = %e, "recording a status for the outbox failed");
            }
        }
    }

    // Messages wait while a person handles the conversation; everything else still reaches the bot.
    let paused = event.event_type == EventType::Message && window::handover_active(&state, now);
    let (event, mut state, replies) = if paused {
        (event, state, Vec::new())
    } else {
        let mut ctx = Context::new(event, channel.clone(), state, now).with_effects(effects);
        shared.bot.handle(&mut ctx).await?;
        let (event, state, replies, _) = ctx.into_parts();
        (event, state, replies)
    };

    // Replies leave in order, each at most once (idempotency key: event id + slot).
    for (index, reply) in replies {
        let message = OutgoingMessage {
            channel: lease.channel.clone(),
            to: event.conversation.clone(),
            reply,
            outbox_key: format!("{}:{index}", event.id),
            reply_to: None,
        };
        let window_now = window::window(channel.kind, &state, shared.clock.now_ms());
        let sent = shared
            .outbound
            .send(&message, channel.kind, window_now)
            .await;
        if let Some(observe) = &shared.observer {
            observe(&message, sent.as_ref());
        }
        match sent {
            Ok(_) => window::record_outbound(&mut state, shared.clock.now_ms()),
            Err(e) if e.closes_window() => {
                // Meta said 131047 (or our rules did): the window is closed whatever we computed.
                tracing::info!(channel = %lease.channel, event = %event.id, error = %e, "reply refused: window closed");
                window::mark_window_closed(channel.kind, &mut state, shared.clock.now_ms());
            }
            Err(e) if e.is_retryable() => {
                return Err(AttemptError::Retry(format!("sending reply {index}: {e}")))
            }
            Err(e) => {
                tracing::warn!(channel = %lease.channel, event = %event.id, error = %e, "reply not delivered (no retry)");
            }
        }
    }

    if state != before {
        match shared
            .store
            .save(&fence, &lease.channel, &event.conversation, &state)
            .await
        {
            Ok(SaveOutcome::Saved { version }) => {
                state.version = version;
                cache.put(&event.conversation, Some(state.clone()));
            }
            Ok(SaveOutcome::Fenced) => return Err(AttemptError::LeaseLost),
            Ok(SaveOutcome::Conflict { stored_version }) => {
                cache.forget(&event.conversation);
                return Err(AttemptError::Retry(format!(
                    "conversation changed under us (version {stored_version})"
                )));
            }
            Err(e) => {
                // The write may or may not have happened: read it again next time.
                cache.forget(&event.conversation);
                return Err(AttemptError::Retry(format!("saving conversation: {e}")));
            }
        }
    }

    if channel.kind == ChannelKind::Waba && before.window_end_ms != state.window_end_ms {
        rearm_timers(shared, lease, &event, &before, &state).await?;
    }
    Ok(event_type)
}

/// Disarms the timers planned for the old window end and arms those of the new one, in one
/// atomic round trip.
async fn rearm_timers(
    shared: &Shared,
    lease: &Lease,
    event: &Event,
    before: &ConversationState,
    after: &ConversationState,
) -> Result<(), AttemptError> {
    let now = shared.clock.now_ms();
    let leads = &shared.settings.leads_ms;
    let member =
        |t: &PlannedTimer| timer_member(&timer_event(event, t).to_json(), &event.conversation);
    // Plan the old timers as of their own window (now may be past some of them: use 0).
    let cancel: Vec<String> = timers_for(ChannelKind::Waba, before, 0, leads)
        .iter()
        .map(member)
        .collect();
    let arm: Vec<(String, u64)> = timers_for(ChannelKind::Waba, after, now, leads)
        .iter()
        .map(|t| (member(t), t.due_ms.max(0) as u64))
        .collect();
    shared
        .queue
        .replace_timers(&lease.channel, lease.partition, &cancel, &arm)
        .await
        .map_err(|e| AttemptError::Retry(format!("re-arming window timers: {e}")))
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
        raw: serde_json::Value::Null,
    }
}
