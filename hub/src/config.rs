//! The hub's configuration: one typed struct, defaults in [`Config::default`].
//!
//! Sources, later ones winning: the defaults, the TOML file (`--config FILE`,
//! or `hub.toml` in the data directory when it exists), then environment
//! variables (`HUB_*`, and `DATABASE_URL`) and command-line flags (see
//! [`Overrides`]). `hub print-config` shows the result with the database
//! password redacted.
//!
//! [`Config::transport`] tells `hub serve` whether to speak HTTPS (a
//! certificate and key are configured) or plain HTTP, which it allows only on
//! a loopback address unless `insecure_http` is set (see [`crate::tls`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the optional config file inside the data directory.
pub const CONFIG_FILE: &str = "hub.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the token-signing keys and, by default, the embedded PostgreSQL
    /// cluster (`DATA_DIR/pg`) live.
    pub data_dir: PathBuf,
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// An existing PostgreSQL database. When absent, the hub runs its own
    /// cluster in `DATA_DIR/pg` (see [`crate::pg`]).
    pub database_url: Option<DatabaseUrl>,
    /// Where `initdb` and `pg_ctl` are, for the embedded cluster; searched on
    /// `PATH` and under `/usr/lib/postgresql/*/bin` when absent.
    pub postgres_bin_dir: Option<PathBuf>,
    /// Most database connections the hub holds open.
    pub db_pool_size: u32,
    /// How long an API bearer token is valid.
    pub token_ttl_minutes: u32,
    /// How long an enrollment token may be spent after it is created.
    pub enrollment_token_ttl_minutes: u32,
    /// Largest sync request body accepted, as sent (compressed); larger ones
    /// get 413 and the edge splits its batch.
    pub sync_max_body_bytes: usize,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// PEM certificate chain (leaf first) to serve HTTPS with; needs
    /// `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating
    /// proxy). Without it, and without a certificate, `hub serve` refuses.
    pub insecure_http: bool,
    /// The national DHIS2 the monthly exports go to (`[dhis2]` in the file).
    pub dhis2: Dhis2Config,
}

/// Connection to DHIS2 and how exports run (issue 4). Environment:
/// `HUB_DHIS2_URL`, `HUB_DHIS2_USERNAME` + `HUB_DHIS2_PASSWORD` or
/// `HUB_DHIS2_TOKEN`, `HUB_DHIS2_MAPPING`, `HUB_DHIS2_SCHEDULE`,
/// `HUB_DHIS2_LATE_DATA_SCHEDULE`, `HUB_DHIS2_LATE_DATA_PERIODS`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dhis2Config {
    /// Base URL of the DHIS2 instance, e.g. `https://dhis2.example.org`
    /// (the Web API is under `/api`). Exports fail with a clear error while
    /// it is unset.
    pub url: Option<String>,
    /// Basic authentication (with `password`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A personal access token (`d2pat_...`), sent as `Authorization: ApiToken`.
    pub token: Option<Secret>,
    /// PEM file of the authorities to trust for an `https://` DHIS2 instead
    /// of the system's.
    pub ca_file: Option<PathBuf>,
    /// The mapping file (TOML or JSON); the shipped default when unset. A
    /// mapping saved through the admin UI or API wins over it.
    pub mapping_file: Option<PathBuf>,
    /// When the previous month is exported for every site: a cron expression
    /// with seconds (`sec min hour day-of-month month day-of-week`, UTC), or
    /// `off`. Default: the 2nd of each month at 02:00.
    pub schedule: String,
    /// When exported periods are checked for late data (values that changed
    /// since they were sent: an encounter synced after the export, a
    /// corrected birth date) and re-exported where they differ: a cron
    /// expression with seconds (UTC), or `off`. Default: every day at 03:30.
    pub late_data_schedule: String,
    /// How many finished periods before the current one the late-data check
    /// looks at (DHIS2 usually locks older ones); 0 turns the check off.
    pub late_data_periods: u32,
    /// A DHIS2 request taking longer than this is a failed, retried attempt.
    pub request_timeout_seconds: u64,
    /// Attempts of a job before it is marked failed (network errors,
    /// timeouts and 5xx only; other answers are final at once).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time up to
    /// `retry_max_seconds`.
    pub retry_base_seconds: u64,
    pub retry_max_seconds: u64,
    /// How long a worker holds a job; a job still `running` after its lease
    /// belongs to a hub that stopped mid-job and is taken up again.
    pub lease_seconds: u64,
    /// How often the worker looks for due jobs (it is also woken when a job
    /// is created by this hub).
    pub poll_seconds: u64,
}

