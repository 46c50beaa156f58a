//! DHIS2 late data against a fake DHIS2 (real HTTP on loopback, real
//! PostgreSQL): a consultation that reaches the hub after its month was
//! exported is found and re-exported once; a site enrolled after the
//! schedule ran gets that month sent; what is not compared (dry runs,
//! failed or pending exports, periods past the window); a re-export DHIS2
//! refused is not sent again; two hubs checking at once; the API (its
//! answers checked against the OpenAPI schemas).

use reqwest::{Method, StatusCode};
use santerurale_fixtures::dhis2::FakeDhis2;
use serde_json::Value;
use time::OffsetDateTime;

use crate::dhis2_api::schemas;
use crate::dhis2_jobs::{
    CONS_TOTAL, DEFAULT_COC, KATI_OU, Setup, VALUES_PER_SITE, add_site, add_visits, config_with, dhis2_config, export,
    job, run_to_end,
};

/// SIBY's org unit in the fake DHIS2, assigned to the data set.
const SIBY_OU: &str = "ouSiby00001";
use hub::jobs::dhis2_export::{self, JobStatus, Trigger};
use hub::jobs::dhis2_late_data;

fn today() -> time::Date {
    OffsetDateTime::now_utc().date()
}

fn cons_total(s: &Setup) -> Option<String> {
    s.kati_values().get(&(CONS_TOTAL.into(), DEFAULT_COC.into())).cloned()
}

#[tokio::test]
async fn a_consultation_synced_after_the_export_is_sent_by_the_check_once() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    let first = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let first = run_to_end(&ctx, first.id).await;
    assert_eq!(first.status, JobStatus::Succeeded);
    assert_eq!(cons_total(&s).as_deref(), Some("3"));
    assert!(dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find").is_empty(), "up to date");
    assert!(dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("run").is_empty());

    // A consultation of the exported month reaches the hub now.
    add_visits(&s.pool, s.kati, &[(s.period.start(), "consultation")]).await;
    let found = dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find");
    assert_eq!(found.len(), 1, "{found:?}");
    let out = &found[0];
    assert_eq!((out.site_id, out.period.as_str(), out.exported_job), (s.kati, &*s.period.to_string(), Some(first.id)));
    let total = out
        .changes
        .iter()
        .find(|c| c.data_element == CONS_TOTAL && c.category_option_combo == DEFAULT_COC)
        .expect("the total changed");
    assert_eq!((total.sent.as_deref(), total.now.as_deref()), (Some("3"), Some("4")));
    assert!(out.changes.iter().all(|c| c.sent != c.now), "only changed values are listed: {:?}", out.changes);
    assert_eq!(out.changes.len(), 3, "total, women, 15+, and nothing else: {:?}", out.changes);

    let created = dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("run");
    assert_eq!(created.len(), 1);
    let late = &created[0];
    assert_eq!((late.trigger, late.rerun_of, late.status), (Trigger::LateData, Some(first.id), JobStatus::Pending));
    assert!(!late.dry_run);
    // Checked again before the worker ran: the pending job will count itself.
    assert!(dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("again").is_empty());

    let late = run_to_end(&ctx, late.id).await;
    assert_eq!(late.status, JobStatus::Succeeded, "{late:?}");
    assert_eq!(cons_total(&s).as_deref(), Some("4"), "DHIS2 holds the late consultation");
    let count = late.import_count.expect("counts");
    assert_eq!(count.imported, 0, "values updated, not added: {count:?}");
    let first = job(&s.pool, first.id).await;
    assert_eq!((first.status, first.superseded_by), (JobStatus::Superseded, Some(late.id)));
    assert!(dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find").is_empty());
    assert!(dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("run").is_empty());
    assert!(dhis2_export::run_one(&ctx).await.expect("run").is_none(), "nothing more to send");
}

#[tokio::test]
async fn only_the_latest_answered_real_export_of_a_recent_period_is_compared() {
    let s = Setup::with(|c| c.late_data_periods = 1).await;
    let ctx = s.ctx();
    let older = s.period.previous();
    let in_older = older.start();

    // A period before the window, exported, then changed: not looked at.
    add_visits(&s.pool, s.kati, &[(in_older, "consultation")]).await;
    let old = export(&s.pool, &s.config, older, s.kati, false).await;
    assert_eq!(run_to_end(&ctx, old.id).await.status, JobStatus::Succeeded);
    add_visits(&s.pool, s.kati, &[(in_older, "vaccination")]).await;
    // The last period: only a dry run so far, then changed.
    let dry = export(&s.pool, &s.config, s.period, s.kati, true).await;
    assert_eq!(run_to_end(&ctx, dry.id).await.status, JobStatus::Succeeded);
    add_visits(&s.pool, s.kati, &[(s.period.start(), "consultation")]).await;
    assert!(dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find").is_empty());

    // The last period's real export failed (DHIS2 refused the request): the
    // admin re-runs it, the check does not.
    s.fake.fail_next(1, santerurale_fixtures::dhis2::Failure::Status(400));
    let failed = export(&s.pool, &s.config, s.period, s.kati, false).await;
    assert_eq!(run_to_end(&ctx, failed.id).await.status, JobStatus::Failed);
    add_visits(&s.pool, s.kati, &[(s.period.start(), "consultation")]).await;
    assert!(dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find").is_empty());

    // Two periods back: the older export is behind.
    let wider = config_with(hub::config::Dhis2Config { late_data_periods: 2, ..s.config.dhis2.clone() });
    let found = dhis2_late_data::find(&s.pool, &wider, today()).await.expect("find");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].period.clone(), found[0].exported_job), (older.to_string(), Some(old.id)));
    let periods = dhis2_late_data::periods(&hub::dhis2::mapping::Mapping::default_mapping(), today(), 2);
    assert_eq!(periods, [s.period, older]);
}

