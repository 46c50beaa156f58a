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
//!   same transaction, so a period is scheduled once.

pub mod dhis2_export;

use std::time::Duration;

use deadpool_postgres::Pool;
use time::{Date, OffsetDateTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::AppState;
use crate::config::Config;
use crate::dhis2::mapping;
use crate::dhis2::period::Period;
use dhis2_export::{ExportError, ExportJob, NewExport, Trigger, WorkerContext};

/// How long [`Jobs::stop`] waits for a job in progress before leaving it to
/// its lease (it is then resumed by the next worker).
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(
        "invalid dhis2.schedule {expression:?} (HUB_DHIS2_SCHEDULE): a cron expression with seconds, \
         `sec min hour day-of-month month day-of-week` in UTC (default \"0 0 2 2 * *\"), or \"off\""
    )]
    InvalidSchedule {
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

/// Whether `expression` is a schedule [`spawn`] accepts (`off` included).
pub fn check_schedule(expression: &str) -> Result<(), JobsError> {
    if is_off(expression) {
        return Ok(());
    }
    Job::new_async(expression, |_, _| Box::pin(async {}))
        .map(drop)
        .map_err(|source| JobsError::InvalidSchedule { expression: expression.to_owned(), source })
}

fn is_off(expression: &str) -> bool {
    expression.trim().eq_ignore_ascii_case("off")
}

/// Starts the export worker and the DHIS2 schedule of the hub serving
/// `state`. An invalid schedule is an error before anything starts.
pub async fn spawn(state: &AppState) -> Result<Jobs, JobsError> {
    let expression = state.config.dhis2.schedule.clone();
    check_schedule(&expression)?;
    let scheduler = if is_off(&expression) {
        tracing::info!("DHIS2 schedule off");
        None
    } else {
        let scheduler = JobScheduler::new().await.map_err(JobsError::Scheduler)?;
        let (pool, config, wake) = (state.db.clone(), state.config.clone(), state.export_wake.clone());
        let job = Job::new_async(expression.as_str(), move |_, _| {
            let (pool, config, wake) = (pool.clone(), config.clone(), wake.clone());
            Box::pin(async move {
                let today = OffsetDateTime::now_utc().date();
                match run_schedule_once(&pool, &config, today).await {
                    Ok(jobs) if jobs.is_empty() => {
                        tracing::info!("DHIS2 schedule: the period was already scheduled (or there are no sites)");
                    }
                    Ok(jobs) => {
                        tracing::info!(jobs = jobs.len(), period = %jobs[0].period, "DHIS2 schedule: exports created");
                        wake.notify_one();
                    }
                    Err(e) => {
                        tracing::error!(error = %crate::error_chain(&e), "DHIS2 schedule: cannot create the exports")
                    }
                }
            })
        })
        .map_err(|source| JobsError::InvalidSchedule { expression: expression.clone(), source })?;
        scheduler.add(job).await.map_err(JobsError::Scheduler)?;
        scheduler.start().await.map_err(JobsError::Scheduler)?;
        tracing::info!(schedule = %expression, "DHIS2 schedule started (UTC)");
        Some(scheduler)
    };
    let (stop, mut stopped) = watch::channel(false);
    let ctx = WorkerContext::from_state(state);
    let worker = tokio::spawn(dhis2_export::worker(ctx, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok(Jobs { stop, worker, scheduler })
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
