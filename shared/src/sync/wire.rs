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
/// `POST` path of a cross-site lookup: find a patient registered elsewhere
/// by exact phone or patient id (see [`LookupRequest`]).
pub const LOOKUP_PATH: &str = "/api/v1/sync/lookup";
/// `POST` path of a cross-site fetch: start holding a patient and receive
/// its whole history (see [`FetchRequest`]).
pub const FETCH_PATH: &str = "/api/v1/sync/fetch";
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

/// What a cross-site lookup searches by. Deliberately exact and never by
/// name: a clinic learns about another clinic's patient only when it already
/// knows the patient's phone number or id (the patient is in front of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupQuery {
    /// A phone number in E.164 (`+22376123456`), normalised by the edge
    /// with its own default country ([`crate::Phone::parse`]).
    Phone(String),
    /// A patient id (as printed on a patient's card).
    Patient(PatientId),
}

/// Edge to hub: "who is this patient?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    pub protocol: u16,
    pub device_id: DeviceId,
    pub query: LookupQuery,
}

/// What a lookup tells about one patient: enough for a clinic worker to
/// recognise the person in front of them, nothing more (no phone, no
/// national id, no encounters: those come with the fetch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientSummary {
    pub patient_id: PatientId,
    pub given_name: String,
    pub family_name: String,
    pub sex: crate::Sex,
    pub birth_date: time::Date,
    pub birth_date_estimated: bool,
    pub village: String,
    /// The site that registered the patient.
    pub site_name: String,
    pub site_code: String,
    /// Whether the asking device's site already holds the patient (its
    /// changes then reach the site through the normal pull).
    pub held_by_your_site: bool,
}

/// Hub to edge: at most a few matches, newest registration first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    pub patients: Vec<PatientSummary>,
}

/// Edge to hub: "my site now holds this patient; send me its history".
/// Paged like a pull, within the one patient's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub protocol: u16,
    pub device_id: DeviceId,
    pub patient_id: PatientId,
    /// The last `hub_seq` of this patient already received in this fetch
    /// (0 for the first page).
    pub after: u64,
    /// Budget for the change bytes of one page, as in [`PullRequest`].
    pub max_bytes: u32,
}

/// Hub to edge: the patient's changes after `after`, in `hub_seq` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    pub changes: Vec<HubChange>,
    /// True when the page was cut: fetch again with `after` = the last
    /// `hub_seq` of this page.
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
    /// The outbox seq of the one change that made the hub refuse a push
    /// ([`codes::CHANGE_REFUSED`], [`codes::INVALID_CHANGE`]). Added after
    /// version 1 shipped: it is optional and left out when absent, so either
    /// side reads the other's bodies (this body is JSON, named fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
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
    /// A change that decodes but cannot be taken (it names another patient
    /// than its document's, or it does not apply to that document). The
    /// batch is refused whole; [`super::ErrorBody::seq`] names the change.
    /// Sending it again will not help: an operator must look at it.
    pub const CHANGE_REFUSED: &str = "change_refused";
    /// A lookup query that is neither an E.164 phone number nor usable.
    pub const INVALID_QUERY: &str = "invalid_query";
    /// A fetch of a patient the hub has no change of.
    pub const UNKNOWN_PATIENT: &str = "unknown_patient";
}

/// Bodies of the lookup and fetch messages, in the same codec as push and
/// pull (postcard in one zstd frame; requests checked for their protocol
/// version first; decoding bounded by the caller's limit).
pub mod bodies {
    use serde::de::DeserializeOwned;

    use super::{FetchRequest, FetchResponse, LookupRequest, LookupResponse};
    use crate::sync::codec::{CodecError, check_protocol, decode, decompress, encode};

    pub fn encode_lookup(req: &LookupRequest) -> Result<Vec<u8>, CodecError> {
        encode(req, "lookup request")
    }

    pub fn decode_lookup(body: &[u8], max_decompressed: usize) -> Result<LookupRequest, CodecError> {
        decode_request(body, max_decompressed, "lookup request")
    }

