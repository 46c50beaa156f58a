//! Edge and hub over HTTPS, across real processes: the hub serves TLS with a
//! certificate from a test CA made here (nothing committed), the edge
//! enrolls with `--hub-ca` and pushes; the same hub is refused by an edge
//! that does not trust that CA, and a hub that changes to a certificate the
//! enrolled edge does not trust makes its sync fail as `tls_untrusted`.
//!
//! The harness's API client speaks plain HTTP only, so the hub is first run
//! on plain loopback HTTP to make a site and an enrollment token, then
//! restarted over HTTPS on the same database.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::{Method, StatusCode};
use santerurale_e2e::{Api, EdgeDir, HubDir, create_site, enrollment_token};
use serde_json::{Value, json};

const HUB_ADMIN: &str = "hub-admin";
const HUB_PASSWORD: &str = "a long hub password";
const EDGE_USER: &str = "tls-admin";
const EDGE_PASSWORD: &str = "a long edge password";

/// A certificate authority that lives for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    /// Writes the CA certificate to `dir/NAME-ca.pem` and a server
    /// certificate for localhost (chain and key) beside it.
    fn write(&self, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &self.issuer)?;
        let files = (
            dir.join(format!("{name}-ca.pem")),
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&files.0, self.issuer.pem())?;
        std::fs::write(&files.1, format!("{}{}", cert.pem(), self.issuer.pem()))?;
        std::fs::write(&files.2, key.serialize_pem())?;
        Ok(files)
    }
}

/// What `edge sync`/`edge enroll` left in the data directory that looks
/// like a device key.
fn key_files(edge: &EdgeDir) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    // The data directory exists: `edge enroll` opens the store first.
    for entry in std::fs::read_dir(edge.data_dir()).context("reading the edge's data directory")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.contains("key") {
            found.push(name);
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_syncs_with_a_hub_over_https_it_was_told_to_trust() -> anyhow::Result<()> {
    let hub_dir = HubDir::new().await?;
    hub_dir.add_admin(HUB_ADMIN, HUB_PASSWORD).await?;
    let (site_id, token) = {
        let plain = hub_dir.start().await?;
        let mut api = plain.api()?;
        api.login(HUB_ADMIN, HUB_PASSWORD).await?;
        let site = create_site(&api, "CSCom de Kati", "KATI").await?;
        let token = enrollment_token(&api, &site).await?;
        (site, token)
    };
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new("Santé Rurale test CA")?;
    let (ca_file, cert_file, key_file) = ca.write(certs.path(), "hub")?;
    let (mut hub, addr) = hub_dir.start_tls(&cert_file, &key_file).await?;
    let url = format!("https://localhost:{}", addr.port());

    // An edge that trusts only the system's authorities: refused, no key kept,
    // and the token is not spent (nothing reached the hub).
    let stranger = EdgeDir::new()?;
    let refused = stranger.run(&["enroll", "--hub", &url, "--token", &token], "").await?;
    ensure!(!refused.status.success(), "enrollment without the CA succeeded: {refused:?}");
    ensure!(
        refused.text().contains("the hub's certificate is not trusted") && refused.text().contains("--hub-ca"),
        "edge enroll without the CA said: {}",
        refused.text()
    );
    ensure!(key_files(&stranger)?.is_empty(), "a refused enrollment left {:?}", key_files(&stranger)?);
    // Plain HTTP to a hub off this machine stays refused without --insecure-http.
    let plain = stranger.run(&["enroll", "--hub", "http://192.0.2.10:8090", "--token", &token], "").await?;
    ensure!(
        !plain.status.success() && plain.text().contains("--insecure-http"),
        "plain HTTP off loopback: {}",
        plain.text()
    );
    // A CA file that cannot be read, or is not PEM, is refused before anything is sent.
    let missing = certs.path().join("missing-ca.pem");
    let unreadable =
        stranger.run(&["enroll", "--hub", &url, "--token", &token, "--hub-ca", &missing.to_string_lossy()], "").await?;
    ensure!(
        !unreadable.status.success() && unreadable.text().contains("cannot read the hub CA file"),
        "a missing CA file: {}",
        unreadable.text()
    );
    let not_pem = certs.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n")?;
    let bad_ca =
        stranger.run(&["enroll", "--hub", &url, "--token", &token, "--hub-ca", &not_pem.to_string_lossy()], "").await?;
    ensure!(
        !bad_ca.status.success() && bad_ca.text().contains("holds no PEM certificate"),
        "a non-PEM CA file: {}",
        bad_ca.text()
    );

    // The edge told to trust the CA: records offline, enrolls, pushes.
    let edge_dir = EdgeDir::new()?;
    edge_dir.add_user(EDGE_USER, "admin", EDGE_PASSWORD).await?;
    let edge = edge_dir.start().await?;
    let mut api = edge.api()?;
    api.login(EDGE_USER, EDGE_PASSWORD).await?;
    let writes = record(&api, 3).await?;
    let said =
        edge_dir.cli(&["enroll", "--hub", &url, "--token", &token, "--hub-ca", &ca_file.to_string_lossy()], "").await?;
    ensure!(said.contains(&site_id) && said.contains("https://localhost:"), "edge enroll said: {said}");
    let said = edge_dir.cli(&["sync"], "").await?;
    ensure!(said.contains(&format!("pushed {writes} changes")), "edge sync said: {said}");
    let changes = hub_dir.change_log().await?;
    ensure!(
        u64::try_from(changes.len())? == writes && changes.iter().all(|c| c.site_id == site_id),
        "the hub holds {changes:?} after {writes} writes over HTTPS"
    );
    let status = sync_status(&api).await?;
    ensure!(status["last_error"].is_null() && status["outbox_depth"] == 0, "sync status: {status}");

    // The hub comes back with a certificate from a CA this edge was not told
    // about: the sync fails for good, and says why.
    hub.kill().await?;
    let other = TestCa::new("Another CA")?;
    let (_, other_cert, other_key) = other.write(certs.path(), "other")?;
    let _hub = hub_dir.start_tls_on(addr, &other_cert, &other_key).await?;
    record(&api, 1).await?;
    let failed = edge_dir.run(&["sync"], "").await?;
    ensure!(
        !failed.status.success() && failed.text().contains("the hub's certificate is not trusted"),
        "edge sync against an untrusted certificate: {}",
        failed.text()
    );
    let status = sync_status(&api).await?;
    ensure!(status["last_error_code"] == "tls_untrusted", "sync status: {status}");
    let message = status["last_error"].as_str().context("no last_error")?;
    ensure!(message.starts_with("the hub's certificate is not trusted: "), "last_error: {message}");
    ensure!(
        u64::try_from(hub_dir.change_log().await?.len())? == writes,
        "the hub stored changes over an untrusted connection"
    );
    println!(
        "TLS: {writes} changes pushed over HTTPS with --hub-ca; untrusted certificates refused at enroll and sync"
    );
    Ok(())
}

/// Registers `patients` patients through the edge's API; the outbox changes made.
async fn record(api: &Api, patients: u64) -> anyhow::Result<u64> {
    for n in 0..patients {
        let draft = json!({
            "given_name": "Aminata",
            "family_name": format!("Traoré {n}"),
            "sex": "female",
            "age_years": 30,
            "village": "Kati",
        });
        api.register_patient(&draft, true).await?;
    }
    Ok(patients)
}

async fn sync_status(api: &Api) -> anyhow::Result<Value> {
    Ok(api.call(Method::GET, "/api/v1/sync/status", None, StatusCode::OK).await?)
}
