//! DHIS2 aggregation against hand-counted fixtures (issue 4): rows written
//! straight into the projection tables of a real PostgreSQL, then the
//! values of March 2024 (and April, for what must not spill into it) per
//! site, each expected number counted by hand below.
//!
//! The fixture (sites KATI and SIBY; EMPTY records nothing):
//!
//! | patient | sex, birth (registered)               | encounters (site, date, kind)                        |
//! |---------|---------------------------------------|------------------------------------------------------|
//! | awa     | F 2019-03-15 (KATI 2023-06-01)        | KATI 03-14 consultation (age 4), 03-15 consultation (5: birthday) |
//! | bakary  | M 2023-03-20 (KATI 2023-03-25)        | KATI 03-19 consultation (age 0), 03-20 follow_up (1: birthday) |
//! | coumba  | F 2019-01-01 estimated (KATI 2023-01-05) | KATI 02-29 consultation (Feb), 03-01 consultation (5), 03-31 vaccination (5) |
//! | drissa  | M 1990-06-10 (KATI 2024-03-10 23:30Z) | KATI 03-10 consultation (33), SIBY 03-22 consultation (33) |
//! | fanta   | F 1998-02-02 (SIBY 2024-02-28)        | SIBY 03-05 antenatal, 03-31 antenatal synced 04-03, 04-01 consultation |
//! | gaoussou| M 2010-07-01 (KATI 2024-03-31 23:59:59Z) | KATI 03-31 consultation (13) synced 04-05          |
//! | hawa    | F 2017-11-30 (KATI 2024-04-01 00:00Z) | KATI 04-01 consultation                              |
//! | ina     | F 2024-01-15 (SIBY 2024-03-01 00:00Z) | SIBY 03-01 vaccination (0)                           |

use std::collections::HashMap;

use deadpool_postgres::Pool;
use hub::dhis2::aggregate::{self, AggregateError, ExportSite, IndicatorValue};
use hub::dhis2::mapping::Mapping;
use hub::dhis2::payload::IdScheme;
use hub::dhis2::period::Period;
use santerurale_shared::SiteId;
use time::macros::{date, datetime};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::support::TestDb;

struct Fixture {
    pool: Pool,
    kati: SiteId,
    siby: SiteId,
    empty: SiteId,
}

async fn insert_site(pool: &Pool, code: &str, name: &str, org_unit: Option<(&str, &str)>) -> SiteId {
    let id = SiteId::new();
    let (uid, ou_code) = (org_unit.map(|o| o.0), org_unit.map(|o| o.1));
    pool.get()
        .await
        .expect("connection")
        .execute(
            "INSERT INTO sites (id, name, code, dhis2_org_unit, dhis2_org_unit_code) VALUES ($1, $2, $3, $4, $5)",
            &[id.as_uuid(), &name, &code, &uid, &ou_code],
        )
        .await
        .expect("insert site");
    id
}

async fn insert_device(pool: &Pool, site: SiteId) -> Uuid {
    let id = Uuid::now_v7();
    let key = rand::random::<[u8; 32]>().to_vec();
    pool.get()
        .await
        .expect("connection")
        .execute("INSERT INTO devices (id, site_id, public_key) VALUES ($1, $2, $3)", &[&id, site.as_uuid(), &key])
        .await
        .expect("insert device");
    id
}

/// A patient registered at `site` by `device` at `created_at`.
async fn insert_patient(
    pool: &Pool,
    (site, device): (SiteId, Uuid),
    sex: &str,
    birth_date: Date,
    estimated: bool,
    created_at: OffsetDateTime,
) -> Uuid {
    let id = Uuid::now_v7();
    let client = pool.get().await.expect("connection");
    client
        .execute("INSERT INTO documents (patient_id, doc) VALUES ($1, $2)", &[&id, &Vec::<u8>::new()])
        .await
        .expect("insert document");
    client
        .execute(
            "INSERT INTO patients (id, site_id, given_name, family_name, sex, birth_date, birth_date_estimated,
                                   village, whatsapp_consent, created_at, updated_at, last_device_id, search)
             VALUES ($1, $2, 'Test', 'Patient', $3, $4, $5, 'Kati', false, $6, $6, $7, 'test patient')",
            &[&id, site.as_uuid(), &sex, &birth_date, &estimated, &created_at, &device],
        )
        .await
        .expect("insert patient");
    id
}

