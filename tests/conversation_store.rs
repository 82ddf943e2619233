//! One behaviour suite for the conversation store, run against both backends: Redis (a real
//! `redis-server`, or `REDIS_URL`) and the in-memory twin. Each test uses its own key prefix.

mod support;

use coexist::channel::ChannelKind;
use coexist::conversation::ConversationBackend;
use coexist::conversation::{
    apply_event, window, ConversationState, ConversationStore, MemoryConversationStore,
    MemoryLeases, RedisConversationStore, SaveOutcome, StoreError, Window, WindowRules,
};
use coexist::event::{Contact, Event, EventType, Message};
use coexist::keys::Keys;
use coexist::queue::{Lease, QueueBackend};
use serde_json::{json, Value};
use std::time::Duration;

const NOW: i64 = 1_700_000_000_000;
const H: i64 = 3600 * 1000;
/// TTL of the Redis fixture; the memory fixture's TTL is given per test.
const REDIS_TTL_SECS: u64 = 600;

/// Where the partition leases live, so a test can move a lease like a rebalance would.
enum Leases {
    Redis {
        /// The store's own kind of connection (one node or the cluster), for direct writes.
        con: coexist::redis_conn::RedisConn,
        keys: Keys,
    },
    Memory(MemoryLeases),
}

struct Fixture {
    store: ConversationStore,
    leases: Leases,
}

impl Fixture {
    async fn redis() -> Fixture {
        let url = support::shared_url();
        let keys = support::keys();
        let manager = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap();
        Fixture {
            store: RedisConversationStore::new(manager.clone(), keys.clone(), REDIS_TTL_SECS)
                .into(),
            leases: Leases::Redis {
                con: manager.into(),
                keys,
            },
        }
    }

    /// The same suite on a 3-master Redis Cluster (the binary's shared one).
    async fn cluster() -> Fixture {
        let options = coexist::redis_conn::ConnectOptions {
            response_timeout: Duration::from_secs(3),
            connection_timeout: Duration::from_secs(2),
        };
        let endpoint = support::cluster::shared().endpoint();
        let con = coexist::redis_conn::RedisConn::connect(&endpoint, options)
            .await
            .unwrap();
        let keys = support::keys();
        Fixture {
            store: RedisConversationStore::new(con.clone(), keys.clone(), REDIS_TTL_SECS).into(),
            leases: Leases::Redis { con, keys },
        }
    }

    fn memory_with_ttl(ttl: Duration) -> Fixture {
        let leases = MemoryLeases::new();
        Fixture {
            store: MemoryConversationStore::new(leases.clone(), ttl).into(),
            leases: Leases::Memory(leases),
        }
    }

    async fn memory() -> Fixture {
        Fixture::memory_with_ttl(Duration::from_secs(REDIS_TTL_SECS))
    }

    /// Hands the partition's lease to `lease`, as the queue's lease code would.
    async fn grant(&mut self, lease: &Lease) {
        match &mut self.leases {
            Leases::Redis { con, keys } => {
                let _: () = redis::cmd("SET")
                    .arg(keys.lease(&lease.channel, lease.partition))
                    .arg(lease.value())
                    .query_async(con)
                    .await
                    .unwrap();
            }
            Leases::Memory(leases) => leases.grant(lease),
        }
    }

    /// The lease expired and nobody holds it.
    async fn expire_lease(&mut self, channel: &str, partition: u32) {
        match &mut self.leases {
            Leases::Redis { con, keys } => {
                let _: () = redis::cmd("DEL")
                    .arg(keys.lease(channel, partition))
                    .query_async(con)
                    .await
                    .unwrap();
            }
            Leases::Memory(leases) => leases.clear(channel, partition),
        }
    }

    async fn load(&self, channel: &str, contact: &str) -> Option<ConversationState> {
        self.store.load(channel, contact).await.unwrap()
    }

    async fn save(&self, lease: &Lease, contact: &str, state: &ConversationState) -> SaveOutcome {
        self.store
            .save(lease, &lease.channel, contact, state)
            .await
            .unwrap()
    }
}

/// A lease on partition 2 of `channel`: the fencing token a save names.
fn fence(channel: &str, owner: &str, token: u64) -> Lease {
    Lease {
        channel: channel.into(),
        partition: 2,
        owner: owner.into(),
        token,
    }
}

fn message(channel: &str, kind: ChannelKind, contact: &str, at: i64) -> Event {
    Event {
        id: format!("{channel}-{at}"),
        channel: channel.into(),
        kind,
        conversation: contact.into(),
        event_type: EventType::Message,
        at,
        received_at: Some(at),
        contact: Contact {
            wa_id: Some(contact.into()),
            ..Default::default()
        },
        message: Some(Message {
            id: format!("m{at}"),
            kind: "text".into(),
            text: Some("hi".into()),
            ..Default::default()
        }),
        status: None,
        field: None,
        timer: None,
        outbound: None,
        call: None,
        raw: Value::Null,
    }
}

