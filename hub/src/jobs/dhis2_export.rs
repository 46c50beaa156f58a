//! DHIS2 export jobs: one job sends one site's values for one period to the
//! national DHIS2 (issue 4). Jobs live in `dhis2_export_jobs` (migration
//! 0007); any number of hubs may run workers on the same database.
//!
//! # Protocol
//! 1. **Create** ([`create`], [`rerun`], the schedule): the period is checked
//!    against the mapping's period type and must have started; one job per
//!    site, `pending`, inserted in one transaction that also marks the
//!    earlier *pending* non-dry-run jobs of the same period and site
//!    `superseded` (`superseded_by` = the new job): they will never run. The
//!    worker of this hub is woken; others find the job at their next poll.
//! 2. **Claim** ([`run_one`]): one `UPDATE ... WHERE id = (SELECT ... FOR
//!    UPDATE SKIP LOCKED LIMIT 1)` takes the oldest due job — `pending` with
//!    `next_attempt_at <= now()`, or `running` with an expired lease (its
//!    hub died mid-job) — sets it `running`, increments `attempts` and sets
//!    `lease_until = now() + lease`. Row locks, not an in-memory flag: two
//!    hubs never claim the same job. A non-dry-run job is not claimed while
//!    another non-dry-run job of its period and site is running under a
//!    live lease: exports of one site and period reach DHIS2 one after the
//!    other, so an older payload cannot land after a newer one (two claims
//!    in the same instant on two hubs can still overlap: the claim does not
//!    lock the other job's row). The pair (`lease_until`, `attempts`)
//!    returned is the claim token: every later write of the attempt matches
//!    it (`WHERE id AND status = 'running' AND lease_until AND attempts`), so
//!    a worker whose lease ran out and was taken over writes nothing.
//! 3. **Payload, once**: at the first attempt that reaches it, the values are
//!    counted ([`crate::dhis2::aggregate::site_values`]) and the `dataValueSet` built
//!    (`completeDate` = today) and STORED with `values_count` before anything
//!    is sent. Every retry sends exactly the stored payload. A mapping or
//!    readiness problem (missing uid, site without org unit) fails the job at
//!    once with a clear error, without calling DHIS2.
//! 4. **Send** with the client (`dryRun` from the job, `idScheme` from the
//!    mapping) and record the answer: `response_status`, `response` as
//!    received, `import_count`, `conflicts`. Summary `SUCCESS` without
//!    conflicts is `succeeded`; `WARNING` or any conflict is
//!    `succeeded_with_conflicts` (NOT retried: the admin fixes the mapping or
//!    the data and re-runs); `ERROR` is `failed`.
//! 5. **Errors**: a retryable one (network, timeout, 5xx, 429) puts the job
//!    back to `pending` with `next_attempt_at = now + min(retry_base *
//!    2^(attempts-1), retry_max)` and the error recorded, or `failed` once
//!    `attempts >= max_attempts`. Any other (401, 403, 400, ...) is `failed`.
//! 6. **Superseding**: when a non-dry-run job ends `succeeded` or
//!    `succeeded_with_conflicts`, the earlier finished non-dry-run jobs of
//!    the same period and site get `status = 'superseded'` and
//!    `superseded_by` = it (their other columns kept, for the record). A job
//!    claimed after its lease expired while a newer job of its period and
//!    site exists is superseded by it without being sent.
//!
//! # Why a hub killed mid-job never double-counts
//! The job stays `running` until its lease ends; then any worker claims it
//! again (attempts + 1) and sends the SAME stored payload. DHIS2 imports with
//! `importStrategy=CREATE_AND_UPDATE`: a value is keyed by (data element,
//! category option combo, period, org unit), so the second send *updates*
//! the values the first may have stored, it never adds to them. Re-running a
//! period is safe for the same reason. (If the hub died after storing the
//! payload but before DHIS2 answered, the retry's summary counts `updated`
//! where the first would have said `imported`.)
//!
//! Logs name job ids, site codes, periods and counts; aggregates carry no
//! patient data, and no values are logged anyway.

