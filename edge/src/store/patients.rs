//! Patient writes (document + outbox + projection in one transaction), reads
//! from the projection, search, duplicate detection and reindexing.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use santerurale_shared::patient::format_date;
use santerurale_shared::text::{name_key, words};
use santerurale_shared::{
    AgeGroup, Encounter, EncounterDraft, EncounterId, EncounterKind, Patient, PatientDraft, PatientFields, PatientId,
    PatientPatch, Phone, Sex, SiteId,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::document::{PatientDoc, PatientView};
use super::{COMPACT_AFTER_CHANGES, Store, StoreError, format_timestamp, get_meta, parse_timestamp};

/// Most results one search returns.
pub const SEARCH_LIMIT: usize = 50;

/// An existing patient that looks like the one being registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    pub id: PatientId,
    pub given_name: String,
    pub family_name: String,
    pub birth_date: String,
    pub village: String,
    /// `"phone"` or `"name_and_birth_year"`.
    pub reason: &'static str,
}

/// The write side of one transaction. Each method updates the patient's
/// document, appends the change to the outbox and refreshes the projection;
/// nothing is visible until the closure given to [`Store::write`] returns `Ok`.
#[derive(Debug)]
pub struct WriteTx<'c> {
    tx: Transaction<'c>,
    store: Store,
    site_id: Option<Option<SiteId>>,
}

impl<'c> WriteTx<'c> {
    pub(super) fn new(tx: Transaction<'c>, store: &Store) -> Self {
        Self { tx, store: store.clone(), site_id: None }
    }

