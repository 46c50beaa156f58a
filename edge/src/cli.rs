//! The `edge` command line: `serve` (the default), `user add`, `backup`,
//! `reindex`, `enroll`, `sync`, `print-config`. `--data-dir` and the config overrides apply to
//! every subcommand.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::auth::{check_password_policy, hash_password};
use crate::config::{Config, LogFormat, Overrides};
use crate::store::{Role, Store, StoreOptions};
use crate::{AppState, validate_username};

#[derive(Debug, Parser)]
#[command(name = "edge", version, about = "Santé Rurale clinic edge node: patient records that work with no internet")]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the web UI and API (the default).
    Serve {
        /// Address to listen on [default: 0.0.0.0:8080]
        #[arg(long, env = "EDGE_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Write a consistent copy of the database to FILE (safe while serving).
    Backup { file: PathBuf },
    /// Rebuild the query tables and search index from the patient documents.
    Reindex,
    /// Bind this edge to a site on the hub with a one-time enrollment token.
    Enroll {
        /// The hub's address, e.g. https://hub.example.org (plain http://: loopback only unless --insecure-http)
        #[arg(long)]
        hub: String,
        /// The enrollment token a hub admin made for this site (base64url: it may start with '-')
        #[arg(long, env = "EDGE_ENROLL_TOKEN", hide_env_values = true, allow_hyphen_values = true)]
        token: String,
        /// Replace an existing enrollment and its device key
        #[arg(long)]
        force: bool,
        /// Accept plain, unencrypted HTTP to a hub that is not on this machine
        #[arg(long)]
        insecure_http: bool,
        /// Trust only the CA certificate(s) in this PEM file for the hub's certificate, instead of the
        /// system's authorities (a hub with its own CA); kept for every later sync
        #[arg(long, value_name = "FILE")]
        hub_ca: Option<PathBuf>,
    },
    /// Push every pending change to the hub once (pulling from the hub is not built yet).
    Sync,
    /// Print the effective configuration.
    PrintConfig,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is read from standard input.
    Add {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = ["admin", "clinician", "registrar"])]
        role: String,
    },
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Some(Command::Serve { listen }) => *listen,
        _ => None,
    };
    let config = Config::load(&cli.overrides, listen)?;
    init_logging(config.log_format);
    match cli.command.unwrap_or(Command::Serve { listen: None }) {
        Command::Serve { .. } => serve(config),
        Command::User(UserCommand::Add { username, role }) => user_add(&config, &username, &role),
        Command::Backup { file } => {
            let store = open_store(&config)?;
            store.backup_to(&file).with_context(|| format!("backup to {} failed", file.display()))?;
            println!("backup written to {}", file.display());
            Ok(())
        }
        Command::Reindex => {
            let store = open_store(&config)?;
            let n = store.reindex().context("reindex failed")?;
            println!("reindexed {n} patients");
            Ok(())
        }
        Command::Enroll { hub, token, force, insecure_http, hub_ca } => {
            let options = crate::sync::EnrollOptions { hub_url: hub, token, force, insecure_http };
            enroll(&config, options, hub_ca.as_deref())
        }
        Command::Sync => sync(&config),
        Command::PrintConfig => {
            print!("{}", config.to_toml());
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.data_dir, StoreOptions { default_country: config.default_country.clone() })
        .with_context(|| format!("cannot open the database in {}", config.data_dir.display()))
}

fn user_add(config: &Config, username: &str, role: &str) -> anyhow::Result<()> {
    let username = validate_username(username).map_err(anyhow::Error::msg)?;
    let Some(role) = Role::parse(role) else { bail!("role must be admin, clinician or registrar") };
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("cannot read the password from standard input")?;
    let password = input.lines().next().unwrap_or_default();
    if let Err(code) = check_password_policy(password) {
        bail!(
            "{}: the password (read from standard input) must have {} to {} characters",
            code,
            crate::auth::MIN_PASSWORD_CHARS,
            crate::auth::MAX_PASSWORD_CHARS
        );
    }
    let store = open_store(config)?;
    let hash = hash_password(password)?;
    let user =
        store.blocking_write(|w| crate::store::insert_user(w.conn(), &username, role, &hash)).map_err(|e| match e {
            crate::store::StoreError::UsernameTaken => anyhow::anyhow!("the username {username} is already taken"),
            other => anyhow::Error::new(other),
        })?;
    println!("created {} account {}", role.as_str(), user.username);
    Ok(())
}

fn enroll(config: &Config, options: crate::sync::EnrollOptions, hub_ca: Option<&Path>) -> anyhow::Result<()> {
    // Checked before the store opens or anything is sent.
    let hub_ca = hub_ca.map(crate::sync::HubCa::read).transpose()?;
    let store = open_store(config)?;
    let done = small_runtime()?.block_on(crate::sync::enroll_with_ca(&store, &config.data_dir, options, hub_ca))?;
    println!(
        "enrolled device {} in site {} ({}, {}) at {}",
        done.device_id, done.site_name, done.site_code, done.site_id, done.hub_url
    );
    Ok(())
}

fn sync(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let synced = small_runtime()?.block_on(crate::sync::sync(
        &store,
        &config.data_dir,
        santerurale_shared::sync::PushConfig::default(),
        crate::sync::DEFAULT_PULL_BYTES,
    ));
    match synced {
        Ok(r) => {
            println!(
                "pushed {} changes in {} requests ({} new to the hub, {} it already had); \
                 pulled {} changes in {} pages ({} new here)",
                r.pushed, r.batches, r.applied, r.duplicates, r.pulled, r.pull_pages, r.pulled_new
            );
            Ok(())
        }
        Err(e) => {
            let kind =
                if e.is_retryable() { "will succeed once the hub is reachable again" } else { "needs an operator" };
            bail!("sync failed ({kind}): {}", e.display_message())
        }
    }
}

fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let state = AppState::open(config)?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let shown = if local.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], local.port())) } else { local };
        tracing::info!(address = %local, "edge listening");
        println!("Santé Rurale edge is running: open http://{shown}/ (listening on {local})");
        // One signal stops both the server and the sync scheduler.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            santerurale_server::shutdown_signal().await;
            let _ = stop.send(true);
        });
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let scheduler = match crate::sync::scheduler::Schedule::from_config(&state.config) {
            Some(schedule) => {
                Some(crate::sync::scheduler::spawn(state.clone(), schedule, until_stopped(stopped.clone())))
            }
            None => {
                tracing::info!("background sync is off (sync_interval_seconds = 0)");
                None
            }
        };
        crate::serve(listener, state, until_stopped(stopped)).await?;
        if let Some(task) = scheduler {
            let _ = task.await;
        }
        tracing::info!("edge stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command};

    #[test]
    fn an_enrollment_token_may_start_with_a_hyphen() {
        let cli = Cli::try_parse_from(["edge", "enroll", "--hub", "http://127.0.0.1:8090", "--token", "-gecgNOpo9PXa"])
            .expect("parses");
        assert!(matches!(cli.command, Some(Command::Enroll { token, .. }) if token == "-gecgNOpo9PXa"));
    }
}
