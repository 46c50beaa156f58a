//! The push loop and its outbox queries (see the module docs of
//! [`super`] for the steps).

use std::path::Path;

use rusqlite::Connection;
use santerurale_shared::sync::push::Learnt;
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    Batch, Next, NotAscending, OutboxChange, PROTOCOL_VERSION, Pending, PushConfig, PushOutcome, PushPlanner,
    PushRequest, SigningKey, StopReason,
};

use super::client::{HubClient, HubError, TransportError};
use super::{SyncError, SyncReport, connect, meta_keys};
use crate::store::{Store, StoreError, get_meta, now_rfc3339, set_meta};

/// The next batch to send, its changes, and the pending count.
struct Planned {
    batch: Batch,
    changes: Vec<OutboxChange>,
    depth: u64,
}

/// Consecutive sends cut off mid-request that one run answers by halving
/// the batch at once, before it gives up until the next run.
const CUT_RETRIES: u32 = 4;

/// One full push; counts what went through in `report`, even when the run
/// then fails. What the planner learnt is saved for the next run either way.
pub(super) async fn run(
    store: &Store,
    data_dir: &Path,
    config: PushConfig,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let (client, key) = connect(store, data_dir, SyncError::NotEnrolled).await?;
    let learnt = store.read(|c| get_meta(c, meta_keys::PUSH_LIMITS)).await?.as_deref().and_then(Learnt::from_text);
    let mut planner = learnt.map_or_else(|| PushPlanner::new(config), |l| PushPlanner::resume(config, l));
    let result = push_all(store, &client, &key, &mut planner, report).await;
    let learnt = planner.learnt().to_text();
    if let Err(e) = store.write(move |w| set_meta(w.conn(), meta_keys::PUSH_LIMITS, &learnt)).await {
        tracing::warn!(error = %crate::error_chain(&e), "cannot save the push batch limits");
    }
    result
}

async fn push_all(
    store: &Store,
    client: &HubClient,
    key: &SigningKey,
    planner: &mut PushPlanner,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let device_id = store.device_id();
    // Set while narrowing down a batch the hub refused for one of its
    // changes: the most changes the next batch may hold.
    let mut narrow: Option<usize> = None;
    let mut cuts = 0;
    loop {
        let snapshot = planner.clone();
        let Some(mut planned) = store.read(move |c| next_batch(c, &snapshot)).await?? else {
            return Ok(());
        };
        if let Some(n) = narrow {
            planned.truncate(n);
        }
        let batch = planned.batch;
        let request =
            PushRequest { protocol: PROTOCOL_VERSION, device_id, batch: planned.changes, outbox_depth: planned.depth };
        let sent = client.push(key, &request).await;
        if let Some(message) = sent.as_ref().err().and_then(refused_change) {
            // Keep what comes before the refused change flowing, and find
            // which one it is: halve until a batch of one is refused.
            if batch.count <= 1 {
                return Err(SyncError::ChangeRefused { seq: batch.first_seq, message: message.to_owned() });
            }
            narrow = Some(batch.count / 2);
            tracing::info!(count = batch.count, "hub refused one change of a batch; narrowing it down");
            continue;
        }
        let outcome = match &sent {
            Ok(response) => PushOutcome::Acked { through: response.acked_through },
            Err(e) => e.outcome(),
        };
        match (planner.record(&batch, outcome, rand::random::<f64>()), sent) {
            (Next::MarkSentThrough { seq }, Ok(response)) => {
                cuts = 0;
                report.pushed += store.write(move |w| mark_sent(w.conn(), seq)).await?;
                report.batches += 1;
                report.applied += u64::from(response.applied);
                report.duplicates += u64::from(response.duplicates);
            }
            (Next::Retry, Err(_)) if outcome == PushOutcome::TooLarge => {
                report.splits += 1;
                tracing::info!(count = batch.count, bytes = batch.bytes, "hub refused a batch as too large; splitting");
            }
            // A hub that refuses a body over its limit answers 413 at once
            // and closes the connection while the edge is still sending, so
            // the edge often sees the connection cut rather than the 413.
            // The planner has halved the batch: try the smaller one now.
            (Next::Retry, Err(e)) if batch.count > 1 && cut_mid_request(&e) && cuts < CUT_RETRIES => {
                cuts += 1;
                report.splits += 1;
                tracing::info!(
                    count = batch.count,
                    bytes = batch.bytes,
                    error = %crate::error_chain(&e),
                    "connection cut while sending a batch; trying a smaller one"
                );
            }
            (Next::Stop(StopReason::ChangeTooLarge { seq }), _) => {
                return Err(SyncError::ChangeTooLarge { seq });
            }
            (_, Err(e)) => return Err(SyncError::Hub(e)),
            (_, Ok(response)) => {
                return Err(SyncError::AckBelowBatch {
                    acked_through: response.acked_through,
                    first_seq: batch.first_seq,
                });
            }
        }
    }
}

