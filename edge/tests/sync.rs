//! Enrollment, push and pull against a fake hub: a test double of the hub's
//! contract (`POST /api/v1/devices/enroll`, `POST /api/v1/sync/push`,
//! `POST /api/v1/sync/pull`) served
//! in-process on a loopback port, ready once its listener is bound. It
//! checks every signature with `shared::sync::verify`, decodes each push,
//! counts the changes it receives by Automerge hash, and fails on command.
//! It also counts pushes in flight (two at once would mean two sync runs
//! overlapped) and can hold pushes at a gate, so tests of the background
//! scheduler wait on its counters rather than on the clock.
//! Pulls are served from a scripted log of [`HubChange`]s, a few per page,
//! and can fail or be cut mid-response on command.
//! The end-to-end test against the real hub belongs in the top-level `tests/`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge::AppState;
use edge::sync::scheduler::Schedule;
use edge::sync::{EnrollError, EnrollOptions, SyncError};
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    BatchPolicy, ErrorBody, HubChange, PULL_PATH, PUSH_PATH, PullResponse, PushConfig, PushResponse, SignedHeaders,
    VerifyingKey, decode_pull, decode_push, encode_pull_response, encode_push_response, verify,
};
use santerurale_shared::{DeviceId, PatientDraft, PatientId, SiteId};
use serde_json::{Value, json};

const TOKEN: &str = "good-token";
const USED_TOKEN: &str = "used-token";

/// What the fake hub does with the next push, before anything else.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// 500 with a retryable error body; nothing stored.
    ServerError,
    /// Store the batch, then drop the connection: the edge never sees the ack.
    DropAfterStore,
}

/// What the fake hub does with the next pull.
#[derive(Debug, Clone, Copy)]
enum PullFault {
    /// 500 with a retryable error body.
    ServerError,
    /// Send the head of the page, then cut the connection.
    DropMidResponse,
}

#[derive(Debug, Default)]
struct Hub {
    site_id: Option<SiteId>,
    devices: HashMap<DeviceId, VerifyingKey>,
    /// Times each change (by hash) arrived in an accepted batch.
    received: HashMap<String, u32>,
    /// Seqs of the changes new to the hub, in arrival order.
    stored_seqs: Vec<u64>,
    /// Sizes of the batches stored.
    batches: Vec<usize>,
    /// Refuse with 413 a batch with more changes than this.
    max_changes: Option<usize>,
    /// Refuse with 422 `change_refused` a batch holding this seq.
    refuse_seq: Option<u64>,
    /// Drop the connection, with no answer, on a push body larger than this:
    /// what an edge sees when a hub refuses an oversized body while the edge
    /// is still sending it (a reset rather than the 413).
    cut_over: Option<usize>,
    revoked: bool,
    faults: VecDeque<Option<Fault>>,
    /// The log pulls read, ascending by `hub_seq`.
    log: Vec<HubChange>,
    /// Changes per page (at least one); 0 means all at once.
    page_size: usize,
    /// The cursor of every pull that reached the log, in order.
    pull_cursors: Vec<u64>,
    pull_faults: VecDeque<Option<PullFault>>,
}

/// The hub's data, and its traffic as the scheduler tests watch it.
#[derive(Debug)]
struct FakeHub {
    hub: Mutex<Hub>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Pushes that reached the handler.
    started: tokio::sync::watch::Sender<usize>,
    /// Distinct changes stored.
    stored: tokio::sync::watch::Sender<usize>,
    /// Pushes wait here while it is false.
    open: tokio::sync::watch::Sender<bool>,
}

impl Default for FakeHub {
    fn default() -> Self {
        Self {
            hub: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            started: tokio::sync::watch::Sender::new(0),
            stored: tokio::sync::watch::Sender::new(0),
            open: tokio::sync::watch::Sender::new(true),
        }
    }
}

