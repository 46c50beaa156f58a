//! DHIS2 late data: re-exports the recent periods whose values changed after
//! they were sent.
//!
//! Encounters count in the period of their clinical date, whenever they
//! reach the hub. A clinic that was offline for a week syncs its last
//! consultations of the month after the monthly export ran; a registrar
//! corrects a birth date, moving a child out of the under-5 count. The
//! values DHIS2 holds are then behind the hub's. This check finds them and
//! sends the corrected values, so the national figures catch up without an
//! admin having to notice.
//!
//! # What counts as out of date
//! For each of the last `dhis2.late_data_periods` finished periods (of the
//! mapping's period type), and each site, the *latest* non-dry-run export
//! job of that period and site is looked at. Only one that ended
//! `succeeded` or `succeeded_with_conflicts` is compared: a pending or
//! running job will count the values itself, a failed one waits for the
//! admin (its error says why, and a re-run counts afresh). The values are
//! counted now with the mapping in force, written in the id scheme of the
//! stored payload, and compared with the payload sent: org unit, data set
//! and every (data element, category option combo) value. Any difference
//! is out of date. The comparison is with what was *sent*, so a late-data
//! export that DHIS2 refused in part (a period locked since, E7640) is not
//! sent again day after day: its payload already holds the new values.
//!
//! A site with no real export of the period at all is out of date only when
//! the schedule reported that period (`dhis2_schedule_runs`: it then made a
//! job for every site that existed) and the site now has a value above
//! zero: a clinic enrolled after the schedule ran, whose box recorded that
//! month's consultations before it could reach the hub. Where the schedule
//! is off, periods are the admin's to export, site by site.
//!
//! # Creating the jobs
//! [`run_once`] creates one `pending` job per out-of-date site and period
//! (trigger `late_data`, `rerun_of` = the export whose values DHIS2 holds,
//! if any)
//! and the worker runs it like any other: once it succeeds it supersedes the
//! earlier export. With several hubs the creation runs under a transaction
//! advisory lock and re-reads the latest job of each site and period first:
//! a hub that finds another's job already there creates nothing.
//!
//! Reading costs one grouped query per period that has exports to compare
//! (the same as an all-sites export, see the `dhis2_export` benchmark).

use std::collections::HashMap;

use deadpool_postgres::Pool;
use santerurale_shared::SiteId;
use serde::Serialize;
use time::Date;
use uuid::Uuid;

use super::dhis2_export::{self, ExportError, ExportJob, JobStatus, NewExport, Trigger};
use crate::config::Config;
use crate::db::DbError;
use crate::dhis2::aggregate::{self, AggregateError};
use crate::dhis2::mapping::{self, Mapping};
use crate::dhis2::payload::{DataValue, DataValueSet, IdScheme};
use crate::dhis2::period::Period;

/// Key of the advisory lock held while late-data jobs are created
/// ("dhis2lat" in ASCII).
const LATE_DATA_LOCK: i64 = 0x6468_6973_326c_6174;

/// One site and period whose values changed since they were sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutOfDate {
    pub site_id: SiteId,
    pub site_code: String,
    pub site_name: String,
    pub period: String,
    /// The export whose values DHIS2 holds; `None` for a site never
    /// exported for a period the schedule reported (it joined the hub
    /// after the schedule ran).
    pub exported_job: Option<Uuid>,
    /// What differs, in the stored payload's names (uids or codes).
    pub changes: Vec<ValueChange>,
}

/// One value that differs from what was sent; `None` where there was (or
/// is now) no such value, e.g. after the mapping gained an indicator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueChange {
    pub data_element: String,
    pub category_option_combo: String,
    pub sent: Option<String>,
    pub now: Option<String>,
}

impl ValueChange {
    /// `value`'s data element and combo, with what was sent and what is now.
    fn of(value: &DataValue, sent: Option<&str>, now: Option<&str>) -> Self {
        Self {
            data_element: value.data_element.clone(),
            category_option_combo: value.category_option_combo.clone(),
            sent: sent.map(str::to_owned),
            now: now.map(str::to_owned),
        }
    }
}

/// The periods the check looks at on `today`: the `count` finished periods
/// before today's, newest first.
#[must_use]
pub fn periods(mapping: &Mapping, today: Date, count: u32) -> Vec<Period> {
    let mut period = Period::containing(today, mapping.data_set.period_type);
    (0..count)
        .map(|_| {
            period = period.previous();
            period
        })
        .collect()
}

/// What one check looked at and found.
#[derive(Debug, Clone)]
pub struct Check {
    /// The mapping in force the values were counted with.
    pub mapping: Mapping,
    /// The periods compared, newest first.
    pub periods: Vec<Period>,
    /// Every site and period whose values differ from the last export sent,
    /// periods newest first, sites by code.
    pub out_of_date: Vec<OutOfDate>,
}

