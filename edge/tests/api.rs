//! The JSON API over real HTTP: an edge served in-process on a loopback port
//! (ready as soon as the listener is bound, so no sleeps), with three accounts
//! made in the store before serving. Every JSON body received is checked
//! against the OpenAPI document the edge serves, so the two cannot drift apart.

use std::sync::OnceLock;

use edge::AppState;
use edge::store::{Counts, Role};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, Method};
use santerurale_fixtures::openapi::{Schemas, Untyped};
use santerurale_shared::PatientId;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;

const PASSWORD: &str = "motdepasse1";
const ACCOUNTS: [(&str, Role); 3] = [("admin", Role::Admin), ("clinic", Role::Clinician), ("reg", Role::Registrar)];
const LOGIN: &str = "/api/v1/auth/login";
const PATIENTS: &str = "/api/v1/patients";
const USERS: &str = "/api/v1/users";
const SYNC: &str = "/api/v1/sync/status";
const SYNC_RUN: &str = "/api/v1/sync/run";

struct App {
    base: String,
    state: AppState,
    client: Client,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl App {
    /// A fresh edge with the accounts in [`ACCOUNTS`], all with [`PASSWORD`].
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().into();
        let config = edge::config::Config { data_dir, ..Default::default() };
        let state = AppState::open(config).expect("open state");
        for (name, role) in ACCOUNTS {
            let hash = password_hash().to_owned();
            let user = state.store.create_user(name.into(), role, hash).await;
            user.expect("create an account");
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(edge::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        let client = Client::new();
        Self { base, state, client, dir, _stop: stop }
    }

    /// A caller sending this `Authorization` header, or none.
    fn caller(&self, authorization: Option<String>) -> Api<'_> {
        Api { app: self, authorization }
    }

    fn anonymous(&self) -> Api<'_> {
        self.caller(None)
    }

    fn bearer(&self, token: &str) -> Api<'_> {
        self.caller(Some(format!("Bearer {token}")))
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        let body = json!({ "username": username, "password": password });
        self.anonymous().post(LOGIN, &body).await
    }

    /// A caller signed in through `POST /api/v1/auth/login`.
    async fn signed_in(&self, username: &str) -> Api<'_> {
        let login = self.login(username, PASSWORD).await.expect(200);
        conforms("LoginResponse", &login);
        self.bearer(login["token"].as_str().expect("a token"))
    }

    async fn counts(&self) -> Counts {
        self.state.store.counts().await.expect("counts")
    }
}

/// One argon2 hash for every account of every test: hashing is slow on purpose.
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| edge::auth::hash_password(PASSWORD).expect("hash"))
}

fn counts(patients: u64, encounters: u64, outbox_pending: u64) -> Counts {
    Counts { patients, encounters, outbox_pending }
}

struct Api<'a> {
    app: &'a App,
    authorization: Option<String>,
}

impl Api<'_> {
    fn token(&self) -> &str {
        let header = self.authorization.as_deref().expect("signed in");
        header.strip_prefix("Bearer ").expect("a bearer token")
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PATCH, path, Some(body)).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let ct = body.map(|_| "application/json");
        let bytes = body.map(Value::to_string).unwrap_or_default();
        self.raw(method, path, ct, bytes).await
    }

    /// A request with exactly this content type and body.
    async fn raw(&self, method: Method, path: &str, ct: Option<&str>, body: String) -> Reply {
        let url = format!("{}{path}", self.app.base);
        let mut request = self.app.client.request(method, url).body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        if let Some(ct) = ct {
            request = request.header(CONTENT_TYPE, ct);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let content_type = content_type.unwrap_or_default().to_owned();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, content_type, text, json }
    }

    async fn register(&self, patient: &Value) -> Value {
        let created = self.post(PATIENTS, patient).await.expect(201);
        conforms("Patient", &created);
        created
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    text: String,
    json: Value,
}

impl Reply {
    /// The JSON body, once the status is checked.
    #[track_caller]
    fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        self.json
    }

    /// Checks an error: status, JSON, `code`, a message, and the `Error` schema.
    #[track_caller]
    fn error(self, status: u16, code: &str) -> Value {
        let got = (self.status, self.json["code"].as_str());
        assert_eq!(got, (status, Some(code)), "body: {}", self.text);
        let ct = &self.content_type;
        assert!(ct.starts_with("application/json"), "{ct}");
        let message = self.json["message"].as_str();
        assert!(message.is_some_and(|m| !m.is_empty()), "{}", self.text);
        conforms("Error", &self.json);
        self.json
    }

    /// A `validation_failed` error's `(field, code)` pairs.
    #[track_caller]
    fn field_errors(self) -> Vec<(String, String)> {
        let body = self.error(422, "validation_failed");
        let text = |v: &Value| v.as_str().expect("a string").to_owned();
        let pair = |f: &Value| (text(&f["field"]), text(&f["code"]));
        body["fields"].as_array().expect("fields").iter().map(pair).collect()
    }
}

fn aminata() -> Value {
    json!({
        "given_name": "Aminata", "family_name": "Traoré", "sex": "female",
        "birth_date": "1990-05-17", "phone": "76 12 34 56", "village": "Kati"
    })
}

