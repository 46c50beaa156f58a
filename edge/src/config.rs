//! The edge's configuration: one typed struct, defaults in [`Config::default`].
//!
//! Sources, later ones winning: the defaults, the TOML file (`--config FILE`,
//! or `edge.toml` in the data directory when it exists), then environment
//! variables `EDGE_*` and command-line flags (see [`Overrides`]). `edge
//! print-config` shows the result. No secret lives here: the token-signing key
//! is a file in the data directory, created on first start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the optional config file inside the data directory.
pub const CONFIG_FILE: &str = "edge.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database, keys and backups live.
    pub data_dir: PathBuf,
    /// Address the web UI and API listen on (all interfaces: the clinic LAN).
    pub listen: SocketAddr,
    /// Name shown in the UI header.
    pub clinic_name: String,
    /// Calling code (no `+`) assumed for phone numbers typed without one.
    pub default_country: String,
    /// How long a browser session lasts without signing in again.
    pub session_ttl_minutes: u32,
    /// How long an API bearer token is valid.
    pub token_ttl_minutes: u32,
    /// Mark cookies `Secure` (only when the UI is served over HTTPS).
    pub secure_cookies: bool,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// Seconds between background syncs with the hub while serving (after a
    /// failure the scheduler backs off instead); 0 turns them off.
    pub sync_interval_seconds: u64,
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
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            clinic_name: "Centre de santé".to_owned(),
            default_country: "223".to_owned(),
            session_ttl_minutes: 12 * 60,
            token_ttl_minutes: 60,
            secure_cookies: false,
            log_format: LogFormat::Text,
            sync_interval_seconds: 300,
        }
    }
}

/// Flags and environment variables that override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Data directory [default: ./data]
    #[arg(long, env = "EDGE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Config file [default: DATA_DIR/edge.toml if present]
    #[arg(long, env = "EDGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, env = "EDGE_CLINIC_NAME", global = true, hide = true)]
    pub clinic_name: Option<String>,
    #[arg(long, env = "EDGE_DEFAULT_COUNTRY", global = true, hide = true)]
    pub default_country: Option<String>,
    #[arg(long, env = "EDGE_SESSION_TTL_MINUTES", global = true, hide = true)]
    pub session_ttl_minutes: Option<u32>,
    #[arg(long, env = "EDGE_TOKEN_TTL_MINUTES", global = true, hide = true)]
    pub token_ttl_minutes: Option<u32>,
    #[arg(long, env = "EDGE_SECURE_COOKIES", global = true, hide = true)]
    pub secure_cookies: Option<bool>,
    #[arg(long, env = "EDGE_LOG_FORMAT", global = true, hide = true)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "EDGE_SYNC_INTERVAL_SECONDS", global = true, hide = true)]
    pub sync_interval_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
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
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &o.$f { config.$f = v.clone(); } )* };
        }
        set!(
            clinic_name,
            default_country,
            session_ttl_minutes,
            token_ttl_minutes,
            secure_cookies,
            log_format,
            sync_interval_seconds
        );
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
        if self.default_country.is_empty()
            || self.default_country.len() > 3
            || !self.default_country.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ConfigError::Invalid {
                field: "default_country",
                reason: "a calling code of 1 to 3 digits, without +".into(),
            });
        }
        if self.session_ttl_minutes == 0 || self.token_ttl_minutes == 0 {
            return Err(ConfigError::Invalid { field: "session_ttl_minutes", reason: "must be positive".into() });
        }
        Ok(())
    }

    /// The configuration as TOML (for `edge print-config`).
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CONFIG_FILE), "clinic_name = \"CSCom de Kati\"\nsession_ttl_minutes = 30\n")
            .expect("write");
        let o =
            Overrides { data_dir: Some(dir.path().to_owned()), session_ttl_minutes: Some(45), ..Overrides::default() };
        let c = Config::load(&o, Some("127.0.0.1:9000".parse().expect("addr"))).expect("load");
        assert_eq!(c.clinic_name, "CSCom de Kati");
        assert_eq!(c.session_ttl_minutes, 45);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.data_dir, dir.path());
        assert_eq!(c.default_country, "223");
        assert_eq!(c.sync_interval_seconds, 300);
        let back: Config = toml::from_str(&c.to_toml()).expect("round trip");
        assert_eq!(back, c);
    }

    #[test]
    fn the_sync_interval_comes_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CONFIG_FILE), "sync_interval_seconds = 60\n").expect("write");
        let o = Overrides { data_dir: Some(dir.path().to_owned()), ..Overrides::default() };
        assert_eq!(Config::load(&o, None).expect("load").sync_interval_seconds, 60);
        let o = Overrides { sync_interval_seconds: Some(0), ..o };
        assert_eq!(Config::load(&o, None).expect("load").sync_interval_seconds, 0, "0 turns it off");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "listen_port = 1\n").expect("write");
        let o = Overrides { config: Some(path), ..Overrides::default() };
        assert!(matches!(Config::load(&o, None), Err(ConfigError::Parse { .. })));
        let o = Overrides { default_country: Some("+223".into()), ..Overrides::default() };
        assert!(matches!(Config::load(&o, None), Err(ConfigError::Invalid { .. })));
    }
}
