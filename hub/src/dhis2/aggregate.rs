//! The counts a site reports for a period, and the `dataValueSet` carrying
//! them.
//!
//! Counting rules (issue 4):
//! - an encounter counts at the site that recorded it (`encounters.site_id`,
//!   the site of the recording device), in the period holding its clinical
//!   `date`, whenever it reached the hub: a consultation synced after its
//!   month closed is reported in its own month (re-export that month). A
//!   patient seen at two clinics counts at each;
//! - a new patient counts at the site that registered it (`patients.site_id`)
//!   in the period holding the UTC date of `patients.created_at`;
//! - age is in whole years at the encounter date (at that registration date
//!   for new patients) from `patients.birth_date`, an estimated birth date
//!   counting as given: born 2019-03-15, a child is 4 on 2024-03-14 and 5 on
//!   2024-03-15 (PostgreSQL's `age()`). A birth date after the encounter, a
//!   data entry slip, counts as age 0.
//!
//! One query reads a period for every site (or one): encounters and new
//! patients grouped by site, kind, sex and age band. The bands are cut at
//! every age bound the mapping uses ([`Mapping::age_bounds`]): two ages of
//! the same band pass exactly the same filters, so grouping by band is as
//! exact as grouping by year and returns far fewer rows. The indicators are
//! then evaluated over the groups in Rust ([`evaluate`], pure). One site's
//! query (what an export job runs) reads its own rows through the indexes
//! `encounters (site_id, date)` and `patients (site_id, created_at)`
//! (migration 0007); all sites' query reads the month in one pass. Every
//! indicator yields a value, zeros included, so that a re-export overwrites
//! a value that went down to 0.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use santerurale_shared::SiteId;
use serde::Serialize;
use time::{Date, Duration};

use super::mapping::{Count, Mapping};
use super::payload::{DataValue, DataValueSet, IdScheme};
use super::period::Period;
use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("no site {0}")]
    SiteNotFound(SiteId),
    /// What must be set before this payload can be built, each in words.
    #[error("{}", .0.join("; "))]
    NotReady(Vec<String>),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for AggregateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl From<deadpool_postgres::PoolError> for AggregateError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(DbError::Pool(e))
    }
}

/// A site as an export needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSite {
    pub id: SiteId,
    pub code: String,
    pub name: String,
    /// The DHIS2 organisation unit uid (`sites.dhis2_org_unit`).
    pub org_unit: Option<String>,
    /// The DHIS2 organisation unit code (`sites.dhis2_org_unit_code`).
    pub org_unit_code: Option<String>,
}

/// All sites, ordered by code, or the one named (`SiteNotFound` if none).
pub async fn export_sites(pool: &Pool, site: Option<SiteId>) -> Result<Vec<ExportSite>, AggregateError> {
    let client = pool.get().await?;
    let columns = "SELECT id, code, name, dhis2_org_unit, dhis2_org_unit_code FROM sites";
    let rows = match site {
        Some(id) => client.query(&format!("{columns} WHERE id = $1"), &[id.as_uuid()]).await?,
        None => client.query(&format!("{columns} ORDER BY code"), &[]).await?,
    };
    if let Some(id) = site
        && rows.is_empty()
    {
        return Err(AggregateError::SiteNotFound(id));
    }
    rows.iter()
        .map(|row| {
            Ok(ExportSite {
                id: SiteId::from_uuid(row.try_get("id")?),
                code: row.try_get("code")?,
                name: row.try_get("name")?,
                org_unit: row.try_get("dhis2_org_unit")?,
                org_unit_code: row.try_get("dhis2_org_unit_code")?,
            })
        })
        .collect()
}

/// The value of one indicator for one site and period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndicatorValue {
    /// The indicator's name in the mapping.
    pub indicator: String,
    pub data_element_code: String,
    pub category_option_combo_code: String,
    pub value: u64,
}

/// Encounters (or new patients) of one site sharing kind, sex and age band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub count_of: Count,
    /// The encounter kind; `None` for new patients.
    pub kind: Option<String>,
    pub sex: String,
    /// The age in whole years, or the lowest age of the band (see the
    /// module docs): filters give the same answer for every age of a band.
    pub age_years: u32,
    pub count: u64,
}

