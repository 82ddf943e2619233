//! The configuration loader: any text must load or be refused with an error, never panic.
//! A loaded configuration is also routed (`Router::new`) and asked for its derived values.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(config) =
            coexist::config::Config::from_toml(text, "fuzz.toml", &|_| Some("x".into()))
        else {
            return;
        };
        let _ = coexist::routing::Router::new(&config);
        for c in &config.channels {
            let _ = config.channel(&c.id);
        }
    });
}
