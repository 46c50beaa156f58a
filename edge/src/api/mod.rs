//! The JSON API under `/api/v1` (documented in `openapi.json`, served at
//! `/api/v1/openapi.json`). Every route but login needs a bearer token from
//! `POST /api/v1/auth/login`; roles are checked per route.

mod error;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use santerurale_shared::{EncounterDraft, PatientDraft, PatientId, PatientPatch};
use serde::Deserialize;
use serde_json::json;

pub use error::{ApiError, ApiJson, IdPath};

use crate::AppState;
use crate::auth::{CurrentUser, check_password_policy, hash_password, verify_password};
use crate::store::Role;

/// The OpenAPI 3 document, kept next to the code it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router() -> Router<AppState> {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/auth/login", post(login))
        .route("/patients", get(search_patients).post(register_patient))
        .route("/patients/{id}", get(get_patient).patch(update_patient))
        .route("/patients/{id}/encounters", post(add_encounter))
        .route("/hub/patients", get(hub_lookup))
        .route("/hub/patients/{id}/fetch", post(hub_fetch))
        .route("/sync/status", get(sync_status))
        .route("/sync/run", post(sync_run))
        .route("/users", get(list_users).post(create_user))
        .fallback(|| async { ApiError::not_found("no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        });
    Router::new().nest("/api/v1", v1)
}

/// The caller, from `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct ApiUser(pub CurrentUser);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("sign in first: send Authorization: Bearer <token> from POST /api/v1/auth/login")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be: Bearer <token>"))?;
        state
            .tokens
            .verify(token.trim())
            .map(Self)
            .map_err(|_| ApiError::unauthorized("the token is invalid or has expired; sign in again"))
    }
}

impl ApiUser {
    fn require(&self, allowed: impl Fn(Role) -> bool, what: &str) -> Result<(), ApiError> {
        if allowed(self.0.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("your role ({}) may not {what}", self.0.role.as_str())))
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

async fn login(State(state): State<AppState>, ApiJson(req): ApiJson<LoginRequest>) -> Result<Response, ApiError> {
    let user = state.store.find_user(req.username.trim().to_owned()).await?;
    let bad = || ApiError::unauthorized("wrong username or password");
    let Some(user) = user else {
        // Spend the same time as a real check so usernames cannot be probed by timing.
        let _ = tokio::task::spawn_blocking(move || verify_password(crate::auth::dummy_hash(), &req.password)).await;
        return Err(bad());
    };
    let hash = user.password_hash.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &req.password)).await.unwrap_or(false);
    if !ok {
        tracing::info!(user = %user.id, "API sign-in refused");
        return Err(bad());
    }
    let user = CurrentUser::from(user);
    let (token, exp) = state.tokens.issue(&user).map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "token": token, "token_type": "Bearer", "expires_at": exp, "role": user.role })).into_response())
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
}

async fn search_patients(
    State(state): State<AppState>,
    _user: ApiUser,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if query.q.chars().count() > 200 {
        return Err(ApiError::bad_request("query_too_long", "the search text is longer than 200 characters"));
    }
    let patients = state.store.search(query.q, query.limit.unwrap_or(crate::store::SEARCH_LIMIT)).await?;
    Ok(Json(json!({ "patients": patients })))
}

#[derive(Debug, Deserialize)]
struct RegisterQuery {
    #[serde(default)]
    allow_duplicate: bool,
}

async fn register_patient(
    State(state): State<AppState>,
    user: ApiUser,
    query: Result<Query<RegisterQuery>, axum::extract::rejection::QueryRejection>,
    ApiJson(draft): ApiJson<PatientDraft>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let patient = state.store.register_patient(draft, query.allow_duplicate).await?;
    tracing::info!(patient = %patient.id, user = %user.0.id, "patient registered");
    Ok((StatusCode::CREATED, Json(patient)).into_response())
}

