//! The embedded cluster itself: initdb, start, connect, attach, stop, and
//! restart on the same directory (the `hub serve` path with no DATABASE_URL).

use hub::config::Config;
use hub::db::Database;
use hub::pg::{EmbeddedPostgres, PgError, find_bin_dir};

use crate::support::temp_dir_for_postgres;

#[tokio::test]
async fn create_start_attach_stop_and_restart() {
    let dir = temp_dir_for_postgres();
    let pg_dir = dir.path().join("pg");

    let pg = EmbeddedPostgres::start(&pg_dir, None).await.expect("start");
    assert!(pg.owns_server());
    assert!(pg_dir.join("data/PG_VERSION").is_file());
    let pool = hub::db::pool(pg.connect_config(hub::pg::DATABASE), 2).expect("pool");
    hub::db::migrate::run(&pool).await.expect("migrate");
    hub::users::add_user(&pool, "admin", hub::auth::Role::Admin, "correct horse battery").await.expect("add user");

    // A second process on the same data directory (`hub user add` while
    // `hub serve` runs) attaches, and leaves the server running.
    let attached = EmbeddedPostgres::start(&pg_dir, None).await.expect("attach");
    assert!(!attached.owns_server());
    assert_eq!(attached.port(), pg.port());
    attached.stop().await.expect("detach");
    hub::db::ping(&pool).await.expect("still up after the attached handle is gone");

    let config = pg.connect_config(hub::pg::DATABASE);
    pool.close();
    pg.stop().await.expect("stop");
    assert!(config.connect(tokio_postgres::NoTls).await.is_err(), "the server is stopped");
    assert!(!pg_dir.join("data/postmaster.pid").exists());

    // What `hub serve` does with no DATABASE_URL: reuse the cluster.
    let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
    let db = Database::open(&config).await.expect("open");
    let found = hub::users::find_credentials(&db.pool, "admin").await.expect("query");
    assert!(found.is_some(), "data survives a restart");
    db.close().await.expect("close");
    assert!(!pg_dir.join("data/postmaster.pid").exists());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let dir = temp_dir_for_postgres();
    let pg_dir = dir.path().join("pg");
    let pg = EmbeddedPostgres::start(&pg_dir, None).await.expect("start");
    let config = pg.connect_config("postgres");
    drop(pg);
    assert!(config.connect(tokio_postgres::NoTls).await.is_err());
}

#[test]
fn missing_binaries_are_a_clear_error() {
    let err = find_bin_dir(Some(std::path::Path::new("/nonexistent/bin"))).expect_err("no binaries");
    assert!(matches!(err, PgError::BinariesNotFound { .. }));
    let message = err.to_string();
    assert!(message.contains("initdb") && message.contains("DATABASE_URL"), "{message}");
}
