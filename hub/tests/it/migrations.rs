//! Migrations apply on an empty database, are idempotent, safe to run
//! concurrently, and refuse a changed or unknown history.

use hub::db::migrate::{self, MIGRATIONS, MigrateError};

use crate::support::TestDb;

#[tokio::test]
async fn apply_on_an_empty_database_then_are_idempotent() {
    let db = TestDb::new().await;
    let pool = db.pool();
    assert_eq!(migrate::run(&pool).await.expect("first run"), MIGRATIONS.len());
    assert_eq!(migrate::run(&pool).await.expect("second run"), 0);
    let client = pool.get().await.expect("conn");
    let rows = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", &[])
        .await
        .expect("tables");
    let tables: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        tables,
        [
            "changes",
            "conflicts",
            "devices",
            "dhis2_export_jobs",
            "dhis2_mapping",
            "dhis2_schedule_runs",
            "documents",
            "encounters",
            "enrollment_tokens",
            "hub_schema_migrations",
            "patients",
            "site_patients",
            "sites",
            "sync_nonces",
            "ui_sessions",
            "users"
        ]
    );
}

#[tokio::test]
async fn concurrent_starts_apply_each_migration_once() {
    let db = TestDb::new().await;
    let (a, b) = (db.pool(), db.pool());
    let (ra, rb) = tokio::join!(migrate::run(&a), migrate::run(&b));
    assert_eq!(ra.expect("a") + rb.expect("b"), MIGRATIONS.len());
}

#[tokio::test]
async fn a_changed_or_unknown_migration_stops_the_start() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let client = pool.get().await.expect("conn");
    client.execute("UPDATE hub_schema_migrations SET checksum = '\\x00' WHERE version = 1", &[]).await.expect("tamper");
    assert!(matches!(migrate::run(&pool).await, Err(MigrateError::ChecksumMismatch { version: 1 })));

    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let client = pool.get().await.expect("conn");
    client
        .execute("INSERT INTO hub_schema_migrations (version, name, checksum) VALUES (9999, 'future', '\\x00')", &[])
        .await
        .expect("insert");
    assert!(matches!(migrate::run(&pool).await, Err(MigrateError::UnknownVersion { version: 9999 })));
}
