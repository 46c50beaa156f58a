//! Accepted pushes: stored once each with provenance, acknowledged, and
//! idempotent when the edge sends a batch again.

use reqwest::StatusCode;
use santerurale_shared::sync::{PushResponse, decode_push_response, wire::CONTENT_TYPE};

use crate::support::{TestDevice, TestHub, count, patient_changes, post_push};

async fn push_ok(hub: &TestHub, device: &TestDevice, body: Vec<u8>) -> PushResponse {
    let headers = device.sign(&body);
    let resp = post_push(hub, &headers, body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"].to_str().expect("ascii"), CONTENT_TYPE);
    decode_push_response(&resp.bytes().await.expect("body"), 1024).expect("a PushResponse")
}

#[tokio::test]
async fn a_signed_push_is_stored_with_provenance_and_acknowledged() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, site) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let mut batch = patient_changes(&device, 1, 3);
    batch.extend(patient_changes(&device, 4, 2));
    let body = device.push_body(batch.clone(), 12);

    let resp = push_ok(&hub, &device, body.clone()).await;
    assert_eq!(resp, PushResponse { acked_through: 5, applied: 5, duplicates: 0 });

    let client = hub.state.db.get().await.expect("conn");
    let rows = client
        .query("SELECT hub_seq, change_hash, patient_id, site_id, device_id, bytes FROM changes ORDER BY hub_seq", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 5);
    for (row, sent) in rows.iter().zip(&batch) {
        let change = automerge::Change::from_bytes(sent.change.clone()).expect("change");
        assert_eq!(row.get::<_, Vec<u8>>("change_hash"), change.hash().0.to_vec());
        assert_eq!(&row.get::<_, uuid::Uuid>("patient_id"), sent.patient_id.as_uuid());
        assert_eq!(row.get::<_, uuid::Uuid>("site_id").to_string(), site);
        assert_eq!(&row.get::<_, uuid::Uuid>("device_id"), device.id.as_uuid());
        assert_eq!(row.get::<_, Vec<u8>>("bytes"), sent.change);
    }
    let seqs: Vec<i64> = rows.iter().map(|r| r.get("hub_seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let device_row = client
        .query_one(
            "SELECT outbox_depth, last_push_seq, last_contact IS NOT NULL FROM devices WHERE id = $1",
            &[device.id.as_uuid()],
        )
        .await
        .expect("device");
    assert_eq!(device_row.get::<_, Option<i64>>(0), Some(12));
    assert_eq!(device_row.get::<_, i64>(1), 5);
    assert!(device_row.get::<_, bool>(2));

    // The same batch again (its ack was lost): all duplicates, nothing new.
    let again = push_ok(&hub, &device, body).await;
    assert_eq!(again, PushResponse { acked_through: 5, applied: 0, duplicates: 5 });
    assert_eq!(count(&hub, "changes").await, 5);

    // Half old, half new.
    let mut mixed = batch[3..].to_vec();
    mixed.extend(patient_changes(&device, 6, 2));
    let resp = push_ok(&hub, &device, device.push_body(mixed, 0)).await;
    assert_eq!(resp, PushResponse { acked_through: 7, applied: 2, duplicates: 2 });
    assert_eq!(count(&hub, "changes").await, 7);

    // Nothing pending: the ack is what was stored before.
    let resp = push_ok(&hub, &device, device.push_body(Vec::new(), 0)).await;
    assert_eq!(resp, PushResponse { acked_through: 7, applied: 0, duplicates: 0 });

    let metrics = hub.http.get(hub.url("/metrics")).send().await.expect("send").text().await.expect("text");
    for line in [
        "sync_push_requests_total{result=\"ok\"} 4",
        "sync_changes_applied_total 7",
        "sync_pending_operations{site=\"KATI\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("sync_last_contact_timestamp_seconds{site=\"KATI\"} 1"));
    assert!(!metrics.contains(&device.id.to_string()));
}

#[tokio::test]
async fn concurrent_pushes_store_each_change_once() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let body = device.push_body(patient_changes(&device, 1, 20), 0);

    // The same batch, signed anew four times (a retry racing the original),
    // and one request sent twice at once (a replay racing it).
    let replayed = device.sign(&body);
    let mut requests: Vec<_> = (0..4).map(|_| device.sign(&body)).collect();
    requests.push(replayed.clone());
    requests.push(replayed);
    let mut tasks = tokio::task::JoinSet::new();
    for headers in requests {
        let mut req = hub.http.post(hub.url(santerurale_shared::sync::PUSH_PATH));
        for (name, value) in headers.to_pairs() {
            req = req.header(name, value);
        }
        let req = req.body(body.clone());
        tasks.spawn(async move {
            let resp = req.send().await.expect("send");
            let status = resp.status();
            let bytes = resp.bytes().await.expect("body");
            (status, bytes)
        });
    }
    let mut applied = 0;
    let mut statuses = Vec::new();
    for (status, bytes) in tasks.join_all().await {
        statuses.push(status);
        if status == StatusCode::OK {
            let resp = decode_push_response(&bytes, 1024).expect("a PushResponse");
            assert_eq!(resp.acked_through, 20);
            assert_eq!(resp.applied + resp.duplicates, 20);
            applied += resp.applied;
        }
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::OK, StatusCode::OK, StatusCode::OK, StatusCode::CONFLICT]
    );
    assert_eq!(applied, 20);
    assert_eq!(count(&hub, "changes").await, 20);
}
