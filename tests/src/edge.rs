//! A real `edge` process on a throwaway data directory.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt as _;

use crate::{Api, CLI_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT, edge_binary, free_port, tail, temp_dir};

/// A data directory for one edge, with the log of every process run on it.
///
/// Layout: `ROOT/data` is the edge's `--data-dir` (`edge.db` inside),
/// `ROOT/edge.log` collects the output of every server and CLI run.
#[derive(Debug)]
pub struct EdgeDir {
    root: TempDir,
    bin: PathBuf,
}

impl EdgeDir {
    pub fn new() -> anyhow::Result<Self> {
        let bin = edge_binary()?;
        Ok(Self { root: temp_dir("santerurale-edge-")?, bin })
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The edge's SQLite database.
    #[must_use]
    pub fn db_path(&self) -> PathBuf {
        self.data_dir().join("edge.db")
    }

    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.root().join("edge.log")
    }

    /// Everything the processes run on this directory printed.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn open_log(&self, header: &str) -> anyhow::Result<(File, u64)> {
        let mut log =
            File::options().create(true).append(true).open(self.log_path()).context("cannot open the edge log")?;
        writeln!(log, "==== {header}")?;
        let offset = log.metadata()?.len();
        Ok((log, offset))
    }

    fn std_command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EDGE_") {
                cmd.env_remove(key);
            }
        }
        // Plain log lines in the log file (tracing-subscriber honours NO_COLOR).
        cmd.env("NO_COLOR", "1");
        cmd.arg("--data-dir").arg(self.data_dir());
        cmd
    }

    /// Runs `edge --data-dir DIR ARGS...` to completion with `stdin` as its
    /// input; returns its standard output, or fails with its error output.
    pub async fn cli(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        let shown = format!("edge {}", args.join(" "));
        let mut cmd = tokio::process::Command::from(self.std_command());
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("cannot run {shown}"))?;
        let mut input = child.stdin.take().context("no stdin pipe")?;
        input.write_all(stdin.as_bytes()).await?;
        drop(input);
        let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("{shown} did not finish within {CLI_TIMEOUT:?}"))??;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let (mut log, _) = self.open_log(&shown)?;
        write!(log, "{stdout}{stderr}")?;
        ensure!(output.status.success(), "{shown} failed ({}):\n{stderr}{stdout}", output.status);
        Ok(stdout)
    }

    /// Creates an account with `edge user add` (password on standard input).
    pub async fn add_user(&self, username: &str, role: &str, password: &str) -> anyhow::Result<()> {
        self.cli(&["user", "add", "--username", username, "--role", role], &format!("{password}\n")).await?;
        Ok(())
    }

    /// Starts `edge serve` on a free loopback port and returns once `GET
    /// /health` answers `{"status":"ok"}`. A port taken in the meantime by
    /// someone else is retried with another.
    pub async fn start(&self) -> anyhow::Result<EdgeProcess> {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            let (log, log_start) = self.open_log(&format!("edge serve --listen {addr} (attempt {attempt})"))?;
            let child = self
                .std_command()
                .arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", self.bin.display()))?;
            let mut edge =
                EdgeProcess { child, base_url: format!("http://{addr}"), addr, log_path: self.log_path(), log_start };
            match edge.wait_ready(READY_TIMEOUT).await {
                Ok(()) => return Ok(edge),
                Err(e) if edge.log().contains("cannot listen on") && attempt < ATTEMPTS => {
                    eprintln!("port {} was taken, retrying: {e:#}", addr.port());
                }
                Err(e) => return Err(e),
            }
        }
        bail!("could not find a free port for the edge in {ATTEMPTS} attempts")
    }
}

/// A running `edge serve`. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct EdgeProcess {
    child: Child,
    addr: SocketAddr,
    base_url: String,
    log_path: PathBuf,
    log_start: u64,
}

impl EdgeProcess {
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url` + `path` (which starts with `/`).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client for this edge's API, not signed in.
    pub fn api(&self) -> anyhow::Result<Api> {
        Api::new(&self.base_url)
    }

    /// What this process has printed so far.
    #[must_use]
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path)
            && file.seek(SeekFrom::Start(self.log_start)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Fails (with the end of the log) if the process has exited on its own.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                bail!("the edge exited unexpectedly ({status}); its log ends with:\n{}", tail(&self.log(), 40))
            }
        }
    }

    /// Sends SIGKILL (what `Child::kill` does on unix) and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill().context("cannot kill the edge")?;
        Ok(self.child.wait()?)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let url = self.url("/health");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the edge exited before it was ready ({status}); its log ends with:\n{}", tail(&self.log(), 40));
            }
            if let Ok(resp) = http.get(&url).send().await
                && resp.status() == StatusCode::OK
                && resp.json::<Value>().await.is_ok_and(|body| body["status"] == "ok")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the edge did not answer {url} within {timeout:?}; its log ends with:\n{}",
                    tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
