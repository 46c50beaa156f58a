//! Applying stored changes to per-patient Automerge documents and the
//! patients/encounters projection, in the push's own transaction.
//!
//! For each patient a batch touches (new changes only: a duplicate is
//! already in its document):
//! 1. the saved document is loaded from `documents` (or started empty);
//! 2. the batch's changes are applied at once (`apply_changes`, one call per
//!    document, which is several times faster than one call per change);
//! 3. the document is saved back and read (see [`super::document`]) into
//!    `patients` (the row rewritten) and `encounters` (upserted: a row whose
//!    values did not change is not written again);
//! 4. the fields the new changes wrote, and those with an open conflict, are
//!    checked for concurrent writes ([`super::conflicts::detect_in`]), which
//!    open or close rows of `conflicts`. A field no change wrote cannot have
//!    gained or lost a value; a new document, or one replayed from its log,
//!    is checked whole.
//!
//! Each step takes one statement per table for the whole batch, and the
//! CPU work (steps 1 to 4 in memory) runs off the async runtime. Where the
//! time goes is logged at debug level (`sync apply timings`) and measured by
//! `hub/benches/hub_ingest.rs`: reading documents key by key (`get`) was
//! the costliest part of an apply, hence the single-pass reads.
//!
//! A change whose dependencies the hub has not received (an edge's older
//! change still on its way through another site) stays in the `changes`
//! log, which is the source of truth: Automerge queues it, and `save()`
//! leaves queued changes out. The document is then marked `incomplete`, and
//! the next apply for that patient replays the patient's whole log first,
//! so the queued change lands once its dependency arrives.
//!
//! The same steps apply a change a hub admin wrote ([`apply_authored`], a
//! conflict resolution, see [`crate::conflicts`]). Such a change has no
//! device: the patient keeps its site and `last_device_id` (the last edge
//! that wrote it), and an encounter keeps the device whose actor created it
//! (the hub only ever writes fields of existing encounters).
//!
//! Every apply runs under the log's advisory lock ([`lock_log`], taken by
//! the push or resolution transaction), so no two applies run at once and a
//! document is never written from two stale copies.
//! A change Automerge refuses to apply fails the whole push as an internal
//! (retryable) error, so nothing is stored half-applied; such a change was
//! already checked to decode, so this means a bug, logged with the patient.

use std::collections::BTreeMap;

use automerge::{AutoCommit, Change};
use santerurale_shared::text::{fold, words};
use santerurale_shared::{DeviceId, SiteId};
use time::{Date, OffsetDateTime};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::SyncError;
use super::conflicts::{self, Findings, Scope};
use super::document::{self, PatientRecord, ReadError};

/// Key of the advisory lock that orders `hub_seq` ("synclog!" in ASCII).
/// Every writer of the log takes it through [`lock_log`].
const LOG_LOCK_KEY: i64 = 0x7379_6e63_6c6f_6721;

/// Takes the log's advisory lock for the rest of `tx`: `hub_seq` values
/// then become visible in order (pull relies on it, see [`super::pull`]),
/// and applies to a patient's document never interleave.
pub async fn lock_log(tx: &Transaction<'_>) -> Result<(), SyncError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK_KEY]).await?;
    Ok(())
}

/// Who wrote the changes being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provenance {
    /// Pushed by this device of this site.
    Device { site: SiteId, device: DeviceId },
    /// Written on the hub by an admin.
    Hub,
}

impl Provenance {
    fn site(self) -> Option<uuid::Uuid> {
        match self {
            Self::Device { site, .. } => Some(*site.as_uuid()),
            Self::Hub => None,
        }
    }

    fn device(self) -> Option<uuid::Uuid> {
        match self {
            Self::Device { device, .. } => Some(*device.as_uuid()),
            Self::Hub => None,
        }
    }
}

