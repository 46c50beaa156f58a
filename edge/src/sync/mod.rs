//! The edge side of sync with the hub: enrollment, pushing the outbox and
//! pulling the changes other clinics made.
//! The protocol itself (messages, codec, signing, batch planning) is pure and
//! lives in `santerurale_shared::sync`; this module does its I/O.
//!
//! # Enrollment ([`enroll()`])
//! A hub admin gives the clinic a one-time token. `edge enroll --hub URL
//! --token T` makes an ed25519 key from 32 random bytes, sends its public
//! half with the store's device id and the token to
//! `POST /api/v1/devices/enroll`, and on `201` keeps the key in
//! `DATA_DIR/device.key` (mode 0600, see [`keys`] for why a crash cannot
//! leave a torn or stray key in use) and the site in `meta`: `site_id`,
//! `site_name`, `site_code`, `hub_url`, `hub_insecure_http`, and
//! `hub_ca_pem` when `--hub-ca FILE` named the CA to trust (see [`client`]
//! for TLS). Changes made before enrollment are already in the outbox and go
//! with the first push.
//!
//! # Push ([`run_once`], [`push`])
//! 1. Read the oldest pending outbox entries (`acked_at IS NULL`), only
//!    their sizes, and let [`PushPlanner`](santerurale_shared::sync::PushPlanner) pick a batch; then read that
//!    batch's bytes.
//! 2. Encode, sign and `POST` it ([`client`]).
//! 3. On an acknowledgement, mark the entries up to
//!    [`Next::MarkSentThrough`](santerurale_shared::sync::Next::MarkSentThrough) as sent, in one SQLite transaction, and go
//!    on. An entry is marked only after the hub said it stored it; if the
//!    answer is lost, the batch is sent again and the hub counts it as
//!    duplicates (it keys changes by hash), so nothing is lost and at most
//!    the batch in flight goes twice.
//! 4. A 413 halves the batch and goes on at once. So does a connection cut
//!    while the request was on its way (up to a few times in a row): a hub
//!    refusing an oversized body answers 413 and closes the connection
//!    while the edge is still sending, so the edge often sees only the cut.
//!    Any other retryable failure (hub unreachable, timeout, 5xx) ends this
//!    run with an error: the caller retries later ([`scheduler`] with
//!    backoff). A permanent one (revoked device, bad signature...) ends it
//!    too, with the hub's code.
//! 5. A batch the hub refuses for one of its changes (422
//!    `change_refused`: the change names another patient than its document,
//!    or does not apply) is halved until the hub refuses a batch of that one
//!    change alone; everything before it is sent on the way. The run then
//!    stops with [`SyncError::ChangeRefused`] naming its seq. The change is
//!    never skipped nor deleted: every later run stops at it until someone
//!    acts, and the sync page says so.
//! 6. What the batch planner learnt (its current limits, the hub's size
//!    limit) is kept in `meta` (`sync_push_limits`) and the next run starts
//!    from it, so runs against a hub that refuses full-size batches shrink
//!    them until one fits rather than starting over at full size each time.
//! 7. The result is written to `meta`: `sync_last_success_at` (and the last
//!    error cleared), or `sync_last_error` ("code: message"),
//!    `sync_last_error_code` ([`SyncError::code`]),
//!    `sync_last_error_retryable` and `sync_last_error_at`; and, either way,
//!    what the run moved (`sync_last_run`, a JSON [`SyncReport`]).
//!    [`crate::sync_status`] and [`details`] show them.
//!
//! # Pull ([`run_once`], [`pull`])
//! After a push that went through, the same run pulls:
//! 1. Send [`PullRequest`](santerurale_shared::sync::PullRequest) with the
//!    cursor in `meta` (`sync_pull_cursor`, 0 at first) and a byte budget.
//! 2. Apply the page's changes, grouped by patient in page order
//!    ([`WriteTx::apply_remote`](crate::store::WriteTx::apply_remote): no
//!    outbox entry, projection refreshed) and store `next_cursor`, in one
//!    SQLite transaction. A crash or a cut link before the commit repeats
//!    the page next time; a change applied twice is a no-op. So nothing is
//!    skipped and nothing kept twice.
//! 3. Pull again while the hub says `more`.
//!
//! Failures are classified like the push's and recorded in the same `meta`
//! keys. A page that does not apply (a change that does not decode, or
//! belongs to another patient) is refused whole, the cursor stays, and the
//! error is permanent (`invalid_remote_page`): pulling it again would fail
//! again until the hub is fixed.
//!
//! # One run at a time
//! Inside one process every run ([`run_once`]: the API, the sync page, the
//! [`scheduler`]) holds the [`SyncControl`] lock of the app state while it
//! pushes, so a manual run waits for a scheduled one and the other way
//! round. A manual run also tells the scheduler, which then starts its
//! schedule over (it resumes after a permanent failure). A CLI `edge sync`
//! in another process is not covered: two runs at once would only re-send
//! a batch, which the hub dedups.

