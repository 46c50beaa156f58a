//! `GET /api/v1/sites/{id}/sync-status`: what a site's devices last told the
//! hub (contact, outbox depth, last seq), the changes it sent, and the open
//! conflicts on its patients; 404 for an unknown site; admins only.

use reqwest::StatusCode;
use serde_json::Value;

use crate::edge_doc::{EdgeDoc, outbox};
use crate::support::{TestDevice, TestHub, enrollment_token, patient_changes, post_push};

async fn status(hub: &TestHub, admin: &str, site: &str) -> Value {
    let resp = hub
        .http
        .get(hub.url(&format!("/api/v1/sites/{site}/sync-status")))
        .bearer_auth(admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("json")
}

/// Pushes `batch` reporting `depth` entries still in the outbox.
async fn push(hub: &TestHub, device: &TestDevice, batch: Vec<santerurale_shared::sync::OutboxChange>, depth: u64) {
    let body = device.push_body(batch, depth);
    let resp = post_push(hub, &device.sign(&body), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

fn device<'a>(status: &'a Value, id: &TestDevice) -> &'a Value {
    status["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["id"] == id.id.to_string())
        .unwrap_or_else(|| panic!("device {} in {status}", id.id))
}

#[tokio::test]
async fn figures_follow_the_pushes_of_the_site_devices() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (one, site) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (other_site_device, _) = TestDevice::enrolled(&hub, &admin, "SIBY").await;

    // Enrolled, never synced.
    let s = status(&hub, &admin, &site).await;
    assert_eq!(s["site_id"], site.as_str());
    assert_eq!(s["code"], "KATI");
    assert!(s["last_contact"].is_null());
    assert_eq!((s["changes_received"].as_i64(), s["outbox_depth"].as_i64()), (Some(0), Some(0)));
    assert_eq!((s["patients"].as_i64(), s["open_conflicts"].as_i64()), (Some(0), Some(0)));
    let d = device(&s, &one);
    assert_eq!(d["status"], "enrolled");
    assert!(d["last_contact"].is_null() && d["outbox_depth"].is_null());
    assert_eq!(d["last_push_seq"], 0);

    // Three changes, 9 more waiting on the box; another site's push does
    // not count here.
    push(&hub, &one, patient_changes(&one, 1, 3), 9).await;
    push(&hub, &other_site_device, patient_changes(&other_site_device, 1, 4), 40).await;
    let s = status(&hub, &admin, &site).await;
    assert!(s["last_contact"].is_string());
    assert_eq!(s["changes_received"], 3);
    assert_eq!(s["outbox_depth"], 9);
    assert_eq!(s["patients"], 1);
    let d = device(&s, &one);
    assert_eq!((d["changes_received"].as_i64(), d["outbox_depth"].as_i64()), (Some(3), Some(9)));
    assert_eq!(d["last_push_seq"], 3);
    assert_eq!(d["last_contact"], s["last_contact"]);

    // A second box of the same site: figures add up. Both change one
    // patient's village concurrently: one open conflict for the site.
    let two = TestDevice::new();
    let token = enrollment_token(&hub, &admin, &site).await;
    assert_eq!(two.enroll(&hub, &token).await.status(), StatusCode::CREATED);
    let (mut a, created) = EdgeDoc::register(one.id, "Awa", "Diarra", None);
    push(&hub, &one, outbox(4, a.patient, std::slice::from_ref(&created)), 2).await;
    let mut b = EdgeDoc::on_device(two.id, a.patient, std::slice::from_ref(&created));
    let va = a.set("village", "Siby");
    let vb = b.set("village", "Kita");
    push(&hub, &one, outbox(5, a.patient, &[va]), 1).await;
    push(&hub, &two, outbox(1, b.patient, &[vb]), 5).await;
    let s = status(&hub, &admin, &site).await;
    assert_eq!(s["changes_received"], 6);
    assert_eq!(s["outbox_depth"], 6, "1 + 5, as last reported");
    assert_eq!((s["patients"].as_i64(), s["open_conflicts"].as_i64()), (Some(2), Some(1)));
    assert_eq!(s["devices"].as_array().expect("devices").len(), 2);
    assert_eq!(device(&s, &two)["changes_received"], 1);

    // A revoked box stays listed, and its depth no longer counts.
    let resp = hub
        .http
        .post(hub.url(&format!("/api/v1/devices/{}/revoke", two.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert!(resp.status().is_success());
    let s = status(&hub, &admin, &site).await;
    assert_eq!(device(&s, &two)["status"], "revoked");
    assert!(device(&s, &two)["revoked_at"].is_string());
    assert_eq!(s["outbox_depth"], 1);
    assert_eq!(s["changes_received"], 6, "its changes still count");
}

#[tokio::test]
async fn unknown_sites_are_404_and_the_status_needs_a_token() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (_, site) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    for unknown in [uuid::Uuid::now_v7().to_string(), "not-a-site".to_owned()] {
        let resp = hub
            .http
            .get(hub.url(&format!("/api/v1/sites/{unknown}/sync-status")))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["code"], "site_not_found");
        assert!(body["message"].is_string());
    }
    let url = hub.url(&format!("/api/v1/sites/{site}/sync-status"));
    let resp = hub.http.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = hub.http.get(&url).bearer_auth("not-a-token").send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
