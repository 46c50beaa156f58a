//! Concurrent edits of the same field on two devices open a conflict, which
//! the admin API lists and metrics count; a later single edit closes it.
//! Concurrent additions of different encounters are not conflicts.

use reqwest::StatusCode;
use serde_json::Value;

use crate::edge_doc::{EdgeDoc, outbox, push};
use crate::support::{TestDevice, TestHub};

#[tokio::test]
async fn concurrent_edits_of_a_field_open_one_conflict_that_a_later_edit_closes() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (kati, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (siby, _) = TestDevice::enrolled(&hub, &admin, "SIBY").await;
    let (mut a, created) = EdgeDoc::register(kati.id, "Fatoumata", "Coulibaly", None);
    push(&hub, &kati, outbox(1, a.patient, std::slice::from_ref(&created))).await;
    // The same document on both devices.
    let mut b = EdgeDoc::on_device(siby.id, a.patient, std::slice::from_ref(&created));

    // Each adds an encounter (and writes `updated_at`) concurrently: both
    // survive, nothing is a conflict.
    let (_, ea) = a.add_encounter("2026-04-01", "paludisme");
    let (_, eb) = b.add_encounter("2026-04-01", "grippe");
    push(&hub, &kati, outbox(2, a.patient, std::slice::from_ref(&ea))).await;
    push(&hub, &siby, outbox(1, b.patient, std::slice::from_ref(&eb))).await;
    assert!(list(&hub, &admin, "all").await.is_empty());
    let client = hub.state.db.get().await.expect("conn");
    let encounters: i64 = client
        .query_one("SELECT count(*) FROM encounters WHERE patient_id = $1", &[a.patient.as_uuid()])
        .await
        .expect("count")
        .get(0);
    assert_eq!(encounters, 2);

    // Both edit the village concurrently.
    let va = a.set("village", "Siby");
    let vb = b.set("village", "Ouéléssébougou");
    push(&hub, &kati, outbox(3, a.patient, std::slice::from_ref(&va))).await;
    assert!(list(&hub, &admin, "open").await.is_empty(), "one edit alone is no conflict");
    push(&hub, &siby, outbox(2, b.patient, std::slice::from_ref(&vb))).await;

    let open = list(&hub, &admin, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    let c = &open[0];
    assert_eq!(c["patient_id"], a.patient.to_string());
    assert_eq!(c["field"], "village");
    assert!(c["resolved_at"].is_null());
    let values = c["values"].as_array().expect("values");
    let mut pairs: Vec<(String, String)> = values
        .iter()
        .map(|v| (v["value"].as_str().expect("value").to_owned(), v["device_id"].as_str().expect("device").to_owned()))
        .collect();
    pairs.sort();
    assert_eq!(pairs, [("Ouéléssébougou".to_owned(), siby.id.to_string()), ("Siby".to_owned(), kati.id.to_string())]);
    assert_eq!(values.iter().filter(|v| v["winner"] == Value::Bool(true)).count(), 1);
    let winner = values.iter().find(|v| v["winner"] == Value::Bool(true)).expect("winner")["value"].clone();
    let village: String = client
        .query_one("SELECT village FROM patients WHERE id = $1", &[a.patient.as_uuid()])
        .await
        .expect("patient")
        .get(0);
    assert_eq!(Value::String(village), winner, "the projection shows the winner");
    let id = c["id"].clone();
    metrics_contain(&hub, &["sync_conflicts_detected_total 1", "sync_conflicts_open 1"]).await;

    // The same changes again: duplicates, still one conflict.
    push(&hub, &kati, outbox(1, a.patient, &[created.clone(), ea.clone(), va.clone()])).await;
    push(&hub, &siby, outbox(1, b.patient, &[eb.clone(), vb.clone()])).await;
    let all = list(&hub, &admin, "all").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], id);
    metrics_contain(&hub, &["sync_conflicts_detected_total 1", "sync_conflicts_open 1"]).await;

    // Kati pulls Siby's changes and sets the village once more: closed.
    a.merge(&[eb, vb]);
    let fixed = a.set("village", "Kati");
    push(&hub, &kati, outbox(4, a.patient, std::slice::from_ref(&fixed))).await;
    assert!(list(&hub, &admin, "open").await.is_empty());
    let resolved = list(&hub, &admin, "resolved").await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["id"], id);
    assert!(resolved[0]["resolved_at"].is_string());
    let row = client
        .query_one("SELECT resolved_by, resolution::text FROM conflicts WHERE patient_id = $1", &[a.patient.as_uuid()])
        .await
        .expect("conflict");
    assert_eq!(row.get::<_, String>(0), "merge");
    let resolution: Value = serde_json::from_str(&row.get::<_, String>(1)).expect("json");
    assert_eq!(resolution["value"], "Kati");
    metrics_contain(&hub, &["sync_conflicts_detected_total 1", "sync_conflicts_open 0"]).await;
    assert_eq!(list(&hub, &admin, "all").await.len(), 1);
}

#[tokio::test]
async fn the_list_requires_an_admin_token_and_a_known_status() {
    let hub = TestHub::start().await;
    let resp = hub.http.get(hub.url("/api/v1/conflicts")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = hub.http.get(hub.url("/api/v1/conflicts")).bearer_auth("not-a-token").send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let admin = hub.admin_bearer();
    let resp = hub.http.get(hub.url("/api/v1/conflicts?status=maybe")).bearer_auth(&admin).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(list(&hub, &admin, "open").await.is_empty());
}

async fn list(hub: &TestHub, admin: &str, status: &str) -> Vec<Value> {
    let resp = hub
        .http
        .get(hub.url("/api/v1/conflicts"))
        .query(&[("status", status)])
        .bearer_auth(admin)
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    body["conflicts"].as_array().expect("conflicts").clone()
}

async fn metrics_contain(hub: &TestHub, lines: &[&str]) {
    let metrics = hub.http.get(hub.url("/metrics")).send().await.expect("send").text().await.expect("text");
    for line in lines {
        assert!(metrics.lines().any(|l| l == *line), "{line} in\n{metrics}");
    }
}
