//! The Redis side of enqueueing: events go to Redis in groups, one `enqueue.lua` call per
//! channel, so the script's fixed cost (and one HMGET of aliases) is paid once per group rather
//! than once per event. A group is every event of one channel in one round trip: a batched
//! POST, and with the [`super::committer`] also the events of every other webhook that arrived
//! while the previous round trip was in flight.

use super::super::{Enqueued, NewEvent, QueueError};
use super::{confirm_durable_on, ENQUEUE};
use crate::keys::Keys;
use crate::redis_conn::RedisConn;
use crate::routing::partition_of;
use redis::{RedisError, ServerErrorKind, Value};

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

/// What one round trip needs besides its events and connection: key names and the stream
/// limits. Runs on the committer thread.
pub(in crate::queue) struct Rounds {
    pub keys: Keys,
    pub dedupe_ttl_secs: u64,
    pub stream_maxlen: u64,
}

impl Rounds {
    /// Enqueues `events` in one round trip (one script call per channel, see [`plan`]) and
    /// returns one outcome per event, in order. Err when the round trip itself failed; an
    /// event whose own write failed carries its error. With `replication_timeout_ms`, waits
    /// for one replica on `conn`, the connection that carried the writes.
    pub(super) async fn run(
        &self,
        mut conn: RedisConn,
        replication_timeout_ms: Option<u64>,
        events: &[&NewEvent],
    ) -> Result<Vec<Result<Enqueued, QueueError>>, QueueError> {
        let calls = plan(events);
        let mut outcomes: Vec<Option<Result<Enqueued, QueueError>>> =
            events.iter().map(|_| None).collect();
        let mut todo: Vec<&Call> = calls.iter().collect();
        // Second round only after NOSCRIPT (Redis restarted and lost its script cache): load the
        // script, then re-send just the calls that were refused; the others already ran.
        for round in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for call in &todo {
                push_call(
                    &mut pipe,
                    ENQUEUE.get_hash(),
                    &self.keys,
                    self.dedupe_ttl_secs,
                    self.stream_maxlen,
                    events,
                    call,
                );
            }
            let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            if replies.len() != todo.len() {
                return Err(QueueError::Other(format!(
                    "pipeline returned {} replies for {} script calls",
                    replies.len(),
                    todo.len()
                )));
            }
            let mut again = Vec::new();
            for (call, reply) in todo.into_iter().zip(replies) {
                match decode_call(reply, call.members.len())? {
                    CallReply::NoScript => again.push(call),
                    CallReply::Outcomes(results) => {
                        for (&i, r) in call.members.iter().zip(results) {
                            outcomes[i] = Some(r);
                        }
                    }
                }
            }
            if again.is_empty() {
                break;
            }
            if round == 1 {
                return Err(QueueError::Other(
                    "enqueue script missing even after SCRIPT LOAD".into(),
                ));
            }
            ENQUEUE.load_async(&mut conn).await?;
            todo = again;
        }
        if let Some(timeout_ms) = replication_timeout_ms {
            // Duplicates too: their first copy may be the write a replica has not acknowledged.
            let channels = events.iter().map(|e| e.channel.as_str());
            confirm_durable_on(&conn, &self.keys, timeout_ms, channels).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|r| r.expect("every event answered"))
            .collect())
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
}
