//! One behaviour suite for the queue, run against both backends (Redis and the in-memory
//! twin), plus Redis-only failure tests (server down, restart, lost script cache).

mod support;

use coexist::keys::Keys;
use coexist::queue::QueueBackend;
use coexist::queue::{
    timer_member, Enqueued, Entry, Lease, MemoryQueue, NewEvent, Queue, QueueError, RedisQueue,
};
use coexist::routing::partition_of;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::{RedisOptions, RedisServer};

const CH: &str = "shop";

/// A queue under test plus a way to look at its streams directly.
struct Fixture {
    queue: Queue,
    /// Redis URL and keys, for the Redis backend.
    redis: Option<(String, Keys)>,
}

/// (entry id, payload, conversation) of one stream entry.
type Row = (String, String, String);

impl Fixture {
    async fn memory(dedupe_ttl_secs: u64) -> Fixture {
        Fixture {
            queue: Queue::Memory(MemoryQueue::with_options(dedupe_ttl_secs, 0)),
            redis: None,
        }
    }

    async fn redis(dedupe_ttl_secs: u64) -> Fixture {
        let url = support::shared_url();
        let keys = support::keys();
        let q = RedisQueue::connect(&url, keys.clone(), dedupe_ttl_secs, 0)
            .await
            .unwrap();
        Fixture {
            queue: Queue::Redis(q),
            redis: Some((url, keys)),
        }
    }

    /// The same suite on a 3-master Redis Cluster (the binary's shared one).
    async fn cluster(dedupe_ttl_secs: u64) -> Fixture {
        let cluster = support::cluster::shared();
        let keys = support::keys();
        let q = RedisQueue::connect_to(&cluster.endpoint(), keys.clone(), dedupe_ttl_secs, 0)
            .await
            .unwrap();
        Fixture {
            queue: Queue::Redis(q),
            redis: Some((cluster.seeds()[0].clone(), keys)),
        }
    }

    async fn entries(&self, channel: &str, partition: u32) -> Vec<Row> {
        match (&self.queue, &self.redis) {
            (Queue::Memory(m), _) => m.entries(channel, partition),
            (Queue::Redis(_), Some((url, keys))) => {
                support::xrange(url, &keys.stream(channel, partition))
                    .await
                    .into_iter()
                    .map(|e| {
                        let (p, c) = (e.field("e").to_string(), e.field("c").to_string());
                        (e.id, p, c)
                    })
                    .collect()
            }
            _ => unreachable!(),
        }
    }

    async fn all_entries(&self, channel: &str, partitions: u32) -> Vec<(u32, Row)> {
        let mut out = Vec::new();
        for p in 0..partitions {
            out.extend(self.entries(channel, p).await.into_iter().map(|r| (p, r)));
        }
        out
    }
}