pub mod client;
mod enroll;
pub mod keys;
pub mod lookup;
mod pull;
mod push;
pub mod scheduler;

use std::path::Path;

use santerurale_shared::sync::{NotAscending, PushConfig};

pub use client::{HubCa, HubCaError, HubClient, HubEndpoint, HubError, HubUrlError};
pub use enroll::{EnrollError, EnrollOptions, Enrollment, enroll, enroll_with_ca};
pub use keys::KeyError;
pub use pull::DEFAULT_PULL_BYTES;

use crate::AppState;
use crate::store::{StoreError, get_meta, now_rfc3339, set_meta};

/// `meta` keys written here (the others, `sync_last_*`, are read by
/// [`crate::sync_status`]).
pub mod meta_keys {
    pub const SITE_ID: &str = "site_id";
    pub const SITE_NAME: &str = "site_name";
    pub const SITE_CODE: &str = "site_code";
    pub const HUB_URL: &str = "hub_url";
    /// "true" when the operator accepted plain HTTP to a non-loopback hub.
    pub const HUB_INSECURE_HTTP: &str = "hub_insecure_http";
    /// The CA certificates (PEM) the hub's certificate must chain to, when
    /// the operator gave one at enrollment.
    pub const HUB_CA_PEM: &str = "hub_ca_pem";
    pub const ENROLLED_AT: &str = "enrolled_at";
    pub const LAST_SUCCESS_AT: &str = "sync_last_success_at";
    pub const LAST_ERROR: &str = "sync_last_error";
    /// [`super::SyncError::code`] of the last error.
    pub const LAST_ERROR_CODE: &str = "sync_last_error_code";
    pub const LAST_ERROR_AT: &str = "sync_last_error_at";
    /// The last `next_cursor` of the hub's log applied here.
    pub const PULL_CURSOR: &str = "sync_pull_cursor";
    /// "true" or "false": [`super::SyncError::is_retryable`] of the last error.
    pub const LAST_ERROR_RETRYABLE: &str = "sync_last_error_retryable";
    /// The [`super::SyncReport`] of the last run, as JSON, failed runs too.
    pub const LAST_RUN: &str = "sync_last_run";
    /// When the last run ended.
    pub const LAST_RUN_AT: &str = "sync_last_run_at";
    /// What the push planner learnt (`santerurale_shared::sync::push::Learnt`).
    pub const PUSH_LIMITS: &str = "sync_push_limits";
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncReport {
    /// Outbox entries marked as sent.
    pub pushed: u64,
    /// Requests the hub acknowledged.
    pub batches: u32,
    /// Of the entries sent, those new to the hub, and those it already had.
    pub applied: u64,
    pub duplicates: u64,
    /// Batches refused as too large and split.
    pub splits: u32,
    /// Changes received from the hub, and of those the ones new here.
    pub pulled: u64,
    pub pulled_new: u64,
    /// Pages applied.
    pub pull_pages: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("this edge is not enrolled with a hub yet: run `edge enroll --hub URL --token T`")]
    NotEnrolled,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    HubUrl(#[from] HubUrlError),
    #[error("cannot read or update the outbox")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] NotAscending),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("outbox entry {seq} is larger than the hub accepts on its own; it cannot be sent")]
    ChangeTooLarge { seq: u64 },
    #[error("the hub acknowledged up to {acked_through}, below the batch it was sent (from {first_seq})")]
    AckBelowBatch { acked_through: u64, first_seq: u64 },
    /// The hub decodes this outbox entry but will not take it (it names
    /// another patient than its document, or does not apply): sync stops at
    /// it, keeping it, until someone looks into it.
    #[error("the hub refused outbox entry {seq}: {message}")]
    ChangeRefused { seq: u64, message: String },
}

impl SyncError {
    /// Whether running again later, unchanged, may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Hub(e) => e.is_retryable(),
            Self::Store(_) | Self::AckBelowBatch { .. } => true,
            _ => false,
        }
    }

    /// The message kept in `meta` and shown on the sync page: the hub's
    /// code first when it sent one ("revoked_device: ...").
    #[must_use]
    pub fn display_message(&self) -> String {
        crate::error_chain(self)
    }

    /// A stable, machine-readable code: the hub's own when it refused the
    /// request (`revoked_device`, ...), else one of ours (`hub_unreachable`,
    /// `hub_status`, `device_key`, ...). The sync page words it for people.
    #[must_use]
    pub fn code(&self) -> &str {
        match self {
            Self::NotEnrolled => "not_enrolled",
            Self::Key(_) => "device_key",
            Self::HubUrl(_) => "hub_url",
            Self::Store(_) => "store",
            Self::Outbox(_) => "outbox_order",
            Self::Hub(HubError::Refused { code, .. }) => code,
            Self::Hub(HubError::Network(_)) => "hub_unreachable",
            Self::Hub(HubError::Untrusted(_)) => "tls_untrusted",
            Self::Hub(HubError::Status { .. }) => "hub_status",
            Self::Hub(HubError::BadResponse(_)) => "hub_bad_response",
            Self::Hub(HubError::Encode(_)) => "encode_failed",
            Self::ChangeTooLarge { .. } => "change_too_large",
            Self::AckBelowBatch { .. } => "ack_below_batch",
            Self::Hub(HubError::PageRefused { .. }) => "invalid_remote_page",
            Self::Hub(HubError::PullCursor { .. }) => "pull_cursor",
            Self::ChangeRefused { .. } => "change_refused",
        }
    }

    /// Whether no connection to the hub could be made at all (as opposed to
    /// a hub that answered with an error, or an exchange cut or timed out
    /// once connected): the scheduler then watches for the link to come
    /// back. Only this case: if a connection can be made, a probe would
    /// succeed at once and re-run a failing sync every few seconds.
    #[must_use]
    pub fn is_link_down(&self) -> bool {
        matches!(self, Self::Hub(HubError::Network(client::TransportError::Request(e))) if e.is_connect())
    }
}

