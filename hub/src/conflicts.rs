//! `GET /api/v1/conflicts?status=open|resolved|all` (admins): the fields of
//! patient documents written concurrently on two devices, recorded when the
//! changes were applied (see [`crate::sync::conflicts`]). Open by default,
//! newest first, at most [`LIST_LIMIT`].
//!
//! Each conflict lists its competing values with the device that wrote each
//! and which one Automerge picked (`winner`, the value the projection and
//! every clinic show). Not yet done (issue 3): an admin resolving a conflict
//! by choosing a value, which needs a hub actor writing a change to the log.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::AppState;
use crate::api::error::ApiError;
use crate::auth::CurrentUser;
use crate::db::DbError;

/// Largest number of conflicts listed.
pub const LIST_LIMIT: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/conflicts", get(list_conflicts))
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
            &format!(
                "SELECT id, patient_id, field, \"values\"::text AS vals, detected_at, resolved_at FROM conflicts
                 {filter} ORDER BY detected_at DESC, id DESC LIMIT $1"
            ),
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

fn conflict(r: &Row) -> Result<Conflict, DbError> {
    let values: String = r.try_get("vals")?;
    let values = serde_json::from_str(&values).map_err(|e| DbError::Invalid(format!("conflict values: {e}")))?;
    Ok(Conflict {
        id: r.try_get("id")?,
        patient_id: r.try_get("patient_id")?,
        field: r.try_get("field")?,
        values,
        detected_at: r.try_get("detected_at")?,
        resolved_at: r.try_get("resolved_at")?,
    })
}
