//! `GET /api/v1/openapi.json`: served without a token, OpenAPI 3; it
//! documents exactly the routes the router answers (listed in [`ROUTES`]),
//! and the JSON answers of the main calls conform to its schemas.

use std::sync::OnceLock;

use reqwest::{Method, StatusCode};
use santerurale_fixtures::openapi::{Schemas, Untyped};
use serde_json::{Value, json};

use crate::support::{TestDevice, TestHub, create_site, enrollment_token, open_conflict};

/// Every route of the hub: (method, path template).
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/auth/login"),
    ("GET", "/api/v1/sites"),
    ("POST", "/api/v1/sites"),
    ("PATCH", "/api/v1/sites/{id}"),
    ("GET", "/api/v1/sites/{id}/devices"),
    ("POST", "/api/v1/sites/{id}/enrollment-tokens"),
    ("GET", "/api/v1/sites/{id}/sync-status"),
    ("POST", "/api/v1/devices/enroll"),
    ("POST", "/api/v1/devices/{id}/revoke"),
    ("GET", "/api/v1/patients"),
    ("GET", "/api/v1/patients/{id}"),
    ("GET", "/api/v1/conflicts"),
    ("POST", "/api/v1/conflicts/{id}/resolve"),
    ("POST", "/api/v1/dhis2/export"),
    ("GET", "/api/v1/dhis2/exports"),
    ("GET", "/api/v1/dhis2/exports/{id}"),
    ("POST", "/api/v1/dhis2/exports/{id}/rerun"),
    ("GET", "/api/v1/dhis2/mapping"),
    ("PUT", "/api/v1/dhis2/mapping"),
    ("DELETE", "/api/v1/dhis2/mapping"),
    ("POST", "/api/v1/dhis2/mapping/resolve"),
    ("GET", "/api/v1/dhis2/preview"),
    ("GET", "/api/v1/dhis2/late-data"),
    ("POST", "/api/v1/dhis2/late-data"),
    ("GET", "/api/v1/dhis2/periods"),
    ("POST", "/api/v1/sync/push"),
    ("POST", "/api/v1/sync/pull"),
    ("POST", "/api/v1/sync/lookup"),
    ("POST", "/api/v1/sync/fetch"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The hub's document; a schema without a type (a conflict's value) accepts any JSON.
fn schemas() -> &'static Schemas {
    static DOC: OnceLock<Schemas> = OnceLock::new();
    DOC.get_or_init(|| Schemas::parse(hub::api::OPENAPI, Untyped::AcceptAny))
}

fn doc() -> &'static Value {
    schemas().doc()
}