fn a_state() -> ConversationState {
    let mut s = ConversationState::default();
    apply_event(
        WindowRules {
            kind: ChannelKind::Waba,
            coexistence: true,
            handover_ms: 60_000,
        },
        &mut s,
        &message("shop", ChannelKind::Waba, "1555", NOW),
        NOW,
    );
    s.statuses.advance(
        "wamid.out",
        coexist::conversation::DeliveryStatus::Delivered,
    );
    s.handover_until_ms = Some(NOW + H);
    s.bot_state = Some(json!({"step": "ask_size", "cart": [1, 2], "note": "héllo"}));
    s
}

// ---------------------------------------------------------------- the suite

async fn absent_is_none(f: Fixture) {
    assert_eq!(f.load("shop", "1555").await, None);
}

async fn save_load_round_trip(mut f: Fixture) {
    let holder = fence("shop", "w1", 7);
    f.grant(&holder).await;
    let state = a_state();
    assert_eq!(
        f.save(&holder, "1555", &state).await,
        SaveOutcome::Saved { version: 1 }
    );
    let loaded = f.load("shop", "1555").await.unwrap();
    assert_eq!(
        loaded,
        ConversationState {
            version: 1,
            ..state
        }
    );
    assert_eq!(
        window(ChannelKind::Waba, &loaded, NOW + H),
        Window::Open {
            until_ms: NOW + 24 * H
        }
    );
    assert_eq!(
        f.load("shop", "other").await,
        None,
        "one contact's save creates nothing for another"
    );
}

async fn version_increments_and_stale_copies_conflict(mut f: Fixture) {
    let holder = fence("shop", "w1", 1);
    f.grant(&holder).await;
    let mut state = ConversationState::default();
    for expected in 1..=3 {
        match f.save(&holder, "1555", &state).await {
            SaveOutcome::Saved { version } => {
                assert_eq!(version, expected);
                state.version = version;
            }
            other => panic!("save {expected}: {other:?}"),
        }
    }
    assert_eq!(f.load("shop", "1555").await.unwrap().version, 3);
    let stale = ConversationState {
        version: 1,
        bot_state: Some(json!("stale")),
        ..Default::default()
    };
    assert_eq!(
        f.save(&holder, "1555", &stale).await,
        SaveOutcome::Conflict { stored_version: 3 }
    );
    assert_eq!(
        f.load("shop", "1555").await.unwrap().bot_state,
        None,
        "conflict wrote nothing"
    );
}

async fn fenced_save_refused_after_the_lease_moved(mut f: Fixture) {
    let old = fence("shop", "w1", 1);
    f.grant(&old).await;
    let SaveOutcome::Saved { version } = f.save(&old, "1555", &a_state()).await else {
        panic!("holder must save")
    };

    // A rebalance: another worker takes the partition with a new token.
    let new = fence("shop", "w2", 2);
    f.grant(&new).await;
    let mut mine = f.load("shop", "1555").await.unwrap();
    mine.bot_state = Some(json!("from the old owner"));
    assert_eq!(f.save(&old, "1555", &mine).await, SaveOutcome::Fenced);
    assert_eq!(
        f.load("shop", "1555").await.unwrap().version,
        version,
        "fenced save wrote nothing"
    );

    // Same owner but a newer token (it lost the lease and took it again): the old token is dead.
    assert_eq!(
        f.save(&fence("shop", "w2", 1), "1555", &mine).await,
        SaveOutcome::Fenced
    );
    // A different partition's lease does not count either.
    let other_partition = Lease {
        partition: 3,
        ..new.clone()
    };
    assert_eq!(
        f.save(&other_partition, "1555", &mine).await,
        SaveOutcome::Fenced
    );

    // The holder writes.
    let mut theirs = f.load("shop", "1555").await.unwrap();
    theirs.bot_state = Some(json!("from the new owner"));
    assert_eq!(
        f.save(&new, "1555", &theirs).await,
        SaveOutcome::Saved {
            version: version + 1
        }
    );
    assert_eq!(
        f.load("shop", "1555").await.unwrap().bot_state,
        Some(json!("from the new owner"))
    );

    // Nobody holds the lease (expired): nobody writes.
    f.expire_lease("shop", 2).await;
    let current = f.load("shop", "1555").await.unwrap();
    assert_eq!(f.save(&new, "1555", &current).await, SaveOutcome::Fenced);
}

