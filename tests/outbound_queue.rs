//! The outbound queue (`coexist::outbound::queue`): one behaviour suite run on both backends,
//! the Redis one against a real redis-server and the in-memory twin. Every call passes an
//! explicit `now` (a synthetic clock), so both backends see the same times.

mod support;

use coexist::keys::Keys;
use coexist::outbound::queue::{HistoryEntry, MemoryOutQueue, RedisOutQueue, Taken};
use coexist::outbound::{
    LaneGrant, MessageStatus, OutQueue, OutQueueBackend, OutQueueOptions, OutRecord, OutStats,
    Outbox, OutboxBackend, OutboxOptions, OutgoingMessage, QueuedMessage, Reply, Settle,
    WaitReason,
};
use std::collections::BTreeMap;

const CH: &str = "shop";
/// Lane lease of every queue under test.
const LEASE: i64 = 10_000;
/// Record TTL of every queue under test (the Redis records' real TTL: ~16 min).
const TTL: i64 = 1_000_000;

fn options() -> OutQueueOptions {
    OutQueueOptions {
        record_ttl_ms: TTL as u64,
        lane_lease_ms: LEASE as u64,
    }
}

/// A Redis-backed queue on a fresh key prefix, with its keys.
async fn redis_queue() -> (OutQueue, Keys) {
    let keys = support::keys();
    let con = redis::Client::open(support::shared_url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let q = RedisOutQueue::new(con, keys.clone(), options());
    (OutQueue::Redis(q), keys)
}

/// A Redis-backed queue on the binary's shared 3-master Redis Cluster.
async fn cluster_queue() -> (OutQueue, Keys) {
    let keys = support::keys();
    let options_ = coexist::redis_conn::ConnectOptions {
        response_timeout: std::time::Duration::from_secs(3),
        connection_timeout: std::time::Duration::from_secs(2),
    };
    let endpoint = support::cluster::shared().endpoint();
    let con = coexist::redis_conn::RedisConn::connect(&endpoint, options_)
        .await
        .unwrap();
    let q = RedisOutQueue::new(con, keys.clone(), options());
    (OutQueue::Redis(q), keys)
}

/// A memory queue, with its memory outbox.
fn memory_queue() -> (OutQueue, Outbox) {
    let outbox = Outbox::memory(support::keys(), OutboxOptions::default());
    let q = MemoryOutQueue::new(outbox.clone(), options());
    (OutQueue::Memory(q), outbox)
}

/// The outbox key (message id) of message `name`.
fn id(name: &str) -> String {
    format!("ev.{name}:0")
}

/// Text message `name` to `to`, queued at `at`.
fn msg(to: &str, name: &str, at: i64) -> QueuedMessage {
    QueuedMessage::new(
        OutgoingMessage::new(CH, to, Reply::text(format!("text {name}")), id(name)),
        at,
    )
}

fn sent(wamid: &str) -> Settle {
    Settle::Sent {
        wamid: wamid.into(),
    }
}

fn failed(code: &str, error: &str) -> Settle {
    Settle::Failed {
        code: code.into(),
        error: error.into(),
    }
}

async fn take(q: &OutQueue, owner: &str, now: i64, max: usize) -> Taken {
    q.take(CH, owner, now, max).await.unwrap()
}

/// The customers of the lanes taken, in order.
fn customers(t: &Taken) -> Vec<&str> {
    t.lanes.iter().map(|g| g.customer.as_str()).collect()
}

/// The one grant of `customer` in `t`.
fn grant<'a>(t: &'a Taken, customer: &str) -> &'a LaneGrant {
    t.lanes
        .iter()
        .find(|g| g.customer == customer)
        .unwrap_or_else(|| panic!("{customer} not taken: {t:?}"))
}

async fn head(q: &OutQueue, customer: &str) -> Option<QueuedMessage> {
    q.head(CH, customer).await.unwrap()
}

/// The outbox key of the head of `customer`'s lane.
async fn head_id(q: &OutQueue, customer: &str) -> Option<String> {
    head(q, customer).await.map(|m| m.msg.outbox_key)
}

async fn record(q: &OutQueue, name: &str) -> OutRecord {
    q.record(CH, &id(name))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record of {name}"))
}

fn history(r: &OutRecord) -> Vec<(MessageStatus, i64)> {
    r.history.iter().map(|h| (h.status, h.at)).collect()
}

