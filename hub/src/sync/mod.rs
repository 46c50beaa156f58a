//! The hub's side of the edge-hub sync protocol (see
//! `santerurale_shared::sync` for the protocol itself: messages, codec,
//! signatures). This module does the I/O: HTTP, PostgreSQL, the clock.
//!
//! Sync routes take no bearer token: every request is signed by the device
//! that sends it, and the signature is the authentication. Their errors are
//! JSON [`ErrorBody`] (`code`, `message`, `retryable`, and `seq` when one
//! change of a push is to blame), with codes from
//! [`santerurale_shared::sync::wire::codes`] plus [`DEVICE_MISMATCH`].
//! `retryable` is true only when the same request may pass later unchanged:
//! the database was unavailable, or the hub failed internally. A change the
//! hub cannot take is the edge's to fix, never a retryable 500 (see
//! [`push`]): retrying would block that edge's outbox behind it forever.
//!
//! [`push`] stores changes once each in the `changes` log with their
//! provenance and, in the same transaction, [`apply`]s them to per-patient
//! Automerge documents and the patients/encounters projection, recording
//! concurrent same-field edits as [`conflicts`]; [`pull`] serves the log
//! back to the sites that hold each patient; [`lookup`] lets a site find a
//! patient registered elsewhere and fetch the patient's whole history.

pub mod apply;
pub mod conflicts;
pub mod document;
pub mod lookup;
pub mod pull;
pub mod push;

use axum::Json;
use axum::http::StatusCode;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;
use santerurale_shared::DeviceId;
use santerurale_shared::sync::codec::CodecError;
use santerurale_shared::sync::wire::{CONTENT_TYPE, codes};
use santerurale_shared::sync::{ErrorBody, SignatureError};
use tokio_postgres::Transaction;

use crate::db::DbError;

/// The request's body names another device than the one that signed it.
pub const DEVICE_MISMATCH: &str = "device_mismatch";

/// A refused or failed sync request.
#[derive(Debug)]
pub struct SyncError {
    pub status: StatusCode,
    /// Stable, machine-readable; also the `result` label of the metrics.
    pub code: &'static str,
    pub message: String,
    pub retryable: bool,
    /// The outbox seq of the change that made the hub refuse the batch
    /// ([`ErrorBody::seq`]).
    pub seq: Option<u64>,
}

impl SyncError {
    /// The caller's fault: sending the same request again will not help.
    pub fn rejected(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retryable: false, seq: None }
    }

    /// One change of a push cannot be taken (422 [`codes::CHANGE_REFUSED`]):
    /// the whole batch is refused, naming the change so the edge can show
    /// which one an operator must look at.
    pub fn change_refused(seq: u64, message: impl Into<String>) -> Self {
        Self { seq: Some(seq), ..Self::rejected(StatusCode::UNPROCESSABLE_ENTITY, codes::CHANGE_REFUSED, message) }
    }

    /// The hub's fault; logged with its cause, not returned.
    pub fn internal(e: &dyn std::error::Error) -> Self {
        tracing::error!(error = %crate::error_chain(e), "sync: internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; see the hub's log".into(),
            retryable: true,
            seq: None,
        }
    }
}

impl From<DbError> for SyncError {
    fn from(e: DbError) -> Self {
        if e.is_retryable() {
            tracing::error!(error = %crate::error_chain(&e), "sync: database unavailable");
            Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "database_unavailable",
                message: "the database is unavailable; try again".into(),
                retryable: true,
                seq: None,
            }
        } else {
            Self::internal(&e)
        }
    }
}

impl From<tokio_postgres::Error> for SyncError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for SyncError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

impl From<SignatureError> for SyncError {
    fn from(e: SignatureError) -> Self {
        Self::rejected(StatusCode::UNAUTHORIZED, e.code(), e.to_string())
    }
}

/// How an undecodable body is refused, for push and pull alike.
impl From<CodecError> for SyncError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::TooLarge { limit } => Self::rejected(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::BODY_TOO_LARGE,
                format!("the body inflates past {limit} bytes: send a smaller batch"),
            ),
            CodecError::UnsupportedProtocol { .. } => {
                Self::rejected(StatusCode::BAD_REQUEST, codes::UNSUPPORTED_PROTOCOL, e.to_string())
            }
            other => Self::rejected(StatusCode::BAD_REQUEST, codes::MALFORMED_BODY, crate::error_chain(&other)),
        }
    }
}

