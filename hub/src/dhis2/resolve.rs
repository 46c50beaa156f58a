//! Resolving codes to uids: deployments know their DHIS2 objects by code,
//! but the payload names them by uid, and uids differ from one DHIS2
//! instance to the next. [`resolve`] asks the configured DHIS2's metadata API
//! for the mapping's data set, data elements and category option combos and
//! for the sites' organisation units, by code, and fills in their uids.
//!
//! - A category option combo is looked up among the COCs of its data
//!   element's category combo only (a COC of another combo would be refused
//!   with E7634): by code, else by the mapping's `name` for it (COCs often
//!   have no code; the default one is named `default`).
//! - Each site with a `dhis2_org_unit_code` gets `sites.dhis2_org_unit` set
//!   to the uid found, all sites in one transaction.
//! - Every code not found is reported ([`MissingCode`]), as is a data set
//!   whose period type is not the mapping's. A uid already in the mapping
//!   for a code not found is kept (it may have been typed in by hand).
//!
//! The mapping is returned, not saved: the caller saves it
//! (`mapping::save`).

use std::collections::BTreeMap;

use santerurale_shared::SiteId;
use serde::Serialize;

use super::client::{Dhis2Client, Dhis2Error, MetaCoc};
use super::mapping::Mapping;
use crate::db::DbError;

/// What [`resolve`] found and did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolveReport {
    /// The mapping with every uid found filled in.
    pub mapping: Mapping,
    /// Sites whose org unit uid was set: (site, org unit code, uid).
    pub sites_resolved: Vec<(SiteId, String, String)>,
    /// Codes not found in DHIS2 (and a data set of the wrong period type).
    pub missing: Vec<MissingCode>,
}

/// A code DHIS2 does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingCode {
    /// `data_set`, `data_element`, `category_option_combo` or `org_unit`.
    pub kind: &'static str,
    pub code: String,
    /// Where it is used: indicator names, a site code, or what is wrong.
    pub context: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot look the codes up in DHIS2")]
    Dhis2(#[from] Dhis2Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Fills `mapping`'s uids and the sites' org unit uids (see the module docs).
pub async fn resolve(
    client: &Dhis2Client,
    mapping: &Mapping,
    pool: &deadpool_postgres::Pool,
) -> Result<ResolveReport, ResolveError> {
    let mut mapping = mapping.clone();
    let mut missing = Missing::default();

    let data_set_code = mapping.data_set.code.clone();
    let data_sets = client.data_sets_by_code(std::slice::from_ref(&data_set_code)).await?;
    match data_sets.iter().find(|d| d.code.as_deref() == Some(data_set_code.as_str())) {
        Some(found) => {
            mapping.data_set.uid = Some(found.id.clone());
            let expected = format!("{:?}", mapping.data_set.period_type);
            if found.period_type != expected {
                missing.add(
                    "data_set",
                    &data_set_code,
                    &format!(
                        "its period type is {} in DHIS2 but {expected} in the mapping: fix period_type",
                        found.period_type
                    ),
                );
            }
        }
        None => missing.add("data_set", &data_set_code, "the data set"),
    }

    let mut element_codes: Vec<String> = mapping.indicators.iter().map(|i| i.data_element.code.clone()).collect();
    element_codes.sort();
    element_codes.dedup();
    let elements = client.data_elements_by_code(&element_codes).await?;
    for indicator in &mut mapping.indicators {
        let code = &indicator.data_element.code;
        let Some(element) = elements.iter().find(|e| e.code.as_deref() == Some(code.as_str())) else {
            missing.add("data_element", code, &indicator.name);
            continue;
        };
        indicator.data_element.uid = Some(element.id.clone());
        let coc = &mut indicator.category_option_combo;
        match find_coc(&element.category_option_combos, &coc.code, coc.name.as_deref()) {
            Some(found) => coc.uid = Some(found.id.clone()),
            None => missing.add(
                "category_option_combo",
                &coc.code,
                &format!("{} (not in the category combo of data element {code})", indicator.name),
            ),
        }
    }

    let sites = sites_with_org_unit_codes(pool).await?;
    let mut ou_codes: Vec<String> = sites.iter().map(|(_, _, code)| code.clone()).collect();
    ou_codes.sort();
    ou_codes.dedup();
    let org_units = if ou_codes.is_empty() { Vec::new() } else { client.org_units_by_code(&ou_codes).await? };
    let mut sites_resolved = Vec::new();
    for (site, site_code, ou_code) in sites {
        match org_units.iter().find(|o| o.code.as_deref() == Some(ou_code.as_str())) {
            Some(found) => sites_resolved.push((site, ou_code, found.id.clone())),
            None => missing.add("org_unit", &ou_code, &format!("site {site_code}")),
        }
    }
    set_org_units(pool, &sites_resolved).await?;

    Ok(ResolveReport { mapping, sites_resolved, missing: missing.into_list() })
}

/// The COC with `code`, else the one named `name`.
fn find_coc<'a>(cocs: &'a [MetaCoc], code: &str, name: Option<&str>) -> Option<&'a MetaCoc> {
    cocs.iter()
        .find(|c| c.code.as_deref() == Some(code))
        .or_else(|| name.and_then(|name| cocs.iter().find(|c| c.name == name)))
}

