//! Conflict resolution across real processes: one hub, two edges enrolled in
//! the same site (a site's patients are pulled by all its devices), all
//! through the edges' and the hub's HTTP APIs.
//!
//! 1. Edge A registers a patient and syncs; edge B syncs and has it.
//! 2. Offline, both change the patient's village (A to "Siby", B to "Kita")
//!    through `PATCH /api/v1/patients/{id}`, then both sync: B's push makes
//!    the hub hold both values, and the hub lists exactly one open conflict
//!    on `village` with both values.
//! 3. A hub admin resolves it over HTTP with a third value; the answer names
//!    the admin.
//! 4. Both edges sync: each `GET /api/v1/patients/{id}` shows the chosen
//!    village, and each edge's stored document holds that one value (no
//!    conflict left on either box). The hub lists no open conflict, its
//!    sync status for the site says so, and its metrics count one
//!    resolution. One more sync on each edge brings nothing new.
//!
//! Nothing sleeps: each step waits for the HTTP answer of the one before,
//! and the edges' background sync is left at its default interval (minutes),
//! far beyond this scenario, so every sync here is the test's own.

use anyhow::{Context as _, ensure};
use automerge::ReadDoc as _;
use reqwest::{Method, StatusCode};
use santerurale_e2e::{Api, EdgeDir, EdgeProcess, HubDir, create_site, enrollment_token, metric_value, open_read_only};
use serde_json::{Value, json};

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "clinic-admin";
const EDGE_PASSWORD: &str = "a long edge password";
const CHOSEN: &str = "Dioïla";

/// A running edge with a signed-in API client. Field order: the process
/// dies before its directory is removed.
struct Edge {
    _process: EdgeProcess,
    api: Api,
    dir: EdgeDir,
}

impl Edge {
    async fn start(hub_url: &str, token: &str) -> anyhow::Result<Self> {
        let dir = EdgeDir::new()?;
        dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(EDGE_USER, EDGE_PASSWORD).await?;
        dir.cli(&["enroll", "--hub", hub_url, "--token", token], "").await?;
        Ok(Self { _process: process, api, dir })
    }

    /// `POST /api/v1/sync/run`: one push then pull; the report.
    async fn sync(&self) -> anyhow::Result<Value> {
        Ok(self.api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await?)
    }

    async fn set_village(&self, patient: &str, village: &str) -> anyhow::Result<()> {
        let body = json!({ "village": village });
        self.api.call(Method::PATCH, &format!("/api/v1/patients/{patient}"), Some(&body), StatusCode::OK).await?;
        Ok(())
    }

    async fn village(&self, patient: &str) -> anyhow::Result<String> {
        let chart = self.api.patient(patient).await?;
        Ok(chart["village"].as_str().with_context(|| format!("no village in {chart}"))?.to_owned())
    }

    /// Every value the edge's stored document of `patient` holds for
    /// `village` (its snapshot plus the changes appended since), sorted.
    fn stored_villages(&self, patient: &str) -> anyhow::Result<Vec<String>> {
        let conn = open_read_only(&self.dir.db_path())?;
        let snapshot: Option<Vec<u8>> =
            conn.query_row("SELECT snapshot FROM documents WHERE patient_id = ?1", [patient], |r| r.get(0))?;
        let mut doc = match snapshot {
            Some(bytes) => automerge::Automerge::load(&bytes)?,
            None => automerge::Automerge::new(),
        };
        let mut stmt = conn.prepare("SELECT bytes FROM document_changes WHERE patient_id = ?1 ORDER BY id")?;
        for bytes in stmt.query_map([patient], |r| r.get::<_, Vec<u8>>(0))? {
            doc.load_incremental(&bytes?)?;
        }
        let mut values: Vec<String> = doc
            .get_all(automerge::ROOT, "village")?
            .iter()
            .map(|(v, _)| v.as_str().map_or_else(|| format!("{v:?}"), str::to_owned))
            .collect();
        values.sort();
        Ok(values)
    }
}

async fn open_conflicts(hub: &Api) -> anyhow::Result<Vec<Value>> {
    let listed = hub.call(Method::GET, "/api/v1/conflicts?status=open", None, StatusCode::OK).await?;
    Ok(listed["conflicts"].as_array().context("no conflicts array")?.clone())
}

