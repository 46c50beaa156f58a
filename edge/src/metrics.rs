//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! HTTP traffic is counted by route template (`/api/v1/patients/{id}`, never
//! the concrete path, so no patient id reaches a label) and status class.
//! Data gauges are read from the database at scrape time.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::AppState;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    outbox_depth: IntGauge,
    patients: IntGauge,
    encounters: IntGauge,
}

impl Metrics {
    /// # Panics
    /// Never: the metric definitions are static and valid.
    #[must_use]
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("edge_http_requests_total", "HTTP requests served, by route template and status class."),
            &["method", "route", "status_class"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("edge_http_request_duration_seconds", "Time to serve an HTTP request.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["method", "route"],
        )
        .expect("valid metric");
        let outbox_depth =
            IntGauge::new("edge_outbox_pending_changes", "Changes recorded here not yet acknowledged by the hub.")
                .expect("valid metric");
        let patients = IntGauge::new("edge_patients", "Patients in the local projection.").expect("valid metric");
        let encounters = IntGauge::new("edge_encounters", "Encounters in the local projection.").expect("valid metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(outbox_depth.clone()),
            Box::new(patients.clone()),
            Box::new(encounters.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self { registry, http_requests, http_duration, outbox_depth, patients, encounters }
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
    let method = request.method().as_str().to_owned();
    // Unmatched paths share one label value so scanners cannot grow the series.
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let response = next.run(request).await;
    state.metrics.observe(&method, &route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`
pub async fn render(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    match state.store.counts().await {
        Ok(c) => {
            m.outbox_depth.set(i64::try_from(c.outbox_pending).unwrap_or(i64::MAX));
            m.patients.set(i64::try_from(c.patients).unwrap_or(i64::MAX));
            m.encounters.set(i64::try_from(c.encounters).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read counts"),
    }
    let mut body = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut body) {
        tracing::error!(error = %e, "metrics encoding failed");
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}
