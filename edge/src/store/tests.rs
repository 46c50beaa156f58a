//! Store tests on real SQLite files: atomicity under injected failures,
//! outbox order, reindex equality, search normalisation, compaction.

use santerurale_shared::{EncounterDraft, PatientDraft, PatientId, PatientPatch};
use tempfile::TempDir;

use super::*;

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    (dir, store)
}

fn draft(given: &str, family: &str, phone: Option<&str>) -> PatientDraft {
    PatientDraft {
        given_name: Some(given.into()),
        family_name: Some(family.into()),
        sex: Some("female".into()),
        birth_date: Some("1990-05-17".into()),
        phone: phone.map(Into::into),
        village: Some("Kati".into()),
        ..PatientDraft::default()
    }
}

fn encounter(diagnosis: &str) -> EncounterDraft {
    EncounterDraft {
        kind: Some("consultation".into()),
        complaint: Some("fièvre".into()),
        diagnosis: Some(diagnosis.into()),
        temperature_c: Some(38.5),
        ..EncounterDraft::default()
    }
}

/// Every table the store writes, dumped as text, to compare whole states.
fn dump(store: &Store, tables: &[&str]) -> Vec<String> {
    store
        .blocking_read(|c| {
            let mut out = Vec::new();
            for t in tables {
                let mut stmt = c.prepare(&format!("SELECT * FROM {t} ORDER BY 1"))?;
                let n = stmt.column_count();
                let mut rows = stmt.query([])?;
                while let Some(r) = rows.next()? {
                    let cols: Vec<String> =
                        (0..n).map(|i| format!("{:?}", r.get_ref(i).map(|v| format!("{v:?}")))).collect();
                    out.push(format!("{t}: {}", cols.join(" | ")));
                }
            }
            Ok(out)
        })
        .expect("dump")
}

const ALL_TABLES: &[&str] = &["documents", "document_changes", "outbox", "patients", "encounters", "patient_search"];
const PROJECTION: &[&str] = &["patients", "encounters", "patient_search"];

#[test]
fn a_failure_at_any_step_leaves_nothing_partial() {
    let (_dir, store) = open();
    let p = store.blocking_write(|w| w.register(&draft("Awa", "Diarra", None), false)).expect("register");
    for point in [FailPoint::AfterDocument, FailPoint::AfterOutbox, FailPoint::AfterProjection] {
        let before = dump(&store, ALL_TABLES);
        store.fail_at(Some(point));
        let reg = store.blocking_write(|w| w.register(&draft("Fatoumata", "Keïta", Some("76000001")), false));
        assert!(matches!(reg, Err(StoreError::Injected(p)) if p == point), "{point:?}: {reg:?}");
        let enc = store.blocking_write(|w| w.add_encounter(p.id, &encounter("paludisme"), "awa"));
        assert!(matches!(enc, Err(StoreError::Injected(_))), "{point:?}");
        let upd = store.blocking_write(|w| {
            w.update(p.id, &PatientPatch { village: Some("Ségou".into()), ..PatientPatch::default() })
        });
        assert!(matches!(upd, Err(StoreError::Injected(_))), "{point:?}");
        assert_eq!(dump(&store, ALL_TABLES), before, "partial write left behind at {point:?}");
        store.fail_at(None);
    }
    // Without the failure the same writes go through.
    store.blocking_write(|w| w.add_encounter(p.id, &encounter("paludisme"), "awa")).expect("encounter");
    assert_eq!(dump(&store, &["encounters"]).len(), 1);
}

#[test]
fn invalid_input_writes_nothing() {
    let (_dir, store) = open();
    let p = store.blocking_write(|w| w.register(&draft("Awa", "Diarra", None), false)).expect("register");
    let before = dump(&store, ALL_TABLES);
    let bad = PatientDraft { phone: Some("12".into()), ..draft("A", "B", None) };
    assert!(matches!(store.blocking_write(|w| w.register(&bad, false)), Err(StoreError::Invalid(_))));
    let bad_enc = EncounterDraft { temperature_c: Some(99.0), ..encounter("x") };
    assert!(matches!(store.blocking_write(|w| w.add_encounter(p.id, &bad_enc, "awa")), Err(StoreError::Invalid(_))));
    let bad_patch = PatientPatch { sex: Some("x".into()), ..PatientPatch::default() };
    assert!(matches!(store.blocking_write(|w| w.update(p.id, &bad_patch)), Err(StoreError::Invalid(_))));
    assert_eq!(dump(&store, ALL_TABLES), before);
}

