//! The worker side of [`super`]: claiming a due job, one attempt, and
//! recording its outcome under the claim token (steps 2 to 6 of the
//! protocol in the parent module's docs).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use santerurale_shared::SiteId;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{ExportError, JobStatus};
use crate::config::{Config, Dhis2Config};
use crate::db::DbError;
use crate::dhis2::aggregate::{self, AggregateError};
use crate::dhis2::client::{Dhis2Client, ImportAnswer, ImportOptions};
use crate::dhis2::mapping::{self, MappingError};
use crate::dhis2::payload::{DataValueSet, IdScheme, ImportStatus};
use crate::dhis2::period::Period;
use crate::metrics::Metrics;

/// What a worker needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub pool: Pool,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Notified when a job is created by this hub.
    pub wake: Arc<Notify>,
    /// Built once: it reads the trusted certificates.
    client: Arc<Result<Dhis2Client, String>>,
}

impl WorkerContext {
    #[must_use]
    pub fn new(pool: Pool, config: Arc<Config>, metrics: Arc<Metrics>, wake: Arc<Notify>) -> Self {
        let client = Dhis2Client::new(&config.dhis2).map_err(|e| crate::error_chain(&e));
        Self { pool, config, metrics, wake, client: Arc::new(client) }
    }

    /// The context of the hub serving `state`.
    #[must_use]
    pub fn from_state(state: &crate::AppState) -> Self {
        Self::new(state.db.clone(), state.config.clone(), state.metrics.clone(), state.export_wake.clone())
    }
}

/// A claimed job: what the attempt needs, and the claim token.
#[derive(Debug)]
struct Claim {
    id: Uuid,
    attempts: i32,
    lease_until: OffsetDateTime,
    period: String,
    site_id: SiteId,
    site_code: String,
    dry_run: bool,
    payload: Option<String>,
    /// How `payload` names objects (`uid` or `code`), stored with it.
    id_scheme: Option<String>,
    created_at: OffsetDateTime,
}

/// How an attempt ended.
#[derive(Debug)]
enum Outcome {
    /// DHIS2 answered with an import summary.
    Answered { answer: ImportAnswer, values: u64 },
    /// Failed before or while sending.
    Error { message: String, retryable: bool, http_status: Option<u16>, body: Option<Value> },
    /// A newer job of the same period and site exists.
    Superseded { by: Uuid },
    /// Another worker took the job over: write nothing.
    LeaseLost,
}

impl Outcome {
    fn failed(message: impl Into<String>) -> Self {
        Self::Error { message: message.into(), retryable: false, http_status: None, body: None }
    }
}

/// Claims one due job and runs it to its next state (see the module docs).
/// `Ok(None)` when no job is due. Errors are the database's; a job's own
/// failures are recorded on the job.
pub async fn run_one(ctx: &WorkerContext) -> Result<Option<Uuid>, ExportError> {
    let Some(claim) = claim(ctx).await? else { return Ok(None) };
    tracing::info!(job = %claim.id, site = %claim.site_code, period = %claim.period, attempt = claim.attempts,
        dry_run = claim.dry_run, "DHIS2 export attempt");
    let outcome = attempt(ctx, &claim).await?;
    finish(ctx, &claim, outcome).await?;
    Ok(Some(claim.id))
}

async fn claim(ctx: &WorkerContext) -> Result<Option<Claim>, ExportError> {
    let client = ctx.pool.get().await?;
    #[allow(clippy::cast_precision_loss)]
    let lease = ctx.config.dhis2.lease_seconds as f64;
    let row = client
        .query_opt(
            "WITH claimed AS (
                UPDATE dhis2_export_jobs SET status = 'running', attempts = attempts + 1,
                    lease_until = now() + make_interval(secs => $1), started_at = coalesce(started_at, now())
                WHERE id = (SELECT id FROM dhis2_export_jobs j
                            WHERE ((status = 'pending' AND next_attempt_at <= now())
                                   OR (status = 'running' AND lease_until < now()))
                              AND (dry_run OR NOT EXISTS (
                                   SELECT 1 FROM dhis2_export_jobs other
                                   WHERE other.period = j.period AND other.site_id = j.site_id
                                     AND other.id <> j.id AND NOT other.dry_run
                                     AND other.status = 'running' AND other.lease_until >= now()))
                            ORDER BY next_attempt_at, created_at
                            FOR UPDATE SKIP LOCKED LIMIT 1)
                RETURNING id, attempts, lease_until, period, site_id, dry_run, payload::text AS payload, id_scheme,
                          created_at)
             SELECT c.*, s.code AS site_code FROM claimed c JOIN sites s ON s.id = c.site_id",
            &[&lease],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Claim {
        id: r.try_get("id")?,
        attempts: r.try_get("attempts")?,
        lease_until: r.try_get("lease_until")?,
        period: r.try_get("period")?,
        site_id: SiteId::from_uuid(r.try_get("site_id")?),
        site_code: r.try_get("site_code")?,
        dry_run: r.try_get("dry_run")?,
        payload: r.try_get("payload")?,
        id_scheme: r.try_get("id_scheme")?,
        created_at: r.try_get("created_at")?,
    }))
}