/// An encounter recorded at `site` and synced to the hub at `recorded_at`
/// (the evening of its date when `None`).
async fn insert_encounter(
    pool: &Pool,
    patient: Uuid,
    (site, device): (SiteId, Uuid),
    date: Date,
    kind: &str,
    recorded_at: Option<OffsetDateTime>,
) {
    let recorded_at = recorded_at.unwrap_or_else(|| date.with_hms(18, 0, 0).expect("time").assume_utc());
    pool.get()
        .await
        .expect("connection")
        .execute(
            "INSERT INTO encounters (id, patient_id, site_id, device_id, date, kind, complaint, diagnosis, notes,
                                     clinician, age_group, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, '', '', '', 'Dr Test', 'adult', $7)",
            &[&Uuid::now_v7(), &patient, site.as_uuid(), &device, &date, &kind, &recorded_at],
        )
        .await
        .expect("insert encounter");
}

async fn fixture(db: &TestDb) -> Fixture {
    let pool = db.migrated_pool().await;
    let kati = insert_site(&pool, "KATI", "CSCom Kati", Some(("ouKati00001", "OU_KATI"))).await;
    let siby = insert_site(&pool, "SIBY", "CSCom Siby", Some(("ouSiby00001", "OU_SIBY"))).await;
    let empty = insert_site(&pool, "EMPTY", "CSCom sans données", None).await;
    let at_kati = (kati, insert_device(&pool, kati).await);
    let at_siby = (siby, insert_device(&pool, siby).await);
    let p = &pool;

    // Turns 5 on 2024-03-15: under 5 the day before, 5 on the day.
    let awa = insert_patient(p, at_kati, "female", date!(2019 - 03 - 15), false, datetime!(2023-06-01 9:00 UTC)).await;
    insert_encounter(p, awa, at_kati, date!(2024 - 03 - 14), "consultation", None).await;
    insert_encounter(p, awa, at_kati, date!(2024 - 03 - 15), "consultation", None).await;
    // Turns 1 on 2024-03-20: under 1 the day before.
    let bakary =
        insert_patient(p, at_kati, "male", date!(2023 - 03 - 20), false, datetime!(2023-03-25 10:00 UTC)).await;
    insert_encounter(p, bakary, at_kati, date!(2024 - 03 - 19), "consultation", None).await;
    insert_encounter(p, bakary, at_kati, date!(2024 - 03 - 20), "follow_up", None).await;
    // Estimated birth date, taken as given: 5 in March 2024. The last day of
    // February is not March; the first and last days of March are.
    let coumba =
        insert_patient(p, at_kati, "female", date!(2019 - 01 - 01), true, datetime!(2023-01-05 10:00 UTC)).await;
    insert_encounter(p, coumba, at_kati, date!(2024 - 02 - 29), "consultation", None).await;
    insert_encounter(p, coumba, at_kati, date!(2024 - 03 - 01), "consultation", None).await;
    insert_encounter(p, coumba, at_kati, date!(2024 - 03 - 31), "vaccination", None).await;
    // Registered at KATI in March, also seen at SIBY: an encounter at each,
    // a new patient at KATI only.
    let drissa =
        insert_patient(p, at_kati, "male", date!(1990 - 06 - 10), false, datetime!(2024-03-10 23:30 UTC)).await;
    insert_encounter(p, drissa, at_kati, date!(2024 - 03 - 10), "consultation", None).await;
    insert_encounter(p, drissa, at_siby, date!(2024 - 03 - 22), "consultation", None).await;
    // Registered at SIBY in February: not new in March. Her antenatal visit
    // of 03-31 reached the hub on 04-03, after March closed: still March.
    let fanta =
        insert_patient(p, at_siby, "female", date!(1998 - 02 - 02), false, datetime!(2024-02-28 8:00 UTC)).await;
    insert_encounter(p, fanta, at_siby, date!(2024 - 03 - 05), "antenatal", None).await;
    insert_encounter(p, fanta, at_siby, date!(2024 - 03 - 31), "antenatal", Some(datetime!(2024-04-03 7:00 UTC))).await;
    insert_encounter(p, fanta, at_siby, date!(2024 - 04 - 01), "consultation", None).await;
    // Registered in the last second of March, consultation synced in April.
    let gaoussou =
        insert_patient(p, at_kati, "male", date!(2010 - 07 - 01), false, datetime!(2024-03-31 23:59:59 UTC)).await;
    insert_encounter(
        p,
        gaoussou,
        at_kati,
        date!(2024 - 03 - 31),
        "consultation",
        Some(datetime!(2024-04-05 12:00 UTC)),
    )
    .await;
    // Registered at the first instant of April.
    let hawa = insert_patient(p, at_kati, "female", date!(2017 - 11 - 30), false, datetime!(2024-04-01 0:00 UTC)).await;
    insert_encounter(p, hawa, at_kati, date!(2024 - 04 - 01), "consultation", None).await;
    // Registered at the first instant of March at SIBY, vaccinated that day.
    let ina = insert_patient(p, at_siby, "female", date!(2024 - 01 - 15), false, datetime!(2024-03-01 0:00 UTC)).await;
    insert_encounter(p, ina, at_siby, date!(2024 - 03 - 01), "vaccination", None).await;

    Fixture { pool, kati, siby, empty }
}

