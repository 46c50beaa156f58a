//! Refused pushes: each gets its 4xx and code, and stores nothing (no
//! change, no nonce, no contact time).

use reqwest::StatusCode;
use santerurale_shared::sync::signing::DEFAULT_MAX_SKEW_SECS;
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{OutboxChange, PUSH_PATH, SignedHeaders, sign};

use crate::support::{TestDevice, TestHub, count, patient_changes, post_push, sync_error};

/// A hub with one enrolled device that has pushed one change already.
async fn setup() -> (TestHub, TestDevice, String) {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (device, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let body = device.push_body(patient_changes(&device, 1, 1), 0);
    let resp = post_push(&hub, &device.sign(&body), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    (hub, device, admin)
}

/// Sends `body` with `headers`, expects `status` and `code`, and checks that
/// nothing was stored.
async fn refused(hub: &TestHub, headers: &SignedHeaders, body: Vec<u8>, status: StatusCode, code: &str) {
    let before = (count(hub, "changes").await, count(hub, "sync_nonces").await);
    let (got, err) = sync_error(post_push(hub, headers, body).await).await;
    assert_eq!((got, err.code.as_str()), (status, code), "{}", err.message);
    assert!(!err.retryable, "{code} is not retryable");
    let after = (count(hub, "changes").await, count(hub, "sync_nonces").await);
    assert_eq!(before, after, "{code}: nothing stored");
}

fn signed_at(device: &TestDevice, body: &[u8], timestamp: i64) -> SignedHeaders {
    sign(&device.key, device.id, "POST", PUSH_PATH, body, timestamp, rand::random())
}

#[tokio::test]
async fn forged_tampered_and_stale_requests() {
    let (hub, device, _) = setup().await;
    let body = device.push_body(patient_changes(&device, 2, 2), 0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let skew = i64::try_from(DEFAULT_MAX_SKEW_SECS).expect("small");

    // Signed by another key, under this device's id.
    let forger = TestDevice::new();
    let forged = sign(&forger.key, device.id, "POST", PUSH_PATH, &body, now, rand::random());
    refused(&hub, &forged, body.clone(), StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;

    // One byte of the body changed after signing.
    let headers = device.sign(&body);
    let mut tampered = body.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    refused(&hub, &headers, tampered, StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;

    // Signed for another path.
    let other_path = sign(&device.key, device.id, "POST", "/api/v1/sync/pull", &body, now, rand::random());
    refused(&hub, &other_path, body.clone(), StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;

    let stale = signed_at(&device, &body, now - skew - 60);
    refused(&hub, &stale, body.clone(), StatusCode::UNAUTHORIZED, codes::STALE_TIMESTAMP).await;
    let future = signed_at(&device, &body, now + skew + 60);
    refused(&hub, &future, body.clone(), StatusCode::UNAUTHORIZED, codes::FUTURE_TIMESTAMP).await;

    // No signature headers at all.
    let before = count(&hub, "changes").await;
    let resp = hub.http.post(hub.url(PUSH_PATH)).body(body.clone()).send().await.expect("send");
    let (status, err) = sync_error(resp).await;
    assert_eq!((status, err.code.as_str()), (StatusCode::UNAUTHORIZED, codes::MISSING_HEADER));
    assert_eq!(count(&hub, "changes").await, before);

    // After all that, the honest request still goes through.
    let resp = post_push(&hub, &device.sign(&body), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(count(&hub, "changes").await, 3);
}

#[tokio::test]
async fn a_replayed_request_is_refused_even_when_new_to_the_log() {
    let (hub, device, _) = setup().await;
    let body = device.push_body(patient_changes(&device, 2, 1), 0);
    let headers = device.sign(&body);
    assert_eq!(post_push(&hub, &headers, body.clone()).await.status(), StatusCode::OK);
    refused(&hub, &headers, body, StatusCode::CONFLICT, codes::REPLAYED_REQUEST).await;

    // Same nonce, new body, fresh signature: still the nonce is spent.
    let other = device.push_body(patient_changes(&device, 3, 1), 0);
    let reused = sign(&device.key, device.id, "POST", PUSH_PATH, &other, headers.timestamp, headers.nonce);
    refused(&hub, &reused, other, StatusCode::CONFLICT, codes::REPLAYED_REQUEST).await;
}

#[tokio::test]
async fn unknown_and_revoked_devices() {
    let (hub, device, admin) = setup().await;
    let stranger = TestDevice::new();
    let body = stranger.push_body(patient_changes(&stranger, 1, 1), 0);
    refused(&hub, &stranger.sign(&body), body, StatusCode::UNAUTHORIZED, codes::UNKNOWN_DEVICE).await;

    let resp = hub
        .http
        .post(hub.url(&format!("/api/v1/devices/{}/revoke", device.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = device.push_body(patient_changes(&device, 2, 1), 0);
    refused(&hub, &device.sign(&body), body, StatusCode::FORBIDDEN, codes::REVOKED_DEVICE).await;
}

#[tokio::test]
async fn a_body_naming_another_device() {
    let (hub, device, admin) = setup().await;
    let (other, _) = TestDevice::enrolled(&hub, &admin, "BKO").await;
    // The other device's request, signed by this one.
    let body = other.push_body(patient_changes(&other, 1, 1), 0);
    refused(&hub, &device.sign(&body), body, StatusCode::FORBIDDEN, hub::sync::DEVICE_MISMATCH).await;
}

#[tokio::test]
async fn garbage_changes_refuse_the_whole_batch() {
    let (hub, device, _) = setup().await;
    let mut batch = patient_changes(&device, 2, 2);
    let patient = batch[0].patient_id;
    batch.push(OutboxChange { seq: 4, patient_id: patient, change: b"not an automerge change".to_vec() });
    let body = device.push_body(batch.clone(), 0);
    refused(&hub, &device.sign(&body), body.clone(), StatusCode::UNPROCESSABLE_ENTITY, codes::INVALID_CHANGE).await;
    // The body names the change, so the edge can show which one is stuck.
    let (_, err) = sync_error(post_push(&hub, &device.sign(&body), body).await).await;
    assert_eq!(err.seq, Some(4), "{err:?}");

    // A real change with one byte flipped fails its checksum.
    let mut corrupt = batch[..2].to_vec();
    let mid = corrupt[1].change.len() / 2;
    corrupt[1].change[mid] ^= 0x55;
    let body = device.push_body(corrupt, 0);
    refused(&hub, &device.sign(&body), body, StatusCode::UNPROCESSABLE_ENTITY, codes::INVALID_CHANGE).await;

    // Not ascending.
    let mut swapped = batch[..2].to_vec();
    swapped.swap(0, 1);
    let body = device.push_body(swapped, 0);
    refused(&hub, &device.sign(&body), body, StatusCode::UNPROCESSABLE_ENTITY, codes::OUT_OF_ORDER).await;

    // Not a push request at all.
    let body = b"\x28\xb5\x2f\xfd garbage".to_vec();
    refused(&hub, &device.sign(&body), body, StatusCode::BAD_REQUEST, codes::MALFORMED_BODY).await;
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let (hub, device, _) = setup().await;
    let limit = hub.state.config.sync_max_body_bytes;

    // Too large as sent (random bytes do not compress).
    let body: Vec<u8> = (0..=limit).map(|_| rand::random::<u8>()).collect();
    refused(&hub, &device.sign(&body), body, StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE).await;

    // Small as sent, but it inflates past the limit (a zip bomb).
    let patient = santerurale_shared::PatientId::new();
    let bomb =
        OutboxChange { seq: 2, patient_id: patient, change: vec![0; limit * hub::sync::push::INFLATE_FACTOR + 1] };
    let body = device.push_body(vec![bomb], 0);
    assert!(body.len() < limit);
    refused(&hub, &device.sign(&body), body, StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE).await;
}

/// Like [`refused`] for a change the hub decodes but cannot take: 422
/// `change_refused` naming `seq`, nothing stored, and the same again when
/// the edge retries (it is permanent).
async fn change_refused(hub: &TestHub, device: &TestDevice, batch: Vec<OutboxChange>, seq: u64) {
    for _ in 0..2 {
        let before = (count(hub, "changes").await, count(hub, "documents").await, count(hub, "sync_nonces").await);
        let body = device.push_body(batch.clone(), 0);
        let (status, err) = sync_error(post_push(hub, &device.sign(&body), body).await).await;
        assert_eq!((status, err.code.as_str()), (StatusCode::UNPROCESSABLE_ENTITY, codes::CHANGE_REFUSED), "{err:?}");
        assert_eq!(err.seq, Some(seq), "{}", err.message);
        assert!(!err.retryable);
        assert!(err.message.contains(&format!("seq {seq}")), "{}", err.message);
        let after = (count(hub, "changes").await, count(hub, "documents").await, count(hub, "sync_nonces").await);
        assert_eq!(before, after, "nothing of the batch is stored");
    }
}

#[tokio::test]
async fn a_change_naming_another_patient_is_refused_with_its_seq() {
    let (hub, device, _) = setup().await;
    let mut batch = patient_changes(&device, 2, 2);
    let patient = batch[0].patient_id;
    // The first change of another patient's document, sent as this one's.
    let mut stray = patient_changes(&device, 4, 1);
    stray[0].patient_id = patient;
    batch.extend(stray);
    change_refused(&hub, &device, batch.clone(), 4).await;

    // Without the stray change the same batch goes through.
    let body = device.push_body(batch[..2].to_vec(), 0);
    assert_eq!(post_push(&hub, &device.sign(&body), body).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_change_that_does_not_apply_is_refused_with_its_seq() {
    use automerge::transaction::Transactable as _;
    let (hub, device, _) = setup().await;
    // Two different changes with the same actor and seq on one document:
    // Automerge refuses the second (a box restored from an old backup that
    // reused its actor would make such a pair).
    let patient = santerurale_shared::PatientId::new();
    let actor = automerge::ActorId::from(device.id.as_uuid().as_bytes().as_slice());
    let mut doc = automerge::AutoCommit::new().with_actor(actor.clone());
    doc.put(automerge::ROOT, "id", patient.to_string()).expect("put");
    doc.commit();
    let first = doc.get_last_local_change().expect("change").raw_bytes().to_vec();
    let mut twin = doc.fork().with_actor(actor);
    doc.put(automerge::ROOT, "visits", 1).expect("put");
    doc.commit();
    let second = doc.get_last_local_change().expect("change").raw_bytes().to_vec();
    twin.put(automerge::ROOT, "visits", 2).expect("put");
    twin.commit();
    let clash = twin.get_last_local_change().expect("change").raw_bytes().to_vec();
    assert_ne!(second, clash);

    let change = |seq, change| OutboxChange { seq, patient_id: patient, change };
    let body = device.push_body(vec![change(2, first), change(3, second)], 0);
    assert_eq!(post_push(&hub, &device.sign(&body), body).await.status(), StatusCode::OK);
    let mut batch = patient_changes(&device, 4, 1);
    batch.push(change(5, clash));
    change_refused(&hub, &device, batch, 5).await;
}

/// An edge sending a batch over the limit hears the 413 at once, from the
/// declared length, rather than after uploading the whole body over 2G:
/// the hub answers before any of the body arrives.
#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (hub, device, _) = setup().await;
    let limit = hub.state.config.sync_max_body_bytes;
    let addr = hub.url("").trim_start_matches("http://").to_owned();
    let mut head = format!(
        "POST {PUSH_PATH} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
        santerurale_shared::sync::wire::CONTENT_TYPE,
        limit + 1
    );
    for (name, value) in device.sign(b"the body that never comes").to_pairs() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("send the head only");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        // Up to the end of the JSON body (the hub closes or keeps the
        // connection: stop at the closing brace either way).
        while !answer.ends_with(b"}") {
            let n = conn.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "an answer without the body: {}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
    let err: santerurale_shared::sync::ErrorBody = serde_json::from_str(body).expect("an ErrorBody");
    assert_eq!((err.code.as_str(), err.retryable), (codes::BODY_TOO_LARGE, false));
    assert_eq!(count(&hub, "sync_nonces").await, 1, "only setup's push");
}