    pub(super) fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }

    /// The raw transaction, for account and metadata writes.
    #[must_use]
    pub fn conn(&self) -> &Connection {
        &self.tx
    }

    fn today() -> time::Date {
        // Clinic dates are UTC: Mali keeps GMT all year.
        OffsetDateTime::now_utc().date()
    }

    fn local_site(&mut self) -> Result<Option<SiteId>, StoreError> {
        if let Some(site) = self.site_id {
            return Ok(site);
        }
        let site = get_meta(&self.tx, "site_id")?.and_then(|s| s.parse().ok());
        self.site_id = Some(site);
        Ok(site)
    }

    /// Validates and registers a new patient. Unless `allow_duplicate`, refuses
    /// with [`StoreError::PossibleDuplicate`] when a similar patient exists.
    pub fn register(&mut self, draft: &PatientDraft, allow_duplicate: bool) -> Result<Patient, StoreError> {
        let fields =
            draft.validate(Self::today(), &self.store.options().default_country).map_err(StoreError::Invalid)?;
        if !allow_duplicate {
            let dups = find_duplicates(&self.tx, &fields, None)?;
            if !dups.is_empty() {
                return Err(StoreError::PossibleDuplicate(dups));
            }
        }
        self.register_fields(PatientId::new(), &fields, OffsetDateTime::now_utc())
    }

    /// Registers already-validated fields under `id` (imports, benchmarks).
    pub fn register_fields(
        &mut self,
        id: PatientId,
        fields: &PatientFields,
        now: OffsetDateTime,
    ) -> Result<Patient, StoreError> {
        let site = self.local_site()?;
        let mut doc = PatientDoc::create(self.store.device_id(), id, fields, site, now)?;
        self.tx.execute("INSERT INTO documents (patient_id) VALUES (?1)", [id.to_string()])?;
        self.persist(id, &mut doc, now)?;
        self.read_patient(id)
    }

    /// Applies a partial update; the result is validated as a whole.
    /// Returns the patient as it now is (unchanged if the patch changed nothing).
    pub fn update(&mut self, id: PatientId, patch: &PatientPatch) -> Result<Patient, StoreError> {
        let mut doc = self.load(id)?;
        let current = doc.read()?;
        let fields = current
            .fields
            .patched(patch, Self::today(), &self.store.options().default_country)
            .map_err(StoreError::Invalid)?;
        let now = OffsetDateTime::now_utc();
        if doc.set_demographics(&fields, now)? {
            self.persist(id, &mut doc, now)?;
        }
        self.read_patient(id)
    }

    /// Validates and records an encounter by `clinician` (a username).
    pub fn add_encounter(
        &mut self,
        id: PatientId,
        draft: &EncounterDraft,
        clinician: &str,
    ) -> Result<Encounter, StoreError> {
        let mut doc = self.load(id)?;
        let birth_date = doc.read()?.fields.birth_date;
        let fields = draft.validate(Self::today(), birth_date).map_err(StoreError::Invalid)?;
        let encounter_id = EncounterId::new();
        let now = OffsetDateTime::now_utc();
        doc.add_encounter(encounter_id, &fields, clinician, now)?;
        self.persist(id, &mut doc, now)?;
        let view = doc.read()?;
        view.encounters.into_iter().find(|e| e.id == encounter_id).ok_or(StoreError::NotFound)
    }

    /// Records already-validated encounter fields (imports, benchmarks).
    pub fn add_encounter_fields(
        &mut self,
        id: PatientId,
        fields: &santerurale_shared::EncounterFields,
        clinician: &str,
        now: OffsetDateTime,
    ) -> Result<EncounterId, StoreError> {
        let mut doc = self.load(id)?;
        let encounter_id = EncounterId::new();
        doc.add_encounter(encounter_id, fields, clinician, now)?;
        self.persist(id, &mut doc, now)?;
        Ok(encounter_id)
    }

    /// Loads a patient's document from its snapshot and incremental changes.
    pub fn load(&self, id: PatientId) -> Result<PatientDoc, StoreError> {
        load_doc(&self.tx, self.store.device_id(), id)
    }

    fn read_patient(&self, id: PatientId) -> Result<Patient, StoreError> {
        get_patient(&self.tx, id, false)?.ok_or(StoreError::NotFound)
    }

    /// Commits the document's pending operations as one change, stores it,
    /// queues it in the outbox and refreshes the projection.
    fn persist(&mut self, id: PatientId, doc: &mut PatientDoc, now: OffsetDateTime) -> Result<(), StoreError> {
        let Some(mut change) = doc.commit(now) else { return Ok(()) };
        let pid = id.to_string();
        let bytes = change.bytes().into_owned();
        store_change(&self.tx, &pid, &bytes, doc)?;
        #[cfg(test)]
        self.store.check_fail_point(super::FailPoint::AfterDocument)?;

        // The outbox keeps the change uncompressed: `bytes()` deflates each
        // change over 256 B on its own, which leaves the batch's zstd frame
        // almost nothing to share between changes (375 B per encounter on
        // the wire against about 90 B raw; see the sync bench).
        self.tx.execute(
            "INSERT INTO outbox (patient_id, change_hash, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![pid, change.hash().to_string(), change.raw_bytes(), format_timestamp(now)],
        )?;
        #[cfg(test)]
        self.store.check_fail_point(super::FailPoint::AfterOutbox)?;

        let site = self.local_site()?;
        project(&self.tx, &doc.read()?, self.store.device_id(), site, &self.store.options().default_country)?;
        #[cfg(test)]
        self.store.check_fail_point(super::FailPoint::AfterProjection)?;
        Ok(())
    }
}

impl WriteTx<'_> {
    /// Applies changes pulled from the hub to one patient's document, in
    /// order, creating the document if the patient is new here. Stores the
    /// changes the document did not hold yet (see "Changes from the hub" in
    /// the module docs of [`super`]), adds nothing to the outbox, and
    /// refreshes the projection. Returns how many changes were new.
    pub fn apply_remote(&mut self, id: PatientId, changes: &[Vec<u8>]) -> Result<u64, StoreError> {
        let pid = id.to_string();
        self.tx.execute("INSERT INTO documents (patient_id) VALUES (?1) ON CONFLICT DO NOTHING", [&pid])?;
        let mut doc = self.load(id)?;
        let mut new = 0;
        for bytes in changes {
            if doc.apply_remote(bytes)? {
                store_change(&self.tx, &pid, bytes, &mut doc)?;
                new += 1;
            }
        }
        if new > 0 && doc.has_patient() {
            let view = doc.read()?;
            if view.id != id {
                return Err(StoreError::WrongPatient { expected: pid, found: view.id.to_string() });
            }
            let site = self.local_site()?;
            project(&self.tx, &view, self.store.device_id(), site, &self.store.options().default_country)?;
        }
        Ok(new)
    }
}