/// The claim-token condition of every write of an attempt ($1 id, $2
/// lease_until, $3 attempts).
const HELD: &str = "id = $1 AND status = 'running' AND lease_until = $2 AND attempts = $3";

async fn attempt(ctx: &WorkerContext, claim: &Claim) -> Result<Outcome, ExportError> {
    let db = ctx.pool.get().await?;
    if !claim.dry_run {
        let newer = db
            .query_opt(
                "SELECT id FROM dhis2_export_jobs WHERE period = $1 AND site_id = $2 AND NOT dry_run
                   AND created_at > $3 AND id <> $4 ORDER BY created_at DESC LIMIT 1",
                &[&claim.period, claim.site_id.as_uuid(), &claim.created_at, &claim.id],
            )
            .await?;
        if let Some(newer) = newer {
            return Ok(Outcome::Superseded { by: newer.try_get(0)? });
        }
    }
    let max_attempts = i32::try_from(ctx.config.dhis2.max_attempts).unwrap_or(i32::MAX);
    if claim.attempts > max_attempts {
        return Ok(Outcome::failed(format!(
            "gave up after {max_attempts} attempts: the hub stopped during the earlier ones"
        )));
    }
    let client = match ctx.client.as_ref() {
        Ok(client) => client,
        Err(message) => return Ok(Outcome::failed(message.clone())),
    };
    let parse = |stored: &str| serde_json::from_str::<DataValueSet>(stored);
    // A stored payload is sent as it was written, in its own id scheme,
    // whatever the mapping says now.
    if let (Some(stored), Some(scheme)) = (&claim.payload, claim.id_scheme.as_deref()) {
        let set = match parse(stored) {
            Ok(set) => set,
            Err(e) => return Ok(Outcome::failed(format!("the stored payload cannot be read: {e}"))),
        };
        drop(db);
        let id_scheme = if scheme == "code" { IdScheme::Code } else { IdScheme::Uid };
        return Ok(send(client, claim, &set, id_scheme).await);
    }
    let mapping = match mapping::load(&ctx.pool, &ctx.config.dhis2).await {
        Ok(loaded) => loaded.mapping,
        // The database is down: the job is taken up again after its lease.
        Err(MappingError::Db(e)) => return Err(e.into()),
        Err(e) => return Ok(Outcome::failed(format!("cannot load the DHIS2 mapping: {}", crate::error_chain(&e)))),
    };
    let set: DataValueSet = match &claim.payload {
        Some(stored) => match parse(stored) {
            Ok(set) => set,
            Err(e) => return Ok(Outcome::failed(format!("the stored payload cannot be read: {e}"))),
        },
        None => {
            let set = match build(ctx, &mapping, claim).await? {
                Ok(set) => set,
                Err(message) => return Ok(Outcome::failed(message)),
            };
            let text = serde_json::to_string(&set).map_err(|e| DbError::Invalid(format!("payload: {e}")))?;
            let count = i32::try_from(set.data_values.len()).unwrap_or(i32::MAX);
            let scheme = match mapping.id_scheme {
                IdScheme::Uid => "uid",
                IdScheme::Code => "code",
            };
            let stored = db
                .execute(
                    &format!(
                        "UPDATE dhis2_export_jobs SET payload = $4::text::jsonb, values_count = $5, id_scheme = $6 \
                         WHERE {HELD}"
                    ),
                    &[&claim.id, &claim.lease_until, &claim.attempts, &text, &count, &scheme],
                )
                .await?;
            if stored == 0 {
                return Ok(Outcome::LeaseLost);
            }
            set
        }
    };
    drop(db);
    Ok(send(client, claim, &set, mapping.id_scheme).await)
}

/// Posts `set` to DHIS2; the answer, or the error classified for retrying.
async fn send(client: &Dhis2Client, claim: &Claim, set: &DataValueSet, id_scheme: IdScheme) -> Outcome {
    let options = ImportOptions { dry_run: claim.dry_run, id_scheme };
    match client.post_data_value_set(set, options).await {
        Ok(answer) => Outcome::Answered { answer, values: set.data_values.len() as u64 },
        Err(e) => Outcome::Error {
            message: crate::error_chain(&e),
            retryable: e.is_retryable(),
            http_status: e.http_status(),
            body: e.response_body().cloned(),
        },
    }
}

