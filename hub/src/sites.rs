//! Sites (clinics): `POST /api/v1/sites` (admins), `GET /api/v1/sites`,
//! `PATCH /api/v1/sites/{id}` (admins, see [`SitePatch`]) and
//! `GET /api/v1/sites/{id}/sync-status` (admins, see [`sync_status`]).
//!
//! A site's `code` is its short human code, stored upper-case and unique;
//! `dhis2_org_unit`, when known, is the DHIS2 organisation unit uid the
//! clinic reports under (11 characters: a letter, then letters or digits).
//! `dhis2_org_unit_code` is that organisation unit's DHIS2 code, what a
//! deployment knows: `hub dhis2 resolve-mapping` (and the admin UI's
//! "resolve" button) looks it up in DHIS2 and fills `dhis2_org_unit` with the
//! uid of the configured instance.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
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
/// DHIS2 limits codes to 50 characters.
const MAX_ORG_UNIT_CODE_CHARS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    pub code: String,
    pub dhis2_org_unit: Option<String>,
    /// The DHIS2 code of the organisation unit (e.g. `OU_KATI`).
    pub dhis2_org_unit_code: Option<String>,
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
    pub dhis2_org_unit_code: Option<String>,
}

/// A [`NewSite`] that passed [`NewSite::validate`]: trimmed, code upper-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSite {
    pub name: String,
    pub code: String,
    pub dhis2_org_unit: Option<String>,
    pub dhis2_org_unit_code: Option<String>,
}

impl NewSite {
    pub fn validate(&self) -> Result<ValidSite, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = check_name(self.name.as_deref(), &mut errors);
        let code = self.code.as_deref().map(str::trim).unwrap_or_default().to_ascii_uppercase();
        if code.is_empty() {
            errors.push("code", "required", "this field is required");
        } else if !(2..=32).contains(&code.len())
            || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push("code", "invalid_format", "2 to 32 letters, digits, '-' or '_'");
        }
        let dhis2_org_unit = check_org_unit(self.dhis2_org_unit.as_deref(), &mut errors);
        let dhis2_org_unit_code = check_org_unit_code(self.dhis2_org_unit_code.as_deref(), &mut errors);
        errors.into_result(ValidSite { name, code, dhis2_org_unit, dhis2_org_unit_code })
    }
}

/// A site's name, trimmed: required, at most [`MAX_NAME_CHARS`], printable.
fn check_name(name: Option<&str>, errors: &mut ValidationErrors) -> String {
    let name = name.map(str::trim).unwrap_or_default();
    if name.is_empty() {
        errors.push("name", "required", "this field is required");
    } else if name.chars().count() > MAX_NAME_CHARS {
        errors.push("name", "too_long", format!("at most {MAX_NAME_CHARS} characters"));
    } else if name.chars().any(char::is_control) {
        errors.push("name", "invalid_characters", "contains control characters");
    }
    name.to_owned()
}

/// An organisation unit uid, trimmed; blank is none.
fn check_org_unit(uid: Option<&str>, errors: &mut ValidationErrors) -> Option<String> {
    let uid = uid.map(str::trim).filter(|s| !s.is_empty())?;
    if !is_dhis2_uid(uid) {
        errors.push("dhis2_org_unit", "invalid_format", "a DHIS2 uid: 11 letters or digits, starting with a letter");
    }
    Some(uid.to_owned())
}

/// An organisation unit code, trimmed (DHIS2 codes are free text, case
/// kept); blank is none.
fn check_org_unit_code(code: Option<&str>, errors: &mut ValidationErrors) -> Option<String> {
    let code = code.map(str::trim).filter(|s| !s.is_empty())?;
    if code.chars().count() > MAX_ORG_UNIT_CODE_CHARS {
        errors.push(
            "dhis2_org_unit_code",
            "too_long",
            format!("at most {MAX_ORG_UNIT_CODE_CHARS} characters (DHIS2's limit)"),
        );
    } else if code.chars().any(char::is_control) {
        errors.push("dhis2_org_unit_code", "invalid_characters", "contains control characters");
    }
    Some(code.to_owned())
}

/// The body of `PATCH /api/v1/sites/{id}`: only the fields present change.
/// `dhis2_org_unit` and `dhis2_org_unit_code` are cleared by `null` or `""`;
/// the name cannot be cleared. Changing the code without giving a uid in the
/// same request clears the uid, which named the old code's organisation unit
/// (resolving the mapping fills it again). The site's `code` does not change:
/// devices and the sync protocol know the site by it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub dhis2_org_unit: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub dhis2_org_unit_code: Option<Option<String>>,
}

/// `Some(value)` for a field present in the JSON, `null` included: with
/// `#[serde(default)]`, an absent field stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A [`SitePatch`] that passed [`SitePatch::validate`]; `Some(None)` clears.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidPatch {
    pub name: Option<String>,
    pub dhis2_org_unit: Option<Option<String>>,
    pub dhis2_org_unit_code: Option<Option<String>>,
}