fn ids(records: &[OutRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn waiting(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Runs a suite on both backends: `<name>_redis` and `<name>_memory`, and the Redis one on a
/// Redis Cluster too: `<name>_redis::on_cluster`.
macro_rules! both {
    ($suite:ident, $redis:ident, $memory:ident) => {
        #[tokio::test]
        async fn $redis() {
            $suite(redis_queue().await.0).await;
        }

        mod $redis {
            #[tokio::test]
            async fn on_cluster() {
                super::$suite(super::cluster_queue().await.0).await;
            }
        }

        #[tokio::test]
        async fn $memory() {
            $suite(memory_queue().0).await;
        }
    };
}

// ---------------------------------------------------------------- push, FIFO

async fn suite_push(q: OutQueue) {
    let (a0, a1, a2) = (
        msg("A", "a0", 1_000),
        msg("A", "a1", 1_000),
        msg("A", "a2", 1_001),
    );
    let mut a3 = msg("A", "a3", 1_002);
    a3.msg.reply = Reply::Template {
        name: "order_update".into(),
        language: "en_US".into(),
        components: vec![],
    };
    assert_eq!(q.push(CH, "A", &[], 1_000).await.unwrap(), 0);
    assert_eq!(
        q.push(CH, "A", &[a0.clone(), a1.clone()], 1_000)
            .await
            .unwrap(),
        2
    );
    // Once per outbox key: a1 again is skipped, a2 is new.
    assert_eq!(
        q.push(CH, "A", &[a1.clone(), a2.clone()], 1_001)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        q.push(CH, "A", std::slice::from_ref(&a0), 1_001)
            .await
            .unwrap(),
        0
    );
    // The same key twice in one push counts once.
    assert_eq!(
        q.push(CH, "A", &[a3.clone(), a3.clone()], 1_002)
            .await
            .unwrap(),
        1
    );

    let r = record(&q, "a0").await;
    assert_eq!(
        r,
        OutRecord {
            id: id("a0"),
            channel: CH.into(),
            to: "A".into(),
            kind: "text".into(),
            status: MessageStatus::Queued,
            wamid: None,
            error_code: None,
            error: None,
            created_at: 1_000,
            history: vec![HistoryEntry {
                status: MessageStatus::Queued,
                at: 1_000
            }],
        }
    );
    assert_eq!(record(&q, "a2").await.created_at, 1_001);
    assert_eq!(record(&q, "a3").await.kind, "template");
    assert_eq!(q.record(CH, &id("nope")).await.unwrap(), None);
    assert_eq!(q.record("other", &id("a0")).await.unwrap(), None);
    assert_eq!(head(&q, "A").await, Some(a0.clone()));
    assert_eq!(head(&q, "B").await, None);
    assert_eq!(q.stats(CH, 1_002).await.unwrap().backlog, 4);

    // The lane gives its messages in push order, each once.
    let t = take(&q, "w", 1_002, 10).await;
    assert_eq!(customers(&t), ["A"]);
    let g = grant(&t, "A");
    assert_eq!((g.channel.as_str(), g.token.as_str()), (CH, "w:1"));
    let mut order = Vec::new();
    let mut now = 1_100;
    while let Some(h) = head(&q, "A").await {
        assert!(q.begin(g, &h, now).await.unwrap());
        let wamid = format!("wamid.{}", h.msg.outbox_key);
        q.settle(g, &h, &sent(&wamid), now).await.unwrap();
        order.push(h.msg.outbox_key);
        now += 10;
        assert!(order.len() <= 4, "{order:?}");
    }
    assert_eq!(order, [id("a0"), id("a1"), id("a2"), id("a3")]);
    assert!(q.release(g, now).await.unwrap());
    // A settled key is still recorded: pushing it again queues nothing.
    assert_eq!(q.push(CH, "A", &[a0], now).await.unwrap(), 0);
    let s = q.stats(CH, now).await.unwrap();
    assert_eq!((s.backlog, s.lanes_ready, s.lanes_busy), (0, 0, 0));
    assert_eq!(head(&q, "A").await, None);
}

both!(
    suite_push,
    push_idempotent_fifo_redis,
    push_idempotent_fifo_memory
);

// ---------------------------------------------------------------- take

async fn suite_take(q: OutQueue) {
    assert_eq!(take(&q, "s1", 1_000, 10).await, Taken::default());
    q.push(CH, "D", &[msg("D", "d0", 1_000)], 1_000)
        .await
        .unwrap();
    q.push(CH, "A", &[msg("A", "a0", 1_000)], 1_000)
        .await
        .unwrap();
    q.push(CH, "B", &[msg("B", "b0", 2_000)], 2_000)
        .await
        .unwrap();
    q.push(CH, "C", &[msg("C", "c0", 3_000)], 3_000)
        .await
        .unwrap();
    // A second push keeps the lane's first ready time.
    q.push(CH, "C", &[msg("C", "c1", 3_500)], 3_500)
        .await
        .unwrap();

    // Nothing due yet: when to look again.
    let t = take(&q, "s1", 999, 10).await;
    assert_eq!(
        (t.lanes.len(), t.next_ready_ms, t.reclaimed),
        (0, Some(1_000), 0)
    );
    // At most `max`, by (ready time, customer).
    let t = take(&q, "s1", 2_500, 1).await;
    assert_eq!(customers(&t), ["A"]);
    assert_eq!(t.lanes[0].token, "s1:1");
    assert_eq!(t.next_ready_ms, Some(1_000));
    let ga = t.lanes[0].clone();
    let t = take(&q, "s2", 2_500, 10).await;
    assert_eq!(customers(&t), ["D", "B"]);
    assert_eq!(
        t.lanes.iter().map(|g| g.token.as_str()).collect::<Vec<_>>(),
        ["s2:2", "s2:3"]
    );
    assert_eq!(t.next_ready_ms, Some(3_000));
    // Taken lanes are not taken again; C is not due.
    let t = take(&q, "s3", 2_999, 10).await;
    assert_eq!((t.lanes.len(), t.next_ready_ms), (0, Some(3_000)));
    // max 0 takes nothing, even when due, but still answers.
    let t = take(&q, "s3", 3_000, 0).await;
    assert_eq!(
        (t.lanes.len(), t.next_ready_ms, t.reclaimed),
        (0, Some(3_000), 0)
    );
    // Another channel is another queue.
    assert_eq!(
        q.take("other", "s3", 3_000, 10).await.unwrap(),
        Taken::default()
    );

    // A push to a taken lane does not make it ready; giving it back does.
    q.push(CH, "A", &[msg("A", "a1", 3_100)], 3_100)
        .await
        .unwrap();
    let t = take(&q, "s3", 3_100, 10).await;
    assert_eq!(customers(&t), ["C"]);
    assert_eq!(t.next_ready_ms, None);
    let a0 = head(&q, "A").await.unwrap();
    q.settle(&ga, &a0, &sent("wamid.a0"), 3_200).await.unwrap();
    assert!(q.release(&ga, 3_300).await.unwrap());
    let t = take(&q, "s3", 3_299, 10).await;
    assert_eq!((t.lanes.len(), t.next_ready_ms), (0, Some(3_300)));
    let t = take(&q, "s3", 3_300, 10).await;
    assert_eq!(customers(&t), ["A"]);
    assert_eq!(head_id(&q, "A").await, Some(id("a1")));
}

both!(
    suite_take,
    take_ready_times_and_max_redis,
    take_ready_times_and_max_memory
);

// ---------------------------------------------------------------- independent lanes

async fn suite_lanes_independent(q: OutQueue) {
    q.push(
        CH,
        "A",
        &[msg("A", "a0", 1_000), msg("A", "a1", 1_000)],
        1_000,
    )
    .await
    .unwrap();
    q.push(CH, "B", &[msg("B", "b0", 1_000)], 1_000)
        .await
        .unwrap();
    let t = take(&q, "w", 1_000, 10).await;
    assert_eq!(customers(&t), ["A", "B"]);
    let (ga, gb) = (grant(&t, "A").clone(), grant(&t, "B").clone());

    // A waits for its pair gap; B goes on.
    assert!(q
        .defer(&ga, 5_000, Some(WaitReason::PairGap), None)
        .await
        .unwrap());
    let b0 = head(&q, "B").await.unwrap();
    q.settle(&gb, &b0, &sent("wamid.b0"), 1_050).await.unwrap();
    assert!(q.release(&gb, 1_050).await.unwrap());
    q.push(CH, "B", &[msg("B", "b1", 1_100)], 1_100)
        .await
        .unwrap();
    let t = take(&q, "w", 1_100, 10).await;
    assert_eq!(customers(&t), ["B"]);
    assert_eq!(t.next_ready_ms, Some(5_000));
    assert_eq!(head_id(&q, "B").await, Some(id("b1")));
    let s = q.stats(CH, 1_100).await.unwrap();
    assert_eq!((s.lanes_ready, s.lanes_busy), (0, 1));
    assert_eq!(s.waiting, waiting(&[("pair_gap", 1)]));

    // A's order is untouched; when its gap ends it is taken and no longer waiting.
    assert_eq!(take(&q, "w", 4_999, 10).await.lanes.len(), 0);
    let t = take(&q, "w", 5_000, 10).await;
    assert_eq!(customers(&t), ["A"]);
    assert_eq!(head_id(&q, "A").await, Some(id("a0")));
    let s = q.stats(CH, 5_000).await.unwrap();
    assert_eq!((s.lanes_ready, s.lanes_busy), (0, 2));
    assert!(s.waiting.is_empty(), "{:?}", s.waiting);
}

both!(
    suite_lanes_independent,
    lanes_independent_redis,
    lanes_independent_memory
);

// ---------------------------------------------------------------- defer

async fn suite_defer(q: OutQueue) {
    q.push(
        CH,
        "A",
        &[msg("A", "a0", 1_000), msg("A", "a1", 1_000)],
        1_000,
    )
    .await
    .unwrap();
    let g1 = take(&q, "w", 1_000, 10).await.lanes[0].clone();
    let a0 = head(&q, "A").await.unwrap();
    assert_eq!(a0.attempts, 0);

    // Backoff with a bump: the head's attempts go up by one.
    assert!(q
        .defer(&g1, 2_000, Some(WaitReason::Backoff), Some(&a0))
        .await
        .unwrap());
    let a0_1 = head(&q, "A").await.unwrap();
    assert_eq!(a0_1.attempts, 1);
    assert_eq!(a0_1.msg, a0.msg);
    // The grant is spent: a second defer (or begin) is refused and changes nothing.
    assert!(!q.defer(&g1, 1_000, None, Some(&a0_1)).await.unwrap());
    assert!(!q.release(&g1, 1_000).await.unwrap());
    assert!(!q.begin(&g1, &a0_1, 1_000).await.unwrap());
    assert_eq!(head(&q, "A").await, Some(a0_1.clone()));
    assert_eq!(record(&q, "a0").await.status, MessageStatus::Queued);
    let t = take(&q, "w", 1_999, 10).await;
    assert_eq!((t.lanes.len(), t.next_ready_ms), (0, Some(2_000)));
    assert_eq!(
        q.stats(CH, 1_999).await.unwrap().waiting,
        waiting(&[("backoff", 1)])
    );

    // A bump naming an old copy of the head changes nothing (but the defer is valid).
    let g2 = take(&q, "w", 2_000, 10).await.lanes[0].clone();
    assert!(q.defer(&g2, 2_000, None, Some(&a0)).await.unwrap());
    assert_eq!(head(&q, "A").await.unwrap().attempts, 1);
    assert!(q.stats(CH, 2_000).await.unwrap().waiting.is_empty());
    // Nor does a bump naming a message behind the head.
    let g3 = take(&q, "w", 2_000, 10).await.lanes[0].clone();
    let a1 = msg("A", "a1", 1_000);
    assert!(q.defer(&g3, 2_000, None, Some(&a1)).await.unwrap());
    let g4 = take(&q, "w", 2_000, 10).await.lanes[0].clone();
    assert!(q
        .defer(&g4, 2_100, Some(WaitReason::Backoff), Some(&a0_1))
        .await
        .unwrap());
    let a0_2 = head(&q, "A").await.unwrap();
    assert_eq!(a0_2.attempts, 2);
    // Stale grants stay refused.
    for g in [&g1, &g2, &g3, &g4] {
        assert!(!q.defer(g, 0, None, Some(&a0_2)).await.unwrap());
    }
    assert_eq!(head(&q, "A").await.unwrap().attempts, 2);
    assert_eq!(take(&q, "w", 2_099, 10).await.next_ready_ms, Some(2_100));

    // a1 behind was never bumped.
    let g5 = take(&q, "w", 2_100, 10).await.lanes[0].clone();
    q.settle(&g5, &a0_2, &sent("wamid.a0"), 2_150)
        .await
        .unwrap();
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    q.settle(&g5, &a1, &sent("wamid.a1"), 2_160).await.unwrap();
    // An empty lane is dropped (even with a reason), not made ready.
    assert!(q
        .defer(&g5, 2_200, Some(WaitReason::PairGap), Some(&a1))
        .await
        .unwrap());
    let s = q.stats(CH, 2_200).await.unwrap();
    assert_eq!((s.backlog, s.lanes_ready, s.lanes_busy), (0, 0, 0));
    assert!(s.waiting.is_empty(), "{:?}", s.waiting);
    assert_eq!(take(&q, "w", 99_999, 10).await, Taken::default());
    // A new message makes it ready again.
    q.push(CH, "A", &[msg("A", "a2", 3_000)], 3_000)
        .await
        .unwrap();
    assert_eq!(customers(&take(&q, "w", 3_000, 10).await), ["A"]);
}

both!(
    suite_defer,
    defer_fenced_and_bump_redis,
    defer_fenced_and_bump_memory
);

// ---------------------------------------------------------------- expired leases

async fn suite_reclaim(q: OutQueue) {
    let (a0, a1, a2) = (
        msg("A", "a0", 1_000),
        msg("A", "a1", 1_000),
        msg("A", "a2", 1_000),
    );
    q.push(CH, "A", &[a0.clone(), a1.clone(), a2.clone()], 1_000)
        .await
        .unwrap();
    q.push(CH, "B", &[msg("B", "b0", 1_000)], 1_000)
        .await
        .unwrap();
    let t = take(&q, "dead", 1_000, 10).await;
    let (ga, gb) = (grant(&t, "A").clone(), grant(&t, "B").clone());
    assert_eq!((ga.token.as_str(), gb.token.as_str()), ("dead:1", "dead:2"));
    // begin extends A's lease to 2 000 + LEASE; B's ends at 1 000 + LEASE.
    assert!(q.begin(&ga, &a0, 2_000).await.unwrap());

    let t = take(&q, "live", 1_000 + LEASE - 1, 10).await;
    assert_eq!((t.lanes.len(), t.reclaimed), (0, 0));
    let t = take(&q, "live", 1_000 + LEASE, 10).await;
    assert_eq!(t.reclaimed, 1);
    assert_eq!(customers(&t), ["B"]);
    assert_eq!(t.lanes[0].token, "live:3");
    assert_eq!(head_id(&q, "B").await, Some(id("b0")));
    let t = take(&q, "live", 2_000 + LEASE, 10).await;
    assert_eq!(t.reclaimed, 1);
    assert_eq!(customers(&t), ["A"]);
    let g_live = t.lanes[0].clone();
    assert_eq!(g_live.token, "live:4");
    // The messages never left the lane: same head, same order.
    assert_eq!(head(&q, "A").await, Some(a0.clone()));
    assert_eq!(record(&q, "a0").await.status, MessageStatus::Sending);
    // The old grant is stale.
    assert!(!q.defer(&ga, 0, None, Some(&a0)).await.unwrap());
    assert!(!q.begin(&ga, &a0, 12_500).await.unwrap());
    assert_eq!(head(&q, "A").await.unwrap().attempts, 0);

    // Its sender's late result still counts (settling is not fenced) but extends nothing:
    // the live grant's lease still ends at 12 000 + LEASE.
    let t_live = 2_000 + LEASE;
    q.settle(&ga, &a0, &sent("wamid.a0"), t_live + 500)
        .await
        .unwrap();
    assert_eq!(record(&q, "a0").await.status, MessageStatus::Sent);
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    let t = take(&q, "third", t_live + LEASE - 1, 10).await;
    assert_eq!(t.reclaimed, 1, "B's lease ended: {t:?}");
    assert_eq!(customers(&t), ["B"]);
    let t = take(&q, "third", t_live + LEASE, 10).await;
    assert_eq!((t.reclaimed, customers(&t)), (1, vec!["A"]));
    let g3 = t.lanes[0].clone();
    // A valid grant's settle extends its lease.
    let t3 = t_live + LEASE + 100;
    q.settle(&g3, &a1, &sent("wamid.a1"), t3).await.unwrap();
    assert_eq!(take(&q, "fourth", t3 + LEASE - 1, 10).await.reclaimed, 1); // B again
    let t = take(&q, "fourth", t3 + LEASE, 10).await;
    assert_eq!((t.reclaimed, customers(&t)), (1, vec!["A"]));
    assert_eq!(head(&q, "A").await, Some(a2));
}

both!(
    suite_reclaim,
    expired_lease_reclaimed_redis,
    expired_lease_reclaimed_memory
);

// ---------------------------------------------------------------- settle

/// Settles a0 (begun), a1 (not begun), and a read receipt `r0`: three pops. Leaves the
/// outbox with `sent:wamid.a0` on a0's key.
async fn suite_settle_sent(q: OutQueue) {
    let (a0, a1) = (msg("A", "a0", 1_000), msg("A", "a1", 1_000));
    q.push(CH, "A", &[a0.clone(), a1.clone()], 1_000)
        .await
        .unwrap();
    let g = take(&q, "w", 1_000, 10).await.lanes[0].clone();
    assert!(q.begin(&g, &a0, 1_100).await.unwrap());
    let r = record(&q, "a0").await;
    assert_eq!(r.status, MessageStatus::Sending);
    assert_eq!(
        history(&r),
        [
            (MessageStatus::Queued, 1_000),
            (MessageStatus::Sending, 1_100)
        ]
    );
    // begin again: still held, no second `sending`.
    assert!(q.begin(&g, &a0, 1_150).await.unwrap());
    assert_eq!(record(&q, "a0").await.history.len(), 2);

    q.settle(&g, &a0, &sent("wamid.a0"), 1_200).await.unwrap();
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    let r = record(&q, "a0").await;
    assert_eq!(r.status, MessageStatus::Sent);
    assert_eq!(r.wamid.as_deref(), Some("wamid.a0"));
    assert_eq!((r.error_code.as_deref(), r.error.as_deref()), (None, None));
    assert_eq!(
        history(&r),
        [
            (MessageStatus::Queued, 1_000),
            (MessageStatus::Sending, 1_100),
            (MessageStatus::Sent, 1_200)
        ]
    );
    // Settling twice pops once and changes nothing.
    q.settle(&g, &a0, &sent("wamid.a0"), 1_300).await.unwrap();
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    assert_eq!(record(&q, "a0").await, r);
    assert_eq!(q.stats(CH, 1_300).await.unwrap().backlog, 1);
    assert_eq!(
        q.find_by_wamid(CH, "wamid.a0").await.unwrap(),
        Some((id("a0"), "A".to_string()))
    );
    assert_eq!(q.find_by_wamid(CH, "wamid.none").await.unwrap(), None);
    assert_eq!(q.find_by_wamid("other", "wamid.a0").await.unwrap(), None);

    // Not begun: straight from queued to sent.
    q.settle(&g, &a1, &sent("wamid.a1"), 1_400).await.unwrap();
    assert_eq!(head(&q, "A").await, None);
    assert_eq!(
        history(&record(&q, "a1").await),
        [(MessageStatus::Queued, 1_000), (MessageStatus::Sent, 1_400)]
    );
    let s = q.stats(CH, 1_400).await.unwrap();
    assert_eq!((s.backlog, s.oldest_ms), (0, 0));

    // A read receipt is recorded but leaves no wamid index entry.
    let mut r0 = msg("A", "r0", 1_500);
    r0.msg.reply = Reply::MarkRead {
        message_id: "wamid.IN".into(),
        typing: false,
    };
    assert_eq!(
        q.push(CH, "A", std::slice::from_ref(&r0), 1_500)
            .await
            .unwrap(),
        1
    );
    q.settle(&g, &r0, &sent("wamid.IN"), 1_600).await.unwrap();
    let r = record(&q, "r0").await;
    assert_eq!(
        (r.kind.as_str(), r.status),
        ("mark_read", MessageStatus::Sent)
    );
    assert_eq!(q.find_by_wamid(CH, "wamid.IN").await.unwrap(), None);
    assert_eq!(head(&q, "A").await, None);
    assert!(q.release(&g, 1_700).await.unwrap());
}

#[tokio::test]
async fn settle_sent_redis() {
    let (q, keys) = redis_queue().await;
    suite_settle_sent(q).await;
    let url = support::shared_url();
    let mut con = support::connection(&url).await;
    let marker: Option<String> = redis::cmd("GET")
        .arg(keys.sent(CH, &id("a0")))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(marker.as_deref(), Some("sent:wamid.a0"));
    let marker: Option<String> = redis::cmd("GET")
        .arg(keys.sent(CH, &id("r0")))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(marker.as_deref(), Some("sent:wamid.IN"));
    // One audit entry per pop.
    let log = support::xrange(&url, &keys.outbox(CH)).await;
    let logged: Vec<&str> = log.iter().map(|e| e.field("key")).collect();
    assert_eq!(logged, [id("a0"), id("a1"), id("r0")]);
    assert_eq!(log[0].field("message_id"), "wamid.a0");
    assert_eq!(log[0].field("to"), "A");
}

#[tokio::test]
async fn settle_sent_memory() {
    let (q, outbox) = memory_queue();
    suite_settle_sent(q).await;
    assert_eq!(
        outbox.get(CH, &id("a0"), 2_000).await.unwrap().as_deref(),
        Some("sent:wamid.a0")
    );
    assert_eq!(
        outbox.get(CH, &id("r0"), 2_000).await.unwrap().as_deref(),
        Some("sent:wamid.IN")
    );
    let log = outbox.memory_log(CH);
    let logged: Vec<String> = log
        .iter()
        .map(|e| {
            e.iter()
                .find(|(k, _)| k == "key")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(logged, [id("a0"), id("a1"), id("r0")]);
}

async fn suite_settle_failed(q: OutQueue) {
    let (a0, a1) = (msg("A", "a0", 1_000), msg("A", "a1", 1_000));
    q.push(CH, "A", &[a0.clone(), a1.clone()], 1_000)
        .await
        .unwrap();
    let g = take(&q, "w", 1_000, 10).await.lanes[0].clone();
    assert!(q.begin(&g, &a0, 1_100).await.unwrap());
    q.settle(
        &g,
        &a0,
        &failed("window_closed", "24 h window closed"),
        1_200,
    )
    .await
    .unwrap();
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    let r = record(&q, "a0").await;
    assert_eq!(r.status, MessageStatus::Failed);
    assert_eq!(r.error_code.as_deref(), Some("window_closed"));
    assert_eq!(r.error.as_deref(), Some("24 h window closed"));
    assert_eq!(r.wamid, None);
    assert_eq!(
        history(&r),
        [
            (MessageStatus::Queued, 1_000),
            (MessageStatus::Sending, 1_100),
            (MessageStatus::Failed, 1_200)
        ]
    );
    // Twice: nothing changes, not even the error.
    q.settle(&g, &a0, &failed("other", "other"), 1_300)
        .await
        .unwrap();
    assert_eq!(record(&q, "a0").await, r);
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    // Failed is final.
    for status in MessageStatus::ALL {
        assert!(!q
            .advance(CH, &id("a0"), status, 1_400, Some("wamid.x"), None)
            .await
            .unwrap());
    }
    assert_eq!(record(&q, "a0").await, r);

    // A settle naming a message that is not the head pops nothing (its record still moves).
    let other = msg("A", "zz", 1_450);
    q.push(CH, "A", std::slice::from_ref(&other), 1_450)
        .await
        .unwrap();
    q.settle(&g, &other, &failed("undeliverable", "x"), 1_500)
        .await
        .unwrap();
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    assert_eq!(record(&q, "zz").await.status, MessageStatus::Failed);
    // The head is matched by its id, not its copy: a copy read before a takeover bumped its
    // attempts still pops it (a sender's late result is not lost, nor sent again).
    let mut older = a1.clone();
    older.attempts = 5;
    q.settle(&g, &older, &failed("undeliverable", "x"), 1_550)
        .await
        .unwrap();
    assert_eq!(head(&q, "A").await, Some(other.clone()));
    assert_eq!(record(&q, "a1").await.status, MessageStatus::Failed);
    assert!(q.release(&g, 1_600).await.unwrap());
    assert_eq!(customers(&take(&q, "w", 1_600, 10).await), ["A"]);
}

both!(
    suite_settle_failed,
    settle_failed_redis,
    settle_failed_memory
);

// ---------------------------------------------------------------- statuses

async fn suite_advance(q: OutQueue) {
    let names = ["a0", "a1", "a2", "a3", "a4"];
    let msgs: Vec<QueuedMessage> = names.iter().map(|n| msg("A", n, 1_000)).collect();
    q.push(CH, "A", &msgs, 1_000).await.unwrap();
    let g = take(&q, "w", 1_000, 10).await.lanes[0].clone();

    // Forward only: delivered, then a late `sent` is ignored.
    q.settle(&g, &msgs[0], &sent("wamid.0"), 1_100)
        .await
        .unwrap();
    let adv = |name: &'static str, status, at| {
        let q = q.clone();
        async move {
            q.advance(CH, &id(name), status, at, None, None)
                .await
                .unwrap()
        }
    };
    assert!(adv("a0", MessageStatus::Delivered, 2_000).await);
    assert!(!adv("a0", MessageStatus::Delivered, 2_050).await);
    assert!(!adv("a0", MessageStatus::Sent, 2_100).await);
    assert!(!adv("a0", MessageStatus::Queued, 2_100).await);
    assert_eq!(record(&q, "a0").await.status, MessageStatus::Delivered);
    // Read, then a failure is ignored.
    assert!(adv("a0", MessageStatus::Read, 2_200).await);
    assert!(!q
        .advance(
            CH,
            &id("a0"),
            MessageStatus::Failed,
            2_300,
            None,
            Some(("x", "y"))
        )
        .await
        .unwrap());
    let r = record(&q, "a0").await;
    assert_eq!(r.status, MessageStatus::Read);
    assert_eq!((r.error_code.as_deref(), r.error.as_deref()), (None, None));
    assert_eq!(
        history(&r),
        [
            (MessageStatus::Queued, 1_000),
            (MessageStatus::Sent, 1_100),
            (MessageStatus::Delivered, 2_000),
            (MessageStatus::Read, 2_200)
        ]
    );

    // Sent, then failed (Meta may report a failure after `sent`).
    q.settle(&g, &msgs[1], &sent("wamid.1"), 1_200)
        .await
        .unwrap();
    assert!(q
        .advance(
            CH,
            &id("a1"),
            MessageStatus::Failed,
            2_000,
            Some("wamid.other"),
            Some(("undeliverable", "131026 message undeliverable"))
        )
        .await
        .unwrap());
    let r = record(&q, "a1").await;
    assert_eq!(r.status, MessageStatus::Failed);
    assert_eq!(r.error_code.as_deref(), Some("undeliverable"));
    assert_eq!(r.error.as_deref(), Some("131026 message undeliverable"));
    // The wamid already known is kept.
    assert_eq!(r.wamid.as_deref(), Some("wamid.1"));
    assert!(!adv("a1", MessageStatus::Delivered, 2_100).await);

    // Unknown ids, unknown channels.
    assert!(!adv("nope", MessageStatus::Delivered, 2_000).await);
    assert!(!q
        .advance("other", &id("a2"), MessageStatus::Sent, 2_000, None, None)
        .await
        .unwrap());

    // A status that arrives while the head is being sent is kept; settle does not undo it.
    let a2 = head(&q, "A").await.unwrap();
    assert_eq!(a2.msg.outbox_key, id("a2"));
    assert!(q.begin(&g, &a2, 3_000).await.unwrap());
    assert!(q
        .advance(
            CH,
            &id("a2"),
            MessageStatus::Delivered,
            3_050,
            Some("wamid.2"),
            None
        )
        .await
        .unwrap());
    q.settle(&g, &a2, &sent("wamid.2"), 3_100).await.unwrap();
    let r = record(&q, "a2").await;
    assert_eq!(r.status, MessageStatus::Delivered);
    assert_eq!(r.wamid.as_deref(), Some("wamid.2"));
    assert_eq!(
        history(&r),
        [
            (MessageStatus::Queued, 1_000),
            (MessageStatus::Sending, 3_000),
            (MessageStatus::Delivered, 3_050)
        ]
    );
    assert_eq!(
        q.find_by_wamid(CH, "wamid.2").await.unwrap(),
        Some((id("a2"), "A".to_string()))
    );
    // Read while sending, then the send "fails": read stays, no error recorded.
    let a3 = head(&q, "A").await.unwrap();
    assert!(q.begin(&g, &a3, 4_000).await.unwrap());
    assert!(q
        .advance(
            CH,
            &id("a3"),
            MessageStatus::Read,
            4_050,
            Some("wamid.3"),
            None
        )
        .await
        .unwrap());
    q.settle(&g, &a3, &failed("timeout", "no answer"), 4_100)
        .await
        .unwrap();
    let r = record(&q, "a3").await;
    assert_eq!(
        (r.status, r.wamid.as_deref()),
        (MessageStatus::Read, Some("wamid.3"))
    );
    assert_eq!((r.error_code.as_deref(), r.error.as_deref()), (None, None));
    assert_eq!(head_id(&q, "A").await, Some(id("a4")));
    // A status for a message still queued (never begun) moves it too, with its wamid.
    assert!(q
        .advance(
            CH,
            &id("a4"),
            MessageStatus::Sent,
            5_000,
            Some("wamid.4"),
            None
        )
        .await
        .unwrap());
    let r = record(&q, "a4").await;
    assert_eq!(
        (r.status, r.wamid.as_deref()),
        (MessageStatus::Sent, Some("wamid.4"))
    );
    // Its head is still queued in the lane: settling it pops it, the record stays `sent`.
    let a4 = head(&q, "A").await.unwrap();
    q.settle(&g, &a4, &sent("wamid.4"), 5_100).await.unwrap();
    assert_eq!(head(&q, "A").await, None);
    assert_eq!(record(&q, "a4").await.history.len(), 2);
}

both!(
    suite_advance,
    advance_forward_only_redis,
    advance_forward_only_memory
);

// ---------------------------------------------------------------- list, stats

async fn suite_list(q: OutQueue) {
    assert!(q.list(CH, None, 10, 1_000).await.unwrap().is_empty());
    q.push(CH, "A", &[msg("A", "x0", 1_000)], 1_000)
        .await
        .unwrap();
    q.push(
        CH,
        "B",
        &[msg("B", "x1", 2_000), msg("B", "x2", 2_000)],
        2_000,
    )
    .await
    .unwrap();
    q.push(CH, "C", &[msg("C", "x3", 3_000)], 3_000)
        .await
        .unwrap();
    let t = take(&q, "w", 3_000, 10).await;
    q.settle(
        grant(&t, "B"),
        &msg("B", "x1", 2_000),
        &sent("wamid.x1"),
        3_100,
    )
    .await
    .unwrap();

    // Newest first; the same created time by id, descending.
    let all = q.list(CH, None, 10, 3_100).await.unwrap();
    assert_eq!(ids(&all), [id("x3"), id("x2"), id("x1"), id("x0")]);
    for r in &all {
        assert_eq!(Some(r), q.record(CH, &r.id).await.unwrap().as_ref());
    }
    assert_eq!(
        ids(&q.list(CH, None, 2, 3_100).await.unwrap()),
        [id("x3"), id("x2")]
    );
    assert!(q.list(CH, None, 0, 3_100).await.unwrap().is_empty());
    assert_eq!(
        ids(&q
            .list(CH, Some(MessageStatus::Sent), 10, 3_100)
            .await
            .unwrap()),
        [id("x1")]
    );
    assert_eq!(
        ids(&q
            .list(CH, Some(MessageStatus::Queued), 10, 3_100)
            .await
            .unwrap()),
        [id("x3"), id("x2"), id("x0")]
    );
    assert_eq!(
        ids(&q
            .list(CH, Some(MessageStatus::Queued), 1, 3_100)
            .await
            .unwrap()),
        [id("x3")]
    );
    assert!(q
        .list(CH, Some(MessageStatus::Read), 10, 3_100)
        .await
        .unwrap()
        .is_empty());
    assert!(q.list("other", None, 10, 3_100).await.unwrap().is_empty());
    // Entries older than the record TTL drop out.
    let later = 1_000 + TTL + 1;
    assert_eq!(
        ids(&q.list(CH, None, 10, later).await.unwrap()),
        [id("x3"), id("x2"), id("x1")]
    );
}

both!(
    suite_list,
    list_newest_first_redis,
    list_newest_first_memory
);

async fn suite_stats(q: OutQueue) {
    assert_eq!(q.stats(CH, 1_000).await.unwrap(), OutStats::default());
    q.push(
        CH,
        "A",
        &[msg("A", "a0", 1_000), msg("A", "a1", 1_000)],
        1_000,
    )
    .await
    .unwrap();
    q.push(CH, "B", &[msg("B", "b0", 1_500)], 1_500)
        .await
        .unwrap();
    q.push(CH, "C", &[msg("C", "c0", 2_000)], 2_000)
        .await
        .unwrap();
    q.push(CH, "D", &[msg("D", "d0", 2_000)], 2_000)
        .await
        .unwrap();
    q.push(CH, "E", &[msg("E", "e0", 2_000)], 2_000)
        .await
        .unwrap();
    assert_eq!(
        q.stats(CH, 3_000).await.unwrap(),
        OutStats {
            backlog: 6,
            lanes_ready: 5,
            lanes_busy: 0,
            waiting: BTreeMap::new(),
            oldest_ms: 2_000,
        }
    );
    let t = take(&q, "w", 3_000, 4).await;
    assert_eq!(customers(&t), ["A", "B", "C", "D"]);
    assert!(q
        .defer(grant(&t, "A"), 5_000, Some(WaitReason::PairGap), None)
        .await
        .unwrap());
    assert!(q
        .defer(grant(&t, "B"), 4_000, Some(WaitReason::Rate), None)
        .await
        .unwrap());
    assert!(q
        .defer(grant(&t, "C"), 9_000, Some(WaitReason::InFlight), None)
        .await
        .unwrap());
    assert_eq!(
        q.stats(CH, 3_000).await.unwrap(),
        OutStats {
            backlog: 6,
            lanes_ready: 1,
            lanes_busy: 1,
            waiting: waiting(&[("in_flight", 1), ("pair_gap", 1), ("rate", 1)]),
            oldest_ms: 2_000,
        }
    );
    // D's message settles and its lane goes; D backs off after a retryable error.
    let gd = grant(&t, "D");
    q.settle(gd, &msg("D", "d0", 2_000), &sent("wamid.d0"), 3_100)
        .await
        .unwrap();
    assert!(q.release(gd, 3_100).await.unwrap());
    let ge = take(&q, "w", 3_100, 10).await;
    assert_eq!(customers(&ge), ["E"]);
    assert!(q
        .defer(&ge.lanes[0], 3_500, Some(WaitReason::Backoff), None)
        .await
        .unwrap());
    let s = q.stats(CH, 3_200).await.unwrap();
    assert_eq!((s.backlog, s.lanes_ready, s.lanes_busy), (5, 0, 0));
    assert_eq!(
        s.waiting,
        waiting(&[
            ("backoff", 1),
            ("in_flight", 1),
            ("pair_gap", 1),
            ("rate", 1)
        ])
    );
    // The oldest age follows the oldest unsettled message.
    let ga = take(&q, "w", 5_000, 10).await;
    assert_eq!(customers(&ga), ["E", "B", "A"]);
    let ga = grant(&ga, "A");
    q.settle(ga, &msg("A", "a0", 1_000), &sent("wamid.a0"), 5_000)
        .await
        .unwrap();
    assert_eq!(q.stats(CH, 5_000).await.unwrap().oldest_ms, 4_000);
    q.settle(ga, &msg("A", "a1", 1_000), &sent("wamid.a1"), 5_000)
        .await
        .unwrap();
    let s = q.stats(CH, 5_000).await.unwrap();
    assert_eq!((s.backlog, s.oldest_ms), (3, 3_500));
    assert_eq!((s.lanes_ready, s.lanes_busy), (0, 3));
    assert_eq!(s.waiting, waiting(&[("in_flight", 1)]));
}

both!(suite_stats, stats_redis, stats_memory);

// ---------------------------------------------------------------- both backends, same answers

/// Random calls (seeded) on both backends side by side: every answer, head, record, list and
/// stats must be the same. Grants, stale grants, stale head copies, reclaims and statuses in
/// any order are all exercised.
#[tokio::test]
async fn memory_twin_answers_like_redis() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const CUSTOMERS: [&str; 4] = ["A", "B", "C", "D"];
    const OWNERS: [&str; 2] = ["s1", "s2"];
    let wide = OutQueueOptions {
        // Longer than the synthetic clock runs: Redis expires records by its own clock.
        record_ttl_ms: 30 * 24 * 3600 * 1000,
        lane_lease_ms: LEASE as u64,
    };
    for seed in 0..4u64 {
        let con = redis::Client::open(support::shared_url())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        let r = OutQueue::Redis(RedisOutQueue::new(con, support::keys(), wide));
        let outbox = Outbox::memory(support::keys(), OutboxOptions::default());
        let m = OutQueue::Memory(MemoryOutQueue::new(outbox, wide));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = 1_000i64;
        let mut grants: Vec<LaneGrant> = Vec::new();
        // Advances refused / made, lanes reclaimed, defers refused (stale) / made.
        let mut seen = [0u64; 5];
        let message = |i: usize, at: i64| {
            let customer = CUSTOMERS[i % CUSTOMERS.len()];
            let mut q = msg(customer, &format!("m{i}"), at);
            if i % 5 == 4 {
                q.msg.reply = Reply::MarkRead {
                    message_id: format!("wamid.in{i}"),
                    typing: false,
                };
            }
            q
        };
        for step in 0..1_500 {
            now += rng.random_range(0..2_500);
            let at = format!("seed {seed} step {step}");
            match rng.random_range(0..10) {
                0 | 1 => {
                    let first = rng.random_range(0..40);
                    let c = CUSTOMERS[first % CUSTOMERS.len()];
                    let batch: Vec<QueuedMessage> = (0..rng.random_range(1..4))
                        .map(|k| message(first + k * CUSTOMERS.len(), now))
                        .collect();
                    let a = r.push(CH, c, &batch, now).await.unwrap();
                    let b = m.push(CH, c, &batch, now).await.unwrap();
                    assert_eq!(a, b, "push, {at}");
                }
                2 | 3 => {
                    let owner = OWNERS[rng.random_range(0..OWNERS.len())];
                    let max = rng.random_range(0..4);
                    let a = r.take(CH, owner, now, max).await.unwrap();
                    let b = m.take(CH, owner, now, max).await.unwrap();
                    assert_eq!(a, b, "take, {at}");
                    seen[2] += u64::from(a.reclaimed);
                    grants.extend(a.lanes);
                }
                4..=6 if !grants.is_empty() => {
                    // Mostly recent grants; older ones are often stale.
                    let n = grants.len();
                    let g = grants[n - 1 - rng.random_range(0..n.min(6))].clone();
                    let h = r.head(CH, &g.customer).await.unwrap();
                    assert_eq!(h, m.head(CH, &g.customer).await.unwrap(), "head, {at}");
                    let Some(mut h) = h else {
                        let a = r.release(&g, now).await.unwrap();
                        assert_eq!(a, m.release(&g, now).await.unwrap(), "release, {at}");
                        continue;
                    };
                    if rng.random_bool(0.1) {
                        h.attempts += 1; // no longer the head
                    }
                    match rng.random_range(0..4) {
                        0 => {
                            let a = r.begin(&g, &h, now).await.unwrap();
                            assert_eq!(a, m.begin(&g, &h, now).await.unwrap(), "begin, {at}");
                        }
                        1 => {
                            let outcome = if rng.random_bool(0.7) {
                                sent(&format!("wamid.{}", h.msg.outbox_key))
                            } else {
                                failed("undeliverable", "131026")
                            };
                            r.settle(&g, &h, &outcome, now).await.unwrap();
                            m.settle(&g, &h, &outcome, now).await.unwrap();
                        }
                        _ => {
                            let until = now + rng.random_range(0..3_000);
                            let reason = match rng.random_range(0..5) {
                                0 => None,
                                k => Some(WaitReason::ALL[k - 1]),
                            };
                            let bump = rng.random_bool(0.5).then_some(&h);
                            let a = r.defer(&g, until, reason, bump).await.unwrap();
                            let b = m.defer(&g, until, reason, bump).await.unwrap();
                            assert_eq!(a, b, "defer, {at}");
                            seen[3 + usize::from(a)] += 1;
                        }
                    }
                }
                7 => {
                    let i = rng.random_range(0..44);
                    let status = MessageStatus::ALL[rng.random_range(0..6)];
                    // The wamid its settle gives, or another one.
                    let wamid = match rng.random_range(0..3) {
                        0 => format!("wamid.ev.m{i}:0"),
                        k => format!("wamid.other{k}"),
                    };
                    let wamid = rng.random_bool(0.7).then_some(wamid.as_str());
                    let error = rng.random_bool(0.5).then_some(("code", "text"));
                    let id = id(&format!("m{i}"));
                    let a = r.advance(CH, &id, status, now, wamid, error).await.unwrap();
                    let b = m.advance(CH, &id, status, now, wamid, error).await.unwrap();
                    assert_eq!(a, b, "advance {id} {status:?}, {at}");
                    seen[usize::from(a)] += 1;
                }
                _ => {
                    let status = rng
                        .random_bool(0.5)
                        .then(|| MessageStatus::ALL[rng.random_range(0..6)]);
                    let limit = rng.random_range(0..50);
                    let a = r.list(CH, status, limit, now).await.unwrap();
                    assert_eq!(
                        a,
                        m.list(CH, status, limit, now).await.unwrap(),
                        "list, {at}"
                    );
                }
            }
            let a = r.stats(CH, now).await.unwrap();
            assert_eq!(a, m.stats(CH, now).await.unwrap(), "stats, {at}");
        }
        assert!(seen.iter().all(|n| *n > 0), "seed {seed}: {seen:?}");
        // Everything, at the end.
        for c in CUSTOMERS {
            assert_eq!(r.head(CH, c).await.unwrap(), m.head(CH, c).await.unwrap());
        }
        for i in 0..44 {
            let id = id(&format!("m{i}"));
            assert_eq!(
                r.record(CH, &id).await.unwrap(),
                m.record(CH, &id).await.unwrap()
            );
            let wamid = format!("wamid.{id}");
            assert_eq!(
                r.find_by_wamid(CH, &wamid).await.unwrap(),
                m.find_by_wamid(CH, &wamid).await.unwrap(),
                "{wamid}"
            );
        }
        let all = r.list(CH, None, 100, now).await.unwrap();
        assert!(all.len() > 20, "seed {seed}: only {} records", all.len());
        assert_eq!(all, m.list(CH, None, 100, now).await.unwrap());
    }
}

// ---------------------------------------------------------------- broadcasts

use coexist::outbound::queue::{broadcast_of, BroadcastRecord, NewBroadcast};
use serde_json::json;

/// `{"to": …}` as a broadcast stores one recipient.
fn recipient(to: &str) -> String {
    json!({"to": to, "params": null}).to_string()
}

/// A broadcast of a template to `to` (each once), `skipped` listed twice at creation.
fn new_broadcast(bc: &str, to: &[&str], skipped: u64) -> NewBroadcast {
    NewBroadcast {
        id: bc.to_string(),
        name: format!("campaign {bc}"),
        message: json!({"type": "template", "name": "promo", "language": "en_US"}).to_string(),
        recipients: to.iter().map(|t| recipient(t)).collect(),
        skipped,
    }
}

/// Recipient `i` of broadcast `bc`: message id `<bc>.<i>`, queued at `at`.
fn bc_msg(bc: &str, i: u64, to: &str, at: i64) -> QueuedMessage {
    let reply = Reply::Template {
        name: "promo".into(),
        language: "en_US".into(),
        components: vec![],
    };
    QueuedMessage::new(OutgoingMessage::new(CH, to, reply, format!("{bc}.{i}")), at)
}

async fn bc(q: &OutQueue, id: &str) -> BroadcastRecord {
    q.broadcast(CH, id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no broadcast {id}"))
}

/// The stored per-status counts, zeros left out.
fn nonzero(b: &BroadcastRecord) -> BTreeMap<String, i64> {
    b.counts
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect()
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The API's `counts`: queued, sent, delivered, read, failed, skipped.
fn view(
    queued: u64,
    sent: u64,
    delivered: u64,
    read: u64,
    failed: u64,
    skipped: u64,
) -> serde_json::Value {
    json!({"queued": queued, "sent": sent, "delivered": delivered, "read": read,
           "failed": failed, "skipped": skipped})
}

async fn bc_record(q: &OutQueue, id: &str) -> OutRecord {
    q.record(CH, id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record of {id}"))
}

/// Create (a duplicate id refused and changing nothing), the running list oldest first,
/// recipients paged, retire, unknown ids, and a broadcast whose every recipient was a
/// duplicate (done at once).
async fn suite_broadcast_create(q: OutQueue) {
    assert_eq!(broadcast_of("bc-1.0"), Some("bc-1"));
    assert_eq!(broadcast_of("bc-1.2.17"), Some("bc-1.2"));
    assert_eq!(broadcast_of("ev.a0:0"), None);
    assert_eq!(broadcast_of("api-00ff"), None);

    assert_eq!(
        q.running_broadcasts(CH).await.unwrap(),
        Vec::<String>::new()
    );
    assert!(q
        .create_broadcast(CH, &new_broadcast("bc-1", &["A", "B", "C"], 1), 1_000)
        .await
        .unwrap());
    let b = bc(&q, "bc-1").await;
    assert_eq!(
        (
            b.id.as_str(),
            b.name.as_str(),
            b.total,
            b.size,
            b.fed,
            b.created_at
        ),
        ("bc-1", "campaign bc-1", 4, 3, 0, 1_000)
    );
    assert_eq!(b.stored_state, "running");
    assert_eq!(b.state(), "running");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&b.message).unwrap(),
        json!({"type": "template", "name": "promo", "language": "en_US"})
    );
    assert_eq!(nonzero(&b), counts(&[("skipped", 1)]));
    assert_eq!(b.view_counts(), view(3, 0, 0, 0, 0, 1));
    assert_eq!((b.in_flight(), b.finished()), (0, 1));

    // The same id again: refused, and neither the record nor the recipients change.
    assert!(!q
        .create_broadcast(CH, &new_broadcast("bc-1", &["X", "Y"], 0), 1_500)
        .await
        .unwrap());
    assert_eq!(bc(&q, "bc-1").await, b);
    assert_eq!(
        q.broadcast_recipients(CH, "bc-1", 0, 10).await.unwrap(),
        [recipient("A"), recipient("B"), recipient("C")]
    );

    assert!(q
        .create_broadcast(CH, &new_broadcast("bc-2", &["D"], 0), 2_000)
        .await
        .unwrap());
    assert_eq!(q.running_broadcasts(CH).await.unwrap(), ["bc-1", "bc-2"]);
    assert_eq!(
        q.running_broadcasts("other").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(q.broadcast("other", "bc-1").await.unwrap(), None);
    assert_eq!(q.broadcast(CH, "bc-none").await.unwrap(), None);

    // Paging through the recipients.
    assert_eq!(
        q.broadcast_recipients(CH, "bc-1", 0, 2).await.unwrap(),
        [recipient("A"), recipient("B")]
    );
    assert_eq!(
        q.broadcast_recipients(CH, "bc-1", 2, 2).await.unwrap(),
        [recipient("C")]
    );
    assert_eq!(
        q.broadcast_recipients(CH, "bc-1", 3, 5).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        q.broadcast_recipients(CH, "bc-1", 1, 0).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        q.broadcast_recipients(CH, "bc-none", 0, 5).await.unwrap(),
        Vec::<String>::new()
    );

    // Retired: off the running list, still readable.
    q.retire_broadcast(CH, "bc-2").await.unwrap();
    assert_eq!(q.running_broadcasts(CH).await.unwrap(), ["bc-1"]);
    assert_eq!(bc(&q, "bc-2").await.state(), "running");
    q.retire_broadcast(CH, "bc-none").await.unwrap();

    // Every recipient listed twice: nothing to send, done from the start.
    assert!(q
        .create_broadcast(CH, &new_broadcast("bc-3", &[], 2), 3_000)
        .await
        .unwrap());
    let b3 = bc(&q, "bc-3").await;
    assert_eq!((b3.total, b3.size, b3.fed), (2, 0, 0));
    assert_eq!(b3.state(), "done");
    assert_eq!(b3.view_counts(), view(0, 0, 0, 0, 0, 2));
    assert_eq!(q.running_broadcasts(CH).await.unwrap(), ["bc-1", "bc-3"]);
}

both!(
    suite_broadcast_create,
    broadcast_create_redis,
    broadcast_create_memory
);

/// Feeding moves recipients into their lanes under a cursor (a stale cursor feeds nothing);
/// the counts follow every message through begin, settle and status webhooks; done when all
/// are fed and settled.
async fn suite_broadcast_feed_and_counts(q: OutQueue) {
    q.create_broadcast(CH, &new_broadcast("bc-1", &["A", "B", "C", "D"], 1), 1_000)
        .await
        .unwrap();
    let items = |from: u64, to: &[&str], at: i64| -> Vec<(String, QueuedMessage)> {
        to.iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), bc_msg("bc-1", from + i as u64, c, at)))
            .collect()
    };
    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 0, &items(0, &["A", "B"], 1_100), 1_100)
            .await
            .unwrap(),
        Some(2)
    );
    let b = bc(&q, "bc-1").await;
    assert_eq!(b.fed, 2);
    assert_eq!(nonzero(&b), counts(&[("queued", 2), ("skipped", 1)]));
    assert_eq!(b.view_counts(), view(4, 0, 0, 0, 0, 1));
    assert_eq!((b.in_flight(), b.state()), (2, "running"));
    assert_eq!(head_id(&q, "A").await.as_deref(), Some("bc-1.0"));
    assert_eq!(head_id(&q, "B").await.as_deref(), Some("bc-1.1"));
    let r = bc_record(&q, "bc-1.1").await;
    assert_eq!(
        (r.status, r.to.as_str(), r.kind.as_str()),
        (MessageStatus::Queued, "B", "template")
    );

    // A feeder that read the cursor before: nothing fed, nothing counted.
    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 0, &items(0, &["A", "B"], 1_150), 1_150)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 1, &items(1, &["B", "C"], 1_150), 1_150)
            .await
            .unwrap(),
        None
    );
    assert_eq!(bc(&q, "bc-1").await, b);
    assert_eq!(q.lane(CH, "A").await.unwrap().len(), 1);
    assert_eq!(head(&q, "C").await, None);
    assert_eq!(q.stats(CH, 1_150).await.unwrap().backlog, 2);

    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 2, &items(2, &["C", "D"], 1_200), 1_200)
            .await
            .unwrap(),
        Some(2)
    );
    let b = bc(&q, "bc-1").await;
    assert_eq!((b.fed, b.in_flight(), b.state()), (4, 4, "running"));
    // Fed to the end: a stale or a current cursor feeds nothing more.
    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 2, &items(2, &["C"], 1_250), 1_250)
            .await
            .unwrap(),
        None
    );

    let t = take(&q, "w", 1_300, 10).await;
    assert_eq!(customers(&t), ["A", "B", "C", "D"]);
    let (ga, gb, gc, gd) = (
        grant(&t, "A"),
        grant(&t, "B"),
        grant(&t, "C"),
        grant(&t, "D"),
    );
    let m = |i: u64, c: &str| bc_msg("bc-1", i, c, 1_100);
    // begin: queued → sending.
    assert!(q.begin(ga, &m(0, "A"), 1_400).await.unwrap());
    assert_eq!(
        nonzero(&bc(&q, "bc-1").await),
        counts(&[("queued", 3), ("sending", 1), ("skipped", 1)])
    );
    // A begin on a stale grant moves nothing.
    let stale = LaneGrant {
        token: "w:999".into(),
        ..gb.clone()
    };
    assert!(!q.begin(&stale, &m(1, "B"), 1_400).await.unwrap());
    assert_eq!(bc_record(&q, "bc-1.1").await.status, MessageStatus::Queued);

    q.settle(ga, &m(0, "A"), &sent("wamid.A"), 1_500)
        .await
        .unwrap();
    q.settle(gb, &m(1, "B"), &failed("undeliverable", "131026"), 1_500)
        .await
        .unwrap();
    q.settle(
        gc,
        &bc_msg("bc-1", 2, "C", 1_200),
        &Settle::Skipped {
            reason: "opted_out".into(),
        },
        1_500,
    )
    .await
    .unwrap();
    let b = bc(&q, "bc-1").await;
    assert_eq!(
        nonzero(&b),
        counts(&[("queued", 1), ("sent", 1), ("failed", 1), ("skipped", 2)])
    );
    assert_eq!(b.view_counts(), view(1, 1, 0, 0, 1, 2));
    assert_eq!(b.state(), "running");
    // Settling again counts nothing twice.
    q.settle(ga, &m(0, "A"), &sent("wamid.A"), 1_550)
        .await
        .unwrap();
    q.settle(
        gc,
        &bc_msg("bc-1", 2, "C", 1_200),
        &Settle::Skipped {
            reason: "handover".into(),
        },
        1_550,
    )
    .await
    .unwrap();
    assert_eq!(bc(&q, "bc-1").await, b);
    let rc = bc_record(&q, "bc-1.2").await;
    assert_eq!(rc.status, MessageStatus::Skipped);
    assert_eq!(rc.error_code.as_deref(), Some("opted_out"));
    assert_eq!(rc.wamid, None);
    assert_eq!(
        history(&rc),
        [
            (MessageStatus::Queued, 1_200),
            (MessageStatus::Skipped, 1_500)
        ]
    );

    // The last one: done once it settles (not before).
    assert!(q
        .begin(gd, &bc_msg("bc-1", 3, "D", 1_200), 1_600)
        .await
        .unwrap());
    assert_eq!(bc(&q, "bc-1").await.state(), "running");
    q.settle(gd, &bc_msg("bc-1", 3, "D", 1_200), &sent("wamid.D"), 1_700)
        .await
        .unwrap();
    let b = bc(&q, "bc-1").await;
    assert_eq!(b.state(), "done");
    assert_eq!(b.view_counts(), view(0, 2, 0, 0, 1, 2));
    let total: u64 = ["queued", "sent", "delivered", "read", "failed", "skipped"]
        .iter()
        .map(|k| b.view_counts()[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, b.total);

    // Status webhooks: sent → delivered → read, forward only, counted once each.
    let adv = |id: &'static str, status: MessageStatus, at: i64| {
        let q = q.clone();
        async move { q.advance(CH, id, status, at, None, None).await.unwrap() }
    };
    assert!(adv("bc-1.0", MessageStatus::Delivered, 2_000).await);
    assert_eq!(bc(&q, "bc-1").await.view_counts(), view(0, 1, 1, 0, 1, 2));
    assert!(adv("bc-1.3", MessageStatus::Read, 2_100).await);
    assert!(adv("bc-1.0", MessageStatus::Read, 2_200).await);
    assert!(!adv("bc-1.0", MessageStatus::Delivered, 2_300).await);
    assert!(!adv("bc-1.0", MessageStatus::Failed, 2_300).await);
    // Failed and skipped are final.
    assert!(!adv("bc-1.1", MessageStatus::Delivered, 2_300).await);
    assert!(!adv("bc-1.2", MessageStatus::Sent, 2_300).await);
    assert!(!adv("bc-1.2", MessageStatus::Failed, 2_300).await);
    let b = bc(&q, "bc-1").await;
    assert_eq!(b.view_counts(), view(0, 0, 0, 2, 1, 2));
    assert_eq!(
        nonzero(&b),
        counts(&[("read", 2), ("failed", 1), ("skipped", 2)])
    );
    assert_eq!(b.state(), "done");
    assert_eq!(
        history(&bc_record(&q, "bc-1.0").await),
        [
            (MessageStatus::Queued, 1_100),
            (MessageStatus::Sending, 1_400),
            (MessageStatus::Sent, 1_500),
            (MessageStatus::Delivered, 2_000),
            (MessageStatus::Read, 2_200)
        ]
    );

    // Empty lanes are given back (dropped).
    for g in [ga, gb, gc, gd] {
        assert!(q.release(g, 2_350).await.unwrap());
    }
    assert_eq!(q.stats(CH, 2_350).await.unwrap(), OutStats::default());

    // A message that is no broadcast's moves no broadcast's counts.
    q.push(CH, "A", &[msg("A", "a0", 2_400)], 2_400)
        .await
        .unwrap();
    let g = take(&q, "w", 2_400, 10).await;
    q.settle(
        grant(&g, "A"),
        &msg("A", "a0", 2_400),
        &sent("wamid.a0"),
        2_500,
    )
    .await
    .unwrap();
    assert!(q
        .advance(CH, &id("a0"), MessageStatus::Delivered, 2_600, None, None)
        .await
        .unwrap());
    assert_eq!(bc(&q, "bc-1").await, b);
}

