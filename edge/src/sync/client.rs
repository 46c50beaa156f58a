//! HTTP to the hub: the enrollment call, signed pushes and pulls, and how each way
//! of failing is classified. No database here.
//!
//! Plain HTTP only for now (TLS is a later item): a hub URL must be
//! `http://` on a loopback address, or the operator must say
//! `--insecure-http`, recorded at enrollment and honoured by every sync.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
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
/// Largest push response inflated (it is three integers).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Room in a pull page for one change larger than the page budget.
const MAX_SINGLE_CHANGE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HubUrlError {
    #[error("the hub URL {0:?} is not a valid URL")]
    Invalid(String),
    #[error("the hub URL must start with http:// (https:// support is not built yet), not {0:?}")]
    Scheme(String),
    #[error(
        "the hub URL {0} is plain HTTP to a non-loopback address: the traffic would not be encrypted. \
         Pass --insecure-http to accept that (for example on a trusted private network)"
    )]
    InsecureHttp(String),
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Why a request to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot reach the hub")]
    Network(#[source] reqwest::Error),
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
            // The same page would fail the same way until the hub is fixed.
            Self::Encode(_) | Self::PageRefused { .. } | Self::PullCursor { .. } => PushOutcome::Permanent,
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
    http: reqwest::Client,
}

impl HubClient {
    /// Checks `hub_url` (see the module docs) and builds the client.
    pub fn new(hub_url: &str, allow_insecure_http: bool) -> Result<Self, HubUrlError> {
        let base = check_hub_url(hub_url, allow_insecure_http)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(HubUrlError::Client)?;
        Ok(Self { base, http })
    }

    /// The normalised hub URL (what is stored in `meta`).
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) async fn enroll(
        &self,
        token: &str,
        device_id: DeviceId,
        key: &SigningKey,
    ) -> Result<EnrollResponse, HubError> {
        let body =
            EnrollRequest { token, device_id, public_key: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()) };
        let response = self
            .http
            .post(format!("{}{ENROLL_PATH}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(HubError::Network)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(HubError::Network)?;
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
        let bytes = self.post_signed(key, request.device_id, PUSH_PATH, body).await?;
        decode_push_response(&bytes, MAX_RESPONSE_BYTES).map_err(HubError::BadResponse)
    }

    /// Encodes, signs and sends one pull; returns the page.
    pub(crate) async fn pull(&self, key: &SigningKey, request: &PullRequest) -> Result<PullResponse, HubError> {
        let body = encode_pull(request).map_err(HubError::Encode)?;
        let bytes = self.post_signed(key, request.device_id, PULL_PATH, body).await?;
        decode_pull_response(&bytes, pull_response_limit(request.max_bytes)).map_err(HubError::BadResponse)
    }

    /// Signs `body` (as sent, compressed) and `POST`s it to `path`; returns
    /// the body of a 2xx answer, or the hub's error.
    async fn post_signed(
        &self,
        key: &SigningKey,
        device_id: DeviceId,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, HubError> {
        let headers = sign(key, device_id, "POST", path, &body, unix_now(), rand::random());
        let mut builder = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, santerurale_shared::sync::wire::CONTENT_TYPE);
        for (name, value) in headers.to_pairs() {
            builder = builder.header(name, value);
        }
        let response = builder.body(body).send().await.map_err(HubError::Network)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(HubError::Network)?;
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
    if url.scheme() != "http" {
        return Err(HubUrlError::Scheme(raw.to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(HubUrlError::Invalid(raw.to_owned()));
    }
    let Some(host) = url.host_str() else {
        return Err(HubUrlError::Invalid(raw.to_owned()));
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let base = url.as_str().trim_end_matches('/').to_owned();
    if !loopback && !allow_insecure_http {
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
        assert!(matches!(check_hub_url("https://hub.example.org", true), Err(HubUrlError::Scheme(_))));
        assert!(matches!(check_hub_url("not a url", true), Err(HubUrlError::Invalid(_))));
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
    }
}
