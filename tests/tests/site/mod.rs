//! One site for the convergence tests: a hub on a fresh database and two
//! edges enrolled in the same site, each behind its own [`LinkSimulator`],
//! with what the scenario did (patients, encounters) and the convergence
//! check. Shared by `convergence.rs` and `convergence_property.rs` (each
//! uses part of it).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use rand::RngExt as _;
use rand::rngs::StdRng;
use reqwest::{Method, StatusCode};
use santerurale_e2e::{
    Api, CallError, EdgeDir, EdgeProcess, HubDir, HubProcess, LinkProfile, LinkSimulator, PeriodicCuts, create_site,
    enrollment_token, poll_until, read_edge_documents, read_outbox,
};
use serde_json::{Value, json};

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "site-admin";
const EDGE_PASSWORD: &str = "a long edge password";
/// Longest time the healed site may take to go quiet.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

const GIVEN: [&str; 6] = ["Aminata", "Moussa", "Fatoumata", "Bakary", "Oumou", "Seydou"];
const FAMILY: [&str; 6] = ["Traoré", "Diarra", "Coulibaly", "Keïta", "Sangaré", "Konaté"];

/// A bad link: some latency, maybe a bandwidth limit, connections dropped
/// in both directions, and outages of up to a second every few seconds.
pub fn faulty_profile(rng: &mut StdRng) -> LinkProfile {
    let rate = |rng: &mut StdRng| rng.random_bool(0.5).then(|| rng.random_range(128_000..1_000_000));
    LinkProfile {
        latency: Duration::from_millis(rng.random_range(2..30)),
        up_bits_per_sec: rate(rng),
        down_bits_per_sec: rate(rng),
        ..LinkProfile::clean()
    }
    .with_drops(rng.random_range(0.2..0.5), rng.random_range(0.2..0.5), rng.random_range(256..4096))
    .with_cuts(PeriodicCuts {
        up: (Duration::from_millis(800), Duration::from_secs(3)),
        down: (Duration::from_millis(100), Duration::from_millis(800)),
    })
}

/// An edge server, its data and its link to the hub. Field order: the
/// process dies before its directory goes.
pub struct Node {
    process: Option<EdgeProcess>,
    pub api: Api,
    pub link: LinkSimulator,
    pub device_id: String,
    pub dir: EdgeDir,
}

impl Node {
    async fn start(hub_addr: std::net::SocketAddr, token: &str, link_seed: u64) -> anyhow::Result<Self> {
        let dir = EdgeDir::new()?;
        dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
        let link = LinkSimulator::start(hub_addr, LinkProfile::clean(), link_seed).await?;
        dir.cli(&["enroll", "--hub", &link.url(), "--token", token], "").await?;
        let process = dir.start().await?;
        let mut api = process.api()?;
        api.login(EDGE_USER, EDGE_PASSWORD).await?;
        let status = api.call(Method::GET, "/api/v1/sync/status", None, StatusCode::OK).await?;
        let device_id = status["device_id"].as_str().context("no device_id in sync status")?.to_owned();
        Ok(Self { process: Some(process), api, link, device_id, dir })
    }

    /// Whether this edge's projection holds the patient.
    pub async fn has_patient(&self, id: &str) -> anyhow::Result<bool> {
        match self.api.patient(id).await {
            Ok(_) => Ok(true),
            Err(CallError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// SIGKILLs the server and starts it again on the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
        }
        let process = self.dir.start().await?;
        let mut api = process.api()?;
        api.login(EDGE_USER, EDGE_PASSWORD).await?;
        self.api = api;
        self.process = Some(process);
        Ok(())
    }
}

/// A patient and the edge that registered it.
#[derive(Debug, Clone)]
pub struct Patient {
    pub id: String,
    pub origin: usize,
}

/// A hub and two edges of one site. Field order: edges and their links go
/// first, then the hub process, then its database.
pub struct Site {
    pub edges: Vec<Node>,
    hub_process: HubProcess,
    pub hub_api: Api,
    pub hub: HubDir,
    pub site_id: String,
    pub patients: Vec<Patient>,
    /// (patient id, encounter id) of every encounter recorded.
    pub encounters: Vec<(String, String)>,
}

impl Site {
    /// A hub, a site, and two edges enrolled in it through clean links
    /// seeded from `seed` (the tests make them faulty afterwards).
    pub async fn start(seed: u64) -> anyhow::Result<Self> {
        let hub = HubDir::new().await?;
        hub.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
        let hub_process = hub.start().await?;
        let mut hub_api = hub_process.api()?;
        hub_api.login(HUB_ADMIN, HUB_PASSWORD).await?;
        let site_id = create_site(&hub_api, "CSCom de Dioïla", "DIOILA").await?;
        let mut edges = Vec::new();
        for n in 0..2u64 {
            let token = enrollment_token(&hub_api, &site_id).await?;
            edges.push(Node::start(hub_process.addr(), &token, seed.wrapping_add(n + 1)).await?);
        }
        Ok(Self { edges, hub_process, hub_api, hub, site_id, patients: Vec::new(), encounters: Vec::new() })
    }

