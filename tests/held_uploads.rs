//! The store of files uploaded to Personal channels (`media::HeldUploads`): one behaviour
//! suite on the Redis backend (a real `redis-server`) and on its in-memory twin.

mod support;

use coexist::media::{HeldUploads, HeldUploadsBackend, MediaError, MediaFile};
use std::time::Duration;

async fn redis(ttl_secs: u64) -> HeldUploads {
    let client = redis::Client::open(support::shared_url()).unwrap();
    let con = client.get_connection_manager().await.unwrap();
    HeldUploads::redis(con, support::keys(), ttl_secs)
}

fn memory(ttl_secs: u64) -> HeldUploads {
    HeldUploads::memory(ttl_secs)
}

/// A file goes in and comes back byte for byte, with its type and name, under a `cxm_` id
/// of 128 random bits; another channel, or an unknown id, finds nothing.
async fn round_trip(held: HeldUploads) {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let file = MediaFile::new(bytes.clone(), "audio/ogg; codecs=opus").with_filename("note.ogg");
    let id = held.put("phone", file.clone()).await.unwrap();
    assert!(id.starts_with("cxm_") && id.len() == 4 + 32, "{id}");
    assert_eq!(held.get("phone", &id).await.unwrap(), file);
    let other = held
        .put("phone", MediaFile::new(&b"x"[..], "text/plain"))
        .await
        .unwrap();
    assert_ne!(other, id);
    let unnamed = held.get("phone", &other).await.unwrap();
    assert_eq!(unnamed.filename, None);
    assert_eq!(
        held.get("other-channel", &id).await,
        Err(MediaError::NotFound { id: id.clone() })
    );
    assert_eq!(
        held.get("phone", "cxm_0000").await,
        Err(MediaError::NotFound {
            id: "cxm_0000".into()
        })
    );
}

/// A held file is gone after its TTL.
async fn expires(held: HeldUploads) {
    let id = held
        .put("phone", MediaFile::new(&b"soon gone"[..], "text/plain"))
        .await
        .unwrap();
    assert!(held.get("phone", &id).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(
        held.get("phone", &id).await,
        Err(MediaError::NotFound { .. })
    ));
}

#[tokio::test]
async fn redis_round_trip() {
    round_trip(redis(60).await).await;
}

#[tokio::test]
async fn memory_round_trip() {
    round_trip(memory(60)).await;
}

#[tokio::test]
async fn redis_expires() {
    expires(redis(1).await).await;
}

#[tokio::test]
async fn memory_expires() {
    expires(memory(1)).await;
}

/// Redis down: a typed, retryable store error, no panic.
#[tokio::test]
async fn redis_down_is_a_store_error() {
    let server = support::RedisServer::start(Default::default());
    let client = redis::Client::open(server.url()).unwrap();
    let con = client.get_connection_manager().await.unwrap();
    let held = HeldUploads::redis(con, support::keys(), 60);
    server.stop();
    let err = held
        .put("phone", MediaFile::new(&b"x"[..], "text/plain"))
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Store { .. }), "{err:?}");
    assert!(err.is_retryable());
}
