//! A real `edge` process on a throwaway data directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::TempDir;

use crate::server::{CliChild, CliOutput, ServerProcess, run_cli, start_server};
use crate::{edge_binary, temp_dir};

/// A running `edge serve`. Dropping it kills the process (SIGKILL) and reaps it.
pub type EdgeProcess = ServerProcess;

/// A data directory for one edge, with the log of every process run on it.
///
/// Layout: `ROOT/data` is the edge's `--data-dir` (`edge.db` inside),
/// `ROOT/edge.log` collects the output of every server and CLI run except
/// background ones ([`EdgeDir::spawn_cli`]), which get `ROOT/cli-N.log` each.
#[derive(Debug)]
pub struct EdgeDir {
    root: TempDir,
    bin: PathBuf,
    spawned: AtomicU64,
}

impl EdgeDir {
    pub fn new() -> anyhow::Result<Self> {
        let bin = edge_binary()?;
        Ok(Self { root: temp_dir("santerurale-edge-")?, bin, spawned: AtomicU64::new(0) })
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
    /// input, whatever its exit status.
    pub async fn run(&self, args: &[&str], stdin: &str) -> anyhow::Result<CliOutput> {
        let mut cmd = self.std_command();
        cmd.args(args);
        run_cli(cmd, format!("edge {}", args.join(" ")), stdin, &self.log_path()).await
    }

    /// Runs `edge --data-dir DIR ARGS...` to completion with `stdin` as its
    /// input; returns its standard output, or fails with its error output.
    pub async fn cli(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        self.run(args, stdin).await?.success()
    }

    /// Starts `edge --data-dir DIR ARGS...` in the background (to kill it).
    pub fn spawn_cli(&self, args: &[&str]) -> anyhow::Result<CliChild> {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed) + 1;
        let mut cmd = self.std_command();
        cmd.args(args);
        CliChild::spawn(cmd, format!("edge {}", args.join(" ")), &self.root().join(format!("cli-{n}.log")))
    }

    /// Creates an account with `edge user add` (password on standard input).
    pub async fn add_user(&self, username: &str, role: &str, password: &str) -> anyhow::Result<()> {
        self.cli(&["user", "add", "--username", username, "--role", role], &format!("{password}\n")).await?;
        Ok(())
    }

    /// Starts `edge serve` on a free loopback port and returns once `GET
    /// /health` answers `{"status":"ok"}`.
    pub async fn start(&self) -> anyhow::Result<EdgeProcess> {
        start_server("edge", &self.log_path(), |addr| {
            let mut cmd = self.std_command();
            cmd.arg("serve").arg("--listen").arg(addr.to_string());
            cmd
        })
        .await
    }
}
