//! The clinic web UI over real HTTP: an edge served in-process on a loopback
//! port (ready as soon as the listener is bound, so no sleeps), driven by a
//! cookie-keeping client that does not follow redirects so they can be checked.

use edge::AppState;
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::{Client, Response, StatusCode};

struct App {
    base: String,
    state: AppState,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl App {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = edge::config::Config { data_dir: dir.path().to_owned(), ..Default::default() };
        let state = AppState::open(config).expect("open state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(edge::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self { base, state, _dir: dir, _stop: stop }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, c: &Client, path: &str) -> Response {
        c.get(self.url(path)).send().await.expect("GET")
    }

    async fn post(&self, c: &Client, path: &str, form: &[(&str, &str)]) -> Response {
        c.post(self.url(path)).form(form).send().await.expect("POST")
    }

    /// The CSRF token the form on `path` carries.
    async fn csrf(&self, c: &Client, path: &str) -> String {
        let html = self.get(c, path).await.text().await.expect("body");
        csrf_in(&html)
    }

    /// POSTs `form` to `action` with the token found on `form_page`.
    async fn submit(&self, c: &Client, form_page: &str, action: &str, form: &[(&str, &str)]) -> Response {
        let token = self.csrf(c, form_page).await;
        let mut fields = form.to_vec();
        fields.push(("csrf_token", &token));
        self.post(c, action, &fields).await
    }

    /// Runs first-run setup and returns a client signed in as that admin.
    async fn admin(&self) -> Client {
        let c = client();
        let r = self
            .submit(
                &c,
                "/setup",
                "/setup",
                &[("username", "admin"), ("password", "motdepasse1"), ("password_confirm", "motdepasse1")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        self.login(&c, "admin", "motdepasse1").await;
        c
    }

    async fn login(&self, c: &Client, username: &str, password: &str) {
        let r = self.submit(c, "/login", "/login", &[("username", username), ("password", password)]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in of {username}");
        assert_eq!(location(&r), "/");
    }

    /// A new account, created through the accounts page, and a client signed in with it.
    async fn user(&self, admin: &Client, username: &str, role: &str) -> Client {
        let r = self
            .submit(admin, "/users", "/users", &[("username", username), ("password", "motdepasse2"), ("role", role)])
            .await;
        assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/users?created=1".into()), "create {username}");
        let c = client();
        self.login(&c, username, "motdepasse2").await;
        c
    }

    async fn register(&self, c: &Client, fields: &[(&str, &str)]) -> Response {
        self.submit(c, "/patients/new", "/patients", fields).await
    }

    /// Where `GET path` with only this session cookie leads ("" when it is not a redirect).
    async fn get_with_session(&self, token: &str, path: &str) -> String {
        let r = client().get(self.url(path)).header("Cookie", format!("sr_session={token}")).send().await.expect("GET");
        location(&r)
    }

    async fn patient_count(&self) -> usize {
        self.state.store.search(String::new(), 50).await.expect("search").len()
    }
}

fn client() -> Client {
    Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

fn csrf_in(html: &str) -> String {
    let start = html.find("name=\"csrf_token\" value=\"").expect("a csrf_token field") + 25;
    html[start..].split('"').next().unwrap_or_default().to_owned()
}

/// The value of a `sr_session=...; attributes` cookie, without its name.
fn session_token(cookie: &str) -> String {
    let value = cookie.trim_start_matches("sr_session=");
    value.split(';').next().unwrap_or_default().to_owned()
}

fn location(r: &Response) -> String {
    r.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn set_cookies(r: &Response) -> Vec<String> {
    r.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
}

async fn body(r: Response) -> String {
    r.text().await.expect("body")
}

const AMINATA: &[(&str, &str)] = &[
    ("given_name", "Aminata"),
    ("family_name", "Traoré"),
    ("sex", "female"),
    ("birth_date", "1990-05-17"),
    ("phone", "76 12 34 56"),
    ("village", "Kati"),
];

/// Registers Aminata and returns her chart's path.
async fn aminata(app: &App, c: &Client) -> String {
    let r = app.register(c, AMINATA).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    location(&r)
}

#[tokio::test]
async fn first_run_setup_then_sign_in_and_out() {
    let app = App::start().await;
    let c = client();
    for path in ["/", "/login", "/patients/new", "/sync"] {
        let r = app.get(&c, path).await;
        assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/setup".into()), "{path}");
    }
    let page = body(app.get(&c, "/setup").await).await;
    assert!(page.contains("name=\"password_confirm\""));

    let r = app
        .submit(
            &c,
            "/setup",
            "/setup",
            &[("username", "admin"), ("password", "motdepasse1"), ("password_confirm", "autre chose")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(r).await.contains("id=\"error-password_confirm\""));
    let r = app
        .submit(&c, "/setup", "/setup", &[("username", "a b"), ("password", "court"), ("password_confirm", "court")])
        .await;
    let page = body(r).await;
    assert!(page.contains("id=\"error-username\"") && page.contains("id=\"error-password\""));
    assert_eq!(app.state.store.user_count().await.expect("count"), 0);

    let r = app
        .submit(
            &c,
            "/setup",
            "/setup",
            &[("username", "admin"), ("password", "motdepasse1"), ("password_confirm", "motdepasse1")],
        )
        .await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/login".into()));
    // Setup happens once.
    let r = app.get(&c, "/setup").await;
    assert_eq!(location(&r), "/login");
    let r = app.get(&c, "/").await;
    assert_eq!(location(&r), "/login");

    let r = app.submit(&c, "/login", "/login", &[("username", "admin"), ("password", "mauvais mot")]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(body(r).await.contains("id=\"login-error\""));

    let r = app.submit(&c, "/login", "/login", &[("username", "admin"), ("password", "motdepasse1")]).await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/".into()));
    let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with("sr_session=")).expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Secure"), "secure_cookies is off by default");
    let first = session_token(&cookie);
    // Signing in again replaces the browser's session.
    let r = app.submit(&c, "/login", "/login", &[("username", "admin"), ("password", "motdepasse1")]).await;
    let token = set_cookies(&r)
        .iter()
        .find_map(|c| c.strip_prefix("sr_session=").map(session_token))
        .expect("new session cookie");
    assert_eq!(app.get_with_session(&first, "/").await, "/login");

    let home = body(app.get(&c, "/").await).await;
    assert!(home.contains("id=\"q\"") && home.contains("class=\"username\">admin<"));
    assert!(home.contains("href=\"/users\""), "admins see the accounts link");

    // Signing out needs the CSRF token too.
    let r = app.post(&c, "/logout", &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app.submit(&c, "/", "/logout", &[]).await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/login".into()));
    assert_eq!(location(&app.get(&c, "/").await), "/login");
    // The old cookie is dead: the session was deleted, not just forgotten.
    assert_eq!(app.get_with_session(&token, "/").await, "/login");
}

#[tokio::test]
async fn pages_need_a_live_session() {
    let app = App::start().await;
    let admin = app.admin().await;
    let chart = aminata(&app, &admin).await;
    let anonymous = client();
    for path in [
        "/",
        "/patients/new",
        chart.as_str(),
        &format!("{chart}/edit"),
        &format!("{chart}/encounters/new"),
        "/sync",
        "/users",
    ] {
        let r = app.get(&anonymous, path).await;
        assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/login".into()), "{path}");
    }
    let r = app.post(&anonymous, "/patients", AMINATA).await;
    assert_eq!(location(&r), "/login");
    assert_eq!(app.patient_count().await, 1);

    // An expired session is refused.
    let user = app.state.store.find_user("admin".into()).await.expect("find").expect("admin");
    let token = edge::auth::random_token();
    let past = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    app.state
        .store
        .create_session(edge::auth::hash_token(&token), user.id, edge::auth::random_token(), past)
        .await
        .expect("session");
    assert_eq!(app.get_with_session(&token, "/").await, "/login");
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_are_refused() {
    let app = App::start().await;
    let admin = app.admin().await;
    let chart = aminata(&app, &admin).await;
    let wrong = edge::auth::random_token();
    for token in [None, Some(wrong.as_str())] {
        let with = |fields: &[(&'static str, &'static str)]| {
            let mut f: Vec<(&str, &str)> = fields.to_vec();
            if let Some(t) = token {
                f.push(("csrf_token", t));
            }
            f
        };
        let new = [
            ("given_name", "Awa"),
            ("family_name", "Keita"),
            ("sex", "female"),
            ("age_years", "30"),
            ("village", "Ségou"),
        ];
        let r = app.post(&admin, "/patients", &with(&new)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(body(r).await.contains("Requête refusée"));
        let r = app.post(&admin, &format!("{chart}/edit"), &with(&[("village", "Bamako")])).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = app.post(&admin, &format!("{chart}/encounters"), &with(&[("kind", "consultation")])).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = app
            .post(&admin, "/users", &with(&[("username", "awa"), ("password", "motdepasse3"), ("role", "admin")]))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = app.post(&client(), "/login", &with(&[("username", "admin"), ("password", "motdepasse1")])).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(app.patient_count().await, 1);
    assert_eq!(app.state.store.user_count().await.expect("count"), 1);
    let page = body(app.get(&admin, &chart).await).await;
    assert!(page.contains("Kati") && !page.contains("class=\"card encounter\""));
}

#[tokio::test]
async fn registration_errors_are_shown_next_to_their_fields() {
    let app = App::start().await;
    let admin = app.admin().await;
    let bad = [
        ("given_name", " "),
        ("family_name", "Traoré"),
        ("sex", "female"),
        ("age_years", "trente"),
        ("phone", "12"),
        ("village", "Kati"),
        ("whatsapp_consent", "true"),
    ];
    let r = app.register(&admin, &bad).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = body(r).await;
    for field in ["given_name", "age_years", "phone"] {
        assert!(page.contains(&format!("id=\"error-{field}\"")), "no error on {field}");
    }
    assert!(!page.contains("id=\"error-birth_date\""), "the unreadable age says it all");
    assert!(page.contains("Nombre entier d&#39;années attendu") && page.contains("Ce champ est obligatoire"));
    assert!(page.contains("value=\"Traoré\"") && page.contains("value=\"trente\""), "typed values are kept");
    assert_eq!(app.patient_count().await, 0);

    let r = app.register(&admin, &[("sex", "female"), ("birth_date", "2999-01-01"), ("village", "Kati")]).await;
    let page = body(r).await;
    assert!(page.contains("id=\"error-birth_date\">Cette date est dans le futur."));
    assert_eq!(app.patient_count().await, 0);

    // An estimated age registers, marked as estimated.
    let r = app
        .register(
            &admin,
            &[
                ("given_name", "Awa"),
                ("family_name", "Keita"),
                ("sex", "female"),
                ("age_years", "30"),
                ("village", "Ségou"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let chart = body(app.get(&admin, &location(&r)).await).await;
    assert!(chart.contains("≈") && chart.contains("estimée") && chart.contains("30 ans"));
}

#[tokio::test]
async fn a_possible_duplicate_is_shown_then_registered_on_confirmation() {
    let app = App::start().await;
    let admin = app.admin().await;
    let first = aminata(&app, &admin).await;
    let again = [
        ("given_name", "aminata"),
        ("family_name", "TRAORE"),
        ("sex", "female"),
        ("birth_date", "1990-01-01"),
        ("village", "Kati"),
    ];
    let r = app.register(&admin, &again).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let page = body(r).await;
    assert!(page.contains(&format!("href=\"{first}\"")), "links to the similar patient");
    assert!(page.contains("name=\"confirm_duplicate\"") && page.contains("même nom et même année de naissance"));
    assert_eq!(app.patient_count().await, 1);

    let mut confirmed = again.to_vec();
    confirmed.push(("confirm_duplicate", "true"));
    let r = app.register(&admin, &confirmed).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_ne!(location(&r), first);
    assert_eq!(app.patient_count().await, 2);
}

#[tokio::test]
async fn search_ignores_accents_case_and_word_order() {
    let app = App::start().await;
    let admin = app.admin().await;
    let chart = aminata(&app, &admin).await;
    let link = format!("class=\"patient-link\" href=\"{chart}\"");
    for q in ["traore aminata", "TRAORÉ", "Amin", "76 12 34 56", "+22376123456"] {
        let r = admin.get(app.url("/")).query(&[("q", q)]).send().await.expect("search");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(body(r).await.contains(&link), "{q} should find her");
    }
    let page = body(admin.get(app.url("/")).query(&[("q", "Keita")]).send().await.expect("search")).await;
    assert!(!page.contains("patient-link") && page.contains("Aucun patient trouvé"));
    // An empty search lists recent patients, with what tells them apart.
    let page = body(app.get(&admin, "/").await).await;
    assert!(
        page.contains(&link) && page.contains("Kati") && page.contains("+223 76 12 34 56") && page.contains("Féminin")
    );
}

#[tokio::test]
async fn only_clinicians_record_consultations() {
    let app = App::start().await;
    let admin = app.admin().await;
    let chart = aminata(&app, &admin).await;
    let registrar = app.user(&admin, "accueil", "registrar").await;
    let clinician = app.user(&admin, "dr.diarra", "clinician").await;

    let page = body(app.get(&registrar, &chart).await).await;
    assert!(page.contains("id=\"edit-patient\"") && !page.contains("id=\"new-encounter\""));
    assert!(!page.contains("href=\"/users\""));
    assert_eq!(app.get(&registrar, &format!("{chart}/encounters/new")).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get(&registrar, "/users").await.status(), StatusCode::FORBIDDEN);
    let r = app
        .submit(&registrar, "/", &format!("{chart}/encounters"), &[("kind", "consultation"), ("complaint", "fièvre")])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(body(r).await.contains("Accès refusé"));

    let form = format!("{chart}/encounters/new");
    let page = body(app.get(&clinician, &form).await).await;
    assert!(
        page.contains("Consultation prénatale (CPN)")
            && page.contains("Tension artérielle")
            && page.contains("Code CIM-10")
    );
    let visit = [
        ("kind", "antenatal"),
        ("complaint", "Fièvre depuis 3 jours"),
        ("diagnosis", "Paludisme simple"),
        ("icd10", "b54"),
        ("weight_kg", "abc"),
        ("temperature_c", "38,5"),
        ("bp_systolic", "120"),
        ("bp_diastolic", "80"),
        ("notes", "CTA prescrit"),
    ];
    let r = app.submit(&clinician, &form, &format!("{chart}/encounters"), &visit).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = body(r).await;
    assert!(page.contains("id=\"error-weight_kg\"") && page.contains("value=\"38,5\""));

    let mut visit = visit.to_vec();
    visit[4] = ("weight_kg", "62,4");
    let r = app.submit(&clinician, &form, &format!("{chart}/encounters"), &visit).await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, chart.clone()));
    let page = body(app.get(&registrar, &chart).await).await;
    assert_eq!(page.matches("class=\"card encounter\"").count(), 1);
    for text in [
        "Consultation prénatale (CPN)",
        "Paludisme simple",
        "B54",
        "62,4 kg",
        "38,5 °C",
        "120/80",
        "CTA prescrit",
        "dr.diarra",
        "15 ans et plus",
    ] {
        assert!(page.contains(text), "the chart lacks {text}");
    }
}

#[tokio::test]
async fn editing_a_patient() {
    let app = App::start().await;
    let admin = app.admin().await;
    let chart = aminata(&app, &admin).await;
    let edit = format!("{chart}/edit");
    let page = body(app.get(&admin, &edit).await).await;
    assert!(
        page.contains("value=\"1990-05-17\"")
            && page.contains("value=\"+22376123456\"")
            && page.contains("name=\"birth_date_estimated\"")
    );

    let mut fields: Vec<(&str, &str)> = AMINATA.to_vec();
    fields[1] = ("family_name", "");
    let r = app.submit(&admin, &edit, &edit, &fields).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(r).await.contains("id=\"error-family_name\""));

    fields[1] = ("family_name", "Traoré");
    fields[5] = ("village", "Kolokani");
    fields.push(("birth_date_estimated", "true"));
    let r = app.submit(&admin, &edit, &edit, &fields).await;
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, chart.clone()));
    let page = body(app.get(&admin, &chart).await).await;
    assert!(page.contains("Kolokani") && page.contains("≈ 17/05/1990"));

    for missing in [
        "/patients/not-an-id",
        "/patients/0195f1a4-8c1e-7cc0-9a3b-1b2c3d4e5f60",
        "/patients/0195f1a4-8c1e-7cc0-9a3b-1b2c3d4e5f60/edit",
    ] {
        let r = app.get(&admin, missing).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
        assert!(body(r).await.contains("Page introuvable"));
    }
}

#[tokio::test]
async fn accounts_page_checks_its_fields() {
    let app = App::start().await;
    let admin = app.admin().await;
    app.user(&admin, "awa", "clinician").await;
    let r = app
        .submit(&admin, "/users", "/users", &[("username", "awa"), ("password", "motdepasse9"), ("role", "registrar")])
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(body(r).await.contains("id=\"error-username\">Ce nom d&#39;utilisateur est déjà pris."));
    let r = app.submit(&admin, "/users", "/users", &[("username", "x"), ("password", "court"), ("role", "chef")]).await;
    let page = body(r).await;
    for field in ["username", "password", "role"] {
        assert!(page.contains(&format!("id=\"error-{field}\"")), "no error on {field}");
    }
    let page = body(app.get(&admin, "/users?created=1").await).await;
    assert!(page.contains(">awa<") && page.contains("Soignant") && page.contains("id=\"user-created\""));
}

#[tokio::test]
async fn the_language_switch_changes_the_pages() {
    let app = App::start().await;
    let admin = app.admin().await;
    let page = body(app.get(&admin, "/sync").await).await;
    assert!(page.starts_with("<!doctype html>\n<html lang=\"fr\">"));
    assert!(page.contains("Modifications en attente d&#39;envoi") && page.contains("pas encore inscrit"));

    let r = admin.get(app.url("/lang/en")).header("Referer", app.url("/sync")).send().await.expect("switch");
    assert_eq!((r.status(), location(&r)), (StatusCode::SEE_OTHER, "/sync".into()));
    assert!(set_cookies(&r).iter().any(|c| c.starts_with("sr_lang=en") && c.contains("SameSite=Lax")));
    let page = body(app.get(&admin, "/sync").await).await;
    assert!(
        page.contains("<html lang=\"en\">")
            && page.contains("Changes waiting to be sent")
            && page.contains("not enrolled")
    );

    // A foreign Referer is not followed; an unknown language is a 404.
    let r = admin.get(app.url("/lang/fr")).header("Referer", "http://example.org/x").send().await.expect("switch");
    assert_eq!(location(&r), "/");
    assert!(body(app.get(&admin, "/").await).await.contains("<html lang=\"fr\">"));
    assert_eq!(app.get(&admin, "/lang/de").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn assets_are_embedded_and_pages_load_nothing_from_elsewhere() {
    let app = App::start().await;
    let c = client();
    let r = app.get(&c, "/assets/app.css").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().expect("type").starts_with("text/css"));
    assert!(r.headers()["cache-control"].to_str().expect("cache").contains("max-age=31536000"));
    assert!(body(r).await.contains(".patient-link"));
    assert_eq!(app.get(&c, "/assets/icon.svg").await.status(), StatusCode::OK);
    assert_eq!(app.get(&c, "/assets/missing.js").await.status(), StatusCode::NOT_FOUND);

    let admin = app.admin().await;
    let r = app.get(&admin, "/").await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = body(r).await;
    assert!(page.contains("<meta name=\"viewport\"") && page.contains("href=\"/assets/app.css?v="));
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));
}
