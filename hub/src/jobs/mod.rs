//! Background jobs of `hub serve`, one module each, started by [`spawn`]:
//!
//! - [`dhis2_export`]: the worker running DHIS2 export jobs (woken when this
//!   hub creates one, else polling every `dhis2.poll_seconds`);
//! - the DHIS2 schedule (`dhis2.schedule`, a cron expression with seconds
//!   read in UTC by `tokio-cron-scheduler`, default the 2nd of each month at
//!   02:00; `off` disables it): each run exports the period before the
//!   current one for every site ([`run_schedule_once`]). With several hubs,
//!   each runs the schedule, but only the one whose insert into
//!   `dhis2_schedule_runs(period)` succeeds creates the period's jobs, in the
//!   same transaction, so a period is scheduled once;
//! - [`dhis2_late_data`] (`dhis2.late_data_schedule`, default every day at
//!   03:30 UTC): re-exports the recent periods whose values changed after
//!   they were sent, such as a consultation that synced after the export.
pub mod dhis2_export;
pub mod dhis2_late_data;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use time::{Date, OffsetDateTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::AppState;
use crate::config::{Config, Dhis2Config};
use crate::dhis2::mapping;
use crate::dhis2::period::Period;
use dhis2_export::{ExportError, ExportJob, NewExport, Trigger, WorkerContext};

/// How long [`Jobs::stop`] waits for a job in progress before leaving it to
/// its lease (it is then resumed by the next worker).
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(
        "invalid {setting} {expression:?}: a cron expression with seconds, \
         `sec min hour day-of-month month day-of-week` in UTC (e.g. \"0 0 2 2 * *\"), or \"off\""
    )]
    InvalidSchedule {
        /// The setting and its environment variable.
        setting: &'static str,
        expression: String,
        #[source]
        source: tokio_cron_scheduler::JobSchedulerError,
    },
    #[error("cannot start the job scheduler")]
    Scheduler(#[source] tokio_cron_scheduler::JobSchedulerError),
}

/// The running background jobs; [`Jobs::stop`] ends them.
pub struct Jobs {
    stop: watch::Sender<bool>,
    worker: JoinHandle<()>,
    scheduler: Option<JobScheduler>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("schedule", &self.scheduler.is_some()).finish_non_exhaustive()
    }
}

/// The export schedule's setting, as errors name it.
const EXPORT_SCHEDULE: &str = "dhis2.schedule (HUB_DHIS2_SCHEDULE)";
/// The late-data check's setting, as errors name it.
const LATE_DATA_SCHEDULE: &str = "dhis2.late_data_schedule (HUB_DHIS2_LATE_DATA_SCHEDULE)";

/// Whether both DHIS2 schedules are ones [`spawn`] accepts (`off` included).
pub fn check_schedules(dhis2: &Dhis2Config) -> Result<(), JobsError> {
    check_schedule(EXPORT_SCHEDULE, &dhis2.schedule)?;
    check_schedule(LATE_DATA_SCHEDULE, &dhis2.late_data_schedule)
}

fn check_schedule(setting: &'static str, expression: &str) -> Result<(), JobsError> {
    if is_off(expression) {
        return Ok(());
    }
    Job::new_async(expression, |_, _| Box::pin(async {})).map(drop).map_err(|source| JobsError::InvalidSchedule {
        setting,
        expression: expression.to_owned(),
        source,
    })
}

fn is_off(expression: &str) -> bool {
    expression.trim().eq_ignore_ascii_case("off")
}

