//! Pulling other clinics' changes from the fake hub's scripted log.

use super::*;

/// Puts `changes` in the hub's log at `hub_seq` `step`, `2 * step`, ...,
/// served `page_size` per page.
fn script(hub: &FakeHub, changes: Vec<(PatientId, Vec<u8>)>, step: u64, page_size: usize) {
    let mut hub = lock(hub);
    hub.log = (1..)
        .zip(changes)
        .map(|(i, (patient_id, change))| HubChange { hub_seq: i * step, patient_id, change })
        .collect();
    hub.page_size = page_size;
}

/// Another clinic of the same site, with `n` patients and an encounter on
/// the first: its outbox is what the hub relays.
async fn other_clinic(url: &str, n: usize) -> (Edge, Vec<(PatientId, Vec<u8>)>) {
    let other = Edge::new();
    other.enroll(url, TOKEN).await.expect("enroll the other clinic");
    other.record(n).await;
    let first = other.changes().await[0].0;
    let draft = santerurale_shared::EncounterDraft {
        kind: Some("consultation".into()),
        complaint: Some("fièvre".into()),
        diagnosis: Some("paludisme".into()),
        ..Default::default()
    };
    other.state.store.write(move |w| w.add_encounter(first, &draft, "b")).await.expect("encounter");
    let changes = other.changes().await;
    (other, changes)
}

async fn patients(edge: &Edge) -> u64 {
    edge.state.store.counts().await.expect("counts").patients
}

#[tokio::test]
async fn changes_from_another_clinic_arrive_in_the_projection() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    let site = edge.enroll(&url, TOKEN).await.expect("enroll").site_id;
    let (_other, changes) = other_clinic(&url, 5).await;
    let first = changes[0].0;
    script(&hub, changes, 10, 2);

    let report = edge::sync::run_once(&edge.state).await.expect("sync");
    assert_eq!((report.pulled, report.pulled_new, report.pull_pages), (6, 6, 3));
    assert_eq!(edge.cursor().await, 60);
    assert_eq!(lock(&hub).pull_cursors, [0, 20, 40]);
    let found = edge.state.store.search("awa3 diarra".into(), 10).await.expect("search");
    assert_eq!(found.len(), 1);
    let patient = edge.state.store.get_patient(first).await.expect("read").expect("pulled");
    assert_eq!(patient.site_id, Some(site), "the site comes from the document");
    assert_eq!(patient.encounters.map(|e| e.len()), Some(1));
    assert_eq!(edge.state.store.outbox_depth().await.expect("depth"), 0, "pulled changes are not pushed back");
    assert_eq!(edge.outbox().await.len(), 0);

    // Nothing new: one request from the stored cursor, nothing applied.
    let again = edge::sync::run_once(&edge.state).await.expect("sync");
    assert_eq!((again.pulled, again.pull_pages), (0, 1));
    assert_eq!(lock(&hub).pull_cursors.last(), Some(&60));
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert!(status.last_success_at.is_some() && status.last_error.is_none());
}

#[tokio::test]
async fn a_pull_cut_between_pages_resumes_from_the_last_applied_page() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    let (_other, changes) = other_clinic(&url, 5).await;
    script(&hub, changes, 1, 2);

    // The second page is cut mid-response: the first stays applied.
    lock(&hub).pull_faults = [None, Some(PullFault::DropMidResponse)].into();
    let err = edge::sync::run_once(&edge.state).await.expect_err("cut");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.code(), "hub_unreachable", "{err:?}");
    assert_eq!(edge.cursor().await, 2);
    assert_eq!(patients(&edge).await, 2);
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert!(status.last_error.is_some() && status.last_error_code.is_some());

    // Then the hub fails on the third page.
    lock(&hub).pull_faults = [None, Some(PullFault::ServerError)].into();
    let err = edge::sync::run_once(&edge.state).await.expect_err("500");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(edge.cursor().await, 4);
    assert_eq!(patients(&edge).await, 4);

    let report = edge::sync::run_once(&edge.state).await.expect("sync");
    assert_eq!((report.pulled, report.pull_pages), (2, 1), "only the page not applied yet");
    assert_eq!(edge.cursor().await, 6);
    assert_eq!(lock(&hub).pull_cursors, [0, 2, 2, 4, 4], "each run starts at the last applied page");
    assert_eq!(patients(&edge).await, 5);
    assert_eq!(edge.stored_changes().await, 6, "every change kept once");
    assert!(edge::sync_status(&edge.state).await.expect("status").last_error.is_none());

    // A page applied again (a crash before the cursor was stored) keeps nothing twice.
    edge.state
        .store
        .write(|w| edge::store::set_meta(w.conn(), edge::sync::meta_keys::PULL_CURSOR, "0"))
        .await
        .expect("rewind");
    let report = edge::sync::run_once(&edge.state).await.expect("sync");
    assert_eq!((report.pulled, report.pulled_new), (6, 0));
    assert_eq!(edge.stored_changes().await, 6);
    assert_eq!(patients(&edge).await, 5);
}

#[tokio::test]
async fn a_page_that_does_not_apply_is_refused_whole() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    let (_other, changes) = other_clinic(&url, 4).await;
    let good = changes[2].1.clone();
    script(&hub, changes, 1, 2);
    lock(&hub).log[2].change = b"garbage, not an Automerge change".to_vec();

    let err = edge::sync::run_once(&edge.state).await.expect_err("refused");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(err.code(), "invalid_remote_page");
    assert_eq!(edge.cursor().await, 2, "the cursor stays before the bad page");
    assert_eq!(patients(&edge).await, 2, "the good change of the bad page is not applied either");
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert_eq!(status.last_error_code.as_deref(), Some("invalid_remote_page"));

    // Once the hub serves the page right, the pull goes on from there.
    lock(&hub).log[2].change = good;
    let report = edge::sync::run_once(&edge.state).await.expect("sync");
    assert_eq!((report.pulled, report.pull_pages), (3, 2));
    assert_eq!(edge.cursor().await, 5);
    assert_eq!(patients(&edge).await, 4);
}
