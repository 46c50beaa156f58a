//! The patient document: one Automerge document per patient.
//!
//! # Layout (schema 1)
//! ```text
//! ROOT {
//!   schema: 1, id, origin_device, site_id?, created_at, updated_at,
//!   given_name, family_name, sex, birth_date ("YYYY-MM-DD"),
//!   birth_date_estimated (bool), phone? (E.164), village, national_id?,
//!   whatsapp_consent (bool), whatsapp_consent_date?,
//!   encounters: { <encounter id>: {
//!       date, kind, complaint, diagnosis, icd10?, weight_kg? (f64),
//!       temperature_c? (f64), bp_systolic? (uint), bp_diastolic? (uint),
//!       notes, clinician, recorded_at } }
//! }
//! ```
//! Demographics are flat keys of the root map so two devices editing different
//! fields merge cleanly, and the same field edited on two devices is visible as
//! a conflict (`get_all`). Absent optional values are absent keys. Edits only
//! write the keys whose value changed, so an unchanged field never conflicts.
//! Encounters are keyed by their UUIDv7, so concurrent additions never collide.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use santerurale_shared::{
    AgeGroup, DeviceId, Encounter, EncounterFields, EncounterId, EncounterKind, PatientFields, PatientId, Phone, Sex,
    SiteId,
};
use time::{Date, OffsetDateTime};

use super::{StoreError, format_timestamp, parse_timestamp};
use santerurale_shared::patient::format_date;

const SCHEMA: u64 = 1;
const ENCOUNTERS: &str = "encounters";

/// A loaded patient document, with this box as the actor of new changes.
#[derive(Debug)]
pub struct PatientDoc {
    doc: AutoCommit,
}

/// Everything a document says, read into domain types.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientView {
    pub id: PatientId,
    pub origin_device: Option<DeviceId>,
    pub site_id: Option<SiteId>,
    pub fields: PatientFields,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// In document order (by id, which is time-ordered).
    pub encounters: Vec<Encounter>,
}

impl PatientDoc {
    /// A new document for a patient registered on this box. Call [`Self::commit`].
    pub fn create(
        actor: DeviceId,
        id: PatientId,
        fields: &PatientFields,
        site_id: Option<SiteId>,
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let mut doc = Self { doc: AutoCommit::new().with_actor(actor_of(actor)) };
        let d = &mut doc.doc;
        d.put(ROOT, "schema", SCHEMA)?;
        d.put(ROOT, "id", id.to_string())?;
        d.put(ROOT, "origin_device", actor.to_string())?;
        if let Some(site) = site_id {
            d.put(ROOT, "site_id", site.to_string())?;
        }
        d.put(ROOT, "created_at", format_timestamp(now))?;
        d.put_object(ROOT, ENCOUNTERS, ObjType::Map)?;
        doc.set_demographics(fields, now)?;
        Ok(doc)
    }

    /// Loads a document from its snapshot (if compacted) and incremental changes.
    pub fn load<'a>(
        actor: DeviceId,
        snapshot: Option<&[u8]>,
        changes: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, StoreError> {
        let mut doc = match snapshot {
            Some(bytes) => AutoCommit::load(bytes)?,
            None => AutoCommit::new(),
        };
        for change in changes {
            doc.load_incremental(change)?;
        }
        doc.set_actor(actor_of(actor));
        Ok(Self { doc })
    }

    /// Writes the demographic fields that differ from what the document holds.
    /// Returns whether anything changed.
    pub fn set_demographics(&mut self, f: &PatientFields, now: OffsetDateTime) -> Result<bool, StoreError> {
        let before = self.doc.pending_ops();
        let d = &mut self.doc;
        put_str(d, &ROOT, "given_name", Some(&f.given_name))?;
        put_str(d, &ROOT, "family_name", Some(&f.family_name))?;
        put_str(d, &ROOT, "sex", Some(f.sex.as_str()))?;
        put_str(d, &ROOT, "birth_date", Some(&format_date(f.birth_date)))?;
        put_scalar(d, &ROOT, "birth_date_estimated", Some(ScalarValue::Boolean(f.birth_date_estimated)))?;
        put_str(d, &ROOT, "phone", f.phone.as_ref().map(Phone::as_str))?;
        put_str(d, &ROOT, "village", Some(&f.village))?;
        put_str(d, &ROOT, "national_id", f.national_id.as_deref())?;
        put_scalar(d, &ROOT, "whatsapp_consent", Some(ScalarValue::Boolean(f.whatsapp_consent)))?;
        put_str(d, &ROOT, "whatsapp_consent_date", f.whatsapp_consent_date.map(format_date).as_deref())?;
        let changed = self.doc.pending_ops() > before;
        if changed {
            self.doc.put(ROOT, "updated_at", format_timestamp(now))?;
        }
        Ok(changed)
    }

