//! Patient documents made the way an edge makes them (the layout of
//! `edge/src/store/document.rs`, schema 1), and signed pulls: helpers for
//! the apply and pull scenarios.

use automerge::transaction::Transactable as _;
use automerge::{ActorId, AutoCommit, Change, ObjType, ROOT, ReadDoc as _, ScalarValue, Value};
use santerurale_shared::sync::{
    OutboxChange, PROTOCOL_VERSION, PULL_PATH, PullRequest, PullResponse, SignedHeaders, decode_pull_response,
    encode_pull,
};
use santerurale_shared::{DeviceId, EncounterId, PatientId};

use crate::support::{TestDevice, TestHub};

/// One patient's document on one edge, with that edge's device as actor.
pub struct EdgeDoc {
    pub patient: PatientId,
    doc: AutoCommit,
}

fn actor(device: DeviceId) -> ActorId {
    ActorId::from(device.as_uuid().as_bytes().as_slice())
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("format")
}

impl EdgeDoc {
    /// A new patient registered on `device`; returns the document and its
    /// first change.
    pub fn register(device: DeviceId, given: &str, family: &str, phone: Option<&str>) -> (Self, Vec<u8>) {
        let patient = PatientId::new();
        let mut doc = AutoCommit::new().with_actor(actor(device));
        let stamp = now();
        doc.put(ROOT, "schema", 1_u64).expect("put");
        doc.put(ROOT, "id", patient.to_string()).expect("put");
        doc.put(ROOT, "origin_device", device.to_string()).expect("put");
        doc.put(ROOT, "created_at", stamp.as_str()).expect("put");
        doc.put_object(ROOT, "encounters", ObjType::Map).expect("put");
        doc.put(ROOT, "given_name", given).expect("put");
        doc.put(ROOT, "family_name", family).expect("put");
        doc.put(ROOT, "sex", "female").expect("put");
        doc.put(ROOT, "birth_date", "1990-03-14").expect("put");
        doc.put(ROOT, "birth_date_estimated", false).expect("put");
        if let Some(phone) = phone {
            doc.put(ROOT, "phone", phone).expect("put");
        }
        doc.put(ROOT, "village", "Kati").expect("put");
        doc.put(ROOT, "whatsapp_consent", false).expect("put");
        doc.put(ROOT, "updated_at", stamp.as_str()).expect("put");
        let mut me = Self { patient, doc };
        let change = me.commit();
        (me, change)
    }

    /// The same document on another device (after it pulled `changes`).
    pub fn on_device(device: DeviceId, patient: PatientId, changes: &[Vec<u8>]) -> Self {
        let mut doc = AutoCommit::new().with_actor(actor(device));
        doc.apply_changes(changes.iter().map(|c| Change::from_bytes(c.clone()).expect("change"))).expect("apply");
        Self { patient, doc }
    }

    /// Applies changes made elsewhere (as after a pull).
    pub fn merge(&mut self, changes: &[Vec<u8>]) {
        self.doc.apply_changes(changes.iter().map(|c| Change::from_bytes(c.clone()).expect("change"))).expect("apply");
    }

    /// Records an encounter on `date`; returns its id and the change.
    pub fn add_encounter(&mut self, date: &str, diagnosis: &str) -> (EncounterId, Vec<u8>) {
        let id = EncounterId::new();
        let encounters = match self.doc.get(ROOT, "encounters").expect("get") {
            Some((Value::Object(ObjType::Map), obj)) => obj,
            other => panic!("no encounters map: {other:?}"),
        };
        let d = &mut self.doc;
        let e = d.put_object(&encounters, id.to_string(), ObjType::Map).expect("put");
        d.put(&e, "date", date).expect("put");
        d.put(&e, "kind", "consultation").expect("put");
        d.put(&e, "complaint", "fièvre").expect("put");
        d.put(&e, "diagnosis", diagnosis).expect("put");
        d.put(&e, "icd10", "B54").expect("put");
        d.put(&e, "weight_kg", ScalarValue::F64(61.5)).expect("put");
        d.put(&e, "temperature_c", ScalarValue::F64(38.9)).expect("put");
        d.put(&e, "bp_systolic", ScalarValue::Uint(120)).expect("put");
        d.put(&e, "bp_diastolic", ScalarValue::Uint(80)).expect("put");
        d.put(&e, "notes", "").expect("put");
        d.put(&e, "clinician", "aminata").expect("put");
        d.put(&e, "recorded_at", now()).expect("put");
        d.put(ROOT, "updated_at", now()).expect("put");
        (id, self.commit())
    }

    /// Sets one root string field.
    pub fn set(&mut self, key: &str, value: &str) -> Vec<u8> {
        self.doc.put(ROOT, key, value).expect("put");
        self.commit()
    }

