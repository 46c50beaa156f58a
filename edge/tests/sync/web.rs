//! Serving an edge under test on a loopback port, and driving its web UI
//! (cookies, CSRF tokens read from the forms) and its JSON API as a person
//! or a script would.

use super::*;

/// The password of every account [`add_accounts`] makes.
pub(crate) const PASSWORD: &str = "motdepasse1";

/// Creates the accounts `(username, role)` in the edge's store.
pub(crate) async fn add_accounts(edge: &Edge, accounts: &[(&str, edge::store::Role)]) {
    let hash = edge::auth::hash_password(PASSWORD).expect("hash");
    for (name, role) in accounts {
        edge.state.store.create_user((*name).into(), *role, hash.clone()).await.expect("account");
    }
}

/// Serves `edge` on a loopback port; returns its base URL and what stops it.
pub(crate) async fn serve(edge: &Edge) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(edge::serve(listener, edge.state.clone(), async {
        let _ = stopped.await;
    }));
    (base, stop)
}

fn csrf_in(html: &str) -> String {
    let start = html.find("name=\"csrf_token\" value=\"").expect("a csrf_token field") + 25;
    html[start..].split('"').next().unwrap_or_default().to_owned()
}

/// A cookie-keeping client signed in as `username`.
pub(crate) async fn signed_in(base: &str, username: &str) -> reqwest::Client {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let html = c.get(format!("{base}/login")).send().await.expect("GET").text().await.expect("body");
    let form = [("username", username), ("password", PASSWORD), ("csrf_token", &csrf_in(&html))];
    let r = c.post(format!("{base}/login")).form(&form).send().await.expect("POST");
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER, "sign-in of {username}");
    c
}

/// Presses "Sync now" (or tries to); returns the status and the page.
pub(crate) async fn sync_now(c: &reqwest::Client, base: &str) -> (u16, String) {
    let html = c.get(format!("{base}/sync")).send().await.expect("GET").text().await.expect("body");
    let r = c.post(format!("{base}/sync")).form(&[("csrf_token", csrf_in(&html))]).send().await.expect("POST");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// A bearer token of `username` for the JSON API.
pub(crate) async fn api_token(base: &str, username: &str) -> String {
    let login: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": PASSWORD }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    login["token"].as_str().expect("a token").to_owned()
}