/// Runs the check on `today` (see the module docs).
pub async fn check(pool: &Pool, config: &Config, today: Date) -> Result<Check, ExportError> {
    let mapping = mapping::load(pool, &config.dhis2).await?.mapping;
    let periods = periods(&mapping, today, config.dhis2.late_data_periods);
    let mut out_of_date = Vec::new();
    if !periods.is_empty() {
        let sites = aggregate::export_sites(pool, None).await.map_err(db_error)?;
        for &period in &periods {
            out_of_date.extend(find_in_period(pool, &mapping, &sites, period, today).await?);
        }
    }
    Ok(Check { mapping, periods, out_of_date })
}

/// The out-of-date sites and periods of [`check`].
pub async fn find(pool: &Pool, config: &Config, today: Date) -> Result<Vec<OutOfDate>, ExportError> {
    Ok(check(pool, config, today).await?.out_of_date)
}

/// The latest real export of one site and period.
enum Latest {
    /// Answered by DHIS2, with the payload sent.
    Sent { job: Uuid, id_scheme: IdScheme, payload: DataValueSet },
    /// Pending, running, failed: not compared.
    Unanswered,
}

async fn find_in_period(
    pool: &Pool,
    mapping: &Mapping,
    sites: &[aggregate::ExportSite],
    period: Period,
    today: Date,
) -> Result<Vec<OutOfDate>, ExportError> {
    let (latest, scheduled) = latest_exports(pool, period).await?;
    if latest.is_empty() && !scheduled {
        return Ok(Vec::new());
    }
    let values: HashMap<SiteId, Vec<aggregate::IndicatorValue>> =
        aggregate::all_site_values(pool, mapping, period).await.map_err(db_error)?.into_iter().collect();
    let mut found = Vec::new();
    for site in sites {
        let Some(values) = values.get(&site.id) else { continue };
        let (exported_job, sent, id_scheme) = match latest.get(&site.id) {
            Some(Latest::Sent { job, id_scheme, payload }) => (Some(*job), Some(payload), *id_scheme),
            Some(Latest::Unanswered) => continue,
            // Never exported: sent only once the schedule reported the
            // period for every site, and only when there is something to say.
            None if scheduled && values.iter().any(|v| v.value > 0) => (None, None, mapping.id_scheme),
            None => continue,
        };
        let scheme_mapping = Mapping { id_scheme, ..mapping.clone() };
        let now = match aggregate::build_payload(&scheme_mapping, site, period, values, today) {
            Ok(now) => now,
            Err(e) => {
                // The same problem fails an export; the export's error shows it.
                tracing::warn!(site = %site.code, %period, error = %crate::error_chain(&e),
                    "DHIS2 late data: cannot count this site's values with the mapping in force");
                continue;
            }
        };
        let changes = match sent {
            Some(sent) => differences(sent, &now),
            // Nothing sent: every value is new.
            None => now.data_values.iter().map(|v| ValueChange::of(v, None, Some(&v.value))).collect(),
        };
        if !changes.is_empty() {
            found.push(OutOfDate {
                site_id: site.id,
                site_code: site.code.clone(),
                site_name: site.name.clone(),
                period: period.to_string(),
                exported_job,
                changes,
            });
        }
    }
    Ok(found)
}

/// The latest non-dry-run job of each site for `period`, and whether the
/// schedule exported the period (`dhis2_schedule_runs`).
async fn latest_exports(pool: &Pool, period: Period) -> Result<(HashMap<SiteId, Latest>, bool), ExportError> {
    let db = pool.get().await?;
    let period = period.to_string();
    let rows = db
        .query(
            "SELECT DISTINCT ON (site_id) id, site_id, status, id_scheme, payload::text AS payload
             FROM dhis2_export_jobs WHERE period = $1 AND NOT dry_run
             ORDER BY site_id, created_at DESC, id DESC",
            &[&period],
        )
        .await?;
    let scheduled = db.query_opt("SELECT 1 FROM dhis2_schedule_runs WHERE period = $1", &[&period]).await?.is_some();
    let answered = [JobStatus::Succeeded, JobStatus::SucceededWithConflicts].map(JobStatus::as_str);
    let mut latest = HashMap::new();
    for row in rows {
        let site = SiteId::from_uuid(row.try_get("site_id")?);
        let status: String = row.try_get("status")?;
        let payload: Option<String> = row.try_get("payload")?;
        let (true, Some(payload)) = (answered.contains(&status.as_str()), payload) else {
            latest.insert(site, Latest::Unanswered);
            continue;
        };
        let job: Uuid = row.try_get("id")?;
        let payload = serde_json::from_str(&payload)
            .map_err(|e| DbError::Invalid(format!("dhis2_export_jobs.payload of {job}: {e}")))?;
        let id_scheme = match row.try_get::<_, Option<String>>("id_scheme")?.as_deref() {
            Some("code") => IdScheme::Code,
            _ => IdScheme::Uid,
        };
        latest.insert(site, Latest::Sent { job, id_scheme, payload });
    }
    Ok((latest, scheduled))
}

fn db_error(e: AggregateError) -> ExportError {
    match e {
        AggregateError::Db(db) => ExportError::Db(db),
        // Neither query names a site, so none can be missing.
        other => ExportError::Db(DbError::Invalid(crate::error_chain(&other))),
    }
}

