//! Where each period's reporting stands: for the periods exported most
//! recently, how many sites' latest real export (not a dry run) succeeded,
//! succeeded with conflicts, failed or is still in progress, and how many
//! sites have none. A national reporting officer reads it as "which
//! clinics' November reached DHIS2": the sites with no export are named,
//! and the exports list, filtered by period and status, names the others.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use serde::Serialize;
use time::OffsetDateTime;

use super::ExportError;

/// Periods [`period_summaries`] returns at most.
pub const SUMMARY_LIMIT: i64 = 24;

/// One period's reporting, by the latest real export of each site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeriodSummary {
    pub period: String,
    /// Sites the hub has now.
    pub sites: i64,
    pub succeeded: i64,
    pub succeeded_with_conflicts: i64,
    pub failed: i64,
    /// Pending (maybe waiting for a retry) or running.
    pub in_progress: i64,
    /// Sites with no real export of the period.
    pub not_exported: i64,
    /// Their codes, in order.
    pub not_exported_sites: Vec<String>,
    /// When the period's newest export was created.
    #[serde(with = "time::serde::rfc3339")]
    pub last_export_at: OffsetDateTime,
}

/// The periods with a real export, the most recently exported first, at
/// most `limit` (and [`SUMMARY_LIMIT`]).
pub async fn period_summaries(pool: &Pool, limit: i64) -> Result<Vec<PeriodSummary>, ExportError> {
    let mut client = pool.get().await?;
    // One snapshot for the counts and the sites named.
    let client = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let rows = client
        .query(
            "WITH latest AS (
                 SELECT DISTINCT ON (period, site_id) period, site_id, status
                 FROM dhis2_export_jobs WHERE NOT dry_run
                 ORDER BY period, site_id, created_at DESC, id DESC
             ), newest AS (
                 SELECT period, max(created_at) AS last_export_at FROM dhis2_export_jobs
                 WHERE NOT dry_run GROUP BY period
             )
             SELECT l.period, n.last_export_at, (SELECT count(*) FROM sites) AS sites,
                    count(*) FILTER (WHERE l.status = 'succeeded') AS succeeded,
                    count(*) FILTER (WHERE l.status = 'succeeded_with_conflicts') AS succeeded_with_conflicts,
                    count(*) FILTER (WHERE l.status = 'failed') AS failed,
                    count(*) FILTER (WHERE l.status IN ('pending', 'running')) AS in_progress
             FROM latest l JOIN newest n USING (period)
             GROUP BY l.period, n.last_export_at
             ORDER BY n.last_export_at DESC, l.period DESC
             LIMIT $1",
            &[&limit.clamp(0, SUMMARY_LIMIT)],
        )
        .await?;
    let periods: Vec<String> = rows.iter().map(|r| r.try_get("period")).collect::<Result<_, _>>()?;
    let missing = client
        .query(
            "SELECT p.period, s.code FROM unnest($1::text[]) AS p (period) CROSS JOIN sites s
             WHERE NOT EXISTS (SELECT 1 FROM dhis2_export_jobs j
                               WHERE j.period = p.period AND j.site_id = s.id AND NOT j.dry_run)
             ORDER BY p.period, s.code",
            &[&periods],
        )
        .await?;
    client.commit().await?;
    let mut not_exported: HashMap<String, Vec<String>> = HashMap::new();
    for row in &missing {
        not_exported.entry(row.try_get(0)?).or_default().push(row.try_get(1)?);
    }
    let summaries = rows
        .iter()
        .map(|r| {
            let period: String = r.try_get("period")?;
            let not_exported_sites = not_exported.remove(&period).unwrap_or_default();
            Ok(PeriodSummary {
                period,
                sites: r.try_get("sites")?,
                succeeded: r.try_get("succeeded")?,
                succeeded_with_conflicts: r.try_get("succeeded_with_conflicts")?,
                failed: r.try_get("failed")?,
                in_progress: r.try_get("in_progress")?,
                not_exported: i64::try_from(not_exported_sites.len()).unwrap_or(i64::MAX),
                not_exported_sites,
                last_export_at: r.try_get("last_export_at")?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(summaries)
}
