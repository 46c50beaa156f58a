//! Concurrent edits of the same field on two devices open a conflict, which
//! the admin API lists and metrics count; a later single edit closes it.
//! Concurrent additions of different encounters are not conflicts.
//!
//! An admin resolves a conflict by choosing a value: the hub writes it as a
//! change that every site holding the patient pulls, and that leaves the
//! field with that one value on each copy. Refused resolutions store nothing;
//! two admins at once write one change; an edit made before pulling the
//! resolution is a new conflict against the hub's value.

use automerge::{AutoCommit, ScalarValue};
use hub::auth::{CurrentUser, Role};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::edge_doc::{EdgeDoc, hub_doc, outbox, pull, push, values_of};
use crate::support::{TestDevice, TestHub, count, village_edits};

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

/// An admin account that exists (a resolution names its author) and a
/// bearer token for it, issued directly.
async fn real_admin(hub: &TestHub, username: &str) -> (String, uuid::Uuid) {
    let user =
        hub::users::add_user(&hub.state.db, username, Role::Admin, "correct horse battery").await.expect("add user");
    let current = CurrentUser { id: user.id, username: user.username.clone(), role: Role::Admin };
    (hub.state.tokens.issue(&current).expect("issue").0, *user.id.as_uuid())
}

async fn post_resolve(hub: &TestHub, token: Option<&str>, id: &str, body: &Value) -> reqwest::Response {
    let mut req = hub.http.post(hub.url(&format!("/api/v1/conflicts/{id}/resolve"))).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("send")
}

/// What a refused resolution must leave untouched.
#[derive(Debug, PartialEq)]
struct Stored {
    changes: i64,
    doc: Vec<u8>,
    open: usize,
}

async fn stored(hub: &TestHub, admin: &str, patient: santerurale_shared::PatientId) -> Stored {
    Stored {
        changes: count(hub, "changes").await,
        doc: hub_doc(hub, patient).await,
        open: list(hub, admin, "open").await.len(),
    }
}

/// Kati and Siby (two sites) hold one patient and both changed `village`
/// offline: one open conflict. Returns both copies and the conflict.
async fn village_conflict(hub: &TestHub, admin: &str) -> (TestDevice, EdgeDoc, TestDevice, EdgeDoc, Value) {
    let (kati, a, siby, b) = village_edits(hub, admin, Some("+22376123456")).await;
    let open = list(hub, admin, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    (kati, a, siby, b, open[0].clone())
}

#[tokio::test]
async fn an_admin_choice_closes_the_conflict_and_reaches_every_holding_site() {
    let hub = TestHub::start().await;
    let (admin, admin_id) = real_admin(&hub, "amina").await;
    let (kati, mut a, siby, mut b, conflict) = village_conflict(&hub, &admin).await;
    let id = conflict["id"].as_str().expect("id").to_owned();
    let client = hub.state.db.get().await.expect("conn");
    let last_device = |row: tokio_postgres::Row| row.get::<_, uuid::Uuid>(0);
    let before_device = last_device(
        client
            .query_one("SELECT last_device_id FROM patients WHERE id = $1", &[a.patient.as_uuid()])
            .await
            .expect("patient"),
    );

    // A new value, neither of the competing ones: it passes the edge's rules.
    let resp = post_resolve(&hub, Some(&admin), &id, &json!({ "value": "  Dioïla " })).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resolved: Value = resp.json().await.expect("json");
    assert_eq!(resolved["id"], id.as_str());
    assert!(resolved["resolved_at"].is_string());
    assert_eq!(resolved["resolved_by"], "amina");
    assert_eq!(resolved["resolution"]["value"], "Dioïla", "trimmed, as the edge stores it");
    let hub_seq = resolved["resolution"]["hub_seq"].as_u64().expect("hub_seq");

    // Closed, and listed as resolved by the admin.
    assert!(list(&hub, &admin, "open").await.is_empty());
    let done = list(&hub, &admin, "resolved").await;
    assert_eq!((done.len(), &done[0]["resolved_by"]), (1, &json!("amina")));
    metrics_contain(&hub, &["sync_conflicts_open 0", "sync_conflicts_resolved_total 1"]).await;

    // The hub's document holds the one value; the projection shows it and
    // keeps the last edge that wrote the patient.
    let doc = AutoCommit::load(&hub_doc(&hub, a.patient).await).expect("load");
    assert_eq!(values_of(&doc, "village"), [ScalarValue::Str("Dioïla".into())]);
    let row = client
        .query_one("SELECT village, last_device_id FROM patients WHERE id = $1", &[a.patient.as_uuid()])
        .await
        .expect("patient");
    assert_eq!(row.get::<_, String>(0), "Dioïla");
    assert_eq!(row.get::<_, uuid::Uuid>(1), before_device);
    // The log names the admin, and no device or site.
    let row = client
        .query_one(
            "SELECT device_id, site_id, author_user_id FROM changes WHERE hub_seq = $1",
            &[&i64::try_from(hub_seq).expect("seq")],
        )
        .await
        .expect("change");
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(0), None);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(1), None);
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(2), Some(admin_id));

    // Both sites pull it (each also gets the other's edit) and converge.
    for (device, copy) in [(&kati, &mut a), (&siby, &mut b)] {
        let page = pull(&hub, device, 0, 1 << 20).await;
        assert!(page.changes.iter().any(|c| c.hub_seq == hub_seq), "{} gets the resolution", device.id);
        let bytes: Vec<Vec<u8>> = page.changes.into_iter().map(|c| c.change).collect();
        copy.merge(&bytes);
        assert_eq!(copy.values("village"), [ScalarValue::Str("Dioïla".into())]);
    }

    // Resolving again: 409, nothing written.
    let before = stored(&hub, &admin, a.patient).await;
    let resp = post_resolve(&hub, Some(&admin), &id, &json!({ "value": "Siby" })).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "conflict_already_resolved");
    assert_eq!(stored(&hub, &admin, a.patient).await, before);
}

