//! Pull: a device gets the changes of the patients its site holds, never
//! its own, in pages under its byte budget with cursors that skip nothing;
//! refused pulls store nothing.

use reqwest::StatusCode;
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{PULL_PATH, sign};

use crate::edge_doc::{EdgeDoc, hub_heads, hub_seqs, outbox, post_pull, pull, pull_body, push, sign_pull};
use crate::support::{TestDevice, TestHub, count, enrollment_token, sync_error};

const ALL: u32 = 1 << 20;

#[tokio::test]
async fn sites_get_the_changes_of_the_patients_they_hold() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (a, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (b1, site_b) = TestDevice::enrolled(&hub, &admin, "SIBY").await;

    // Site A: patient P (five changes), with patient Q's interleaved.
    let (mut p, created) = EdgeDoc::register(a.id, "Awa", "Diarra", None);
    let (_, e1) = p.add_encounter("2026-01-02", "paludisme");
    push(&hub, &a, outbox(1, p.patient, &[created.clone(), e1.clone()])).await;
    let (q, q_created) = EdgeDoc::register(a.id, "Fanta", "Coulibaly", None);
    push(&hub, &a, outbox(3, q.patient, std::slice::from_ref(&q_created))).await;
    let more: Vec<Vec<u8>> = (0..3).map(|i| p.add_encounter(&format!("2026-01-1{i}"), "toux").1).collect();
    push(&hub, &a, outbox(4, p.patient, &more)).await;
    let p_seqs = hub_seqs(&hub, p.patient).await;
    assert_eq!(p_seqs.len(), 5);
    let top = 6;

    // B holds none of them: nothing, and its cursor moves past them all.
    let page = pull(&hub, &b1, 0, ALL).await;
    assert_eq!((page.changes.len(), page.next_cursor, page.more), (0, top, false));
    // A sent them all: nothing back.
    let page = pull(&hub, &a, 0, ALL).await;
    assert_eq!((page.changes.len(), page.next_cursor, page.more), (0, top, false));

    // B starts holding P (as a cross-site fetch will record it) and pulls
    // its history one change per page.
    let client = hub.state.db.get().await.expect("conn");
    client
        .execute(
            "INSERT INTO site_patients (site_id, patient_id) VALUES ($1::text::uuid, $2)",
            &[&site_b, p.patient.as_uuid()],
        )
        .await
        .expect("hold");
    let (mut cursor, mut got, mut bytes) = (0, Vec::new(), Vec::new());
    loop {
        let page = pull(&hub, &b1, cursor, 1).await;
        assert!(page.next_cursor >= cursor, "the cursor never goes back");
        assert!(page.changes.len() <= 1, "one change per page under a 1-byte budget");
        for c in &page.changes {
            assert!(c.hub_seq > cursor && c.hub_seq <= page.next_cursor);
            assert_eq!(c.patient_id, p.patient);
            got.push(c.hub_seq);
            bytes.push(c.change.clone());
        }
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
        assert!(!page.changes.is_empty(), "a cut page sends something");
    }
    assert_eq!(got, p_seqs, "every change of P, once, in order");
    assert_eq!(cursor, top);
    // A budget of exactly two changes gives two; a bigger one, all.
    let two = u32::try_from(bytes[0].len() + bytes[1].len()).expect("small");
    let page = pull(&hub, &b1, 0, two).await;
    assert_eq!(page.changes.iter().map(|c| c.hub_seq).collect::<Vec<_>>(), p_seqs[..2]);
    assert_eq!((page.next_cursor, page.more), (p_seqs[1], true));
    let page = pull(&hub, &b1, 0, ALL).await;
    assert_eq!((page.changes.len(), page.more), (5, false));

    // B edits P; the hub applies it with B's provenance; A gets exactly it,
    // B does not get it back, B's second box gets everything.
    let mut on_b = EdgeDoc::on_device(b1.id, p.patient, &bytes);
    let (enc_b, change_b) = on_b.add_encounter("2026-02-01", "angine");
    push(&hub, &b1, outbox(1, p.patient, std::slice::from_ref(&change_b))).await;
    assert_eq!(hub_heads(&hub, p.patient).await, (on_b.heads(), false));
    let row = client
        .query_one("SELECT site_id::text, device_id FROM encounters WHERE id = $1", &[enc_b.as_uuid()])
        .await
        .expect("B's encounter");
    assert_eq!(row.get::<_, String>(0), site_b);
    assert_eq!(&row.get::<_, uuid::Uuid>(1), b1.id.as_uuid());
    let origin: String = client
        .query_one("SELECT site_id::text FROM patients WHERE id = $1", &[p.patient.as_uuid()])
        .await
        .expect("P")
        .get(0);
    assert_ne!(origin, site_b, "P stays registered at A");

    let page = pull(&hub, &a, top, ALL).await;
    assert_eq!(page.changes.iter().map(|c| &c.change).collect::<Vec<_>>(), [&change_b]);
    assert_eq!((page.next_cursor, page.more), (top + 1, false));
    let page = pull(&hub, &b1, top, ALL).await;
    assert_eq!((page.changes.len(), page.next_cursor), (0, top + 1));

    let token = enrollment_token(&hub, &admin, &site_b).await;
    let b2 = TestDevice::new();
    assert_eq!(b2.enroll(&hub, &token).await.status(), StatusCode::CREATED);
    let page = pull(&hub, &b2, 0, ALL).await;
    let mut expected = p_seqs;
    expected.push(top + 1);
    assert_eq!(page.changes.iter().map(|c| c.hub_seq).collect::<Vec<_>>(), expected);

    let contact: bool = client
        .query_one("SELECT last_contact IS NOT NULL FROM devices WHERE id = $1", &[b2.id.as_uuid()])
        .await
        .expect("b2")
        .get(0);
    assert!(contact, "a pull records the device's contact");
}

