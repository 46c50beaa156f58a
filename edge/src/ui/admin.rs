//! Staff accounts (administrators only) and the sync status page.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::forms::{Fields, FormState, RawForm};
use super::i18n::Lang;
use super::session::{Signed, hash_blocking};
use super::{Page, UiError, render, see_other};
use crate::AppState;
use crate::auth::check_password_policy;
use crate::store::{Role, StoreError};

#[derive(Debug)]
struct UserView {
    username: String,
    role: &'static str,
}

#[derive(Debug)]
struct RoleOption {
    value: &'static str,
    label: &'static str,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersTpl {
    page: Page,
    users: Vec<UserView>,
    roles: Vec<RoleOption>,
    form: FormState,
    created: bool,
}

async fn users_page(
    state: &AppState,
    page: &Page,
    form: FormState,
    status: StatusCode,
    created: bool,
) -> Result<Response, UiError> {
    let users = state.store.list_users().await.map_err(|e| page.internal(&e))?;
    let users = users.into_iter().map(|u| UserView { role: page.lang.role(u.role), username: u.username }).collect();
    let roles = [Role::Registrar, Role::Clinician, Role::Admin]
        .into_iter()
        .map(|r| RoleOption { value: r.as_str(), label: page.lang.role(r) })
        .collect();
    Ok(render(status, page, &UsersTpl { page: page.clone(), users, roles, form, created }))
}

/// `GET /users`; `?created=1` after an account was just created.
pub async fn users(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, UiError> {
    page.nav = "users";
    page.require(|r| r == Role::Admin)?;
    let created = query.is_ok_and(|Query(q)| q.iter().any(|(k, _)| k == "created"));
    let form = FormState::with_values([("role", Role::Registrar.as_str().to_owned())]);
    users_page(&state, &page, form, StatusCode::OK, created).await
}

pub async fn create_user(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let mut page = signed.page.clone();
    page.nav = "users";
    let form = Fields::read(raw, &page)?;
    signed.check_csrf(&form)?;
    page.require(|r| r == Role::Admin)?;
    let mut shown = form.redisplay();
    let error = |shown: &mut FormState, field: &'static str, code: &'static str| {
        shown.push_error(page.lang, &santerurale_shared::FieldError { field, code, message: code.to_owned() });
    };
    let username = crate::validate_username(form.get("username")).ok();
    if username.is_none() {
        error(&mut shown, "username", "invalid_username");
    }
    let role = Role::parse(form.get("role").trim());
    if role.is_none() {
        error(&mut shown, "role", "invalid_choice");
    }
    let password = form.get("password").to_owned();
    if let Err(code) = check_password_policy(&password) {
        error(&mut shown, "password", code);
    }
    let (Some(username), Some(role), false) = (username, role, shown.has_errors()) else {
        return users_page(&state, &page, shown, StatusCode::UNPROCESSABLE_ENTITY, false).await;
    };
    let hash = hash_blocking(password, &page).await?;
    match state.store.create_user(username, role, hash).await {
        Ok(created) => {
            tracing::info!(user = %created.id, by = %signed.user.id, "account created (web)");
            Ok(see_other("/users?created=1", &[]))
        }
        Err(StoreError::UsernameTaken) => {
            error(&mut shown, "username", "username_taken");
            users_page(&state, &page, shown, StatusCode::CONFLICT, false).await
        }
        Err(e) => Err(page.internal(&e)),
    }
}

#[derive(Template)]
#[template(path = "sync.html")]
struct SyncTpl {
    page: Page,
    enrolled: bool,
    outbox_depth: u64,
    device_id: String,
    site_id: String,
    hub_url: String,
    last_success: String,
    last_error: String,
}

fn when(lang: Lang, at: Option<&str>) -> String {
    at.map(|t| lang.timestamp(t)).unwrap_or_default()
}

pub async fn sync(State(state): State<AppState>, Signed { mut page, .. }: Signed) -> Result<Response, UiError> {
    page.nav = "sync";
    let s = crate::sync_status(&state).await.map_err(|e| page.internal(&e))?;
    let last_error = match (&s.last_error, &s.last_error_at) {
        (Some(e), Some(at)) => format!("{} — {e}", page.lang.timestamp(at)),
        (Some(e), None) => e.clone(),
        (None, _) => String::new(),
    };
    let tpl = SyncTpl {
        enrolled: s.enrolled,
        outbox_depth: s.outbox_depth,
        device_id: s.device_id.to_string(),
        site_id: s.site_id.map(|id| id.to_string()).unwrap_or_default(),
        hub_url: s.hub_url.clone().unwrap_or_default(),
        last_success: when(page.lang, s.last_success_at.as_deref()),
        last_error,
        page: page.clone(),
    };
    Ok(render(StatusCode::OK, &page, &tpl))
}