/// Counts the values and builds the payload; the inner error says why it
/// cannot be built (the job fails), the outer one is the database's.
async fn build(
    ctx: &WorkerContext,
    mapping: &mapping::Mapping,
    claim: &Claim,
) -> Result<Result<DataValueSet, String>, ExportError> {
    let period = match Period::parse_for(&claim.period, mapping.data_set.period_type) {
        Ok(period) => period,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let sites = match aggregate::export_sites(&ctx.pool, Some(claim.site_id)).await {
        Ok(sites) => sites,
        Err(AggregateError::Db(e)) => return Err(e.into()),
        Err(e) => return Ok(Err(crate::error_chain(&e))),
    };
    let Some(site) = sites.into_iter().next() else {
        return Ok(Err(format!("site {} no longer exists", claim.site_code)));
    };
    let values = match aggregate::site_values(&ctx.pool, mapping, claim.site_id, period).await {
        Ok(values) => values,
        Err(AggregateError::Db(e)) => return Err(e.into()),
        Err(e) => return Ok(Err(crate::error_chain(&e))),
    };
    Ok(aggregate::build_payload(mapping, &site, period, &values, OffsetDateTime::now_utc().date())
        .map_err(|e| format!("not ready to export: {}", crate::error_chain(&e))))
}

/// The wait before attempt `attempts + 1`.
#[must_use]
pub fn backoff(config: &Dhis2Config, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(32);
    let seconds = config.retry_base_seconds.saturating_mul(1u64 << exponent).min(config.retry_max_seconds);
    Duration::from_secs(seconds)
}

/// The final (or retry) state of an attempt, written only if the claim still holds.
async fn finish(ctx: &WorkerContext, claim: &Claim, outcome: Outcome) -> Result<(), ExportError> {
    let mut db = ctx.pool.get().await?;
    let tx = db.transaction().await?;
    let held: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&claim.id, &claim.lease_until, &claim.attempts];
    let max_attempts = i32::try_from(ctx.config.dhis2.max_attempts).unwrap_or(i32::MAX);
    let mut values_sent = 0u64;
    let (status, updated) = match &outcome {
        Outcome::LeaseLost => (None, 0),
        Outcome::Superseded { by } => {
            let n = tx
                .execute(
                    &format!(
                        "UPDATE dhis2_export_jobs SET status = 'superseded', superseded_by = $4, lease_until = NULL,
                         finished_at = now() WHERE {HELD}"
                    ),
                    &[held[0], held[1], held[2], by],
                )
                .await?;
            (Some(JobStatus::Superseded), n)
        }
        Outcome::Answered { answer, values } => {
            let summary = &answer.summary;
            let status = match summary.status {
                ImportStatus::Error => JobStatus::Failed,
                ImportStatus::Warning => JobStatus::SucceededWithConflicts,
                ImportStatus::Success if !summary.conflicts.is_empty() => JobStatus::SucceededWithConflicts,
                ImportStatus::Success => JobStatus::Succeeded,
            };
            let error = (status == JobStatus::Failed).then(|| {
                let first = summary
                    .conflicts
                    .first()
                    .map(|c| format!(" ({}: {})", c.error_code.as_deref().unwrap_or("no code"), c.message));
                format!(
                    "DHIS2 refused the import: {}{}",
                    summary.description.as_deref().unwrap_or("status ERROR"),
                    first.unwrap_or_default()
                )
            });
            let n = tx
                .execute(
                    &format!(
                        "UPDATE dhis2_export_jobs SET status = $4, response_status = $5, response = $6::text::jsonb,
                         import_count = $7::text::jsonb, conflicts = $8::text::jsonb, error = $9,
                         lease_until = NULL, finished_at = now() WHERE {HELD}"
                    ),
                    &[
                        held[0],
                        held[1],
                        held[2],
                        &status.as_str(),
                        &i32::from(answer.http_status),
                        &json_text(&answer.body),
                        &json_text(&summary.import_count),
                        &json_text(&summary.conflicts),
                        &error,
                    ],
                )
                .await?;
            if n == 1 && !claim.dry_run {
                values_sent = *values;
                if status != JobStatus::Failed {
                    tx.execute(
                        "UPDATE dhis2_export_jobs SET status = 'superseded', superseded_by = $1
                         WHERE period = $2 AND site_id = $3 AND NOT dry_run AND id <> $1 AND created_at < $4
                           AND status IN ('succeeded', 'succeeded_with_conflicts', 'failed')",
                        &[&claim.id, &claim.period, claim.site_id.as_uuid(), &claim.created_at],
                    )
                    .await?;
                }
            }
            (Some(status), n)
        }
        Outcome::Error { message, retryable, http_status, body } => {
            let response_status = http_status.map(i32::from);
            let body = body.as_ref().map(|b| b.to_string());
            if *retryable && claim.attempts < max_attempts {
                let wait = backoff(&ctx.config.dhis2, claim.attempts);
                #[allow(clippy::cast_precision_loss)]
                let wait = wait.as_secs() as f64;
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE dhis2_export_jobs SET status = 'pending', lease_until = NULL,
                             next_attempt_at = now() + make_interval(secs => $4), error = $5,
                             response_status = coalesce($6, response_status), response = coalesce($7::text::jsonb, response)
                             WHERE {HELD}"
                        ),
                        &[held[0], held[1], held[2], &wait, message, &response_status, &body],
                    )
                    .await?;
                if n == 1 {
                    tracing::warn!(job = %claim.id, site = %claim.site_code, period = %claim.period,
                        attempt = claim.attempts, retry_in_seconds = wait, error = %message, "DHIS2 export will be retried");
                }
                (None, n)
            } else {
                let message = if *retryable {
                    format!("{message} (gave up after {} attempts)", claim.attempts)
                } else {
                    message.clone()
                };
                let n = tx
                    .execute(
                        &format!(
                            "UPDATE dhis2_export_jobs SET status = 'failed', lease_until = NULL, finished_at = now(),
                             error = $4, response_status = coalesce($5, response_status),
                             response = coalesce($6::text::jsonb, response) WHERE {HELD}"
                        ),
                        &[held[0], held[1], held[2], &message, &response_status, &body],
                    )
                    .await?;
                (Some(JobStatus::Failed), n)
            }
        }
    };
    tx.commit().await?;
    if updated == 0 {
        tracing::warn!(job = %claim.id, site = %claim.site_code, period = %claim.period, attempt = claim.attempts,
            "DHIS2 export: the lease ran out and another worker took the job over; this attempt's outcome is dropped");
        return Ok(());
    }
    let Some(status) = status else { return Ok(()) };
    ctx.metrics.dhis2_export_jobs.with_label_values(&[status.as_str()]).inc();
    if !claim.dry_run {
        ctx.metrics.dhis2_values_sent.inc_by(values_sent);
        if matches!(status, JobStatus::Succeeded | JobStatus::SucceededWithConflicts) {
            ctx.metrics.dhis2_last_success.set(OffsetDateTime::now_utc().unix_timestamp());
        }
    }
    match &outcome {
        Outcome::Answered { answer, .. } => {
            let c = answer.summary.import_count;
            tracing::info!(job = %claim.id, site = %claim.site_code, period = %claim.period, status = status.as_str(),
                http_status = answer.http_status, imported = c.imported, updated = c.updated, ignored = c.ignored,
                deleted = c.deleted, conflicts = answer.summary.conflicts.len(), dry_run = claim.dry_run,
                "DHIS2 export finished");
        }
        Outcome::Error { message, .. } => {
            tracing::warn!(job = %claim.id, site = %claim.site_code, period = %claim.period, attempts = claim.attempts,
                error = %message, "DHIS2 export failed");
        }
        Outcome::Superseded { by } => {
            tracing::info!(job = %claim.id, site = %claim.site_code, period = %claim.period, superseded_by = %by,
                "DHIS2 export superseded by a newer job before it was sent");
        }
        Outcome::LeaseLost => {}
    }
    Ok(())
}

/// JSON text for a `$n::text::jsonb` parameter.
fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Runs due jobs until none is left, then waits for a wake-up, the poll
/// interval or `shutdown`. A job in progress is finished before stopping.
pub async fn worker(ctx: WorkerContext, shutdown: impl std::future::Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    let poll = Duration::from_secs(ctx.config.dhis2.poll_seconds.max(1));
    tracing::info!(poll_seconds = poll.as_secs(), "DHIS2 export worker started");
    loop {
        loop {
            match run_one(&ctx).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "DHIS2 export worker: database error");
                    break;
                }
            }
            let stop = tokio::select! {
                biased;
                () = &mut shutdown => true,
                () = std::future::ready(()) => false,
            };
            if stop {
                tracing::info!("DHIS2 export worker stopped");
                return;
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = ctx.wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
    tracing::info!("DHIS2 export worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = Dhis2Config { retry_base_seconds: 60, retry_max_seconds: 3600, ..Dhis2Config::default() };
        let waits: Vec<u64> = (1..=8).map(|a| backoff(&config, a).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(&config, 1000).as_secs(), 3600);
    }
}
