//! The pull loop (see "Pull" in the module docs of [`super`]): ask the hub
//! for the changes after the stored cursor, apply each page and store its
//! `next_cursor` in one SQLite transaction, and go on while the hub says
//! there is more.

use std::collections::HashMap;
use std::path::Path;

use santerurale_shared::PatientId;
use santerurale_shared::sync::{HubChange, PROTOCOL_VERSION, PullRequest};

use super::client::HubError;
use super::{SyncError, SyncReport, connect, meta_keys};
use crate::store::{Store, StoreError, get_meta, set_meta};

/// Budget for the change bytes of one page: a few seconds at 2G speeds, so a
/// cut link costs little, and enough to catch up a new box in few requests.
pub const DEFAULT_PULL_BYTES: u32 = 256 * 1024;

/// One full pull; counts the pages applied in `report`, even when the run
/// then fails.
pub(super) async fn run(
    store: &Store,
    data_dir: &Path,
    max_bytes: u32,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let (client, key) = connect(store, data_dir, SyncError::NotEnrolled).await?;
    let device_id = store.device_id();
    loop {
        let cursor = store.read(cursor).await?;
        let request = PullRequest { protocol: PROTOCOL_VERSION, device_id, cursor, max_bytes };
        let page = client.pull(&key, &request).await?;
        // A cursor that does not move while there is "more" would loop forever.
        if page.next_cursor < cursor || (page.more && page.next_cursor == cursor) {
            return Err(HubError::PullCursor { cursor, next_cursor: page.next_cursor }.into());
        }
        let received = u64::try_from(page.changes.len()).unwrap_or(u64::MAX);
        let next = page.next_cursor;
        let new = store.write(move |w| apply_page(w, page.changes, next)).await.map_err(|source| match source {
            // A page that does not apply now never will: the hub must fix it.
            StoreError::Sqlite(_) | StoreError::Cancelled => SyncError::Store(source),
            source => SyncError::Hub(HubError::PageRefused { cursor, source }),
        })?;
        report.pulled += received;
        report.pulled_new += new;
        report.pull_pages += 1;
        if !page.more {
            return Ok(());
        }
    }
}

/// The last `next_cursor` applied (0 before the first pull).
fn cursor(c: &rusqlite::Connection) -> Result<u64, StoreError> {
    Ok(get_meta(c, meta_keys::PULL_CURSOR)?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Applies one page, patient by patient (each patient's changes in page
/// order), and stores the cursor, in the caller's one transaction: the page
/// is applied whole with its cursor, or not at all.
fn apply_page(w: &mut crate::store::WriteTx<'_>, changes: Vec<HubChange>, next_cursor: u64) -> Result<u64, StoreError> {
    let mut order: Vec<PatientId> = Vec::new();
    let mut by_patient: HashMap<PatientId, Vec<Vec<u8>>> = HashMap::new();
    for change in changes {
        by_patient
            .entry(change.patient_id)
            .or_insert_with(|| {
                order.push(change.patient_id);
                Vec::new()
            })
            .push(change.change);
    }
    let mut new = 0;
    for id in order {
        new += w.apply_remote(id, by_patient.get(&id).map_or(&[][..], Vec::as_slice))?;
    }
    set_meta(w.conn(), meta_keys::PULL_CURSOR, &next_cursor.to_string())?;
    Ok(new)
}
