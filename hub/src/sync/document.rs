//! Reads a patient document into domain types, for the projection.
//!
//! The layout is the edge's (schema 1, documented in
//! `edge/src/store/document.rs`): demographics are flat keys of the root
//! map, encounters a map keyed by encounter id under `encounters`, dates
//! `YYYY-MM-DD`, timestamps RFC 3339. When the same key was written
//! concurrently the reader takes Automerge's deterministic winner (`get`).
//! A document without the patient keys yet (its first change has not
//! arrived) reads as [`ReadError::Incomplete`] and is left out of the
//! projection until it does.
//!
//! For conflict resolution, [`FieldPath`] locates a conflicting field where
//! the edge writes it, and [`checked_value`] validates an admin's new value
//! for it with the edge's own rules (`santerurale_shared`), so the hub never
//! writes a value an edge would have refused from a form.

use automerge::{ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, ValueRef};
use santerurale_shared::patient::format_date;
use santerurale_shared::{
    AgeGroup, DeviceId, Encounter, EncounterDraft, EncounterId, EncounterKind, PatientFields, PatientId, Phone, Sex,
    ValidationErrors,
};
use time::{Date, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the document has no {0} yet")]
    Incomplete(&'static str),
    #[error("the document's {0} is malformed")]
    Malformed(String),
    #[error("cannot read the document")]
    Automerge(#[from] automerge::AutomergeError),
}

/// An encounter with the device whose actor created it.
#[derive(Debug, Clone, PartialEq)]
pub struct DocEncounter {
    pub encounter: Encounter,
    pub device: Option<DeviceId>,
}

/// What the projection needs of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientRecord {
    pub id: PatientId,
    pub fields: PatientFields,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub encounters: Vec<DocEncounter>,
}

pub fn read(doc: &AutoCommit) -> Result<PatientRecord, ReadError> {
    let r = Map::of(doc, &ROOT);
    let id: PatientId = r.string("id")?.parse().map_err(|_| ReadError::Malformed("id".into()))?;
    let sex = Sex::parse(&r.string("sex")?).ok_or_else(|| ReadError::Malformed("sex".into()))?;
    let birth_date = parse_date(&r.string("birth_date")?).ok_or_else(|| malformed("birth_date"))?;
    let fields = PatientFields {
        given_name: r.string("given_name")?,
        family_name: r.string("family_name")?,
        sex,
        birth_date,
        birth_date_estimated: r.bool("birth_date_estimated"),
        phone: r.opt_string("phone").map(|p| Phone::from_e164(&p)).transpose().map_err(|_| malformed("phone"))?,
        village: r.opt_string("village").unwrap_or_default(),
        national_id: r.opt_string("national_id"),
        whatsapp_consent: r.bool("whatsapp_consent"),
        whatsapp_consent_date: r
            .opt_string("whatsapp_consent_date")
            .map(|s| parse_date(&s).ok_or_else(|| malformed("whatsapp_consent_date")))
            .transpose()?,
    };
    let created_at = parse_timestamp(&r.string("created_at")?).ok_or_else(|| malformed("created_at"))?;
    let updated_at = r.opt_string("updated_at").and_then(|s| parse_timestamp(&s)).unwrap_or(created_at);
    let mut encounters = Vec::new();
    if let Some(obj) = r.map("encounters") {
        for (key, value) in &Map::of(doc, obj).entries {
            let Entry::Map(e) = value else {
                return Err(malformed(&format!("encounter {key}")));
            };
            let device = match e {
                ObjId::Id(_, actor, _) => device_of(actor),
                ObjId::Root => None,
            };
            encounters.push(DocEncounter { encounter: Map::of(doc, e).encounter(key, birth_date)?, device });
        }
    }
    Ok(PatientRecord { id, fields, created_at, updated_at, encounters })
}

/// An edge's actor id is the 16 bytes of its device id.
fn device_of(actor: &ActorId) -> Option<DeviceId> {
    uuid::Uuid::from_slice(actor.to_bytes()).ok().map(DeviceId::from_uuid)
}

fn malformed(what: &str) -> ReadError {
    ReadError::Malformed(what.to_owned())
}

fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()
}

fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// One value of a map, as `get` would return it (Automerge's winner).
enum Entry {
    Scalar(ScalarValue),
    Map(ObjId),
    /// A list or text: never in the edge's layout.
    Other,
}

/// Every key of one map, read in a single pass (`map_range`): a `get` per
/// key walks the document's operations each time, which made reading the
/// projection the costliest step of an apply.
struct Map {
    entries: std::collections::BTreeMap<String, Entry>,
}