#[tokio::test]
async fn a_site_enrolled_after_the_schedule_ran_has_that_months_data_sent() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    // The month before was exported by hand, the last one by the schedule.
    let older = s.period.previous();
    add_visits(&s.pool, s.kati, &[(older.start(), "consultation")]).await;
    let manual = export(&s.pool, &s.config, older, s.kati, false).await;
    run_to_end(&ctx, manual.id).await;
    let scheduled = hub::jobs::run_schedule_once(&s.pool, &s.config, today()).await.expect("schedule");
    assert_eq!(scheduled.len(), 1);
    run_to_end(&ctx, scheduled[0].id).await;

    // Two clinics join afterwards: SIBY's box recorded consultations in both
    // months before it could reach the hub; QUIET recorded nothing then.
    let siby = add_site(&s.pool, "SIBY", Some(SIBY_OU)).await;
    let visits = [(s.period.start(), "consultation"), (s.period.end(), "antenatal"), (older.end(), "consultation")];
    add_visits(&s.pool, siby, &visits).await;
    add_site(&s.pool, "QUIET", Some("ouQuiet0001")).await;
    let found = dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find");
    assert_eq!(found.len(), 1, "the scheduled month only, SIBY only: {found:?}");
    let out = &found[0];
    assert_eq!((out.site_id, out.period.clone(), out.exported_job), (siby, s.period.to_string(), None));
    assert_eq!(out.changes.len(), VALUES_PER_SITE, "every value is new: {:?}", out.changes);
    assert!(out.changes.iter().all(|c| c.sent.is_none()));

    let created = dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("run");
    assert_eq!(created.len(), 1);
    assert_eq!((created[0].site_id, created[0].rerun_of, created[0].trigger), (siby, None, Trigger::LateData));
    let done = run_to_end(&ctx, created[0].id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let period = s.period.to_string();
    assert_eq!(s.fake.value(SIBY_OU, &period, CONS_TOTAL, DEFAULT_COC).as_deref(), Some("1"));
    assert_eq!(s.fake.value(SIBY_OU, &period, "deAncVisit1", DEFAULT_COC).as_deref(), Some("1"));
    assert!(dhis2_late_data::find(&s.pool, &s.config, today()).await.expect("find").is_empty());
}