/// Most periods the late-data check may look back.
pub const MAX_LATE_DATA_PERIODS: u32 = 36;

impl Default for Dhis2Config {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            token: None,
            ca_file: None,
            mapping_file: None,
            schedule: "0 0 2 2 * *".into(),
            late_data_schedule: "0 30 3 * * *".into(),
            late_data_periods: 3,
            request_timeout_seconds: 120,
            max_attempts: 6,
            retry_base_seconds: 60,
            retry_max_seconds: 3600,
            lease_seconds: 600,
            poll_seconds: 15,
        }
    }
}

/// A password or token: `Debug` and `hub print-config` show `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How `hub serve` speaks to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tls { cert_file: PathBuf, key_file: PathBuf },
    PlainHttp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hub-data"),
            listen: SocketAddr::from(([0, 0, 0, 0], 8090)),
            database_url: None,
            postgres_bin_dir: None,
            db_pool_size: 16,
            token_ttl_minutes: 60,
            enrollment_token_ttl_minutes: 24 * 60,
            sync_max_body_bytes: 4 * 1024 * 1024,
            log_format: LogFormat::Text,
            tls_cert_file: None,
            tls_key_file: None,
            insecure_http: false,
            dhis2: Dhis2Config::default(),
        }
    }
}

/// A PostgreSQL connection URL. It may hold a password, so `Debug` and
/// [`DatabaseUrl::redacted`] hide it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    /// The URL with any password replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return url.clone();
        };
        match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Flags and environment variables that override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Data directory [default: ./hub-data]
    #[arg(long, env = "HUB_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Config file [default: DATA_DIR/hub.toml if present]
    #[arg(long, env = "HUB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL [default: an embedded cluster in DATA_DIR/pg]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "HUB_POSTGRES_BIN_DIR", global = true, hide = true)]
    pub postgres_bin_dir: Option<PathBuf>,
    #[arg(long, env = "HUB_DB_POOL_SIZE", global = true, hide = true)]
    pub db_pool_size: Option<u32>,
    #[arg(long, env = "HUB_TOKEN_TTL_MINUTES", global = true, hide = true)]
    pub token_ttl_minutes: Option<u32>,
    #[arg(long, env = "HUB_ENROLLMENT_TOKEN_TTL_MINUTES", global = true, hide = true)]
    pub enrollment_token_ttl_minutes: Option<u32>,
    #[arg(long, env = "HUB_SYNC_MAX_BODY_BYTES", global = true, hide = true)]
    pub sync_max_body_bytes: Option<usize>,
    #[arg(long, env = "HUB_LOG_FORMAT", global = true, hide = true)]
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain to serve HTTPS with (needs --tls-key)
    #[arg(long = "tls-cert", env = "HUB_TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long = "tls-key", env = "HUB_TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (only behind a TLS-terminating proxy)
    #[arg(long, env = "HUB_INSECURE_HTTP", global = true)]
    pub insecure_http: bool,
    /// DHIS2 base URL, e.g. https://dhis2.example.org
    #[arg(long, env = "HUB_DHIS2_URL", global = true)]
    pub dhis2_url: Option<String>,
    /// DHIS2 user (basic authentication, with HUB_DHIS2_PASSWORD)
    #[arg(long, env = "HUB_DHIS2_USERNAME", global = true)]
    pub dhis2_username: Option<String>,
    #[arg(long, env = "HUB_DHIS2_PASSWORD", global = true, hide = true, hide_env_values = true)]
    pub dhis2_password: Option<String>,
    /// DHIS2 personal access token (instead of a user and password)
    #[arg(long, env = "HUB_DHIS2_TOKEN", global = true, hide_env_values = true)]
    pub dhis2_token: Option<String>,
    /// PEM file of the authorities trusted for an https DHIS2 [default: the system's]
    #[arg(long, env = "HUB_DHIS2_CA_FILE", global = true)]
    pub dhis2_ca_file: Option<PathBuf>,
    /// DHIS2 mapping file, TOML or JSON [default: the shipped mapping]
    #[arg(long, env = "HUB_DHIS2_MAPPING", global = true)]
    pub dhis2_mapping: Option<PathBuf>,
    /// When the previous month is exported (cron with seconds, UTC), or `off`
    #[arg(long, env = "HUB_DHIS2_SCHEDULE", global = true)]
    pub dhis2_schedule: Option<String>,
    /// When exported periods are checked for late data and re-exported (cron with seconds, UTC), or `off`
    #[arg(long, env = "HUB_DHIS2_LATE_DATA_SCHEDULE", global = true)]
    pub dhis2_late_data_schedule: Option<String>,
    /// How many finished periods the late-data check looks back (0: off)
    #[arg(long, env = "HUB_DHIS2_LATE_DATA_PERIODS", global = true)]
    pub dhis2_late_data_periods: Option<u32>,
    #[arg(long, env = "HUB_DHIS2_REQUEST_TIMEOUT_SECONDS", global = true, hide = true)]
    pub dhis2_request_timeout_seconds: Option<u64>,
    #[arg(long, env = "HUB_DHIS2_MAX_ATTEMPTS", global = true, hide = true)]
    pub dhis2_max_attempts: Option<u32>,
    #[arg(long, env = "HUB_DHIS2_RETRY_BASE_SECONDS", global = true, hide = true)]
    pub dhis2_retry_base_seconds: Option<u64>,
    #[arg(long, env = "HUB_DHIS2_RETRY_MAX_SECONDS", global = true, hide = true)]
    pub dhis2_retry_max_seconds: Option<u64>,
    #[arg(long, env = "HUB_DHIS2_LEASE_SECONDS", global = true, hide = true)]
    pub dhis2_lease_seconds: Option<u64>,
    #[arg(long, env = "HUB_DHIS2_POLL_SECONDS", global = true, hide = true)]
    pub dhis2_poll_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "refusing to serve plain HTTP on {listen}, which is not a loopback address: the traffic would not be \
         encrypted. Serve HTTPS with a PEM certificate and key (--tls-cert FILE --tls-key FILE, \
         HUB_TLS_CERT_FILE/HUB_TLS_KEY_FILE, or tls_cert_file/tls_key_file in hub.toml), or, behind a \
         TLS-terminating proxy, pass --insecure-http (HUB_INSECURE_HTTP=true)"
    )]
    PlainHttpNotLoopback { listen: SocketAddr },
}

