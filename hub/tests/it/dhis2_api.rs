//! `/api/v1/dhis2/*` over HTTP, on a hub whose DHIS2 is a fake and whose
//! background jobs run (`hub::jobs::spawn`, as `hub serve` starts them):
//! exports from the API to the fake and back, answers against the OpenAPI
//! schemas, refusals that change nothing, the mapping, the metrics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use hub::AppState;
use hub::config::Dhis2Config;
use reqwest::{Method, StatusCode};
use santerurale_fixtures::dhis2::FakeDhis2;
use santerurale_fixtures::openapi::{Schemas, Untyped};
use santerurale_shared::SiteId;
use serde_json::{Value, json};

use crate::dhis2_jobs::{EXAMPLE_MAPPING, KATI_OU, VALUES_PER_SITE, add_site, add_visits, dhis2_config, last_month};
use crate::support::{TestDb, TestHub, count};

pub fn schemas() -> &'static Schemas {
    static DOC: OnceLock<Schemas> = OnceLock::new();
    DOC.get_or_init(|| Schemas::parse(hub::api::OPENAPI, Untyped::AcceptAny))
}

/// A hub served on loopback with its export worker running.
struct Hub {
    hub: TestHub,
    token: String,
    jobs: Option<hub::jobs::Jobs>,
}

impl Hub {
    async fn start(dhis2: Dhis2Config) -> (Self, SiteId) {
        let hub = TestHub::configured(|c| c.dhis2 = dhis2).await;
        let kati = add_site(&hub.state.db, "KATI", Some(KATI_OU)).await;
        let jobs = hub::jobs::spawn(&hub.state).await.expect("jobs");
        let token = admin_token(&hub.state).await;
        (Self { hub, token, jobs: Some(jobs) }, kati)
    }

    fn pool(&self) -> &Pool {
        &self.hub.state.db
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut req = self.hub.http.request(method, self.hub.url(path)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn put_text(&self, path: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let resp = self
            .hub
            .http
            .put(self.hub.url(path))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .expect("send");
        (resp.status(), resp.json().await.expect("json"))
    }

    /// Polls the job until it is final.
    async fn finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, job) = self.call(Method::GET, &format!("/api/v1/dhis2/exports/{id}"), None).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "succeeded_with_conflicts" | "failed" | "superseded")
            ) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} not finished: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn job_count(&self) -> i64 {
        count(&self.hub, "dhis2_export_jobs").await
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The jobs stop before the server and the pool (the hub's own drop).
        drop(self.jobs.take());
    }
}

/// An admin account (inserted directly: no password hashing) and its token.
async fn admin_token(state: &AppState) -> String {
    let id = santerurale_shared::UserId::new();
    state
        .db
        .get()
        .await
        .expect("conn")
        .execute(
            "INSERT INTO users (id, username, password_hash, role) VALUES ($1, 'admin', 'not a hash', 'admin')",
            &[id.as_uuid()],
        )
        .await
        .expect("user");
    let admin = hub::auth::CurrentUser { id, username: "admin".into(), role: hub::auth::Role::Admin };
    state.tokens.issue(&admin).expect("issue").0
}

