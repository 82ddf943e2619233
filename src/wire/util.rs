//! Small pure helpers shared by the payload parsers: lenient scalar readers (Meta sends
//! timestamps and error codes as strings or numbers), stable hashes for event ids, JID handling.

use crate::event::ErrorDetail;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Parses a webhook body as JSON. A body with half a UTF-16 surrogate pair escaped in a string
/// (`"\ud83d"` alone: a phone app cut an emoji in two) is valid for the signature but not for
/// a JSON parser; refusing it would make Meta retry for days and then drop the message. Such a
/// body is parsed again with each broken half replaced by U+FFFD; nothing else changes.
pub fn parse_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) => match repair_lone_surrogates(body) {
            Some(repaired) => serde_json::from_slice(&repaired).map_err(|_| e),
            None => Err(e),
        },
    }
}

/// `body` with every lone surrogate escape (`\uD800`–`\uDFFF` not in a high-low pair)
/// replaced by `\uFFFD`; `None` when there is none. Escaped backslashes are skipped as pairs,
/// so `\\ud800` (a backslash, then text) is left alone.
pub fn repair_lone_surrogates(body: &[u8]) -> Option<Vec<u8>> {
    let hex4 = |at: usize| -> Option<u16> {
        let digits = body.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let escape_at = |at: usize| -> Option<u16> {
        (body.get(at) == Some(&b'\\') && body.get(at + 1) == Some(&b'u'))
            .then(|| hex4(at + 2))
            .flatten()
    };
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            if let Some(o) = out.as_mut() {
                o.push(body[i]);
            }
            i += 1;
            continue;
        }
        let (len, lone) = match escape_at(i) {
            Some(0xD800..=0xDBFF) => match escape_at(i + 6) {
                Some(0xDC00..=0xDFFF) => (12, false),
                _ => (6, true),
            },
            Some(0xDC00..=0xDFFF) => (6, true),
            Some(_) => (6, false),
            None => (2.min(body.len() - i), false),
        };
        if lone {
            out.get_or_insert_with(|| body[..i].to_vec())
                .extend_from_slice(b"\\uFFFD");
        } else if let Some(o) = out.as_mut() {
            o.extend_from_slice(&body[i..i + len]);
        }
        i += len;
    }
    out
}

/// Above this, a "seconds" timestamp is taken to be milliseconds already (year 5138 in seconds).
const MS_THRESHOLD: i64 = 100_000_000_000;

/// A Unix timestamp in seconds, given as a JSON string or number, in milliseconds.
/// A value that is already in milliseconds (too large to be seconds) is returned as is.
pub fn seconds_to_ms(v: &Value) -> Option<i64> {
    let secs = int_of(v)?;
    // `unsigned_abs`: `abs` of i64::MIN overflows (found by fuzzing).
    if secs.unsigned_abs() >= MS_THRESHOLD.unsigned_abs() {
        Some(secs)
    } else {
        secs.checked_mul(1000)
    }
}

/// An integer given as a JSON number (integer or float) or a string holding one.
pub fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

/// A string field; numbers are rendered as their decimal text (ids are strings, but be lenient).
pub fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A string field that is present and not empty.
pub fn nonempty(v: Option<&Value>) -> Option<String> {
    string_of(v).filter(|s| !s.is_empty())
}

/// `v[a][b]…` without panicking on missing keys or non-objects.
pub fn path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |cur, k| cur.get(*k))
}

/// An error object as Meta sends it: `{code, title, message, error_data:{details}}`.
/// `code` may be a number or a string; `details` may also sit at the top level.
pub fn error_detail(v: &Value) -> ErrorDetail {
    ErrorDetail {
        code: v.get("code").and_then(int_of).unwrap_or(0),
        title: nonempty(v.get("title")),
        message: nonempty(v.get("message")),
        details: nonempty(path(v, &["error_data", "details"]))
            .or_else(|| nonempty(v.get("details"))),
    }
}

/// All error objects of an `errors` array (absent or not an array → empty).
pub fn error_details(v: Option<&Value>) -> Vec<ErrorDetail> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().map(error_detail).collect())
        .unwrap_or_default()
}

/// Compact JSON with object keys sorted at every level, so a hash over it does not depend on
/// key order (or on whether serde_json was built with `preserve_order`).
pub fn canonical_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sorted(v)).expect("a Value always serializes")
}

/// The first 32 hex digits of SHA-256 over the concatenation of `parts`.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(32);
    s
}

/// Normalizes a WhatsApp Web JID: `@c.us` → `@s.whatsapp.net`, device (`:45`) and agent (`.0`)
/// suffixes stripped from user JIDs. Other servers (`@g.us`, `@newsletter`, …) are kept.
pub fn normalize_jid(jid: &str) -> String {
    let jid = jid.trim();
    let Some((user, server)) = jid.split_once('@') else {
        return jid.to_string();
    };
    let server = if server == "c.us" {
        "s.whatsapp.net"
    } else {
        server
    };
    let user = if server == "s.whatsapp.net" || server == "lid" {
        let user = user.split(':').next().unwrap_or(user);
        match user.split_once('.') {
            Some((base, agent)) if agent.chars().all(|c| c.is_ascii_digit()) => base,
            _ => user,
        }
    } else {
        user
    };
    format!("{user}@{server}")
}

