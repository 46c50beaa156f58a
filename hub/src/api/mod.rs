//! The JSON API under `/api/v1`. Each resource module owns its routes, DTOs
//! and queries; this module merges them. Every route but login needs a
//! bearer token from `POST /api/v1/auth/login`.

pub mod error;

use axum::Router;

use crate::AppState;

/// Every `/api/v1` route.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(crate::auth::router())
        .merge(crate::sites::router())
}
