//! HTTP to the hub: the enrollment call, signed pushes and pulls, and how each way
//! of failing is classified. No database here.
//!
//! # Transport
//! HTTP/1.1 over hyper, with rustls (ring provider) for `https://` hubs.
//! reqwest is not used here on purpose: its rustls backend without a built-in
//! provider makes every reqwest client in the process panic unless a
//! process-wide provider was installed first, and the workspace's tests
//! build plain reqwest clients everywhere.
//!
//! # Which hubs are trusted
//! - `https://`: the hub's certificate must chain to the system's trusted
//!   authorities (`/etc/ssl/certs` and the like, through
//!   `rustls-native-certs`), or, when the operator gave `edge enroll --hub-ca
//!   FILE`, to the authorities in that PEM file only ([`HubCa`]). The PEM
//!   is checked at enrollment and kept in `meta` (`hub_ca_pem`), so every
//!   later sync trusts the same authority. A certificate that does not verify
//!   (unknown issuer, expired, wrong name) is [`HubError::Untrusted`]:
//!   permanent, code `tls_untrusted`, shown on the sync page; retrying cannot
//!   help until the hub's certificate or the edge's CA changes.
//! - `http://`: only to a loopback address, or when the operator said
//!   `--insecure-http` (recorded at enrollment and honoured by every sync).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use santerurale_server::tls::{self, HttpsClient};
use santerurale_shared::sync::{
    CodecError, ErrorBody, PULL_PATH, PUSH_PATH, PullRequest, PullResponse, PushOutcome, PushRequest, PushResponse,
    SigningKey, decode_pull_response, decode_push_response, encode_pull, encode_push, sign,
};
use santerurale_shared::{DeviceId, SiteId};
use serde::{Deserialize, Serialize};

/// `POST` path of an enrollment.
pub const ENROLL_PATH: &str = "/api/v1/devices/enroll";
/// A connection that cannot be made in this time is a failed attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A whole request, upload included: a full batch takes about a minute at
/// 2G speeds, so leave room.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest push response inflated (it is three integers); also the most of
/// an enrollment answer or an error body read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Room in a pull page for one change larger than the page budget.
const MAX_SINGLE_CHANGE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HubUrlError {
    #[error("the hub URL {0:?} is not a valid URL")]
    Invalid(String),
    #[error("the hub URL must start with https:// or http://, not {0:?}")]
    Scheme(String),
    #[error(
        "the hub URL {0} is plain HTTP to a non-loopback address: the traffic would not be encrypted. \
         Use the hub's https:// address, or pass --insecure-http to accept that (for example on a trusted \
         private network)"
    )]
    InsecureHttp(String),
    #[error("a hub CA file only makes sense with an https:// hub URL, not {0}")]
    CaNeedsHttps(String),
    #[error(transparent)]
    Ca(#[from] HubCaError),
    #[error(
        "no trusted certificate authorities were found on this system to check the hub's certificate with; \
         install the ca-certificates package, or enroll with --hub-ca FILE"
    )]
    NoSystemRoots,
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
}

/// Why a CA file (or the CA kept at enrollment) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HubCaError {
    #[error("cannot read the hub CA file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the hub CA {origin} is not valid PEM")]
    Pem {
        origin: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the hub CA {origin} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { origin: String },
    #[error("the hub CA {origin} holds a certificate that cannot be a trust anchor")]
    Invalid {
        origin: String,
        #[source]
        source: rustls::Error,
    },
}

/// The certificate authorities an operator told this edge to trust for its
/// hub (`edge enroll --hub-ca FILE`), instead of the system's: the PEM text
/// as given, and the parsed roots.
#[derive(Clone)]
pub struct HubCa {
    pem: String,
    roots: Arc<RootCertStore>,
}

impl HubCa {
    /// Reads and checks a PEM file of one or more CA certificates.
    pub fn read(path: &Path) -> Result<Self, HubCaError> {
        let pem = std::fs::read_to_string(path).map_err(|source| HubCaError::Read { path: path.to_owned(), source })?;
        Self::from_pem(pem, &format!("file {}", path.display()))
    }

    /// Checks PEM text; `origin` names it in errors ("file /x/ca.pem").
    pub fn from_pem(pem: String, origin: &str) -> Result<Self, HubCaError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| HubCaError::Pem { origin: origin.to_owned(), source })?;
        if certs.is_empty() {
            return Err(HubCaError::NoCertificate { origin: origin.to_owned() });
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|source| HubCaError::Invalid { origin: origin.to_owned(), source })?;
        }
        Ok(Self { pem, roots: Arc::new(roots) })
    }

    /// The PEM text, as kept in `meta`.
    #[must_use]
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