/// Evaluates every indicator of `mapping` over one site's groups, in the
/// mapping's order.
#[must_use]
pub fn evaluate(mapping: &Mapping, groups: &[Group]) -> Vec<IndicatorValue> {
    mapping
        .indicators
        .iter()
        .map(|ind| IndicatorValue {
            indicator: ind.name.clone(),
            data_element_code: ind.data_element.code.clone(),
            category_option_combo_code: ind.category_option_combo.code.clone(),
            value: groups
                .iter()
                .filter(|g| g.count_of == ind.count && ind.filter.matches(g.kind.as_deref(), &g.sex, g.age_years))
                .map(|g| g.count)
                .sum(),
        })
        .collect()
}

/// The values of `site` for `period` (`SiteNotFound` if there is no such site).
pub async fn site_values(
    pool: &Pool,
    mapping: &Mapping,
    site: SiteId,
    period: Period,
) -> Result<Vec<IndicatorValue>, AggregateError> {
    let mut client = pool.get().await?;
    let tx = client.build_transaction().read_only(true).start().await?;
    if tx.query_opt("SELECT 1 FROM sites WHERE id = $1", &[site.as_uuid()]).await?.is_none() {
        return Err(AggregateError::SiteNotFound(site));
    }
    let mut groups = read_groups(&tx, mapping, period, Some(site)).await?;
    tx.commit().await?;
    Ok(evaluate(mapping, &groups.remove(&site).unwrap_or_default()))
}

/// The values of every site for `period`, sites ordered by code: one
/// grouped query for all of them, read in one snapshot with the site list.
pub async fn all_site_values(
    pool: &Pool,
    mapping: &Mapping,
    period: Period,
) -> Result<Vec<(SiteId, Vec<IndicatorValue>)>, AggregateError> {
    let mut client = pool.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sites = tx.query("SELECT id FROM sites ORDER BY code", &[]).await?;
    let mut groups = read_groups(&tx, mapping, period, None).await?;
    tx.commit().await?;
    sites
        .iter()
        .map(|row| {
            let id = SiteId::from_uuid(row.try_get("id")?);
            Ok((id, evaluate(mapping, &groups.remove(&id).unwrap_or_default())))
        })
        .collect()
}

/// The grouped counts of `period` for every site (or one), by site, before
/// any indicator is evaluated: the database's share of [`all_site_values`]
/// (the benchmark times it apart from [`evaluate`]).
pub async fn groups(
    pool: &Pool,
    mapping: &Mapping,
    period: Period,
    site: Option<SiteId>,
) -> Result<HashMap<SiteId, Vec<Group>>, AggregateError> {
    let mut client = pool.get().await?;
    let tx = client.build_transaction().read_only(true).start().await?;
    let groups = read_groups(&tx, mapping, period, site).await?;
    tx.commit().await?;
    Ok(groups)
}