#[tokio::test]
async fn an_admin_resolution_reaches_both_edges_that_edited_the_field() -> anyhow::Result<()> {
    let hub_dir = HubDir::new().await?;
    hub_dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
    let hub = hub_dir.start().await?;
    let mut hub_api = hub.api()?;
    hub_api.login(HUB_ADMIN, HUB_PASSWORD).await?;
    let site = create_site(&hub_api, "CSCom de Kati", "KATI").await?;
    let a = Edge::start(hub.base_url(), &enrollment_token(&hub_api, &site).await?).await?;
    let b = Edge::start(hub.base_url(), &enrollment_token(&hub_api, &site).await?).await?;

    // 1. A registers the patient; B gets it through its own sync.
    let draft = json!({
        "given_name": "Fatoumata", "family_name": "Coulibaly", "sex": "female",
        "birth_date": "1990-03-14", "village": "Kati", "phone": "76 12 34 56",
    });
    let patient = a.api.register_patient(&draft, true).await?;
    let id = patient["id"].as_str().context("patient without an id")?.to_owned();
    a.sync().await?;
    let report = b.sync().await?;
    ensure!(report["pulled_new"].as_u64() >= Some(1), "B pulled the patient: {report}");
    ensure!(b.village(&id).await? == "Kati");

    // 2. Both edit the village offline, then both sync.
    a.set_village(&id, "Siby").await?;
    b.set_village(&id, "Kita").await?;
    a.sync().await?;
    b.sync().await?;
    let open = open_conflicts(&hub_api).await?;
    ensure!(open.len() == 1, "one open conflict: {open:?}");
    let conflict = &open[0];
    ensure!(conflict["patient_id"] == id.as_str() && conflict["field"] == "village", "{conflict}");
    let mut values: Vec<&str> =
        conflict["values"].as_array().context("no values")?.iter().filter_map(|v| v["value"].as_str()).collect();
    values.sort_unstable();
    ensure!(values == ["Kita", "Siby"], "both values listed: {conflict}");
    ensure!(b.stored_villages(&id)? == ["Kita", "Siby"], "B holds both values before the resolution");
    let status_path = format!("/api/v1/sites/{site}/sync-status");
    let status = hub_api.call(Method::GET, &status_path, None, StatusCode::OK).await?;
    ensure!(status["open_conflicts"] == 1 && status["changes_received"] == 3, "{status}");

    // 3. The admin picks a third value.
    let conflict_id = conflict["id"].as_str().context("conflict without an id")?;
    let body = json!({ "value": CHOSEN });
    let resolved = hub_api
        .call(Method::POST, &format!("/api/v1/conflicts/{conflict_id}/resolve"), Some(&body), StatusCode::OK)
        .await?;
    ensure!(resolved["resolved_by"] == HUB_ADMIN && resolved["resolution"]["value"] == CHOSEN, "{resolved}");
    ensure!(open_conflicts(&hub_api).await?.is_empty());

    // 4. Both edges sync and show the one chosen value.
    for (name, edge) in [("A", &a), ("B", &b)] {
        let report = edge.sync().await?;
        ensure!(report["pulled_new"].as_u64() >= Some(1), "{name} pulled the resolution: {report}");
        let village = edge.village(&id).await?;
        ensure!(village == CHOSEN, "{name} shows {village}");
        let stored = edge.stored_villages(&id)?;
        ensure!(stored == [CHOSEN], "{name} holds one value, not {stored:?}");
    }
    for (name, edge) in [("A", &a), ("B", &b)] {
        let report = edge.sync().await?;
        ensure!(report["pulled_new"] == 0 && report["pushed"] == 0, "{name}: nothing more to sync: {report}");
    }
    ensure!(open_conflicts(&hub_api).await?.is_empty(), "the edges' syncs opened no conflict");
    let status = hub_api.call(Method::GET, &status_path, None, StatusCode::OK).await?;
    ensure!(status["open_conflicts"] == 0, "{status}");
    ensure!(status["devices"].as_array().map(Vec::len) == Some(2), "{status}");
    let metrics = hub_api.text("/metrics").await?;
    ensure!(metric_value(&metrics, "sync_conflicts_resolved_total", "") == 1.0);
    ensure!(metric_value(&metrics, "sync_conflicts_open", "") == 0.0);
    Ok(())
}
