//! The fixture corpus: every file under `fixtures/meta` and `fixtures/personal` parses, and the
//! events it yields (count, types, ids, in order) are exactly what `fixtures/manifest.json` says.
//! Plus targeted checks of what the normalized events carry.

use coexist::event::{Event, EventType};
use coexist::wire::{parse_any, Format, ParseError};
use coexist::ChannelKind;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PNID: &str = "106540352242922";
const BSUID: &str = "US.13491208655302741918";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn parse(rel: &str) -> (Format, Vec<Event>) {
    parse_any(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn one(rel: &str) -> Event {
    let (_, mut events) = parse(rel);
    assert_eq!(events.len(), 1, "{rel}: {events:?}");
    events.remove(0)
}

/// Every fixture file, as a path relative to `fixtures/`, sorted.
fn fixture_files() -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["meta", "personal"] {
        for entry in std::fs::read_dir(fixtures_dir().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                out.push(format!(
                    "{sub}/{}",
                    path.file_name().unwrap().to_str().unwrap()
                ));
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, serde::Deserialize)]
struct Expected {
    types: Vec<String>,
    ids: Vec<String>,
}

fn manifest() -> BTreeMap<String, Expected> {
    serde_json::from_slice(&read("manifest.json"))
        .expect("manifest.json is a map of path -> {types, ids}")
}

#[test]
fn manifest_lists_exactly_the_fixture_files() {
    let files = fixture_files();
    let manifest = manifest();
    let listed: Vec<&String> = manifest.keys().collect();
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !manifest.contains_key(*f))
        .collect();
    let stale: Vec<&&String> = listed.iter().filter(|k| !files.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "fixture files missing from manifest.json: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "manifest.json lists files that do not exist: {stale:?}"
    );
    assert!(files.len() >= 45, "only {} fixtures", files.len());
}

#[test]
fn every_fixture_parses_to_the_manifest() {
    let manifest = manifest();
    let mut failures = Vec::new();
    for rel in fixture_files() {
        let Some(expected) = manifest.get(&rel) else {
            continue;
        };
        let (format, events) = match parse_any(&read(&rel)) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{rel}: parse error {e}"));
                continue;
            }
        };
        let want_format = if rel.starts_with("meta/") {
            Format::Meta
        } else {
            Format::Waha
        };
        if format != want_format {
            failures.push(format!("{rel}: format {format:?}"));
        }
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        if types != expected.types || ids != expected.ids {
            failures.push(format!(
                "{rel}:\n  types {types:?}\n  want  {:?}\n  ids   {ids:?}\n  want  {:?}",
                expected.types, expected.ids
            ));
        }
        for e in &events {
            let kind = if want_format == Format::Meta {
                ChannelKind::Waba
            } else {
                ChannelKind::Personal
            };
            if e.kind != kind || e.received_at.is_some() || e.raw.is_null() || e.id.is_empty() {
                failures.push(format!("{rel}: bad common fields in {}", e.to_json()));
            }
            let back: Event = serde_json::from_str(&e.to_json()).unwrap();
            if &back != e {
                failures.push(format!("{rel}: {} does not round-trip", e.id));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parsing_is_deterministic() {
    for rel in fixture_files() {
        assert_eq!(parse(&rel).1, parse(&rel).1, "{rel}");
    }
}

#[test]
fn meta_fixtures_are_ascii_like_the_wire() {
    for rel in fixture_files()
        .into_iter()
        .filter(|f| f.starts_with("meta/"))
    {
        assert!(read(&rel).is_ascii(), "{rel} is not ASCII");
    }
}

#[test]
fn text_message_is_normalized() {
    let e = one("meta/text_message.json");
    assert_eq!(e.event_type, EventType::Message);
    assert_eq!(e.channel, PNID);
    assert_eq!(e.conversation, "16505551234");
    assert_eq!(e.at, 1_749_416_383_000);
    assert_eq!(e.contact.name.as_deref(), Some("Sheena Nelson"));
    let m = e.message.as_ref().unwrap();
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref()),
        ("text", Some("Does it come in another color?"))
    );
    assert_eq!(e.raw["text"]["body"], "Does it come in another color?");
    assert!(e.raw.get("contacts").is_none(), "raw is the message object");
}

#[test]
fn business_scoped_message_uses_the_user_id() {
    let e = one("meta/bsuid_only_message.json");
    assert_eq!(e.conversation, BSUID);
    assert_eq!(e.contact.wa_id, None);
    assert_eq!(e.contact.user_id.as_deref(), Some(BSUID));
    assert_eq!(
        e.contact.parent_user_id.as_deref(),
        Some("US.ENT.11815799212886844830")
    );
    assert_eq!(e.contact.username.as_deref(), Some("pablomorales"));
    let s = one("meta/bsuid_status_recipient_user_id.json");
    assert_eq!(s.conversation, BSUID);
    assert_eq!(s.status.as_ref().unwrap().recipient.as_deref(), Some(BSUID));
}

/// Half a surrogate pair (a phone app cut an emoji) is not valid JSON to a parser, but the
/// message is real: it parses, each broken half becomes U+FFFD, whole pairs stay emoji.
#[test]
fn lone_surrogates_become_replacement_characters() {
    let body = String::from_utf8(read("meta/text_lone_surrogate.json")).unwrap();
    assert!(
        body.contains(r#"\ud83d""#) && body.contains(r"\ude00 and"),
        "{body}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
    let e = one("meta/text_lone_surrogate.json");
    assert_eq!(
        e.message.as_ref().unwrap().text.as_deref(),
        Some("cut emoji \u{fffd} then a lone low \u{fffd} and a whole one 😀")
    );
    assert_eq!(e.contact.name.as_deref(), Some("José \u{fffd}"));
    assert_eq!(
        e.raw.pointer("/text/body").and_then(|v| v.as_str()),
        e.message.as_ref().unwrap().text.as_deref(),
        "raw holds the same repaired text"
    );
    let w = one("personal/waha_message_lone_surrogate.json");
    assert_eq!(
        w.message.as_ref().unwrap().text.as_deref(),
        Some("ação \u{fffd} — obrigado!")
    );
}

/// Calls are typed events: who called, which call, what happened; the call's own timestamp.
#[test]
fn calls_are_typed_events() {
    let e = one("meta/call_connect_entry_time.json");
    assert_eq!(e.event_type, EventType::Call);
    assert_eq!(e.conversation, "16505551234");
    assert_eq!(
        e.at, 1_750_700_400_000,
        "the call's timestamp, not entry.time"
    );
    let call = e.call.as_ref().unwrap();
    assert_eq!(
        (
            call.id.as_str(),
            call.event.as_str(),
            call.direction.as_deref()
        ),
        (
            "wacid.HBgLMTY1MDU1NTEyMzQVAgARGBQzQUE1",
            "connect",
            Some("USER_INITIATED")
        )
    );
    assert!(call.is_from_customer());
    assert_eq!(
        e.raw["session"]["sdp_type"], "offer",
        "the SDP offer stays in raw"
    );
    let t = one("meta/call_terminate.json");
    let call = t.call.as_ref().unwrap();
    assert_eq!(
        (
            call.event.as_str(),
            call.status.as_deref(),
            call.duration_secs
        ),
        ("terminate", Some("COMPLETED"), Some(80))
    );
    assert_eq!(t.contact.name.as_deref(), Some("Sheena Nelson"));
    let s = one("meta/call_status_accepted.json");
    let call = s.call.as_ref().unwrap();
    assert_eq!(
        (
            s.conversation.as_str(),
            call.event.as_str(),
            call.status.as_deref()
        ),
        ("16505551234", "status", Some("ACCEPTED"))
    );
    let w = one("personal/waha_call_received.json");
    assert_eq!(
        (w.event_type, w.conversation.as_str()),
        (EventType::Call, "16505551234@s.whatsapp.net")
    );
    assert_eq!(w.call.as_ref().unwrap().event, "connect");
}

/// A contact's Story and a Channel post are their own events, in no conversation: every
/// contact's Stories never pile up in one shared "status@broadcast" conversation.
#[test]
fn stories_and_channel_posts_open_no_conversation() {
    let s = one("personal/waha_story.json");
    assert_eq!(s.event_type, EventType::Story);
    assert_eq!(s.conversation, "");
    assert_eq!(
        s.contact.phone_jid.as_deref(),
        Some("16505551234@s.whatsapp.net"),
        "the author"
    );
    assert_eq!(
        s.message.as_ref().unwrap().text.as_deref(),
        Some("New arrivals in my shop today!")
    );
    let n = one("personal/waha_newsletter_post.json");
    assert_eq!(
        (n.event_type, n.conversation.as_str()),
        (EventType::Newsletter, "")
    );
    // A group message: the group is the conversation, the participant the author.
    let g = one("personal/waha_message_group.json");
    assert_eq!(g.event_type, EventType::Message);
    assert_eq!(g.conversation, "120363025400012345@g.us");
    assert_eq!(
        g.contact.phone_jid.as_deref(),
        Some("16505551234@s.whatsapp.net")
    );
}

#[test]
fn escaped_non_ascii_decodes() {
    assert!(String::from_utf8(read("meta/text_non_ascii_escaped.json"))
        .unwrap()
        .contains(r"caf\u00e9 \ud83d\ude00"));
    let e = one("meta/text_non_ascii_escaped.json");
    let text = e.message.as_ref().unwrap().text.clone().unwrap();
    assert_eq!(
        text,
        "café 😀 menu: https://example.com/menu or info@example.com"
    );
    assert_eq!(e.contact.name.as_deref(), Some("José Müller"));
    let r = one("meta/reaction.json");
    assert_eq!(r.message.as_ref().unwrap().text.as_deref(), Some("👍"));
}

#[test]
fn echoes_belong_to_the_customer() {
    let e = one("meta/smb_message_echoes.json");
    assert_eq!(e.event_type, EventType::Echo);
    assert_eq!(e.conversation, "16505551234");
    assert_eq!(e.message.as_ref().unwrap().source.as_deref(), Some("app"));
    let e = one("meta/echo_image_bsuid.json");
    assert_eq!(e.conversation, "16505551234", "leading + stripped");
    assert_eq!(e.contact.user_id.as_deref(), Some(BSUID));
    let m = e.message.as_ref().unwrap();
    assert_eq!(
        m.media.as_ref().unwrap().id.as_deref(),
        Some("1003383421387299")
    );
    assert_eq!(m.text.as_deref(), Some("Here is the blue one"));
    let e = one("meta/echo_edit.json");
    assert_eq!(
        e.message.as_ref().unwrap().text.as_deref(),
        Some("It ships on Monday.")
    );
    assert!(e.message.as_ref().unwrap().reply_to.is_some());
}

#[test]
fn failed_statuses_and_the_window() {
    for rel in [
        "meta/status_failed_131047.json",
        "meta/status_failed_131047_code_string.json",
    ] {
        let e = one(rel);
        let s = e.status.as_ref().unwrap();
        assert_eq!(s.status, "failed");
        assert!(s.closes_window(), "{rel}");
        assert_eq!(s.errors[0].code, 131047);
        assert!(s.errors[0].details.as_deref().unwrap().contains("24 hours"));
    }
    let e = one("meta/status_failed_131047.json");
    assert_eq!(e.channel, "109999999999999");
    assert_eq!(e.conversation, "5511111111111");
    let s = one("meta/status_failed_131026.json").status.unwrap();
    assert!(!s.closes_window());
    assert_eq!(s.errors[0].code, 131026);
}

#[test]
fn status_fields() {
    let e = one("meta/status_sent_pricing_conversation.json");
    let s = e.status.as_ref().unwrap();
    assert_eq!(e.id, format!("{}:sent", s.message_id));
    assert_eq!(
        s.conversation.as_ref().unwrap()["origin"]["type"],
        "marketing"
    );
    assert_eq!(s.pricing.as_ref().unwrap()["pricing_model"], "PMP");
    let e = one("meta/status_biz_opaque_callback_data.json");
    assert_eq!(
        e.status.unwrap().biz_opaque_callback_data.as_deref(),
        Some("cx:shop-waba:out:wamid-src-1:0")
    );
    let e = one("meta/status_delivered_pricing.json");
    assert_eq!(e.contact.username.as_deref(), Some("pablomorales"));
    assert_eq!(e.contact.wa_id.as_deref(), Some("16505551234"));
    let (_, group) = parse("meta/status_group.json");
    assert_eq!(group.len(), 2);
    assert_ne!(
        group[0].id, group[1].id,
        "participants are distinct elements"
    );
    assert!(group
        .iter()
        .all(|e| e.conversation == "120363025400012345" && e.contact.wa_id.is_none()));
}

#[test]
fn unknown_things_are_kept_raw() {
    let e = one("meta/unknown_future_type.json");
    assert_eq!(e.event_type, EventType::Message);
    assert_eq!(e.message.as_ref().unwrap().kind, "hologram");
    assert_eq!(e.raw["hologram"]["duration_ms"], 1200);
    let e = one("meta/unknown_field_group_lifecycle.json");
    assert_eq!(e.event_type, EventType::Unknown);
    assert_eq!(e.field.as_deref(), Some("group_lifecycle_update"));
    assert_eq!(e.raw["type"], "group_create");
    assert_eq!(e.at, 1_750_700_401_000, "entry.time");
    let e = one("personal/waha_unknown_presence.json");
    assert_eq!(
        (e.event_type, e.field.as_deref()),
        (EventType::Unknown, Some("presence.update"))
    );
    assert_eq!(
        e.raw["payload"]["presences"][0]["lastKnownPresence"],
        "typing"
    );
    for other in [
        "personal/gowa-message-text.json",
        "personal/evolution-messages-upsert-fromme-v1.json",
    ] {
        assert_eq!(one(other).event_type, EventType::Unknown, "{other}");
    }
}

#[test]
fn message_kinds_and_parts() {
    let kind = |rel: &str| one(rel).message.unwrap();
    let m = kind("meta/interactive_button_reply.json");
    assert_eq!(
        (m.kind.as_str(), m.button_id.as_deref(), m.text.as_deref()),
        ("button_reply", Some("cancel-button"), Some("Cancel"))
    );
    assert!(m.reply_to.is_some() && m.context.is_some());
    let m = kind("meta/interactive_list_reply.json");
    assert_eq!(
        (m.kind.as_str(), m.button_id.as_deref()),
        ("list_reply", Some("priority_express"))
    );
    let e = one("meta/interactive_nfm_reply.json");
    assert_eq!(e.message.as_ref().unwrap().kind, "nfm_reply");
    let rj: Value = serde_json::from_str(
        e.raw["interactive"]["nfm_reply"]["response_json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rj["flow_token"], "AQAAAAACS5FpgQ_cAAAAAD0QI3s.");
    assert_eq!(
        kind("meta/interactive_call_permission_reply.json").kind,
        "call_permission_reply"
    );
    let m = kind("meta/button_template_quick_reply.json");
    assert_eq!(
        (m.kind.as_str(), m.button_id.as_deref(), m.text.as_deref()),
        ("button", Some("TRACK_ORDER_4521"), Some("Track my order"))
    );
    let m = kind("meta/reaction_removed.json");
    assert_eq!((m.text, m.reply_to.is_some()), (None, true));
    let m = kind("meta/image_message.json");
    let media = m.media.unwrap();
    assert_eq!(
        (media.id.as_deref(), media.mime_type.as_deref()),
        (Some("1003383421387256"), Some("image/jpeg"))
    );
    assert!(media.url.is_some() && media.sha256.is_some());
    assert_eq!(m.text.as_deref(), Some("Taj Mahal"));
    let m = kind("meta/document.json");
    assert_eq!(
        m.media.unwrap().filename.as_deref(),
        Some("invoice-2025-03.pdf")
    );
    assert_eq!(kind("meta/audio_voice.json").kind, "audio");
    assert_eq!(
        kind("meta/sticker_animated.json")
            .media
            .unwrap()
            .mime_type
            .as_deref(),
        Some("image/webp")
    );
    let m = kind("meta/edit.json");
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref()),
        ("edit", Some("Actually, can it arrive Friday?"))
    );
    assert!(m.reply_to.unwrap().starts_with("wamid."));
    assert!(kind("meta/revoke.json").reply_to.is_some());
    let m = kind("meta/unsupported_131051.json");
    assert_eq!(m.errors[0].code, 131051);
    let m = kind("meta/unsupported_131060.json");
    assert_eq!(m.errors[0].code, 131060, "code given as a string");
    assert_eq!(
        kind("meta/referral_ctwa.json").referral.unwrap()["source_type"],
        "ad"
    );
    assert_eq!(
        kind("meta/text_frequently_forwarded.json").context.unwrap()["frequently_forwarded"],
        true
    );
    assert_eq!(
        kind("meta/video_forwarded.json").context.unwrap()["forwarded"],
        true
    );
    assert_eq!(kind("meta/system_user_changed_number.json").kind, "system");
    assert_eq!(kind("meta/request_welcome.json").kind, "request_welcome");
    assert_eq!(
        kind("meta/order.json").text.as_deref(),
        Some("Please deliver before 6pm")
    );
}

#[test]
fn interactive_without_object_and_value_errors() {
    let (_, events) = parse("meta/interactive_missing_with_value_errors.json");
    assert_eq!(events[0].message.as_ref().unwrap().kind, "interactive");
    assert_eq!(events[1].event_type, EventType::Error);
    assert_eq!(events[1].raw["code"], 131000);
    assert_eq!(events[1].field.as_deref(), Some("messages"));
    assert_eq!(events[1].conversation, "");
}

#[test]
fn batches_read_every_element() {
    let (_, events) = parse("meta/batch_three_messages.json");
    let senders: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e.conversation.as_str(), e.contact.name.as_deref()))
        .collect();
    assert_eq!(
        senders,
        vec![
            ("16505551234", Some("Sheena Nelson")),
            ("16505553333", Some("Ravi Patel")),
            ("16505551234", Some("Sheena Nelson"))
        ]
    );
    let (_, events) = parse("meta/batch_24_statuses.json");
    assert_eq!(events.len(), 24);
    let (_, events) = parse("meta/batch_two_entries.json");
    assert!(events.iter().all(|e| e.channel == PNID));
    let (_, events) = parse("meta/duplicate_wamid_in_post.json");
    assert_eq!(events[0], events[1]);
}

#[test]
fn coexistence_and_account_changes() {
    let e = one("meta/history.json");
    assert_eq!(
        (e.event_type, e.field.as_deref(), e.conversation.as_str()),
        (EventType::History, Some("history"), "")
    );
    assert_eq!(e.raw["history"][0]["threads"].as_array().unwrap().len(), 2);
    let e = one("meta/history_declined_2593109.json");
    assert_eq!(e.raw["history"][0]["errors"][0]["code"], 2593109);
    let e = one("meta/smb_app_state_sync.json");
    assert_eq!(
        (e.event_type, e.at),
        (EventType::ContactSync, 1_739_321_024_000)
    );
    let e = one("meta/account_update_partner_removed.json");
    assert_eq!(
        (e.event_type, e.channel.as_str()),
        (EventType::Account, "waba:102290129340398")
    );
    assert_eq!(e.at, 1_750_700_000_000);
    let e = one("meta/user_preferences_stop.json");
    assert_eq!(
        (e.field.as_deref(), e.at),
        (Some("user_preferences"), 1_750_700_300_000)
    );
    assert_eq!(
        one("meta/other_number_text.json").channel,
        "999999999999999"
    );
}

#[test]
fn waha_messages_and_echoes() {
    let a = one("personal/waha_message_text.json");
    let b = one("personal/waha_message_any_inbound.json");
    assert_eq!(a.id, b.id, "message and message.any of one message dedupe");
    assert_eq!(a.id, "waha:false_16505551234@c.us_3EB0A1B2C3D4E5F60718");
    assert_eq!(a.conversation, "16505551234@s.whatsapp.net");
    assert_eq!(a.channel, "default");
    assert_eq!(a.at, 1_750_701_000_000);
    assert_eq!(a.contact.name.as_deref(), Some("Sheena"));
    assert_eq!(a.message.as_ref().unwrap().kind, "text");
    assert_eq!(a.message.as_ref().unwrap().source, None);

    let e = one("personal/waha_message_lid_remotejidalt.json");
    assert_eq!(e.conversation, "5519987654321@s.whatsapp.net");
    assert_eq!(e.contact.lid.as_deref(), Some("4639135154355@lid"));
    assert_eq!(
        e.contact.phone_jid.as_deref(),
        Some("5519987654321@s.whatsapp.net")
    );
    let e = one("personal/waha-message-inbound-lid-noweb.json");
    assert_eq!(e.conversation, "4639135154355@lid");
    assert_eq!(e.contact.name.as_deref(), Some("contact-name"));

    for (rel, source) in [
        ("personal/waha_message_any_fromme_app.json", "app"),
        ("personal/waha_message_any_fromme_api.json", "api"),
    ] {
        let e = one(rel);
        assert_eq!(e.event_type, EventType::Echo, "{rel}");
        assert_eq!(
            e.conversation, "16505551234@s.whatsapp.net",
            "{rel}: the chat, not me"
        );
        assert_eq!(e.message.as_ref().unwrap().source.as_deref(), Some(source));
    }

    let e = one("personal/waha_message_image.json");
    let m = e.message.unwrap();
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref()),
        ("image", Some("This one, in blue"))
    );
    assert_eq!(m.media.unwrap().mime_type.as_deref(), Some("image/jpeg"));
    assert_eq!(
        m.reply_to.as_deref(),
        Some("true_16505551234@c.us_3EB0F1E2D3C4B5A69788")
    );

    let e = one("personal/waha_message_non_ascii.json");
    assert_eq!(
        e.message.unwrap().text.as_deref(),
        Some("ação 😀 — obrigado!")
    );
    assert_eq!(e.contact.name.as_deref(), Some("João"));

    let e = one("personal/waha_message_group.json");
    assert_eq!(e.conversation, "120363025400012345@g.us");
    assert_eq!(
        e.contact.phone_jid.as_deref(),
        Some("16505551234@s.whatsapp.net")
    );

    let e = one("personal/waha_message_reaction.json");
    let m = e.message.unwrap();
    assert_eq!(
        (m.kind.as_str(), m.text.as_deref()),
        ("reaction", Some("👍"))
    );
    assert_eq!(
        one("personal/waha_message_edited.json")
            .message
            .unwrap()
            .kind,
        "edit"
    );
    let e = one("personal/waha_message_revoked.json");
    assert_eq!(e.message.as_ref().unwrap().kind, "revoke");
    assert_eq!(e.conversation, "16505551234@s.whatsapp.net");
}