/// The values by `(data element code, category option combo code)`.
fn by_code(values: &[IndicatorValue]) -> HashMap<(String, String), u64> {
    values.iter().map(|v| ((v.data_element_code.clone(), v.category_option_combo_code.clone()), v.value)).collect()
}

/// The expected values, in the default mapping's order: CONS_TOTAL, CONS_U5,
/// CONS_SEX F, M, CONS_AGE <1, 1-4, 5-14, 15+, ANC_VISITS, VACC_VISITS,
/// NEW_PATIENTS.
fn expected(counts: [u64; 11]) -> HashMap<(String, String), u64> {
    let keys = [
        ("CONS_TOTAL", "default"),
        ("CONS_U5", "default"),
        ("CONS_SEX", "SEX_F"),
        ("CONS_SEX", "SEX_M"),
        ("CONS_AGE", "AGE_LT1"),
        ("CONS_AGE", "AGE_1_4"),
        ("CONS_AGE", "AGE_5_14"),
        ("CONS_AGE", "AGE_15P"),
        ("ANC_VISITS", "default"),
        ("VACC_VISITS", "default"),
        ("NEW_PATIENTS", "default"),
    ];
    keys.iter().zip(counts).map(|((de, coc), n)| ((de.to_string(), coc.to_string()), n)).collect()
}

// KATI, March 2024, counted by hand from the table above:
// consultations awa x2, bakary x2, coumba 03-01, drissa, gaoussou = 7;
// under 5: awa 03-14 (4), bakary x2 (0, 1) = 3; female: awa x2, coumba = 3;
// male: bakary x2, drissa, gaoussou = 4; <1: bakary 03-19; 1-4: awa 03-14,
// bakary 03-20; 5-14: awa 03-15, coumba, gaoussou (13); 15+: drissa;
// antenatal 0; vaccination coumba 03-31; new: drissa, gaoussou.
const KATI_MARCH: [u64; 11] = [7, 3, 3, 4, 1, 2, 3, 1, 0, 1, 2];
// SIBY, March 2024: consultation drissa (male, 33); antenatal fanta x2 (the
// late one included); vaccination ina; new: ina.
const SIBY_MARCH: [u64; 11] = [1, 0, 0, 1, 0, 0, 0, 1, 2, 1, 1];
// April: KATI hawa (female, 6) and her registration; SIBY fanta's
// consultation (female, 26). Nothing of March spills over.
const KATI_APRIL: [u64; 11] = [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
const SIBY_APRIL: [u64; 11] = [1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0];

#[tokio::test]
async fn counts_match_the_hand_counted_fixture() {
    let db = TestDb::new().await;
    let f = fixture(&db).await;
    let mapping = Mapping::default_mapping();
    let march = Period::parse("202403").expect("period");
    let april = Period::parse("202404").expect("period");

    let kati = aggregate::site_values(&f.pool, &mapping, f.kati, march).await.expect("kati");
    assert_eq!(kati.len(), 11, "every indicator has a value");
    assert_eq!(kati[0].indicator, "Consultations");
    assert_eq!(by_code(&kati), expected(KATI_MARCH), "KATI March");
    let siby = aggregate::site_values(&f.pool, &mapping, f.siby, march).await.expect("siby");
    assert_eq!(by_code(&siby), expected(SIBY_MARCH), "SIBY March");
    let empty = aggregate::site_values(&f.pool, &mapping, f.empty, march).await.expect("empty");
    assert_eq!(by_code(&empty), expected([0; 11]), "a site without encounters reports zeros");

    let kati_april = aggregate::site_values(&f.pool, &mapping, f.kati, april).await.expect("kati april");
    assert_eq!(by_code(&kati_april), expected(KATI_APRIL), "KATI April");
    let siby_april = aggregate::site_values(&f.pool, &mapping, f.siby, april).await.expect("siby april");
    assert_eq!(by_code(&siby_april), expected(SIBY_APRIL), "SIBY April");

    // The all-sites query gives the same numbers, every site, ordered by code.
    let all = aggregate::all_site_values(&f.pool, &mapping, march).await.expect("all sites");
    let ids: Vec<SiteId> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [f.empty, f.kati, f.siby]);
    assert_eq!(all[1].1, kati);
    assert_eq!(all[2].1, siby);
    assert_eq!(by_code(&all[0].1), expected([0; 11]));
}

