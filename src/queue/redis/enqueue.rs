//! The Redis side of enqueueing: events go to Redis in groups, one `enqueue.lua` call per
//! channel, so the script's fixed cost (and one HMGET of aliases) is paid once per group rather
//! than once per event. A group is every event of one channel in one round trip: a batched
//! POST, and with [`GroupCommit`] also the events of every other webhook that arrived while the
//! previous round trip was in flight.

use super::super::{Enqueued, NewEvent, QueueError};
use crate::keys::Keys;
use crate::routing::partition_of;
use redis::{RedisError, ServerErrorKind, Value};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// At most this many events go into one script call (bounds its argument list and the time
/// Redis spends in one script; a larger group is split into several calls).
pub(super) const MAX_EVENTS_PER_CALL: usize = 128;

/// One `enqueue.lua` call: events of one channel (same partition count), as indexes into the
/// caller's list, in the order they were given.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Call {
    pub members: Vec<usize>,
}

/// Groups `events` into script calls: one per channel (and partition count), in order of first
/// appearance, keeping each channel's events in their given order, at most
/// [`MAX_EVENTS_PER_CALL`] per call. Pure; the calls of one round trip run in this order, so a
/// channel's events reach Redis in the order they were given.
pub(super) fn plan(events: &[&NewEvent]) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    // Index of the open (not yet full) call of each (channel, partitions).
    let mut open: Vec<(&str, u32, usize)> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let slot = open
            .iter()
            .position(|(ch, p, _)| *ch == ev.channel && *p == ev.partitions);
        match slot {
            Some(s) if calls[open[s].2].members.len() < MAX_EVENTS_PER_CALL => {
                calls[open[s].2].members.push(i);
            }
            Some(s) => {
                open[s].2 = calls.len();
                calls.push(Call { members: vec![i] });
            }
            None => {
                open.push((&ev.channel, ev.partitions, calls.len()));
                calls.push(Call { members: vec![i] });
            }
        }
    }
    calls
}

/// Appends the `EVALSHA` of one call to `pipe` (see the key and argument layout in
/// enqueue.lua). Every key is the channel's, so a call stays in one cluster slot.
pub(super) fn push_call(
    pipe: &mut redis::Pipeline,
    sha: &str,
    keys: &Keys,
    dedupe_ttl_secs: u64,
    stream_maxlen: u64,
    events: &[&NewEvent],
    call: &Call,
) {
    let first = events[call.members[0]];
    let channel = first.channel.as_str();
    let partitions = first.partitions.max(1);
    let cmd = pipe
        .cmd("EVALSHA")
        .arg(sha)
        .arg(1 + partitions as usize + call.members.len());
    cmd.arg(keys.aliases(channel));
    for p in 0..partitions {
        cmd.arg(keys.stream(channel, p));
    }
    for &i in &call.members {
        cmd.arg(keys.seen(channel, &events[i].id));
    }
    cmd.arg(dedupe_ttl_secs).arg(stream_maxlen).arg(partitions);
    for &i in &call.members {
        let ev = events[i];
        cmd.arg(&ev.payload).arg(ev.contact_ids.len());
        for id in &ev.contact_ids {
            cmd.arg(id).arg(partition_of(id, partitions));
        }
    }
}

/// What one call's reply says.
pub(super) enum CallReply {
    /// One outcome per member, in order (an event whose XADD failed carries its error).
    Outcomes(Vec<Result<Enqueued, QueueError>>),
    /// Redis has no copy of the script (restarted): load it and send the call again.
    NoScript,
}

/// Decodes one call's reply: an array with, per event, `0` (duplicate),
/// `{partition, conversation, entry id}` (added) or an error.
pub(super) fn decode_call(reply: Value, expected: usize) -> Result<CallReply, QueueError> {
    let items = match reply {
        Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
            return Ok(CallReply::NoScript)
        }
        Value::ServerError(e) => return Err(RedisError::from(e).into()),
        Value::Array(items) => items,
        other => {
            return Err(QueueError::Other(format!(
                "unexpected reply from enqueue.lua: {other:?}"
            )))
        }
    };
    if items.len() != expected {
        return Err(QueueError::Other(format!(
            "enqueue.lua answered {} outcomes for {expected} events",
            items.len()
        )));
    }
    Ok(CallReply::Outcomes(
        items.into_iter().map(decode_outcome).collect(),
    ))
}

fn decode_outcome(v: Value) -> Result<Enqueued, QueueError> {
    match v {
        Value::Int(0) => Ok(Enqueued::Duplicate),
        Value::ServerError(e) => Err(RedisError::from(e).into()),
        v => {
            let (partition, conversation, entry_id): (u32, String, String) =
                redis::from_redis_value(v).map_err(RedisError::from)?;
            Ok(Enqueued::Added {
                partition,
                conversation,
                entry_id,
            })
        }
    }
}

