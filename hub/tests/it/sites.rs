//! `POST /api/v1/sites`, `GET /api/v1/sites` and `PATCH /api/v1/sites/{id}`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestHub, get_json, post_site};

#[tokio::test]
async fn create_then_list() {
    let hub = TestHub::start().await;
    let token = hub.admin_token().await;
    let site = post_site(
        &hub,
        &token,
        &json!({ "name": "CSCom de Kati", "code": "kati-01", "dhis2_org_unit": "DiszpKrYNg8" }),
    )
    .await;
    assert_eq!(site["code"], "KATI-01");
    assert_eq!(site["dhis2_org_unit"], "DiszpKrYNg8");
    let id = site["id"].as_str().expect("id");
    assert!(id.parse::<uuid::Uuid>().is_ok());

    post_site(&hub, &token, &json!({ "name": "CSCom de Bamako", "code": "BKO" })).await;

    let list: Vec<Value> = get_json(&hub, &token, "/api/v1/sites").await;
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

#[tokio::test]
async fn patch_changes_the_org_unit_fields_and_only_those_given() {
    let hub = TestHub::start().await;
    let token = hub.admin_bearer();
    let site = post_site(
        &hub,
        &token,
        &json!({ "name": "CSCom de Kati", "code": "KATI", "dhis2_org_unit_code": " OU_KATI " }),
    )
    .await;
    assert_eq!((site["dhis2_org_unit_code"].as_str(), &site["dhis2_org_unit"]), (Some("OU_KATI"), &Value::Null));
    let path = format!("/api/v1/sites/{}", site["id"].as_str().expect("id"));
    let patch = |body: Value| hub.http.patch(hub.url(&path)).bearer_auth(&token).json(&body).send();

    // The uid alone: name and code stay.
    let resp = patch(json!({ "dhis2_org_unit": "ouKati00001" })).await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(got["dhis2_org_unit"], "ouKati00001");
    assert_eq!((got["name"].as_str(), got["dhis2_org_unit_code"].as_str()), (Some("CSCom de Kati"), Some("OU_KATI")));
    assert_eq!((&got["id"], &got["code"], &got["created_at"]), (&site["id"], &site["code"], &site["created_at"]));

    // A new code without a uid: the old uid named the old unit, it is cleared.
    let got: Value =
        patch(json!({ "dhis2_org_unit_code": "OU_KATI_2" })).await.expect("send").json().await.expect("json");
    assert_eq!((got["dhis2_org_unit_code"].as_str(), &got["dhis2_org_unit"]), (Some("OU_KATI_2"), &Value::Null));
    // Both at once, and the same code again: the uid stays.
    let both = json!({ "name": "Kati", "dhis2_org_unit_code": "OU_KATI", "dhis2_org_unit": "ouKati00001" });
    let got: Value = patch(both).await.expect("send").json().await.expect("json");
    assert_eq!((got["name"].as_str(), got["dhis2_org_unit"].as_str()), (Some("Kati"), Some("ouKati00001")));
    let got: Value =
        patch(json!({ "dhis2_org_unit_code": "OU_KATI" })).await.expect("send").json().await.expect("json");
    assert_eq!(got["dhis2_org_unit"], "ouKati00001");
    // null (or "") clears.
    let got: Value = patch(json!({ "dhis2_org_unit": null, "dhis2_org_unit_code": "" }))
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!((&got["dhis2_org_unit"], &got["dhis2_org_unit_code"]), (&Value::Null, &Value::Null));
    let list: Vec<Value> = get_json(&hub, &token, "/api/v1/sites").await;
    assert_eq!(list, [got]);

    // Refusals.
    let resp = patch(json!({ "name": "", "dhis2_org_unit": "1bad", "dhis2_org_unit_code": "X".repeat(51) }))
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.expect("json");
    let fields: Vec<(&str, &str)> = body["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| (f["field"].as_str().expect("field"), f["code"].as_str().expect("code")))
        .collect();
    assert_eq!(
        fields,
        [("name", "required"), ("dhis2_org_unit", "invalid_format"), ("dhis2_org_unit_code", "too_long")]
    );
    let resp = patch(json!({ "code": "OTHER" })).await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "the site code is not editable");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "invalid_body");
    let unknown = format!("/api/v1/sites/{}", uuid::Uuid::now_v7());
    let resp = hub.http.patch(hub.url(&unknown)).bearer_auth(&token).json(&json!({})).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp =
        hub.http.patch(hub.url("/api/v1/sites/nope")).bearer_auth(&token).json(&json!({})).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = hub.http.patch(hub.url(&path)).json(&json!({ "name": "X" })).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let client = hub.state.db.get().await.expect("conn");
    let name: String = client.query_one("SELECT name FROM sites", &[]).await.expect("site").get(0);
    assert_eq!(name, "Kati", "refused patches change nothing");
}
