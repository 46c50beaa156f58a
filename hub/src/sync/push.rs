//! `POST /api/v1/sync/push`: an edge uploads a batch of its outbox.
//!
//! Checks, cheapest first, each refusing the request with nothing stored:
//! 1. the four signature headers parse (401);
//! 2. the body fits `sync_max_body_bytes` as sent (413, so the edge splits
//!    its batch; a declared `Content-Length` over it is refused before the
//!    body is read, see [`super::router`]);
//! 3. the device is enrolled (401 `unknown_device`), the signature over the
//!    raw (compressed) body, method, path, timestamp and nonce verifies with
//!    at most [`DEFAULT_MAX_SKEW_SECS`] of clock skew (401), and the device
//!    is not revoked (403 `revoked_device`; checked after the signature so
//!    only the device itself learns it);
//! 4. the body inflates within [`INFLATE_FACTOR`] times the body limit (413)
//!    and decodes (400); it names the signing device (403
//!    [`super::DEVICE_MISMATCH`]); its seqs ascend (422); every change
//!    decodes as an Automerge change whose header checksum matches its
//!    hash (422 `invalid_change`: one bad change refuses the whole batch);
//!    no change sets the document's `id` to another patient than the one it
//!    is sent for (422 `change_refused`). Both name the change's `seq` in the
//!    error body so the edge can show which one is stuck.
//!
//! Then one transaction:
//! - records the nonce in `sync_nonces`; a nonce already there is a replay
//!   (409 `replayed_request`). A concurrent twin blocks on the unique key
//!   until the first commits, then sees it;
//! - takes the log's advisory lock, so `hub_seq` values become visible in
//!   order (a pull reading the log never skips a lower number that commits
//!   later);
//! - inserts every change with `ON CONFLICT (change_hash) DO NOTHING`: a
//!   change already stored (a re-sent batch whose ack was lost) counts as a
//!   duplicate;
//! - records that the device's site holds every patient of the batch
//!   (`site_patients`, what pull serves it), and applies the new changes to
//!   the patients' documents and the projection ([`super::apply`]);
//! - records the device's contact time, reported outbox depth and highest
//!   seq stored; a device revoked since step 3 refuses the whole request.
//!
//! If applying fails, the transaction is rolled back and the batch's changes
//! are tried one by one on copies of their documents: the first one that does
//! not apply (two different changes of one actor with the same seq, say) is
//! the edge's, refused with 422 `change_refused` and its `seq`, since sending
//! it again would fail again. When every change applies alone, the fault is
//! the hub's and the answer stays a retryable 500.
//!
//! Only after the commit does the hub answer [`PushResponse`]. Nonces older
//! than twice the skew are purged afterwards: a request that old is refused
//! as stale before its nonce matters.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use santerurale_shared::sync::signing::DEFAULT_MAX_SKEW_SECS;
use santerurale_shared::sync::wire::{CONTENT_TYPE, codes};
use santerurale_shared::sync::{
    PUSH_PATH, PushRequest, PushResponse, SignedHeaders, VerifyingKey, decode_push, encode_push_response, verify,
};
use santerurale_shared::{DeviceId, SiteId};
use time::OffsetDateTime;

use super::{DEVICE_MISMATCH, SyncError};
use crate::AppState;

/// A body may inflate to this many times the body limit.
pub const INFLATE_FACTOR: usize = 8;

pub fn router(max_body_bytes: usize) -> Router<AppState> {
    Router::new().route(PUSH_PATH, post(push).layer(DefaultBodyLimit::max(max_body_bytes)))
}

/// The enrolled device that signed a request.
#[derive(Debug)]
pub(super) struct Sender {
    pub id: DeviceId,
    pub site_id: SiteId,
    pub site_code: String,
    public_key: Vec<u8>,
    revoked: bool,
    last_push_seq: i64,
}

