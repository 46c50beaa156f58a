//! The push loop and its outbox queries (see the module docs of
//! [`super`] for the steps).

use std::path::Path;

use rusqlite::Connection;
use santerurale_shared::sync::{
    Batch, Next, NotAscending, OutboxChange, PROTOCOL_VERSION, Pending, PushConfig, PushOutcome, PushPlanner,
    PushRequest, StopReason,
};

use super::client::HubClient;
use super::{SyncError, SyncReport, enrolled_hub, keys};
use crate::store::{Store, StoreError, now_rfc3339};

/// The next batch to send, its changes, and the pending count.
struct Planned {
    batch: Batch,
    changes: Vec<OutboxChange>,
    depth: u64,
}

pub(super) async fn run(store: &Store, data_dir: &Path, config: PushConfig) -> Result<SyncReport, SyncError> {
    let Some((url, insecure)) = store.read(enrolled_hub).await? else {
        return Err(SyncError::NotEnrolled);
    };
    let client = HubClient::new(&url, insecure)?;
    let key = keys::load(data_dir)?;
    let device_id = store.device_id();
    let mut planner = PushPlanner::new(config);
    let mut report = SyncReport::default();
    loop {
        let snapshot = planner.clone();
        let Some(planned) = store.read(move |c| next_batch(c, &snapshot)).await?? else {
            break;
        };
        let request =
            PushRequest { protocol: PROTOCOL_VERSION, device_id, batch: planned.changes, outbox_depth: planned.depth };
        let sent = client.push(&key, &request).await;
        let outcome = match &sent {
            Ok(response) => PushOutcome::Acked { through: response.acked_through },
            Err(e) => e.outcome(),
        };
        match (planner.record(&planned.batch, outcome, rand::random::<f64>()), sent) {
            (Next::MarkSentThrough { seq }, Ok(response)) => {
                report.pushed += store.write(move |w| mark_sent(w.conn(), seq)).await?;
                report.batches += 1;
                report.applied += u64::from(response.applied);
                report.duplicates += u64::from(response.duplicates);
            }
            (Next::Retry, Err(_)) if outcome == PushOutcome::TooLarge => {
                report.splits += 1;
                tracing::info!(
                    count = planned.batch.count,
                    bytes = planned.batch.bytes,
                    "hub refused a batch as too large; splitting"
                );
            }
            (Next::Stop(StopReason::ChangeTooLarge { seq }), _) => {
                return Err(SyncError::ChangeTooLarge { seq });
            }
            (_, Err(e)) => return Err(SyncError::Hub(e)),
            (_, Ok(response)) => {
                return Err(SyncError::AckBelowBatch {
                    acked_through: response.acked_through,
                    first_seq: planned.batch.first_seq,
                });
            }
        }
    }
    Ok(report)
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
