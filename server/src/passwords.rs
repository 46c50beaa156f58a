//! Passwords: one policy, argon2id hashes as PHC strings, constant-time checks.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(argon2::password_hash::Error);

/// Checks a new password against the policy; `Err` holds the reason's code.
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
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(HashError)
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
    HASH.get_or_init(|| hash_password(&crate::tokens::random_token()).unwrap_or_default())
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
        assert!(!verify_password(dummy_hash(), "correct horse"));
    }

    #[test]
    fn policy_bounds() {
        assert_eq!(check_password_policy("1234567"), Err("password_too_short"));
        assert_eq!(check_password_policy("12345678"), Ok(()));
        assert_eq!(check_password_policy(&"x".repeat(201)), Err("password_too_long"));
    }
}
