//! The push planner: which outbox entries go in the next request, and what to
//! do after its outcome. Pure: the edge reads its outbox, asks
//! [`PushPlanner::plan`], sends, and reports the outcome with
//! [`PushPlanner::record`], which says whether to go on, wait or stop.
//!
//! Invariants (each has a test below):
//! - A batch is always a prefix of the pending entries: oldest first, no seq
//!   skipped or reordered. The hub refuses a batch that is not strictly
//!   ascending (`out_of_order_batch`). It must not require seqs to be dense
//!   or to start right after its last ack: a re-sent batch starts below it.
//! - A batch holds at most `max_changes` entries and `max_bytes` bytes of
//!   change, except that a single change bigger than `max_bytes` goes alone
//!   (otherwise the outbox would be stuck behind it).
//! - The edge marks entries as sent only after the hub's acknowledgement,
//!   and only up to `min(acked_through, last seq of the batch)`. If it
//!   crashes between the ack and the marking, it sends those entries again:
//!   harmless, the hub stores each change once, keyed by its Automerge hash,
//!   and counts it under `duplicates`.
//! - After a retryable failure the batch halves (not below the floor) and the
//!   next attempt waits `min(max_delay, base_delay * 2^(failures-1))`,
//!   jittered into its upper half; after a success the batch grows back by
//!   half again per batch, up to the ceiling, and the delay is zero.
//! - After a 413 the batch halves at once (no delay, the link is fine) and
//!   the planner remembers that the hub refused that many bytes, so growing
//!   back never reaches it again. A single change refused with 413 cannot be
//!   split: the planner stops ([`StopReason::ChangeTooLarge`]).
//! - After a permanent failure (revoked device, bad signature, a protocol the
//!   hub does not speak) the planner stops until [`PushPlanner::reset`]: an
//!   operator has to act, and hammering the hub would not help.
//! - What the planner learnt about the link and the hub ([`Learnt`]: the
//!   current batch limits and the hub's size limit) outlives one run: the
//!   edge saves it after a run and [`PushPlanner::resume`]s from it, so a
//!   hub that refuses every full-size batch sees smaller and smaller ones
//!   run after run until one fits, instead of the full size each time.
//!   Resuming clamps it to the bounds of the run's config; failures, delay
//!   and a stop are not carried over (the caller schedules the next run).

use std::time::Duration;

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_changes: u32,
    /// Bytes of change data (the sum of `change.len()`), before compression.
    pub max_bytes: u64,
}

/// The planner's bounds. Defaults are sized for 2G: the ceiling is about a
/// minute of upload at 30 kbit/s once compressed, the floor a few seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushConfig {
    /// Where the planner starts, and the most it grows to.
    pub ceiling: BatchPolicy,
    /// The least retryable failures shrink it to (413 may go lower).
    pub floor: BatchPolicy,
    /// First backoff delay.
    pub base_delay: Duration,
    /// Cap of the backoff delay.
    pub max_delay: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            ceiling: BatchPolicy { max_changes: 2_000, max_bytes: 1024 * 1024 },
            floor: BatchPolicy { max_changes: 8, max_bytes: 8 * 1024 },
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(15 * 60),
        }
    }
}

/// One pending outbox entry, as the planner needs to see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub seq: u64,
    /// Length of the change bytes.
    pub size: u64,
}

/// The next request: the first `count` pending entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: usize,
    pub bytes: u64,
}

/// What came of sending a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// 2xx with a [`super::wire::PushResponse`].
    Acked { through: u64 },
    /// 413: the body is over the hub's limit.
    TooLarge,
    /// The link failed, a timeout, or a 5xx/429, or an `ErrorBody` with
    /// `retryable: true`.
    Retryable,
    /// Any other 4xx: retrying the same thing would fail the same way.
    Permanent,
}

impl PushOutcome {
    /// Classify a failed response by its HTTP status and, when the body was
    /// an [`super::wire::ErrorBody`], its `retryable` flag. With no status
    /// (connection refused, reset, timeout) pass `None`: retryable.
    #[must_use]
    pub fn from_failure(status: Option<u16>, retryable: Option<bool>) -> Self {
        match (status, retryable) {
            (Some(413), _) => Self::TooLarge,
            (None, _) | (_, Some(true)) => Self::Retryable,
            (_, Some(false)) => Self::Permanent,
            // 408 timeout, 425 too early, 429 rate limited, 5xx (including
            // a proxy's 502/504 page that is no ErrorBody).
            (Some(408 | 425 | 429 | 500..), None) => Self::Retryable,
            (Some(_), None) => Self::Permanent,
        }
    }
}

/// Why the planner stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The hub refused the request for good (see the `ErrorBody` the edge
    /// received for the reason to show).
    Permanent,
    /// The hub refused a batch of one change as too large.
    ChangeTooLarge { seq: u64 },
}

