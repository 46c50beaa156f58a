//! The HTTP client of the DHIS2 Web API: posting a `dataValueSet` and looking
//! up metadata by code. No database here. The facts it follows are in
//! `../shared/interop-facts.md` section 1.
//!
//! # Requests
//! - `POST {base}/api/dataValueSets?dryRun=..&idScheme=UID|CODE&importStrategy=CREATE_AND_UPDATE`
//!   with the JSON body, synchronously (no `async=true`): the answer is the
//!   import summary itself.
//! - `GET {base}/api/dataSets`, `/api/dataElements` and
//!   `/api/organisationUnits` with `filter=code:in:[A,B]`, the `fields`
//!   needed and `paging=false`, at most [`CODES_PER_REQUEST`] codes at a time
//!   (a long `in` list makes a URL some proxies refuse).
//!
//! Authentication is one `Authorization` header: `Basic base64(user:pass)`,
//! or `ApiToken d2pat_...` for a personal access token (DHIS2 2.37+). The
//! header is marked sensitive and never logged or shown by `Debug`.
//!
//! # Two generations of answers
//! - DHIS2 2.37 and before: the root object is the `ImportSummary`
//!   (`responseType: "ImportSummary"`), HTTP 200 even with conflicts.
//! - 2.38 and later: a WebMessage `{httpStatus, httpStatusCode, status,
//!   message, response: {responseType: "ImportSummary", ...}}`, 200 when the
//!   summary is `SUCCESS` and **409** when it is `WARNING` or `ERROR`.
//!
//! [`parse_import_response`] reads both: a 200 or 409 whose body holds an
//! import summary is an answer ([`ImportAnswer`], possibly with conflicts),
//! never a transport failure, and is not retried. Conflicts keep DHIS2's
//! `errorCode`, `object`, `value` (our `message`) and `property`; old
//! versions send only `object` and `value`.
//!
//! # Failures ([`Dhis2Error`])
//! 401 (bad credentials, expired token), 403 (missing authority), 400, 415,
//! other 4xx and a 409 without a summary are final; network errors,
//! timeouts, 5xx and 429 are worth retrying ([`Dhis2Error::is_retryable`]).
//! A certificate that does not verify is final too: retrying cannot help
//! until someone changes the certificate or `HUB_DHIS2_CA_FILE`. Whatever
//! DHIS2 sent with an error is kept ([`Dhis2Error::response_body`]) so the
//! admin sees it.
//!
//! # Transport
//! HTTP/1.1 over hyper with rustls (ring), as the edge's hub client does
//! (`edge/src/sync/client.rs` explains why not reqwest). `https://` DHIS2s
//! must present a certificate chaining to the system's authorities, or to
//! the PEM file `HUB_DHIS2_CA_FILE` only. Connecting may take 20 s; a whole
//! request `request_timeout_seconds`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use santerurale_server::tls::{self, HttpsClient};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payload::{DataValueSet, IdScheme, ImportConflict, ImportCount, ImportStatus, ImportSummary};
use crate::config::Dhis2Config;

/// A connection that cannot be made in this time is a failed attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest answer read: an import summary lists at most one conflict per
/// value sent, metadata answers are a few objects per code asked.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Most of an error's body kept (in errors and the job table).
const MAX_KEPT_ERROR_BYTES: usize = 64 * 1024;
/// Codes per metadata request.
pub const CODES_PER_REQUEST: usize = 50;

/// How to import: `dryRun` and the id scheme of the payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    pub dry_run: bool,
    pub id_scheme: IdScheme,
}

/// A DHIS2 import answer: the HTTP status (200, or 409 on 2.38+ with
/// conflicts), the body as received and the summary read from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportAnswer {
    pub http_status: u16,
    pub body: Value,
    pub summary: ImportSummary,
}

/// A data set, from `/api/dataSets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaDataSet {
    pub id: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub name: String,
    /// DHIS2's name of the period type: `Monthly`, `Weekly`, `Quarterly`...
    #[serde(default)]
    pub period_type: String,
}

/// A data element and the category option combos of its category combo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetaDataElement {
    pub id: String,
    pub code: Option<String>,
    pub name: String,
    pub category_option_combos: Vec<MetaCoc>,
}

