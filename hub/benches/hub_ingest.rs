//! Hub ingest benchmark (issue 3): changes durably applied per second into
//! PostgreSQL with the projection, batch after batch, and the hub's memory
//! with 100,000 patients.
//!
//! Runs the real `hub` binary (the bench profile builds it optimised) on a
//! fresh database of the PostgreSQL server at `HUB_BENCH_ADMIN_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, trust auth),
//! dropped at the end. One enrolled device pushes signed batches over
//! loopback HTTP exactly as an edge does: at most 2,000 changes and 1 MiB
//! per batch (the edge's ceiling), one request after the other, each
//! answered only after its transaction committed.
//!
//! Changes are real Automerge changes in the edge's document layout (schema
//! 1: root demographics, an `encounters` map of maps), written with the
//! device's id as actor. Bodies are encoded before each timed phase, so the
//! figures are the hub's time (plus signing and loopback HTTP): changes in
//! the phase divided by the sum of request times.
//!
//! Phases: (a) new patients (registration and two encounters each), (b) new
//! encounters on existing patients (the common case), (c) demographic edits,
//! then growth to `HUB_BENCH_PATIENTS` patients (default 100,000; each a
//! registration and an encounter) during which the client builds each batch
//! between requests, and (b) again at that size. The hub's VmRSS and VmHWM
//! (from `/proc/<pid>/status`) are read at the end, with the allocator the
//! binary ships (glibc malloc, no tuning variables set).
//!
//! `cargo bench -p hub --bench hub_ingest`; prints a table of figures
//! against the targets. Nothing here asserts a speed. `HUB_BENCH_BIN` runs
//! another hub binary (an unstripped build, to profile it with `perf`);
//! `HUB_BENCH_LOG=hub::sync::apply=debug` shows where each apply's time
//! goes.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use automerge::transaction::Transactable as _;
use automerge::{ActorId, AutoCommit, ObjId, ObjType, ROOT, ScalarValue};
use base64::Engine as _;
use santerurale_shared::sync::{
    OutboxChange, PROTOCOL_VERSION, PUSH_PATH, PushRequest, PushResponse, SigningKey, decode_push_response,
    encode_push, sign,
};
use santerurale_shared::{DeviceId, EncounterId, PatientId};

use crate::common::BenchDb;

mod common;

const TARGET_CHANGES_PER_SEC: f64 = 10_000.0;
const TARGET_RSS_MB: f64 = 300.0;
/// The edge's batch ceiling (`shared/src/sync/push.rs`).
const MAX_BATCH_CHANGES: usize = 2_000;
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Patients of phases (a) to (c).
const PHASE_PATIENTS: usize = 2_000;

