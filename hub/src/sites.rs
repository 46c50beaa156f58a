//! Sites (clinics): `POST /api/v1/sites` (admins), `GET /api/v1/sites`, and
//! `GET /api/v1/sites/{id}/sync-status` (admins, see [`sync_status`]).
//!
//! A site's `code` is its short human code, stored upper-case and unique;
//! `dhis2_org_unit`, when known, is the DHIS2 organisation unit uid the
//! clinic reports under (11 characters: a letter, then letters or digits).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use santerurale_shared::{DeviceId, SiteId, ValidationErrors};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::AppState;
use crate::api::error::{ApiError, ApiJson};
use crate::auth::CurrentUser;
use crate::db::{DbError, is_unique_violation};

const MAX_NAME_CHARS: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    pub code: String,
    pub dhis2_org_unit: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The body of `POST /api/v1/sites`. Fields are optional here so that a
/// missing one is reported with the others, as a field error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewSite {
    pub name: Option<String>,
    pub code: Option<String>,
    pub dhis2_org_unit: Option<String>,
}

/// A [`NewSite`] that passed [`NewSite::validate`]: trimmed, code upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSite {
    pub name: String,
    pub code: String,
    pub dhis2_org_unit: Option<String>,
}

impl NewSite {
    pub fn validate(&self) -> Result<ValidSite, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = self.name.as_deref().map(str::trim).unwrap_or_default();
        if name.is_empty() {
            errors.push("name", "required", "this field is required");
        } else if name.chars().count() > MAX_NAME_CHARS {
            errors.push("name", "too_long", format!("at most {MAX_NAME_CHARS} characters"));
        } else if name.chars().any(char::is_control) {
            errors.push("name", "invalid_characters", "contains control characters");
        }
        let code = self.code.as_deref().map(str::trim).unwrap_or_default().to_ascii_uppercase();
        if code.is_empty() {
            errors.push("code", "required", "this field is required");
        } else if !(2..=32).contains(&code.len())
            || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push("code", "invalid_format", "2 to 32 letters, digits, '-' or '_'");
        }
        let org_unit = self.dhis2_org_unit.as_deref().map(str::trim).filter(|s| !s.is_empty());
        if let Some(uid) = org_unit
            && !is_dhis2_uid(uid)
        {
            errors.push(
                "dhis2_org_unit",
                "invalid_format",
                "a DHIS2 uid: 11 letters or digits, starting with a letter",
            );
        }
        errors.into_result(ValidSite { name: name.to_owned(), code, dhis2_org_unit: org_unit.map(str::to_owned) })
    }
}

fn is_dhis2_uid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11 && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("a site with the code {0} already exists")]
    CodeTaken(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<SiteError> for ApiError {
    fn from(e: SiteError) -> Self {
        match e {
            SiteError::CodeTaken(_) => Self::conflict("site_code_taken", e.to_string()),
            SiteError::Db(e) => e.into(),
        }
    }
}

pub async fn insert(pool: &deadpool_postgres::Pool, site: &ValidSite) -> Result<Site, SiteError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let row = client
        .query_one(
            "INSERT INTO sites (id, name, code, dhis2_org_unit) VALUES ($1, $2, $3, $4)
             RETURNING id, name, code, dhis2_org_unit, created_at",
            &[SiteId::new().as_uuid(), &site.name, &site.code, &site.dhis2_org_unit],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "sites_code_key") {
                SiteError::CodeTaken(site.code.clone())
            } else {
                SiteError::Db(e.into())
            }
        })?;
    Ok(from_row(&row)?)
}