/// Shared by every run in this process (see "One run at a time" above).
#[derive(Debug)]
pub struct SyncControl {
    running: tokio::sync::Mutex<()>,
    /// Bumped after each manual run; the scheduler watches it.
    manual_runs: tokio::sync::watch::Sender<u64>,
    /// When the scheduler will run next, as it last said (`None`: no
    /// scheduler, or stopped after a permanent failure).
    next_attempt: std::sync::Mutex<Option<time::OffsetDateTime>>,
}

impl Default for SyncControl {
    fn default() -> Self {
        Self {
            running: tokio::sync::Mutex::new(()),
            manual_runs: tokio::sync::watch::Sender::new(0),
            next_attempt: std::sync::Mutex::new(None),
        }
    }
}

impl SyncControl {
    fn watch_manual_runs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.manual_runs.subscribe()
    }

    /// When the scheduler plans its next run, if it does.
    #[must_use]
    pub fn next_attempt(&self) -> Option<time::OffsetDateTime> {
        *self.next_attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_next_attempt(&self, at: Option<time::OffsetDateTime>) {
        *self.next_attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = at;
    }
}

/// The rest of what `GET /api/v1/sync/status` and the sync page show, next to
/// [`crate::SyncStatus`]: the class of the last error, what the last run
/// moved, and when the scheduler tries again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncDetails {
    /// Whether the last error may clear by itself (the scheduler retries);
    /// `false` means someone has to act. `None` when there is no error.
    pub last_error_retryable: Option<bool>,
    /// What the last run moved, failed runs included (what went through
    /// before the failure).
    pub last_run: Option<SyncReport>,
    pub last_run_at: Option<String>,
    /// When the background scheduler runs next (RFC 3339); `None` when it is
    /// off, or stopped after a permanent failure.
    pub next_attempt_at: Option<String>,
}

