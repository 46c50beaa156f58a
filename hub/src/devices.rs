//! Edge devices and how they join a site.
//!
//! 1. An admin asks for an enrollment token for a site
//!    (`POST /api/v1/sites/{id}/enrollment-tokens`): 256 random bits, shown
//!    once. Only its SHA-256 is stored, so a database dump gives no usable
//!    token. It expires after `enrollment_token_ttl_minutes` (24 h by default).
//! 2. The edge generates its ed25519 key pair and a device id (a UUID, also
//!    its Automerge actor id) and sends both with the token to
//!    `POST /api/v1/devices/enroll` (no bearer token: the enrollment token is
//!    the credential).
//! 3. In one transaction the hub spends the token with
//!    `UPDATE ... WHERE used_at IS NULL AND expires_at > now() RETURNING`
//!    (the row lock makes a second, concurrent enrollment with the same token
//!    find it used), inserts the device and records which device spent it. A
//!    device id or key already enrolled rolls the whole transaction back, so
//!    the token stays unspent.
//!
//! From then on the device signs its sync requests with its key
//! ([`crate::sync`]). Revoking (`POST /api/v1/devices/{id}/revoke`) keeps the
//! row, since its changes still name it, and makes its next request fail
//! with `revoked_device`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use santerurale_shared::sync::VerifyingKey;
use santerurale_shared::{DeviceId, SiteId, ValidationErrors};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::AppState;
use crate::api::error::{ApiError, ApiJson};
use crate::auth::CurrentUser;
use crate::db::{DbError, is_unique_violation};

/// `POST /api/v1/sites/{id}/enrollment-tokens` answer. The token is shown
/// this once; the hub keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentToken {
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `POST /api/v1/devices/enroll` body. Optional fields so that missing ones
/// are reported as field errors (422) with the others.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EnrollRequest {
    pub token: Option<String>,
    pub device_id: Option<String>,
    /// The 32-byte ed25519 verifying key, base64url without padding.
    pub public_key: Option<String>,
}

/// `POST /api/v1/devices/enroll` answer: the site the device now belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    pub site_id: SiteId,
    pub device_id: DeviceId,
    pub site_name: String,
    pub site_code: String,
}

/// A device as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: DeviceId,
    pub site_id: SiteId,
    /// base64url without padding.
    pub public_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_contact: Option<OffsetDateTime>,
    /// Outbox entries pending on the device at its last push.
    pub outbox_depth: Option<i64>,
}

const DEVICE_COLUMNS: &str = "id, site_id, public_key, enrolled_at, revoked_at, last_contact, outbox_depth";

fn device_from_row(row: &Row) -> Result<Device, DbError> {
    let key: Vec<u8> = row.try_get("public_key")?;
    Ok(Device {
        id: DeviceId::from_uuid(row.try_get("id")?),
        site_id: SiteId::from_uuid(row.try_get("site_id")?),
        public_key: URL_SAFE_NO_PAD.encode(key),
        enrolled_at: row.try_get("enrolled_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_contact: row.try_get("last_contact")?,
        outbox_depth: row.try_get("outbox_depth")?,
    })
}

/// The stored form of a token.
fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

struct ValidEnroll {
    token_hash: Vec<u8>,
    device_id: DeviceId,
    public_key: [u8; 32],
}

impl EnrollRequest {
    fn validate(&self) -> Result<ValidEnroll, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let token = self.token.as_deref().map(str::trim).unwrap_or_default();
        if token.is_empty() {
            errors.push("token", "required", "this field is required");
        }
        let device_id = match self.device_id.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("device_id", "required", "this field is required");
                None
            }
            Some(s) => match s.parse::<Uuid>() {
                Ok(u) if !u.is_nil() => Some(DeviceId::from_uuid(u)),
                _ => {
                    errors.push("device_id", "invalid_format", "a UUID");
                    None
                }
            },
        };
        let public_key = match self.public_key.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("public_key", "required", "this field is required");
                None
            }
            Some(s) => {
                let key = parse_public_key(s);
                if key.is_none() {
                    errors.push(
                        "public_key",
                        "invalid_public_key",
                        "an ed25519 public key: 32 bytes, base64url without padding",
                    );
                }
                key
            }
        };
        match (device_id, public_key) {
            (Some(device_id), Some(public_key)) => {
                errors.into_result(ValidEnroll { token_hash: token_hash(token), device_id, public_key })
            }
            _ => Err(errors),
        }
    }
}

