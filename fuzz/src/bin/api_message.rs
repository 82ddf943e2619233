//! `POST /v1/channels/{channel}/messages` bodies: read, then the checks the send API makes.
use coexist::ChannelKind;
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(m) = coexist::api::request::message(data) {
            let _ = m.reply.invalid();
            let _ = m.reply.type_name();
            for kind in [ChannelKind::Waba, ChannelKind::Personal] {
                let _ = coexist::api::request::conversation_id(kind, &m.to);
            }
        }
    });
}
