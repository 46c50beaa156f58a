//! Santé Rurale clinic edge node.
//!
//! One binary per clinic box: patient records in SQLite ([`store`]), a web UI
//! for the clinic LAN in French and English ([`ui`]), a JSON API ([`api`]),
//! health and Prometheus metrics. It works with no internet at all; every
//! change is queued in an outbox for the hub.
//!
//! [`router`] builds the whole HTTP application from an [`AppState`] without
//! binding anything; [`serve`] runs it on a listener the caller bound, so tests
//! bind port 0 and know the server is ready as soon as the listener exists.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod store;
pub mod sync;
pub mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use santerurale_shared::{DeviceId, SiteId};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, StoreOptions};

/// Largest request body accepted (a patient or an encounter is a few KB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything a request handler may need; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub tokens: Arc<TokenKeys>,
    pub metrics: Arc<Metrics>,
    /// One sync run at a time, shared by manual and scheduled runs.
    pub sync: Arc<sync::SyncControl>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
}

impl AppState {
    /// Opens the data directory named in `config`.
    pub fn open(config: Config) -> Result<Self, StartError> {
        let store = Store::open(&config.data_dir, StoreOptions { default_country: config.default_country.clone() })?;
        let tokens = TokenKeys::load_or_create(&config.data_dir, config.token_ttl_minutes)?;
        Ok(Self {
            config: Arc::new(config),
            store,
            tokens: Arc::new(tokens),
            metrics: Arc::new(Metrics::new()),
            sync: Arc::default(),
        })
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .merge(api::router())
        .merge(ui::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then
/// finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "database": "ok" })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "error", "database": "unavailable" })))
                .into_response()
        }
    }
}

/// What the sync page and `GET /api/v1/sync/status` show.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub enrolled: bool,
    pub device_id: DeviceId,
    pub site_id: Option<SiteId>,
    pub site_name: Option<String>,
    pub site_code: Option<String>,
    pub hub_url: Option<String>,
    pub outbox_depth: u64,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    /// [`sync::SyncError::code`] of the last error.
    pub last_error_code: Option<String>,
    pub last_error_at: Option<String>,
}

pub async fn sync_status(state: &AppState) -> Result<SyncStatus, StoreError> {
    let device_id = state.store.device_id();
    state
        .store
        .read(move |c| {
            use sync::meta_keys as k;
            let meta = |key: &str| store::get_meta(c, key);
            let site_id: Option<SiteId> = meta(k::SITE_ID)?.and_then(|s| s.parse().ok());
            let depth: i64 = c.query_row("SELECT count(*) FROM outbox WHERE acked_at IS NULL", [], |r| r.get(0))?;
            Ok(SyncStatus {
                enrolled: site_id.is_some(),
                device_id,
                site_id,
                site_name: meta(k::SITE_NAME)?,
                site_code: meta(k::SITE_CODE)?,
                hub_url: meta(k::HUB_URL)?,
                outbox_depth: u64::try_from(depth).unwrap_or(0),
                last_success_at: meta(k::LAST_SUCCESS_AT)?,
                last_error: meta(k::LAST_ERROR)?,
                last_error_code: meta(k::LAST_ERROR_CODE)?,
                last_error_at: meta(k::LAST_ERROR_AT)?,
            })
        })
        .await
}

pub use santerurale_server::error_chain;

/// Usernames: 2 to 40 of letters, digits, `.`, `_`, `-`; returned trimmed.
pub fn validate_username(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    let ok_chars = name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if (2..=40).contains(&name.chars().count()) && ok_chars {
        Ok(name.to_owned())
    } else {
        Err("a username has 2 to 40 letters, digits, '.', '_' or '-'")
    }
}
