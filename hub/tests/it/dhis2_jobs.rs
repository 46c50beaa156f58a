//! DHIS2 export jobs against a fake DHIS2 (real HTTP on loopback, real
//! PostgreSQL): retries, conflicts, refusals, dry runs, both response
//! generations, superseding, two workers racing, a dead hub's job taken up,
//! a worker whose lease was taken over, the schedule.
//!
//! The tests drive `run_one` themselves (no background worker) and poll
//! with deadlines; nothing sleeps for synchronisation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use hub::config::{Config, Dhis2Config, Secret};
use hub::dhis2::mapping::Mapping;
use hub::dhis2::payload::IdScheme;
use hub::dhis2::period::{Period, PeriodType};
use hub::jobs::dhis2_export::{self, ExportJob, JobStatus, NewExport, Trigger, WorkerContext};
use hub::metrics::Metrics;
use santerurale_fixtures::dhis2::{Failure, FakeDhis2, Generation};
pub use santerurale_fixtures::dhis2::{PASSWORD, USERNAME as USER};
use santerurale_shared::SiteId;
use serde_json::json;
use time::{Date, OffsetDateTime};

use crate::support::TestDb;

/// The example mapping: every uid of the fake's metadata filled in.
pub const EXAMPLE_MAPPING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/dhis2/mapping.example.toml");
pub const KATI_OU: &str = "ouKati00001";
pub const DEFAULT_COC: &str = "HllvX50cXC0";
pub const CONS_TOTAL: &str = "deConsTot01";
/// Indicators of the shipped mapping: values in every payload.
pub const VALUES_PER_SITE: usize = 11;

/// Settings for tests: short timeouts and retries, the example mapping.
pub fn dhis2_config(fake: &FakeDhis2) -> Dhis2Config {
    Dhis2Config {
        url: Some(fake.url()),
        username: Some(USER.into()),
        password: Some(Secret(PASSWORD.into())),
        mapping_file: Some(EXAMPLE_MAPPING.into()),
        schedule: "off".into(),
        request_timeout_seconds: 2,
        lease_seconds: 4,
        retry_base_seconds: 1,
        retry_max_seconds: 2,
        max_attempts: 4,
        poll_seconds: 1,
        ..Dhis2Config::default()
    }
}

pub fn config_with(dhis2: Dhis2Config) -> Arc<Config> {
    Arc::new(Config { dhis2, ..Config::default() })
}

pub fn context(pool: &Pool, config: &Arc<Config>) -> WorkerContext {
    WorkerContext::new(pool.clone(), config.clone(), Arc::new(Metrics::new()), Arc::new(tokio::sync::Notify::new()))
}

/// The month before today's: a period that has started (and ended).
pub fn last_month() -> Period {
    Period::containing(OffsetDateTime::now_utc().date(), PeriodType::Monthly).previous()
}

/// A site with its DHIS2 org unit uid (and a device, for its patients).
pub async fn add_site(pool: &Pool, code: &str, org_unit: Option<&str>) -> SiteId {
    let site = SiteId::new();
    let db = pool.get().await.expect("conn");
    db.execute(
        "INSERT INTO sites (id, name, code, dhis2_org_unit) VALUES ($1, $2, $3, $4)",
        &[site.as_uuid(), &format!("CSCom {code}"), &code, &org_unit],
    )
    .await
    .expect("site");
    db.execute(
        "INSERT INTO devices (id, site_id, public_key) VALUES ($1, $2, $3)",
        &[&uuid::Uuid::now_v7(), site.as_uuid(), &rand::random::<[u8; 32]>().to_vec()],
    )
    .await
    .expect("device");
    site
}