#[tokio::test]
async fn a_competing_encounter_value_is_taken_as_is_and_keeps_the_encounter_provenance() {
    let hub = TestHub::start().await;
    let (admin, _) = real_admin(&hub, "amina").await;
    let (kati, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (siby, _) = TestDevice::enrolled(&hub, &admin, "SIBY").await;
    let (mut a, created) = EdgeDoc::register(kati.id, "Awa", "Traoré", None);
    let (encounter, e) = a.add_encounter("2026-04-01", "paludisme");
    push(&hub, &kati, outbox(1, a.patient, &[created.clone(), e.clone()])).await;
    let mut b = EdgeDoc::on_device(siby.id, a.patient, &[created, e]);
    let sa = a.set_encounter(encounter, "bp_systolic", ScalarValue::Uint(130));
    let sb = b.set_encounter(encounter, "bp_systolic", ScalarValue::Uint(110));
    push(&hub, &kati, outbox(3, a.patient, &[sa])).await;
    push(&hub, &siby, outbox(1, b.patient, &[sb])).await;
    let open = list(&hub, &admin, "open").await;
    let field = format!("encounters.{encounter}.bp_systolic");
    assert_eq!(open.iter().map(|c| c["field"].as_str().expect("field")).collect::<Vec<_>>(), [field.as_str()]);
    let id = open[0]["id"].as_str().expect("id").to_owned();

    // Out of the edge's range, or not below... refused with the field's error.
    let before = stored(&hub, &admin, a.patient).await;
    for (value, code) in [(json!(300), "out_of_range"), (json!(70), "not_below_systolic")] {
        let resp = post_resolve(&hub, Some(&admin), &id, &json!({ "value": value })).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{value}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["code"], "validation_failed");
        let codes: Vec<&str> =
            body["fields"].as_array().expect("fields").iter().filter_map(|f| f["code"].as_str()).collect();
        assert!(codes.contains(&code), "{value}: {body}");
        assert_eq!(stored(&hub, &admin, a.patient).await, before, "{value} stored nothing");
    }

    // Siby's value, spelled as a float: the same number.
    let resp = post_resolve(&hub, Some(&admin), &id, &json!({ "value": 110.0 })).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let doc = AutoCommit::load(&hub_doc(&hub, a.patient).await).expect("load");
    assert_eq!(values_of(&doc, &field), [ScalarValue::Uint(110)]);
    let client = hub.state.db.get().await.expect("conn");
    let row = client
        .query_one("SELECT bp_systolic, device_id FROM encounters WHERE id = $1", &[encounter.as_uuid()])
        .await
        .expect("encounter");
    assert_eq!(row.get::<_, Option<i32>>(0), Some(110));
    assert_eq!(row.get::<_, uuid::Uuid>(1), *kati.id.as_uuid(), "still the device that recorded it");
    for (device, copy) in [(&kati, &mut a), (&siby, &mut b)] {
        let bytes: Vec<Vec<u8>> = pull(&hub, device, 0, 1 << 20).await.changes.into_iter().map(|c| c.change).collect();
        copy.merge(&bytes);
        assert_eq!(copy.values(&field), [ScalarValue::Uint(110)]);
    }
}