/// The grouped counts of `period`, by site: encounters by their clinical
/// date and recording site, new patients by their registration date and
/// site. Dates are cast to `timestamp` for `age()`, which would otherwise
/// take them as midnights in the session's time zone. Ages are cut into the mapping's bands in SQL (`width_bucket` over
/// the ascending bounds, 0 first, returns the band whose lower bound is
/// `bounds[band]`, 1-based).
async fn read_groups(
    client: &deadpool_postgres::Transaction<'_>,
    mapping: &Mapping,
    period: Period,
    site: Option<SiteId>,
) -> Result<HashMap<SiteId, Vec<Group>>, AggregateError> {
    // Ascending and distinct, as width_bucket needs; no age reaches i32::MAX.
    let bounds: Vec<i32> = mapping.age_bounds().into_iter().map(|b| i32::try_from(b).unwrap_or(i32::MAX)).collect();
    let (first, last) = (period.start(), period.end());
    let from = first.midnight().assume_utc();
    let until = (last + Duration::days(1)).midnight().assume_utc();
    let (encounter_site, patient_site) = match site {
        Some(_) => ("AND e.site_id = $6", "AND p.site_id = $6"),
        None => ("", ""),
    };
    let sql = format!(
        "WITH enc AS (
             SELECT e.site_id, e.kind, p.sex,
                    greatest(0, date_part('year', age(e.date::timestamp, p.birth_date::timestamp)))::int AS age
             FROM encounters e JOIN patients p ON p.id = e.patient_id
             WHERE e.date BETWEEN $1 AND $2 {encounter_site}
         ), new AS (
             SELECT p.site_id, p.sex,
                    greatest(0, date_part('year', age((p.created_at AT TIME ZONE 'UTC')::date::timestamp,
                                                      p.birth_date::timestamp)))::int AS age
             FROM patients p
             WHERE p.created_at >= $3 AND p.created_at < $4 {patient_site}
         )
         SELECT site_id, kind, sex, ($5::int[])[width_bucket(age, $5::int[])] AS band, count(*) AS n
         FROM enc GROUP BY site_id, kind, sex, band
         UNION ALL
         SELECT site_id, NULL, sex, ($5::int[])[width_bucket(age, $5::int[])] AS band, count(*) AS n
         FROM new GROUP BY site_id, sex, band"
    );
    if site.is_none() {
        // The join of a month's encounters to their patients (3 million rows
        // for 1,000 sites) hashes without spilling to disk with this much.
        client.batch_execute("SET LOCAL work_mem = '64MB'").await?;
    }
    let site_uuid = site.map(|s| *s.as_uuid());
    let rows = match &site_uuid {
        Some(id) => client.query(&sql, &[&first, &last, &from, &until, &bounds, id]).await?,
        None => client.query(&sql, &[&first, &last, &from, &until, &bounds]).await?,
    };
    let mut groups: HashMap<SiteId, Vec<Group>> = HashMap::new();
    for row in &rows {
        let site_id = SiteId::from_uuid(row.try_get("site_id")?);
        let kind: Option<String> = row.try_get("kind")?;
        let band: i32 = row.try_get("band")?;
        let count: i64 = row.try_get("n")?;
        groups.entry(site_id).or_default().push(Group {
            count_of: if kind.is_some() { Count::Encounters } else { Count::NewPatients },
            kind,
            sex: row.try_get("sex")?,
            age_years: u32::try_from(band).map_err(|_| DbError::Invalid(format!("age band {band}")))?,
            count: u64::try_from(count).map_err(|_| DbError::Invalid(format!("count {count}")))?,
        });
    }
    Ok(groups)
}

