//! Request signing: every sync request carries an ed25519 signature by the
//! device's key over what the request means.
//!
//! The signed message is, as UTF-8, lines joined by `\n`:
//!
//! ```text
//! santerurale-sync-v1
//! <device id, hyphenated lowercase UUID>
//! <METHOD>
//! <path and query, exactly as in the request line>
//! <timestamp, unix seconds, decimal>
//! <nonce, 16 bytes, base64url without padding>
//! <SHA-256 of the body as sent (compressed), lowercase hex>
//! ```
//!
//! The first line separates these signatures from anything else the key
//! might ever sign; the device id binds the signature to the header that
//! picks the verifying key. The body hash covers the compressed bytes, so the
//! hub verifies before it spends anything on inflating.
//!
//! This module checks the signature and the clock ([`verify`]). Replay
//! protection needs memory and is the hub's job: it must keep every
//! `(device, nonce)` it accepted for at least `2 * max_skew_secs` and refuse
//! a second use with [`super::wire::codes::REPLAYED_REQUEST`]; the timestamp
//! window is what lets it forget older nonces.
//!
//! Randomness stays with the caller: keys come from 32-byte seeds
//! ([`SigningKey::from_bytes`]) and nonces are passed in, so this crate needs
//! no RNG and tests are deterministic.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::ids::DeviceId;

/// First line of every signed message.
pub const DOMAIN: &str = "santerurale-sync-v1";
/// Header carrying the device id (hyphenated UUID).
pub const HEADER_DEVICE: &str = "x-sr-device";
/// Header carrying the timestamp (unix seconds, decimal).
pub const HEADER_TIMESTAMP: &str = "x-sr-timestamp";
/// Header carrying the nonce (16 bytes, base64url without padding).
pub const HEADER_NONCE: &str = "x-sr-nonce";
/// Header carrying the signature (64 bytes, base64url without padding).
pub const HEADER_SIGNATURE: &str = "x-sr-signature";
/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 16;
/// A sensible default for [`verify`]'s `max_skew_secs`: clinic boxes without
/// NTP drift, and a 2G request can take a minute to arrive.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 300;

/// The four signature headers of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub device_id: DeviceId,
    pub timestamp: i64,
    pub nonce: [u8; NONCE_LEN],
    pub signature: Signature,
}

/// Why a request's signature headers were refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {header} is malformed: {reason}")]
    MalformedHeader { header: &'static str, reason: &'static str },
    #[error("signature does not match the request")]
    BadSignature(#[source] ed25519_dalek::SignatureError),
    #[error("request timestamp {timestamp} is more than {max_skew_secs} s before now ({now})")]
    Stale { timestamp: i64, now: i64, max_skew_secs: u64 },
    #[error("request timestamp {timestamp} is more than {max_skew_secs} s after now ({now})")]
    FromTheFuture { timestamp: i64, now: i64, max_skew_secs: u64 },
}

impl SignatureError {
    /// The stable code for [`super::wire::ErrorBody::code`].
    #[must_use]
    pub const fn code(&self) -> &'static str {
        use super::wire::codes;
        match self {
            Self::MissingHeader(_) => codes::MISSING_HEADER,
            Self::MalformedHeader { .. } => codes::MALFORMED_HEADER,
            Self::BadSignature(_) => codes::BAD_SIGNATURE,
            Self::Stale { .. } => codes::STALE_TIMESTAMP,
            Self::FromTheFuture { .. } => codes::FUTURE_TIMESTAMP,
        }
    }

    /// Whether the same request could pass later: no. A clock error needs the
    /// edge's clock fixed (show it on the sync page); it then signs anew.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// The exact bytes that are signed. Public so the hub can log a digest of
/// it when debugging a mismatch; nobody should need to build it by hand.
#[must_use]
pub fn signed_message(
    device_id: DeviceId,
    method: &str,
    path: &str,
    timestamp: i64,
    nonce: &[u8; NONCE_LEN],
    body: &[u8],
) -> Vec<u8> {
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(body) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    format!("{DOMAIN}\n{device_id}\n{method}\n{path}\n{timestamp}\n{}\n{hex}", URL_SAFE_NO_PAD.encode(nonce))
        .into_bytes()
}

/// Sign a request. `path` includes the query string, if any, exactly as
/// sent; `body` is the body as sent (compressed).
#[must_use]
pub fn sign(
    key: &SigningKey,
    device_id: DeviceId,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    nonce: [u8; NONCE_LEN],
) -> SignedHeaders {
    let msg = signed_message(device_id, method, path, timestamp, &nonce, body);
    SignedHeaders { device_id, timestamp, nonce, signature: key.sign(&msg) }
}