fn main() -> anyhow::Result<()> {
    let patients: usize = match std::env::var("HUB_BENCH_PATIENTS") {
        Ok(v) => v.parse().context("HUB_BENCH_PATIENTS")?,
        Err(_) => 100_000,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let db = rt.block_on(BenchDb::create("hub_bench_"))?;
    let result = rt.block_on(run(&db, patients));
    if let Err(e) = rt.block_on(db.drop_db()) {
        eprintln!("could not drop {}: {e:#}", db.name);
    }
    let rows = result?;
    print_table(&rows);
    Ok(())
}

/// One line of the result table.
struct Row {
    what: String,
    value: f64,
    unit: &'static str,
    target: Option<(f64, bool)>,
}

impl Row {
    fn rate(what: &str, rate: Rate) -> Self {
        Self {
            what: format!("{what} ({} changes, {} batches)", rate.changes, rate.batches),
            value: rate.per_sec(),
            unit: "changes/s",
            target: Some((TARGET_CHANGES_PER_SEC, true)),
        }
    }

    fn memory(what: &str, kb: u64, target: bool) -> Self {
        // Both figures in MB (10^6 bytes would flatter the hub: MiB here).
        let mb = kb as f64 / 1024.0;
        Self { what: what.into(), value: mb, unit: "MiB", target: target.then_some((TARGET_RSS_MB, false)) }
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("{:<72} {:>12} {:<10} {:>10} {:>5}", "hub ingest", "figure", "unit", "target", "met");
    for r in rows {
        let (target, met) = match r.target {
            Some((t, at_least)) => {
                let met = if at_least { r.value >= t } else { r.value <= t };
                (format!("{}{t:.0}", if at_least { ">=" } else { "<=" }), if met { "yes" } else { "NO" })
            }
            None => (String::new(), ""),
        };
        println!("{:<72} {:>12.0} {:<10} {:>10} {:>5}", r.what, r.value, r.unit, target, met);
    }
}

async fn run(db: &BenchDb, patients: usize) -> anyhow::Result<Vec<Row>> {
    let data = tempfile::tempdir()?;
    let mut hub = Hub::start(&db.url(), data.path())?;
    let http = reqwest::Client::new();
    hub.wait_healthy(&http).await?;
    let mut device = Device::enroll(db, &http, &hub.base).await?;
    let mut rows = Vec::new();

    // (a) New patients: registration and two encounters each.
    let mut docs: Vec<EdgeDoc> = Vec::with_capacity(PHASE_PATIENTS);
    let mut changes = Vec::new();
    for i in 0..PHASE_PATIENTS {
        let (mut doc, created) = EdgeDoc::register(device.id, i);
        changes.push((doc.patient, created));
        for k in 0..2 {
            changes.push((doc.patient, doc.add_encounter(i + k)));
        }
        docs.push(doc);
    }
    let rate = device.push_all(&http, &hub.base, changes).await?;
    rows.push(Row::rate("(a) new patients: registration + 2 encounters", rate));

    // (b) A month of consultations: one new encounter per patient, three rounds.
    let mut changes = Vec::new();
    for round in 0..3 {
        for (i, doc) in docs.iter_mut().enumerate() {
            changes.push((doc.patient, doc.add_encounter(i + round)));
        }
    }
    let rate = device.push_all(&http, &hub.base, changes).await?;
    rows.push(Row::rate("(b) new encounters on existing patients", rate));

    // (c) Demographic edits: a new phone, then a new village.
    let mut changes = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        changes.push((doc.patient, doc.set("phone", &format!("+2237{:07}", i))));
    }
    for (i, doc) in docs.iter_mut().enumerate() {
        changes.push((doc.patient, doc.set("village", VILLAGES[(i + 1) % VILLAGES.len()])));
    }
    let rate = device.push_all(&http, &hub.base, changes).await?;
    rows.push(Row::rate("(c) demographic edits on existing patients", rate));

    // Growth: batches built between requests, so documents never pile up here.
    let mut grown = PHASE_PATIENTS;
    let mut growth = Rate::default();
    let started = Instant::now();
    while grown < patients {
        let mut changes = Vec::new();
        while grown < patients && changes.len() + 2 <= MAX_BATCH_CHANGES {
            let (mut doc, created) = EdgeDoc::register(device.id, grown);
            changes.push((doc.patient, created));
            changes.push((doc.patient, doc.add_encounter(grown)));
            grown += 1;
        }
        growth.add(device.push_all(&http, &hub.base, changes).await?);
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("growth stopped after 10 minutes at {grown} patients");
            break;
        }
    }
    rows.push(Row::rate(&format!("growth to {grown} patients: registration + 1 encounter"), growth));

    let mut changes = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        changes.push((doc.patient, doc.add_encounter(i + 7)));
    }
    let rate = device.push_all(&http, &hub.base, changes).await?;
    rows.push(Row::rate(&format!("(b) again with {grown} patients stored"), rate));

    let (rss, hwm) = hub.memory()?;
    rows.push(Row::memory(&format!("hub VmRSS with {grown} patients"), rss, true));
    rows.push(Row::memory("hub VmHWM (peak RSS) over the whole run", hwm, true));
    hub.stop();
    Ok(rows)
}

/// Changes pushed and the time their requests took.
#[derive(Debug, Default, Clone, Copy)]
struct Rate {
    changes: usize,
    batches: usize,
    elapsed: Duration,
}

impl Rate {
    fn per_sec(self) -> f64 {
        self.changes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, other: Self) {
        self.changes += other.changes;
        self.batches += other.batches;
        self.elapsed += other.elapsed;
    }
}

/// The `hub` binary serving plain HTTP on a loopback port.
struct Hub {
    child: Child,
    base: String,
}

