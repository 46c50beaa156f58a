//! The admin web UI over real HTTP: signing in, CSRF refusals, sites with
//! field errors, enrollment tokens shown once, revocation, the language
//! switch, and conflicts listed and resolved through the form.

use reqwest::StatusCode;
use reqwest::header::REFERER;

use crate::browser::Browser;
use crate::support::{TestHub, count, open_conflict};

/// The ids in `href="/sites/<id>"` links of a page.
fn site_links(html: &str) -> Vec<String> {
    html.split("href=\"/sites/").skip(1).filter_map(|s| s.split('"').next()).map(str::to_owned).collect()
}

#[tokio::test]
async fn pages_lead_to_sign_in_and_the_form_signs_in_and_out() {
    let hub = TestHub::start().await;
    let mut browser = Browser::new(&hub);
    for path in ["/sites", "/conflicts", "/sites/0190a0a0-0000-7000-8000-000000000000", "/"] {
        let page = browser.get(path).await;
        assert!(page.status.is_redirection(), "{path}: {}", page.status);
        assert!(matches!(page.location.as_str(), "/login" | "/sites"), "{path} -> {}", page.location);
    }
    let page = browser.post("/sites", &[("name", "X"), ("code", "KT")]).await;
    assert_eq!((page.status, page.location.as_str()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(count(&hub, "sites").await, 0);

    hub::users::add_user(&hub.state.db, "awa", hub::auth::Role::Admin, "correct horse battery").await.expect("user");
    let page = browser.submit("/login", "/login", &[("username", "awa"), ("password", "wrong horse")]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("id=\"login-error\""), "{}", page.body);
    assert!(page.body.contains("ou mot de passe incorrect."), "{}", page.body);
    assert!(page.body.contains("value=\"awa\""), "the username is kept");
    assert!(!page.body.contains("wrong horse"), "the password is not sent back");
    assert_eq!(count(&hub, "ui_sessions").await, 0);
    assert_eq!(browser.get("/sites").await.location, "/login");

    // An expired session of someone else's: signing in sweeps it away.
    let client = hub.state.db.get().await.expect("conn");
    client
        .execute(
            "INSERT INTO ui_sessions (token_hash, user_id, csrf_token, created_at, expires_at)
             SELECT repeat('a', 64), id, 'x', now() - interval '2 hours', now() - interval '1 hour' FROM users",
            &[],
        )
        .await
        .expect("expired session");
    let page = browser.submit("/login", "/login", &[("username", "awa"), ("password", "correct horse battery")]).await;
    assert_eq!((page.status, page.location.as_str()), (StatusCode::SEE_OTHER, "/sites"));
    let session = browser.cookies.get("sr_session").expect("session cookie").clone();
    let stored: String = hub
        .state
        .db
        .get()
        .await
        .expect("conn")
        .query_one("SELECT token_hash FROM ui_sessions", &[])
        .await
        .expect("one session")
        .get(0);
    assert_eq!(
        stored,
        santerurale_server::tokens::hash_token(&session),
        "only the hash is stored; the expired one is gone"
    );
    let page = browser.get("/sites").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("awa"));
    assert_eq!(page.body.matches("<html lang=\"fr\"").count(), 1);

    let page = browser.submit("/sites", "/logout", &[]).await;
    assert_eq!((page.status, page.location.as_str()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(count(&hub, "ui_sessions").await, 0);
    // The old cookie, sent again, is no session.
    browser.cookies.insert("sr_session".into(), session);
    assert_eq!(browser.get("/sites").await.location, "/login");
}

#[tokio::test]
async fn every_form_refuses_a_missing_or_wrong_csrf_token() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (_, kati, _) = open_conflict(&hub, &admin).await;
    let mut browser = Browser::signed_in(&hub).await;
    let sites = browser.get("/sites").await;
    let kati_site = site_links(&sites.body).into_iter().find(|_| true).expect("a site");
    let conflict: uuid::Uuid =
        hub.state.db.get().await.expect("conn").query_one("SELECT id FROM conflicts", &[]).await.expect("one").get(0);
    let forms = [
        format!("/sites/{kati_site}/enrollment-tokens"),
        format!("/sites/{kati_site}/devices/{}/revoke", kati.id),
        format!("/conflicts/{conflict}/resolve"),
        "/sites".to_owned(),
        "/logout".to_owned(),
    ];
    let before = (count(&hub, "sites").await, count(&hub, "enrollment_tokens").await);
    for path in &forms {
        for token in [None, Some("wrong"), Some("")] {
            let mut form = vec![("name", "CSCom"), ("code", "NEW-1"), ("choice", "0")];
            form.extend(token.map(|t| ("csrf_token", t)));
            let page = browser.post(path, &form).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path} with {token:?}");
            assert!(page.body.contains("Formulaire expiré"), "{}", page.body);
        }
    }
    assert_eq!((count(&hub, "sites").await, count(&hub, "enrollment_tokens").await), before);
    let client = hub.state.db.get().await.expect("conn");
    let revoked: i64 =
        client.query_one("SELECT count(*) FROM devices WHERE revoked_at IS NOT NULL", &[]).await.expect("n").get(0);
    assert_eq!(revoked, 0);
    let open: i64 =
        client.query_one("SELECT count(*) FROM conflicts WHERE resolved_at IS NULL", &[]).await.expect("n").get(0);
    assert_eq!(open, 1);
    assert_eq!(browser.get("/sites").await.status, StatusCode::OK, "still signed in");

    // The sign-in form: double submit, the cookie must match.
    let mut anon = Browser::new(&hub);
    anon.get("/login").await;
    assert!(anon.cookies.contains_key("sr_csrf"));
    let page = anon.post("/login", &[("username", "awa"), ("password", "x"), ("csrf_token", "wrong")]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let mut fresh = Browser::new(&hub);
    let token = santerurale_server::tokens::random_token();
    let page = fresh.post("/login", &[("username", "awa"), ("password", "x"), ("csrf_token", &token)]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "a token without its cookie");
}

#[tokio::test]
async fn a_bad_site_shows_its_field_errors_and_stores_nothing() {
    let hub = TestHub::start().await;
    let mut browser = Browser::signed_in(&hub).await;
    let page = browser
        .submit("/sites", "/sites", &[("name", "CSCom de Kati"), ("code", "K"), ("dhis2_org_unit", "1abc")])
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"error-code\">2 à 32 lettres"), "{}", page.body);
    assert!(page.body.contains("id=\"error-dhis2_org_unit\">Un identifiant DHIS2"), "{}", page.body);
    assert!(!page.body.contains("id=\"error-name\""));
    assert!(page.body.contains("value=\"CSCom de Kati\""), "what was typed is kept");
    assert_eq!(count(&hub, "sites").await, 0);

    let page = browser.submit("/sites", "/sites", &[("name", ""), ("code", "kati-01")]).await;
    assert!(page.body.contains("id=\"error-name\">Ce champ est obligatoire."), "{}", page.body);
    assert_eq!(count(&hub, "sites").await, 0);

    let page = browser
        .submit(
            "/sites",
            "/sites",
            &[("name", "CSCom de Kati"), ("code", "kati-01"), ("dhis2_org_unit", "DiszpKrYNg8")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.location.starts_with("/sites/"));
    let site = browser.get(&page.location).await;
    assert!(site.body.contains("KATI-01") && site.body.contains("DiszpKrYNg8"), "{}", site.body);
    let page = browser.submit("/sites", "/sites", &[("name", "Autre"), ("code", "KATI-01")]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"error-code\">Un site a déjà ce code."), "{}", page.body);
    assert_eq!(count(&hub, "sites").await, 1);
}