impl SitePatch {
    pub fn validate(&self) -> Result<ValidPatch, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = self.name.as_deref().map(|n| check_name(Some(n), &mut errors));
        let dhis2_org_unit = self.dhis2_org_unit.as_ref().map(|u| check_org_unit(u.as_deref(), &mut errors));
        let dhis2_org_unit_code =
            self.dhis2_org_unit_code.as_ref().map(|c| check_org_unit_code(c.as_deref(), &mut errors));
        errors.into_result(ValidPatch { name, dhis2_org_unit, dhis2_org_unit_code })
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
            "INSERT INTO sites (id, name, code, dhis2_org_unit, dhis2_org_unit_code) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, code, dhis2_org_unit, dhis2_org_unit_code, created_at",
            &[SiteId::new().as_uuid(), &site.name, &site.code, &site.dhis2_org_unit, &site.dhis2_org_unit_code],
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

/// Applies `patch` to site `id` in one statement; `None` when there is no
/// such site.
pub async fn update(pool: &deadpool_postgres::Pool, id: SiteId, patch: &ValidPatch) -> Result<Option<Site>, DbError> {
    let client = pool.get().await?;
    let uid_given = patch.dhis2_org_unit.is_some();
    let uid = patch.dhis2_org_unit.clone().flatten();
    let code_given = patch.dhis2_org_unit_code.is_some();
    let code = patch.dhis2_org_unit_code.clone().flatten();
    // The right-hand sides see the row as it was: a changed code clears a uid not given alongside.
    let row = client
        .query_opt(
            "UPDATE sites SET
                name = COALESCE($2, name),
                dhis2_org_unit = CASE WHEN $3 THEN $4
                                      WHEN $5 AND dhis2_org_unit_code IS DISTINCT FROM $6 THEN NULL
                                      ELSE dhis2_org_unit END,
                dhis2_org_unit_code = CASE WHEN $5 THEN $6 ELSE dhis2_org_unit_code END
             WHERE id = $1
             RETURNING id, name, code, dhis2_org_unit, dhis2_org_unit_code, created_at",
            &[id.as_uuid(), &patch.name, &uid_given, &uid, &code_given, &code],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(pool: &deadpool_postgres::Pool) -> Result<Vec<Site>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, name, code, dhis2_org_unit, dhis2_org_unit_code, created_at FROM sites ORDER BY name, code",
            &[],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

fn from_row(row: &Row) -> Result<Site, DbError> {
    Ok(Site {
        id: SiteId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        code: row.try_get("code")?,
        dhis2_org_unit: row.try_get("dhis2_org_unit")?,
        dhis2_org_unit_code: row.try_get("dhis2_org_unit_code")?,
        created_at: row.try_get("created_at")?,
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sites", get(list_sites).post(create_site))
        .route("/api/v1/sites/{id}", patch(patch_site))
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

async fn patch_site(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SitePatch>,
) -> Result<Json<Site>, ApiError> {
    user.require_admin()?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "site_not_found", "no such site");
    let id: SiteId = id.parse().map_err(|_| not_found())?;
    let valid = body.validate().map_err(|e| ApiError::validation(&e))?;
    let site = update(&state.db, id, &valid).await?.ok_or_else(not_found)?;
    tracing::info!(site = %site.id, by = %user.username, "site updated");
    Ok(Json(site))
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
        NewSite {
            name: Some(name.into()),
            code: Some(code.into()),
            dhis2_org_unit: ou.map(Into::into),
            dhis2_org_unit_code: None,
        }
    }

    #[test]
    fn validation() {
        let ok = new(" CSCom de Kati ", "kati-01", Some("DiszpKrYNg8")).validate().expect("valid");
        assert_eq!(
            ok,
            ValidSite {
                name: "CSCom de Kati".into(),
                code: "KATI-01".into(),
                dhis2_org_unit: Some("DiszpKrYNg8".into()),
                dhis2_org_unit_code: None,
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
        let coded = NewSite { dhis2_org_unit_code: Some(" OU_Kati ".into()), ..new("X", "KT", None) };
        assert_eq!(coded.validate().expect("valid").dhis2_org_unit_code.as_deref(), Some("OU_Kati"), "case kept");
        let long = NewSite { dhis2_org_unit_code: Some("C".repeat(51)), ..new("X", "KT", None) };
        let errs = long.validate().expect_err("invalid");
        assert_eq!(errs.0.iter().map(|e| (e.field, e.code)).collect::<Vec<_>>(), [("dhis2_org_unit_code", "too_long")]);
    }

    #[test]
    fn a_patch_tells_absent_from_cleared() {
        let patch: SitePatch =
            serde_json::from_str(r#"{"dhis2_org_unit": null, "dhis2_org_unit_code": " OU_KATI "}"#).expect("json");
        let valid = patch.validate().expect("valid");
        assert_eq!(
            valid,
            ValidPatch { name: None, dhis2_org_unit: Some(None), dhis2_org_unit_code: Some(Some("OU_KATI".into())) }
        );
        let blank: SitePatch = serde_json::from_str(r#"{"dhis2_org_unit_code": ""}"#).expect("json");
        assert_eq!(blank.validate().expect("valid").dhis2_org_unit_code, Some(None));
        assert_eq!(SitePatch::default().validate().expect("valid"), ValidPatch::default());
        let bad: SitePatch =
            serde_json::from_str(r#"{"name": " ", "dhis2_org_unit": "1abc", "dhis2_org_unit_code": "a\u0007"}"#)
                .expect("json");
        let errs = bad.validate().expect_err("invalid");
        assert_eq!(
            errs.0.iter().map(|e| (e.field, e.code)).collect::<Vec<_>>(),
            [("name", "required"), ("dhis2_org_unit", "invalid_format"), ("dhis2_org_unit_code", "invalid_characters")]
        );
        assert!(serde_json::from_str::<SitePatch>(r#"{"code": "X"}"#).is_err(), "the site code is not editable");
    }
}
