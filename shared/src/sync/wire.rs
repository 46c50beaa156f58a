//! The messages edge and hub exchange, version 1.
//!
//! Field order is part of the wire format: bodies are postcard (see
//! [`super::codec`]), which writes fields in declaration order without names.
//! Never reorder, rename-with-retype or remove a field of a released version;
//! a change of shape is a new [`PROTOCOL_VERSION`]. Every request starts with
//! its `protocol` field so a receiver can read the version before anything
//! else and refuse what it does not speak (HTTP 400, code
//! [`codes::UNSUPPORTED_PROTOCOL`]).

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, PatientId};

/// The version of this message set. Sent first in every request.
pub const PROTOCOL_VERSION: u16 = 1;

/// `POST` path of a push. Versioned with the rest of the API.
pub const PUSH_PATH: &str = "/api/v1/sync/push";
/// `POST` path of a pull (a POST because the body is signed and compressed
/// like a push, and so that proxies never cache it).
pub const PULL_PATH: &str = "/api/v1/sync/pull";
/// Content type of request and response bodies: postcard inside zstd.
pub const CONTENT_TYPE: &str = "application/vnd.santerurale.sync.v1+zstd";

/// One entry of the edge's outbox: a single Automerge change, in the order
/// the edge made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxChange {
    /// The edge's outbox sequence: strictly increasing per device, never
    /// reused, never renumbered.
    pub seq: u64,
    /// The patient document the change belongs to.
    pub patient_id: PatientId,
    /// Automerge change bytes, as `Change::bytes()` or `raw_bytes()` gives
    /// them (both decode with `Change::from_bytes`).
    #[serde(with = "bytes")]
    pub change: Vec<u8>,
}

/// Edge to hub: the next batch of the outbox, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    pub protocol: u16,
    pub device_id: DeviceId,
    /// Contiguous, ascending by `seq`: the oldest pending entries.
    pub batch: Vec<OutboxChange>,
    /// Entries pending on the edge when this request was built, this batch
    /// included. The hub reports it as `sync_pending_operations{site}`.
    pub outbox_depth: u64,
}

/// Hub to edge, after the whole batch is durably stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// Highest `seq` of this device the hub has stored. The edge marks its
    /// entries up to here (within the batch it sent) as sent.
    pub acked_through: u64,
    /// Changes of this batch that were new to the hub.
    pub applied: u32,
    /// Changes of this batch the hub already had (same change hash): re-sent
    /// after a lost response, or already received through another site.
    pub duplicates: u32,
}

/// Edge to hub: "send me what I have not applied yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub protocol: u16,
    pub device_id: DeviceId,
    /// The last `next_cursor` the edge applied (0 for a fresh edge).
    pub cursor: u64,
    /// Budget for the change bytes of one page. The hub may exceed it only to
    /// send a single change that alone is bigger (otherwise the edge would be
    /// stuck behind it).
    pub max_bytes: u32,
}

/// One change of the hub's append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubChange {
    /// Position in the hub's log. Ascending within a page.
    pub hub_seq: u64,
    pub patient_id: PatientId,
    #[serde(with = "bytes")]
    pub change: Vec<u8>,
}

/// Hub to edge: one page of the log after `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    pub changes: Vec<HubChange>,
    /// The cursor to store once this page is applied (in the same
    /// transaction). It may be past the last change of the page: the hub
    /// skips entries for patients this site does not hold.
    pub next_cursor: u64,
    /// True when the edge should pull again right away.
    pub more: bool,
}

/// Body of every 4xx/5xx answer from the sync endpoints. Sent as plain JSON
/// (`application/json`), like every other API error, not through the codec:
/// an error must stay readable whatever went wrong with the protocol, and
/// the edge classifies a body that is no `ErrorBody` (a proxy's error page)
/// by its status alone ([`super::push::PushOutcome::from_failure`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable: one of [`codes`] (or an API-wide code).
    pub code: String,
    /// Human-readable, for the sync page. Never patient data.
    pub message: String,
    /// Whether the same request may succeed later unchanged.
    pub retryable: bool,
}

/// Stable error codes of the sync endpoints, for [`ErrorBody::code`].
pub mod codes {
    pub const UNSUPPORTED_PROTOCOL: &str = "unsupported_protocol";
    pub const MALFORMED_BODY: &str = "malformed_body";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const MISSING_HEADER: &str = "missing_signature_header";
    pub const MALFORMED_HEADER: &str = "malformed_signature_header";
    pub const BAD_SIGNATURE: &str = "bad_signature";
    pub const STALE_TIMESTAMP: &str = "stale_timestamp";
    pub const FUTURE_TIMESTAMP: &str = "future_timestamp";
    pub const REPLAYED_REQUEST: &str = "replayed_request";
    pub const UNKNOWN_DEVICE: &str = "unknown_device";
    pub const REVOKED_DEVICE: &str = "revoked_device";
    pub const INVALID_CHANGE: &str = "invalid_change";
    pub const OUT_OF_ORDER: &str = "out_of_order_batch";
}

/// Byte strings as one length-prefixed blob (serde's default for `Vec<u8>` is
/// a sequence of integers: same size in postcard, but copied byte by byte,
/// and a JSON dump of it would be four times larger).
mod bytes {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}
