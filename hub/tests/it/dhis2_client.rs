//! The DHIS2 client and the mapping resolver against the fake DHIS2
//! (`santerurale_fixtures::dhis2`), over real HTTP on loopback: both answer
//! generations, conflicts, dry runs, both kinds of credentials, and each way
//! of failing.

use std::time::{Duration, Instant};

use hub::config::{Dhis2Config, Secret};
use hub::dhis2::client::{Dhis2Client, Dhis2Error, ImportOptions};
use hub::dhis2::mapping::Mapping;
use hub::dhis2::payload::{DataValue, DataValueSet, IdScheme, ImportCount, ImportStatus};
use hub::dhis2::period::PeriodType;
use hub::dhis2::resolve;
use santerurale_fixtures::dhis2::{DEFAULT_COC, Failure, FakeDhis2, Generation, Metadata, PASSWORD, TOKEN, USERNAME};

use crate::support::TestDb;

fn basic(fake: &FakeDhis2) -> Dhis2Config {
    Dhis2Config {
        url: Some(fake.url()),
        username: Some(USERNAME.into()),
        password: Some(Secret(PASSWORD.into())),
        ..Dhis2Config::default()
    }
}

fn client(config: &Dhis2Config) -> Dhis2Client {
    Dhis2Client::new(config).expect("client")
}

fn value(data_element: &str, coc: &str, value: u64) -> DataValue {
    DataValue {
        data_element: data_element.into(),
        category_option_combo: coc.into(),
        value: value.to_string(),
        comment: None,
    }
}

/// A month of one clinic, in uids: seven values.
fn payload(org_unit: &str, period: &str) -> DataValueSet {
    DataValueSet {
        data_set: "srMonthly01".into(),
        complete_date: Some("2024-02-02".into()),
        period: period.into(),
        org_unit: org_unit.into(),
        data_values: vec![
            value("deConsTot01", DEFAULT_COC, 41),
            value("deConsU5001", DEFAULT_COC, 17),
            value("deConsSex01", "cocSexF0001", 25),
            value("deConsSex01", "cocSexM0001", 16),
            value("deConsAge01", "cocAgeLt101", 6),
            value("deAncVisit1", DEFAULT_COC, 9),
            value("deNewPats01", DEFAULT_COC, 0),
        ],
    }
}

const POST: ImportOptions = ImportOptions { dry_run: false, id_scheme: IdScheme::Uid };

#[tokio::test]
async fn both_generations_are_read_to_the_same_counts() {
    let mut answers = Vec::new();
    for generation in [Generation::V2_37, Generation::V2_40] {
        let fake = FakeDhis2::start_with(Metadata::default(), generation).await;
        let c = client(&basic(&fake));
        let first = c.post_data_value_set(&payload("ouKati00001", "202401"), POST).await.expect("import");
        assert_eq!(first.http_status, 200);
        assert_eq!(first.summary.status, ImportStatus::Success);
        assert_eq!(first.summary.import_count, ImportCount { imported: 7, updated: 0, ignored: 0, deleted: 0 });
        // The body is kept as received, in its generation's shape.
        match generation {
            Generation::V2_37 => assert_eq!(first.body["responseType"], "ImportSummary"),
            Generation::V2_40 => assert_eq!(first.body["response"]["responseType"], "ImportSummary"),
        }
        assert_eq!(fake.value("ouKati00001", "202401", "deConsSex01", "cocSexF0001").as_deref(), Some("25"));

        // A value for the wrong combo: partly imported, with a conflict.
        let mut bad = payload("ouKati00001", "202401");
        bad.data_values.push(value("deConsTot01", "cocSexM0001", 3));
        let second = c.post_data_value_set(&bad, POST).await.expect("an answer, even with conflicts");
        assert_eq!(second.summary.status, ImportStatus::Warning);
        assert_eq!(second.summary.import_count, ImportCount { imported: 0, updated: 7, ignored: 1, deleted: 0 });
        assert_eq!(second.summary.conflicts.len(), 1);
        assert_eq!(second.summary.conflicts[0].object, "cocSexM0001");
        answers.push((generation, second));
    }
    let (old, new) = (&answers[0].1, &answers[1].1);
    assert_eq!(old.http_status, 200, "2.37 answers 200 even with conflicts");
    assert_eq!(new.http_status, 409, "2.38+ answers 409 with conflicts");
    assert_eq!(old.summary.conflicts[0].error_code, None, "old conflicts carry no code");
    assert_eq!(new.summary.conflicts[0].error_code.as_deref(), Some("E7634"));
    assert_eq!(new.summary.conflicts[0].message, old.summary.conflicts[0].message);
    assert_eq!(old.summary.import_count, new.summary.import_count);
}

