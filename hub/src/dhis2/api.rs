//! `/api/v1/dhis2/*` (admins only; errors are [`ApiError`]s, documented in
//! `openapi.json`):
//!
//! - `POST /api/v1/dhis2/export` `{period, site_id?, dry_run?}`: creates one
//!   job per site (all sites without `site_id`) and answers 202
//!   `{"jobs": [{id, period, site_id, status}]}`; the worker runs them (see
//!   [`crate::jobs::dhis2_export`]). 422 `invalid_period` for a malformed
//!   period, one of another period type than the mapping's data set, or one
//!   that has not started; 404 `site_not_found`.
//! - `GET /api/v1/dhis2/exports?limit=&period=&status=`: the newest jobs
//!   (of one period, in one status); `GET /api/v1/dhis2/periods?limit=`:
//!   for the periods exported most recently, how many sites' latest export
//!   succeeded, had conflicts, failed, is in progress, or is missing; `GET
//!   /api/v1/dhis2/exports/{id}`: one job with its payload, the answer
//!   received, `import_count` and `conflicts`; `POST
//!   /api/v1/dhis2/exports/{id}/rerun`: a new job for the same period, site
//!   and dry-run flag.
//! - `GET /api/v1/dhis2/mapping`: the mapping in force, where it comes from
//!   and the uids still missing; `PUT` saves one (JSON or TOML body; 422
//!   `mapping_invalid` with `problems`, nothing saved); `DELETE` forgets the
//!   saved one (back to the file or the shipped default).
//! - `POST /api/v1/dhis2/mapping/resolve`: looks the codes up in DHIS2,
//!   saves the resolved mapping (and the sites' org unit uids) and returns
//!   the report; 409 `dhis2_not_configured` without a DHIS2 URL.
//! - `GET /api/v1/dhis2/preview?period=&site_id=`: the values and payload
//!   as they would be sent now; nothing is sent or stored.
//! - `GET /api/v1/dhis2/late-data`: the recent exports whose values changed
//!   since they were sent (`{"periods", "out_of_date": [...]}`, see
//!   [`crate::jobs::dhis2_late_data`]); `POST` creates their re-export jobs
//!   now (202 `{"jobs"}`), as the daily check would.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use santerurale_shared::SiteId;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AppState;
use crate::api::error::{ApiError, ApiJson};
use crate::auth::CurrentUser;
use crate::dhis2::aggregate::{self, AggregateError};
use crate::dhis2::client::{Dhis2Client, Dhis2Error};
use crate::dhis2::mapping::{self, Mapping, MappingError};
use crate::dhis2::period::Period;
use crate::dhis2::resolve;
use crate::jobs::dhis2_export::summary::SUMMARY_LIMIT;
use crate::jobs::dhis2_export::{
    self, ExportError, ExportJob, JobStatus, ListFilter, NewExport, Trigger, period_summaries,
};
use crate::jobs::dhis2_late_data;

/// Jobs listed when no `limit` is given.
pub const DEFAULT_LIST_LIMIT: i64 = 100;
/// Periods summed up when no `limit` is given.
pub const DEFAULT_PERIODS: i64 = 12;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/dhis2/export", post(export))
        .route("/api/v1/dhis2/exports", get(list_exports))
        .route("/api/v1/dhis2/exports/{id}", get(get_export))
        .route("/api/v1/dhis2/exports/{id}/rerun", post(rerun_export))
        .route("/api/v1/dhis2/mapping", get(get_mapping).put(put_mapping).delete(delete_mapping))
        .route("/api/v1/dhis2/mapping/resolve", post(resolve_mapping))
        .route("/api/v1/dhis2/preview", get(preview))
        .route("/api/v1/dhis2/late-data", get(late_data).post(send_late_data))
        .route("/api/v1/dhis2/periods", get(periods))
}

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        let unprocessable = |code, message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
        match e {
            ExportError::InvalidPeriod(_) | ExportError::FuturePeriod { .. } => {
                unprocessable("invalid_period", e.to_string())
            }
            ExportError::SiteNotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "site_not_found", e.to_string()),
            ExportError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "export_not_found", e.to_string()),
            ExportError::Mapping(m) => mapping_in_force_error(m),
            ExportError::Db(db) => db.into(),
        }
    }
}

