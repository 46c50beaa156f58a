//! The DHIS2 pages of the admin UI over real HTTP: starting an export from
//! the form (and its field errors), a job's page with DHIS2's conflicts
//! explained, re-running, the mapping (save refused and accepted, reset,
//! resolve against the fake DHIS2), the sites' org unit fields, late data
//! shown and sent, CSRF on every new form, and the English switch.

use hub::config::Secret;
use reqwest::StatusCode;
use santerurale_fixtures::dhis2::{FakeDhis2, PASSWORD, USERNAME};
use uuid::Uuid;

use crate::browser::Browser;
use crate::support::{TestHub, count};

/// A hub reaching `dhis2` with basic authentication.
async fn hub_with_dhis2(dhis2: &FakeDhis2) -> TestHub {
    let url = dhis2.url();
    TestHub::configured(move |c| {
        c.dhis2.url = Some(url);
        c.dhis2.username = Some(USERNAME.into());
        c.dhis2.password = Some(Secret(PASSWORD.into()));
    })
    .await
}

/// A site made directly, with its DHIS2 org unit code.
async fn site(hub: &TestHub, name: &str, code: &str, org_unit_code: Option<&str>) -> Uuid {
    let site = hub::sites::NewSite {
        name: Some(name.into()),
        code: Some(code.into()),
        dhis2_org_unit: None,
        dhis2_org_unit_code: org_unit_code.map(Into::into),
    };
    let site = hub::sites::insert(&hub.state.db, &site.validate().expect("valid")).await.expect("insert");
    *site.id.as_uuid()
}

/// The previous month, as the export form proposes it.
fn previous_month() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    let first = today.replace_day(1).expect("day 1");
    let last = first.previous_day().expect("a day before");
    format!("{:04}{:02}", last.year(), last.month() as u8)
}