/// A decoded, checked batch: each change with its Automerge hash.
#[derive(Debug)]
struct Checked {
    request: PushRequest,
    hashes: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Stored {
    response: PushResponse,
    site_pending: i64,
    conflicts_detected: u64,
}

async fn push(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = handle(&state, &uri, &headers, body).await;
    super::answer(Some(&state.metrics.sync_push_requests), "push", &headers, result)
}

async fn handle(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SyncError> {
    let Authenticated { signed, sender, body, now } = authenticate(state, uri, headers, body).await?;
    let max_body = state.config.sync_max_body_bytes;

    // Inflating and parsing up to tens of MiB is CPU work: off the runtime.
    let device = sender.id;
    let limit = max_body.saturating_mul(INFLATE_FACTOR);
    let checked = tokio::task::spawn_blocking(move || check(&body, limit, device))
        .await
        .map_err(|e| SyncError::internal(&e))??;

    let stored = match store(&state.db, &sender, &signed.nonce, &checked).await {
        // Nothing was stored (the transaction rolled back): find out whether
        // one of the edge's changes is to blame before asking for a retry.
        Err(e) if e.code == "internal" => Err(refused_change(&state.db, &checked).await.unwrap_or(e)),
        other => other,
    }?;
    let m = &state.metrics;
    m.sync_changes_applied.inc_by(u64::from(stored.response.applied));
    m.sync_conflicts_detected.inc_by(stored.conflicts_detected);
    m.sync_pending_operations.with_label_values(&[sender.site_code.as_str()]).set(stored.site_pending);
    m.sync_last_contact.with_label_values(&[sender.site_code.as_str()]).set(now);
    if let Err(e) = purge_nonces(&state.db).await {
        tracing::warn!(error = %crate::error_chain(&e), "sync: purging old nonces failed");
    }
    tracing::debug!(
        device = %sender.id,
        site = %sender.site_id,
        applied = stored.response.applied,
        duplicates = stored.response.duplicates,
        "sync push stored"
    );
    let body = encode_push_response(&stored.response).map_err(|e| SyncError::internal(&e))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response())
}

/// A sync request whose signature verified, from an enrolled device that is
/// not revoked (checks 1 to 3 above; pull makes the same ones).
pub(super) struct Authenticated {
    pub signed: SignedHeaders,
    pub sender: Sender,
    pub body: Bytes,
    /// Unix seconds when the request was verified.
    pub now: i64,
}

pub(super) async fn authenticate(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Authenticated, SyncError> {
    let signed = SignedHeaders::from_headers(|name| headers.get(name)?.to_str().ok())?;
    let max_body = state.config.sync_max_body_bytes;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(format!("the body is larger than {max_body} bytes: send a smaller batch"))
        } else {
            SyncError::rejected(e.status(), codes::MALFORMED_BODY, e.body_text())
        }
    })?;

    let sender = find_sender(&state.db, signed.device_id).await?.ok_or_else(|| {
        SyncError::rejected(StatusCode::UNAUTHORIZED, codes::UNKNOWN_DEVICE, "this device is not enrolled with the hub")
    })?;
    let key = <[u8; 32]>::try_from(sender.public_key.as_slice())
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| SyncError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: "internal error; see the hub's log".into(),
        retryable: true,
        seq: None,
    })?;
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    verify(&key, &signed, "POST", path, &body, now, DEFAULT_MAX_SKEW_SECS)?;
    if sender.revoked {
        return Err(revoked());
    }

    Ok(Authenticated { signed, sender, body, now })
}

pub(super) fn revoked() -> SyncError {
    SyncError::rejected(
        StatusCode::FORBIDDEN,
        codes::REVOKED_DEVICE,
        "this device was revoked by the hub admin: enroll it again to sync",
    )
}

fn too_large(message: String) -> SyncError {
    SyncError::rejected(StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE, message)
}