/// A well-formed ed25519 verifying key that is not of small order (a weak
/// key would verify signatures anyone can forge).
fn parse_public_key(s: &str) -> Option<[u8; 32]> {
    if s.len() > 64 {
        return None;
    }
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()?;
    let key = VerifyingKey::from_bytes(&bytes).ok()?;
    (!key.is_weak()).then_some(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("this enrollment token has expired: ask the hub admin for a new one")]
    Expired,
    #[error("this enrollment token was already used: ask the hub admin for a new one")]
    Used,
    #[error("a device with this id is already enrolled")]
    DeviceExists,
    #[error("a device with this public key is already enrolled")]
    KeyExists,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        let msg = e.to_string();
        match e {
            EnrollError::UnknownToken => Self::new(StatusCode::UNAUTHORIZED, "invalid_enrollment_token", msg),
            EnrollError::Expired => Self::new(StatusCode::GONE, "enrollment_token_expired", msg),
            EnrollError::Used => Self::new(StatusCode::GONE, "enrollment_token_used", msg),
            EnrollError::DeviceExists => Self::conflict("device_already_enrolled", msg),
            EnrollError::KeyExists => Self::conflict("public_key_already_enrolled", msg),
            EnrollError::Db(e) => e.into(),
        }
    }
}

impl From<tokio_postgres::Error> for EnrollError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for EnrollError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

/// Creates a token for `site`; `None` when the site does not exist.
pub async fn create_token(
    pool: &deadpool_postgres::Pool,
    site: SiteId,
    ttl_minutes: u32,
) -> Result<Option<EnrollmentToken>, DbError> {
    let token = crate::auth::random_token();
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "INSERT INTO enrollment_tokens (token_hash, site_id, expires_at)
             SELECT $1, id, now() + make_interval(mins => $3) FROM sites WHERE id = $2
             RETURNING expires_at",
            &[&token_hash(&token), site.as_uuid(), &i32::try_from(ttl_minutes).unwrap_or(i32::MAX)],
        )
        .await?;
    row.map(|row| -> Result<EnrollmentToken, DbError> {
        Ok(EnrollmentToken { token, expires_at: row.try_get("expires_at")? })
    })
    .transpose()
}

async fn enroll_device(pool: &deadpool_postgres::Pool, req: &ValidEnroll) -> Result<Enrolled, EnrollError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let spent = tx
        .query_opt(
            "UPDATE enrollment_tokens SET used_at = now()
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
             RETURNING site_id",
            &[&req.token_hash],
        )
        .await?;
    let Some(spent) = spent else {
        let row = tx
            .query_opt(
                "SELECT used_at IS NOT NULL AS used FROM enrollment_tokens WHERE token_hash = $1",
                &[&req.token_hash],
            )
            .await?;
        return Err(match row {
            None => EnrollError::UnknownToken,
            Some(row) if row.try_get::<_, bool>("used")? => EnrollError::Used,
            Some(_) => EnrollError::Expired,
        });
    };
    let site_id: Uuid = spent.try_get("site_id")?;
    tx.execute(
        "INSERT INTO devices (id, site_id, public_key) VALUES ($1, $2, $3)",
        &[req.device_id.as_uuid(), &site_id, &req.public_key.as_slice()],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e, "devices_pkey") {
            EnrollError::DeviceExists
        } else if is_unique_violation(&e, "devices_public_key_key") {
            EnrollError::KeyExists
        } else {
            e.into()
        }
    })?;
    tx.execute(
        "UPDATE enrollment_tokens SET device_id = $2 WHERE token_hash = $1",
        &[&req.token_hash, req.device_id.as_uuid()],
    )
    .await?;
    let site = tx.query_one("SELECT name, code FROM sites WHERE id = $1", &[&site_id]).await?;
    let enrolled = Enrolled {
        site_id: SiteId::from_uuid(site_id),
        device_id: req.device_id,
        site_name: site.try_get("name")?,
        site_code: site.try_get("code")?,
    };
    tx.commit().await?;
    Ok(enrolled)
}