async fn get_patient(
    State(state): State<AppState>,
    _user: ApiUser,
    IdPath(id): IdPath<PatientId>,
) -> Result<Response, ApiError> {
    let patient = state.store.get_patient(id).await?.ok_or_else(|| ApiError::not_found("no patient with this id"))?;
    Ok(Json(patient).into_response())
}

async fn update_patient(
    State(state): State<AppState>,
    user: ApiUser,
    IdPath(id): IdPath<PatientId>,
    ApiJson(patch): ApiJson<PatientPatch>,
) -> Result<Response, ApiError> {
    let patient = state.store.update_patient(id, patch).await?;
    tracing::info!(patient = %id, user = %user.0.id, "patient updated");
    Ok(Json(patient).into_response())
}

async fn add_encounter(
    State(state): State<AppState>,
    user: ApiUser,
    IdPath(id): IdPath<PatientId>,
    ApiJson(draft): ApiJson<EncounterDraft>,
) -> Result<Response, ApiError> {
    user.require(Role::is_clinical, "record consultations")?;
    let encounter = state.store.add_encounter(id, draft, user.0.username.clone()).await?;
    tracing::info!(patient = %id, encounter = %encounter.id, user = %user.0.id, "encounter recorded");
    Ok((StatusCode::CREATED, Json(encounter)).into_response())
}

/// `GET /api/v1/hub/patients?q=`: patients registered at other clinics, by
/// exact phone or patient id (see [`crate::sync::lookup`]).
async fn hub_lookup(
    State(state): State<AppState>,
    user: ApiUser,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    user.require(Role::is_clinical, "search the hub")?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if query.q.chars().count() > 200 {
        return Err(ApiError::bad_request("query_too_long", "the search text is longer than 200 characters"));
    }
    let found = crate::sync::lookup::lookup(&state.store, &state.config.data_dir, &query.q)
        .await
        .map_err(|e| lookup_error(&e))?;
    Ok(Json(json!({ "patients": found })).into_response())
}

/// `POST /api/v1/hub/patients/{id}/fetch`: brings a patient's record from the
/// hub to this clinic; answers the local patient, with encounters.
async fn hub_fetch(
    State(state): State<AppState>,
    user: ApiUser,
    IdPath(id): IdPath<PatientId>,
) -> Result<Response, ApiError> {
    user.require(Role::is_clinical, "fetch records from the hub")?;
    let fetched =
        crate::sync::lookup::fetch(&state.store, &state.config.data_dir, id).await.map_err(|e| lookup_error(&e))?;
    tracing::info!(patient = %id, user = %user.0.id, new = fetched.new, "patient fetched from the hub (API)");
    Ok(Json(fetched.patient).into_response())
}

fn lookup_error(e: &crate::sync::lookup::LookupError) -> ApiError {
    use crate::sync::lookup::LookupError as E;
    match e {
        E::InvalidQuery => ApiError::bad_request("invalid_query", e.to_string()),
        E::NotEnrolled => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        _ if e.is_unknown_patient() => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_patient", "the hub has no patient with this id")
        }
        E::Key(_) | E::HubUrl(_) | E::Store(_) => ApiError::internal(e),
        _ => {
            let (status, code) = if e.is_offline() {
                (StatusCode::SERVICE_UNAVAILABLE, "hub_unreachable")
            } else {
                (StatusCode::BAD_GATEWAY, "hub_failed")
            };
            let hub_message = match e {
                E::Hub(crate::sync::HubError::Refused { message, .. }) => message.clone(),
                other => crate::error_chain(other),
            };
            ApiError {
                status,
                code,
                message: format!("the hub could not answer: {}", crate::error_chain(e)),
                extra: Some(("hub", json!({ "code": e.code(), "message": hub_message }))),
            }
        }
    }
}

/// `GET /api/v1/sync/status`: [`crate::SyncStatus`] with
/// [`crate::sync::SyncDetails`] beside it, in one flat object.
async fn sync_status(State(state): State<AppState>, _user: ApiUser) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct Body {
        #[serde(flatten)]
        status: crate::SyncStatus,
        #[serde(flatten)]
        details: crate::sync::SyncDetails,
    }
    let body = Body { status: crate::sync_status(&state).await?, details: crate::sync::details(&state).await? };
    Ok(Json(body).into_response())
}

