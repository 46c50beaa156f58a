//! Accounts and sign-in: `hub user add` (the library function behind it),
//! login, and bearer tokens on protected routes.

use hub::auth::Role;
use hub::users::{UserError, add_user};
use reqwest::StatusCode;

use crate::support::TestHub;

#[tokio::test]
async fn login_gives_a_token_and_wrong_passwords_get_401() {
    let hub = TestHub::start().await;
    let user = add_user(&hub.state.db, " awa.traore ", Role::Admin, "correct horse battery").await.expect("add");
    assert_eq!(user.username, "awa.traore");

    let token = hub.login("awa.traore", "correct horse battery").await.expect("login");
    let me = hub.state.tokens.verify(&token).expect("valid token");
    assert_eq!((me.id, me.role), (user.id, Role::Admin));

    assert_eq!(hub.login("awa.traore", "wrong horse battery").await, Err(StatusCode::UNAUTHORIZED));
    assert_eq!(hub.login("nobody", "correct horse battery").await, Err(StatusCode::UNAUTHORIZED));
    let resp = hub
        .http
        .post(hub.url("/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": "awa.traore", "password": "nope" }))
        .send()
        .await
        .expect("send");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "invalid_credentials");
}

#[tokio::test]
async fn user_add_enforces_policy_and_unique_names() {
    let hub = TestHub::start().await;
    add_user(&hub.state.db, "moussa", Role::Admin, "long enough pw").await.expect("add");
    assert!(matches!(
        add_user(&hub.state.db, "moussa", Role::Admin, "another long pw").await,
        Err(UserError::UsernameTaken(_))
    ));
    assert!(matches!(
        add_user(&hub.state.db, "x y", Role::Admin, "long enough pw").await,
        Err(UserError::InvalidUsername(_))
    ));
    assert!(matches!(add_user(&hub.state.db, "fatou", Role::Admin, "short").await, Err(UserError::WeakPassword(_))));
}

#[tokio::test]
async fn protected_routes_need_a_valid_token() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let url = hub.url("/api/v1/sites");

    let resp = hub.http.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");

    for bad in ["Bearer not-a-token", "Basic YWRtaW46eA==", &format!("Bearer {token}x")] {
        let resp = hub.http.get(&url).header("authorization", bad).send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    let resp = hub.http.post(&url).json(&serde_json::json!({ "name": "X", "code": "XX" })).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = hub.http.get(&url).bearer_auth(&token).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
}
