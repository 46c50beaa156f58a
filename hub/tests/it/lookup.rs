//! Cross-site lookup and fetch: a site finds another site's patient by
//! exact phone or id, fetches its whole history (changes below its pull
//! cursor included), and from then on pulls the patient's new changes;
//! refused requests store nothing.

use reqwest::StatusCode;
use santerurale_shared::sync::wire::bodies::{
    decode_fetch_response, decode_lookup_response, encode_fetch, encode_lookup,
};
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    FETCH_PATH, FetchRequest, FetchResponse, LOOKUP_PATH, LookupQuery, LookupRequest, LookupResponse, PROTOCOL_VERSION,
    SignedHeaders, sign,
};
use santerurale_shared::{PatientId, Sex};

use crate::edge_doc::{EdgeDoc, hub_seqs, outbox, pull, push};
use crate::support::{TestDevice, TestHub, count, post_sync, sync_error};

const ALL: u32 = 1 << 20;
const PHONE: &str = "+22376123456";

fn lookup_body(device: &TestDevice, query: LookupQuery) -> Vec<u8> {
    encode_lookup(&LookupRequest { protocol: PROTOCOL_VERSION, device_id: device.id, query }).expect("encode")
}

fn fetch_body(device: &TestDevice, patient_id: PatientId, after: u64, max_bytes: u32) -> Vec<u8> {
    encode_fetch(&FetchRequest { protocol: PROTOCOL_VERSION, device_id: device.id, patient_id, after, max_bytes })
        .expect("encode")
}

