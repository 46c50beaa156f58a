//! The `hub` command line: `serve` (the default), `user add`, `keys rotate`,
//! `print-config`. `--data-dir`, `--database-url` and the config overrides
//! apply to every subcommand.
//!
//! `serve` settles its transport before it opens the database: HTTPS with
//! `--tls-cert`/`--tls-key` (files read and checked first), plain HTTP on a
//! loopback address, or plain HTTP elsewhere with `--insecure-http`; anything
//! else exits with an error saying how to enable TLS.

use std::io::Read as _;
use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::AppState;
use crate::auth::{Role, TokenKeys};
use crate::config::{Config, LogFormat, Overrides, Transport};
use crate::db::Database;

#[derive(Debug, Parser)]
#[command(name = "hub", version, about = "Santé Rurale hub: the central server the clinics sync with")]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API (the default).
    Serve {
        /// Address to listen on [default: 0.0.0.0:8090]
        #[arg(long, env = "HUB_LISTEN")]
        listen: Option<SocketAddr>,
    },
    /// Manage hub accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the API token-signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the effective configuration (database password redacted).
    PrintConfig,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is read from standard input.
    Add {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = ["admin"])]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key; it signs after the next restart, and tokens
    /// signed with older keys stay valid while their files remain.
    Rotate,
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
        Command::Serve { .. } => runtime()?.block_on(serve(config)),
        Command::User(UserCommand::Add { username, role }) => {
            let Some(role) = Role::parse(&role) else { bail!("role must be admin") };
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("cannot read the password from standard input")?;
            let password = input.lines().next().unwrap_or_default().to_owned();
            runtime()?.block_on(async move {
                let db = Database::open(&config).await.context("cannot open the database")?;
                let result = crate::users::add_user(&db.pool, &username, role, &password).await;
                db.close().await.context("cannot close the database")?;
                let user = result?;
                println!("created {} account {}", user.role.as_str(), user.username);
                Ok(())
            })
        }
        Command::Keys(KeysCommand::Rotate) => {
            let kid = TokenKeys::rotate(&config.data_dir)?;
            println!("added signing key {kid}; restart the hub to sign with it");
            Ok(())
        }
        Command::PrintConfig => {
            print!("{}", config.to_toml());
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    // Before the database: a bad certificate must not cost a cluster start.
    let tls = match config.transport()? {
        Transport::Tls { cert_file, key_file } => Some(crate::tls::load_server_config(&cert_file, &key_file)?),
        Transport::PlainHttp => None,
    };
    let insecure_off_loopback = tls.is_none() && !listen.ip().is_loopback();
    let db = Database::open(&config).await.context("cannot open the database")?;
    let result = async {
        let state = AppState::new(config, db.pool.clone())?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let shutdown = santerurale_server::shutdown_signal();
        match tls {
            Some(tls) => {
                tracing::info!(address = %local, transport = "https", "hub listening");
                println!("Santé Rurale hub is running on https://{local}/");
                crate::serve_tls(listener, state, tls, shutdown).await?;
            }
            None => {
                if insecure_off_loopback {
                    tracing::warn!(
                        address = %local,
                        "serving plain HTTP on a non-loopback address (insecure_http): \
                         only safe behind a TLS-terminating proxy"
                    );
                }
                tracing::info!(address = %local, transport = "http", "hub listening");
                println!("Santé Rurale hub is running on http://{local}/");
                crate::serve(listener, state, shutdown).await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    // Stop the embedded cluster whether serving succeeded or not.
    db.close().await.context("cannot stop the database")?;
    tracing::info!("hub stopped");
    result
}