/// Sends a pull and expects a refusal with nothing stored.
async fn refused(
    hub: &TestHub,
    headers: &santerurale_shared::sync::SignedHeaders,
    body: Vec<u8>,
    status: StatusCode,
    code: &str,
) {
    let contacts = "devices WHERE last_contact IS NOT NULL";
    let before = (count(hub, "sync_nonces").await, count(hub, contacts).await);
    let (got, err) = sync_error(post_pull(hub, headers, body).await).await;
    assert_eq!((got, err.code.as_str()), (status, code), "{}", err.message);
    let after = (count(hub, "sync_nonces").await, count(hub, contacts).await);
    assert_eq!(before, after, "{code}: nothing stored");
}

#[tokio::test]
async fn refused_pulls_store_nothing() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let body = pull_body(&device, 0, ALL);

    let forger = TestDevice::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let forged = sign(&forger.key, device.id, "POST", PULL_PATH, &body, now, rand::random());
    refused(&hub, &forged, body.clone(), StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;
    // Signed for push, sent to pull.
    refused(&hub, &device.sign(&body), body.clone(), StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;
    let stranger = TestDevice::new();
    let strange = pull_body(&stranger, 0, ALL);
    refused(&hub, &sign_pull(&stranger, &strange), strange, StatusCode::UNAUTHORIZED, codes::UNKNOWN_DEVICE).await;

    // A replay of an accepted pull.
    let headers = sign_pull(&device, &body);
    assert_eq!(post_pull(&hub, &headers, body.clone()).await.status(), StatusCode::OK);
    refused(&hub, &headers, body.clone(), StatusCode::CONFLICT, codes::REPLAYED_REQUEST).await;

    let resp = hub
        .http
        .post(hub.url(&format!("/api/v1/devices/{}/revoke", device.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    client_reset_contact(&hub).await;
    refused(&hub, &sign_pull(&device, &body), body, StatusCode::FORBIDDEN, codes::REVOKED_DEVICE).await;

    let metrics = hub.http.get(hub.url("/metrics")).send().await.expect("send").text().await.expect("text");
    for line in ["sync_pull_requests_total{result=\"ok\"} 1", "sync_pull_requests_total{result=\"bad_signature\"} 2"] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Forgets contact times, so a refused pull that set one would show.
async fn client_reset_contact(hub: &TestHub) {
    let client = hub.state.db.get().await.expect("conn");
    client.execute("UPDATE devices SET last_contact = NULL", &[]).await.expect("reset");
}