/// `base` with `changes` applied; a `null` in `changes` removes the field.
fn with(base: &Value, changes: &Value) -> Value {
    let mut out = base.clone();
    let fields = out.as_object_mut().expect("an object");
    for (k, v) in changes.as_object().expect("an object") {
        if v.is_null() {
            fields.remove(k);
        } else {
            fields.insert(k.clone(), v.clone());
        }
    }
    out
}

/// `days` from today, as `YYYY-MM-DD` (in UTC, as the edge dates things).
fn day(days: i64) -> String {
    let date = OffsetDateTime::now_utc().date() + time::Duration::days(days);
    santerurale_shared::patient::format_date(date)
}

fn timestamp(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a string"), &Rfc3339).expect("RFC 3339")
}

fn patient_path(p: &Value) -> String {
    format!("{PATIENTS}/{}", p["id"].as_str().expect("id"))
}

/// The edge's document; every schema in it has a type.
fn schemas() -> &'static Schemas {
    static DOC: OnceLock<Schemas> = OnceLock::new();
    DOC.get_or_init(|| Schemas::parse(edge::api::OPENAPI, Untyped::Refuse))
}

fn openapi() -> &'static Value {
    schemas().doc()
}

/// Checks `value` against `#/components/schemas/{name}` (see
/// [`santerurale_fixtures::openapi`]).
#[track_caller]
fn conforms(name: &str, value: &Value) {
    schemas().conforms(name, value);
}

mod auth {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;

    /// Every route that needs a token, with a body it would accept.
    fn protected() -> Vec<(Method, String, Option<Value>)> {
        let one = format!("{PATIENTS}/{}", PatientId::new());
        let user = json!({ "username": "x1", "password": PASSWORD, "role": "admin" });
        let patch = json!({ "village": "Ségou" });
        let encounter = json!({ "kind": "consultation" });
        vec![
            (Method::GET, format!("{PATIENTS}?q=traore"), None),
            (Method::POST, PATIENTS.into(), Some(aminata())),
            (Method::GET, one.clone(), None),
            (Method::GET, format!("{PATIENTS}/not-a-uuid"), None),
            (Method::PATCH, one.clone(), Some(patch)),
            (Method::POST, format!("{one}/encounters"), Some(encounter)),
            (Method::GET, SYNC.into(), None),
            (Method::POST, SYNC_RUN.into(), None),
            (Method::GET, USERS.into(), None),
            (Method::POST, USERS.into(), Some(user)),
        ]
    }

    fn sign(secret: &[u8], claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).expect("sign")
    }

    #[tokio::test]
    async fn every_protected_route_needs_a_valid_token() {
        let app = App::start().await;
        let store = &app.state.store;
        let admin = store.find_user("admin".into()).await.expect("find");
        let admin = edge::auth::CurrentUser::from(admin.expect("admin"));
        let key_file = app.dir.path().join(edge::auth::TOKEN_KEY_FILE);
        let secret = std::fs::read(key_file).expect("the signing key");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = |exp: i64| {
            json!({
                "sub": admin.id, "name": "admin", "role": "admin", "iat": now - 7200, "exp": exp
            })
        };
        // The control: the same construction with a live expiry is accepted.
        let live = sign(&secret, &claims(now + 600));
        app.bearer(&live).get(USERS).await.expect(200);
        let expired = sign(&secret, &claims(now - 60));
        let foreign = edge::auth::TokenKeys::from_secret(&[9; 32], 60);
        let foreign = foreign.issue(&admin).expect("issue").0;
        let unsigned = live.rsplit_once('.').expect("a JWT").0;
        let headers = [
            format!("Bearer {expired}"),
            format!("Bearer {foreign}"),
            format!("Bearer {unsigned}."),
            "Bearer not.a.jwt".to_owned(),
            "Bearer ".to_owned(),
            format!("Basic {}", B64.encode(format!("admin:{PASSWORD}"))),
            live.clone(),
        ];
        for (method, path, body) in protected() {
            let anonymous = app.anonymous();
            let reply = anonymous.send(method.clone(), &path, body.as_ref()).await;
            reply.error(401, "unauthorized");
            for header in &headers {
                let caller = app.caller(Some(header.clone()));
                let reply = caller.send(method.clone(), &path, body.as_ref()).await;
                assert_eq!(reply.status, 401, "{method} {path} with {header:?}");
                reply.error(401, "unauthorized");
            }
        }
        assert_eq!(app.counts().await, counts(0, 0, 0));
        assert_eq!(store.user_count().await.expect("users"), 3);
    }

    #[tokio::test]
    async fn a_token_whose_role_was_edited_is_refused() {
        let app = App::start().await;
        let reg = app.signed_in("reg").await;
        reg.get(USERS).await.error(403, "forbidden");
        let mut parts: Vec<_> = reg.token().split('.').map(str::to_owned).collect();
        let payload = B64.decode(&parts[1]).expect("base64");
        let payload = String::from_utf8(payload).expect("utf-8");
        let (registrar, admin) = (r#""role":"registrar""#, r#""role":"admin""#);
        assert!(payload.contains(registrar), "{payload}");
        parts[1] = B64.encode(payload.replace(registrar, admin));
        let forged = app.bearer(&parts.join("."));
        forged.get(USERS).await.error(401, "unauthorized");
    }

    #[tokio::test]
    async fn login_refuses_wrong_credentials_alike() {
        let app = App::start().await;
        let wrong_password = app.login("admin", "wrong password").await;
        let wrong_password = wrong_password.error(401, "unauthorized");
        let unknown_user = app.login("nobody", PASSWORD).await;
        assert_eq!(unknown_user.error(401, "unauthorized"), wrong_password);

        let ok = app.login(" clinic ", PASSWORD).await.expect(200);
        assert_eq!(ok["token_type"], "Bearer");
        assert_eq!(ok["role"], "clinician");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let exp = ok["expires_at"].as_i64().expect("expires_at");
        assert!(exp > now + 3500 && exp <= now + 3600, "{exp} at {now}");
        let token = ok["token"].as_str().expect("token");
        app.bearer(token).get(SYNC).await.expect(200);

        let missing = json!({ "username": "admin" });
        let reply = app.anonymous().post(LOGIN, &missing).await;
        reply.error(422, "invalid_body");
    }
}