/// Appends one change (already in `doc`) to the patient's stored changes,
/// and compacts them into a snapshot once there are enough. Same transaction
/// as the caller's, so the snapshot replaces the changes atomically.
fn store_change(c: &Connection, pid: &str, bytes: &[u8], doc: &mut PatientDoc) -> Result<(), StoreError> {
    c.execute("INSERT INTO document_changes (patient_id, bytes) VALUES (?1, ?2)", params![pid, bytes])?;
    let count: i64 = c.query_row(
        "UPDATE documents SET change_count = change_count + 1 WHERE patient_id = ?1 RETURNING change_count",
        [pid],
        |r| r.get(0),
    )?;
    if count >= COMPACT_AFTER_CHANGES {
        c.execute(
            "UPDATE documents SET snapshot = ?2, change_count = 0 WHERE patient_id = ?1",
            params![pid, doc.save()],
        )?;
        c.execute("DELETE FROM document_changes WHERE patient_id = ?1", [pid])?;
    }
    Ok(())
}

fn load_doc(c: &Connection, actor: santerurale_shared::DeviceId, id: PatientId) -> Result<PatientDoc, StoreError> {
    let pid = id.to_string();
    let snapshot: Option<Option<Vec<u8>>> =
        c.query_row("SELECT snapshot FROM documents WHERE patient_id = ?1", [&pid], |r| r.get(0)).optional()?;
    let Some(snapshot) = snapshot else { return Err(StoreError::NotFound) };
    let mut stmt = c.prepare_cached("SELECT bytes FROM document_changes WHERE patient_id = ?1 ORDER BY id")?;
    let changes = stmt.query_map([&pid], |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
    PatientDoc::load(actor, snapshot.as_deref(), changes.iter().map(Vec::as_slice))
}

/// Replaces the projection rows of one patient with what its document says.
fn project(
    c: &Connection,
    v: &PatientView,
    me: santerurale_shared::DeviceId,
    my_site: Option<SiteId>,
    country: &str,
) -> Result<(), StoreError> {
    let f = &v.fields;
    let pid = v.id.to_string();
    // A patient registered here before enrollment belongs to this box's site.
    let site = v.site_id.or_else(|| if v.origin_device == Some(me) { my_site } else { None });
    let row_id: i64 = c.query_row(
        "INSERT INTO patients (id, given_name, family_name, sex, birth_date, birth_date_estimated, phone, village,
             national_id, whatsapp_consent, whatsapp_consent_date, site_id, created_at, updated_at, name_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (id) DO UPDATE SET given_name = excluded.given_name, family_name = excluded.family_name,
             sex = excluded.sex, birth_date = excluded.birth_date, birth_date_estimated = excluded.birth_date_estimated,
             phone = excluded.phone, village = excluded.village, national_id = excluded.national_id,
             whatsapp_consent = excluded.whatsapp_consent, whatsapp_consent_date = excluded.whatsapp_consent_date,
             site_id = excluded.site_id, created_at = excluded.created_at, updated_at = excluded.updated_at,
             name_key = excluded.name_key
         RETURNING row_id",
        params![
            pid,
            f.given_name,
            f.family_name,
            f.sex.as_str(),
            format_date(f.birth_date),
            f.birth_date_estimated,
            f.phone.as_ref().map(Phone::as_str),
            f.village,
            f.national_id,
            f.whatsapp_consent,
            f.whatsapp_consent_date.map(format_date),
            site.map(|s| s.to_string()),
            format_timestamp(v.created_at),
            format_timestamp(v.updated_at),
            name_key(&f.given_name, &f.family_name),
        ],
        |r| r.get(0),
    )?;
    c.execute("DELETE FROM patient_search WHERE rowid = ?1", [row_id])?;
    let phones = f
        .phone
        .as_ref()
        .map(|p| match p.national_digits(country) {
            Some(national) => format!("{} {national}", p.digits()),
            None => p.digits().to_owned(),
        })
        .unwrap_or_default();
    // The id squashed ("nina778") and as its words ("nina 778"), so it is
    // found however it is typed.
    let ids =
        f.national_id.as_deref().map(|id| format!("{} {}", compact_id(id), words(id).join(" "))).unwrap_or_default();
    c.execute(
        "INSERT INTO patient_search (rowid, names, phones, ids) VALUES (?1, ?2, ?3, ?4)",
        params![row_id, format!("{} {}", f.given_name, f.family_name), phones, ids],
    )?;
    c.execute("DELETE FROM encounters WHERE patient_id = ?1", [&pid])?;
    let mut insert = c.prepare_cached(
        "INSERT INTO encounters (id, patient_id, date, kind, complaint, diagnosis, icd10, weight_kg, temperature_c,
             bp_systolic, bp_diastolic, notes, clinician, age_group, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for e in &v.encounters {
        insert.execute(params![
            e.id.to_string(),
            pid,
            format_date(e.date),
            e.kind.as_str(),
            e.complaint,
            e.diagnosis,
            e.icd10,
            e.weight_kg,
            e.temperature_c,
            e.bp_systolic,
            e.bp_diastolic,
            e.notes,
            e.clinician,
            e.age_group.as_str(),
            format_timestamp(e.recorded_at),
        ])?;
    }
    Ok(())
}

/// A national id with separators removed and lowercased, as one search token.
fn compact_id(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

const PATIENT_COLUMNS: &str = "id, given_name, family_name, sex, birth_date, birth_date_estimated, phone, village,
    national_id, whatsapp_consent, whatsapp_consent_date, site_id, created_at, updated_at";

fn patient_from_row(r: &Row<'_>) -> Result<Patient, StoreError> {
    let bad = |what: &str| StoreError::CorruptDocument("projection".into(), what.to_owned());
    let date = |s: Option<String>| -> Result<Option<time::Date>, StoreError> {
        s.map(|s| {
            time::Date::parse(&s, time::macros::format_description!("[year]-[month]-[day]")).map_err(|_| bad("date"))
        })
        .transpose()
    };
    let ts = |s: String| parse_timestamp(&s).ok_or_else(|| bad("timestamp"));
    Ok(Patient {
        id: r.get::<_, String>(0)?.parse().map_err(|_| bad("id"))?,
        given_name: r.get(1)?,
        family_name: r.get(2)?,
        sex: Sex::parse(&r.get::<_, String>(3)?).ok_or_else(|| bad("sex"))?,
        birth_date: date(Some(r.get(4)?))?.ok_or_else(|| bad("birth_date"))?,
        birth_date_estimated: r.get(5)?,
        phone: r.get::<_, Option<String>>(6)?.map(|p| Phone::from_e164(&p)).transpose().map_err(|_| bad("phone"))?,
        village: r.get(7)?,
        national_id: r.get(8)?,
        whatsapp_consent: r.get(9)?,
        whatsapp_consent_date: date(r.get(10)?)?,
        site_id: r.get::<_, Option<String>>(11)?.and_then(|s| s.parse().ok()),
        created_at: ts(r.get(12)?)?,
        updated_at: ts(r.get(13)?)?,
        encounters: None,
    })
}

/// One patient from the projection; with `with_encounters`, newest first.
pub(crate) fn get_patient(c: &Connection, id: PatientId, with_encounters: bool) -> Result<Option<Patient>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE id = ?1"))?;
    let mut rows = stmt.query([id.to_string()])?;
    let Some(row) = rows.next()? else { return Ok(None) };
    let mut patient = patient_from_row(row)?;
    if with_encounters {
        patient.encounters = Some(encounters_of(c, id)?);
    }
    Ok(Some(patient))
}

fn encounters_of(c: &Connection, id: PatientId) -> Result<Vec<Encounter>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, date, kind, complaint, diagnosis, icd10, weight_kg, temperature_c, bp_systolic, bp_diastolic,
                notes, clinician, age_group, recorded_at
         FROM encounters WHERE patient_id = ?1 ORDER BY date DESC, recorded_at DESC",
    )?;
    let mut rows = stmt.query([id.to_string()])?;
    let mut out = Vec::new();
    let bad = |what: &str| StoreError::CorruptDocument("projection".into(), what.to_owned());
    while let Some(r) = rows.next()? {
        out.push(Encounter {
            id: r.get::<_, String>(0)?.parse().map_err(|_| bad("encounter id"))?,
            date: time::Date::parse(&r.get::<_, String>(1)?, time::macros::format_description!("[year]-[month]-[day]"))
                .map_err(|_| bad("encounter date"))?,
            kind: EncounterKind::parse(&r.get::<_, String>(2)?).ok_or_else(|| bad("kind"))?,
            complaint: r.get(3)?,
            diagnosis: r.get(4)?,
            icd10: r.get(5)?,
            weight_kg: r.get(6)?,
            temperature_c: r.get(7)?,
            bp_systolic: r.get(8)?,
            bp_diastolic: r.get(9)?,
            notes: r.get(10)?,
            clinician: r.get(11)?,
            age_group: AgeGroup::parse(&r.get::<_, String>(12)?).ok_or_else(|| bad("age_group"))?,
            recorded_at: parse_timestamp(&r.get::<_, String>(13)?).ok_or_else(|| bad("recorded_at"))?,
        });
    }
    Ok(out)
}

