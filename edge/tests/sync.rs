//! Enrollment and push against a fake hub: a test double of the hub's
//! contract (`POST /api/v1/devices/enroll`, `POST /api/v1/sync/push`) served
//! in-process on a loopback port, ready once its listener is bound. It
//! checks every signature with `shared::sync::verify`, decodes each push,
//! counts the changes it receives by Automerge hash, and fails on command.
//! The end-to-end test against the real hub belongs in the top-level `tests/`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge::AppState;
use edge::sync::{EnrollError, EnrollOptions, SyncError};
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    BatchPolicy, ErrorBody, PUSH_PATH, PushConfig, PushResponse, SignedHeaders, VerifyingKey, decode_push,
    encode_push_response, verify,
};
use santerurale_shared::{DeviceId, PatientDraft, SiteId};
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
    revoked: bool,
    faults: VecDeque<Option<Fault>>,
}

type Shared = Arc<Mutex<Hub>>;

fn lock(hub: &Shared) -> std::sync::MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error(status: StatusCode, code: &str, retryable: bool) -> Response {
    let body = ErrorBody { code: code.into(), message: format!("fake hub says {code}"), retryable };
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

async fn push_handler(State(hub): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(signed) = SignedHeaders::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok())) else {
        return error(StatusCode::UNAUTHORIZED, codes::MISSING_HEADER, false);
    };
    let mut guard = lock(&hub);
    let Some(key) = guard.devices.get(&signed.device_id) else {
        return error(StatusCode::UNAUTHORIZED, codes::UNKNOWN_DEVICE, false);
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if verify(key, &signed, "POST", PUSH_PATH, &body, now, 300).is_err() {
        return error(StatusCode::UNAUTHORIZED, codes::BAD_SIGNATURE, false);
    }
    if guard.revoked {
        return error(StatusCode::FORBIDDEN, codes::REVOKED_DEVICE, false);
    }
    let fault = guard.faults.pop_front().flatten();
    if matches!(fault, Some(Fault::ServerError)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", true);
    }
    let request = decode_push(&body, 16 << 20).expect("a push body");
    assert_eq!(request.device_id, signed.device_id, "the body's device is the signer");
    assert!(request.batch.windows(2).all(|w| w[0].seq < w[1].seq), "ascending batch");
    if guard.max_changes.is_some_and(|max| request.batch.len() > max) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, codes::BODY_TOO_LARGE, false);
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
    drop(guard);
    if matches!(fault, Some(Fault::DropAfterStore)) {
        // Stored but never acknowledged: the connection dies with the task.
        panic!("fake hub drops the connection after storing the batch");
    }
    let acked_through = request.batch.last().map_or(0, |c| c.seq);
    let response = PushResponse { acked_through, applied, duplicates };
    (StatusCode::OK, encode_push_response(&response).expect("encode")).into_response()
}

/// Starts the fake hub; returns its base URL and its state.
async fn start_hub() -> (String, Shared) {
    let hub = Shared::default();
    let app = axum::Router::new()
        .route("/api/v1/devices/enroll", post(enroll_handler))
        .route(PUSH_PATH, post(push_handler))
        .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hub)
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
    // Two batches acknowledged, the third stored but its answer lost.
    lock(&hub).faults = [None, None, Some(Fault::DropAfterStore)].into();

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
    assert_eq!(report.duplicates, 5, "only the unacknowledged batch is sent twice");
    let outbox = edge.outbox().await;
    assert!(outbox.iter().all(|r| r.2));
    {
        let hub = lock(&hub);
        assert_eq!(hub.received.len(), 23, "no change lost");
        for (i, (_, hash, _)) in outbox.iter().enumerate() {
            let expected = if (10..15).contains(&i) { 2 } else { 1 };
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
