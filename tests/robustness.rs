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
        let original: Value = serde_json::from_slice(&body).unwrap();
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
