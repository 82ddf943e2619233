//! A forward bot's answer (the 2xx body of the bot endpoint): parse it, check the answer
//! limits, and apply it the way the worker does — on a WABA conversation whose 24 h window is
//! open, on one whose window is closed, and on a Personal conversation — then build the Graph
//! request body of every reply the rules let through. Every byte of the answer is hostile.
//! Property: `"handover": {"seconds": N}` pauses the bot for N seconds (saturating).
use coexist::bot::forward::{apply_answer, parse_answer, AnswerLimits, HandoverAnswer};
use coexist::bot::Context;
use coexist::conversation::ConversationState;
use coexist::outbound::{graph, OutgoingMessage};
use std::sync::Arc;

const NOW_MS: i64 = 1_750_000_000_000;

fn main() {
    let config = coexist_fuzz::config();
    let router = coexist_fuzz::router();
    let mut waba_event =
        coexist::wire::meta::parse(include_bytes!("../../../fixtures/meta/text_message.json"))
            .unwrap()
            .remove(0);
    router.route_meta(&mut waba_event);
    let mut personal_event = coexist::wire::waha::parse(include_bytes!(
        "../../../fixtures/personal/waha_message_text.json"
    ))
    .unwrap()
    .remove(0);
    router.route_personal("shop-personal", &mut personal_event);
    let waba = Arc::new(config.channel("shop-waba").unwrap().clone());
    let personal = Arc::new(config.channel("shop-personal").unwrap().clone());
    let open = ConversationState {
        last_inbound_ms: Some(NOW_MS - 60_000),
        window_end_ms: Some(NOW_MS - 60_000 + 24 * 3600 * 1000),
        ..Default::default()
    };
    let limits = AnswerLimits::default();

    afl::fuzz!(|data: &[u8]| {
        let Ok(answer) = parse_answer(data) else {
            return;
        };
        if limits.check(&answer).is_err() {
            return;
        }
        // The answer is consumed by apply_answer: re-read it for each conversation.
        let contexts = [
            Context::new(waba_event.clone(), waba.clone(), open.clone(), NOW_MS),
            Context::new(waba_event.clone(), waba.clone(), Default::default(), NOW_MS),
            Context::new(
                personal_event.clone(),
                personal.clone(),
                Default::default(),
                NOW_MS,
            ),
        ];
        for mut ctx in contexts {
            apply_answer(&mut ctx, parse_answer(data).unwrap());
            let channel = ctx.channel_id().to_string();
            let (event, state, replies) = ctx.into_parts();
            // A pause of N seconds holds the bot for N seconds (saturating at the end of
            // time), never for less: a huge N must not wrap into a short or no pause.
            if let Some(HandoverAnswer::Pause(d)) = answer.handover {
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                let want = NOW_MS.saturating_add(ms);
                assert_eq!(
                    state.handover_until_ms,
                    Some(want),
                    "handover {{\"seconds\": {}}} paused until {:?}, expected {want}",
                    d.as_secs(),
                    state.handover_until_ms
                );
            }
            for (slot, reply) in replies {
                let key = OutgoingMessage::outbox_key_for(&event.id, slot);
                let msg = OutgoingMessage::new(&channel, &event.conversation, reply, key);
                let _ = graph::request_body(&msg);
                let _ = serde_json::to_string(&msg);
            }
        }
    });
}