#[tokio::test]
async fn refused_resolutions_store_nothing() {
    let hub = TestHub::start().await;
    let (admin, _) = real_admin(&hub, "amina").await;
    let (_, a, _, _, conflict) = village_conflict(&hub, &admin).await;
    let id = conflict["id"].as_str().expect("id").to_owned();
    let before = stored(&hub, &admin, a.patient).await;
    let (admin, id) = (admin.as_str(), id.as_str());
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let cases: [(Option<&str>, &str, Value, StatusCode, &str); 8] = [
        (None, id, json!({ "value": "Kati" }), StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some("not-a-token"), id, json!({ "value": "Kati" }), StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some(admin),
            "0190d5a4-0000-7000-8000-000000000000",
            json!({ "value": "Kati" }),
            StatusCode::NOT_FOUND,
            "conflict_not_found",
        ),
        (Some(admin), "nope", json!({ "value": "Kati" }), StatusCode::NOT_FOUND, "conflict_not_found"),
        (Some(admin), id, json!({ "value": "" }), unprocessable, "validation_failed"),
        (Some(admin), id, json!({ "value": 12 }), unprocessable, "invalid_value"),
        (Some(admin), id, json!({}), unprocessable, "invalid_body"),
        (Some(admin), id, json!({ "value": "x".repeat(101) }), unprocessable, "validation_failed"),
    ];
    for (token, target, body, status, code) in cases {
        let resp = post_resolve(&hub, token, target, &body).await;
        assert_eq!(resp.status(), status, "{target} {body}");
        let got: Value = resp.json().await.expect("a JSON error body");
        assert_eq!(got["code"], code, "{got}");
        assert!(got["message"].is_string());
        assert_eq!(stored(&hub, admin, a.patient).await, before, "{target} {body} stored nothing");
    }
    // A token whose account does not exist cannot author a change.
    let ghost = hub.admin_bearer();
    let resp = post_resolve(&hub, Some(&ghost), id, &json!({ "value": "Kati" })).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(stored(&hub, admin, a.patient).await, before);
    metrics_contain(&hub, &["sync_conflicts_open 1", "sync_conflicts_resolved_total 0"]).await;
}

#[tokio::test]
async fn two_admins_resolving_at_once_write_one_change() {
    let hub = TestHub::start().await;
    let (first, _) = real_admin(&hub, "amina").await;
    let (second, _) = real_admin(&hub, "bakary").await;
    let (_, a, _, _, conflict) = village_conflict(&hub, &first).await;
    let id = conflict["id"].as_str().expect("id");
    let changes = count(&hub, "changes").await;
    let (siby, kita) = (json!({ "value": "Siby" }), json!({ "value": "Kita" }));
    let (one, two) =
        tokio::join!(post_resolve(&hub, Some(&first), id, &siby), post_resolve(&hub, Some(&second), id, &kita));
    let mut statuses = [one.status(), two.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let winner = if one.status() == StatusCode::OK { one } else { two };
    let resolved: Value = winner.json().await.expect("json");
    assert_eq!(count(&hub, "changes").await, changes + 1, "one resolution change");
    let doc = AutoCommit::load(&hub_doc(&hub, a.patient).await).expect("load");
    let chosen = resolved["resolution"]["value"].as_str().expect("value");
    assert_eq!(values_of(&doc, "village"), [ScalarValue::Str(chosen.into())]);
}

#[tokio::test]
async fn an_edit_made_before_pulling_the_resolution_is_a_new_conflict_with_the_hub_value() {
    let hub = TestHub::start().await;
    let (admin, _) = real_admin(&hub, "amina").await;
    let (kati, mut a, _, _, conflict) = village_conflict(&hub, &admin).await;
    let id = conflict["id"].as_str().expect("id");
    let resp = post_resolve(&hub, Some(&admin), id, &json!({ "value": "Dioïla" })).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Kati has not pulled yet and edits the village once more.
    let again = a.set("village", "Kati");
    push(&hub, &kati, outbox(3, a.patient, &[again])).await;
    let open = list(&hub, &admin, "open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_ne!(open[0]["id"].as_str(), Some(id), "a new conflict, the resolved one stays closed");
    let mut values: Vec<(String, Value)> = open[0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| (v["value"].as_str().expect("value").to_owned(), v["device_id"].clone()))
        .collect();
    values.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        values,
        [("Dioïla".to_owned(), Value::Null), ("Kati".to_owned(), json!(kati.id.to_string()))],
        "the hub's value names no device"
    );
}
