//! Signature headers: `X-Hub-Signature-256` (Meta) and `X-Webhook-Hmac` +
//! `X-Webhook-Hmac-Algorithm` (WAHA), with arbitrary header bytes and body.
//!
//! Input: `flags | header \n algorithm-header \n body`. Flags bit 0: WAHA (else Meta); bit 1:
//! the signature header is absent; bit 2: the algorithm header is absent; bit 3: no secret.
//! Besides "never panics", two properties: a header the sender would compute always verifies,
//! and anything that verifies decodes to the real HMAC (no forgery through odd bytes).
use coexist::config::Secret;
use coexist::verify::{header_value, sign_hex, verify_meta, verify_waha, Algorithm};

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn main() {
    let all = vec![
        Secret::new("fuzz-secret-one"),
        Secret::new("rotated-secret"),
    ];
    afl::fuzz!(|data: &[u8]| {
        let Some((&flags, rest)) = data.split_first() else {
            return;
        };
        let (header, rest) = split(rest);
        let (algorithm, body) = split(rest);
        let header_opt = (flags & 2 == 0).then_some(header);
        let algorithm_opt = (flags & 4 == 0).then_some(algorithm);
        let secrets: &[Secret] = if flags & 8 == 0 { &all } else { &[] };
        let result = if flags & 1 == 0 {
            verify_meta(header_opt, body, secrets)
        } else {
            verify_waha(header_opt, algorithm_opt, body, secrets)
        };
        if result.is_ok() {
            // Only the real HMAC of one of the secrets may verify.
            let algo = if flags & 1 == 0 {
                Algorithm::Sha256
            } else {
                algorithm_opt
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .and_then(Algorithm::parse)
                    .unwrap_or(Algorithm::Sha512)
            };
            let given = header_opt.unwrap();
            let given = if flags & 1 == 0 { &given[7..] } else { given };
            let given = String::from_utf8_lossy(given).trim().to_ascii_lowercase();
            assert!(
                secrets
                    .iter()
                    .any(|s| sign_hex(algo, s.expose().as_bytes(), body) == given),
                "verified a header that is no secret's HMAC: {:?}",
                String::from_utf8_lossy(header)
            );
        }
        // What a sender computes verifies, for any body.
        let good = header_value(Algorithm::Sha256, b"rotated-secret", body);
        assert_eq!(verify_meta(Some(good.as_bytes()), body, &all), Ok(()));
        let good = header_value(Algorithm::Sha512, b"fuzz-secret-one", body);
        assert_eq!(verify_waha(Some(good.as_bytes()), None, body, &all), Ok(()));
    });
}
