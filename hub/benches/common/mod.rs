//! What the benchmarks share (each includes this with `mod common;`): a
//! database of their own on the benchmark server.

use anyhow::Context as _;

/// A database of its own on the server (`HUB_BENCH_ADMIN_URL`, else the
/// local `postgres`), dropped at the end with [`BenchDb::drop_db`].
pub struct BenchDb {
    admin: tokio_postgres::Config,
    admin_url: String,
    pub name: String,
}

impl BenchDb {
    /// A new database named `{prefix}{uuid}`.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let admin_url = std::env::var("HUB_BENCH_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin: tokio_postgres::Config = admin_url.parse().context("HUB_BENCH_ADMIN_URL")?;
        let name = format!("{prefix}{}", uuid::Uuid::now_v7().simple());
        connect(&admin).await?.batch_execute(&format!("CREATE DATABASE {name}")).await?;
        Ok(Self { admin, admin_url, name })
    }

    /// The database as a URL, for a hub binary's `DATABASE_URL`.
    #[allow(dead_code, reason = "the DHIS2 export bench starts no hub binary")]
    pub fn url(&self) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{}", self.name),
            None => self.admin_url.clone(),
        }
    }

    /// A pool of `size` connections to the database.
    pub fn pool(&self, size: u32) -> anyhow::Result<deadpool_postgres::Pool> {
        let mut config = self.admin.clone();
        config.dbname(&self.name);
        Ok(hub::db::pool(config, size)?)
    }

    pub async fn drop_db(&self) -> anyhow::Result<()> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        connect(&self.admin).await?.batch_execute(&sql).await?;
        Ok(())
    }
}

async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