/// What the edge does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Mark pending entries up to `seq` (inclusive) as sent, then plan the
    /// next batch straight away.
    MarkSentThrough { seq: u64 },
    /// Plan again (a smaller batch) after [`PushPlanner::next_delay`].
    Retry,
    /// Give up until an operator acts.
    Stop(StopReason),
}

/// The pending entries were not strictly ascending by seq: the edge's outbox
/// query is wrong, and sending would break the hub's contiguity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pending outbox entries are not strictly ascending at seq {seq}")]
pub struct NotAscending {
    pub seq: u64,
}

/// What a planner learnt that the next run should start from (see the
/// module docs): saved by the edge between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learnt {
    /// The limits the next batch would be planned with.
    pub current: BatchPolicy,
    /// Change bytes the hub accepts at most, as learnt from 413s (or from a
    /// body the hub cut off); `None` when it never refused one.
    pub hub_limit_bytes: Option<u64>,
}

impl Learnt {
    /// A compact text form for a `meta` row: `changes,bytes,limit` (limit
    /// `-` when unknown).
    #[must_use]
    pub fn to_text(&self) -> String {
        let limit = self.hub_limit_bytes.map_or_else(|| "-".to_owned(), |l| l.to_string());
        format!("{},{},{limit}", self.current.max_changes, self.current.max_bytes)
    }

    /// Parses [`Learnt::to_text`]; `None` for anything else (a row from a
    /// later version is ignored, not trusted).
    #[must_use]
    pub fn from_text(text: &str) -> Option<Self> {
        let mut parts = text.split(',');
        let max_changes = parts.next()?.parse().ok()?;
        let max_bytes = parts.next()?.parse().ok()?;
        let hub_limit_bytes = match parts.next()? {
            "-" => None,
            l => Some(l.parse().ok()?),
        };
        parts.next().is_none().then_some(Self { current: BatchPolicy { max_changes, max_bytes }, hub_limit_bytes })
    }
}

/// Adaptive batching and backoff for the push side. Holds no outbox data.
#[derive(Debug, Clone)]
pub struct PushPlanner {
    config: PushConfig,
    current: BatchPolicy,
    /// Bytes the hub accepts at most, as learnt from 413s.
    hub_limit_bytes: u64,
    failures: u32,
    delay: Duration,
    stopped: Option<StopReason>,
}

impl PushPlanner {
    #[must_use]
    pub fn new(config: PushConfig) -> Self {
        let mut config = config;
        // A floor above the ceiling would make the bounds contradict.
        config.floor.max_changes = config.floor.max_changes.clamp(1, config.ceiling.max_changes.max(1));
        config.floor.max_bytes = config.floor.max_bytes.min(config.ceiling.max_bytes);
        config.ceiling.max_changes = config.ceiling.max_changes.max(1);
        Self {
            current: config.ceiling,
            config,
            hub_limit_bytes: u64::MAX,
            failures: 0,
            delay: Duration::ZERO,
            stopped: None,
        }
    }

    /// A planner with `config`'s bounds that starts where an earlier one
    /// stopped learning (see [`Learnt`]), within those bounds.
    #[must_use]
    pub fn resume(config: PushConfig, learnt: Learnt) -> Self {
        let mut planner = Self::new(config);
        if let Some(limit) = learnt.hub_limit_bytes {
            planner.hub_limit_bytes = limit.max(1);
        }
        planner.current = planner.capped(BatchPolicy {
            max_changes: learnt.current.max_changes,
            max_bytes: learnt.current.max_bytes.max(1),
        });
        planner
    }

    /// What the next run should resume from.
    #[must_use]
    pub fn learnt(&self) -> Learnt {
        Learnt {
            current: self.current,
            hub_limit_bytes: (self.hub_limit_bytes != u64::MAX).then_some(self.hub_limit_bytes),
        }
    }

    /// The limits the next batch is planned with.
    #[must_use]
    pub const fn policy(&self) -> BatchPolicy {
        self.current
    }

    /// How long to wait before the next request: zero unless the last
    /// outcome was a retryable failure.
    #[must_use]
    pub const fn next_delay(&self) -> Duration {
        self.delay
    }

    /// Consecutive retryable failures (for the sync page).
    #[must_use]
    pub const fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    #[must_use]
    pub const fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// Start over after an operator acted (device re-enrolled, hub upgraded),
    /// keeping what was learnt about the hub's size limit.
    pub fn reset(&mut self) {
        self.stopped = None;
        self.failures = 0;
        self.delay = Duration::ZERO;
        self.current = self.capped(self.config.ceiling);
    }