/// Check a request's signature and timestamp against the device's key.
///
/// The clock is checked first, because it costs nothing; then the signature,
/// with ed25519's strict verification (no malleable or small-order forms).
/// `now` and the timestamp are unix seconds. This does not detect replays:
/// see the module docs.
pub fn verify(
    key: &VerifyingKey,
    headers: &SignedHeaders,
    method: &str,
    path: &str,
    body: &[u8],
    now: i64,
    max_skew_secs: u64,
) -> Result<(), SignatureError> {
    let skew = i64::try_from(max_skew_secs).unwrap_or(i64::MAX);
    if headers.timestamp < now.saturating_sub(skew) {
        return Err(SignatureError::Stale { timestamp: headers.timestamp, now, max_skew_secs });
    }
    if headers.timestamp > now.saturating_add(skew) {
        return Err(SignatureError::FromTheFuture { timestamp: headers.timestamp, now, max_skew_secs });
    }
    let msg = signed_message(headers.device_id, method, path, headers.timestamp, &headers.nonce, body);
    key.verify_strict(&msg, &headers.signature).map_err(SignatureError::BadSignature)
}

impl SignedHeaders {
    /// The four `(name, value)` pairs to add to the request.
    #[must_use]
    pub fn to_pairs(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_DEVICE, self.device_id.to_string()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_NONCE, URL_SAFE_NO_PAD.encode(self.nonce)),
            (HEADER_SIGNATURE, URL_SAFE_NO_PAD.encode(self.signature.to_bytes())),
        ]
    }

    /// Read the headers through `get` (for axum:
    /// `|name| headers.get(name).and_then(|v| v.to_str().ok())`).
    pub fn from_headers<'a>(get: impl Fn(&'static str) -> Option<&'a str>) -> Result<Self, SignatureError> {
        let field = |name| get(name).ok_or(SignatureError::MissingHeader(name));
        let malformed = |header, reason| SignatureError::MalformedHeader { header, reason };

        let device_id = field(HEADER_DEVICE)?.parse().map_err(|_| malformed(HEADER_DEVICE, "not a UUID"))?;
        let timestamp = field(HEADER_TIMESTAMP)?
            .parse()
            .map_err(|_| malformed(HEADER_TIMESTAMP, "not an integer number of seconds"))?;
        let nonce = decode_fixed::<NONCE_LEN>(field(HEADER_NONCE)?)
            .ok_or_else(|| malformed(HEADER_NONCE, "not 16 bytes of base64url"))?;
        let signature = decode_fixed::<64>(field(HEADER_SIGNATURE)?)
            .ok_or_else(|| malformed(HEADER_SIGNATURE, "not 64 bytes of base64url"))?;
        Ok(Self { device_id, timestamp, nonce, signature: Signature::from_bytes(&signature) })
    }
}

