//! Running `edge` commands through a [`LinkSimulator`] and measuring them:
//! wall time, bytes each way and connections (the simulator's counters),
//! HTTP requests the hub served (its `hub_http_requests_total`, read
//! straight from the hub, not through the link), and what the edge says the
//! run moved (`sync_last_run` in its `meta`, written for failed runs too).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use edge::sync::SyncReport;
use santerurale_e2e::{EdgeDir, HubProcess, LinkSimulator, LinkStats, POLL_INTERVAL, read_meta};

/// Totals of a hub's Prometheus counters that the bench compares before and
/// after a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubCounters {
    /// Every HTTP request served (all routes and statuses).
    pub requests: f64,
    /// Pushed changes that were new to the hub.
    pub changes_applied: f64,
    /// Seconds the hub spent serving requests (its request-duration
    /// histogram's sum, every route): on loopback, what the hub costs of a
    /// run's wall time; the rest is the edge and the link.
    pub serving_secs: f64,
}

impl HubCounters {
    pub async fn read(hub: &HubProcess) -> Result<Self> {
        let text = hub.api()?.text("/metrics").await.context("reading the hub's metrics")?;
        Ok(Self {
            requests: sum_of(&text, "hub_http_requests_total"),
            changes_applied: sum_of(&text, "sync_changes_applied_total"),
            serving_secs: sum_of(&text, "hub_http_request_duration_seconds_sum"),
        })
    }
}

/// The sum of every sample of `name`, whatever its labels.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// One `edge` command, measured.
#[derive(Debug, Clone)]
pub struct Run {
    pub ok: bool,
    pub elapsed: Duration,
    pub link: LinkDelta,
    /// HTTP requests the hub served meanwhile, the bench's own metrics
    /// scrapes taken out.
    pub requests: u64,
    pub changes_applied: u64,
    /// Seconds the hub spent serving the run's requests (metrics scrapes
    /// included, a millisecond or so).
    pub hub_secs: f64,
    /// What the edge recorded for the run (`None` for `enroll`).
    pub report: Option<SyncReport>,
    pub output: String,
}

/// What a simulator counted between two moments.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkDelta {
    pub up: u64,
    pub down: u64,
    pub connections: u64,
    pub faults: u64,
}

impl LinkDelta {
    pub fn between(before: LinkStats, after: LinkStats) -> Self {
        Self {
            up: after.bytes_up - before.bytes_up,
            down: after.bytes_down - before.bytes_down,
            connections: after.connections - before.connections,
            faults: after.faults() - before.faults(),
        }
    }

    pub fn total(&self) -> u64 {
        self.up + self.down
    }

    pub fn add(&mut self, other: Self) {
        self.up += other.up;
        self.down += other.down;
        self.connections += other.connections;
        self.faults += other.faults;
    }
}

/// Runs `edge ARGS` on `edge` to its end (at most `timeout`), measuring the
/// link and the hub around it. A failed command is a measured run with
/// `ok == false`, not an error.
pub async fn run(
    edge: &EdgeDir,
    args: &[&str],
    link: &LinkSimulator,
    hub: &HubProcess,
    timeout: Duration,
) -> Result<Run> {
    // Taken before the spawn: the child may connect at once.
    let before = Measure::start(link, hub).await?;
    let mut child = edge.spawn_cli(args)?;
    finish(edge, &mut child, link, hub, timeout, before).await
}

/// The state before a run, to measure it once it ends.
#[derive(Debug, Clone, Copy)]
pub struct Measure {
    started: Instant,
    link: LinkStats,
    hub: HubCounters,
    /// Requests one metrics scrape adds to the count (whether a scrape
    /// counts itself depends on where the hub's middleware counts).
    scrape: f64,
}

impl Measure {
    pub async fn start(link: &LinkSimulator, hub: &HubProcess) -> Result<Self> {
        let first = HubCounters::read(hub).await?;
        let second = HubCounters::read(hub).await?;
        let scrape = second.requests - first.requests;
        Ok(Self { started: Instant::now(), link: link.stats(), hub: second, scrape })
    }

    #[must_use]
    pub fn link(&self) -> LinkStats {
        self.link
    }
}

/// Waits for `child` (started after `before` was taken) and measures it.
pub async fn finish(
    edge: &EdgeDir,
    child: &mut santerurale_e2e::CliChild,
    link: &LinkSimulator,
    hub: &HubProcess,
    timeout: Duration,
    before: Measure,
) -> Result<Run> {
    let status = child
        .wait_for(timeout)
        .await?
        .with_context(|| format!("{} did not finish within {timeout:?}", child.shown()))?;
    let elapsed = before.started.elapsed();
    let link_delta = LinkDelta::between(before.link, link.stats());
    let after = HubCounters::read(hub).await?;
    let is_sync = child.shown().starts_with("edge sync");
    let report = if is_sync { last_report(edge)? } else { None };
    Ok(Run {
        ok: status.success(),
        elapsed,
        link: link_delta,
        requests: counter_delta(before.hub.requests + before.scrape, after.requests),
        changes_applied: counter_delta(before.hub.changes_applied, after.changes_applied),
        hub_secs: (after.serving_secs - before.hub.serving_secs).max(0.0),
        report,
        output: child.output(),
    })
}

/// `sync_last_run` of the edge, as the last `edge sync` left it.
pub fn last_report(edge: &EdgeDir) -> Result<Option<SyncReport>> {
    let Some(json) = read_meta(&edge.db_path(), "sync_last_run")? else { return Ok(None) };
    Ok(Some(serde_json::from_str(&json).with_context(|| format!("sync_last_run is not a report: {json}"))?))
}

/// Waits, polling, until `link` has carried `bytes_up` more bytes upstream
/// than `from`, or `child` ended; says which.
pub async fn wait_for_upload(
    child: &mut santerurale_e2e::CliChild,
    link: &LinkSimulator,
    from: LinkStats,
    bytes_up: u64,
) -> Result<bool> {
    loop {
        if link.stats().bytes_up - from.bytes_up >= bytes_up {
            return Ok(true);
        }
        if child.try_status()?.is_some() {
            return Ok(false);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn counter_delta(before: f64, after: f64) -> u64 {
    // Counters are whole numbers well below 2^53.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "whole, non-negative counts")]
    let delta = (after - before).max(0.0).round() as u64;
    delta
}
