//! Shared set-up for the fuzz targets: one configuration (the test kit's: a WABA channel for
//! the fixtures' phone number id and a Personal channel for WAHA session `default`), its
//! router, and the routed-event checks every webhook target runs on what a parser produced.

use coexist::config::Config;
use coexist::event::Event;
use coexist::routing::{Route, Router};

pub fn config() -> Config {
    Config::from_toml(coexist::bot::testkit::DEFAULT_CONFIG, "fuzz.toml", &|_| {
        None
    })
    .expect("the test kit's configuration loads")
}

/// What ingress does with a parsed event after the parser (route it, stamp it, serialize it
/// for the queue), plus the worker's side: the queued JSON must read back as an Event —
/// a payload the worker cannot read would be dead-lettered, i.e. a lost message.
pub fn ingest(event: &mut Event, route: &Route) {
    let new = coexist::ingest::to_new_event(event, route, 1_750_000_000_000);
    let back: Result<Event, _> = serde_json::from_str(&new.payload);
    if let Err(e) = back {
        panic!("queued event does not read back: {e}\n{}", new.payload);
    }
    let _ = coexist::ingest::contact_ids(event);
}

pub fn router() -> Router {
    Router::new(&config())
}