    /// Adds one encounter under its own key.
    pub fn add_encounter(
        &mut self,
        id: EncounterId,
        f: &EncounterFields,
        clinician: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let encounters = self.encounters_obj()?;
        let d = &mut self.doc;
        let e = d.put_object(&encounters, id.to_string(), ObjType::Map)?;
        d.put(&e, "date", format_date(f.date))?;
        d.put(&e, "kind", f.kind.as_str())?;
        d.put(&e, "complaint", f.complaint.as_str())?;
        d.put(&e, "diagnosis", f.diagnosis.as_str())?;
        put_str(d, &e, "icd10", f.icd10.as_deref())?;
        put_scalar(d, &e, "weight_kg", f.weight_kg.map(ScalarValue::F64))?;
        put_scalar(d, &e, "temperature_c", f.temperature_c.map(ScalarValue::F64))?;
        put_scalar(d, &e, "bp_systolic", f.bp_systolic.map(|v| ScalarValue::Uint(v.into())))?;
        put_scalar(d, &e, "bp_diastolic", f.bp_diastolic.map(|v| ScalarValue::Uint(v.into())))?;
        d.put(&e, "notes", f.notes.as_str())?;
        d.put(&e, "clinician", clinician)?;
        d.put(&e, "recorded_at", format_timestamp(now))?;
        d.put(ROOT, "updated_at", format_timestamp(now))?;
        Ok(())
    }

    /// Closes the pending operations into one change and returns it, or `None`
    /// if nothing was pending.
    pub fn commit(&mut self, now: OffsetDateTime) -> Option<Change> {
        let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        self.doc.commit_with(CommitOptions::default().with_time(millis))?;
        self.doc.get_last_local_change()
    }

    /// A full snapshot (`save()`), used to compact incremental changes. It
    /// keeps changes still waiting for their dependencies (Automerge's
    /// `retain_orphans`, on by default), so compacting loses none of them.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Applies one change made elsewhere (from the hub). Returns `false` when
    /// the document already holds it, `true` when it is new: applied, or
    /// queued inside the document until the changes it depends on arrive.
    pub fn apply_remote(&mut self, bytes: &[u8]) -> Result<bool, StoreError> {
        let change = Change::from_bytes(bytes.to_vec()).map_err(StoreError::InvalidChange)?;
        if self.doc.get_change_by_hash(&change.hash()).is_some() {
            return Ok(false);
        }
        self.doc.apply_changes([change])?;
        Ok(true)
    }

    /// Whether the document holds a patient yet: one pulled from the hub may
    /// have only changes whose dependencies have not arrived.
    #[must_use]
    pub fn has_patient(&self) -> bool {
        matches!(self.doc.get(ROOT, "id"), Ok(Some(_)))
    }

    /// Reads the whole document into domain types.
    pub fn read(&self) -> Result<PatientView, StoreError> {
        let r = Reader { doc: &self.doc };
        let id: PatientId = r.parse(&ROOT, "id")?;
        let corrupt = |what: &str| StoreError::CorruptDocument(id.to_string(), what.to_owned());
        let sex = Sex::parse(&r.string(&ROOT, "sex")?).ok_or_else(|| corrupt("sex"))?;
        let birth_date = parse_date(&r.string(&ROOT, "birth_date")?).ok_or_else(|| corrupt("birth_date"))?;
        let fields = PatientFields {
            given_name: r.string(&ROOT, "given_name")?,
            family_name: r.string(&ROOT, "family_name")?,
            sex,
            birth_date,
            birth_date_estimated: r.bool(&ROOT, "birth_date_estimated")?,
            phone: r
                .opt_string(&ROOT, "phone")?
                .map(|p| Phone::from_e164(&p))
                .transpose()
                .map_err(|_| corrupt("phone"))?,
            village: r.string(&ROOT, "village")?,
            national_id: r.opt_string(&ROOT, "national_id")?,
            whatsapp_consent: r.bool(&ROOT, "whatsapp_consent")?,
            whatsapp_consent_date: r
                .opt_string(&ROOT, "whatsapp_consent_date")?
                .map(|s| parse_date(&s).ok_or_else(|| corrupt("whatsapp_consent_date")))
                .transpose()?,
        };
        let created_at = parse_timestamp(&r.string(&ROOT, "created_at")?).ok_or_else(|| corrupt("created_at"))?;
        let updated_at = r.opt_string(&ROOT, "updated_at")?.and_then(|s| parse_timestamp(&s)).unwrap_or(created_at);
        let mut encounters = Vec::new();
        if let Some((Value::Object(ObjType::Map), obj)) = self.doc.get(ROOT, ENCOUNTERS)? {
            for key in self.doc.keys(&obj) {
                let Some((Value::Object(ObjType::Map), e)) = self.doc.get(&obj, key.as_str())? else {
                    return Err(corrupt("encounters"));
                };
                encounters.push(r.encounter(&key, &e, birth_date).map_err(|what| corrupt(&what))?);
            }
        }
        Ok(PatientView {
            id,
            origin_device: r.opt_string(&ROOT, "origin_device")?.and_then(|s| s.parse().ok()),
            site_id: r.opt_string(&ROOT, "site_id")?.and_then(|s| s.parse().ok()),
            fields,
            created_at,
            updated_at,
            encounters,
        })
    }