/// Group commit for enqueues. Up to [`ROUNDS_IN_FLIGHT`] round trips run at once; callers that
/// arrive while all are taken wait in line, and when one returns, the first of them leads the
/// next round trip for all of them at once. Under load a round trip carries the events of many
/// webhooks in one script call per channel (Redis pays the script's fixed cost once, and one
/// socket write and read serve them all); an idle receiver still sends each webhook at once. Every caller gets back
/// exactly its own outcomes, and nobody is answered before Redis answered for its events.
/// Events of one webhook stay together and in order; separate webhooks were never ordered
/// against each other (Meta does not order its POSTs either).
#[derive(Default)]
pub(super) struct GroupCommit {
    state: Mutex<Line>,
}

/// Round trips one receiver keeps in flight at most: one being run by Redis, one queued behind
/// it. One to sixteen measured the same within noise (BENCHMARKS.md, "Group commit"); two keeps
/// Redis from waiting for the receiver between rounds without splitting the groups finer.
pub(super) const ROUNDS_IN_FLIGHT: usize = 2;

#[derive(Default)]
struct Line {
    /// Round trips in flight (or whose leaders are about to send them).
    leading: usize,
    waiting: Vec<Waiter>,
}

pub(super) struct Waiter {
    events: Vec<NewEvent>,
    turn: oneshot::Sender<Turn>,
}

impl Waiter {
    pub(super) fn events(&self) -> &[NewEvent] {
        &self.events
    }

    /// Hands the outcomes of this waiter's events back to it.
    pub(super) fn answer(self, outcomes: Result<Vec<Enqueued>, QueueError>) {
        // Its caller may be gone (the client hung up): its events went in all the same.
        let _ = self.turn.send(Turn::Done(outcomes));
    }
}

/// What a waiting caller is woken with.
pub(super) enum Turn {
    Done(Result<Vec<Enqueued>, QueueError>),
    /// Lead the next round trip: your own events, then everybody else's who waited.
    Lead {
        own: Vec<NewEvent>,
        others: Vec<Waiter>,
    },
}

/// How a caller joins the line.
pub(super) enum Joined {
    /// Nothing in flight: send your events now.
    Lead,
    /// Wait for your turn.
    Wait(oneshot::Receiver<Turn>),
}

impl GroupCommit {
    pub(super) fn join(&self, events: &[NewEvent]) -> Joined {
        let mut line = self.line();
        if line.leading < ROUNDS_IN_FLIGHT {
            line.leading += 1;
            return Joined::Lead;
        }
        let (turn, rx) = oneshot::channel();
        line.waiting.push(Waiter {
            events: events.to_vec(),
            turn,
        });
        Joined::Wait(rx)
    }

    /// Held by a leader while its round trip runs; dropping it (done, or the leader's future
    /// dropped halfway) passes the lead to the first waiter, so the line never stalls.
    pub(super) fn leading(&self) -> LeaderGuard<'_> {
        LeaderGuard { commit: self }
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hand_off(&self) {
        let mut line = self.line();
        loop {
            if line.waiting.is_empty() {
                line.leading -= 1;
                return;
            }
            let mut others = std::mem::take(&mut line.waiting);
            let first = others.remove(0);
            match first.turn.send(Turn::Lead {
                own: first.events,
                others,
            }) {
                Ok(()) => return,
                // That caller is gone: the next one leads, with the gone caller's events
                // dropped (nobody waits for their outcome; the sender will retry them).
                Err(Turn::Lead { others, .. }) => line.waiting = others,
                Err(Turn::Done(_)) => unreachable!("a lead turn comes back as sent"),
            }
        }
    }
}

pub(super) struct LeaderGuard<'a> {
    commit: &'a GroupCommit,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.commit.hand_off();
    }
}

/// The same failure for another caller of a shared round trip (`RedisError` is not `Clone`).
fn shared_error(e: &QueueError) -> QueueError {
    match e {
        QueueError::NotReplicated {
            channel,
            timeout_ms,
        } => QueueError::NotReplicated {
            channel: channel.clone(),
            timeout_ms: *timeout_ms,
        },
        other => QueueError::Other(other.to_string()),
    }
}