mod roles {
    use super::*;

    #[tokio::test]
    async fn registrars_register_and_edit_but_record_no_encounter() {
        let app = App::start().await;
        let reg = app.signed_in("reg").await;
        let path = patient_path(&reg.register(&aminata()).await);
        reg.get(&format!("{PATIENTS}?q=aminata")).await.expect(200);
        let patch = json!({ "village": "Ségou" });
        reg.patch(&path, &patch).await.expect(200);
        let before = app.counts().await;

        let encounters = format!("{path}/encounters");
        let encounter = json!({ "kind": "consultation" });
        let refused = reg.post(&encounters, &encounter).await;
        refused.error(403, "forbidden");
        assert_eq!(app.counts().await, before);
        assert_eq!(reg.get(&path).await.expect(200)["encounters"], json!([]));
        let clinic = app.signed_in("clinic").await;
        clinic.post(&encounters, &encounter).await.expect(201);
    }

    #[tokio::test]
    async fn only_admins_run_a_sync_and_it_needs_an_enrollment() {
        let app = App::start().await;
        for name in ["reg", "clinic"] {
            app.signed_in(name).await.post(SYNC_RUN, &json!({})).await.error(403, "forbidden");
        }
        let admin = app.signed_in("admin").await;
        admin.post(SYNC_RUN, &json!({})).await.error(409, "not_enrolled");
        let status = admin.get(SYNC).await.expect(200);
        assert!(status["last_error"].is_null(), "not being enrolled is no failed sync");

        // Enrolled (as `edge enroll` leaves it) with a hub nobody listens on.
        let key = edge::sync::keys::generate();
        std::fs::write(edge::sync::keys::key_path(app.dir.path()), key.to_bytes()).expect("key");
        app.state
            .store
            .write(|w| {
                use edge::sync::meta_keys as k;
                for (key, value) in [
                    (k::SITE_ID, santerurale_shared::SiteId::new().to_string()),
                    (k::SITE_NAME, "CSCom Kati".into()),
                    (k::SITE_CODE, "KATI".into()),
                    (k::HUB_URL, "http://127.0.0.1:9".into()),
                ] {
                    edge::store::set_meta(w.conn(), key, &value)?;
                }
                Ok(())
            })
            .await
            .expect("enroll");
        // Nothing to push, but a sync also pulls: it needs the hub all the same.
        let reply = admin.post(SYNC_RUN, &json!({})).await;
        assert_eq!(
            (reply.status, reply.json["hub"]["code"].as_str()),
            (502, Some("hub_unreachable")),
            "{}",
            reply.text
        );

        admin.register(&aminata()).await;
        let reply = admin.post(SYNC_RUN, &json!({})).await;
        assert_eq!((reply.status, reply.json["code"].as_str()), (502, Some("sync_failed")), "{}", reply.text);
        conforms("SyncFailure", &reply.json);
        assert_eq!(reply.json["hub"]["code"], "hub_unreachable");
        assert_eq!(reply.json["hub"]["retryable"], true);
        let status = admin.get(SYNC).await.expect(200);
        conforms("SyncStatus", &status);
        assert_eq!((status["site_code"].as_str(), status["outbox_depth"].as_u64()), (Some("KATI"), Some(1)));
        assert_eq!(status["last_error_code"], "hub_unreachable");
        assert!(status["last_error_at"].is_string());
    }

