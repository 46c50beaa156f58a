//! Where the bytes of a push or a pull go, and what they would be if the
//! changes travelled uncompressed inside the body's zstd stream.
//!
//! The edge stores and sends `Change::bytes()`, which deflates every change
//! over 256 bytes on its own, so the zstd frame around the batch finds
//! little left to share between changes. This module rebuilds the bodies
//! of the measured runs with the protocol's own encoder (the same batches
//! of the same outbox entries), once with the changes as stored and once
//! with `Change::raw_bytes()` (same hash, same decoding), so the report can
//! split the wire bytes into bodies and HTTP (headers, signature, answers)
//! and say what sending raw changes would save.

use std::path::Path;

use anyhow::{Context as _, Result};
use santerurale_shared::sync::push::page_len;
use santerurale_shared::sync::{
    HubChange, OutboxChange, PROTOCOL_VERSION, PullResponse, PushConfig, PushRequest, encode_pull_response, encode_push,
};
use santerurale_shared::{DeviceId, PatientId};

/// Encoded body bytes of a run's requests (push) or answers (pull).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bodies {
    /// Batches or pages, as the edge or hub would cut them.
    pub messages: u64,
    /// With the changes as the outbox holds them.
    pub as_sent: u64,
    /// Batches and pages recut by raw size, with the changes uncompressed.
    pub if_raw: u64,
    /// Of the changes, the bytes as stored and uncompressed.
    pub change_bytes: u64,
    pub raw_change_bytes: u64,
}

/// One outbox entry with both encodings of its change.
struct Entry {
    seq: u64,
    patient_id: PatientId,
    stored: Vec<u8>,
    raw: Vec<u8>,
}

fn read_outbox(db: &Path, after_seq: i64) -> Result<Vec<Entry>> {
    let conn = santerurale_e2e::open_read_only(db)?;
    let mut stmt = conn.prepare("SELECT seq, patient_id, bytes FROM outbox WHERE seq > ?1 ORDER BY seq")?;
    let rows = stmt
        .query_map([after_seq], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Vec<u8>>(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(seq, patient, stored)| {
            let change = automerge::Change::from_bytes(stored.clone()).context("an outbox change does not decode")?;
            Ok(Entry {
                seq: u64::try_from(seq)?,
                patient_id: patient.parse().map_err(|_| anyhow::anyhow!("bad patient id {patient}"))?,
                raw: change.raw_bytes().to_vec(),
                stored,
            })
        })
        .collect()
}

fn device_id(db: &Path) -> Result<DeviceId> {
    let id = santerurale_e2e::read_meta(db, "device_id")?.context("the edge has no device id")?;
    id.parse().map_err(|_| anyhow::anyhow!("bad device id {id}"))
}

fn len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// The push bodies of the outbox entries after `after_seq`, in batches cut
/// like the edge's first plan (the default ceiling: changes and bytes).
pub fn push(db: &Path, after_seq: i64) -> Result<Bodies> {
    let entries = read_outbox(db, after_seq)?;
    let device_id = device_id(db)?;
    let ceiling = PushConfig::default().ceiling;
    let max_changes = usize::try_from(ceiling.max_changes)?;
    let mut out = Bodies::default();
    for raw in [false, true] {
        let size = |e: &Entry| if raw { len(&e.raw) } else { len(&e.stored) };
        let mut rest = &entries[..];
        while !rest.is_empty() {
            let n = page_len(rest.iter().map(size), ceiling.max_bytes).min(max_changes);
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let batch = batch
                .iter()
                .map(|e| OutboxChange {
                    seq: e.seq,
                    patient_id: e.patient_id,
                    change: if raw { e.raw.clone() } else { e.stored.clone() },
                })
                .collect();
            let depth = u64::try_from(rest.len() + n)?;
            let request = PushRequest { protocol: PROTOCOL_VERSION, device_id, batch, outbox_depth: depth };
            let body = len(&encode_push(&request)?);
            if raw {
                out.if_raw += body;
            } else {
                out.as_sent += body;
                out.messages += 1;
            }
        }
    }
    out.change_bytes = entries.iter().map(|e| len(&e.stored)).sum();
    out.raw_change_bytes = entries.iter().map(|e| len(&e.raw)).sum();
    Ok(out)
}

/// The pull pages a fresh edge receives when the hub's log for its site is
/// `db`'s whole outbox, with the edge's default page budget.
pub fn pull(db: &Path) -> Result<Bodies> {
    let entries = read_outbox(db, 0)?;
    let budget = u64::from(edge::sync::DEFAULT_PULL_BYTES);
    let mut out = Bodies::default();
    for raw in [false, true] {
        let size = |e: &Entry| if raw { len(&e.raw) } else { len(&e.stored) };
        let mut rest = &entries[..];
        while !rest.is_empty() {
            let n = page_len(rest.iter().map(size), budget);
            let (page, tail) = rest.split_at(n);
            rest = tail;
            let changes = page
                .iter()
                .map(|e| HubChange {
                    hub_seq: e.seq,
                    patient_id: e.patient_id,
                    change: if raw { e.raw.clone() } else { e.stored.clone() },
                })
                .collect();
            let next_cursor = page.last().map_or(0, |e| e.seq);
            let response = PullResponse { changes, next_cursor, more: !rest.is_empty() };
            let body = len(&encode_pull_response(&response)?);
            if raw {
                out.if_raw += body;
            } else {
                out.as_sent += body;
                out.messages += 1;
            }
        }
    }
    out.change_bytes = entries.iter().map(|e| len(&e.stored)).sum();
    out.raw_change_bytes = entries.iter().map(|e| len(&e.raw)).sum();
    Ok(out)
}