impl std::fmt::Debug for HubCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubCa").field("certificates", &self.roots.len()).finish()
    }
}

/// The hub this edge is enrolled with, as kept in `meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEndpoint {
    pub url: String,
    /// The operator accepted plain HTTP to a non-loopback hub.
    pub insecure_http: bool,
    /// The CA given at enrollment (`--hub-ca`), as PEM.
    pub ca_pem: Option<String>,
}

/// What went wrong on the way to the hub and back (below HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("cannot read the hub's answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot build the request")]
    Build(#[source] hyper::http::Error),
}

/// Why a request to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot reach the hub")]
    Network(#[source] TransportError),
    /// The hub's TLS certificate does not verify against the trusted
    /// authorities (see the module docs).
    #[error("the hub's certificate is not trusted")]
    Untrusted(#[source] rustls::Error),
    /// The hub answered with its JSON error body.
    #[error("{code}: {message}")]
    Refused { status: u16, code: String, message: String, retryable: Option<bool> },
    /// An error status without a readable error body (a proxy's page).
    #[error("the hub answered HTTP {status}")]
    Status { status: u16 },
    #[error("the hub's answer does not decode")]
    BadResponse(#[source] CodecError),
    #[error("cannot encode the request")]
    Encode(#[source] CodecError),
    /// A pulled page decoded but does not apply (a change that is not one,
    /// or that belongs to another patient): refused whole.
    #[error("the hub's page after cursor {cursor} does not apply; it was refused whole")]
    PageRefused {
        cursor: u64,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("the hub answered cursor {next_cursor} to a pull from {cursor}: it must move forward")]
    PullCursor { cursor: u64, next_cursor: u64 },
}

impl HubError {
    /// What the push planner should make of it.
    #[must_use]
    pub fn outcome(&self) -> PushOutcome {
        match self {
            Self::Network(_) => PushOutcome::from_failure(None, None),
            Self::Refused { status, retryable, .. } => PushOutcome::from_failure(Some(*status), *retryable),
            Self::Status { status } => PushOutcome::from_failure(Some(*status), None),
            // A garbled answer may come from a broken link; re-sending is harmless.
            Self::BadResponse(_) => PushOutcome::Retryable,
            // The same page would fail the same way until the hub is fixed;
            // the same certificate would fail the same way until someone
            // changes it or the edge's CA.
            Self::Encode(_) | Self::PageRefused { .. } | Self::PullCursor { .. } | Self::Untrusted(_) => {
                PushOutcome::Permanent
            }
        }
    }

    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self.outcome(), PushOutcome::Retryable)
    }

    /// The hub's machine-readable code, when it sent one.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A failed exchange: a certificate that does not verify, else a
    /// network failure.
    fn from_request(e: hyper_util::client::legacy::Error) -> Self {
        match tls::certificate_error(&e) {
            Some(tls) => Self::Untrusted(tls),
            None => Self::Network(TransportError::Request(e)),
        }
    }
}

#[derive(Debug, Serialize)]
struct EnrollRequest<'a> {
    token: &'a str,
    device_id: DeviceId,
    public_key: String,
}

/// The hub's answer to a successful enrollment.
#[derive(Debug, Clone, Deserialize)]
pub struct EnrollResponse {
    pub site_id: SiteId,
    pub device_id: DeviceId,
    pub site_name: String,
    pub site_code: String,
}

/// Errors of the enrollment endpoint: `{code, message}` (no `retryable`).
#[derive(Debug, Deserialize)]
struct EnrollErrorBody {
    code: String,
    message: String,
}

/// A client for one hub.
#[derive(Debug, Clone)]
pub struct HubClient {
    /// Without a trailing slash.
    base: String,
    http: HttpsClient,
}

impl HubClient {
    /// Checks `hub_url` (see the module docs) and builds the client; with
    /// `ca`, an `https://` hub must present a certificate from that CA.
    pub fn new(hub_url: &str, allow_insecure_http: bool, ca: Option<&HubCa>) -> Result<Self, HubUrlError> {
        let base = check_hub_url(hub_url, allow_insecure_http)?;
        let https = base.starts_with("https://");
        let roots = match ca {
            Some(_) if !https => return Err(HubUrlError::CaNeedsHttps(base)),
            Some(ca) => Arc::clone(&ca.roots),
            None if https => Arc::new(system_roots()?),
            // Plain HTTP never verifies a certificate.
            None => Arc::new(RootCertStore::empty()),
        };
        let http = tls::https_client(roots, CONNECT_TIMEOUT).map_err(HubUrlError::Tls)?;
        Ok(Self { base, http })
    }

