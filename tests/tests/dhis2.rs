//! DHIS2 monthly reporting across real processes: encounters recorded on an
//! edge, synced to the hub, exported by the hub's worker to a fake DHIS2
//! (started in this test, following the Web API contract: see
//! `santerurale_fixtures::dhis2`), a consultation of that month synced after
//! the export and re-sent by the late-data check, and a hub killed in the
//! middle of an export.
//!
//! Dates are relative to today: the exported period is the previous month,
//! so every encounter date is in the past (the edge refuses future dates)
//! and every registration (today) is in the current month, after the period:
//! the encounters reach the hub after their month closed and must still be
//! counted in it.
//!
//! Nothing sleeps: each step polls the hub's job until it is final, against
//! a deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use reqwest::{Method, StatusCode};
use santerurale_e2e::{Api, EdgeDir, EdgeProcess, HubDir, HubProcess, enrollment_token, metric_value, poll_until};
use santerurale_fixtures::dhis2::{Failure, FakeDhis2, PASSWORD as DHIS2_PASSWORD, USERNAME as DHIS2_USER};
use serde_json::{Value, json};
use time::{Date, Duration as Days, Month, OffsetDateTime};

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "clinic-admin";
const EDGE_PASSWORD: &str = "a long edge password";

/// The month before today's: the period the exports report.
fn previous_month(today: Date) -> (Date, Date, String) {
    let first_of_this = today.replace_day(1).expect("day 1 exists");
    let end = first_of_this - Days::days(1);
    let start = end.replace_day(1).expect("day 1 exists");
    (start, end, format!("{:04}{:02}", start.year(), u8::from(start.month())))
}

/// The same day and month `years` earlier (day 15 and day 1 exist in every month).
fn years_before(d: Date, years: i32) -> Date {
    Date::from_calendar_date(d.year() - years, d.month(), d.day()).expect("valid date")
}

fn day(start: Date, n: u8) -> Date {
    start.replace_day(n).expect("day exists")
}

/// A hub whose DHIS2 is `fake`, with an admin signed in and the schedule off.
async fn hub_with_dhis2(fake: &FakeDhis2) -> anyhow::Result<(HubDir, HubProcess, Api)> {
    let dir = HubDir::new()
        .await?
        .with_env("HUB_DHIS2_URL", &fake.url())
        .with_env("HUB_DHIS2_USERNAME", DHIS2_USER)
        .with_env("HUB_DHIS2_PASSWORD", DHIS2_PASSWORD)
        .with_env("HUB_DHIS2_SCHEDULE", "off")
        .with_env("HUB_DHIS2_POLL_SECONDS", "1")
        .with_env("HUB_DHIS2_RETRY_BASE_SECONDS", "1")
        .with_env("HUB_DHIS2_REQUEST_TIMEOUT_SECONDS", "5")
        .with_env("HUB_DHIS2_LEASE_SECONDS", "6");
    dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
    let process = dir.start().await?;
    let api = signed_in(&process).await?;
    Ok((dir, process, api))
}

async fn signed_in(process: &HubProcess) -> anyhow::Result<Api> {
    let mut api = process.api()?;
    api.login(HUB_ADMIN, HUB_PASSWORD).await?;
    Ok(api)
}

async fn create_site(hub: &Api, name: &str, code: &str, org_unit_code: &str) -> anyhow::Result<String> {
    let body = json!({ "name": name, "code": code, "dhis2_org_unit_code": org_unit_code });
    let site = hub.call(Method::POST, "/api/v1/sites", Some(&body), StatusCode::CREATED).await?;
    Ok(site["id"].as_str().context("site without an id")?.to_owned())
}

/// An edge enrolled in `site`, signed in.
async fn edge_in(hub: &HubProcess, hub_api: &Api, site: &str) -> anyhow::Result<(EdgeProcess, Api, EdgeDir)> {
    let dir = EdgeDir::new()?;
    dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
    let process = dir.start().await?;
    let mut api = process.api()?;
    api.login(EDGE_USER, EDGE_PASSWORD).await?;
    let token = enrollment_token(hub_api, site).await?;
    dir.cli(&["enroll", "--hub", hub.base_url(), "--token", &token], "").await?;
    Ok((process, api, dir))
}

async fn patient(edge: &Api, given: &str, sex: &str, birth: Date) -> anyhow::Result<String> {
    let draft = json!({
        "given_name": given, "family_name": "Traoré", "sex": sex,
        "birth_date": birth.to_string(), "village": "Kati",
    });
    let created = edge.register_patient(&draft, true).await?;
    Ok(created["id"].as_str().context("patient without an id")?.to_owned())
}

