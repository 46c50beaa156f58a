//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! HTTP traffic is counted by route template (`/api/v1/sites/{id}`, never
//! the concrete path, so no id reaches a label) and status class. Sync
//! metrics (issue 3) join this registry; their labels name sites only, never
//! patients.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::AppState;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    /// `sync_push_requests_total{result}`: `ok` or the error code.
    pub sync_push_requests: IntCounterVec,
    /// `sync_pull_requests_total{result}`: `ok` or the error code.
    pub sync_pull_requests: IntCounterVec,
    /// `sync_changes_applied_total`: changes new to the hub.
    pub sync_changes_applied: IntCounter,
    /// `sync_pending_operations{site}`: outbox depths last reported by the
    /// site's active devices, summed.
    pub sync_pending_operations: IntGaugeVec,
    /// `sync_last_contact_timestamp_seconds{site}`: last accepted push.
    pub sync_last_contact: IntGaugeVec,
    /// `sync_conflicts_detected_total`: conflicts newly opened by pushes.
    pub sync_conflicts_detected: IntCounter,
    /// `sync_conflicts_open`: open conflicts, counted in the database at
    /// each scrape.
    pub sync_conflicts_open: IntGauge,
    /// `sync_conflicts_resolved_total`: conflicts an admin resolved.
    pub sync_conflicts_resolved: IntCounter,
    /// `dhis2_export_jobs_total{status}`: DHIS2 export jobs ended, by final
    /// status (counted once per job end).
    pub dhis2_export_jobs: IntCounterVec,
    /// `dhis2_last_success_timestamp_seconds`: last export (not a dry run)
    /// DHIS2 accepted, with or without conflicts.
    pub dhis2_last_success: IntGauge,
    /// `dhis2_values_sent_total`: data values sent in exports DHIS2 answered
    /// (dry runs excluded).
    pub dhis2_values_sent: IntCounter,
}

impl Metrics {
    /// # Panics
    /// Never: the metric definitions are static and valid.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("hub_http_requests_total", "HTTP requests served, by route template and status class."),
            &["method", "route", "status_class"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("hub_http_request_duration_seconds", "Time to serve an HTTP request.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["method", "route"],
        )
        .expect("valid metric");
        let sync_push_requests = IntCounterVec::new(
            Opts::new("sync_push_requests_total", "Sync push requests, by result (ok or the error code)."),
            &["result"],
        )
        .expect("valid metric");
        let sync_pull_requests = IntCounterVec::new(
            Opts::new("sync_pull_requests_total", "Sync pull requests, by result (ok or the error code)."),
            &["result"],
        )
        .expect("valid metric");
        let sync_changes_applied =
            IntCounter::new("sync_changes_applied_total", "Changes pushed by edges that were new to the hub.")
                .expect("valid metric");
        let sync_pending_operations = IntGaugeVec::new(
            Opts::new("sync_pending_operations", "Outbox entries pending on the site's devices, as last reported."),
            &["site"],
        )
        .expect("valid metric");
        let sync_last_contact = IntGaugeVec::new(
            Opts::new("sync_last_contact_timestamp_seconds", "Unix time of the site's last accepted sync request."),
            &["site"],
        )
        .expect("valid metric");
        let sync_conflicts_detected = IntCounter::new(
            "sync_conflicts_detected_total",
            "Conflicts (a field written concurrently on two devices) newly detected by the hub.",
        )
        .expect("valid metric");
        let sync_conflicts_open = IntGauge::new("sync_conflicts_open", "Conflicts not yet resolved, as of the scrape.")
            .expect("valid metric");
        let sync_conflicts_resolved =
            IntCounter::new("sync_conflicts_resolved_total", "Conflicts resolved by an admin choosing a value.")
                .expect("valid metric");
        let dhis2_export_jobs = IntCounterVec::new(
            Opts::new("dhis2_export_jobs_total", "DHIS2 export jobs ended, by status."),
            &["status"],
        )
        .expect("valid metric");
        let dhis2_last_success = IntGauge::new(
            "dhis2_last_success_timestamp_seconds",
            "Unix time of the last DHIS2 export (not a dry run) that DHIS2 accepted.",
        )
        .expect("valid metric");
        let dhis2_values_sent =
            IntCounter::new("dhis2_values_sent_total", "Data values sent to DHIS2 (dry runs excluded).")
                .expect("valid metric");
        for m in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(sync_push_requests.clone()),
            Box::new(sync_pull_requests.clone()),
            Box::new(sync_changes_applied.clone()),
            Box::new(sync_pending_operations.clone()),
            Box::new(sync_last_contact.clone()),
            Box::new(sync_conflicts_detected.clone()),
            Box::new(sync_conflicts_open.clone()),
            Box::new(sync_conflicts_resolved.clone()),
            Box::new(dhis2_export_jobs.clone()),
            Box::new(dhis2_last_success.clone()),
            Box::new(dhis2_values_sent.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Self {
            registry,
            http_requests,
            http_duration,
            sync_push_requests,
            sync_pull_requests,
            sync_changes_applied,
            sync_pending_operations,
            sync_last_contact,
            sync_conflicts_detected,
            sync_conflicts_open,
            sync_conflicts_resolved,
            dhis2_export_jobs,
            dhis2_last_success,
            dhis2_values_sent,
        }
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let class = santerurale_server::status_class(status);
        self.http_requests.with_label_values(&[method, route, class]).inc();
        self.http_duration.with_label_values(&[method, route]).observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware recording every request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Unknown methods share one label value, like unmatched paths, so
    // scanners cannot grow the series.
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let response = next.run(request).await;
    state.metrics.observe(method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> Response {
    match crate::conflicts::count_open(&state.db).await {
        Ok(open) => state.metrics.sync_conflicts_open.set(open),
        Err(e) => tracing::warn!(error = %crate::error_chain(&e), "metrics: cannot count the open conflicts"),
    }
    let mut body = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&state.metrics.registry.gather(), &mut body) {
        tracing::error!(error = %e, "metrics encoding failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}
