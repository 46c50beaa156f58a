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
//!   same transaction, so a period is scheduled once. A period whose export
//!   fell while no hub was running is exported at the next start or daily
//!   check ([`catch_up_schedule`]);
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

/// Whether the late-data check runs: a schedule, and periods to look at.
#[must_use]
pub fn late_data_on(dhis2: &Dhis2Config) -> bool {
    !is_off(&dhis2.late_data_schedule) && dhis2.late_data_periods > 0
}

/// Starts the export worker, the DHIS2 schedule and the late-data check
/// of the hub serving `state`. An invalid schedule is an error before
/// anything starts.
pub async fn spawn(state: &AppState) -> Result<Jobs, JobsError> {
    let dhis2 = &state.config.dhis2;
    check_schedules(dhis2)?;
    let late_data_on = late_data_on(dhis2);
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
                Box::pin(async move {
                    let caught_up = catch_up_schedule(&pool, &config, OffsetDateTime::now_utc()).await?.len();
                    Ok(caught_up + dhis2_late_data::run_once(&pool, &config, today).await?.len())
                })
            })
            .await?;
        }
        scheduler.start().await.map_err(JobsError::Scheduler)?;
        Some(scheduler)
    };
    if !is_off(&dhis2.schedule) {
        // A month whose export fell while no hub ran is sent now.
        let (pool, config, wake) = (state.db.clone(), state.config.clone(), state.export_wake.clone());
        tokio::spawn(async move {
            match catch_up_schedule(&pool, &config, OffsetDateTime::now_utc()).await {
                Ok(jobs) if !jobs.is_empty() => wake.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %crate::error_chain(&e), "DHIS2 schedule: cannot catch up"),
            }
        });
    }
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
    schedule_period(pool, Period::containing(today, loaded.mapping.data_set.period_type).previous()).await
}

/// Creates `period`'s jobs for every site unless it was already scheduled.
async fn schedule_period(pool: &Pool, period: Period) -> Result<Vec<ExportJob>, ExportError> {
    let new = NewExport { period, site: None, dry_run: false, trigger: Trigger::Schedule, requested_by: None };
    let jobs = dhis2_export::create_scheduled(pool, new).await?;
    if !jobs.is_empty() {
        tracing::info!(period = %period, jobs = jobs.len(), "DHIS2 schedule: period scheduled");
    }
    Ok(jobs)
}

/// When the export schedule `expression` first fires after `period` ended
/// (read as `tokio-cron-scheduler` reads it: seconds required, day of month
/// AND day of week), or `None` for `off` or an expression it refuses.
#[must_use]
pub fn first_run_after(expression: &str, period: Period) -> Option<OffsetDateTime> {
    if is_off(expression) {
        return None;
    }
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expression)
        .ok()?;
    let ended = period.end().next_day()?.midnight().assume_utc().unix_timestamp();
    let ended = chrono::DateTime::from_timestamp(ended, 0)?;
    let next = cron.find_next_occurrence(&ended, true).ok()?;
    OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
}

/// Catches up a scheduled export no hub ran: when the schedule should have
/// exported the period before `now`'s by now (it fired while every hub was
/// stopped: a power cut, an upgrade) and that period is not in
/// `dhis2_schedule_runs`, it is scheduled now, as [`run_schedule_once`]
/// would have (once, whatever the number of hubs). Only on a database where
/// the schedule has run before: a new hub does not report a month it was
/// not running in. `hub serve` calls this at start and before each
/// late-data check.
pub async fn catch_up_schedule(
    pool: &Pool,
    config: &Config,
    now: OffsetDateTime,
) -> Result<Vec<ExportJob>, ExportError> {
    let loaded = mapping::load(pool, &config.dhis2).await?;
    let period = Period::containing(now.date(), loaded.mapping.data_set.period_type).previous();
    let Some(due) = first_run_after(&config.dhis2.schedule, period) else { return Ok(Vec::new()) };
    if now < due {
        return Ok(Vec::new());
    }
    let db = pool.get().await?;
    let earlier = db.query_opt("SELECT 1 FROM dhis2_schedule_runs LIMIT 1", &[]).await?.is_some();
    drop(db);
    if !earlier {
        return Ok(Vec::new());
    }
    let jobs = schedule_period(pool, period).await?;
    if !jobs.is_empty() {
        tracing::warn!(period = %period, %due, jobs = jobs.len(),
            "DHIS2 schedule: the export due then did not run (no hub was running); exporting now");
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn period(p: &str) -> Period {
        Period::parse(p).expect("period")
    }

    #[test]
    fn the_first_run_after_a_period_is_read_as_the_scheduler_reads_it() {
        let at = |expression, p| first_run_after(expression, period(p));
        assert_eq!(at("0 0 2 2 * *", "202411"), Some(datetime!(2024-12-02 02:00 UTC)));
        assert_eq!(at("0 30 3 * * *", "202411"), Some(datetime!(2024-12-01 03:30 UTC)));
        // The first instant after the period counts.
        assert_eq!(at("0 0 0 1 * *", "202412"), Some(datetime!(2025-01-01 00:00 UTC)));
        // Weekly: 2024W15 is Monday 8 to Sunday 14 April.
        assert_eq!(at("0 0 6 * * Mon", "2024W15"), Some(datetime!(2024-04-15 06:00 UTC)));
        assert_eq!(at("off", "202411"), None);
        assert_eq!(at("every month", "202411"), None);
    }
}
