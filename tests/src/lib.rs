//! Harness for the cross-process end-to-end tests in `tests/tests/`.
//!
//! The tests run the real `edge` and `hub` binaries as child processes on
//! loopback ports, talk to them over HTTP as a client would, and inspect the
//! edge's SQLite file and the hub's PostgreSQL database from outside. Nothing here sleeps to synchronise: readiness is polled
//! against a deadline ([`poll_until`], [`EdgeDir::start`]).
//!
//! - [`edge_binary`] finds the binary next to the test executable (cargo does
//!   not give `CARGO_BIN_EXE_edge` to another package), so build it first:
//!   `cargo build -p edge --bins` (CI: `cargo build --workspace --bins`).
//! - [`EdgeDir`] is a throwaway data directory; [`EdgeDir::cli`] runs a
//!   one-shot subcommand (`user add`, `reindex`, `backup`), [`EdgeDir::start`]
//!   a server on a free port.
//! - [`EdgeProcess`] / [`HubProcess`] ([`ServerProcess`]) is a running
//!   server, killed with SIGKILL when dropped; [`CliChild`] a one-shot
//!   command in the background (an `edge sync` to kill).
//! - [`HubDir`] is a hub's data directory on a fresh database
//!   ([`TestDatabase`], dropped at the end), started with [`HubDir::start`]
//!   as often as needed; [`create_site`], [`enrollment_token`] and
//!   [`metric_value`] are the hub calls the tests share, and
//!   [`HubDir::change_log`] reads its change log from the database.
//! - [`Api`] is a small JSON client for `/api/v1` whose errors tell "no
//!   response at all" from "a response with the wrong status".
//! - [`ProcessGroupGuard`] runs a helper program (chromedriver) in its own
//!   process group and kills the whole group on drop, browser included.
//! - [`LinkSimulator`] is a seeded TCP proxy that puts latency, a bandwidth
//!   limit, dropped connections and cuts between an edge and the hub (see
//!   its module docs); [`seed_from_env`] picks and prints the seed of a
//!   seeded test.
//! - [`open_read_only`], [`check_integrity`], [`dump_table`] read an edge's
//!   SQLite file from outside once its process is dead; [`read_outbox`]
//!   reads its outbox, [`read_edge_documents`] its patient documents and
//!   [`read_meta`] its `meta` values (also while it runs: WAL readers do not
//!   block it). [`HubDir::documents`] loads the hub's documents; both give
//!   a [`DocumentSummary`] (heads and change hashes) to compare replicas.
//!
//! Environment: `SANTERURALE_EDGE_BIN` and `SANTERURALE_HUB_BIN` override the
//! binaries, `SANTERURALE_TEST_DATABASE_URL` the PostgreSQL server (default:
//! trust auth as `postgres` on 127.0.0.1:5432; none is a failure, not a skip),
//! `SANTERURALE_E2E_KEEP=1` keeps the temporary directories (data, logs) for
//! inspection (and the databases). Every `EDGE_*`, `HUB_*` and `DATABASE_URL`
//! variable is removed from the children's environment so that the
//! developer's own settings cannot leak in.

mod api;
mod edge;
mod hub;
mod link;
mod postgres;
mod process;
mod server;
mod sqlite;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tempfile::TempDir;

pub use api::{Api, CallError};
pub use edge::{EdgeDir, EdgeProcess};
pub use hub::{HubChange, HubDir, HubProcess, create_site, enrollment_token, metric_value};
pub use link::{LinkProfile, LinkSimulator, LinkStats, PACE_CHUNK, PeriodicCuts, link_seed};
pub use postgres::TestDatabase;
pub use process::ProcessGroupGuard;
pub use server::{CliChild, CliOutput, ServerProcess};
pub use sqlite::{
    EdgeDocument, OutboxRow, check_integrity, dump_rows, dump_table, open_read_only, read_edge_documents, read_meta,
    read_outbox,
};

/// How often readiness and other conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long an edge may take from spawn to answering `/health`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a one-shot CLI command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-request timeout of [`Api`] (a write is a few milliseconds; this only
/// keeps a wedged server from hanging the test).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The edge binary: `$SANTERURALE_EDGE_BIN`, or `<target>/<profile>/edge`
/// next to the running test executable (`<target>/<profile>/deps/<test>-<hash>`).
pub fn edge_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("edge", "SANTERURALE_EDGE_BIN")
}

/// The hub binary: `$SANTERURALE_HUB_BIN`, or `<target>/<profile>/hub`.
pub fn hub_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("hub", "SANTERURALE_HUB_BIN")
}

fn workspace_binary(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "{env_var}={} is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the test executable's path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        bin.is_file(),
        "the {name} binary {} does not exist: run `cargo build -p {name} --bins` first \
         (the tests start the real binary; cargo does not build it for another package), \
         or point {env_var} at one",
        bin.display()
    );
    Ok(bin)
}

/// A loopback port nobody listened on a moment ago. Another process may take
/// it before the child binds it, so callers retry on a bind clash.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Some`, an error,
/// or `timeout` passes (then fails naming `what`).
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The last `n` lines of `text`.
#[must_use]
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A temporary directory for throwaway test state, kept (and its path
/// printed) when `SANTERURALE_E2E_KEEP=1`.
pub fn temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    let keep = std::env::var("SANTERURALE_E2E_KEEP").is_ok_and(|v| v == "1");
    let dir = tempfile::Builder::new().prefix(prefix).disable_cleanup(keep).tempdir()?;
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// A seed for a seeded test: the number in `var` if set (to replay a
/// failure), else one from the clock. Printed with the variable to set, so a
/// failing run can be replayed.
pub fn seed_from_env(var: &str) -> anyhow::Result<u64> {
    let seed = match std::env::var(var) {
        Ok(v) => v.trim().parse().with_context(|| format!("{var}={v} is not a number"))?,
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            now.as_secs().wrapping_mul(1_000_003) ^ u64::from(now.subsec_nanos())
        }
    };
    println!("seed {seed} ({var}={seed} to replay)");
    Ok(seed)
}

/// What two replicas of a patient document must share once they have
/// converged: the same heads and the same set of changes (hashes as
/// lower-case hex, sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSummary {
    pub heads: Vec<String>,
    pub changes: std::collections::BTreeSet<String>,
}

impl DocumentSummary {
    #[must_use]
    pub fn of(doc: &automerge::Automerge) -> Self {
        let mut heads: Vec<String> = doc.get_heads().iter().map(ToString::to_string).collect();
        heads.sort();
        // Whole-history walk: fine for the few changes of a test patient.
        let changes = doc.get_changes(&[]).iter().map(|c| c.hash().to_string()).collect();
        Self { heads, changes }
    }
}
