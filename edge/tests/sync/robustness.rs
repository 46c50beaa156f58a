//! Sync against a hostile link and a strict hub: batches over the hub's body
//! limit, a change the hub refuses for good, and a hub that comes back after
//! an outage while the scheduler backs off.

use super::*;

/// `n` encounters on one new patient, each with `notes_chars` of notes that
/// do not compress much: `n + 1` large outbox changes.
async fn record_big(edge: &Edge, n: usize, notes_chars: usize) {
    edge.record(1).await;
    let patient = edge.changes().await.last().expect("a patient").0;
    for _ in 0..n {
        let notes: String = (0..notes_chars)
            .map(|_| {
                char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[rand::random_range(0..62)])
            })
            .collect();
        let draft = santerurale_shared::EncounterDraft {
            kind: Some("consultation".into()),
            complaint: Some("fièvre".into()),
            diagnosis: Some("paludisme".into()),
            notes: Some(notes),
            ..Default::default()
        };
        edge.state.store.write(move |w| w.add_encounter(patient, &draft, "b")).await.expect("encounter");
    }
}

async fn meta(edge: &Edge, key: &'static str) -> Option<String> {
    edge.state.store.read(move |c| edge::store::get_meta(c, key)).await.expect("meta")
}

/// Every outbox entry reached the hub exactly once: refused bodies stored
/// nothing, and no batch went twice.
fn each_once(hub: &FakeHub, outbox: &[(u64, String, bool)]) {
    let guard = lock(hub);
    for (seq, hash, acked) in outbox {
        assert!(acked, "entry {seq} is marked sent");
        assert_eq!(guard.received.get(hash), Some(&1), "entry {seq} reached the hub once");
    }
    let mut stored = guard.stored_seqs.clone();
    stored.sort_unstable();
    assert_eq!(stored, outbox.iter().map(|e| e.0).collect::<Vec<_>>(), "in order, none missing");
}

#[tokio::test]
async fn batches_over_the_hub_body_limit_are_split_until_they_fit() {
    // The hub refuses bodies over 48 KiB the way axum does; the edge's first
    // batch is about three times that once compressed.
    let hub = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = serve_hub(listener, hub.clone(), 48 * 1024);
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    record_big(&edge, 40, 3_500).await;

    let report = edge::sync::run_once(&edge.state).await.expect("every change gets through");
    let outbox = edge.outbox().await;
    assert_eq!(report.pushed, 41);
    assert!(report.splits > 0, "{report:?}");
    assert!(report.batches >= 3, "{report:?}");
    each_once(&hub, &outbox);
    let sizes = lock(&hub).batches.clone();
    assert!(sizes.iter().all(|&n| n < 41), "only smaller batches fit: {sizes:?}");

    // What was learnt is kept for the next run: it starts under the limit.
    let learnt = meta(&edge, edge::sync::meta_keys::PUSH_LIMITS).await.expect("limits saved");
    let learnt = santerurale_shared::sync::push::Learnt::from_text(&learnt).expect("readable");
    assert!(learnt.current.max_bytes < PushConfig::default().ceiling.max_bytes, "{learnt:?}");
    let status = edge::sync::details(&edge.state).await.expect("details");
    assert_eq!(status.last_run.map(|r| r.pushed), Some(41));
    assert_eq!(status.last_error_retryable, None);
}

