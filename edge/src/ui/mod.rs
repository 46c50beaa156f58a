//! The clinic web UI: server-rendered HTML for the clinic LAN, French by
//! default with an English switch, light enough for an old phone on a slow
//! network (system fonts, one small stylesheet, no script, nothing fetched
//! from the internet: the stylesheet and icon are compiled into the binary).
//!
//! # Accounts and sessions
//! While no account exists every page leads to `/setup`, which creates the
//! first administrator once. Signing in creates a session: a random token in
//! the `sr_session` cookie (HttpOnly, SameSite=Strict, Max-Age = the session
//! lifetime), of which the database keeps only the SHA-256. An expired or
//! unknown session is treated as none; signing out deletes it.
//!
//! # CSRF
//! Every POST form carries a hidden `csrf_token`. For a signed-in user it must
//! equal the session's own token; for the anonymous forms (`/login`,
//! `/setup`) it must equal the `sr_csrf` cookie (double submit). A mismatch is
//! a 403 page and nothing is changed. Comparisons are constant-time.
//!
//! # Privacy
//! Pages are sent `Cache-Control: no-store` (clinic devices are shared) and
//! logs name patients by id only, never by name or phone.

mod admin;
mod encounters;
mod forms;
pub mod i18n;
mod messages;
mod patients;
mod session;

use std::sync::OnceLock;

use askama::Template;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use santerurale_server::web;

use crate::AppState;
use crate::auth::CurrentUser;
use crate::store::Role;
use i18n::{Lang, Texts as _};

pub(crate) use santerurale_server::web::see_other;

pub use session::{CSRF_COOKIE, LANG_COOKIE, SESSION_COOKIE};

const APP_CSS: &str = include_str!("../../assets/app.css");
const ICON_SVG: &str = include_str!("../../assets/icon.svg");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(patients::search))
        .route("/setup", get(session::setup_form).post(session::setup))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/lang/{lang}", get(session::switch_lang))
        .route("/patients", get(|| async { Redirect::to("/") }).post(patients::register))
        .route("/patients/new", get(patients::new_form))
        .route("/patients/{id}", get(patients::chart))
        .route("/patients/{id}/edit", get(patients::edit_form).post(patients::edit))
        .route("/patients/{id}/encounters/new", get(encounters::new_form))
        .route("/patients/{id}/encounters", post(encounters::record))
        .route("/hub/patients/{id}/fetch", post(patients::fetch_from_hub))
        .route("/sync", get(admin::sync).post(admin::sync_now))
        .route("/users", get(admin::users).post(admin::create_user))
        .route("/assets/{file}", get(asset))
        .fallback(not_found)
}

/// Any other path: an HTML "page not found" in the visitor's language.
async fn not_found(anon: session::Anon) -> Response {
    anon.page.fail(Fail::NotFound).into_response()
}

/// What every page knows about the request: language, clinic, who is signed
/// in and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Page {
    pub lang: Lang,
    pub clinic: String,
    pub user: Option<CurrentUser>,
    pub csrf: String,
    /// Which navigation link is the current page.
    pub nav: &'static str,
    /// A `Set-Cookie` value to send with the page (a new anonymous CSRF token).
    set_cookie: Option<String>,
}

impl Page {
    fn new(state: &AppState, lang: Lang) -> Self {
        Self {
            lang,
            clinic: state.config.clinic_name.clone(),
            user: None,
            csrf: String::new(),
            nav: "",
            set_cookie: None,
        }
    }

    #[must_use]
    pub fn t<'a>(&self, key: &'a str) -> &'a str {
        self.lang.t(key)
    }

    #[must_use]
    pub fn username(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.username.as_str())
    }

    #[must_use]
    pub fn role_label(&self) -> &'static str {
        self.user.as_ref().map_or("", |u| self.lang.role(u.role))
    }

    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role == Role::Admin)
    }

    /// May record consultations.
    #[must_use]
    pub fn is_clinical(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.role.is_clinical())
    }

    /// The stylesheet's address, versioned by its content so it can be cached for a year.
    #[must_use]
    pub fn css_url(&self) -> &'static str {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| format!("/assets/app.css?v={}", web::asset_version(APP_CSS)))
    }

    pub(crate) fn fail(&self, fail: Fail) -> UiError {
        UiError { page: Box::new(self.clone()), fail }
    }

    /// A failure that is not the user's: logged with its causes, shown without them.
    pub(crate) fn internal(&self, e: &dyn std::error::Error) -> UiError {
        tracing::error!(error = %crate::error_chain(e), "web UI: internal error");
        self.fail(Fail::Internal)
    }

    pub(crate) fn require(&self, allowed: impl Fn(Role) -> bool) -> Result<(), UiError> {
        if self.user.as_ref().is_some_and(|u| allowed(u.role)) { Ok(()) } else { Err(self.fail(Fail::Forbidden)) }
    }
}

/// Why a request ends on an error page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    BadRequest,
    Csrf,
    Forbidden,
    NotFound,
    Internal,
}

impl Fail {
    const fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Csrf | Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    const fn keys(self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest => ("bad_request_title", "bad_request_text"),
            Self::Csrf => ("csrf_title", "csrf_text"),
            Self::Forbidden => ("forbidden_title", "forbidden_text"),
            Self::NotFound => ("not_found_title", "not_found_text"),
            Self::Internal => ("internal_title", "internal_text"),
        }
    }
}

/// An error page, in the language and with the header of the page it replaces.
#[derive(Debug)]
pub(crate) struct UiError {
    page: Box<Page>,
    fail: Fail,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTpl<'a> {
    page: &'a Page,
    title: &'a str,
    text: &'a str,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (title, text) = self.fail.keys();
        let tpl = ErrorTpl { page: &self.page, title: self.page.t(title), text: self.page.t(text) };
        render(self.fail.status(), &self.page, &tpl)
    }
}

/// Renders `tpl` as an HTML response with the headers every page gets.
pub(crate) fn render(status: StatusCode, page: &Page, tpl: &impl Template) -> Response {
    let html = match tpl.render() {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(error = %e, "web UI: template rendering failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "Erreur interne / Internal error").into_response();
        }
    };
    web::html_page(status, html, page.set_cookie.as_slice())
}

/// Files compiled into the binary. Their URLs change with their content
/// (see [`Page::css_url`]), so browsers may keep them for a year.
async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.css" => web::static_asset(APP_CSS, "text/css; charset=utf-8"),
        "icon.svg" => web::static_asset(ICON_SVG, "image/svg+xml"),
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
