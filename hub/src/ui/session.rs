//! Sessions (stored in `ui_sessions`), the extractors that find them, CSRF
//! checks, sign-in and sign-out, and the language switch. See the parent
//! module for the rules.

use askama::Template;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::Pool;
use santerurale_server::tokens::{hash_token, random_token};
use santerurale_server::web::{self, DoubleSubmit, Lang, ct_eq, see_other, session_hash, set_cookie};
use santerurale_shared::UserId;

use super::forms::{Fields, FormState, RawForm};
use super::{Fail, Page, UiError, https, render};
use crate::AppState;
use crate::auth::{CurrentUser, Role, dummy_hash, verify_password};
use crate::db::DbError;

pub const SESSION_COOKIE: &str = "sr_session";
pub const CSRF_COOKIE: &str = "sr_csrf";
pub const LANG_COOKIE: &str = "sr_lang";
/// How long a session lasts: a working day.
pub const SESSION_TTL_MINUTES: i64 = 10 * 60;

/// A live session: who, and the CSRF token of their forms.
struct Session {
    user: CurrentUser,
    csrf: String,
}

/// Creates a session under `token_hash` and deletes expired ones (this is
/// the only place sessions are made, so they cannot pile up).
async fn create_session(pool: &Pool, token_hash: &str, user: UserId, csrf: &str) -> Result<(), DbError> {
    let client = pool.get().await?;
    client.execute("DELETE FROM ui_sessions WHERE expires_at <= now()", &[]).await?;
    client
        .execute(
            "INSERT INTO ui_sessions (token_hash, user_id, csrf_token, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(mins => $4))",
            &[&token_hash, user.as_uuid(), &csrf, &i32::try_from(SESSION_TTL_MINUTES).unwrap_or(i32::MAX)],
        )
        .await?;
    Ok(())
}

async fn find_session(pool: &Pool, token_hash: &str) -> Result<Option<Session>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT s.user_id, u.username, u.role, s.csrf_token FROM ui_sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at > now()",
            &[&token_hash],
        )
        .await?;
    row.map(|r| {
        let role: String = r.try_get("role")?;
        let role = Role::parse(&role).ok_or_else(|| DbError::Invalid(format!("unknown role {role:?} in users")))?;
        let user = CurrentUser { id: UserId::from_uuid(r.try_get("user_id")?), username: r.try_get("username")?, role };
        Ok(Session { user, csrf: r.try_get("csrf_token")? })
    })
    .transpose()
}

async fn delete_session(pool: &Pool, token_hash: &str) -> Result<(), DbError> {
    pool.get().await?.execute("DELETE FROM ui_sessions WHERE token_hash = $1", &[&token_hash]).await?;
    Ok(())
}

fn lang_of(headers: &HeaderMap) -> Lang {
    Lang::from_cookie(headers, LANG_COOKIE)
}

/// A signed-in admin's request. Without a live session the request is sent
/// to `/login`.
#[derive(Debug)]
pub struct Signed {
    pub page: Page,
    pub user: CurrentUser,
    session_hash: String,
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let mut page = Page { lang: lang_of(&parts.headers), ..Page::default() };
        let Some(session_hash) = session_hash(&parts.headers, SESSION_COOKIE) else {
            return Err(see_other("/login", &[]));
        };
        match find_session(&state.db, &session_hash).await {
            Ok(Some(session)) => {
                page.username.clone_from(&session.user.username);
                page.csrf = session.csrf;
                Ok(Self { page, user: session.user, session_hash })
            }
            Ok(None) => Err(see_other("/login", &[])),
            Err(e) => Err(page.internal(&e).into_response()),
        }
    }
}

impl Signed {
    /// The fields of a form posted in this session: a 400 page when the body
    /// is not a form, a 403 unless it carries this session's CSRF token.
    pub fn form(&self, raw: RawForm) -> Result<Fields, UiError> {
        let form = Fields::read(raw, &self.page)?;
        csrf_verdict(ct_eq(form.get("csrf_token"), &self.page.csrf), &self.page)?;
        Ok(form)
    }
}

/// A 403 page unless the form's CSRF token matched; the refusal is logged
/// (without the token).
fn csrf_verdict(matched: bool, page: &Page) -> Result<(), UiError> {
    if !matched {
        tracing::warn!(signed_in = page.signed_in(), "admin form refused: bad CSRF token");
        return Err(page.fail(Fail::Csrf));
    }
    Ok(())
}

/// A request to the sign-in form, with its double-submit CSRF token (the
/// `sr_csrf` cookie, created when missing).
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
        let headers = &parts.headers;
        let csrf = DoubleSubmit::from_headers(headers, CSRF_COOKIE, SESSION_TTL_MINUTES * 60, https(&state.config));
        let page = Page {
            lang: lang_of(headers),
            csrf: csrf.token.clone(),
            cookies: csrf.set_cookie.iter().cloned().collect(),
            ..Page::default()
        };
        let old_session = session_hash(headers, SESSION_COOKIE);
        Ok(Self { page, csrf, old_session })
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTpl<'a> {
    page: &'a Page,
    form: FormState,
    failed: bool,
}

pub async fn login_form(Anon { page, .. }: Anon) -> Response {
    render(StatusCode::OK, &page, &LoginTpl { page: &page, form: FormState::default(), failed: false })
}

pub async fn login(State(state): State<AppState>, anon: Anon, raw: RawForm) -> Result<Response, UiError> {
    let page = &anon.page;
    let form = Fields::read(raw, page)?;
    csrf_verdict(anon.csrf.accepts(form.get("csrf_token")), page)?;
    let found =
        crate::users::find_credentials(&state.db, form.get("username").trim()).await.map_err(|e| page.internal(&e))?;
    // Unknown usernames cost a hash check too, so they cannot be told apart by timing.
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, dummy_hash().to_owned()),
    };
    let password = form.get("password").to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password)).await.unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!("admin web sign-in refused");
        let tpl = LoginTpl { page, form: form.redisplay(), failed: true };
        return Ok(render(StatusCode::UNAUTHORIZED, page, &tpl));
    };
    if let Some(old) = &anon.old_session {
        // Signing in again replaces the browser's previous session.
        delete_session(&state.db, old).await.map_err(|e| page.internal(&e))?;
    }
    let token = random_token();
    create_session(&state.db, &hash_token(&token), user.id, &random_token()).await.map_err(|e| page.internal(&e))?;
    tracing::info!(user = %user.id, "admin web sign-in");
    let cookie = set_cookie(SESSION_COOKIE, &token, SESSION_TTL_MINUTES * 60, "Strict", https(&state.config));
    Ok(see_other("/sites", &[cookie]))
}

pub async fn logout(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    signed.form(raw)?;
    delete_session(&state.db, &signed.session_hash).await.map_err(|e| signed.page.internal(&e))?;
    tracing::info!(user = %signed.user.id, "admin web sign-out");
    Ok(see_other("/login", &[set_cookie(SESSION_COOKIE, "", 0, "Strict", https(&state.config))]))
}

/// `GET /lang/{fr|en}`: remembers the choice for a year and goes back to the
/// page it was made on (when the `Referer` is a page of this site).
pub async fn switch_lang(State(state): State<AppState>, Path(code): Path<String>, headers: HeaderMap) -> Response {
    web::switch_lang(&code, &headers, LANG_COOKIE, https(&state.config))
        .unwrap_or_else(|| Page { lang: lang_of(&headers), ..Page::default() }.fail(Fail::NotFound).into_response())
}
