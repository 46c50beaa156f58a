//! Body encoding: postcard, then one zstd frame (level 19 for pushes, 9 otherwise).
//!
//! Why postcard: the payload is mostly opaque Automerge change bytes, so what
//! the format adds is framing, and postcard's framing is the smallest of the
//! serde formats (varint lengths and integers, a UUID as 17 bytes, no field
//! names, no type tags), with a stable, documented 1.0 wire specification and no `unsafe`
//! decoding of lengths it has not checked against the input. CBOR would spend
//! a byte or more per field on type tags; JSON would need base64 (+33%) on
//! every change. The price is that postcard is not self-describing: the shape
//! is fixed by [`super::wire`] and [`super::wire::PROTOCOL_VERSION`], and a
//! request's first field is its protocol version, which [`decode_push`] and
//! [`decode_pull`] read before anything else.
//!
//! Why one zstd stream over the whole body rather than per change: changes of
//! one batch share field names, actor ids and vocabulary, and compress to
//! about a quarter together (75 B per encounter against 304 B alone, see
//! sync-facts.md), provided the changes are raw (`Change::raw_bytes()`: the
//! edge's outbox keeps them so), not each deflated alone. Level 9: on 3,000
//! raw encounter changes of the fixtures, level 3 gave 89.5 B per encounter
//! in 5.5 ms, level 9 82.9 B in 20 ms, level 19 77.0 B in 607 ms (debug
//! test build, 2-core VM). Pushes use level 19 ([`PUSH_COMPRESSION_LEVEL`]):
//! they cross the slowest, costliest link (a month's batch was 102.6 B per
//! encounter at level 9 in the sync bench, against a 100 B target), an edge
//! compresses a batch once, and a few hundred milliseconds of a clinic box's
//! CPU per batch cost less than 7% more of a 2G uplink. Everything else (pull
//! pages the hub compresses for every site, small answers) uses level 9,
//! which takes most of level 19's gain for a fraction of the CPU.
//!
//! Decoding is bounded: the caller says how many bytes a body may inflate to,
//! and a body that would inflate past it is refused as
//! [`CodecError::TooLarge`] after reading at most one byte more than the
//! limit, so a small zip bomb costs the hub nothing. The decoder's window is
//! limited too ([`MAX_WINDOW_LOG`]), so a frame cannot ask for a large buffer.

use std::io::{self, Read};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{PROTOCOL_VERSION, PullRequest, PullResponse, PushRequest, PushResponse};

/// zstd level for every body but push requests.
pub const COMPRESSION_LEVEL: i32 = 9;

/// zstd level for push request bodies (see the module docs for why).
pub const PUSH_COMPRESSION_LEVEL: i32 = 19;

/// Largest decoder window accepted: 2^23 = 8 MiB. Level 19 never uses more
/// than that, and without a limit a crafted frame could make the decoder
/// allocate 128 MiB (zstd's default maximum) before yielding a byte.
pub const MAX_WINDOW_LOG: u32 = 23;