#[tokio::test]
async fn runs_cut_off_mid_request_shrink_their_batches_from_run_to_run() {
    // A hub whose 413 never reaches the edge: the connection is cut instead,
    // which looks like a failed link. Each run halves a few times only, so
    // the first fails; the next ones start from what it learnt.
    let (url, hub) = start_hub().await;
    lock(&hub).cut_over = Some(16 * 1024);
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    record_big(&edge, 120, 3_500).await;
    let config = PushConfig {
        ceiling: BatchPolicy { max_changes: 2_000, max_bytes: 8 << 20 },
        floor: BatchPolicy { max_changes: 1, max_bytes: 1 },
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };
    let mut failed = 0;
    let mut splits = 0;
    loop {
        assert!(failed < 10, "still failing after {failed} runs");
        match edge::sync::push(&edge.state.store, edge.data_dir(), config).await {
            Ok(report) => {
                splits += report.splits;
                break;
            }
            Err(e) => {
                assert!(e.is_retryable() && e.code() == "hub_unreachable", "{e:?}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the first run cannot get through at full size");
    assert!(splits > 0, "the run that got through split cut-off batches too");
    each_once(&hub, &edge.outbox().await);
}

#[tokio::test]
async fn a_change_the_hub_refuses_stops_the_push_at_it_and_is_kept() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(10).await;
    lock(&hub).refuse_seq = Some(6);

    for _ in 0..2 {
        let e = edge.push(100).await.expect_err("refused");
        assert!(matches!(e, SyncError::ChangeRefused { seq: 6, .. }), "{e:?}");
        assert!(!e.is_retryable());
        assert_eq!(e.code(), "change_refused");
        let outbox = edge.outbox().await;
        assert_eq!(outbox.len(), 10, "nothing deleted");
        let acked: Vec<u64> = outbox.iter().filter(|e| e.2).map(|e| e.0).collect();
        assert_eq!(acked, vec![1, 2, 3, 4, 5], "everything before the refused change went through");
        assert_eq!(lock(&hub).stored_seqs, vec![1, 2, 3, 4, 5], "nothing after it either");
    }
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert_eq!(status.last_error_code.as_deref(), Some("change_refused"));
    assert!(status.last_error.as_deref().is_some_and(|m| m.contains("outbox entry 6")), "{status:?}");
    let details = edge::sync::details(&edge.state).await.expect("details");
    assert_eq!(details.last_error_retryable, Some(false));
    assert_eq!(details.last_run.map(|r| r.pushed), Some(0), "the second run had nothing before it to send");

    // Once the hub takes it (fixed there), the rest follows.
    lock(&hub).refuse_seq = None;
    assert_eq!(edge.push(100).await.expect("push").pushed, 5);
    each_once(&hub, &edge.outbox().await);
}

#[tokio::test]
async fn the_scheduler_syncs_as_soon_as_the_hub_answers_again() {
    // Enrolled with a hub on a port where nothing listens yet.
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    let later = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = later.local_addr().expect("addr");
    drop(later);
    let down = format!("http://{addr}");
    edge.state
        .store
        .write(move |w| edge::store::set_meta(w.conn(), edge::sync::meta_keys::HUB_URL, &down))
        .await
        .expect("meta");
    edge.record(3).await;

    // The first run fails at once; the backoff after it is an hour, so only
    // the probe can bring the changes over within the test's deadline.
    let schedule = Schedule {
        interval: Duration::from_millis(20),
        base_delay: Duration::from_secs(3600),
        max_delay: Duration::from_secs(3600),
        probe_every: Duration::from_millis(100),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = edge::sync::scheduler::spawn(edge.state.clone(), schedule, async {
        let _ = stopped.await;
    });
    let failed = poll_until(|| async {
        edge::sync_status(&edge.state).await.expect("status").last_error_code.as_deref() == Some("hub_unreachable")
    })
    .await;
    assert!(failed, "the first run fails: nothing listens");
    let details = edge::sync::details(&edge.state).await.expect("details");
    assert_eq!(details.last_error_retryable, Some(true));
    let next = details.next_attempt_at.expect("a retry is planned");
    let next = time::OffsetDateTime::parse(&next, &time::format_description::well_known::Rfc3339).expect("rfc3339");
    assert!(next > time::OffsetDateTime::now_utc() + time::Duration::minutes(20), "backing off: {next}");

    // The hub comes back on the same address.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the same port again");
    serve_hub(listener, hub.clone(), 32 << 20);
    FakeHub::reach(&hub.stored, 3, "changes stored once the hub is back").await;
    let synced = poll_until(|| async {
        let s = edge::sync_status(&edge.state).await.expect("status");
        s.last_error.is_none() && s.last_success_at.is_some() && s.outbox_depth == 0
    })
    .await;
    assert!(synced, "the status shows the success");
    let _ = stop.send(());
    tokio::time::timeout(DEADLINE, task).await.expect("the scheduler stops").expect("no panic");
}

/// Polls `check` until it holds or [`DEADLINE`] passes (the edge's tests do
/// not depend on the e2e crate's `poll_until`).
async fn poll_until<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn the_sync_page_tells_a_failure_that_clears_by_itself_from_one_that_needs_someone() {
    use super::web::{add_accounts, api_token, serve, signed_in, sync_now};
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    add_accounts(&edge, &[("admin", edge::store::Role::Admin)]).await;
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(3).await;
    let (base, _stop) = serve(&edge).await;
    let admin = signed_in(&base, "admin").await;
    // A scheduler that would run again in an hour: the page says when.
    let (stop_scheduler, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = edge::sync::scheduler::spawn(edge.state.clone(), Schedule::every(Duration::from_secs(3600)), async {
        let _ = stopped.await;
    });
    assert!(poll_until(|| async { edge.state.sync.next_attempt().is_some() }).await, "the scheduler says when");

    // Nothing synced yet.
    let html = admin.get(format!("{base}/sync")).send().await.expect("GET").text().await.expect("body");
    assert!(html.contains("id=\"last-run\">Jamais"), "{html}");
    assert!(html.contains("id=\"next-sync\""), "{html}");

    // The hub refuses the second change for good: action needed.
    lock(&hub).refuse_seq = Some(2);
    let (status, html) = sync_now(&admin, &base).await;
    assert_eq!(status, 502);
    assert!(html.contains("data-class=\"permanent\"><strong>Action nécessaire"), "{html}");
    assert!(html.contains("refuse une des modifications") && html.contains("outbox entry 2"), "{html}");
    assert!(html.contains("id=\"last-run-sent\">1</span>"), "the change before it went: {html}");

    // The hub is gone: retried automatically, and the page says when.
    lock(&hub).refuse_seq = None;
    let gone = "http://127.0.0.1:9".to_owned();
    edge.state
        .store
        .write(move |w| edge::store::set_meta(w.conn(), edge::sync::meta_keys::HUB_URL, &gone))
        .await
        .expect("meta");
    let (status, html) = sync_now(&admin, &base).await;
    assert_eq!(status, 502);
    assert!(html.contains("data-class=\"retryable\">Nouvel essai automatique à"), "{html}");
    assert!(html.contains("injoignable"), "{html}");
    // The API shows the same: its code, its class, when the retry comes.
    let token = api_token(&base, "admin").await;
    let status: Value = reqwest::Client::new()
        .get(format!("{base}/api/v1/sync/status"))
        .bearer_auth(token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["last_error_code"], "hub_unreachable", "{status}");
    assert_eq!(status["last_error_retryable"], true, "{status}");
    assert!(status["next_attempt_at"].is_string(), "{status}");
    assert_eq!(status["last_run"]["pushed"], 0, "{status}");
    assert_eq!(status["outbox_depth"], 2, "{status}");

    // Back: both halves counted.
    edge.state
        .store
        .write(move |w| edge::store::set_meta(w.conn(), edge::sync::meta_keys::HUB_URL, &url))
        .await
        .expect("meta");
    let (status, html) = sync_now(&admin, &base).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("id=\"last-run-sent\">2</span>") && html.contains("id=\"last-run-received\">0</span>"));
    assert!(!html.contains("id=\"error-class\""), "a success clears the error");
    let api = edge::sync::details(&edge.state).await.expect("details");
    assert_eq!(api.last_run.map(|r| (r.pushed, r.pulled)), Some((2, 0)));
    let _ = stop_scheduler.send(());
    tokio::time::timeout(DEADLINE, task).await.expect("the scheduler stops").expect("no panic");
}