impl FakeHub {
    /// Waits until `counter` reaches `n`, failing the test after a deadline.
    async fn reach(counter: &tokio::sync::watch::Sender<usize>, n: usize, what: &str) {
        let mut rx = counter.subscribe();
        let waited = tokio::time::timeout(DEADLINE, rx.wait_for(|&v| v >= n)).await;
        assert!(waited.is_ok_and(|r| r.is_ok()), "{what}: {} of {n} before the deadline", *counter.borrow());
    }
}

/// How long a test waits for something that should happen in milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

type Shared = Arc<FakeHub>;

fn lock(hub: &FakeHub) -> std::sync::MutexGuard<'_, Hub> {
    hub.hub.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a push out when it ends, even when the handler panics.
struct InFlight<'a>(&'a FakeHub);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error(status: StatusCode, code: &str, retryable: bool) -> Response {
    let body = ErrorBody { code: code.into(), message: format!("fake hub says {code}"), retryable, seq: None };
    (status, Json(body)).into_response()
}

async fn enroll_handler(State(hub): State<Shared>, Json(body): Json<Value>) -> Response {
    let token = body["token"].as_str().unwrap_or_default();
    let problem = match token {
        TOKEN => None,
        USED_TOKEN => Some((StatusCode::GONE, "token_used")),
        _ => Some((StatusCode::UNAUTHORIZED, "invalid_token")),
    };
    if let Some((status, code)) = problem {
        return (status, Json(json!({ "code": code, "message": "fake hub refuses the token" }))).into_response();
    }
    let device_id: DeviceId = body["device_id"].as_str().and_then(|s| s.parse().ok()).expect("device_id");
    let raw = URL_SAFE_NO_PAD.decode(body["public_key"].as_str().expect("public_key")).expect("base64url");
    let key = VerifyingKey::from_bytes(&raw.try_into().expect("32 bytes")).expect("a valid key");
    let mut hub = lock(&hub);
    let site_id = *hub.site_id.get_or_insert_with(SiteId::new);
    hub.devices.insert(device_id, key);
    let answer = json!({ "site_id": site_id, "device_id": device_id, "site_name": "CSCom Kati", "site_code": "KATI" });
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn push_handler(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _counted = InFlight(&fake);
    fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
    fake.started.send_modify(|n| *n += 1);
    let _ = fake.open.subscribe().wait_for(|open| *open).await;
    let cut_over = lock(&fake).cut_over;
    if cut_over.is_some_and(|max| body.len() > max) {
        panic!("fake hub cuts off a body of {} bytes", body.len());
    }
    push(&fake, &headers, &body)
}

fn push(hub: &FakeHub, headers: &HeaderMap, body: &Bytes) -> Response {
    let Ok(signed) = SignedHeaders::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok())) else {
        return error(StatusCode::UNAUTHORIZED, codes::MISSING_HEADER, false);
    };
    let mut guard = lock(hub);
    let Some(key) = guard.devices.get(&signed.device_id) else {
        return error(StatusCode::UNAUTHORIZED, codes::UNKNOWN_DEVICE, false);
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if verify(key, &signed, "POST", PUSH_PATH, body, now, 300).is_err() {
        return error(StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE, false);
    }
    if guard.revoked {
        return error(StatusCode::FORBIDDEN, codes::REVOKED_DEVICE, false);
    }
    let fault = guard.faults.pop_front().flatten();
    if matches!(fault, Some(Fault::ServerError)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", true);
    }
    let request = decode_push(body, 16 << 20).expect("a push body");
    assert_eq!(request.device_id, signed.device_id, "the body's device is the signer");
    assert!(request.batch.windows(2).all(|w| w[0].seq < w[1].seq), "ascending batch");
    if guard.max_changes.is_some_and(|max| request.batch.len() > max) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE, false);
    }
    if let Some(seq) = guard.refuse_seq.filter(|s| request.batch.iter().any(|c| c.seq == *s)) {
        let message = format!("fake hub refuses the change at seq {seq}");
        let body = ErrorBody { code: codes::CHANGE_REFUSED.into(), message, retryable: false, seq: Some(seq) };
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let (mut applied, mut duplicates) = (0, 0);
    for change in &request.batch {
        let hash = automerge::Change::from_bytes(change.change.clone()).expect("an Automerge change").hash();
        let count = guard.received.entry(hash.to_string()).or_default();
        *count += 1;
        if *count == 1 {
            applied += 1;
            guard.stored_seqs.push(change.seq);
        } else {
            duplicates += 1;
        }
    }
    guard.batches.push(request.batch.len());
    let stored = guard.received.len();
    drop(guard);
    hub.stored.send_replace(stored);
    if matches!(fault, Some(Fault::DropAfterStore)) {
        // Stored but never acknowledged: the connection dies with the task.
        panic!("fake hub drops the connection after storing the batch");
    }
    let acked_through = request.batch.last().map_or(0, |c| c.seq);
    let response = PushResponse { acked_through, applied, duplicates };
    (StatusCode::OK, encode_push_response(&response).expect("encode")).into_response()
}