#[test]
fn the_outbox_holds_every_change_in_order() {
    let (_dir, store) = open();
    let a = store.blocking_write(|w| w.register(&draft("Awa", "Diarra", None), false)).expect("a");
    let b = store.blocking_write(|w| w.register(&draft("Moussa", "Coulibaly", None), false)).expect("b");
    store.blocking_write(|w| w.add_encounter(a.id, &encounter("one"), "x")).expect("e1");
    store.blocking_write(|w| w.add_encounter(b.id, &encounter("two"), "x")).expect("e2");
    // A patch that changes nothing makes no change and no outbox entry.
    store
        .blocking_write(|w| w.update(a.id, &PatientPatch { village: Some("Kati".into()), ..PatientPatch::default() }))
        .expect("noop");
    store
        .blocking_write(|w| w.update(a.id, &PatientPatch { village: Some("Bla".into()), ..PatientPatch::default() }))
        .expect("upd");
    let rows: Vec<(i64, String, Vec<u8>)> = store
        .blocking_read(|c| {
            let mut s = c.prepare("SELECT seq, patient_id, bytes FROM outbox ORDER BY seq")?;
            Ok(s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?)
        })
        .expect("outbox");
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let owners: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    let (a, b) = (a.id.to_string(), b.id.to_string());
    assert_eq!(owners, [a.clone(), b.clone(), a.clone(), b, a.clone()]);
    // Each change is kept raw (not deflated alone), so that a batch's zstd
    // frame compresses across changes.
    for (seq, _, bytes) in &rows {
        let change = automerge::Change::from_bytes(bytes.clone()).expect("a change");
        assert_eq!(change.raw_bytes(), bytes.as_slice(), "outbox entry {seq} is not the raw change");
    }
    // The outbox alone rebuilds each document: the hub will rely on this.
    let mut doc = automerge::AutoCommit::new();
    for (_, owner, bytes) in &rows {
        if *owner == a {
            doc.load_incremental(bytes).expect("change applies");
        }
    }
    let rebuilt = PatientDoc::load(store.device_id(), Some(&doc.save()), []).expect("load").read().expect("read");
    assert_eq!(rebuilt.fields.village, "Bla");
    assert_eq!(rebuilt.encounters.len(), 1);
}

