//! Authentication: password hashing (argon2id), API bearer tokens (JWT,
//! HS256, signed with a per-box key kept in the data directory) and browser
//! session tokens (random, only their SHA-256 stored).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use santerurale_shared::UserId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Role, UserRecord};

/// File in the data directory holding the token-signing key (mode 0600).
pub const TOKEN_KEY_FILE: &str = "token-signing.key";
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or create the token-signing key {path}")]
    KeyFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
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

/// Checks a new password against the policy; `Err` holds the reason.
pub fn check_password_policy(password: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        Err("password_too_short")
    } else if n > MAX_PASSWORD_CHARS {
        Err("password_too_long")
    } else {
        Ok(())
    }
}

/// An argon2id PHC string. Slow on purpose: call it off the async runtime.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(AuthError::Hash)
}

/// Constant-time check of `password` against a PHC string.
#[must_use]
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// A hash of a random string, checked against when a username is unknown so
/// that refusals take the same time either way.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// A fresh random token (256 bits, URL-safe base64).
#[must_use]
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What the database stores for a session token.
#[must_use]
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        let _ = write!(out, "{b:02x}");
    }
    out
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
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "Correct horse"));
        assert!(!verify_password("not a hash", "correct horse"));
    }

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

    #[test]
    fn session_tokens_are_random_and_hashed() {
        let a = random_token();
        assert_ne!(a, random_token());
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }
}
