//! A small JSON client for the edge's and the hub's `/api/v1` (both sign in
//! the same way).

use std::fmt;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::REQUEST_TIMEOUT;

/// Why an API call did not give the expected answer.
#[derive(Debug)]
pub enum CallError {
    /// No HTTP response at all: connection refused or reset, timeout.
    Transport { call: String, source: reqwest::Error },
    /// A response, with another status than expected.
    Status { call: String, status: StatusCode, body: String },
}

impl CallError {
    /// True when the server never answered (so a write may or may not have happened).
    #[must_use]
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Transport { .. })
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport { call, .. } => write!(f, "{call}: no response"),
            Self::Status { call, status, body } => write!(f, "{call}: {status}: {body}"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Transport { source, .. } => Some(source),
            Self::Status { .. } => None,
        }
    }
}

/// An edge's manual sync: it crosses the (often simulated, slow and lossy)
/// link to the hub, several requests in a row, so it may take longer than an
/// ordinary call; the edge itself allows 20 s to connect and 300 s per hub
/// request, and answers when its run ends. The harness outwaits one such
/// request: a request the edge gives up on then shows as the edge's own
/// (retryable) failed run, not as an edge that never answered. (A run on a
/// lossy simulated link once took over 180 s in the convergence test.)
const SYNC_RUN_PATH: &str = "/api/v1/sync/run";
const SYNC_RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(330);

/// A JSON client for an edge's or a hub's `/api/v1`.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl Api {
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build()?;
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned(), token: None })
    }

    /// Signs in with `POST /api/v1/auth/login`; later calls send the token.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<(), CallError> {
        let body = json!({ "username": username, "password": password });
        let resp = self.call(Method::POST, "/api/v1/auth/login", Some(&body), StatusCode::OK).await?;
        self.token = resp["token"].as_str().map(str::to_owned);
        Ok(())
    }

    /// Sends `body` (if any) as JSON to `path`; expects `expected` and a JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: StatusCode,
    ) -> Result<Value, CallError> {
        let call = format!("{method} {path}");
        let sync_run = method == Method::POST && path == SYNC_RUN_PATH;
        let mut req = self.http.request(method, format!("{}{path}", self.base_url));
        if sync_run {
            req = req.timeout(SYNC_RUN_TIMEOUT);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| CallError::Transport { call: call.clone(), source })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| CallError::Transport { call: call.clone(), source })?;
        if status != expected {
            return Err(CallError::Status { call, status, body: text });
        }
        serde_json::from_str(&text).map_err(|_| CallError::Status { call, status, body: format!("not JSON: {text}") })
    }

    /// `GET path` as text (`/metrics`), expecting 200.
    pub async fn text(&self, path: &str) -> Result<String, CallError> {
        let call = format!("GET {path}");
        let resp = self
            .http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .map_err(|source| CallError::Transport { call: call.clone(), source })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| CallError::Transport { call: call.clone(), source })?;
        if status != StatusCode::OK {
            return Err(CallError::Status { call, status, body: text });
        }
        Ok(text)
    }

    /// `POST /api/v1/patients`; the 201 body (the patient, with its `id`).
    pub async fn register_patient(&self, draft: &Value, allow_duplicate: bool) -> Result<Value, CallError> {
        let path = if allow_duplicate { "/api/v1/patients?allow_duplicate=true" } else { "/api/v1/patients" };
        self.call(Method::POST, path, Some(draft), StatusCode::CREATED).await
    }

    /// `POST /api/v1/patients/{id}/encounters`; the 201 body (the encounter).
    pub async fn add_encounter(&self, patient_id: &str, draft: &Value) -> Result<Value, CallError> {
        let path = format!("/api/v1/patients/{patient_id}/encounters");
        self.call(Method::POST, &path, Some(draft), StatusCode::CREATED).await
    }

    /// `GET /api/v1/patients/{id}`: the patient with its `encounters`.
    pub async fn patient(&self, patient_id: &str) -> Result<Value, CallError> {
        self.call(Method::GET, &format!("/api/v1/patients/{patient_id}"), None, StatusCode::OK).await
    }

    /// `GET /api/v1/patients?q=...`: the matching patients.
    pub async fn search(&self, q: &str) -> Result<Vec<Value>, CallError> {
        let mut query = String::new();
        for b in q.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => query.push(char::from(b)),
                _ => query.push_str(&format!("%{b:02X}")),
            }
        }
        let found = self.call(Method::GET, &format!("/api/v1/patients?q={query}"), None, StatusCode::OK).await?;
        Ok(found["patients"].as_array().cloned().unwrap_or_default())
    }
}