/// Marks a device revoked (idempotent: the first revocation time stays).
pub async fn revoke(pool: &deadpool_postgres::Pool, id: DeviceId) -> Result<Option<Device>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
                 RETURNING {DEVICE_COLUMNS}"
            ),
            &[id.as_uuid()],
        )
        .await?;
    row.as_ref().map(device_from_row).transpose()
}

/// The devices of a site, oldest first; `None` when the site does not exist.
pub async fn list_for_site(pool: &deadpool_postgres::Pool, site: SiteId) -> Result<Option<Vec<Device>>, DbError> {
    let client = pool.get().await?;
    let exists = client.query_opt("SELECT 1 FROM sites WHERE id = $1", &[site.as_uuid()]).await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE site_id = $1 ORDER BY enrolled_at, id"),
            &[site.as_uuid()],
        )
        .await?;
    rows.iter().map(device_from_row).collect::<Result<_, _>>().map(Some)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sites/{id}/enrollment-tokens", post(create_enrollment_token))
        .route("/api/v1/sites/{id}/devices", get(list_devices))
        .route("/api/v1/devices/enroll", post(enroll))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    raw.parse::<Uuid>().map_err(|_| ApiError::not_found(format!("no such {what}")))
}

async fn create_enrollment_token(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    user.require_admin()?;
    let site = SiteId::from_uuid(parse_id(&id, "site")?);
    let token = create_token(&state.db, site, state.config.enrollment_token_ttl_minutes)
        .await?
        .ok_or_else(|| ApiError::not_found("no such site"))?;
    tracing::info!(%site, by = %user.username, expires_at = %token.expires_at, "enrollment token created");
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

async fn enroll(State(state): State<AppState>, ApiJson(body): ApiJson<EnrollRequest>) -> Result<Response, ApiError> {
    let valid = body.validate().map_err(|e| ApiError::validation(&e))?;
    let enrolled = enroll_device(&state.db, &valid).await?;
    tracing::info!(device = %enrolled.device_id, site = %enrolled.site_id, "device enrolled");
    Ok((StatusCode::CREATED, Json(enrolled)).into_response())
}

async fn revoke_device(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    user.require_admin()?;
    let id = DeviceId::from_uuid(parse_id(&id, "device")?);
    let device = revoke(&state.db, id).await?.ok_or_else(|| ApiError::not_found("no such device"))?;
    tracing::info!(device = %id, by = %user.username, "device revoked");
    Ok(Json(device))
}

async fn list_devices(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Device>>, ApiError> {
    user.require_admin()?;
    let site = SiteId::from_uuid(parse_id(&id, "site")?);
    list_for_site(&state.db, site).await?.map(Json).ok_or_else(|| ApiError::not_found("no such site"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_must_be_valid_strong_ed25519_keys() {
        let key = santerurale_shared::sync::SigningKey::from_bytes(&[9; 32]).verifying_key();
        let b64 = URL_SAFE_NO_PAD.encode(key.as_bytes());
        assert_eq!(parse_public_key(&b64), Some(*key.as_bytes()));
        assert_eq!(parse_public_key(&format!("{b64}=")), None);
        assert_eq!(parse_public_key(&URL_SAFE_NO_PAD.encode([1u8; 31])), None);
        // The identity point: small order, so weak.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(parse_public_key(&URL_SAFE_NO_PAD.encode(identity)), None);
    }

    #[test]
    fn enroll_validation_reports_every_field() {
        let errs = EnrollRequest { token: None, device_id: Some("nope".into()), public_key: Some("AAAA".into()) }
            .validate()
            .err()
            .expect("invalid");
        assert_eq!(errs.0.iter().map(|e| e.field).collect::<Vec<_>>(), ["token", "device_id", "public_key"]);
    }
}
