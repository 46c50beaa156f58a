//! Embedded schema migrations (`migrations/edge/*.sql`), applied in order at
//! open. `PRAGMA user_version` holds how many have been applied; each runs in
//! its own transaction together with the version bump.

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[include_str!("../../../migrations/edge/0001_init.sql")];

pub(super) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > known {
        return Err(StoreError::SchemaTooNew { found: current, known });
    }
    for (version, sql) in (1_i64..).zip(MIGRATIONS).skip(usize::try_from(current).unwrap_or(0)) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied edge schema migration");
    }
    Ok(())
}