/// A category option combo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaCoc {
    pub id: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// An organisation unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaOrgUnit {
    pub id: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// Why a DHIS2 request failed (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum Dhis2Error {
    #[error(
        "DHIS2 is not configured: set HUB_DHIS2_URL (and HUB_DHIS2_USERNAME with HUB_DHIS2_PASSWORD, or HUB_DHIS2_TOKEN)"
    )]
    NotConfigured,
    /// The configuration is there but cannot be used (a bad URL or CA file).
    #[error("the DHIS2 connection settings cannot be used: {reason}")]
    BadConfig {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("cannot reach DHIS2")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("DHIS2 did not answer within {0:?}")]
    Timeout(Duration),
    #[error("DHIS2 answered HTTP {status} (a server error; it will be retried){}", detail(.body))]
    ServerError { status: u16, body: Option<Value> },
    #[error(
        "DHIS2 refused the credentials (HTTP 401): check HUB_DHIS2_USERNAME and HUB_DHIS2_PASSWORD, or \
         HUB_DHIS2_TOKEN (personal access tokens expire, after 30 days by default)"
    )]
    Unauthorized { body: Option<Value> },
    #[error(
        "DHIS2 refused the request (HTTP 403): the DHIS2 user lacks an authority (F_DATAVALUE_ADD to import \
         data values) or access to the data set or organisation units{}",
        detail(.body)
    )]
    Forbidden { body: Option<Value> },
    #[error("DHIS2 rejected the request (HTTP {status}){}", detail(.body))]
    Rejected { status: u16, body: Option<Value> },
    #[error("DHIS2's answer (HTTP {status}) cannot be read: {reason}")]
    BadResponse { status: u16, reason: String, body: Option<Value> },
    /// The DHIS2's TLS certificate does not verify against the trusted
    /// authorities.
    #[error("the DHIS2 server's certificate is not trusted (see HUB_DHIS2_CA_FILE)")]
    TlsUntrusted(#[source] rustls::Error),
}

/// `: <DHIS2's message>` when the body carries one.
fn detail(body: &Option<Value>) -> String {
    body.as_ref()
        .and_then(|b| b.get("message"))
        .and_then(Value::as_str)
        .map(|m| format!(": {}", truncate(m, 500)))
        .unwrap_or_default()
}

impl Dhis2Error {
    /// Whether trying again later may succeed: network errors, timeouts, 5xx
    /// and 429. An answer DHIS2 gave on purpose (401, 403, 400, 415, a 409
    /// with conflicts) would be given again.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_) | Self::ServerError { .. })
    }

    /// A stable machine-readable name.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotConfigured | Self::BadConfig { .. } => "not_configured",
            Self::Unreachable(_) => "unreachable",
            Self::Timeout(_) => "timeout",
            Self::ServerError { .. } => "server_error",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::Rejected { .. } => "rejected",
            Self::BadResponse { .. } => "bad_response",
            Self::TlsUntrusted(_) => "tls_untrusted",
        }
    }

    /// The HTTP status DHIS2 answered, when it answered.
    #[must_use]
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::ServerError { status, .. } | Self::Rejected { status, .. } | Self::BadResponse { status, .. } => {
                Some(*status)
            }
            Self::Unauthorized { .. } => Some(401),
            Self::Forbidden { .. } => Some(403),
            _ => None,
        }
    }

    /// What DHIS2 sent, when it sent something: its JSON, or its text as a
    /// JSON string (at most 64 KiB).
    #[must_use]
    pub fn response_body(&self) -> Option<&Value> {
        match self {
            Self::ServerError { body, .. }
            | Self::Unauthorized { body }
            | Self::Forbidden { body }
            | Self::Rejected { body, .. }
            | Self::BadResponse { body, .. } => body.as_ref(),
            _ => None,
        }
    }

    fn bad_config(reason: impl Into<String>) -> Self {
        Self::BadConfig { reason: reason.into(), source: None }
    }

    /// A failed exchange: a certificate that does not verify, else a
    /// network failure.
    fn from_request(e: hyper_util::client::legacy::Error) -> Self {
        match tls::certificate_error(&e) {
            Some(tls) => Self::TlsUntrusted(tls),
            None => Self::Unreachable(Box::new(e)),
        }
    }
}

