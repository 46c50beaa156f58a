//! A model of what a CouchDB-based system sends to push the same encounters:
//! the reference figure the issue compares our bytes on the wire with.
//!
//! CouchDB and PouchDB replicate documents, not operations: every edit is a
//! new revision of the whole JSON document, and the replicator sends each
//! changed document in full with its revision history. For a batch of
//! [`BATCH_SIZE`] documents (PouchDB's default `batch_size`) it makes three
//! requests to the target:
//!
//! 1. `POST /db/_revs_diff` with `{id: [rev]}` per document; the target
//!    answers which revisions it is missing (here: all of them).
//! 2. `POST /db/_bulk_docs` with `{"docs": [...], "new_edits": false}`,
//!    each document carrying `_id`, `_rev` and `_revisions` (`start` and
//!    every revision id so far, up to `revs_limit` = 1000); the target
//!    answers `201` with `[]` (no per-document result when `new_edits` is
//!    false).
//! 3. `PUT /db/_local/<replication id>` to store the checkpoint.
//!
//! Each request and response is counted with a typical set of HTTP/1.1
//! headers (Basic authentication, CouchDB's `Server`, `X-Couch-Request-ID`,
//! ...), plain JSON as the replicator sends it (neither side compresses
//! request bodies). Not counted, so the model errs in CouchDB's favour: the
//! `_changes` feed read, the replication's start-up requests (`GET /db`,
//! the checkpoint read) and TCP/TLS handshakes.
//!
//! Two document shapes are modelled:
//! - [`Shape::PatientDocument`], what the issue asks for: one document per
//!   patient holding its demographics and every encounter (the same keys as
//!   our Automerge document), so adding an encounter sends the whole record
//!   again, its `_revisions` listing one revision per change made so far.
//! - [`Shape::EncounterDocument`], how Medic's CHT stores reports: each
//!   encounter is its own new document (revision 1) pointing at its
//!   patient. Cheaper, and the fairer comparison for such a system.

use rand::{Rng, RngExt as _};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::seed::{CLINICIAN, SeededEncounter, SeededPatient};

/// Documents per replication batch (PouchDB's default `batch_size`).
pub const BATCH_SIZE: usize = 100;
const DB: &str = "/sante-rurale";
const HOST: &str = "hub.sante-rurale.ml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    PatientDocument,
    EncounterDocument,
}

/// What the model sends for a set of encounters.
#[derive(Debug, Clone, Copy, Default)]
pub struct CouchTraffic {
    /// Request and response bytes, headers included.
    pub bytes: u64,
    pub requests: u64,
    /// Of `bytes`, the `_bulk_docs` request bodies.
    pub bulk_docs_body: u64,
    /// The `_bulk_docs` request bodies compressed with zstd level 3, were
    /// a system to compress them (CouchDB's replicator does not).
    pub bulk_docs_body_zstd: u64,
}

/// The traffic to replicate the last encounter of each patient in
/// `patients[i]` for `i` in `picks`, as one document revision each.
pub fn traffic(
    shape: Shape,
    patients: &[SeededPatient],
    picks: &[usize],
    site_id: &str,
    device_id: &str,
    rng: &mut impl Rng,
) -> anyhow::Result<CouchTraffic> {
    let mut out = CouchTraffic::default();
    let replication_id = hex_id(rng);
    let session_id = hex_id(rng);
    for (n, chunk) in picks.chunks(BATCH_SIZE).enumerate() {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|&i| match shape {
                Shape::PatientDocument => patient_document(&patients[i], site_id, device_id, rng),
                Shape::EncounterDocument => encounter_document(&patients[i], rng),
            })
            .collect::<anyhow::Result<_>>()?;

        let mut diff = Map::new();
        let mut missing = Map::new();
        for doc in &docs {
            let (id, rev) = (doc["_id"].as_str().unwrap_or_default(), doc["_rev"].clone());
            diff.insert(id.to_owned(), json!([rev]));
            missing.insert(id.to_owned(), json!({ "missing": [rev] }));
        }
        out.add(post("_revs_diff", &Value::Object(diff).to_string(), "200 OK", &Value::Object(missing).to_string()));

        let body = json!({ "docs": docs, "new_edits": false }).to_string();
        out.bulk_docs_body += len(&body);
        out.bulk_docs_body_zstd += u64::try_from(zstd::bulk::compress(body.as_bytes(), 3)?.len())?;
        out.add(post("_bulk_docs", &body, "201 Created", "[]"));

        let seq = (n + 1) * BATCH_SIZE;
        let checkpoint = json!({
            "_id": format!("_local/{replication_id}"),
            "_rev": format!("0-{n}"),
            "session_id": session_id,
            "source_last_seq": format!("{seq}-g1AAAACbeJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMcoARTIkOS_P___7MSGfAqSVIAkkn2IFUZzIlMuUAB9pRUQ8MUY0tsenAakscCJBkagBRQnf5sPI"),
            "replication_id_version": 4,
            "history": [{
                "session_id": session_id,
                "start_time": "Wed, 25 Nov 2026 08:00:00 GMT",
                "end_time": "Wed, 25 Nov 2026 08:05:00 GMT",
                "start_last_seq": 0,
                "end_last_seq": format!("{seq}-g1AAAACbeJzLYWBgYMpgTmHgz8tPSTV0MDQy1zMAQsMcoARTIkOS_P___7MSGfAqSVIAkkn2IFUZzIlMuUAB9pRUQ8MUY0tsenAakscCJBkagBRQnf5sPI"),
                "recorded_seq": seq,
                "missing_checked": seq,
                "missing_found": seq,
                "docs_read": seq,
                "docs_written": seq,
                "doc_write_failures": 0,
            }],
        })
        .to_string();
        let answer = json!({ "ok": true, "id": format!("_local/{replication_id}"), "rev": format!("0-{}", n + 1) });
        out.add(exchange("PUT", &format!("_local/{replication_id}"), &checkpoint, "201 Created", &answer.to_string()));
    }
    Ok(out)
}