#[test]
fn reindex_rebuilds_the_same_projection() {
    let (_dir, store) = open();
    let mut ids = Vec::new();
    for (i, (g, f)) in
        [("Aminata", "Traoré"), ("Moussa", "Keïta"), ("Awa", "Sangaré"), ("Seydou", "Diallo")].iter().enumerate()
    {
        let phone = format!("7600000{i}");
        let p = store.blocking_write(|w| w.register(&draft(g, f, Some(&phone)), false)).expect("register");
        ids.push(p.id);
    }
    // Enough writes on one patient to pass the compaction threshold.
    for n in 0..(COMPACT_AFTER_CHANGES + 3) {
        store.blocking_write(|w| w.add_encounter(ids[0], &encounter(&format!("visite {n}")), "x")).expect("encounter");
    }
    store
        .blocking_write(|w| {
            w.update(ids[1], &PatientPatch { national_id: Some("ML-123 456".into()), ..PatientPatch::default() })
        })
        .expect("update");
    let compacted: (Option<Vec<u8>>, i64) = store
        .blocking_read(|c| {
            Ok(c.query_row(
                "SELECT snapshot, change_count FROM documents WHERE patient_id = ?1",
                [ids[0].to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .expect("doc row");
    assert!(compacted.0.is_some(), "the busy document was compacted");
    assert!(compacted.1 < COMPACT_AFTER_CHANGES);

    let incremental = dump(&store, PROJECTION);
    assert_eq!(store.reindex().expect("reindex"), 4);
    let rebuilt = dump(&store, PROJECTION);
    assert_eq!(rebuilt, incremental);
    // And it is not vacuous: the projection was really emptied and refilled.
    assert!(
        rebuilt.iter().filter(|l| l.starts_with("encounters:")).count()
            == usize::try_from(COMPACT_AFTER_CHANGES + 3).expect("fits")
    );
}

#[test]
fn search_ignores_accents_case_word_order_and_phone_format() {
    let (_dir, store) = open();
    let aminata =
        store.blocking_write(|w| w.register(&draft("Aminata", "TRAORÉ", Some("+223 76 12 34 56")), false)).expect("a");
    store.blocking_write(|w| w.register(&draft("Mariam", "Keïta", Some("66 00 00 01")), false)).expect("b");
    store
        .blocking_write(|w| {
            w.register(
                &PatientDraft { national_id: Some("ML-2024/778".into()), ..draft("Oumou", "Sangaré", None) },
                false,
            )
        })
        .expect("c");
    let names = |q: &str| -> Vec<String> {
        store
            .blocking_read(|c| patients::search(c, q, 10))
            .expect("search")
            .into_iter()
            .map(|p| format!("{} {}", p.given_name, p.family_name))
            .collect()
    };
    for q in ["Traore Aminata", "aminata traoré", "TRAORE", "trao ami", "  Aminata   Traore  "] {
        assert_eq!(names(q), ["Aminata TRAORÉ"], "{q}");
    }
    for q in ["76 12 34 56", "76123456", "+22376123456", "0022376123456", "76-12", "+223 76.12"] {
        assert_eq!(names(q), ["Aminata TRAORÉ"], "{q}");
    }
    assert_eq!(names("keita"), ["Mariam Keïta"]);
    for q in ["ml2024778", "ML-2024/778", "ml 2024", "778"] {
        assert_eq!(names(q), ["Oumou Sangaré"], "{q}");
    }
    assert_eq!(names(&aminata.id.to_string()), ["Aminata TRAORÉ"]);
    assert!(names("Traoré Mariam").is_empty(), "all words must match");
    assert!(names("99999999").is_empty());
    // FTS syntax typed by a person is searched as text, not parsed.
    assert!(names("\"traore OR *").is_empty());
    assert!(names("NEAR(a b)").is_empty());
    // An empty search lists recent patients.
    assert_eq!(names("").len(), 3);
}

#[test]
fn whole_word_matches_come_before_prefix_matches() {
    let (_dir, store) = open();
    store.blocking_write(|w| w.register(&draft("Awa", "Koné", None), false)).expect("older");
    store.blocking_write(|w| w.register(&draft("Hawa", "Konaté", None), false)).expect("newer");
    let names = |q: &str| -> Vec<String> {
        store
            .blocking_read(|c| patients::search(c, q, 10))
            .expect("search")
            .into_iter()
            .map(|p| p.family_name)
            .collect()
    };
    // Both match the prefix; the newest comes first unless one matches whole.
    assert_eq!(names("kon"), ["Konaté", "Koné"]);
    assert_eq!(names("kone"), ["Koné"]);
    assert_eq!(names("KONE awa"), ["Koné"]);
    assert_eq!(names("awa kon"), ["Koné"], "awa is whole in Awa Koné only; Hawa does not start with awa");
}

#[test]
fn duplicates_are_found_by_phone_or_names_and_birth_year() {
    let (_dir, store) = open();
    store.blocking_write(|w| w.register(&draft("Aminata", "Traoré", Some("76123456")), false)).expect("first");
    let same_phone = store.blocking_write(|w| w.register(&draft("Awa", "Diarra", Some("+223 76 12 34 56")), false));
    assert!(matches!(same_phone, Err(StoreError::PossibleDuplicate(ref d)) if d[0].reason == "phone"));
    let same_names = store.blocking_write(|w| w.register(&draft("traore", "AMINATA", None), false));
    assert!(matches!(same_names, Err(StoreError::PossibleDuplicate(ref d)) if d[0].reason == "name_and_birth_year"));
    let other_year = PatientDraft { birth_date: Some("1991-01-01".into()), ..draft("Aminata", "Traoré", None) };
    store.blocking_write(|w| w.register(&other_year, false)).expect("different birth year is not a duplicate");
    store.blocking_write(|w| w.register(&draft("Awa", "Diarra", Some("76123456")), true)).expect("confirmed");
}

#[test]
fn documents_survive_reopening_and_keep_their_actor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id, device) = {
        let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
        let p = store.blocking_write(|w| w.register(&draft("Awa", "Diarra", None), false)).expect("register");
        (p.id, store.device_id())
    };
    let store = Store::open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.device_id(), device);
    let e = store.blocking_write(|w| w.add_encounter(id, &encounter("x"), "awa")).expect("encounter after reopen");
    let doc = store.blocking_write(|w| w.load(id)).expect("load").read().expect("read");
    assert_eq!(doc.encounters.len(), 1);
    assert_eq!(doc.encounters[0].id, e.id);
    assert_eq!(doc.origin_device, Some(device));
}

#[test]
fn backup_is_a_consistent_copy_and_never_overwrites() {
    let (dir, store) = open();
    store.blocking_write(|w| w.register(&draft("Awa", "Diarra", None), false)).expect("register");
    let target = dir.path().join("backup.db");
    store.backup_to(&target).expect("backup");
    assert!(matches!(store.backup_to(&target), Err(StoreError::TargetExists(_))));
    let copy = rusqlite::Connection::open(&target).expect("open copy");
    let ok: String = copy.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
    assert_eq!(ok, "ok");
    let n: i64 = copy.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)).expect("count");
    assert_eq!(n, 1);
}