/// `POST /api/v1/sync/run`: one push then pull now, waiting for a run in progress.
async fn sync_run(State(state): State<AppState>, user: ApiUser) -> Result<Response, ApiError> {
    user.require(|r| r == Role::Admin, "run a sync")?;
    tracing::info!(user = %user.0.id, "sync run requested (API)");
    match crate::sync::run_once(&state).await {
        Ok(report) => Ok(Json(json!({
            "pushed": report.pushed,
            "batches": report.batches,
            "applied": report.applied,
            "duplicates": report.duplicates,
            "splits": report.splits,
            "acked_through": acked_through(&state).await?,
            "pulled": report.pulled,
            "pulled_new": report.pulled_new,
            "pull_pages": report.pull_pages,
        }))
        .into_response()),
        Err(e) => Err(sync_error(&e)),
    }
}

/// The highest outbox seq the hub has acknowledged, if any.
async fn acked_through(state: &AppState) -> Result<Option<u64>, ApiError> {
    let seq = state
        .store
        .read(|c| {
            let seq: Option<i64> =
                c.query_row("SELECT max(seq) FROM outbox WHERE acked_at IS NOT NULL", [], |r| r.get(0))?;
            Ok(seq.and_then(|s| u64::try_from(s).ok()))
        })
        .await?;
    Ok(seq)
}

/// The hub's own words when it refused the request, else ours.
fn hub_message(e: &crate::sync::SyncError) -> String {
    match e {
        crate::sync::SyncError::Hub(crate::sync::HubError::Refused { message, .. }) => message.clone(),
        other => other.display_message(),
    }
}

fn sync_error(e: &crate::sync::SyncError) -> ApiError {
    use crate::sync::SyncError as E;
    match e {
        E::NotEnrolled => ApiError::new(StatusCode::CONFLICT, "not_enrolled", e.to_string()),
        E::Hub(_) | E::ChangeTooLarge { .. } | E::AckBelowBatch { .. } | E::ChangeRefused { .. } => ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "sync_failed",
            message: format!("the sync with the hub failed: {}", e.display_message()),
            extra: Some((
                "hub",
                json!({
                    "code": e.code(),
                    "message": hub_message(e),
                    "retryable": e.is_retryable(),
                    "seq": match e { E::ChangeRefused { seq, .. } | E::ChangeTooLarge { seq } => Some(*seq), _ => None },
                }),
            )),
        },
        // The device key, the database: this box's problem, not the hub's.
        E::Key(_) | E::HubUrl(_) | E::Store(_) | E::Outbox(_) => ApiError::internal(e),
    }
}

async fn list_users(State(state): State<AppState>, user: ApiUser) -> Result<Response, ApiError> {
    user.require(|r| r == Role::Admin, "manage accounts")?;
    let users: Vec<_> = state.store.list_users().await?.into_iter().map(CurrentUser::from).collect();
    Ok(Json(json!({ "users": users })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    role: String,
}

async fn create_user(
    State(state): State<AppState>,
    user: ApiUser,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    user.require(|r| r == Role::Admin, "manage accounts")?;
    let username = crate::validate_username(&new.username)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_username", m))?;
    let role = Role::parse(new.role.trim()).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_role", "role must be admin, clinician or registrar")
    })?;
    check_password_policy(&new.password).map_err(|code| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!(
                "the password must have {} to {} characters",
                crate::auth::MIN_PASSWORD_CHARS,
                crate::auth::MAX_PASSWORD_CHARS
            ),
        )
    })?;
    let password = new.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let created = state.store.create_user(username, role, hash).await?;
    tracing::info!(user = %created.id, by = %user.0.id, "account created");
    Ok((StatusCode::CREATED, Json(CurrentUser::from(created))).into_response())
}
