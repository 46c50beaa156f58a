//! The edge-hub sync protocol, version [`PROTOCOL_VERSION`]: messages, body
//! codec, request signing and the push planner. Pure: the edge and the hub do
//! the I/O (HTTP, SQLite, PostgreSQL, clocks, randomness) and call in here.
//!
//! # Why not Automerge's own sync protocol
//! Automerge syncs one document at a time: for a site with 10,000 patients it
//! spends 20,000 messages to learn that nothing changed. Instead each edge
//! keeps one site-level, append-only outbox of the Automerge changes it made,
//! and the hub one append-only log of every change it stored; each side reads
//! the other's with a cursor. The Automerge change stays the unit of merge
//! and provenance (its actor id is the device id). Per-document Automerge
//! sync remains useful to repair a single document.
//!
//! # Push (edge to hub)
//! 1. The edge's outbox holds `(seq, patient_id, change bytes)`; `seq` is
//!    strictly increasing per device and never reused.
//! 2. [`PushPlanner::plan`] picks the oldest entries within the current
//!    [`BatchPolicy`]. The edge builds a [`PushRequest`] with them and the
//!    outbox depth, encodes it ([`encode_push`]: postcard in zstd), signs it
//!    ([`sign`]) and `POST`s it to [`PUSH_PATH`].
//! 3. The hub verifies the signature and clock ([`verify`]), refuses a nonce
//!    it has seen (its own storage), inflates the body within its limit
//!    ([`decode_push`]; 413 past it), and checks the batch is ascending.
//! 4. In one transaction it stores each change keyed by its Automerge change
//!    hash (`ON CONFLICT DO NOTHING`: a re-sent change is a duplicate, not an
//!    error), with the sending device, appends the new ones to its log,
//!    applies them to the patient documents and projections, and records the
//!    highest `seq` stored for the device. Only after the commit does it
//!    answer [`PushResponse`] `{ acked_through, applied, duplicates }`.
//! 5. The edge passes the outcome to [`PushPlanner::record`]; on
//!    [`Next::MarkSentThrough`] it marks those entries sent and plans again;
//!    on [`Next::Retry`] it waits [`PushPlanner::next_delay`] (backoff with
//!    jitter, smaller batches); on [`Next::Stop`] it shows the reason.
//!
//! If the connection drops after step 4, the edge never sees the ack and
//! sends the same entries again: the hub counts them as duplicates and acks.
//! So every change is stored exactly once whatever the link does, and at most
//! the batch in flight is sent twice.
//!
//! # Pull (hub to edge)
//! 1. The edge sends [`PullRequest`] `{ cursor, max_bytes }` to [`PULL_PATH`],
//!    signed like a push; `cursor` is the last `next_cursor` it applied (0
//!    at first).
//! 2. The hub reads its log after `cursor`, keeps the changes of patients the
//!    device's site holds, and stops at the byte budget ([`page_len`]: at
//!    least one change, so a large one cannot block the edge). It answers
//!    [`PullResponse`] `{ changes, next_cursor, more }`.
//! 3. The edge applies the page to its documents and stores `next_cursor` in
//!    the same SQLite transaction, then pulls again while `more`. A crash
//!    before the commit repeats the page; applying an Automerge change twice
//!    is a no-op, so that is harmless too.
//!
//! The hub should leave out of a device's pages the changes that device sent
//! itself (it records provenance); the edge must tolerate any change it
//! already has all the same (Automerge ignores a known change hash).
//!
//! Two duties of the hub make the cursor safe:
//! - A `hub_seq` must never become visible after a larger one has been read,
//!   or an edge whose cursor passed it skips it forever. A PostgreSQL
//!   sequence does not guarantee that across concurrent transactions (a
//!   lower number can commit later): assign `hub_seq` under one lock (one
//!   writer, or an advisory lock held to commit), or serve pulls only up to
//!   a watermark below every transaction still open.
//! - A patient newly held by a site (pulled from another clinic) has changes
//!   older than the site's cursor: the hub sends that patient's whole
//!   history out of band (the cross-site fetch below), not through the log.
//!
//! # Cross-site lookup and fetch
//! A clinic worker meets a patient registered at another clinic.
//! 1. The edge sends [`LookupRequest`] to [`LOOKUP_PATH`], signed like a
//!    pull, with an exact E.164 phone or a patient id (never a name: a site
//!    learns only about a patient whose number or id it already has). The
//!    hub answers [`LookupResponse`]: a few [`PatientSummary`]s.
//! 2. The edge sends [`FetchRequest`] `{ patient_id, after: 0, max_bytes }`
//!    to [`FETCH_PATH`]. In one transaction, holding the same lock under
//!    which push assigns `hub_seq`, the hub records that the device's site
//!    holds the patient and reads the patient's changes after `after`; it
//!    answers [`FetchResponse`] `{ changes, more }` and the edge asks again
//!    from the last `hub_seq` while `more`.
//! 3. Because of the lock, every change of the patient either is in the
//!    fetch's snapshot or commits after the site holds the patient, and so
//!    has a `hub_seq` that a later pull of the site serves. A change that
//!    arrives both ways is applied twice, which is a no-op.
//! 4. The edge applies the fetched changes without outbox entries (they are
//!    the hub's already); the site's later edits are pushed as usual.
//!
//! # Signing
//! Every request carries four headers ([`SignedHeaders`]) with an ed25519
//! signature over a domain prefix, the device id, method, path, timestamp,
//! a random nonce and the SHA-256 of the body as sent (see [`signing`]).
//! The hub keeps accepted nonces for twice the allowed clock skew to refuse
//! replays; a stale or future timestamp, a missing or malformed header, or a
//! bad signature each have their own error code in [`wire::codes`].
//!
//! # Versioning
//! Requests begin with their `protocol` number; a hub refuses other versions
//! with [`wire::codes::UNSUPPORTED_PROTOCOL`] before reading further. A new
//! message shape means a new version, served beside the old one until every
//! edge is upgraded.

pub mod codec;
pub mod push;
pub mod signing;
pub mod wire;

pub use codec::{
    CodecError, decode_pull, decode_pull_response, decode_push, decode_push_response, encode_pull,
    encode_pull_response, encode_push, encode_push_response,
};
pub use push::{
    Batch, BatchPolicy, Next, NotAscending, Pending, PushConfig, PushOutcome, PushPlanner, StopReason, page_len,
};
pub use signing::{SignatureError, SignedHeaders, SigningKey, VerifyingKey, sign, verify};
pub use wire::{
    ErrorBody, HubChange, OutboxChange, PROTOCOL_VERSION, PULL_PATH, PUSH_PATH, PullRequest, PullResponse, PushRequest,
    PushResponse,
};
pub use wire::{
    FETCH_PATH, FetchRequest, FetchResponse, LOOKUP_PATH, LookupQuery, LookupRequest, LookupResponse, PatientSummary,
};