/// A client for the configured DHIS2. Cheap to clone.
#[derive(Clone)]
pub struct Dhis2Client {
    /// Without a trailing slash (nor `/api`).
    base: String,
    /// The `Authorization` header value (sensitive), and its scheme for `Debug`.
    auth: Option<(HeaderValue, &'static str)>,
    request_timeout: Duration,
    http: HttpsClient,
}

impl std::fmt::Debug for Dhis2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dhis2Client")
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map_or("none", |(_, scheme)| scheme))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Dhis2Client {
    /// The client for `config`; [`Dhis2Error::NotConfigured`] without a URL.
    pub fn new(config: &Dhis2Config) -> Result<Self, Dhis2Error> {
        let url = config.url.as_deref().map(str::trim).filter(|u| !u.is_empty()).ok_or(Dhis2Error::NotConfigured)?;
        let base = check_url(url)?;
        let https = base.starts_with("https://");
        let roots = match &config.ca_file {
            Some(path) if !https => {
                return Err(Dhis2Error::bad_config(format!(
                    "a CA file ({}) only makes sense with an https:// DHIS2, not {base}",
                    path.display()
                )));
            }
            Some(path) => read_ca(path)?,
            None if https => system_roots()?,
            // Plain HTTP never verifies a certificate.
            None => RootCertStore::empty(),
        };
        let http = tls::https_client(roots, CONNECT_TIMEOUT)
            .map_err(|e| Dhis2Error::BadConfig { reason: "cannot set up TLS".into(), source: Some(Box::new(e)) })?;
        Ok(Self { base, auth: authorization(config)?, request_timeout: request_timeout(config), http })
    }

    /// The DHIS2 base URL, without a trailing slash.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/dataValueSets`: the import answer (whatever its status), or
    /// why there is none.
    pub async fn post_data_value_set(
        &self,
        set: &DataValueSet,
        options: ImportOptions,
    ) -> Result<ImportAnswer, Dhis2Error> {
        let body = serde_json::to_vec(set).map_err(|e| Dhis2Error::BadConfig {
            reason: "cannot encode the payload".into(),
            source: Some(e.into()),
        })?;
        let query = format!(
            "dryRun={}&idScheme={}&importStrategy=CREATE_AND_UPDATE",
            options.dry_run,
            options.id_scheme.as_param()
        );
        let (status, bytes) = self.send(Method::POST, "/api/dataValueSets", &query, Some(body)).await?;
        parse_import_response(status, &bytes)
    }

    /// Data sets with these codes (those that exist).
    pub async fn data_sets_by_code(&self, codes: &[String]) -> Result<Vec<MetaDataSet>, Dhis2Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            data_sets: Vec<MetaDataSet>,
        }
        let mut found = Vec::new();
        for chunk in codes.chunks(CODES_PER_REQUEST) {
            let answer: Answer = self.metadata("/api/dataSets", chunk, "id,code,name,periodType").await?;
            found.extend(answer.data_sets);
        }
        Ok(found)
    }

    /// Data elements with these codes, each with its category combo's COCs.
    pub async fn data_elements_by_code(&self, codes: &[String]) -> Result<Vec<MetaDataElement>, Dhis2Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Combo {
            #[serde(default)]
            category_option_combos: Vec<MetaCoc>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Element {
            id: String,
            #[serde(default)]
            code: Option<String>,
            #[serde(default)]
            name: String,
            #[serde(default)]
            category_combo: Option<Combo>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            data_elements: Vec<Element>,
        }
        let fields = "id,code,name,categoryCombo[id,code,categoryOptionCombos[id,code,name]]";
        let mut found = Vec::new();
        for chunk in codes.chunks(CODES_PER_REQUEST) {
            let answer: Answer = self.metadata("/api/dataElements", chunk, fields).await?;
            found.extend(answer.data_elements.into_iter().map(|e| MetaDataElement {
                id: e.id,
                code: e.code,
                name: e.name,
                category_option_combos: e.category_combo.map(|c| c.category_option_combos).unwrap_or_default(),
            }));
        }
        Ok(found)
    }

    /// Organisation units with these codes.
    pub async fn org_units_by_code(&self, codes: &[String]) -> Result<Vec<MetaOrgUnit>, Dhis2Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            #[serde(default)]
            organisation_units: Vec<MetaOrgUnit>,
        }
        let mut found = Vec::new();
        for chunk in codes.chunks(CODES_PER_REQUEST) {
            let answer: Answer = self.metadata("/api/organisationUnits", chunk, "id,code,name").await?;
            found.extend(answer.organisation_units);
        }
        Ok(found)
    }

    /// `GET path?filter=code:in:[codes]&fields=..&paging=false`, read as `T`.
    async fn metadata<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        codes: &[String],
        fields: &str,
    ) -> Result<T, Dhis2Error> {
        let filter = format!("code:in:[{}]", codes.join(","));
        let query =
            format!("filter={}&fields={}&paging=false", encode_query_value(&filter), encode_query_value(fields));
        let (status, bytes) = self.send(Method::GET, path, &query, None).await?;
        if !(200..300).contains(&status) {
            return Err(status_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| Dhis2Error::BadResponse {
            status,
            reason: format!("not the expected metadata list: {e}"),
            body: Some(kept_body(&bytes)),
        })
    }

    /// Sends one request and reads the whole answer within the request timeout.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), Dhis2Error> {
        let uri = format!("{}{path}?{query}", self.base);
        let mut builder = Request::builder().method(method.clone()).uri(&uri).header(ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some((value, _)) = &self.auth {
            builder = builder.header(AUTHORIZATION, value.clone());
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| {
            Dhis2Error::BadConfig { reason: format!("cannot build a request to {uri}"), source: Some(Box::new(e)) }
        })?;
        let started = Instant::now();
        let exchange = async {
            let response = self.http.request(request).await.map_err(Dhis2Error::from_request)?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(Dhis2Error::Unreachable)?
                .to_bytes();
            Ok((status, body))
        };
        let result: Result<(u16, Bytes), Dhis2Error> = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| Dhis2Error::Timeout(self.request_timeout))?;
        match &result {
            Ok((status, body)) => tracing::debug!(
                %method, path, status, bytes = body.len(), elapsed_ms = started.elapsed().as_millis(), "DHIS2 answered"
            ),
            Err(e) => tracing::debug!(%method, path, code = e.code(), "DHIS2 request failed"),
        }
        result
    }
}