#[tokio::test]
async fn age_filters_other_than_the_defaults_are_exact() {
    let db = TestDb::new().await;
    let f = fixture(&db).await;
    // Bounds the default does not use (2, 14, 30): the bands follow the mapping.
    let mapping = Mapping::parse(
        r#"
        [data_set]
        code = "SR_MONTHLY"
        [[indicators]]
        name = "2 to 13"
        data_element = { code = "A" }
        category_option_combo = { code = "default" }
        count = "encounters"
        filter = { min_age_years = 2, max_age_years = 14 }
        [[indicators]]
        name = "30 and over, female"
        data_element = { code = "B" }
        category_option_combo = { code = "default" }
        count = "encounters"
        filter = { min_age_years = 30, sex = "female" }
        [[indicators]]
        name = "new under 30"
        data_element = { code = "C" }
        category_option_combo = { code = "default" }
        count = "new_patients"
        filter = { max_age_years = 30 }
        "#,
    )
    .expect("mapping");
    mapping.validate().expect("valid");
    let march = Period::parse("202403").expect("period");
    let kati = aggregate::site_values(&f.pool, &mapping, f.kati, march).await.expect("kati");
    // 2..14 at KATI: awa 4 and 5, coumba 5 twice (consultation, vaccination),
    // gaoussou 13 = 5; women 30+: none; new under 30: gaoussou (13).
    assert_eq!(kati.iter().map(|v| v.value).collect::<Vec<_>>(), [5, 0, 1]);
    let siby = aggregate::site_values(&f.pool, &mapping, f.siby, march).await.expect("siby");
    // SIBY: nobody 2..13; women 30+: none (fanta is 26); new under 30: ina.
    assert_eq!(siby.iter().map(|v| v.value).collect::<Vec<_>>(), [0, 0, 1]);
}

#[tokio::test]
async fn weekly_periods_count_monday_to_sunday() {
    let db = TestDb::new().await;
    let f = fixture(&db).await;
    let mapping = Mapping::parse(
        r#"
        [data_set]
        code = "SR_WEEKLY"
        period_type = "Weekly"
        [[indicators]]
        name = "consultations"
        data_element = { code = "A" }
        category_option_combo = { code = "default" }
        count = "encounters"
        filter = { kinds = ["consultation", "follow_up"] }
        [[indicators]]
        name = "new patients"
        data_element = { code = "B" }
        category_option_combo = { code = "default" }
        count = "new_patients"
        [[indicators]]
        name = "antenatal"
        data_element = { code = "C" }
        category_option_combo = { code = "default" }
        count = "encounters"
        filter = { kinds = ["antenatal"] }
        "#,
    )
    .expect("mapping");
    mapping.validate().expect("valid");
    let values = |site, period: &str| {
        let pool = f.pool.clone();
        let mapping = mapping.clone();
        let period = Period::parse(period).expect("period");
        async move {
            let v = aggregate::site_values(&pool, &mapping, site, period).await.expect("values");
            v.iter().map(|v| v.value).collect::<Vec<_>>()
        }
    };
    // 2024W10 is Monday 03-04 to Sunday 03-10: Drissa, registered at KATI on
    // Sunday 03-10 at 23:30 and seen that day; Fanta's antenatal visit of
    // 03-05 at SIBY.
    assert_eq!(values(f.kati, "2024W10").await, [1, 1, 0]);
    assert_eq!(values(f.siby, "2024W10").await, [0, 0, 1]);
    // 2024W11 (03-11 to 03-17): Awa on the 14th and 15th; Bakary's visit of
    // Tuesday 03-19 is in W12.
    assert_eq!(values(f.kati, "2024W11").await, [2, 0, 0]);
    assert_eq!(values(f.kati, "2024W12").await, [2, 0, 0]);
}

#[tokio::test]
async fn export_sites_and_unknown_site() {
    let db = TestDb::new().await;
    let f = fixture(&db).await;
    let all = aggregate::export_sites(&f.pool, None).await.expect("sites");
    assert_eq!(all.iter().map(|s| s.code.as_str()).collect::<Vec<_>>(), ["EMPTY", "KATI", "SIBY"]);
    let kati = aggregate::export_sites(&f.pool, Some(f.kati)).await.expect("kati");
    assert_eq!(
        kati,
        [ExportSite {
            id: f.kati,
            code: "KATI".into(),
            name: "CSCom Kati".into(),
            org_unit: Some("ouKati00001".into()),
            org_unit_code: Some("OU_KATI".into()),
        }]
    );
    let nobody = SiteId::new();
    let err = aggregate::export_sites(&f.pool, Some(nobody)).await.expect_err("unknown site");
    assert!(matches!(err, AggregateError::SiteNotFound(id) if id == nobody), "{err:?}");
    let err = aggregate::site_values(&f.pool, &Mapping::default_mapping(), nobody, Period::parse("202403").expect("p"))
        .await
        .expect_err("unknown site");
    assert!(matches!(err, AggregateError::SiteNotFound(_)), "{err:?}");
}