impl Config {
    /// Builds the effective configuration; `listen` comes from `serve --listen`.
    pub fn load(o: &Overrides, listen: Option<SocketAddr>) -> Result<Self, ConfigError> {
        let data_dir = o.data_dir.clone().unwrap_or_else(|| Self::default().data_dir);
        let file = o.config.clone().or_else(|| Some(data_dir.join(CONFIG_FILE)).filter(|p| p.exists()));
        let mut config = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        if o.data_dir.is_some() || o.config.is_none() {
            config.data_dir = data_dir;
        }
        if let Some(url) = &o.database_url {
            config.database_url = Some(DatabaseUrl(url.clone()));
        }
        if let Some(dir) = &o.postgres_bin_dir {
            config.postgres_bin_dir = Some(dir.clone());
        }
        if let Some(file) = &o.tls_cert_file {
            config.tls_cert_file = Some(file.clone());
        }
        if let Some(file) = &o.tls_key_file {
            config.tls_key_file = Some(file.clone());
        }
        // A flag can only say yes: its absence keeps the file's setting.
        if o.insecure_http {
            config.insecure_http = true;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &o.$f { config.$f = v.clone(); } )* };
        }
        set!(db_pool_size, token_ttl_minutes, enrollment_token_ttl_minutes, sync_max_body_bytes, log_format);
        config.dhis2.apply(o);
        if let Some(addr) = listen {
            config.listen = addr;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.token_ttl_minutes == 0 {
            return Err(ConfigError::Invalid { field: "token_ttl_minutes", reason: "must be positive".into() });
        }
        if self.enrollment_token_ttl_minutes == 0 {
            return Err(ConfigError::Invalid {
                field: "enrollment_token_ttl_minutes",
                reason: "must be positive".into(),
            });
        }
        if self.sync_max_body_bytes < 1024 {
            return Err(ConfigError::Invalid { field: "sync_max_body_bytes", reason: "at least 1024".into() });
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                field: if self.tls_cert_file.is_some() { "tls_key_file" } else { "tls_cert_file" },
                reason: "a TLS certificate and its key go together: set both tls_cert_file and tls_key_file".into(),
            });
        }
        if self.db_pool_size == 0 {
            return Err(ConfigError::Invalid { field: "db_pool_size", reason: "must be positive".into() });
        }
        self.dhis2.validate()?;
        if let Some(url) = &self.database_url
            && !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                field: "database_url",
                reason: "a postgres:// or postgresql:// URL".into(),
            });
        }
        Ok(())
    }

    /// How `hub serve` must speak: HTTPS when a certificate is configured,
    /// else plain HTTP if the listen address is loopback or the operator set
    /// `insecure_http`; otherwise an error saying how to enable TLS.
    pub fn transport(&self) -> Result<Transport, ConfigError> {
        if let (Some(cert_file), Some(key_file)) = (&self.tls_cert_file, &self.tls_key_file) {
            return Ok(Transport::Tls { cert_file: cert_file.clone(), key_file: key_file.clone() });
        }
        if self.listen.ip().is_loopback() || self.insecure_http {
            Ok(Transport::PlainHttp)
        } else {
            Err(ConfigError::PlainHttpNotLoopback { listen: self.listen })
        }
    }

    /// The configuration as TOML (for `hub print-config`), password redacted.
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = self.database_url.as_ref().map(|u| DatabaseUrl(u.redacted()));
        let hidden = |s: &Option<Secret>| s.as_ref().map(|_| Secret("***".into()));
        shown.dhis2.password = hidden(&self.dhis2.password);
        shown.dhis2.token = hidden(&self.dhis2.token);
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

