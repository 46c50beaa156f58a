//! Santé Rurale hub: the central server the clinics' edge boxes sync with.
//!
//! PostgreSQL holds everything ([`db`]): an existing server named by
//! `DATABASE_URL`, or by default a cluster the hub runs itself in its data
//! directory ([`pg`]). Hub admins sign in ([`auth`]) and manage sites
//! ([`sites`]) and their devices ([`devices`]: enrollment tokens,
//! enrollment, revocation) through the JSON API ([`api`]); enrolled edge
//! devices push their changes with signed requests ([`sync`]); `/health`
//! and `/metrics` serve operations.
//!
//! [`router`] builds the whole HTTP application from an [`AppState`] without
//! binding anything; [`serve`] (plain HTTP) and [`serve_tls`] (HTTPS, see
//! [`tls`]) run it on a listener the caller bound, so tests bind port 0 and
//! know the server is ready as soon as the listener exists.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conflicts;
pub mod db;
pub mod devices;
pub mod dhis2;
pub mod jobs;
pub mod metrics;
pub mod patients;
pub mod pg;
pub mod sites;
pub mod sync;
pub mod tls;
pub mod ui;
pub mod users;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::metrics::Metrics;

/// Largest request body accepted by the admin API. Sync routes set their own.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything a request handler may need; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Pool,
    pub tokens: Arc<TokenKeys>,
    pub metrics: Arc<Metrics>,
    /// Wakes this hub's DHIS2 export worker when a job is created
    /// ([`jobs::dhis2_export`]).
    pub export_wake: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// The state for `config` on an opened, migrated database; loads (or on
    /// first start creates) the token-signing keys in the data directory.
    pub fn new(config: Config, db: Pool) -> Result<Self, auth::AuthError> {
        let tokens = TokenKeys::load_or_create(&config.data_dir, config.token_ttl_minutes)?;
        Ok(Self {
            config: Arc::new(config),
            db,
            tokens: Arc::new(tokens),
            metrics: Arc::new(Metrics::new()),
            export_wake: Arc::new(tokio::sync::Notify::new()),
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
        .merge(sync::router(state.config.sync_max_body_bytes))
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

/// Like [`serve`], over TLS with `tls` (see [`tls::load_server_config`]).
pub async fn serve_tls(
    listener: TcpListener,
    state: AppState,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tls::serve(listener, router(state), tls, shutdown).await
}

async fn health(State(state): State<AppState>) -> Response {
    match db::ping(&state.db).await {
        Ok(()) => Json(json!({ "status": "ok", "database": "ok" })).into_response(),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "health check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "error", "database": "unavailable" })))
                .into_response()
        }
    }
}

pub use santerurale_server::error_chain;
