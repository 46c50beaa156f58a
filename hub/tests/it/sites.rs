//! `POST /api/v1/sites` and `GET /api/v1/sites`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestHub;

#[tokio::test]
async fn create_then_list() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let resp = hub
        .http
        .post(hub.url("/api/v1/sites"))
        .bearer_auth(&token)
        .json(&json!({ "name": "CSCom de Kati", "code": "kati-01", "dhis2_org_unit": "DiszpKrYNg8" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let site: Value = resp.json().await.expect("json");
    assert_eq!(site["code"], "KATI-01");
    assert_eq!(site["dhis2_org_unit"], "DiszpKrYNg8");
    let id = site["id"].as_str().expect("id");
    assert!(id.parse::<uuid::Uuid>().is_ok());

    let resp = hub
        .http
        .post(hub.url("/api/v1/sites"))
        .bearer_auth(&token)
        .json(&json!({ "name": "CSCom de Bamako", "code": "BKO" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);

    let list: Vec<Value> = hub
        .http
        .get(hub.url("/api/v1/sites"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "CSCom de Bamako");
    assert_eq!(list[0]["dhis2_org_unit"], Value::Null);
    assert_eq!(list[1], site);
}

#[tokio::test]
async fn invalid_input_is_422_and_a_taken_code_409() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let post = |body: Value| hub.http.post(hub.url("/api/v1/sites")).bearer_auth(&token).json(&body).send();

    let resp = post(json!({ "name": " ", "dhis2_org_unit": "bad" })).await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "validation_failed");
    let fields: Vec<&str> =
        body["fields"].as_array().expect("fields").iter().map(|f| f["field"].as_str().expect("field")).collect();
    assert_eq!(fields, ["name", "code", "dhis2_org_unit"]);

    assert_eq!(post(json!({ "name": "Kati", "code": "KATI" })).await.expect("send").status(), StatusCode::CREATED);
    let resp = post(json!({ "name": "Kati bis", "code": "kati" })).await.expect("send");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "site_code_taken");

    let resp = hub.http.post(hub.url("/api/v1/sites")).bearer_auth(&token).body("{}").send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = hub
        .http
        .post(hub.url("/api/v1/sites"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}