fn error_code(body: &Value) -> &str {
    schemas().conforms("Error", body);
    body["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_the_api_reaches_dhis2_and_reports_back() {
    let fake = FakeDhis2::start().await;
    let (hub, kati) = Hub::start(dhis2_config(&fake)).await;
    let period = last_month();
    add_visits(hub.pool(), kati, &[(period.start(), "consultation"), (period.end(), "vaccination")]).await;

    let (status, created) =
        hub.call(Method::POST, "/api/v1/dhis2/export", Some(&json!({ "period": period.to_string() }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    schemas().conforms("ExportCreated", &created);
    let jobs = created["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["site_id"], kati.to_string());
    assert_eq!(jobs[0]["period"], period.to_string());
    let id = jobs[0]["id"].as_str().expect("id").to_owned();

    // The worker runs it (woken by the API).
    let job = hub.finished(&id).await;
    schemas().conforms("ExportJob", &job);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["trigger"], "api");
    assert_eq!(job["site_code"], "KATI");
    assert_eq!(job["payload"]["orgUnit"], KATI_OU);
    assert_eq!(job["payload"]["dataValues"].as_array().map(Vec::len), Some(VALUES_PER_SITE));
    assert_eq!(job["payload"], fake.received()[0].body, "the job shows what was sent");
    for key in ["imported", "updated", "ignored", "deleted"] {
        assert!(job["import_count"][key].is_u64(), "{key}: {job}");
    }
    assert_eq!(job["import_count"]["imported"], VALUES_PER_SITE, "zeros included: {job}");
    assert_eq!(job["conflicts"], json!([]));
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["response_status"], 200);
    assert!(job["response"].is_object());

    let (status, list) = hub.call(Method::GET, "/api/v1/dhis2/exports", None).await;
    assert_eq!(status, StatusCode::OK);
    schemas().conforms("ExportJobList", &list);
    assert_eq!(list["jobs"][0]["id"], id.as_str());

    // Re-run: a new job, the first one superseded once it succeeds.
    let (status, rerun) = hub.call(Method::POST, &format!("/api/v1/dhis2/exports/{id}/rerun"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rerun}");
    schemas().conforms("ExportJob", &rerun);
    assert_eq!(rerun["rerun_of"], id.as_str());
    assert_eq!(rerun["trigger"], "rerun");
    let second = hub.finished(rerun["id"].as_str().expect("id")).await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(second["import_count"]["imported"], 0, "{second}");
    let (_, first) = hub.call(Method::GET, &format!("/api/v1/dhis2/exports/{id}"), None).await;
    assert_eq!(first["status"], "superseded");
    assert_eq!(first["superseded_by"], second["id"]);

    // The metrics.
    let metrics = hub.hub.http.get(hub.hub.url("/metrics")).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.contains("dhis2_export_jobs_total{status=\"succeeded\"} 2"), "{metrics}");
    assert!(metrics.contains(&format!("dhis2_values_sent_total {}", 2 * VALUES_PER_SITE)), "{metrics}");
    let last = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dhis2_last_success_timestamp_seconds "))
        .and_then(|v| v.parse::<i64>().ok())
        .expect("dhis2_last_success_timestamp_seconds");
    assert!(last > 0);

    // The preview: the values counted now, nothing sent.
    let sent = fake.received().len();
    let (status, preview) =
        hub.call(Method::GET, &format!("/api/v1/dhis2/preview?period={period}&site_id={kati}"), None).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    schemas().conforms("Dhis2Preview", &preview);
    let site = &preview["sites"][0];
    assert_eq!(site["payload"]["orgUnit"], KATI_OU);
    let total = site["values"].as_array().expect("values").iter().find(|v| v["data_element_code"] == "CONS_TOTAL");
    assert_eq!(total.map(|v| v["value"].clone()), Some(json!(1)));
    assert_eq!(fake.received().len(), sent, "a preview sends nothing");
}

#[tokio::test]
async fn refused_exports_change_nothing() {
    let fake = FakeDhis2::start().await;
    let (hub, kati) = Hub::start(dhis2_config(&fake)).await;
    let next_month = last_month().start() + time::Duration::days(70);
    let future = hub::dhis2::period::Period::containing(next_month, hub::dhis2::period::PeriodType::Monthly);
    let cases = [
        (json!({ "period": "2024-04" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_period"),
        (json!({ "period": "202413" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_period"),
        (json!({ "period": "2024W15" }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_period"),
        (json!({ "period": future.to_string() }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_period"),
        (json!({ "period": "202404", "site_id": SiteId::new().to_string() }), StatusCode::NOT_FOUND, "site_not_found"),
        (json!({ "period": "202404", "site_id": "KATI" }), StatusCode::NOT_FOUND, "site_not_found"),
        (json!({ "site_id": kati.to_string() }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (json!({ "period": "202404", "dryrun": true }), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
    ];
    for (body, expected, code) in cases {
        let (status, error) = hub.call(Method::POST, "/api/v1/dhis2/export", Some(&body)).await;
        assert_eq!(status, expected, "{body}: {error}");
        assert_eq!(error_code(&error), code, "{body}: {error}");
    }
    let (status, error) = hub.call(Method::GET, &format!("/api/v1/dhis2/exports/{}", uuid::Uuid::now_v7()), None).await;
    assert_eq!((status, error_code(&error)), (StatusCode::NOT_FOUND, "export_not_found"));
    let (status, error) = hub.call(Method::POST, "/api/v1/dhis2/exports/not-a-uuid/rerun", None).await;
    assert_eq!((status, error_code(&error)), (StatusCode::NOT_FOUND, "export_not_found"));
    let (status, error) = hub.call(Method::GET, "/api/v1/dhis2/preview?period=2024W15", None).await;
    assert_eq!((status, error_code(&error)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_period"));
    let (status, error) = hub.call(Method::GET, "/api/v1/dhis2/exports?limit=0", None).await;
    assert_eq!((status, error_code(&error)), (StatusCode::BAD_REQUEST, "invalid_query"));

    // Without a token.
    let resp = hub.hub.http.post(hub.hub.url("/api/v1/dhis2/export")).json(&json!({ "period": "202404" }));
    assert_eq!(resp.send().await.expect("send").status(), StatusCode::UNAUTHORIZED);

    assert_eq!(hub.job_count().await, 0, "no job was created");
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn periods_are_summed_up_and_the_list_filtered() {
    let fake = FakeDhis2::start().await;
    let (hub, kati) = Hub::start(dhis2_config(&fake)).await;
    let period = last_month().to_string();
    add_visits(hub.pool(), kati, &[(last_month().start(), "consultation")]).await;
    let (status, created) = hub.call(Method::POST, "/api/v1/dhis2/export", Some(&json!({ "period": period }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    hub.finished(created["jobs"][0]["id"].as_str().expect("id")).await;

    let (status, body) = hub.call(Method::GET, "/api/v1/dhis2/periods", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    schemas().conforms("Dhis2Periods", &body);
    let p = &body["periods"][0];
    assert_eq!(
        (p["period"].as_str(), p["sites"].as_i64(), p["succeeded"].as_i64()),
        (Some(&*period), Some(1), Some(1))
    );
    assert_eq!((&p["not_exported"], &p["not_exported_sites"]), (&json!(0), &json!([])));

    let hub = &hub;
    let listed =
        |query: String| async move { hub.call(Method::GET, &format!("/api/v1/dhis2/exports?{query}"), None).await };
    let (status, body) = listed(format!("period={period}&status=succeeded")).await;
    assert_eq!((status, body["jobs"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{body}");
    schemas().conforms("ExportJobList", &body);
    let (_, body) = listed(format!("period={period}&status=failed")).await;
    assert_eq!(body["jobs"], json!([]));
    let (_, body) = listed("period=202001".to_owned()).await;
    assert_eq!(body["jobs"], json!([]));
    let (status, error) = listed("status=done".to_owned()).await;
    assert_eq!((status, error_code(&error)), (StatusCode::BAD_REQUEST, "invalid_query"), "{error}");
    let (status, error) = hub.call(Method::GET, "/api/v1/dhis2/periods?limit=0", None).await;
    assert_eq!((status, error_code(&error)), (StatusCode::BAD_REQUEST, "invalid_query"));
}

#[tokio::test]
async fn the_mapping_is_shown_saved_refused_and_reset() {
    let fake = FakeDhis2::start().await;
    let (hub, _) = Hub::start(Dhis2Config { mapping_file: None, ..dhis2_config(&fake) }).await;
    let (status, shown) = hub.call(Method::GET, "/api/v1/dhis2/mapping", None).await;
    assert_eq!(status, StatusCode::OK);
    schemas().conforms("Dhis2MappingView", &shown);
    assert_eq!(shown["source"]["kind"], "default");
    assert!(!shown["missing_uids"].as_array().expect("missing").is_empty(), "the shipped mapping has codes only");

    // Invalid: refused with every problem, nothing saved.
    let mut bad = shown["mapping"].clone();
    bad["indicators"][0]["filter"]["sex"] = json!("other");
    bad["indicators"][1]["filter"]["min_age_years"] = json!(9);
    bad["indicators"][1]["filter"]["max_age_years"] = json!(5);
    let (status, error) = hub.call(Method::PUT, "/api/v1/dhis2/mapping", Some(&bad)).await;
    assert_eq!((status, error_code(&error)), (StatusCode::UNPROCESSABLE_ENTITY, "mapping_invalid"), "{error}");
    assert!(error["problems"].as_array().is_some_and(|p| p.len() >= 2), "{error}");
    let (status, error) = hub.put_text("/api/v1/dhis2/mapping", "application/toml", "[data_set\ncode = 1").await;
    assert_eq!((status, error_code(&error)), (StatusCode::UNPROCESSABLE_ENTITY, "mapping_invalid"), "{error}");
    let (_, unchanged) = hub.call(Method::GET, "/api/v1/dhis2/mapping", None).await;
    assert_eq!(unchanged, shown, "nothing saved");

    // A valid mapping, in TOML: the example, every uid filled.
    let example = std::fs::read_to_string(EXAMPLE_MAPPING).expect("example");
    let (status, saved) = hub.put_text("/api/v1/dhis2/mapping", "application/toml", &example).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    schemas().conforms("Dhis2MappingView", &saved);
    assert_eq!(saved["source"]["kind"], "database");
    assert_eq!(saved["missing_uids"], json!([]));
    assert_eq!(saved["mapping"]["data_set"]["uid"], "srMonthly01");
    // And in JSON.
    let (status, saved_json) = hub.call(Method::PUT, "/api/v1/dhis2/mapping", Some(&saved["mapping"])).await;
    assert_eq!(status, StatusCode::OK, "{saved_json}");
    assert_eq!(saved_json["mapping"], saved["mapping"]);

    let (status, reset) = hub.call(Method::DELETE, "/api/v1/dhis2/mapping", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reset["source"]["kind"], "default");
    assert_eq!(reset["mapping"], shown["mapping"]);
}

#[tokio::test]
async fn resolving_fills_the_uids_from_dhis2() {
    // Without a DHIS2 URL: a clear 409.
    let (hub, _) =
        Hub::start(Dhis2Config { url: None, username: None, password: None, ..Dhis2Config::default() }).await;
    let (status, error) = hub.call(Method::POST, "/api/v1/dhis2/mapping/resolve", None).await;
    assert_eq!((status, error_code(&error)), (StatusCode::CONFLICT, "dhis2_not_configured"), "{error}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("HUB_DHIS2_URL")));
    drop(hub);

    let fake = FakeDhis2::start().await;
    let (hub, _) = Hub::start(Dhis2Config { mapping_file: None, ..dhis2_config(&fake) }).await;
    let siby = add_site(hub.pool(), "SIBY", None).await;
    hub.pool()
        .get()
        .await
        .expect("conn")
        .execute("UPDATE sites SET dhis2_org_unit_code = 'OU_SIBY' WHERE id = $1", &[siby.as_uuid()])
        .await
        .expect("org unit code");
    let (status, report) = hub.call(Method::POST, "/api/v1/dhis2/mapping/resolve", None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    schemas().conforms("Dhis2ResolveReport", &report);
    assert_eq!(report["missing"], json!([]), "{report}");
    let (_, shown) = hub.call(Method::GET, "/api/v1/dhis2/mapping", None).await;
    assert_eq!(shown["source"]["kind"], "database", "the resolved mapping is saved");
    assert_eq!(shown["missing_uids"], json!([]));
    assert_eq!(shown["mapping"]["data_set"]["uid"], "srMonthly01");
    let org_unit: Option<String> = hub
        .pool()
        .get()
        .await
        .expect("conn")
        .query_one("SELECT dhis2_org_unit FROM sites WHERE id = $1", &[siby.as_uuid()])
        .await
        .expect("site")
        .get(0);
    assert_eq!(org_unit.as_deref(), Some("ouSiby00001"));
}

/// `hub` with `args`, on the test database, its DHIS2 the fake (no other
/// `HUB_` variable of the environment).
async fn hub_cli(db: &TestDb, fake: Option<&FakeDhis2>, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_hub"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HUB_") || k == "DATABASE_URL") {
        cmd.env_remove(key);
    }
    cmd.env("HUB_DATA_DIR", dir.path()).env("DATABASE_URL", db.url()).env("HUB_DHIS2_MAPPING", EXAMPLE_MAPPING);
    if let Some(fake) = fake {
        cmd.env("HUB_DHIS2_URL", fake.url())
            .env("HUB_DHIS2_USERNAME", crate::dhis2_jobs::USER)
            .env("HUB_DHIS2_PASSWORD", crate::dhis2_jobs::PASSWORD)
            .env("HUB_DHIS2_RETRY_BASE_SECONDS", "1");
    }
    let out = cmd.args(args).output().await.expect("run hub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_exports_runs_to_the_end_and_lists() {
    let fake = FakeDhis2::start().await;
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let kati = add_site(&pool, "KATI", Some(KATI_OU)).await;
    add_site(&pool, "BARE", None).await;
    let period = last_month();
    add_visits(&pool, kati, &[(period.start(), "consultation")]).await;
    let p = period.to_string();

    // DHIS2 down once: the CLI waits for the retry and reports the outcome.
    fake.fail_next(1, santerurale_fixtures::dhis2::Failure::Status(503));
    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "export", "--period", &p, "--site", "kati"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("KATI") && stdout.contains("succeeded") && stdout.contains("attempts 2"), "{stdout}");
    assert_eq!(
        fake.value(KATI_OU, &p, crate::dhis2_jobs::CONS_TOTAL, crate::dhis2_jobs::DEFAULT_COC).as_deref(),
        Some("1")
    );

    // Every site: the one without an org unit fails, and so does the command.
    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "export", "--period", &p, "--dry-run"]).await;
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("BARE") && stdout.contains("failed") && stdout.contains("not ready"), "{stdout}");
    assert!(stderr.contains("1 of 2 export job(s) did not succeed"), "{stderr}");

    let (ok, stdout, _) = hub_cli(&db, None, &["dhis2", "jobs"]).await;
    assert!(ok);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");

    // Refusals, with nothing created.
    for (args, message) in [
        (vec!["dhis2", "export", "--period", "2024W15"], "Weekly"),
        (vec!["dhis2", "export", "--period", "2024-04"], "is not a DHIS2 period"),
        (vec!["dhis2", "export", "--period", &p, "--site", "NOPE"], "no site with the code NOPE"),
    ] {
        let (ok, _, stderr) = hub_cli(&db, Some(&fake), &args).await;
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let count: i64 = pool
        .get()
        .await
        .expect("conn")
        .query_one("SELECT count(*) FROM dhis2_export_jobs", &[])
        .await
        .expect("n")
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn the_cli_checks_and_sends_late_data() {
    let fake = FakeDhis2::start().await;
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let kati = add_site(&pool, "KATI", Some(KATI_OU)).await;
    let period = last_month();
    add_visits(&pool, kati, &[(period.start(), "consultation")]).await;
    let p = period.to_string();
    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "export", "--period", &p]).await;
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, _) = hub_cli(&db, Some(&fake), &["dhis2", "late-data", "--check"]).await;
    assert!(ok && stdout.contains("every export of the last 3 finished period(s) holds"), "{stdout}");

    add_visits(&pool, kati, &[(period.end(), "consultation")]).await;
    let total = format!("{} / {}: sent 1, now 2", crate::dhis2_jobs::CONS_TOTAL, crate::dhis2_jobs::DEFAULT_COC);
    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "late-data", "--check"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("{p}  KATI")) && stdout.contains(&total), "{stdout}");
    assert_eq!(count_jobs(&pool).await, 1, "--check creates nothing");
    assert_eq!(fake.received().len(), 1);

    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "late-data"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("created 1 re-export job(s)") && stdout.contains("succeeded"), "{stdout}");
    assert_eq!(
        fake.value(KATI_OU, &p, crate::dhis2_jobs::CONS_TOTAL, crate::dhis2_jobs::DEFAULT_COC).as_deref(),
        Some("2")
    );
    let (ok, stdout, _) = hub_cli(&db, Some(&fake), &["dhis2", "late-data"]).await;
    assert!(ok && stdout.contains("holds the values counted now"), "{stdout}");
    assert_eq!(count_jobs(&pool).await, 2);
}

async fn count_jobs(pool: &Pool) -> i64 {
    let db = pool.get().await.expect("conn");
    db.query_one("SELECT count(*) FROM dhis2_export_jobs", &[]).await.expect("count").get(0)
}

#[tokio::test]
async fn the_cli_resolves_the_mapping_and_says_what_is_missing() {
    let fake = FakeDhis2::start().await;
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let site = add_site(&pool, "SIBY", None).await;
    let set_code = |code: &'static str| {
        let pool = pool.clone();
        async move {
            pool.get()
                .await
                .expect("conn")
                .execute("UPDATE sites SET dhis2_org_unit_code = $2 WHERE id = $1", &[site.as_uuid(), &code])
                .await
                .expect("org unit code");
        }
    };
    set_code("OU_NOWHERE").await;
    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "resolve-mapping"]).await;
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("not found in DHIS2: org_unit OU_NOWHERE"), "{stdout}");
    assert!(stderr.contains("1 code(s) not found"), "{stderr}");

    set_code("OU_SIBY").await;
    let (ok, stdout, stderr) = hub_cli(&db, Some(&fake), &["dhis2", "resolve-mapping"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("org unit OU_SIBY -> ouSiby00001") && stdout.contains("mapping saved"), "{stdout}");

    let (ok, _, stderr) = hub_cli(&db, None, &["dhis2", "resolve-mapping"]).await;
    assert!(!ok);
    assert!(stderr.contains("HUB_DHIS2_URL"), "{stderr}");
}

#[tokio::test]
async fn serve_stops_at_start_on_an_invalid_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_hub"))
        .env_clear()
        .env("HUB_DATA_DIR", dir.path())
        .env("HUB_DHIS2_SCHEDULE", "at two on the second")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .kill_on_drop(true)
        .output();
    // Had it not refused, it would be serving: the timeout ends the test.
    let out =
        tokio::time::timeout(Duration::from_secs(60), run).await.expect("hub serve refused at once").expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid dhis2.schedule") && stderr.contains("at two on the second"), "{stderr}");
    assert!(!dir.path().join("pg").exists(), "refused before the database was opened");
}

#[tokio::test]
async fn the_jobs_start_with_a_schedule_and_stop() {
    let fake = FakeDhis2::start().await;
    let dhis2 = Dhis2Config { schedule: "0 0 2 2 * *".into(), ..dhis2_config(&fake) };
    let (mut hub, kati) = Hub::start(dhis2).await;
    // The worker runs while the schedule waits for its day.
    let (status, created) =
        hub.call(Method::POST, "/api/v1/dhis2/export", Some(&json!({ "period": last_month().to_string() }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["jobs"][0]["site_id"], kati.to_string());
    let job = hub.finished(created["jobs"][0]["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded");
    let jobs = hub.jobs.take().expect("jobs");
    tokio::time::timeout(Duration::from_secs(20), jobs.stop()).await.expect("the jobs stop");
}
