//! Authentication: password hashing (argon2id), API bearer tokens (JWT,
//! HS256, signed with a per-box key kept in the data directory) and browser
//! session tokens (random, only their SHA-256 stored).

use std::io::Write as _;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
pub use santerurale_server::passwords::{
    MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, check_password_policy, dummy_hash, hash_password, verify_password,
};
pub use santerurale_server::tokens::{hash_token, random_token};
use santerurale_shared::UserId;
use serde::{Deserialize, Serialize};

use crate::store::{Role, UserRecord};

/// File in the data directory holding the token-signing key (mode 0600).
pub const TOKEN_KEY_FILE: &str = "token-signing.key";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or create the token-signing key {path}")]
    KeyFile { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Hash(#[from] santerurale_server::passwords::HashError),
    #[error("invalid token")]
    Token(#[from] jsonwebtoken::errors::Error),
}

/// The signed-in user, as every handler sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
}

impl From<UserRecord> for CurrentUser {
    fn from(u: UserRecord) -> Self {
        Self { id: u.id, username: u.username, role: u.role }
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
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_seconds: i64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").field("ttl_seconds", &self.ttl_seconds).finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Loads the box's signing key, creating it (0600) on first start.
    pub fn load_or_create(data_dir: &Path, ttl_minutes: u32) -> Result<Self, AuthError> {
        let path = data_dir.join(TOKEN_KEY_FILE);
        let key_err = |source| AuthError::KeyFile { path: path.clone(), source };
        let secret = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= 32 => bytes,
            Ok(_) | Err(_) if !path.exists() => {
                let secret = rand::random::<[u8; 32]>().to_vec();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&path).map_err(key_err)?;
                f.write_all(&secret).and_then(|()| f.sync_all()).map_err(key_err)?;
                secret
            }
            Ok(_) => return Err(key_err(std::io::Error::other("key file is shorter than 32 bytes"))),
            Err(e) => return Err(key_err(e)),
        };
        Ok(Self::from_secret(&secret, ttl_minutes))
    }

    #[must_use]
    pub fn from_secret(secret: &[u8], ttl_minutes: u32) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_seconds: i64::from(ttl_minutes) * 60,
        }
    }

    /// A bearer token for `user`, valid for the configured time.
    pub fn issue(&self, user: &CurrentUser) -> Result<(String, i64), AuthError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: user.id,
            name: user.username.clone(),
            role: user.role,
            iat: now,
            exp: now + self.ttl_seconds,
        };
        Ok((jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?, claims.exp))
    }

    /// The user a valid, unexpired token was issued to.
    pub fn verify(&self, token: &str) -> Result<CurrentUser, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)?;
        Ok(CurrentUser { id: data.claims.sub, username: data.claims.name, role: data.claims.role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let keys = TokenKeys::from_secret(&[7; 32], 5);
        let user = CurrentUser { id: UserId::new(), username: "awa".into(), role: Role::Clinician };
        let (token, _) = keys.issue(&user).expect("issue");
        assert_eq!(keys.verify(&token).expect("verify"), user);
        let other = TokenKeys::from_secret(&[8; 32], 5);
        assert!(other.verify(&token).is_err());
        let mut tampered = token.clone();
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    #[test]
    fn key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = TokenKeys::load_or_create(dir.path(), 5).expect("create");
        let b = TokenKeys::load_or_create(dir.path(), 5).expect("load");
        let user = CurrentUser { id: UserId::new(), username: "x".into(), role: Role::Admin };
        assert!(b.verify(&a.issue(&user).expect("issue").0).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_KEY_FILE)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