/// A signed lookup that must succeed.
async fn lookup(hub: &TestHub, device: &TestDevice, query: LookupQuery) -> LookupResponse {
    let body = lookup_body(device, query);
    let resp = post_sync(hub, LOOKUP_PATH, &device.sign_for(LOOKUP_PATH, &body), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    decode_lookup_response(&resp.bytes().await.expect("body"), 1 << 20).expect("a LookupResponse")
}

/// A signed fetch page that must succeed.
async fn fetch(hub: &TestHub, device: &TestDevice, patient: PatientId, after: u64, max_bytes: u32) -> FetchResponse {
    let body = fetch_body(device, patient, after, max_bytes);
    let resp = post_sync(hub, FETCH_PATH, &device.sign_for(FETCH_PATH, &body), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    decode_fetch_response(&resp.bytes().await.expect("body"), 64 << 20).expect("a FetchResponse")
}

async fn holds(hub: &TestHub, site: &str, patient: PatientId) -> bool {
    let client = hub.state.db.get().await.expect("conn");
    client
        .query_opt(
            "SELECT 1 FROM site_patients WHERE site_id = $1::text::uuid AND patient_id = $2",
            &[&site, patient.as_uuid()],
        )
        .await
        .expect("select")
        .is_some()
}

#[tokio::test]
async fn a_site_finds_fetches_and_then_pulls_another_sites_patient() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (a, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (b, site_b) = TestDevice::enrolled(&hub, &admin, "SIBY").await;

    // Site A registers P (with a phone) and records two encounters; Q too.
    let (mut p, created) = EdgeDoc::register(a.id, "Awa", "Diarra", Some(PHONE));
    let (_, e1) = p.add_encounter("2026-01-02", "paludisme");
    let (_, e2) = p.add_encounter("2026-01-09", "toux");
    push(&hub, &a, outbox(1, p.patient, &[created, e1, e2])).await;
    let (q, q_created) = EdgeDoc::register(a.id, "Fanta", "Coulibaly", Some("+22376000000"));
    push(&hub, &a, outbox(4, q.patient, std::slice::from_ref(&q_created))).await;
    let p_seqs = hub_seqs(&hub, p.patient).await;
    assert_eq!(p_seqs.len(), 3);

    // B syncs first: it holds none of them, so its cursor passes them all.
    let page = pull(&hub, &b, 0, ALL).await;
    assert!(page.changes.is_empty());
    let cursor = page.next_cursor;
    assert!(p_seqs.iter().all(|s| *s <= cursor), "P's history is below B's cursor");

    // Lookup by exact phone, and by id: one minimal summary.
    let found = lookup(&hub, &b, LookupQuery::Phone(PHONE.into())).await;
    assert_eq!(found.patients.len(), 1, "{found:?}");
    let s = &found.patients[0];
    assert_eq!((s.patient_id, s.given_name.as_str(), s.family_name.as_str()), (p.patient, "Awa", "Diarra"));
    assert_eq!((s.sex, s.birth_date.to_string().as_str(), s.village.as_str()), (Sex::Female, "1990-03-14", "Kati"));
    assert_eq!((s.site_code.as_str(), s.site_name.as_str(), s.held_by_your_site), ("KATI", "CSCom KATI", false));
    let by_id = lookup(&hub, &b, LookupQuery::Patient(p.patient)).await;
    assert_eq!(by_id, found);
    // Exact only: a prefix of the phone, or an unknown id, finds nobody.
    assert!(lookup(&hub, &b, LookupQuery::Phone("+22376123457".into())).await.patients.is_empty());
    assert!(lookup(&hub, &b, LookupQuery::Patient(PatientId::new())).await.patients.is_empty());
    assert!(!holds(&hub, &site_b, p.patient).await, "a lookup holds nothing");

    // Fetch: the whole history, in log order, although below B's cursor.
    let page = fetch(&hub, &b, p.patient, 0, ALL).await;
    assert_eq!(page.changes.iter().map(|c| c.hub_seq).collect::<Vec<_>>(), p_seqs);
    assert!(page.changes.iter().all(|c| c.patient_id == p.patient));
    assert!(!page.more);
    assert!(holds(&hub, &site_b, p.patient).await);
    assert!(!holds(&hub, &site_b, q.patient).await);
    let history: Vec<Vec<u8>> = page.changes.iter().map(|c| c.change.clone()).collect();

    // Paged under a one-byte budget: one change per page, the same history.
    let (mut after, mut paged) = (0, Vec::new());
    loop {
        let page = fetch(&hub, &b, p.patient, after, 1).await;
        assert_eq!(page.changes.len(), 1, "one change per page");
        after = page.changes[0].hub_seq;
        paged.push(page.changes[0].change.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(paged, history);
    assert!(fetch(&hub, &b, p.patient, after, ALL).await.changes.is_empty());
    assert!(lookup(&hub, &b, LookupQuery::Phone(PHONE.into())).await.patients[0].held_by_your_site);

    // From now on the normal pull serves B P's new changes...
    let (_, e3) = p.add_encounter("2026-02-01", "angine");
    push(&hub, &a, outbox(5, p.patient, std::slice::from_ref(&e3))).await;
    let page = pull(&hub, &b, cursor, ALL).await;
    assert_eq!(page.changes.iter().map(|c| &c.change).collect::<Vec<_>>(), [&e3]);

    // ... and A pulls what B writes to P.
    let mut on_b = EdgeDoc::on_device(b.id, p.patient, &history);
    on_b.merge(std::slice::from_ref(&e3));
    let (_, from_b) = on_b.add_encounter("2026-02-02", "contrôle");
    push(&hub, &b, outbox(1, p.patient, std::slice::from_ref(&from_b))).await;
    let a_cursor = *hub_seqs(&hub, p.patient).await.iter().rev().nth(1).expect("e3's seq");
    let page = pull(&hub, &a, a_cursor, ALL).await;
    assert_eq!(page.changes.iter().map(|c| &c.change).collect::<Vec<_>>(), [&from_b]);
}

/// Sends a request and expects a refusal with nothing stored.
async fn refused(hub: &TestHub, path: &str, headers: &SignedHeaders, body: Vec<u8>, status: StatusCode, code: &str) {
    let contacts = "devices WHERE last_contact IS NOT NULL";
    let tables = ["sync_nonces", "site_patients", contacts];
    let mut before = Vec::new();
    for t in tables {
        before.push(count(hub, t).await);
    }
    let (got, err) = sync_error(post_sync(hub, path, headers, body).await).await;
    assert_eq!((got, err.code.as_str()), (status, code), "{}", err.message);
    let mut after = Vec::new();
    for t in tables {
        after.push(count(hub, t).await);
    }
    assert_eq!(before, after, "{path} {code}: nothing stored");
}

#[tokio::test]
async fn refused_lookups_and_fetches_store_nothing() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (a, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (b, site_b) = TestDevice::enrolled(&hub, &admin, "SIBY").await;
    let (p, created) = EdgeDoc::register(a.id, "Awa", "Diarra", Some(PHONE));
    push(&hub, &a, outbox(1, p.patient, &[created])).await;
    let client = hub.state.db.get().await.expect("conn");
    client.execute("UPDATE devices SET last_contact = NULL", &[]).await.expect("reset");

    // A patient the hub never heard of.
    let unknown = fetch_body(&b, PatientId::new(), 0, ALL);
    let h = b.sign_for(FETCH_PATH, &unknown);
    refused(&hub, FETCH_PATH, &h, unknown, StatusCode::NOT_FOUND, codes::UNKNOWN_PATIENT).await;
    // A phone that is not E.164.
    let bad = lookup_body(&b, LookupQuery::Phone("76 12 34 56".into()));
    let h = b.sign_for(LOOKUP_PATH, &bad);
    refused(&hub, LOOKUP_PATH, &h, bad, StatusCode::BAD_REQUEST, codes::INVALID_QUERY).await;
    // Signed for another path; signed by another key; naming another device.
    let body = fetch_body(&b, p.patient, 0, ALL);
    let h = b.sign_for(LOOKUP_PATH, &body);
    refused(&hub, FETCH_PATH, &h, body.clone(), StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let forged = sign(&a.key, b.id, "POST", FETCH_PATH, &body, now, rand::random());
    refused(&hub, FETCH_PATH, &forged, body.clone(), StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE).await;
    let theirs = fetch_body(&a, p.patient, 0, ALL);
    let h = b.sign_for(FETCH_PATH, &theirs);
    refused(&hub, FETCH_PATH, &h, theirs, StatusCode::FORBIDDEN, hub::sync::DEVICE_MISMATCH).await;
    assert!(!holds(&hub, &site_b, p.patient).await);

    // A replay of an accepted fetch.
    let headers = b.sign_for(FETCH_PATH, &body);
    assert_eq!(post_sync(&hub, FETCH_PATH, &headers, body.clone()).await.status(), StatusCode::OK);
    assert!(holds(&hub, &site_b, p.patient).await);
    client.execute("UPDATE devices SET last_contact = NULL", &[]).await.expect("reset");
    refused(&hub, FETCH_PATH, &headers, body.clone(), StatusCode::CONFLICT, codes::REPLAYED_REQUEST).await;

    // A revoked device (of a third site) can neither look up nor fetch.
    let (c, site_c) = TestDevice::enrolled(&hub, &admin, "SEGOU").await;
    let resp = hub
        .http
        .post(hub.url(&format!("/api/v1/devices/{}/revoke", c.id)))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    client.execute("UPDATE devices SET last_contact = NULL", &[]).await.expect("reset");
    let body = lookup_body(&c, LookupQuery::Patient(p.patient));
    let h = c.sign_for(LOOKUP_PATH, &body);
    refused(&hub, LOOKUP_PATH, &h, body, StatusCode::FORBIDDEN, codes::REVOKED_DEVICE).await;
    let body = fetch_body(&c, p.patient, 0, ALL);
    let h = c.sign_for(FETCH_PATH, &body);
    refused(&hub, FETCH_PATH, &h, body, StatusCode::FORBIDDEN, codes::REVOKED_DEVICE).await;
    assert!(!holds(&hub, &site_c, p.patient).await);
}

/// The key of the log's advisory lock (`hub::sync::apply`): push takes it
/// to assign `hub_seq`; a fetch must take it too.
const LOG_LOCK_KEY: i64 = 0x7379_6e63_6c6f_6721;

/// A change committed while a fetch waits for the log's lock is in that
/// fetch's answer: the fetch reads the log only once it holds the lock, so
/// no change of the patient can slip between its read and the moment the
/// site holds the patient.
#[tokio::test]
async fn a_fetch_reads_the_log_under_the_push_lock() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (a, site_a) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (b, site_b) = TestDevice::enrolled(&hub, &admin, "SIBY").await;
    let (mut p, created) = EdgeDoc::register(a.id, "Awa", "Diarra", Some(PHONE));
    push(&hub, &a, outbox(1, p.patient, &[created])).await;

    // Hold the lock as a push in progress would.
    let mut holder = hub.state.db.get().await.expect("conn");
    let tx = holder.transaction().await.expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK_KEY]).await.expect("lock");
    let fetching = {
        let (hub_url, http) = (hub.url(FETCH_PATH), hub.http.clone());
        let body = fetch_body(&b, p.patient, 0, ALL);
        let headers = b.sign_for(FETCH_PATH, &body);
        tokio::spawn(async move {
            let mut req = http.post(hub_url).header("content-type", santerurale_shared::sync::wire::CONTENT_TYPE);
            for (name, value) in headers.to_pairs() {
                req = req.header(name, value);
            }
            let resp = req.body(body).send().await.expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            decode_fetch_response(&resp.bytes().await.expect("body"), 64 << 20).expect("a FetchResponse")
        })
    };
    // Wait (bounded) until the fetch is queued behind the lock.
    let watcher = hub.state.db.get().await.expect("conn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .expect("pg_locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the fetch never waited for the log's lock");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A change of the patient commits meanwhile, as a push would.
    let (_, late) = p.add_encounter("2026-03-01", "paludisme");
    let hash = automerge::Change::from_bytes(late.clone()).expect("change").hash().0.to_vec();
    tx.execute(
        "INSERT INTO changes (change_hash, patient_id, site_id, device_id, bytes)
         VALUES ($1, $2, $3::text::uuid, $4, $5)",
        &[&hash, p.patient.as_uuid(), &site_a, a.id.as_uuid(), &late],
    )
    .await
    .expect("insert");
    tx.commit().await.expect("commit");

    let page = fetching.await.expect("the fetch task");
    assert_eq!(page.changes.len(), 2, "the change committed before the fetch got the lock is in it");
    assert_eq!(page.changes[1].change, late);
    assert!(holds(&hub, &site_b, p.patient).await);
}

/// A long history comes whole in one default-size page (the edge asks for
/// 256 KiB); prints its size on the wire.
#[tokio::test]
async fn a_long_history_fits_one_page() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (a, _) = TestDevice::enrolled(&hub, &admin, "KATI").await;
    let (b, _) = TestDevice::enrolled(&hub, &admin, "SIBY").await;
    let (mut p, created) = EdgeDoc::register(a.id, "Awa", "Diarra", Some(PHONE));
    let mut changes = vec![created];
    for i in 0..100 {
        changes.push(p.add_encounter(&format!("2025-{:02}-{:02}", 1 + i % 12, 1 + i % 28), "paludisme simple").1);
    }
    push(&hub, &a, outbox(1, p.patient, &changes)).await;

    let body = fetch_body(&b, p.patient, 0, 256 * 1024);
    let started = std::time::Instant::now();
    let resp = post_sync(&hub, FETCH_PATH, &b.sign_for(FETCH_PATH, &body), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let wire = resp.bytes().await.expect("body");
    let elapsed = started.elapsed();
    let page = decode_fetch_response(&wire, 64 << 20).expect("a FetchResponse");
    assert_eq!(page.changes.iter().map(|c| &c.change).collect::<Vec<_>>(), changes.iter().collect::<Vec<_>>());
    assert!(!page.more);
    let raw: usize = changes.iter().map(Vec::len).sum();
    println!(
        "fetch of 1 patient + 100 encounters: {} changes, {raw} change bytes, {} bytes on the wire, {:.1} ms",
        changes.len(),
        wire.len(),
        elapsed.as_secs_f64() * 1000.0
    );
}
