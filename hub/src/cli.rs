//! The `hub` command line: `serve` (the default), `user add`, `keys rotate`,
//! `dhis2 export|resolve-mapping|late-data|jobs`, `print-config`. `--data-dir`, `--database-url` and the config overrides
//! apply to every subcommand.
//!
//! `serve` settles its transport before it opens the database: HTTPS with
//! `--tls-cert`/`--tls-key` (files read and checked first), plain HTTP on a
//! loopback address, or plain HTTP elsewhere with `--insecure-http`; anything
//! else exits with an error saying how to enable TLS. It then starts the
//! background jobs ([`crate::jobs`]: the DHIS2 export worker and schedule;
//! an invalid schedule stops it there) and stops them on shutdown.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;

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
    /// DHIS2 monthly reporting: exports, the mapping, the job list.
    #[command(subcommand)]
    Dhis2(Dhis2Command),
    /// Print the effective configuration (database password redacted).
    PrintConfig,
}

#[derive(Debug, Subcommand)]
pub enum Dhis2Command {
    /// Export a period's values to DHIS2 and run the jobs here to their end
    /// (retries included); exits with an error if any job failed or had conflicts.
    Export {
        /// The DHIS2 period: monthly 202404, or weekly 2024W15 for a weekly data set
        #[arg(long)]
        period: String,
        /// One site, by its code [default: every site]
        #[arg(long)]
        site: Option<String>,
        /// Ask DHIS2 to validate and count without saving (dryRun=true)
        #[arg(long)]
        dry_run: bool,
    },
    /// Look the mapping's codes (data set, data elements, category option
    /// combos, sites' org units) up in DHIS2, fill in their uids and save the
    /// mapping in the hub; exits with an error if a code was not found.
    ResolveMapping,
    /// Compare the recent exports (dhis2.late_data_periods finished periods)
    /// with the values counted now and re-export those that changed, running
    /// the jobs here to their end; exits with an error if any did not succeed.
    LateData {
        /// Only list what changed; create no job
        #[arg(long)]
        check: bool,
    },
    /// List the latest export jobs, newest first.
    Jobs {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
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
        Command::Dhis2(command) => runtime()?.block_on(dhis2(config, command)),
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
    crate::jobs::check_schedules(&config.dhis2)?;
    let db = Database::open(&config).await.context("cannot open the database")?;
    let result = async {
        let state = AppState::new(config, db.pool.clone())?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let jobs = crate::jobs::spawn(&state).await?;
        let local = listener.local_addr()?;
        let shutdown = santerurale_server::shutdown_signal();
        match tls {
            Some(tls) => {
                tracing::info!(address = %local, transport = "https", "hub listening");
                println!("Santé Rurale hub is running on https://{local}/");
                let served = crate::serve_tls(listener, state, tls, shutdown).await;
                jobs.stop().await;
                served?;
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
                let served = crate::serve(listener, state, shutdown).await;
                jobs.stop().await;
                served?;
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

async fn dhis2(config: Config, command: Dhis2Command) -> anyhow::Result<()> {
    let db = Database::open(&config).await.context("cannot open the database")?;
    let result = match command {
        Dhis2Command::Export { period, site, dry_run } => dhis2_export(&db.pool, config, &period, site, dry_run).await,
        Dhis2Command::ResolveMapping => dhis2_resolve(&db.pool, &config).await,
        Dhis2Command::LateData { check } => dhis2_late_data(&db.pool, config, check).await,
        Dhis2Command::Jobs { limit } => dhis2_jobs(&db.pool, limit).await,
    };
    db.close().await.context("cannot close the database")?;
    result
}

async fn dhis2_export(
    pool: &deadpool_postgres::Pool,
    config: Config,
    period: &str,
    site: Option<String>,
    dry_run: bool,
) -> anyhow::Result<()> {
    use crate::jobs::dhis2_export::{self, NewExport, Trigger};

    let period = crate::dhis2::period::Period::parse(period.trim())?;
    let site = match site {
        Some(code) => {
            let row = pool
                .get()
                .await?
                .query_opt("SELECT id FROM sites WHERE code = upper($1)", &[&code.trim()])
                .await
                .context("cannot look the site up")?;
            let Some(row) = row else { bail!("no site with the code {code}") };
            Some(santerurale_shared::SiteId::from_uuid(row.try_get(0)?))
        }
        None => None,
    };
    let new = NewExport { period, site, dry_run, trigger: Trigger::Cli, requested_by: None };
    let created = dhis2_export::create(pool, &config, new).await?;
    if created.is_empty() {
        bail!("there are no sites to export");
    }
    println!("created {} export job(s) for {period}{}", created.len(), if dry_run { " (dry run)" } else { "" });
    run_jobs_to_end(pool, Arc::new(config), &created).await
}

/// Runs the jobs `created` here (retries included) until each is final,
/// prints them, and fails if any did not succeed cleanly.
async fn run_jobs_to_end(
    pool: &deadpool_postgres::Pool,
    config: Arc<Config>,
    created: &[crate::jobs::dhis2_export::ExportJob],
) -> anyhow::Result<()> {
    use crate::jobs::dhis2_export::{self, WorkerContext};

    let ctx = WorkerContext::new(
        pool.clone(),
        config.clone(),
        Arc::new(crate::metrics::Metrics::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let poll = std::time::Duration::from_secs(config.dhis2.poll_seconds.clamp(1, 5));
    let finished = loop {
        while dhis2_export::run_one(&ctx).await?.is_some() {}
        let mut jobs = Vec::with_capacity(created.len());
        for job in created {
            jobs.push(dhis2_export::get(pool, job.id).await?.context("an export job disappeared")?);
        }
        if jobs.iter().all(|j| j.status.is_final()) {
            break jobs;
        }
        // A job waits for its retry (or runs in a serving hub): look again.
        tokio::time::sleep(poll).await;
    };
    let mut bad = 0;
    for job in &finished {
        print_job(job);
        for c in &job.conflicts {
            println!("    conflict {}: {} ({})", c.error_code.as_deref().unwrap_or("-"), c.message, c.object);
        }
        if let Some(error) = &job.error {
            println!("    error: {error}");
        }
        if !matches!(job.status, dhis2_export::JobStatus::Succeeded | dhis2_export::JobStatus::Superseded) {
            bad += 1;
        }
    }
    if bad > 0 {
        bail!("{bad} of {} export job(s) did not succeed cleanly (see above)", finished.len());
    }
    Ok(())
}

/// `hub dhis2 late-data [--check]`.
async fn dhis2_late_data(pool: &deadpool_postgres::Pool, config: Config, check: bool) -> anyhow::Result<()> {
    use crate::jobs::dhis2_late_data;

    let today = time::OffsetDateTime::now_utc().date();
    let found = dhis2_late_data::find(pool, &config, today).await?;
    if found.is_empty() {
        println!(
            "every export of the last {} finished period(s) holds the values counted now",
            config.dhis2.late_data_periods
        );
        return Ok(());
    }
    for out in &found {
        let since = out.exported_job.map_or_else(|| "never sent".to_owned(), |j| format!("since export {j}"));
        println!("{}  {:<10} {} value(s) changed, {since}", out.period, out.site_code, out.changes.len());
        for c in &out.changes {
            println!(
                "    {} / {}: sent {}, now {}",
                c.data_element,
                c.category_option_combo,
                c.sent.as_deref().unwrap_or("-"),
                c.now.as_deref().unwrap_or("-")
            );
        }
    }
    if check {
        return Ok(());
    }
    let created = dhis2_late_data::run_once(pool, &config, today).await?;
    println!("created {} re-export job(s)", created.len());
    run_jobs_to_end(pool, Arc::new(config), &created).await
}

fn print_job(job: &crate::jobs::dhis2_export::ExportJob) {
    let counts = job.import_count.map_or_else(
        || "-".to_owned(),
        |c| format!("imported {} updated {} ignored {} deleted {}", c.imported, c.updated, c.ignored, c.deleted),
    );
    println!(
        "{}  {}  {:<10} {:<24} attempts {}  {}{}  {}",
        job.created_at.date(),
        job.period,
        job.site_code,
        job.status.as_str(),
        job.attempts,
        counts,
        if job.conflicts.is_empty() { String::new() } else { format!("  conflicts {}", job.conflicts.len()) },
        job.id,
    );
}

async fn dhis2_resolve(pool: &deadpool_postgres::Pool, config: &Config) -> anyhow::Result<()> {
    let client = crate::dhis2::client::Dhis2Client::new(&config.dhis2)?;
    let loaded = crate::dhis2::mapping::load(pool, &config.dhis2).await?;
    let report = crate::dhis2::resolve::resolve(&client, &loaded.mapping, pool).await?;
    crate::dhis2::mapping::save(pool, &report.mapping, None).await?;
    let mapping = &report.mapping;
    println!("data set {} -> {}", mapping.data_set.code, mapping.data_set.uid.as_deref().unwrap_or("NOT FOUND"));
    for i in &mapping.indicators {
        println!(
            "{}: {} -> {}, {} -> {}",
            i.name,
            i.data_element.code,
            i.data_element.uid.as_deref().unwrap_or("NOT FOUND"),
            i.category_option_combo.code,
            i.category_option_combo.uid.as_deref().unwrap_or("NOT FOUND"),
        );
    }
    for (site, code, uid) in &report.sites_resolved {
        println!("org unit {code} -> {uid} (site {site})");
    }
    println!("mapping saved in the hub");
    for m in &report.missing {
        println!("not found in DHIS2: {} {} ({})", m.kind, m.code, m.context);
    }
    if !report.missing.is_empty() {
        bail!("{} code(s) not found in DHIS2 (see above)", report.missing.len());
    }
    Ok(())
}

async fn dhis2_jobs(pool: &deadpool_postgres::Pool, limit: i64) -> anyhow::Result<()> {
    let jobs = crate::jobs::dhis2_export::list(pool, limit).await?;
    if jobs.is_empty() {
        println!("no export jobs");
    }
    for job in &jobs {
        print_job(job);
    }
    Ok(())
}