fn example_mapping() -> Mapping {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/dhis2/mapping.example.toml");
    Mapping::parse(&std::fs::read_to_string(path).expect("read the example")).expect("parse the example")
}

#[tokio::test]
async fn payloads_by_uid_and_by_code() {
    let db = TestDb::new().await;
    let f = fixture(&db).await;
    let march = Period::parse("202403").expect("period");
    let sites = aggregate::export_sites(&f.pool, None).await.expect("sites");
    let site = |id: SiteId| sites.iter().find(|s| s.id == id).expect("site");

    // By uid, with the resolved example mapping.
    let mapping = example_mapping();
    let values = aggregate::site_values(&f.pool, &mapping, f.kati, march).await.expect("values");
    let set = aggregate::build_payload(&mapping, site(f.kati), march, &values, date!(2024 - 04 - 02)).expect("ready");
    let json = serde_json::to_value(&set).expect("json");
    assert_eq!(json["dataSet"], "srMonthly01");
    assert_eq!(json["period"], "202403");
    assert_eq!(json["orgUnit"], "ouKati00001");
    assert_eq!(json["completeDate"], "2024-04-02");
    let sent: Vec<(String, String, String)> = set
        .data_values
        .iter()
        .map(|v| (v.data_element.clone(), v.category_option_combo.clone(), v.value.clone()))
        .collect();
    let uid_expected = [
        ("deConsTot01", "HllvX50cXC0", "7"),
        ("deConsU5001", "HllvX50cXC0", "3"),
        ("deConsSex01", "cocSexF0001", "3"),
        ("deConsSex01", "cocSexM0001", "4"),
        ("deConsAge01", "cocAgeLt101", "1"),
        ("deConsAge01", "cocAge14001", "2"),
        ("deConsAge01", "cocAge51401", "3"),
        ("deConsAge01", "cocAge15P01", "1"),
        ("deAncVisit1", "HllvX50cXC0", "0"),
        ("deVaccVis01", "HllvX50cXC0", "1"),
        ("deNewPats01", "HllvX50cXC0", "2"),
    ];
    let uid_expected: Vec<(String, String, String)> =
        uid_expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(sent, uid_expected);

    // By code: codes, and the site's org unit code; no uid needed.
    let mut by_code = Mapping::default_mapping();
    by_code.id_scheme = IdScheme::Code;
    let values = aggregate::site_values(&f.pool, &by_code, f.siby, march).await.expect("values");
    let set = aggregate::build_payload(&by_code, site(f.siby), march, &values, date!(2024 - 04 - 02)).expect("ready");
    assert_eq!(
        (set.data_set.as_str(), set.org_unit.as_str(), set.period.as_str()),
        ("SR_MONTHLY", "OU_SIBY", "202403")
    );
    let anc = set.data_values.iter().find(|v| v.data_element == "ANC_VISITS").expect("ANC");
    assert_eq!((anc.category_option_combo.as_str(), anc.value.as_str()), ("default", "2"));
    assert_eq!(set.data_values.len(), 11);

    // Not ready: a site without org unit, a mapping without uids.
    let values = aggregate::site_values(&f.pool, &mapping, f.empty, march).await.expect("values");
    let err = aggregate::build_payload(&mapping, site(f.empty), march, &values, date!(2024 - 04 - 02))
        .expect_err("no org unit");
    let AggregateError::NotReady(missing) = err else { panic!("expected NotReady, got {err:?}") };
    assert_eq!(
        missing,
        ["site EMPTY (CSCom sans données) has no DHIS2 org unit uid: set its org unit code and resolve the mapping"]
    );
    let unresolved = Mapping::default_mapping();
    let err = aggregate::build_payload(&unresolved, site(f.kati), march, &values, date!(2024 - 04 - 02))
        .expect_err("no uids");
    let AggregateError::NotReady(missing) = err else { panic!("expected NotReady, got {err:?}") };
    assert_eq!(missing.len(), unresolved.missing_uids().len(), "{missing:?}");
    assert!(missing.iter().any(|m| m == "data element NEW_PATIENTS has no uid: resolve the mapping"), "{missing:?}");
}
