//! Crash safety of the edge: `kill -9` in the middle of a burst of writes
//! loses nothing that was acknowledged and leaves a sound database.
//!
//! Each round starts the real `edge serve` on the same data directory, lets
//! several concurrent writers register patients and record encounters through
//! the API, and SIGKILLs the process at a random point: after a random number
//! of acknowledged writes, or after a random short delay. A write is
//! *acknowledged* when its 201 response arrived; one sent but not answered
//! when the process died is *in flight* (it may or may not have committed).
//! Some encounters go to a few "hot" patients, so their documents pass the
//! compaction threshold and some kills land on a compaction.
//!
//! With the process dead, the test opens the SQLite file read-only and checks:
//! - `PRAGMA integrity_check` is ok and no foreign key dangles;
//! - every acknowledged patient has its document and projection row, every
//!   acknowledged encounter its projection row (on the right patient);
//! - the outbox sequence is exactly `1..=n`, with no gap;
//! - every outbox row's patient has a document, every document an outbox row,
//!   every document a projection row;
//! - acknowledged writes ≤ outbox rows ≤ acknowledged + in flight: each write
//!   is one change, so none was lost and none invented.
//!
//! The next round restarts on the same directory and first reads the previous
//! round's writes back through the API; after the last round every write ever
//! acknowledged is read back. Finally `edge reindex` must rebuild exactly the
//! same projection rows from the documents, and `edge backup` must produce a
//! sound copy holding the same rows.
//!
//! What this does not prove: a killed process leaves its written pages in
//! the operating system's cache, so power-cut durability (`synchronous=FULL`,
//! fsync) is outside this test.
//!
//! The kill points and the writers' choices come from a seeded RNG. The seed is
//! printed; `SANTERURALE_CRASH_SEED=N` replays the same choices (the timing,
//! and so the exact kill points, still vary). `SANTERURALE_CRASH_ROUNDS`
//! changes the number of rounds (default 15).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use santerurale_e2e::{Api, EdgeDir, EdgeProcess, check_integrity, dump_rows, dump_table, open_read_only};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

const USER: &str = "crash-test";
const PASSWORD: &str = "kill-dash-nine";
const WRITERS: usize = 4;
const DEFAULT_ROUNDS: usize = 15;
/// At most this many acknowledged writes before the kill, in "after N writes" rounds.
const MAX_ACKS_BEFORE_KILL: u64 = 100;
/// At most this long after the burst starts, in "after a delay" rounds.
const MAX_KILL_DELAY_MS: u64 = 400;
/// Patients that collect encounters across rounds (to reach compaction).
const HOT_PATIENTS: usize = 3;
/// Longest a round may wait for its kill point.
const BURST_TIMEOUT: Duration = Duration::from_secs(60);

const GIVEN: [&str; 8] = ["Aminata", "Moussa", "Fatoumata", "Bakary", "Oumou", "Seydou", "Kadiatou", "Ibrahim"];
const FAMILY: [&str; 8] = ["Traoré", "Diarra", "Coulibaly", "Keïta", "Sangaré", "Konaté", "Dembélé", "Cissé"];
const VILLAGES: [&str; 4] = ["Kati", "Siby", "Ouéléssébougou", "Kangaba"];
const KINDS: [&str; 4] = ["consultation", "antenatal", "vaccination", "follow_up"];

#[derive(Debug, Clone)]
struct AckedPatient {
    given_name: String,
    family_name: String,
    round: usize,
}

#[derive(Debug, Clone)]
struct AckedEncounter {
    patient_id: String,
    diagnosis: String,
    round: usize,
}

/// What the writers know for certain: every acknowledged write.
#[derive(Debug, Default, Clone)]
struct Ledger {
    patients: BTreeMap<String, AckedPatient>,
    encounters: BTreeMap<String, AckedEncounter>,
    hot: Vec<String>,
    acked_writes: u64,
    in_flight_writes: u64,
}

/// State the writers of one round share with the killer.
#[derive(Debug)]
struct Burst {
    ledger: Arc<Mutex<Ledger>>,
    killed: AtomicBool,
    acked_this_round: watch::Sender<u64>,
    round: usize,
}

