//! Web-UI plumbing the edge and hub pages share: reading and writing
//! cookies, comparing secrets, choosing the page to return to, the French or
//! English choice, and the headers every HTML page and bundled asset gets.
//!
//! # Cookies
//! Session and CSRF cookies are `HttpOnly` with `SameSite=Strict`, so no
//! script reads them and no other site's form or link sends them; their
//! values are [`crate::tokens::random_token`]s, and [`looks_like_token`]
//! refuses anything else before it reaches a database. The language cookie
//! is `SameSite=Lax` so that a link from elsewhere keeps the visitor's
//! language.
//!
//! # Pages
//! [`html_page`] sends `Cache-Control: no-store` (clinic and office computers
//! are shared, and pages may show patients), a Content-Security-Policy that
//! allows only this server's own stylesheet and images and no script at all,
//! and refuses framing.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

/// How long the language choice is remembered.
pub const YEAR_SECONDS: i64 = 365 * 24 * 3600;

/// The policy of every HTML page: nothing but our own stylesheet and images.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The value of cookie `name` in the request's `Cookie` headers.
#[must_use]
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// An `HttpOnly` `Set-Cookie` value. `max_age` 0 deletes the cookie.
#[must_use]
pub fn set_cookie(name: &str, value: &str, max_age: i64, same_site: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}")
}

/// The cookie remembering the language `code` for a year.
#[must_use]
pub fn lang_cookie(name: &str, code: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={code}; Path=/; Max-Age={YEAR_SECONDS}; SameSite=Lax{secure}")
}

/// Random tokens are 43 URL-safe base64 characters; anything else is not ours.
#[must_use]
pub fn looks_like_token(s: &str) -> bool {
    s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The hash (as sessions are stored) of the session token in cookie `name`,
/// when the cookie holds something shaped like one of our tokens.
#[must_use]
pub fn session_hash(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie(headers, name).filter(|t| looks_like_token(t)).map(crate::tokens::hash_token)
}

/// Equality whose time does not depend on where the inputs differ.
#[must_use]
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

/// The CSRF token of an anonymous form (sign-in, first-run setup), checked
/// by double submit: the form's hidden field must equal a cookie of the
/// same random value. Another site can make a browser post the form but can
/// neither read nor set that cookie (it is `HttpOnly`, `SameSite=Strict`).
#[derive(Debug, Clone)]
pub struct DoubleSubmit {
    /// What the form's hidden `csrf_token` field carries.
    pub token: String,
    /// The `Set-Cookie` value to send with the page when the browser had no token yet.
    pub set_cookie: Option<String>,
    had_cookie: bool,
}

impl DoubleSubmit {
    /// The token of cookie `name`, or a new one (to set for `max_age` seconds).
    #[must_use]
    pub fn from_headers(headers: &HeaderMap, name: &str, max_age: i64, secure: bool) -> Self {
        match cookie(headers, name).filter(|t| looks_like_token(t)) {
            Some(token) => Self { token: token.to_owned(), set_cookie: None, had_cookie: true },
            None => {
                let token = crate::tokens::random_token();
                let set_cookie = Some(set_cookie(name, &token, max_age, "Strict", secure));
                Self { token, set_cookie, had_cookie: false }
            }
        }
    }

    /// Whether a submitted form's token matches the cookie the request carried.
    #[must_use]
    pub fn accepts(&self, submitted: &str) -> bool {
        self.had_cookie && ct_eq(submitted, &self.token)
    }
}

/// The path and query of the `Referer` when it points at this host, else
/// `/`: where the language switch sends the visitor back to. Paths under
/// `/lang/` are refused so the switch never loops on itself.
#[must_use]
pub fn return_path(headers: &HeaderMap) -> String {
    let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let path = match referer.strip_prefix("http://").or_else(|| referer.strip_prefix("https://")) {
        Some(rest) => {
            let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
            if Some(authority) == host { path } else { "/" }
        }
        None => "/",
    };
    let path = path.split('#').next().unwrap_or("/");
    let safe = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.starts_with("/lang/")
        && path.bytes().all(|b| b.is_ascii_graphic());
    if safe { path.to_owned() } else { "/".to_owned() }
}

/// The two languages of the UIs. French is the default: the clinics' and
/// the health district's working language.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lang {
    #[default]
    Fr,
    En,
}

impl Lang {
    /// The `lang` attribute and cookie value.
    #[must_use]
    pub const fn code(self) -> &'static str {
        self.pick("fr", "en")
    }

    /// A language code as the cookie or URL gives it.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Fr, Self::En].into_iter().find(|l| l.code() == s.trim())
    }

    /// The language the `name` cookie asks for, else the default.
    #[must_use]
    pub fn from_cookie(headers: &HeaderMap, name: &str) -> Self {
        cookie(headers, name).and_then(Self::parse).unwrap_or_default()
    }

    #[must_use]
    pub const fn is_fr(self) -> bool {
        matches!(self, Self::Fr)
    }

    /// The French or the English of a pair.
    #[must_use]
    pub const fn pick<'a>(self, fr: &'a str, en: &'a str) -> &'a str {
        match self {
            Self::Fr => fr,
            Self::En => en,
        }
    }
}

/// `GET /lang/{code}`: a 303 back to the page the switch was used on
/// ([`return_path`]) that remembers the language in cookie `name` for a
/// year; `None` when `code` is not one of ours (the caller shows its own
/// "not found" page).
#[must_use]
pub fn switch_lang(code: &str, headers: &HeaderMap, name: &str, secure: bool) -> Option<Response> {
    let lang = Lang::parse(code)?;
    Some(see_other(&return_path(headers), &[lang_cookie(name, lang.code(), secure)]))
}