/// What differs between the payload sent and the one counted now, in the
/// order of the values counted now (the mapping's), then the values no
/// longer counted. A different org unit, data set or period changes every
/// value's destination: each value is then listed.
#[must_use]
pub fn differences(sent: &DataValueSet, now: &DataValueSet) -> Vec<ValueChange> {
    let key = |v: &DataValue| (v.data_element.clone(), v.category_option_combo.clone());
    let mut sent_values: HashMap<(String, String), &str> =
        sent.data_values.iter().map(|v| (key(v), &*v.value)).collect();
    let moved = sent.org_unit != now.org_unit || sent.data_set != now.data_set || sent.period != now.period;
    let mut changes = Vec::new();
    for v in &now.data_values {
        let was = sent_values.remove(&key(v));
        if moved || was != Some(&*v.value) {
            changes.push(ValueChange::of(v, was, Some(&v.value)));
        }
    }
    // What is no longer counted, in the order it was sent.
    for v in &sent.data_values {
        if let Some(was) = sent_values.remove(&key(v)) {
            changes.push(ValueChange::of(v, Some(was), None));
        }
    }
    changes
}

/// Finds the out-of-date exports and creates their jobs (see the module
/// docs); the caller wakes the worker. Returns the jobs created.
pub async fn run_once(pool: &Pool, config: &Config, today: Date) -> Result<Vec<ExportJob>, ExportError> {
    let found = find(pool, config, today).await?;
    if found.is_empty() {
        tracing::info!("DHIS2 late data: every recent export is up to date");
        return Ok(Vec::new());
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LATE_DATA_LOCK]).await?;
    let mut created = Vec::with_capacity(found.len());
    for out in &found {
        let latest: Option<Uuid> = tx
            .query_opt(
                "SELECT id FROM dhis2_export_jobs WHERE period = $1 AND site_id = $2 AND NOT dry_run
                 ORDER BY created_at DESC, id DESC LIMIT 1",
                &[&out.period, out.site_id.as_uuid()],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if latest != out.exported_job {
            // Another hub (or an admin) made a newer export meanwhile.
            continue;
        }
        let period = Period::parse(&out.period)?;
        let new = NewExport {
            period,
            site: Some(out.site_id),
            dry_run: false,
            trigger: Trigger::LateData,
            requested_by: None,
        };
        for job in dhis2_export::insert_jobs(&tx, new, out.exported_job).await? {
            created.push((job, out));
        }
    }
    tx.commit().await?;
    for (job, out) in &created {
        tracing::info!(job = %job.id, site = %job.site_code, period = %job.period, rerun_of = ?out.exported_job,
            changed_values = out.changes.len(), "DHIS2 late data: re-export created");
    }
    Ok(created.into_iter().map(|(job, _)| job).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(org_unit: &str, values: &[(&str, &str, &str)]) -> DataValueSet {
        DataValueSet {
            data_set: "ds".into(),
            complete_date: Some("2024-05-02".into()),
            period: "202404".into(),
            org_unit: org_unit.into(),
            data_values: values
                .iter()
                .map(|(de, coc, v)| DataValue {
                    data_element: (*de).into(),
                    category_option_combo: (*coc).into(),
                    value: (*v).into(),
                    comment: None,
                })
                .collect(),
        }
    }

    #[test]
    fn differences_name_each_changed_added_or_removed_value_in_the_mappings_order() {
        let sent = set("ou", &[("a", "x", "3"), ("a", "y", "1"), ("b", "x", "0")]);
        let mut now = set("ou", &[("a", "x", "3"), ("a", "y", "1"), ("b", "x", "0")]);
        now.complete_date = Some("2024-06-09".into());
        assert!(differences(&sent, &now).is_empty(), "the complete date is not a value");

        let now = set("ou", &[("a", "x", "4"), ("a", "y", "1"), ("c", "x", "2")]);
        let changes = differences(&sent, &now);
        let brief: Vec<_> = changes
            .iter()
            .map(|c| (c.data_element.as_str(), c.category_option_combo.as_str(), c.sent.clone(), c.now.clone()))
            .collect();
        assert_eq!(
            brief,
            [
                ("a", "x", Some("3".to_owned()), Some("4".to_owned())),
                ("c", "x", None, Some("2".to_owned())),
                ("b", "x", Some("0".to_owned()), None),
            ]
        );
    }

    #[test]
    fn another_org_unit_lists_every_value() {
        let sent = set("ou1", &[("a", "x", "3"), ("b", "x", "1")]);
        let now = set("ou2", &[("a", "x", "3"), ("b", "x", "1")]);
        assert_eq!(differences(&sent, &now).len(), 2);
    }

    #[test]
    fn periods_are_the_finished_ones_newest_first() {
        let mapping = Mapping::default_mapping();
        let got: Vec<String> =
            periods(&mapping, time::macros::date!(2024 - 03 - 05), 3).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["202402", "202401", "202312"]);
        assert!(periods(&mapping, time::macros::date!(2024 - 03 - 05), 0).is_empty());
    }
}