/// One adult woman registered at `site` today, seen on each of `visits`
/// (date, kind).
pub async fn add_visits(pool: &Pool, site: SiteId, visits: &[(Date, &str)]) {
    let db = pool.get().await.expect("conn");
    let device: uuid::Uuid = db
        .query_one("SELECT id FROM devices WHERE site_id = $1 LIMIT 1", &[site.as_uuid()])
        .await
        .expect("device")
        .get(0);
    let patient = uuid::Uuid::now_v7();
    let birth = Date::from_calendar_date(1990, time::Month::March, 3).expect("date");
    db.execute("INSERT INTO documents (patient_id, doc) VALUES ($1, '\\x00')", &[&patient]).await.expect("doc");
    db.execute(
        "INSERT INTO patients (id, site_id, given_name, family_name, sex, birth_date, birth_date_estimated, village,
                               whatsapp_consent, created_at, updated_at, last_device_id, search)
         VALUES ($1, $2, 'Awa', 'Traoré', 'female', $3, false, 'Kati', false, now(), now(), $4, 'awa traore')",
        &[&patient, site.as_uuid(), &birth, &device],
    )
    .await
    .expect("patient");
    for (date, kind) in visits {
        db.execute(
            "INSERT INTO encounters (id, patient_id, site_id, device_id, date, kind, complaint, diagnosis, notes,
                                     clinician, age_group, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'fièvre', '', '', 'Dr Diarra', 'adult', now())",
            &[&uuid::Uuid::now_v7(), &patient, site.as_uuid(), &device, date, kind],
        )
        .await
        .expect("encounter");
    }
}

/// Creates the export of `period` for `site`.
pub async fn export(pool: &Pool, config: &Config, period: Period, site: SiteId, dry_run: bool) -> ExportJob {
    let new = NewExport { period, site: Some(site), dry_run, trigger: Trigger::Api, requested_by: None };
    let mut jobs = dhis2_export::create(pool, config, new).await.expect("create");
    assert_eq!(jobs.len(), 1);
    jobs.remove(0)
}

pub async fn job(pool: &Pool, id: uuid::Uuid) -> ExportJob {
    dhis2_export::get(pool, id).await.expect("get").expect("the job exists")
}

/// Runs due jobs with `ctx` until job `id` is final (retries included).
pub async fn run_to_end(ctx: &WorkerContext, id: uuid::Uuid) -> ExportJob {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        dhis2_export::run_one(ctx).await.expect("run_one");
        let job = job(&ctx.pool, id).await;
        if job.status.is_final() {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still {:?} after 30 s: {job:?}", job.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh database with the site KATI (org unit `ouKati00001`), and a
/// fake DHIS2 that knows it.
pub struct Setup {
    pub db: TestDb,
    pub pool: Pool,
    pub fake: FakeDhis2,
    pub config: Arc<Config>,
    pub kati: SiteId,
    pub period: Period,
}

impl Setup {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tune: impl FnOnce(&mut Dhis2Config)) -> Self {
        let db = TestDb::new().await;
        let pool = db.migrated_pool().await;
        let fake = FakeDhis2::start().await;
        let mut dhis2 = dhis2_config(&fake);
        tune(&mut dhis2);
        let config = config_with(dhis2);
        let kati = add_site(&pool, "KATI", Some(KATI_OU)).await;
        let period = last_month();
        let start = period.start();
        let d = |n: u8| start.replace_day(n).expect("day");
        // 3 consultations (2 + a follow-up), 1 antenatal visit, in the month;
        // one consultation the month after, not counted.
        add_visits(
            &pool,
            kati,
            &[(d(1), "consultation"), (d(15), "consultation"), (period.end(), "follow_up"), (d(10), "antenatal")],
        )
        .await;
        add_visits(&pool, kati, &[(period.end() + time::Duration::days(1), "consultation")]).await;
        Self { db, pool, fake, config, kati, period }
    }

    pub fn ctx(&self) -> WorkerContext {
        context(&self.pool, &self.config)
    }

    /// What the fake stored for KATI in the period: (data element, coc) -> value.
    pub fn kati_values(&self) -> BTreeMap<(String, String), String> {
        let period = self.period.to_string();
        self.fake
            .stored_values()
            .into_iter()
            .filter(|((ou, p, _, _), _)| ou == KATI_OU && *p == period)
            .map(|((_, _, de, coc), v)| ((de, coc), v))
            .collect()
    }
}

/// Requests the fake received that were not dry runs.
pub fn real_sends(fake: &FakeDhis2) -> usize {
    fake.received().iter().filter(|r| r.query.get("dryRun").map(String::as_str) != Some("true")).count()
}

#[tokio::test]
async fn dhis2_down_then_back_is_retried_and_stored_once() {
    let s = Setup::new().await;
    s.fake.fail_next(2, Failure::Status(503));
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    assert_eq!(created.status, JobStatus::Pending);
    let ctx = s.ctx();

    // First attempt: 503, back to pending with the error and a later attempt.
    dhis2_export::run_one(&ctx).await.expect("run").expect("a job was due");
    let after_one = job(&s.pool, created.id).await;
    assert_eq!((after_one.status, after_one.attempts), (JobStatus::Pending, 1), "{after_one:?}");
    assert!(after_one.error.as_deref().is_some_and(|e| e.contains("503")), "{:?}", after_one.error);
    assert_eq!(after_one.response_status, Some(503));
    assert!(after_one.next_attempt_at > OffsetDateTime::now_utc(), "the retry waits");
    let payload = after_one.payload.clone().expect("the payload is stored before the first send");
    assert_eq!(after_one.values_count, Some(VALUES_PER_SITE as i32));

    let done = run_to_end(&ctx, created.id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Succeeded, 3), "{done:?}");
    assert_eq!(done.payload.as_ref(), Some(&payload), "the payload is fixed at the first attempt");
    assert_eq!(done.error, None);
    let received = s.fake.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.body == payload), "every attempt sent the stored payload");
    let count = done.import_count.expect("counts");
    assert_eq!(count.updated + count.imported + count.ignored, VALUES_PER_SITE as u64, "{count:?}");
    let values = s.kati_values();
    assert_eq!(values.get(&(CONS_TOTAL.into(), DEFAULT_COC.into())).map(String::as_str), Some("3"), "{values:?}");
    assert_eq!(values.get(&("deAncVisit1".into(), DEFAULT_COC.into())).map(String::as_str), Some("1"));
    assert!(dhis2_export::run_one(&ctx).await.expect("run").is_none(), "nothing left to do");
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let s = Setup::with(|c| c.max_attempts = 2).await;
    s.fake.fail_next(5, Failure::Status(502));
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let done = run_to_end(&s.ctx(), created.id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Failed, 2), "{done:?}");
    assert!(done.error.as_deref().is_some_and(|e| e.contains("502") && e.contains("2 attempts")), "{:?}", done.error);
    assert_eq!(s.fake.received().len(), 2);
}

