//! Background sync while `edge serve` runs: one push and pull every
//! `sync_interval_seconds` (0 turns it off), started next to the HTTP server
//! and never from a request handler.
//!
//! The schedule has three states:
//! - **waiting** the interval after a success, or while the edge is not
//!   enrolled (enrolling with `edge enroll` while serving needs no restart);
//! - **backing off** after a retryable failure (hub unreachable, 5xx): the
//!   n-th consecutive failure waits `min(max_delay, base_delay * 2^(n-1))`,
//!   jittered into its upper half so that clinics that lost the hub together
//!   do not all come back in the same second, as the push planner does
//!   between batches;
//! - **stopped** after a permanent failure (revoked device, bad signature):
//!   an operator has to act, so asking again would only fill the hub's log.
//!
//! When no connection to the hub could be made (the link or the hub is
//! down, [`SyncError::is_link_down`]), backing off also watches for
//! the link to return: every `probe_every` (a few seconds, far below the
//! backoff) it asks the hub's `GET /health` with a short timeout, and runs
//! as soon as the hub answers 2xx, rather than waiting out a backoff that
//! may have grown to many minutes after an outage of hours. A probe is one
//! small request, cheaper than a sync run; a hub that answers with an error
//! (5xx) is not probed, since the link is fine and the backoff is what
//! spares it.
//!
//! The time of the next run is published in [`super::SyncControl`] for the
//! sync page ("will retry automatically at ...").
//!
//! A manual run (sync page, API) starts the schedule over from the waiting
//! state, whatever its outcome; a restart does too. Runs take the lock of
//! [`super::SyncControl`], so a scheduled run and a manual one never
//! overlap. Shutdown ends the task at once, even mid-push: entries are marked
//! sent only after the hub's acknowledgement, so a push cut short is sent
//! again later and the hub counts the repeats as duplicates; a pull cut
//! short repeats at most the page in flight, which applies as a no-op.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{SyncError, run_exclusive};
use crate::AppState;
use crate::config::Config;

/// First delay after a retryable failure, unless the interval is shorter.
const BASE_DELAY: Duration = Duration::from_secs(30);
/// Longest delay after retryable failures, unless the interval is longer.
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Between two probes of a hub that could not be reached.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe that gets no answer in this time failed (waking a 2G radio takes
/// a few seconds).
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// When the scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Between two runs after a success.
    pub interval: Duration,
    /// Backoff after the first retryable failure, doubled after each next one.
    pub base_delay: Duration,
    /// Cap of the backoff.
    pub max_delay: Duration,
    /// Between two probes of an unreachable hub while backing off.
    pub probe_every: Duration,
}

impl Schedule {
    /// The schedule `sync_interval_seconds` asks for; `None` when it is 0.
    #[must_use]
    pub fn from_config(config: &Config) -> Option<Self> {
        (config.sync_interval_seconds > 0).then(|| Self::every(Duration::from_secs(config.sync_interval_seconds)))
    }

    /// A run every `interval`, with backoff bounds scaled to it.
    #[must_use]
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            base_delay: BASE_DELAY.min(interval),
            max_delay: MAX_DELAY.max(interval),
            probe_every: PROBE_EVERY.min(interval),
        }
    }

    /// The wait after `failures` consecutive retryable failures (at least 1);
    /// `jitter` in `[0, 1)` picks a point in the upper half of the delay.
    #[must_use]
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let full = self.base_delay.saturating_mul(1 << doublings).min(self.max_delay);
        full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// Where the schedule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// `link_down`: the hub could not be reached; probe it meanwhile.
    BackingOff {
        failures: u32,
        link_down: bool,
    },
    Stopped,
}

impl Phase {
    /// The phase after a run ended with `result`.
    fn after(self, result: &Result<super::SyncReport, SyncError>) -> Self {
        match result {
            Ok(_) | Err(SyncError::NotEnrolled) => Self::Waiting,
            Err(e) if e.is_retryable() => {
                let failures = match self {
                    Self::BackingOff { failures, .. } => failures.saturating_add(1),
                    Self::Waiting | Self::Stopped => 1,
                };
                Self::BackingOff { failures, link_down: e.is_link_down() }
            }
            Err(_) => Self::Stopped,
        }
    }
}

