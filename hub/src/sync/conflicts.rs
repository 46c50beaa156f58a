//! Conflict detection: a field of a patient document written concurrently
//! on two devices keeps every value (`get_all` returns more than one), and
//! `get` returns Automerge's deterministic winner.
//!
//! Checked after each apply: the demographic keys of the root (not
//! `created_at`/`updated_at`, which every edit writes) and every field of
//! every encounter. The encounters map itself is not checked: two devices
//! adding different encounters add different keys, and both survive.
//! Detected conflicts are upserted into `conflicts` (one open row per
//! patient and field); an open conflict whose field now has a single value
//! (someone edited it after merging) is closed with `resolved_by = 'merge'`.
//!
//! An admin settles a conflict by choosing a value ([`write_resolution`]):
//! the hub writes it onto the document as a change of its own, which the
//! log then carries to every site holding the patient (see
//! [`crate::conflicts`] for the transaction around it).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use automerge::legacy::{Key, ObjectId as LegacyObj, OpId};
use automerge::transaction::{CommitOptions, Transactable as _};
use automerge::{ActorId, AutoCommit, Change, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, ValueRef};
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::SyncError;
use super::document::{self, FieldPath, ReadError, ValueError};

/// The root keys whose concurrent writes are conflicts.
pub const DEMOGRAPHIC_KEYS: &[&str] = &[
    "given_name",
    "family_name",
    "sex",
    "birth_date",
    "birth_date_estimated",
    "phone",
    "village",
    "national_id",
    "whatsapp_consent",
    "whatsapp_consent_date",
];

/// A field with competing values: `values` is the JSON array stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldConflict {
    pub field: String,
    pub values: Json,
}

/// What one patient's document says about conflicts after an apply.
#[derive(Debug, Default)]
pub struct Findings {
    /// Fields holding more than one value.
    pub open: Vec<FieldConflict>,
    /// Fields that had an open conflict and now hold one value (or none),
    /// with that value.
    pub settled: Vec<(String, Json)>,
}

/// Where changes applied to a document wrote: the root keys, and the
/// objects (maps) they wrote keys of, named by the operation that created
/// them. A field's set of values (`get_all`) changes only when an operation
/// writes its key, so a field no change wrote keeps the conflict state it
/// had: only written fields, and fields with an open conflict, need a look.
#[derive(Debug, Default)]
pub struct Scope {
    everything: bool,
    root: BTreeSet<String>,
    objects: HashSet<(u64, Vec<u8>)>,
}

impl Scope {
    /// Every field (a new document, or one rebuilt from its whole log).
    #[must_use]
    pub fn everything() -> Self {
        Self { everything: true, ..Self::default() }
    }

    /// The fields these changes write.
    #[must_use]
    pub fn of(changes: &[Change]) -> Self {
        let mut scope = Self::default();
        for change in changes {
            for op in change.decode().operations {
                match (op.obj, op.key) {
                    (LegacyObj::Root, Key::Map(key)) => {
                        scope.root.insert(key.to_string());
                    }
                    (LegacyObj::Id(OpId(counter, actor)), _) => {
                        scope.objects.insert((counter, actor.to_bytes().to_vec()));
                    }
                    (LegacyObj::Root, Key::Seq(_)) => {}
                }
            }
        }
        scope
    }

    fn root_key(&self, key: &str) -> bool {
        self.everything || self.root.contains(key)
    }

    fn object(&self, obj: &ObjId) -> bool {
        self.everything
            || match obj {
                ObjId::Id(counter, actor, _) => self.objects.contains(&(*counter, actor.to_bytes().to_vec())),
                ObjId::Root => false,
            }
    }
}

/// Checks every field of `doc`; `was_open` are the fields with an open
/// conflict before.
pub fn detect(doc: &AutoCommit, was_open: &BTreeSet<String>) -> Findings {
    detect_in(doc, was_open, &Scope::everything())
}