/// One patient's document after applying, ready to write.
struct Applied {
    patient: Uuid,
    doc: Vec<u8>,
    incomplete: bool,
    record: Option<PatientRecord>,
    conflicts: Findings,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot apply the changes of patient {patient}")]
pub struct ApplyError {
    patient: Uuid,
    #[source]
    source: Box<automerge::AutomergeError>,
}

/// Applies `new` (patient id and change bytes, as stored) and refreshes the
/// projection and the conflicts; `device` is the device that pushed them.
/// Returns how many conflicts were newly opened.
pub async fn apply(
    tx: &Transaction<'_>,
    site: SiteId,
    device: DeviceId,
    new: Vec<(Uuid, Vec<u8>)>,
) -> Result<u64, SyncError> {
    apply_from(tx, Provenance::Device { site, device }, new).await
}

/// Applies changes written on the hub by an admin (already stored in the
/// log), like [`apply`]; the caller holds [`lock_log`].
pub async fn apply_authored(tx: &Transaction<'_>, new: Vec<(Uuid, Vec<u8>)>) -> Result<u64, SyncError> {
    apply_from(tx, Provenance::Hub, new).await
}

async fn apply_from(tx: &Transaction<'_>, from: Provenance, new: Vec<(Uuid, Vec<u8>)>) -> Result<u64, SyncError> {
    if new.is_empty() {
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let count = new.len();
    let mut batches: BTreeMap<Uuid, Vec<Vec<u8>>> = BTreeMap::new();
    for (patient, bytes) in new {
        batches.entry(patient).or_default().push(bytes);
    }
    let ids: Vec<Uuid> = batches.keys().copied().collect();
    let mut saved: BTreeMap<Uuid, Vec<u8>> = BTreeMap::new();
    let mut incomplete = Vec::new();
    for row in tx
        .query("SELECT patient_id, doc, incomplete FROM documents WHERE patient_id = ANY($1) FOR UPDATE", &[&ids])
        .await?
    {
        let id: Uuid = row.try_get(0)?;
        saved.insert(id, row.try_get(1)?);
        if row.try_get(2)? {
            incomplete.push(id);
        }
    }
    if !incomplete.is_empty() {
        // Replay the whole log of these patients, in log order, before the
        // new changes (already in the log too: applying twice is a no-op).
        let rows = tx
            .query("SELECT patient_id, bytes FROM changes WHERE patient_id = ANY($1) ORDER BY hub_seq", &[&incomplete])
            .await?;
        for row in rows {
            batches.entry(row.try_get(0)?).or_default().push(row.try_get(1)?);
        }
    }

    let mut open = conflicts::open_fields(tx, &ids).await?;
    let loaded = started.elapsed();

    let jobs: Vec<Job> = batches
        .into_iter()
        .map(|(patient, changes)| Job {
            patient,
            saved: saved.remove(&patient),
            replayed: incomplete.contains(&patient),
            changes,
            was_open: open.remove(&patient).unwrap_or_default(),
        })
        .collect();
    let mut applied = tokio::task::spawn_blocking(move || merge_all(jobs))
        .await
        .map_err(|e| SyncError::internal(&e))?
        .map_err(|e| SyncError::internal(&e))?;
    let merged = started.elapsed();

    write_documents(tx, &applied).await?;
    let documents = started.elapsed();
    let records: Vec<&PatientRecord> = applied.iter().filter_map(|a| a.record.as_ref()).collect();
    write_patients(tx, from, &records).await?;
    let patients = started.elapsed();
    write_encounters(tx, from, &records).await?;
    let encounters = started.elapsed();
    let findings: Vec<(Uuid, Findings)> =
        applied.iter_mut().map(|a| (a.patient, std::mem::take(&mut a.conflicts))).collect();
    let opened = conflicts::record(tx, &findings).await?;
    // Cumulative milliseconds since the start of the apply, per step: where
    // ingest time goes (see `hub/benches/hub_ingest.rs`).
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    tracing::debug!(
        changes = count,
        patients = applied.len(),
        load_ms = ms(loaded),
        merge_ms = ms(merged),
        documents_ms = ms(documents),
        patients_ms = ms(patients),
        encounters_ms = ms(encounters),
        total_ms = ms(started.elapsed()),
        "sync apply timings"
    );
    Ok(opened)
}

/// One patient's part of an apply, for [`apply_one`].
struct Job {
    patient: Uuid,
    saved: Option<Vec<u8>>,
    replayed: bool,
    changes: Vec<Vec<u8>>,
    was_open: std::collections::BTreeSet<String>,
}

/// Fewest patients worth a thread of their own.
const PATIENTS_PER_THREAD: usize = 64;

/// Runs the jobs, in order, on up to one thread per core: documents are
/// independent, and this is the CPU-bound part of a push (the database
/// waits on it), so a large batch uses every core.
fn merge_all(jobs: Vec<Job>) -> Result<Vec<Applied>, ApplyError> {
    let run = |part: Vec<Job>| -> Result<Vec<Applied>, ApplyError> {
        part.into_iter().map(|j| apply_one(j.patient, j.saved, j.replayed, j.changes, &j.was_open)).collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let threads = cores.min(jobs.len() / PATIENTS_PER_THREAD).max(1);
    if threads == 1 {
        return run(jobs);
    }
    let per = jobs.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut rest = jobs;
    while rest.len() > per {
        let tail = rest.split_off(per);
        parts.push(rest);
        rest = tail;
    }
    parts.push(rest);
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts.into_iter().map(|part| scope.spawn(move || run(part))).collect();
        let mut applied = Vec::new();
        for handle in handles {
            // A panic is passed on: the caller's task turns it into an error.
            applied.extend(handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?);
        }
        Ok(applied)
    })
}

/// Applies one patient's `changes` to its `saved` document; `replayed`
/// when `changes` hold the patient's whole log (see the module docs).
fn apply_one(
    patient: Uuid,
    saved: Option<Vec<u8>>,
    replayed: bool,
    changes: Vec<Vec<u8>>,
    was_open: &std::collections::BTreeSet<String>,
) -> Result<Applied, ApplyError> {
    let fail = |source| ApplyError { patient, source: Box::new(source) };
    let saved_doc = saved.is_some();
    let mut doc = match saved {
        Some(bytes) => AutoCommit::load(&bytes).map_err(fail)?,
        None => AutoCommit::new(),
    };
    // Every change was decoded when the push was checked; one that no
    // longer decodes is skipped rather than blocking the patient.
    let changes: Vec<Change> = changes.into_iter().filter_map(|b| Change::from_bytes(b).ok()).collect();
    // Only the fields these changes write can have gained or lost a value;
    // a document new here or rebuilt from its log is checked whole.
    let scope = if saved_doc && !replayed { Scope::of(&changes) } else { Scope::everything() };
    doc.apply_changes(changes).map_err(fail)?;
    let incomplete = !doc.get_missing_deps(&[]).is_empty();
    let record = match document::read(&doc) {
        Ok(record) if *record.id.as_uuid() == patient => Some(record),
        Ok(record) => {
            tracing::warn!(%patient, named = %record.id, "sync: document names another patient; not projected");
            None
        }
        Err(ReadError::Incomplete(_)) => None,
        Err(e) => {
            tracing::warn!(%patient, error = %crate::error_chain(&e), "sync: document not projected");
            None
        }
    };
    let conflicts = conflicts::detect_in(&doc, was_open, &scope);
    Ok(Applied { patient, doc: doc.save(), incomplete, record, conflicts })
}

// The writes below take one statement per table for the whole batch
// (arrays through `unnest`): a batch of thousands of patients would
// otherwise cost thousands of round trips inside the push transaction.

async fn write_documents(tx: &Transaction<'_>, applied: &[Applied]) -> Result<(), SyncError> {
    let ids: Vec<Uuid> = applied.iter().map(|a| a.patient).collect();
    let docs: Vec<&[u8]> = applied.iter().map(|a| a.doc.as_slice()).collect();
    let incomplete: Vec<bool> = applied.iter().map(|a| a.incomplete).collect();
    tx.execute(
        "INSERT INTO documents (patient_id, doc, incomplete)
         SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bool[])
         ON CONFLICT (patient_id) DO UPDATE
         SET doc = EXCLUDED.doc, incomplete = EXCLUDED.incomplete, updated_at = now()",
        &[&ids, &docs, &incomplete],
    )
    .await?;
    Ok(())
}