/// The mapping in force cannot be used (a broken file or saved copy): the
/// admin must fix it before anything can be exported.
fn mapping_in_force_error(e: MappingError) -> ApiError {
    if let MappingError::Db(db) = e {
        return db.into();
    }
    let problems = e.problems();
    let mut error = ApiError::conflict(
        "mapping_invalid",
        format!("the DHIS2 mapping in force cannot be used: {}", crate::error_chain(&e)),
    );
    error.extra = Some(("problems", json!(problems)));
    error
}

/// A mapping sent by the admin is refused: 422 with every problem.
fn mapping_refused(e: MappingError) -> ApiError {
    if let MappingError::Db(db) = e {
        return db.into();
    }
    let mut problems = e.problems();
    if problems.is_empty() {
        problems.push(crate::error_chain(&e));
    }
    let mut error = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "mapping_invalid",
        format!("the mapping is not valid: {}", problems.join("; ")),
    );
    error.extra = Some(("problems", json!(problems)));
    error
}

fn site_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "site_not_found", format!("no site {id}"))
}

fn export_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "export_not_found", "no such export job")
}

/// The body of `POST /api/v1/dhis2/export`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    period: String,
    #[serde(default)]
    site_id: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

fn parse_site(id: Option<&str>) -> Result<Option<SiteId>, ApiError> {
    id.map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse::<SiteId>().map_err(|_| site_not_found(s))).transpose()
}

async fn export(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<ExportBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    user.require_admin()?;
    let period = Period::parse(body.period.trim()).map_err(ExportError::from)?;
    let site = parse_site(body.site_id.as_deref())?;
    let new = NewExport {
        period,
        site,
        dry_run: body.dry_run,
        trigger: Trigger::Api,
        requested_by: Some(*user.id.as_uuid()),
    };
    let jobs = dhis2_export::create(&state.db, &state.config, new).await.map_err(ApiError::from)?;
    state.export_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(job_briefs(&jobs))))
}

/// A list's `limit` query parameter: `default` when absent, else 1 to `max`.
fn limit_within(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {max}")))
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    period: Option<String>,
    status: Option<String>,
}

async fn list_exports(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = limit_within(query.limit, DEFAULT_LIST_LIMIT, dhis2_export::LIST_LIMIT)?;
    let status = match query.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            let known: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request("invalid_query", format!("unknown status {s:?}: one of {}", known.join(", ")))
        })?),
    };
    let period = query.period.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
    let jobs = dhis2_export::list_filtered(&state.db, limit, &ListFilter { period, status }).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

#[derive(Debug, Deserialize)]
struct PeriodsQuery {
    limit: Option<i64>,
}

async fn periods(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<PeriodsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = limit_within(query.limit, DEFAULT_PERIODS, SUMMARY_LIMIT)?;
    Ok(Json(json!({ "periods": period_summaries(&state.db, limit).await? })))
}

async fn get_export(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<ExportJob>, ApiError> {
    user.require_admin()?;
    let id = Uuid::parse_str(&id).map_err(|_| export_not_found())?;
    dhis2_export::get(&state.db, id).await?.map(Json).ok_or_else(export_not_found)
}

async fn rerun_export(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ExportJob>), ApiError> {
    user.require_admin()?;
    let id = Uuid::parse_str(&id).map_err(|_| export_not_found())?;
    let job = dhis2_export::rerun(&state.db, &state.config, id, Some(*user.id.as_uuid()), Trigger::Rerun).await?;
    state.export_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// The jobs as `POST /api/v1/dhis2/export` lists them.
fn job_briefs(jobs: &[ExportJob]) -> Value {
    let jobs: Vec<Value> = jobs
        .iter()
        .map(|j| json!({ "id": j.id, "period": j.period, "site_id": j.site_id, "status": j.status }))
        .collect();
    json!({ "jobs": jobs })
}

async fn late_data(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    let check = dhis2_late_data::check(&state.db, &state.config, OffsetDateTime::now_utc().date()).await?;
    Ok(Json(json!({ "periods": check.periods, "out_of_date": check.out_of_date })))
}

async fn send_late_data(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    user.require_admin()?;
    let today = OffsetDateTime::now_utc().date();
    let jobs = dhis2_late_data::run_once(&state.db, &state.config, today).await?;
    tracing::info!(by = %user.username, jobs = jobs.len(), "DHIS2 late data sent on request");
    state.export_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(job_briefs(&jobs))))
}