/// The header for the configured credentials: a token wins over a user.
fn authorization(config: &Dhis2Config) -> Result<Option<(HeaderValue, &'static str)>, Dhis2Error> {
    let (value, scheme) = if let Some(token) = &config.token {
        (format!("ApiToken {}", token.expose().trim()), "ApiToken")
    } else if let (Some(user), Some(password)) = (&config.username, &config.password) {
        (format!("Basic {}", STANDARD.encode(format!("{user}:{}", password.expose()))), "Basic")
    } else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| Dhis2Error::bad_config("the DHIS2 credentials hold characters an HTTP header cannot carry"))?;
    value.set_sensitive(true);
    Ok(Some((value, scheme)))
}

fn request_timeout(config: &Dhis2Config) -> Duration {
    Duration::from_secs(config.request_timeout_seconds.max(1))
}

/// The base URL without a trailing `/` nor `/api` (people paste either), or
/// why it is refused.
fn check_url(raw: &str) -> Result<String, Dhis2Error> {
    let uri: Uri = raw.parse().map_err(|_| Dhis2Error::bad_config(format!("{raw:?} is not a valid URL")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(Dhis2Error::bad_config(format!("the DHIS2 URL must start with https:// or http://, not {raw:?}")));
    }
    if uri.host().is_none_or(str::is_empty) || uri.query().is_some() || raw.contains('@') {
        return Err(Dhis2Error::bad_config(format!(
            "{raw:?} is not a DHIS2 base URL like https://dhis2.example.org (no credentials nor query in it)"
        )));
    }
    let mut base = raw.trim_end_matches('/');
    if let Some(stripped) = base.strip_suffix("/api") {
        base = stripped.trim_end_matches('/');
    }
    Ok(base.to_owned())
}

fn read_ca(path: &std::path::Path) -> Result<RootCertStore, Dhis2Error> {
    let pem = std::fs::read(path).map_err(|e| Dhis2Error::BadConfig {
        reason: format!("cannot read the DHIS2 CA file {}", path.display()),
        source: Some(Box::new(e)),
    })?;
    let certs =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| Dhis2Error::BadConfig {
            reason: format!("the DHIS2 CA file {} is not valid PEM", path.display()),
            source: Some(Box::new(e)),
        })?;
    if certs.is_empty() {
        return Err(Dhis2Error::bad_config(format!(
            "the DHIS2 CA file {} holds no certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| Dhis2Error::BadConfig {
            reason: format!("the DHIS2 CA file {} holds a certificate that cannot be a trust anchor", path.display()),
            source: Some(Box::new(e)),
        })?;
    }
    Ok(roots)
}

/// The authorities the system trusts (`/etc/ssl/certs` and the like).
fn system_roots() -> Result<RootCertStore, Dhis2Error> {
    tls::system_roots().ok_or_else(|| {
        Dhis2Error::bad_config(
            "no trusted certificate authorities were found on this system to check DHIS2's certificate with; \
             install the ca-certificates package, or set HUB_DHIS2_CA_FILE",
        )
    })
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved kept).
fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The body as kept with an error: its JSON, else its text as a JSON
/// string, at most [`MAX_KEPT_ERROR_BYTES`].
fn kept_body(bytes: &[u8]) -> Value {
    if bytes.len() <= MAX_KEPT_ERROR_BYTES
        && let Ok(json) = serde_json::from_slice::<Value>(bytes)
    {
        return json;
    }
    let text = String::from_utf8_lossy(bytes);
    Value::String(truncate(&text, MAX_KEPT_ERROR_BYTES).to_owned())
}

/// The error for a status that carries no import summary.
fn status_error(status: u16, bytes: &[u8]) -> Dhis2Error {
    let body = (!bytes.is_empty()).then(|| kept_body(bytes));
    match status {
        401 => Dhis2Error::Unauthorized { body },
        403 => Dhis2Error::Forbidden { body },
        429 | 500..=599 => Dhis2Error::ServerError { status, body },
        400..=499 => Dhis2Error::Rejected { status, body },
        // A redirection (to a login page, or from http to https) or a status
        // DHIS2 never sends here.
        300..=399 => Dhis2Error::Rejected { status, body },
        _ => Dhis2Error::BadResponse { status, reason: "unexpected HTTP status".into(), body },
    }
}

/// Reads a `POST /api/dataValueSets` answer of either generation (see the
/// module docs). Pure: the status and the body bytes.
pub fn parse_import_response(http_status: u16, body: &[u8]) -> Result<ImportAnswer, Dhis2Error> {
    let success = (200..300).contains(&http_status);
    if !success && http_status != 409 {
        return Err(status_error(http_status, body));
    }
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) if success => {
            return Err(Dhis2Error::BadResponse {
                status: http_status,
                reason: format!("not JSON: {e}"),
                body: (!body.is_empty()).then(|| kept_body(body)),
            });
        }
        Err(_) => return Err(status_error(http_status, body)),
    };
    match read_summary(&json) {
        Ok(summary) => Ok(ImportAnswer { http_status, body: json, summary }),
        Err(reason) if success => {
            Err(Dhis2Error::BadResponse { status: http_status, reason, body: Some(kept_body(body)) })
        }
        // A 409 without a summary (another conflict): DHIS2 said no.
        Err(_) => Err(Dhis2Error::Rejected { status: http_status, body: Some(kept_body(body)) }),
    }
}