#[tokio::test]
async fn conflicts_of_a_409_keep_their_codes_and_nothing_rejected_is_stored() {
    let fake = FakeDhis2::start().await;
    let c = client(&basic(&fake));

    // An org unit outside the data set: every value refused (E7636), the
    // bad combination first for its own reason (E7634).
    let mut unassigned = payload("ouNotAssig1", "202401");
    unassigned.data_values.push(value("deConsTot01", "cocSexM0001", 3));
    let answer = c.post_data_value_set(&unassigned, POST).await.expect("answer");
    assert_eq!(answer.http_status, 409);
    assert_eq!(answer.summary.status, ImportStatus::Warning);
    assert_eq!(answer.summary.import_count, ImportCount { imported: 0, updated: 0, ignored: 8, deleted: 0 });
    let codes: Vec<_> = answer.summary.conflicts.iter().map(|c| c.error_code.as_deref().unwrap_or("")).collect();
    assert_eq!(codes, ["E7636", "E7634"], "grouped by code and object: {:?}", answer.summary.conflicts);
    assert_eq!(answer.summary.conflicts[0].object, "ouNotAssig1");
    assert!(answer.summary.conflicts[0].message.contains("must be assigned through data sets"));
    assert_eq!(answer.body["response"]["rejectedIndexes"].as_array().map(Vec::len), Some(8));

    // A locked period.
    fake.lock_period("202402");
    let answer = c.post_data_value_set(&payload("ouKati00001", "202402"), POST).await.expect("answer");
    assert_eq!(answer.http_status, 409);
    let conflict = &answer.summary.conflicts[0];
    assert_eq!((conflict.error_code.as_deref(), conflict.object.as_str()), (Some("E7640"), "202402"));
    assert_eq!(conflict.property.as_deref(), Some("period"));
    assert_eq!(answer.summary.import_count.ignored, 7);
    assert!(fake.stored_values().is_empty(), "{:?}", fake.stored_values());

    // An org unit DHIS2 does not know aborts the whole import.
    let answer = c.post_data_value_set(&payload("ouNowhere01", "202401"), POST).await.expect("answer");
    assert_eq!((answer.http_status, answer.summary.status), (409, ImportStatus::Error));
    assert_eq!(answer.summary.conflicts[0].error_code.as_deref(), Some("E7603"));
}

#[tokio::test]
async fn a_dry_run_stores_nothing_and_codes_work_as_ids() {
    let fake = FakeDhis2::start().await;
    let c = client(&basic(&fake));
    let dry = c
        .post_data_value_set(&payload("ouKati00001", "202401"), ImportOptions { dry_run: true, ..POST })
        .await
        .expect("dry run");
    assert_eq!(dry.summary.import_count.imported, 7);
    assert!(fake.stored_values().is_empty());
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/api/dataValueSets");
    assert_eq!(received[0].query.get("dryRun").map(String::as_str), Some("true"));
    assert_eq!(received[0].query.get("idScheme").map(String::as_str), Some("UID"));
    assert_eq!(received[0].query.get("importStrategy").map(String::as_str), Some("CREATE_AND_UPDATE"));
    assert_eq!(received[0].body, serde_json::to_value(payload("ouKati00001", "202401")).expect("json"));

    // The same month by code.
    let by_code = DataValueSet {
        data_set: "SR_MONTHLY".into(),
        complete_date: None,
        period: "202401".into(),
        org_unit: "OU_SIBY".into(),
        data_values: vec![value("CONS_TOTAL", "default", 5), value("CONS_AGE", "AGE_15P", 2)],
    };
    let answer = c
        .post_data_value_set(&by_code, ImportOptions { dry_run: false, id_scheme: IdScheme::Code })
        .await
        .expect("import by code");
    assert_eq!(answer.summary.import_count.imported, 2);
    assert_eq!(fake.received()[1].query.get("dryRun").map(String::as_str), Some("false"));
    assert_eq!(fake.value("ouSiby00001", "202401", "deConsAge01", "cocAge15P01").as_deref(), Some("2"));
}

