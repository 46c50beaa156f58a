//! Cross-site lookup and fetch across real processes: one hub, two edges
//! enrolled at two sites, everything through the edges' own API and web UI.
//!
//! 1. Site A's edge registers a patient (with a phone) and two encounters,
//!    and syncs.
//! 2. Site B's edge syncs first, so its pull cursor is past A's changes:
//!    the patient is not on B, and B's sync alone would never bring it.
//! 3. B looks the patient up on the hub by phone (`GET
//!    /api/v1/hub/patients`): one summary, registered at A, not on B.
//! 4. A clinician on B's web UI searches the hub by phone, sees the patient
//!    with a "Récupérer ce dossier" button, posts it (with the CSRF token)
//!    and lands on the local chart, which shows A's encounters. No outbox
//!    entry was made on B for the fetched changes. A second fetch through
//!    the API is harmless and answers the same patient.
//! 5. B records an encounter and syncs; A syncs and sees it (both ways);
//!    A's next encounter reaches B through B's normal sync.
//! 6. With the hub gone, B's API says `hub_unreachable` (503) and its web
//!    page says so in plain words.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use reqwest::{Method, StatusCode};
use santerurale_e2e::{
    Api, CallError, EdgeDir, EdgeProcess, HubDir, HubProcess, create_site, enrollment_token, read_outbox,
};
use serde_json::{Value, json};

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "clinic-admin";
const EDGE_PASSWORD: &str = "a long edge password";
/// The patient's phone as typed at A, and as typed at B (another format).
const PHONE_AT_A: &str = "76 12 34 56";
const PHONE_AT_B: &str = "0022376123456";

/// A running edge with a signed-in API client. Field order: the process
/// dies before its directory is removed.
struct Edge {
    process: EdgeProcess,
    api: Api,
    dir: EdgeDir,
}

impl Edge {
    async fn start() -> anyhow::Result<Self> {
        let dir = EdgeDir::new()?;
        dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(EDGE_USER, EDGE_PASSWORD).await?;
        Ok(Self { process, api, dir })
    }

    async fn enroll(&self, hub: &HubProcess, hub_api: &Api, name: &str, code: &str) -> anyhow::Result<()> {
        let site = create_site(hub_api, name, code).await?;
        let token = enrollment_token(hub_api, &site).await?;
        let args = ["enroll", "--hub", hub.base_url(), "--token", token.as_str()];
        self.dir.cli(&args, "").await?;
        Ok(())
    }

    /// `POST /api/v1/sync/run`: one push then pull; the report.
    async fn sync(&self) -> anyhow::Result<Value> {
        Ok(self.api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await?)
    }

    async fn diagnoses(&self, patient: &str) -> anyhow::Result<Vec<String>> {
        let chart = self.api.patient(patient).await?;
        let encounters = chart["encounters"].as_array().context("no encounters in the chart")?;
        let mut out: Vec<String> =
            encounters.iter().filter_map(|e| e["diagnosis"].as_str().map(str::to_owned)).collect();
        out.sort();
        Ok(out)
    }

    fn outbox_len(&self) -> anyhow::Result<usize> {
        Ok(read_outbox(&self.dir.db_path())?.len())
    }
}

fn encounter(diagnosis: &str) -> Value {
    json!({ "kind": "consultation", "complaint": "fièvre", "diagnosis": diagnosis, "temperature_c": 38.5 })
}