fn event(id: &str, partitions: u32, contacts: &[&str]) -> NewEvent {
    NewEvent {
        channel: CH.to_string(),
        partitions,
        id: id.to_string(),
        payload: format!(r#"{{"id":"{id}","text":"héllo \u00e9"}}"#),
        contact_ids: contacts.iter().map(|c| c.to_string()).collect(),
    }
}

/// A Redis queue on `url` under `keys`: dedupe for an hour, streams uncapped.
async fn queue_at(url: &str, keys: &Keys) -> RedisQueue {
    RedisQueue::connect(url, keys.clone(), 3600, 0)
        .await
        .unwrap()
}

fn added(e: &Enqueued) -> (u32, String, String) {
    match e {
        Enqueued::Added {
            partition,
            conversation,
            entry_id,
        } => (*partition, conversation.clone(), entry_id.clone()),
        Enqueued::Duplicate => panic!("expected Added, got Duplicate"),
    }
}

/// Parses `<ms>-<seq>` for ordering assertions.
fn id_key(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// The behaviour both backends share.
mod suite {
    use super::*;

    pub async fn dedupe_same_id_once(f: Fixture) {
        let e = event("wamid.1", 4, &["15550001"]);
        let first = f.queue.enqueue(std::slice::from_ref(&e)).await.unwrap();
        let (p, conv, entry) = added(&first[0]);
        assert_eq!(conv, "15550001");
        assert_eq!(p, partition_of("15550001", 4));
        let again = f.queue.enqueue(std::slice::from_ref(&e)).await.unwrap();
        assert_eq!(again, vec![Enqueued::Duplicate]);
        // Twice inside one batch: the second is a duplicate of the first.
        let e2 = event("wamid.2", 4, &["15550001"]);
        let both = f.queue.enqueue(&[e2.clone(), e2]).await.unwrap();
        added(&both[0]);
        assert_eq!(both[1], Enqueued::Duplicate);
        let rows = f.entries(CH, p).await;
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].0, entry);
        assert_eq!(rows[0].1, e.payload, "payload stored byte for byte");
        assert_eq!(rows[0].2, "15550001");
    }

    pub async fn batch_in_order(f: Fixture) {
        let batch: Vec<NewEvent> = (0..300)
            .map(|i| event(&format!("wamid.{i}"), 4, &["15550002"]))
            .collect();
        let out = f.queue.enqueue(&batch).await.unwrap();
        assert_eq!(out.len(), 300);
        let p = partition_of("15550002", 4);
        let ids: Vec<String> = out
            .iter()
            .map(added)
            .map(|(pp, _, id)| {
                assert_eq!(pp, p);
                id
            })
            .collect();
        let rows = f.entries(CH, p).await;
        assert_eq!(rows.len(), 300);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.0, ids[i]);
            assert_eq!(row.1, batch[i].payload, "entry {i} out of order");
        }
        assert!(
            ids.windows(2).all(|w| id_key(&w[0]) < id_key(&w[1])),
            "ids increase"
        );
    }

    pub async fn aliases_keep_one_conversation(f: Fixture) {
        let parts = 8;
        // A user id whose own partition differs from the wa_id's: the alias must win.
        let wa_id = "15550003";
        let user_id = (0..)
            .map(|i| format!("US.{i}"))
            .find(|u| partition_of(u, parts) != partition_of(wa_id, parts))
            .unwrap();
        let first = f
            .queue
            .enqueue(&[event("m1", parts, &[wa_id, &user_id])])
            .await
            .unwrap();
        let (p1, c1, _) = added(&first[0]);
        assert_eq!((p1, c1.as_str()), (partition_of(wa_id, parts), wa_id));
        // Later payload carries only the business-scoped user id.
        let later = f
            .queue
            .enqueue(&[event("m2", parts, &[&user_id])])
            .await
            .unwrap();
        let (p2, c2, _) = added(&later[0]);
        assert_eq!(
            (p2, c2.as_str()),
            (p1, wa_id),
            "same person, same conversation and partition"
        );
        // Preferred-first: an unknown new id plus a known one resolves to the known person.
        let mixed = f
            .queue
            .enqueue(&[event("m3", parts, &["15559999", &user_id])])
            .await
            .unwrap();
        assert_eq!(added(&mixed[0]).1, wa_id);
        let again = f
            .queue
            .enqueue(&[event("m4", parts, &["15559999"])])
            .await
            .unwrap();
        assert_eq!(
            added(&again[0]).1,
            wa_id,
            "the new id was learned as an alias too"
        );
        // A different person.
        let other = f
            .queue
            .enqueue(&[event("m5", parts, &["15550004", "US.other"])])
            .await
            .unwrap();
        let (p3, c3, _) = added(&other[0]);
        assert_eq!(
            (p3, c3.as_str()),
            (partition_of("15550004", parts), "15550004")
        );
        let rows = f.entries(CH, p1).await;
        let convs: Vec<&str> = rows
            .iter()
            .map(|r| r.2.as_str())
            .filter(|c| *c == wa_id)
            .collect();
        assert_eq!(convs.len(), 4);
    }

    pub async fn partitions_within_range(f: Fixture) {
        let parts = 4;
        let batch: Vec<NewEvent> = (0..200)
            .map(|i| {
                let contact = format!("1555{i:07}");
                event(&format!("e{i}"), parts, &[contact.as_str()])
            })
            .collect();
        let out = f.queue.enqueue(&batch).await.unwrap();
        let mut used = HashSet::new();
        for (ev, o) in batch.iter().zip(&out) {
            let (p, conv, _) = added(o);
            assert!(p < parts);
            assert_eq!(p, partition_of(&ev.contact_ids[0], parts));
            assert_eq!(conv, ev.contact_ids[0]);
            used.insert(p);
        }
        assert_eq!(used.len(), 4, "events spread over every partition");
        let all = f.all_entries(CH, parts).await;
        assert_eq!(all.len(), 200);
        for (p, row) in all {
            assert_eq!(
                p,
                partition_of(&row.2, parts),
                "entry sits in its conversation's partition"
            );
        }
    }

    pub async fn account_events_go_to_partition_0(f: Fixture) {
        let out = f.queue.enqueue(&[event("acct.1", 4, &[])]).await.unwrap();
        let (p, conv, entry) = added(&out[0]);
        assert_eq!((p, conv.as_str()), (0, ""));
        let rows = f.entries(CH, 0).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].0.as_str(), rows[0].2.as_str()),
            (entry.as_str(), "")
        );
    }

    /// Needs a fixture with a 1-second dedupe TTL.
    pub async fn dedupe_expires_after_ttl(f: Fixture) {
        let e = event("wamid.ttl", 2, &["15550005"]);
        added(&f.queue.enqueue(std::slice::from_ref(&e)).await.unwrap()[0]);
        assert_eq!(
            f.queue.enqueue(std::slice::from_ref(&e)).await.unwrap()[0],
            Enqueued::Duplicate
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        added(&f.queue.enqueue(std::slice::from_ref(&e)).await.unwrap()[0]);
        let p = partition_of("15550005", 2);
        assert_eq!(f.entries(CH, p).await.len(), 2);
    }

    pub async fn empty_batch(f: Fixture) {
        assert!(f.queue.enqueue(&[]).await.unwrap().is_empty());
        f.queue.ping().await.unwrap();
    }

    /// Enqueues `n` events of one contact on a 1-partition channel; returns their payloads.
    async fn fill(f: &Fixture, tag: &str, n: usize) -> Vec<String> {
        let batch: Vec<NewEvent> = (0..n)
            .map(|i| event(&format!("{tag}.{i}"), 1, &["15551111"]))
            .collect();
        f.queue.enqueue(&batch).await.unwrap();
        batch.into_iter().map(|e| e.payload).collect()
    }

    async fn lease(f: &Fixture, owner: &str, ttl_ms: u64) -> Lease {
        f.queue
            .acquire_lease(CH, 0, owner, ttl_ms)
            .await
            .unwrap()
            .expect("lease is free")
    }

    fn payloads(entries: &[Entry]) -> Vec<String> {
        entries.iter().map(|e| e.payload.clone()).collect()
    }

    pub async fn lease_is_exclusive_and_fenced(f: Fixture) {
        let a = lease(&f, "worker-a", 10_000).await;
        assert_eq!(
            (a.channel.as_str(), a.partition, a.owner.as_str()),
            (CH, 0, "worker-a")
        );
        assert!(f
            .queue
            .acquire_lease(CH, 0, "worker-b", 10_000)
            .await
            .unwrap()
            .is_none());
        assert!(f
            .queue
            .acquire_lease(CH, 0, "worker-a", 10_000)
            .await
            .unwrap()
            .is_none());
        // Another partition is another lease.
        assert!(f
            .queue
            .acquire_lease(CH, 1, "worker-b", 10_000)
            .await
            .unwrap()
            .is_some());
        assert!(f.queue.renew_lease(&a, 10_000).await.unwrap());
        let forged = Lease {
            owner: "worker-b".into(),
            ..a.clone()
        };
        assert!(
            !f.queue.release_lease(&forged).await.unwrap(),
            "owner-checked release"
        );
        assert!(!f.queue.renew_lease(&forged, 10_000).await.unwrap());
        assert!(f.queue.release_lease(&a).await.unwrap());
        assert!(!f.queue.release_lease(&a).await.unwrap());
        let b = lease(&f, "worker-b", 10_000).await;
        assert!(
            b.token > a.token,
            "fencing tokens grow: {} then {}",
            a.token,
            b.token
        );
        assert!(!f.queue.renew_lease(&a, 10_000).await.unwrap());
        let stats = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!(stats.lease_owner.as_deref(), Some("worker-b"));
    }

    pub async fn lease_expires_and_stale_owner_is_fenced(f: Fixture) {
        f.queue.ensure_group(CH, 0).await.unwrap();
        fill(&f, "s", 3).await;
        let a = lease(&f, "worker-a", 150).await;
        let got = f.queue.read(&a, "worker-a", 10, 0).await.unwrap();
        assert_eq!(got.len(), 3);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!f.queue.renew_lease(&a, 10_000).await.unwrap(), "expired");
        let b = lease(&f, "worker-b", 10_000).await;
        assert!(
            !f.queue.ack(&a, &got[0].id).await.unwrap(),
            "stale owner cannot ack"
        );
        assert!(!f.queue.dead_letter(&a, &got[1], "late").await.unwrap());
        assert!(matches!(
            f.queue.read(&a, "worker-a", 10, 0).await,
            Err(QueueError::LeaseLost { partition: 0, .. })
        ));
        assert!(matches!(
            f.queue.promote_due_timers(&a, u64::MAX / 2, 10).await,
            Err(QueueError::LeaseLost { .. })
        ));
        // The new owner gets everything again, in order, as a redelivery.
        let again = f.queue.read(&b, "worker-b", 10, 0).await.unwrap();
        assert_eq!(payloads(&again), payloads(&got));
        assert!(again.iter().all(|e| e.deliveries == 2), "{again:?}");
        for e in &again {
            assert!(f.queue.ack(&b, &e.id).await.unwrap());
        }
        assert_eq!(f.queue.dead_letters(CH, 10).await.unwrap().len(), 0);
    }

    pub async fn read_in_order_then_ack(f: Fixture) {
        let sent = fill(&f, "r", 10).await;
        f.queue.ensure_group(CH, 0).await.unwrap();
        f.queue.ensure_group(CH, 0).await.unwrap(); // idempotent (BUSYGROUP ignored)
        let l = lease(&f, "w", 10_000).await;
        let got = f.queue.read(&l, "w", 100, 0).await.unwrap();
        assert_eq!(payloads(&got), sent);
        assert!(got
            .iter()
            .all(|e| e.deliveries == 1 && e.conversation == "15551111"));
        for e in &got {
            assert!(f.queue.ack(&l, &e.id).await.unwrap());
        }
        assert!(!f.queue.ack(&l, &got[0].id).await.unwrap(), "acked twice");
        assert!(f.queue.read(&l, "w", 100, 0).await.unwrap().is_empty());
        let stats = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!(
            (stats.length, stats.pending, stats.lag),
            (0, 0, 0),
            "{stats:?}"
        );
    }

    pub async fn a_batch_is_acked_in_one_call_and_fenced(f: Fixture) {
        fill(&f, "b", 5).await;
        f.queue.ensure_group(CH, 0).await.unwrap();
        let l = lease(&f, "w", 10_000).await;
        let got = f.queue.read(&l, "w", 100, 0).await.unwrap();
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let stale = Lease {
            token: l.token + 1,
            ..l.clone()
        };
        assert_eq!(
            f.queue.ack_many(&stale, &ids).await.unwrap(),
            None,
            "a stale lease acks nothing"
        );
        assert_eq!(f.queue.partition_stats(CH, 0).await.unwrap().pending, 5);
        assert_eq!(f.queue.ack_many(&l, &ids[..3]).await.unwrap(), Some(3));
        assert_eq!(
            f.queue.ack_many(&l, &ids).await.unwrap(),
            Some(2),
            "only the still-pending count"
        );
        assert_eq!(f.queue.ack_many(&l, &[]).await.unwrap(), Some(0));
        let stats = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!((stats.length, stats.pending), (0, 0), "{stats:?}");
    }

    pub async fn read_creates_a_missing_group(f: Fixture) {
        let sent = fill(&f, "g", 2).await;
        let l = lease(&f, "w", 10_000).await;
        let got = f.queue.read(&l, "w", 10, 0).await.unwrap();
        assert_eq!(payloads(&got), sent);
    }

    pub async fn new_owner_rehandles_pending_first(f: Fixture) {
        let sent = fill(&f, "p", 5).await;
        f.queue.ensure_group(CH, 0).await.unwrap();
        let a = lease(&f, "worker-a", 10_000).await;
        let first = f.queue.read(&a, "worker-a", 3, 0).await.unwrap();
        assert_eq!(payloads(&first), sent[..3]);
        assert!(f.queue.ack(&a, &first[0].id).await.unwrap());
        // worker-a dies without acking the other two; its lease is released (or expires).
        assert!(f.queue.release_lease(&a).await.unwrap());
        let later = fill(&f, "p2", 2).await;
        let b = lease(&f, "worker-b", 10_000).await;
        let reclaimed = f.queue.read(&b, "worker-b", 10, 0).await.unwrap();
        assert_eq!(
            payloads(&reclaimed),
            sent[1..3],
            "pending first, in entry order"
        );
        assert!(reclaimed.iter().all(|e| e.deliveries == 2), "{reclaimed:?}");
        for e in &reclaimed {
            assert!(f.queue.ack(&b, &e.id).await.unwrap());
        }
        let fresh = f.queue.read(&b, "worker-b", 10, 0).await.unwrap();
        let mut expected = sent[3..].to_vec();
        expected.extend(later);
        assert_eq!(payloads(&fresh), expected);
        // Not acked: the same entries come back first on the next read.
        let again = f.queue.read(&b, "worker-b", 2, 0).await.unwrap();
        assert_eq!(payloads(&again), expected[..2]);
        assert!(again.iter().all(|e| e.deliveries == 2));
    }

    pub async fn blocking_read_waits_and_wakes(f: Fixture) {
        f.queue.ensure_group(CH, 0).await.unwrap();
        let l = lease(&f, "w", 30_000).await;
        // Longer than the redis crate's 500 ms default response timeout.
        let t = Instant::now();
        let none = f.queue.read(&l, "w", 10, 1200).await.unwrap();
        assert!(none.is_empty());
        assert!(
            t.elapsed() >= Duration::from_millis(1100),
            "{:?}",
            t.elapsed()
        );
        let q = f.queue.clone();
        let l2 = l.clone();
        let reader = tokio::spawn(async move { q.read(&l2, "w", 10, 5000).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let sent = fill(&f, "b", 1).await;
        let got = reader.await.unwrap().unwrap();
        assert_eq!(payloads(&got), sent);
        assert!(
            t.elapsed() < Duration::from_millis(2000),
            "woke up promptly: {:?}",
            t.elapsed()
        );
    }

    pub async fn dead_letter_and_replay(f: Fixture) {
        let sent = fill(&f, "d", 2).await;
        f.queue.ensure_group(CH, 0).await.unwrap();
        let l = lease(&f, "w", 10_000).await;
        let got = f.queue.read(&l, "w", 1, 0).await.unwrap();
        assert!(f
            .queue
            .dead_letter(&l, &got[0], "handler failed: 500")
            .await
            .unwrap());
        assert!(
            !f.queue.dead_letter(&l, &got[0], "again").await.unwrap(),
            "no longer pending"
        );
        let stats = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!(
            (stats.length, stats.pending, stats.dead),
            (1, 0, 1),
            "{stats:?}"
        );
        let dead = f.queue.dead_letters(CH, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        let d = &dead[0];
        assert_eq!(
            (
                d.payload.as_str(),
                d.conversation.as_str(),
                d.error.as_str(),
                d.partition
            ),
            (sent[0].as_str(), "15551111", "handler failed: 500", 0)
        );
        assert_eq!(d.source_id, got[0].id);
        let next = f.queue.read(&l, "w", 10, 0).await.unwrap();
        assert_eq!(payloads(&next), sent[1..]);
        assert!(f.queue.ack(&l, &next[0].id).await.unwrap());
        let new_id = f
            .queue
            .replay_dead_letter(CH, &d.id)
            .await
            .unwrap()
            .expect("replayed");
        assert!(
            f.queue
                .replay_dead_letter(CH, &d.id)
                .await
                .unwrap()
                .is_none(),
            "once"
        );
        assert!(f.queue.dead_letters(CH, 10).await.unwrap().is_empty());
        let replayed = f.queue.read(&l, "w", 10, 0).await.unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!(
            (
                replayed[0].id.as_str(),
                replayed[0].payload.as_str(),
                replayed[0].conversation.as_str()
            ),
            (new_id.as_str(), sent[0].as_str(), "15551111")
        );
        assert_eq!(replayed[0].deliveries, 1);
    }

    /// One timer armed (or re-armed: the due time is overwritten) on partition 0.
    async fn arm(f: &Fixture, member: &str, due: u64) {
        f.queue
            .replace_timers(CH, 0, &[], &[(member.to_string(), due)])
            .await
            .unwrap();
    }

    async fn disarm(f: &Fixture, member: &str) {
        f.queue
            .replace_timers(CH, 0, &[member.to_string()], &[])
            .await
            .unwrap();
    }

    pub async fn replacing_timers_disarms_the_old_and_arms_the_new(f: Fixture) {
        f.queue.ensure_group(CH, 0).await.unwrap();
        let l = lease(&f, "w", 10_000).await;
        let old = [
            timer_member("old-expiring", "1555"),
            timer_member("old-closed", "1555"),
        ];
        for (i, m) in old.iter().enumerate() {
            arm(&f, m, 1_000 + i as u64).await;
        }
        let other = timer_member("other-conversation", "1666");
        arm(&f, &other, 1_500).await;
        let new = vec![
            (timer_member("new-expiring", "1555"), 2_000),
            (timer_member("new-closed", "1555"), 3_000),
        ];
        f.queue.replace_timers(CH, 0, &old, &new).await.unwrap();
        assert_eq!(f.queue.partition_stats(CH, 0).await.unwrap().timers, 3);
        assert_eq!(f.queue.promote_due_timers(&l, 10_000, 10).await.unwrap(), 3);
        let got = f.queue.read(&l, "w", 10, 0).await.unwrap();
        assert_eq!(
            payloads(&got),
            vec!["other-conversation", "new-expiring", "new-closed"]
        );
        // Nothing to do is not an error.
        f.queue.replace_timers(CH, 0, &[], &[]).await.unwrap();
    }

    pub async fn timers_promote_in_due_order(f: Fixture) {
        f.queue.ensure_group(CH, 0).await.unwrap();
        let l = lease(&f, "w", 10_000).await;
        let m1 = timer_member(r#"{"type":"window.closed","q":"\"é\""}"#, "15551111");
        let m2 = timer_member(r#"{"type":"window.expiring"}"#, "15551111");
        let m3 = timer_member(r#"{"type":"other"}"#, "15552222");
        arm(&f, &m1, 1_000).await;
        arm(&f, &m2, 2_000).await;
        arm(&f, &m3, 5_000).await;
        arm(&f, &m1, 3_000).await; // re-armed: due time overwritten
        disarm(&f, &m3).await;
        assert_eq!(f.queue.partition_stats(CH, 0).await.unwrap().timers, 2);
        disarm(&f, &m3).await; // disarming twice changes nothing
        assert_eq!(f.queue.partition_stats(CH, 0).await.unwrap().timers, 2);
        assert_eq!(f.queue.promote_due_timers(&l, 1_500, 10).await.unwrap(), 0);
        assert_eq!(
            f.queue.promote_due_timers(&l, 3_000, 1).await.unwrap(),
            1,
            "limit"
        );
        assert_eq!(f.queue.promote_due_timers(&l, 3_000, 10).await.unwrap(), 1);
        assert_eq!(f.queue.partition_stats(CH, 0).await.unwrap().timers, 0);
        let got = f.queue.read(&l, "w", 10, 0).await.unwrap();
        assert_eq!(
            payloads(&got),
            vec![
                r#"{"type":"window.expiring"}"#.to_string(),
                r#"{"type":"window.closed","q":"\"é\""}"#.to_string()
            ]
        );
        assert!(got.iter().all(|e| e.conversation == "15551111"));
        // A member that is not a timer_member object is promoted as the payload itself.
        arm(&f, "plain", 10).await;
        assert_eq!(f.queue.promote_due_timers(&l, 10, 10).await.unwrap(), 1);
        for e in &got {
            f.queue.ack(&l, &e.id).await.unwrap();
        }
        let plain = f.queue.read(&l, "w", 10, 0).await.unwrap();
        assert_eq!(
            (plain[0].payload.as_str(), plain[0].conversation.as_str()),
            ("plain", "")
        );
    }

    pub async fn stats_count_everything(f: Fixture) {
        let empty = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!(empty, Default::default());
        fill(&f, "st", 5).await;
        let before = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!(
            (before.length, before.pending, before.lag),
            (5, 0, 5),
            "{before:?}"
        );
        f.queue.ensure_group(CH, 0).await.unwrap();
        let l = lease(&f, "worker-1", 10_000).await;
        let got = f.queue.read(&l, "worker-1", 2, 0).await.unwrap();
        arm(&f, &timer_member("{}", "15551111"), 99).await;
        let s = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!(
            (
                s.length,
                s.pending,
                s.lag,
                s.dead,
                s.lease_owner.as_deref(),
                s.timers
            ),
            (5, 2, 3, 0, Some("worker-1"), 1),
            "{s:?}"
        );
        f.queue.dead_letter(&l, &got[0], "x").await.unwrap();
        f.queue.ack(&l, &got[1].id).await.unwrap();
        let s = f.queue.partition_stats(CH, 0).await.unwrap();
        assert_eq!((s.length, s.pending, s.lag, s.dead), (3, 0, 3, 1), "{s:?}");
        assert_eq!(
            f.queue.partition_stats(CH, 1).await.unwrap().dead,
            1,
            "dead is per channel"
        );
    }
}

/// Runs every suite function against one backend.
macro_rules! behaviour_suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            const TTL: u64 = 3600;

            #[tokio::test]
            async fn dedupe_same_id_once() {
                suite::dedupe_same_id_once(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn batch_in_order() {
                suite::batch_in_order(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn aliases_keep_one_conversation() {
                suite::aliases_keep_one_conversation(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn partitions_within_range() {
                suite::partitions_within_range(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn account_events_go_to_partition_0() {
                suite::account_events_go_to_partition_0(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn dedupe_expires_after_ttl() {
                suite::dedupe_expires_after_ttl(Fixture::$backend(1).await).await
            }
            #[tokio::test]
            async fn empty_batch() {
                suite::empty_batch(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn lease_is_exclusive_and_fenced() {
                suite::lease_is_exclusive_and_fenced(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn lease_expires_and_stale_owner_is_fenced() {
                suite::lease_expires_and_stale_owner_is_fenced(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn read_in_order_then_ack() {
                suite::read_in_order_then_ack(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn read_creates_a_missing_group() {
                suite::read_creates_a_missing_group(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn new_owner_rehandles_pending_first() {
                suite::new_owner_rehandles_pending_first(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn blocking_read_waits_and_wakes() {
                suite::blocking_read_waits_and_wakes(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn dead_letter_and_replay() {
                suite::dead_letter_and_replay(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn timers_promote_in_due_order() {
                suite::timers_promote_in_due_order(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn replacing_timers_disarms_the_old_and_arms_the_new() {
                suite::replacing_timers_disarms_the_old_and_arms_the_new(
                    Fixture::$backend(TTL).await,
                )
                .await
            }
            #[tokio::test]
            async fn a_batch_is_acked_in_one_call_and_fenced() {
                suite::a_batch_is_acked_in_one_call_and_fenced(Fixture::$backend(TTL).await).await
            }
            #[tokio::test]
            async fn stats_count_everything() {
                suite::stats_count_everything(Fixture::$backend(TTL).await).await
            }
        }
    };
}

behaviour_suite!(memory);
behaviour_suite!(redis);
behaviour_suite!(cluster);

/// Redis-only: what happens when the server goes away.
mod redis_failures {
    use super::*;

    fn batch(n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|i| event(&format!("wamid.r{i}"), 2, &[&format!("1555000{}", i % 3)]))
            .collect()
    }

    /// Enqueues until Redis answers (the connection manager reconnects in the background).
    async fn enqueue_when_back(q: &RedisQueue, b: &[NewEvent]) -> Vec<Enqueued> {
        support::eventually(Duration::from_secs(15), "redis to come back", || async {
            q.enqueue(b).await.ok()
        })
        .await
    }

    #[tokio::test]
    async fn down_is_an_error_and_retry_lands_once() {
        let server = RedisServer::start(RedisOptions { appendonly: true });
        let keys = support::keys();
        let q = queue_at(&server.url(), &keys).await;
        let all = batch(6);
        // The first webhook got half its events in before the failure...
        let first = q.enqueue(&all[..3]).await.unwrap();
        assert!(first.iter().all(|e| matches!(e, Enqueued::Added { .. })));
        server.stop();
        let err = q.enqueue(&all).await.unwrap_err();
        assert!(matches!(err, QueueError::Redis(_)), "{err:?}");
        assert!(q.ping().await.is_err());
        server.restart();
        // ...the sender retries the whole webhook: each event lands exactly once.
        let retry = enqueue_when_back(&q, &all).await;
        assert_eq!(
            &retry[..3],
            &[
                Enqueued::Duplicate,
                Enqueued::Duplicate,
                Enqueued::Duplicate
            ]
        );
        assert!(
            retry[3..]
                .iter()
                .all(|e| matches!(e, Enqueued::Added { .. })),
            "{retry:?}"
        );
        q.ping().await.unwrap();
        let mut payloads = Vec::new();
        for p in 0..2 {
            for e in support::xrange(&server.url(), &keys.stream(CH, p)).await {
                payloads.push(e.field("e").to_string());
            }
        }
        payloads.sort();
        let mut expected: Vec<String> = all.iter().map(|e| e.payload.clone()).collect();
        expected.sort();
        assert_eq!(payloads, expected, "every event exactly once");
    }

    #[tokio::test]
    async fn crash_without_persistence_recovers_scripts() {
        // A restart without persistence also empties the script cache: EVALSHA in the
        // pipeline gets NOSCRIPT and must be reloaded, not reported as a failure.
        let server = RedisServer::start(RedisOptions::default());
        let keys = support::keys();
        let q = queue_at(&server.url(), &keys).await;
        q.enqueue(&batch(2)).await.unwrap();
        server.kill();
        assert!(q.enqueue(&batch(4)).await.is_err());
        server.restart();
        let out = enqueue_when_back(&q, &batch(4)).await;
        assert!(
            out.iter().all(|e| matches!(e, Enqueued::Added { .. })),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn script_flush_is_recovered() {
        let server = RedisServer::start(RedisOptions::default());
        let keys = support::keys();
        let q = queue_at(&server.url(), &keys).await;
        let mut con = support::connection(&server.url()).await;
        let _: () = ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();
        let out = q.enqueue(&batch(5)).await.unwrap();
        assert!(
            out.iter().all(|e| matches!(e, Enqueued::Added { .. })),
            "{out:?}"
        );
        let n = support::xlen(&server.url(), &keys.stream(CH, 0)).await
            + support::xlen(&server.url(), &keys.stream(CH, 1)).await;
        assert_eq!(n, 5);
    }

    #[tokio::test]
    async fn connect_fails_when_nothing_listens() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = RedisQueue::connect(
            &format!("redis://127.0.0.1:{port}/"),
            Keys::default(),
            60,
            0,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QueueError::Redis(_)), "{err:?}");
    }

    #[tokio::test]
    async fn stream_maxlen_caps_the_stream() {
        let url = support::shared_url();
        let keys = support::keys();
        let q = RedisQueue::connect(&url, keys.clone(), 3600, 10)
            .await
            .unwrap();
        let b: Vec<NewEvent> = (0..500)
            .map(|i| event(&format!("x{i}"), 1, &["1555"]))
            .collect();
        q.enqueue(&b).await.unwrap();
        let len = support::xlen(&url, &keys.stream(CH, 0)).await;
        assert!(len < 500, "MAXLEN ~ trims ({len})");
    }

    /// An XADD that fails inside the script (here: the stream key holds a string) must not
    /// leave the dedupe marker behind, or the sender's retry would be dropped as a duplicate.
    #[tokio::test]
    async fn a_failed_append_leaves_no_dedupe_marker() {
        let url = support::shared_url();
        let keys = support::keys();
        let q = queue_at(&url, &keys).await;
        let mut con = support::connection(&url).await;
        let stream = keys.stream(CH, 0);
        let _: () = ::redis::cmd("SET")
            .arg(&stream)
            .arg("not a stream")
            .query_async(&mut con)
            .await
            .unwrap();
        let e = event("fails-once", 1, &["1555"]);
        assert!(
            q.enqueue(std::slice::from_ref(&e)).await.is_err(),
            "the failed append is an error"
        );
        let marker: bool = ::redis::cmd("EXISTS")
            .arg(keys.seen(CH, "fails-once"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(!marker, "no dedupe marker without the entry");
        let _: () = ::redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut con)
            .await
            .unwrap();
        let out = q.enqueue(&[e]).await.unwrap();
        assert!(
            matches!(out[0], Enqueued::Added { .. }),
            "the retry lands: {out:?}"
        );
        assert_eq!(support::xlen(&url, &stream).await, 1);
    }

    #[tokio::test]
    async fn restart_without_persistence_recreates_the_group() {
        let server = RedisServer::start(RedisOptions::default());
        let keys = support::keys();
        let q = queue_at(&server.url(), &keys).await;
        q.ensure_group(CH, 0).await.unwrap();
        q.enqueue(&[event("before", 1, &["1555"])]).await.unwrap();
        let l = q.acquire_lease(CH, 0, "w", 30_000).await.unwrap().unwrap();
        let got = q.read(&l, "w", 10, 0).await.unwrap();
        assert!(q.ack(&l, &got[0].id).await.unwrap());
        server.kill();
        assert!(matches!(
            q.read(&l, "w", 10, 0).await,
            Err(QueueError::Redis(_))
        ));
        server.restart();
        // Ingress goes on: XADD recreates the stream, without the group.
        enqueue_when_back(&q, &[event("after", 1, &["1555"])]).await;
        // The lease is gone too: the worker takes it again, and its read recreates the group.
        assert!(matches!(
            q.read(&l, "w", 10, 0).await,
            Err(QueueError::LeaseLost { .. })
        ));
        let l = q.acquire_lease(CH, 0, "w", 30_000).await.unwrap().unwrap();
        let got = q.read(&l, "w", 10, 1000).await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].payload.contains("\"after\""), "{got:?}");
        assert!(q.ack(&l, &got[0].id).await.unwrap());
    }

    #[tokio::test]
    async fn blocked_read_fails_cleanly_when_redis_dies() {
        let server = RedisServer::start(RedisOptions::default());
        let q = queue_at(&server.url(), &support::keys()).await;
        q.ensure_group(CH, 0).await.unwrap();
        let l = q.acquire_lease(CH, 0, "w", 60_000).await.unwrap().unwrap();
        let q2 = q.clone();
        let l2 = l.clone();
        let reader = tokio::spawn(async move { q2.read(&l2, "w", 10, 10_000).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill();
        let t = Instant::now();
        let res = reader.await.unwrap();
        assert!(matches!(res, Err(QueueError::Redis(_))), "{res:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn appendonly_restart_keeps_leases_and_pending() {
        // With AOF, a restart loses nothing: the lease, the fence and the PEL survive.
        let server = RedisServer::start(RedisOptions { appendonly: true });
        let q = queue_at(&server.url(), &support::keys()).await;
        q.enqueue(&[event("a1", 1, &["1555"]), event("a2", 1, &["1555"])])
            .await
            .unwrap();
        q.ensure_group(CH, 0).await.unwrap();
        let l = q.acquire_lease(CH, 0, "w", 60_000).await.unwrap().unwrap();
        let got = q.read(&l, "w", 10, 0).await.unwrap();
        assert!(q.ack(&l, &got[0].id).await.unwrap());
        server.stop();
        server.restart();
        let again = support::eventually(Duration::from_secs(15), "redis back", || async {
            q.read(&l, "w", 10, 0).await.ok()
        })
        .await;
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].id.as_str(), again[0].deliveries),
            (got[1].id.as_str(), 2)
        );
        let next = q.acquire_lease(CH, 0, "other", 1000).await.unwrap();
        assert!(next.is_none(), "lease survived the restart");
    }
}

/// Group commit (`queue/redis/committer.rs`): webhooks that arrive while a round trip is in
/// flight share the next one, and each still gets exactly its own outcomes.
mod group_commit {
    use super::*;
    use std::collections::HashMap;

    /// The events of caller `i`: 1–3 of them, for one of 7 contacts. Callers 200.. re-send the
    /// events of caller `i - 200` (a retry racing its original).
    fn batch_of(i: usize) -> Vec<NewEvent> {
        let origin = if i >= 200 { i - 200 } else { i };
        (0..1 + origin % 3)
            .map(|j| {
                let contact = format!("1555{}", origin % 7);
                event(&format!("gc.{origin}.{j}"), 4, &[contact.as_str()])
            })
            .collect()
    }

    /// Stream entry ids `<ms>-<seq>` in order.
    fn entry_id_before(a: &str, b: &str) -> bool {
        let parse = |id: &str| -> (u64, u64) {
            let (ms, seq) = id.split_once('-').expect("stream entry id");
            (ms.parse().unwrap(), seq.parse().unwrap())
        };
        parse(a) < parse(b)
    }

    async fn evalsha_calls(url: &str) -> u64 {
        let info: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut support::connection(url).await)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    #[tokio::test]
    async fn concurrent_webhooks_share_round_trips_and_get_their_own_outcomes() {
        let server = RedisServer::start(RedisOptions::default());
        let url = server.url();
        let keys = support::keys();
        let q = queue_at(&url, &keys).await;
        let before = evalsha_calls(&url).await;
        let batches: Vec<Vec<NewEvent>> = (0..300).map(batch_of).collect();
        let outcomes = futures_util::future::join_all(batches.iter().map(|b| q.enqueue(b))).await;
        let calls = evalsha_calls(&url).await - before;
        assert!(
            calls < 100,
            "300 concurrent webhooks went out in {calls} script calls: no round trip was shared"
        );

        // Every caller got one outcome per event; every id was added exactly once.
        let mut added_by_id: HashMap<String, (u32, String)> = HashMap::new();
        for (batch, out) in batches.iter().zip(&outcomes) {
            let out = out.as_ref().expect("enqueued");
            assert_eq!(out.len(), batch.len());
            let mut last_entry_of_partition: HashMap<u32, String> = HashMap::new();
            for (ev, o) in batch.iter().zip(out) {
                if let Enqueued::Added { .. } = o {
                    let (partition, conversation, entry_id) = added(o);
                    assert_eq!(conversation, ev.contact_ids[0], "{}", ev.id);
                    if let Some(prev) = last_entry_of_partition.insert(partition, entry_id.clone())
                    {
                        assert!(
                            entry_id_before(&prev, &entry_id),
                            "a webhook's events keep their order: {prev} then {entry_id}"
                        );
                    }
                    let first = added_by_id.insert(ev.id.clone(), (partition, entry_id));
                    assert!(first.is_none(), "{} added twice", ev.id);
                }
            }
        }
        let unique: HashSet<&str> = batches.iter().flatten().map(|e| e.id.as_str()).collect();
        assert_eq!(added_by_id.len(), unique.len(), "every id added once");

        // The entry each caller was told about holds that caller's event, not another's.
        let mut total = 0;
        for p in 0..4 {
            let entries = support::xrange(&url, &keys.stream(CH, p)).await;
            total += entries.len();
            for entry in entries {
                let payload = entry.field("e");
                // (Entry ids are per stream: two partitions can hold the same one.)
                let (id, _) = added_by_id
                    .iter()
                    .find(|(_, (partition, e))| *partition == p && *e == entry.id)
                    .expect("every stream entry was reported to its caller");
                assert!(payload.contains(&format!("\"id\":\"{id}\"")), "{payload}");
            }
        }
        assert_eq!(total, unique.len());
    }
    /// The round trip leaves and comes back while the receiver's thread is busy (parsing other
    /// webhooks, say): it is sent from a thread of its own, so Redis never waits for the
    /// receiver's runtime to get round to it. Led from the caller's runtime, nothing reached
    /// Redis until that runtime was free again.
    #[test]
    fn round_trips_go_out_while_the_receivers_thread_is_busy() {
        let url = support::shared_url();
        let keys = support::keys();
        let receiver = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        receiver.block_on(async {
            let q = queue_at(&url, &keys).await;
            let batch = vec![event("busy.1", 4, &["15558888"])];
            let mut enqueue = Box::pin(q.enqueue(&batch));
            assert!(
                futures_util::FutureExt::now_or_never(&mut enqueue).is_none(),
                "joined the line"
            );
            // This thread is now busy (blocked in `join`) until the event is seen in Redis.
            let (url, keys) = (url.clone(), keys.clone());
            let landed = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < deadline {
                        let mut n = 0;
                        for p in 0..4 {
                            n += support::xlen(&url, &keys.stream(CH, p)).await;
                        }
                        if n > 0 {
                            return true;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    false
                })
            })
            .join()
            .unwrap();
            assert!(
                landed,
                "the event reached Redis while the caller's thread was busy"
            );
            let out = enqueue.await.unwrap();
            assert!(matches!(out[0], Enqueued::Added { .. }), "{out:?}");
        });
    }

    /// A webhook dropped while it waits or while its round trip runs (the client hung up)
    /// stalls nothing: the webhooks after it still go through, and the dropped one's events
    /// went in all the same (its sender's retry is then a duplicate).
    #[tokio::test]
    async fn dropped_webhooks_do_not_stall_the_line() {
        let url = support::shared_url();
        let keys = support::keys();
        let q = queue_at(&url, &keys).await;
        let batches: Vec<Vec<NewEvent>> = (0..200)
            .map(|i| vec![event(&format!("dropped.{i}"), 4, &["15557777"])])
            .collect();
        // Cut off after 0–2 ms: callers in line and callers whose round trip is out are
        // dropped (each was polled once, so each joined the line).
        let cut = futures_util::future::join_all(batches.iter().enumerate().map(|(i, b)| {
            tokio::time::timeout(Duration::from_micros((i as u64 * 10) % 2_000), q.enqueue(b))
        }))
        .await;
        assert!(cut.iter().any(|r| r.is_err()), "some callers were dropped");
        let after = event("after-the-drops", 4, &["15557777"]);
        let out = tokio::time::timeout(Duration::from_secs(5), q.enqueue(&[after]))
            .await
            .expect("the line moves on after dropped callers")
            .unwrap();
        assert!(matches!(out[0], Enqueued::Added { .. }), "{out:?}");
        // Round trips leave and are answered in order: every earlier one has run by now.
        let stream = keys.stream(CH, partition_of("15557777", 4));
        assert_eq!(support::xlen(&url, &stream).await, 201, "no event was lost");
    }
}
