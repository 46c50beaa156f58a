//! Test fixtures: a fresh PostgreSQL database per test, and a hub served on
//! a loopback port.
//!
//! Where the database comes from, first match wins:
//! 1. `SANTERURALE_TEST_DATABASE_URL` or `DATABASE_URL`: a server we may
//!    create databases on (the URL's database is used to create and drop);
//! 2. a server answering on 127.0.0.1:5432 as `postgres` without a password
//!    (this machine kind, and CI);
//! 3. otherwise the hub's own embedded cluster, started in a temporary
//!    directory for the test (forced with `SANTERURALE_TEST_EMBEDDED=1`).
//!
//! If none works the test fails with the reason: it is never skipped.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use deadpool_postgres::Pool;
use hub::AppState;
use hub::config::Config;
use hub::pg::EmbeddedPostgres;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio_postgres::NoTls;

/// A database that exists for one test; dropped when this is.
pub struct TestDb {
    /// Connects to the test's database.
    pub config: tokio_postgres::Config,
    admin: tokio_postgres::Config,
    name: String,
    /// The cluster the database lives on, when no server was configured.
    _embedded: Option<(EmbeddedPostgres, TempDir)>,
}

impl TestDb {
    pub async fn new() -> Self {
        let (admin, embedded) = match server().await {
            Ok(admin) => (admin, None),
            Err(reason) => {
                let dir = temp_dir_for_postgres();
                let pg = EmbeddedPostgres::start(&dir.path().join("pg"), None).await.unwrap_or_else(|e| {
                    panic!(
                        "no PostgreSQL for the tests: {reason}; and the embedded cluster failed: {}",
                        hub::error_chain(&e)
                    )
                });
                (pg.connect_config("postgres"), Some((pg, dir)))
            }
        };
        let name = format!("hub_test_{}", uuid::Uuid::now_v7().simple());
        let client = connect(&admin).await.expect("connect to the admin database");
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
        let mut config = admin.clone();
        config.dbname(&name);
        Self { config, admin, name, _embedded: embedded }
    }

    pub fn pool(&self) -> Pool {
        hub::db::pool(self.config.clone(), 4).expect("pool")
    }

    /// A pool on this database with the migrations applied.
    pub async fn migrated_pool(&self) -> Pool {
        let pool = self.pool();
        hub::db::migrate::run(&pool).await.expect("migrate");
        pool
    }