/// Upserts the patients; `site_id` is kept from the first write, which
/// takes the site of the patient's first pushed change in the log. A
/// hub-authored change keeps `last_device_id` (on a first write, which a
/// resolution never is, the last device in the log).
async fn write_patients(tx: &Transaction<'_>, from: Provenance, records: &[&PatientRecord]) -> Result<(), SyncError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut c = PatientColumns::default();
    for r in records {
        let f = &r.fields;
        let mut search = words(&format!("{} {}", f.given_name, f.family_name));
        if let Some(national) = &f.national_id {
            search.push(fold(national));
        }
        c.id.push(*r.id.as_uuid());
        c.given_name.push(f.given_name.as_str());
        c.family_name.push(f.family_name.as_str());
        c.sex.push(f.sex.as_str());
        c.birth_date.push(f.birth_date);
        c.birth_date_estimated.push(f.birth_date_estimated);
        c.phone.push(f.phone.as_ref().map(|p| p.as_str()));
        c.village.push(f.village.as_str());
        c.national_id.push(f.national_id.as_deref());
        c.whatsapp_consent.push(f.whatsapp_consent);
        c.whatsapp_consent_date.push(f.whatsapp_consent_date);
        c.created_at.push(r.created_at);
        c.updated_at.push(r.updated_at);
        c.search.push(search.join(" "));
        c.phone_digits.push(f.phone.as_ref().map(|p| p.digits()));
    }
    tx.execute(
        "INSERT INTO patients (id, site_id, given_name, family_name, sex, birth_date, birth_date_estimated,
                               phone, village, national_id, whatsapp_consent, whatsapp_consent_date,
                               created_at, updated_at, last_device_id, search, phone_digits)
         SELECT t.id,
                coalesce((SELECT c.site_id FROM changes c WHERE c.patient_id = t.id AND c.site_id IS NOT NULL
                          ORDER BY c.hub_seq LIMIT 1), $1::uuid),
                t.given_name, t.family_name, t.sex, t.birth_date, t.birth_date_estimated, t.phone, t.village,
                t.national_id, t.whatsapp_consent, t.whatsapp_consent_date, t.created_at, t.updated_at,
                coalesce($2::uuid, (SELECT c.device_id FROM changes c WHERE c.patient_id = t.id
                                    AND c.device_id IS NOT NULL ORDER BY c.hub_seq DESC LIMIT 1)),
                t.search, t.phone_digits
         FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[], $7::date[], $8::bool[], $9::text[],
                     $10::text[], $11::text[], $12::bool[], $13::date[], $14::timestamptz[], $15::timestamptz[],
                     $16::text[], $17::text[])
              AS t(id, given_name, family_name, sex, birth_date, birth_date_estimated, phone, village,
                   national_id, whatsapp_consent, whatsapp_consent_date, created_at, updated_at, search,
                   phone_digits)
         ON CONFLICT (id) DO UPDATE SET
             given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, sex = EXCLUDED.sex,
             birth_date = EXCLUDED.birth_date, birth_date_estimated = EXCLUDED.birth_date_estimated,
             phone = EXCLUDED.phone, village = EXCLUDED.village, national_id = EXCLUDED.national_id,
             whatsapp_consent = EXCLUDED.whatsapp_consent, whatsapp_consent_date = EXCLUDED.whatsapp_consent_date,
             created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
             last_device_id = coalesce($2::uuid, patients.last_device_id), search = EXCLUDED.search,
             phone_digits = EXCLUDED.phone_digits",
        &[
            &from.site(),
            &from.device(),
            &c.id,
            &c.given_name,
            &c.family_name,
            &c.sex,
            &c.birth_date,
            &c.birth_date_estimated,
            &c.phone,
            &c.village,
            &c.national_id,
            &c.whatsapp_consent,
            &c.whatsapp_consent_date,
            &c.created_at,
            &c.updated_at,
            &c.search,
            &c.phone_digits,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Default)]