#[tokio::test]
async fn conflicts_are_recorded_and_not_retried() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    // A site whose org unit exists but is not assigned to the data set.
    let unassigned = add_site(&s.pool, "NOTASSIGNED", Some("ouNotAssig1")).await;
    let created = export(&s.pool, &s.config, s.period, unassigned, false).await;
    let done = run_to_end(&ctx, created.id).await;
    assert_eq!(s.fake.received().len(), 1, "a 409 is not retried");
    assert_eq!(done.attempts, 1);
    assert!(matches!(done.status, JobStatus::SucceededWithConflicts | JobStatus::Failed), "{done:?}");
    assert!(!done.conflicts.is_empty(), "{done:?}");
    assert!(done.conflicts.iter().all(|c| c.error_code.as_deref() == Some("E7636")), "{:?}", done.conflicts);
    assert!(done.conflicts.iter().any(|c| c.object.contains("ouNotAssig1") || c.message.contains("ouNotAssig1")));
    assert_eq!(done.response_status, Some(409), "2.40 answers conflicts with 409");
    assert!(done.response.is_some());

    // A locked period.
    s.fake.lock_period(&s.period.to_string());
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let done = run_to_end(&ctx, created.id).await;
    assert_eq!(s.fake.received().len(), 2, "not retried");
    assert_eq!(done.attempts, 1);
    assert!(done.conflicts.iter().all(|c| c.error_code.as_deref().is_some_and(|c| c.starts_with("E764"))));
    assert!(!done.conflicts.is_empty());
    // Every value refused: DHIS2 says ERROR or WARNING; either way recorded.
    let summary_status = done.response.as_ref().and_then(|r| r["response"]["status"].as_str()).unwrap_or_default();
    let expected = if summary_status == "ERROR" { JobStatus::Failed } else { JobStatus::SucceededWithConflicts };
    assert_eq!(done.status, expected, "{done:?}");
    assert!(s.kati_values().is_empty(), "nothing stored in a locked period");
}