/// Checks the fields of `doc` in `scope` and those in `was_open`: the same
/// findings as [`detect`] when `scope` holds every change applied since the
/// last check (see [`Scope`]).
pub fn detect_in(doc: &AutoCommit, was_open: &BTreeSet<String>, scope: &Scope) -> Findings {
    let mut findings = Findings::default();
    let root = |key: &str| {
        (DEMOGRAPHIC_KEYS.contains(&key) && (scope.root_key(key) || was_open.contains(key))).then(|| key.to_owned())
    };
    scan(doc, &ROOT, root, was_open, &mut findings);
    if let Ok(Some((Value::Object(ObjType::Map), encounters))) = doc.get(ROOT, "encounters") {
        for item in doc.map_range(&encounters, ..) {
            if !matches!(item.value, ValueRef::Object(ObjType::Map)) {
                continue;
            }
            let e = item.id();
            let prefix = format!("encounters.{}.", item.key);
            let written = scope.object(&e);
            if !written && !was_open.iter().any(|f| f.starts_with(&prefix)) {
                continue;
            }
            let wanted = |key: &str| {
                let field = format!("{prefix}{key}");
                (written || was_open.contains(&field)).then_some(field)
            };
            scan(doc, &e, wanted, was_open, &mut findings);
        }
    }
    // An open conflict on a field that no longer exists (not expected) is
    // settled too, with no value.
    for field in was_open {
        if !findings.open.iter().any(|c| &c.field == field) && !findings.settled.iter().any(|(f, _)| f == field) {
            findings.settled.push((field.clone(), Json::Null));
        }
    }
    findings
}

/// Checks the keys of the map `obj` that `wanted` names a field for, in one
/// pass (`map_range` flags a key with several values; a `get_all` per key
/// would walk the document's operations each time).
fn scan(
    doc: &AutoCommit,
    obj: &ObjId,
    wanted: impl Fn(&str) -> Option<String>,
    was_open: &BTreeSet<String>,
    findings: &mut Findings,
) {
    for item in doc.map_range(obj, ..) {
        let Some(field) = wanted(&item.key) else { continue };
        if item.conflict {
            if let Some(Ok(values)) = field_values(doc, obj, &item.key) {
                findings.open.push(FieldConflict { field, values });
            }
        } else if was_open.contains(&field) {
            findings.settled.push((field, to_json(&item.value.into_value())));
        }
    }
}

/// `Some(Ok(values))` when `key` holds several values, `Some(Err(value))`
/// when one, `None` when none or unreadable.
fn field_values(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<Result<Json, Json>> {
    let all = doc.get_all(obj, key).ok()?;
    match all.len() {
        0 => None,
        1 => all.first().map(|(v, _)| Err(to_json(v))),
        _ => {
            let winner = doc.get(obj, key).ok().flatten().map(|(_, id)| id);
            let values = all
                .iter()
                .map(|(v, id)| {
                    let actor = match id {
                        ObjId::Id(_, actor, _) => Some(actor),
                        ObjId::Root => None,
                    };
                    let device = actor.and_then(|a| Uuid::from_slice(a.to_bytes()).ok());
                    json!({
                        "value": to_json(v),
                        "device_id": device,
                        "actor": actor.map(automerge::ActorId::to_hex_string),
                        "winner": winner.as_ref() == Some(id),
                    })
                })
                .collect();
            Some(Ok(Json::Array(values)))
        }
    }
}

fn to_json(v: &Value<'_>) -> Json {
    match v {
        Value::Object(t) => json!({ "object": t.to_string() }),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Json::String(s.to_string()),
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => json!(i),
            ScalarValue::Uint(u) => json!(u),
            ScalarValue::F64(f) => json!(f),
            ScalarValue::Boolean(b) => json!(b),
            ScalarValue::Null => Json::Null,
            other => Json::String(other.to_string()),
        },
    }
}

/// The fields with an open conflict, per patient.
pub async fn open_fields(
    tx: &Transaction<'_>,
    patients: &[Uuid],
) -> Result<BTreeMap<Uuid, BTreeSet<String>>, SyncError> {
    let mut open: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
    for row in tx
        .query(
            "SELECT patient_id, field FROM conflicts WHERE patient_id = ANY($1) AND resolved_at IS NULL",
            &[&patients],
        )
        .await?
    {
        open.entry(row.try_get(0)?).or_default().insert(row.try_get(1)?);
    }
    Ok(open)
}

