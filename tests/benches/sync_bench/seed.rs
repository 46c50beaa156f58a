//! Writing synthetic patients straight into an edge's SQLite file, through
//! the edge's own [`Store`] (so documents, outbox and projection are exactly
//! what the API would have written), while no edge process runs on it.
//!
//! Going through the HTTP API would cost a request per write and dominate
//! the bench; the Store path writes a thousand patients per transaction.
//! Everything written is also kept in memory ([`SeededPatient`]), because
//! the CouchDB-style reference ([`crate::couch`]) is built from the same
//! records.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use edge::store::{Store, StoreOptions};
use santerurale_fixtures::Generator;
use santerurale_shared::{EncounterFields, EncounterId, PatientFields, PatientId};
use time::OffsetDateTime;

/// Patients written per SQLite transaction.
const PATIENTS_PER_TX: usize = 1_000;

/// One encounter as written.
#[derive(Debug, Clone)]
pub struct SeededEncounter {
    pub id: EncounterId,
    pub fields: EncounterFields,
    pub recorded_at: OffsetDateTime,
}

/// One patient as written, with every encounter written for it so far.
#[derive(Debug, Clone)]
pub struct SeededPatient {
    pub id: PatientId,
    pub fields: PatientFields,
    pub created_at: OffsetDateTime,
    pub encounters: Vec<SeededEncounter>,
}

/// The clinician name the seeded encounters carry.
pub const CLINICIAN: &str = "bench";

/// Registers `n` patients with `encounters_each` encounters each in the
/// edge database under `data_dir`; returns them and the time spent writing.
pub fn patients(
    data_dir: &Path,
    generator: &mut Generator,
    n: usize,
    encounters_each: usize,
) -> Result<(Vec<SeededPatient>, Duration)> {
    let store = Store::open(data_dir, StoreOptions::default()).context("opening the edge store to seed it")?;
    let mut out = Vec::with_capacity(n);
    let mut writing = Duration::ZERO;
    while out.len() < n {
        let size = PATIENTS_PER_TX.min(n - out.len());
        let batch: Vec<(PatientFields, Vec<EncounterFields>)> = (0..size)
            .map(|_| {
                let p = generator.patient();
                let e = (0..encounters_each).map(|_| generator.encounter(&p)).collect();
                (p, e)
            })
            .collect();
        let started = Instant::now();
        let now = OffsetDateTime::now_utc();
        let written = store.blocking_write(move |w| {
            let mut written = Vec::with_capacity(batch.len());
            for (fields, encounters) in batch {
                let patient = w.register_fields(PatientId::new(), &fields, now)?;
                let mut seeded = Vec::with_capacity(encounters.len());
                for e in encounters {
                    let id = w.add_encounter_fields(patient.id, &e, CLINICIAN, now)?;
                    seeded.push(SeededEncounter { id, fields: e, recorded_at: now });
                }
                written.push(SeededPatient { id: patient.id, fields, created_at: now, encounters: seeded });
            }
            Ok(written)
        })?;
        writing += started.elapsed();
        out.extend(written);
    }
    Ok((out, writing))
}

/// Adds one new encounter to each patient of `patients` picked by index
/// (`picks`), in one transaction per thousand; returns the time spent.
pub fn encounters(
    data_dir: &Path,
    generator: &mut Generator,
    patients: &mut [SeededPatient],
    picks: &[usize],
) -> Result<Duration> {
    let store = Store::open(data_dir, StoreOptions::default()).context("opening the edge store to add encounters")?;
    let mut writing = Duration::ZERO;
    for chunk in picks.chunks(PATIENTS_PER_TX) {
        let drafts: Vec<(usize, PatientId, EncounterFields)> =
            chunk.iter().map(|&i| (i, patients[i].id, generator.encounter(&patients[i].fields))).collect();
        let started = Instant::now();
        let now = OffsetDateTime::now_utc();
        let written = store.blocking_write(move |w| {
            let mut written = Vec::with_capacity(drafts.len());
            for (i, patient, fields) in drafts {
                let id = w.add_encounter_fields(patient, &fields, CLINICIAN, now)?;
                written.push((i, SeededEncounter { id, fields, recorded_at: now }));
            }
            Ok(written)
        })?;
        writing += started.elapsed();
        for (i, encounter) in written {
            patients[i].encounters.push(encounter);
        }
    }
    Ok(writing)
}

/// The highest outbox `seq` of the edge database at `db` (0 when empty).
pub fn outbox_max_seq(db: &Path) -> Result<i64> {
    let conn = santerurale_e2e::open_read_only(db)?;
    Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |r| r.get(0))?)
}

/// Outbox entries after `seq`: their number and the sum of their change
/// bytes (the Automerge changes as stored and sent, `Change::bytes()`).
pub fn outbox_after(db: &Path, seq: i64) -> Result<(u64, u64)> {
    let conn = santerurale_e2e::open_read_only(db)?;
    let sql = "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM outbox WHERE seq > ?1";
    let (count, bytes): (i64, i64) = conn.query_row(sql, [seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((u64::try_from(count)?, u64::try_from(bytes)?))
}

/// Patients in the edge's projection (what its users can find).
pub fn patient_count(db: &Path) -> Result<u64> {
    let conn = santerurale_e2e::open_read_only(db)?;
    let count: i64 = conn.query_row("SELECT count(*) FROM patients", [], |r| r.get(0))?;
    Ok(u64::try_from(count)?)
}