    #[tokio::test]
    async fn only_admins_manage_accounts() {
        let app = App::start().await;
        let new = json!({ "username": "awa.traore", "password": "un secret", "role": "clinician" });
        for name in ["reg", "clinic"] {
            let user = app.signed_in(name).await;
            user.get(USERS).await.error(403, "forbidden");
            user.post(USERS, &new).await.error(403, "forbidden");
        }
        assert_eq!(app.state.store.user_count().await.expect("users"), 3);

        let admin = app.signed_in("admin").await;
        let created = admin.post(USERS, &new).await.expect(201);
        conforms("User", &created);
        assert_eq!(created["username"], "awa.traore");
        assert_eq!(created["role"], "clinician");
        app.login("awa.traore", "un secret").await.expect(200);

        let refused = [
            ("username", json!("awa.traore"), 409, "username_taken"),
            ("username", json!("a b"), 422, "invalid_username"),
            ("password", json!("court"), 422, "password_too_short"),
            ("role", json!("doctor"), 422, "invalid_role"),
            ("is_admin", json!(true), 422, "invalid_body"),
        ];
        for (field, value, status, code) in refused {
            let body = with(&new, &json!({ "username": "sali", field: value }));
            admin.post(USERS, &body).await.error(status, code);
        }
        let list = admin.get(USERS).await.expect(200);
        conforms("UserList", &list);
        let users = list["users"].as_array().expect("users");
        let names: Vec<_> = users.iter().map(|u| &u["username"]).collect();
        assert_eq!(names, ["admin", "awa.traore", "clinic", "reg"]);
    }
}

mod validation {
    use super::*;

    /// `(changes to a valid body, field, code)`: a `null` change removes the field.
    type Case = (Value, &'static str, &'static str);

    /// A case changing only the field it expects to be refused.
    fn bad(field: &'static str, code: &'static str, value: impl Into<Value>) -> Case {
        (json!({ field: value.into() }), field, code)
    }

