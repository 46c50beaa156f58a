//! The hub admin web UI: server-rendered HTML for the district's hub
//! administrators, French by default with an English switch, in the look of
//! the clinics' edge UI (the same stylesheet and icon, compiled into the
//! binary; no script, nothing fetched from the internet; usable 360 px wide).
//!
//! Pages: sign-in ([`session`]); sites with their sync status, site
//! creation, a site's DHIS2 organisation unit, its devices with revocation
//! and enrollment tokens ([`sites`]); conflicts and their resolution
//! ([`conflicts`]); DHIS2 exports, one export's payload and conflicts
//! explained, and the DHIS2 mapping ([`dhis2`]). Each page calls the same
//! functions as the JSON API (`crate::sites`, `crate::devices`,
//! `crate::conflicts`, `crate::jobs::dhis2_export`, `crate::dhis2`), so
//! validation and rules live once.
//!
//! # Accounts and sessions
//! Hub accounts are made with `hub user add`. Signing in checks the argon2
//! hash ([`crate::users`]) and creates a session: a random token in the
//! `sr_session` cookie (HttpOnly, SameSite=Strict, Max-Age = the session
//! lifetime) of which PostgreSQL keeps only the SHA-256 (`ui_sessions`). An
//! expired or unknown session is none: every page then leads to `/login`.
//! Signing out deletes the session.
//!
//! # CSRF
//! Every POST form carries a hidden `csrf_token`. Signed in, it must equal
//! the session's own token (stored with the session); on the sign-in form it
//! must equal the `sr_csrf` cookie (double submit). A mismatch is a 403 page
//! and nothing changes. Comparisons are constant-time.
//!
//! # Privacy
//! Conflict pages show patients' names to the signed-in admin, who needs them
//! to recognise the patient; pages are `Cache-Control: no-store`, and logs
//! name patients by id only.

mod conflicts;
mod dhis2;
mod forms;
mod messages;
mod session;
mod sites;

use std::sync::OnceLock;

use askama::Template;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use santerurale_server::web::{self, Lang};
use time::OffsetDateTime;

use crate::AppState;
use crate::config::Config;

pub use session::{CSRF_COOKIE, LANG_COOKIE, SESSION_COOKIE, SESSION_TTL_MINUTES};

/// The edge's stylesheet and icon, so both UIs look alike, then the hub's
/// own rules.
const APP_CSS: &str = concat!(include_str!("../../../edge/assets/app.css"), include_str!("../../assets/hub.css"));
const ICON_SVG: &str = include_str!("../../../edge/assets/icon.svg");

/// The UI's routes (everything outside `/api/v1`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/sites") }))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/lang/{lang}", get(session::switch_lang))
        .route("/sites", get(sites::list).post(sites::create))
        .route("/sites/{id}", get(sites::show).post(sites::update))
        .route("/sites/{id}/enrollment-tokens", post(sites::create_token))
        .route("/sites/{site}/devices/{id}/revoke", get(sites::revoke_confirm).post(sites::revoke))
        .route("/conflicts", get(conflicts::list))
        .route("/conflicts/{id}/resolve", post(conflicts::resolve))
        .route("/dhis2", get(dhis2::exports))
        .route("/dhis2/exports", post(dhis2::start_export))
        .route("/dhis2/exports/{id}", get(dhis2::export))
        .route("/dhis2/exports/{id}/rerun", post(dhis2::rerun))
        .route("/dhis2/late-data", get(dhis2::late_data_page::show).post(dhis2::late_data_page::send))
        .route("/dhis2/mapping", get(dhis2::mapping_page::show).post(dhis2::mapping_page::save))
        .route("/dhis2/mapping/reset", post(dhis2::mapping_page::reset))
        .route("/dhis2/mapping/resolve", post(dhis2::mapping_page::resolve_codes))
        .route("/assets/{file}", get(asset))
}

/// Whether browsers reach the hub over HTTPS: served with TLS, or plain HTTP
/// behind a TLS-terminating proxy (`insecure_http`). Cookies are then `Secure`.
fn https(config: &Config) -> bool {
    config.tls_cert_file.is_some() || config.insecure_http
}

/// What every page knows about the request: language, who is signed in and
/// the CSRF token its forms carry.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub lang: Lang,
    /// The signed-in admin's username; empty on the sign-in page.
    pub username: String,
    pub csrf: String,
    /// Which navigation link is the current page.
    pub nav: &'static str,
    /// `Set-Cookie` values to send with the page (a new anonymous CSRF token).
    cookies: Vec<String>,
}

impl Page {
    #[must_use]
    pub fn t<'a>(&self, key: &'a str) -> &'a str {
        messages::text(self.lang, key)
    }

    #[must_use]
    pub fn signed_in(&self) -> bool {
        !self.username.is_empty()
    }

    /// The stylesheet's address, versioned by its content so it can be cached for a year.
    #[must_use]
    pub fn css_url(&self) -> &'static str {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| format!("/assets/app.css?v={}", web::asset_version(APP_CSS)))
    }

    /// A timestamp as the pages show it: `2026-04-01 09:30 UTC`.
    #[must_use]
    pub fn when(&self, at: &OffsetDateTime) -> String {
        let at = at.to_offset(time::UtcOffset::UTC);
        format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute())
    }

    /// An optional timestamp, or "never".
    #[must_use]
    pub fn when_opt(&self, at: impl std::borrow::Borrow<Option<OffsetDateTime>>) -> String {
        at.borrow().as_ref().map_or_else(|| self.t("never").to_owned(), |at| self.when(at))
    }

    pub(crate) fn fail(&self, fail: Fail) -> UiError {
        UiError { page: Box::new(self.clone()), fail }
    }

    /// A failure that is not the user's: logged with its causes, shown without them.
    pub(crate) fn internal(&self, e: &dyn std::error::Error) -> UiError {
        tracing::error!(error = %crate::error_chain(e), "admin UI: internal error");
        self.fail(Fail::Internal)
    }
}

/// Why a request ends on an error page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    BadRequest,
    Csrf,
    NotFound,
    /// What the form acted on changed meanwhile (a conflict resolved by someone else).
    Gone,
    Internal,
}

impl Fail {
    /// The page's status, and the keys of its title and text.
    const fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest => (StatusCode::BAD_REQUEST, "bad_request_title", "bad_request_text"),
            Self::Csrf => (StatusCode::FORBIDDEN, "csrf_title", "csrf_text"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found_title", "not_found_text"),
            Self::Gone => (StatusCode::CONFLICT, "gone_title", "gone_text"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_title", "internal_text"),
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
        let (status, title, text) = self.fail.parts();
        render(status, &self.page, &ErrorTpl { page: &self.page, title: self.page.t(title), text: self.page.t(text) })
    }
}

/// Renders `tpl` as an HTML page with the headers every page gets.
pub(crate) fn render(status: StatusCode, page: &Page, tpl: &impl Template) -> Response {
    match tpl.render() {
        Ok(html) => web::html_page(status, html, &page.cookies),
        Err(e) => {
            tracing::error!(error = %e, "admin UI: template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Erreur interne / Internal error").into_response()
        }
    }
}

/// Files compiled into the binary.
async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.css" => web::static_asset(APP_CSS, "text/css; charset=utf-8"),
        "icon.svg" => web::static_asset(ICON_SVG, "image/svg+xml"),
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
