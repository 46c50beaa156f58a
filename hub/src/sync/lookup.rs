//! Cross-site lookup and fetch (issue 3): a clinic finds a patient
//! registered at another clinic and starts holding it.
//!
//! Both routes are authenticated exactly like a pull ([`super::push`]'s
//! `authenticate`: signature headers, enrolled device, signature over the
//! body as sent, device not revoked), take bodies in the shared codec
//! ([`santerurale_shared::sync::wire::bodies`]) naming the signing device,
//! and in their one transaction record the nonce (a replay is refused, 409)
//! and the device's contact time (a device revoked meanwhile is refused,
//! 403). A refused request leaves nothing behind.
//!
//! # `POST /api/v1/sync/lookup`
//! [`LookupRequest`] with an exact E.164 phone or a patient id; never a name,
//! so that a site learns about another site's patient only when it already
//! has the patient's number or card. The answer, [`LookupResponse`], holds
//! at most [`MAX_LOOKUP_RESULTS`] summaries from the projection (names, sex,
//! birth date, village, registering site, whether the asking site already
//! holds the patient): no phone, no national id, no encounters. A phone
//! that is not E.164 is refused (400 `invalid_query`). Logs name the
//! device and the number of matches, never the query.
//!
//! # `POST /api/v1/sync/fetch`
//! [`FetchRequest`] `{ patient_id, after, max_bytes }`. In one transaction:
//! 1. take the log's advisory lock ([`super::apply::lock_log`], the lock
//!    under which push assigns `hub_seq`);
//! 2. refuse a patient without any change in the log (404
//!    `unknown_patient`);
//! 3. record that the device's site holds the patient (`site_patients`,
//!    idempotent);
//! 4. read the patient's changes with `hub_seq > after`, in `hub_seq` order,
//!    within the byte budget (capped at [`super::pull::MAX_PAGE_BYTES`]; a
//!    change larger than the budget is sent alone). `more` tells the edge to
//!    ask again from the last `hub_seq` it received.
//!
//! Why the lock: without it, a push could commit a change of the patient
//! after step 4 read the log but before step 3 became visible; a pull
//! running then would skip that change (the site did not hold the patient
//! yet) and move the site's cursor past it, and the fetch would not have it
//! either. Holding the lock, every change of the patient is either in the
//! fetch's snapshot or committed after the site holds the patient, with a
//! `hub_seq` above every cursor handed out before: the site's normal pull
//! serves it. A change that arrives both ways is applied twice on the edge,
//! which is a no-op (Automerge keys changes by hash).
//!
//! The fetch returns every change of the patient, including those the
//! fetching device sent itself: the edge skips what it already has.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use santerurale_shared::sync::wire::bodies::{
    decode_fetch, decode_lookup, encode_fetch_response, encode_lookup_response,
};
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    FETCH_PATH, FetchRequest, FetchResponse, HubChange, LOOKUP_PATH, LookupQuery, LookupResponse, PatientSummary,
    page_len,
};
use santerurale_shared::{PatientId, Phone, Sex};

use super::pull::MAX_PAGE_BYTES;
use super::push::{Authenticated, Sender, authenticate};
use super::{SyncError, answer, check_device, codec_body, record_request};
use crate::AppState;

/// The most patients one lookup returns: an exact phone or id matches one
/// person, or a few sharing a family phone.
pub const MAX_LOOKUP_RESULTS: i64 = 5;
/// The most changes one fetch page reads.
pub const MAX_FETCH_CHANGES: i64 = 5_000;

pub fn router(max_body_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(LOOKUP_PATH, post(lookup).layer(DefaultBodyLimit::max(max_body_bytes)))
        .route(FETCH_PATH, post(fetch).layer(DefaultBodyLimit::max(max_body_bytes)))
}

async fn lookup(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Requests are counted by route in `hub_http_requests_total`.
    answer(None, "lookup", &headers, handle_lookup(&state, &uri, &headers, body).await)
}

async fn fetch(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(None, "fetch", &headers, handle_fetch(&state, &uri, &headers, body).await)
}