async fn encounter(edge: &Api, patient: &str, kind: &str, date: Date) -> anyhow::Result<()> {
    let draft = json!({ "date": date.to_string(), "kind": kind, "complaint": "fièvre" });
    edge.add_encounter(patient, &draft).await?;
    Ok(())
}

/// `POST /api/v1/dhis2/export`; the jobs created.
async fn export(hub: &Api, body: &Value) -> anyhow::Result<Vec<Value>> {
    let answer = hub.call(Method::POST, "/api/v1/dhis2/export", Some(body), StatusCode::ACCEPTED).await?;
    Ok(answer["jobs"].as_array().with_context(|| format!("no jobs in {answer}"))?.clone())
}

/// Polls the job until its status is final; the job.
async fn finished(hub: &Api, id: &str) -> anyhow::Result<Value> {
    let path = format!("/api/v1/dhis2/exports/{id}");
    poll_until(&format!("export job {id} to finish"), Duration::from_secs(60), || async {
        let job = hub.call(Method::GET, &path, None, StatusCode::OK).await?;
        let done = matches!(job["status"].as_str(), Some("succeeded" | "succeeded_with_conflicts" | "failed"));
        Ok(done.then_some(job))
    })
    .await
}

/// Records, on `edge`, a month of encounters whose counts are worked out by
/// hand below, plus one encounter on each side of the month.
async fn record_the_month(edge: &Api, start: Date, end: Date) -> anyhow::Result<()> {
    // An adult woman: one consultation, two antenatal visits; one
    // consultation the day before the month and one the day after.
    let awa = patient(edge, "Awa", "female", Date::from_calendar_date(1990, Month::March, 14)?).await?;
    encounter(edge, &awa, "consultation", day(start, 5)).await?;
    encounter(edge, &awa, "antenatal", day(start, 12)).await?;
    encounter(edge, &awa, "antenatal", day(start, 26)).await?;
    encounter(edge, &awa, "consultation", start - Days::days(1)).await?;
    encounter(edge, &awa, "consultation", end + Days::days(1)).await?;
    // A boy of two (estimated birth date): consultation and vaccination on
    // the first day, a follow-up on the last.
    let draft = json!({
        "given_name": "Moussa", "family_name": "Traoré", "sex": "male", "birth_date_estimated": true,
        "birth_date": years_before(start, 2).to_string(), "village": "Kati",
    });
    let moussa = edge.register_patient(&draft, true).await?["id"].as_str().context("no id")?.to_owned();
    encounter(edge, &moussa, "consultation", start).await?;
    encounter(edge, &moussa, "vaccination", start).await?;
    encounter(edge, &moussa, "follow_up", end).await?;
    // A girl turning 5 on the 15th: seen on the 14th (4 years old) and the 15th (5).
    let fanta = patient(edge, "Fanta", "female", years_before(day(start, 15), 5)).await?;
    encounter(edge, &fanta, "consultation", day(start, 14)).await?;
    encounter(edge, &fanta, "consultation", day(start, 15)).await?;
    // A baby boy of about eight months.
    let baba = patient(edge, "Baba", "male", start - Days::days(240)).await?;
    encounter(edge, &baba, "consultation", day(start, 20)).await?;
    Ok(())
}

/// The values the fake must hold for that month, by (data element, COC)
/// uid, worked out by hand: consultations count kinds consultation and
/// follow_up. Every indicator is sent, zeros included (NEW_PATIENTS:
/// everyone was registered today, after the month), so that a re-export
/// can bring a value down to 0; the fake's data elements count zero as
/// significant, so it stores them.
fn expected_values() -> BTreeMap<(String, String), String> {
    [
        ("deConsTot01", "HllvX50cXC0", 6), // Awa 1, Moussa 2, Fanta 2, Baba 1
        ("deConsU5001", "HllvX50cXC0", 4), // Moussa 2, Fanta on the 14th, Baba
        ("deConsSex01", "cocSexF0001", 3), // Awa 1, Fanta 2
        ("deConsSex01", "cocSexM0001", 3), // Moussa 2, Baba 1
        ("deConsAge01", "cocAgeLt101", 1), // Baba
        ("deConsAge01", "cocAge14001", 3), // Moussa 2, Fanta on the 14th
        ("deConsAge01", "cocAge51401", 1), // Fanta on the 15th
        ("deConsAge01", "cocAge15P01", 1), // Awa
        ("deAncVisit1", "HllvX50cXC0", 2),
        ("deVaccVis01", "HllvX50cXC0", 1),
        ("deNewPats01", "HllvX50cXC0", 0),
    ]
    .into_iter()
    .map(|(de, coc, n)| ((de.to_owned(), coc.to_owned()), n.to_string()))
    .collect()
}