    /// Where refused bodies go, and who sends them.
    struct Target<'a> {
        app: &'a App,
        api: Api<'a>,
        method: Method,
        path: String,
    }

    impl Target<'_> {
        async fn send(&self, body: &Value) -> Reply {
            let method = self.method.clone();
            self.api.send(method, &self.path, Some(body)).await
        }

        async fn raw(&self, ct: Option<&str>, body: &str) -> Reply {
            let method = self.method.clone();
            self.api.raw(method, &self.path, ct, body.into()).await
        }

        /// Sends `valid` with each case's changes: the answer must name the
        /// field and code, and nothing may be stored.
        async fn refuses(&self, valid: &Value, cases: &[Case]) {
            let before = self.app.counts().await;
            for (changes, field, code) in cases {
                let body = with(valid, changes);
                let errors = self.send(&body).await.field_errors();
                let expected = (field.to_string(), code.to_string());
                assert!(errors.contains(&expected), "{body}: {errors:?}");
            }
            assert_eq!(self.app.counts().await, before, "{}", self.path);
        }

        /// Bodies that do not fit the type (the message must name the
        /// culprit), are not JSON, or are too large: nothing may be stored.
        async fn refuses_shapes(&self, cases: &[(Value, &str)]) {
            let before = self.app.counts().await;
            for (body, culprit) in cases {
                let error = self.send(body).await.error(422, "invalid_body");
                let message = error["message"].to_string();
                assert!(message.contains(culprit), "{body}: {message}");
            }
            let json = Some("application/json");
            self.raw(json, "{,}").await.error(400, "invalid_json");
            self.raw(json, "").await.error(400, "invalid_json");
            for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
                let reply = self.raw(ct, "{}").await;
                reply.error(415, "unsupported_media_type");
            }
            let huge = json!({ "notes": "x".repeat(edge::MAX_BODY_BYTES) }).to_string();
            let reply = self.raw(json, &huge).await;
            let body = reply.error(413, "payload_too_large");
            conforms("Error", &body);
            assert_eq!(self.app.counts().await, before, "{}", self.path);
        }
    }

    async fn target<'a>(app: &'a App, user: &str, method: Method, path: &str) -> Target<'a> {
        let api = app.signed_in(user).await;
        Target { app, api, method, path: path.to_owned() }
    }

    #[tokio::test]
    async fn invalid_patients_are_refused_field_by_field() {
        let app = App::start().await;
        let long = "n".repeat(101);
        let old_estimate = json!({ "birth_date": null, "age_years": 121 });
        let consent_no_phone = json!({ "phone": null, "whatsapp_consent": true });
        let future_consent = json!({ "whatsapp_consent": true, "whatsapp_consent_date": day(7) });
        let cases = [
            bad("given_name", "required", Value::Null),
            bad("family_name", "required", "   "),
            bad("village", "required", Value::Null),
            bad("sex", "required", Value::Null),
            bad("sex", "invalid_choice", "f"),
            bad("birth_date", "required", Value::Null),
            bad("birth_date", "invalid_date", "17/05/1990"),
            bad("birth_date", "invalid_date", "1990-02-30"),
            bad("birth_date", "in_future", day(7)),
            bad("birth_date", "out_of_range", "1890-01-01"),
            (json!({ "age_years": 30 }), "birth_date", "ambiguous"),
            (old_estimate, "age_years", "out_of_range"),
            bad("phone", "invalid_phone", "12345"),
            bad("phone", "invalid_phone", "76x23456"),
            (consent_no_phone, "phone", "required_for_whatsapp"),
            (future_consent, "whatsapp_consent_date", "in_future"),
            bad("given_name", "too_long", long.as_str()),
            bad("village", "too_long", long.as_str()),
            bad("national_id", "invalid_characters", "AB#12"),
            bad("given_name", "invalid_characters", "Ami\u{7}nata"),
        ];
        let patients = target(&app, "reg", Method::POST, PATIENTS).await;
        patients.refuses(&aminata(), &cases).await;
        let shape = |changes: Value| with(&aminata(), &changes);
        let shapes = [
            (shape(json!({ "nickname": "Ami" })), "nickname"),
            (shape(json!({ "given_name": 5 })), "given_name"),
            (shape(json!({ "age_years": -1 })), "age_years"),
            (shape(json!({ "whatsapp_consent": 1 })), "whatsapp_consent"),
        ];
        patients.refuses_shapes(&shapes).await;
        assert_eq!(app.counts().await, counts(0, 0, 0));
        let list = patients.api.get(PATIENTS).await.expect(200);
        assert_eq!(list, json!({ "patients": [] }));
    }

    #[tokio::test]
    async fn invalid_encounters_are_refused_field_by_field() {
        let app = App::start().await;
        let clinic = app.signed_in("clinic").await;
        let child = json!({ "given_name": "Awa", "birth_date": "2020-03-10" });
        let child = clinic.register(&with(&aminata(), &child)).await;
        let path = format!("{}/encounters", patient_path(&child));
        let bp = |systolic: f64, diastolic: f64| json!({ "bp_systolic": systolic, "bp_diastolic": diastolic });
        let cases = [
            bad("kind", "required", Value::Null),
            bad("kind", "invalid_choice", "surgery"),
            bad("date", "in_future", day(7)),
            bad("date", "before_birth", "2020-03-09"),
            bad("date", "invalid_date", "2024-02-30"),
            bad("weight_kg", "out_of_range", 700),
            bad("weight_kg", "out_of_range", 0),
            bad("temperature_c", "out_of_range", 101.3),
            (bp(80.0, 120.0), "bp_diastolic", "not_below_systolic"),
            (bp(120.0, 120.0), "bp_diastolic", "not_below_systolic"),
            (bp(120.5, 80.0), "bp_systolic", "not_whole"),
            (bp(300.0, 80.0), "bp_systolic", "out_of_range"),
            bad("bp_systolic", "required_with_diastolic", Value::Null),
            bad("bp_diastolic", "required_with_systolic", Value::Null),
            bad("icd10", "invalid_icd10", "malaria"),
            bad("complaint", "too_long", "c".repeat(501)),
            bad("notes", "too_long", "n".repeat(4001)),
        ];
        let valid = json!({
            "kind": "consultation", "date": "2024-01-15", "bp_systolic": 110, "bp_diastolic": 70
        });
        let encounters = target(&app, "clinic", Method::POST, &path).await;
        encounters.refuses(&valid, &cases).await;
        let shapes = [
            (with(&valid, &json!({ "bp_systolic": "12" })), "bp_systolic"),
            (with(&valid, &json!({ "temperature": 38 })), "temperature"),
        ];
        encounters.refuses_shapes(&shapes).await;
        assert_eq!(app.counts().await, counts(1, 0, 1));
        clinic.post(&path, &valid).await.expect(201);
    }

    #[tokio::test]
    async fn an_invalid_patch_leaves_the_patient_unchanged() {
        let app = App::start().await;
        let reg = app.signed_in("reg").await;
        let path = patient_path(&reg.register(&aminata()).await);
        let original = reg.get(&path).await.expect(200);
        let national_id = json!({ "village": "Ségou", "national_id": "№ 12" });
        let consent_no_phone = json!({ "phone": "", "whatsapp_consent": true });
        let cases = [
            bad("phone", "invalid_phone", "abc"),
            bad("sex", "invalid_choice", "x"),
            bad("given_name", "required", ""),
            bad("birth_date", "in_future", day(7)),
            bad("age_years", "out_of_range", 200),
            bad("village", "too_long", "v".repeat(101)),
            (consent_no_phone, "phone", "required_for_whatsapp"),
            (national_id, "national_id", "invalid_characters"),
        ];
        let patch = target(&app, "reg", Method::PATCH, &path).await;
        patch.refuses(&json!({}), &cases).await;
        let shapes = [(json!({ "village": "Ségou", "id": "x" }), "id")];
        patch.refuses_shapes(&shapes).await;
        assert_eq!(reg.get(&path).await.expect(200), original);
    }

    #[tokio::test]
    async fn unknown_and_malformed_ids_are_not_found() {
        let app = App::start().await;
        let clinic = app.signed_in("clinic").await;
        clinic.register(&aminata()).await;
        let unknown = PatientId::new().to_string();
        let patch = json!({ "village": "Ségou" });
        let encounter = json!({ "kind": "consultation" });
        for id in [unknown.as_str(), "not-a-uuid", "123", "..%2F..%2Fetc"] {
            let path = format!("{PATIENTS}/{id}");
            clinic.get(&path).await.error(404, "not_found");
            clinic.patch(&path, &patch).await.error(404, "not_found");
            let encounters = format!("{path}/encounters");
            let reply = clinic.post(&encounters, &encounter).await;
            reply.error(404, "not_found");
        }
        let reply = clinic.get("/api/v1/no-such-route").await;
        reply.error(404, "not_found");
        assert_eq!(app.counts().await, counts(1, 0, 1));
    }
}

mod patients {
    use super::*;