async fn handle_lookup(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SyncError> {
    let Authenticated { signed, sender, body, now } = authenticate(state, uri, headers, body).await?;
    let request = decode_lookup(&body, state.config.sync_max_body_bytes)?;
    check_device(request.device_id, sender.id)?;
    let (digits, id) = match &request.query {
        LookupQuery::Phone(raw) => {
            let phone = Phone::from_e164(raw).map_err(|_| {
                SyncError::rejected(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_QUERY,
                    "the phone number must be in international form (+22376123456)",
                )
            })?;
            (Some(phone.digits().to_owned()), None)
        }
        LookupQuery::Patient(id) => (None, Some(*id.as_uuid())),
    };

    let mut client = state.db.get().await?;
    let tx = client.transaction().await?;
    record_request(&tx, sender.id, &signed.nonce).await?;
    // One of $1 and $2 is NULL, and a comparison with NULL is never true.
    let rows = tx
        .query(
            "SELECT p.id, p.given_name, p.family_name, p.sex, p.birth_date, p.birth_date_estimated, p.village,
                    s.name AS site_name, s.code AS site_code,
                    EXISTS (SELECT 1 FROM site_patients sp WHERE sp.site_id = $3 AND sp.patient_id = p.id) AS held
             FROM patients p JOIN sites s ON s.id = p.site_id
             WHERE p.phone_digits = $1 OR p.id = $2
             ORDER BY p.created_at DESC, p.id LIMIT $4",
            &[&digits, &id, sender.site_id.as_uuid(), &MAX_LOOKUP_RESULTS],
        )
        .await?;
    tx.commit().await?;
    let patients = rows.iter().map(summary).collect::<Result<Vec<_>, _>>()?;
    state.metrics.sync_last_contact.with_label_values(&[sender.site_code.as_str()]).set(now);
    tracing::info!(device = %sender.id, matches = patients.len(), "sync lookup served");
    let body = encode_lookup_response(&LookupResponse { patients }).map_err(|e| SyncError::internal(&e))?;
    Ok(codec_body(body))
}

fn summary(row: &tokio_postgres::Row) -> Result<PatientSummary, SyncError> {
    let sex: String = row.try_get("sex")?;
    let sex = Sex::parse(&sex).ok_or_else(|| {
        SyncError::internal(&std::io::Error::other(format!("patient projection holds an unknown sex {sex:?}")))
    })?;
    Ok(PatientSummary {
        patient_id: PatientId::from_uuid(row.try_get("id")?),
        given_name: row.try_get("given_name")?,
        family_name: row.try_get("family_name")?,
        sex,
        birth_date: row.try_get("birth_date")?,
        birth_date_estimated: row.try_get("birth_date_estimated")?,
        village: row.try_get("village")?,
        site_name: row.try_get("site_name")?,
        site_code: row.try_get("site_code")?,
        held_by_your_site: row.try_get("held")?,
    })
}

async fn handle_fetch(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SyncError> {
    let Authenticated { signed, sender, body, now } = authenticate(state, uri, headers, body).await?;
    let request = decode_fetch(&body, state.config.sync_max_body_bytes)?;
    check_device(request.device_id, sender.id)?;
    let response = fetch_page(&state.db, &sender, &signed.nonce, &request).await?;
    state.metrics.sync_last_contact.with_label_values(&[sender.site_code.as_str()]).set(now);
    tracing::info!(
        device = %sender.id,
        patient = %request.patient_id,
        after = request.after,
        changes = response.changes.len(),
        more = response.more,
        "sync fetch served"
    );
    super::codec_body_blocking(response, encode_fetch_response).await
}

async fn fetch_page(
    pool: &deadpool_postgres::Pool,
    sender: &Sender,
    nonce: &[u8],
    request: &FetchRequest,
) -> Result<FetchResponse, SyncError> {
    let after = i64::try_from(request.after).map_err(|_| {
        SyncError::rejected(StatusCode::BAD_REQUEST, codes::MALFORMED_BODY, "`after` is past any hub sequence")
    })?;
    let patient = request.patient_id.as_uuid();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    record_request(&tx, sender.id, nonce).await?;
    super::apply::lock_log(&tx).await?;
    let known = tx.query_opt("SELECT 1 FROM changes WHERE patient_id = $1 LIMIT 1", &[patient]).await?.is_some();
    if !known {
        // Dropping `tx` rolls the nonce and contact time back.
        return Err(SyncError::rejected(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_PATIENT,
            "the hub has no patient with this id",
        ));
    }
    tx.execute(
        "INSERT INTO site_patients (site_id, patient_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[sender.site_id.as_uuid(), patient],
    )
    .await?;
    let budget = request.max_bytes.min(MAX_PAGE_BYTES);
    // Only the changes starting within the budget are read out; `total`
    // counts every change after `after`, so a cut page says `more`.
    let rows = tx
        .query(
            "WITH sized AS (
                 SELECT hub_seq, bytes,
                        (sum(octet_length(bytes)) OVER (ORDER BY hub_seq))::bigint - octet_length(bytes) AS before,
                        count(*) OVER () AS total
                 FROM changes WHERE patient_id = $1 AND hub_seq > $2
             )
             SELECT hub_seq, bytes, total FROM sized WHERE before <= $3::bigint ORDER BY hub_seq LIMIT $4",
            &[patient, &after, &i64::from(budget), &MAX_FETCH_CHANGES],
        )
        .await?;
    tx.commit().await?;

    let total: i64 = rows.first().map(|r| r.try_get("total")).transpose()?.unwrap_or(0);
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.try_get("hub_seq")?;
        changes.push(HubChange {
            hub_seq: u64::try_from(seq).unwrap_or(0),
            patient_id: request.patient_id,
            change: row.try_get("bytes")?,
        });
    }
    let fit = page_len(changes.iter().map(|c| c.change.len() as u64), u64::from(budget));
    changes.truncate(fit);
    let more = i64::try_from(fit).unwrap_or(i64::MAX) < total;
    Ok(FetchResponse { changes, more })
}