    /// Registers a random patient on `edge`; its id.
    pub async fn register(&mut self, edge: usize, rng: &mut StdRng) -> anyhow::Result<String> {
        let draft = json!({
            "given_name": GIVEN[rng.random_range(0..GIVEN.len())],
            "family_name": FAMILY[rng.random_range(0..FAMILY.len())],
            "sex": if rng.random_bool(0.5) { "female" } else { "male" },
            "age_years": rng.random_range(0..90u32),
            "village": "Dioïla",
            "phone": format!("7{:07}", rng.random_range(0..10_000_000u32)),
        });
        let patient = self.edges[edge].api.register_patient(&draft, true).await?;
        let id = patient["id"].as_str().context("patient without an id")?.to_owned();
        self.patients.push(Patient { id: id.clone(), origin: edge });
        Ok(id)
    }

    /// Records an encounter for `patient` on `edge`.
    pub async fn encounter(&mut self, edge: usize, patient: &str, rng: &mut StdRng) -> anyhow::Result<()> {
        let draft = json!({
            "kind": "consultation",
            "complaint": "fièvre",
            "diagnosis": format!("paludisme simple {}", rng.random_range(0..1000)),
            "icd10": "B54",
            "temperature_c": 38.5,
        });
        let encounter = self.edges[edge].api.add_encounter(patient, &draft).await?;
        let id = encounter["id"].as_str().context("encounter without an id")?.to_owned();
        self.encounters.push((patient.to_owned(), id));
        Ok(())
    }

    /// `PATCH /api/v1/patients/{id}` on `edge`.
    pub async fn edit(&self, edge: usize, patient: &str, patch: &Value) -> anyhow::Result<()> {
        let path = format!("/api/v1/patients/{patient}");
        self.edges[edge].api.call(Method::PATCH, &path, Some(patch), StatusCode::OK).await?;
        Ok(())
    }

    /// `POST /api/v1/sync/run` on `edge`: its report, or `None` if the sync
    /// failed retryably (what a faulty link does). The edge itself must
    /// answer, and a failure that says it will not go away by retrying is
    /// an error: a bad link must never wedge a box.
    pub async fn sync(&self, edge: usize) -> anyhow::Result<Option<Value>> {
        match self.edges[edge].api.call(Method::POST, "/api/v1/sync/run", None, StatusCode::OK).await {
            Ok(report) => Ok(Some(report)),
            Err(CallError::Status { status: StatusCode::BAD_GATEWAY, body, .. })
                if serde_json::from_str::<Value>(&body).is_ok_and(|b| b["hub"]["retryable"] == true) =>
            {
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("edge {edge} sync run"))),
        }
    }

    /// Heals both links (clean profile) and syncs edge 0 then edge 1 until
    /// a whole round pushes and pulls nothing; the number of rounds.
    pub async fn converge(&self) -> anyhow::Result<u32> {
        for node in &self.edges {
            node.link.set_profile(LinkProfile::clean());
            node.link.heal();
        }
        let mut rounds = 0;
        poll_until("the healed site to go quiet", CONVERGE_TIMEOUT, || {
            rounds += 1;
            async move {
                let mut quiet = true;
                for edge in 0..self.edges.len() {
                    match self.sync(edge).await? {
                        Some(r) => quiet &= r["pushed"] == 0 && r["pulled"] == 0,
                        // A scheduled outage that began before the heal ends by itself.
                        None => quiet = false,
                    }
                }
                Ok(quiet.then_some(()))
            }
        })
        .await?;
        Ok(rounds)
    }