pub mod summary;
mod worker;

use deadpool_postgres::Pool;
use santerurale_shared::SiteId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Date, OffsetDateTime};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::config::Config;
use crate::db::DbError;
use crate::dhis2::mapping::{self, MappingError};
use crate::dhis2::payload::{ImportConflict, ImportCount};
use crate::dhis2::period::{Period, PeriodError};

pub use summary::{PeriodSummary, period_summaries};
pub use worker::{WorkerContext, backoff, run_one, worker};

/// Most jobs [`list`] returns.
pub const LIST_LIMIT: i64 = 500;

/// A job's state (the `status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Running,
    Succeeded,
    SucceededWithConflicts,
    Failed,
    Superseded,
}

impl JobStatus {
    pub const ALL: [Self; 6] =
        [Self::Pending, Self::Running, Self::Succeeded, Self::SucceededWithConflicts, Self::Failed, Self::Superseded];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::SucceededWithConflicts => "succeeded_with_conflicts",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the job will not run again.
    #[must_use]
    pub const fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }
}

/// Who asked for a job (the `trigger` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Api,
    Ui,
    Cli,
    Schedule,
    Rerun,
    /// Values of an exported period changed after it was sent (see
    /// [`crate::jobs::dhis2_late_data`]).
    LateData,
}