both!(
    suite_broadcast_feed_and_counts,
    broadcast_feed_and_counts_redis,
    broadcast_feed_and_counts_memory
);

/// Cancel: off the running list, never fed again, `cancelled` whatever the counts; what was
/// queued settles as skipped. Unknown ids: `None`.
async fn suite_broadcast_cancel(q: OutQueue) {
    q.create_broadcast(CH, &new_broadcast("bc-1", &["A", "B", "C"], 0), 1_000)
        .await
        .unwrap();
    q.create_broadcast(CH, &new_broadcast("bc-2", &["A"], 0), 1_000)
        .await
        .unwrap();
    let fed = vec![
        ("A".to_string(), bc_msg("bc-1", 0, "A", 1_100)),
        ("B".to_string(), bc_msg("bc-1", 1, "B", 1_100)),
    ];
    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 0, &fed, 1_100).await.unwrap(),
        Some(2)
    );
    let t = take(&q, "w", 1_200, 10).await;
    assert!(q.begin(grant(&t, "A"), &fed[0].1, 1_200).await.unwrap());
    q.settle(grant(&t, "A"), &fed[0].1, &sent("wamid.A"), 1_300)
        .await
        .unwrap();

    let c = q
        .cancel_broadcast(CH, "bc-1")
        .await
        .unwrap()
        .expect("known");
    assert_eq!(c.stored_state, "cancelled");
    assert_eq!(c.state(), "cancelled");
    // C was never fed: skipped at once, so `queued` is only B, in its lane.
    assert_eq!(c.view_counts(), view(1, 1, 0, 0, 0, 1));
    assert_eq!(bc(&q, "bc-1").await, c);
    assert_eq!(q.running_broadcasts(CH).await.unwrap(), ["bc-2"]);
    // Never fed again, with the current cursor or another.
    let more = vec![("C".to_string(), bc_msg("bc-1", 2, "C", 1_400))];
    assert_eq!(
        q.feed_broadcast(CH, "bc-1", 2, &more, 1_400).await.unwrap(),
        None
    );
    assert_eq!(head(&q, "C").await, None);
    assert_eq!(bc(&q, "bc-1").await.fed, 3);
    // What was queued is skipped when its turn comes; still `cancelled`.
    q.settle(
        grant(&t, "B"),
        &fed[1].1,
        &Settle::Skipped {
            reason: "cancelled".into(),
        },
        1_500,
    )
    .await
    .unwrap();
    let b = bc(&q, "bc-1").await;
    assert_eq!(b.view_counts(), view(0, 1, 0, 0, 0, 2));
    assert_eq!((b.in_flight(), b.state()), (0, "cancelled"));
    assert_eq!(
        bc_record(&q, "bc-1.1").await.error_code.as_deref(),
        Some("cancelled")
    );
    // Cancelling twice is harmless; an unknown id is None (and creates nothing).
    assert_eq!(
        q.cancel_broadcast(CH, "bc-1")
            .await
            .unwrap()
            .map(|b| b.state()),
        Some("cancelled")
    );
    assert_eq!(q.cancel_broadcast(CH, "bc-none").await.unwrap(), None);
    assert_eq!(q.broadcast(CH, "bc-none").await.unwrap(), None);
    assert_eq!(q.running_broadcasts(CH).await.unwrap(), ["bc-2"]);
    // The other broadcast is untouched.
    let b2 = bc(&q, "bc-2").await;
    assert_eq!((b2.state(), b2.fed), ("running", 0));
}

