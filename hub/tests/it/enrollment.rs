//! Enrollment tokens, device enrollment, revocation and the device list.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::support::{TestDevice, TestHub, count, create_site, enrollment_token, get_json};

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    (status, body["code"].as_str().expect("code").to_owned())
}

#[tokio::test]
async fn tokens_are_for_admins_random_hashed_and_expire_in_24_hours() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let site = create_site(&hub, &admin, "KATI").await;
    let url = hub.url(&format!("/api/v1/sites/{site}/enrollment-tokens"));

    let resp = hub.http.post(&url).send().await.expect("send");
    assert_eq!(error_code(resp).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    let resp = hub.http.post(&url).bearer_auth("not.a.jwt").send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for unknown in [uuid::Uuid::now_v7().to_string(), "nope".into()] {
        let resp = hub
            .http
            .post(hub.url(&format!("/api/v1/sites/{unknown}/enrollment-tokens")))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(count(&hub, "enrollment_tokens").await, 0);

    let resp = hub.http.post(&url).bearer_auth(&admin).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    let token = body["token"].as_str().expect("token");
    assert_eq!(token.len(), 43, "256 bits in base64url");
    let expires = time::OffsetDateTime::parse(
        body["expires_at"].as_str().expect("expires_at"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::hours(24);
    assert!((expires - in_a_day).abs() < time::Duration::minutes(1));
    assert_ne!(enrollment_token(&hub, &admin, &site).await, token);

    let client = hub.state.db.get().await.expect("conn");
    let stored: Vec<Vec<u8>> = client
        .query("SELECT token_hash FROM enrollment_tokens", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(stored.contains(&Sha256::digest(token.as_bytes()).to_vec()));
}

#[tokio::test]
async fn a_device_enrolls_once_per_token() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let site = create_site(&hub, &admin, "KATI").await;
    let token = enrollment_token(&hub, &admin, &site).await;

    let device = TestDevice::new();
    let resp = device.enroll(&hub, &token).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({ "site_id": site, "device_id": device.id.to_string(), "site_name": "CSCom KATI", "site_code": "KATI" })
    );

    // The token is spent: neither another device nor the same one again.
    let resp = TestDevice::new().enroll(&hub, &token).await;
    assert_eq!(error_code(resp).await, (StatusCode::GONE, "enrollment_token_used".into()));
    let resp = device.enroll(&hub, &token).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    let resp = TestDevice::new().enroll(&hub, "an-unknown-token").await;
    assert_eq!(error_code(resp).await, (StatusCode::UNAUTHORIZED, "invalid_enrollment_token".into()));
    assert_eq!(count(&hub, "devices").await, 1);

    let client = hub.state.db.get().await.expect("conn");
    let spent_by: uuid::Uuid = client
        .query_one("SELECT device_id FROM enrollment_tokens WHERE used_at IS NOT NULL", &[])
        .await
        .expect("select")
        .get(0);
    assert_eq!(&spent_by, device.id.as_uuid());

    let list: Vec<Value> = get_json(&hub, &admin, &format!("/api/v1/sites/{site}/devices")).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], device.id.to_string());
    assert_eq!(list[0]["public_key"], device.public_key());
    assert_eq!(list[0]["revoked_at"], Value::Null);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let site = create_site(&hub, &admin, "KATI").await;
    let token = enrollment_token(&hub, &admin, &site).await;
    hub.state
        .db
        .get()
        .await
        .expect("conn")
        .execute("UPDATE enrollment_tokens SET expires_at = now() - interval '1 second'", &[])
        .await
        .expect("expire");
    let resp = TestDevice::new().enroll(&hub, &token).await;
    assert_eq!(error_code(resp).await, (StatusCode::GONE, "enrollment_token_expired".into()));
    assert_eq!(count(&hub, "devices").await, 0);
}

#[tokio::test]
async fn bad_input_and_taken_ids_leave_the_token_unspent() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let site = create_site(&hub, &admin, "KATI").await;
    let (enrolled, _) = TestDevice::enrolled(&hub, &admin, "BKO").await;
    let token = enrollment_token(&hub, &admin, &site).await;

    let enroll = |body: Value| hub.http.post(hub.url("/api/v1/devices/enroll")).json(&body).send();
    let fresh = TestDevice::new();
    for bad_key in ["AAAA", "", "not base64 at all!"] {
        let resp = enroll(json!({ "token": token, "device_id": fresh.id.to_string(), "public_key": bad_key }))
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad_key}");
    }
    let resp =
        enroll(json!({ "token": token, "device_id": "x", "public_key": fresh.public_key() })).await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The id of an enrolled device, then its key: 409, nothing spent.
    let resp =
        enroll(json!({ "token": token, "device_id": enrolled.id.to_string(), "public_key": fresh.public_key() }))
            .await
            .expect("send");
    assert_eq!(error_code(resp).await, (StatusCode::CONFLICT, "device_already_enrolled".into()));
    let resp =
        enroll(json!({ "token": token, "device_id": fresh.id.to_string(), "public_key": enrolled.public_key() }))
            .await
            .expect("send");
    assert_eq!(error_code(resp).await, (StatusCode::CONFLICT, "public_key_already_enrolled".into()));
    assert_eq!(count(&hub, "devices").await, 1);
    assert_eq!(fresh.enroll(&hub, &token).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn concurrent_enrollments_with_one_token_have_one_winner() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let site = create_site(&hub, &admin, "KATI").await;
    let token = enrollment_token(&hub, &admin, &site).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let device = TestDevice::new();
        let req = hub.http.post(hub.url("/api/v1/devices/enroll")).json(&json!({
            "token": token,
            "device_id": device.id.to_string(),
            "public_key": device.public_key(),
        }));
        tasks.spawn(async move { req.send().await.expect("send").status() });
    }
    let statuses = tasks.join_all().await;
    let won = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let lost = statuses.iter().filter(|s| **s == StatusCode::GONE).count();
    assert_eq!((won, lost), (1, 7), "{statuses:?}");
    assert_eq!(count(&hub, "devices").await, 1);
}

#[tokio::test]
async fn revocation_is_for_admins_and_shows_in_the_list() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, site) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let url = hub.url(&format!("/api/v1/devices/{}/revoke", device.id));

    let resp = hub.http.post(&url).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = hub
        .http
        .post(hub.url(&format!("/api/v1/devices/{}/revoke", uuid::Uuid::now_v7())))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = hub.http.post(&url).bearer_auth(&admin).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let revoked: Value = resp.json().await.expect("json");
    assert!(revoked["revoked_at"].is_string());

    let list: Vec<Value> = get_json(&hub, &admin, &format!("/api/v1/sites/{site}/devices")).await;
    assert_eq!(list[0]["revoked_at"], revoked["revoked_at"]);
    let resp = hub
        .http
        .get(hub.url(&format!("/api/v1/sites/{}/devices", uuid::Uuid::now_v7())))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
