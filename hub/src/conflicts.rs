//! `GET /api/v1/conflicts?status=open|resolved|all` (admins): the fields of
//! patient documents written concurrently on two devices, recorded when the
//! changes were applied (see [`crate::sync::conflicts`]). Open by default,
//! newest first, at most [`LIST_LIMIT`].
//!
//! Each conflict lists its competing values with the device that wrote each
//! and which one Automerge picked (`winner`, the value the projection and
//! every clinic show).
//!
//! `POST /api/v1/conflicts/{id}/resolve` with `{"value": ...}` (admins): the
//! admin picks the field's value, which becomes a new change that syncs to
//! every clinic holding the patient. [`resolve`] does it in one PostgreSQL
//! transaction, so it is all or nothing:
//! 1. take the log's advisory lock (the one push takes: `hub_seq` values
//!    become visible in order, which pull relies on, and no push applies to
//!    the document meanwhile), then lock the conflict row: unknown is 404,
//!    already resolved (by an admin or by a later edit) 409;
//! 2. lock the patient's saved document (`FOR UPDATE`) and write the choice
//!    onto it as an Automerge change by a fresh random hub actor
//!    ([`crate::sync::conflicts::write_resolution`]): one of the competing
//!    values as is, or a new value that passes the edge's own validation
//!    (422 otherwise), at the key where the edge keeps the field;
//! 3. store the change in the `changes` log with the admin as its author
//!    (`author_user_id`, no device: migration 0005), so pull sends it to
//!    every site in `site_patients` for the patient, the ones that pushed
//!    the competing edits included;
//! 4. close the conflict (`resolved_by` = the admin's username,
//!    `resolution` = `{"value", "change_hash", "hub_seq"}`), then apply the
//!    change like a pushed one ([`crate::sync::apply::apply_authored`]):
//!    document saved, projection rewritten, other conflicts re-checked.
//!
//! An edge that edits the field again before it pulls the resolution makes
//! a new concurrent value: the next push opens a new conflict, as it should.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::AppState;
use crate::api::error::{ApiError, ApiJson};
use crate::auth::CurrentUser;
use crate::db::DbError;
use crate::sync::SyncError;
use crate::sync::apply;
use crate::sync::conflicts::{Resolution, ResolutionError, write_resolution};
use crate::sync::document::ValueError;

/// Largest number of conflicts listed.
pub const LIST_LIMIT: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/conflicts", get(list_conflicts))
        .route("/api/v1/conflicts/{id}/resolve", post(resolve_conflict))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Open,
    Resolved,
    All,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    status: Status,
}

/// One competing value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictValue {
    pub value: serde_json::Value,
    pub device_id: Option<Uuid>,
    pub winner: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conflict {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub field: String,
    pub values: Vec<ConflictValue>,
    #[serde(with = "time::serde::rfc3339")]
    pub detected_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// `merge` (a later edit left one value) or the resolving admin's username.
    pub resolved_by: Option<String>,
    /// `{"value"}`; an admin's also names the change (`change_hash`, `hub_seq`).
    pub resolution: Option<serde_json::Value>,
}

async fn list_conflicts(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let conflicts = list(&state.db, query.status).await?;
    Ok(Json(serde_json::json!({ "conflicts": conflicts })))
}

pub async fn list(pool: &deadpool_postgres::Pool, status: Status) -> Result<Vec<Conflict>, DbError> {
    let filter = match status {
        Status::Open => "WHERE resolved_at IS NULL",
        Status::Resolved => "WHERE resolved_at IS NOT NULL",
        Status::All => "",
    };
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM conflicts {filter} ORDER BY detected_at DESC, id DESC LIMIT $1"),
            &[&LIST_LIMIT],
        )
        .await?;
    rows.iter().map(conflict).collect()
}

/// How many conflicts are open (for the `sync_conflicts_open` gauge).
pub async fn count_open(pool: &deadpool_postgres::Pool) -> Result<i64, DbError> {
    let client = pool.get().await?;
    Ok(client.query_one("SELECT count(*) FROM conflicts WHERE resolved_at IS NULL", &[]).await?.try_get(0)?)
}

/// The columns [`conflict`] reads.
const COLUMNS: &str = "id, patient_id, field, \"values\"::text AS vals, detected_at, resolved_at, resolved_by,
                       resolution::text AS res";

fn conflict(r: &Row) -> Result<Conflict, DbError> {
    let json = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).map_err(|e| DbError::Invalid(format!("conflict JSON: {e}")))
    };
    let values: String = r.try_get("vals")?;
    let values =
        serde_json::from_value(json(&values)?).map_err(|e| DbError::Invalid(format!("conflict values: {e}")))?;
    Ok(Conflict {
        id: r.try_get("id")?,
        patient_id: r.try_get("patient_id")?,
        field: r.try_get("field")?,
        values,
        detected_at: r.try_get("detected_at")?,
        resolved_at: r.try_get("resolved_at")?,
        resolved_by: r.try_get("resolved_by")?,
        resolution: r.try_get::<_, Option<String>>("res")?.as_deref().map(json).transpose()?,
    })
}