async fn pull_handler(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(signed) = SignedHeaders::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok())) else {
        return error(StatusCode::UNAUTHORIZED, codes::MISSING_HEADER, false);
    };
    let mut hub = lock(&fake);
    let Some(key) = hub.devices.get(&signed.device_id) else {
        return error(StatusCode::UNAUTHORIZED, codes::UNKNOWN_DEVICE, false);
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if verify(key, &signed, "POST", PULL_PATH, &body, now, 300).is_err() {
        return error(StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE, false);
    }
    if hub.revoked {
        return error(StatusCode::FORBIDDEN, codes::REVOKED_DEVICE, false);
    }
    let request = decode_pull(&body, 1 << 20).expect("a pull body");
    assert_eq!(request.device_id, signed.device_id, "the body's device is the signer");
    assert!(request.max_bytes > 0);
    hub.pull_cursors.push(request.cursor);
    let fault = hub.pull_faults.pop_front().flatten();
    if matches!(fault, Some(PullFault::ServerError)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", true);
    }
    let after: Vec<HubChange> = hub.log.iter().filter(|c| c.hub_seq > request.cursor).cloned().collect();
    let take = if hub.page_size == 0 { after.len() } else { hub.page_size.min(after.len()) };
    let changes = after[..take].to_vec();
    let page = PullResponse {
        next_cursor: changes.last().map_or(request.cursor, |c| c.hub_seq),
        more: take < after.len(),
        changes,
    };
    let encoded = encode_pull_response(&page).expect("encode");
    if matches!(fault, Some(PullFault::DropMidResponse)) {
        // A length the body never reaches: the server cuts the connection
        // once the head is sent.
        let head = encoded[..encoded.len() / 2].to_vec();
        return Response::builder()
            .status(StatusCode::OK)
            .header(axum::http::header::CONTENT_LENGTH, encoded.len())
            .body(axum::body::Body::from(head))
            .expect("response");
    }
    (StatusCode::OK, encoded).into_response()
}

/// Starts the fake hub; returns its base URL and its state.
async fn start_hub() -> (String, Shared) {
    let hub = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = serve_hub(listener, hub.clone(), 32 << 20);
    (url, hub)
}

