//! Sites (clinics): `POST /api/v1/sites` (admins) and `GET /api/v1/sites`.
//!
//! A site's `code` is its short human code, stored upper-case and unique;
//! `dhis2_org_unit`, when known, is the DHIS2 organisation unit uid the
//! clinic reports under (11 characters: a letter, then letters or digits).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use santerurale_shared::{SiteId, ValidationErrors};
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
    Router::new().route("/api/v1/sites", get(list_sites).post(create_site))
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