#[tokio::test]
async fn the_document_is_served_without_a_token_and_is_openapi_3() {
    let hub = TestHub::start().await;
    let resp = hub.http.get(hub.url("/api/v1/openapi.json")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let served: Value = resp.json().await.expect("json");
    assert_eq!(&served, doc());
    assert!(served["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", served["openapi"]);
    assert_eq!(served["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    // Every reference resolves.
    let text = hub::api::OPENAPI;
    for r in text.split("\"$ref\": \"#").skip(1).filter_map(|s| s.split('"').next()) {
        assert!(doc().pointer(r).is_some(), "{r} does not resolve");
    }
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_answered() {
    let documented: Vec<(String, String)> = doc()["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().expect("operations").keys().map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let mut listed: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    listed.sort();
    assert_eq!(documented_sorted, listed, "the document's operations are the router's routes");

    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    for (method, template) in ROUTES {
        let path = template.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let (status, body) = call(&hub, &admin, method, &path).await;
        // An unrouted request is a bare 404 or a 405; a routed one answers with a body.
        let routed = status != StatusCode::METHOD_NOT_ALLOWED && !(status == StatusCode::NOT_FOUND && body.is_empty());
        assert!(routed, "{method} {path} is documented but not answered: {status}");
        for other in METHODS.iter().filter(|m| !ROUTES.contains(&(**m, *template))) {
            let (status, _) = call(&hub, &admin, other, &path).await;
            assert!(
                matches!(status, StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_FOUND),
                "{other} {path} is answered ({status}) but not documented"
            );
        }
    }
}

async fn call(hub: &TestHub, admin: &str, method: &str, path: &str) -> (StatusCode, String) {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let resp = hub.http.request(method, hub.url(path)).bearer_auth(admin).send().await.expect("send");
    (resp.status(), resp.text().await.expect("body"))
}

#[tokio::test]
async fn answers_conform_to_their_schemas() {
    let hub = TestHub::start().await;
    let http = &hub.http;

    let (status, health) = get(&hub, "", "/health").await;
    assert_eq!(status, StatusCode::OK);
    conforms("Health", &health);

    // Signing in, and its refusal.
    hub::users::add_user(&hub.state.db, "awa", hub::auth::Role::Admin, "correct horse battery").await.expect("user");
    let login = |password: &'static str| {
        http.post(hub.url("/api/v1/auth/login")).json(&json!({ "username": "awa", "password": password })).send()
    };
    let resp = login("correct horse battery").await.expect("login");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    conforms("LoginResponse", &body);
    let admin = body["token"].as_str().expect("token").to_owned();
    let resp = login("wrong").await.expect("login");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    conforms("Error", &resp.json().await.expect("json"));

    // Sites, with a validation error.
    let resp = http
        .post(hub.url("/api/v1/sites"))
        .bearer_auth(&admin)
        .json(&json!({ "name": "CSCom de Kati", "code": "KT-01", "dhis2_org_unit": "DiszpKrYNg8" }))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let site: Value = resp.json().await.expect("json");
    conforms("Site", &site);
    let resp = http
        .post(hub.url("/api/v1/sites"))
        .bearer_auth(&admin)
        .json(&json!({ "code": "x" }))
        .send()
        .await
        .expect("bad");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = resp.json().await.expect("json");
    conforms("Error", &error);
    assert!(error["fields"].as_array().is_some_and(|f| !f.is_empty()));
    let (_, sites) = get(&hub, &admin, "/api/v1/sites").await;
    conforms_each("Site", &sites);

    // Enrollment, devices, revocation.
    let site_id = site["id"].as_str().expect("id");
    let resp = http
        .post(hub.url(&format!("/api/v1/sites/{site_id}/enrollment-tokens")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token: Value = resp.json().await.expect("json");
    conforms("EnrollmentToken", &token);
    let device = TestDevice::new();
    let resp = device.enroll(&hub, token["token"].as_str().expect("token")).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    conforms("Enrolled", &resp.json().await.expect("json"));
    let (_, devices) = get(&hub, &admin, &format!("/api/v1/sites/{site_id}/devices")).await;
    conforms_each("Device", &devices);
    let resp = http
        .post(hub.url(&format!("/api/v1/devices/{}/revoke", device.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status(), StatusCode::OK);
    conforms("Device", &resp.json().await.expect("json"));

    // Patients and conflicts, from real pushes.
    let (patient, _, _) = open_conflict(&hub, &admin).await;
    let (_, conflicts) = get(&hub, &admin, "/api/v1/conflicts").await;
    conforms("ConflictList", &conflicts);
    assert_eq!(conflicts["conflicts"].as_array().map(Vec::len), Some(1));
    let (_, patients) = get(&hub, &admin, "/api/v1/patients?q=coulibaly").await;
    conforms("PatientList", &patients);
    assert_eq!(patients["patients"].as_array().map(Vec::len), Some(1));
    let (status, one) = get(&hub, &admin, &format!("/api/v1/patients/{patient}")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("Patient", &one);
    let (status, missing) = get(&hub, &admin, &format!("/api/v1/patients/{}", uuid::Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    conforms("Error", &missing);

    let (status, sync) = get(&hub, &admin, &format!("/api/v1/sites/{site_id}/sync-status")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("SiteSyncStatus", &sync);
    assert!(!sync["devices"].as_array().expect("devices").is_empty());
    let conflict = conflicts["conflicts"][0]["id"].as_str().expect("id").to_owned();
    let chosen = conflicts["conflicts"][0]["values"][0]["value"].clone();
    let resp = http
        .post(hub.url(&format!("/api/v1/conflicts/{conflict}/resolve")))
        .bearer_auth(&admin)
        .json(&json!({ "value": chosen }))
        .send()
        .await
        .expect("resolve");
    assert_eq!(resp.status(), StatusCode::OK);
    let resolved: Value = resp.json().await.expect("json");
    conforms("Conflict", &resolved);
    assert!(resolved["resolved_at"].is_string());
    let (_, all) = get(&hub, &admin, "/api/v1/conflicts?status=all").await;
    conforms("ConflictList", &all);

    // A sync refusal.
    let resp = http.post(hub.url("/api/v1/sync/push")).body(vec![1, 2, 3]).send().await.expect("push");
    assert!(resp.status().is_client_error(), "{}", resp.status());
    conforms("SyncError", &resp.json().await.expect("json"));

    // A second site, so the enrollment helper's site is covered too.
    let other = create_site(&hub, &admin, "OTHER").await;
    let _ = enrollment_token(&hub, &admin, &other).await;
}

async fn get(hub: &TestHub, token: &str, path: &str) -> (StatusCode, Value) {
    let mut req = hub.http.get(hub.url(path));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("get");
    (resp.status(), resp.json().await.expect("json"))
}

#[track_caller]
fn conforms_each(name: &str, values: &Value) {
    let items = values.as_array().unwrap_or_else(|| panic!("{name}: an array expected, got {values}"));
    assert!(!items.is_empty(), "{name}: nothing to check");
    for item in items {
        conforms(name, item);
    }
}

/// Checks `value` against `#/components/schemas/{name}` (see
/// [`santerurale_fixtures::openapi`]).
#[track_caller]
fn conforms(name: &str, value: &Value) {
    schemas().conforms(name, value);
}