/// Reads [`SyncDetails`].
pub async fn details(state: &AppState) -> Result<SyncDetails, StoreError> {
    let next_attempt_at = state.sync.next_attempt().map(crate::store::format_timestamp);
    state
        .store
        .read(move |c| {
            let has_error = get_meta(c, meta_keys::LAST_ERROR)?.is_some();
            let retryable = get_meta(c, meta_keys::LAST_ERROR_RETRYABLE)?;
            Ok(SyncDetails {
                last_error_retryable: has_error.then(|| retryable.as_deref() == Some("true")),
                last_run: get_meta(c, meta_keys::LAST_RUN)?.and_then(|j| serde_json::from_str(&j).ok()),
                last_run_at: get_meta(c, meta_keys::LAST_RUN_AT)?,
                next_attempt_at,
            })
        })
        .await
}

/// One full push and pull with the default bounds, on demand (the API and the
/// sync page): waits for a run in progress, then wakes the scheduler.
pub async fn run_once(state: &AppState) -> Result<SyncReport, SyncError> {
    let result = run_exclusive(state).await;
    state.sync.manual_runs.send_modify(|n| *n = n.wrapping_add(1));
    result
}

/// One full push and pull while holding the run lock.
async fn run_exclusive(state: &AppState) -> Result<SyncReport, SyncError> {
    let _running = state.sync.running.lock().await;
    sync(&state.store, &state.config.data_dir, PushConfig::default(), DEFAULT_PULL_BYTES).await
}

/// One full push, then, if it went through, a full pull with pages of
/// `pull_bytes`. The outcome is recorded in `meta` either way.
pub async fn sync(
    store: &crate::store::Store,
    data_dir: &Path,
    config: PushConfig,
    pull_bytes: u32,
) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let result = async {
        push::run(store, data_dir, config, &mut report).await?;
        pull::run(store, data_dir, pull_bytes, &mut report).await
    }
    .await;
    record(store, report, result).await
}

/// One full push: every pending entry, or until a failure. The outcome is
/// recorded in `meta` either way (except "not enrolled", which is no sync).
pub async fn push(store: &crate::store::Store, data_dir: &Path, config: PushConfig) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let result = push::run(store, data_dir, config, &mut report).await;
    record(store, report, result).await
}

/// One full pull alone, recorded like [`push`].
pub async fn pull(store: &crate::store::Store, data_dir: &Path, pull_bytes: u32) -> Result<SyncReport, SyncError> {
    let mut report = SyncReport::default();
    let result = pull::run(store, data_dir, pull_bytes, &mut report).await;
    record(store, report, result).await
}

