//! The hub's side of the edge-hub sync protocol (see
//! `santerurale_shared::sync` for the protocol itself: messages, codec,
//! signatures). This module does the I/O: HTTP, PostgreSQL, the clock.
//!
//! Sync routes take no bearer token: every request is signed by the device
//! that sends it, and the signature is the authentication. Their errors are
//! JSON [`ErrorBody`] (`code`, `message`, `retryable`), with codes from
//! [`santerurale_shared::sync::wire::codes`] plus [`DEVICE_MISMATCH`].
//! `retryable` is true only when the same request may pass later unchanged:
//! the database was unavailable, or the hub failed internally.
//!
//! [`push`] stores changes once each in the `changes` log with their
//! provenance and, in the same transaction, [`apply`]s them to per-patient
//! Automerge documents and the patients/encounters projection, recording
//! concurrent same-field edits as [`conflicts`]; [`pull`] serves the log
//! back to the sites that hold each patient. Not yet done (issue 3, next
//! steps): admin resolution of a conflict, and fetching the earlier
//! history of a patient a site starts holding through a cross-site lookup.

pub mod apply;
pub mod conflicts;
pub mod document;
pub mod pull;
pub mod push;

use axum::Json;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;
use santerurale_shared::sync::codec::CodecError;
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{ErrorBody, SignatureError};

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
}

impl SyncError {
    /// The caller's fault: sending the same request again will not help.
    pub fn rejected(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retryable: false }
    }

    /// The hub's fault; logged with its cause, not returned.
    pub fn internal(e: &dyn std::error::Error) -> Self {
        tracing::error!(error = %crate::error_chain(e), "sync: internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error; see the hub's log".into(),
            retryable: true,
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

/// Counts a handled sync request under `requests{result}` and logs a refusal
/// (the caller's fault) with the device it named; then answers.
pub(crate) fn answer(
    requests: &IntCounterVec,
    what: &str,
    headers: &HeaderMap,
    result: Result<Response, SyncError>,
) -> Response {
    match result {
        Ok(response) => {
            requests.with_label_values(&["ok"]).inc();
            response
        }
        Err(e) => {
            requests.with_label_values(&[e.code]).inc();
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

impl IntoResponse for SyncError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { code: self.code.to_owned(), message: self.message, retryable: self.retryable }))
            .into_response()
    }
}

/// The sync routes; `max_body_bytes` bounds a request body as sent.
pub fn router(max_body_bytes: usize) -> axum::Router<crate::AppState> {
    push::router(max_body_bytes).merge(pull::router(max_body_bytes))
}