/// Why a resolution was refused or failed. Nothing was written either way.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no conflict {0}")]
    NotFound(Uuid),
    #[error("conflict {id} is already resolved (by {by})")]
    AlreadyResolved { id: Uuid, by: String },
    /// The value is not one the field accepts (or the field cannot be found).
    #[error(transparent)]
    Value(#[from] ResolutionError),
    /// The signed-in account no longer exists: a change needs a real author.
    #[error("the signed-in account does not exist")]
    UnknownAccount,
    #[error(transparent)]
    Db(#[from] DbError),
    /// Applying the change failed; the cause was logged where it happened.
    #[error("applying the resolution failed ({code})")]
    Apply { code: &'static str, retryable: bool },
    #[error("the resolution task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl ResolveError {
    fn apply(e: SyncError) -> Self {
        Self::Apply { code: e.code, retryable: e.retryable && e.status == StatusCode::SERVICE_UNAVAILABLE }
    }

    /// Whether the admin's choice itself is at fault (a 422: show it next
    /// to the value).
    #[must_use]
    pub fn is_refused_value(&self) -> bool {
        matches!(self, Self::Value(ResolutionError::Refused(_) | ResolutionError::Unreadable(_)))
    }
}

impl From<tokio_postgres::Error> for ResolveError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for ResolveError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        let unprocessable = |code, message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
        match e {
            ResolveError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "conflict_not_found", e.to_string()),
            ResolveError::AlreadyResolved { .. } => ApiError::conflict("conflict_already_resolved", e.to_string()),
            ResolveError::Value(ResolutionError::Refused(ValueError::Invalid(errors))) => ApiError::validation(&errors),
            ResolveError::Value(ResolutionError::UnknownField(_)) => {
                ApiError::conflict("conflict_field_missing", e.to_string())
            }
            ResolveError::Value(ResolutionError::Automerge(_)) => ApiError::internal(&e),
            ResolveError::Value(v) => unprocessable("invalid_value", crate::error_chain(&v)),
            ResolveError::UnknownAccount => {
                ApiError::unauthorized("the signed-in account no longer exists; sign in with another one")
            }
            ResolveError::Db(db) => db.into(),
            ResolveError::Apply { retryable: true, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable; try again",
            ),
            ResolveError::Apply { .. } | ResolveError::Task(_) => ApiError::internal(&e),
        }
    }
}

/// The body of `POST /api/v1/conflicts/{id}/resolve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    /// The chosen value; `null` removes an optional field.
    value: serde_json::Value,
}

async fn resolve_conflict(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResolveBody>,
) -> Result<Json<Conflict>, ApiError> {
    user.require_admin()?;
    // Not a UUID: no such conflict either.
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "conflict_not_found", "no such conflict"))?;
    let resolved = resolve(&state.db, id, body.value, &user).await?;
    state.metrics.sync_conflicts_resolved.inc();
    // The field's name only: the value may be a name or a phone number.
    tracing::info!(conflict = %id, field = %resolved.field, by = %user.username, "conflict resolved");
    Ok(Json(resolved))
}

/// Resolves conflict `conflict_id` with `value`, as `admin` (see the module
/// docs for the steps). Returns the conflict, now resolved. Callers other
/// than the API count it in `state.metrics.sync_conflicts_resolved`.
pub async fn resolve(
    pool: &deadpool_postgres::Pool,
    conflict_id: Uuid,
    value: serde_json::Value,
    admin: &CurrentUser,
) -> Result<Conflict, ResolveError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    apply::lock_log(&tx).await.map_err(ResolveError::apply)?;
    let row = tx
        .query_opt("SELECT patient_id, field, resolved_by FROM conflicts WHERE id = $1 FOR UPDATE", &[&conflict_id])
        .await?
        .ok_or(ResolveError::NotFound(conflict_id))?;
    let (patient, field): (Uuid, String) = (row.try_get(0)?, row.try_get(1)?);
    if let Some(by) = row.try_get::<_, Option<String>>(2)? {
        return Err(ResolveError::AlreadyResolved { id: conflict_id, by });
    }
    // The log names the author; an account removed since it signed in
    // cannot be one.
    if tx.query_opt("SELECT 1 FROM users WHERE id = $1", &[admin.id.as_uuid()]).await?.is_none() {
        return Err(ResolveError::UnknownAccount);
    }
    let saved: Vec<u8> =
        tx.query_one("SELECT doc FROM documents WHERE patient_id = $1 FOR UPDATE", &[&patient]).await?.try_get(0)?;
    let now = OffsetDateTime::now_utc();
    let written = field.clone();
    let Resolution { change, hash, value } =
        tokio::task::spawn_blocking(move || write_resolution(&saved, conflict_id, &written, &value, now)).await??;

    let hub_seq: i64 = tx
        .query_one(
            "INSERT INTO changes (change_hash, patient_id, author_user_id, bytes) VALUES ($1, $2, $3, $4)
             RETURNING hub_seq",
            &[&hash, &patient, admin.id.as_uuid(), &change],
        )
        .await?
        .try_get(0)?;
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let resolution = serde_json::json!({ "value": value, "change_hash": hex, "hub_seq": hub_seq }).to_string();
    // Closed before applying, so the apply does not also settle it as 'merge'.
    let row = tx
        .query_one(
            &format!(
                "UPDATE conflicts SET resolved_at = now(), resolved_by = $2, resolution = $3::text::jsonb
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&conflict_id, &admin.username, &resolution],
        )
        .await?;
    let resolved = conflict(&row)?;
    apply::apply_authored(&tx, vec![(patient, change)]).await.map_err(ResolveError::apply)?;
    tx.commit().await?;
    Ok(resolved)
}
