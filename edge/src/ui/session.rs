//! Cookies, sessions, CSRF tokens, first-run setup, sign-in and sign-out, and
//! the language switch. See the parent module for the rules.

use askama::Template;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::forms::{Fields, FormState, RawForm};
use super::i18n::Lang;
use super::{Fail, Page, UiError, render, see_other};
use crate::AppState;
use crate::auth::{CurrentUser, check_password_policy, hash_password, hash_token, random_token, verify_password};
use santerurale_server::web::{self, DoubleSubmit, ct_eq, session_hash, set_cookie};

pub const SESSION_COOKIE: &str = "sr_session";
pub const CSRF_COOKIE: &str = "sr_csrf";
pub const LANG_COOKIE: &str = "sr_lang";

fn lang_of(headers: &HeaderMap) -> Lang {
    Lang::from_cookie(headers, LANG_COOKIE)
}

/// A signed-in user's request. Without a live session the request is sent
/// to `/login` (or to `/setup` while no account exists).
#[derive(Debug)]
pub struct Signed {
    pub page: Page,
    pub user: CurrentUser,
    session_hash: String,
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let mut page = Page::new(state, lang_of(&parts.headers));
        if let Some(session_hash) = session_hash(&parts.headers, SESSION_COOKIE) {
            match state.store.get_session(session_hash.clone()).await {
                Ok(Some(session)) => {
                    let user = CurrentUser::from(session.user);
                    page.user = Some(user.clone());
                    page.csrf = session.csrf_token;
                    return Ok(Self { page, user, session_hash });
                }
                Ok(None) => {}
                Err(e) => return Err(page.internal(&e).into_response()),
            }
        }
        Err(match state.store.user_count().await {
            Ok(0) => see_other("/setup", &[]),
            Ok(_) => see_other("/login", &[]),
            Err(e) => page.internal(&e).into_response(),
        })
    }
}

impl Signed {
    /// Refuses the form unless it carries this session's CSRF token.
    pub fn check_csrf(&self, form: &Fields) -> Result<(), UiError> {
        if !self.page.csrf.is_empty() && ct_eq(form.get("csrf_token"), &self.page.csrf) {
            Ok(())
        } else {
            tracing::warn!(user = %self.user.id, "form refused: bad CSRF token");
            Err(self.page.fail(Fail::Csrf))
        }
    }
}

/// A request to an anonymous form (sign-in, setup), with its double-submit
/// CSRF token: the `sr_csrf` cookie, created when missing.
#[derive(Debug)]
pub struct Anon {
    pub page: Page,
    csrf: DoubleSubmit,
    /// The hash of a session cookie the browser still sends, replaced on sign-in.
    old_session: Option<String>,
}

impl FromRequestParts<AppState> for Anon {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let mut page = Page::new(state, lang_of(&parts.headers));
        let max_age = i64::from(state.config.session_ttl_minutes) * 60;
        let csrf = DoubleSubmit::from_headers(&parts.headers, CSRF_COOKIE, max_age, state.config.secure_cookies);
        page.csrf.clone_from(&csrf.token);
        page.set_cookie.clone_from(&csrf.set_cookie);
        let old_session = session_hash(&parts.headers, SESSION_COOKIE);
        Ok(Self { page, csrf, old_session })
    }
}

impl Anon {
    fn check_csrf(&self, form: &Fields) -> Result<(), UiError> {
        if self.csrf.accepts(form.get("csrf_token")) {
            Ok(())
        } else {
            tracing::warn!("anonymous form refused: bad CSRF token");
            Err(self.page.fail(Fail::Csrf))
        }
    }
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupTpl {
    page: Page,
    form: FormState,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTpl {
    page: Page,
    form: FormState,
    failed: bool,
}

async fn has_accounts(state: &AppState, page: &Page) -> Result<bool, UiError> {
    state.store.user_count().await.map(|n| n > 0).map_err(|e| page.internal(&e))
}

pub async fn setup_form(State(state): State<AppState>, Anon { page, .. }: Anon) -> Result<Response, UiError> {
    if has_accounts(&state, &page).await? {
        return Ok(see_other("/login", &[]));
    }
    Ok(render(StatusCode::OK, &page, &SetupTpl { page: page.clone(), form: FormState::default() }))
}

pub async fn setup(State(state): State<AppState>, anon: Anon, raw: RawForm) -> Result<Response, UiError> {
    let form = Fields::read(raw, &anon.page)?;
    anon.check_csrf(&form)?;
    let page = anon.page;
    if has_accounts(&state, &page).await? {
        return Ok(see_other("/login", &[]));
    }
    let mut shown = form.redisplay();
    let username = crate::validate_username(form.get("username")).ok();
    if username.is_none() {
        push(&mut shown, page.lang, "username", "invalid_username");
    }
    let password = form.get("password").to_owned();
    if let Err(code) = check_password_policy(&password) {
        push(&mut shown, page.lang, "password", code);
    } else if password != form.get("password_confirm") {
        push(&mut shown, page.lang, "password_confirm", "password_mismatch");
    }
    let (Some(username), false) = (username, shown.has_errors()) else {
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page, &SetupTpl { page: page.clone(), form: shown }));
    };
    let hash = hash_blocking(password, &page).await?;
    match state.store.create_first_admin(username, hash).await {
        Ok(Some(user)) => tracing::info!(user = %user.id, "first administrator created"),
        // Someone else finished setup first: their account stands.
        Ok(None) => {}
        Err(e) => return Err(page.internal(&e)),
    }
    Ok(see_other("/login", &[]))
}