/// Starts the scheduler on the current runtime; the task ends when
/// `shutdown` resolves.
pub fn spawn(
    state: AppState,
    schedule: Schedule,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(run(state, schedule, shutdown))
}

async fn run(state: AppState, schedule: Schedule, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    let mut manual_runs = state.sync.watch_manual_runs();
    let mut phase = Phase::Waiting;
    tracing::info!(interval_seconds = schedule.interval.as_secs_f64(), "sync scheduler started");
    loop {
        let wait = match phase {
            Phase::Waiting => Some(schedule.interval),
            Phase::BackingOff { failures, .. } => Some(schedule.backoff(failures, rand::random::<f64>())),
            Phase::Stopped => None,
        };
        state.sync.set_next_attempt(wait.and_then(|d| time::Duration::try_from(d).ok()).map(|d| now() + d));
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let link_back = async {
            match phase {
                Phase::BackingOff { link_down: true, .. } => link_returns(&state, schedule.probe_every).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            changed = manual_runs.changed() => {
                if changed.is_err() {
                    break;
                }
                // The manual run recorded its own outcome; start over.
                phase = Phase::Waiting;
                continue;
            }
            () = sleep => {}
            () = link_back => tracing::info!("the hub answers again; syncing now"),
        }
        // Running now: no time to announce until it ends.
        state.sync.set_next_attempt(None);
        let result = tokio::select! {
            () = &mut shutdown => break,
            result = run_exclusive(&state) => result,
        };
        // A manual run that ended just before this one is superseded by it.
        manual_runs.mark_unchanged();
        phase = phase.after(&result);
        match phase {
            Phase::BackingOff { failures, link_down } => {
                tracing::info!(failures, link_down, "scheduled sync failed; backing off");
            }
            Phase::Stopped => {
                tracing::warn!(
                    "scheduled sync stopped after a permanent failure; waiting for a manual sync or a restart"
                );
            }
            Phase::Waiting => {}
        }
    }
    state.sync.set_next_attempt(None);
    tracing::info!("sync scheduler stopped");
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Resolves once the enrolled hub answers `GET /health`, probing every
/// `every`; never while the edge is not enrolled or the hub's address
/// cannot make a client (the backoff then decides alone).
async fn link_returns(state: &AppState, every: Duration) {
    let client = match state.store.read(super::enrolled_hub).await {
        Ok(Some(hub)) => super::HubClient::for_endpoint(&hub).ok(),
        Ok(None) | Err(_) => None,
    };
    let Some(client) = client else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(every).await;
        if client.probe(PROBE_TIMEOUT.min(every.max(Duration::from_millis(500)))).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_in_the_upper_half() {
        let s = Schedule::every(Duration::from_secs(300));
        assert_eq!(s.backoff(1, 0.999_999).as_secs(), 29);
        assert_eq!(s.backoff(1, 0.0), Duration::from_secs(15));
        assert_eq!(s.backoff(3, 0.0), Duration::from_secs(60));
        assert_eq!(s.backoff(40, 0.0), Duration::from_secs(450));
        assert!(s.backoff(40, 0.999) <= MAX_DELAY);
        let short = Schedule::every(Duration::from_millis(100));
        assert_eq!(short.backoff(1, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn failures_back_off_or_stop_and_success_resets() {
        let retryable = Err(SyncError::Hub(super::super::HubError::Status { status: 503 }));
        let permanent = Err(SyncError::ChangeTooLarge { seq: 1 });
        let done = Ok(super::super::SyncReport::default());
        let p = Phase::Waiting.after(&retryable);
        assert_eq!(p, Phase::BackingOff { failures: 1, link_down: false });
        assert_eq!(p.after(&retryable), Phase::BackingOff { failures: 2, link_down: false });
        let refused = Err(SyncError::ChangeRefused { seq: 7, message: "names another patient".into() });
        assert_eq!(p.after(&refused), Phase::Stopped);
        assert_eq!(p.after(&permanent), Phase::Stopped);
        assert_eq!(p.after(&done), Phase::Waiting);
        assert_eq!(Phase::Waiting.after(&Err(SyncError::NotEnrolled)), Phase::Waiting);
    }
}
