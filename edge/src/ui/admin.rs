//! Staff accounts (administrators only) and the sync status page.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::forms::{Fields, FormState, RawForm};
use super::i18n::{Lang, Texts as _};
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
    site: String,
    site_id: String,
    hub_url: String,
    last_success: String,
    last_error: Option<ErrorView>,
    /// What the last run moved, failed runs included.
    last_run: Option<LastRunView>,
    /// When the scheduler runs next; empty when it does not.
    next_sync: String,
    /// The outcome of the sync just run from this page.
    result: Option<RunView>,
}

/// A failure in plain words, with when it happened, whether it clears by
/// itself, and the technical detail.
#[derive(Debug)]
struct ErrorView {
    at: String,
    text: &'static str,
    /// "Will retry automatically at 14:05" or "Action needed:".
    class: String,
    retryable: bool,
    detail: String,
}

#[derive(Debug)]
struct LastRunView {
    at: String,
    sent: u64,
    received: u64,
}

#[derive(Debug)]
struct RunView {
    ok: bool,
    text: String,
}

/// The message key that words a sync failure for people, by
/// [`crate::sync::SyncError::code`] (the hub's own codes among them).
fn explain(code: &str) -> &'static str {
    use santerurale_shared::sync::wire::codes;
    match code {
        codes::REVOKED_DEVICE => "sync_err_revoked",
        codes::UNKNOWN_DEVICE => "sync_err_unknown_device",
        codes::BAD_SIGNATURE | codes::MISSING_HEADER | codes::MALFORMED_HEADER | "device_key" => "sync_err_device_key",
        codes::STALE_TIMESTAMP | codes::FUTURE_TIMESTAMP => "sync_err_clock",
        codes::UNSUPPORTED_PROTOCOL => "sync_err_protocol",
        codes::BODY_TOO_LARGE | "change_too_large" => "sync_err_too_large",
        codes::CHANGE_REFUSED | codes::INVALID_CHANGE => "sync_err_change_refused",
        "hub_unreachable" => "sync_err_unreachable",
        "not_enrolled" => "not_enrolled_note",
        "hub_status" | "hub_bad_response" | "ack_below_batch" | "internal" | codes::REPLAYED_REQUEST => {
            "sync_err_hub_problem"
        }
        _ => "sync_err_other",
    }
}

/// The sync page, with `result` when a sync was just run from it.
async fn sync_page(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    result: Option<RunView>,
) -> Result<Response, UiError> {
    let s = crate::sync_status(state).await.map_err(|e| page.internal(&e))?;
    let d = crate::sync::details(state).await.map_err(|e| page.internal(&e))?;
    let next_sync = when(page.lang, d.next_attempt_at.as_deref());
    let last_error = s.last_error.as_ref().map(|detail| {
        // Without a recorded code, the message starts with the hub's.
        let code = s.last_error_code.as_deref().unwrap_or_else(|| detail.split(':').next().unwrap_or_default());
        // Recorded before the class was: assume it clears by itself.
        let retryable = d.last_error_retryable.unwrap_or(true);
        let class = match (retryable, next_sync.is_empty()) {
            (true, false) => format!("{} {next_sync}.", page.t("sync_retry_at")),
            (true, true) => page.t("sync_retry_later").to_owned(),
            (false, _) => page.t("sync_action_needed").to_owned(),
        };
        ErrorView {
            at: when(page.lang, s.last_error_at.as_deref()),
            text: page.lang.t(explain(code)),
            class,
            retryable,
            detail: detail.clone(),
        }
    });
    let last_run = d.last_run.map(|r| LastRunView {
        at: when(page.lang, d.last_run_at.as_deref()),
        sent: r.pushed,
        received: r.pulled,
    });
    let site = match (&s.site_name, &s.site_code) {
        (Some(name), Some(code)) => format!("{name} ({code})"),
        (Some(one), None) | (None, Some(one)) => one.clone(),
        (None, None) => String::new(),
    };
    let tpl = SyncTpl {
        enrolled: s.enrolled,
        outbox_depth: s.outbox_depth,
        device_id: s.device_id.to_string(),
        site,
        site_id: s.site_id.map(|id| id.to_string()).unwrap_or_default(),
        hub_url: s.hub_url.clone().unwrap_or_default(),
        last_success: when(page.lang, s.last_success_at.as_deref()),
        last_error,
        last_run,
        next_sync,
        result,
        page: page.clone(),
    };
    Ok(render(status, page, &tpl))
}

fn when(lang: Lang, at: Option<&str>) -> String {
    at.map(|t| lang.timestamp(t)).unwrap_or_default()
}

/// `GET /sync`: every signed-in user sees the status; admins get the button.
pub async fn sync(State(state): State<AppState>, Signed { mut page, .. }: Signed) -> Result<Response, UiError> {
    page.nav = "sync";
    sync_page(&state, &page, StatusCode::OK, None).await
}

/// `POST /sync` (admins): one sync now, then the page with its outcome.
pub async fn sync_now(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let mut page = signed.page.clone();
    page.nav = "sync";
    let form = Fields::read(raw, &page)?;
    signed.check_csrf(&form)?;
    page.require(|r| r == Role::Admin)?;
    tracing::info!(user = %signed.user.id, "sync run requested (web)");
    let (status, result) = match crate::sync::run_once(&state).await {
        Ok(report) => {
            let text =
                format!("{} {}, {} {}", page.t("sync_done"), report.pushed, report.pulled, page.t("changes_received"));
            (StatusCode::OK, RunView { ok: true, text })
        }
        Err(e) => {
            let status = match e {
                crate::sync::SyncError::NotEnrolled => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            };
            let text = format!("{} {}", page.t("sync_failed"), page.t(explain(e.code())));
            (status, RunView { ok: false, text })
        }
    };
    sync_page(&state, &page, status, Some(result)).await
}

#[cfg(test)]
mod tests {
    use super::super::messages::lookup;
    use super::*;

    #[test]
    fn every_failure_is_worded_in_both_languages() {
        let codes = [
            "revoked_device",
            "unknown_device",
            "bad_signature",
            "stale_timestamp",
            "unsupported_protocol",
            "change_too_large",
            "hub_unreachable",
            "not_enrolled",
            "hub_status",
            "device_key",
            "change_refused",
            "something_new",
        ];
        for code in codes {
            assert!(lookup(explain(code)).is_some(), "{code}");
        }
        assert_eq!(explain("revoked_device"), "sync_err_revoked");
        assert!(lookup("sync_done").is_some() && lookup("sync_failed").is_some());
    }
}