/// Records the findings of these patients; returns how many conflicts are
/// new (not already open).
pub async fn record(tx: &Transaction<'_>, findings: &[(Uuid, Findings)]) -> Result<u64, SyncError> {
    let (mut patients, mut fields, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut s_patients, mut s_fields, mut s_values) = (Vec::new(), Vec::new(), Vec::new());
    for (patient, f) in findings {
        for c in &f.open {
            patients.push(*patient);
            fields.push(c.field.as_str());
            values.push(c.values.to_string());
        }
        for (field, value) in &f.settled {
            s_patients.push(*patient);
            s_fields.push(field.as_str());
            s_values.push(json!({ "value": value }).to_string());
        }
    }
    if !s_patients.is_empty() {
        tx.execute(
            "UPDATE conflicts c SET resolved_at = now(), resolved_by = 'merge', resolution = t.r::jsonb
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(p, f, r)
             WHERE c.patient_id = t.p AND c.field = t.f AND c.resolved_at IS NULL",
            &[&s_patients, &s_fields, &s_values],
        )
        .await?;
    }
    if patients.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = patients.iter().map(|_| Uuid::now_v7()).collect();
    let rows = tx
        .query(
            "INSERT INTO conflicts (id, patient_id, field, \"values\")
             SELECT t.id, t.p, t.f, t.v::jsonb FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                 AS t(id, p, f, v)
             ON CONFLICT (patient_id, field) WHERE resolved_at IS NULL
             DO UPDATE SET \"values\" = EXCLUDED.\"values\"
             RETURNING (xmax = 0) AS inserted",
            &[&ids, &patients, &fields, &values],
        )
        .await?;
    let mut new = 0;
    for row in rows {
        if row.try_get::<_, bool>(0)? {
            new += 1;
        }
    }
    Ok(new)
}