struct PatientColumns<'a> {
    id: Vec<Uuid>,
    given_name: Vec<&'a str>,
    family_name: Vec<&'a str>,
    sex: Vec<&'static str>,
    birth_date: Vec<Date>,
    birth_date_estimated: Vec<bool>,
    phone: Vec<Option<&'a str>>,
    village: Vec<&'a str>,
    national_id: Vec<Option<&'a str>>,
    whatsapp_consent: Vec<bool>,
    whatsapp_consent_date: Vec<Option<Date>>,
    created_at: Vec<OffsetDateTime>,
    updated_at: Vec<OffsetDateTime>,
    search: Vec<String>,
    phone_digits: Vec<Option<&'a str>>,
}

/// Upserts the encounters of these patients. Encounters are only ever
/// added (never removed from a document), so an upsert keeps the table equal
/// to the documents; a row whose values did not change is left alone (no
/// new row version, no index or WAL write), which is most of them when a
/// patient with a long history gets one new consultation. An encounter's
/// site and device are set when it is first written: its device is the
/// actor that created it (the patient's last device when that actor is not
/// a device), its site that device's (the pushing site when the hub does not
/// know the device; for a hub-authored change, the patient's).
async fn write_encounters(tx: &Transaction<'_>, from: Provenance, records: &[&PatientRecord]) -> Result<(), SyncError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut c = EncounterColumns::default();
    for r in records {
        for e in &r.encounters {
            let enc = &e.encounter;
            c.id.push(*enc.id.as_uuid());
            c.patient.push(*r.id.as_uuid());
            c.device.push(e.device.map(|d| *d.as_uuid()).or(from.device()));
            c.date.push(enc.date);
            c.kind.push(enc.kind.as_str());
            c.complaint.push(enc.complaint.as_str());
            c.diagnosis.push(enc.diagnosis.as_str());
            c.icd10.push(enc.icd10.as_deref());
            c.weight_kg.push(enc.weight_kg);
            c.temperature_c.push(enc.temperature_c);
            c.bp_systolic.push(enc.bp_systolic.map(i32::from));
            c.bp_diastolic.push(enc.bp_diastolic.map(i32::from));
            c.notes.push(enc.notes.as_str());
            c.clinician.push(enc.clinician.as_str());
            c.age_group.push(enc.age_group.as_str());
            c.recorded_at.push(enc.recorded_at);
        }
    }
    if c.id.is_empty() {
        return Ok(());
    }
    // An encounter id found in two documents (never made by an edge) keeps
    // its first copy rather than failing the push forever: the update only
    // touches a row of the same patient.
    tx.execute(
        "INSERT INTO encounters (id, patient_id, site_id, device_id, date, kind, complaint, diagnosis, icd10,
                                 weight_kg, temperature_c, bp_systolic, bp_diastolic, notes, clinician,
                                 age_group, recorded_at)
         SELECT t.id, t.patient_id,
                coalesce((SELECT d.site_id FROM devices d WHERE d.id = coalesce(t.device_id, p.last_device_id)),
                         $1::uuid, p.site_id),
                coalesce(t.device_id, p.last_device_id), t.date, t.kind, t.complaint, t.diagnosis, t.icd10,
                t.weight_kg, t.temperature_c, t.bp_systolic, t.bp_diastolic, t.notes, t.clinician, t.age_group,
                t.recorded_at
         FROM unnest($2::uuid[], $3::uuid[], $4::uuid[], $5::date[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::float8[], $11::float8[], $12::int4[], $13::int4[], $14::text[], $15::text[],
                     $16::text[], $17::timestamptz[])
              AS t(id, patient_id, device_id, date, kind, complaint, diagnosis, icd10, weight_kg, temperature_c,
                   bp_systolic, bp_diastolic, notes, clinician, age_group, recorded_at),
              patients p
         WHERE p.id = t.patient_id
         ON CONFLICT (id) DO UPDATE SET
             date = EXCLUDED.date, kind = EXCLUDED.kind, complaint = EXCLUDED.complaint,
             diagnosis = EXCLUDED.diagnosis, icd10 = EXCLUDED.icd10, weight_kg = EXCLUDED.weight_kg,
             temperature_c = EXCLUDED.temperature_c, bp_systolic = EXCLUDED.bp_systolic,
             bp_diastolic = EXCLUDED.bp_diastolic, notes = EXCLUDED.notes, clinician = EXCLUDED.clinician,
             age_group = EXCLUDED.age_group, recorded_at = EXCLUDED.recorded_at
         WHERE encounters.patient_id = EXCLUDED.patient_id
           AND (encounters.date, encounters.kind, encounters.complaint, encounters.diagnosis, encounters.icd10,
                encounters.weight_kg, encounters.temperature_c, encounters.bp_systolic, encounters.bp_diastolic,
                encounters.notes, encounters.clinician, encounters.age_group, encounters.recorded_at)
               IS DISTINCT FROM
               (EXCLUDED.date, EXCLUDED.kind, EXCLUDED.complaint, EXCLUDED.diagnosis, EXCLUDED.icd10,
                EXCLUDED.weight_kg, EXCLUDED.temperature_c, EXCLUDED.bp_systolic, EXCLUDED.bp_diastolic,
                EXCLUDED.notes, EXCLUDED.clinician, EXCLUDED.age_group, EXCLUDED.recorded_at)",
        &[
            &from.site(),
            &c.id,
            &c.patient,
            &c.device,
            &c.date,
            &c.kind,
            &c.complaint,
            &c.diagnosis,
            &c.icd10,
            &c.weight_kg,
            &c.temperature_c,
            &c.bp_systolic,
            &c.bp_diastolic,
            &c.notes,
            &c.clinician,
            &c.age_group,
            &c.recorded_at,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Default)]
struct EncounterColumns<'a> {
    id: Vec<Uuid>,
    patient: Vec<Uuid>,
    /// `None`: the patient's last device (see [`write_encounters`]).
    device: Vec<Option<Uuid>>,
    date: Vec<Date>,
    kind: Vec<&'static str>,
    complaint: Vec<&'a str>,
    diagnosis: Vec<&'a str>,
    icd10: Vec<Option<&'a str>>,
    weight_kg: Vec<Option<f64>>,
    temperature_c: Vec<Option<f64>>,
    bp_systolic: Vec<Option<i32>>,
    bp_diastolic: Vec<Option<i32>>,
    notes: Vec<&'a str>,
    clinician: Vec<&'a str>,
    age_group: Vec<&'static str>,
    recorded_at: Vec<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable as _;
    use automerge::{ActorId, ROOT, ReadDoc as _};

    use super::*;

    /// A batch large enough for several threads comes back whole and in
    /// order, each document holding its own change.
    #[test]
    fn a_large_batch_is_merged_in_order_on_several_threads() {
        let jobs: Vec<Job> = (0..PATIENTS_PER_THREAD * 3 + 5)
            .map(|i| {
                let patient = Uuid::now_v7();
                let mut doc = AutoCommit::new().with_actor(ActorId::from(patient.as_bytes().as_slice()));
                doc.put(ROOT, "village", format!("village {i}")).expect("put");
                doc.commit();
                let change = doc.get_last_local_change().expect("change").raw_bytes().to_vec();
                Job { patient, saved: None, replayed: false, changes: vec![change], was_open: Default::default() }
            })
            .collect();
        let patients: Vec<Uuid> = jobs.iter().map(|j| j.patient).collect();
        let applied = merge_all(jobs).expect("merged");
        assert_eq!(applied.iter().map(|a| a.patient).collect::<Vec<_>>(), patients);
        for (i, a) in applied.iter().enumerate() {
            let doc = AutoCommit::load(&a.doc).expect("load");
            let village = doc.get(ROOT, "village").expect("get").map(|(v, _)| v.to_string());
            assert_eq!(village.as_deref(), Some(format!("\"village {i}\"").as_str()));
            assert!(!a.incomplete);
        }
    }
}
