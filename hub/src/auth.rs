//! Authentication of hub admins: argon2id passwords, and API bearer tokens
//! (JWT, HS256) signed with rotating keys.
//!
//! Keys live in `DATA_DIR/jwt-keys/`, one file `<kid>.key` each (32 random
//! bytes, mode 0600). The kid is a UUIDv7, so names sort by creation time:
//! the newest key signs, and every key present verifies, by the `kid` in the
//! token's header. To rotate, add a key ([`TokenKeys::rotate`]) and restart;
//! remove the old file once the tokens it signed have expired (the token
//! lifetime is `token_ttl_minutes`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use santerurale_shared::UserId;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use santerurale_server::passwords::{
    MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, check_password_policy, dummy_hash, hash_password, verify_password,
};
pub use santerurale_server::tokens::random_token;

use crate::AppState;
use crate::api::error::{ApiError, ApiJson};

/// Directory in the data directory holding the token-signing keys.
pub const KEYS_DIR: &str = "jwt-keys";
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or create the token-signing key {path}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Hash(#[from] santerurale_server::passwords::HashError),
    #[error("invalid token")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("the token was signed with an unknown key")]
    UnknownKey,
}

/// What a hub account may do. Only admins exist so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
}

impl Role {
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
        }
    }
}

/// The signed-in user, from `Authorization: Bearer <token>`. As an
/// extractor it rejects the request with 401 when the token is missing,
/// invalid or expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
}

impl CurrentUser {
    /// 403 unless the user is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("sign in first: send Authorization: Bearer <token> from POST /api/v1/auth/login")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be: Bearer <token>"))?;
        state
            .tokens
            .verify(token.trim())
            .map_err(|_| ApiError::unauthorized("the token is invalid or has expired; sign in again"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: UserId,
    name: String,
    role: Role,
    iat: i64,
    exp: i64,
}

/// Issues and verifies API bearer tokens.
pub struct TokenKeys {
    /// By kid; the last one signs.
    keys: BTreeMap<String, (EncodingKey, DecodingKey)>,
    ttl_seconds: i64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("ttl_seconds", &self.ttl_seconds)
            .finish()
    }
}

impl TokenKeys {
    /// Loads every key in `DATA_DIR/jwt-keys/`, creating the first one on
    /// first start.
    pub fn load_or_create(data_dir: &Path, ttl_minutes: u32) -> Result<Self, AuthError> {
        let dir = data_dir.join(KEYS_DIR);
        let mut secrets = read_keys(&dir)?;
        if secrets.is_empty() {
            let (kid, secret) = write_new_key(&dir)?;
            secrets.insert(kid, secret);
        }
        Ok(Self::from_secrets(secrets, ttl_minutes))
    }

    /// Adds a new signing key to `DATA_DIR/jwt-keys/`; returns its kid. A
    /// running hub picks it up when restarted.
    pub fn rotate(data_dir: &Path) -> Result<String, AuthError> {
        write_new_key(&data_dir.join(KEYS_DIR)).map(|(kid, _)| kid)
    }

    /// Keys given directly, by kid (the greatest signs).
    #[must_use]
    pub fn from_secrets(secrets: BTreeMap<String, Vec<u8>>, ttl_minutes: u32) -> Self {
        let keys = secrets
            .into_iter()
            .map(|(kid, s)| (kid, (EncodingKey::from_secret(&s), DecodingKey::from_secret(&s))))
            .collect();
        Self { keys, ttl_seconds: i64::from(ttl_minutes) * 60 }
    }

    /// The kid new tokens are signed with.
    #[must_use]
    pub fn current_kid(&self) -> Option<&str> {
        self.keys.keys().next_back().map(String::as_str)
    }

    /// A bearer token for `user` and its expiry (Unix seconds).
    pub fn issue(&self, user: &CurrentUser) -> Result<(String, i64), AuthError> {
        let (kid, (encoding, _)) = self.keys.iter().next_back().ok_or(AuthError::UnknownKey)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: user.id,
            name: user.username.clone(),
            role: user.role,
            iat: now,
            exp: now + self.ttl_seconds,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        Ok((jsonwebtoken::encode(&header, &claims, encoding)?, claims.exp))
    }

