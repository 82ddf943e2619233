//! `POST /v1/channels/{channel}/broadcasts` bodies, JSON and NDJSON, for both channel kinds;
//! every accepted recipient is personalized as the sender will do it.
use coexist::api::broadcast::{from_json, from_ndjson, message_only, personalize};
use coexist::ChannelKind;
fn main() {
    afl::fuzz!(|data: &[u8]| {
        // First byte: bit 0 NDJSON, bit 1 Personal; the rest is the body.
        let Some((&flags, body)) = data.split_first() else {
            return;
        };
        let ndjson = flags & 1 == 1;
        let kind = if flags & 2 == 0 {
            ChannelKind::Waba
        } else {
            ChannelKind::Personal
        };
        let _ = message_only(body, ndjson);
        let read = if ndjson {
            from_ndjson(body, kind)
        } else {
            from_json(body, kind)
        };
        if let Ok(b) = read {
            for r in &b.recipients {
                let v: serde_json::Value =
                    serde_json::from_str(r).expect("a stored recipient is JSON");
                let params = v.get("params").cloned().unwrap_or_default();
                // Checked when the list was read: must not fail now.
                if let Err(e) = personalize(&b.message, &params) {
                    panic!("recipient accepted but personalize fails: {e}: {r}");
                }
            }
        }
    });
}