pub async fn list(pool: &deadpool_postgres::Pool) -> Result<Vec<Site>, DbError> {
    let client = pool.get().await?;
    let rows =
        client.query("SELECT id, name, code, dhis2_org_unit, created_at FROM sites ORDER BY name, code", &[]).await?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &Row) -> Result<Site, DbError> {
    Ok(Site {
        id: SiteId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        code: row.try_get("code")?,
        dhis2_org_unit: row.try_get("dhis2_org_unit")?,
        created_at: row.try_get("created_at")?,
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sites", get(list_sites).post(create_site))
        .route("/api/v1/sites/{id}/sync-status", get(get_sync_status))
}

async fn create_site(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<NewSite>,
) -> Result<Response, ApiError> {
    user.require_admin()?;
    let valid = body.validate().map_err(|e| ApiError::validation(&e))?;
    let site = insert(&state.db, &valid).await?;
    tracing::info!(site = %site.id, code = %site.code, by = %user.username, "site created");
    Ok((StatusCode::CREATED, Json(site)).into_response())
}

async fn list_sites(State(state): State<AppState>, _user: CurrentUser) -> Result<Json<Vec<Site>>, ApiError> {
    Ok(Json(list(&state.db).await?))
}

/// How a site's sync stands, from what its devices last told the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteSyncStatus {
    pub site_id: SiteId,
    pub code: String,
    pub name: String,
    /// The latest sync request (push or pull) of any of its devices.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_contact: Option<OffsetDateTime>,
    /// Changes its devices pushed that were new to the hub.
    pub changes_received: i64,
    /// Outbox entries its active (unrevoked) devices last reported pending, summed.
    pub outbox_depth: i64,
    /// Patients the site holds (it pushed to them; pull sends it theirs).
    pub patients: i64,
    /// Open conflicts on those patients.
    pub open_conflicts: i64,
    /// Every device ever enrolled in the site, oldest first.
    pub devices: Vec<DeviceSyncStatus>,
}

/// One device of a [`SiteSyncStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSyncStatus {
    pub id: DeviceId,
    /// `enrolled` or `revoked`.
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_contact: Option<OffsetDateTime>,
    /// As last reported by a push; `None` before its first push.
    pub outbox_depth: Option<i64>,
    /// The highest outbox seq of its the hub has stored.
    pub last_push_seq: i64,
    pub changes_received: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncStatusError {
    #[error("no site {0}")]
    NotFound(SiteId),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<SyncStatusError> for ApiError {
    fn from(e: SyncStatusError) -> Self {
        match e {
            SyncStatusError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "site_not_found", e.to_string()),
            SyncStatusError::Db(e) => e.into(),
        }
    }
}

/// The sync status of site `site_id`, read in one snapshot.
pub async fn sync_status(pool: &deadpool_postgres::Pool, site_id: SiteId) -> Result<SiteSyncStatus, SyncStatusError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(DbError::from)?;
    let id = site_id.as_uuid();
    let site = tx
        .query_opt(
            "SELECT s.code, s.name,
                    (SELECT count(*) FROM site_patients sp WHERE sp.site_id = s.id) AS patients,
                    (SELECT count(*) FROM conflicts c
                     WHERE c.resolved_at IS NULL
                       AND c.patient_id IN (SELECT sp.patient_id FROM site_patients sp WHERE sp.site_id = s.id))
                        AS open_conflicts
             FROM sites s WHERE s.id = $1",
            &[id],
        )
        .await
        .map_err(DbError::from)?
        .ok_or(SyncStatusError::NotFound(site_id))?;
    // A change's site is its device's: per-device counts add up to the site's.
    let rows = tx
        .query(
            "SELECT d.id, d.enrolled_at, d.revoked_at, d.last_contact, d.outbox_depth, d.last_push_seq,
                    (SELECT count(*) FROM changes c WHERE c.device_id = d.id) AS received
             FROM devices d WHERE d.site_id = $1 ORDER BY d.enrolled_at, d.id",
            &[id],
        )
        .await
        .map_err(DbError::from)?;
    tx.commit().await.map_err(DbError::from)?;
    let devices = rows
        .iter()
        .map(|r| -> Result<DeviceSyncStatus, DbError> {
            let revoked_at: Option<OffsetDateTime> = r.try_get("revoked_at")?;
            Ok(DeviceSyncStatus {
                id: DeviceId::from_uuid(r.try_get("id")?),
                status: if revoked_at.is_some() { "revoked" } else { "enrolled" },
                enrolled_at: r.try_get("enrolled_at")?,
                revoked_at,
                last_contact: r.try_get("last_contact")?,
                outbox_depth: r.try_get("outbox_depth")?,
                last_push_seq: r.try_get("last_push_seq")?,
                changes_received: r.try_get("received")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SiteSyncStatus {
        site_id,
        code: site.try_get("code").map_err(DbError::from)?,
        name: site.try_get("name").map_err(DbError::from)?,
        last_contact: devices.iter().filter_map(|d| d.last_contact).max(),
        changes_received: devices.iter().map(|d| d.changes_received).sum(),
        outbox_depth: devices.iter().filter(|d| d.revoked_at.is_none()).filter_map(|d| d.outbox_depth).sum(),
        patients: site.try_get("patients").map_err(DbError::from)?,
        open_conflicts: site.try_get("open_conflicts").map_err(DbError::from)?,
        devices,
    })
}

async fn get_sync_status(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<SiteSyncStatus>, ApiError> {
    user.require_admin()?;
    // Not a UUID: no such site either.
    let id: SiteId = id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "site_not_found", "no such site"))?;
    Ok(Json(sync_status(&state.db, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, code: &str, ou: Option<&str>) -> NewSite {
        NewSite { name: Some(name.into()), code: Some(code.into()), dhis2_org_unit: ou.map(Into::into) }
    }

    #[test]
    fn validation() {
        let ok = new(" CSCom de Kati ", "kati-01", Some("DiszpKrYNg8")).validate().expect("valid");
        assert_eq!(
            ok,
            ValidSite {
                name: "CSCom de Kati".into(),
                code: "KATI-01".into(),
                dhis2_org_unit: Some("DiszpKrYNg8".into())
            }
        );
        assert_eq!(new("X", "KT", Some("  ")).validate().expect("valid").dhis2_org_unit, None);
        let errs = NewSite::default().validate().expect_err("invalid");
        assert_eq!(
            errs.0.iter().map(|e| (e.field, e.code)).collect::<Vec<_>>(),
            [("name", "required"), ("code", "required")]
        );
        let errs = new("X", "K", Some("1iszpKrYNg8")).validate().expect_err("invalid");
        assert_eq!(errs.0.iter().map(|e| e.field).collect::<Vec<_>>(), ["code", "dhis2_org_unit"]);
        assert!(new("X", "KATI 01", None).validate().is_err());
        assert!(new("X", "KT", Some("DiszpKrYNg")).validate().is_err());
    }
}