/// Shortest run of digits searched as a phone number prefix.
pub const MIN_PHONE_DIGITS: usize = 4;

/// How a search box entry is understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchPlan {
    /// Nothing searchable was typed.
    Empty,
    /// A patient id (UUID).
    ById(PatientId),
    /// Digits of a phone number (or of a numeric national id), as a prefix.
    Digits(String),
    /// Folded words, all of which must prefix-match a name or the national id.
    Words(Vec<String>),
}

impl SearchPlan {
    #[must_use]
    pub fn parse(q: &str) -> Self {
        let q = q.trim();
        if let Ok(id) = q.parse::<PatientId>() {
            return Self::ById(id);
        }
        let phone_like = !q.is_empty() && q.chars().all(|c| c.is_ascii_digit() || " +-.()/".contains(c));
        if phone_like {
            let digits: String = q.chars().filter(char::is_ascii_digit).collect();
            let digits = digits.strip_prefix("00").map(str::to_owned).unwrap_or(digits);
            // Fewer digits than this would expand to most of the phone index.
            if digits.len() >= MIN_PHONE_DIGITS {
                return Self::Digits(digits);
            }
        }
        let w = words(q);
        if w.is_empty() { Self::Empty } else { Self::Words(w) }
    }

    /// The FTS5 match expression, if this plan uses the full-text index.
    fn fts_query(&self) -> Option<String> {
        match self {
            Self::Empty | Self::ById(_) => None,
            Self::Digits(d) => Some(format!("{{phones ids}} : \"{d}\"*")),
            // Each word is quoted (so no word is read as FTS syntax) and a prefix.
            Self::Words(w) => {
                Some(w.iter().map(|w| format!("{{names ids}} : \"{w}\"*")).collect::<Vec<_>>().join(" AND "))
            }
        }
    }
}

