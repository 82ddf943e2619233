//! Meta webhook bodies (`POST /webhooks/meta`): parse, route, queue JSON, read back.
fn main() {
    let router = coexist_fuzz::router();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(events) = coexist::wire::meta::parse(data) {
            for mut event in events {
                let route = router.route_meta(&mut event);
                coexist_fuzz::ingest(&mut event, &route);
            }
        }
    });
}