#[test]
fn waha_acks_and_sessions() {
    let cases = [
        ("personal/waha-message-ack.json", "read"),
        ("personal/waha_ack_server.json", "sent"),
        ("personal/waha_ack_device.json", "delivered"),
        ("personal/waha_ack_played.json", "played"),
        ("personal/waha_ack_error.json", "failed"),
        ("personal/waha_ack_group.json", "read"),
    ];
    for (rel, status) in cases {
        let e = one(rel);
        assert_eq!(e.event_type, EventType::Status, "{rel}");
        assert_eq!(e.status.as_ref().unwrap().status, status, "{rel}");
    }
    let e = one("personal/waha-message-ack.json");
    assert_eq!(e.conversation, "11111111111@s.whatsapp.net");
    assert_eq!(e.at, 0);
    assert_eq!(
        one("personal/waha_ack_group.json").conversation,
        "120363025400012345@g.us"
    );
    let e = one("personal/waha_session_working.json");
    assert_eq!(
        (e.event_type, e.field.as_deref(), e.conversation.as_str()),
        (EventType::Session, Some("session.status"), "")
    );
    assert_eq!(e.raw["payload"]["status"], "WORKING");
    assert_eq!(
        one("personal/waha_session_scan_qr.json").id,
        "session:SCAN_QR_CODE:1750699000000"
    );
}

#[test]
fn invalid_bodies() {
    match parse_any(
        b"{\n  \"object\": \"whatsapp_business_account\",\n  \"entry\": [\n    {\"id\": }\n",
    ) {
        Err(ParseError::Json { line, .. }) => assert_eq!(line, 4),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_any(br#"{"object":"whatsapp_business_account"}"#),
        Err(ParseError::Shape { .. })
    ));
    assert!(matches!(
        parse_any(br#"{"hello":"world"}"#),
        Err(ParseError::Shape { .. })
    ));
    assert!(matches!(
        coexist::wire::meta::parse(br#"{"entry":{}}"#),
        Err(ParseError::Shape { .. })
    ));
    assert!(matches!(
        coexist::wire::waha::parse(br#"{"session":"default"}"#),
        Err(ParseError::Shape { .. })
    ));
    assert!(matches!(
        parse_any(b"not json"),
        Err(ParseError::Json { line: 1, .. })
    ));
    // a known field whose value has an unexpected shape is still not an error
    let body = json!({"object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {"messages": [42, {"type": "text"}]}}]}]});
    let (_, events) = parse_any(body.to_string().as_bytes()).unwrap();
    assert_eq!(events.len(), 2);
    assert_ne!(events[0].id, events[1].id);
}