/// Decodes the body and checks everything that needs no database.
fn check(body: &[u8], limit: usize, device: DeviceId) -> Result<Checked, SyncError> {
    let request = decode_push(body, limit)?;
    if request.device_id != device {
        return Err(SyncError::rejected(
            StatusCode::FORBIDDEN,
            DEVICE_MISMATCH,
            "the request names another device than the one that signed it",
        ));
    }
    let mut previous = None;
    for c in &request.batch {
        if i64::try_from(c.seq).is_err() || previous.is_some_and(|p| c.seq <= p) {
            return Err(SyncError::rejected(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::OUT_OF_ORDER,
                format!("the batch is not strictly ascending by seq at seq {}", c.seq),
            ));
        }
        previous = Some(c.seq);
    }
    let hashes = request
        .batch
        .iter()
        .map(|c| {
            change_hash(&c.change).map_err(|reason| SyncError {
                seq: Some(c.seq),
                ..SyncError::rejected(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    codes::INVALID_CHANGE,
                    format!("the change at seq {} is not a valid Automerge change: {reason}", c.seq),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    for c in &request.batch {
        if let Some(named) = other_patient(&c.change, &c.patient_id.to_string()) {
            tracing::warn!(seq = c.seq, sent_for = %c.patient_id, %named, "sync: a change names another patient");
            return Err(SyncError::change_refused(
                c.seq,
                format!(
                    "the change at seq {} sets the document's patient id to another patient than the one it \
                     was sent for ({})",
                    c.seq, c.patient_id
                ),
            ));
        }
    }
    Ok(Checked { request, hashes })
}

/// The patient id a change writes into its document's root `id`, when it is
/// not `patient`: such a change belongs to another document, and applying it
/// here would at best hide it and at worst break this patient's document.
fn other_patient(bytes: &[u8], patient: &str) -> Option<String> {
    use automerge::legacy::{Key, ObjectId, OpType};
    // Decoded (and its checksum checked) just before: cannot fail here.
    let change = automerge::Change::from_bytes(bytes.to_vec()).ok()?;
    change.decode().operations.into_iter().find_map(|op| match (op.obj, op.key, op.action) {
        (ObjectId::Root, Key::Map(key), OpType::Put(value)) if key == "id" => {
            let named = match value {
                automerge::ScalarValue::Str(s) => s.to_string(),
                other => other.to_string(),
            };
            (named != patient).then_some(named)
        }
        _ => None,
    })
}

/// After applying a batch failed: the first change (in batch order) that does
/// not apply to a copy of its patient's document with the batch's earlier
/// changes, refused as [`SyncError::change_refused`]. `None` when every
/// change applies, or a document cannot be read: then the hub is at fault.
async fn refused_change(pool: &deadpool_postgres::Pool, checked: &Checked) -> Option<SyncError> {
    let batch = &checked.request.batch;
    let mut patients: Vec<uuid::Uuid> = batch.iter().map(|c| *c.patient_id.as_uuid()).collect();
    patients.sort_unstable();
    patients.dedup();
    let rows = async {
        let client = pool.get().await?;
        let rows =
            client.query("SELECT patient_id, doc FROM documents WHERE patient_id = ANY($1)", &[&patients]).await?;
        Ok::<_, SyncError>(rows)
    }
    .await
    .ok()?;
    let mut docs = std::collections::HashMap::new();
    for row in rows {
        docs.insert(row.try_get::<_, uuid::Uuid>(0).ok()?, row.try_get::<_, Vec<u8>>(1).ok()?);
    }
    let changes: Vec<(u64, uuid::Uuid, Vec<u8>)> =
        batch.iter().map(|c| (c.seq, *c.patient_id.as_uuid(), c.change.clone())).collect();
    let found = tokio::task::spawn_blocking(move || {
        let mut loaded: std::collections::HashMap<uuid::Uuid, automerge::AutoCommit> = std::collections::HashMap::new();
        for (seq, patient, bytes) in changes {
            let doc = match loaded.entry(patient) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match docs.get(&patient) {
                    Some(saved) => e.insert(automerge::AutoCommit::load(saved).ok()?),
                    None => e.insert(automerge::AutoCommit::new()),
                },
            };
            let change = automerge::Change::from_bytes(bytes).ok()?;
            if let Err(e) = doc.apply_changes([change]) {
                return Some((seq, e.to_string()));
            }
        }
        None
    })
    .await
    .ok()??;
    let (seq, reason) = found;
    tracing::warn!(seq, reason = %reason, "sync: a pushed change does not apply; batch refused");
    Some(SyncError::change_refused(
        seq,
        format!("the change at seq {seq} does not apply to its patient's document: {reason}"),
    ))
}

/// The hash of an Automerge change chunk, after checking its checksum.
///
/// `Change::from_bytes` parses the chunk but does not compare the checksum
/// in its header (bytes 4..8, after the magic bytes) with the hash of what
/// follows, so a change corrupted on the way would be stored under a hash
/// nobody else knows. The checksum is the first four bytes of the hash.
fn change_hash(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let change = automerge::Change::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    let hash = change.hash().0;
    match bytes.get(4..8) {
        Some(checksum) if checksum == &hash[..4] => Ok(hash.to_vec()),
        _ => Err("checksum mismatch".into()),
    }
}

async fn find_sender(pool: &deadpool_postgres::Pool, id: DeviceId) -> Result<Option<Sender>, SyncError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT d.site_id, s.code, d.public_key, d.revoked_at IS NOT NULL AS revoked,
                    d.last_push_seq
             FROM devices d JOIN sites s ON s.id = d.site_id WHERE d.id = $1",
            &[id.as_uuid()],
        )
        .await?;
    row.map(|row| -> Result<Sender, SyncError> {
        Ok(Sender {
            id,
            site_id: SiteId::from_uuid(row.try_get("site_id")?),
            site_code: row.try_get("code")?,
            public_key: row.try_get("public_key")?,
            revoked: row.try_get("revoked")?,
            last_push_seq: row.try_get("last_push_seq")?,
        })
    })
    .transpose()
}

async fn store(
    pool: &deadpool_postgres::Pool,
    sender: &Sender,
    nonce: &[u8],
    checked: &Checked,
) -> Result<Stored, SyncError> {
    let batch = &checked.request.batch;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    super::record_nonce(&tx, sender.id, nonce).await?;
    let mut applied = 0;
    let mut conflicts_detected = 0;
    if !batch.is_empty() {
        super::apply::lock_log(&tx).await?;
        let patients: Vec<uuid::Uuid> = batch.iter().map(|c| *c.patient_id.as_uuid()).collect();
        let bytes: Vec<&[u8]> = batch.iter().map(|c| c.change.as_slice()).collect();
        let inserted = tx
            .query(
                "INSERT INTO changes (change_hash, patient_id, site_id, device_id, bytes)
                 SELECT h, p, $4, $5, b
                 FROM unnest($1::bytea[], $2::uuid[], $3::bytea[]) WITH ORDINALITY AS t(h, p, b, n)
                 ORDER BY n
                 ON CONFLICT (change_hash) DO NOTHING
                 RETURNING patient_id, bytes",
                &[&checked.hashes, &patients, &bytes, sender.site_id.as_uuid(), sender.id.as_uuid()],
            )
            .await?;
        applied = u64::try_from(inserted.len()).unwrap_or(u64::MAX);
        // The site now holds every patient it pushed to, duplicates included
        // (a change it pulled, then edited, names a patient it holds).
        tx.execute(
            "INSERT INTO site_patients (site_id, patient_id)
             SELECT $1, p FROM unnest($2::uuid[]) AS t(p) ON CONFLICT DO NOTHING",
            &[sender.site_id.as_uuid(), &patients],
        )
        .await?;
        let new = inserted
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        conflicts_detected = super::apply::apply(&tx, sender.site_id, sender.id, new).await?;
    }
    // Both fit: seqs were checked to fit an i64, and a batch is far smaller
    // than u32::MAX changes.
    let last_seq = batch.last().and_then(|c| i64::try_from(c.seq).ok()).unwrap_or(0);
    let depth = i64::try_from(checked.request.outbox_depth).unwrap_or(i64::MAX);
    // Revoked since we looked it up: refuse rather than store (the revoke
    // and this update lock the same row, so one of them comes second).
    let row = tx
        .query_opt(
            "UPDATE devices SET last_contact = now(), outbox_depth = $2,
                    last_push_seq = GREATEST(last_push_seq, $3)
             WHERE id = $1 AND revoked_at IS NULL RETURNING last_push_seq",
            &[sender.id.as_uuid(), &depth, &last_seq],
        )
        .await?
        .ok_or_else(revoked)?;
    let recorded: i64 = row.try_get("last_push_seq")?;
    let pending = tx
        .query_one(
            "SELECT coalesce(sum(outbox_depth), 0)::bigint FROM devices
             WHERE site_id = $1 AND revoked_at IS NULL",
            &[sender.site_id.as_uuid()],
        )
        .await?;
    let site_pending: i64 = pending.try_get(0)?;
    tx.commit().await?;

    let total = u32::try_from(batch.len()).unwrap_or(u32::MAX);
    let applied = u32::try_from(applied).unwrap_or(u32::MAX);
    let acked_through = match batch.last() {
        Some(c) => c.seq,
        // Nothing sent: acknowledge what was stored before.
        None => u64::try_from(recorded.max(sender.last_push_seq)).unwrap_or(0),
    };
    Ok(Stored {
        response: PushResponse { acked_through, applied, duplicates: total.saturating_sub(applied) },
        site_pending,
        conflicts_detected,
    })
}

/// Forgets nonces old enough that their requests are refused as stale.
async fn purge_nonces(pool: &deadpool_postgres::Pool) -> Result<u64, crate::db::DbError> {
    let keep = Duration::from_secs(2 * DEFAULT_MAX_SKEW_SECS).as_secs_f64();
    let client = pool.get().await?;
    Ok(client.execute("DELETE FROM sync_nonces WHERE seen_at < now() - make_interval(secs => $1)", &[&keep]).await?)
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable as _;

    use super::*;

    #[test]
    fn change_hashes_check_the_checksum_compressed_or_not() {
        let mut doc = automerge::AutoCommit::new();
        doc.put(automerge::ROOT, "note", "x".repeat(4096)).expect("put");
        doc.commit();
        let mut change = doc.get_last_local_change().expect("change");
        let raw = change.raw_bytes().to_vec();
        let compressed = change.bytes().to_vec();
        assert!(compressed.len() < raw.len(), "large changes are deflated");
        let hash = change.hash().0.to_vec();
        assert_eq!(change_hash(&raw), Ok(hash.clone()));
        assert_eq!(change_hash(&compressed), Ok(hash));

        let mut corrupt = raw.clone();
        corrupt[raw.len() / 2] ^= 1;
        assert!(change_hash(&corrupt).is_err());
        assert!(change_hash(b"").is_err());
        assert!(change_hash(&raw[..raw.len() - 1]).is_err());
    }
}