    #[tokio::test]
    async fn register_edit_and_record_encounters() {
        let app = App::start().await;
        let clinic = app.signed_in("clinic").await;
        let national_id = json!({ "national_id": " 12-34/B " });
        let created = clinic.register(&with(&aminata(), &national_id)).await;
        let expected = json!({
            "given_name": "Aminata", "family_name": "Traoré", "sex": "female",
            "birth_date": "1990-05-17", "birth_date_estimated": false, "phone": "+22376123456",
            "village": "Kati", "national_id": "12-34/B", "whatsapp_consent": false,
            "whatsapp_consent_date": null, "site_id": null,
        });
        let server_made = json!({ "id": null, "created_at": null, "updated_at": null });
        assert_eq!(with(&created, &server_made), expected, "normalised");
        let path = patient_path(&created);

        let unchanged = clinic.patch(&path, &json!({})).await.expect(200);
        assert_eq!(unchanged, created, "an empty patch changes nothing");
        let changes = json!({ "village": "Ségou", "whatsapp_consent": true });
        let patched = clinic.patch(&path, &changes).await.expect(200);
        conforms("Patient", &patched);
        assert!(timestamp(&patched["updated_at"]) > timestamp(&created["updated_at"]));
        let server_made = json!({ "whatsapp_consent_date": day(0), "updated_at": patched["updated_at"] });
        let expected = with(&with(&created, &changes), &server_made);
        assert_eq!(patched, expected, "only the named fields change");

        let child = json!({
            "given_name": "Awa", "family_name": "Keïta", "sex": "female",
            "birth_date": "2020-03-10", "village": "Kati"
        });
        let child = patient_path(&clinic.register(&child).await);
        let child_encounters = format!("{child}/encounters");
        let vaccination = json!({ "kind": "vaccination", "date": "2023-06-01" });
        let recorded = clinic.post(&child_encounters, &vaccination).await;
        let recorded = recorded.expect(201);
        conforms("Encounter", &recorded);
        assert_eq!(recorded["age_group"], "1_4");
        assert_eq!(recorded["clinician"], "clinic");
        let infant = with(&vaccination, &json!({ "date": "2021-01-01" }));
        let infant = clinic.post(&child_encounters, &infant).await.expect(201);
        assert_eq!(infant["age_group"], "under_1");
        let consultation = json!({
            "kind": "consultation", "complaint": "fièvre", "icd10": " b54 ", "weight_kg": 61.5,
            "temperature_c": 38.9, "bp_systolic": 120, "bp_diastolic": 80
        });
        let adult_encounters = format!("{path}/encounters");
        let adult = clinic.post(&adult_encounters, &consultation).await.expect(201);
        assert_eq!(adult["date"], day(0), "the date defaults to today");
        assert_eq!(adult["icd10"], "B54", "trimmed and upper-cased");
        assert_eq!(adult["age_group"], "15_plus");
        assert_eq!(adult["bp_systolic"], 120);
        assert_eq!(adult["weight_kg"], 61.5);
        let follow_up = json!({ "kind": "follow_up" });
        clinic.post(&child_encounters, &follow_up).await.expect(201);

        let chart = clinic.get(&child).await.expect(200);
        conforms("Patient", &chart);
        let encounters = chart["encounters"].as_array().expect("encounters");
        let dates: Vec<_> = encounters.iter().map(|e| e["date"].clone()).collect();
        let newest_first = [json!(day(0)), json!("2023-06-01"), json!("2021-01-01")];
        assert_eq!(dates, newest_first);
        assert_eq!(encounters[1], recorded);

        // Two registrations, one patch (the empty one changed nothing), four encounters.
        let status = clinic.get(SYNC).await.expect(200);
        conforms("SyncStatus", &status);
        assert_eq!(status["enrolled"], false);
        assert_eq!(status["outbox_depth"], 7);
        assert_eq!(status["device_id"], app.state.store.device_id().to_string());
        assert!(status["site_id"].is_null() && status["hub_url"].is_null());
        assert_eq!(app.counts().await, counts(2, 4, 7));
    }

    #[tokio::test]
    async fn similar_patients_need_confirmation() {
        let app = App::start().await;
        let reg = app.signed_in("reg").await;
        let first = reg.register(&aminata()).await;
        let same_name = json!({
            "given_name": "TRAORE", "family_name": "aminata", "sex": "female",
            "birth_date": "1990-12-01", "village": "Kati"
        });
        let same_phone = json!({
            "given_name": "Awa", "birth_date": "1985-01-01", "phone": "+223 76.12.34.56"
        });
        let same_phone = with(&aminata(), &same_phone);
        for (body, reason) in [(&same_name, "name_and_birth_year"), (&same_phone, "phone")] {
            let error = reg.post(PATIENTS, body).await;
            let error = error.error(409, "possible_duplicate");
            let expected = json!([{
                "id": first["id"], "given_name": "Aminata", "family_name": "Traoré",
                "birth_date": "1990-05-17", "village": "Kati", "reason": reason
            }]);
            assert_eq!(error["duplicates"], expected);
        }
        assert_eq!(app.counts().await, counts(1, 0, 1));
        let maybe = format!("{PATIENTS}?allow_duplicate=maybe");
        let maybe = reg.post(&maybe, &same_name).await;
        maybe.error(400, "invalid_query");
        let confirmed = format!("{PATIENTS}?allow_duplicate=true");
        let second = reg.post(&confirmed, &same_name).await.expect(201);
        assert_ne!(second["id"], first["id"]);
        assert_eq!(app.counts().await, counts(2, 0, 2));
    }