    pub fn encode_lookup_response(resp: &LookupResponse) -> Result<Vec<u8>, CodecError> {
        encode(resp, "lookup response")
    }

    pub fn decode_lookup_response(body: &[u8], max_decompressed: usize) -> Result<LookupResponse, CodecError> {
        decode(&decompress(body, max_decompressed)?, "lookup response")
    }

    pub fn encode_fetch(req: &FetchRequest) -> Result<Vec<u8>, CodecError> {
        encode(req, "fetch request")
    }

    pub fn decode_fetch(body: &[u8], max_decompressed: usize) -> Result<FetchRequest, CodecError> {
        decode_request(body, max_decompressed, "fetch request")
    }

    pub fn encode_fetch_response(resp: &FetchResponse) -> Result<Vec<u8>, CodecError> {
        encode(resp, "fetch response")
    }

    pub fn decode_fetch_response(body: &[u8], max_decompressed: usize) -> Result<FetchResponse, CodecError> {
        decode(&decompress(body, max_decompressed)?, "fetch response")
    }

    /// A request: its leading protocol version is checked first, so an
    /// edge speaking another version hears "unsupported protocol".
    fn decode_request<T: DeserializeOwned>(body: &[u8], limit: usize, message: &'static str) -> Result<T, CodecError> {
        let raw = decompress(body, limit)?;
        check_protocol(&raw, message)?;
        decode(&raw, message)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::ids::{DeviceId, PatientId};
        use crate::sync::wire::{HubChange, LookupQuery, PROTOCOL_VERSION, PatientSummary};

        #[test]
        fn lookup_and_fetch_round_trip() {
            let device_id = DeviceId::new();
            for query in [LookupQuery::Phone("+22376123456".into()), LookupQuery::Patient(PatientId::new())] {
                let req = LookupRequest { protocol: PROTOCOL_VERSION, device_id, query };
                assert_eq!(decode_lookup(&encode_lookup(&req).expect("encode"), 1024).expect("decode"), req);
            }
            let summary = PatientSummary {
                patient_id: PatientId::new(),
                given_name: "Awa".into(),
                family_name: "Traoré".into(),
                sex: crate::Sex::Female,
                birth_date: time::macros::date!(1990 - 03 - 14),
                birth_date_estimated: true,
                village: "Kati".into(),
                site_name: "CSCom Kati".into(),
                site_code: "KATI".into(),
                held_by_your_site: false,
            };
            let resp = LookupResponse { patients: vec![summary.clone(), summary] };
            let body = encode_lookup_response(&resp).expect("encode");
            assert_eq!(decode_lookup_response(&body, 4096).expect("decode"), resp);

            let req = FetchRequest {
                protocol: PROTOCOL_VERSION,
                device_id,
                patient_id: PatientId::new(),
                after: 7,
                max_bytes: 9,
            };
            assert_eq!(decode_fetch(&encode_fetch(&req).expect("encode"), 1024).expect("decode"), req);
            let resp = FetchResponse {
                changes: vec![HubChange { hub_seq: 3, patient_id: req.patient_id, change: vec![1, 2, 3] }],
                more: true,
            };
            let body = encode_fetch_response(&resp).expect("encode");
            assert_eq!(decode_fetch_response(&body, 1024).expect("decode"), resp);
        }

        #[test]
        fn requests_name_their_protocol_and_shape() {
            let req = FetchRequest {
                protocol: PROTOCOL_VERSION + 1,
                device_id: DeviceId::new(),
                patient_id: PatientId::new(),
                after: 0,
                max_bytes: 1,
            };
            let body = encode_fetch(&req).expect("encode");
            assert!(matches!(decode_fetch(&body, 1024), Err(CodecError::UnsupportedProtocol { .. })));
            // A fetch body is no lookup request, and junk is refused.
            let body = encode_fetch(&FetchRequest { protocol: PROTOCOL_VERSION, ..req }).expect("encode");
            assert!(decode_lookup(&body, 1024).is_err());
            assert!(decode_fetch(b"junk", 1024).is_err());
        }
    }
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