/// Counts a handled sync request under `requests{result}` (when the route
/// has such a counter) and logs a refusal (the caller's fault) with the
/// device it named; then answers.
pub(crate) fn answer(
    requests: Option<&IntCounterVec>,
    what: &str,
    headers: &HeaderMap,
    result: Result<Response, SyncError>,
) -> Response {
    match result {
        Ok(response) => {
            if let Some(requests) = requests {
                requests.with_label_values(&["ok"]).inc();
            }
            response
        }
        Err(e) => {
            if let Some(requests) = requests {
                requests.with_label_values(&[e.code]).inc();
            }
            if !e.retryable {
                let device = headers
                    .get(santerurale_shared::sync::signing::HEADER_DEVICE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::warn!(device, code = e.code, reason = %e.message, "sync {what} refused");
            }
            e.into_response()
        }
    }
}

/// A successful answer: a body in the sync codec.
pub(crate) fn codec_body(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], bytes).into_response()
}

/// [`codec_body`] of an answer that may be megabytes (a page of changes):
/// encoded and compressed off the async runtime.
pub(crate) async fn codec_body_blocking<T: Send + 'static>(
    answer: T,
    encode: fn(&T) -> Result<Vec<u8>, CodecError>,
) -> Result<Response, SyncError> {
    let body = tokio::task::spawn_blocking(move || encode(&answer))
        .await
        .map_err(|e| SyncError::internal(&e))?
        .map_err(|e| SyncError::internal(&e))?;
    Ok(codec_body(body))
}

/// Refuses a request whose body names another device than the one that
/// signed it (403 [`DEVICE_MISMATCH`]).
pub(crate) fn check_device(named: DeviceId, signer: DeviceId) -> Result<(), SyncError> {
    if named == signer {
        Ok(())
    } else {
        Err(SyncError::rejected(
            StatusCode::FORBIDDEN,
            DEVICE_MISMATCH,
            "the request names another device than the one that signed it",
        ))
    }
}

/// Records a signed request's nonce in the caller's transaction: a nonce
/// already there is a replay (409 `replayed_request`). A concurrent twin
/// blocks on the unique key until the first commits, then sees it.
pub(crate) async fn record_nonce(tx: &Transaction<'_>, device: DeviceId, nonce: &[u8]) -> Result<(), SyncError> {
    let fresh = tx
        .execute(
            "INSERT INTO sync_nonces (device_id, nonce) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[device.as_uuid(), &nonce],
        )
        .await?;
    if fresh == 0 {
        return Err(SyncError::rejected(
            StatusCode::CONFLICT,
            codes::REPLAYED_REQUEST,
            "this request was already received (same nonce): sign each request anew",
        ));
    }
    Ok(())
}

/// Records the nonce ([`record_nonce`]) and the contact time of a request
/// that stores nothing of the device's (pull, lookup, fetch), in the caller's
/// transaction, refusing a device revoked since it was authenticated (the
/// revoke and this update lock the same row, so one of them comes second).
/// Push records its contact with more columns, see [`push`].
pub(crate) async fn record_request(tx: &Transaction<'_>, device: DeviceId, nonce: &[u8]) -> Result<(), SyncError> {
    record_nonce(tx, device, nonce).await?;
    tx.query_opt(
        "UPDATE devices SET last_contact = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        &[device.as_uuid()],
    )
    .await?
    .ok_or_else(push::revoked)?;
    Ok(())
}

impl IntoResponse for SyncError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { code: self.code.to_owned(), message: self.message, retryable: self.retryable, seq: self.seq };
        (self.status, Json(body)).into_response()
    }
}

/// The sync routes; `max_body_bytes` bounds a request body as sent.
///
/// A request that declares (`Content-Length`) a body over the limit is
/// refused with 413 before any of it is read: axum's body limit alone only
/// trips once the limit has been received, so an edge on a 2G link would
/// upload the whole oversized batch before hearing it should split it.
pub fn router(max_body_bytes: usize) -> axum::Router<crate::AppState> {
    push::router(max_body_bytes).merge(pull::router(max_body_bytes)).merge(lookup::router(max_body_bytes)).route_layer(
        axum::middleware::from_fn(move |request, next| declared_length_within(max_body_bytes, request, next)),
    )
}

/// See [`router`].
async fn declared_length_within(
    max_body_bytes: usize,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(max_body_bytes).unwrap_or(u64::MAX)) {
        tracing::debug!(declared, max_body_bytes, "sync: body declared over the limit; refused unread");
        return SyncError::rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::BODY_TOO_LARGE,
            format!("the body is larger than {max_body_bytes} bytes: send a smaller batch"),
        )
        .into_response();
    }
    next.run(request).await
}