/// The `dataValueSet` of `site` for `period`: one value per indicator of
/// the mapping (`values` from [`site_values`], matched by data element and
/// category option combo codes), objects named per `mapping.id_scheme`
/// (uids, or codes with the site's org unit code), `completeDate` =
/// `complete_date`. `NotReady` lists everything missing: the site's org
/// unit, unresolved uids, a value not computed, a period of the wrong type.
pub fn build_payload(
    mapping: &Mapping,
    site: &ExportSite,
    period: Period,
    values: &[IndicatorValue],
    complete_date: Date,
) -> Result<DataValueSet, AggregateError> {
    let mut missing: Vec<String> = Vec::new();
    let mut need = |what: String| {
        if !missing.contains(&what) {
            missing.push(what);
        }
    };
    let scheme = mapping.id_scheme;
    if period.period_type() != mapping.data_set.period_type {
        need(format!(
            "period {period} is {:?} but data set {} is {:?}",
            period.period_type(),
            mapping.data_set.code,
            mapping.data_set.period_type
        ));
    }
    let name = |code: &str, uid: Option<&str>, what: &str, need: &mut dyn FnMut(String)| -> String {
        match scheme {
            IdScheme::Code => code.to_owned(),
            IdScheme::Uid => uid.map(str::to_owned).unwrap_or_else(|| {
                need(format!("{what} {code} has no uid: resolve the mapping"));
                String::new()
            }),
        }
    };
    let data_set = name(&mapping.data_set.code, mapping.data_set.uid.as_deref(), "data set", &mut need);
    let org_unit = match scheme {
        IdScheme::Uid => site.org_unit.clone(),
        IdScheme::Code => site.org_unit_code.clone(),
    }
    .unwrap_or_else(|| {
        need(match scheme {
            IdScheme::Uid => format!(
                "site {} ({}) has no DHIS2 org unit uid: set its org unit code and resolve the mapping",
                site.code, site.name
            ),
            IdScheme::Code => format!("site {} ({}) has no DHIS2 org unit code: set it", site.code, site.name),
        });
        String::new()
    });
    let mut data_values = Vec::with_capacity(mapping.indicators.len());
    for ind in &mapping.indicators {
        let (de, coc) = (&ind.data_element, &ind.category_option_combo);
        let data_element = name(&de.code, de.uid.as_deref(), "data element", &mut need);
        let category_option_combo = name(&coc.code, coc.uid.as_deref(), "category option combo", &mut need);
        let value = values
            .iter()
            .find(|v| v.data_element_code == de.code && v.category_option_combo_code == coc.code)
            .map(|v| v.value);
        let Some(value) = value else {
            need(format!("no value computed for indicator {:?}", ind.name));
            continue;
        };
        data_values.push(DataValue { data_element, category_option_combo, value: value.to_string(), comment: None });
    }
    if !missing.is_empty() {
        return Err(AggregateError::NotReady(missing));
    }
    Ok(DataValueSet {
        data_set,
        complete_date: Some(format!(
            "{:04}-{:02}-{:02}",
            complete_date.year(),
            u8::from(complete_date.month()),
            complete_date.day()
        )),
        period: period.to_string(),
        org_unit,
        data_values,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    fn group(count_of: Count, kind: Option<&str>, sex: &str, age_years: u32, count: u64) -> Group {
        Group { count_of, kind: kind.map(str::to_owned), sex: sex.to_owned(), age_years, count }
    }

    fn value_of(values: &[IndicatorValue], de: &str, coc: &str) -> u64 {
        values
            .iter()
            .find(|v| v.data_element_code == de && v.category_option_combo_code == coc)
            .unwrap_or_else(|| panic!("no value for {de}/{coc}"))
            .value
    }

    #[test]
    fn evaluates_the_default_indicators_over_groups() {
        let m = Mapping::default_mapping();
        let e = Count::Encounters;
        let groups = [
            group(e, Some("consultation"), "female", 0, 2),
            group(e, Some("follow_up"), "male", 1, 3),
            group(e, Some("consultation"), "male", 5, 4),
            group(e, Some("consultation"), "female", 15, 5),
            group(e, Some("antenatal"), "female", 15, 6),
            group(e, Some("vaccination"), "female", 0, 7),
            group(Count::NewPatients, None, "female", 15, 8),
            group(Count::NewPatients, None, "male", 0, 1),
        ];
        let v = evaluate(&m, &groups);
        assert_eq!(v.len(), m.indicators.len());
        assert_eq!(v[0].indicator, "Consultations");
        assert_eq!(value_of(&v, "CONS_TOTAL", "default"), 14);
        assert_eq!(value_of(&v, "CONS_U5", "default"), 5);
        assert_eq!(value_of(&v, "CONS_SEX", "SEX_F"), 7);
        assert_eq!(value_of(&v, "CONS_SEX", "SEX_M"), 7);
        assert_eq!(value_of(&v, "CONS_AGE", "AGE_LT1"), 2);
        assert_eq!(value_of(&v, "CONS_AGE", "AGE_1_4"), 3);
        assert_eq!(value_of(&v, "CONS_AGE", "AGE_5_14"), 4);
        assert_eq!(value_of(&v, "CONS_AGE", "AGE_15P"), 5);
        assert_eq!(value_of(&v, "ANC_VISITS", "default"), 6);
        assert_eq!(value_of(&v, "VACC_VISITS", "default"), 7);
        assert_eq!(value_of(&v, "NEW_PATIENTS", "default"), 9);
        // No groups: every indicator still has a value, 0.
        assert!(evaluate(&m, &[]).iter().all(|v| v.value == 0));
    }

    fn site(org_unit: Option<&str>, org_unit_code: Option<&str>) -> ExportSite {
        ExportSite {
            id: SiteId::new(),
            code: "KATI".into(),
            name: "CSCom Kati".into(),
            org_unit: org_unit.map(str::to_owned),
            org_unit_code: org_unit_code.map(str::to_owned),
        }
    }

    fn resolved() -> Mapping {
        let mut m = Mapping::default_mapping();
        m.data_set.uid = Some("srMonthly01".into());
        for ind in &mut m.indicators {
            ind.data_element.uid = Some(format!("de{:0>9}", ind.data_element.code.replace('_', "")));
            ind.category_option_combo.uid = Some(format!("co{:0>9}", ind.category_option_combo.code.replace('_', "")));
        }
        m
    }

    #[test]
    fn payload_by_uid_has_every_value_and_the_header() {
        let m = resolved();
        let period = Period::parse("202404").expect("period");
        let mut values = evaluate(&m, &[group(Count::Encounters, Some("antenatal"), "female", 20, 3)]);
        values.reverse(); // matched by codes, not by position
        let set =
            build_payload(&m, &site(Some("ouKati00001"), None), period, &values, date!(2024 - 05 - 02)).expect("ready");
        assert_eq!(set.data_set, "srMonthly01");
        assert_eq!(set.period, "202404");
        assert_eq!(set.org_unit, "ouKati00001");
        assert_eq!(set.complete_date.as_deref(), Some("2024-05-02"));
        assert_eq!(set.data_values.len(), 11);
        let anc = set.data_values.iter().find(|v| v.data_element == "deANCVISITS").expect("ANC value");
        assert_eq!((anc.category_option_combo.as_str(), anc.value.as_str()), ("co00default", "3"));
        assert_eq!(set.data_values.iter().filter(|v| v.value == "0").count(), 10, "zeros are sent");
        let json = serde_json::to_value(&set).expect("json");
        assert_eq!(json["completeDate"], "2024-05-02");
        assert_eq!(json["dataValues"][0]["categoryOptionCombo"], "co00default");
    }

    #[test]
    fn payload_by_code_uses_codes_and_the_org_unit_code() {
        let mut m = Mapping::default_mapping();
        m.id_scheme = IdScheme::Code;
        let period = Period::parse("202402").expect("period");
        let values = evaluate(&m, &[]);
        let set = build_payload(&m, &site(None, Some("OU_KATI")), period, &values, date!(2024 - 03 - 09))
            .expect("codes need no uid");
        assert_eq!((set.data_set.as_str(), set.org_unit.as_str()), ("SR_MONTHLY", "OU_KATI"));
        assert_eq!(set.data_values[2].data_element, "CONS_SEX");
        assert_eq!(set.data_values[2].category_option_combo, "SEX_F");
        assert_eq!(set.complete_date.as_deref(), Some("2024-03-09"));
    }

    #[test]
    fn not_ready_lists_what_is_missing() {
        let m = Mapping::default_mapping();
        let period = Period::parse("202404").expect("period");
        let values = evaluate(&m, &[]);
        let err = build_payload(&m, &site(None, Some("OU_KATI")), period, &values, date!(2024 - 05 - 02))
            .expect_err("nothing resolved");
        let AggregateError::NotReady(missing) = err else { panic!("expected NotReady, got {err:?}") };
        assert_eq!(missing[0], "data set SR_MONTHLY has no uid: resolve the mapping");
        assert!(missing[1].starts_with("site KATI (CSCom Kati) has no DHIS2 org unit uid"), "{missing:?}");
        assert!(missing.contains(&"data element CONS_SEX has no uid: resolve the mapping".to_owned()));
        assert!(missing.contains(&"category option combo SEX_F has no uid: resolve the mapping".to_owned()));
        assert_eq!(missing.len(), 2 + 7 + 7, "each object once: {missing:?}");

        let mut code = m.clone();
        code.id_scheme = IdScheme::Code;
        let err = build_payload(&code, &site(Some("ouKati00001"), None), period, &values[1..], date!(2024 - 05 - 02))
            .expect_err("no org unit code, a value missing");
        let AggregateError::NotReady(missing) = err else { panic!("expected NotReady, got {err:?}") };
        assert_eq!(
            missing,
            [
                "site KATI (CSCom Kati) has no DHIS2 org unit code: set it",
                "no value computed for indicator \"Consultations\"",
            ]
        );

        let weekly = Period::parse("2024W15").expect("week");
        let err = build_payload(&resolved(), &site(Some("ouKati00001"), None), weekly, &values, date!(2024 - 05 - 02))
            .expect_err("wrong period type");
        assert_eq!(err.to_string(), "period 2024W15 is Weekly but data set SR_MONTHLY is Monthly");
    }
}