#[tokio::test]
async fn bad_credentials_fail_at_once() {
    let s = Setup::with(|c| c.password = Some(Secret("wrong".into()))).await;
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let done = run_to_end(&s.ctx(), created.id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Failed, 1), "{done:?}");
    assert_eq!(done.response_status, Some(401));
    assert!(done.error.as_deref().is_some_and(|e| e.contains("401")), "{:?}", done.error);
    assert_eq!(s.fake.received().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn a_site_without_org_unit_fails_without_calling_dhis2() {
    let s = Setup::new().await;
    let bare = add_site(&s.pool, "BARE", None).await;
    let created = export(&s.pool, &s.config, s.period, bare, false).await;
    let done = run_to_end(&s.ctx(), created.id).await;
    assert_eq!(done.status, JobStatus::Failed, "{done:?}");
    assert!(done.error.as_deref().is_some_and(|e| e.contains("not ready")), "{:?}", done.error);
    assert!(s.fake.received().is_empty());
}

#[tokio::test]
async fn without_a_dhis2_url_a_job_fails_with_a_clear_error() {
    let s = Setup::with(|c| c.url = None).await;
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let done = run_to_end(&s.ctx(), created.id).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert!(done.error.as_deref().is_some_and(|e| e.contains("HUB_DHIS2_URL")), "{:?}", done.error);
}

#[tokio::test]
async fn a_dry_run_stores_nothing_and_counts() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    let created = export(&s.pool, &s.config, s.period, s.kati, true).await;
    let done = run_to_end(&ctx, created.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let count = done.import_count.expect("counts");
    assert!(count.imported > 0, "{count:?}");
    assert!(s.fake.stored_values().is_empty(), "a dry run stores nothing");
    let received = s.fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].query.get("dryRun").map(String::as_str), Some("true"));
    // A dry run supersedes nothing and is superseded by nothing.
    let real = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let real = run_to_end(&ctx, real.id).await;
    assert_eq!(real.status, JobStatus::Succeeded);
    assert_eq!(job(&s.pool, done.id).await.status, JobStatus::Succeeded);
    assert_eq!(received[0].query.get("dryRun").map(String::as_str), Some("true"));
    assert_eq!(s.fake.received()[1].query.get("dryRun").map(String::as_str), Some("false"));
}

#[tokio::test]
async fn both_response_generations_give_the_same_outcome() {
    for generation in [Generation::V2_37, Generation::V2_40] {
        let s = Setup::new().await;
        s.fake.set_generation(generation);
        let ctx = s.ctx();
        let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
        let done = run_to_end(&ctx, created.id).await;
        assert_eq!(done.status, JobStatus::Succeeded, "{generation:?}: {done:?}");
        assert_eq!(done.response_status, Some(200));
        let count = done.import_count.expect("counts");
        // Zeros included: a re-export must be able to bring a value down to 0.
        assert_eq!(count.imported, VALUES_PER_SITE as u64, "{generation:?}: {count:?}");
        let response = done.response.expect("response");
        match generation {
            Generation::V2_37 => assert_eq!(response["responseType"], "ImportSummary", "{response}"),
            _ => assert_eq!(response["response"]["responseType"], "ImportSummary", "{response}"),
        }
        // The unassigned site: 200 with conflicts on 2.37, 409 on 2.40.
        let unassigned = add_site(&s.pool, "NOTASSIGNED", Some("ouNotAssig1")).await;
        add_visits(&s.pool, unassigned, &[(s.period.start(), "consultation")]).await;
        let created = export(&s.pool, &s.config, s.period, unassigned, false).await;
        let done = run_to_end(&ctx, created.id).await;
        assert!(!done.conflicts.is_empty(), "{generation:?}: {done:?}");
        // Old DHIS2 versions send conflicts without their error code.
        let code = if generation == Generation::V2_37 { None } else { Some("E7636") };
        assert!(done.conflicts.iter().all(|c| c.error_code.as_deref() == code), "{generation:?}: {done:?}");
        let expected_status = if generation == Generation::V2_37 { 200 } else { 409 };
        assert_eq!(done.response_status, Some(expected_status), "{generation:?}");
        assert_eq!(done.attempts, 1);
    }
}