both!(
    suite_broadcast_cancel,
    broadcast_cancel_redis,
    broadcast_cancel_memory
);

/// `Settle::Skipped` on any message: the head pops, the record ends `skipped` with the reason
/// as its code, nothing moves it afterwards, and the lane goes on with the next message.
async fn suite_settle_skipped(q: OutQueue) {
    let (a0, a1) = (msg("A", "a0", 1_000), msg("A", "a1", 1_000));
    q.push(CH, "A", &[a0.clone(), a1.clone()], 1_000)
        .await
        .unwrap();
    let g = take(&q, "w", 1_000, 10).await.lanes[0].clone();
    q.settle(
        &g,
        &a0,
        &Settle::Skipped {
            reason: "handover".into(),
        },
        1_100,
    )
    .await
    .unwrap();
    assert_eq!(head(&q, "A").await, Some(a1.clone()));
    let r = record(&q, "a0").await;
    assert_eq!(r.status, MessageStatus::Skipped);
    assert_eq!(r.error_code.as_deref(), Some("handover"));
    assert_eq!(r.wamid, None);
    assert_eq!(
        history(&r),
        [
            (MessageStatus::Queued, 1_000),
            (MessageStatus::Skipped, 1_100)
        ]
    );
    for status in MessageStatus::ALL {
        assert!(!q
            .advance(CH, &id("a0"), status, 1_200, Some("wamid.x"), None)
            .await
            .unwrap());
    }
    assert_eq!(record(&q, "a0").await, r);
    assert_eq!(q.stats(CH, 1_200).await.unwrap().backlog, 1);
    assert_eq!(
        q.list(CH, Some(MessageStatus::Skipped), 10, 1_200)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        [id("a0")]
    );
    // A skip never leaves an idempotency marker that says "sent".
    assert_eq!(q.find_by_wamid(CH, "wamid.x").await.unwrap(), None);
    // Sent after a skip is not possible either.
    q.settle(&g, &a0, &sent("wamid.late"), 1_300).await.unwrap();
    assert_eq!(record(&q, "a0").await.status, MessageStatus::Skipped);
    assert!(q.release(&g, 1_300).await.unwrap());
}