impl Map {
    fn of(doc: &AutoCommit, obj: &ObjId) -> Self {
        let entries = doc
            .map_range(obj, ..)
            .map(|item| {
                let key = item.key.to_string();
                let value = if let ValueRef::Object(t) = &item.value {
                    if *t == ObjType::Map { Entry::Map(item.id()) } else { Entry::Other }
                } else {
                    match item.value.into_value() {
                        Value::Scalar(s) => Entry::Scalar(s.into_owned()),
                        Value::Object(_) => Entry::Other,
                    }
                };
                (key, value)
            })
            .collect();
        Self { entries }
    }

    fn scalar(&self, key: &str) -> Option<&ScalarValue> {
        match self.entries.get(key)? {
            Entry::Scalar(s) => Some(s),
            Entry::Map(_) | Entry::Other => None,
        }
    }

    fn map(&self, key: &str) -> Option<&ObjId> {
        match self.entries.get(key)? {
            Entry::Map(obj) => Some(obj),
            Entry::Scalar(_) | Entry::Other => None,
        }
    }

    fn opt_string(&self, key: &str) -> Option<String> {
        self.scalar(key).and_then(|s| s.as_str().map(str::to_owned))
    }

    fn string(&self, key: &'static str) -> Result<String, ReadError> {
        self.opt_string(key).ok_or(ReadError::Incomplete(key))
    }

    fn bool(&self, key: &str) -> bool {
        matches!(self.scalar(key), Some(ScalarValue::Boolean(true)))
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.scalar(key).and_then(ScalarValue::as_f64)
    }

    fn u16(&self, key: &str) -> Option<u16> {
        self.scalar(key).and_then(ScalarValue::as_u64).and_then(|v| u16::try_from(v).ok())
    }

    fn encounter(&self, key: &str, birth_date: Date) -> Result<Encounter, ReadError> {
        let bad = |k: &str| malformed(&format!("encounter {key}: {k}"));
        let text = |k: &'static str| self.string(k);
        let date = parse_date(&text("date")?).ok_or_else(|| bad("date"))?;
        Ok(Encounter {
            id: key.parse().map_err(|_| bad("id"))?,
            date,
            kind: EncounterKind::parse(&text("kind")?).ok_or_else(|| bad("kind"))?,
            complaint: text("complaint")?,
            diagnosis: text("diagnosis")?,
            icd10: self.opt_string("icd10"),
            weight_kg: self.f64("weight_kg"),
            temperature_c: self.f64("temperature_c"),
            bp_systolic: self.u16("bp_systolic"),
            bp_diastolic: self.u16("bp_diastolic"),
            notes: text("notes")?,
            clinician: text("clinician")?,
            age_group: AgeGroup::at(birth_date, date),
            recorded_at: parse_timestamp(&text("recorded_at")?).ok_or_else(|| bad("recorded_at"))?,
        })
    }
}

/// A field of a patient document, as `conflicts.field` names it: a
/// demographic key of the root (`village`), or a key of one encounter
/// (`encounters.<encounter id>.diagnosis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    Root(String),
    Encounter { id: EncounterId, key: String },
}

impl FieldPath {
    #[must_use]
    pub fn parse(field: &str) -> Option<Self> {
        match field.strip_prefix("encounters.") {
            Some(rest) => {
                let (id, key) = rest.split_once('.')?;
                Some(Self::Encounter { id: id.parse().ok()?, key: key.to_owned() })
            }
            None if !field.is_empty() && !field.contains('.') => Some(Self::Root(field.to_owned())),
            None => None,
        }
    }

    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Root(key) | Self::Encounter { key, .. } => key,
        }
    }

    /// The map holding the field, where the edge puts it: the root, or the
    /// encounter's map under `encounters`. `None` when it does not exist.
    pub fn object(&self, doc: &AutoCommit) -> Result<Option<ObjId>, automerge::AutomergeError> {
        let Self::Encounter { id, .. } = self else { return Ok(Some(ROOT)) };
        let Some((Value::Object(ObjType::Map), encounters)) = doc.get(ROOT, "encounters")? else { return Ok(None) };
        Ok(match doc.get(&encounters, id.to_string())? {
            Some((Value::Object(ObjType::Map), e)) => Some(e),
            _ => None,
        })
    }
}

/// Why a new value for a field is refused.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("{field} expects {expected}")]
    WrongType { field: String, expected: &'static str },
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error("{0} can only take one of its competing values")]
    OnlyCompeting(String),
    #[error("{field} cannot be {what} while the patient's other fields are as they are")]
    NotApplicable { field: String, what: &'static str },
}

