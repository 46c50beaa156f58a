//! `/health` reports the database; `/metrics` is Prometheus text labelled by
//! route template.

use reqwest::StatusCode;

use crate::support::{TestDb, TestHub};

#[tokio::test]
async fn health_is_200_with_the_database_and_503_without() {
    let hub = TestHub::start().await;
    let resp = hub.http.get(hub.url("/health")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["database"], "ok");

    // A pool whose server does not exist.
    let mut nowhere = tokio_postgres::Config::new();
    nowhere.host("127.0.0.1").port(1).user("postgres").dbname("postgres");
    let down = TestHub::with_pool(TestDb::new().await, hub::db::pool(nowhere, 1).expect("pool")).await;
    let resp = down.http.get(down.url("/health")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["database"], "unavailable");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let hub = TestHub::start().await;
    for path in ["/health", "/health", "/api/v1/sites", "/no/such/path/123"] {
        hub.http.get(hub.url(path)).send().await.expect("send");
    }
    let resp = hub.http.get(hub.url("/metrics")).send().await.expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = resp.text().await.expect("text");
    for expected in [
        r#"hub_http_requests_total{method="GET",route="/health",status_class="2xx"} 2"#,
        r#"hub_http_requests_total{method="GET",route="/api/v1/sites",status_class="4xx"} 1"#,
        r#"hub_http_requests_total{method="GET",route="unmatched",status_class="4xx"} 1"#,
        "# TYPE hub_http_requests_total counter",
        "# TYPE hub_http_request_duration_seconds histogram",
        r#"hub_http_request_duration_seconds_count{method="GET",route="/health"} 2"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("/123"), "concrete paths must not become labels");
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().expect("value");
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        assert!(
            line.starts_with("hub_") || line.starts_with("sync_") || line.starts_with("dhis2_"),
            "unexpected metric {line:?}"
        );
    }
}