fn push(form: &mut FormState, lang: Lang, field: &'static str, code: &'static str) {
    form.push_error(lang, &santerurale_shared::FieldError { field, code, message: code.to_owned() });
}

pub(super) async fn hash_blocking(password: String, page: &Page) -> Result<String, UiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| page.internal(&e))?
        .map_err(|e| page.internal(&e))
}

pub async fn login_form(State(state): State<AppState>, Anon { page, .. }: Anon) -> Result<Response, UiError> {
    if !has_accounts(&state, &page).await? {
        return Ok(see_other("/setup", &[]));
    }
    Ok(render(StatusCode::OK, &page, &LoginTpl { page: page.clone(), form: FormState::default(), failed: false }))
}

pub async fn login(State(state): State<AppState>, anon: Anon, raw: RawForm) -> Result<Response, UiError> {
    let form = Fields::read(raw, &anon.page)?;
    anon.check_csrf(&form)?;
    let page = &anon.page;
    if !has_accounts(&state, page).await? {
        return Ok(see_other("/setup", &[]));
    }
    let user = state.store.find_user(form.get("username").trim().to_owned()).await.map_err(|e| page.internal(&e))?;
    let password = form.get("password").to_owned();
    // Unknown usernames cost a hash check too, so they cannot be told apart by timing.
    let hash = user.as_ref().map_or_else(|| crate::auth::dummy_hash().to_owned(), |u| u.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password)).await.unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!("web sign-in refused");
        let tpl = LoginTpl { page: page.clone(), form: form.redisplay(), failed: true };
        return Ok(render(StatusCode::UNAUTHORIZED, page, &tpl));
    };
    if let Some(old) = anon.old_session {
        // Signing in again replaces the browser's previous session.
        state.store.delete_session(old).await.map_err(|e| page.internal(&e))?;
    }
    let token = random_token();
    let ttl = i64::from(state.config.session_ttl_minutes) * 60;
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(ttl);
    state
        .store
        .create_session(hash_token(&token), user.id, random_token(), expires_at)
        .await
        .map_err(|e| page.internal(&e))?;
    tracing::info!(user = %user.id, "web sign-in");
    Ok(see_other("/", &[set_cookie(SESSION_COOKIE, &token, ttl, "Strict", state.config.secure_cookies)]))
}

pub async fn logout(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let form = Fields::read(raw, &signed.page)?;
    signed.check_csrf(&form)?;
    state.store.delete_session(signed.session_hash.clone()).await.map_err(|e| signed.page.internal(&e))?;
    tracing::info!(user = %signed.user.id, "web sign-out");
    Ok(see_other("/login", &[set_cookie(SESSION_COOKIE, "", 0, "Strict", state.config.secure_cookies)]))
}

/// `GET /lang/{fr|en}`: remembers the choice for a year and goes back to the
/// page it was made on (when the `Referer` is a page of this site).
pub async fn switch_lang(State(state): State<AppState>, Path(code): Path<String>, headers: HeaderMap) -> Response {
    web::switch_lang(&code, &headers, LANG_COOKIE, state.config.secure_cookies)
        .unwrap_or_else(|| Page::new(&state, lang_of(&headers)).fail(Fail::NotFound).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_comes_from_its_cookie() {
        let mut h = HeaderMap::new();
        h.append(axum::http::header::COOKIE, "a=1; sr_lang=en".parse().expect("header"));
        assert_eq!(lang_of(&h), Lang::En);
        assert_eq!(lang_of(&HeaderMap::new()), Lang::Fr);
    }
}
