//! Group commit on a thread of its own.
//!
//! Enqueues wait in one line; a committer thread takes everything in line as one round trip
//! (one `enqueue.lua` call per channel, see [`super::enqueue`]) whenever fewer than
//! [`ROUNDS_IN_FLIGHT`] are out, and answers each caller with exactly its own outcomes.
//!
//! Why a thread: the receiver's HTTP worker is a single-threaded runtime that also parses every
//! request. When the round trips were led from there, a reply from Redis waited behind every
//! request ready to be parsed (~6 ms at 128 connections) before the next round could leave, so
//! rounds went in lockstep (two of one webhook, then one of all the others) and Redis and the
//! receiver each sat idle about half the time (BENCHMARKS.md, "Enqueues committed off the HTTP
//! thread"). Here replies are read, and the next round sent, as soon as Redis answers; the
//! receiver only parses, and joins the line.

use super::super::{Enqueued, NewEvent, QueueError};
use super::enqueue::{self, Rounds};
use crate::redis_conn::{ConnectOptions, Endpoint, RedisConn};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify, Semaphore};

/// Round trips in flight at most: one being run by Redis, one queued behind it, so Redis never
/// waits for the committer between rounds and each round still gathers what arrived meanwhile.
pub(super) const ROUNDS_IN_FLIGHT: usize = 2;

/// The callers' end of the line; dropping it stops the committer thread once its rounds in
/// flight are answered.
pub(super) struct Committer {
    line: Arc<Line>,
}

/// What the callers and the committer thread share.
#[derive(Default)]
struct Line {
    waiting: Mutex<Vec<Waiter>>,
    /// Wakes the committer: someone joined the line, or the queue was dropped.
    joined: Notify,
    closed: AtomicBool,
    /// The committer thread is gone (it could not start, or it panicked): nobody will answer,
    /// so callers are turned away at once instead of waiting forever.
    stopped: AtomicBool,
    /// `durability = "replicated"`: WAIT timeout in ms (0: local durability).
    replication_timeout_ms: AtomicU64,
}

/// One caller's events and where its outcomes go.
struct Waiter {
    events: Vec<NewEvent>,
    answer: oneshot::Sender<Result<Vec<Enqueued>, QueueError>>,
}

impl Committer {
    /// Starts the committer thread with a connection of its own (made on that thread, so the
    /// thread also reads its replies). Fails if Redis does not answer now.
    pub(super) async fn start(
        endpoint: &Endpoint,
        options: ConnectOptions,
        rounds: Rounds,
    ) -> Result<Committer, QueueError> {
        let line = Arc::new(Line::default());
        let (connected, outcome) = oneshot::channel();
        let (endpoint, shared) = (endpoint.clone(), line.clone());
        std::thread::Builder::new()
            .name("coexist-enqueue".into())
            .spawn(move || committer_thread(shared, endpoint, options, rounds, connected))
            .map_err(|e| QueueError::Other(format!("could not start the enqueue thread: {e}")))?;
        outcome.await.map_err(|_| {
            QueueError::Other("the enqueue thread stopped while connecting".into())
        })??;
        Ok(Committer { line })
    }