/// Writes the outcome of a run and what it moved (`report`) to `meta` and
/// the log; returns the outcome.
async fn record(
    store: &crate::store::Store,
    report: SyncReport,
    result: Result<(), SyncError>,
) -> Result<SyncReport, SyncError> {
    let result = result.map(|()| report);
    let record = match &result {
        Ok(_) => Some(None),
        Err(SyncError::NotEnrolled) => None,
        Err(e) => Some(Some((e.code().to_owned(), e.display_message(), e.is_retryable()))),
    };
    if let Some(error) = record {
        let moved = serde_json::to_string(&report).unwrap_or_default();
        let saved = store
            .write(move |w| {
                let c = w.conn();
                let now = now_rfc3339();
                set_meta(c, meta_keys::LAST_RUN, &moved)?;
                set_meta(c, meta_keys::LAST_RUN_AT, &now)?;
                match error {
                    None => {
                        set_meta(c, meta_keys::LAST_SUCCESS_AT, &now)?;
                        c.execute(
                            "DELETE FROM meta WHERE key IN (?1, ?2, ?3, ?4)",
                            [
                                meta_keys::LAST_ERROR,
                                meta_keys::LAST_ERROR_AT,
                                meta_keys::LAST_ERROR_CODE,
                                meta_keys::LAST_ERROR_RETRYABLE,
                            ],
                        )?;
                    }
                    Some((code, message, retryable)) => {
                        set_meta(c, meta_keys::LAST_ERROR, &message)?;
                        set_meta(c, meta_keys::LAST_ERROR_CODE, &code)?;
                        set_meta(c, meta_keys::LAST_ERROR_RETRYABLE, if retryable { "true" } else { "false" })?;
                        set_meta(c, meta_keys::LAST_ERROR_AT, &now)?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = saved {
            tracing::error!(error = %crate::error_chain(&e), "cannot record the sync result");
        }
    }
    match &result {
        Ok(r) => tracing::info!(
            pushed = r.pushed,
            batches = r.batches,
            duplicates = r.duplicates,
            pulled = r.pulled,
            pulled_new = r.pulled_new,
            pages = r.pull_pages,
            "sync done"
        ),
        // Not a failure: the scheduler asks every interval until enrollment.
        Err(SyncError::NotEnrolled) => tracing::debug!("sync skipped: not enrolled"),
        Err(e) => {
            tracing::warn!(error = %e.display_message(), retryable = e.is_retryable(), "sync failed")
        }
    }
    result
}

/// A client for the hub this edge is enrolled with, and the device key that
/// signs its requests; `not_enrolled` (each caller has its own) when the
/// edge is not enrolled yet.
async fn connect<E>(
    store: &crate::store::Store,
    data_dir: &Path,
    not_enrolled: E,
) -> Result<(HubClient, santerurale_shared::sync::SigningKey), E>
where
    E: From<StoreError> + From<HubUrlError> + From<KeyError>,
{
    let Some(hub) = store.read(enrolled_hub).await? else {
        return Err(not_enrolled);
    };
    Ok((HubClient::for_endpoint(&hub)?, keys::load(data_dir)?))
}

/// The hub this edge is enrolled with, from `meta`.
fn enrolled_hub(c: &rusqlite::Connection) -> Result<Option<HubEndpoint>, StoreError> {
    if get_meta(c, meta_keys::SITE_ID)?.is_none() {
        return Ok(None);
    }
    let Some(url) = get_meta(c, meta_keys::HUB_URL)? else {
        return Ok(None);
    };
    let insecure_http = get_meta(c, meta_keys::HUB_INSECURE_HTTP)?.as_deref() == Some("true");
    let ca_pem = get_meta(c, meta_keys::HUB_CA_PEM)?;
    Ok(Some(HubEndpoint { url, insecure_http, ca_pem }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_stable_code_and_a_class() {
        let refused = |status, code: &str, retryable| {
            SyncError::Hub(HubError::Refused { status, code: code.into(), message: "m".into(), retryable })
        };
        let cases = [
            (SyncError::NotEnrolled, "not_enrolled", false),
            (SyncError::ChangeTooLarge { seq: 3 }, "change_too_large", false),
            (SyncError::ChangeRefused { seq: 3, message: "m".into() }, "change_refused", false),
            (SyncError::AckBelowBatch { acked_through: 1, first_seq: 2 }, "ack_below_batch", true),
            (SyncError::Store(StoreError::Cancelled), "store", true),
            (SyncError::Outbox(NotAscending { seq: 2 }), "outbox_order", false),
            (refused(403, "revoked_device", Some(false)), "revoked_device", false),
            (refused(503, "database_unavailable", Some(true)), "database_unavailable", true),
            (SyncError::Hub(HubError::Status { status: 502 }), "hub_status", true),
            (SyncError::Hub(HubError::Status { status: 404 }), "hub_status", false),
            (SyncError::Hub(HubError::PullCursor { cursor: 2, next_cursor: 1 }), "pull_cursor", false),
        ];
        for (e, code, retryable) in cases {
            assert_eq!((e.code(), e.is_retryable()), (code, retryable), "{e:?}");
            assert!(!e.is_link_down(), "{e:?} is an answer, not a dead link");
        }
    }
}