#[tokio::test]
async fn a_token_is_shown_once_enrolls_a_device_which_can_be_revoked() {
    let hub = TestHub::start().await;
    let mut browser = Browser::signed_in(&hub).await;
    let created = browser.submit("/sites", "/sites", &[("name", "CSCom de Siby"), ("code", "SIBY")]).await;
    let site_page = created.location;
    let page = browser.submit(&site_page, &format!("{site_page}/enrollment-tokens"), &[]).await;
    assert_eq!(page.status, StatusCode::CREATED);
    let token = page.body.split("<code id=\"token\">").nth(1).and_then(|s| s.split('<').next()).expect("token");
    let token = token.to_owned();
    assert_eq!(token.len(), 43);
    let command = format!("edge enroll --hub {} --token {token}", hub.base);
    assert!(page.body.contains(&command), "{}", page.body);
    assert!(page.body.contains("id=\"token-expires\""));
    // Shown once: the site page does not have it any more.
    let again = browser.get(&site_page).await;
    assert!(!again.body.contains(&token));
    assert!(again.body.contains("id=\"no-devices\""));

    let device = crate::support::TestDevice::new();
    assert_eq!(device.enroll(&hub, &token).await.status(), StatusCode::CREATED);
    let page = browser.get(&site_page).await;
    assert!(page.body.contains(&device.id.to_string()), "{}", page.body);
    let revoke = format!("{site_page}/devices/{}/revoke", device.id);
    let confirm = browser.get(&revoke).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("Révoquer ce poste"), "{}", confirm.body);
    assert_eq!(count(&hub, "devices WHERE revoked_at IS NOT NULL").await, 0, "asking is not revoking");
    let done = browser.submit(&revoke, &revoke, &[]).await;
    assert_eq!((done.status, done.location.as_str()), (StatusCode::SEE_OTHER, site_page.as_str()));
    assert_eq!(count(&hub, "devices WHERE revoked_at IS NOT NULL").await, 1);
    assert!(browser.get(&site_page).await.body.contains("révoqué"));
    let unknown = format!("{site_page}/devices/{}/revoke", uuid::Uuid::now_v7());
    assert_eq!(browser.get(&unknown).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_language_switch_shows_english_and_sessions_expire() {
    let hub = TestHub::start().await;
    let mut browser = Browser::signed_in(&hub).await;
    assert!(browser.get("/sites").await.body.contains("Créer un site"));
    let req = browser.http.get(format!("{}/lang/en", hub.base)).header(REFERER, format!("{}/conflicts", hub.base));
    let page = browser.send(req).await;
    assert_eq!((page.status, page.location.as_str()), (StatusCode::SEE_OTHER, "/conflicts"));
    assert_eq!(browser.cookies.get("sr_lang").map(String::as_str), Some("en"));
    let page = browser.get("/sites").await;
    assert!(page.body.contains("<html lang=\"en\""));
    assert!(page.body.contains("Create a site") && page.body.contains("Sign out"), "{}", page.body);
    assert!(!page.body.contains("Créer un site"));
    let page = browser.submit("/sites", "/sites", &[("name", "X"), ("code", "K")]).await;
    assert!(page.body.contains("id=\"error-code\">2 to 32 letters"), "{}", page.body);
    assert_eq!(browser.get("/lang/xx").await.status, StatusCode::NOT_FOUND);

    // Sessions expire.
    let client = hub.state.db.get().await.expect("conn");
    client.execute("UPDATE ui_sessions SET expires_at = now() - interval '1 second'", &[]).await.expect("expire");
    let page = browser.get("/sites").await;
    assert_eq!((page.status, page.location.as_str()), (StatusCode::SEE_OTHER, "/login"));
}

#[tokio::test]
async fn conflicts_are_listed_and_resolved_through_the_form() {
    let hub = TestHub::start().await;
    let admin = hub.admin_bearer();
    let (patient, kati, siby) = open_conflict(&hub, &admin).await;
    let mut browser = Browser::signed_in(&hub).await;
    let page = browser.get("/conflicts").await;
    assert_eq!(page.status, StatusCode::OK);
    for text in ["Fatoumata Coulibaly", &patient.to_string(), "village", "Siby", "Ouéléssébougou", "KATI", "SIBY"] {
        assert!(page.body.contains(text), "{text} in {}", page.body);
    }
    assert!(page.body.contains(&kati.id.to_string()) && page.body.contains(&siby.id.to_string()));
    assert_eq!(page.body.matches("<span class=\"tag\">retenue</span>").count(), 1, "one value is the winner");
    // The sites list shows each site's sync status: contact, changes, conflicts.
    let sites = browser.get("/sites").await.body;
    assert_eq!(sites.matches("<td class=\"num conflicts\"><a href=\"/conflicts\">1</a>").count(), 2, "{sites}");
    assert_eq!(sites.matches("<td class=\"last-contact\">jamais").count(), 0, "both devices pushed");
    assert!(sites.contains("<td class=\"num received\">2</td>"), "Kati pushed two changes: {sites}");
    assert!(browser.get("/conflicts?status=resolved").await.body.contains("id=\"no-conflicts\""));
    assert_eq!(browser.get("/conflicts?status=maybe").await.status, StatusCode::BAD_REQUEST);

    let conflict: uuid::Uuid =
        hub.state.db.get().await.expect("conn").query_one("SELECT id FROM conflicts", &[]).await.expect("one").get(0);
    let resolve = format!("/conflicts/{conflict}/resolve");
    let page = browser.submit("/conflicts", &resolve, &[]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("id=\"error-choice\">Ce champ est obligatoire."), "{}", page.body);
    let page = browser.submit("/conflicts", &resolve, &[("choice", "other"), ("other_value", "  ")]).await;
    assert!(page.body.contains("id=\"error-other_value\">Ce champ est obligatoire."), "{}", page.body);
    let page = browser.submit("/conflicts", &resolve, &[("choice", "7")]).await;
    assert!(page.body.contains("id=\"error-choice\">Choisissez une des valeurs"), "{}", page.body);
    assert_eq!(count(&hub, "conflicts WHERE resolved_at IS NULL").await, 1);

    // Choosing the value Automerge did not pick closes the conflict and
    // rewrites the patient's village.
    let client = hub.state.db.get().await.expect("conn");
    let village = "SELECT village FROM patients WHERE id = $1";
    let winner: String = client.query_one(village, &[patient.as_uuid()]).await.expect("patient").get(0);
    let loser = if winner == "Siby" { "Ouéléssébougou" } else { "Siby" };
    let page = browser.get("/conflicts").await;
    let index = page.body.split("name=\"choice\" value=\"").skip(1).position(|s| s.contains(&format!(">{loser}<")));
    let index = index.expect("the losing value has a radio button").to_string();
    let done = browser.submit("/conflicts", &resolve, &[("choice", &index)]).await;
    assert_eq!(
        (done.status, done.location.as_str()),
        (StatusCode::SEE_OTHER, "/conflicts?status=open"),
        "{}",
        done.body
    );
    assert_eq!(count(&hub, "conflicts WHERE resolved_at IS NULL").await, 0);
    let row = client
        .query_one("SELECT resolved_by, resolution->>'value' FROM conflicts WHERE id = $1", &[&conflict])
        .await
        .expect("conflict");
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("awa".to_owned(), loser.to_owned()));
    let now: String = client.query_one(village, &[patient.as_uuid()]).await.expect("patient").get(0);
    assert_eq!(now, loser, "the projection shows the chosen value");
    assert!(browser.get("/conflicts").await.body.contains("id=\"no-conflicts\""));
    let resolved = browser.get("/conflicts?status=resolved").await;
    assert!(resolved.body.contains(&format!("id=\"conflict-{conflict}\"")), "{}", resolved.body);
    assert!(resolved.body.contains("<dd class=\"resolved-by\">awa</dd>"), "{}", resolved.body);
    // The form of a page loaded before: already done.
    let page = browser.submit("/sites", &resolve, &[("choice", "0")]).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("Déjà traité"), "{}", page.body);
}
