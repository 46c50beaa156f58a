//! The clinic workflow in a real browser: headless Chromium on a 360×800
//! phone-sized window, driven through chromedriver (WebDriver) by fantoccini,
//! against a real `edge` process.
//!
//! Scenario: sign in at `/login`; register Aminata Traoré at `/patients/new`;
//! find her from the search box on `/` by typing "TRAORE aminata" (case,
//! accents and word order do not matter); open her chart from the
//! `a.patient-link` result; record a consultation whose temperature is typed
//! the French way ("38,5"); see it as an `.encounter` on the chart. Then the
//! registration form, given the phone "123", must come back with the field
//! error `#error-phone`. The API checks that what the browser wrote is stored
//! with the right values (phone in E.164, 38.5 °C), and that the refused form
//! stored nothing.
//!
//! The form-error step turns off the browser's own form validation
//! (`novalidate`), so it proves the server validates and renders the error
//! whatever the HTML attributes say.
//!
//! Every wait polls for an element or a condition with a deadline; nothing
//! sleeps. Chromedriver runs in its own process group, killed with the browser
//! when the test ends, failed or not.
//!
//! Needs Chromium and chromedriver: `CHROMIUM` (default `/usr/bin/chromium`)
//! and `CHROMEDRIVER` (default `/usr/bin/chromedriver`), from
//! `apt-get install -y chromium chromium-driver`. Without them the test
//! fails, saying so: it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use fantoccini::elements::Element;
use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use santerurale_e2e::{
    Api, EdgeDir, EdgeProcess, POLL_INTERVAL, ProcessGroupGuard, free_port, poll_until, tail, temp_dir,
};
use serde_json::{Value, json};
use tempfile::TempDir;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "mot-de-passe-du-test";
/// Longest wait for an element or a page change (a debug build on a small machine).
const WAIT: Duration = Duration::from_secs(15);
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A program the test needs, from `env` or its Debian path.
fn tool(env: &str, default: &str, what: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    ensure!(
        path.is_file(),
        "{what} not found at {} (set {env} to its path). The browser test needs Chromium and its WebDriver: \
         apt-get install -y chromium chromium-driver",
        path.display()
    );
    Ok(path)
}

/// Chromedriver, the browser session, and the browser's profile directory.
struct Browser {
    client: Client,
    driver: ProcessGroupGuard,
    driver_log: PathBuf,
    profile: TempDir,
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium", "Chromium")?;
        let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromedriver")?;
        let profile = temp_dir("santerurale-chromium-")?;
        let driver_log = profile.path().join("chromedriver.log");
        let (driver, url) = start_chromedriver(&chromedriver, &driver_log).await?;

        let user_data_dir = profile.path().join("user-data");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-proxy-server",
                    "--window-size=360,800",
                    format!("--user-data-dir={}", user_data_dir.display()),
                ],
            }),
        );
        let client =
            ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&url).await.with_context(|| {
                format!(
                    "chromedriver could not start Chromium ({}); its log ends with:\n{}",
                    chromium.display(),
                    tail(&std::fs::read_to_string(&driver_log).unwrap_or_default(), 30)
                )
            })?;
        Ok(Self { client, driver, driver_log, profile })
    }

    /// Ends the session (chromedriver quits Chromium), then chromedriver.
    /// Dropping a `Browser` without this still kills both, by process group.
    async fn close(self) -> anyhow::Result<()> {
        let closed = tokio::time::timeout(WAIT, self.client.close()).await;
        drop(self.driver);
        drop(self.profile);
        closed.context("closing the browser session timed out")?.context("closing the browser session")?;
        Ok(())
    }
}