async fn fence_of_another_channel_is_an_error(mut f: Fixture) {
    let holder = fence("shop-waba", "w1", 1);
    f.grant(&holder).await;
    let err = f
        .store
        .save(
            &holder,
            "shop-personal",
            "1555",
            &ConversationState::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongChannel { .. }), "{err}");
    assert_eq!(f.load("shop-personal", "1555").await, None);
}

/// The same phone number on a WABA channel and on a Personal channel: two conversations.
async fn two_channels_same_contact_are_independent(mut f: Fixture) {
    let contact = "16505551234";
    let waba = fence("shop-waba", "w1", 1);
    let personal = fence("shop-personal", "w1", 1);
    f.grant(&waba).await;
    f.grant(&personal).await;

    let mut w = ConversationState::default();
    apply_event(
        WindowRules {
            kind: ChannelKind::Waba,
            coexistence: true,
            handover_ms: 0,
        },
        &mut w,
        &message("shop-waba", ChannelKind::Waba, contact, NOW),
        NOW,
    );
    w.bot_state = Some(json!({"channel": "waba"}));
    assert!(matches!(
        f.save(&waba, contact, &w).await,
        SaveOutcome::Saved { version: 1 }
    ));

    assert_eq!(
        f.load("shop-personal", contact).await,
        None,
        "WABA state does not leak into Personal"
    );

    let mut p = ConversationState::default();
    let e = message("shop-personal", ChannelKind::Personal, contact, NOW + H);
    apply_event(
        WindowRules {
            kind: ChannelKind::Personal,
            coexistence: false,
            handover_ms: 0,
        },
        &mut p,
        &e,
        NOW + H,
    );
    p.bot_state = Some(json!({"channel": "personal"}));
    assert!(matches!(
        f.save(&personal, contact, &p).await,
        SaveOutcome::Saved { version: 1 }
    ));

    let w = f.load("shop-waba", contact).await.unwrap();
    let p = f.load("shop-personal", contact).await.unwrap();
    assert_eq!(w.bot_state, Some(json!({"channel": "waba"})));
    assert_eq!(p.bot_state, Some(json!({"channel": "personal"})));
    assert_eq!(w.last_inbound_ms, Some(NOW));
    assert_eq!(p.last_inbound_ms, Some(NOW + H));
    assert_eq!(
        window(ChannelKind::Waba, &w, NOW + H),
        Window::Open {
            until_ms: NOW + 24 * H
        }
    );
    assert_eq!(
        window(ChannelKind::Personal, &p, NOW + H),
        Window::NotApplicable
    );
    assert_eq!(p.window_end_ms, None);

    // Losing the lease of one channel does not fence the other.
    f.grant(&fence("shop-waba", "w9", 5)).await;
    assert_eq!(f.save(&waba, contact, &w).await, SaveOutcome::Fenced);
    assert_eq!(
        f.save(&personal, contact, &p).await,
        SaveOutcome::Saved { version: 2 }
    );
}

async fn every_write_sets_the_ttl(mut f: Fixture) {
    let holder = fence("shop", "w1", 1);
    f.grant(&holder).await;
    let SaveOutcome::Saved { version } =
        f.save(&holder, "1555", &ConversationState::default()).await
    else {
        panic!("save")
    };
    match &mut f.leases {
        Leases::Redis { con, keys } => {
            let key = keys.conversation("shop", "1555");
            let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(con).await.unwrap();
            assert!(
                pttl > 0 && pttl <= REDIS_TTL_SECS as i64 * 1000,
                "PTTL {pttl}"
            );
            // Shorten it, save again: the write restores the full TTL.
            let _: () = redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(5_000)
                .query_async(con)
                .await
                .unwrap();
            let state = ConversationState {
                version,
                ..Default::default()
            };
            assert!(matches!(
                f.store.save(&holder, "shop", "1555", &state).await.unwrap(),
                SaveOutcome::Saved { .. }
            ));
            let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(con).await.unwrap();
            assert!(pttl > 5_000, "TTL refreshed on write: {pttl}");
        }
        Leases::Memory(_) => {
            // The suite's memory fixture keeps states for minutes; check real expiry on a
            // short-lived twin.
            let mut short = Fixture::memory_with_ttl(Duration::from_millis(1_000));
            short.grant(&holder).await;
            let first = short
                .save(&holder, "1555", &ConversationState::default())
                .await;
            assert_eq!(first, SaveOutcome::Saved { version: 1 });
            tokio::time::sleep(Duration::from_millis(600)).await;
            let state = ConversationState {
                version: 1,
                ..Default::default()
            };
            assert_eq!(
                short.save(&holder, "1555", &state).await,
                SaveOutcome::Saved { version: 2 }
            );
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(
                short.load("shop", "1555").await.is_some(),
                "the second write restarted the TTL"
            );
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(short.load("shop", "1555").await, None, "expired");
            // After expiry the conversation starts over from version 0.
            let again = short
                .save(&holder, "1555", &ConversationState::default())
                .await;
            assert_eq!(again, SaveOutcome::Saved { version: 1 });
        }
    }
}

