//! The hub's PostgreSQL: a connection pool, the embedded cluster when no URL
//! is configured, and the migrations ([`migrate`]) applied on open.
//!
//! Queries live with the resource that owns them (`users`, `sites`, ...);
//! this module only provides the pool and the error type they share.

pub mod migrate;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::Config;
use crate::pg::{EmbeddedPostgres, PgError};

/// How long a request waits for a pooled connection, or for a new one.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot build the connection pool")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("no database connection available")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database query failed")]
    Query(#[from] tokio_postgres::Error),
    #[error("embedded PostgreSQL")]
    Embedded(#[from] PgError),
    #[error("unexpected value in the database: {0}")]
    Invalid(String),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
}

impl DbError {
    /// Whether trying again later may succeed (the server was unreachable or
    /// busy), as opposed to a bug or a broken schema.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Query(e) => {
                e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            _ => false,
        }
    }
}

/// Whether `e` is a violation of the unique constraint named `constraint`.
#[must_use]
pub fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error().and_then(tokio_postgres::error::DbError::constraint) == Some(constraint)
}

/// A pool of connections made with `config`.
pub fn pool(config: tokio_postgres::Config, size: u32) -> Result<Pool, DbError> {
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Ok(Pool::builder(manager)
        .max_size(usize::try_from(size).unwrap_or(16))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .build()?)
}

/// `SELECT 1` on a pooled connection: what `/health` checks.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// The hub's database, opened and migrated, with the embedded cluster it
/// runs on, if any.
#[derive(Debug)]
pub struct Database {
    pub pool: Pool,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connects to `config.database_url`, or starts the embedded cluster in
    /// `DATA_DIR/pg`; then applies the migrations.
    pub async fn open(config: &Config) -> Result<Self, DbError> {
        let (pg_config, embedded) = match &config.database_url {
            Some(url) => (url.0.parse::<tokio_postgres::Config>().map_err(DbError::Url)?, None),
            None => {
                let pg =
                    EmbeddedPostgres::start(&config.data_dir.join("pg"), config.postgres_bin_dir.as_deref()).await?;
                (pg.connect_config(crate::pg::DATABASE), Some(pg))
            }
        };
        let pool = pool(pg_config, config.db_pool_size)?;
        migrate::run(&pool).await?;
        Ok(Self { pool, embedded })
    }

    /// Closes the pool and stops the embedded cluster (if this process
    /// started it).
    pub async fn close(self) -> Result<(), DbError> {
        self.pool.close();
        if let Some(pg) = self.embedded {
            pg.stop().await?;
        }
        Ok(())
    }
}