impl Trigger {
    pub const ALL: [Self; 6] = [Self::Api, Self::Ui, Self::Cli, Self::Schedule, Self::Rerun, Self::LateData];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Ui => "ui",
            Self::Cli => "cli",
            Self::Schedule => "schedule",
            Self::Rerun => "rerun",
            Self::LateData => "late_data",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One export job, as stored (with its site's code and name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportJob {
    pub id: Uuid,
    pub period: String,
    pub site_id: SiteId,
    pub site_code: String,
    pub site_name: String,
    pub dry_run: bool,
    pub status: JobStatus,
    pub trigger: Trigger,
    pub requested_by: Option<Uuid>,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    /// The `dataValueSet` sent (fixed at the first attempt).
    pub payload: Option<Value>,
    pub values_count: Option<i32>,
    /// HTTP status of DHIS2's last answer.
    pub response_status: Option<i32>,
    /// DHIS2's last answer as received (a JSON string when it was not JSON).
    pub response: Option<Value>,
    pub import_count: Option<ImportCount>,
    pub conflicts: Vec<ImportConflict>,
    pub error: Option<String>,
    pub superseded_by: Option<Uuid>,
    pub rerun_of: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewExport {
    pub period: Period,
    /// One site, or every site.
    pub site: Option<SiteId>,
    pub dry_run: bool,
    pub trigger: Trigger,
    pub requested_by: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    InvalidPeriod(#[from] PeriodError),
    #[error("period {period} has not started yet (it starts on {starts}): only started periods can be exported")]
    FuturePeriod { period: String, starts: Date },
    #[error("no site {0}")]
    SiteNotFound(String),
    #[error("no export job {0}")]
    NotFound(Uuid),
    #[error("cannot load the DHIS2 mapping")]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ExportError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for ExportError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

/// The columns [`job_from_row`] reads (jobs `j` joined to sites `s`).
const COLUMNS: &str = "j.id, j.period, j.site_id, s.code AS site_code, s.name AS site_name, j.dry_run, j.status,
    j.trigger, j.requested_by, j.attempts, j.next_attempt_at, j.payload::text AS payload, j.values_count,
    j.response_status, j.response::text AS response, j.import_count::text AS import_count,
    j.conflicts::text AS conflicts, j.error, j.superseded_by, j.rerun_of, j.created_at, j.started_at, j.finished_at";

fn job_from_row(r: &Row) -> Result<ExportJob, DbError> {
    fn json<T: serde::de::DeserializeOwned>(r: &Row, col: &str) -> Result<Option<T>, DbError> {
        r.try_get::<_, Option<String>>(col)?
            .map(|t| serde_json::from_str(&t).map_err(|e| DbError::Invalid(format!("dhis2_export_jobs.{col}: {e}"))))
            .transpose()
    }
    let status: String = r.try_get("status")?;
    let trigger: String = r.try_get("trigger")?;
    Ok(ExportJob {
        id: r.try_get("id")?,
        period: r.try_get("period")?,
        site_id: SiteId::from_uuid(r.try_get("site_id")?),
        site_code: r.try_get("site_code")?,
        site_name: r.try_get("site_name")?,
        dry_run: r.try_get("dry_run")?,
        status: JobStatus::parse(&status).ok_or_else(|| DbError::Invalid(format!("job status {status:?}")))?,
        trigger: Trigger::parse(&trigger).ok_or_else(|| DbError::Invalid(format!("job trigger {trigger:?}")))?,
        requested_by: r.try_get("requested_by")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        payload: json(r, "payload")?,
        values_count: r.try_get("values_count")?,
        response_status: r.try_get("response_status")?,
        response: json(r, "response")?,
        import_count: json(r, "import_count")?,
        conflicts: json(r, "conflicts")?.unwrap_or_default(),
        error: r.try_get("error")?,
        superseded_by: r.try_get("superseded_by")?,
        rerun_of: r.try_get("rerun_of")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

/// Checks `period` against the mapping's period type and today's date.
pub fn check_period(period: Period, mapping: &mapping::Mapping, today: Date) -> Result<(), ExportError> {
    let expected = mapping.data_set.period_type;
    if period.period_type() != expected {
        return Err(
            PeriodError::WrongType { given: period.to_string(), given_type: period.period_type(), expected }.into()
        );
    }
    if period.start() > today {
        return Err(ExportError::FuturePeriod { period: period.to_string(), starts: period.start() });
    }
    Ok(())
}

/// Creates the jobs of `new` (one per site; see the module docs, step 1).
/// The caller wakes the worker (`AppState::export_wake`).
pub async fn create(pool: &Pool, config: &Config, new: NewExport) -> Result<Vec<ExportJob>, ExportError> {
    let loaded = mapping::load(pool, &config.dhis2).await?;
    check_period(new.period, &loaded.mapping, OffsetDateTime::now_utc().date())?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let jobs = insert_jobs(&tx, new, None).await?;
    tx.commit().await?;
    for job in &jobs {
        tracing::info!(job = %job.id, site = %job.site_code, period = %job.period, dry_run = job.dry_run,
            trigger = job.trigger.as_str(), "DHIS2 export job created");
    }
    Ok(jobs)
}

/// The schedule's [`create`]: records `new.period` in `dhis2_schedule_runs`
/// and, only if it was not there, creates its jobs, in one transaction
/// (several hubs may run the schedule). No period check: the schedule
/// exports the previous period.
pub async fn create_scheduled(pool: &Pool, new: NewExport) -> Result<Vec<ExportJob>, ExportError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let period = new.period.to_string();
    let inserted = tx
        .execute("INSERT INTO dhis2_schedule_runs (period) VALUES ($1) ON CONFLICT (period) DO NOTHING", &[&period])
        .await?;
    if inserted == 0 {
        return Ok(Vec::new());
    }
    let jobs = insert_jobs(&tx, new, None).await?;
    tx.commit().await?;
    for job in &jobs {
        tracing::info!(job = %job.id, site = %job.site_code, period = %job.period, trigger = "schedule",
            "DHIS2 export job created");
    }
    Ok(jobs)
}

/// Inserts the jobs of `new` in `tx` and supersedes the earlier pending ones.
pub(crate) async fn insert_jobs(
    tx: &tokio_postgres::Transaction<'_>,
    new: NewExport,
    rerun_of: Option<Uuid>,
) -> Result<Vec<ExportJob>, ExportError> {
    let site = new.site.map(|s| *s.as_uuid());
    // An account removed since it signed in is no longer named (the column
    // references users).
    let sites = tx.query("SELECT id FROM sites WHERE $1::uuid IS NULL OR id = $1 ORDER BY code", &[&site]).await?;
    if let (Some(site), true) = (new.site, sites.is_empty()) {
        return Err(ExportError::SiteNotFound(site.to_string()));
    }
    let period = new.period.to_string();
    let mut jobs = Vec::with_capacity(sites.len());
    for row in &sites {
        let site_id: Uuid = row.try_get(0)?;
        let id = Uuid::now_v7();
        tx.execute(
            "INSERT INTO dhis2_export_jobs (id, period, site_id, dry_run, status, trigger, requested_by, rerun_of)
             VALUES ($1, $2, $3, $4, 'pending', $5, (SELECT id FROM users WHERE id = $6), $7)",
            &[&id, &period, &site_id, &new.dry_run, &new.trigger.as_str(), &new.requested_by, &rerun_of],
        )
        .await?;
        if !new.dry_run {
            tx.execute(
                "UPDATE dhis2_export_jobs SET status = 'superseded', superseded_by = $1, finished_at = now()
                 WHERE period = $2 AND site_id = $3 AND NOT dry_run AND status = 'pending' AND id <> $1",
                &[&id, &period, &site_id],
            )
            .await?;
        }
        let row = tx
            .query_one(
                &format!("SELECT {COLUMNS} FROM dhis2_export_jobs j JOIN sites s ON s.id = j.site_id WHERE j.id = $1"),
                &[&id],
            )
            .await?;
        jobs.push(job_from_row(&row)?);
    }
    Ok(jobs)
}

/// A new job exporting what job `id` exported (same period, site and
/// dry-run flag), with `rerun_of = id`.
pub async fn rerun(
    pool: &Pool,
    config: &Config,
    id: Uuid,
    requested_by: Option<Uuid>,
    trigger: Trigger,
) -> Result<ExportJob, ExportError> {
    let earlier = get(pool, id).await?.ok_or(ExportError::NotFound(id))?;
    let loaded = mapping::load(pool, &config.dhis2).await?;
    let period = Period::parse(&earlier.period)?;
    check_period(period, &loaded.mapping, OffsetDateTime::now_utc().date())?;
    let new = NewExport { period, site: Some(earlier.site_id), dry_run: earlier.dry_run, trigger, requested_by };
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let job = insert_jobs(&tx, new, Some(id)).await?.pop().ok_or(ExportError::NotFound(id))?;
    tx.commit().await?;
    tracing::info!(job = %job.id, rerun_of = %id, site = %job.site_code, period = %job.period, "DHIS2 export re-run");
    Ok(job)
}

/// Which jobs [`list_filtered`] returns: every one where a field is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub period: Option<String>,
    pub status: Option<JobStatus>,
}

/// The newest jobs first, at most `limit` (and [`LIST_LIMIT`]).
pub async fn list(pool: &Pool, limit: i64) -> Result<Vec<ExportJob>, ExportError> {
    list_filtered(pool, limit, &ListFilter::default()).await
}

/// [`list`] of the jobs matching `filter`.
pub async fn list_filtered(pool: &Pool, limit: i64, filter: &ListFilter) -> Result<Vec<ExportJob>, ExportError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM dhis2_export_jobs j JOIN sites s ON s.id = j.site_id
                 WHERE ($2::text IS NULL OR j.period = $2) AND ($3::text IS NULL OR j.status = $3)
                 ORDER BY j.created_at DESC, j.id DESC LIMIT $1"
            ),
            &[&limit.clamp(0, LIST_LIMIT), &filter.period, &filter.status.map(JobStatus::as_str)],
        )
        .await?;
    Ok(rows.iter().map(job_from_row).collect::<Result<_, _>>()?)
}

pub async fn get(pool: &Pool, id: Uuid) -> Result<Option<ExportJob>, ExportError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM dhis2_export_jobs j JOIN sites s ON s.id = j.site_id WHERE j.id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(job_from_row).transpose()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_as_the_database_strings() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("json"), Value::String(s.as_str().into()));
        }
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_value(t).expect("json"), Value::String(t.as_str().into()));
        }
        assert!(JobStatus::SucceededWithConflicts.is_final() && !JobStatus::Running.is_final());
    }
}
