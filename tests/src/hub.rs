//! A real `hub` process on a fresh PostgreSQL database and a throwaway data
//! directory (its token-signing keys), restartable on both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::server::{CliOutput, ServerProcess, run_cli, start_server, start_server_at};
use crate::{Api, TestDatabase, hub_binary, temp_dir};

/// A running `hub serve`. Dropping it kills the process (SIGKILL) and reaps it.
pub type HubProcess = ServerProcess;

/// A hub's data directory and database, with the log of every process run
/// on them. Layout: `ROOT/data` is `--data-dir`, `ROOT/hub.log` the log.
/// The database is dropped with this (after any process, which the caller
/// drops first).
#[derive(Debug)]
pub struct HubDir {
    root: TempDir,
    bin: PathBuf,
    db: TestDatabase,
    env: Vec<(String, String)>,
}

impl HubDir {
    /// A new data directory on a new database.
    pub async fn new() -> anyhow::Result<Self> {
        let bin = hub_binary()?;
        let db = TestDatabase::create().await?;
        Ok(Self { root: temp_dir("santerurale-hub-")?, bin, db, env: Vec::new() })
    }

    /// Sets a `HUB_*` setting for every later process.
    #[must_use]
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.set_env(key, value);
        self
    }

    /// Sets (or replaces) a `HUB_*` setting for every later process.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Removes a setting given with [`HubDir::set_env`]: the hub's default applies again.
    pub fn unset_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    #[must_use]
    pub fn database(&self) -> &TestDatabase {
        &self.db
    }

    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.root().join("hub.log")
    }

    /// Everything the processes run on this directory printed.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn std_command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("HUB_") || key_text == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        cmd.env("NO_COLOR", "1").env("DATABASE_URL", self.db.url());
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.arg("--data-dir").arg(self.root().join("data"));
        cmd
    }

    /// Runs `hub --data-dir DIR ARGS...` to completion, whatever its status.
    pub async fn run(&self, args: &[&str], stdin: &str) -> anyhow::Result<CliOutput> {
        let mut cmd = self.std_command();
        cmd.args(args);
        run_cli(cmd, format!("hub {}", args.join(" ")), stdin, &self.log_path()).await
    }

    /// Creates an admin with `hub user add` (password on standard input).
    pub async fn add_admin(&self, username: &str, password: &str) -> anyhow::Result<()> {
        self.run(&["user", "add", "--username", username, "--role", "admin"], &format!("{password}\n"))
            .await?
            .success()?;
        Ok(())
    }

    /// Starts `hub serve` on a free loopback port; returns once `/health`
    /// answers ok (so the database is reachable and migrated).
    pub async fn start(&self) -> anyhow::Result<HubProcess> {
        start_server("hub", &self.log_path(), |addr| self.serve_command(addr)).await
    }

    /// Starts `hub serve` on `addr` (a restart on the address the edges
    /// were enrolled with). Fails, with `cannot listen on` in the error, if
    /// the port is taken.
    pub async fn start_on(&self, addr: &str) -> anyhow::Result<HubProcess> {
        let addr: SocketAddr = addr.parse().with_context(|| format!("{addr} is not a socket address"))?;
        start_server_at("hub", &self.log_path(), addr, self.serve_command(addr)).await
    }

    fn serve_command(&self, addr: SocketAddr) -> Command {
        let mut cmd = self.std_command();
        cmd.arg("serve").arg("--listen").arg(addr.to_string());
        cmd
    }

    /// Starts `hub serve` over HTTPS (`HUB_TLS_CERT_FILE`/`HUB_TLS_KEY_FILE`)
    /// on a free loopback port; returns once the hub says it is running on
    /// `https://` (it prints that after binding its listener), with the
    /// process (killed when dropped) and its address. The harness's
    /// API client speaks plain HTTP only: set the hub up with [`HubDir::start`]
    /// first, then restart it with this.
    pub async fn start_tls(&self, cert_file: &Path, key_file: &Path) -> anyhow::Result<(crate::CliChild, SocketAddr)> {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, crate::free_port()?));
            match self.start_tls_on(addr, cert_file, key_file).await {
                Ok(hub) => return Ok(hub),
                Err(e) if format!("{e:#}").contains("cannot listen on") && attempt < ATTEMPTS => {
                    eprintln!("port {} was taken, retrying: {e:#}", addr.port());
                }
                Err(e) => return Err(e),
            }
        }
        anyhow::bail!("could not find a free port for the hub in {ATTEMPTS} attempts")
    }

    /// [`HubDir::start_tls`] on `addr` (a restart where the edges know it).
    pub async fn start_tls_on(
        &self,
        addr: SocketAddr,
        cert_file: &Path,
        key_file: &Path,
    ) -> anyhow::Result<(crate::CliChild, SocketAddr)> {
        let mut cmd = self.serve_command(addr);
        cmd.env("HUB_TLS_CERT_FILE", cert_file).env("HUB_TLS_KEY_FILE", key_file);
        let shown = format!("hub serve --listen {addr} (TLS)");
        let mut child = crate::CliChild::spawn(cmd, shown, &self.log_path())?;
        let banner = format!("running on https://{addr}/");
        crate::poll_until("the hub to serve HTTPS", crate::READY_TIMEOUT, || {
            let said = child.output();
            let state = if said.contains(&banner) {
                Ok(Some(()))
            } else {
                match child.try_status() {
                    Ok(Some(status)) => Err(anyhow::anyhow!("the hub exited ({status}):\n{}", crate::tail(&said, 40))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            std::future::ready(state)
        })
        .await?;
        Ok((child, addr))
    }
}

/// One row of the hub's change log (`changes`), ids as text, the hash as
/// lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubChange {
    pub hub_seq: i64,
    pub hash: String,
    pub patient_id: String,
    pub site_id: String,
    pub device_id: String,
}

impl HubDir {
    /// The hub's whole change log in `hub_seq` order, read from its
    /// database (so it works with the hub dead).
    pub async fn change_log(&self) -> anyhow::Result<Vec<HubChange>> {
        let client = self.db.connect().await?;
        let rows = client
            .query(
                "SELECT hub_seq, encode(change_hash, 'hex'), patient_id::text, site_id::text, device_id::text
                 FROM changes ORDER BY hub_seq",
                &[],
            )
            .await
            .context("reading the hub's change log")?;
        rows.iter()
            .map(|r| {
                Ok(HubChange {
                    hub_seq: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    patient_id: r.try_get(2)?,
                    site_id: r.try_get(3)?,
                    device_id: r.try_get(4)?,
                })
            })
            .collect()
    }
}

/// A new site (`POST /api/v1/sites`, admin); its `id`.
pub async fn create_site(hub: &Api, name: &str, code: &str) -> anyhow::Result<String> {
    let body = json!({ "name": name, "code": code, "dhis2_org_unit": null });
    let site = hub.call(reqwest::Method::POST, "/api/v1/sites", Some(&body), StatusCode::CREATED).await?;
    Ok(site["id"].as_str().ok_or_else(|| anyhow::anyhow!("site without an id: {site}"))?.to_owned())
}

/// A one-time enrollment token for `site_id`.
pub async fn enrollment_token(hub: &Api, site_id: &str) -> anyhow::Result<String> {
    let path = format!("/api/v1/sites/{site_id}/enrollment-tokens");
    let answer: Value = hub.call(reqwest::Method::POST, &path, None, StatusCode::CREATED).await?;
    Ok(answer["token"].as_str().ok_or_else(|| anyhow::anyhow!("no token in {answer}"))?.to_owned())
}

/// The value of an unlabelled sample, or of the sample with exactly `labels`
/// (`result="ok"`), in Prometheus text; 0 when absent (a counter never
/// incremented may not be exported).
#[must_use]
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    let wanted = if labels.is_empty() { name.to_owned() } else { format!("{name}{{{labels}}}") };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == wanted).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

impl HubDir {
    /// Every patient document the hub holds, by patient id, loaded from its
    /// database (works with the hub dead).
    pub async fn documents(&self) -> anyhow::Result<std::collections::BTreeMap<String, crate::DocumentSummary>> {
        let client = self.db.connect().await?;
        let rows = client
            .query("SELECT patient_id::text, doc FROM documents ORDER BY patient_id", &[])
            .await
            .context("reading the hub's documents")?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let patient_id: String = row.try_get(0)?;
            let bytes: Vec<u8> = row.try_get(1)?;
            let doc = automerge::Automerge::load(&bytes)
                .with_context(|| format!("the hub's document of patient {patient_id} does not load"))?;
            out.insert(patient_id, crate::DocumentSummary::of(&doc));
        }
        Ok(out)
    }
}
