//! The embedded PostgreSQL cluster: what `hub serve` runs when no
//! `DATABASE_URL` is configured.
//!
//! Layout, all under `DATA_DIR/pg` (mode 0700, owned by the user the server
//! runs as):
//! - `data/`: the cluster (`PGDATA`), created by `initdb` on first start. It
//!   is built in `data.init/` and renamed, so an interrupted `initdb` leaves
//!   nothing that looks like a cluster.
//! - `.s.PGSQL.<port>`: the server's unix socket. The hub connects through
//!   it as `postgres` with `trust` authentication: only the directory's owner
//!   (and root) can reach it.
//! - `postgres.log`: the server's log.
//! - `superuser-password`: the `postgres` password for TCP connections, which
//!   are accepted on 127.0.0.1 only (port chosen free at each start) and
//!   authenticated with SCRAM, so other local users cannot get in.
//!
//! The server programs refuse to run as root. When the hub runs as root the
//! directory is handed to the `postgres` system user and every program runs
//! through `runuser -u postgres --`; that user must be able to traverse the
//! directories above `DATA_DIR`.
//!
//! If a server is already running on the cluster (another hub process, or
//! `hub user add` while `hub serve` runs), [`EmbeddedPostgres::start`]
//! attaches to it and leaves it running when dropped.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// Name of the database the hub uses inside its embedded cluster.
pub const DATABASE: &str = "hub";
/// How long `pg_ctl` may take to start the server.
const START_TIMEOUT_SECS: u32 = 60;
/// Unix socket paths longer than this do not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "the PostgreSQL server programs (initdb, pg_ctl) were not found {searched}: install the server package \
         (Debian: apt-get install postgresql), set postgres_bin_dir, or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound { searched: String },
    #[error(
        "the hub runs as root, and PostgreSQL refuses to: the embedded cluster needs the unprivileged `postgres` \
         system user (install the server package), or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "the `postgres` user cannot write to {0}: make the directories above it traversable (chmod o+x) or choose \
         another --data-dir"
    )]
    NotReachable(PathBuf),
    #[error("the socket path {0} is too long for a unix socket: choose a shorter --data-dir")]
    SocketPathTooLong(PathBuf),
    #[error("cannot prepare {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot run {program}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} failed ({status}): {output}")]
    Command { program: String, status: String, output: String },
    #[error("the server did not accept connections within {seconds} s; see {log}")]
    NotReady { seconds: u64, log: PathBuf, source: tokio_postgres::Error },
    #[error("cannot create the database {DATABASE}")]
    CreateDatabase(#[source] tokio_postgres::Error),
}

/// A running embedded cluster. Stop it with [`EmbeddedPostgres::stop`]; if it
/// is dropped instead, the drop stops it too (blocking briefly).
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the programs as `postgres` (we are root).
    as_postgres: bool,
    /// We started the server, so we stop it.
    owned: bool,
    stopped: bool,
}

impl EmbeddedPostgres {
    /// Creates the cluster in `dir` on first use, starts it (or attaches to
    /// the server already running on it), waits until it accepts
    /// connections and creates the [`DATABASE`].
    pub async fn start(dir: &Path, bin_dir: Option<&Path>) -> Result<Self, PgError> {
        let bin_dir = find_bin_dir(bin_dir)?;
        let as_postgres = rustix::process::geteuid().is_root();
        let io = |source| PgError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = std::fs::canonicalize(dir).map_err(io)?;
        let mut pg = Self { bin_dir, dir, port: 0, as_postgres, owned: false, stopped: false };
        pg.prepare_dir()?;
        if !pg.data_dir().join("PG_VERSION").exists() {
            pg.initdb().await?;
        }
        if let Some(port) = pg.running_port().await {
            tracing::info!(port, dir = %pg.dir.display(), "attaching to the embedded PostgreSQL already running");
            pg.port = port;
            pg.stopped = true;
        } else {
            pg.port = free_port().map_err(|source| PgError::Io { path: pg.dir.clone(), source })?;
            pg.check_socket_path()?;
            pg.pg_ctl_start().await?;
            pg.owned = true;
        }
        pg.wait_ready(Duration::from_secs(10)).await?;
        pg.create_database().await?;
        Ok(pg)
    }