/// The value to store at `path` for `candidate` (JSON; `null` removes an
/// optional field), when it is a new value rather than one of the competing
/// ones: validated exactly as the edge validates a form, as part of the
/// record as it reads now (`record`, the winners), then normalised as the
/// edge would store it (trimmed, E.164 phone, upper-case ICD-10, whole
/// blood pressures). `Ok(None)`: remove the key. `today` bounds dates.
///
/// A phone must be given in the international format: the hub has no
/// clinic to take a default country from.
pub fn checked_value(
    record: &PatientRecord,
    path: &FieldPath,
    candidate: &serde_json::Value,
    today: Date,
) -> Result<Option<ScalarValue>, ValueError> {
    let value = match path {
        FieldPath::Root(key) => checked_demographic(record, key, candidate, today)?,
        FieldPath::Encounter { id, key } => {
            let e = record
                .encounters
                .iter()
                .find(|e| e.encounter.id == *id)
                .ok_or_else(|| ValueError::OnlyCompeting(format!("encounters.{id}.{key}")))?;
            checked_encounter(&e.encounter, record.fields.birth_date, key, candidate, today)?
        }
    };
    // Blank text clears an optional field, as on the edge's forms.
    let blank = candidate.is_null() || candidate.as_str().is_some_and(|s| s.trim().is_empty());
    match (blank, &value) {
        (false, None) => Err(ValueError::NotApplicable { field: path.key().to_owned(), what: "set" }),
        (true, Some(_)) if candidate.is_null() => {
            Err(ValueError::NotApplicable { field: path.key().to_owned(), what: "empty" })
        }
        _ => Ok(value),
    }
}

fn checked_demographic(
    record: &PatientRecord,
    key: &str,
    candidate: &serde_json::Value,
    today: Date,
) -> Result<Option<ScalarValue>, ValueError> {
    let mut draft = record.fields.to_draft();
    match key {
        "given_name" => draft.given_name = text(key, candidate)?,
        "family_name" => draft.family_name = text(key, candidate)?,
        "sex" => draft.sex = text(key, candidate)?,
        "birth_date" => draft.birth_date = text(key, candidate)?,
        "phone" => draft.phone = text(key, candidate)?,
        "village" => draft.village = text(key, candidate)?,
        "national_id" => draft.national_id = text(key, candidate)?,
        "whatsapp_consent_date" => draft.whatsapp_consent_date = text(key, candidate)?,
        "birth_date_estimated" => draft.birth_date_estimated = flag(key, candidate)?,
        "whatsapp_consent" => draft.whatsapp_consent = flag(key, candidate)?,
        _ => return Err(ValueError::OnlyCompeting(key.to_owned())),
    }
    let f = draft.validate(today, "").map_err(ValueError::Invalid)?;
    let s = |v: &str| Some(ScalarValue::Str(v.into()));
    Ok(match key {
        "given_name" => s(&f.given_name),
        "family_name" => s(&f.family_name),
        "sex" => s(f.sex.as_str()),
        "birth_date" => s(&format_date(f.birth_date)),
        "phone" => f.phone.as_ref().and_then(|p| s(p.as_str())),
        "village" => s(&f.village),
        "national_id" => f.national_id.as_deref().and_then(s),
        "whatsapp_consent_date" => f.whatsapp_consent_date.and_then(|d| s(&format_date(d))),
        "birth_date_estimated" => Some(ScalarValue::Boolean(f.birth_date_estimated)),
        _ => Some(ScalarValue::Boolean(f.whatsapp_consent)),
    })
}