#[tokio::test]
async fn a_rerun_updates_the_values_and_supersedes_the_earlier_job() {
    let s = Setup::new().await;
    let ctx = s.ctx();
    let first = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let first = run_to_end(&ctx, first.id).await;
    assert_eq!(first.status, JobStatus::Succeeded);
    let stored_before = s.fake.stored_values().len();

    // A consultation of the month syncs late; the admin re-runs.
    add_visits(&s.pool, s.kati, &[(s.period.start(), "consultation")]).await;
    let second = dhis2_export::rerun(&s.pool, &s.config, first.id, None, Trigger::Rerun).await.expect("rerun");
    assert_eq!(second.rerun_of, Some(first.id));
    let second = run_to_end(&ctx, second.id).await;
    assert_eq!(second.status, JobStatus::Succeeded, "{second:?}");
    let count = second.import_count.expect("counts");
    assert_eq!(count.imported, 0, "{count:?}");
    assert!(count.updated > 0, "{count:?}");
    assert_eq!(s.fake.stored_values().len(), stored_before, "values updated, not added");
    assert_eq!(s.kati_values().get(&(CONS_TOTAL.into(), DEFAULT_COC.into())).map(String::as_str), Some("4"));

    let first = job(&s.pool, first.id).await;
    assert_eq!((first.status, first.superseded_by), (JobStatus::Superseded, Some(second.id)));
    assert!(first.import_count.is_some() && first.payload.is_some(), "the earlier job keeps its record");

    // A pending export is superseded as soon as a newer one is created, and never sent.
    let sent = s.fake.received().len();
    let pending = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let newer = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let pending = job(&s.pool, pending.id).await;
    assert_eq!((pending.status, pending.superseded_by), (JobStatus::Superseded, Some(newer.id)));
    let newer = run_to_end(&ctx, newer.id).await;
    assert_eq!(newer.status, JobStatus::Succeeded);
    assert!(dhis2_export::run_one(&ctx).await.expect("run").is_none());
    assert_eq!(s.fake.received().len(), sent + 1, "only the newer job was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_send_each_job_exactly_once() {
    let s = Setup::new().await;
    let mut org_units = Vec::new();
    for i in 0..19 {
        let (code, uid) = (format!("OU_RACE_{i}"), format!("ouRace{i:05}"));
        s.fake.add_org_unit(&code, &uid, true);
        add_site(&s.pool, &format!("RACE{i}"), Some(&uid)).await;
        org_units.push(uid);
    }
    org_units.push(KATI_OU.to_owned());
    let new = NewExport { period: s.period, site: None, dry_run: false, trigger: Trigger::Api, requested_by: None };
    let jobs = dhis2_export::create(&s.pool, &s.config, new).await.expect("create");
    assert_eq!(jobs.len(), 20);

    // Two hubs: two pools, two contexts, on the same database.
    let a = s.ctx();
    let b = context(&s.db.pool(), &s.config);
    let drain = |ctx: WorkerContext| {
        tokio::spawn(async move {
            let mut ran = 0;
            while dhis2_export::run_one(&ctx).await.expect("run_one").is_some() {
                ran += 1;
            }
            ran
        })
    };
    let (ran_a, ran_b) = (drain(a), drain(b));
    let (ran_a, ran_b) = (ran_a.await.expect("a"), ran_b.await.expect("b"));
    assert_eq!(ran_a + ran_b, 20, "every job ran once ({ran_a} + {ran_b})");

    let mut sends: BTreeMap<String, usize> = BTreeMap::new();
    for r in s.fake.received() {
        *sends.entry(r.body["orgUnit"].as_str().expect("orgUnit").to_owned()).or_default() += 1;
    }
    org_units.sort();
    assert_eq!(sends.keys().cloned().collect::<Vec<_>>(), org_units);
    assert!(sends.values().all(|n| *n == 1), "each job sent exactly once: {sends:?}");
    for j in jobs {
        let j = job(&s.pool, j.id).await;
        assert_eq!((j.status, j.attempts), (JobStatus::Succeeded, 1), "{j:?}");
    }
}

#[tokio::test]
async fn a_dead_hubs_job_is_taken_up_after_its_lease_with_the_stored_payload() {
    let s = Setup::new().await;
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    // A hub stored this payload, started sending and died: the job is still
    // 'running' with a lease that has run out.
    let period = s.period.to_string();
    let stored = json!({
        "dataSet": "srMonthly01", "completeDate": "2026-01-02", "period": period, "orgUnit": KATI_OU,
        "dataValues": [{ "dataElement": CONS_TOTAL, "categoryOptionCombo": DEFAULT_COC, "value": "7" }],
    });
    s.pool
        .get()
        .await
        .expect("conn")
        .execute(
            "UPDATE dhis2_export_jobs SET status = 'running', attempts = 1, started_at = now(),
               lease_until = now() - interval '1 second', payload = $2::text::jsonb, values_count = 1
             WHERE id = $1",
            &[&created.id, &stored.to_string()],
        )
        .await
        .expect("simulate a dead hub");

    let done = run_to_end(&s.ctx(), created.id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Succeeded, 2), "{done:?}");
    let received = s.fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, stored, "the retry sends the stored payload, not a recount");
    assert_eq!(s.kati_values().get(&(CONS_TOTAL.into(), DEFAULT_COC.into())).map(String::as_str), Some("7"));
}

