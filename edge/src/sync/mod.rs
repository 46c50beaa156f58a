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
//! `site_name`, `site_code`, `hub_url`, `hub_insecure_http`. Changes made
//! before enrollment are already in the outbox and go with the first push.
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
//! 4. A 413 halves the batch and goes on at once. A retryable failure
//!    (network, timeout, 5xx) ends this run with an error: the caller
//!    retries later ([`scheduler`] with backoff). A permanent one (revoked
//!    device, bad signature...) ends it too, with the hub's code.
//! 5. The result is written to `meta`: `sync_last_success_at` (and the last
//!    error cleared), or `sync_last_error` ("code: message"),
//!    `sync_last_error_code` ([`SyncError::code`]) and `sync_last_error_at`;
//!    [`crate::sync_status`] shows them.
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
mod pull;
mod push;
pub mod scheduler;

use std::path::Path;

use santerurale_shared::sync::{NotAscending, PushConfig};

pub use client::{HubClient, HubError, HubUrlError};
pub use enroll::{EnrollError, EnrollOptions, Enrollment, enroll};
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
    pub const ENROLLED_AT: &str = "enrolled_at";
    pub const LAST_SUCCESS_AT: &str = "sync_last_success_at";
    pub const LAST_ERROR: &str = "sync_last_error";
    /// [`super::SyncError::code`] of the last error.
    pub const LAST_ERROR_CODE: &str = "sync_last_error_code";
    pub const LAST_ERROR_AT: &str = "sync_last_error_at";
    /// The last `next_cursor` of the hub's log applied here.
    pub const PULL_CURSOR: &str = "sync_pull_cursor";
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
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
            Self::Hub(HubError::Status { .. }) => "hub_status",
            Self::Hub(HubError::BadResponse(_)) => "hub_bad_response",
            Self::Hub(HubError::Encode(_)) => "encode_failed",
            Self::ChangeTooLarge { .. } => "change_too_large",
            Self::AckBelowBatch { .. } => "ack_below_batch",
            Self::Hub(HubError::PageRefused { .. }) => "invalid_remote_page",
            Self::Hub(HubError::PullCursor { .. }) => "pull_cursor",
        }
    }
}

/// Shared by every run in this process (see "One run at a time" above).
#[derive(Debug)]
pub struct SyncControl {
    running: tokio::sync::Mutex<()>,
    /// Bumped after each manual run; the scheduler watches it.
    manual_runs: tokio::sync::watch::Sender<u64>,
}

impl Default for SyncControl {
    fn default() -> Self {
        Self { running: tokio::sync::Mutex::new(()), manual_runs: tokio::sync::watch::Sender::new(0) }
    }
}

impl SyncControl {
    fn watch_manual_runs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.manual_runs.subscribe()
    }
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
    let result = async {
        let pushed = push::run(store, data_dir, config).await?;
        let pulled = pull::run(store, data_dir, pull_bytes).await?;
        Ok(SyncReport { pulled: pulled.pulled, pulled_new: pulled.pulled_new, pull_pages: pulled.pull_pages, ..pushed })
    }
    .await;
    record(store, result).await
}

/// One full push: every pending entry, or until a failure. The outcome is
/// recorded in `meta` either way (except "not enrolled", which is no sync).
pub async fn push(store: &crate::store::Store, data_dir: &Path, config: PushConfig) -> Result<SyncReport, SyncError> {
    record(store, push::run(store, data_dir, config).await).await
}

/// One full pull alone, recorded like [`push`].
pub async fn pull(store: &crate::store::Store, data_dir: &Path, pull_bytes: u32) -> Result<SyncReport, SyncError> {
    record(store, pull::run(store, data_dir, pull_bytes).await).await
}

/// Writes the outcome of a run to `meta` and the log; returns it.
async fn record(store: &crate::store::Store, result: Result<SyncReport, SyncError>) -> Result<SyncReport, SyncError> {
    let record = match &result {
        Ok(_) => Some(None),
        Err(SyncError::NotEnrolled) => None,
        Err(e) => Some(Some((e.code().to_owned(), e.display_message()))),
    };
    if let Some(error) = record {
        let saved = store
            .write(move |w| {
                let c = w.conn();
                let now = now_rfc3339();
                match error {
                    None => {
                        set_meta(c, meta_keys::LAST_SUCCESS_AT, &now)?;
                        c.execute(
                            "DELETE FROM meta WHERE key IN (?1, ?2, ?3)",
                            [meta_keys::LAST_ERROR, meta_keys::LAST_ERROR_AT, meta_keys::LAST_ERROR_CODE],
                        )?;
                    }
                    Some((code, message)) => {
                        set_meta(c, meta_keys::LAST_ERROR, &message)?;
                        set_meta(c, meta_keys::LAST_ERROR_CODE, &code)?;
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

/// The hub this edge is enrolled with, from `meta`.
fn enrolled_hub(c: &rusqlite::Connection) -> Result<Option<(String, bool)>, StoreError> {
    if get_meta(c, meta_keys::SITE_ID)?.is_none() {
        return Ok(None);
    }
    let Some(url) = get_meta(c, meta_keys::HUB_URL)? else {
        return Ok(None);
    };
    let insecure = get_meta(c, meta_keys::HUB_INSECURE_HTTP)?.as_deref() == Some("true");
    Ok(Some((url, insecure)))
}