/// `(patient, change bytes)` of `store`'s outbox after `after`, as the hub
/// would relay them to another clinic.
fn outbox_after(store: &Store, after: i64) -> Vec<(PatientId, Vec<u8>)> {
    store
        .blocking_read(move |c| {
            let mut s = c.prepare("SELECT patient_id, bytes FROM outbox WHERE seq > ?1 ORDER BY seq")?;
            let rows = s.query_map([after], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            rows.map(|r| {
                let (id, bytes) = r?;
                Ok((id.parse().expect("patient id"), bytes))
            })
            .collect()
        })
        .expect("outbox")
}

fn apply_all(store: &Store, changes: &[(PatientId, Vec<u8>)]) -> u64 {
    store
        .blocking_write(|w| {
            let mut new = 0;
            for (id, bytes) in changes {
                new += w.apply_remote(*id, std::slice::from_ref(bytes))?;
            }
            Ok(new)
        })
        .expect("apply")
}

fn outbox_len(store: &Store) -> i64 {
    store.blocking_read(|c| Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?)).expect("count")
}

fn patient_of(store: &Store, id: PatientId) -> santerurale_shared::Patient {
    store.blocking_read(move |c| patients::get_patient(c, id, true)).expect("read").expect("present")
}

#[test]
fn changes_from_another_clinic_merge_into_documents_and_projection() {
    let (_a_dir, a) = open();
    let (_b_dir, b) = open();
    let p = b.blocking_write(|w| w.register(&draft("Fanta", "Camara", Some("76123456")), false)).expect("register");
    b.blocking_write(|w| w.add_encounter(p.id, &encounter("paludisme"), "b")).expect("encounter");
    let from_b = outbox_after(&b, 0);

    assert_eq!(apply_all(&a, &from_b), 2);
    let seen = patient_of(&a, p.id);
    assert_eq!(seen.given_name, "Fanta");
    assert_eq!(seen.encounters.as_ref().map(Vec::len), Some(1));
    let found = a.blocking_read(|c| patients::search(c, "camara", 10)).expect("search");
    assert_eq!(found.iter().map(|p| p.id).collect::<Vec<_>>(), [p.id]);
    assert_eq!(outbox_len(&a), 0, "pulled changes are not pushed back");

    // Applying the same changes again changes nothing at all.
    let before = dump(&a, ALL_TABLES);
    assert_eq!(apply_all(&a, &from_b), 0);
    assert_eq!(dump(&a, ALL_TABLES), before);

    // Both clinics edit the same field and add an encounter, concurrently.
    let (a_mark, b_mark) = (outbox_len(&a), outbox_len(&b));
    let rename = |name: &str| PatientPatch { given_name: Some(name.into()), ..PatientPatch::default() };
    a.blocking_write(|w| w.update(p.id, &rename("Fatoumata"))).expect("a edits");
    a.blocking_write(|w| w.add_encounter(p.id, &encounter("grippe"), "a")).expect("a encounter");
    b.blocking_write(|w| w.update(p.id, &rename("Fanta-B"))).expect("b edits");
    b.blocking_write(|w| w.add_encounter(p.id, &encounter("toux"), "b")).expect("b encounter");
    let (to_b, to_a) = (outbox_after(&a, a_mark), outbox_after(&b, b_mark));
    assert_eq!(apply_all(&a, &to_a), 2);
    assert_eq!(apply_all(&b, &to_b), 2);
    let (on_a, on_b) = (patient_of(&a, p.id), patient_of(&b, p.id));
    assert_eq!(on_a, on_b, "both sides pick the same winner");
    assert!(["Fatoumata", "Fanta-B"].contains(&on_a.given_name.as_str()));
    let mut diagnoses: Vec<String> = on_a.encounters.unwrap_or_default().into_iter().map(|e| e.diagnosis).collect();
    diagnoses.sort();
    assert_eq!(diagnoses, ["grippe", "paludisme", "toux"]);
    assert_eq!(outbox_len(&a), a_mark + 2, "only a's own edits are in its outbox");

    let incremental = dump(&a, PROJECTION);
    a.reindex().expect("reindex");
    assert_eq!(dump(&a, PROJECTION), incremental);
}