#[tokio::test]
async fn a_retry_sends_the_stored_payload_in_its_own_id_scheme_after_the_mapping_changed() {
    let s = Setup::new().await;
    s.fake.fail_next(1, Failure::Status(503));
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let ctx = s.ctx();
    dhis2_export::run_one(&ctx).await.expect("run").expect("a job was due");
    let stored = job(&s.pool, created.id).await.payload.expect("payload stored, in uids");

    // Meanwhile an admin switches the mapping to codes.
    let mut mapping = Mapping::parse(&std::fs::read_to_string(EXAMPLE_MAPPING).expect("example")).expect("parse");
    mapping.id_scheme = IdScheme::Code;
    hub::dhis2::mapping::save(&s.pool, &mapping, None).await.expect("save");

    let done = run_to_end(&ctx, created.id).await;
    assert_eq!((done.status, done.attempts), (JobStatus::Succeeded, 2), "{done:?}");
    let received = s.fake.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(r.body, stored);
        assert_eq!(r.query.get("idScheme").map(String::as_str), Some("UID"), "{:?}", r.query);
    }
    assert_eq!(s.kati_values().get(&(CONS_TOTAL.into(), DEFAULT_COC.into())).map(String::as_str), Some("3"));

    // A new export is written in codes, and sent as such.
    let conn = s.pool.get().await.expect("conn");
    conn.execute("UPDATE sites SET dhis2_org_unit_code = 'OU_KATI' WHERE id = $1", &[s.kati.as_uuid()])
        .await
        .expect("org unit code");
    let second = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let done = run_to_end(&ctx, second.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let last = s.fake.received().pop().expect("sent");
    assert_eq!(last.query.get("idScheme").map(String::as_str), Some("CODE"));
    assert_eq!(last.body["orgUnit"], "OU_KATI", "{}", last.body);
}