    /// Sets one field of encounter `id`.
    pub fn set_encounter(&mut self, id: EncounterId, key: &str, value: ScalarValue) -> Vec<u8> {
        let encounters = match self.doc.get(ROOT, "encounters").expect("get") {
            Some((Value::Object(ObjType::Map), obj)) => obj,
            other => panic!("no encounters map: {other:?}"),
        };
        let e = match self.doc.get(&encounters, id.to_string()).expect("get") {
            Some((Value::Object(ObjType::Map), obj)) => obj,
            other => panic!("no encounter {id}: {other:?}"),
        };
        self.doc.put(&e, key, value).expect("put");
        self.commit()
    }

    /// Every value a field holds (more than one while it is in conflict):
    /// `village`, or `encounters.<id>.<key>`.
    pub fn values(&self, field: &str) -> Vec<ScalarValue> {
        values_of(&self.doc, field)
    }

    /// The document's heads, sorted.
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort();
        heads
    }

    fn commit(&mut self) -> Vec<u8> {
        self.doc.commit();
        self.doc.get_last_local_change().expect("a change").raw_bytes().to_vec()
    }
}

/// Every value `field` holds in `doc` (see [`EdgeDoc::values`]).
pub fn values_of(doc: &AutoCommit, field: &str) -> Vec<ScalarValue> {
    let (obj, key) = match field.strip_prefix("encounters.") {
        Some(rest) => {
            let (id, key) = rest.split_once('.').expect("encounters.<id>.<key>");
            let Some((Value::Object(ObjType::Map), encounters)) = doc.get(ROOT, "encounters").expect("get") else {
                panic!("no encounters map")
            };
            let Some((Value::Object(ObjType::Map), e)) = doc.get(&encounters, id).expect("get") else {
                panic!("no encounter {id}")
            };
            (e, key)
        }
        None => (ROOT, field),
    };
    doc.get_all(&obj, key)
        .expect("get_all")
        .into_iter()
        .map(|(v, _)| match v {
            Value::Scalar(s) => s.into_owned(),
            Value::Object(t) => panic!("{field} is a {t}"),
        })
        .collect()
}

/// The hub's saved document of `patient`, as stored.
pub async fn hub_doc(hub: &TestHub, patient: PatientId) -> Vec<u8> {
    let client = hub.state.db.get().await.expect("conn");
    client
        .query_one("SELECT doc FROM documents WHERE patient_id = $1", &[patient.as_uuid()])
        .await
        .expect("document")
        .get(0)
}

/// Outbox entries `first_seq..` of `changes`, all of `patient`.
pub fn outbox(first_seq: u64, patient: PatientId, changes: &[Vec<u8>]) -> Vec<OutboxChange> {
    changes
        .iter()
        .zip(first_seq..)
        .map(|(c, seq)| OutboxChange { seq, patient_id: patient, change: c.clone() })
        .collect()
}

/// Pushes `batch` and expects 200.
pub async fn push(hub: &TestHub, device: &TestDevice, batch: Vec<OutboxChange>) {
    let body = device.push_body(batch, 0);
    let resp = crate::support::post_push(hub, &device.sign(&body), body).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK, "{}", resp.text().await.unwrap_or_default());
}

pub fn pull_body(device: &TestDevice, cursor: u64, max_bytes: u32) -> Vec<u8> {
    encode_pull(&PullRequest { protocol: PROTOCOL_VERSION, device_id: device.id, cursor, max_bytes }).expect("encode")
}

pub fn sign_pull(device: &TestDevice, body: &[u8]) -> SignedHeaders {
    device.sign_for(PULL_PATH, body)
}

pub async fn post_pull(hub: &TestHub, headers: &SignedHeaders, body: Vec<u8>) -> reqwest::Response {
    crate::support::post_sync(hub, PULL_PATH, headers, body).await
}

/// A signed pull that must succeed.
pub async fn pull(hub: &TestHub, device: &TestDevice, cursor: u64, max_bytes: u32) -> PullResponse {
    let body = pull_body(device, cursor, max_bytes);
    let resp = post_pull(hub, &sign_pull(device, &body), body).await;
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    decode_pull_response(&resp.bytes().await.expect("body"), 64 << 20).expect("a PullResponse")
}

/// The `hub_seq`s of `patient`'s changes in the hub's log, in order.
pub async fn hub_seqs(hub: &TestHub, patient: PatientId) -> Vec<u64> {
    let client = hub.state.db.get().await.expect("conn");
    client
        .query("SELECT hub_seq FROM changes WHERE patient_id = $1 ORDER BY hub_seq", &[patient.as_uuid()])
        .await
        .expect("select")
        .iter()
        .map(|r| u64::try_from(r.get::<_, i64>(0)).expect("positive"))
        .collect()
}

/// The heads of the hub's saved document of `patient`, sorted, and whether
/// it is marked incomplete.
pub async fn hub_heads(hub: &TestHub, patient: PatientId) -> (Vec<automerge::ChangeHash>, bool) {
    let client = hub.state.db.get().await.expect("conn");
    let row = client
        .query_one("SELECT doc, incomplete FROM documents WHERE patient_id = $1", &[patient.as_uuid()])
        .await
        .expect("document");
    let mut doc = AutoCommit::load(&row.get::<_, Vec<u8>>(0)).expect("load");
    let mut heads = doc.get_heads();
    heads.sort();
    (heads, row.get(1))
}