/// An admin's choice for a conflicting field, written as an Automerge change
/// onto the patient's document (see [`write_resolution`]).
#[derive(Debug)]
pub struct Resolution {
    /// The raw change, as the log stores it.
    pub change: Vec<u8>,
    /// Its Automerge hash.
    pub hash: Vec<u8>,
    /// The value written, normalised (`null` when the key was removed).
    pub value: Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolutionError {
    #[error("the conflict names a field that is not in the patient's document: {0}")]
    UnknownField(String),
    #[error(transparent)]
    Refused(#[from] ValueError),
    #[error("the patient's record cannot be read to check a new value ({0}): choose one of the competing values")]
    Unreadable(#[source] ReadError),
    #[error("cannot write the resolution onto the document")]
    Automerge(#[from] automerge::AutomergeError),
}

/// Writes `chosen` at `field` of the saved document `saved`, as a change
/// by a fresh hub actor; `now` dates it (commit time, `updated_at`) and
/// bounds new dates.
///
/// `chosen` is taken as is when it equals one of the field's competing
/// values (numbers compared as numbers); otherwise it must pass the edge's
/// validation ([`document::checked_value`]). The `put` (or `delete`, for
/// `null`) names every competing value as its predecessor, so once applied
/// the field holds that one value everywhere. `updated_at` is written too,
/// as every edge edit does.
///
/// The actor is 32 random bytes per resolution: never a device id (16
/// bytes, see [`detect`]'s `device_id`), and never reused, so two hub
/// instances cannot both write sequence number 1 of one actor.
pub fn write_resolution(
    saved: &[u8],
    conflict: Uuid,
    field: &str,
    chosen: &Json,
    now: OffsetDateTime,
) -> Result<Resolution, ResolutionError> {
    let mut doc = AutoCommit::load(saved)?;
    let unknown = || ResolutionError::UnknownField(field.to_owned());
    let path = FieldPath::parse(field).ok_or_else(unknown)?;
    let obj = path.object(&doc)?.ok_or_else(unknown)?;
    let competing = doc.get_all(&obj, path.key())?;
    let same = competing.iter().find_map(|(v, _)| match v {
        Value::Scalar(s) if same_value(&to_json(v), chosen) => Some(s.clone().into_owned()),
        _ => None,
    });
    let present = !competing.is_empty();
    drop(competing);
    let value = match same {
        Some(v) => Some(v),
        None => {
            let record = document::read(&doc).map_err(ResolutionError::Unreadable)?;
            document::checked_value(&record, &path, chosen, now.date())?
        }
    };
    doc.set_actor(ActorId::from(rand::random::<[u8; 32]>().as_slice()));
    match &value {
        Some(v) => doc.put(&obj, path.key(), v.clone())?,
        None if present => doc.delete(&obj, path.key())?,
        None => {}
    }
    let stamp = now.format(&Rfc3339).map_err(|_| unknown())?;
    doc.put(ROOT, "updated_at", stamp)?;
    let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    doc.commit_with(
        CommitOptions::default().with_message(format!("hub: conflict {conflict} resolved ({field})")).with_time(millis),
    );
    let change = doc.get_last_local_change().ok_or_else(unknown)?;
    let json = value.map_or(Json::Null, |v| to_json(&Value::Scalar(std::borrow::Cow::Owned(v))));
    Ok(Resolution { change: change.raw_bytes().to_vec(), hash: change.hash().0.to_vec(), value: json })
}

/// Equal JSON values, numbers compared as numbers (`61.5` stored as a float,
/// `120` as an unsigned integer, whatever way the admin's JSON spells them).
fn same_value(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use automerge::transaction::Transactable as _;

    use super::*;

    #[test]
    fn concurrent_puts_are_conflicts_and_a_later_put_settles_them() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(ROOT, "village", "Kati").expect("put");
        a.put(ROOT, "updated_at", "t0").expect("put");
        a.commit();
        let mut b = a.fork().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(ROOT, "village", "Siby").expect("put");
        a.put(ROOT, "updated_at", "t1").expect("put");
        b.put(ROOT, "village", "Kita").expect("put");
        b.put(ROOT, "updated_at", "t2").expect("put");
        a.merge(&mut b).expect("merge");
        let found = detect(&a, &BTreeSet::new());
        assert_eq!(found.open.len(), 1, "{found:?}");
        assert_eq!(found.open[0].field, "village");
        let values = found.open[0].values.as_array().expect("array");
        assert_eq!(values.len(), 2);
        assert_eq!(values.iter().filter(|v| v["winner"] == json!(true)).count(), 1);
        assert!(values.iter().all(|v| v["device_id"].is_string()));

        a.put(ROOT, "village", "Kati").expect("put");
        a.commit();
        let found = detect(&a, &BTreeSet::from(["village".to_owned()]));
        assert!(found.open.is_empty());
        assert_eq!(found.settled, [("village".to_owned(), json!("Kati"))]);
    }

    #[test]
    fn concurrent_encounter_field_edits_are_conflicts_new_encounters_are_not() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        let encounters = a.put_object(ROOT, "encounters", ObjType::Map).expect("put");
        let e = a.put_object(&encounters, "e1", ObjType::Map).expect("put");
        a.put(&e, "diagnosis", "paludisme").expect("put");
        a.commit();
        let mut b = a.fork().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        let e2 = a.put_object(&encounters, "e2", ObjType::Map).expect("put");
        a.put(&e2, "diagnosis", "grippe").expect("put");
        let e3 = b.put_object(&encounters, "e3", ObjType::Map).expect("put");
        b.put(&e3, "diagnosis", "rougeole").expect("put");
        a.merge(&mut b).expect("merge");
        assert!(detect(&a, &BTreeSet::new()).open.is_empty(), "two new encounters");

        let mut b = a.fork().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(&e, "diagnosis", "typhoïde").expect("put");
        b.put(&e, "diagnosis", "dengue").expect("put");
        a.merge(&mut b).expect("merge");
        let found = detect(&a, &BTreeSet::new());
        let fields: Vec<&str> = found.open.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["encounters.e1.diagnosis"]);
    }

    #[test]
    fn a_check_scoped_to_the_written_fields_finds_what_a_full_check_finds() {
        let fields = |f: &Findings| f.open.iter().map(|c| c.field.clone()).collect::<Vec<_>>();
        let mut a = AutoCommit::new().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(ROOT, "village", "Kati").expect("put");
        let encounters = a.put_object(ROOT, "encounters", ObjType::Map).expect("put");
        let e = a.put_object(&encounters, "e1", ObjType::Map).expect("put");
        a.put(&e, "diagnosis", "paludisme").expect("put");
        a.commit();
        let mut b = a.fork().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(ROOT, "village", "Siby").expect("put");
        a.put(&e, "diagnosis", "grippe").expect("put");
        a.commit();
        b.put(ROOT, "village", "Kita").expect("put");
        b.put(&e, "diagnosis", "dengue").expect("put");
        b.commit();
        let change = b.get_last_local_change().expect("change");
        let scope = Scope::of(std::slice::from_ref(&change));
        a.apply_changes([change]).expect("apply");
        let none = BTreeSet::new();
        assert_eq!(fields(&detect(&a, &none)), ["village", "encounters.e1.diagnosis"]);
        assert_eq!(fields(&detect_in(&a, &none, &scope)), ["village", "encounters.e1.diagnosis"]);

        // A later change writes another field only: what it wrote and what
        // was open are checked, nothing else.
        a.put(ROOT, "phone", "+22376000001").expect("put");
        a.commit();
        let scope = Scope::of(&[a.get_last_local_change().expect("change")]);
        let open = BTreeSet::from(["village".to_owned()]);
        assert_eq!(fields(&detect_in(&a, &open, &scope)), ["village"]);
        // Settling a field is seen through the open set.
        a.put(ROOT, "village", "Kati").expect("put");
        a.commit();
        let scope = Scope::of(&[a.get_last_local_change().expect("change")]);
        let found = detect_in(&a, &open, &scope);
        assert!(found.open.is_empty(), "{found:?}");
        assert_eq!(found.settled, [("village".to_owned(), json!("Kati"))]);
    }

    /// A full patient document (the edge's layout) with one encounter, and
    /// a copy on a second device; each then writes `phone` and the
    /// encounter's `bp_systolic` concurrently. Returns the merged document,
    /// the second copy (not merged), and the encounter id.
    fn conflicted() -> (AutoCommit, AutoCommit, String) {
        let mut a = AutoCommit::new().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(ROOT, "id", Uuid::now_v7().to_string()).expect("put");
        for (k, v) in [
            ("given_name", "Awa"),
            ("family_name", "Diarra"),
            ("sex", "female"),
            ("birth_date", "1990-03-14"),
            ("village", "Kati"),
            ("phone", "+22376123456"),
            ("created_at", "2026-01-01T10:00:00Z"),
        ] {
            a.put(ROOT, k, v).expect("put");
        }
        a.put(ROOT, "birth_date_estimated", false).expect("put");
        a.put(ROOT, "whatsapp_consent", false).expect("put");
        let encounters = a.put_object(ROOT, "encounters", ObjType::Map).expect("put");
        let id = Uuid::now_v7().to_string();
        let e = a.put_object(&encounters, id.as_str(), ObjType::Map).expect("put");
        for (k, v) in [
            ("date", "2026-01-10"),
            ("kind", "consultation"),
            ("complaint", "fièvre"),
            ("diagnosis", "paludisme"),
            ("notes", ""),
            ("clinician", "moussa"),
            ("recorded_at", "2026-01-10T09:00:00Z"),
        ] {
            a.put(&e, k, v).expect("put");
        }
        a.put(&e, "bp_systolic", ScalarValue::Uint(120)).expect("put");
        a.put(&e, "bp_diastolic", ScalarValue::Uint(80)).expect("put");
        a.commit();
        let mut b = a.fork().with_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        a.put(ROOT, "phone", "+22376000001").expect("put");
        a.put(&e, "bp_systolic", ScalarValue::Uint(130)).expect("put");
        b.put(ROOT, "phone", "+22376000002").expect("put");
        b.put(&e, "bp_systolic", ScalarValue::Uint(110)).expect("put");
        b.commit();
        let mut copy = b.fork();
        a.merge(&mut b).expect("merge");
        copy.set_actor(ActorId::from(Uuid::now_v7().as_bytes().as_slice()));
        (a, copy, id)
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Applies `r` to `doc`; the field's values afterwards.
    fn after(doc: &mut AutoCommit, r: &Resolution, field: &str) -> Vec<Json> {
        doc.apply_changes([automerge::Change::from_bytes(r.change.clone()).expect("change")]).expect("apply");
        let path = FieldPath::parse(field).expect("path");
        let obj = path.object(doc).expect("read").expect("object");
        doc.get_all(&obj, path.key()).expect("get_all").iter().map(|(v, _)| to_json(v)).collect()
    }

    #[test]
    fn a_resolution_supersedes_every_competing_value_on_every_copy() {
        let (mut merged, mut copy, e) = conflicted();
        let bp = format!("encounters.{e}.bp_systolic");
        let fields: BTreeSet<String> = detect(&merged, &BTreeSet::new()).open.into_iter().map(|c| c.field).collect();
        assert_eq!(fields, BTreeSet::from(["phone".to_owned(), bp.clone()]));

        // One of the competing values, spelled as the admin likes.
        let saved = merged.save();
        let r = write_resolution(&saved, Uuid::now_v7(), "phone", &json!("+22376000002"), now()).expect("resolved");
        assert_eq!(r.value, json!("+22376000002"));
        let change = automerge::Change::from_bytes(r.change.clone()).expect("change");
        assert_eq!(change.actor_id().to_bytes().len(), 32, "a hub actor is never a device id");
        assert_eq!(change.hash().0.to_vec(), r.hash);
        assert_eq!(after(&mut merged, &r, "phone"), [json!("+22376000002")]);
        // The copy that never saw the other edit converges too.
        assert_eq!(after(&mut copy, &r, "phone"), [json!("+22376000002")]);

        let saved = merged.save();
        let r = write_resolution(&saved, Uuid::now_v7(), &bp, &json!(130.0), now()).expect("resolved");
        assert_eq!(r.value, json!(130));
        assert_eq!(after(&mut merged, &r, &bp), [json!(130)]);
        let found = detect(&merged, &BTreeSet::from(["phone".to_owned(), bp.clone()]));
        assert!(found.open.is_empty(), "{found:?}");
        assert_eq!(found.settled.len(), 2);
    }

    #[test]
    fn a_new_value_is_validated_and_normalised_like_the_edge_does() {
        let (mut merged, _, e) = conflicted();
        let saved = merged.save();
        let id = Uuid::now_v7();
        let r = write_resolution(&saved, id, "phone", &json!("+223 76 11 22 33"), now()).expect("valid");
        assert_eq!(r.value, json!("+22376112233"));
        let r = write_resolution(&saved, id, "phone", &Json::Null, now()).expect("an optional field may be cleared");
        assert_eq!(r.value, Json::Null);
        let bp = format!("encounters.{e}.bp_systolic");
        let r = write_resolution(&saved, id, &bp, &json!(125), now()).expect("valid");
        assert_eq!(r.value, json!(125));

        let refused = |field: &str, value: Json| match write_resolution(&saved, id, field, &value, now()) {
            Err(ResolutionError::Refused(e)) => e,
            other => panic!("{field} = {value}: {other:?}"),
        };
        assert!(matches!(refused("phone", json!("not a phone")), ValueError::Invalid(_)));
        assert!(matches!(refused("phone", json!(76_112_233)), ValueError::WrongType { .. }));
        assert!(matches!(refused(&bp, json!(300)), ValueError::Invalid(_)));
        assert!(matches!(refused(&bp, json!(79)), ValueError::Invalid(_)), "below the diastolic");
        assert!(matches!(refused(&bp, Json::Null), ValueError::Invalid(_)), "both pressures or none");
        assert!(matches!(refused(&format!("encounters.{e}.clinician"), json!("awa")), ValueError::OnlyCompeting(_)));
        assert!(matches!(
            write_resolution(&saved, id, "encounters.nope.diagnosis", &json!("x"), now()),
            Err(ResolutionError::UnknownField(_))
        ));
    }
}