/// Serves `hub` on `listener`, refusing push bodies over `max_push_body`
/// bytes as the real hub does (axum's body limit: 413 while the edge may
/// still be sending); returns the base URL.
fn serve_hub(listener: tokio::net::TcpListener, hub: Shared, max_push_body: usize) -> String {
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/api/v1/devices/enroll", post(enroll_handler))
        .route(PUSH_PATH, post(push_handler).layer(axum::extract::DefaultBodyLimit::max(max_push_body)))
        .route(PULL_PATH, post(pull_handler))
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
        .with_state(hub);
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Edge {
    _dir: tempfile::TempDir,
    state: AppState,
}

impl Edge {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = edge::config::Config { data_dir: dir.path().into(), ..Default::default() };
        let state = AppState::open(config).expect("open");
        Self { _dir: dir, state }
    }

    fn data_dir(&self) -> &std::path::Path {
        &self.state.config.data_dir
    }

    async fn enroll(&self, hub_url: &str, token: &str) -> Result<edge::sync::Enrollment, EnrollError> {
        let options =
            EnrollOptions { hub_url: hub_url.into(), token: token.into(), force: false, insecure_http: false };
        edge::sync::enroll(&self.state.store, self.data_dir(), options).await
    }

    /// Registers `n` patients: one outbox change each.
    async fn record(&self, n: usize) {
        for i in 0..n {
            let draft = PatientDraft {
                given_name: Some(format!("Awa{i}")),
                family_name: Some("Diarra".into()),
                sex: Some("female".into()),
                birth_date: Some("1990-05-17".into()),
                village: Some("Kati".into()),
                ..PatientDraft::default()
            };
            self.state.store.write(move |w| w.register(&draft, true)).await.expect("register");
        }
    }

    /// `(seq, change hash, acked)` of every outbox entry, by seq.
    async fn outbox(&self) -> Vec<(u64, String, bool)> {
        self.state
            .store
            .read(|c| {
                let mut stmt = c.prepare("SELECT seq, change_hash, acked_at IS NOT NULL FROM outbox ORDER BY seq")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?.unsigned_abs(), r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .expect("outbox")
    }

    /// `(patient, change)` of every outbox entry, by seq: what the hub
    /// would relay from this box to another clinic.
    async fn changes(&self) -> Vec<(PatientId, Vec<u8>)> {
        self.state
            .store
            .read(|c| {
                let mut stmt = c.prepare("SELECT patient_id, bytes FROM outbox ORDER BY seq")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
                Ok(rows
                    .map(|r| r.map(|(id, bytes)| (id.parse().expect("patient id"), bytes)))
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .expect("outbox")
    }

    /// The pull cursor stored in `meta`.
    async fn cursor(&self) -> u64 {
        let value = self
            .state
            .store
            .read(|c| edge::store::get_meta(c, edge::sync::meta_keys::PULL_CURSOR))
            .await
            .expect("meta");
        value.map_or(0, |v| v.parse().expect("a number"))
    }

    /// Stored changes per patient document (snapshots aside).
    async fn stored_changes(&self) -> i64 {
        self.state
            .store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM document_changes", [], |r| r.get(0))?))
            .await
            .expect("count")
    }

    async fn push(&self, ceiling: u32) -> Result<edge::sync::SyncReport, SyncError> {
        let config = PushConfig {
            ceiling: BatchPolicy { max_changes: ceiling, max_bytes: 1 << 20 },
            floor: BatchPolicy { max_changes: 1, max_bytes: 1 },
            base_delay: std::time::Duration::ZERO,
            max_delay: std::time::Duration::ZERO,
        };
        edge::sync::push(&self.state.store, self.data_dir(), config).await
    }
}

#[tokio::test]
async fn enrollment_stores_the_site_and_a_private_key() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    let done = edge.enroll(&url, TOKEN).await.expect("enroll");

    let status = edge::sync_status(&edge.state).await.expect("status");
    assert!(status.enrolled);
    assert_eq!(status.site_id, Some(done.site_id));
    assert_eq!(status.hub_url.as_deref(), Some(url.as_str()));
    assert_eq!(done.site_code, "KATI");
    assert_eq!(status.device_id, done.device_id);

    let key_path = edge.data_dir().join(edge::sync::keys::KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key_path).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key = edge::sync::keys::load(edge.data_dir()).expect("key");
    assert_eq!(lock(&hub).devices.get(&done.device_id), Some(&key.verifying_key()), "the hub holds our public key");

    // A second enrollment needs --force, and keeps the first key meanwhile.
    assert!(matches!(edge.enroll(&url, TOKEN).await, Err(EnrollError::AlreadyEnrolled { .. })));
    assert_eq!(edge::sync::keys::load(edge.data_dir()).expect("key").to_bytes(), key.to_bytes());
    let forced = EnrollOptions { hub_url: url.clone(), token: TOKEN.into(), force: true, insecure_http: false };
    edge::sync::enroll(&edge.state.store, edge.data_dir(), forced).await.expect("forced enrollment");
    assert_ne!(edge::sync::keys::load(edge.data_dir()).expect("key").to_bytes(), key.to_bytes());
}

#[tokio::test]
async fn a_refused_enrollment_leaves_no_key_and_no_site() {
    let (url, _hub) = start_hub().await;
    let edge = Edge::new();
    assert!(matches!(edge.enroll(&url, USED_TOKEN).await, Err(EnrollError::TokenGone { .. })));
    assert!(matches!(edge.enroll(&url, "wrong").await, Err(EnrollError::TokenRejected { .. })));
    let unreachable = edge.enroll("http://127.0.0.1:9", TOKEN).await;
    assert!(matches!(unreachable, Err(EnrollError::Network { .. })), "{unreachable:?}");
    let insecure = edge.enroll("http://192.0.2.10:8443", TOKEN).await.expect_err("refused");
    assert!(insecure.to_string().contains("--insecure-http"), "{insecure}");

    let files: Vec<_> = std::fs::read_dir(edge.data_dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("device.key"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
    assert!(!edge::sync_status(&edge.state).await.expect("status").enrolled);
}

#[tokio::test]
async fn a_push_sends_every_change_once_in_order_and_marks_it_sent() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(12).await;

    let report = edge.push(5).await.expect("push");
    assert_eq!((report.pushed, report.batches, report.applied, report.duplicates), (12, 3, 12, 0));
    let outbox = edge.outbox().await;
    assert!(outbox.iter().all(|(_, _, acked)| *acked));
    {
        let hub = lock(&hub);
        assert_eq!(hub.stored_seqs, outbox.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(), "seq order");
        for (_, hash, _) in &outbox {
            assert_eq!(hub.received.get(hash), Some(&1), "{hash} exactly once");
        }
        assert_eq!(hub.received.len(), 12);
    }

    let again = edge.push(5).await.expect("nothing to push");
    assert_eq!((again.pushed, again.batches), (0, 0));
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert_eq!(status.outbox_depth, 0);
    assert!(status.last_success_at.is_some() && status.last_error.is_none());
}

#[tokio::test]
async fn a_failure_midway_keeps_unacked_changes_and_a_retry_sends_them() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(23).await;
    // Two batches acknowledged, the third stored but its answer lost; the
    // run tries that batch again at once, halved (a cut may mean "too
    // large"), and loses those answers too, down to a single change.
    let drop = Some(Fault::DropAfterStore);
    lock(&hub).faults = [None, None, drop, drop, drop].into();

    let err = edge.push(5).await.expect_err("the link dropped");
    assert!(err.is_retryable(), "{err:?}");
    let outbox = edge.outbox().await;
    let pending: Vec<u64> = outbox.iter().filter(|r| !r.2).map(|r| r.0).collect();
    assert_eq!(pending, outbox[10..].iter().map(|r| r.0).collect::<Vec<_>>(), "the unacked batch is still pending");
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert_eq!(status.outbox_depth, 13);
    assert!(status.last_error.is_some() && status.last_error_at.is_some());

    // The hub then fails outright once: nothing stored, nothing marked.
    lock(&hub).faults = [Some(Fault::ServerError)].into();
    let err = edge.push(5).await.expect_err("500");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(edge.state.store.outbox_depth().await.expect("depth"), 13);

    let report = edge.push(5).await.expect("retry");
    assert_eq!(report.pushed, 13);
    assert_eq!(report.duplicates, 5, "only the unacknowledged batch is sent again");
    let outbox = edge.outbox().await;
    assert!(outbox.iter().all(|r| r.2));
    {
        let hub = lock(&hub);
        assert_eq!(hub.received.len(), 23, "no change lost");
        for (i, (_, hash, _)) in outbox.iter().enumerate() {
            // The batch in flight (10..15) went once more after the run that
            // lost its answers; of it, the halves that run tried again.
            let expected = match i {
                10 => 4,
                11 => 3,
                12..15 => 2,
                _ => 1,
            };
            assert_eq!(hub.received.get(hash), Some(&expected), "change {i}");
        }
        assert_eq!(hub.stored_seqs, outbox.iter().map(|r| r.0).collect::<Vec<_>>());
    }
    let status = edge::sync_status(&edge.state).await.expect("status");
    assert!(status.last_error.is_none(), "a success clears the last error");
}

#[tokio::test]
async fn a_batch_refused_as_too_large_is_split() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(10).await;
    lock(&hub).max_changes = Some(3);

    let report = edge.push(8).await.expect("push");
    assert_eq!(report.pushed, 10);
    assert!(report.splits >= 2, "{report:?}");
    let hub = lock(&hub);
    assert!(hub.batches.iter().all(|&n| n <= 3), "{:?}", hub.batches);
    assert_eq!(hub.received.len(), 10);
    assert!(hub.received.values().all(|&n| n == 1));
}

#[tokio::test]
async fn a_revoked_device_gets_a_permanent_error_shown_in_the_status() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(3).await;
    lock(&hub).revoked = true;

    let err = edge::sync::run_once(&edge.state).await.expect_err("revoked");
    assert!(!err.is_retryable(), "{err:?}");
    let status = edge::sync_status(&edge.state).await.expect("status");
    let shown = status.last_error.expect("an error is recorded");
    assert!(shown.starts_with("revoked_device: "), "{shown}");
    assert!(status.last_error_at.is_some());
    assert_eq!(status.outbox_depth, 3, "nothing marked sent");
    assert!(lock(&hub).received.is_empty());
}

#[tokio::test]
async fn changes_made_before_enrollment_are_pushed_after_it() {
    let (url, hub) = start_hub().await;
    let edge = Edge::new();
    edge.record(4).await;
    assert!(matches!(edge::sync::run_once(&edge.state).await, Err(SyncError::NotEnrolled)));
    assert!(edge::sync_status(&edge.state).await.expect("status").last_error.is_none());

    edge.enroll(&url, TOKEN).await.expect("enroll");
    let report = edge::sync::run_once(&edge.state).await.expect("push");
    assert_eq!(report.pushed, 4);
    assert_eq!(lock(&hub).received.len(), 4);
    assert_eq!(edge.state.store.outbox_depth().await.expect("depth"), 0);
}

/// The background scheduler, as `edge serve` starts it.
mod scheduler {
    use super::*;

    /// A scheduler on `edge` every `interval`, and what stops it.
    fn start(edge: &Edge, interval: Duration) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = edge::sync::scheduler::spawn(edge.state.clone(), Schedule::every(interval), async {
            let _ = stopped.await;
        });
        (task, stop)
    }

    async fn stop(task: tokio::task::JoinHandle<()>, stop: tokio::sync::oneshot::Sender<()>) {
        let _ = stop.send(());
        tokio::time::timeout(DEADLINE, task).await.expect("the scheduler stops on shutdown").expect("no panic");
    }

    #[tokio::test]
    async fn changes_reach_the_hub_without_a_manual_sync() {
        let (url, hub) = start_hub().await;
        let edge = Edge::new();
        edge.enroll(&url, TOKEN).await.expect("enroll");
        let (task, stopper) = start(&edge, Duration::from_millis(50));

        edge.record(5).await;
        FakeHub::reach(&hub.stored, 5, "changes stored by the hub").await;
        edge.record(3).await;
        FakeHub::reach(&hub.stored, 8, "changes stored by the hub").await;
        stop(task, stopper).await;

        let outbox = edge.outbox().await;
        let hub = lock(&hub);
        assert_eq!(hub.received.len(), 8);
        for (_, hash, _) in &outbox {
            assert!(hub.received.contains_key(hash), "{hash} reached the hub");
        }
    }

    #[tokio::test]
    async fn a_manual_run_waits_for_a_scheduled_one() {
        let (url, hub) = start_hub().await;
        let edge = Edge::new();
        edge.enroll(&url, TOKEN).await.expect("enroll");
        edge.record(3).await;
        hub.open.send_replace(false);
        let (task, stopper) = start(&edge, Duration::from_millis(20));
        FakeHub::reach(&hub.started, 1, "scheduled pushes").await;

        // The scheduled push is held at the hub: a manual run must not start
        // its own request meanwhile (it would send the same batch again).
        let state = edge.state.clone();
        let mut manual = tokio::spawn(async move { edge::sync::run_once(&state).await });
        let early = tokio::time::timeout(Duration::from_millis(300), &mut manual).await;
        assert!(early.is_err(), "the manual run finished while the scheduled one was in flight");
        assert_eq!(*hub.started.borrow(), 1, "no second push while the first is in flight");

        hub.open.send_replace(true);
        let report = tokio::time::timeout(DEADLINE, manual).await.expect("deadline").expect("join").expect("sync");
        assert_eq!(report.pushed, 0, "the scheduled run had sent everything");
        stop(task, stopper).await;
        assert_eq!(hub.max_in_flight.load(Ordering::SeqCst), 1, "two pushes overlapped");
        let hub = lock(&hub);
        assert_eq!(hub.received.len(), 3);
        assert!(hub.received.values().all(|&n| n == 1), "{:?}", hub.received);
    }

    #[tokio::test]
    async fn a_permanent_failure_stops_it_until_a_manual_run() {
        let (url, hub) = start_hub().await;
        let edge = Edge::new();
        edge.enroll(&url, TOKEN).await.expect("enroll");
        edge.record(2).await;
        lock(&hub).revoked = true;
        let (task, stopper) = start(&edge, Duration::from_millis(20));
        FakeHub::reach(&hub.started, 1, "scheduled pushes").await;

        // At this interval a scheduler that kept trying would have tried
        // many times over; a stopped one not once more.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*hub.started.borrow(), 1, "the scheduler retried a permanent failure");
        let status = edge::sync_status(&edge.state).await.expect("status");
        assert_eq!(status.last_error_code.as_deref(), Some("revoked_device"));

        // The operator sorts it out and syncs by hand: the schedule resumes.
        lock(&hub).revoked = false;
        edge::sync::run_once(&edge.state).await.expect("manual sync");
        edge.record(1).await;
        FakeHub::reach(&hub.stored, 3, "changes stored by the hub").await;
        stop(task, stopper).await;
    }

    #[tokio::test]
    async fn retryable_failures_are_retried() {
        let (url, hub) = start_hub().await;
        let edge = Edge::new();
        edge.enroll(&url, TOKEN).await.expect("enroll");
        edge.record(4).await;
        lock(&hub).faults = [Some(Fault::ServerError), Some(Fault::ServerError)].into();
        let (task, stopper) = start(&edge, Duration::from_millis(20));
        FakeHub::reach(&hub.stored, 4, "changes stored by the hub").await;
        stop(task, stopper).await;
        assert!(*hub.started.borrow() >= 3, "two failures, then the push that went through");
    }

    #[test]
    fn the_interval_comes_from_the_config_and_zero_turns_it_off() {
        let mut config = edge::config::Config::default();
        assert_eq!(Schedule::from_config(&config).map(|s| s.interval), Some(Duration::from_secs(300)));
        config.sync_interval_seconds = 0;
        assert_eq!(Schedule::from_config(&config), None);
    }
}

/// The sync page's "Sync now" button, over real HTTP.
mod page {
    use super::web::{add_accounts, serve, signed_in, sync_now};
    use super::*;

    #[tokio::test]
    async fn admins_sync_from_the_page_and_see_failures_in_plain_words() {
        let (url, hub) = start_hub().await;
        let edge = Edge::new();
        add_accounts(&edge, &[("admin", edge::store::Role::Admin), ("clinic", edge::store::Role::Clinician)]).await;
        edge.enroll(&url, TOKEN).await.expect("enroll");
        edge.record(2).await;
        lock(&hub).revoked = true;
        let (base, _stop) = serve(&edge).await;

        let admin = signed_in(&base, "admin").await;
        let html = admin.get(format!("{base}/sync")).send().await.expect("GET").text().await.expect("body");
        assert!(html.contains("id=\"sync-now\"") && html.contains("Synchroniser maintenant"), "{html}");
        assert!(html.contains("CSCom Kati (KATI)") && html.contains(&url), "site and hub shown");
        assert!(html.contains("id=\"outbox-depth\"><strong>2</strong>"));

        let (status, html) = sync_now(&admin, &base).await;
        assert_eq!(status, 502);
        assert!(html.contains("Cet appareil a été révoqué par le hub"), "{html}");
        assert!(html.contains("id=\"last-error-explained\"") && html.contains("revoked_device"));
        assert!(html.contains("<strong>2</strong>"), "nothing was sent");

        lock(&hub).revoked = false;
        let (status, html) = sync_now(&admin, &base).await;
        assert_eq!(status, 200);
        assert!(html.contains("Synchronisation réussie") && html.contains("id=\"outbox-depth\"><strong>0</strong>"));
        assert!(!html.contains("id=\"last-error-explained\""), "a success clears the error");
        assert_eq!(lock(&hub).received.len(), 2);

        // Others see the status, without the button, and cannot press it anyway.
        let clinic = signed_in(&base, "clinic").await;
        let html = clinic.get(format!("{base}/sync")).send().await.expect("GET").text().await.expect("body");
        assert!(html.contains("id=\"outbox-depth\"") && !html.contains("id=\"sync-now\""));
        let started = *hub.started.borrow();
        assert_eq!(sync_now(&clinic, &base).await.0, 403);
        assert_eq!(*hub.started.borrow(), started, "no push for a clinician");
    }
}

/// `POST /api/v1/sync/run` against the fake hub: the report covers both halves.
#[tokio::test]
async fn the_api_runs_a_sync_and_reports_push_and_pull() {
    let (url, _hub) = start_hub().await;
    let edge = Edge::new();
    web::add_accounts(&edge, &[("admin", edge::store::Role::Admin)]).await;
    edge.enroll(&url, TOKEN).await.expect("enroll");
    edge.record(3).await;
    let (base, _stop) = web::serve(&edge).await;
    let token = web::api_token(&base, "admin").await;
    let c = reqwest::Client::new();
    let r = c.post(format!("{base}/api/v1/sync/run")).bearer_auth(token).send().await.expect("run");
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.expect("json");
    assert_eq!(report["pushed"], 3, "{report}");
    assert_eq!(report["applied"], 3, "{report}");
    assert_eq!(report["pulled"], 0, "{report}");
    assert!(report["pull_pages"].is_u64() && report["pulled_new"].is_u64(), "{report}");
    assert!(edge.outbox().await.iter().all(|(_, _, sent)| *sent));
}

/// Pulling other clinics' changes.
#[path = "sync/pull.rs"]
mod pull;
/// Oversized batches, refused changes, a hub that comes back.
#[path = "sync/robustness.rs"]
mod robustness;
/// Serving the edge under test and driving its UI and API.
#[path = "sync/web.rs"]
mod web;