#[test]
fn changes_arriving_before_their_dependencies_wait_and_survive_compaction() {
    let (_a_dir, a) = open();
    let (_b_dir, b) = open();
    let p = b.blocking_write(|w| w.register(&draft("Kadia", "Sow", None), false)).expect("register");
    for n in 0..COMPACT_AFTER_CHANGES {
        b.blocking_write(|w| w.add_encounter(p.id, &encounter(&format!("visite {n}")), "b")).expect("encounter");
    }
    let mut from_b = outbox_after(&b, 0);
    // The last change first: it waits for the others, and nothing is shown.
    let last = from_b.pop().expect("changes");
    assert_eq!(apply_all(&a, std::slice::from_ref(&last)), 1);
    assert!(a.blocking_read(move |c| patients::get_patient(c, p.id, false)).expect("read").is_none());
    a.reindex().expect("a waiting document does not break reindex");

    // The rest arrive, passing the compaction threshold on the way.
    assert_eq!(apply_all(&a, &from_b), u64::try_from(from_b.len()).expect("fits"));
    let snapshot: Option<Vec<u8>> = a
        .blocking_read(move |c| {
            Ok(c.query_row("SELECT snapshot FROM documents WHERE patient_id = ?1", [p.id.to_string()], |r| r.get(0))?)
        })
        .expect("row");
    assert!(snapshot.is_some(), "compacted");
    let expected = usize::try_from(COMPACT_AFTER_CHANGES).expect("fits");
    assert_eq!(patient_of(&a, p.id).encounters.map(|e| e.len()), Some(expected));
    assert_eq!(patient_of(&a, p.id), patient_of(&b, p.id));
    let incremental = dump(&a, PROJECTION);
    a.reindex().expect("reindex");
    assert_eq!(dump(&a, PROJECTION), incremental);
    assert_eq!(outbox_len(&a), 0);
}

#[test]
fn a_garbage_change_is_refused() {
    let (_dir, store) = open();
    let id = PatientId::new();
    let err = store.blocking_write(|w| w.apply_remote(id, &[b"not a change".to_vec()])).expect_err("garbage");
    assert!(matches!(err, StoreError::InvalidChange(_)), "{err:?}");
    assert!(dump(&store, ALL_TABLES).is_empty(), "nothing kept");
}

#[test]
fn timestamps_are_kept_to_the_microsecond_like_the_hub() {
    let t = time::macros::datetime!(2026-11-25 14:03:25.724965903 UTC);
    assert_eq!(format_timestamp(t), "2026-11-25T14:03:25.724965Z");
    assert_eq!(parse_timestamp(&format_timestamp(t)), Some(time::macros::datetime!(2026-11-25 14:03:25.724965 UTC)));
}
