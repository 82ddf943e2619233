//! Workers: partition leases, ordered at-least-once handling, rebalancing, shutdown.
//!
//! A worker process holds leases on some of the channel partitions (its fair share of all
//! partitions among the live workers) and runs one task per held partition. A task reads its
//! partition in order and handles one event at a time, so one conversation's events are
//! handled in order and never concurrently; different partitions run in parallel.
//!
//! Leases expire unless renewed: a worker killed with SIGKILL loses its partitions after
//! `lease_ms`, and the next owner first re-handles the entries it had not acknowledged.
//! Every write a task makes (state, ack, dead letter, timers) is fenced by the lease's token,
//! so a worker that lost its lease while paused cannot overwrite the new owner's work.

pub(crate) mod commit;
mod partition;

use crate::backend::Backend;
use crate::bot::Bot;
use crate::config::{ChannelConfig, Config};
use crate::conversation::window::leads_from_minutes;
use crate::conversation::ConversationStore;
use crate::media::store::MediaStore;
use crate::metrics::{Metric, Metrics};
use crate::outbound::queue::MemoryOutQueue;
use crate::outbound::{
    LaneSender, LaneSettings, OutQueue, OutQueueOptions, Outbound, OutgoingMessage, SendError, Sent,
};
use crate::queue::QueueBackend;
use crate::queue::{Lease, Queue, QueueError};
use commit::Committer;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// How long SIGTERM waits for in-flight events before leaving them to the next owner.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Tunables of a worker, from `[worker]` and `[bot]`.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub lease_ms: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    /// At most this many partitions held by one process.
    pub concurrency: usize,
    pub leads_ms: Vec<i64>,
    pub handover_ms: i64,
    pub block_ms: u64,
    /// Entries read per call.
    pub batch: usize,
    /// A customer's message that is one of these opts them out of broadcasts.
    pub opt_out_words: Vec<String>,
}

impl WorkerSettings {
    pub fn from_config(config: &Config) -> Self {
        WorkerSettings {
            lease_ms: config.worker.lease_ms.max(300),
            max_attempts: config.worker.max_attempts,
            retry_backoff_ms: config.worker.retry_backoff_ms,
            concurrency: config.worker.concurrency,
            leads_ms: leads_from_minutes(&config.worker.window_expiring_minutes),
            handover_ms: (config.bot.handover_secs as i64).saturating_mul(1000),
            // Short enough that timers and shutdown are noticed promptly.
            block_ms: config.worker.block_ms.clamp(10, 5_000),
            batch: 64,
            opt_out_words: config.api.as_ref().map_or_else(
                || {
                    crate::config::defaults::OPT_OUT_WORDS
                        .map(String::from)
                        .to_vec()
                },
                |a| a.opt_out_words.clone(),
            ),
        }
    }