/// Patients matching `q` (names in any order, accents and case ignored; phone
/// in any common format; patient id; national id), best match first.
pub(crate) fn search(c: &Connection, q: &str, limit: usize) -> Result<Vec<Patient>, StoreError> {
    let plan = SearchPlan::parse(q);
    if let SearchPlan::ById(id) = plan {
        return Ok(get_patient(c, id, false)?.into_iter().collect());
    }
    let Some(fts) = plan.fts_query() else { return recent(c, limit) };
    // Newest registrations first, read straight off the index in rowid order:
    // ranking every match (bm25) costs ~10 ms when a short prefix matches
    // thousands of patients on a 100,000-patient box, and a person narrows a
    // long list by typing more anyway.
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {} FROM patient_search s JOIN patients p ON p.row_id = s.rowid
         WHERE patient_search MATCH ?1 ORDER BY s.rowid DESC LIMIT ?2",
        PATIENT_COLUMNS.split(',').map(|c| format!("p.{}", c.trim())).collect::<Vec<_>>().join(", ")
    ))?;
    let mut rows = stmt.query(params![fts, i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(patient_from_row(r)?);
    }
    // Within that page, patients whose names hold every typed word whole come first.
    if let SearchPlan::Words(typed) = &plan {
        out.sort_by_key(|p| {
            let names = words(&format!("{} {}", p.given_name, p.family_name));
            !typed.iter().all(|w| names.contains(w))
        });
    }
    Ok(out)
}

