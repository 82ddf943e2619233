//! Webhook signatures: HMAC over the exact raw body, compared in constant time.
//!
//! Meta signs with HMAC-SHA256 (`X-Hub-Signature-256: sha256=<hex>`), WAHA with HMAC-SHA512
//! (`X-Webhook-Hmac: <hex>`). Several secrets may be valid at once (rotation). No I/O here.

use crate::config::Secret;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// Why a signature was refused. `Missing` → 401, the others → 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed")]
    Malformed,
    #[error("signature does not match any configured secret")]
    Mismatch,
    #[error("no secret configured to verify this webhook")]
    NoSecret,
}

/// Hex HMAC of `body` with `secret`.
pub fn sign_hex(algorithm: Algorithm, secret: &[u8], body: &[u8]) -> String {
    match algorithm {
        Algorithm::Sha256 => {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Algorithm::Sha512 => {
            let mut mac =
                Hmac::<Sha512>::new_from_slice(secret).expect("HMAC takes any key length");
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
    }
}

/// The header value a sender puts on `body`: `sha256=<hex>` for Meta, bare hex for WAHA's sha512.
pub fn header_value(algorithm: Algorithm, secret: &[u8], body: &[u8]) -> String {
    match algorithm {
        Algorithm::Sha256 => format!("sha256={}", sign_hex(algorithm, secret, body)),
        Algorithm::Sha512 => sign_hex(algorithm, secret, body),
    }
}

/// Verifies a Meta `X-Hub-Signature-256` header value against every secret.
pub fn verify_meta(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_part = header
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    verify_hex(Algorithm::Sha256, hex_part, body, secrets)
}

/// Verifies a WAHA `X-Webhook-Hmac` header value (hex HMAC-SHA512) against every secret.
/// An `X-Webhook-Hmac-Algorithm` other than sha512 is refused rather than guessed.
pub fn verify_waha(
    header: Option<&[u8]>,
    algorithm_header: Option<&[u8]>,
    body: &[u8],
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let algorithm = match algorithm_header {
        None => Algorithm::Sha512,
        Some(a) => std::str::from_utf8(a)
            .ok()
            .and_then(Algorithm::parse)
            .ok_or(SignatureError::Malformed)?,
    };
    verify_hex(algorithm, header, body, secrets)
}

fn verify_hex(
    algorithm: Algorithm,
    hex_sig: &[u8],
    body: &[u8],
    secrets: &[Secret],
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let expected_len = match algorithm {
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
    };
    let mut sig = [0u8; 64];
    let sig = &mut sig[..expected_len];
    hex::decode_to_slice(trim_ascii(hex_sig), sig).map_err(|_| SignatureError::Malformed)?;
    // Every secret is tried (no early exit on which one matched) and each compare is
    // constant time (`verify_slice`), so timing says nothing about the secrets.
    let mut ok = false;
    for secret in secrets {
        ok |= match algorithm {
            Algorithm::Sha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                    .expect("any key length");
                mac.update(body);
                mac.verify_slice(sig).is_ok()
            }
            Algorithm::Sha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(secret.expose().as_bytes())
                    .expect("any key length");
                mac.update(body);
                mac.verify_slice(sig).is_ok()
            }
        };
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Constant-time equality for short tokens (the Meta verify token).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(s: &[&str]) -> Vec<Secret> {
        s.iter().map(|x| Secret::new(*x)).collect()
    }

    #[test]
    fn waha_known_answer() {
        // Test vector from the WAHA docs, re-verified with openssl (shared/spec/personal-gateways.md).
        let body = br#"{"event":"message","session":"default","engine":"WEBJS"}"#;
        let sig = "208f8a55dde9e05519e898b10b89bf0d0b3b0fdf11fdbf09b6b90476301b98d8097c462b2b17a6ce93b6b47a136cf2e78a33a63f6752c2c1631777076153fa89";
        assert_eq!(sign_hex(Algorithm::Sha512, b"my-secret-key", body), sig);
        assert_eq!(
            verify_waha(
                Some(sig.as_bytes()),
                Some(b"sha512"),
                body,
                &secrets(&["my-secret-key"])
            ),
            Ok(())
        );
    }

    #[test]
    fn meta_round_trip_and_rotation() {
        let body = br#"{"text":"caf\u00e9 \/ ok"}"#;
        let header = header_value(Algorithm::Sha256, b"old", body);
        assert!(header.starts_with("sha256="));
        assert_eq!(
            verify_meta(Some(header.as_bytes()), body, &secrets(&["new", "old"])),
            Ok(())
        );
        assert_eq!(
            verify_meta(Some(header.as_bytes()), body, &secrets(&["new"])),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn escaped_and_decoded_bodies_sign_differently() {
        // Meta signs the escaped bytes; re-serializing the parsed JSON would break the check.
        let escaped = br#"{"t":"caf\u00e9"}"#;
        let decoded = "{\"t\":\"café\"}".as_bytes();
        let header = header_value(Algorithm::Sha256, b"k", escaped);
        assert_eq!(
            verify_meta(Some(header.as_bytes()), escaped, &secrets(&["k"])),
            Ok(())
        );
        assert_eq!(
            verify_meta(Some(header.as_bytes()), decoded, &secrets(&["k"])),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn refusals() {
        let body = b"{}";
        let s = secrets(&["k"]);
        assert_eq!(verify_meta(None, body, &s), Err(SignatureError::Missing));
        assert_eq!(
            verify_meta(Some(b"md5=abc"), body, &s),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_meta(Some(b"sha256=zz"), body, &s),
            Err(SignatureError::Malformed)
        );
        let good = header_value(Algorithm::Sha256, b"k", body);
        assert_eq!(
            verify_meta(Some(good.as_bytes()), b"{ }", &s),
            Err(SignatureError::Mismatch),
            "tampered body"
        );
        assert_eq!(
            verify_meta(Some(good.as_bytes()), body, &[]),
            Err(SignatureError::NoSecret)
        );
        let waha = header_value(Algorithm::Sha512, b"k", body);
        assert_eq!(
            verify_waha(Some(waha.as_bytes()), Some(b"md5"), body, &s),
            Err(SignatureError::Malformed)
        );
        assert_eq!(verify_waha(Some(waha.as_bytes()), None, body, &s), Ok(()));
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