fn checked_encounter(
    e: &Encounter,
    birth_date: Date,
    key: &str,
    candidate: &serde_json::Value,
    today: Date,
) -> Result<Option<ScalarValue>, ValueError> {
    let mut draft = EncounterDraft {
        date: Some(format_date(e.date)),
        kind: Some(e.kind.as_str().to_owned()),
        complaint: Some(e.complaint.clone()),
        diagnosis: Some(e.diagnosis.clone()),
        icd10: e.icd10.clone(),
        weight_kg: e.weight_kg,
        temperature_c: e.temperature_c,
        bp_systolic: e.bp_systolic.map(f64::from),
        bp_diastolic: e.bp_diastolic.map(f64::from),
        notes: Some(e.notes.clone()),
    };
    match key {
        "date" => draft.date = text(key, candidate)?,
        "kind" => draft.kind = text(key, candidate)?,
        "complaint" => draft.complaint = text(key, candidate)?,
        "diagnosis" => draft.diagnosis = text(key, candidate)?,
        "icd10" => draft.icd10 = text(key, candidate)?,
        "notes" => draft.notes = text(key, candidate)?,
        "weight_kg" => draft.weight_kg = number(key, candidate)?,
        "temperature_c" => draft.temperature_c = number(key, candidate)?,
        "bp_systolic" => draft.bp_systolic = number(key, candidate)?,
        "bp_diastolic" => draft.bp_diastolic = number(key, candidate)?,
        // Who recorded it and when are facts, not choices.
        _ => return Err(ValueError::OnlyCompeting(key.to_owned())),
    }
    let f = draft.validate(today, birth_date).map_err(ValueError::Invalid)?;
    let s = |v: &str| Some(ScalarValue::Str(v.into()));
    Ok(match key {
        "date" => s(&format_date(f.date)),
        "kind" => s(f.kind.as_str()),
        "complaint" => s(&f.complaint),
        "diagnosis" => s(&f.diagnosis),
        "icd10" => f.icd10.as_deref().and_then(s),
        "notes" => s(&f.notes),
        "weight_kg" => f.weight_kg.map(ScalarValue::F64),
        "temperature_c" => f.temperature_c.map(ScalarValue::F64),
        "bp_systolic" => f.bp_systolic.map(|v| ScalarValue::Uint(v.into())),
        _ => f.bp_diastolic.map(|v| ScalarValue::Uint(v.into())),
    })
}

fn text(field: &str, v: &serde_json::Value) -> Result<Option<String>, ValueError> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ValueError::WrongType { field: field.to_owned(), expected: "text (or null)" }),
    }
}

fn flag(field: &str, v: &serde_json::Value) -> Result<Option<bool>, ValueError> {
    match v {
        serde_json::Value::Bool(b) => Ok(Some(*b)),
        _ => Err(ValueError::WrongType { field: field.to_owned(), expected: "true or false" }),
    }
}

fn number(field: &str, v: &serde_json::Value) -> Result<Option<f64>, ValueError> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => Ok(n.as_f64()),
        _ => Err(ValueError::WrongType { field: field.to_owned(), expected: "a number (or null)" }),
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable as _;

    use super::*;

    fn patient_doc(device: DeviceId) -> AutoCommit {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(device.as_uuid().as_bytes().as_slice()));
        doc.put(ROOT, "id", PatientId::new().to_string()).expect("put");
        for (k, v) in [
            ("given_name", "Awa"),
            ("family_name", "Diarra"),
            ("sex", "female"),
            ("birth_date", "2024-01-01"),
            ("village", "Kati"),
            ("created_at", "2026-01-01T10:00:00Z"),
        ] {
            doc.put(ROOT, k, v).expect("put");
        }
        doc
    }

    #[test]
    fn reads_the_edge_layout_with_each_encounter_device() {
        let device = DeviceId::new();
        let mut doc = patient_doc(device);
        let encounters = doc.put_object(ROOT, "encounters", ObjType::Map).expect("put");
        let id = santerurale_shared::EncounterId::new();
        let e = doc.put_object(&encounters, id.to_string(), ObjType::Map).expect("put");
        for (k, v) in [
            ("date", "2026-01-10"),
            ("kind", "vaccination"),
            ("complaint", ""),
            ("diagnosis", ""),
            ("notes", ""),
            ("clinician", "moussa"),
            ("recorded_at", "2026-01-10T09:00:00Z"),
        ] {
            doc.put(&e, k, v).expect("put");
        }
        doc.put(&e, "bp_systolic", ScalarValue::Uint(110)).expect("put");
        let record = read(&doc).expect("readable");
        assert_eq!(record.fields.given_name, "Awa");
        assert_eq!(record.updated_at, record.created_at, "no updated_at: the creation time");
        assert_eq!(record.encounters.len(), 1);
        let got = &record.encounters[0];
        assert_eq!(got.device, Some(device));
        assert_eq!(got.encounter.id, id);
        assert_eq!(got.encounter.bp_systolic, Some(110));
        assert_eq!(got.encounter.age_group, AgeGroup::at(record.fields.birth_date, got.encounter.date));
    }

    #[test]
    fn missing_keys_are_incomplete_and_bad_values_malformed() {
        assert!(matches!(read(&AutoCommit::new()), Err(ReadError::Incomplete("id"))));
        let mut doc = patient_doc(DeviceId::new());
        doc.put(ROOT, "sex", "other").expect("put");
        assert!(matches!(read(&doc), Err(ReadError::Malformed(_))));
    }
}