/// Starts chromedriver on a free port and waits for `/status` to say ready.
async fn start_chromedriver(bin: &Path, log: &Path) -> anyhow::Result<(ProcessGroupGuard, String)> {
    const ATTEMPTS: usize = 5;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
    for attempt in 1..=ATTEMPTS {
        let port = free_port()?;
        let out = std::fs::File::options().create(true).append(true).open(log)?;
        let mut driver = ProcessGroupGuard::spawn(
            "chromedriver",
            Command::new(bin).arg(format!("--port={port}")).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out),
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
        loop {
            if driver.ensure_running().is_err() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if text.contains("Address already in use") && attempt < ATTEMPTS {
                    break;
                }
                bail!("chromedriver exited at start; its output ends with:\n{}", tail(&text, 20));
            }
            if let Ok(resp) = http.get(format!("{url}/status")).send().await
                && resp.json::<Value>().await.is_ok_and(|s| s["value"]["ready"] == true)
            {
                return Ok((driver, url));
            }
            if Instant::now() >= deadline {
                bail!("chromedriver did not become ready on {url} within {DRIVER_READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    bail!("could not find a free port for chromedriver in {ATTEMPTS} attempts")
}

/// The page as it is now, for error messages: URL and the start of its text.
async fn describe_page(c: &Client) -> String {
    let url = c.current_url().await.map(|u| u.to_string()).unwrap_or_else(|e| format!("<no url: {e}>"));
    let text = c
        .execute("return document.body ? document.body.innerText : document.documentElement.outerHTML", vec![])
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let text: String = text.chars().take(800).collect();
    format!("the browser is at {url}; the page says:\n{text}")
}

/// Waits for the first element matching `css`.
async fn find(c: &Client, css: &str, step: &str) -> anyhow::Result<Element> {
    match c.wait().at_most(WAIT).every(POLL_INTERVAL).for_element(Locator::Css(css)).await {
        Ok(el) => Ok(el),
        Err(e) => bail!("{step}: no element `{css}` within {WAIT:?} ({e}); {}", describe_page(c).await),
    }
}

/// Waits until the current page has been replaced by another (the `html`
/// element of the old one goes stale): after a click that navigates.
async fn wait_for_new_page(c: &Client, old_root: &Element, step: &str) -> anyhow::Result<()> {
    let result = poll_until(&format!("{step}: the next page"), WAIT, || async {
        match old_root.tag_name().await {
            Ok(_) => Ok(None),
            Err(CmdError::Standard(w)) if w.error == ErrorStatus::StaleElementReference => Ok(Some(())),
            // Chromium sometimes answers for a node of a replaced document
            // with an "unknown error" instead of a stale element reference.
            Err(CmdError::Standard(w)) if w.message.contains("does not belong to the document") => Ok(Some(())),
            Err(e) => Err(e.into()),
        }
    })
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => bail!("{e:#}; {}", describe_page(c).await),
    }
}

async fn set_by_script(c: &Client, el: &Element, script: &str, value: &str) -> anyhow::Result<()> {
    c.execute(script, vec![serde_json::to_value(el)?, json!(value)]).await?;
    Ok(())
}

const SET_VALUE: &str = "arguments[0].value = arguments[1];
    arguments[0].dispatchEvent(new Event('input', { bubbles: true }));
    arguments[0].dispatchEvent(new Event('change', { bubbles: true }));";

/// Fills the form field `name` with `value` the way its kind needs: a select
/// by value, a radio by clicking the right one, a text field by typing.
async fn fill(c: &Client, name: &str, value: &str, step: &str) -> anyhow::Result<()> {
    let el = find(c, &format!("[name=\"{name}\"]"), step).await?;
    let tag = el.tag_name().await?.to_ascii_lowercase();
    let kind = el.attr("type").await?.unwrap_or_default().to_ascii_lowercase();
    match (tag.as_str(), kind.as_str()) {
        ("select", _) => {
            el.select_by_value(value).await.with_context(|| format!("{step}: no option {value:?} in select {name}"))?
        }
        ("input", "radio" | "checkbox") => {
            let choice = find(c, &format!("input[name=\"{name}\"][value=\"{value}\"]"), step).await?;
            if choice.click().await.is_err() {
                // A styled radio whose input is hidden behind its label.
                c.execute("arguments[0].click();", vec![serde_json::to_value(&choice)?]).await?;
            }
        }
        // A date picker's typing depends on the browser's locale; a hidden field cannot be typed in.
        ("input", "date" | "hidden") => set_by_script(c, &el, SET_VALUE, value).await?,
        _ => {
            el.clear().await?;
            el.send_keys(value).await.with_context(|| format!("{step}: typing into {name}"))?;
        }
    }
    Ok(())
}

/// Submits the form that holds field `name` with its submit button, and
/// waits for the page that answers.
async fn submit(c: &Client, name: &str, step: &str) -> anyhow::Result<()> {
    let field = find(c, &format!("[name=\"{name}\"]"), step).await?;
    let form = field
        .find(Locator::XPath("./ancestor::form"))
        .await
        .with_context(|| format!("{step}: field {name} is not inside a form"))?;
    let old_root = c.find(Locator::Css("html")).await?;
    match form.find(Locator::Css("button[type=submit], input[type=submit], button:not([type])")).await {
        Ok(button) => button.click().await.with_context(|| format!("{step}: clicking the submit button"))?,
        Err(_) => {
            c.execute("arguments[0].requestSubmit();", vec![serde_json::to_value(&form)?]).await?;
        }
    }
    wait_for_new_page(c, &old_root, step).await
}

/// Fails if the page shows field errors (after a submission meant to succeed).
async fn no_field_errors(c: &Client, step: &str) -> anyhow::Result<()> {
    let errors = c.find_all(Locator::Css(".field-error")).await?;
    if errors.is_empty() {
        return Ok(());
    }
    let mut texts = Vec::new();
    for e in errors {
        texts.push(format!("{}: {}", e.attr("id").await?.unwrap_or_default(), e.text().await?));
    }
    bail!("{step}: the form was refused: {texts:?}; {}", describe_page(c).await)
}

async fn path_of(c: &Client) -> anyhow::Result<String> {
    Ok(c.current_url().await?.path().to_owned())
}

async fn goto(c: &Client, edge: &EdgeProcess, path: &str) -> anyhow::Result<()> {
    c.goto(&edge.url(path)).await.with_context(|| format!("loading {path}"))
}

/// Fills the registration form (already loaded) with one patient.
async fn fill_registration(
    c: &Client,
    given: &str,
    family: &str,
    sex: &str,
    phone: &str,
    step: &str,
) -> anyhow::Result<()> {
    fill(c, "given_name", given, step).await?;
    fill(c, "family_name", family, step).await?;
    fill(c, "sex", sex, step).await?;
    // An estimated age when the form offers one (the usual case here), else a birth date.
    if c.find(Locator::Css("[name=\"age_years\"]")).await.is_ok() {
        fill(c, "age_years", "28", step).await?;
    } else {
        fill(c, "birth_date", "1998-03-14", step).await?;
    }
    fill(c, "phone", phone, step).await?;
    fill(c, "village", "Kati", step).await
}

async fn scenario(c: &Client, edge: &EdgeProcess, api: &Api) -> anyhow::Result<()> {
    // The browser reaches the edge at all.
    goto(c, edge, "/health").await?;
    let health = find(c, "body", "health").await?.text().await?;
    ensure!(health.contains("ok"), "GET /health in the browser shows {health:?}");
    println!("browser: Chromium reached {}/health", edge.base_url());

    let step = "sign in";
    goto(c, edge, "/login").await?;
    fill(c, "username", ADMIN, step).await?;
    fill(c, "password", ADMIN_PASSWORD, step).await?;
    submit(c, "password", step).await?;
    ensure!(path_of(c).await? != "/login", "{step}: still on the sign-in page; {}", describe_page(c).await);
    println!("browser: signed in");

    let step = "register a patient";
    goto(c, edge, "/patients/new").await?;
    fill_registration(c, "Aminata", "Traoré", "female", "76 12 34 56", step).await?;
    submit(c, "given_name", step).await?;
    no_field_errors(c, step).await?;
    let path = path_of(c).await?;
    ensure!(
        path != "/patients/new" && path != "/patients",
        "{step}: the form did not go through; {}",
        describe_page(c).await
    );
    println!("browser: registered Aminata Traoré (now at {path})");

    let step = "search";
    goto(c, edge, "/").await?;
    fill(c, "q", "TRAORE aminata", step).await?;
    submit(c, "q", step).await?;
    let link = find(c, "a.patient-link", step).await?;
    let text = link.text().await?;
    ensure!(text.to_lowercase().contains("aminata"), "{step}: the first result is {text:?}");
    let old_root = c.find(Locator::Css("html")).await?;
    link.click().await?;
    wait_for_new_page(c, &old_root, "open the chart").await?;
    let chart = path_of(c).await?;
    let patient_id = chart
        .strip_prefix("/patients/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .with_context(|| format!("the result link led to {chart}, not to /patients/{{id}}"))?
        .to_owned();
    println!("browser: found her by \"TRAORE aminata\"; chart {chart}");

    let step = "record a consultation";
    let new_encounter = format!("/patients/{patient_id}/encounters/new");
    match c.find(Locator::Css(&format!("a[href$=\"{new_encounter}\"]"))).await {
        Ok(link) => {
            let old_root = c.find(Locator::Css("html")).await?;
            link.click().await?;
            wait_for_new_page(c, &old_root, step).await?;
        }
        Err(_) => goto(c, edge, &new_encounter).await?,
    }
    fill(c, "kind", "consultation", step).await?;
    fill(c, "complaint", "Fièvre et frissons depuis deux jours", step).await?;
    fill(c, "diagnosis", "Paludisme simple", step).await?;
    fill(c, "icd10", "B54", step).await?;
    fill(c, "temperature_c", "38,5", step).await?;
    submit(c, "diagnosis", step).await?;
    no_field_errors(c, step).await?;
    let shown = poll_until(&format!("{step}: an .encounter with \"Paludisme simple\""), WAIT, || async {
        for e in c.find_all(Locator::Css(".encounter")).await? {
            if e.text().await?.contains("Paludisme simple") {
                return Ok(Some(()));
            }
        }
        Ok(None)
    })
    .await;
    if let Err(e) = shown {
        bail!("{e:#}; {}", describe_page(c).await);
    }
    println!("browser: the chart shows the consultation");

    // What the browser wrote, as the API reads it back.
    let found = api.search("TRAORE aminata").await?;
    ensure!(found.len() == 1, "API search finds {} patients: {found:?}", found.len());
    let patient = api.patient(&patient_id).await?;
    ensure!(patient["family_name"] == "Traoré" && patient["given_name"] == "Aminata", "stored as {patient}");
    ensure!(patient["phone"] == "+22376123456", "phone stored as {}", patient["phone"]);
    ensure!(patient["village"] == "Kati" && patient["sex"] == "female", "stored as {patient}");
    let encounters = patient["encounters"].as_array().context("no encounters")?;
    ensure!(encounters.len() == 1, "{} encounters stored", encounters.len());
    let enc = &encounters[0];
    ensure!(
        enc["kind"] == "consultation"
            && enc["diagnosis"] == "Paludisme simple"
            && enc["icd10"] == "B54"
            && enc["temperature_c"].as_f64() == Some(38.5),
        "encounter stored as {enc}"
    );

    let step = "refuse a bad phone";
    goto(c, edge, "/patients/new").await?;
    fill_registration(c, "Moussa", "Diarra", "male", "123", step).await?;
    let form = find(c, "[name=\"phone\"]", step).await?.find(Locator::XPath("./ancestor::form")).await?;
    c.execute("arguments[0].noValidate = true;", vec![serde_json::to_value(&form)?]).await?;
    submit(c, "phone", step).await?;
    // Read once the new page holds it: an element found while the page was
    // still being replaced can vanish with the old document.
    let said = poll_until(&format!("{step}: the text of #error-phone"), WAIT, || async {
        match c.find(Locator::Css("#error-phone")).await {
            Ok(el) => Ok(el.text().await.ok().filter(|t| !t.trim().is_empty())),
            Err(_) => Ok(None),
        }
    })
    .await?;
    ensure!(api.search("Diarra").await?.is_empty(), "{step}: the refused patient was stored");
    println!("browser: the phone \"123\" is refused with #error-phone: {said:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_find_and_consult_in_chromium() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = EdgeDir::new()?;
    dir.add_user(ADMIN, "admin", ADMIN_PASSWORD).await?;
    let edge = dir.start().await?;
    let mut api = edge.api()?;
    api.login(ADMIN, ADMIN_PASSWORD).await?;

    let browser = Browser::start().await?;
    let outcome = scenario(&browser.client, &edge, &api).await;
    if outcome.is_err() {
        // Kept with SANTERURALE_E2E_KEEP=1.
        if let Ok(png) = browser.client.screenshot().await {
            let _ = std::fs::write(dir.root().join("failure.png"), png);
        }
        eprintln!("chromedriver log: {}; edge log: {}", browser.driver_log.display(), dir.log_path().display());
        eprintln!("edge log ends with:\n{}", tail(&edge.log(), 20));
    }
    let closed = browser.close().await;
    outcome?;
    closed?;
    println!("browser test passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