    /// How often leases are renewed and the fair share is recomputed.
    fn tick(&self) -> Duration {
        Duration::from_millis((self.lease_ms / 3).clamp(100, 1_000))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Where a worker reads the time (milliseconds since the Unix epoch): the window rules,
/// timer promotion and the bot's `Context::now_ms` all see this clock.
/// [`Clock::System`] in production; [`Clock::manual`] lets the bot test kit move time.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A clock that stands still at `start_ms` until [`Clock::set_ms`] or [`Clock::advance`].
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => crate::ingest::now_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Sets a manual clock (never moves it backwards); no effect on the system clock.
    pub fn set_ms(&self, ms: i64) {
        if let Clock::Manual(now) = self {
            now.fetch_max(ms, Ordering::SeqCst);
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(now) = self {
            now.fetch_add(
                by.as_millis().min(i64::MAX as u128) as i64,
                Ordering::SeqCst,
            );
        }
    }
}

/// Called after every queued message the sender settled, with the outcome (the test kit records
/// what would have been sent through it).
pub type SendObserver = Arc<dyn Fn(&OutgoingMessage, Result<&Sent, &SendError>) + Send + Sync>;

/// What every partition task of a process shares.
pub(crate) struct Shared {
    pub id: String,
    pub channels: HashMap<String, Arc<ChannelConfig>>,
    pub queue: Queue,
    pub store: ConversationStore,
    pub bot: Arc<dyn Bot>,
    pub outbound: Outbound,
    pub metrics: Metrics,
    pub settings: WorkerSettings,
    pub clock: Clock,
    pub observer: Option<SendObserver>,
    /// Where a handled event's state, timers and replies are committed, in one step.
    pub committer: Committer,
    /// The outbound queue the replies go to (statuses move its records forward).
    pub out: OutQueue,
    /// Wakes this process's sender when a commit queued replies.
    pub wake: Arc<Notify>,
    pub sending: LaneSettings,
    /// `[media] store`: where inbound media files are copied before the bot runs.
    pub media_store: Option<MediaStore>,
}

/// What [`Worker::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Entries handled and acknowledged (stale timers included).
    pub handled: u64,
    /// Entries that went to the dead-letter stream.
    pub dead: u64,
    /// Queued messages the sender sent (not counting ones found already sent).
    pub sent: u64,
    /// Queued messages the sender gave up (each became an `outbound.failed` event).
    pub failed_sends: u64,
}

/// A worker process's engine: partition tasks that handle events and commit their results,
/// and a sender that drains the outbound queue lane by lane.
pub struct Worker {
    shared: Arc<Shared>,
    partitions: Vec<(String, u32)>,
    sender: OnceLock<Arc<LaneSender>>,
}

/// How often the kept media copies are checked against `[media] retention_days`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes expired media copies now and then every [`PRUNE_EVERY`], until `shutdown`.
async fn prune_media(store: MediaStore, mut shutdown: watch::Receiver<bool>) {
    loop {
        let job = store.clone();
        match tokio::task::spawn_blocking(move || job.prune(std::time::SystemTime::now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "expired media copies deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the media store failed"),
            Err(e) => tracing::warn!(error = %e, "pruning the media store stopped"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

/// A unique consumer name: host, pid and a random part (two processes never share one).
pub fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

struct Held {
    lease: Lease,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    pub fn new(
        config: &Config,
        backend: &Backend,
        store: ConversationStore,
        bot: Arc<dyn Bot>,
        outbound: Outbound,
        metrics: Metrics,
        id: String,
    ) -> Self {
        let channels = config
            .channels
            .iter()
            .map(|c| (c.id.clone(), Arc::new(c.clone())))
            .collect();
        let partitions = config
            .channels
            .iter()
            .flat_map(|c| (0..c.partitions).map(move |p| (c.id.clone(), p)))
            .collect();
        let settings = WorkerSettings::from_config(config);
        let out_options = OutQueueOptions::from_config(&config.sending);
        let (committer, out) = commit_path(backend, &store, &outbound, out_options);
        let queue = backend.queue().clone();
        Worker {
            shared: Arc::new(Shared {
                id,
                channels,
                queue,
                store,
                bot,
                outbound,
                metrics,
                settings,
                clock: Clock::System,
                observer: None,
                committer,
                out,
                wake: Arc::new(Notify::new()),
                sending: LaneSettings::from_config(&config.sending),
                media_store: config.media.store.as_ref().map(|dir| {
                    MediaStore::new(dir, config.media.retention(), config.media.timeout())
                }),
            }),
            partitions,
            sender: OnceLock::new(),
        }
    }

    /// The process's sender, built once the worker is configured.
    fn sender(&self) -> Arc<LaneSender> {
        self.sender
            .get_or_init(|| {
                let s = &self.shared;
                Arc::new(
                    LaneSender::new(
                        s.id.clone(),
                        s.channels.clone(),
                        s.out.clone(),
                        s.outbound.clone(),
                        s.store.clone(),
                        s.queue.clone(),
                        s.metrics.clone(),
                        s.sending.clone(),
                    )
                    .with_clock(s.clock.clone())
                    .with_observer(s.observer.clone())
                    .with_waker(s.wake.clone()),
                )
            })
            .clone()
    }

    /// The outbound queue this worker's sender drains.
    pub fn out_queue(&self) -> &OutQueue {
        &self.shared.out
    }

    /// The send API over this worker's stores, waking its sender (`None` without `[api]`).
    pub fn send_api(&self, config: &Config) -> Option<crate::api::SendApi> {
        config.api.as_ref()?;
        let s = &self.shared;
        Some(
            crate::api::SendApi::new(config, s.queue.clone(), s.store.clone(), s.out.clone())
                .with_waker(s.wake.clone())
                .with_media(s.outbound.media().clone()),
        )
    }

    /// Overrides the sender's tunables taken from `[sending]`.
    pub fn with_sending(mut self, sending: LaneSettings) -> Self {
        self.shared_mut().sending = sending;
        self
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::get_mut(&mut self.shared).expect("a worker is configured before it runs")
    }

    /// Reads the time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.shared_mut().clock = clock;
        self
    }

    /// Calls `observer` after every send attempt of a reply.
    pub fn with_send_observer(mut self, observer: SendObserver) -> Self {
        self.shared_mut().observer = Some(observer);
        self
    }

    /// Overrides the tunables taken from the config.
    pub fn with_settings(mut self, settings: WorkerSettings) -> Self {
        self.shared_mut().settings = settings;
        self
    }

    /// Handles, on the calling task, every entry waiting in every partition and every timer
    /// due at the clock's now, in order, with the same code as [`Worker::run`], then sends
    /// every queued message whose lane is ready at the clock's now (and handles the
    /// `outbound.failed` events that produces); returns when nothing is left. Partitions leased
    /// by another worker are skipped. For the bot test kit and tools: a running worker does
    /// this continuously.
    pub async fn drain(&self) -> Result<Drained, WorkerError> {
        let mut total = Drained::default();
        loop {
            let handled = self.drain_partitions().await?;
            total.handled += handled.handled;
            total.dead += handled.dead;
            let sent = self.sender().drain().await;
            total.sent += sent.sent;
            total.failed_sends += sent.failed;
            if sent.failed == 0 {
                return Ok(total);
            }
        }
    }

    async fn drain_partitions(&self) -> Result<Drained, WorkerError> {
        let shared = &self.shared;
        let mut total = Drained::default();
        for (channel, partition) in &self.partitions {
            let Some(config) = shared.channels.get(channel).cloned() else {
                continue;
            };
            let Some(lease) = shared
                .queue
                .acquire_lease(channel, *partition, &shared.id, shared.settings.lease_ms)
                .await?
            else {
                continue;
            };
            let result = partition::drain(shared, &lease, &config).await;
            let _ = shared.queue.release_lease(&lease).await;
            let drained = result?;
            total.handled += drained.handled;
            total.dead += drained.dead;
        }
        Ok(total)
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The sender's outbox, so an ingress in the same process records statuses into it.
    pub fn outbox(&self) -> crate::outbound::Outbox {
        self.shared.outbound.outbox().clone()
    }

    /// Runs until `shutdown` turns true: then stops reading, finishes in-flight events,
    /// releases every lease and returns.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let sender = self.sender();
        let (stop_sending, sending_stopped) = watch::channel(false);
        let sender_task = tokio::spawn(sender.run(sending_stopped));
        let shared = self.shared;
        let pruner = shared
            .media_store
            .clone()
            .map(|store| tokio::spawn(prune_media(store, shutdown.clone())));
        let settings = shared.settings.clone();
        let mut held: HashMap<(String, u32), Held> = HashMap::new();
        tracing::info!(worker = %shared.id, partitions = self.partitions.len(), "worker started");
        // Announce ourselves and wait a moment before taking partitions, so workers started
        // together see each other and take their shares at once instead of one grabbing all.
        if let Err(e) = shared.queue.heartbeat(&shared.id, settings.lease_ms).await {
            tracing::warn!(worker = %shared.id, error = %e, "first heartbeat failed");
        }
        let settle = Duration::from_millis(rand::random_range(100..300));
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(settle) => {}
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = balance(&shared, &self.partitions, &mut held).await {
                tracing::warn!(worker = %shared.id, error = %e, "lease round failed; retrying");
            }
            shared.metrics.set_gauge(
                Metric::LeasesHeld,
                &[("worker", &shared.id)],
                held.len() as u64,
            );
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(settings.tick()) => {}
            }
        }
        tracing::info!(worker = %shared.id, held = held.len(), "shutting down: finishing in-flight events");
        for h in held.values() {
            let _ = h.stop.send(true);
        }
        // In-flight events get a bounded grace period; past it the task is aborted without
        // acking (its entry is handled again by the next owner), so SIGTERM always ends.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (_, h) in held.drain() {
            let abort = h.task.abort_handle();
            if tokio::time::timeout_at(deadline, h.task).await.is_err() {
                tracing::warn!(worker = %shared.id, channel = %h.lease.channel, partition = h.lease.partition, "in-flight event did not finish in time; leaving it for the next owner");
                abort.abort();
            }
            let _ = shared.queue.release_lease(&h.lease).await;
        }
        // The sender last: replies committed by the events that just finished still go out
        // (it stops taking lanes and lets those in hand finish their current message).
        let _ = stop_sending.send(true);
        let _ = sender_task.await;
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        let _ = shared.queue.leave(&shared.id).await;
        shared
            .metrics
            .set_gauge(Metric::LeasesHeld, &[("worker", &shared.id)], 0);
        tracing::info!(worker = %shared.id, "worker stopped");
        Ok(())
    }
}

/// The commit path and the outbound queue of `backend`: the same Redis, or the in-memory
/// twins of this process (the memory store, the memory queue's timers, the sender's outbox).
fn commit_path(
    backend: &Backend,
    store: &ConversationStore,
    outbound: &Outbound,
    options: OutQueueOptions,
) -> (Committer, OutQueue) {
    match (backend.redis(), backend.queue(), store) {
        (Some(con), _, store) => {
            let state_ttl_ms = match store {
                ConversationStore::Redis(s) => s.ttl_ms(),
                ConversationStore::Memory(_) => 0,
            };
            let committer = Committer::Redis {
                con,
                keys: backend.keys(),
                state_ttl_ms,
                record_ttl_ms: options.record_ttl_ms,
            };
            let out = backend
                .shared_out_queue(options)
                .expect("a Redis backend has a shared outbound queue");
            (committer, out)
        }
        (None, Queue::Memory(q), ConversationStore::Memory(s)) => {
            let out = MemoryOutQueue::new(outbound.outbox().clone(), options);
            let committer = Committer::Memory {
                store: s.clone(),
                queue: q.clone(),
                out: out.clone(),
            };
            (committer, OutQueue::Memory(out))
        }
        _ => unreachable!("the store and the queue come from the same backend"),
    }
}

/// One round: heartbeat, renew what we hold, give back what exceeds our fair share, take free
/// partitions up to it.
async fn balance(
    shared: &Arc<Shared>,
    all: &[(String, u32)],
    held: &mut HashMap<(String, u32), Held>,
) -> Result<(), QueueError> {
    let s = &shared.settings;
    // Tasks that ended by themselves (lease lost, channel gone) free their slot.
    held.retain(|_, h| !h.task.is_finished());

    let live = shared.queue.heartbeat(&shared.id, s.lease_ms).await?.max(1);
    let share = all.len().div_ceil(live).min(s.concurrency);

    let mut lost = Vec::new();
    for (key, h) in held.iter() {
        if !shared.queue.renew_lease(&h.lease, s.lease_ms).await? {
            lost.push(key.clone());
        }
    }
    for key in lost {
        if let Some(h) = held.remove(&key) {
            tracing::warn!(worker = %shared.id, channel = %key.0, partition = key.1, "lease lost; stopping the partition");
            let _ = h.stop.send(true);
        }
    }

    if held.len() > share {
        // Give back the extra partitions: each task finishes its current event, then releases.
        let extra: Vec<_> = held.keys().take(held.len() - share).cloned().collect();
        for key in extra {
            if let Some(h) = held.remove(&key) {
                tracing::info!(worker = %shared.id, channel = %key.0, partition = key.1, "rebalancing: releasing partition");
                let _ = h.stop.send(true);
                let queue = shared.queue.clone();
                tokio::spawn(async move {
                    let _ = h.task.await;
                    let _ = queue.release_lease(&h.lease).await;
                });
            }
        }
    } else if held.len() < share {
        let mut free: Vec<&(String, u32)> = all.iter().filter(|k| !held.contains_key(*k)).collect();
        free.shuffle(&mut rand::rng());
        for (channel, partition) in free {
            if held.len() >= share {
                break;
            }
            if let Some(lease) = shared
                .queue
                .acquire_lease(channel, *partition, &shared.id, s.lease_ms)
                .await?
            {
                tracing::info!(worker = %shared.id, channel = %channel, partition, token = lease.token, "partition acquired");
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::spawn(partition::run(shared.clone(), lease.clone(), stop_rx));
                held.insert((channel.clone(), *partition), Held { lease, stop, task });
            }
        }
    }
    Ok(())
}