    /// How to connect to `database` on this cluster (over the unix socket).
    #[must_use]
    pub fn connect_config(&self, database: &str) -> tokio_postgres::Config {
        self.config_for_port(self.port, database)
    }

    fn config_for_port(&self, port: u16, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.dir).port(port).user("postgres").dbname(database);
        c.application_name("santerurale-hub").connect_timeout(Duration::from_secs(5));
        c
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this handle started the server (and so stops it).
    #[must_use]
    pub fn owns_server(&self) -> bool {
        self.owned
    }

    /// Stops the server (fast shutdown: open sessions are ended) if this
    /// handle started it.
    pub async fn stop(mut self) -> Result<(), PgError> {
        if self.stopped || !self.owned {
            self.stopped = true;
            return Ok(());
        }
        self.stopped = true;
        let argv = self.stop_argv();
        let output = self.tokio_command(&argv).output().await.map_err(|source| spawn_error(&argv, source))?;
        check(&argv, &output)?;
        tracing::info!(dir = %self.dir.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn prepare_dir(&self) -> Result<(), PgError> {
        use std::os::unix::fs::PermissionsExt as _;
        let io = |source| PgError::Io { path: self.dir.clone(), source };
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        if self.as_postgres {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid)).map_err(io)?;
            let probe = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-w"])
                .arg(&self.dir)
                .status()
                .map_err(|source| PgError::Spawn { program: "runuser".into(), source })?;
            if !probe.success() {
                return Err(PgError::NotReachable(self.dir.clone()));
            }
        }
        Ok(())
    }