both!(
    suite_settle_skipped,
    settle_skipped_redis,
    settle_skipped_memory
);

/// A running broadcast lives as long as it runs: every feed renews the TTL of its hash and
/// its recipients (a broadcast held back by the messaging limit for longer than
/// `outbox_ttl_secs` must not vanish half-way). And a late status of a broadcast that did
/// expire does not bring its hash back without a TTL.
#[tokio::test]
async fn broadcast_ttl_renews_on_feed_and_late_statuses_do_not_recreate_it() {
    let url = support::shared_url();
    let keys = support::keys();
    let con = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap())
        .await
        .unwrap();
    let options = OutQueueOptions {
        record_ttl_ms: 3_000,
        lane_lease_ms: 10_000,
    };
    let q = OutQueue::Redis(coexist::outbound::queue::RedisOutQueue::new(
        con,
        keys.clone(),
        options,
    ));
    let mut raw = support::connection(&url).await;
    let pttl = |key: String| {
        let mut raw = raw.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap();
            ms
        }
    };
    q.create_broadcast(CH, &new_broadcast("bc-t", &["A", "B"], 0), 1_000)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let before = pttl(keys.broadcast(CH, "bc-t")).await;
    assert!(before > 0 && before <= 1_900, "counting down: {before}");
    let fed = vec![("A".to_string(), bc_msg("bc-t", 0, "A", 1_100))];
    assert_eq!(
        q.feed_broadcast(CH, "bc-t", 0, &fed, 2_200).await.unwrap(),
        Some(1)
    );
    for key in [
        keys.broadcast(CH, "bc-t"),
        keys.broadcast_recipients(CH, "bc-t"),
    ] {
        let after = pttl(key.clone()).await;
        assert!(after > 2_500, "{key} renewed by the feed: {after}");
    }
    // The broadcast expires; a late status of its message moves the record, not a ghost hash.
    let _: i64 = redis::cmd("DEL")
        .arg(keys.broadcast(CH, "bc-t"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let t = take(&q, "w", 2_300, 10).await;
    assert!(q.begin(grant(&t, "A"), &fed[0].1, 2_300).await.unwrap());
    assert!(q
        .advance(
            CH,
            "bc-t.0",
            MessageStatus::Read,
            2_400,
            Some("wamid.t"),
            None
        )
        .await
        .unwrap());
    let exists: i64 = redis::cmd("EXISTS")
        .arg(keys.broadcast(CH, "bc-t"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the expired broadcast stays gone");
}
