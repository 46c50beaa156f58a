//! Schema migrations: the files in `migrations/hub/`, embedded in the binary.
//!
//! All pending migrations run in one transaction that first takes an
//! advisory lock, so concurrent starts apply each file once and a failure
//! leaves the schema as it was. `hub_schema_migrations` records each applied
//! version with the SHA-256 of its text; a changed file or a version this
//! binary does not know stops the start (see `migrations/hub/README.md`).

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};

/// The embedded migrations, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../../migrations/hub/0001_init.sql") },
    Migration { version: 2, name: "sync_push", sql: include_str!("../../../migrations/hub/0002_sync_push.sql") },
    Migration {
        version: 3,
        name: "documents_projection",
        sql: include_str!("../../../migrations/hub/0003_documents_projection.sql"),
    },
    Migration { version: 4, name: "conflicts", sql: include_str!("../../../migrations/hub/0004_conflicts.sql") },
    Migration { version: 5, name: "hub_changes", sql: include_str!("../../../migrations/hub/0005_hub_changes.sql") },
    Migration { version: 6, name: "ui_sessions", sql: include_str!("../../../migrations/hub/0006_ui_sessions.sql") },
    Migration { version: 7, name: "dhis2", sql: include_str!("../../../migrations/hub/0007_dhis2.sql") },
    Migration {
        version: 8,
        name: "dhis2_late_data",
        sql: include_str!("../../../migrations/hub/0008_dhis2_late_data.sql"),
    },
];

/// Key of the advisory lock held while migrating ("santerur" in ASCII).
const LOCK_KEY: i64 = 0x7361_6e74_6572_7572;

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) failed")]
    Failed { version: i64, name: &'static str, source: tokio_postgres::Error },
    #[error("migration {version} was changed after it was applied: restore the released file and add a new migration")]
    ChecksumMismatch { version: i64 },
    #[error("the database has migration {version}, unknown to this hub: a newer hub has run on it")]
    UnknownVersion { version: i64 },
    #[error("cannot read or record the applied migrations")]
    Database(#[from] tokio_postgres::Error),
    #[error("no database connection available")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Applies every pending migration; returns how many it applied.
pub async fn run(pool: &Pool) -> Result<usize, MigrateError> {
    let mut client = pool.get().await?;
    let client: &mut tokio_postgres::Client = &mut client;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hub_schema_migrations (
            version    bigint      PRIMARY KEY,
            name       text        NOT NULL,
            checksum   bytea       NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: Vec<(i64, Vec<u8>)> = tx
        .query("SELECT version, checksum FROM hub_schema_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    for (version, checksum) in &applied {
        match MIGRATIONS.iter().find(|m| m.version == *version) {
            None => return Err(MigrateError::UnknownVersion { version: *version }),
            Some(m) if m.checksum() != *checksum => {
                return Err(MigrateError::ChecksumMismatch { version: *version });
            }
            Some(_) => {}
        }
    }
    let mut count = 0;
    for m in MIGRATIONS.iter().filter(|m| !applied.iter().any(|(v, _)| *v == m.version)) {
        let failed = |source| MigrateError::Failed { version: m.version, name: m.name, source };
        tx.batch_execute(m.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO hub_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}

impl Migration {
    fn checksum(&self) -> Vec<u8> {
        Sha256::digest(self.sql.as_bytes()).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_match_file_names() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/hub");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let expected: Vec<String> = MIGRATIONS.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, expected, "every file in migrations/hub is listed in MIGRATIONS");
    }
}