impl Burst {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acked(&self, update: impl FnOnce(&mut Ledger)) {
        let mut ledger = self.ledger();
        update(&mut ledger);
        ledger.acked_writes += 1;
        drop(ledger);
        self.acked_this_round.send_modify(|n| *n += 1);
    }
}

#[derive(Debug, Clone, Copy)]
enum KillPoint {
    AfterAcks(u64),
    AfterDelay(Duration),
}

impl std::fmt::Display for KillPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AfterAcks(n) => write!(f, "after {n} acks"),
            Self::AfterDelay(d) => write!(f, "after {} ms", d.as_millis()),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct RoundOutcome {
    acked: u64,
    in_flight: u64,
}

fn patient_draft(rng: &mut StdRng) -> Value {
    let pick = |rng: &mut StdRng, list: &[&str]| list[rng.random_range(0..list.len())].to_owned();
    let mut draft = json!({
        "given_name": pick(rng, &GIVEN),
        "family_name": pick(rng, &FAMILY),
        "sex": if rng.random_bool(0.5) { "female" } else { "male" },
        "village": pick(rng, &VILLAGES),
        "phone": format!("7{:07}", rng.random_range(0..10_000_000u32)),
    });
    if rng.random_bool(0.5) {
        draft["age_years"] = json!(rng.random_range(0..90u32));
    } else {
        draft["birth_date"] = json!(format!(
            "{}-{:02}-{:02}",
            rng.random_range(1940..2020),
            rng.random_range(1..=12),
            rng.random_range(1..=28)
        ));
    }
    draft
}

fn encounter_draft(rng: &mut StdRng, diagnosis: &str) -> Value {
    json!({
        "kind": KINDS[rng.random_range(0..KINDS.len())],
        "complaint": "fièvre depuis deux jours",
        "diagnosis": diagnosis,
        "icd10": "B54",
        "weight_kg": f64::from(rng.random_range(30..90u32)),
        "temperature_c": 36.5 + f64::from(rng.random_range(0..30u32)) / 10.0,
        "bp_systolic": 120,
        "bp_diastolic": 80,
        "notes": "écrit pendant le test de crash",
    })
}

/// One writer: registers patients and records encounters until the edge dies.
/// Returns how many of its writes were in flight at the kill (0 or 1).
async fn writer(api: Api, burst: Arc<Burst>, id: usize, seed: u64) -> anyhow::Result<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mine: Vec<String> = Vec::new();
    let round = burst.round;
    let mut n = 0u64;
    loop {
        n += 1;
        if burst.killed.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let hot = burst.ledger().hot.clone();
        let roll = rng.random_range(0..10);
        let target = if roll < 4 && !hot.is_empty() {
            Some(hot[rng.random_range(0..hot.len())].clone())
        } else if roll < 8 && !mine.is_empty() {
            Some(mine[rng.random_range(0..mine.len())].clone())
        } else {
            None
        };
        let result = match target {
            Some(patient_id) => {
                let diagnosis = format!("crash r{round} w{id} n{n}");
                api.add_encounter(&patient_id, &encounter_draft(&mut rng, &diagnosis)).await.map(|enc| {
                    let enc_id = enc["id"].as_str().unwrap_or_default().to_owned();
                    burst.acked(|l| {
                        l.encounters.insert(enc_id, AckedEncounter { patient_id, diagnosis, round });
                    });
                })
            }
            None => api.register_patient(&patient_draft(&mut rng), true).await.map(|p| {
                let patient_id = p["id"].as_str().unwrap_or_default().to_owned();
                mine.push(patient_id.clone());
                burst.acked(|l| {
                    if l.hot.len() < HOT_PATIENTS {
                        l.hot.push(patient_id.clone());
                    }
                    let given_name = p["given_name"].as_str().unwrap_or_default().to_owned();
                    let family_name = p["family_name"].as_str().unwrap_or_default().to_owned();
                    l.patients.insert(patient_id, AckedPatient { given_name, family_name, round });
                });
            }),
        };
        match result {
            Ok(()) => {}
            // No answer: the write was in flight when the process died.
            Err(e) if e.is_transport() && burst.killed.load(Ordering::SeqCst) => return Ok(1),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("writer {id} failed before the kill")));
            }
        }
    }
}