#[tokio::test]
async fn basic_and_token_credentials_are_sent_as_dhis2_wants_them() {
    let fake = FakeDhis2::start().await;
    client(&basic(&fake)).post_data_value_set(&payload("ouKati00001", "202401"), POST).await.expect("basic");
    let token = Dhis2Config { url: Some(fake.url()), token: Some(Secret(TOKEN.into())), ..Dhis2Config::default() };
    let answer = client(&token).post_data_value_set(&payload("ouKati00001", "202401"), POST).await.expect("token");
    assert_eq!(answer.summary.import_count.updated, 7);
    let received = fake.received();
    assert!(received[0].authorization.as_deref().is_some_and(|a| a.starts_with("Basic ")), "{received:?}");
    assert_eq!(received[1].authorization.as_deref(), Some(format!("ApiToken {TOKEN}").as_str()));

    // A wrong password, then an expired token: 401, final.
    let wrong = Dhis2Config { password: Some(Secret("wrong".into())), ..basic(&fake) };
    let e = client(&wrong).post_data_value_set(&payload("ouKati00001", "202401"), POST).await.expect_err("401");
    assert!(matches!(e, Dhis2Error::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!((e.code(), e.http_status()), ("unauthorized", Some(401)));
    assert_eq!(e.response_body().and_then(|b| b["httpStatusCode"].as_u64()), Some(401));
    fake.expire_token(TOKEN);
    let e = client(&token).data_sets_by_code(&["SR_MONTHLY".into()]).await.expect_err("expired");
    assert_eq!(e.code(), "unauthorized");
    assert_eq!(fake.received().last().map(|r| r.answered_status), Some(401));
}

#[tokio::test]
async fn failures_are_classified_for_retrying() {
    let fake = FakeDhis2::start().await;
    let c = client(&basic(&fake));
    let set = payload("ouKati00001", "202401");

    fake.fail_next(1, Failure::Status(503));
    let e = c.post_data_value_set(&set, POST).await.expect_err("503");
    assert!(matches!(e, Dhis2Error::ServerError { status: 503, .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(e.response_body().and_then(|b| b.as_str()).is_some_and(|page| page.contains("503")), "{e:?}");

    fake.fail_next(1, Failure::Close);
    let e = c.post_data_value_set(&set, POST).await.expect_err("closed");
    assert_eq!((e.code(), e.is_retryable()), ("unreachable", true), "{e:?}");

    let quick = Dhis2Config { request_timeout_seconds: 1, ..basic(&fake) };
    fake.fail_next(1, Failure::Hang(Duration::from_secs(60)));
    let started = Instant::now();
    let e = client(&quick).post_data_value_set(&set, POST).await.expect_err("timeout");
    assert!(matches!(e, Dhis2Error::Timeout(_)), "{e:?}");
    assert!(e.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // Nothing got through, then DHIS2 is back.
    assert!(fake.stored_values().is_empty());
    let answer = c.post_data_value_set(&set, POST).await.expect("back");
    assert_eq!(answer.summary.import_count.imported, 7);
    let statuses: Vec<u16> = fake.received().iter().map(|r| r.answered_status).collect();
    assert_eq!(statuses, [503, 0, 504, 200]);

    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let gone = Dhis2Config { url: Some(closed), ..basic(&fake) };
    let e = client(&gone).post_data_value_set(&set, POST).await.expect_err("refused");
    assert!(matches!(e, Dhis2Error::Unreachable(_)), "{e:?}");
    assert!(e.is_retryable());
}

#[tokio::test]
async fn metadata_is_looked_up_by_code_in_batches() {
    let fake = FakeDhis2::start().await;
    let c = client(&basic(&fake));
    let mut codes: Vec<String> = (0..120).map(|i| format!("UNKNOWN_{i}")).collect();
    codes.push("CONS_SEX".into());
    codes.insert(0, "CONS_TOTAL".into());
    let elements = c.data_elements_by_code(&codes).await.expect("elements");
    let found: Vec<_> = elements.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(found, ["deConsTot01", "deConsSex01"]);
    let sex = &elements[1];
    let cocs: Vec<_> = sex.category_option_combos.iter().map(|c| (c.code.as_deref(), c.id.as_str())).collect();
    assert_eq!(cocs, [(Some("SEX_M"), "cocSexM0001"), (Some("SEX_F"), "cocSexF0001")]);
    let sets = c.data_sets_by_code(&["SR_MONTHLY".into()]).await.expect("sets");
    assert_eq!((sets[0].id.as_str(), sets[0].period_type.as_str()), ("srMonthly01", "Monthly"));
    let units = c.org_units_by_code(&["OU_SIBY".into(), "OU_NOPE".into()]).await.expect("org units");
    assert_eq!(units.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["ouSiby00001"]);
}

async fn add_site(pool: &deadpool_postgres::Pool, code: &str, org_unit_code: Option<&str>) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let db = pool.get().await.expect("connection");
    db.execute(
        "INSERT INTO sites (id, name, code, dhis2_org_unit_code) VALUES ($1, $2, $3, $4)",
        &[&id, &format!("CSCom {code}"), &code, &org_unit_code],
    )
    .await
    .expect("insert site");
    id
}

async fn org_unit_of(pool: &deadpool_postgres::Pool, site: uuid::Uuid) -> Option<String> {
    let db = pool.get().await.expect("connection");
    db.query_one("SELECT dhis2_org_unit FROM sites WHERE id = $1", &[&site]).await.expect("site").get(0)
}

#[tokio::test]
async fn the_resolver_fills_every_uid_of_the_shipped_mapping_and_the_sites() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let kati = add_site(&pool, "KATI", Some("OU_KATI")).await;
    let siby = add_site(&pool, "SIBY", Some("OU_SIBY")).await;
    let lost = add_site(&pool, "LOST", Some("OU_NOWHERE")).await;
    let bare = add_site(&pool, "BARE", None).await;
    let fake = FakeDhis2::start().await;
    let c = client(&basic(&fake));

    let shipped = Mapping::default_mapping();
    assert!(!shipped.missing_uids().is_empty(), "the shipped mapping has codes only");
    let report = resolve::resolve(&c, &shipped, &pool).await.expect("resolve");
    assert!(report.mapping.missing_uids().is_empty(), "{:?}", report.mapping.missing_uids());
    assert_eq!(report.mapping.data_set.uid.as_deref(), Some("srMonthly01"));
    for indicator in &report.mapping.indicators {
        let de = indicator.data_element.uid.as_deref().expect("element uid");
        let coc = indicator.category_option_combo.uid.as_deref().expect("coc uid");
        let expected_de = match indicator.data_element.code.as_str() {
            "CONS_TOTAL" => "deConsTot01",
            "CONS_U5" => "deConsU5001",
            "CONS_SEX" => "deConsSex01",
            "CONS_AGE" => "deConsAge01",
            "ANC_VISITS" => "deAncVisit1",
            "VACC_VISITS" => "deVaccVis01",
            "NEW_PATIENTS" => "deNewPats01",
            other => panic!("unexpected code {other}"),
        };
        assert_eq!(de, expected_de, "{indicator:?}");
        let expected_coc = match indicator.category_option_combo.code.as_str() {
            "default" => DEFAULT_COC,
            "SEX_F" => "cocSexF0001",
            "SEX_M" => "cocSexM0001",
            "AGE_LT1" => "cocAgeLt101",
            "AGE_1_4" => "cocAge14001",
            "AGE_5_14" => "cocAge51401",
            "AGE_15P" => "cocAge15P01",
            other => panic!("unexpected COC code {other}"),
        };
        assert_eq!(coc, expected_coc, "{indicator:?}");
    }
    // Only the org unit code DHIS2 does not know is missing.
    assert_eq!(report.missing.len(), 1, "{:?}", report.missing);
    assert_eq!((report.missing[0].kind, report.missing[0].code.as_str()), ("org_unit", "OU_NOWHERE"));
    assert!(report.missing[0].context.contains("LOST"));
    let resolved: Vec<_> = report.sites_resolved.iter().map(|(_, code, uid)| (code.as_str(), uid.as_str())).collect();
    assert_eq!(resolved, [("OU_KATI", "ouKati00001"), ("OU_SIBY", "ouSiby00001")]);
    assert_eq!(org_unit_of(&pool, kati).await.as_deref(), Some("ouKati00001"));
    assert_eq!(org_unit_of(&pool, siby).await.as_deref(), Some("ouSiby00001"));
    assert_eq!(org_unit_of(&pool, lost).await, None);
    assert_eq!(org_unit_of(&pool, bare).await, None);
}

#[tokio::test]
async fn the_resolver_reports_codes_it_cannot_find() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let fake = FakeDhis2::start().await;
    let c = client(&basic(&fake));

    let mut mapping = Mapping::default_mapping();
    mapping.indicators[0].data_element.code = "CONS_TYPO".into();
    // A COC of another combo (age, on the sex element) is not accepted.
    let sex = mapping.indicators.iter_mut().find(|i| i.data_element.code == "CONS_SEX").expect("a CONS_SEX indicator");
    sex.category_option_combo.code = "AGE_15P".into();
    sex.category_option_combo.name = None;
    let sex_name = sex.name.clone();
    mapping.data_set.period_type = PeriodType::Weekly;

    let report = resolve::resolve(&c, &mapping, &pool).await.expect("resolve");
    let missing: Vec<_> = report.missing.iter().map(|m| (m.kind, m.code.as_str())).collect();
    assert_eq!(
        missing,
        [("data_set", "SR_MONTHLY"), ("data_element", "CONS_TYPO"), ("category_option_combo", "AGE_15P")],
        "{:?}",
        report.missing
    );
    assert!(report.missing[0].context.contains("Monthly"), "{:?}", report.missing[0]);
    assert!(report.missing[2].context.contains(&sex_name), "{:?}", report.missing[2]);
    assert_eq!(report.mapping.indicators[0].data_element.uid, None);
    assert_eq!(report.mapping.missing_uids().len(), 3, "{:?}", report.mapping.missing_uids());
}

/// An HTTPS front for the fake (TLS terminated here, bytes passed on), with
/// a certificate for localhost from `ca`: the base URL.
async fn https_front(fake: &FakeDhis2, ca: &crate::tls::TestCa, dir: &std::path::Path) -> String {
    let (cert_file, key_file) = ca.write_server_files(dir);
    let tls = hub::tls::load_server_config(&cert_file, &key_file).expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let upstream = fake.url().trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://localhost:{port}")
}

#[tokio::test]
async fn https_dhis2_is_trusted_through_the_ca_file_only() {
    let fake = FakeDhis2::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = crate::tls::TestCa::new("DHIS2 test CA");
    let url = https_front(&fake, &ca, dir.path()).await;
    let ca_file = dir.path().join("dhis2-ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let trusting = Dhis2Config { url: Some(url.clone()), ca_file: Some(ca_file.clone()), ..basic(&fake) };
    let answer = client(&trusting).post_data_value_set(&payload("ouKati00001", "202401"), POST).await.expect("https");
    assert_eq!(answer.summary.import_count.imported, 7);

    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, crate::tls::TestCa::new("Another CA").pem()).expect("write CA");
    let stranger = Dhis2Config { url: Some(url), ca_file: Some(other_file), ..basic(&fake) };
    let e =
        client(&stranger).post_data_value_set(&payload("ouKati00001", "202401"), POST).await.expect_err("untrusted");
    assert!(matches!(e, Dhis2Error::TlsUntrusted(_)), "{e:?}");
    assert_eq!((e.code(), e.is_retryable()), ("tls_untrusted", false));
    assert_eq!(fake.received().len(), 1, "nothing reached DHIS2 over the untrusted connection");

    // A CA file is for https only; a file that is not PEM is refused.
    let plain = Dhis2Config { ca_file: Some(ca_file), ..basic(&fake) };
    assert!(matches!(Dhis2Client::new(&plain), Err(Dhis2Error::BadConfig { .. })));
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let garbled = Dhis2Config { url: Some("https://dhis2.example.org".into()), ca_file: Some(not_pem), ..basic(&fake) };
    let e = Dhis2Client::new(&garbled).expect_err("no certificate in it");
    assert_eq!(e.code(), "not_configured");
}

#[tokio::test]
async fn the_fake_answers_bad_requests_as_dhis2_does() {
    let fake = FakeDhis2::start().await;
    let http = reqwest::Client::new();
    let post = |path: &str, content_type: &'static str, body: &'static str| {
        http.post(format!("{}{path}", fake.url()))
            .basic_auth(USERNAME, Some(PASSWORD))
            .header("content-type", content_type)
            .body(body)
    };

    // Malformed JSON is an ERROR summary, not a 400: 409 on 2.38+ ...
    let resp = post("/api/dataValueSets", "application/json", "{\"dataValues\": [").send().await.expect("send");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    assert_eq!(status, 409);
    let answer = hub::dhis2::client::parse_import_response(status, &bytes).expect("a summary");
    assert_eq!(answer.summary.status, ImportStatus::Error);
    assert!(answer.summary.description.as_deref().is_some_and(|d| d.starts_with("The import process failed: ")));
    // ... and 200 with the summary at the root through /api/37.
    let resp = post("/api/37/dataValueSets", "application/json", "nope").send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!((body["responseType"].as_str(), body["status"].as_str()), (Some("ImportSummary"), Some("ERROR")));

    let resp = post("/api/dataValueSets", "text/plain", "{}").send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 415);
    let resp = http
        .post(format!("{}/api/dataValueSets", fake.url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 401);
    let statuses: Vec<u16> = fake.received().iter().map(|r| r.answered_status).collect();
    assert_eq!(statuses, [409, 200, 415, 401]);
    assert!(fake.received()[3].authorization.is_none());
}