/// The most recently updated patients (what an empty search box shows).
fn recent(c: &Connection, limit: usize) -> Result<Vec<Patient>, StoreError> {
    let mut stmt =
        c.prepare_cached(&format!("SELECT {PATIENT_COLUMNS} FROM patients ORDER BY updated_at DESC LIMIT ?1"))?;
    let mut rows = stmt.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(patient_from_row(r)?);
    }
    Ok(out)
}

/// Patients that look like `fields`: the same phone, or the same names (any
/// order, accents, case) and birth year. `except` leaves one patient out.
pub(crate) fn find_duplicates(
    c: &Connection,
    fields: &PatientFields,
    except: Option<PatientId>,
) -> Result<Vec<Duplicate>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, given_name, family_name, birth_date, village,
                CASE WHEN phone = ?1 THEN 'phone' ELSE 'name_and_birth_year' END
         FROM patients
         WHERE (phone = ?1 OR (name_key = ?2 AND substr(birth_date, 1, 4) = ?3)) AND id <> ?4
         LIMIT 10",
    )?;
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    let rows = stmt.query_map(
        params![
            fields.phone.as_ref().map(Phone::as_str),
            name_key(&fields.given_name, &fields.family_name),
            format!("{:04}", fields.birth_date.year()),
            except
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (id, given_name, family_name, birth_date, village, reason) = row?;
        out.push(Duplicate {
            id: id.parse().map_err(|_| StoreError::CorruptDocument("projection".into(), "id".into()))?,
            given_name,
            family_name,
            birth_date,
            village,
            reason: if reason == "phone" { "phone" } else { "name_and_birth_year" },
        });
    }
    Ok(out)
}

impl Store {
    pub async fn get_patient(&self, id: PatientId) -> Result<Option<Patient>, StoreError> {
        self.read(move |c| get_patient(c, id, true)).await
    }

    pub async fn search(&self, q: String, limit: usize) -> Result<Vec<Patient>, StoreError> {
        self.read(move |c| search(c, &q, limit.min(SEARCH_LIMIT))).await
    }

    pub async fn register_patient(&self, draft: PatientDraft, allow_duplicate: bool) -> Result<Patient, StoreError> {
        self.write(move |w| w.register(&draft, allow_duplicate)).await
    }

    pub async fn update_patient(&self, id: PatientId, patch: PatientPatch) -> Result<Patient, StoreError> {
        self.write(move |w| w.update(id, &patch)).await
    }

    pub async fn add_encounter(
        &self,
        id: PatientId,
        draft: EncounterDraft,
        clinician: String,
    ) -> Result<Encounter, StoreError> {
        self.write(move |w| w.add_encounter(id, &draft, &clinician)).await
    }

    /// Rebuilds the whole projection from the documents, in one transaction.
    /// Returns the number of patients reindexed.
    pub fn reindex(&self) -> Result<u64, StoreError> {
        self.blocking_write(|w| {
            let c = w.conn();
            c.execute_batch("DELETE FROM encounters; DELETE FROM patient_search; DELETE FROM patients;")?;
            let me = self.device_id();
            let site = get_meta(c, "site_id")?.and_then(|s| s.parse().ok());
            let country = self.options().default_country.clone();
            let ids: Vec<String> = {
                let mut stmt = c.prepare("SELECT patient_id FROM documents ORDER BY patient_id")?;
                stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
            };
            for id in &ids {
                let id: PatientId =
                    id.parse().map_err(|_| StoreError::CorruptDocument(id.clone(), "documents.patient_id".into()))?;
                let doc = load_doc(c, me, id)?;
                // A pulled patient with only changes awaiting dependencies.
                if doc.has_patient() {
                    project(c, &doc.read()?, me, site, &country)?;
                }
            }
            Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
        })
    }
}