    fn encounters_obj(&self) -> Result<ObjId, StoreError> {
        match self.doc.get(ROOT, ENCOUNTERS)? {
            Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
            _ => Err(StoreError::CorruptDocument("?".into(), ENCOUNTERS.into())),
        }
    }
}

fn actor_of(device: DeviceId) -> ActorId {
    ActorId::from(device.as_uuid().as_bytes())
}

fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()
}

/// Puts a string, or deletes the key for `None`; does nothing when the
/// document already holds exactly that value (and no competing one).
fn put_str(d: &mut AutoCommit, obj: &ObjId, key: &str, value: Option<&str>) -> Result<(), StoreError> {
    put_scalar(d, obj, key, value.map(|s| ScalarValue::Str(s.into())))
}

fn put_scalar(d: &mut AutoCommit, obj: &ObjId, key: &str, value: Option<ScalarValue>) -> Result<(), StoreError> {
    let current = d.get_all(obj, key)?;
    match value {
        Some(v) => {
            let same = current.len() == 1 && matches!(&current[0].0, Value::Scalar(s) if s.as_ref() == &v);
            if !same {
                d.put(obj, key, v)?;
            }
        }
        None => {
            if !current.is_empty() {
                d.delete(obj, key)?;
            }
        }
    }
    Ok(())
}

struct Reader<'a> {
    doc: &'a AutoCommit,
}

impl Reader<'_> {
    fn scalar(&self, obj: &ObjId, key: &str) -> Result<Option<ScalarValue>, StoreError> {
        Ok(match self.doc.get(obj, key)? {
            Some((Value::Scalar(s), _)) => Some(s.into_owned()),
            _ => None,
        })
    }

    fn opt_string(&self, obj: &ObjId, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.scalar(obj, key)?.and_then(|s| s.as_str().map(str::to_owned)))
    }

    fn string(&self, obj: &ObjId, key: &str) -> Result<String, StoreError> {
        self.opt_string(obj, key)?.ok_or_else(|| StoreError::CorruptDocument("?".into(), format!("missing {key}")))
    }

    fn bool(&self, obj: &ObjId, key: &str) -> Result<bool, StoreError> {
        Ok(matches!(self.scalar(obj, key)?, Some(ScalarValue::Boolean(true))))
    }

    fn f64(&self, obj: &ObjId, key: &str) -> Result<Option<f64>, StoreError> {
        Ok(self.scalar(obj, key)?.and_then(|s| s.as_f64()))
    }

    fn u16(&self, obj: &ObjId, key: &str) -> Result<Option<u16>, StoreError> {
        Ok(self.scalar(obj, key)?.and_then(|s| s.as_u64()).and_then(|v| u16::try_from(v).ok()))
    }

    fn parse<T: std::str::FromStr>(&self, obj: &ObjId, key: &str) -> Result<T, StoreError> {
        let s = self.string(obj, key)?;
        s.parse().map_err(|_| StoreError::CorruptDocument(s, key.to_owned()))
    }

    fn encounter(&self, key: &str, e: &ObjId, birth_date: Date) -> Result<Encounter, String> {
        let text = |k: &str| self.string(e, k).map_err(|_| format!("encounter {key}: {k}"));
        let date = parse_date(&text("date")?).ok_or_else(|| format!("encounter {key}: date"))?;
        Ok(Encounter {
            id: key.parse().map_err(|_| format!("encounter id {key}"))?,
            date,
            kind: EncounterKind::parse(&text("kind")?).ok_or_else(|| format!("encounter {key}: kind"))?,
            complaint: text("complaint")?,
            diagnosis: text("diagnosis")?,
            icd10: self.opt_string(e, "icd10").map_err(|e| e.to_string())?,
            weight_kg: self.f64(e, "weight_kg").map_err(|e| e.to_string())?,
            temperature_c: self.f64(e, "temperature_c").map_err(|e| e.to_string())?,
            bp_systolic: self.u16(e, "bp_systolic").map_err(|e| e.to_string())?,
            bp_diastolic: self.u16(e, "bp_diastolic").map_err(|e| e.to_string())?,
            notes: text("notes")?,
            clinician: text("clinician")?,
            age_group: AgeGroup::at(birth_date, date),
            recorded_at: parse_timestamp(&text("recorded_at")?)
                .ok_or_else(|| format!("encounter {key}: recorded_at"))?,
        })
    }
}
