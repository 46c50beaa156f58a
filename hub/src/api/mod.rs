//! The JSON API under `/api/v1`, described in `openapi.json` (served at
//! `/api/v1/openapi.json`). Each resource module owns its routes, DTOs
//! and queries; this module merges them. Every route but login needs a
//! bearer token from `POST /api/v1/auth/login`, except device enrollment
//! (`POST /api/v1/devices/enroll`, authenticated by its one-time token). The
//! sync routes are in [`crate::sync`]: signed by the device, no bearer token.

pub mod error;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;

use crate::AppState;

/// The OpenAPI 3 description of every route, served without a token.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every `/api/v1` route.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(|| async { ([(CONTENT_TYPE, "application/json")], OPENAPI) }))
        .merge(crate::auth::router())
        .merge(crate::sites::router())
        .merge(crate::devices::router())
        .merge(crate::patients::router())
        .merge(crate::conflicts::router())
        .merge(crate::dhis2::api::router())
}