/// Errors of encoding or decoding a body.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The body would inflate past the caller's limit.
    #[error("body inflates past the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Not a valid zstd frame (truncated, corrupt, or a window too large).
    #[error("body is not valid zstd")]
    Decompress(#[source] io::Error),
    /// Valid zstd, but the content does not match the message shape.
    #[error("body does not decode as a {message}")]
    Deserialize {
        message: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// Bytes left over after the message: a different shape, or tampering.
    #[error("{extra} unexpected bytes after the {message}")]
    TrailingBytes { message: &'static str, extra: usize },
    /// The request speaks another version of the protocol.
    #[error("protocol version {found} is not supported (this side speaks {supported})")]
    UnsupportedProtocol { found: u16, supported: u16 },
    /// Serializing failed (only possible for a message postcard cannot
    /// represent, which none of ours is; kept so no caller has to unwrap).
    #[error("could not encode the {message}")]
    Serialize {
        message: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// Compressing failed (zstd out of memory).
    #[error("could not compress the body")]
    Compress(#[source] io::Error),
}

impl CodecError {
    /// Whether sending the same bytes again could succeed: never, a body
    /// that does not decode will not decode next time either.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        false
    }
}

/// Encode a push request body.
pub fn encode_push(req: &PushRequest) -> Result<Vec<u8>, CodecError> {
    encode_at(req, "push request", PUSH_COMPRESSION_LEVEL)
}

/// Decode a push request body, inflating to at most `max_decompressed` bytes.
pub fn decode_push(body: &[u8], max_decompressed: usize) -> Result<PushRequest, CodecError> {
    let raw = decompress(body, max_decompressed)?;
    check_protocol(&raw, "push request")?;
    decode(&raw, "push request")
}

/// Encode a push response body.
pub fn encode_push_response(resp: &PushResponse) -> Result<Vec<u8>, CodecError> {
    encode(resp, "push response")
}

/// Decode a push response body.
pub fn decode_push_response(body: &[u8], max_decompressed: usize) -> Result<PushResponse, CodecError> {
    decode(&decompress(body, max_decompressed)?, "push response")
}

/// Encode a pull request body.
pub fn encode_pull(req: &PullRequest) -> Result<Vec<u8>, CodecError> {
    encode(req, "pull request")
}

/// Decode a pull request body.
pub fn decode_pull(body: &[u8], max_decompressed: usize) -> Result<PullRequest, CodecError> {
    let raw = decompress(body, max_decompressed)?;
    check_protocol(&raw, "pull request")?;
    decode(&raw, "pull request")
}

/// Encode a pull response body.
pub fn encode_pull_response(resp: &PullResponse) -> Result<Vec<u8>, CodecError> {
    encode(resp, "pull response")
}

/// Decode a pull response body, inflating to at most `max_decompressed`
/// bytes (the edge sizes this from the `max_bytes` it asked for, plus room
/// for one oversized change).
pub fn decode_pull_response(body: &[u8], max_decompressed: usize) -> Result<PullResponse, CodecError> {
    decode(&decompress(body, max_decompressed)?, "pull response")
}

pub(crate) fn encode<T: Serialize>(msg: &T, message: &'static str) -> Result<Vec<u8>, CodecError> {
    encode_at(msg, message, COMPRESSION_LEVEL)
}

fn encode_at<T: Serialize>(msg: &T, message: &'static str, level: i32) -> Result<Vec<u8>, CodecError> {
    let raw = postcard::to_allocvec(msg).map_err(|source| CodecError::Serialize { message, source })?;
    zstd::bulk::compress(&raw, level).map_err(CodecError::Compress)
}

pub(crate) fn decode<T: DeserializeOwned>(raw: &[u8], message: &'static str) -> Result<T, CodecError> {
    let (msg, rest) = postcard::take_from_bytes(raw).map_err(|source| CodecError::Deserialize { message, source })?;
    if rest.is_empty() { Ok(msg) } else { Err(CodecError::TrailingBytes { message, extra: rest.len() }) }
}

/// Requests begin with their `u16` protocol version; read it alone first, so
/// a newer edge talking to an older hub gets "unsupported protocol" rather
/// than "malformed body".
pub(crate) fn check_protocol(raw: &[u8], message: &'static str) -> Result<(), CodecError> {
    let (found, _) =
        postcard::take_from_bytes::<u16>(raw).map_err(|source| CodecError::Deserialize { message, source })?;
    if found == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(CodecError::UnsupportedProtocol { found, supported: PROTOCOL_VERSION })
    }
}

/// Inflate `body`, refusing it once it passes `limit` bytes.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(CodecError::Decompress)?.single_frame();
    decoder.window_log_max(MAX_WINDOW_LOG).map_err(CodecError::Decompress)?;
    let mut out = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder.take(cap).read_to_end(&mut out).map_err(CodecError::Decompress)?;
    if out.len() > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, PatientId};
    use crate::sync::wire::{HubChange, OutboxChange};

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn push_request(n: usize, seed: u64) -> PushRequest {
        let patient = PatientId::new();
        PushRequest {
            protocol: PROTOCOL_VERSION,
            device_id: DeviceId::new(),
            batch: (0..n)
                .map(|i| OutboxChange {
                    seq: 100 + i as u64,
                    patient_id: patient,
                    change: noise(seed + i as u64, (i * 37) % 400),
                })
                .collect(),
            outbox_depth: n as u64 + 7,
        }
    }

    #[test]
    fn push_round_trips() {
        for seed in 0..20 {
            let req = push_request(seed as usize, seed);
            let body = encode_push(&req).expect("encode");
            assert_eq!(decode_push(&body, 1 << 20).expect("decode"), req);
        }
    }

    #[test]
    fn push_response_and_pull_round_trip() {
        let resp = PushResponse { acked_through: u64::MAX, applied: 3, duplicates: 0 };
        let body = encode_push_response(&resp).expect("encode");
        assert_eq!(decode_push_response(&body, 1024).expect("decode"), resp);

        let req =
            PullRequest { protocol: PROTOCOL_VERSION, device_id: DeviceId::new(), cursor: 42, max_bytes: 256 * 1024 };
        let body = encode_pull(&req).expect("encode");
        assert_eq!(decode_pull(&body, 1024).expect("decode"), req);

        let page = PullResponse {
            changes: (0..5)
                .map(|i| HubChange { hub_seq: 1000 + i, patient_id: PatientId::new(), change: noise(i, 300) })
                .collect(),
            next_cursor: 1010,
            more: true,
        };
        let body = encode_pull_response(&page).expect("encode");
        assert_eq!(decode_pull_response(&body, 1 << 20).expect("decode"), page);
    }

    #[test]
    fn framing_is_small() {
        // Empty changes: what is left is framing. A device id (16 bytes and
        // a length byte), a few varints, and per change a seq (2 bytes here),
        // a patient id (17) and a length (1).
        let mut req = push_request(100, 1);
        for c in &mut req.batch {
            c.change.clear();
        }
        let raw = postcard::to_allocvec(&req).expect("encode");
        assert!(raw.len() <= 1 + 17 + 1 + 100 * (2 + 17 + 1) + 1, "{}", raw.len());
    }

    #[test]
    fn a_zip_bomb_is_refused_without_inflating_it() {
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).expect("compress");
        assert!(bomb.len() < 8 * 1024, "bomb is {} bytes", bomb.len());
        let err = decode_push(&bomb, 1 << 20).expect_err("must refuse");
        assert!(matches!(err, CodecError::TooLarge { limit } if limit == 1 << 20));
    }

    #[test]
    fn the_limit_is_inclusive() {
        let req = push_request(10, 3);
        let body = encode_push(&req).expect("encode");
        let raw_len = postcard::to_allocvec(&req).expect("encode").len();
        assert_eq!(decode_push(&body, raw_len).expect("decode"), req);
        assert!(matches!(decode_push(&body, raw_len - 1), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn a_newer_protocol_is_named_as_such() {
        let mut req = push_request(2, 4);
        req.protocol = PROTOCOL_VERSION + 1;
        let body = encode_push(&req).expect("encode");
        assert!(matches!(
            decode_push(&body, 1 << 20),
            Err(CodecError::UnsupportedProtocol { found, supported })
                if found == PROTOCOL_VERSION + 1 && supported == PROTOCOL_VERSION
        ));
    }

    #[test]
    fn garbage_truncation_and_trailing_bytes_are_refused() {
        assert!(matches!(decode_push(b"not zstd at all", 1 << 20), Err(CodecError::Decompress(_))));

        let body = encode_push(&push_request(5, 5)).expect("encode");
        assert!(decode_push(&body[..body.len() / 2], 1 << 20).is_err());

        let mut raw = postcard::to_allocvec(&push_request(1, 6)).expect("encode");
        raw.push(0);
        let body = zstd::bulk::compress(&raw, 3).expect("compress");
        assert!(matches!(decode_push(&body, 1 << 20), Err(CodecError::TrailingBytes { extra: 1, .. })));

        // A pull request body is not a push request.
        let pull = encode_pull(&PullRequest {
            protocol: PROTOCOL_VERSION,
            device_id: DeviceId::new(),
            cursor: 1,
            max_bytes: 1,
        })
        .expect("encode");
        assert!(decode_push(&pull, 1 << 20).is_err());
    }

    #[test]
    fn random_bodies_never_panic() {
        for seed in 0..500 {
            let junk = noise(seed, (seed as usize * 7) % 300);
            let _ = decode_push(&junk, 1 << 16);
            let _ = decode_pull_response(&junk, 1 << 16);
            // Valid zstd around junk reaches the postcard decoder.
            let body = zstd::bulk::compress(&junk, 1).expect("compress");
            let _ = decode_push(&body, 1 << 16);
            let _ = decode_pull_response(&body, 1 << 16);
        }
    }
}