impl Planned {
    /// Keeps the first `n` changes (at least one).
    fn truncate(&mut self, n: usize) {
        let n = n.max(1);
        if self.changes.len() <= n {
            return;
        }
        self.changes.truncate(n);
        self.batch = Batch {
            first_seq: self.batch.first_seq,
            last_seq: self.changes.last().map_or(self.batch.first_seq, |c| c.seq),
            count: n,
            bytes: self.changes.iter().map(|c| u64::try_from(c.change.len()).unwrap_or(u64::MAX)).sum(),
        };
    }
}

/// The hub's words when it refused one change of the batch for good
/// ([`codes::CHANGE_REFUSED`]).
fn refused_change(e: &HubError) -> Option<&str> {
    match e {
        HubError::Refused { code, message, .. } if code == codes::CHANGE_REFUSED => Some(message),
        _ => None,
    }
}

/// The hub was reached but the exchange broke off before an answer: what an
/// oversized body looks like from the sending side (as opposed to a hub that
/// cannot be reached at all, or a slow link that timed out).
fn cut_mid_request(e: &HubError) -> bool {
    match e {
        HubError::Network(TransportError::Request(e)) => !e.is_connect(),
        HubError::Network(TransportError::Body(_)) => true,
        _ => false,
    }
}

/// Plans the next batch from the oldest pending entries and reads it.
fn next_batch(c: &Connection, planner: &PushPlanner) -> Result<Result<Option<Planned>, NotAscending>, StoreError> {
    // One read transaction: the sizes, the count and the bytes agree.
    let c = c.unchecked_transaction()?;
    let limit = i64::from(planner.policy().max_changes);
    let mut stmt =
        c.prepare_cached("SELECT seq, length(bytes) FROM outbox WHERE acked_at IS NULL ORDER BY seq LIMIT ?1")?;
    let pending = stmt
        .query_map([limit], |r| Ok(Pending { seq: unsigned(r.get(0)?), size: unsigned(r.get(1)?) }))?
        .collect::<Result<Vec<_>, _>>()?;
    let batch = match planner.plan(&pending) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Ok(None)),
        Err(e) => return Ok(Err(e)),
    };
    let depth = unsigned(c.query_row("SELECT count(*) FROM outbox WHERE acked_at IS NULL", [], |r| r.get(0))?);
    let mut stmt = c.prepare_cached(
        "SELECT seq, patient_id, bytes FROM outbox WHERE acked_at IS NULL AND seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let changes = stmt
        .query_map([signed(batch.first_seq), signed(batch.last_seq)], |r| {
            Ok((unsigned(r.get(0)?), r.get::<_, String>(1)?, r.get(2)?))
        })?
        .map(|row| {
            let (seq, patient, change) = row?;
            let patient_id = patient
                .parse()
                .map_err(|_| StoreError::CorruptDocument(patient.clone(), "outbox patient id".into()))?;
            Ok(OutboxChange { seq, patient_id, change })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Ok(Some(Planned { batch, changes, depth })))
}

/// Marks every pending entry up to `seq` as sent; returns how many.
fn mark_sent(c: &Connection, seq: u64) -> Result<u64, StoreError> {
    let n = c.execute(
        "UPDATE outbox SET acked_at = ?1 WHERE acked_at IS NULL AND seq <= ?2",
        (now_rfc3339(), signed(seq)),
    )?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

/// SQLite integers are signed; seqs and counts are never negative.
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