/// Splits one round trip's outcomes (or its failure) into each caller's answer, in the order
/// the callers' events were laid out: `sizes[i]` events for caller `i`.
pub(super) fn split_outcomes(
    round: Result<Vec<Result<Enqueued, QueueError>>, QueueError>,
    sizes: &[usize],
) -> Vec<Result<Vec<Enqueued>, QueueError>> {
    match round {
        Err(e) => {
            let others: Vec<_> = sizes[1..].iter().map(|_| Err(shared_error(&e))).collect();
            std::iter::once(Err(e)).chain(others).collect()
        }
        Ok(outcomes) => {
            let mut it = outcomes.into_iter();
            sizes
                .iter()
                .map(|&n| it.by_ref().take(n).collect::<Result<Vec<_>, _>>())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(channel: &str, id: &str) -> NewEvent {
        NewEvent {
            channel: channel.into(),
            partitions: 4,
            id: id.into(),
            payload: "{}".into(),
            contact_ids: vec!["1555".into()],
        }
    }

    #[test]
    fn one_call_per_channel_in_order_of_first_appearance() {
        let (a1, b1, a2, c1, b2) = (
            ev("a", "1"),
            ev("b", "2"),
            ev("a", "3"),
            ev("c", "4"),
            ev("b", "5"),
        );
        let events = [&a1, &b1, &a2, &c1, &b2];
        let calls = plan(&events);
        let members: Vec<Vec<usize>> = calls.into_iter().map(|c| c.members).collect();
        assert_eq!(members, vec![vec![0, 2], vec![1, 4], vec![3]]);
    }

    #[test]
    fn a_channel_with_another_partition_count_is_another_call() {
        let a = ev("a", "1");
        let mut a8 = ev("a", "2");
        a8.partitions = 8;
        let calls = plan(&[&a, &a8, &a]);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].members, vec![0, 2]);
    }

    #[test]
    fn large_groups_are_split_keeping_order() {
        let e = ev("a", "x");
        let events: Vec<&NewEvent> = (0..MAX_EVENTS_PER_CALL * 2 + 3).map(|_| &e).collect();
        let calls = plan(&events);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].members.len(), MAX_EVENTS_PER_CALL);
        assert_eq!(calls[2].members, vec![256, 257, 258]);
        let all: Vec<usize> = calls.into_iter().flat_map(|c| c.members).collect();
        assert_eq!(all, (0..events.len()).collect::<Vec<_>>());
    }

    #[test]
    fn replies_decode_per_event() {
        let reply = Value::Array(vec![
            Value::Int(0),
            Value::Array(vec![
                Value::Int(3),
                Value::BulkString(b"1555".to_vec()),
                Value::BulkString(b"1-0".to_vec()),
            ]),
        ]);
        let CallReply::Outcomes(out) = decode_call(reply, 2).unwrap() else {
            panic!("outcomes expected")
        };
        assert_eq!(out[0].as_ref().unwrap(), &Enqueued::Duplicate);
        assert_eq!(
            out[1].as_ref().unwrap(),
            &Enqueued::Added {
                partition: 3,
                conversation: "1555".into(),
                entry_id: "1-0".into()
            }
        );
        assert!(decode_call(Value::Array(vec![Value::Int(0)]), 2).is_err());
        assert!(decode_call(Value::Okay, 1).is_err());
    }
    #[test]
    fn a_shared_round_is_split_back_per_caller() {
        let added = |p| {
            Ok(Enqueued::Added {
                partition: p,
                conversation: "c".into(),
                entry_id: "1-0".into(),
            })
        };
        let round = Ok(vec![
            added(0),
            Ok(Enqueued::Duplicate),
            Err(QueueError::Other("OOM".into())),
            added(1),
        ]);
        let answers = split_outcomes(round, &[2, 1, 1]);
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].as_ref().unwrap().len(), 2);
        assert!(
            answers[1].is_err(),
            "the caller whose event failed gets the error"
        );
        assert_eq!(answers[2].as_ref().unwrap(), &vec![added(1).unwrap()]);

        let failed = split_outcomes(Err(QueueError::Other("down".into())), &[1, 3]);
        assert!(failed.iter().all(|a| a.is_err()));
        assert_eq!(failed.len(), 2);
    }

    #[tokio::test]
    async fn the_line_hands_the_lead_on_and_skips_callers_that_left() {
        let commit = GroupCommit::default();
        let e = ev("a", "1");
        for _ in 0..ROUNDS_IN_FLIGHT {
            assert!(matches!(
                commit.join(std::slice::from_ref(&e)),
                Joined::Lead
            ));
        }
        let Joined::Wait(gone) = commit.join(std::slice::from_ref(&e)) else {
            panic!("second caller waits")
        };
        let Joined::Wait(next) = commit.join(&[e.clone(), e.clone()]) else {
            panic!("third caller waits")
        };
        drop(gone);
        drop(commit.leading());
        match next.await.unwrap() {
            Turn::Lead { own, others } => {
                assert_eq!(
                    own.len(),
                    2,
                    "the first caller still there leads with its events"
                );
                assert!(others.is_empty());
            }
            Turn::Done(_) => panic!("expected the lead"),
        }
        // The new leader finishes: nobody waits, so the next caller leads at once, and only
        // that one (the other rounds are still in flight).
        drop(commit.leading());
        assert!(matches!(
            commit.join(std::slice::from_ref(&e)),
            Joined::Lead
        ));
        assert!(matches!(
            commit.join(std::slice::from_ref(&e)),
            Joined::Wait(_)
        ));
    }
}