/// A conversation that expired starts over: its old outbound time (noted beside the state by
/// the send API) goes with it, even when nothing loaded it in between.
async fn an_expired_conversation_forgets_its_outbound_note(mut f: Fixture) {
    let holder = fence("shop", "w1", 1);
    f.grant(&holder).await;
    let mut short = match &f.leases {
        Leases::Redis { .. } => None,
        Leases::Memory(_) => Some(Fixture::memory_with_ttl(Duration::from_millis(300))),
    };
    let f = match short.as_mut() {
        Some(s) => {
            s.grant(&holder).await;
            s
        }
        None => &mut f,
    };
    assert!(matches!(
        f.save(&holder, "1555", &ConversationState::default()).await,
        SaveOutcome::Saved { version: 1 }
    ));
    f.store.note_outbound("shop", "1555", NOW).await.unwrap();
    assert_eq!(
        f.load("shop", "1555").await.unwrap().last_outbound_ms,
        Some(NOW)
    );
    match &mut f.leases {
        Leases::Redis { con, keys } => {
            let _: () = redis::cmd("PEXPIRE")
                .arg(keys.conversation("shop", "1555"))
                .arg(50)
                .query_async(con)
                .await
                .unwrap();
        }
        Leases::Memory(_) => {}
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // No load in between: the next save finds the expired state.
    assert!(matches!(
        f.save(&holder, "1555", &ConversationState::default()).await,
        SaveOutcome::Saved { version: 1 }
    ));
    assert_eq!(
        f.load("shop", "1555").await.unwrap().last_outbound_ms,
        None,
        "the outbound time expired with its conversation"
    );
}

async fn corrupt_state_is_a_typed_error(mut f: Fixture) {
    // Only Redis can hold bytes we did not write; the memory twin always stores our JSON.
    let Leases::Redis { con, keys } = &mut f.leases else {
        return;
    };
    let key = keys.conversation("shop", "1555");
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("v")
        .arg(1)
        .arg("s")
        .arg("{not json")
        .query_async(con)
        .await
        .unwrap();
    let err = f.store.load("shop", "1555").await.unwrap_err();
    assert!(matches!(err, StoreError::Decode { .. }), "{err}");
    assert!(err.to_string().contains(&key), "{err}");
}

// ---------------------------------------------------------------- run it on both backends

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Fixture::redis().await).await
                }
            )*
        }
        mod cluster_backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Fixture::cluster().await).await
                }
            )*
        }
        mod memory_backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Fixture::memory().await).await
                }
            )*
        }
    };
}

on_both_backends!(
    absent_is_none,
    save_load_round_trip,
    version_increments_and_stale_copies_conflict,
    fenced_save_refused_after_the_lease_moved,
    fence_of_another_channel_is_an_error,
    two_channels_same_contact_are_independent,
    every_write_sets_the_ttl,
    an_expired_conversation_forgets_its_outbound_note,
    corrupt_state_is_a_typed_error,
);

/// The embedded mode (`coexist run`): the memory store reads the memory queue's own leases,
/// so a task whose lease expired, or was released, or was taken over, can no longer save —
/// as a Lua-fenced save in Redis cannot.
#[tokio::test]
async fn memory_store_on_the_queue_leases_fences_expired_and_released_leases() {
    use coexist::queue::MemoryQueue;
    let queue = MemoryQueue::new();
    let store = MemoryConversationStore::new(
        MemoryLeases::of_queue(queue.clone()),
        Duration::from_secs(600),
    );
    let save = |lease: &Lease, version: u64| {
        let mut state = a_state();
        state.version = version;
        let (store, lease) = (store.clone(), lease.clone());
        async move { store.save(&lease, "shop-waba", "1555", &state).await }
    };
    let lease = queue
        .acquire_lease("shop-waba", 0, "w1", 60)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        save(&lease, 0).await,
        Ok(SaveOutcome::Saved { version: 1 })
    ));
    // The lease runs out (no renewal): the same task may no longer save.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(matches!(save(&lease, 1).await, Ok(SaveOutcome::Fenced)));
    // Another worker takes the partition over: its fence saves, the old one still cannot.
    let next = queue
        .acquire_lease("shop-waba", 0, "w2", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        save(&next, 1).await,
        Ok(SaveOutcome::Saved { version: 2 })
    ));
    assert!(matches!(save(&lease, 2).await, Ok(SaveOutcome::Fenced)));
    // Released: nobody holds it.
    assert!(queue.release_lease(&next).await.unwrap());
    assert!(matches!(save(&next, 2).await, Ok(SaveOutcome::Fenced)));
}