/// Runs one burst against `edge` and kills it at `kill_point`.
async fn run_burst(
    edge: &mut EdgeProcess,
    api: &Api,
    ledger: &Arc<Mutex<Ledger>>,
    round: usize,
    kill_point: KillPoint,
    rng: &mut StdRng,
) -> anyhow::Result<RoundOutcome> {
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let burst = Arc::new(Burst {
        ledger: Arc::clone(ledger),
        killed: AtomicBool::new(false),
        acked_this_round: acked_tx,
        round,
    });
    let mut writers = JoinSet::new();
    for id in 0..WRITERS {
        writers.spawn(writer(api.clone(), Arc::clone(&burst), id, rng.random()));
    }
    let reached = async {
        match kill_point {
            KillPoint::AfterAcks(n) => {
                let _ = acked_rx.wait_for(|&acked| acked >= n).await;
            }
            // A random kill point, not a synchronisation: the checks below hold whenever it lands.
            KillPoint::AfterDelay(delay) => tokio::time::sleep(delay).await,
        }
    };
    tokio::select! {
        () = reached => {}
        Some(early) = writers.join_next() => {
            let early = early.context("a writer panicked")?;
            bail!("a writer stopped before the kill: {:?}", early.err());
        }
        () = tokio::time::sleep(BURST_TIMEOUT) => bail!("round {round}: the kill point ({kill_point}) was not reached within {BURST_TIMEOUT:?}"),
    }
    // The edge must still be alive here: the kill below is what ends it.
    edge.ensure_running()?;
    burst.killed.store(true, Ordering::SeqCst);
    let status = edge.kill()?;
    ensure!(status.signal() == Some(9), "the edge ended with {status}, not by SIGKILL");
    let mut in_flight = 0;
    while let Some(result) = writers.join_next().await {
        in_flight += result.context("a writer panicked")??;
    }
    let acked = *burst.acked_this_round.borrow();
    burst.ledger().in_flight_writes += in_flight;
    Ok(RoundOutcome { acked, in_flight })
}

#[derive(Debug)]
struct DbStats {
    outbox: u64,
    documents: u64,
    /// Documents whose changes have been compacted into a snapshot at least once.
    compacted: u64,
    encounters: u64,
}