    /// The client for the hub this edge is enrolled with.
    pub fn for_endpoint(hub: &HubEndpoint) -> Result<Self, HubUrlError> {
        let ca = hub.ca_pem.clone().map(|pem| HubCa::from_pem(pem, "kept at enrollment")).transpose()?;
        Self::new(&hub.url, hub.insecure_http, ca.as_ref())
    }

    /// The normalised hub URL (what is stored in `meta`).
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /health` within `timeout`: whether the hub answered 2xx. The
    /// scheduler's cheap check that the link is back (see
    /// [`super::scheduler`]); the answer's body is not read.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let request =
            Request::builder().method(Method::GET).uri(format!("{}/health", self.base)).body(Full::new(Bytes::new()));
        let Ok(request) = request else {
            return false;
        };
        matches!(tokio::time::timeout(timeout, self.http.request(request)).await, Ok(Ok(r)) if r.status().is_success())
    }

    pub(crate) async fn enroll(
        &self,
        token: &str,
        device_id: DeviceId,
        key: &SigningKey,
    ) -> Result<EnrollResponse, HubError> {
        let body =
            EnrollRequest { token, device_id, public_key: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()) };
        let json = serde_json::to_vec(&body).map_err(|e| HubError::Network(TransportError::Body(Box::new(e))))?;
        let request = self.post(ENROLL_PATH, "application/json").body(Full::new(Bytes::from(json)));
        let (status, bytes) = self.send(request, MAX_RESPONSE_BYTES).await?;
        if status == StatusCode::CREATED || status == StatusCode::OK {
            return serde_json::from_slice(&bytes).map_err(|_| HubError::Status { status: status.as_u16() });
        }
        Err(match serde_json::from_slice::<EnrollErrorBody>(&bytes) {
            Ok(e) => HubError::Refused { status: status.as_u16(), code: e.code, message: e.message, retryable: None },
            Err(_) => HubError::Status { status: status.as_u16() },
        })
    }

    /// Encodes, signs and sends one push.
    pub(crate) async fn push(&self, key: &SigningKey, request: &PushRequest) -> Result<PushResponse, HubError> {
        let body = encode_push(request).map_err(HubError::Encode)?;
        let bytes = self.post_signed(key, request.device_id, PUSH_PATH, body, MAX_RESPONSE_BYTES).await?;
        decode_push_response(&bytes, MAX_RESPONSE_BYTES).map_err(HubError::BadResponse)
    }

    /// Encodes, signs and sends one pull; returns the page.
    pub(crate) async fn pull(&self, key: &SigningKey, request: &PullRequest) -> Result<PullResponse, HubError> {
        let body = encode_pull(request).map_err(HubError::Encode)?;
        let limit = pull_response_limit(request.max_bytes);
        let bytes = self.post_signed(key, request.device_id, PULL_PATH, body, limit).await?;
        decode_pull_response(&bytes, limit).map_err(HubError::BadResponse)
    }

    /// Signs `body` (as sent, compressed) and `POST`s it to `path`; returns
    /// the body of a 2xx answer (at most `limit` bytes as sent), or the
    /// hub's error.
    pub(super) async fn post_signed(
        &self,
        key: &SigningKey,
        device_id: DeviceId,
        path: &str,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<u8>, HubError> {
        let headers = sign(key, device_id, "POST", path, &body, unix_now(), rand::random());
        let mut builder = self.post(path, santerurale_shared::sync::wire::CONTENT_TYPE);
        for (name, value) in headers.to_pairs() {
            builder = builder.header(name, value);
        }
        let (status, bytes) = self.send(builder.body(Full::new(Bytes::from(body))), limit).await?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => HubError::Refused {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
                retryable: Some(e.retryable),
            },
            Err(_) => HubError::Status { status: status.as_u16() },
        })
    }

    fn post(&self, path: &str, content_type: &str) -> hyper::http::request::Builder {
        Request::builder().method(Method::POST).uri(format!("{}{path}", self.base)).header(CONTENT_TYPE, content_type)
    }

    /// Sends `request` and reads the whole answer, at most `limit` bytes of
    /// body, all within [`REQUEST_TIMEOUT`].
    async fn send(
        &self,
        request: Result<Request<Full<Bytes>>, hyper::http::Error>,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), HubError> {
        let request = request.map_err(|e| HubError::Network(TransportError::Build(e)))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(HubError::from_request)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| HubError::Network(TransportError::Body(e)))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| HubError::Network(TransportError::Timeout(REQUEST_TIMEOUT)))?
    }
}

/// The authorities the system trusts (`/etc/ssl/certs` and the like).
fn system_roots() -> Result<RootCertStore, HubUrlError> {
    tls::system_roots().ok_or(HubUrlError::NoSystemRoots)
}

/// Largest pull page inflated: the budget asked for, framing (a patient id,
/// a seq and a length per change: far below the change itself), and room
/// for the one oversized change the hub may send alone.
fn pull_response_limit(max_bytes: u32) -> usize {
    usize::try_from(max_bytes).unwrap_or(usize::MAX).saturating_mul(2).saturating_add(MAX_SINGLE_CHANGE)
}

fn unix_now() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Returns the URL without a trailing slash, or why it is refused.
pub fn check_hub_url(raw: &str, allow_insecure_http: bool) -> Result<String, HubUrlError> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| HubUrlError::Invalid(raw.to_owned()))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => return Err(HubUrlError::Scheme(raw.to_owned())),
    };
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(HubUrlError::Invalid(raw.to_owned()));
    }
    let Some(host) = url.host_str() else {
        return Err(HubUrlError::Invalid(raw.to_owned()));
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let base = url.as_str().trim_end_matches('/').to_owned();
    if !https && !loopback && !allow_insecure_http {
        return Err(HubUrlError::InsecureHttp(base));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_unless_the_operator_insists() {
        for ok in ["http://127.0.0.1:8443", "http://localhost:80/", "http://[::1]:9000", "http://127.0.0.2"] {
            assert!(check_hub_url(ok, false).is_ok(), "{ok}");
        }
        assert_eq!(check_hub_url("http://localhost:80/", false).expect("ok"), "http://localhost");
        assert!(matches!(check_hub_url("http://hub.example.org", false), Err(HubUrlError::InsecureHttp(_))));
        assert!(matches!(check_hub_url("http://10.0.0.5:8080", false), Err(HubUrlError::InsecureHttp(_))));
        assert_eq!(check_hub_url("http://10.0.0.5:8080/", true).expect("ok"), "http://10.0.0.5:8080");
        assert_eq!(check_hub_url("https://Hub.example.org:443/", false).expect("ok"), "https://hub.example.org");
        assert_eq!(check_hub_url("https://10.0.0.5:8443", false).expect("ok"), "https://10.0.0.5:8443");
        assert!(matches!(check_hub_url("ftp://hub.example.org", true), Err(HubUrlError::Scheme(_))));
        assert!(matches!(check_hub_url("not a url", true), Err(HubUrlError::Invalid(_))));
    }

    #[test]
    fn a_hub_ca_must_be_pem_certificates() {
        let no_pem = HubCa::from_pem("just some text\n".into(), "file x.pem");
        assert!(matches!(no_pem, Err(HubCaError::NoCertificate { .. })), "{no_pem:?}");
        let garbled = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(HubCa::from_pem(garbled.into(), "file x.pem"), Err(HubCaError::Pem { .. })));
        let key_only = rcgen::KeyPair::generate().expect("key").serialize_pem();
        assert!(matches!(HubCa::from_pem(key_only, "file x.pem"), Err(HubCaError::NoCertificate { .. })));

        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("CA").pem();
        let ca = HubCa::from_pem(pem.clone(), "file ca.pem").expect("a CA certificate");
        assert_eq!(ca.pem(), pem);
        assert!(HubClient::new("https://hub.example.org", false, Some(&ca)).is_ok());
        // A CA says nothing to plain HTTP: a mistake worth reporting.
        let plain = HubClient::new("http://127.0.0.1:8090", false, Some(&ca));
        assert!(matches!(plain, Err(HubUrlError::CaNeedsHttps(_))), "{plain:?}");
    }

    #[test]
    fn failures_are_classified_for_the_planner() {
        let refused =
            |status, retryable| HubError::Refused { status, code: "c".into(), message: "m".into(), retryable };
        assert_eq!(refused(403, Some(false)).outcome(), PushOutcome::Permanent);
        assert_eq!(refused(413, Some(false)).outcome(), PushOutcome::TooLarge);
        assert_eq!(refused(503, Some(true)).outcome(), PushOutcome::Retryable);
        assert_eq!(HubError::Status { status: 502 }.outcome(), PushOutcome::Retryable);
        assert_eq!(HubError::Status { status: 404 }.outcome(), PushOutcome::Permanent);
        let untrusted = HubError::Untrusted(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        assert_eq!(untrusted.outcome(), PushOutcome::Permanent);
        assert_eq!(
            santerurale_server::error_chain(&untrusted),
            "the hub's certificate is not trusted: invalid peer certificate: UnknownIssuer"
        );
    }
}