    /// The database as a URL, for `DATABASE_URL`.
    pub fn url(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string().replace('/', "%2F"),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("postgres");
        let password =
            self.config.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
        format!("postgres://{user}{password}@{host}:{port}/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self._embedded.is_some() {
            return; // the whole cluster goes with its directory
        }
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside the test's runtime: use a runtime of our own
        // on another thread.
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(client) = connect(&admin).await {
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
        if joined.is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// The admin connection to a configured or local server, or why there is none.
async fn server() -> Result<tokio_postgres::Config, String> {
    if std::env::var_os("SANTERURALE_TEST_EMBEDDED").is_some_and(|v| v == "1") {
        return Err("SANTERURALE_TEST_EMBEDDED=1".into());
    }
    for var in ["SANTERURALE_TEST_DATABASE_URL", "DATABASE_URL"] {
        if let Ok(url) = std::env::var(var) {
            let config: tokio_postgres::Config =
                url.parse().unwrap_or_else(|e| panic!("{var} is not a valid URL: {e}"));
            if let Err(e) = connect(&config).await {
                panic!("{var} is set but the server cannot be reached: {}", hub::error_chain(&e));
            }
            return Ok(config);
        }
    }
    let mut local = tokio_postgres::Config::new();
    local.host("127.0.0.1").port(5432).user("postgres").dbname("postgres").connect_timeout(Duration::from_secs(3));
    match connect(&local).await {
        Ok(_) => Ok(local),
        Err(e) => Err(format!("none configured, and 127.0.0.1:5432 refused: {e}")),
    }
}

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A temporary directory the `postgres` user can enter (when the tests run
/// as root, the embedded cluster runs as `postgres`).
pub fn temp_dir_for_postgres() -> TempDir {
    tempfile::Builder::new()
        .prefix("hub-test-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .expect("tempdir")
}

/// A hub serving on 127.0.0.1 on a fresh database; stopped when dropped.
pub struct TestHub {
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    _data: TempDir,
    /// Kept so the database outlives the server; dropped last.
    _db: TestDb,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::configured(|_| {}).await
    }

    /// A hub on a fresh database, its config changed by `configure` first
    /// (`data_dir` is a temporary directory already).
    pub async fn configured(configure: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new().await;
        let pool = db.migrated_pool().await;
        Self::serve(db, pool, configure).await
    }

    /// A hub on `pool`, whatever database it reaches.
    pub async fn with_pool(db: TestDb, pool: Pool) -> Self {
        Self::serve(db, pool, |_| {}).await
    }

    async fn serve(db: TestDb, pool: Pool, configure: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = Config { data_dir: data.path().to_owned(), ..Config::default() };
        configure(&mut config);
        let state = AppState::new(config, pool).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(hub::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self { base, state, http: reqwest::Client::new(), shutdown: Some(tx), _data: data, _db: db }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates an admin account and signs in; returns the bearer token.
    pub async fn admin_token(&self) -> String {
        hub::users::add_user(&self.state.db, "admin", hub::auth::Role::Admin, "correct horse battery")
            .await
            .expect("add user");
        self.login("admin", "correct horse battery").await.expect("login")
    }

    /// A bearer token for an admin, issued directly: for tests about other
    /// things than signing in (no argon2 hashing, which is slow on 2 cores).
    pub fn admin_bearer(&self) -> String {
        let admin = hub::auth::CurrentUser {
            id: santerurale_shared::UserId::new(),
            username: "admin".into(),
            role: hub::auth::Role::Admin,
        };
        self.state.tokens.issue(&admin).expect("issue").0
    }

    /// `POST /api/v1/auth/login`: the token, or the status when refused.
    pub async fn login(&self, username: &str, password: &str) -> Result<String, reqwest::StatusCode> {
        let resp = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("send");
        if !resp.status().is_success() {
            return Err(resp.status());
        }
        let body: serde_json::Value = resp.json().await.expect("json");
        Ok(body["token"].as_str().expect("token").to_owned())
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.state.db.close();
    }
}

/// `POST /api/v1/sites`: the new site's id.
pub async fn create_site(hub: &TestHub, admin: &str, code: &str) -> String {
    let site = post_site(hub, admin, &serde_json::json!({ "name": format!("CSCom {code}"), "code": code })).await;
    site["id"].as_str().expect("id").to_owned()
}

/// `POST /api/v1/sites` with `body`, which must create it: the new site.
pub async fn post_site(hub: &TestHub, token: &str, body: &serde_json::Value) -> serde_json::Value {
    let resp = hub.http.post(hub.url("/api/v1/sites")).bearer_auth(token).json(body).send().await.expect("send");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    resp.json().await.expect("json")
}

/// `GET path` with `token`: the JSON answer.
pub async fn get_json<T: serde::de::DeserializeOwned>(hub: &TestHub, token: &str, path: &str) -> T {
    hub.http.get(hub.url(path)).bearer_auth(token).send().await.expect("send").json().await.expect("json")
}

/// `POST /api/v1/sites/{id}/enrollment-tokens`: the token.
pub async fn enrollment_token(hub: &TestHub, admin: &str, site: &str) -> String {
    let resp = hub
        .http
        .post(hub.url(&format!("/api/v1/sites/{site}/enrollment-tokens")))
        .bearer_auth(admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let body: serde_json::Value = resp.json().await.expect("json");
    body["token"].as_str().expect("token").to_owned()
}

/// An edge box as the hub sees it: a device id and an ed25519 key.
pub struct TestDevice {
    pub id: santerurale_shared::DeviceId,
    pub key: santerurale_shared::sync::SigningKey,
}

impl TestDevice {
    pub fn new() -> Self {
        Self {
            id: santerurale_shared::DeviceId::new(),
            key: santerurale_shared::sync::SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    pub fn public_key(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes())
    }

    /// `POST /api/v1/devices/enroll` with `token`.
    pub async fn enroll(&self, hub: &TestHub, token: &str) -> reqwest::Response {
        hub.http
            .post(hub.url("/api/v1/devices/enroll"))
            .json(&serde_json::json!({
                "token": token,
                "device_id": self.id.to_string(),
                "public_key": self.public_key(),
            }))
            .send()
            .await
            .expect("send")
    }

    /// A fresh, enrolled device of a new site; returns it and the site id.
    pub async fn enrolled(hub: &TestHub, admin: &str, code: &str) -> (Self, String) {
        let site = create_site(hub, admin, code).await;
        let token = enrollment_token(hub, admin, &site).await;
        let device = Self::new();
        assert_eq!(device.enroll(hub, &token).await.status(), reqwest::StatusCode::CREATED);
        (device, site)
    }

    /// Signature headers for a push of `body`, now, with a fresh nonce.
    pub fn sign(&self, body: &[u8]) -> santerurale_shared::sync::SignedHeaders {
        self.sign_for(santerurale_shared::sync::PUSH_PATH, body)
    }

    /// Signature headers for a `POST` of `body` to `path`, now, with a fresh nonce.
    pub fn sign_for(&self, path: &str, body: &[u8]) -> santerurale_shared::sync::SignedHeaders {
        santerurale_shared::sync::sign(
            &self.key,
            self.id,
            "POST",
            path,
            body,
            time::OffsetDateTime::now_utc().unix_timestamp(),
            rand::random(),
        )
    }

    /// A push request of this device, encoded.
    pub fn push_body(&self, batch: Vec<santerurale_shared::sync::OutboxChange>, outbox_depth: u64) -> Vec<u8> {
        santerurale_shared::sync::encode_push(&santerurale_shared::sync::PushRequest {
            protocol: santerurale_shared::sync::PROTOCOL_VERSION,
            device_id: self.id,
            batch,
            outbox_depth,
        })
        .expect("encode")
    }
}

/// `POST /api/v1/sync/push` with `body` as sent and `headers`.
pub async fn post_push(
    hub: &TestHub,
    headers: &santerurale_shared::sync::SignedHeaders,
    body: Vec<u8>,
) -> reqwest::Response {
    post_sync(hub, santerurale_shared::sync::PUSH_PATH, headers, body).await
}

/// `POST` of a sync route `path` with `body` as sent and `headers`.
pub async fn post_sync(
    hub: &TestHub,
    path: &str,
    headers: &santerurale_shared::sync::SignedHeaders,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = hub.http.post(hub.url(path)).header("content-type", santerurale_shared::sync::wire::CONTENT_TYPE);
    for (name, value) in headers.to_pairs() {
        req = req.header(name, value);
    }
    req.body(body).send().await.expect("send")
}

/// The status and error body of a refused sync request.
pub async fn sync_error(resp: reqwest::Response) -> (reqwest::StatusCode, santerurale_shared::sync::ErrorBody) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not an ErrorBody ({e}): {text:?}"));
    (status, body)
}

/// `SELECT count(*)` of a table.
pub async fn count(hub: &TestHub, table: &str) -> i64 {
    hub.state
        .db
        .get()
        .await
        .expect("conn")
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// `n` real Automerge changes made by `device` on one new patient document:
/// the outbox entries `first_seq..`.
pub fn patient_changes(device: &TestDevice, first_seq: u64, n: usize) -> Vec<santerurale_shared::sync::OutboxChange> {
    use automerge::transaction::Transactable as _;
    let patient = santerurale_shared::PatientId::new();
    let mut doc =
        automerge::AutoCommit::new().with_actor(automerge::ActorId::from(device.id.as_uuid().as_bytes().as_slice()));
    // As on an edge, the document names its patient: without it, two new
    // documents of one device could start with the very same change.
    doc.put(automerge::ROOT, "id", patient.to_string()).expect("put");
    (0..n)
        .map(|i| {
            doc.put(automerge::ROOT, "visits", i64::try_from(i).expect("small")).expect("put");
            doc.put(automerge::ROOT, "name", format!("Awa {i}")).expect("put");
            doc.commit();
            let change = doc.get_last_local_change().expect("a change");
            santerurale_shared::sync::OutboxChange {
                seq: first_seq + u64::try_from(i).expect("small"),
                patient_id: patient,
                change: change.raw_bytes().to_vec(),
            }
        })
        .collect()
}

/// A patient registered on one device and edited concurrently on two
/// (`village`), pushed from both: one open conflict. Returns the patient and
/// the two devices (Kati's, Siby's).
pub async fn open_conflict(hub: &TestHub, admin: &str) -> (santerurale_shared::PatientId, TestDevice, TestDevice) {
    let (kati, a, siby, _) = village_edits(hub, admin, None).await;
    (a.patient, kati, siby)
}

/// What [`open_conflict`] does, for a patient with `phone`: returns each
/// device with its copy of the document (Kati's, then Siby's).
pub async fn village_edits(
    hub: &TestHub,
    admin: &str,
    phone: Option<&str>,
) -> (TestDevice, crate::edge_doc::EdgeDoc, TestDevice, crate::edge_doc::EdgeDoc) {
    use crate::edge_doc::{EdgeDoc, outbox, push};
    let (kati, _) = TestDevice::enrolled(hub, admin, "KATI").await;
    let (siby, _) = TestDevice::enrolled(hub, admin, "SIBY").await;
    let (mut a, created) = EdgeDoc::register(kati.id, "Fatoumata", "Coulibaly", phone);
    push(hub, &kati, outbox(1, a.patient, std::slice::from_ref(&created))).await;
    let mut b = EdgeDoc::on_device(siby.id, a.patient, std::slice::from_ref(&created));
    let va = a.set("village", "Siby");
    let vb = b.set("village", "Ouéléssébougou");
    push(hub, &kati, outbox(2, a.patient, &[va])).await;
    push(hub, &siby, outbox(1, b.patient, &[vb])).await;
    (kati, a, siby, b)
}