fn decode_fixed<const N: usize>(s: &str) -> Option<[u8; N]> {
    // Bound the work before decoding: base64 of N bytes is at most 4N/3 + 3.
    if s.len() > N * 4 / 3 + 3 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(s.trim()).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const NOW: i64 = 1_780_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn signed(body: &[u8]) -> (SigningKey, SignedHeaders) {
        let k = key(7);
        let h = sign(&k, DeviceId::new(), "POST", "/api/v1/sync/push", body, NOW, [3; 16]);
        (k, h)
    }

    fn check(k: &SigningKey, h: &SignedHeaders, method: &str, path: &str, body: &[u8]) -> Result<(), SignatureError> {
        verify(&k.verifying_key(), h, method, path, body, NOW + 10, 300)
    }

    #[test]
    fn a_signed_request_verifies() {
        let (k, h) = signed(b"body");
        check(&k, &h, "POST", "/api/v1/sync/push", b"body").expect("valid");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let (k, h) = signed(b"body");
        let bad = |r: Result<(), SignatureError>| matches!(r, Err(SignatureError::BadSignature(_)));
        assert!(bad(check(&k, &h, "POST", "/api/v1/sync/push", b"bodz")));
        assert!(bad(check(&k, &h, "POST", "/api/v1/sync/push", b"")));
        assert!(bad(check(&k, &h, "POST", "/api/v1/sync/pull", b"body")));
        assert!(bad(check(&k, &h, "PUT", "/api/v1/sync/push", b"body")));
        assert!(bad(check(&key(8), &h, "POST", "/api/v1/sync/push", b"body")));

        let mut t = h.clone();
        t.timestamp += 1;
        assert!(bad(check(&k, &t, "POST", "/api/v1/sync/push", b"body")));
        let mut t = h.clone();
        t.nonce[15] ^= 1;
        assert!(bad(check(&k, &t, "POST", "/api/v1/sync/push", b"body")));
        let mut t = h.clone();
        t.device_id = DeviceId::new();
        assert!(bad(check(&k, &t, "POST", "/api/v1/sync/push", b"body")));
        let mut t = h;
        let mut sig = t.signature.to_bytes();
        sig[0] ^= 0x80;
        t.signature = Signature::from_bytes(&sig);
        assert!(bad(check(&k, &t, "POST", "/api/v1/sync/push", b"body")));
    }

    #[test]
    fn timestamps_outside_the_window_are_refused_before_the_signature() {
        let (k, h) = signed(b"body");
        let vk = k.verifying_key();
        let path = "/api/v1/sync/push";
        assert!(verify(&vk, &h, "POST", path, b"body", NOW + 300, 300).is_ok());
        assert!(verify(&vk, &h, "POST", path, b"body", NOW - 300, 300).is_ok());
        assert!(matches!(verify(&vk, &h, "POST", path, b"body", NOW + 301, 300), Err(SignatureError::Stale { .. })));
        assert!(matches!(
            verify(&vk, &h, "POST", path, b"body", NOW - 301, 300),
            Err(SignatureError::FromTheFuture { .. })
        ));
        // Even a forged signature reports the clock first: cheaper for the hub.
        assert!(matches!(
            verify(&key(9).verifying_key(), &h, "POST", path, b"tampered", NOW + 9999, 300),
            Err(SignatureError::Stale { .. })
        ));
        // Extreme values do not overflow.
        assert!(verify(&vk, &h, "POST", path, b"body", i64::MAX, 300).is_err());
        assert!(verify(&vk, &h, "POST", path, b"body", i64::MIN, 300).is_err());
        // An unbounded skew accepts any time; only the signature counts.
        assert!(verify(&vk, &h, "POST", path, b"body", i64::MAX, u64::MAX).is_ok());
    }

    #[test]
    fn headers_round_trip_through_text() {
        let (k, h) = signed(b"body");
        let map: HashMap<&str, String> = h.to_pairs().into_iter().collect();
        let back = SignedHeaders::from_headers(|n| map.get(n).map(String::as_str)).expect("parse");
        assert_eq!(back, h);
        check(&k, &back, "POST", "/api/v1/sync/push", b"body").expect("valid");
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let (_, h) = signed(b"body");
        let pairs: HashMap<&str, String> = h.to_pairs().into_iter().collect();
        for name in [HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE] {
            let mut m = pairs.clone();
            m.remove(name);
            let err = SignedHeaders::from_headers(|n| m.get(n).map(String::as_str)).expect_err("missing");
            assert!(matches!(err, SignatureError::MissingHeader(n) if n == name));
            assert_eq!(err.code(), "missing_signature_header");

            for junk in ["", "x", "!!!!", &"A".repeat(500)] {
                let mut m = pairs.clone();
                m.insert(name, junk.to_owned());
                let err = SignedHeaders::from_headers(|n| m.get(n).map(String::as_str)).expect_err("malformed");
                assert!(
                    matches!(err, SignatureError::MalformedHeader { header, .. } if header == name),
                    "{name}={junk}: {err}"
                );
            }
        }
        // A nonce of the wrong length is malformed, not truncated or padded.
        let mut m = pairs;
        m.insert(HEADER_NONCE, URL_SAFE_NO_PAD.encode([1u8; 15]));
        assert!(SignedHeaders::from_headers(|n| m.get(n).map(String::as_str)).is_err());
    }

    #[test]
    fn the_message_is_stable() {
        // Edge and hub may run different builds: the exact text is a contract.
        let device: DeviceId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().expect("uuid");
        let msg = signed_message(device, "POST", "/api/v1/sync/push", 1_700_000_000, &[0; 16], b"");
        assert_eq!(
            String::from_utf8(msg).expect("utf8"),
            "santerurale-sync-v1\n01890a5d-ac96-774b-bcce-b302099a8057\nPOST\n/api/v1/sync/push\n\
             1700000000\nAAAAAAAAAAAAAAAAAAAAAA\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn seeded_sign_verify_loop() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..64 {
            let k = SigningKey::from_bytes(&next().to_le_bytes().repeat(4).try_into().expect("32"));
            let body: Vec<u8> = (0..next() % 200).map(|_| next().to_le_bytes()[0]).collect();
            let nonce: [u8; 16] = [next().to_le_bytes(), next().to_le_bytes()].concat().try_into().expect("16");
            let ts = NOW + (next() % 1000) as i64 - 500;
            let h = sign(&k, DeviceId::new(), "POST", "/p?q=1", &body, ts, nonce);
            verify(&k.verifying_key(), &h, "POST", "/p?q=1", &body, NOW, 600).expect("valid");
            let mut tampered = body.clone();
            tampered.push(0);
            assert!(verify(&k.verifying_key(), &h, "POST", "/p?q=1", &tampered, NOW, 600).is_err());
        }
    }
}