impl Dhis2Config {
    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.dhis2_url {
            self.url = Some(v.clone());
        }
        if let Some(v) = &o.dhis2_username {
            self.username = Some(v.clone());
        }
        if let Some(v) = &o.dhis2_password {
            self.password = Some(Secret(v.clone()));
        }
        if let Some(v) = &o.dhis2_token {
            self.token = Some(Secret(v.clone()));
        }
        if let Some(v) = &o.dhis2_ca_file {
            self.ca_file = Some(v.clone());
        }
        if let Some(v) = &o.dhis2_mapping {
            self.mapping_file = Some(v.clone());
        }
        if let Some(v) = &o.dhis2_schedule {
            self.schedule = v.clone();
        }
        if let Some(v) = &o.dhis2_late_data_schedule {
            self.late_data_schedule = v.clone();
        }
        if let Some(v) = o.dhis2_late_data_periods {
            self.late_data_periods = v;
        }
        let set = |target: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *target = v;
            }
        };
        set(&mut self.request_timeout_seconds, o.dhis2_request_timeout_seconds);
        set(&mut self.retry_base_seconds, o.dhis2_retry_base_seconds);
        set(&mut self.retry_max_seconds, o.dhis2_retry_max_seconds);
        set(&mut self.lease_seconds, o.dhis2_lease_seconds);
        set(&mut self.poll_seconds, o.dhis2_poll_seconds);
        if let Some(v) = o.dhis2_max_attempts {
            self.max_attempts = v;
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.into() });
        if let Some(url) = &self.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return invalid("dhis2.url", "an http:// or https:// URL, e.g. https://dhis2.example.org");
        }
        if self.token.is_some() && (self.username.is_some() || self.password.is_some()) {
            return invalid("dhis2.token", "either a personal access token or a username and password, not both");
        }
        if self.username.is_some() != self.password.is_some() {
            return invalid("dhis2.password", "a DHIS2 username and password go together: set both");
        }
        if self.max_attempts == 0 {
            return invalid("dhis2.max_attempts", "must be positive");
        }
        if self.late_data_periods > MAX_LATE_DATA_PERIODS {
            return invalid(
                "dhis2.late_data_periods",
                "at most 36 periods (each costs a count of every site's encounters)",
            );
        }
        if self.request_timeout_seconds == 0 || self.lease_seconds <= self.request_timeout_seconds {
            return invalid("dhis2.lease_seconds", "must be longer than dhis2.request_timeout_seconds (positive)");
        }
        if self.poll_seconds == 0 || self.retry_base_seconds == 0 || self.retry_max_seconds < self.retry_base_seconds {
            return invalid("dhis2.poll_seconds", "poll and retry delays must be positive, retry_max >= retry_base");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CONFIG_FILE), "token_ttl_minutes = 30\ndb_pool_size = 4\n").expect("write");
        let o = Overrides {
            data_dir: Some(dir.path().to_owned()),
            token_ttl_minutes: Some(45),
            database_url: Some("postgres://hub:s3cret@db.example:5432/hub".into()),
            ..Overrides::default()
        };
        let c = Config::load(&o, Some("127.0.0.1:9000".parse().expect("addr"))).expect("load");
        assert_eq!(c.token_ttl_minutes, 45);
        assert_eq!(c.db_pool_size, 4);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, dir.path());
        let toml = c.to_toml();
        assert!(!toml.contains("s3cret"), "{toml}");
        assert!(toml.contains("postgres://hub:***@db.example:5432/hub"), "{toml}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn defaults() {
        let c = Config::load(&Overrides::default(), None).expect("load");
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8090)));
        assert_eq!(c.database_url, None);
        let back: Config = toml::from_str(&c.to_toml()).expect("round trip");
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "listen_port = 1\n").expect("write");
        let o = Overrides { config: Some(path), ..Overrides::default() };
        assert!(matches!(Config::load(&o, None), Err(ConfigError::Parse { .. })));
        let o = Overrides { database_url: Some("mysql://x".into()), ..Overrides::default() };
        assert!(matches!(Config::load(&o, None), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn plain_http_off_loopback_needs_the_operator_to_insist() {
        let addr = |s: &str| Some(s.parse::<SocketAddr>().expect("addr"));
        let load = |o: &Overrides, listen| Config::load(o, listen).expect("load");
        let plain = Overrides::default();
        assert_eq!(load(&plain, addr("127.0.0.1:0")).transport().expect("loopback"), Transport::PlainHttp);
        assert_eq!(load(&plain, addr("[::1]:0")).transport().expect("loopback"), Transport::PlainHttp);
        for listen in ["0.0.0.0:8090", "10.1.2.3:8090", "[::]:8090"] {
            let refused = load(&plain, addr(listen)).transport();
            assert!(matches!(refused, Err(ConfigError::PlainHttpNotLoopback { .. })), "{listen}: {refused:?}");
            let message = refused.expect_err("refused").to_string();
            assert!(message.contains("--tls-cert") && message.contains("--insecure-http"), "{message}");
        }
        // The default listen address is every interface: refused too.
        assert!(load(&plain, None).transport().is_err());
        let insist = Overrides { insecure_http: true, ..Overrides::default() };
        assert_eq!(load(&insist, addr("0.0.0.0:8090")).transport().expect("flag"), Transport::PlainHttp);

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hub.toml");
        std::fs::write(&file, "insecure_http = true\n").expect("write");
        let from_file = Overrides { config: Some(file), ..Overrides::default() };
        assert_eq!(load(&from_file, addr("0.0.0.0:8090")).transport().expect("file"), Transport::PlainHttp);

        let tls = Overrides {
            tls_cert_file: Some("cert.pem".into()),
            tls_key_file: Some("key.pem".into()),
            ..Overrides::default()
        };
        assert_eq!(
            load(&tls, None).transport().expect("tls"),
            Transport::Tls { cert_file: "cert.pem".into(), key_file: "key.pem".into() }
        );
        let half = Overrides { tls_cert_file: Some("cert.pem".into()), ..Overrides::default() };
        assert!(matches!(Config::load(&half, None), Err(ConfigError::Invalid { field: "tls_key_file", .. })));
    }

    #[test]
    fn dhis2_settings_from_the_environment_names_and_their_checks() {
        let o = Overrides {
            dhis2_url: Some("https://dhis2.example.org".into()),
            dhis2_username: Some("santerurale".into()),
            dhis2_password: Some("pa55word".into()),
            ..Overrides::default()
        };
        let c = Config::load(&o, None).expect("load");
        assert_eq!(c.dhis2.url.as_deref(), Some("https://dhis2.example.org"));
        assert_eq!(c.dhis2.password.as_ref().map(Secret::expose), Some("pa55word"));
        assert_eq!(c.dhis2.schedule, "0 0 2 2 * *");
        let shown = c.to_toml();
        assert!(!shown.contains("pa55word") && !format!("{c:?}").contains("pa55word"), "{shown}");

        let both = Overrides { dhis2_token: Some("d2pat_x".into()), ..o.clone() };
        assert!(matches!(Config::load(&both, None), Err(ConfigError::Invalid { field: "dhis2.token", .. })));
        let half = Overrides { dhis2_password: None, ..o.clone() };
        assert!(matches!(Config::load(&half, None), Err(ConfigError::Invalid { field: "dhis2.password", .. })));
        let bad_url = Overrides { dhis2_url: Some("dhis2.example.org".into()), ..o };
        assert!(matches!(Config::load(&bad_url, None), Err(ConfigError::Invalid { field: "dhis2.url", .. })));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            "[dhis2]\nurl = \"http://127.0.0.1:8080\"\ntoken = \"d2pat_abc\"\nschedule = \"off\"\nlate_data_periods = 6\n",
        )
        .expect("write");
        let c = Config::load(&Overrides { config: Some(file.clone()), ..Overrides::default() }, None).expect("file");
        assert_eq!(c.dhis2.token.as_ref().map(Secret::expose), Some("d2pat_abc"));
        assert_eq!(c.dhis2.schedule, "off");
        assert_eq!((c.dhis2.late_data_schedule.as_str(), c.dhis2.late_data_periods), ("0 30 3 * * *", 6));
        // The environment (or a flag) wins over the file.
        let env = Overrides {
            config: Some(file),
            dhis2_late_data_schedule: Some("off".into()),
            dhis2_late_data_periods: Some(1),
            ..Overrides::default()
        };
        let c = Config::load(&env, None).expect("overrides");
        assert_eq!((c.dhis2.late_data_schedule.as_str(), c.dhis2.late_data_periods), ("off", 1));
        let too_far = Overrides { dhis2_late_data_periods: Some(37), ..env };
        assert!(matches!(
            Config::load(&too_far, None),
            Err(ConfigError::Invalid { field: "dhis2.late_data_periods", .. })
        ));
        assert!(!c.to_toml().contains("d2pat_abc"));
    }

    #[test]
    fn redaction() {
        let r = |s: &str| DatabaseUrl(s.into()).redacted();
        assert_eq!(r("postgres://u:p@h/db"), "postgres://u:***@h/db");
        assert_eq!(r("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(r("postgres://h/db?x=a@b"), "postgres://h/db?x=a@b");
        assert_eq!(r("postgres://u:p:q@h"), "postgres://u:***@h");
    }
}