    /// The ids of the patients `q` finds, sorted.
    async fn search(api: &Api<'_>, q: &str) -> Vec<String> {
        let url = reqwest::Url::parse_with_params("http://edge/", [("q", q)]).expect("url");
        let query = url.query().unwrap_or_default();
        let found = api.get(&format!("{PATIENTS}?{query}")).await.expect(200);
        conforms("PatientList", &found);
        let patients = found["patients"].as_array().expect("patients");
        assert!(patients.iter().all(|p| p.get("encounters").is_none()));
        ids(&patients.iter().collect::<Vec<_>>())
    }

    fn ids(patients: &[&Value]) -> Vec<String> {
        let mut ids: Vec<_> = patients.iter().map(|p| p["id"].to_string()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn search_ignores_accents_case_order_and_phone_format() {
        let app = App::start().await;
        let reg = app.signed_in("reg").await;
        let aminata = reg.register(&aminata()).await;
        let moussa = json!({
            "given_name": "Moussa", "family_name": "TRAORE", "sex": "male", "age_years": 40,
            "phone": "66 55 44 33", "village": "Ségou"
        });
        let moussa = reg.register(&moussa).await;
        let awa = json!({
            "given_name": "Awa", "family_name": "Keïta", "sex": "female",
            "birth_date": "2001-01-01", "village": "Kati", "national_id": "NINA 778"
        });
        let awa = reg.register(&awa).await;
        let cases: [(&str, &[&Value]); 13] = [
            ("traore aminata", &[&aminata]),
            ("AMINATA Traoré", &[&aminata]),
            ("traoré", &[&aminata, &moussa]),
            ("keita", &[&awa]),
            ("ami tra", &[&aminata]),
            ("76 12 34 56", &[&aminata]),
            ("+223 76.12.34.56", &[&aminata]),
            ("0022376123456", &[&aminata]),
            ("6655", &[&moussa]),
            ("nina778", &[&awa]),
            (moussa["id"].as_str().expect("id"), &[&moussa]),
            ("zzz", &[]),
            ("", &[&aminata, &moussa, &awa]),
        ];
        for (q, expected) in cases {
            assert_eq!(search(&reg, q).await, ids(expected), "q={q:?}");
        }
        let one = reg.get(&format!("{PATIENTS}?limit=1")).await.expect(200);
        assert_eq!(one["patients"].as_array().map(Vec::len), Some(1));
        let negative = format!("{PATIENTS}?limit=-1");
        reg.get(&negative).await.error(400, "invalid_query");
        let long = format!("{PATIENTS}?q={}", "a".repeat(201));
        reg.get(&long).await.error(400, "query_too_long");
    }
}

mod document {
    use super::*;

    /// Every route the edge serves: keep in step with `edge::router` and `api::router`.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/api/v1/openapi.json"),
        ("post", "/api/v1/auth/login"),
        ("get", "/api/v1/patients"),
        ("post", "/api/v1/patients"),
        ("get", "/api/v1/patients/{id}"),
        ("patch", "/api/v1/patients/{id}"),
        ("post", "/api/v1/patients/{id}/encounters"),
        ("get", "/api/v1/hub/patients"),
        ("post", "/api/v1/hub/patients/{id}/fetch"),
        ("get", "/api/v1/sync/status"),
        ("post", "/api/v1/sync/run"),
        ("get", "/api/v1/users"),
        ("post", "/api/v1/users"),
    ];
    const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    const SCHEMAS: &[&str] = &[
        "Patient",
        "PatientDraft",
        "PatientPatch",
        "Encounter",
        "EncounterDraft",
        "Duplicate",
        "FieldError",
        "Error",
        "SyncStatus",
        "SyncRunReport",
        "SyncFailure",
        "User",
        "LoginRequest",
        "LoginResponse",
    ];

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                out.extend(map.get("$ref").and_then(Value::as_str));
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// The `(method, path)` of every operation in the document.
    fn operations(doc: &Value) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let methods = METHODS.iter().filter(|m| item.get(**m).is_some());
            out.extend(methods.map(|m| (*m, path.as_str())));
        }
        out
    }

    #[test]
    fn the_document_is_complete_and_every_ref_resolves() {
        let doc = openapi();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let bearer = &doc["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(bearer["type"], "http");
        assert_eq!(bearer["scheme"], "bearer");
        assert_eq!(bearer["bearerFormat"], "JWT");
        assert_eq!(doc["security"], json!([{ "bearerAuth": [] }]));
        for name in SCHEMAS {
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
        let mut all = Vec::new();
        refs(doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        for r in all {
            let target = r.strip_prefix('#').and_then(|p| doc.pointer(p));
            assert!(target.is_some(), "{r} does not resolve");
        }

        let documented = operations(doc);
        for route in ROUTES {
            assert!(documented.contains(route), "{route:?} is not documented");
        }
        for (method, path) in documented {
            assert!(ROUTES.contains(&(method, path)), "{method} {path}?");
            let responses = doc["paths"][path][method]["responses"].as_object();
            for (status, response) in responses.expect("responses") {
                let target = response["$ref"].as_str().and_then(|r| doc.pointer(&r[1..]));
                let content = &target.unwrap_or(response)["content"]["application/json"];
                if status.starts_with('4') || status == "500" {
                    let schema = &content["schema"]["$ref"];
                    let error = "#/components/schemas/Error";
                    assert_eq!(schema, error, "{method} {path} {status}");
                }
            }
        }
    }

    /// Each route in ROUTES is really served, answers only documented
    /// statuses, and needs a token exactly when the document says so.
    #[tokio::test]
    async fn the_served_document_matches_the_router() {
        let app = App::start().await;
        let reply = app.anonymous().get("/api/v1/openapi.json").await;
        assert!(reply.content_type.starts_with("application/json"));
        assert_eq!(&reply.expect(200), openapi());

        let fallback = app.anonymous().get("/api/v1/no-such-route").await.text;
        let admin = app.signed_in("admin").await;
        let id = PatientId::new().to_string();
        for &(method, path) in ROUTES {
            let op = &openapi()["paths"][path][method];
            let concrete = path.replace("{id}", &id);
            let method: Method = method.to_uppercase().parse().expect("method");
            let body = (method != Method::GET).then(|| json!({}));
            let served = admin.send(method.clone(), &concrete, body.as_ref()).await;
            let unserved = served.status == 405 || served.text == fallback;
            assert!(!unserved, "{method} {path} is not served");
            let status = served.status.to_string();
            let documented = op["responses"].get(&status).is_some();
            assert!(documented, "{method} {path}: {status}");
            let anonymous = app.anonymous();
            let anonymous = anonymous.send(method.clone(), &concrete, body.as_ref()).await;
            let open = op["security"] == json!([]);
            assert_eq!(anonymous.status != 401, open, "{method} {path}: security");
            let has_401 = op["responses"].get("401").is_some();
            assert!(open || has_401, "{method} {path}: 401");
        }
    }
}

mod operations {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn health_answers() {
        let app = App::start().await;
        let health = app.anonymous().get("/health").await.expect(200);
        assert_eq!(health, json!({ "status": "ok", "database": "ok" }));
    }

    #[tokio::test]
    async fn metrics_count_routes_and_data_but_never_people() {
        let app = App::start().await;
        let clinic = app.signed_in("clinic").await;
        let patient = clinic.register(&aminata()).await;
        let path = patient_path(&patient);
        let encounter = json!({ "kind": "consultation", "complaint": "toux" });
        let encounters = format!("{path}/encounters");
        clinic.post(&encounters, &encounter).await.expect(201);
        clinic.get(&path).await.expect(200);
        let not_a_uuid = format!("{PATIENTS}/not-a-uuid");
        clinic.get(&not_a_uuid).await.error(404, "not_found");
        let probe = clinic.get("/api/v1/probe-1234").await;
        probe.error(404, "not_found");

        let reply = app.anonymous().get("/metrics").await;
        assert_eq!(reply.status, 200);
        let ct = &reply.content_type;
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = reply.text;
        let series = [
            r#"{method="GET",route="/api/v1/patients/{id}",status_class="2xx"} 1"#,
            r#"{method="GET",route="/api/v1/patients/{id}",status_class="4xx"} 1"#,
            r#"{method="POST",route="/api/v1/patients",status_class="2xx"} 1"#,
            r#"{method="POST",route="/api/v1/patients/{id}/encounters",status_class="2xx"} 1"#,
        ];
        for labels in series {
            let line = format!("edge_http_requests_total{labels}");
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert_eq!(sample(&text, "edge_patients"), Some(1.0));
        assert_eq!(sample(&text, "edge_encounters"), Some(1.0));
        assert_eq!(sample(&text, "edge_outbox_pending_changes"), Some(2.0));
        let id = patient["id"].as_str().expect("id");
        for secret in [id, "Aminata", "Traor", "76123456", "Kati", "toux", "not-a-uuid", "probe"] {
            assert!(!text.contains(secret), "{secret:?} leaked into:\n{text}");
        }
    }
}

mod protocol {
    use super::*;

    #[tokio::test]
    async fn refusals_name_the_scheme_and_the_method() {
        let app = App::start().await;
        let anonymous = app.client.get(format!("{}{SYNC}", app.base)).send().await.expect("request");
        assert_eq!(anonymous.status(), 401);
        let challenge = anonymous.headers().get(reqwest::header::WWW_AUTHENTICATE).expect("WWW-Authenticate");
        assert_eq!(challenge, "Bearer");

        // The scheme name is case-insensitive (RFC 7235).
        let token = app.signed_in("admin").await.token().to_owned();
        app.caller(Some(format!("bearer {token}"))).get(SYNC).await.expect(200);

        let wrong_method = app.caller(Some(format!("Bearer {token}"))).send(Method::DELETE, PATIENTS, None).await;
        wrong_method.error(405, "method_not_allowed");
    }
}