/// Missing codes, one entry per (kind, code) with every place it is used.
#[derive(Debug, Default)]
struct Missing(BTreeMap<(&'static str, String), Vec<String>>);

impl Missing {
    fn add(&mut self, kind: &'static str, code: &str, context: &str) {
        let contexts = self.0.entry((kind, code.to_owned())).or_default();
        if !contexts.iter().any(|c| c == context) {
            contexts.push(context.to_owned());
        }
    }

    fn into_list(self) -> Vec<MissingCode> {
        const ORDER: [&str; 4] = ["data_set", "data_element", "category_option_combo", "org_unit"];
        let mut list: Vec<MissingCode> = self
            .0
            .into_iter()
            .map(|((kind, code), contexts)| MissingCode { kind, code, context: contexts.join(", ") })
            .collect();
        list.sort_by_key(|m| ORDER.iter().position(|k| *k == m.kind));
        list
    }
}

/// (site, site code, org unit code) of each site that has an org unit code.
async fn sites_with_org_unit_codes(pool: &deadpool_postgres::Pool) -> Result<Vec<(SiteId, String, String)>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, code, btrim(dhis2_org_unit_code) AS ou_code FROM sites
             WHERE btrim(coalesce(dhis2_org_unit_code, '')) <> '' ORDER BY code",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((SiteId::from_uuid(row.try_get("id")?), row.try_get("code")?, row.try_get("ou_code")?)))
        .collect()
}

async fn set_org_units(pool: &deadpool_postgres::Pool, resolved: &[(SiteId, String, String)]) -> Result<(), DbError> {
    if resolved.is_empty() {
        return Ok(());
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let update = tx.prepare("UPDATE sites SET dhis2_org_unit = $2 WHERE id = $1").await?;
    for (site, _, uid) in resolved {
        tx.execute(&update, &[site.as_uuid(), uid]).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coc(id: &str, code: Option<&str>, name: &str) -> MetaCoc {
        MetaCoc { id: id.into(), code: code.map(str::to_owned), name: name.into() }
    }

    #[test]
    fn a_coc_is_found_by_code_else_by_name() {
        let cocs = [coc("cocSexM0001", Some("SEX_M"), "Masculin"), coc("cocSexF0001", None, "Féminin")];
        assert_eq!(find_coc(&cocs, "SEX_M", None).map(|c| c.id.as_str()), Some("cocSexM0001"));
        assert_eq!(find_coc(&cocs, "SEX_F", Some("Féminin")).map(|c| c.id.as_str()), Some("cocSexF0001"));
        assert_eq!(find_coc(&cocs, "SEX_F", None), None);
        assert_eq!(find_coc(&cocs, "SEX_X", Some("Autre")), None);
    }

    #[test]
    fn missing_codes_are_listed_once_with_every_use() {
        let mut m = Missing::default();
        m.add("org_unit", "OU_X", "site KATI");
        m.add("data_element", "CONS_SEX", "Consultations, hommes");
        m.add("data_element", "CONS_SEX", "Consultations, femmes");
        m.add("data_element", "CONS_SEX", "Consultations, femmes");
        let list = m.into_list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].kind, "data_element");
        assert_eq!(list[0].context, "Consultations, hommes, Consultations, femmes");
        assert_eq!(list[1].code, "OU_X");
    }
}