    /// `[redis] durability = "replicated"`: every round then waits for one replica.
    pub(super) fn set_replication_timeout(&self, timeout_ms: Option<u64>) {
        self.line
            .replication_timeout_ms
            .store(timeout_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// Enqueues `events` in the next round trip and returns their outcomes, in order. A caller
    /// that stops waiting (its client hung up) does not stop its events from going in; the
    /// sender retries and dedupe lands them once.
    pub(super) async fn commit(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, QueueError> {
        let (answer, outcome) = oneshot::channel();
        self.line.join(Waiter { events, answer });
        outcome
            .await
            .map_err(|_| QueueError::Other("the enqueue thread stopped before answering".into()))?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.line.closed.store(true, Ordering::Release);
        self.line.joined.notify_one();
    }
}

/// Marks the line stopped when the committer thread ends, however it ends.
struct StopOnExit(Arc<Line>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Line {
    fn join(&self, waiter: Waiter) {
        self.lock().push(waiter);
        if self.stopped.load(Ordering::Acquire) {
            // Dropping the waiters answers their callers with an error.
            self.take_all();
        }
        self.joined.notify_one();
    }

    /// No committer any more: turns away everybody in line now and everybody who joins later.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.take_all();
    }

    /// Everybody in line, in the order they joined; empty if nobody is.
    fn take_all(&self) -> Vec<Waiter> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiter>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replication_timeout_ms(&self) -> Option<u64> {
        Some(self.replication_timeout_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// The next group of callers, once a round may leave; `None` once the queue is dropped.
    async fn next_group(&self) -> Option<Vec<Waiter>> {
        loop {
            let group = self.take_all();
            if !group.is_empty() {
                return Some(group);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            // A join between `take_all` and here leaves a permit: this returns at once.
            self.joined.notified().await;
        }
    }
}

/// The committer thread: its own runtime and connection (reported on `connected`), then the
/// commit loop until the queue is dropped. However it ends, the line is stopped.
fn committer_thread(
    line: Arc<Line>,
    endpoint: Endpoint,
    options: ConnectOptions,
    rounds: Rounds,
    connected: oneshot::Sender<Result<(), QueueError>>,
) {
    let _stopped = StopOnExit(line.clone());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = connected.send(Err(QueueError::Other(format!(
                "could not start the enqueue thread's runtime: {e}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        match RedisConn::connect(&endpoint, options).await {
            Err(e) => {
                let _ = connected.send(Err(e.into()));
            }
            Ok(conn) => {
                if connected.send(Ok(())).is_ok() {
                    commit_loop(line, Arc::new(rounds), conn).await;
                }
            }
        }
    });
}

/// Sends whoever is in line as soon as a round may leave, until the queue is dropped; then
/// lets the rounds in flight finish.
async fn commit_loop(line: Arc<Line>, rounds: Arc<Rounds>, conn: RedisConn) {
    let slots = Arc::new(Semaphore::new(ROUNDS_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(group) = line.next_group().await else {
            break;
        };
        let rounds = rounds.clone();
        let conn = conn.clone();
        let replication_timeout_ms = line.replication_timeout_ms();
        tokio::spawn(async move {
            run_round(&rounds, conn, replication_timeout_ms, group).await;
            drop(slot);
        });
    }
    let _ = slots.acquire_many(ROUNDS_IN_FLIGHT as u32).await;
}

/// One round trip for `group`; every caller gets its own events' outcomes.
async fn run_round(
    rounds: &Rounds,
    conn: RedisConn,
    replication_timeout_ms: Option<u64>,
    group: Vec<Waiter>,
) {
    let events: Vec<&NewEvent> = group.iter().flat_map(|w| &w.events).collect();
    let sizes: Vec<usize> = group.iter().map(|w| w.events.len()).collect();
    let outcome = rounds.run(conn, replication_timeout_ms, &events).await;
    let answers = enqueue::split_outcomes(outcome, &sizes);
    for (waiter, answer) in group.into_iter().zip(answers) {
        // Its caller may be gone (the client hung up): its events went in all the same.
        let _ = waiter.answer.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: &str) -> (Waiter, oneshot::Receiver<Result<Vec<Enqueued>, QueueError>>) {
        let (answer, rx) = oneshot::channel();
        let events = vec![NewEvent {
            channel: "a".into(),
            partitions: 4,
            id: id.into(),
            payload: "{}".into(),
            contact_ids: vec!["1555".into()],
        }];
        (Waiter { events, answer }, rx)
    }

    #[tokio::test]
    async fn the_line_gives_everybody_waiting_in_order_then_waits() {
        let line = Line::default();
        let (a, _ra) = waiter("a");
        let (b, _rb) = waiter("b");
        line.join(a);
        line.join(b);
        let group = line.next_group().await.unwrap();
        let ids: Vec<&str> = group.iter().map(|w| w.events[0].id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        // Nobody in line: the committer waits for the next caller.
        let next = line.next_group();
        tokio::pin!(next);
        assert!(futures_util::FutureExt::now_or_never(&mut next).is_none());
        let (c, _rc) = waiter("c");
        line.join(c);
        assert_eq!(next.await.unwrap()[0].events[0].id, "c");
    }

    #[tokio::test]
    async fn a_closed_line_still_sends_who_joined_then_stops() {
        let line = Line::default();
        let (a, _ra) = waiter("a");
        line.join(a);
        line.closed.store(true, Ordering::Release);
        line.joined.notify_one();
        assert_eq!(line.next_group().await.unwrap().len(), 1);
        assert!(line.next_group().await.is_none());
    }

    #[tokio::test]
    async fn callers_are_turned_away_once_the_committer_is_gone() {
        let line = Line::default();
        let (waiting, in_line) = waiter("waiting");
        line.join(waiting);
        line.stop();
        let answered = |rx| tokio::time::timeout(std::time::Duration::from_secs(1), rx);
        let in_line = answered(in_line)
            .await
            .expect("the caller in line is answered");
        assert!(in_line.is_err(), "with an error");
        let (late, after) = waiter("late");
        line.join(late);
        let after = answered(after).await.expect("a later caller does not wait");
        assert!(after.is_err(), "with an error");
    }

    #[test]
    fn replication_timeout_zero_means_local() {
        let line = Line::default();
        assert_eq!(line.replication_timeout_ms(), None);
        line.replication_timeout_ms.store(250, Ordering::Relaxed);
        assert_eq!(line.replication_timeout_ms(), Some(250));
    }
}