/// The on-disk checks, with no process running on the database.
fn check_database(db: &Path, ledger: &Ledger) -> anyhow::Result<DbStats> {
    let conn = open_read_only(db)?;
    check_integrity(&conn)?;
    let count = |sql: &str| -> anyhow::Result<u64> {
        let n: i64 = conn.query_row(sql, [], |r| r.get(0)).with_context(|| sql.to_owned())?;
        Ok(u64::try_from(n)?)
    };

    let (min, max, rows): (Option<i64>, Option<i64>, i64) =
        conn.query_row("SELECT min(seq), max(seq), count(*) FROM outbox", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if rows > 0 {
        ensure!(min == Some(1) && max == Some(rows), "outbox sequence has gaps: min {min:?}, max {max:?}, {rows} rows");
    }
    let outbox = u64::try_from(rows)?;
    let orphans = count(
        "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.patient_id = o.patient_id)",
    )?;
    ensure!(orphans == 0, "{orphans} outbox rows name a patient with no document");
    let silent = count(
        "SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.patient_id = d.patient_id)",
    )?;
    ensure!(silent == 0, "{silent} documents have no change in the outbox");
    let unprojected = count(
        "SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.id = d.patient_id)",
    )?;
    ensure!(unprojected == 0, "{unprojected} documents have no row in patients");
    let documents = count("SELECT count(*) FROM documents")?;
    ensure!(count("SELECT count(*) FROM patients")? == documents, "patients and documents differ in number");
    ensure!(
        count("SELECT count(*) FROM patient_search")? == documents,
        "patient_search and documents differ in number"
    );

    ensure!(
        outbox >= ledger.acked_writes,
        "acknowledged writes lost: {} acknowledged but only {outbox} outbox rows",
        ledger.acked_writes
    );
    ensure!(
        outbox <= ledger.acked_writes + ledger.in_flight_writes,
        "{outbox} outbox rows but only {} writes acknowledged and {} in flight",
        ledger.acked_writes,
        ledger.in_flight_writes
    );

    let ids = |sql: &str| -> anyhow::Result<BTreeSet<String>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let with_docs = ids("SELECT patient_id FROM documents")?;
    let projected = ids("SELECT id FROM patients")?;
    for id in ledger.patients.keys() {
        ensure!(with_docs.contains(id), "acknowledged patient {id} has no document");
        ensure!(projected.contains(id), "acknowledged patient {id} is not in patients");
    }
    let encounters: BTreeMap<String, String> = {
        let mut stmt = conn.prepare("SELECT id, patient_id FROM encounters")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, enc) in &ledger.encounters {
        ensure!(
            encounters.get(id) == Some(&enc.patient_id),
            "acknowledged encounter {id} of patient {} is missing from encounters",
            enc.patient_id
        );
    }
    let compacted = count("SELECT count(*) FROM documents WHERE snapshot IS NOT NULL")?;
    Ok(DbStats { outbox, documents, compacted, encounters: u64::try_from(encounters.len())? })
}

/// Reads acknowledged writes back through the API: those of `round`, or all.
async fn check_api(api: &Api, ledger: &Ledger, round: Option<usize>) -> anyhow::Result<usize> {
    let mut expected: BTreeMap<&str, Vec<(&str, &AckedEncounter)>> = BTreeMap::new();
    for (id, p) in &ledger.patients {
        if round.is_none_or(|r| p.round == r) {
            expected.entry(id).or_default();
        }
    }
    for (id, enc) in &ledger.encounters {
        if round.is_none_or(|r| enc.round == r) {
            expected.entry(enc.patient_id.as_str()).or_default().push((id, enc));
        }
    }
    for (patient_id, encounters) in &expected {
        let patient = api.patient(patient_id).await.with_context(|| format!("acknowledged patient {patient_id}"))?;
        let acked = &ledger.patients[*patient_id];
        ensure!(
            patient["given_name"] == acked.given_name.as_str() && patient["family_name"] == acked.family_name.as_str(),
            "patient {patient_id} reads back as {patient}"
        );
        let found: BTreeMap<&str, &str> = patient["encounters"]
            .as_array()
            .context("no encounters array")?
            .iter()
            .map(|e| (e["id"].as_str().unwrap_or_default(), e["diagnosis"].as_str().unwrap_or_default()))
            .collect();
        for (enc_id, enc) in encounters {
            ensure!(
                found.get(enc_id) == Some(&enc.diagnosis.as_str()),
                "acknowledged encounter {enc_id} is missing from patient {patient_id} through the API"
            );
        }
    }
    Ok(expected.len())
}

async fn signed_in(edge: &EdgeProcess) -> anyhow::Result<Api> {
    let mut api = edge.api()?;
    api.login(USER, PASSWORD).await?;
    Ok(api)
}

fn env_number(name: &str) -> anyhow::Result<Option<u64>> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse::<u64>().with_context(|| format!("{name}={v} is not a number")))
        .transpose()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_dash_nine() -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = match env_number("SANTERURALE_CRASH_SEED")? {
        Some(seed) => seed,
        None => u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos()),
    };
    let rounds = usize::try_from(env_number("SANTERURALE_CRASH_ROUNDS")?.unwrap_or(DEFAULT_ROUNDS as u64))?;
    println!("crash test: {rounds} rounds, {WRITERS} writers, seed {seed} (SANTERURALE_CRASH_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = EdgeDir::new()?;
    dir.add_user(USER, "clinician", PASSWORD).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let lock = || ledger.lock().unwrap_or_else(PoisonError::into_inner);

    let mut outbox_before = 0;
    for round in 1..=rounds {
        let round_started = Instant::now();
        let mut edge = dir.start().await.with_context(|| format!("restart before round {round}"))?;
        let api = signed_in(&edge).await?;
        if round > 1 {
            let snapshot = lock().clone();
            check_api(&api, &snapshot, Some(round - 1))
                .await
                .with_context(|| format!("after the kill of round {}", round - 1))?;
        }
        let kill_point = if rng.random_bool(0.5) {
            KillPoint::AfterAcks(rng.random_range(1..=MAX_ACKS_BEFORE_KILL))
        } else {
            KillPoint::AfterDelay(Duration::from_millis(rng.random_range(0..=MAX_KILL_DELAY_MS)))
        };
        let outcome = run_burst(&mut edge, &api, &ledger, round, kill_point, &mut rng)
            .await
            .with_context(|| format!("round {round}, log:\n{}", santerurale_e2e::tail(&edge.log(), 30)))?;
        drop(edge);
        let stats = check_database(&dir.db_path(), &lock())
            .with_context(|| format!("database after the kill of round {round}"))?;
        // In-flight writes that committed before the kill, their answer lost.
        let committed_unanswered = (stats.outbox - outbox_before).saturating_sub(outcome.acked);
        outbox_before = stats.outbox;
        println!(
            "round {round:2}: killed {kill_point:>14}: {:3} acked, {} in flight ({committed_unanswered} of them committed); \
             outbox {:4} rows, {:3} patients ({} compacted), {:4} encounters ({} ms)",
            outcome.acked,
            outcome.in_flight,
            stats.outbox,
            stats.documents,
            stats.compacted,
            stats.encounters,
            round_started.elapsed().as_millis()
        );
    }

    // Everything ever acknowledged, through the API of a fresh start.
    let mut edge = dir.start().await.context("final restart")?;
    let api = signed_in(&edge).await?;
    let ledger = lock().clone();
    let patients_read = check_api(&api, &ledger, None).await.context("final read-back")?;
    edge.kill()?;
    drop(edge);
    let stats = check_database(&dir.db_path(), &ledger).context("final database check")?;

    // The projection is a pure function of the documents.
    let db = dir.db_path();
    let projection = |path: &Path| -> anyhow::Result<Vec<Vec<String>>> {
        let conn = open_read_only(path)?;
        Ok(vec![
            dump_table(&conn, "patients", "id", &["row_id"])?,
            dump_table(&conn, "encounters", "id", &[])?,
            dump_rows(
                &conn,
                "SELECT p.id, s.names, s.phones, s.ids FROM patient_search s JOIN patients p ON p.row_id = s.rowid ORDER BY p.id",
            )?,
        ])
    };
    let before = projection(&db)?;
    let said = dir.cli(&["reindex"], "").await?;
    ensure!(said.contains(&format!("reindexed {} patients", stats.documents)), "edge reindex said: {said}");
    let after = projection(&db)?;
    for (table, (b, a)) in ["patients", "encounters", "patient_search"].iter().zip(before.iter().zip(&after)) {
        ensure!(
            b == a,
            "edge reindex changed {table}: {} rows before, {} after; first difference: {:?}",
            b.len(),
            a.len(),
            b.iter().zip(a).find(|(x, y)| x != y)
        );
    }
    check_integrity(&open_read_only(&db)?)?;

    // A backup of the recovered database is sound and holds the same rows.
    let backup = dir.root().join("backup.db");
    dir.cli(&["backup", &backup.to_string_lossy()], "").await?;
    check_integrity(&open_read_only(&backup)?)?;
    ensure!(projection(&backup)? == after, "the backup's projection differs from the database's");

    println!(
        "crash test passed: {rounds} rounds in {:.1} s; {} writes acknowledged ({} patients, {} encounters), {} in flight at the kills \
         ({} of them committed); outbox {} rows, contiguous; {} documents compacted; {patients_read} patients read back; \
         reindex and backup identical",
        started.elapsed().as_secs_f64(),
        ledger.acked_writes,
        ledger.patients.len(),
        ledger.encounters.len(),
        ledger.in_flight_writes,
        stats.outbox - ledger.acked_writes,
        stats.outbox,
        stats.compacted,
    );
    Ok(())
}