/// Starts the export worker, the DHIS2 schedule and the late-data check
/// of the hub serving `state`. An invalid schedule is an error before
/// anything starts.
pub async fn spawn(state: &AppState) -> Result<Jobs, JobsError> {
    let dhis2 = &state.config.dhis2;
    check_schedules(dhis2)?;
    let late_data_on = !is_off(&dhis2.late_data_schedule) && dhis2.late_data_periods > 0;
    let scheduler = if is_off(&dhis2.schedule) && !late_data_on {
        tracing::info!("DHIS2 schedule and late-data check off");
        None
    } else {
        let scheduler = JobScheduler::new().await.map_err(JobsError::Scheduler)?;
        if !is_off(&dhis2.schedule) {
            add_cron(&scheduler, state, EXPORT_SCHEDULE, &dhis2.schedule, |pool, config, today| {
                Box::pin(async move {
                    let jobs = run_schedule_once(&pool, &config, today).await?;
                    if jobs.is_empty() {
                        tracing::info!("DHIS2 schedule: the period was already scheduled (or there are no sites)");
                    }
                    Ok(jobs.len())
                })
            })
            .await?;
        }
        if late_data_on {
            add_cron(&scheduler, state, LATE_DATA_SCHEDULE, &dhis2.late_data_schedule, |pool, config, today| {
                Box::pin(async move { Ok(dhis2_late_data::run_once(&pool, &config, today).await?.len()) })
            })
            .await?;
        }
        scheduler.start().await.map_err(JobsError::Scheduler)?;
        Some(scheduler)
    };
    let (stop, mut stopped) = watch::channel(false);
    let ctx = WorkerContext::from_state(state);
    let worker = tokio::spawn(dhis2_export::worker(ctx, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok(Jobs { stop, worker, scheduler })
}

/// What a cron job runs: creates export jobs, returns how many.
type CronRun = fn(Pool, Arc<Config>, Date) -> BoxFuture<Result<usize, ExportError>>;
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Adds `run` to `scheduler` at `expression` (UTC); the worker is woken
/// when it created jobs.
async fn add_cron(
    scheduler: &JobScheduler,
    state: &AppState,
    setting: &'static str,
    expression: &str,
    run: CronRun,
) -> Result<(), JobsError> {
    let (pool, config, wake) = (state.db.clone(), state.config.clone(), state.export_wake.clone());
    let job = Job::new_async(expression, move |_, _| {
        let (pool, config, wake) = (pool.clone(), config.clone(), wake.clone());
        Box::pin(async move {
            let today = OffsetDateTime::now_utc().date();
            match run(pool, config, today).await {
                Ok(0) => {}
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), setting, "DHIS2: cannot create the exports")
                }
            }
        })
    })
    .map_err(|source| JobsError::InvalidSchedule { setting, expression: expression.to_owned(), source })?;
    scheduler.add(job).await.map_err(JobsError::Scheduler)?;
    tracing::info!(schedule = %expression, setting, "DHIS2 cron started (UTC)");
    Ok(())
}

impl Jobs {
    /// Stops the schedule and the worker: a job in progress gets
    /// ten seconds to finish, else it is resumed after its lease.
    pub async fn stop(mut self) {
        if let Some(scheduler) = self.scheduler.as_mut()
            && let Err(e) = scheduler.shutdown().await
        {
            tracing::warn!(error = %e, "cannot stop the DHIS2 schedule");
        }
        let _ = self.stop.send(true);
        match tokio::time::timeout(STOP_GRACE, &mut self.worker).await {
            Ok(_) => {}
            Err(_) => {
                self.worker.abort();
                tracing::warn!("DHIS2 export worker stopped mid-job; the job resumes after its lease");
            }
        }
    }
}

/// One run of the schedule on `today`: the period before today's (of the
/// mapping's period type), for every site, unless that period was already
/// scheduled (then no job is created: an empty list).
pub async fn run_schedule_once(pool: &Pool, config: &Config, today: Date) -> Result<Vec<ExportJob>, ExportError> {
    let loaded = mapping::load(pool, &config.dhis2).await?;
    let period = Period::containing(today, loaded.mapping.data_set.period_type).previous();
    let new = NewExport { period, site: None, dry_run: false, trigger: Trigger::Schedule, requested_by: None };
    let jobs = dhis2_export::create_scheduled(pool, new).await?;
    if !jobs.is_empty() {
        tracing::info!(period = %period, jobs = jobs.len(), "DHIS2 schedule: period scheduled");
    }
    Ok(jobs)
}
