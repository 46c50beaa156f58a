//! User accounts and browser sessions.

use rusqlite::{Connection, OptionalExtension, params};
use santerurale_shared::UserId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{Store, StoreError, format_timestamp, now_rfc3339, parse_timestamp};

/// What a user may do. Registrars register and edit patients; clinicians also
/// record consultations; admins also manage accounts and sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Registrar,
    Clinician,
    Admin,
}

impl Role {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Clinician => "clinician",
            Self::Registrar => "registrar",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "clinician" => Some(Self::Clinician),
            "registrar" => Some(Self::Registrar),
            _ => None,
        }
    }

    /// May record consultations.
    #[must_use]
    pub const fn is_clinical(self) -> bool {
        matches!(self, Self::Clinician | Self::Admin)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    /// PHC string (argon2id).
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: UserRecord,
    pub csrf_token: String,
    pub expires_at: OffsetDateTime,
}

fn user_from_row(r: &rusqlite::Row<'_>) -> Result<UserRecord, StoreError> {
    let bad = |what: &str| StoreError::CorruptDocument("users".into(), what.to_owned());
    Ok(UserRecord {
        id: r.get::<_, String>(0)?.parse().map_err(|_| bad("id"))?,
        username: r.get(1)?,
        role: Role::parse(&r.get::<_, String>(2)?).ok_or_else(|| bad("role"))?,
        password_hash: r.get(3)?,
    })
}

pub fn insert_user(c: &Connection, username: &str, role: Role, password_hash: &str) -> Result<UserRecord, StoreError> {
    let id = UserId::new();
    let inserted = c.execute(
        "INSERT INTO users (id, username, password_hash, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (username) DO NOTHING",
        params![id.to_string(), username, password_hash, role.as_str(), now_rfc3339()],
    )?;
    if inserted == 0 {
        return Err(StoreError::UsernameTaken);
    }
    Ok(UserRecord { id, username: username.to_owned(), role, password_hash: password_hash.to_owned() })
}

impl Store {
    /// Creates an account. `password_hash` is a PHC string.
    pub async fn create_user(
        &self,
        username: String,
        role: Role,
        password_hash: String,
    ) -> Result<UserRecord, StoreError> {
        self.write(move |w| insert_user(w.conn(), &username, role, &password_hash)).await
    }

    /// Creates the first admin, only while no account exists (first-run setup).
    /// Returns `None` if an account already exists.
    pub async fn create_first_admin(
        &self,
        username: String,
        password_hash: String,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.write(move |w| {
            let n: i64 = w.conn().query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            if n > 0 {
                return Ok(None);
            }
            insert_user(w.conn(), &username, Role::Admin, &password_hash).map(Some)
        })
        .await
    }

    pub async fn user_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    pub async fn find_user(&self, username: String) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, username, role, password_hash FROM users WHERE username = ?1")?;
            let mut rows = stmt.query([username])?;
            rows.next()?.map(user_from_row).transpose()
        })
        .await
    }

    pub async fn get_user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT id, username, role, password_hash FROM users WHERE id = ?1")?;
            let mut rows = stmt.query([id.to_string()])?;
            rows.next()?.map(user_from_row).transpose()
        })
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT id, username, role, password_hash FROM users ORDER BY username")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(user_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    /// Stores a session under the hash of its cookie value; also drops expired sessions.
    pub async fn create_session(
        &self,
        token_hash: String,
        user: UserId,
        csrf_token: String,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.write(move |w| {
            let now = now_rfc3339();
            w.conn().execute("DELETE FROM sessions WHERE expires_at < ?1", [&now])?;
            w.conn().execute(
                "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_hash, user.to_string(), csrf_token, now, format_timestamp(expires_at)],
            )?;
            Ok(())
        })
        .await
    }

    /// The live (unexpired) session with this token hash.
    pub async fn get_session(&self, token_hash: String) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT u.id, u.username, u.role, u.password_hash, s.csrf_token, s.expires_at
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1",
                    [token_hash],
                    |r| Ok((user_from_row(r), r.get::<_, String>(4)?, r.get::<_, String>(5)?)),
                )
                .optional()?;
            let Some((user, csrf_token, expires_at)) = row else { return Ok(None) };
            let expires_at = parse_timestamp(&expires_at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            if expires_at <= OffsetDateTime::now_utc() {
                return Ok(None);
            }
            Ok(Some(SessionRecord { user: user?, csrf_token, expires_at }))
        })
        .await
    }

    pub async fn delete_session(&self, token_hash: String) -> Result<(), StoreError> {
        self.write(move |w| {
            w.conn().execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
            Ok(())
        })
        .await
    }
}