#[tokio::test]
async fn a_re_export_dhis2_refused_is_not_sent_again() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    let first = export(&s.pool, &s.config, s.period, s.kati, false).await;
    run_to_end(&ctx, first.id).await;
    // DHIS2 locks the month; a consultation arrives late.
    s.fake.lock_period(&s.period.to_string());
    add_visits(&s.pool, s.kati, &[(s.period.start(), "consultation")]).await;
    let created = dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("run");
    assert_eq!(created.len(), 1);
    let late = run_to_end(&ctx, created[0].id).await;
    assert!(late.conflicts.iter().any(|c| c.error_code.as_deref() == Some("E7640")), "{late:?}");
    assert_eq!(cons_total(&s).as_deref(), Some("3"), "the locked period kept its value");
    let sent = s.fake.received().len();

    // The next day's check: the refused export already carried these values.
    let next = dhis2_late_data::run_once(&s.pool, &s.config, today()).await.expect("run");
    if late.status == JobStatus::SucceededWithConflicts {
        assert!(next.is_empty(), "not sent again: {next:?}");
    } else {
        // DHIS2 answered ERROR (every value refused): the job failed, and
        // a failed export waits for the admin.
        assert_eq!(late.status, JobStatus::Failed);
        assert!(next.is_empty());
    }
    assert!(dhis2_export::run_one(&ctx).await.expect("run").is_none());
    assert_eq!(s.fake.received().len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hubs_checking_at_once_create_one_re_export() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    let first = export(&s.pool, &s.config, s.period, s.kati, false).await;
    run_to_end(&ctx, first.id).await;
    add_visits(&s.pool, s.kati, &[(s.period.start(), "antenatal")]).await;
    let (a, b) = tokio::join!(
        dhis2_late_data::run_once(&s.pool, &s.config, today()),
        dhis2_late_data::run_once(&s.pool, &s.config, today()),
    );
    let created = a.expect("a").len() + b.expect("b").len();
    assert_eq!(created, 1, "one hub created the job, the other found it");
    let db = s.pool.get().await.expect("conn");
    let late: i64 = db
        .query_one("SELECT count(*) FROM dhis2_export_jobs WHERE trigger = 'late_data'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(late, 1);
}

/// `method path` with the bearer `token`: the status and the JSON answer.
async fn call(hub: &crate::support::TestHub, token: &str, method: Method, path: &str) -> (StatusCode, Value) {
    let resp = hub.http.request(method, hub.url(path)).bearer_auth(token).send().await.expect("send");
    let status = resp.status();
    (status, resp.json().await.expect("json"))
}

#[tokio::test]
async fn the_api_lists_and_sends_late_data() {
    let fake = FakeDhis2::start().await;
    let dhis2 = dhis2_config(&fake);
    let hub = crate::support::TestHub::configured(|c| c.dhis2 = dhis2).await;
    let kati = add_site(&hub.state.db, "KATI", Some(KATI_OU)).await;
    let period = crate::dhis2_jobs::last_month();
    add_visits(&hub.state.db, kati, &[(period.start(), "consultation")]).await;
    let config = hub.state.config.clone();
    let ctx = crate::dhis2_jobs::context(&hub.state.db, &config);
    let first = export(&hub.state.db, &config, period, kati, false).await;
    run_to_end(&ctx, first.id).await;
    let admin = hub.admin_token().await;

    let (status, body) = call(&hub, &admin, Method::GET, "/api/v1/dhis2/late-data").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["out_of_date"], serde_json::json!([]), "{body}");
    assert_eq!(body["periods"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(body["periods"][0], period.to_string());

    add_visits(&hub.state.db, kati, &[(period.end(), "consultation")]).await;
    let (status, body) = call(&hub, &admin, Method::GET, "/api/v1/dhis2/late-data").await;
    assert_eq!(status, StatusCode::OK);
    schemas().conforms("Dhis2LateData", &body);
    let out = &body["out_of_date"][0];
    assert_eq!((out["site_code"].as_str(), out["exported_job"].as_str()), (Some("KATI"), Some(&*first.id.to_string())));
    assert!(
        out["changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["data_element"] == CONS_TOTAL && c["sent"] == "1" && c["now"] == "2")),
        "{body}"
    );

    // Without a valid token: refused, nothing created.
    let (status, _) = call(&hub, "not-a-token", Method::POST, "/api/v1/dhis2/late-data").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(crate::support::count(&hub, "dhis2_export_jobs").await, 1, "nothing created");
    let (status, body) = call(&hub, &admin, Method::POST, "/api/v1/dhis2/late-data").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    schemas().conforms("ExportCreated", &body);
    let id = body["jobs"][0]["id"].as_str().expect("a job").parse().expect("uuid");
    let late = run_to_end(&ctx, id).await;
    assert_eq!((late.status, late.trigger), (JobStatus::Succeeded, Trigger::LateData));
    let (_, body) = call(&hub, &admin, Method::POST, "/api/v1/dhis2/late-data").await;
    assert_eq!(body["jobs"], serde_json::json!([]), "up to date: {body}");
}
