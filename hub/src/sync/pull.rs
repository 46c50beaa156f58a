//! `POST /api/v1/sync/pull`: an edge fetches the log entries after its
//! cursor for the patients its site holds.
//!
//! The request is authenticated exactly like a push (see [`super::push`]:
//! signature headers, enrolled and unrevoked device, signature over the
//! body as sent); its body is a [`PullRequest`] naming the signing device.
//! Then one transaction records the nonce (a replay is refused, 409) and the
//! device's contact time, and reads the page, so a refused pull leaves
//! nothing behind.
//!
//! The page: entries of `changes` with `hub_seq > cursor`, of patients in
//! `site_patients` for the device's site, not sent by this same device (it
//! has them), in `hub_seq` order, as many as fit `max_bytes` (capped at
//! [`MAX_PAGE_BYTES`]; one oversized change is sent alone) and at most
//! [`MAX_PAGE_CHANGES`]. A change a hub admin wrote (a conflict resolution,
//! see [`crate::conflicts`]) has no device: the filter is
//! `device_id IS DISTINCT FROM` the puller, so it goes to every holding site,
//! the ones whose edits it settles included. `next_cursor` is the last entry examined: the last
//! one sent when the page was cut (`more`), else the newest entry of the
//! log, so a site that holds none of the new entries moves past them in one
//! round trip. Push (and a resolution) makes `hub_seq` values visible in
//! order (advisory lock), and the page and the log's newest entry are read in one statement
//! (one snapshot), so no entry below `next_cursor` can appear later.
//!
//! A site that starts holding a patient whose changes are already behind
//! its cursor does not get them here: the cross-site fetch
//! ([`super::lookup`]) sends that patient's whole history when the site
//! starts holding it, and later entries come through this page as usual.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use santerurale_shared::PatientId;
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    HubChange, PULL_PATH, PullRequest, PullResponse, decode_pull, encode_pull_response, page_len,
};

use super::push::{Authenticated, Sender, authenticate};
use super::{SyncError, check_device, record_request};
use crate::AppState;

/// The hub's cap on a page's change bytes, whatever the edge asks.
pub const MAX_PAGE_BYTES: u32 = 4 * 1024 * 1024;
/// The most entries one page reads from the log.
pub const MAX_PAGE_CHANGES: i64 = 5_000;

pub fn router(max_body_bytes: usize) -> Router<AppState> {
    Router::new().route(PULL_PATH, post(pull).layer(DefaultBodyLimit::max(max_body_bytes)))
}

async fn pull(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = handle(&state, &uri, &headers, body).await;
    super::answer(Some(&state.metrics.sync_pull_requests), "pull", &headers, result)
}

async fn handle(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SyncError> {
    let Authenticated { signed, sender, body, now } = authenticate(state, uri, headers, body).await?;
    // A pull request is a few dozen bytes: no need to inflate much.
    let request = decode_pull(&body, state.config.sync_max_body_bytes)?;
    check_device(request.device_id, sender.id)?;
    let response = page(&state.db, &sender, &signed.nonce, &request).await?;
    state.metrics.sync_last_contact.with_label_values(&[sender.site_code.as_str()]).set(now);
    tracing::debug!(
        device = %sender.id,
        cursor = request.cursor,
        changes = response.changes.len(),
        next_cursor = response.next_cursor,
        more = response.more,
        "sync pull served"
    );
    super::codec_body_blocking(response, encode_pull_response).await
}

async fn page(
    pool: &deadpool_postgres::Pool,
    sender: &Sender,
    nonce: &[u8],
    request: &PullRequest,
) -> Result<PullResponse, SyncError> {
    let cursor = i64::try_from(request.cursor).map_err(|_| {
        SyncError::rejected(StatusCode::BAD_REQUEST, codes::MALFORMED_BODY, "the cursor is past any hub sequence")
    })?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    record_request(&tx, sender.id, nonce).await?;
    let budget = request.max_bytes.min(MAX_PAGE_BYTES);
    // `top` and the page in one statement: one snapshot. Of the entries
    // examined, only those starting within the budget are read out (the
    // first one past it tells the page was cut); `examined` counts them all.
    let rows = tx
        .query(
            "WITH top AS (SELECT coalesce(max(hub_seq), 0) AS seq FROM changes),
             page AS (
                 SELECT c.hub_seq, c.patient_id, c.bytes, octet_length(c.bytes)::bigint AS size
                 FROM top, changes c
                 JOIN site_patients sp ON sp.patient_id = c.patient_id AND sp.site_id = $2
                 WHERE c.hub_seq > $1 AND c.hub_seq <= top.seq AND c.device_id IS DISTINCT FROM $3
                 ORDER BY c.hub_seq LIMIT $4
             ),
             sized AS (
                 SELECT hub_seq, patient_id, bytes,
                        (sum(size) OVER (ORDER BY hub_seq))::bigint - size AS before,
                        count(*) OVER () AS examined
                 FROM page
             )
             SELECT top.seq AS top, s.hub_seq, s.patient_id, s.bytes, s.examined
             FROM top LEFT JOIN sized s ON s.before <= $5::bigint
             ORDER BY s.hub_seq",
            &[&cursor, sender.site_id.as_uuid(), sender.id.as_uuid(), &MAX_PAGE_CHANGES, &i64::from(budget)],
        )
        .await?;
    tx.commit().await?;

    let (top, examined): (i64, i64) = match rows.first() {
        Some(row) => (row.try_get("top")?, row.try_get::<_, Option<i64>>("examined")?.unwrap_or(0)),
        None => (0, 0),
    };
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(seq) = row.try_get::<_, Option<i64>>("hub_seq")? else { continue };
        let patient: uuid::Uuid = row.try_get("patient_id")?;
        let bytes: Vec<u8> = row.try_get("bytes")?;
        entries.push(HubChange {
            hub_seq: u64::try_from(seq).unwrap_or(0),
            patient_id: PatientId::from_uuid(patient),
            change: bytes,
        });
    }
    let fit = page_len(entries.iter().map(|c| c.change.len() as u64), u64::from(budget));
    let more = i64::try_from(fit).unwrap_or(i64::MAX) < examined || examined >= MAX_PAGE_CHANGES;
    entries.truncate(fit);
    let next_cursor = match entries.last() {
        Some(last) if more => last.hub_seq,
        _ => u64::try_from(top).unwrap_or(0).max(request.cursor),
    };
    Ok(PullResponse { changes: entries, next_cursor, more })
}