/// The job ids of the exports list, newest first.
fn listed_jobs(html: &str) -> Vec<String> {
    html.split("<tr class=\"export\" data-id=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// The statuses and triggers of the jobs, oldest first.
async fn jobs(hub: &TestHub) -> Vec<(Uuid, String, bool, String, Option<Uuid>)> {
    let client = hub.state.db.get().await.expect("conn");
    client
        .query("SELECT id, status, dry_run, trigger, rerun_of FROM dhis2_export_jobs ORDER BY created_at, id", &[])
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

#[tokio::test]
async fn an_export_started_from_the_form_is_listed() {
    let hub = TestHub::start().await;
    let kati = site(&hub, "CSCom de Kati", "KATI", Some("OU_KATI")).await;
    site(&hub, "CSCom de Siby", "SIBY", None).await;
    let mut browser = Browser::signed_in(&hub).await;

    let page = browser.get("/dhis2").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Rapports DHIS2"), "{}", page.body);
    assert!(page.body.contains("id=\"dhis2-not-configured\""), "no DHIS2 URL: {}", page.body);
    assert!(page.body.contains(&format!("name=\"period\" value=\"{}\"", previous_month())), "the previous month");
    assert!(page.body.contains("id=\"no-exports\""));
    assert!(page.body.contains("Essai (dry run)"));

    // Every site: one job each, back to the list.
    let period = previous_month();
    let done = browser.submit("/dhis2", "/dhis2/exports", &[("period", &period), ("site", "")]).await;
    assert_eq!((done.status, done.location.as_str()), (StatusCode::SEE_OTHER, "/dhis2"), "{}", done.body);
    let made = jobs(&hub).await;
    assert_eq!(made.len(), 2);
    assert!(made.iter().all(|(_, status, dry, trigger, _)| status == "pending" && !dry && trigger == "ui"));
    let list = browser.get("/dhis2").await.body;
    assert_eq!(listed_jobs(&list).len(), 2, "{list}");
    assert_eq!(list.matches("<span class=\"status status-pending\">en attente</span>").count(), 2, "{list}");
    assert!(list.contains("CSCom de Kati") && list.contains("CSCom de Siby"));

    // One site, a dry run: straight to the job's page.
    let kati = kati.to_string();
    let form = [("period", period.as_str()), ("site", kati.as_str()), ("dry_run", "on")];
    let done = browser.submit("/dhis2", "/dhis2/exports", &form).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let made = jobs(&hub).await;
    let (id, _, dry, _, _) = made.last().expect("a third job");
    assert!(dry, "the dry-run box was ticked");
    assert_eq!(done.location, format!("/dhis2/exports/{id}"));
    let job = browser.get(&done.location).await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(job.body.contains("id=\"job-status\">en attente"), "{}", job.body);
    assert!(job.body.contains("<span class=\"tag\">essai</span>"));
    assert!(job.body.contains("id=\"no-payload\""), "not run yet: {}", job.body);
    let list = browser.get("/dhis2").await.body;
    assert_eq!(listed_jobs(&list).first(), Some(&id.to_string()), "newest first");
    assert_eq!(browser.get(&format!("/dhis2/exports/{}", Uuid::now_v7())).await.status, StatusCode::NOT_FOUND);
    assert_eq!(browser.get("/dhis2/exports/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_bad_export_form_shows_field_errors_and_creates_nothing() {
    let hub = TestHub::start().await;
    site(&hub, "CSCom de Kati", "KATI", None).await;
    let mut browser = Browser::signed_in(&hub).await;
    let cases: [(&str, &str, &str, &str); 6] = [
        ("2024-04", "", "period", "Une période DHIS2"),
        ("202413", "", "period", "Cette période n'existe pas"),
        ("2024W15", "", "period", "L'ensemble de données DHIS2 n'a pas ce type"),
        ("209901", "", "period", "Cette période n'a pas encore commencé"),
        ("", "", "period", "Ce champ est obligatoire."),
        ("202404", "0190a0a0-0000-7000-8000-000000000000", "site", "Ce site n'existe pas"),
    ];
    for (period, site, field, text) in cases {
        let page = browser.submit("/dhis2", "/dhis2/exports", &[("period", period), ("site", site)]).await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{period:?} {site:?}");
        let error = format!("id=\"error-{field}\">");
        let shown = page.body.split(&error).nth(1).unwrap_or_default();
        let text = text.replace('\'', "&#39;");
        assert!(shown.starts_with(&text), "{period:?} {site:?}: {text} expected in {}", page.body);
        assert!(page.body.contains("id=\"form-errors\""));
        assert!(page.body.contains(&format!("name=\"period\" value=\"{period}\"")), "what was typed is kept");
    }
    let page = browser.submit("/dhis2", "/dhis2/exports", &[("period", "202404"), ("site", "not-a-uuid")]).await;
    assert!(page.body.contains("id=\"error-site\">Ce site n&#39;existe pas"), "{}", page.body);
    assert_eq!(count(&hub, "dhis2_export_jobs").await, 0);
}

/// A finished job with conflicts, as the worker records one (E7640 locked
/// period, E7613 bad combo, and one without a code, as DHIS2 2.37 sends).
async fn finished_job_with_conflicts(hub: &TestHub, site: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    let payload = serde_json::json!({
        "dataSet": "srMonthly01", "period": "202404", "orgUnit": "ouKati00001", "completeDate": "2024-05-02",
        "dataValues": [
            {"dataElement": "deConsTot01", "categoryOptionCombo": "HllvX50cXC0", "value": "42"},
            {"dataElement": "deConsSex01", "categoryOptionCombo": "cocSexF0001", "value": "17"}
        ]
    });
    let conflicts = serde_json::json!([
        {"error_code": "E7640", "object": "deConsTot01", "message": "Period: `202404` is after latest open future period"},
        {"error_code": "E7613", "object": "cocSexF0001", "message": "Category option combo not found or not accessible"},
        {"error_code": null, "object": "ouKati00001", "message": "Something DHIS2 said"}
    ]);
    let response = serde_json::json!({"httpStatusCode": 409, "status": "WARNING", "response": {"status": "WARNING"}});
    let client = hub.state.db.get().await.expect("conn");
    client
        .execute(
            "INSERT INTO dhis2_export_jobs (id, period, site_id, dry_run, status, trigger, attempts, payload,
                 values_count, response_status, response, import_count, conflicts, started_at, finished_at)
             VALUES ($1, '202404', $2, false, 'succeeded_with_conflicts', 'api', 1, $3::text::jsonb, 2, 409,
                     $4::text::jsonb, '{\"imported\": 0, \"updated\": 0, \"ignored\": 2, \"deleted\": 0}',
                     $5::text::jsonb, now(), now())",
            &[&id, &site, &payload.to_string(), &response.to_string(), &conflicts.to_string()],
        )
        .await
        .expect("job");
    id
}

#[tokio::test]
async fn a_job_page_explains_its_conflicts_and_rerun_makes_a_new_job() {
    let hub = TestHub::start().await;
    let site = site(&hub, "CSCom de Kati", "KATI", Some("OU_KATI")).await;
    let mut browser = Browser::signed_in(&hub).await;
    // The mapping in force names the objects of the payload.
    let example = include_str!("../../../fixtures/dhis2/mapping.example.toml");
    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping", &[("mapping", example)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let id = finished_job_with_conflicts(&hub, site).await;

    let path = format!("/dhis2/exports/{id}");
    let page = browser.get(&path).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(body.contains("id=\"job-status\">réussi avec des conflits"), "{body}");
    assert!(body.contains("id=\"count-ignored\">2<"), "{body}");
    for text in [
        "<code class=\"error-code\">E7640</code>",
        "rouvrir la période",
        "<code class=\"error-code\">E7613</code>",
        "Corrigez la combinaison de l&#39;indicateur dans la correspondance",
        "Sans code d&#39;erreur",
        "DHIS2 a refusé cette valeur",
        "is after latest open future period",
        "(SEX_F)",
        "(KATI)",
    ] {
        assert!(body.contains(text), "{text} in {body}");
    }
    // The payload as a table: the element's code and the indicator from the mapping.
    let table = body.split("id=\"payload\"").nth(1).expect("the payload table");
    assert!(table.contains("<strong>CONS_TOTAL</strong>") && table.contains("<td class=\"num value\">42</td>"));
    assert!(table.contains("<strong>CONS_SEX</strong>") && table.contains("SEX_F (Féminin)"), "{table}");
    assert!(body.contains("id=\"payload-json\"") && body.contains("id=\"response-json\""));

    let done = browser.submit(&path, &format!("{path}/rerun"), &[]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let made = jobs(&hub).await;
    assert_eq!(made.len(), 2);
    let (new, status, _, trigger, rerun_of) = made.last().expect("the new job");
    assert_eq!((status.as_str(), trigger.as_str(), *rerun_of), ("pending", "rerun", Some(id)));
    assert_eq!(done.location, format!("/dhis2/exports/{new}"));
    let page = browser.get(&done.location).await;
    assert!(page.body.contains("id=\"rerun-of\"") && page.body.contains(&path), "{}", page.body);

    // In English, through the switch.
    let switched = browser.get("/lang/en").await;
    assert!(switched.status.is_redirection());
    assert_eq!(browser.cookies.get("sr_lang").map(String::as_str), Some("en"));
    let page = browser.get(&path).await;
    assert!(page.body.contains("<html lang=\"en\""));
    assert!(page.body.contains("Ask the DHIS2 administrator to reopen the period"), "{}", page.body);
    assert!(page.body.contains("succeeded with conflicts") && page.body.contains(">Re-run<"), "{}", page.body);
    let list = browser.get("/dhis2").await.body;
    assert!(list.contains("DHIS2 reports") && list.contains("Start an export") && list.contains("Trial (dry run)"));
    assert!(!list.contains("Lancer un export"));
}

#[tokio::test]
async fn the_mapping_is_saved_only_when_valid_and_reset_to_the_file() {
    let hub = TestHub::start().await;
    let mut browser = Browser::signed_in(&hub).await;
    let page = browser.get("/dhis2/mapping").await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(body.contains("id=\"mapping-source\">correspondance par défaut du hub"), "{body}");
    assert!(body.contains("<tr class=\"indicator\" data-code=\"CONS_TOTAL\">"), "{body}");
    assert!(body.contains("moins de 5 ans"), "what CONS_U5 counts, in words: {body}");
    assert!(body.contains("id=\"missing-uids\""), "the shipped mapping has codes only");
    assert!(body.contains("identifiant manquant"));
    assert!(body.contains("HUB_DHIS2_URL") && body.contains(" disabled>"), "resolving needs DHIS2: {body}");
    assert!(!body.contains("id=\"reset-form\""), "nothing saved to reset");

    // Not TOML: refused, listed, nothing saved.
    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping", &[("mapping", "data_set = [")]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"mapping-problems\""), "{}", page.body);
    assert!(page.body.contains("not a valid TOML mapping"), "{}", page.body);
    assert!(page.body.contains(">data_set = [</textarea>"), "what was typed is kept");
    // TOML, but invalid: each problem with its path.
    let default = hub::dhis2::mapping::Mapping::default_mapping().to_toml();
    let bad = default.replacen("sex = \"female\"", "sex = \"femme\"", 1);
    assert_ne!(bad, default);
    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping", &[("mapping", &bad)]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let problems = page.body.split("id=\"mapping-problems\"").nth(1).expect("problems");
    assert!(problems.contains("filter.sex"), "{problems}");
    assert_eq!(count(&hub, "dhis2_mapping").await, 0, "nothing saved");
    assert!(browser.get("/dhis2/mapping").await.body.contains("correspondance par défaut du hub"));

    // Valid: saved, in force.
    let renamed = default.replacen("name = \"Consultations\"", "name = \"Consultations totales\"", 1);
    assert_ne!(renamed, default);
    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping", &[("mapping", &renamed)]).await;
    assert_eq!((page.status, page.location.as_str()), (StatusCode::SEE_OTHER, "/dhis2/mapping"), "{}", page.body);
    let loaded = hub::dhis2::mapping::load(&hub.state.db, &hub.state.config.dhis2).await.expect("load");
    assert_eq!(loaded.mapping.indicators[0].name, "Consultations totales");
    let page = browser.get("/dhis2/mapping").await;
    assert!(page.body.contains("id=\"mapping-source\">enregistrée dans le hub le"), "{}", page.body);
    assert!(page.body.contains("<td>Consultations totales</td>"));
    assert!(page.body.contains("id=\"reset-form\""));

    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping/reset", &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(count(&hub, "dhis2_mapping").await, 0);
    assert!(browser.get("/dhis2/mapping").await.body.contains("correspondance par défaut du hub"));

    // A saved copy that no longer validates: the page says so and offers the reset.
    let client = hub.state.db.get().await.expect("conn");
    let broken = r#"{"data_set": {"code": "SR_MONTHLY"}, "indicators": []}"#;
    client.execute("INSERT INTO dhis2_mapping (mapping) VALUES ($1::text::jsonb)", &[&broken]).await.expect("insert");
    let page = browser.get("/dhis2/mapping").await;
    assert_eq!(page.status, StatusCode::OK);
    let error = page.body.split("id=\"mapping-load-error\">").nth(1).expect("the load error");
    assert!(error.contains("at least one indicator"), "{error}");
    assert!(page.body.contains("id=\"reset-form\"") && page.body.contains("[data_set]"), "{}", page.body);
    let refused = browser.submit("/dhis2", "/dhis2/exports", &[("period", "202404"), ("site", "")]).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.body.contains("id=\"export-alert\">La correspondance DHIS2 en vigueur est inutilisable"));
    assert_eq!(count(&hub, "dhis2_export_jobs").await, 0);
    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping/reset", &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(browser.get("/dhis2/mapping").await.body.contains("correspondance par défaut du hub"));

    // Resolving without DHIS2 explains what to set.
    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping/resolve", &[]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = page.body.split("id=\"resolve-error\">").nth(1).expect("an error");
    assert!(error.starts_with("Non configuré") && error.contains("HUB_DHIS2_URL"), "{error}");
    assert_eq!(count(&hub, "dhis2_mapping").await, 0);
}

#[tokio::test]
async fn resolving_fills_the_uids_and_an_export_shows_dhis2s_conflicts() {
    let dhis2 = FakeDhis2::start().await;
    let hub = hub_with_dhis2(&dhis2).await;
    let kati = site(&hub, "CSCom de Kati", "KATI", Some("OU_KATI")).await;
    let other = site(&hub, "CSCom de Nulle Part", "NULLE", Some("OU_UNASSIGNED")).await;
    site(&hub, "CSCom de Siby", "SIBY", Some("OU_NOWHERE")).await;
    let mut browser = Browser::signed_in(&hub).await;
    let page = browser.get("/dhis2").await;
    assert!(page.body.contains(&format!("<code id=\"dhis2-url\">{}</code>", dhis2.url())), "{}", page.body);
    assert!(page.body.contains("nom d&#39;utilisateur et mot de passe") && !page.body.contains(PASSWORD));

    let page = browser.submit("/dhis2/mapping", "/dhis2/mapping/resolve", &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let report = page.body.split("id=\"resolve-report\"").nth(1).expect("the report");
    for filled in
        ["<code>SR_MONTHLY</code> → <code>srMonthly01</code>", "<code>CONS_U5</code> → <code>deConsU5001</code>"]
    {
        assert!(report.contains(filled), "{filled} in {report}");
    }
    assert!(report.contains("<code>OU_KATI</code> → <code>ouKati00001</code>"), "{report}");
    let missing = report.split("id=\"codes-not-found\"").nth(1).expect("codes not found");
    assert!(missing.contains("<code class=\"missing-code\">OU_NOWHERE</code>"), "{missing}");
    assert!(!page.body.contains("id=\"missing-uids\""), "every mapping uid is filled: {}", page.body);
    assert!(page.body.contains("enregistrée dans le hub le"));
    assert_eq!(count(&hub, "sites WHERE dhis2_org_unit = 'ouKati00001'").await, 1, "the site's uid is filled");

    // An export to the unassigned org unit: the fake DHIS2 answers E7636 conflicts.
    let other = other.to_string();
    let period = previous_month();
    let done = browser.submit("/dhis2", "/dhis2/exports", &[("period", &period), ("site", &other)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let ctx = hub::jobs::dhis2_export::WorkerContext::from_state(&hub.state);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while hub::jobs::dhis2_export::run_one(&ctx).await.expect("run").is_some() {
        assert!(std::time::Instant::now() < deadline, "the worker keeps finding jobs");
    }
    let page = browser.get(&done.location).await;
    assert!(page.body.contains("id=\"job-status\">réussi avec des conflits"), "{}", page.body);
    assert!(page.body.contains("<code class=\"error-code\">E7636</code>"), "{}", page.body);
    assert!(page.body.contains("Demandez à l&#39;administrateur DHIS2 d&#39;affecter l&#39;unité d&#39;organisation"));
    assert!(page.body.contains("<strong>CONS_TOTAL</strong>"), "the payload table: {}", page.body);
    assert!(page.body.contains("<code>ouNotAssig1</code> (NULLE)"), "the object, named: {}", page.body);

    // The same for Kati goes through.
    let kati = kati.to_string();
    let done = browser.submit("/dhis2", "/dhis2/exports", &[("period", &period), ("site", &kati)]).await;
    while hub::jobs::dhis2_export::run_one(&ctx).await.expect("run").is_some() {
        assert!(std::time::Instant::now() < deadline, "the worker keeps finding jobs");
    }
    let page = browser.get(&done.location).await;
    assert!(page.body.contains("id=\"job-status\">réussi<"), "{}", page.body);
    assert!(!page.body.contains("error-code"));
    assert!(!dhis2.received().is_empty());
}

#[tokio::test]
async fn every_dhis2_form_refuses_a_missing_csrf_token() {
    let hub = TestHub::start().await;
    let site = site(&hub, "CSCom de Kati", "KATI", None).await;
    let job = finished_job_with_conflicts(&hub, site).await;
    let mut browser = Browser::signed_in(&hub).await;
    let forms = [
        "/dhis2/exports".to_owned(),
        format!("/dhis2/exports/{job}/rerun"),
        "/dhis2/mapping".to_owned(),
        "/dhis2/mapping/reset".to_owned(),
        "/dhis2/mapping/resolve".to_owned(),
        "/dhis2/late-data".to_owned(),
        format!("/sites/{site}"),
    ];
    let mapping = hub::dhis2::mapping::Mapping::default_mapping().to_toml();
    for path in &forms {
        for token in [None, Some("wrong")] {
            let mut form = vec![
                ("period", "202404"),
                ("site", ""),
                ("mapping", mapping.as_str()),
                ("name", "Renamed"),
                ("dhis2_org_unit_code", "OU_X"),
            ];
            form.extend(token.map(|t| ("csrf_token", t)));
            let page = browser.post(path, &form).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path} with {token:?}");
            assert!(page.body.contains("Formulaire expiré"), "{}", page.body);
        }
    }
    assert_eq!(count(&hub, "dhis2_export_jobs").await, 1);
    assert_eq!(count(&hub, "dhis2_mapping").await, 0);
    assert_eq!(count(&hub, "sites WHERE name = 'CSCom de Kati' AND dhis2_org_unit_code IS NULL").await, 1);
}

#[tokio::test]
async fn a_sites_org_unit_is_edited_on_its_page_and_listed() {
    let hub = TestHub::start().await;
    let mut browser = Browser::signed_in(&hub).await;
    let form =
        [("name", "CSCom de Kati"), ("code", "kati"), ("dhis2_org_unit_code", "OU_KATI"), ("dhis2_org_unit", "")];
    let created = browser.submit("/sites", "/sites", &form).await;
    assert_eq!(created.status, StatusCode::SEE_OTHER, "{}", created.body);
    let site = created.location;
    let page = browser.get(&site).await;
    assert!(page.body.contains("id=\"site-ou-code\"><code>OU_KATI</code>"), "{}", page.body);
    assert!(page.body.contains("name=\"dhis2_org_unit_code\" value=\"OU_KATI\""), "the edit form is filled");

    let long = "X".repeat(51);
    let page =
        browser.submit(&site, &site, &[("name", ""), ("dhis2_org_unit_code", &long), ("dhis2_org_unit", "1bad")]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"error-name\">Ce champ est obligatoire."), "{}", page.body);
    assert!(page.body.contains("id=\"error-dhis2_org_unit_code\">50 caractères au plus"), "{}", page.body);
    assert!(page.body.contains("id=\"error-dhis2_org_unit\">Un identifiant DHIS2"), "{}", page.body);
    assert_eq!(count(&hub, "sites WHERE dhis2_org_unit_code = 'OU_KATI'").await, 1, "nothing changed");

    let form = [("name", "CSCom de Kati-Ville"), ("dhis2_org_unit_code", "OU_KATI"), ("dhis2_org_unit", "ouKati00001")];
    let done = browser.submit(&site, &site, &form).await;
    assert_eq!((done.status, done.location.as_str()), (StatusCode::SEE_OTHER, site.as_str()), "{}", done.body);
    let list = browser.get("/sites").await.body;
    assert!(list.contains("<code class=\"ou-code\">OU_KATI</code>"), "{list}");
    assert!(list.contains("<code class=\"ou-uid\">ouKati00001</code>"), "{list}");
    assert!(list.contains("CSCom de Kati-Ville"));

    // The form sends both fields: a new code keeps the uid typed with it.
    let form =
        [("name", "CSCom de Kati-Ville"), ("dhis2_org_unit_code", "OU_KATI2"), ("dhis2_org_unit", "ouKati00001")];
    browser.submit(&site, &site, &form).await;
    assert_eq!(count(&hub, "sites WHERE dhis2_org_unit = 'ouKati00001' AND dhis2_org_unit_code = 'OU_KATI2'").await, 1);
    // Blank fields clear them.
    let form = [("name", "CSCom de Kati-Ville"), ("dhis2_org_unit_code", ""), ("dhis2_org_unit", "")];
    browser.submit(&site, &site, &form).await;
    assert_eq!(count(&hub, "sites WHERE dhis2_org_unit IS NULL AND dhis2_org_unit_code IS NULL").await, 1, "cleared");
}

#[tokio::test]
async fn late_data_is_shown_and_sent_from_its_page() {
    use crate::dhis2_jobs::{KATI_OU, add_site, add_visits, context, dhis2_config, export, last_month, run_to_end};

    let fake = FakeDhis2::start().await;
    let dhis2 = dhis2_config(&fake);
    let hub = TestHub::configured(|c| c.dhis2 = dhis2).await;
    let kati = add_site(&hub.state.db, "KATI", Some(KATI_OU)).await;
    let period = last_month();
    add_visits(&hub.state.db, kati, &[(period.start(), "consultation")]).await;
    let ctx = context(&hub.state.db, &hub.state.config);
    let first = export(&hub.state.db, &hub.state.config, period, kati, false).await;
    run_to_end(&ctx, first.id).await;
    let mut browser = Browser::signed_in(&hub).await;

    let list = browser.get("/dhis2").await.body;
    assert!(list.contains("href=\"/dhis2/late-data\"") && list.contains("0 30 3 * * *"), "{list}");
    let page = browser.get("/dhis2/late-data").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"up-to-date\"") && !page.body.contains("id=\"late-data-form\""), "{}", page.body);
    assert!(page.body.contains(&period.to_string()), "the periods checked are shown");

    // A consultation of the exported month syncs late.
    add_visits(&hub.state.db, kati, &[(period.end(), "consultation")]).await;
    let page = browser.get("/dhis2/late-data").await;
    let body = &page.body;
    let section = body.split(&format!("data-site=\"KATI\" data-period=\"{period}\"")).nth(1).expect("KATI is listed");
    assert!(
        section.contains("<td>Consultations</td><td class=\"num sent\">1</td><td class=\"num now\">2</td>"),
        "{section}"
    );
    assert!(section.contains(&format!("/dhis2/exports/{}", first.id)), "links the export DHIS2 holds");

    let sent = browser.submit("/dhis2/late-data", "/dhis2/late-data", &[]).await;
    assert_eq!((sent.status, sent.location.as_str()), (StatusCode::SEE_OTHER, "/dhis2"), "{}", sent.body);
    let made = jobs(&hub).await;
    let (late, status, dry_run, trigger, rerun_of) = made.last().expect("the new job");
    assert_eq!(
        (status.as_str(), *dry_run, trigger.as_str(), *rerun_of),
        ("pending", false, "late_data", Some(first.id))
    );
    let list = browser.get("/dhis2").await.body;
    let row = list.split(&format!("data-id=\"{late}\"")).nth(1).expect("listed");
    assert!(row.split("</tr>").next().is_some_and(|r| r.contains("données tardives")), "{row}");

    // Sent again before the worker ran: nothing more, and the page says so.
    let again = browser.submit("/dhis2/late-data", "/dhis2/late-data", &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.contains("id=\"late-data-alert\">Rien à renvoyer"), "{}", again.body);
    assert_eq!(count(&hub, "dhis2_export_jobs").await, 2);
}