impl CouchTraffic {
    fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.requests += 1;
    }
}

/// A patient's whole document at its latest revision.
fn patient_document(p: &SeededPatient, site_id: &str, device_id: &str, rng: &mut impl Rng) -> anyhow::Result<Value> {
    let f = &p.fields;
    let revisions = 1 + p.encounters.len();
    let ids: Vec<String> = (0..revisions).map(|_| hex_id(rng)).collect();
    let mut encounters = Map::new();
    for e in &p.encounters {
        encounters.insert(e.id.to_string(), encounter_fields(e)?);
    }
    let updated = p.encounters.last().map_or(p.created_at, |e| e.recorded_at);
    Ok(json!({
        "_id": format!("patient:{}", p.id),
        "_rev": format!("{revisions}-{}", ids[0]),
        "_revisions": { "start": revisions, "ids": ids },
        "type": "patient",
        "schema": 1,
        "id": p.id.to_string(),
        "origin_device": device_id,
        "site_id": site_id,
        "created_at": timestamp(p.created_at)?,
        "updated_at": timestamp(updated)?,
        "given_name": f.given_name,
        "family_name": f.family_name,
        "sex": f.sex.as_str(),
        "birth_date": santerurale_shared::patient::format_date(f.birth_date),
        "birth_date_estimated": f.birth_date_estimated,
        "phone": f.phone.as_ref().map(santerurale_shared::Phone::as_str),
        "village": f.village,
        "national_id": f.national_id,
        "whatsapp_consent": f.whatsapp_consent,
        "whatsapp_consent_date": f.whatsapp_consent_date.map(santerurale_shared::patient::format_date),
        "encounters": encounters,
    }))
}

/// A patient's last encounter as a new document of its own (CHT's reports).
fn encounter_document(p: &SeededPatient, rng: &mut impl Rng) -> anyhow::Result<Value> {
    let e = p.encounters.last().ok_or_else(|| anyhow::anyhow!("patient {} has no encounter", p.id))?;
    let rev = hex_id(rng);
    let mut doc = json!({
        "_id": format!("encounter:{}", e.id),
        "_rev": format!("1-{rev}"),
        "_revisions": { "start": 1, "ids": [rev] },
        "type": "encounter",
        "patient_id": p.id.to_string(),
    });
    if let (Value::Object(doc), Value::Object(fields)) = (&mut doc, encounter_fields(e)?) {
        doc.extend(fields);
    }
    Ok(doc)
}

fn encounter_fields(e: &SeededEncounter) -> anyhow::Result<Value> {
    let f = &e.fields;
    Ok(json!({
        "date": santerurale_shared::patient::format_date(f.date),
        "kind": f.kind.as_str(),
        "complaint": f.complaint,
        "diagnosis": f.diagnosis,
        "icd10": f.icd10,
        "weight_kg": f.weight_kg,
        "temperature_c": f.temperature_c,
        "bp_systolic": f.bp_systolic,
        "bp_diastolic": f.bp_diastolic,
        "notes": f.notes,
        "clinician": CLINICIAN,
        "recorded_at": timestamp(e.recorded_at)?,
    }))
}

/// Bytes of a `POST /db/<endpoint>` and its answer.
fn post(endpoint: &str, body: &str, status: &str, answer: &str) -> u64 {
    exchange("POST", endpoint, body, status, answer)
}

/// Bytes of one HTTP/1.1 request with a JSON body and its JSON answer, with
/// the headers a CouchDB replicator sends and CouchDB 3 answers with.
fn exchange(method: &str, endpoint: &str, body: &str, status: &str, answer: &str) -> u64 {
    // Basic credentials of a per-clinic user: base64 of "chw-kati-01:<20 chars>".
    let request = format!(
        "{method} {DB}/{endpoint} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: CouchDB-Replicator/3.3.3\r\n\
         Accept: application/json\r\nAuthorization: Basic Y2h3LWthdGktMDE6c2VjcmV0LXNlY3JldC1zZWNyZXQ=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nServer: CouchDB/3.3.3 (Erlang OTP/25)\r\nDate: Wed, 25 Nov 2026 08:00:00 GMT\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nCache-Control: must-revalidate\r\n\
         X-Couch-Request-ID: 5d1c0e7a2b\r\nX-CouchDB-Body-Time: 0\r\n\r\n{answer}",
        answer.len()
    );
    len(&request) + len(&response)
}

/// A revision id: 32 hex digits (an MD5 in CouchDB).
fn hex_id(rng: &mut impl Rng) -> String {
    format!("{:032x}", rng.random::<u128>())
}

fn timestamp(t: OffsetDateTime) -> anyhow::Result<String> {
    Ok(t.format(&Rfc3339)?)
}

fn len(s: &str) -> u64 {
    u64::try_from(s.len()).unwrap_or(u64::MAX)
}
