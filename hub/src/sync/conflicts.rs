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

use std::collections::{BTreeMap, BTreeSet};

use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde_json::{Value as Json, json};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::SyncError;

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

/// Checks `doc`; `was_open` are the fields with an open conflict before.
pub fn detect(doc: &AutoCommit, was_open: &BTreeSet<String>) -> Findings {
    let mut findings = Findings::default();
    let mut check = |obj: &ObjId, key: &str, field: String| match field_values(doc, obj, key) {
        Some(Ok(values)) => findings.open.push(FieldConflict { field, values }),
        Some(Err(single)) if was_open.contains(&field) => findings.settled.push((field, single)),
        _ => {}
    };
    for key in DEMOGRAPHIC_KEYS {
        check(&ROOT, key, (*key).to_owned());
    }
    if let Ok(Some((Value::Object(ObjType::Map), encounters))) = doc.get(ROOT, "encounters") {
        for id in doc.keys(&encounters) {
            let Ok(Some((Value::Object(ObjType::Map), e))) = doc.get(&encounters, id.as_str()) else {
                continue;
            };
            for key in doc.keys(&e) {
                check(&e, &key, format!("encounters.{id}.{key}"));
            }
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
}