    /// Asserts that the site has converged (see the module docs of
    /// `convergence.rs`); a one-line summary.
    pub async fn check_converged(&self) -> anyhow::Result<String> {
        // Exactly once: hub log == union of the outboxes.
        let log = self.hub.change_log().await?;
        let mut made: BTreeMap<String, (String, String)> = BTreeMap::new();
        for node in &self.edges {
            for (hash, row) in read_outbox(&node.dir.db_path())? {
                ensure!(row.acked, "outbox change {hash} of device {} is not acknowledged", node.device_id);
                let previous = made.insert(hash.clone(), (node.device_id.clone(), row.patient_id));
                ensure!(previous.is_none(), "change {hash} is in both edges' outboxes");
            }
        }
        let mut on_hub = BTreeSet::new();
        for change in &log {
            ensure!(on_hub.insert(change.hash.clone()), "the hub holds change {} twice", change.hash);
            let (device, patient) =
                made.get(&change.hash).with_context(|| format!("the hub holds {}, made by no edge", change.hash))?;
            ensure!(
                &change.device_id == device && &change.patient_id == patient && change.site_id == self.site_id,
                "change {} has device {}, patient {}, site {} on the hub; made by {device} for {patient}",
                change.hash,
                change.device_id,
                change.patient_id,
                change.site_id
            );
        }
        ensure!(on_hub.len() == made.len(), "the hub holds {} changes, the edges made {}", on_hub.len(), made.len());

        // Same documents everywhere.
        let hub_docs = self.hub.documents().await?;
        let registered: BTreeSet<&str> = self.patients.iter().map(|p| p.id.as_str()).collect();
        ensure!(
            hub_docs.keys().map(String::as_str).eq(registered.iter().copied()),
            "the hub holds {} documents for {} registered patients",
            hub_docs.len(),
            registered.len()
        );
        for (edge, node) in self.edges.iter().enumerate() {
            let docs = read_edge_documents(&node.dir.db_path())?;
            ensure!(
                docs.keys().eq(hub_docs.keys()),
                "edge {edge} holds {} documents, the hub {}",
                docs.len(),
                hub_docs.len()
            );
            for (id, doc) in &docs {
                ensure!(
                    doc.stored_twice.is_empty(),
                    "edge {edge} stores changes of {id} twice: {:?}",
                    doc.stored_twice
                );
                ensure!(
                    Some(&doc.summary) == hub_docs.get(id),
                    "patient {id}: edge {edge}'s document differs from the hub's: {:?} vs {:?}",
                    doc.summary.heads,
                    hub_docs.get(id).map(|d| &d.heads)
                );
            }
        }
        for (id, doc) in &hub_docs {
            let logged: BTreeSet<String> = log.iter().filter(|c| &c.patient_id == id).map(|c| c.hash.clone()).collect();
            ensure!(doc.changes == logged, "patient {id}: the hub's document and its change log differ");
        }

        // Same projections everywhere, every encounter kept.
        for patient in &self.patients {
            let on_hub = self.hub_api.patient(&patient.id).await?;
            let first = normalized(self.edges[0].api.patient(&patient.id).await?);
            for (edge, node) in self.edges.iter().enumerate().skip(1) {
                let here = normalized(node.api.patient(&patient.id).await?);
                ensure!(here == first, "patient {}: edge {edge} shows {here}, edge 0 {first}", patient.id);
            }
            // Timestamps too: the edge keeps them to the microsecond, as
            // PostgreSQL does on the hub.
            let hub_view = normalized(on_hub.clone());
            ensure!(first == hub_view, "patient {}: the edges show {first}, the hub {hub_view}", patient.id);
            let kept: BTreeSet<&str> =
                on_hub["encounters"].as_array().into_iter().flatten().filter_map(|e| e["id"].as_str()).collect();
            for (_, encounter) in self.encounters.iter().filter(|(p, _)| p == &patient.id) {
                ensure!(kept.contains(encounter.as_str()), "encounter {encounter} of {} was lost", patient.id);
            }
        }
        Ok(format!(
            "{} patients, {} encounters, {} changes (edges {:?}), identical documents and projections",
            self.patients.len(),
            self.encounters.len(),
            log.len(),
            self.edges.iter().map(|n| log.iter().filter(|c| c.device_id == n.device_id).count()).collect::<Vec<_>>()
        ))
    }
}

/// A patient's JSON with its encounters in id order (encounters recorded
/// the same day may tie in the API's date order).
fn normalized(mut patient: Value) -> Value {
    if let Some(list) = patient["encounters"].as_array_mut() {
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
    patient
}