/// An HTML page with the headers every page gets, and `Set-Cookie` values.
#[must_use]
pub fn html_page(status: StatusCode, html: String, cookies: &[String]) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    append_cookies(response, cookies)
}

/// 303 to `to` (POST/redirect/GET), with `Set-Cookie` values.
#[must_use]
pub fn see_other(to: &str, cookies: &[String]) -> Response {
    append_cookies(Redirect::to(to).into_response(), cookies)
}

fn append_cookies(mut response: Response, cookies: &[String]) -> Response {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// A file compiled into the binary. Its URL carries a hash of its content
/// (see [`asset_version`]), so browsers may keep it for a year.
#[must_use]
pub fn static_asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A short version tag of an asset's content, for its URL (`?v=`).
#[must_use]
pub fn asset_version(body: &str) -> String {
    crate::tokens::hash_token(body)[..12].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[(header::COOKIE, "a=1; sr_lang=en"), (header::COOKIE, "sr_session=xyz")]);
        assert_eq!(cookie(&h, "sr_lang"), Some("en"));
        assert_eq!(cookie(&h, "sr_session"), Some("xyz"));
        assert_eq!(cookie(&h, "sr_csrf"), None);
        assert_eq!(Lang::from_cookie(&h, "sr_lang"), Lang::En);
        assert_eq!(Lang::from_cookie(&HeaderMap::new(), "sr_lang"), Lang::Fr);
        assert_eq!(Lang::parse(" fr "), Some(Lang::Fr));
        assert_eq!(Lang::parse("de"), None);
    }

    #[test]
    fn only_local_referers_are_returned_to() {
        let back =
            |referer: &str| return_path(&headers(&[(header::HOST, "10.0.0.2:8080"), (header::REFERER, referer)]));
        assert_eq!(back("http://10.0.0.2:8080/patients/x?q=1#top"), "/patients/x?q=1");
        assert_eq!(back("http://10.0.0.2:8080"), "/");
        assert_eq!(back("http://evil.example/patients"), "/");
        assert_eq!(back("http://10.0.0.2:8080//evil.example/"), "/");
        assert_eq!(back("http://10.0.0.2:8080/lang/en"), "/");
        assert_eq!(back("javascript:alert(1)"), "/");
        assert_eq!(return_path(&HeaderMap::new()), "/");
    }

    #[test]
    fn tokens_compare_exactly() {
        let t = crate::tokens::random_token();
        assert!(looks_like_token(&t));
        assert!(ct_eq(&t, &t.clone()));
        assert!(!ct_eq(&t, &crate::tokens::random_token()));
        assert!(!ct_eq(&t, ""));
        assert!(!looks_like_token("short"));
    }

    #[test]
    fn sessions_are_found_by_the_hash_of_a_well_formed_token() {
        let t = crate::tokens::random_token();
        let h = headers(&[(header::COOKIE, &format!("sr_session={t}"))]);
        assert_eq!(session_hash(&h, "sr_session"), Some(crate::tokens::hash_token(&t)));
        assert_eq!(session_hash(&h, "sr_other"), None);
        assert_eq!(session_hash(&headers(&[(header::COOKIE, "sr_session=short")]), "sr_session"), None);
    }

    #[test]
    fn the_language_switch_remembers_and_goes_back() {
        let h = headers(&[(header::HOST, "hub"), (header::REFERER, "http://hub/sites?x=1")]);
        let r = switch_lang("en", &h, "sr_lang", true).expect("a known language");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/sites?x=1");
        assert_eq!(r.headers()[header::SET_COOKIE], "sr_lang=en; Path=/; Max-Age=31536000; SameSite=Lax; Secure");
        assert!(switch_lang("de", &h, "sr_lang", true).is_none());
    }

    #[test]
    fn cookies_are_strict_and_http_only() {
        let c = set_cookie("sr_session", "v", 60, "Strict", true);
        assert_eq!(c, "sr_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure");
        assert_eq!(lang_cookie("sr_lang", "en", false), "sr_lang=en; Path=/; Max-Age=31536000; SameSite=Lax");
    }

    #[test]
    fn double_submit_needs_the_cookie_and_the_same_token() {
        let fresh = DoubleSubmit::from_headers(&HeaderMap::new(), "sr_csrf", 60, false);
        assert!(fresh.set_cookie.as_deref().is_some_and(|c| c.starts_with(&format!("sr_csrf={};", fresh.token))));
        assert!(!fresh.accepts(&fresh.token), "a token without its cookie is refused");
        let h = headers(&[(header::COOKIE, &format!("sr_csrf={}", fresh.token))]);
        let back = DoubleSubmit::from_headers(&h, "sr_csrf", 60, false);
        assert_eq!((back.token.as_str(), back.set_cookie.as_deref()), (fresh.token.as_str(), None));
        assert!(back.accepts(&fresh.token));
        assert!(!back.accepts("") && !back.accepts(&crate::tokens::random_token()));
        let junk = headers(&[(header::COOKIE, "sr_csrf=short")]);
        assert!(DoubleSubmit::from_headers(&junk, "sr_csrf", 60, false).set_cookie.is_some());
    }

    #[test]
    fn pages_forbid_scripts_caching_and_framing() {
        let r = html_page(StatusCode::OK, "<p>x</p>".into(), &["a=b".into()]);
        let h = r.headers();
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert!(h[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii").starts_with("default-src 'none'"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::SET_COOKIE], "a=b");
        let r = see_other("/x", &[]);
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/x");
    }
}