/// A phone JID (`…@s.whatsapp.net` after normalization).
pub fn is_phone_jid(jid: &str) -> bool {
    jid.ends_with("@s.whatsapp.net")
}

/// A hidden WhatsApp Web id (`…@lid`).
pub fn is_lid(jid: &str) -> bool {
    jid.ends_with("@lid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        assert_eq!(seconds_to_ms(&json!(i64::MIN)), Some(i64::MIN));
        assert_eq!(seconds_to_ms(&json!(i64::MAX)), Some(i64::MAX));
        assert_eq!(
            seconds_to_ms(&json!("-9223372036854775808")),
            Some(i64::MIN)
        );
        assert_eq!(seconds_to_ms(&json!(-5)), Some(-5000));
        assert_eq!(
            seconds_to_ms(&json!("1e300")),
            Some(i64::MAX),
            "a float saturates"
        );
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let cases: [(&str, Option<&str>); 9] = [
            // (body, the "a" string after parsing; None = still not JSON)
            (r#"{"a":"x\ud800y"}"#, Some("x\u{fffd}y")),
            (r#"{"a":"x\udc00y"}"#, Some("x\u{fffd}y")),
            (r#"{"a":"Jos\ud83d"}"#, Some("Jos\u{fffd}")),
            (r#"{"a":"\ud800\ud800"}"#, Some("\u{fffd}\u{fffd}")),
            (r#"{"a":"\ud800\u0041"}"#, Some("\u{fffd}A")),
            (
                r#"{"a":"\uDBFF\ude00 ok \ud83d\ude00"}"#,
                Some("\u{10fe00} ok 😀"),
            ),
            // An escaped backslash then text: no escape at all, left alone.
            (r#"{"a":"\\ud800"}"#, Some("\\ud800")),
            (r#"{"a":"ação \ud83c"}"#, Some("ação \u{fffd}")),
            // Broken for another reason: still an error.
            (r#"{"a":"\ud800"#, None),
        ];
        for (body, want) in cases {
            let got = parse_json(body.as_bytes()).ok();
            assert_eq!(got.as_ref().and_then(|v| v["a"].as_str()), want, "{body}");
        }
        assert_eq!(repair_lone_surrogates(br#"{"a":"\ud83d\ude00"}"#), None);
        assert_eq!(repair_lone_surrogates(b"plain"), None);
    }

    #[test]
    fn timestamps_as_string_or_int() {
        assert_eq!(seconds_to_ms(&json!("1749416383")), Some(1_749_416_383_000));
        assert_eq!(seconds_to_ms(&json!(1749416383)), Some(1_749_416_383_000));
        assert_eq!(
            seconds_to_ms(&json!(" 1749416383 ")),
            Some(1_749_416_383_000)
        );
        assert_eq!(seconds_to_ms(&json!(1749416383.0)), Some(1_749_416_383_000));
        // already milliseconds
        assert_eq!(
            seconds_to_ms(&json!(1_749_416_383_123_i64)),
            Some(1_749_416_383_123)
        );
        assert_eq!(seconds_to_ms(&json!("soon")), None);
        assert_eq!(seconds_to_ms(&json!(null)), None);
        assert_eq!(seconds_to_ms(&json!({})), None);
    }

    #[test]
    fn error_code_as_string_or_int() {
        let e = error_detail(&json!({"code": 131047, "title": "Re-engagement message",
            "error_data": {"details": "more than 24 hours"}}));
        assert_eq!(e.code, 131047);
        assert!(e.is_window_closed());
        assert_eq!(e.details.as_deref(), Some("more than 24 hours"));
        let e = error_detail(&json!({"code": "131026", "details": "top-level details"}));
        assert_eq!(e.code, 131026);
        assert_eq!(e.details.as_deref(), Some("top-level details"));
        assert_eq!(error_detail(&json!({"code": "oops"})).code, 0);
        assert!(error_details(Some(&json!("not an array"))).is_empty());
    }

    #[test]
    fn jid_normalization() {
        assert_eq!(
            normalize_jid("11111111111@c.us"),
            "11111111111@s.whatsapp.net"
        );
        assert_eq!(normalize_jid("123:45@s.whatsapp.net"), "123@s.whatsapp.net");
        assert_eq!(
            normalize_jid("5491155554444.0:52@s.whatsapp.net"),
            "5491155554444@s.whatsapp.net"
        );
        assert_eq!(normalize_jid("4639135154355:3@lid"), "4639135154355@lid");
        assert_eq!(normalize_jid("120363402106@g.us"), "120363402106@g.us");
        assert_eq!(normalize_jid("status@broadcast"), "status@broadcast");
        assert_eq!(normalize_jid("no-at-sign"), "no-at-sign");
        assert!(is_phone_jid(&normalize_jid("1@c.us")));
        assert!(is_lid("1@lid"));
    }

    #[test]
    fn canonical_json_sorts_keys_and_hash_is_short_hex() {
        let a = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "é"}], "c": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":null,"d":[1,{"y":"é","z":0}]},"b":1}"#
        );
        let h = short_hash(&["x", "y"]);
        assert_eq!(h.len(), 32);
        assert_eq!(h, short_hash(&["xy"]));
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(short_hash(&["abc"]), "ba7816bf8f01cfea414140de5dae2223");
    }
}
