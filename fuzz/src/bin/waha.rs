//! WAHA webhook bodies (`POST /webhooks/personal/{channel}`): parse, route, queue JSON, read back.
fn main() {
    let router = coexist_fuzz::router();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(events) = coexist::wire::waha::parse(data) {
            for mut event in events {
                let mut by_session = event.clone();
                if let Some(route) = router.route_waha_session(&mut by_session) {
                    coexist_fuzz::ingest(&mut by_session, &route);
                }
                if let Some(route) = router.route_personal("shop-personal", &mut event) {
                    coexist_fuzz::ingest(&mut event, &route);
                }
            }
        }
    });
}