/// The fake's stored values for one org unit and period.
fn stored(fake: &FakeDhis2, org_unit: &str, period: &str) -> BTreeMap<(String, String), String> {
    fake.stored_values()
        .into_iter()
        .filter(|((ou, pe, _, _), _)| ou == org_unit && pe == period)
        .map(|((_, _, de, coc), v)| ((de, coc), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_months_encounters_reach_dhis2_as_hand_counted_values() -> anyhow::Result<()> {
    let fake = FakeDhis2::start().await;
    let (_dir, hub, hub_api) = hub_with_dhis2(&fake).await?;
    let kati = create_site(&hub_api, "CSCom de Kati", "KATI", "OU_KATI").await?;
    let siby = create_site(&hub_api, "CSCom de Siby", "SIBY", "OU_SIBY").await?;

    // The shipped mapping knows codes only: resolve them in the fake DHIS2.
    let report = hub_api.call(Method::POST, "/api/v1/dhis2/mapping/resolve", None, StatusCode::OK).await?;
    ensure!(report["missing"].as_array().is_some_and(Vec::is_empty), "every code resolved: {report}");

    let today = OffsetDateTime::now_utc().date();
    let (start, end, period) = previous_month(today);
    let (_edge, edge_api, _edge_dir) = edge_in(&hub, &hub_api, &kati).await?;
    record_the_month(&edge_api, start, end).await?;
    let sync = edge_api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await?;
    ensure!(sync["pushed"].as_u64() > Some(0), "{sync}");

    // A dry run first: DHIS2 validates and counts, stores nothing.
    let jobs = export(&hub_api, &json!({ "period": period, "site_id": kati, "dry_run": true })).await?;
    ensure!(jobs.len() == 1 && jobs[0]["site_id"] == kati.as_str(), "{jobs:?}");
    let dry = finished(&hub_api, jobs[0]["id"].as_str().context("no id")?).await?;
    ensure!(dry["status"] == "succeeded", "{dry}");
    ensure!(dry["import_count"]["imported"] == 11, "a dry run still counts: {dry}");
    ensure!(fake.stored_values().is_empty(), "a dry run stores nothing");
    ensure!(fake.received().last().is_some_and(|r| r.query.get("dryRun").map(String::as_str) == Some("true")));

    // Every site: one job each.
    let jobs = export(&hub_api, &json!({ "period": period })).await?;
    ensure!(jobs.len() == 2, "one job per site: {jobs:?}");
    let mut by_site = BTreeMap::new();
    for job in &jobs {
        let done = finished(&hub_api, job["id"].as_str().context("no id")?).await?;
        by_site.insert(job["site_id"].as_str().context("no site")?.to_owned(), done);
    }
    let kati_job = &by_site[&kati];
    ensure!(kati_job["status"] == "succeeded" && kati_job["attempts"] == 1, "{kati_job}");
    ensure!(kati_job["import_count"]["imported"] == 11 && kati_job["import_count"]["ignored"] == 0, "{kati_job}");
    ensure!(kati_job["payload"]["period"] == period.as_str() && kati_job["payload"]["orgUnit"] == "ouKati00001");
    ensure!(stored(&fake, "ouKati00001", &period) == expected_values(), "{:?}", stored(&fake, "ouKati00001", &period));
    // Siby recorded nothing: its zeros are sent and stored.
    let siby_job = &by_site[&siby];
    ensure!(siby_job["status"] == "succeeded" && siby_job["import_count"]["imported"] == 11, "{siby_job}");
    let siby_values = stored(&fake, "ouSiby00001", &period);
    ensure!(siby_values.len() == 11 && siby_values.values().all(|v| v == "0"), "{siby_values:?}");
    ensure!(fake.received().iter().all(|r| r.authorization.as_deref().is_some_and(|a| a.starts_with("Basic "))));

    // A re-run updates the same values in DHIS2 and supersedes the first job.
    let kati_first = kati_job["id"].as_str().context("no id")?.to_owned();
    let rerun = hub_api
        .call(Method::POST, &format!("/api/v1/dhis2/exports/{kati_first}/rerun"), None, StatusCode::ACCEPTED)
        .await?;
    let rerun_id = rerun["id"].as_str().or_else(|| rerun["jobs"][0]["id"].as_str()).context("no id")?.to_owned();
    let again = finished(&hub_api, &rerun_id).await?;
    let count = &again["import_count"];
    ensure!(again["status"] == "succeeded" && count["imported"] == 0 && count["updated"] == 11, "{again}");
    ensure!(stored(&fake, "ouKati00001", &period) == expected_values(), "values updated, not added");
    let first = hub_api.call(Method::GET, &format!("/api/v1/dhis2/exports/{kati_first}"), None, StatusCode::OK).await?;
    ensure!(first["superseded_by"] == rerun_id.as_str(), "{first}");

    let metrics = hub_api.text("/metrics").await?;
    ensure!(metric_value(&metrics, "dhis2_export_jobs_total", "status=\"succeeded\"") == 4.0, "{metrics}");
    ensure!(metric_value(&metrics, "dhis2_values_sent_total", "") == 33.0, "3 real exports x 11 values: {metrics}");
    ensure!(metric_value(&metrics, "dhis2_last_success_timestamp_seconds", "") > 0.0);

    // A consultation of the month that reaches the hub after the export (the
    // clinic synced late): the late-data check finds it, and DHIS2 gets the
    // new counts for that month, updated in place.
    let late = patient(&edge_api, "Kadiatou", "female", Date::from_calendar_date(1985, Month::June, 1)?).await?;
    encounter(&edge_api, &late, "consultation", day(start, 28)).await?;
    edge_api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await?;
    let listed = hub_api.call(Method::GET, "/api/v1/dhis2/late-data", None, StatusCode::OK).await?;
    let out = listed["out_of_date"].as_array().context("no out_of_date list")?;
    ensure!(out.len() == 1 && out[0]["site_id"] == kati.as_str() && out[0]["period"] == period.as_str(), "{listed}");
    let sent = hub_api.call(Method::POST, "/api/v1/dhis2/late-data", None, StatusCode::ACCEPTED).await?;
    let late_job = finished(&hub_api, sent["jobs"][0]["id"].as_str().context("no late-data job")?).await?;
    ensure!(late_job["status"] == "succeeded" && late_job["trigger"] == "late_data", "{late_job}");
    ensure!(late_job["import_count"]["imported"] == 0, "updated in place: {late_job}");
    let mut expected = expected_values();
    for key in [("deConsTot01", "HllvX50cXC0"), ("deConsSex01", "cocSexF0001"), ("deConsAge01", "cocAge15P01")] {
        let value = expected.get_mut(&(key.0.to_owned(), key.1.to_owned())).context("an expected value")?;
        *value = (value.parse::<u64>()? + 1).to_string();
    }
    ensure!(stored(&fake, "ouKati00001", &period) == expected, "{:?}", stored(&fake, "ouKati00001", &period));
    let listed = hub_api.call(Method::GET, "/api/v1/dhis2/late-data", None, StatusCode::OK).await?;
    ensure!(listed["out_of_date"] == json!([]), "up to date: {listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_export_resumes_the_job_and_counts_it_once() -> anyhow::Result<()> {
    let fake = FakeDhis2::start().await;
    let (dir, mut hub, hub_api) = hub_with_dhis2(&fake).await?;
    let kati = create_site(&hub_api, "CSCom de Kati", "KATI", "OU_KATI").await?;
    hub_api.call(Method::POST, "/api/v1/dhis2/mapping/resolve", None, StatusCode::OK).await?;
    let today = OffsetDateTime::now_utc().date();
    let (start, end, period) = previous_month(today);
    let (_edge, edge_api, _edge_dir) = edge_in(&hub, &hub_api, &kati).await?;
    record_the_month(&edge_api, start, end).await?;
    edge_api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await?;

    // DHIS2 holds the first request; the hub dies while it waits.
    fake.fail_next(1, Failure::Hang(Duration::from_secs(120)));
    let jobs = export(&hub_api, &json!({ "period": period, "site_id": kati })).await?;
    let id = jobs[0]["id"].as_str().context("no id")?.to_owned();
    poll_until("the hub to send the export", Duration::from_secs(30), || async {
        Ok((!fake.received().is_empty()).then_some(()))
    })
    .await?;
    hub.kill()?;

    // Restarted, the hub takes the job up once its lease has run out.
    let hub = dir.start().await?;
    let hub_api = signed_in(&hub).await?;
    let job = finished(&hub_api, &id).await?;
    ensure!(job["status"] == "succeeded" && job["attempts"] == 2, "resumed once: {job}");
    let received = fake.received();
    ensure!(received.len() == 2, "sent twice: the lost attempt and the resumed one ({})", received.len());
    ensure!(received[0].body == received[1].body, "the resumed attempt sends the recorded payload");
    ensure!(job["payload"] == received[1].body, "the job shows what was sent");
    ensure!(stored(&fake, "ouKati00001", &period) == expected_values(), "values stored once");
    let listed = hub_api.call(Method::GET, "/api/v1/dhis2/exports", None, StatusCode::OK).await?;
    let all = listed["jobs"].as_array().or(listed.as_array()).context("no job list")?;
    ensure!(all.len() == 1, "no second job was made: {listed}");
    let metrics = hub_api.text("/metrics").await?;
    ensure!(metric_value(&metrics, "dhis2_export_jobs_total", "status=\"succeeded\"") == 1.0, "{metrics}");
    Ok(())
}