#[tokio::test]
async fn exports_of_one_site_and_period_are_sent_one_after_the_other() {
    let s = Setup::new().await;
    let siby = add_site(&s.pool, "SIBY", Some("ouSiby00001")).await;
    let first = export(&s.pool, &s.config, s.period, s.kati, false).await;
    // Another hub is sending the first export right now.
    let conn = s.pool.get().await.expect("conn");
    conn.execute(
        "UPDATE dhis2_export_jobs SET status = 'running', attempts = 1, started_at = now(),
           lease_until = now() + interval '1 hour' WHERE id = $1",
        &[&first.id],
    )
    .await
    .expect("simulate a send in progress");
    let second = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let dry = export(&s.pool, &s.config, s.period, s.kati, true).await;
    let other_site = export(&s.pool, &s.config, s.period, siby, false).await;
    let ctx = s.ctx();
    let mut ran = Vec::new();
    while let Some(id) = dhis2_export::run_one(&ctx).await.expect("run") {
        ran.push(id);
    }
    ran.sort();
    let mut expected = vec![dry.id, other_site.id];
    expected.sort();
    assert_eq!(ran, expected, "the second export of KATI waits for the first");
    assert_eq!(job(&s.pool, second.id).await.status, JobStatus::Pending);

    // The first one ends: the second goes.
    conn.execute("UPDATE dhis2_export_jobs SET status = 'failed', lease_until = NULL WHERE id = $1", &[&first.id])
        .await
        .expect("end the first");
    let done = run_to_end(&ctx, second.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
}

#[tokio::test]
async fn a_running_job_is_not_taken_while_its_lease_holds() {
    let s = Setup::new().await;
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    s.pool
        .get()
        .await
        .expect("conn")
        .execute(
            "UPDATE dhis2_export_jobs SET status = 'running', attempts = 1, lease_until = now() + interval '1 hour'
             WHERE id = $1",
            &[&created.id],
        )
        .await
        .expect("another hub holds it");
    assert!(dhis2_export::run_one(&s.ctx()).await.expect("run").is_none());
    assert!(s.fake.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_lease_was_taken_over_cannot_overwrite_the_outcome() {
    // The slow worker's lease (1 s) runs out while DHIS2 holds its request (3 s).
    let s = Setup::with(|c| {
        c.lease_seconds = 1;
        c.request_timeout_seconds = 10;
    })
    .await;
    s.fake.fail_next(1, Failure::Hang(Duration::from_secs(3)));
    let created = export(&s.pool, &s.config, s.period, s.kati, false).await;
    let slow = s.ctx();
    let slow = tokio::spawn(async move { dhis2_export::run_one(&slow).await });

    // The other worker takes the job over once the lease has run out.
    let other = context(&s.db.pool(), &s.config);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if dhis2_export::run_one(&other).await.expect("run").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the job was never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken_over = job(&s.pool, created.id).await;
    assert_eq!((taken_over.status, taken_over.attempts), (JobStatus::Succeeded, 2), "{taken_over:?}");

    // The slow worker's answer (a 504 after the hang) changes nothing.
    assert_eq!(slow.await.expect("join").expect("run"), Some(created.id));
    let after = job(&s.pool, created.id).await;
    assert_eq!(after, taken_over, "the slow worker wrote nothing");
    assert_eq!(s.fake.received().len(), 2);
}

#[tokio::test]
async fn the_schedule_creates_a_periods_jobs_once() {
    let s = Setup::new().await;
    let siby = add_site(&s.pool, "SIBY", Some("ouSiby00001")).await;
    let today = OffsetDateTime::now_utc().date();
    let jobs = hub::jobs::run_schedule_once(&s.pool, &s.config, today).await.expect("schedule");
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j.period == s.period.to_string() && j.trigger == Trigger::Schedule));
    let sites: Vec<SiteId> = jobs.iter().map(|j| j.site_id).collect();
    assert!(sites.contains(&s.kati) && sites.contains(&siby));

    // Again the same month (another hub, or a restart): nothing more.
    let again = hub::jobs::run_schedule_once(&s.pool, &s.config, today).await.expect("schedule");
    assert!(again.is_empty());
    let db = s.pool.get().await.expect("conn");
    let count: i64 = db.query_one("SELECT count(*) FROM dhis2_export_jobs", &[]).await.expect("count").get(0);
    assert_eq!(count, 2);

    // The schedule's jobs run like any other.
    let ctx = s.ctx();
    for j in &jobs {
        assert_eq!(run_to_end(&ctx, j.id).await.status, JobStatus::Succeeded);
    }
    assert_eq!(real_sends(&s.fake), 2);
}

#[test]
fn schedules_are_checked() {
    let with = |schedule: &str, late_data_schedule: &str| Dhis2Config {
        schedule: schedule.into(),
        late_data_schedule: late_data_schedule.into(),
        ..Dhis2Config::default()
    };
    assert!(hub::jobs::check_schedules(&Dhis2Config::default()).is_ok());
    assert!(hub::jobs::check_schedules(&with("off", "OFF")).is_ok());
    let error = hub::jobs::check_schedules(&with("every month", "off")).expect_err("not cron").to_string();
    assert!(error.contains("every month") && error.contains("HUB_DHIS2_SCHEDULE"), "{error}");
    let error = hub::jobs::check_schedules(&with("off", "daily")).expect_err("not cron").to_string();
    assert!(error.contains("\"daily\"") && error.contains("HUB_DHIS2_LATE_DATA_SCHEDULE"), "{error}");
}

#[tokio::test]
async fn job_end_metrics() {
    let s = Setup::new().await;
    let metrics = Arc::new(Metrics::new());
    let ctx = WorkerContext::new(s.pool.clone(), s.config.clone(), metrics.clone(), Arc::new(Default::default()));
    let dry = export(&s.pool, &s.config, s.period, s.kati, true).await;
    run_to_end(&ctx, dry.id).await;
    let real = export(&s.pool, &s.config, s.period, s.kati, false).await;
    run_to_end(&ctx, real.id).await;
    assert_eq!(metrics.dhis2_export_jobs.with_label_values(&["succeeded"]).get(), 2);
    assert_eq!(metrics.dhis2_values_sent.get(), VALUES_PER_SITE as u64, "dry runs are not counted");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - 60..=now).contains(&metrics.dhis2_last_success.get()));
}