    /// Choose the next batch from the pending entries (oldest first). `None`
    /// when there is nothing to send or the planner has stopped.
    pub fn plan(&self, pending: &[Pending]) -> Result<Option<Batch>, NotAscending> {
        if let Some(w) = pending.windows(2).find(|w| w[1].seq <= w[0].seq) {
            return Err(NotAscending { seq: w[1].seq });
        }
        if self.stopped.is_some() {
            return Ok(None);
        }
        let Some(first) = pending.first() else {
            return Ok(None);
        };
        let max_count = usize::try_from(self.current.max_changes).unwrap_or(usize::MAX);
        let mut count = 0;
        let mut bytes: u64 = 0;
        for p in pending.iter().take(max_count) {
            let total = bytes.saturating_add(p.size);
            if count > 0 && total > self.current.max_bytes {
                break;
            }
            count += 1;
            bytes = total;
        }
        Ok(Some(Batch { first_seq: first.seq, last_seq: pending[count - 1].seq, count, bytes }))
    }

    /// Take the outcome of sending `batch`. `jitter` in `[0, 1)` spreads the
    /// retries of many clinics that lost the hub at once; it is only used for
    /// [`PushOutcome::Retryable`] (pass anything otherwise).
    pub fn record(&mut self, batch: &Batch, outcome: PushOutcome, jitter: f64) -> Next {
        match outcome {
            PushOutcome::Acked { through } if through >= batch.first_seq => {
                self.failures = 0;
                self.delay = Duration::ZERO;
                if through >= batch.last_seq {
                    self.grow();
                }
                Next::MarkSentThrough { seq: through.min(batch.last_seq) }
            }
            // An ack below the batch means the hub stored none of it while
            // claiming success: treat as a failure so the edge does not spin.
            PushOutcome::Acked { .. } | PushOutcome::Retryable => {
                self.failures = self.failures.saturating_add(1);
                self.current = BatchPolicy {
                    max_changes: halve_u32(batch.count, self.config.floor.max_changes),
                    max_bytes: (batch.bytes / 2).max(self.config.floor.max_bytes),
                };
                self.current = self.capped(self.current);
                self.delay = self.backoff(jitter);
                Next::Retry
            }
            PushOutcome::TooLarge => {
                if batch.count <= 1 {
                    let reason = StopReason::ChangeTooLarge { seq: batch.first_seq };
                    self.stopped = Some(reason);
                    return Next::Stop(reason);
                }
                self.hub_limit_bytes = self.hub_limit_bytes.min(batch.bytes.saturating_sub(1));
                self.current =
                    BatchPolicy { max_changes: halve_u32(batch.count, 1), max_bytes: (batch.bytes / 2).max(1) };
                self.delay = Duration::ZERO;
                Next::Retry
            }
            PushOutcome::Permanent => {
                self.stopped = Some(StopReason::Permanent);
                Next::Stop(StopReason::Permanent)
            }
        }
    }

    /// Grow by half again (at least one change), up to the ceiling and below
    /// any limit the hub showed with a 413.
    fn grow(&mut self) {
        let c = self.current;
        self.current = self.capped(BatchPolicy {
            max_changes: c.max_changes.saturating_add((c.max_changes / 2).max(1)),
            max_bytes: c.max_bytes.saturating_add((c.max_bytes / 2).max(1)),
        });
    }

    fn capped(&self, p: BatchPolicy) -> BatchPolicy {
        BatchPolicy {
            max_changes: p.max_changes.clamp(1, self.config.ceiling.max_changes),
            max_bytes: p.max_bytes.min(self.config.ceiling.max_bytes).min(self.hub_limit_bytes),
        }
    }

    /// `min(max, base * 2^(failures-1))`, then "equal jitter": half fixed,
    /// half random, so no retry comes sooner than half the step.
    fn backoff(&self, jitter: f64) -> Duration {
        let exp = self.failures.saturating_sub(1).min(30);
        let step = self.config.base_delay.saturating_mul(1 << exp).min(self.config.max_delay);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        step / 2 + (step / 2).mul_f64(jitter)
    }
}

impl Default for PushPlanner {
    fn default() -> Self {
        Self::new(PushConfig::default())
    }
}

fn halve_u32(count: usize, floor: u32) -> u32 {
    u32::try_from(count / 2).unwrap_or(u32::MAX).max(floor).max(1)
}

/// Hub side of the same rule for pull pages: how many of the log entries
/// (their sizes, in log order) fit in `max_bytes`. At least one if any, so an
/// oversized change is sent alone rather than blocking the edge.
#[must_use]
pub fn page_len(sizes: impl IntoIterator<Item = u64>, max_bytes: u64) -> usize {
    let mut count = 0;
    let mut bytes: u64 = 0;
    for size in sizes {
        bytes = bytes.saturating_add(size);
        if count > 0 && bytes > max_bytes {
            break;
        }
        count += 1;
    }
    count
}

#[cfg(test)]
#[path = "push_tests.rs"]
mod tests;