/// A browser's view of an edge's web UI: a cookie jar and no redirects
/// followed, so each answer can be checked.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn sign_in(edge: &Edge) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(santerurale_e2e::REQUEST_TIMEOUT)
            .build()?;
        let me = Self { http, base: edge.process.base_url().to_owned() };
        let (_, login) = me.get("/login").await?;
        let csrf = csrf_token(&login)?;
        let form = [("username", EDGE_USER), ("password", EDGE_PASSWORD), ("csrf_token", csrf.as_str())];
        let resp = me.http.post(format!("{}/login", me.base)).form(&form).send().await?;
        ensure!(resp.status() == StatusCode::SEE_OTHER, "sign-in answered {}", resp.status());
        Ok(me)
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, String)> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok((resp.status(), resp.text().await?))
    }

    /// Posts a form with only its CSRF token; the status and `Location`.
    async fn post(&self, path: &str, csrf: &str) -> anyhow::Result<(StatusCode, String)> {
        let resp = self.http.post(format!("{}{path}", self.base)).form(&[("csrf_token", csrf)]).send().await?;
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Ok((resp.status(), location))
    }
}

/// The first form's CSRF token in `html`.
fn csrf_token(html: &str) -> anyhow::Result<String> {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).context("no CSRF token in the page")? + marker.len();
    let len = html[start..].find('"').context("unterminated CSRF token")?;
    Ok(html[start..start + len].to_owned())
}

