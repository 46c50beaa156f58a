//! A browser for the admin UI tests (`ui`, `dhis2_ui`): no redirects
//! followed, no script; it keeps cookies and reads forms' CSRF tokens.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::support::TestHub;

/// A browser without redirects or script: keeps cookies, reads forms' CSRF tokens.
pub struct Browser {
    pub http: reqwest::Client,
    base: String,
    pub cookies: BTreeMap<String, String>,
}

/// A page as received: its status, `Location` (empty without) and body.
pub struct Page {
    pub status: StatusCode,
    pub location: String,
    pub body: String,
}

impl Browser {
    pub fn new(hub: &TestHub) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { http, base: hub.base.clone(), cookies: BTreeMap::new() }
    }

    /// A browser with a live session of a new admin `awa`, made directly in
    /// the database (signing in through the form is tested once, below: argon2
    /// is slow on small machines).
    pub async fn signed_in(hub: &TestHub) -> Self {
        let client = hub.state.db.get().await.expect("conn");
        let user = uuid::Uuid::now_v7();
        client
            .execute("INSERT INTO users (id, username, password_hash, role) VALUES ($1, 'awa', 'x', 'admin')", &[&user])
            .await
            .expect("user");
        let token = santerurale_server::tokens::random_token();
        let csrf = santerurale_server::tokens::random_token();
        client
            .execute(
                "INSERT INTO ui_sessions (token_hash, user_id, csrf_token, expires_at)
                 VALUES ($1, $2, $3, now() + interval '1 hour')",
                &[&santerurale_server::tokens::hash_token(&token), &user, &csrf],
            )
            .await
            .expect("session");
        let mut me = Self::new(hub);
        me.cookies.insert("sr_session".into(), token);
        me
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let resp = req.header(COOKIE, self.cookie_header()).send().await.expect("send");
        for set in resp.headers().get_all(SET_COOKIE) {
            let set = set.to_str().expect("ascii");
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = resp.status();
        let location = resp.headers().get(LOCATION).map(|v| v.to_str().expect("ascii").to_owned()).unwrap_or_default();
        Page { status, location, body: resp.text().await.expect("body") }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Posts `form` with the CSRF token of the page at `from`.
    pub async fn submit(&mut self, from: &str, path: &str, form: &[(&str, &str)]) -> Page {
        let page = self.get(from).await;
        assert_eq!(page.status, StatusCode::OK, "{from}: {}", page.body);
        let token = csrf_of(&page.body);
        let mut fields = form.to_vec();
        fields.push(("csrf_token", &token));
        self.post(path, &fields).await
    }
}

/// The first CSRF token of a page's forms.
fn csrf_of(html: &str) -> String {
    let (_, rest) = html.split_once("name=\"csrf_token\" value=\"").expect("a form with a CSRF token");
    rest.split('"').next().expect("value").to_owned()
}