#[tokio::test]
async fn each_period_is_summed_up_and_the_list_filtered_by_a_click() {
    use crate::dhis2_jobs::{KATI_OU, add_site, add_visits, context, dhis2_config, export, last_month, run_to_end};

    let fake = FakeDhis2::start().await;
    let dhis2 = dhis2_config(&fake);
    let hub = TestHub::configured(|c| c.dhis2 = dhis2).await;
    let kati = add_site(&hub.state.db, "KATI", Some(KATI_OU)).await;
    add_site(&hub.state.db, "BARE", None).await;
    let period = last_month();
    add_visits(&hub.state.db, kati, &[(period.start(), "consultation")]).await;
    let ctx = context(&hub.state.db, &hub.state.config);
    let done = export(&hub.state.db, &hub.state.config, period, kati, false).await;
    run_to_end(&ctx, done.id).await;
    let dry = export(&hub.state.db, &hub.state.config, period, kati, true).await;
    run_to_end(&ctx, dry.id).await;
    let mut browser = Browser::signed_in(&hub).await;

    let list = browser.get("/dhis2").await.body;
    let row = list.split(&format!("class=\"period-summary\" data-period=\"{period}\"")).nth(1).expect("summed up");
    let row = row.split("</tr>").next().expect("row");
    let link = format!("href=\"/dhis2?period={period}&amp;status=succeeded\">1</a>");
    assert!(row.contains(&link) && row.contains("<td class=\"num not-exported\">1</td>"), "{row}");
    let missing = list.split(&format!("class=\"not-exported-sites\" data-period=\"{period}\">")).nth(1).expect("named");
    assert!(missing.split("</p>").next().is_some_and(|m| m.contains("<code>BARE</code>") && !m.contains("KATI")));
    assert_eq!(listed_jobs(&list).len(), 2, "dry run included in the whole list");

    let filtered = browser.get(&format!("/dhis2?period={period}&status=succeeded")).await;
    assert_eq!(filtered.status, StatusCode::OK);
    assert_eq!(listed_jobs(&filtered.body).len(), 2, "both succeeded");
    assert!(filtered.body.contains("id=\"export-filter\"") && filtered.body.contains("· réussi"), "{}", filtered.body);
    let failed = browser.get(&format!("/dhis2?period={period}&status=failed")).await.body;
    assert!(listed_jobs(&failed).is_empty() && failed.contains("Aucun export ne correspond."), "{failed}");
    // An unknown status filters nothing out.
    assert_eq!(listed_jobs(&browser.get("/dhis2?status=nope").await.body).len(), 2);
}
