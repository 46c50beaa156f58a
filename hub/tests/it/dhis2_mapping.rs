//! The DHIS2 mapping (issue 4): the documented example matches the shipped
//! default, and where the mapping in force comes from (saved copy, file,
//! default), on a real PostgreSQL.

use hub::config::Dhis2Config;
use hub::dhis2::mapping::{self, Mapping, MappingError, MappingSource};
use hub::dhis2::payload::IdScheme;
use uuid::Uuid;

use crate::support::TestDb;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/dhis2/mapping.example.toml");

fn without_uids(mut m: Mapping) -> Mapping {
    m.data_set.uid = None;
    for ind in &mut m.indicators {
        ind.data_element.uid = None;
        ind.category_option_combo.uid = None;
    }
    m
}

#[test]
fn the_example_is_the_default_resolved() {
    let example = mapping::load_file(EXAMPLE.as_ref()).expect("the example parses and validates");
    assert!(example.missing_uids().is_empty(), "{:?}", example.missing_uids());
    assert_eq!(example.data_set.uid.as_deref(), Some("srMonthly01"));
    assert_eq!(without_uids(example.clone()), Mapping::default_mapping());
    // The uids of the fake DHIS2, one per code.
    let uid_of = |code: &str| {
        example
            .indicators
            .iter()
            .find_map(|i| (i.data_element.code == code).then(|| i.data_element.uid.clone()).flatten())
            .unwrap_or_else(|| panic!("no {code}"))
    };
    assert_eq!(uid_of("CONS_TOTAL"), "deConsTot01");
    assert_eq!(uid_of("NEW_PATIENTS"), "deNewPats01");
    let coc = |code: &str| {
        example
            .indicators
            .iter()
            .find_map(|i| (i.category_option_combo.code == code).then(|| i.category_option_combo.uid.clone()).flatten())
            .unwrap_or_else(|| panic!("no {code}"))
    };
    assert_eq!(
        ["default", "SEX_F", "SEX_M", "AGE_LT1", "AGE_1_4", "AGE_5_14", "AGE_15P"].map(coc),
        ["HllvX50cXC0", "cocSexF0001", "cocSexM0001", "cocAgeLt101", "cocAge14001", "cocAge51401", "cocAge15P01"]
    );
}

async fn insert_admin(db: &deadpool_postgres::Pool) -> Uuid {
    let id = Uuid::now_v7();
    db.get()
        .await
        .expect("connection")
        .execute("INSERT INTO users (id, username, password_hash, role) VALUES ($1, 'mapper', 'x', 'admin')", &[&id])
        .await
        .expect("insert user");
    id
}

#[tokio::test]
async fn load_prefers_the_saved_copy_then_the_file_then_the_default() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let dir = tempfile::tempdir().expect("tempdir");

    // Nothing saved, no file: the shipped default.
    let loaded = mapping::load(&pool, &Dhis2Config::default()).await.expect("default");
    assert_eq!(loaded.source, MappingSource::Default);
    assert_eq!(loaded.mapping, Mapping::default_mapping());

    // A file (here JSON) when configured.
    let mut from_file = Mapping::default_mapping();
    from_file.id_scheme = IdScheme::Code;
    from_file.indicators.truncate(3);
    let path = dir.path().join("mapping.json");
    std::fs::write(&path, serde_json::to_string_pretty(&from_file).expect("json")).expect("write");
    let config = Dhis2Config { mapping_file: Some(path.clone()), ..Dhis2Config::default() };
    let loaded = mapping::load(&pool, &config).await.expect("file");
    assert_eq!(loaded.source, MappingSource::File(path.clone()));
    assert_eq!(loaded.mapping, from_file);

    // A saved copy wins over the file, with who saved it and when.
    let admin = insert_admin(&pool).await;
    let saved = mapping::load_file(EXAMPLE.as_ref()).expect("example");
    mapping::save(&pool, &saved, Some(admin)).await.expect("save");
    let loaded = mapping::load(&pool, &config).await.expect("saved");
    assert!(matches!(loaded.source, MappingSource::Database { .. }), "{:?}", loaded.source);
    assert_eq!(loaded.mapping, saved);
    let by: Option<Uuid> = pool
        .get()
        .await
        .expect("connection")
        .query_one("SELECT updated_by FROM dhis2_mapping", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(by, Some(admin));

    // Saving again replaces it (one row).
    mapping::save(&pool, &from_file, None).await.expect("save again");
    let loaded = mapping::load(&pool, &Dhis2Config::default()).await.expect("saved");
    assert_eq!(loaded.mapping, from_file);

    // Reset: back to the file.
    mapping::reset(&pool).await.expect("reset");
    let loaded = mapping::load(&pool, &config).await.expect("file again");
    assert_eq!(loaded.source, MappingSource::File(path));
}

#[tokio::test]
async fn save_refuses_an_invalid_mapping_and_keeps_the_previous_one() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let good = Mapping::default_mapping();
    mapping::save(&pool, &good, None).await.expect("save");
    let mut bad = good.clone();
    bad.indicators[1].filter.sex = Some("x".into());
    bad.indicators[3].category_option_combo = bad.indicators[2].category_option_combo.clone();
    let err = mapping::save(&pool, &bad, None).await.expect_err("invalid");
    let MappingError::Invalid(problems) = &err else { panic!("expected Invalid, got {err:?}") };
    assert_eq!(
        problems,
        &[
            "indicators[1].filter.sex: unknown sex \"x\" (expected female or male)",
            "indicators[3]: indicators[2] already goes to data element CONS_SEX with category option combo SEX_F",
        ]
    );
    assert_eq!(err.problems(), *problems);
    let loaded = mapping::load(&pool, &Dhis2Config::default()).await.expect("load");
    assert_eq!(loaded.mapping, good);
}

#[tokio::test]
async fn a_broken_file_is_an_error_naming_the_file() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let dir = tempfile::tempdir().expect("tempdir");

    let missing = dir.path().join("nope.toml");
    let config = Dhis2Config { mapping_file: Some(missing.clone()), ..Dhis2Config::default() };
    let err = mapping::load(&pool, &config).await.expect_err("missing file");
    assert!(matches!(&err, MappingError::Read { path, .. } if *path == missing), "{err:?}");
    assert!(err.to_string().contains("nope.toml"), "{err}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[data_set]\ncode = \"SR_MONTHLY\"\n[[indicators]]\nname = \"x\"\n").expect("write");
    let config = Dhis2Config { mapping_file: Some(broken.clone()), ..Dhis2Config::default() };
    let err = mapping::load(&pool, &config).await.expect_err("broken file");
    assert!(err.to_string().contains("broken.toml"), "{err}");
    assert!(matches!(&err, MappingError::File { source, .. } if matches!(**source, MappingError::Toml(_))), "{err:?}");
    assert!(err.problems()[0].contains("data_element"), "{:?}", err.problems());

    let invalid = dir.path().join("invalid.toml");
    let text = Mapping::default_mapping().to_toml().replace("\"follow_up\"", "\"followup\"");
    std::fs::write(&invalid, text).expect("write");
    let config = Dhis2Config { mapping_file: Some(invalid), ..Dhis2Config::default() };
    let err = mapping::load(&pool, &config).await.expect_err("invalid file");
    assert!(err.to_string().contains("invalid.toml"), "{err}");
    assert!(
        err.problems().iter().all(|p| p.contains("unknown encounter kind \"followup\"")) && err.problems().len() == 8,
        "{:?}",
        err.problems()
    );
}