/// The mapping in force as the API shows it.
async fn mapping_view(state: &AppState) -> Result<Json<Value>, ApiError> {
    let loaded = mapping::load(&state.db, &state.config.dhis2).await.map_err(mapping_in_force_error)?;
    Ok(Json(json!({
        "mapping": loaded.mapping,
        "source": loaded.source,
        "missing_uids": loaded.mapping.missing_uids(),
    })))
}

async fn get_mapping(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    mapping_view(&state).await
}

/// The body is the mapping, in JSON (`Content-Type: application/json`) or
/// TOML (any other text type).
async fn put_mapping(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    let json_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let mapping = if json_type {
        serde_json::from_str::<Mapping>(&body).map_err(|e| mapping_refused(MappingError::Json(e)))?
    } else {
        Mapping::parse(&body).map_err(mapping_refused)?
    };
    mapping::save(&state.db, &mapping, Some(*user.id.as_uuid())).await.map_err(mapping_refused)?;
    tracing::info!(by = %user.username, indicators = mapping.indicators.len(), "DHIS2 mapping saved");
    mapping_view(&state).await
}

async fn delete_mapping(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    mapping::reset(&state.db).await.map_err(mapping_in_force_error)?;
    tracing::info!(by = %user.username, "DHIS2 mapping reset to the file or the shipped default");
    mapping_view(&state).await
}

/// What a failed DHIS2 call means to the API caller.
fn dhis2_error(e: &Dhis2Error) -> ApiError {
    match e {
        Dhis2Error::NotConfigured | Dhis2Error::BadConfig { .. } => {
            ApiError::conflict("dhis2_not_configured", crate::error_chain(e))
        }
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "dhis2_unavailable", crate::error_chain(e)),
    }
}

async fn resolve_mapping(State(state): State<AppState>, user: CurrentUser) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    let client = Dhis2Client::new(&state.config.dhis2).map_err(|e| dhis2_error(&e))?;
    let loaded = mapping::load(&state.db, &state.config.dhis2).await.map_err(mapping_in_force_error)?;
    let report = resolve::resolve(&client, &loaded.mapping, &state.db).await.map_err(resolve_error)?;
    mapping::save(&state.db, &report.mapping, Some(*user.id.as_uuid())).await.map_err(mapping_refused)?;
    tracing::info!(by = %user.username, missing = report.missing.len(), "DHIS2 mapping resolved and saved");
    Ok(Json(json!(report)))
}

fn resolve_error(e: resolve::ResolveError) -> ApiError {
    match e {
        resolve::ResolveError::Dhis2(d) => dhis2_error(&d),
        resolve::ResolveError::Db(db) => db.into(),
    }
}

#[derive(Debug, Deserialize)]
struct PreviewQuery {
    period: String,
    site_id: Option<String>,
}

async fn preview(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    user.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let loaded = mapping::load(&state.db, &state.config.dhis2).await.map_err(mapping_in_force_error)?;
    let period = Period::parse_for(query.period.trim(), loaded.mapping.data_set.period_type)
        .map_err(|e| ApiError::from(ExportError::from(e)))?;
    let site = parse_site(query.site_id.as_deref())?;
    let sites = aggregate::export_sites(&state.db, site).await.map_err(|e| match e {
        AggregateError::SiteNotFound(_) => site_not_found(query.site_id.as_deref().unwrap_or_default()),
        other => aggregate_error(other),
    })?;
    let today = OffsetDateTime::now_utc().date();
    let mut shown = Vec::with_capacity(sites.len());
    for site in &sites {
        let values =
            aggregate::site_values(&state.db, &loaded.mapping, site.id, period).await.map_err(aggregate_error)?;
        let (payload, problem) = match aggregate::build_payload(&loaded.mapping, site, period, &values, today) {
            Ok(set) => (Some(set), None),
            Err(e) => (None, Some(crate::error_chain(&e))),
        };
        let values: Vec<Value> = values
            .iter()
            .map(|v| {
                json!({
                    "indicator": v.indicator,
                    "data_element_code": v.data_element_code,
                    "category_option_combo_code": v.category_option_combo_code,
                    "value": v.value,
                })
            })
            .collect();
        shown.push(json!({
            "site_id": site.id,
            "site_code": site.code,
            "site_name": site.name,
            "values": values,
            "payload": payload,
            "problem": problem,
        }));
    }
    Ok(Json(json!({
        "period": period,
        "final": period.is_over(today),
        "sites": shown,
    })))
}

fn aggregate_error(e: AggregateError) -> ApiError {
    match e {
        AggregateError::Db(db) => db.into(),
        other => ApiError::internal(&other),
    }
}
