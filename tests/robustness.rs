//! Bad input gets an error, never a panic: every fixture, mangled many ways, goes through the
//! parsers. (Deterministic: a fixed-seed generator, so a failure reproduces.)

use coexist::wire::parse_any;
use serde_json::Value;
use std::path::Path;

/// xorshift64*: small, fixed-seed, good enough to pick mutation points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut out = Vec::new();
    for dir in ["meta", "personal"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(out.len() >= 40);
    out
}

/// Byte-level damage: truncation, flipped bytes, inserted junk, invalid UTF-8.
#[test]
fn damaged_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    for (name, body) in fixtures() {
        for _ in 0..150 {
            let mut b = body.clone();
            match rng.below(4) {
                0 => b.truncate(rng.below(b.len())),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(b.len());
                        b[i] = rng.next() as u8;
                    }
                }
                2 => {
                    let i = rng.below(b.len());
                    let junk: &[u8] =
                        [&b"{"[..], b"]", b"\"", b"\\u", b"\xff\xfe", b",,", b"null"][rng.below(7)];
                    b.splice(i..i, junk.iter().copied());
                }
                _ => {
                    let i = rng.below(b.len());
                    b.insert(i, 0xc3); // a lone UTF-8 lead byte
                }
            }
            let outcome = std::panic::catch_unwind(|| parse_any(&b));
            assert!(
                outcome.is_ok(),
                "{name}: parser panicked on damaged bytes {:?}",
                String::from_utf8_lossy(&b)
            );
            errors += usize::from(outcome.unwrap().is_err());
        }
    }
    assert!(
        errors > 0,
        "damage is detected as errors, not silently accepted every time"
    );
}

/// Well-formed JSON of the wrong shape: every value swapped for another type, arrays emptied,
/// objects nulled. The parsers must keep going (unknown shapes are kept raw) or refuse cleanly.
#[test]
fn values_of_the_wrong_type_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for (name, body) in fixtures() {
        let original: Value = coexist::wire::util::parse_json(&body).unwrap();
        for _ in 0..100 {
            let mut v = original.clone();
            mangle(&mut v, &mut rng);
            let bytes = serde_json::to_vec(&v).unwrap();
            let outcome = std::panic::catch_unwind(|| parse_any(&bytes));
            assert!(
                outcome.is_ok(),
                "{name}: parser panicked on {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

fn mangle(v: &mut Value, rng: &mut Rng) {
    // Walk the tree and replace about one node in eight.
    if rng.below(8) == 0 {
        *v = match rng.below(7) {
            0 => Value::Null,
            1 => Value::Bool(true),
            2 => Value::from(-1i64),
            3 => Value::from(1e308),
            4 => Value::from("\u{0}\u{ffff}é"),
            5 => Value::Array(vec![Value::Null]),
            _ => Value::Object(Default::default()),
        };
        return;
    }
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| mangle(i, rng)),
        Value::Object(map) => map.values_mut().for_each(|i| mangle(i, rng)),
        _ => {}
    }
}

/// Numbers that are absurd or of the wrong type: each row says what becomes of it — a 400
/// (a parse error), or an event whose field is read leniently and whose raw JSON keeps the
/// value as sent. An absurd timestamp never becomes the window's time (`event_time` falls back
/// to the arrival time).
#[test]
fn absurd_numbers_table() {
    use coexist::conversation::window::event_time;
    use serde_json::json;
    let base: Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/meta/location.json"
        ))
        .unwrap(),
    )
    .unwrap();
    const MSG: &str = "/entry/0/changes/0/value/messages/0";
    const ARRIVED: i64 = 1_750_100_090_000;
    const OWN: i64 = 1_750_100_085_000;
    // (field under the message (or absolute), value, the time the window uses, check)
    type Check = fn(&coexist::Event) -> bool;
    let rows: Vec<(&str, Value, i64, Check)> = vec![
        ("/timestamp", json!("17501000850000000000"), ARRIVED, |_| {
            true
        }),
        (
            "/timestamp",
            json!(17_501_000_850_000_000_000u64),
            ARRIVED,
            |_| true,
        ),
        ("/timestamp", json!(1e300), ARRIVED, |_| true),
        ("/timestamp", json!("-5"), ARRIVED, |_| true),
        ("/timestamp", json!(-1_750_100_085i64), ARRIVED, |_| true),
        ("/timestamp", json!("abc"), ARRIVED, |e| e.at == 0),
        ("/timestamp", json!({"seconds": 1}), ARRIVED, |e| e.at == 0),
        ("/timestamp", json!(1_750_100_085.75), OWN, |e| e.at == OWN),
        ("/timestamp", json!("1750100085"), OWN, |e| e.at == OWN),
        // A timestamp a minute in the future: within the skew, believed.
        (
            "/timestamp",
            json!(1_750_100_150),
            1_750_100_150_000,
            |_| true,
        ),
        ("/location/latitude", json!(-1000.5), OWN, |e| {
            e.raw.pointer("/location/latitude") == Some(&json!(-1000.5))
        }),
        ("/location/longitude", json!("west"), OWN, |e| {
            e.raw.pointer("/location/longitude") == Some(&json!("west"))
        }),
        ("/id", json!(12345), OWN, |e| {
            e.message.as_ref().is_some_and(|m| m.id == "12345")
        }),
        ("/type", json!(7), OWN, |e| {
            e.message.as_ref().is_some_and(|m| m.kind == "unknown") && e.raw["type"] == json!(7)
        }),
    ];
    for (field, value, window_time, check) in rows {
        let mut body = base.clone();
        *body.pointer_mut(&format!("{MSG}{field}")).unwrap() = value.clone();
        let bytes = serde_json::to_vec(&body).unwrap();
        let (_, events) = parse_any(&bytes).unwrap_or_else(|e| panic!("{field}={value}: {e}"));
        assert_eq!(events.len(), 1, "{field}={value}");
        let mut e = events.into_iter().next().unwrap();
        assert!(check(&e), "{field}={value}: {e:?}");
        e.received_at = Some(ARRIVED);
        assert_eq!(event_time(&e, ARRIVED + 1), window_time, "{field}={value}");
    }
    // A number JSON itself cannot hold: the whole body is refused (400), naming where.
    let mut text = serde_json::to_string(&base).unwrap();
    text = text.replacen("\"1750100085\"", "1e400", 1);
    let err = parse_any(text.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("number out of range"), "{err}");
}