    /// The user a valid, unexpired token was issued to.
    pub fn verify(&self, token: &str) -> Result<CurrentUser, AuthError> {
        let header = jsonwebtoken::decode_header(token)?;
        let (_, decoding) = header.kid.as_ref().and_then(|kid| self.keys.get(kid)).ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, decoding, &validation)?;
        Ok(CurrentUser { id: data.claims.sub, username: data.claims.name, role: data.claims.role })
    }
}

fn read_keys(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, AuthError> {
    let err = |path: &Path, source| AuthError::KeyFile { path: path.to_owned(), source };
    let mut keys = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(err(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| err(dir, e))?.path();
        let Some(kid) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".key")) else {
            continue;
        };
        let secret = std::fs::read(&path).map_err(|e| err(&path, e))?;
        if secret.len() < KEY_BYTES {
            return Err(err(&path, std::io::Error::other("key file is shorter than 32 bytes")));
        }
        keys.insert(kid.to_owned(), secret);
    }
    Ok(keys)
}

fn write_new_key(dir: &Path) -> Result<(String, Vec<u8>), AuthError> {
    let err = |path: &Path, source| AuthError::KeyFile { path: path.to_owned(), source };
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(builder.recursive(true), 0o700);
    builder.create(dir).map_err(|e| err(dir, e))?;
    let kid = uuid::Uuid::now_v7().simple().to_string();
    let secret = rand::random::<[u8; KEY_BYTES]>().to_vec();
    // Written under a temporary name and renamed, so a crash never leaves a
    // short key that would stop the next start.
    let tmp = dir.join(format!("{kid}.tmp"));
    let path = dir.join(format!("{kid}.key"));
    let mut opts = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(opts.write(true).create_new(true), 0o600);
    let mut f = opts.open(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(&secret).and_then(|()| f.sync_all()).map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
    Ok((kid, secret))
}

/// `/api/v1/auth/...`
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/auth/login", post(login))
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

async fn login(State(state): State<AppState>, ApiJson(req): ApiJson<LoginRequest>) -> Result<Response, ApiError> {
    let found = crate::users::find_credentials(&state.db, req.username.trim()).await?;
    let (user, phc) = match found {
        Some((user, phc)) => (Some(user), phc),
        None => (None, dummy_hash().to_owned()),
    };
    let password = req.password;
    let ok = tokio::task::spawn_blocking(move || verify_password(&phc, &password))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let user = match user {
        Some(user) if ok => user,
        _ => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong username or password",
            ));
        }
    };
    let current = CurrentUser { id: user.id, username: user.username, role: user.role };
    let (token, exp) = state.tokens.issue(&current).map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "token": token, "token_type": "Bearer", "expires_at": exp, "role": current.role })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> CurrentUser {
        CurrentUser { id: UserId::new(), username: "awa".into(), role: Role::Admin }
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "Correct horse"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn tokens_carry_a_kid_and_reject_tampering() {
        let keys = TokenKeys::from_secrets(BTreeMap::from([("a".to_owned(), vec![7; 32])]), 5);
        let (token, _) = keys.issue(&user()).expect("issue");
        assert_eq!(jsonwebtoken::decode_header(&token).expect("header").kid.as_deref(), Some("a"));
        assert_eq!(keys.verify(&token).expect("verify").username, "awa");
        let other = TokenKeys::from_secrets(BTreeMap::from([("a".to_owned(), vec![8; 32])]), 5);
        assert!(other.verify(&token).is_err());
        let unknown_kid = TokenKeys::from_secrets(BTreeMap::from([("b".to_owned(), vec![7; 32])]), 5);
        assert!(matches!(unknown_kid.verify(&token), Err(AuthError::UnknownKey)));
        let mut tampered = token.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = TokenKeys::load_or_create(dir.path(), 5).expect("create");
        let (old_token, _) = before.issue(&user()).expect("issue");
        let new_kid = TokenKeys::rotate(dir.path()).expect("rotate");
        let after = TokenKeys::load_or_create(dir.path(), 5).expect("load");
        assert_eq!(after.current_kid(), Some(new_kid.as_str()));
        assert!(after.verify(&old_token).is_ok());
        let (new_token, _) = after.issue(&user()).expect("issue");
        assert_eq!(jsonwebtoken::decode_header(&new_token).expect("header").kid, Some(new_kid));
        use std::os::unix::fs::PermissionsExt as _;
        for entry in std::fs::read_dir(dir.path().join(KEYS_DIR)).expect("dir") {
            let mode = entry.expect("entry").metadata().expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
