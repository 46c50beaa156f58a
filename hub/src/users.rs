//! Hub accounts: creation (`hub user add`) and the lookup sign-in needs.

use deadpool_postgres::Pool;
use santerurale_shared::UserId;
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::auth::{Role, check_password_policy, hash_password};
use crate::db::{DbError, is_unique_violation};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid username: {0}")]
    InvalidUsername(&'static str),
    #[error(
        "{0}: the password must have {min} to {max} characters",
        min = crate::auth::MIN_PASSWORD_CHARS,
        max = crate::auth::MAX_PASSWORD_CHARS
    )]
    WeakPassword(&'static str),
    #[error("the username {0} is already taken")]
    UsernameTaken(String),
    #[error("cannot hash the password")]
    Hash(#[from] crate::auth::AuthError),
    #[error("password hashing task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Usernames: 2 to 40 of letters, digits, `.`, `_`, `-`; returned trimmed.
pub fn validate_username(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    let ok_chars = name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if (2..=40).contains(&name.chars().count()) && ok_chars {
        Ok(name.to_owned())
    } else {
        Err("a username has 2 to 40 letters, digits, '.', '_' or '-'")
    }
}

/// Creates an account after checking the username and password policy.
pub async fn add_user(pool: &Pool, username: &str, role: Role, password: &str) -> Result<User, UserError> {
    let username = validate_username(username).map_err(UserError::InvalidUsername)?;
    check_password_policy(password).map_err(UserError::WeakPassword)?;
    let password = password.to_owned();
    let hash =
        tokio::task::spawn_blocking(move || hash_password(&password)).await?.map_err(crate::auth::AuthError::from)?;
    let client = pool.get().await.map_err(DbError::from)?;
    let row = client
        .query_one(
            "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4)
             RETURNING id, username, role, created_at",
            &[UserId::new().as_uuid(), &username, &hash, &role.as_str()],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "users_username_key") {
                UserError::UsernameTaken(username.clone())
            } else {
                UserError::Db(e.into())
            }
        })?;
    Ok(from_row(&row)?)
}

/// The user named `username` and their password hash.
pub async fn find_credentials(pool: &Pool, username: &str) -> Result<Option<(User, String)>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt("SELECT id, username, role, created_at, password_hash FROM users WHERE username = $1", &[&username])
        .await?;
    row.map(|r| Ok((from_row(&r)?, r.try_get("password_hash")?))).transpose()
}

fn from_row(row: &Row) -> Result<User, DbError> {
    let role: String = row.try_get("role")?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id")?),
        username: row.try_get("username")?,
        role: Role::parse(&role).ok_or_else(|| DbError::Invalid(format!("unknown role {role:?} in users")))?,
        created_at: row.try_get("created_at")?,
    })
}
