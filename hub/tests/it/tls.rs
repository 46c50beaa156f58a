//! The hub over HTTPS: served with a certificate from a test CA made here
//! (never a committed key), it answers a client that trusts that CA and
//! fails the handshake of one that does not, without harm to later
//! connections; bad certificate files are clear errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hub::AppState;
use hub::config::Config;
use hub::tls::{TlsError, load_server_config};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::support::TestDb;

/// A certificate authority that lives for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses): the
    /// chain (leaf, then this CA) and the key, as PEM.
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(names).expect("params").signed_by(&key, &self.issuer).expect("sign");
        (format!("{}{}", cert.pem(), self.pem()), key.serialize_pem())
    }

    /// Writes a server certificate for localhost and 127.0.0.1 into `dir`;
    /// returns the chain and key files.
    pub fn write_server_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (chain, key) = self.server_cert(&["localhost", "127.0.0.1"]);
        let (cert_file, key_file) = (dir.join("hub-cert.pem"), dir.join("hub-key.pem"));
        std::fs::write(&cert_file, chain).expect("write the certificate");
        std::fs::write(&key_file, key).expect("write the key");
        (cert_file, key_file)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("root");
        roots
    }
}

/// `GET /health` over TLS trusting only `ca`, as raw HTTP/1.1 (no client
/// library between the test and the bytes); the whole answer, or the
/// handshake's error.
async fn get_health(addr: std::net::SocketAddr, ca: &TestCa) -> Result<String, std::io::Error> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn serves_https_to_clients_that_trust_its_ca_only() {
    let db = TestDb::new().await;
    let pool = db.migrated_pool().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Santé Rurale test CA");
    let (cert_file, key_file) = ca.write_server_files(dir.path());
    let tls = load_server_config(&cert_file, &key_file).expect("load the certificate");
    let config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    let state = AppState::new(config, pool).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(hub::serve_tls(listener, state, tls, async move {
        let _ = stopped.await;
    }));

    let answer = get_health(addr, &ca).await.expect("a client trusting the CA gets through");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""database":"ok""#), "{answer}");

    let stranger = TestCa::new("Some other CA");
    let refused = get_health(addr, &stranger).await.expect_err("a client trusting another CA must not connect");
    let inner = refused.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(inner, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))),
        "{refused:?}"
    );

    // A failed handshake costs that connection only.
    let again = get_health(addr, &ca).await.expect("the hub still serves");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    stop.send(()).expect("the server is running");
    server.await.expect("join").expect("graceful shutdown");
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
}

#[test]
fn bad_certificate_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("test CA");
    let (cert_file, key_file) = ca.write_server_files(dir.path());
    let (_, other_key) = ca.server_cert(&["localhost"]);
    let other_key_file = dir.path().join("other-key.pem");
    std::fs::write(&other_key_file, other_key).expect("write");

    let missing = dir.path().join("missing.pem");
    let e = load_server_config(&missing, &key_file).expect_err("missing certificate");
    assert!(matches!(e, TlsError::Read { what: "certificate", .. }), "{e:?}");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    // The key file holds no certificate, the certificate file no key.
    assert!(matches!(load_server_config(&key_file, &key_file), Err(TlsError::NoCertificate { .. })));
    assert!(matches!(load_server_config(&cert_file, &cert_file), Err(TlsError::NoKey { .. })));
    // A key that is not the certificate's.
    let e = load_server_config(&cert_file, &other_key_file).expect_err("mismatched key");
    assert!(matches!(e, TlsError::Config(_)), "{e:?}");
    load_server_config(&cert_file, &key_file).expect("the right pair loads");
}