/// The import summary inside either generation's body, or why there is none.
fn read_summary(root: &Value) -> Result<ImportSummary, String> {
    let object = if root.get("responseType").is_some() {
        root
    } else {
        root.get("response").filter(|r| r.is_object()).ok_or("no import summary (no responseType nor response)")?
    };
    match object.get("responseType").and_then(Value::as_str) {
        Some("ImportSummary") | None => {}
        Some(other) => return Err(format!("a {other}, not an ImportSummary (was async=true used?)")),
    }
    let status = match object.get("status").and_then(Value::as_str) {
        Some("SUCCESS" | "OK") => ImportStatus::Success,
        Some("WARNING") => ImportStatus::Warning,
        Some("ERROR") => ImportStatus::Error,
        Some(other) => return Err(format!("unknown import status {other:?}")),
        None => return Err("the import summary has no status".into()),
    };
    let count =
        |name: &str| object.get("importCount").and_then(|c| c.get(name)).and_then(Value::as_u64).unwrap_or_default();
    let import_count = ImportCount {
        imported: count("imported"),
        updated: count("updated"),
        ignored: count("ignored"),
        deleted: count("deleted"),
    };
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let conflicts = object
        .get("conflicts")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|c| ImportConflict {
                    error_code: text(c, "errorCode"),
                    object: text(c, "object").unwrap_or_default(),
                    message: text(c, "value").unwrap_or_default(),
                    property: text(c, "property"),
                })
                .collect()
        })
        .unwrap_or_default();
    // An import that failed as a whole describes why here ("The import
    // process failed: ...").
    let description = text(object, "description").filter(|d| !d.is_empty());
    Ok(ImportSummary { status, description, import_count, conflicts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).expect("json")
    }

    #[test]
    fn an_old_summary_at_the_root_with_conflicts_and_200() {
        // DHIS2 2.36/2.37: conflicts with only object and value.
        let body = json!({
            "responseType": "ImportSummary", "status": "WARNING",
            "importOptions": {"idSchemes": {}, "dryRun": false, "async": false, "importStrategy": "CREATE_AND_UPDATE"},
            "description": "Import process completed successfully",
            "importCount": {"imported": 5, "updated": 0, "ignored": 2, "deleted": 0},
            "conflicts": [
                {"object": "ouNotAssig1", "value": "Data element: `deConsTot01` must be assigned through data sets to organisation unit: `ouNotAssig1`"},
                {"object": "202401", "value": "Current date is past expiry days for period: `202401`  and data set: `srMonthly01`"}
            ],
            "dataSetComplete": "false"
        });
        let answer = parse_import_response(200, &bytes(&body)).expect("an answer");
        assert_eq!(answer.http_status, 200);
        assert_eq!(answer.body, body);
        let s = answer.summary;
        assert_eq!(s.status, ImportStatus::Warning);
        assert_eq!(s.import_count, ImportCount { imported: 5, updated: 0, ignored: 2, deleted: 0 });
        assert_eq!(s.conflicts.len(), 2);
        assert_eq!(s.conflicts[0].error_code, None);
        assert_eq!(s.conflicts[0].object, "ouNotAssig1");
        assert!(s.conflicts[1].message.starts_with("Current date is past expiry days"), "{:?}", s.conflicts[1]);
        assert_eq!(s.description.as_deref(), Some("Import process completed successfully"));
    }

    #[test]
    fn a_new_web_message_with_success_and_200() {
        let body = json!({
            "httpStatus": "OK", "httpStatusCode": 200, "status": "OK", "message": "Import was successful.",
            "response": {
                "responseType": "ImportSummary", "status": "SUCCESS",
                "importOptions": {"idSchemes": {}, "dryRun": true, "async": false},
                "description": "Import process completed successfully",
                "importCount": {"imported": 3, "updated": 4, "ignored": 0, "deleted": 0},
                "conflicts": [], "rejectedIndexes": [], "dataSetComplete": "2024-05-02"
            }
        });
        let answer = parse_import_response(200, &bytes(&body)).expect("an answer");
        assert_eq!(answer.summary.status, ImportStatus::Success);
        assert_eq!(answer.summary.import_count, ImportCount { imported: 3, updated: 4, ignored: 0, deleted: 0 });
        assert!(answer.summary.conflicts.is_empty());
    }

    #[test]
    fn a_409_warning_with_conflicts_is_an_answer_not_a_failure() {
        let body = json!({
            "httpStatus": "Conflict", "httpStatusCode": 409, "status": "WARNING",
            "message": "One more conflicts encountered, please check import summary.",
            "response": {
                "responseType": "ImportSummary", "status": "WARNING",
                "importOptions": {"idSchemes": {}, "dryRun": false},
                "description": "Import process completed successfully",
                "importCount": {"imported": 1, "updated": 1, "ignored": 6, "deleted": 0},
                "conflicts": [
                    {"object": "cocSexX0001", "objects": {"categoryOptionCombo": "cocSexX0001"},
                     "value": "Category option combo: `cocSexX0001` must be part of category combo of data element: `deConsTot01`",
                     "errorCode": "E7634", "property": "categoryOptionCombo", "indexes": [0, 2]},
                    {"object": "202401", "objects": {"period": "202401"},
                     "value": "Current date is past expiry days for period: `202401`  and data set: `srMonthly01`",
                     "errorCode": "E7640", "property": "period", "indexes": [3, 4, 5, 6]}
                ],
                "rejectedIndexes": [0, 2, 3, 4, 5, 6], "dataSetComplete": "false"
            }
        });
        let answer = parse_import_response(409, &bytes(&body)).expect("a 409 with a summary is an answer");
        assert_eq!(answer.http_status, 409);
        let s = &answer.summary;
        assert_eq!(s.status, ImportStatus::Warning);
        assert_eq!(s.import_count.ignored, 6);
        let codes: Vec<_> = s.conflicts.iter().map(|c| c.error_code.as_deref()).collect();
        assert_eq!(codes, [Some("E7634"), Some("E7640")]);
        assert_eq!(s.conflicts[0].object, "cocSexX0001");
        assert_eq!(s.conflicts[0].property.as_deref(), Some("categoryOptionCombo"));
        assert!(s.conflicts[1].message.contains("`202401`"));
    }

    #[test]
    fn a_409_error_for_an_unknown_org_unit() {
        let body = json!({
            "httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
            "message": "An error occurred, please check import summary.",
            "response": {
                "responseType": "ImportSummary", "status": "ERROR",
                "description": "Import process completed successfully",
                "importCount": {"imported": 0, "updated": 0, "ignored": 7, "deleted": 0},
                "conflicts": [{"object": "ouNope00001", "objects": {"orgUnit": "ouNope00001"},
                    "value": "Org unit not found or not accessible: `ouNope00001`", "errorCode": "E7603",
                    "property": "orgUnit", "indexes": []}],
                "rejectedIndexes": [], "dataSetComplete": "false"
            }
        });
        let answer = parse_import_response(409, &bytes(&body)).expect("an answer");
        assert_eq!(answer.summary.status, ImportStatus::Error);
        assert_eq!(answer.summary.conflicts[0].error_code.as_deref(), Some("E7603"));
        assert_eq!(answer.summary.import_count.ignored, 7);
    }

    #[test]
    fn failures_without_a_summary_are_classified() {
        let proxy_page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        let e = parse_import_response(502, proxy_page).expect_err("a 502");
        assert!(matches!(e, Dhis2Error::ServerError { status: 502, .. }), "{e:?}");
        assert!(e.is_retryable());
        assert_eq!(e.code(), "server_error");
        assert_eq!(e.http_status(), Some(502));
        assert_eq!(e.response_body(), Some(&Value::String(String::from_utf8_lossy(proxy_page).into_owned())));

        let unauthorized = json!({"httpStatus": "Unauthorized", "httpStatusCode": 401, "status": "ERROR",
            "message": "Unauthorized"});
        let e = parse_import_response(401, &bytes(&unauthorized)).expect_err("401");
        assert_eq!((e.code(), e.is_retryable(), e.http_status()), ("unauthorized", false, Some(401)));
        assert!(e.to_string().contains("HUB_DHIS2_TOKEN"), "{e}");
        assert_eq!(e.response_body(), Some(&unauthorized));

        let e = parse_import_response(403, b"").expect_err("403");
        assert_eq!((e.code(), e.is_retryable(), e.response_body()), ("forbidden", false, None));
        for status in [400, 415] {
            let e = parse_import_response(status, b"{\"message\":\"no\"}").expect_err("4xx");
            assert_eq!((e.code(), e.is_retryable()), ("rejected", false), "{status}");
            assert!(e.to_string().ends_with(": no"), "{e}");
        }
        let e = parse_import_response(429, b"slow down").expect_err("429");
        assert_eq!((e.code(), e.is_retryable()), ("server_error", true));
        // A 409 that is not an import summary: DHIS2 said no; not retried.
        let e = parse_import_response(409, br#"{"httpStatusCode":409,"status":"ERROR","message":"x"}"#)
            .expect_err("409 without summary");
        assert_eq!((e.code(), e.is_retryable()), ("rejected", false));
        // A 200 that is not a summary (a login page behind a proxy).
        let e = parse_import_response(200, b"<html>login</html>").expect_err("200 html");
        assert_eq!((e.code(), e.is_retryable()), ("bad_response", false));
        let e = parse_import_response(200, br#"{"hello":"world"}"#).expect_err("200 json");
        assert_eq!(e.code(), "bad_response");
    }

    #[test]
    fn kept_bodies_are_bounded() {
        let big = "x".repeat(MAX_KEPT_ERROR_BYTES * 2);
        let e = parse_import_response(503, big.as_bytes()).expect_err("503");
        assert_eq!(e.response_body().and_then(Value::as_str).map(str::len), Some(MAX_KEPT_ERROR_BYTES));
    }

    #[test]
    fn retryability_and_codes_of_the_other_failures() {
        assert_eq!(
            (Dhis2Error::NotConfigured.code(), Dhis2Error::NotConfigured.is_retryable()),
            ("not_configured", false)
        );
        let t = Dhis2Error::Timeout(Duration::from_secs(1));
        assert_eq!((t.code(), t.is_retryable()), ("timeout", true));
        let u = Dhis2Error::Unreachable(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert_eq!((u.code(), u.is_retryable(), u.http_status()), ("unreachable", true, None));
        let tls = Dhis2Error::TlsUntrusted(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        assert_eq!((tls.code(), tls.is_retryable()), ("tls_untrusted", false));
    }

    fn config(url: &str) -> Dhis2Config {
        Dhis2Config { url: Some(url.into()), ..Dhis2Config::default() }
    }

    #[test]
    fn urls_credentials_and_debug() {
        assert!(matches!(Dhis2Client::new(&Dhis2Config::default()), Err(Dhis2Error::NotConfigured)));
        for (given, base) in [
            ("https://dhis2.example.org/", "https://dhis2.example.org"),
            ("https://dhis2.example.org/api/", "https://dhis2.example.org"),
            ("http://127.0.0.1:8080/dhis", "http://127.0.0.1:8080/dhis"),
        ] {
            assert_eq!(check_url(given).expect(given), base);
        }
        for bad in ["dhis2.example.org", "ftp://x.org", "https://user:pw@x.org", "https://x.org/?a=b"] {
            assert!(matches!(check_url(bad), Err(Dhis2Error::BadConfig { .. })), "{bad}");
        }
        let token = Dhis2Config { token: Some(Secret("d2pat_secret1234".into())), ..config("http://127.0.0.1:1") };
        let client = Dhis2Client::new(&token).expect("client");
        let (value, _) = client.auth.as_ref().expect("auth");
        assert_eq!(value.to_str().expect("ascii"), "ApiToken d2pat_secret1234");
        assert!(value.is_sensitive());
        let shown = format!("{client:?}");
        assert!(shown.contains("ApiToken") && !shown.contains("secret1234"), "{shown}");

        let basic = Dhis2Config {
            username: Some("admin".into()),
            password: Some(Secret("district".into())),
            ..config("http://127.0.0.1:1")
        };
        let client = Dhis2Client::new(&basic).expect("client");
        let (value, _) = client.auth.as_ref().expect("auth");
        assert_eq!(value.to_str().expect("ascii"), format!("Basic {}", STANDARD.encode("admin:district")));
        assert!(!format!("{client:?}").contains("district"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("code:in:[A_B,C-D]"), "code%3Ain%3A%5BA_B%2CC-D%5D");
        assert_eq!(encode_query_value("categoryCombo[id]"), "categoryCombo%5Bid%5D");
    }
}
