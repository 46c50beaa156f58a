//! A fresh PostgreSQL database per test, for the hub.
//!
//! The server, first match wins: `SANTERURALE_TEST_DATABASE_URL` (a URL
//! whose database we may create and drop others from), or a trust-auth
//! server on 127.0.0.1:5432 as `postgres` (this machine kind, and CI). If
//! neither answers the test fails with the reason; it is never skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::NoTls;

/// A database that exists for one test; dropped (`WITH (FORCE)`) with this.
#[derive(Debug)]
pub struct TestDatabase {
    admin: tokio_postgres::Config,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `e2e_<pid>_<time>_<n>` on the configured server.
    pub async fn create() -> anyhow::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (admin, shown) = admin_config()?;
        let client = connect(&admin).await.with_context(|| {
            format!(
                "no PostgreSQL for the end-to-end tests: {shown} does not answer. Start one (trust auth for \
                 `postgres` on 127.0.0.1:5432) or set SANTERURALE_TEST_DATABASE_URL"
            )
        })?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let name = format!("e2e_{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let url = database_url(&admin, &name);
        Ok(Self { admin, name, url })
    }

    /// `postgres://...` for `DATABASE_URL`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to this database (read what the hub stored).
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let mut config = self.admin.clone();
        config.dbname(&self.name);
        connect(&config).await.with_context(|| format!("cannot connect to {}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var("SANTERURALE_E2E_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("keeping database {}", self.name);
            return;
        }
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside the test's runtime: use one of our own on another thread.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let client = connect(&admin).await?;
                client.batch_execute(&sql).await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(joined, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {joined:?}", self.name);
        }
    }
}

fn admin_config() -> anyhow::Result<(tokio_postgres::Config, String)> {
    if let Ok(url) = std::env::var("SANTERURALE_TEST_DATABASE_URL") {
        let config = url.parse().context("SANTERURALE_TEST_DATABASE_URL is not a valid PostgreSQL URL")?;
        return Ok((config, "SANTERURALE_TEST_DATABASE_URL".into()));
    }
    let mut local = tokio_postgres::Config::new();
    local.host("127.0.0.1").port(5432).user("postgres").dbname("postgres");
    Ok((local, "postgres@127.0.0.1:5432".into()))
}

fn database_url(admin: &tokio_postgres::Config, name: &str) -> String {
    let host = match admin.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string().replace('/', "%2F"),
        None => "localhost".into(),
    };
    let port = admin.get_ports().first().copied().unwrap_or(5432);
    let user = admin.get_user().unwrap_or("postgres");
    let password = admin.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
    format!("postgres://{user}{password}@{host}:{port}/{name}")
}

async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = config.clone();
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
