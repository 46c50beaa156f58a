//! A server binary (`edge serve`, `hub serve`) running as a child process on
//! a loopback port, and one-shot CLI runs of the same binaries.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::{Api, CLI_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT, free_port, tail};

/// Appends `==== header` to the log at `path`; returns the file and the
/// offset where what follows starts.
pub(crate) fn open_log(path: &Path, header: &str) -> anyhow::Result<(File, u64)> {
    let mut log = File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log {}", path.display()))?;
    writeln!(log, "==== {header}")?;
    let offset = log.metadata()?.len();
    Ok((log, offset))
}

fn read_log_from(path: &Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(start)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Starts `make(addr)` on a free loopback port and returns once `GET
/// /health` answers `{"status":"ok",...}`. A port taken in the meantime by
/// someone else (the log says `cannot listen on`) is retried with another.
pub(crate) async fn start_server(
    name: &'static str,
    log_path: &Path,
    mut make: impl FnMut(SocketAddr) -> Command,
) -> anyhow::Result<ServerProcess> {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        match start_server_at(name, log_path, addr, make(addr)).await {
            Ok(server) => return Ok(server),
            Err(e) if format!("{e:#}").contains("cannot listen on") && attempt < ATTEMPTS => {
                eprintln!("port {} was taken, retrying: {e:#}", addr.port());
            }
            Err(e) => return Err(e),
        }
    }
    bail!("could not find a free port for the {name} in {ATTEMPTS} attempts")
}

/// Starts `cmd`, which listens on `addr`, and returns once `GET /health`
/// answers `{"status":"ok",...}`.
pub(crate) async fn start_server_at(
    name: &'static str,
    log_path: &Path,
    addr: SocketAddr,
    mut cmd: Command,
) -> anyhow::Result<ServerProcess> {
    let (log, log_start) = open_log(log_path, &format!("{name} serve --listen {addr}"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the {name}"))?;
    let mut server = ServerProcess {
        name,
        child,
        base_url: format!("http://{addr}"),
        addr,
        log_path: log_path.to_owned(),
        log_start,
    };
    server.wait_ready(READY_TIMEOUT).await?;
    Ok(server)
}

/// A running server. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    child: std::process::Child,
    addr: SocketAddr,
    base_url: String,
    log_path: PathBuf,
    log_start: u64,
}

impl ServerProcess {
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

    /// A client for this server's API, not signed in.
    pub fn api(&self) -> anyhow::Result<Api> {
        Api::new(&self.base_url)
    }

    /// What this process has printed so far.
    #[must_use]
    pub fn log(&self) -> String {
        read_log_from(&self.log_path, self.log_start)
    }

    /// Fails (with the end of the log) if the process has exited on its own.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => {
                bail!("the {} exited unexpectedly ({status}); its log ends with:\n{}", self.name, tail(&self.log(), 40))
            }
        }
    }

    /// Sends SIGKILL (what `Child::kill` does on unix) and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill().with_context(|| format!("cannot kill the {}", self.name))?;
        Ok(self.child.wait()?)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let url = self.url("/health");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the {} exited before it was ready ({status}); its log ends with:\n{}",
                    self.name,
                    tail(&self.log(), 40)
                );
            }
            if let Ok(resp) = http.get(&url).send().await
                && resp.status() == StatusCode::OK
                && resp.json::<Value>().await.is_ok_and(|body| body["status"] == "ok")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the {} did not answer {url} within {timeout:?}; its log ends with:\n{}",
                    self.name,
                    tail(&self.log(), 40)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a one-shot command ended.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// `edge sync`, for messages.
    pub shown: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Its output, or an error with the status and both streams.
    pub fn success(self) -> anyhow::Result<String> {
        ensure!(self.status.success(), "{} failed ({}):\n{}{}", self.shown, self.status, self.stderr, self.stdout);
        Ok(self.stdout)
    }

    /// Standard error then standard output.
    #[must_use]
    pub fn text(&self) -> String {
        format!("{}{}", self.stderr, self.stdout)
    }
}

/// Runs `cmd` (shown as `shown`) to completion with `stdin` as its input,
/// appending its output to the log at `log_path`.
pub(crate) async fn run_cli(cmd: Command, shown: String, stdin: &str, log_path: &Path) -> anyhow::Result<CliOutput> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {shown}"))?;
    let mut input = child.stdin.take().context("no stdin pipe")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let output = tokio::time::timeout(CLI_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{shown} did not finish within {CLI_TIMEOUT:?}"))??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let (mut log, _) = open_log(log_path, &shown)?;
    write!(log, "{stdout}{stderr}")?;
    Ok(CliOutput { shown, status: output.status, stdout, stderr })
}

/// A one-shot command running in the background (`edge sync` a test may
/// SIGKILL), its output going to its log. Killed when dropped.
#[derive(Debug)]
pub struct CliChild {
    shown: String,
    child: tokio::process::Child,
    log_path: PathBuf,
    log_start: u64,
}

impl CliChild {
    pub(crate) fn spawn(cmd: Command, shown: String, log_path: &Path) -> anyhow::Result<Self> {
        let (log, log_start) = open_log(log_path, &shown)?;
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("cannot run {shown}"))?;
        Ok(Self { shown, child, log_path: log_path.to_owned(), log_start })
    }

    #[must_use]
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Its exit status if it has ended by itself.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits up to `timeout` for it to end; `None` if it is still running.
    pub async fn wait_for(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }

    /// Waits for it to end, at most [`CLI_TIMEOUT`].
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        self.wait_for(CLI_TIMEOUT)
            .await?
            .with_context(|| format!("{} did not finish within {CLI_TIMEOUT:?}", self.shown))
    }

    /// SIGKILLs it (if it is still running) and reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        // start_kill fails only if the process was already reaped.
        let _ = self.child.start_kill();
        Ok(self.child.wait().await?)
    }

    /// Everything it printed (standard error and output, interleaved).
    #[must_use]
    pub fn output(&self) -> String {
        read_log_from(&self.log_path, self.log_start)
    }
}