impl Hub {
    fn start(database_url: &str, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        // A free port now; the hub binds it a moment later (nothing else
        // on this loopback is expected to take it in between).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = std::env::var_os("HUB_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_hub").into());
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("HUB_DATA_DIR", data_dir)
            .env("HUB_LOG", std::env::var("HUB_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .env_remove("MALLOC_ARENA_MAX")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the hub binary")?;
        Ok(Self { child, base: format!("http://127.0.0.1:{port}") })
    }

    async fn wait_healthy(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the hub exited at start: {status}");
            }
            if let Ok(resp) = http.get(format!("{}/health", self.base)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the hub did not answer /health within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// VmRSS and VmHWM in KiB.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
            Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The enrolled device the batches come from.
struct Device {
    id: DeviceId,
    key: SigningKey,
    next_seq: u64,
}

impl Device {
    async fn enroll(db: &BenchDb, http: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let pool = db.pool(2)?;
        let site =
            hub::sites::NewSite { name: Some("CSCom Bench".into()), code: Some("BENCH".into()), ..Default::default() }
                .validate()
                .map_err(|e| anyhow::anyhow!("site: {e:?}"))?;
        let site = hub::sites::insert(&pool, &site).await?;
        let token = hub::devices::create_token(&pool, site.id, 10).await?.context("the site exists")?;
        let device =
            Self { id: DeviceId::new(), key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()), next_seq: 1 };
        let public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(device.key.verifying_key().as_bytes());
        let resp = http
            .post(format!("{base}/api/v1/devices/enroll"))
            .json(&serde_json::json!({
                "token": token.token,
                "device_id": device.id.to_string(),
                "public_key": public_key,
            }))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("enroll: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(device)
    }

    /// Encoded push bodies for `changes`, in order, cut at the edge's ceiling.
    fn prepare(&mut self, changes: Vec<(PatientId, Vec<u8>)>) -> Vec<(usize, Vec<u8>)> {
        let mut bodies = Vec::new();
        let mut batch: Vec<OutboxChange> = Vec::new();
        let mut bytes = 0;
        let total = changes.len();
        for (i, (patient_id, change)) in changes.into_iter().enumerate() {
            if !batch.is_empty() && (batch.len() == MAX_BATCH_CHANGES || bytes + change.len() > MAX_BATCH_BYTES) {
                bodies.push(self.body(std::mem::take(&mut batch), total - i));
                bytes = 0;
            }
            bytes += change.len();
            batch.push(OutboxChange { seq: self.next_seq, patient_id, change });
            self.next_seq += 1;
        }
        if !batch.is_empty() {
            bodies.push(self.body(batch, 0));
        }
        bodies
    }

    fn body(&self, batch: Vec<OutboxChange>, depth_after: usize) -> (usize, Vec<u8>) {
        let count = batch.len();
        let request =
            PushRequest { protocol: PROTOCOL_VERSION, device_id: self.id, batch, outbox_depth: depth_after as u64 };
        (count, encode_push(&request).expect("a batch within the limits encodes"))
    }

    /// Pushes `changes` batch after batch; each batch must be fully applied.
    async fn push_all(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        changes: Vec<(PatientId, Vec<u8>)>,
    ) -> anyhow::Result<Rate> {
        let bodies = self.prepare(changes);
        let mut rate = Rate::default();
        for (count, body) in bodies {
            let started = Instant::now();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let headers = sign(&self.key, self.id, "POST", PUSH_PATH, &body, now, rand::random());
            let mut req = http
                .post(format!("{base}{PUSH_PATH}"))
                .header("content-type", santerurale_shared::sync::wire::CONTENT_TYPE);
            for (name, value) in headers.to_pairs() {
                req = req.header(name, value);
            }
            let resp = req.body(body).send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            rate.elapsed += started.elapsed();
            if !status.is_success() {
                bail!("push refused: {status} {}", String::from_utf8_lossy(&bytes));
            }
            let answer: PushResponse = decode_push_response(&bytes, 1024)?;
            if answer.applied as usize != count {
                bail!("push applied {} of {count} changes", answer.applied);
            }
            rate.changes += count;
            rate.batches += 1;
        }
        Ok(rate)
    }
}

const GIVEN: &[&str] = &["Awa", "Fatoumata", "Mariam", "Aminata", "Oumou", "Moussa", "Ibrahim", "Seydou"];
const FAMILY: &[&str] = &["Coulibaly", "Traoré", "Diarra", "Keïta", "Konaté", "Sangaré", "Cissé", "Dembélé"];
const VILLAGES: &[&str] = &["Kati", "Siby", "Ouéléssébougou", "Kolokani", "Banamba", "Dioïla"];
const DIAGNOSES: &[(&str, &str)] =
    &[("paludisme simple", "B54"), ("infection respiratoire", "J06.9"), ("diarrhée", "A09"), ("hypertension", "I10")];

/// One patient's document on the edge, in its layout (schema 1).
struct EdgeDoc {
    patient: PatientId,
    doc: AutoCommit,
    encounters: ObjId,
}

fn stamp() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("format a timestamp")
}

impl EdgeDoc {
    /// A new patient registered on `device`, and the registration change.
    fn register(device: DeviceId, i: usize) -> (Self, Vec<u8>) {
        let patient = PatientId::new();
        let mut doc = AutoCommit::new().with_actor(ActorId::from(device.as_uuid().as_bytes().as_slice()));
        let now = stamp();
        let d = &mut doc;
        let put = |d: &mut AutoCommit, k: &str, v: ScalarValue| d.put(ROOT, k, v).expect("put");
        put(d, "schema", ScalarValue::Uint(1));
        put(d, "id", patient.to_string().into());
        put(d, "origin_device", device.to_string().into());
        put(d, "created_at", now.as_str().into());
        let encounters = d.put_object(ROOT, "encounters", ObjType::Map).expect("put");
        put(d, "given_name", GIVEN[i % GIVEN.len()].into());
        put(d, "family_name", FAMILY[(i / GIVEN.len()) % FAMILY.len()].into());
        put(d, "sex", if i.is_multiple_of(2) { "female" } else { "male" }.into());
        put(d, "birth_date", format!("{}-0{}-1{}", 1950 + i % 70, 1 + i % 9, i % 10).into());
        put(d, "birth_date_estimated", i.is_multiple_of(5).into());
        if !i.is_multiple_of(3) {
            put(d, "phone", format!("+2236{:07}", i % 10_000_000).into());
        }
        put(d, "village", VILLAGES[i % VILLAGES.len()].into());
        put(d, "whatsapp_consent", false.into());
        put(d, "updated_at", now.as_str().into());
        let mut me = Self { patient, doc, encounters };
        let change = me.commit();
        (me, change)
    }

    /// A consultation recorded today; the change.
    fn add_encounter(&mut self, i: usize) -> Vec<u8> {
        let (diagnosis, icd10) = DIAGNOSES[i % DIAGNOSES.len()];
        let now = stamp();
        let d = &mut self.doc;
        let e = d.put_object(&self.encounters, EncounterId::new().to_string(), ObjType::Map).expect("put");
        d.put(&e, "date", &now[..10]).expect("put");
        d.put(&e, "kind", "consultation").expect("put");
        d.put(&e, "complaint", "fièvre et céphalées depuis deux jours").expect("put");
        d.put(&e, "diagnosis", diagnosis).expect("put");
        d.put(&e, "icd10", icd10).expect("put");
        d.put(&e, "weight_kg", ScalarValue::F64(40.0 + (i % 40) as f64)).expect("put");
        d.put(&e, "temperature_c", ScalarValue::F64(36.5 + (i % 30) as f64 / 10.0)).expect("put");
        d.put(&e, "bp_systolic", ScalarValue::Uint(110 + (i % 40) as u64)).expect("put");
        d.put(&e, "bp_diastolic", ScalarValue::Uint(70 + (i % 20) as u64)).expect("put");
        d.put(&e, "notes", "").expect("put");
        d.put(&e, "clinician", "aminata").expect("put");
        d.put(&e, "recorded_at", now.as_str()).expect("put");
        d.put(ROOT, "updated_at", now.as_str()).expect("put");
        self.commit()
    }

    /// An edit of one root field; the change.
    fn set(&mut self, key: &str, value: &str) -> Vec<u8> {
        self.doc.put(ROOT, key, value).expect("put");
        self.doc.put(ROOT, "updated_at", stamp()).expect("put");
        self.commit()
    }

    fn commit(&mut self) -> Vec<u8> {
        self.doc.commit();
        self.doc.get_last_local_change().expect("a change was just committed").raw_bytes().to_vec()
    }
}