#[tokio::test]
async fn a_patient_registered_at_one_site_is_found_fetched_and_synced_both_ways_at_another() -> anyhow::Result<()> {
    let started = Instant::now();
    let hub_dir = HubDir::new().await?;
    hub_dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
    let hub = hub_dir.start().await?;
    let mut hub_api = hub.api()?;
    hub_api.login(HUB_ADMIN, HUB_PASSWORD).await?;

    // 1. Site A registers the patient and two encounters, and syncs.
    let a = Edge::start().await?;
    a.enroll(&hub, &hub_api, "CSCom de Kati", "KATI").await?;
    let draft = json!({
        "given_name": "Aminata", "family_name": "Traoré", "sex": "female", "birth_date": "1990-03-14",
        "village": "Kati", "phone": PHONE_AT_A,
    });
    let patient = a.api.register_patient(&draft, false).await?;
    let id = patient["id"].as_str().context("patient without an id")?.to_owned();
    a.api.add_encounter(&id, &encounter("paludisme simple")).await?;
    a.api.add_encounter(&id, &encounter("anémie")).await?;
    let report = a.sync().await?;
    ensure!(report["pushed"] == 3, "A's sync: {report}");

    // 2. Site B syncs: its cursor passes A's changes, which it does not get.
    let b = Edge::start().await?;
    b.enroll(&hub, &hub_api, "CSCom de Siby", "SIBY").await?;
    let report = b.sync().await?;
    ensure!(report["pulled"] == 0, "B's first sync pulled A's patient: {report}");
    ensure!(b.api.search(PHONE_AT_B).await?.is_empty(), "the patient is on B before any fetch");
    let report = b.sync().await?;
    ensure!(report["pulled"] == 0, "B's second sync pulled A's patient: {report}");

    // 3. B's API finds the patient on the hub by phone.
    let lookup_started = Instant::now();
    let found = b.api.call(Method::GET, &format!("/api/v1/hub/patients?q={PHONE_AT_B}"), None, StatusCode::OK).await?;
    let lookup_ms = lookup_started.elapsed().as_secs_f64() * 1000.0;
    let matches = found["patients"].as_array().context("no patients array")?;
    ensure!(matches.len() == 1, "hub lookup by phone: {found}");
    let m = &matches[0];
    ensure!(
        m["patient_id"] == id.as_str()
            && m["given_name"] == "Aminata"
            && m["family_name"] == "Traoré"
            && m["site_code"] == "KATI"
            && m["on_this_edge"] == false
            && m["held_by_your_site"] == false
            && m.get("phone").is_none(),
        "hub lookup summary: {m}"
    );
    let names = b.api.call(Method::GET, "/api/v1/hub/patients?q=Aminata", None, StatusCode::BAD_REQUEST).await?;
    ensure!(names["code"] == "invalid_query", "a name search of the hub: {names}");

    // 4. A clinician on B's web UI searches the hub and fetches the record.
    let outbox_before = b.outbox_len()?;
    let browser = Browser::sign_in(&b).await?;
    let (status, page) = browser.get(&format!("/?hq={PHONE_AT_B}")).await?;
    ensure!(status == StatusCode::OK, "hub search page: {status}");
    ensure!(
        page.contains("Aminata Traoré") && page.contains("Récupérer ce dossier") && page.contains("KATI"),
        "the hub search page does not offer the record:\n{page}"
    );
    let action = format!("/hub/patients/{id}/fetch");
    ensure!(page.contains(&format!("action=\"{action}\"")), "no fetch form for {id}");
    let fetch_started = Instant::now();
    let (status, location) = browser.post(&action, &csrf_token(&page)?).await?;
    let fetch_ms = fetch_started.elapsed().as_secs_f64() * 1000.0;
    ensure!(status == StatusCode::SEE_OTHER && location == format!("/patients/{id}"), "fetch: {status} {location}");
    let (status, chart) = browser.get(&location).await?;
    ensure!(
        status == StatusCode::OK && chart.contains("paludisme simple") && chart.contains("anémie"),
        "B's chart after the fetch ({status}):\n{chart}"
    );
    ensure!(b.diagnoses(&id).await? == ["anémie", "paludisme simple"], "B's encounters after the fetch");
    ensure!(b.api.search(PHONE_AT_B).await?.len() == 1, "B's local search does not find the fetched patient");
    ensure!(b.outbox_len()? == outbox_before, "the fetch made outbox entries on B");
    // Fetching again through the API changes nothing and answers the patient.
    let again = b.api.call(Method::POST, &format!("/api/v1/hub/patients/{id}/fetch"), None, StatusCode::OK).await?;
    ensure!(
        again["id"] == id.as_str() && again["encounters"].as_array().map(Vec::len) == Some(2),
        "a second fetch: {again}"
    );
    ensure!(b.outbox_len()? == outbox_before, "the second fetch made outbox entries on B");

    // 5. B's encounter reaches A, and A's next one reaches B: both ways.
    b.api.add_encounter(&id, &encounter("contrôle à Siby")).await?;
    let report = b.sync().await?;
    ensure!(report["pushed"] == 1, "B's sync after its encounter: {report}");
    let report = a.sync().await?;
    ensure!(report["pulled_new"] == 1, "A's sync after B's encounter: {report}");
    ensure!(a.diagnoses(&id).await? == ["anémie", "contrôle à Siby", "paludisme simple"], "A's encounters");
    a.api.add_encounter(&id, &encounter("suivi à Kati")).await?;
    a.sync().await?;
    let report = b.sync().await?;
    ensure!(report["pulled_new"] == 1, "B's sync after A's new encounter: {report}");
    ensure!(b.diagnoses(&id).await?.len() == 4, "B's encounters: {:?}", b.diagnoses(&id).await?);

    // 6. Offline: the hub is gone.
    drop(hub);
    let offline = b.api.call(Method::GET, &format!("/api/v1/hub/patients?q={PHONE_AT_B}"), None, StatusCode::OK).await;
    match offline {
        Err(CallError::Status { status, body, .. }) => ensure!(
            status == StatusCode::SERVICE_UNAVAILABLE && body.contains("hub_unreachable"),
            "lookup with the hub down: {status} {body}"
        ),
        other => anyhow::bail!("lookup with the hub down: {other:?}"),
    }
    let (status, page) = browser.get(&format!("/?hq={PHONE_AT_B}")).await?;
    ensure!(
        status == StatusCode::OK && page.contains("id=\"hub-message\"") && page.contains("injoignable"),
        "the hub search page with the hub down ({status}):\n{page}"
    );
    println!(
        "cross-site: API lookup {lookup_ms:.1} ms, web fetch of 3 changes {fetch_ms:.1} ms (loopback, debug build); \
         {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    drop(hub_dir);
    Ok(())
}