    async fn initdb(&self) -> Result<(), PgError> {
        let staging = self.dir.join("data.init");
        let io = |path: &Path, source| PgError::Io { path: path.to_owned(), source };
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&staging, e)),
        }
        let pwfile = self.dir.join("superuser-password");
        if !pwfile.exists() {
            let password = crate::auth::random_token();
            let mut opts = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(opts.write(true).create_new(true), 0o600);
            let mut f = opts.open(&pwfile).map_err(|e| io(&pwfile, e))?;
            f.write_all(password.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| io(&pwfile, e))?;
            if self.as_postgres {
                let (uid, gid) = postgres_ids()?;
                std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).map_err(|e| io(&pwfile, e))?;
            }
        }
        let mut argv = vec![self.bin_dir.join("initdb").into_os_string()];
        argv.extend(["-D".into(), staging.clone().into_os_string()]);
        argv.extend(
            ["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"].map(OsString::from),
        );
        argv.extend(["--locale=C.UTF-8".into(), "--pwfile".into(), pwfile.into_os_string()]);
        tracing::info!(dir = %self.dir.display(), "creating the embedded PostgreSQL cluster (initdb)");
        let output = self.tokio_command(&argv).output().await.map_err(|source| spawn_error(&argv, source))?;
        check(&argv, &output)?;
        std::fs::rename(&staging, self.data_dir()).map_err(|e| io(&staging, e))
    }

    /// The port of a server already running on this cluster, if one answers.
    async fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        // Line 4 of postmaster.pid is the port (see PostgreSQL's pidfile.h).
        let port: u16 = pid_file.lines().nth(3)?.trim().parse().ok()?;
        let (client, connection) = self.config_for_port(port, "postgres").connect(NoTls).await.ok()?;
        drop(client);
        let _ = connection.await;
        Some(port)
    }

    fn check_socket_path(&self) -> Result<(), PgError> {
        let socket = self.dir.join(format!(".s.PGSQL.{}", self.port));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PgError::SocketPathTooLong(socket));
        }
        Ok(())
    }

    async fn pg_ctl_start(&self) -> Result<(), PgError> {
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c unix_socket_permissions=0700",
            self.port,
            self.dir.display()
        );
        let mut argv = vec![self.bin_dir.join("pg_ctl").into_os_string()];
        argv.extend(["-D".into(), self.data_dir().into_os_string(), "-l".into(), self.log_file().into_os_string()]);
        argv.extend(["-o".into(), options.into(), "-w".into(), "-t".into(), START_TIMEOUT_SECS.to_string().into()]);
        argv.push("start".into());
        tracing::info!(port = self.port, dir = %self.dir.display(), "starting the embedded PostgreSQL");
        let output = self.tokio_command(&argv).output().await.map_err(|source| spawn_error(&argv, source))?;
        check(&argv, &output).map_err(|e| match e {
            PgError::Command { program, status, output } => PgError::Command {
                program,
                status,
                output: format!(
                    "{output}\n--- end of {} ---\n{}",
                    self.log_file().display(),
                    log_tail(&self.log_file())
                ),
            },
            other => other,
        })
    }

    /// Polls until a connection succeeds or `limit` passes.
    async fn wait_ready(&self, limit: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + limit;
        let config = self.connect_config("postgres");
        loop {
            match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    drop(client);
                    let _ = connection.await;
                    return Ok(());
                }
                Err(source) if Instant::now() >= deadline => {
                    return Err(PgError::NotReady { seconds: limit.as_secs(), log: self.log_file(), source });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn create_database(&self) -> Result<(), PgError> {
        let (client, connection) =
            self.connect_config("postgres").connect(NoTls).await.map_err(PgError::CreateDatabase)?;
        let conn = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .map_err(PgError::CreateDatabase)?
            .is_some();
        if !exists {
            match client.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await {
                Ok(()) => {}
                // Another process created it between our check and now.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(e) => return Err(PgError::CreateDatabase(e)),
            }
        }
        drop(client);
        let _ = conn.await;
        Ok(())
    }

    fn stop_argv(&self) -> Vec<OsString> {
        let mut argv = vec![self.bin_dir.join("pg_ctl").into_os_string()];
        argv.extend(["-D".into(), self.data_dir().into_os_string()]);
        argv.extend(["-m", "fast", "-w", "stop"].map(OsString::from));
        argv
    }

    fn wrap(&self, argv: &[OsString]) -> Vec<OsString> {
        if self.as_postgres {
            let mut v: Vec<OsString> = ["runuser", "-u", "postgres", "--"].map(OsString::from).to_vec();
            v.extend_from_slice(argv);
            v
        } else {
            argv.to_vec()
        }
    }

    fn tokio_command(&self, argv: &[OsString]) -> tokio::process::Command {
        let argv = self.wrap(argv);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        // A directory the server's user can enter, so it does not warn about
        // the caller's.
        cmd.args(&argv[1..]).current_dir(&self.dir).stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.stopped || !self.owned {
            return;
        }
        let argv = self.wrap(&self.stop_argv());
        let result = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                tracing::error!(output = %String::from_utf8_lossy(&o.stderr), "cannot stop the embedded PostgreSQL")
            }
            Err(e) => tracing::error!(error = %e, "cannot stop the embedded PostgreSQL"),
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: `explicit` if given, else
/// the first `PATH` entry that has both, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, PgError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = explicit {
        return if has_both(dir) {
            Ok(dir.to_owned())
        } else {
            Err(PgError::BinariesNotFound { searched: format!("in {}", dir.display()) })
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| PgError::BinariesNotFound { searched: "on PATH or under /usr/lib/postgresql/*/bin".into() })
}

fn postgres_ids() -> Result<(u32, u32), PgError> {
    let id = |flag: &str| -> Result<u32, PgError> {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|source| PgError::Spawn { program: "id".into(), source })?;
        if !out.status.success() {
            return Err(PgError::NoPostgresUser);
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| PgError::NoPostgresUser)
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> std::io::Result<u16> {
    // The port is free now; the server binds it a moment later. A collision
    // in between makes pg_ctl fail with a clear log line.
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn program_name(argv: &[OsString]) -> String {
    argv.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

fn spawn_error(argv: &[OsString], source: std::io::Error) -> PgError {
    PgError::Spawn { program: program_name(argv), source }
}

fn check(argv: &[OsString], output: &Output) -> Result<(), PgError> {
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        text.push('\n');
        text.push_str(stdout.trim());
    }
    Err(PgError::Command { program: program_name(argv), status: output.status.to_string(), output: text })
}

/// The last lines of the server log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
