//! Pushed changes are applied to the hub's per-patient documents and the
//! patients/encounters projection, which the admin API serves.

use reqwest::StatusCode;

use crate::edge_doc::{EdgeDoc, hub_heads, outbox, push};
use crate::support::{TestDevice, TestHub, count};

#[tokio::test]
async fn pushed_documents_fill_the_projection_and_the_patients_api() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, site) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (mut doc, created) = EdgeDoc::register(device.id, "Aminata", "Traoré", Some("+22370123456"));
    let (first, e1) = doc.add_encounter("2026-01-05", "paludisme");
    let (second, e2) = doc.add_encounter("2026-02-10", "grippe");
    push(&hub, &device, outbox(1, doc.patient, &[created, e1, e2])).await;

    let client = hub.state.db.get().await.expect("conn");
    let row = client
        .query_one(
            "SELECT site_id, last_device_id, given_name, family_name, phone FROM patients WHERE id = $1",
            &[doc.patient.as_uuid()],
        )
        .await
        .expect("projected patient");
    assert_eq!(row.get::<_, uuid::Uuid>(0).to_string(), site);
    assert_eq!(&row.get::<_, uuid::Uuid>(1), device.id.as_uuid());
    assert_eq!(row.get::<_, String>(2), "Aminata");
    assert_eq!(row.get::<_, String>(3), "Traoré");
    assert_eq!(row.get::<_, Option<String>>(4).as_deref(), Some("+22370123456"));
    let rows = client
        .query("SELECT id, site_id, device_id FROM encounters WHERE patient_id = $1", &[doc.patient.as_uuid()])
        .await
        .expect("encounters");
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.get::<_, uuid::Uuid>(1).to_string(), site);
        assert_eq!(&r.get::<_, uuid::Uuid>(2), device.id.as_uuid());
    }
    assert_eq!(count(&hub, "site_patients").await, 1);
    assert_eq!(hub_heads(&hub, doc.patient).await, (doc.heads(), false));

    // Search: folded name words in any order, phone digits, id.
    let id = doc.patient.to_string();
    for q in ["traore aminata", "TRAORÉ", "amin", "70123456", "+223 70 12 34 56", id.as_str()] {
        let found = search(&hub, &admin, q).await;
        assert_eq!(found, vec![id.clone()], "query {q:?}");
    }
    for q in ["traore moussa", "99999999"] {
        assert!(search(&hub, &admin, q).await.is_empty(), "query {q:?}");
    }
    assert_eq!(search(&hub, &admin, "").await, vec![id.clone()]);

    let resp = hub.http.get(hub.url(&format!("/api/v1/patients/{id}"))).bearer_auth(&admin).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let patient: santerurale_shared::Patient = resp.json().await.expect("a Patient");
    assert_eq!(patient.site_id.map(|s| s.to_string()), Some(site));
    let encounters = patient.encounters.expect("encounters in the single read");
    let ids: Vec<_> = encounters.iter().map(|e| e.id).collect();
    assert_eq!(ids, [second, first], "newest first");
    assert_eq!(encounters[0].diagnosis, "grippe");
    assert_eq!(encounters[0].weight_kg, Some(61.5));
    assert_eq!(encounters[0].bp_systolic, Some(120));

    let missing = santerurale_shared::PatientId::new();
    let resp =
        hub.http.get(hub.url(&format!("/api/v1/patients/{missing}"))).bearer_auth(&admin).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = hub.http.get(hub.url("/api/v1/patients?q=x")).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

async fn search(hub: &TestHub, admin: &str, q: &str) -> Vec<String> {
    let resp =
        hub.http.get(hub.url("/api/v1/patients")).query(&[("q", q)]).bearer_auth(admin).send().await.expect("search");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("json");
    body["patients"].as_array().expect("patients").iter().map(|p| p["id"].as_str().expect("id").to_owned()).collect()
}

#[tokio::test]
async fn duplicates_and_changes_ahead_of_their_dependencies() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (mut doc, created) = EdgeDoc::register(device.id, "Moussa", "Keita", None);
    let (_, e1) = doc.add_encounter("2026-03-01", "diarrhée");
    let renamed = doc.set("village", "Siby");

    // The encounter arrives before the registration it depends on: it stays
    // in the log, the document waits for it, nothing is projected yet.
    push(&hub, &device, outbox(2, doc.patient, std::slice::from_ref(&e1))).await;
    assert_eq!(count(&hub, "changes").await, 1);
    assert!(hub_heads(&hub, doc.patient).await.1, "incomplete");
    assert_eq!(count(&hub, "patients").await, 0);

    // The registration arrives: the queued encounter lands too.
    push(&hub, &device, outbox(1, doc.patient, std::slice::from_ref(&created))).await;
    push(&hub, &device, outbox(3, doc.patient, std::slice::from_ref(&renamed))).await;
    let expected = doc.heads();
    assert_eq!(hub_heads(&hub, doc.patient).await, (expected.clone(), false));
    assert_eq!(count(&hub, "encounters").await, 1);

    // Everything again: duplicates leave the document as it was.
    let client = hub.state.db.get().await.expect("conn");
    let saved = |c: tokio_postgres::Row| c.get::<_, Vec<u8>>(0);
    let query = "SELECT doc FROM documents WHERE patient_id = $1";
    let before = saved(client.query_one(query, &[doc.patient.as_uuid()]).await.expect("doc"));
    push(&hub, &device, outbox(1, doc.patient, &[created, e1, renamed])).await;
    let after = saved(client.query_one(query, &[doc.patient.as_uuid()]).await.expect("doc"));
    assert_eq!(before, after);
    assert_eq!(hub_heads(&hub, doc.patient).await, (expected, false));
    assert_eq!(count(&hub, "changes").await, 3);
    let village: String = client
        .query_one("SELECT village FROM patients WHERE id = $1", &[doc.patient.as_uuid()])
        .await
        .expect("patient")
        .get(0);
    assert_eq!(village, "Siby");
}
