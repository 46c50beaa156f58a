//! The DHIS2 mapping: which data set the hub reports to and, for each
//! indicator, its data element, its category option combo (disaggregation)
//! and how it is counted from encounters. Written in TOML or JSON; the
//! shipped default is `hub/dhis2/default-mapping.toml` (codes only: `hub
//! dhis2 resolve-mapping` fills the uids of the configured DHIS2), and
//! `fixtures/dhis2/mapping.example.toml` is a documented, resolved example.
//!
//! Where the mapping in force comes from ([`load`]), first match wins:
//! 1. the copy an admin saved through the UI or API (the single row of
//!    `dhis2_mapping`, jsonb; [`save`] validates before writing, [`reset`]
//!    deletes it);
//! 2. the file named by `HUB_DHIS2_MAPPING` (`dhis2.mapping_file`), read at
//!    each load so an edited file takes effect without a restart;
//! 3. the shipped default ([`Mapping::default_mapping`]).
//!
//! [`Mapping::validate`] lists every problem at once, each with its path
//! (`indicators[2].filter.sex: ...`), so an admin fixes a file in one pass.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::payload::IdScheme;
use super::period::PeriodType;
use crate::config::Dhis2Config;
use crate::db::DbError;

/// The encounter kinds the edges record.
pub const ENCOUNTER_KINDS: [&str; 4] = ["consultation", "antenatal", "vaccination", "follow_up"];
/// The sexes the edges record.
pub const SEXES: [&str; 2] = ["female", "male"];

/// The shipped default: codes only, resolved against an instance by `hub
/// dhis2 resolve-mapping`.
const DEFAULT_MAPPING: &str = include_str!("../../dhis2/default-mapping.toml");

/// A DHIS2 object named by its code (what deployments know) and, once
/// resolved against an instance, its uid there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Looked up when no object has `code` (category option combos often
    /// have no code in DHIS2; the default one is named `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSetRef {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub period_type: PeriodType,
}

/// The whole mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub data_set: DataSetRef,
    /// How the payload names objects; `uid` needs every uid resolved.
    #[serde(default)]
    pub id_scheme: IdScheme,
    pub indicators: Vec<Indicator>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Indicator {
    /// What people call it (shown in the admin UI).
    pub name: String,
    pub data_element: ObjectRef,
    pub category_option_combo: ObjectRef,
    pub count: Count,
    #[serde(default)]
    pub filter: Filter,
}

/// What an indicator counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// Encounters recorded at the site whose clinical date is in the period.
    Encounters,
    /// Patients first registered at the site in the period.
    NewPatients,
}

/// Which encounters (or patients) an indicator counts; every field set must
/// match. Ages are in whole years at the encounter date (at registration for
/// new patients), an estimated birth date counting as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Encounter kinds (`consultation`, `antenatal`, `vaccination`,
    /// `follow_up`); all kinds when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// `female` or `male`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<String>,
    /// Age at least this many years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_years: Option<u32>,
    /// Age below this many years (exclusive): under 5 is `max_age_years = 5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_years: Option<u32>,
}

impl Filter {
    /// Whether a group of encounters (or patients) of `kind` (`None` for
    /// patients), `sex` and age `age_years` passes this filter.
    #[must_use]
    pub fn matches(&self, kind: Option<&str>, sex: &str, age_years: u32) -> bool {
        (self.kinds.is_empty() || kind.is_some_and(|k| self.kinds.iter().any(|f| f == k)))
            && self.sex.as_deref().is_none_or(|s| s == sex)
            && self.min_age_years.is_none_or(|min| age_years >= min)
            && self.max_age_years.is_none_or(|max| age_years < max)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("not a valid TOML mapping")]
    Toml(#[source] toml::de::Error),
    #[error("not a valid JSON mapping")]
    Json(#[source] serde_json::Error),
    #[error("invalid mapping: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("cannot read the mapping file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the mapping file {} is not usable", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<MappingError>,
    },
    #[error("the mapping saved in the hub is not usable")]
    Stored(#[source] Box<MappingError>),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for MappingError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl From<deadpool_postgres::PoolError> for MappingError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(DbError::Pool(e))
    }
}

impl MappingError {
    /// The problems an admin can fix in the mapping itself (parse errors and
    /// validation problems), as opposed to a database failure; empty for the
    /// latter. What the API returns with a 422.
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Toml(e) => vec![format!("{self}: {}", e.to_string().trim_end())],
            Self::Json(e) => vec![format!("{self}: {e}")],
            Self::Invalid(problems) => problems.clone(),
            Self::File { source, .. } | Self::Stored(source) => source.problems(),
            Self::Read { .. } | Self::Db(_) => Vec::new(),
        }
    }
}

impl Mapping {
    /// The shipped default mapping (`hub/dhis2/default-mapping.toml`).
    #[must_use]
    pub fn default_mapping() -> Self {
        // The shipped file is checked by the tests below: it parses and validates.
        Self::parse(DEFAULT_MAPPING)
            .unwrap_or_else(|e| panic!("the shipped hub/dhis2/default-mapping.toml is broken: {e}"))
    }

    /// Parses a mapping written in TOML, or in JSON when the text starts
    /// with `{`. Does not validate: see [`Mapping::validate`].
    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let text = text.trim_start_matches('\u{feff}');
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(MappingError::Json)
        } else {
            toml::from_str(text).map_err(MappingError::Toml)
        }
    }

    /// Checks what the types cannot: known kinds and sexes, age bounds in
    /// order, at least one indicator, one indicator per (data element,
    /// category option combo), uids of DHIS2's format, names and codes not
    /// blank, the same code always resolved to the same uid. Lists every
    /// problem, each with its path.
    pub fn validate(&self) -> Result<(), MappingError> {
        let mut problems = Vec::new();
        check_code("data_set.code", &self.data_set.code, &mut problems);
        check_uid("data_set.uid", self.data_set.uid.as_deref(), &mut problems);
        if self.indicators.is_empty() {
            problems.push("indicators: at least one indicator is needed".to_owned());
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
        let mut element_uids: HashMap<&str, (&str, usize)> = HashMap::new();
        let mut combo_uids: HashMap<&str, (&str, usize)> = HashMap::new();
        for (i, ind) in self.indicators.iter().enumerate() {
            let at = format!("indicators[{i}]");
            let name = ind.name.trim();
            if name.is_empty() {
                problems.push(format!("{at}.name: must not be empty"));
            } else if let Some(first) = names.insert(name, i) {
                problems.push(format!("{at}.name: {name:?} is already the name of indicators[{first}]"));
                names.insert(name, first);
            }
            check_object(&format!("{at}.data_element"), &ind.data_element, &mut problems);
            check_object(&format!("{at}.category_option_combo"), &ind.category_option_combo, &mut problems);
            let pair = (ind.data_element.code.as_str(), ind.category_option_combo.code.as_str());
            if let Some(&first) = pairs.get(&pair) {
                problems.push(format!(
                    "{at}: indicators[{first}] already goes to data element {} with category option combo {}",
                    pair.0, pair.1
                ));
            } else {
                pairs.insert(pair, i);
            }
            same_uid(&format!("{at}.data_element"), &ind.data_element, i, &mut element_uids, &mut problems);
            same_uid(
                &format!("{at}.category_option_combo"),
                &ind.category_option_combo,
                i,
                &mut combo_uids,
                &mut problems,
            );
            check_filter(&at, ind, &mut problems);
        }
        if problems.is_empty() { Ok(()) } else { Err(MappingError::Invalid(problems)) }
    }

    /// The mapping in TOML (what an admin downloads and edits).
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# the mapping cannot be written as TOML: {e}\n"))
    }

    /// The objects whose uid is not set, each once (`data set SR_MONTHLY`,
    /// `data element CONS_U5`, `category option combo SEX_F`): what `hub
    /// dhis2 resolve-mapping` must fill before an export by uid. Org units
    /// are the sites' and are not listed here.
    #[must_use]
    pub fn missing_uids(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut seen = BTreeSet::new();
        let mut add = |what: &str, object_code: &str, uid: Option<&str>| {
            if uid.is_none() && seen.insert((what.to_owned(), object_code.to_owned())) {
                missing.push(format!("{what} {object_code}"));
            }
        };
        add("data set", &self.data_set.code, self.data_set.uid.as_deref());
        for ind in &self.indicators {
            add("data element", &ind.data_element.code, ind.data_element.uid.as_deref());
            add("category option combo", &ind.category_option_combo.code, ind.category_option_combo.uid.as_deref());
        }
        missing
    }

    /// The ages at which some indicator's age filter changes its answer,
    /// ascending, 0 first. Two ages between the same consecutive bounds pass
    /// exactly the same filters, so counts can be grouped by band.
    #[must_use]
    pub fn age_bounds(&self) -> Vec<u32> {
        let mut bounds = BTreeSet::from([0]);
        for ind in &self.indicators {
            bounds.extend(ind.filter.min_age_years);
            bounds.extend(ind.filter.max_age_years);
        }
        bounds.into_iter().collect()
    }
}

/// Whether `s` has DHIS2's uid format: 11 characters, a letter then letters
/// or digits.
#[must_use]
pub fn is_uid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 11 && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
}

fn check_code(at: &str, code: &str, problems: &mut Vec<String>) {
    if code.trim().is_empty() {
        problems.push(format!("{at}: must not be empty"));
    } else if code.trim() != code {
        problems.push(format!("{at}: {code:?} has spaces around it"));
    }
}

fn check_uid(at: &str, uid: Option<&str>, problems: &mut Vec<String>) {
    if let Some(uid) = uid
        && !is_uid(uid)
    {
        problems.push(format!("{at}: {uid:?} is not a DHIS2 uid (11 characters: a letter, then letters or digits)"));
    }
}

fn check_object(at: &str, object: &ObjectRef, problems: &mut Vec<String>) {
    check_code(&format!("{at}.code"), &object.code, problems);
    check_uid(&format!("{at}.uid"), object.uid.as_deref(), problems);
    if object.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        problems.push(format!("{at}.name: must not be empty when set"));
    }
}

/// A code must name one object: two indicators giving it different uids is
/// a copy-and-paste slip.
fn same_uid<'a>(
    at: &str,
    object: &'a ObjectRef,
    i: usize,
    seen: &mut HashMap<&'a str, (&'a str, usize)>,
    problems: &mut Vec<String>,
) {
    let Some(uid) = object.uid.as_deref() else { return };
    match seen.get(object.code.as_str()) {
        Some(&(first_uid, first)) if first_uid != uid => {
            problems.push(format!("{at}.uid: {} is {uid} here but {first_uid} in indicators[{first}]", object.code))
        }
        Some(_) => {}
        None => {
            seen.insert(&object.code, (uid, i));
        }
    }
}

fn check_filter(at: &str, ind: &Indicator, problems: &mut Vec<String>) {
    let filter = &ind.filter;
    for (k, kind) in filter.kinds.iter().enumerate() {
        if !ENCOUNTER_KINDS.contains(&kind.as_str()) {
            problems.push(format!(
                "{at}.filter.kinds[{k}]: unknown encounter kind {kind:?} (expected one of {})",
                ENCOUNTER_KINDS.join(", ")
            ));
        }
    }
    if ind.count == Count::NewPatients && !filter.kinds.is_empty() {
        problems.push(format!("{at}.filter.kinds: new_patients counts patients, not encounters: leave kinds out"));
    }
    if let Some(sex) = &filter.sex
        && !SEXES.contains(&sex.as_str())
    {
        problems.push(format!("{at}.filter.sex: unknown sex {sex:?} (expected female or male)"));
    }
    if let (Some(min), Some(max)) = (filter.min_age_years, filter.max_age_years)
        && min >= max
    {
        problems.push(format!(
            "{at}.filter: min_age_years ({min}) must be below max_age_years ({max}, exclusive): no age would match"
        ));
    }
}

/// Where the mapping in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingSource {
    /// Saved by an admin (UI or API) at `updated_at`.
    Database { updated_at: OffsetDateTime },
    /// The file named by `HUB_DHIS2_MAPPING`.
    File(PathBuf),
    /// The shipped default.
    Default,
}

impl MappingSource {
    /// A short description for people: "saved in the hub on ...", "file ...", "shipped default".
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Database { updated_at } => {
                let mut s = String::from("saved in the hub");
                if let Ok(at) = updated_at.format(&time::format_description::well_known::Rfc3339) {
                    let _ = write!(s, " on {at}");
                }
                s
            }
            Self::File(path) => format!("file {}", path.display()),
            Self::Default => "shipped default".to_owned(),
        }
    }
}

/// `{"kind": "database", "updated_at": "..."}`, `{"kind": "file", "path":
/// "..."}` or `{"kind": "default"}`.
impl Serialize for MappingSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(None)?;
        match self {
            Self::Database { updated_at } => {
                map.serialize_entry("kind", "database")?;
                let at = updated_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(serde::ser::Error::custom)?;
                map.serialize_entry("updated_at", &at)?;
            }
            Self::File(path) => {
                map.serialize_entry("kind", "file")?;
                map.serialize_entry("path", &path.display().to_string())?;
            }
            Self::Default => map.serialize_entry("kind", "default")?,
        }
        map.end()
    }
}

/// The mapping in force and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadedMapping {
    pub mapping: Mapping,
    pub source: MappingSource,
}

/// Reads, parses and validates a mapping file; errors name the file.
pub fn load_file(path: &Path) -> Result<Mapping, MappingError> {
    let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read { path: path.to_owned(), source })?;
    parse_valid(&text).map_err(|e| MappingError::File { path: path.to_owned(), source: Box::new(e) })
}

fn parse_valid(text: &str) -> Result<Mapping, MappingError> {
    let mapping = Mapping::parse(text)?;
    mapping.validate()?;
    Ok(mapping)
}

/// The mapping in force: the saved copy, else the configured file, else the
/// shipped default (see the module docs). A saved copy or file that does not
/// parse or validate is an error, not a silent fallback to another mapping.
pub async fn load(pool: &Pool, config: &Dhis2Config) -> Result<LoadedMapping, MappingError> {
    let client = pool.get().await?;
    let row = client.query_opt("SELECT mapping::text AS mapping, updated_at FROM dhis2_mapping", &[]).await?;
    drop(client);
    if let Some(row) = row {
        let text: String = row.try_get("mapping")?;
        let updated_at: OffsetDateTime = row.try_get("updated_at")?;
        let mapping = parse_valid(&text).map_err(|e| MappingError::Stored(Box::new(e)))?;
        return Ok(LoadedMapping { mapping, source: MappingSource::Database { updated_at } });
    }
    if let Some(path) = &config.mapping_file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| MappingError::Read { path: path.clone(), source })?;
        let mapping = parse_valid(&text).map_err(|e| MappingError::File { path: path.clone(), source: Box::new(e) })?;
        return Ok(LoadedMapping { mapping, source: MappingSource::File(path.clone()) });
    }
    Ok(LoadedMapping { mapping: Mapping::default_mapping(), source: MappingSource::Default })
}

/// Validates `mapping` and saves it as the mapping in force (it wins over
/// the file until [`reset`]); `user` is the admin who saved it.
pub async fn save(pool: &Pool, mapping: &Mapping, user: Option<uuid::Uuid>) -> Result<(), MappingError> {
    mapping.validate()?;
    let json = serde_json::to_string(mapping).map_err(MappingError::Json)?;
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO dhis2_mapping (id, mapping, updated_at, updated_by) VALUES (true, $1::text::jsonb, now(), $2)
             ON CONFLICT (id) DO UPDATE SET mapping = excluded.mapping, updated_at = now(),
                                           updated_by = excluded.updated_by",
            &[&json, &user],
        )
        .await?;
    Ok(())
}

/// Deletes the saved mapping: the file (or the shipped default) is in force again.
pub async fn reset(pool: &Pool) -> Result<(), MappingError> {
    pool.get().await?.execute("DELETE FROM dhis2_mapping", &[]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Mapping::parse(text).expect("parses").validate() {
            Err(MappingError::Invalid(p)) => p,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    const SMALL: &str = r#"
        [data_set]
        code = "SR_MONTHLY"

        [[indicators]]
        name = "Consultations"
        data_element = { code = "CONS_TOTAL" }
        category_option_combo = { code = "default", name = "default" }
        count = "encounters"
        filter = { kinds = ["consultation", "follow_up"], max_age_years = 5 }
    "#;

    #[test]
    fn default_mapping_parses_validates_and_has_the_issue_indicators() {
        let m = Mapping::default_mapping();
        m.validate().expect("the default validates");
        assert_eq!(m.id_scheme, IdScheme::Uid);
        assert_eq!(m.data_set.period_type, PeriodType::Monthly);
        let codes: BTreeSet<&str> = m.indicators.iter().map(|i| i.data_element.code.as_str()).collect();
        let expected = ["ANC_VISITS", "CONS_AGE", "CONS_SEX", "CONS_TOTAL", "CONS_U5", "NEW_PATIENTS", "VACC_VISITS"];
        assert_eq!(codes.into_iter().collect::<Vec<_>>(), expected);
        assert_eq!(m.indicators.len(), 11);
        // Codes only: the uids come from resolve-mapping.
        assert!(m.indicators.iter().all(|i| i.data_element.uid.is_none() && i.category_option_combo.uid.is_none()));
        assert_eq!(m.age_bounds(), [0, 1, 5, 15]);
    }

    #[test]
    fn parses_toml_and_json_alike() {
        let toml = Mapping::parse(SMALL).expect("toml");
        let json = Mapping::parse(
            r#"{"data_set": {"code": "SR_MONTHLY"},
                "indicators": [{"name": "Consultations", "data_element": {"code": "CONS_TOTAL"},
                  "category_option_combo": {"code": "default", "name": "default"}, "count": "encounters",
                  "filter": {"kinds": ["consultation", "follow_up"], "max_age_years": 5}}]}"#,
        )
        .expect("json");
        assert_eq!(toml, json);
        assert_eq!(toml.id_scheme, IdScheme::Uid, "uid by default");
        assert_eq!(toml.indicators[0].filter.max_age_years, Some(5));
        let code = Mapping::parse(&format!("id_scheme = \"code\"\n{SMALL}")).expect("code scheme");
        assert_eq!(code.id_scheme, IdScheme::Code);
        let weekly = SMALL.replace("code = \"SR_MONTHLY\"", "code = \"SR_WEEKLY\"\nperiod_type = \"Weekly\"");
        assert_eq!(Mapping::parse(&weekly).expect("weekly").data_set.period_type, PeriodType::Weekly);
    }

    #[test]
    fn parse_errors_name_the_key() {
        let e = Mapping::parse(&SMALL.replace("count = \"encounters\"", "count = \"visits\"")).expect_err("bad count");
        assert!(matches!(e, MappingError::Toml(_)));
        assert!(e.problems()[0].contains("visits"), "{:?}", e.problems());
        let e = Mapping::parse(&SMALL.replace("max_age_years", "max_age")).expect_err("unknown key");
        assert!(e.problems()[0].contains("max_age"), "{:?}", e.problems());
        let e = Mapping::parse(r#"{"data_set": {"code": "X"}}"#).expect_err("no indicators");
        assert!(matches!(e, MappingError::Json(_)));
        assert!(e.problems()[0].contains("indicators"), "{:?}", e.problems());
    }

    #[test]
    fn validation_lists_every_problem_with_its_path() {
        let text = r#"
            [data_set]
            code = " "
            uid = "1notAUid"

            [[indicators]]
            name = "A"
            data_element = { code = "CONS_SEX", uid = "deConsSex01" }
            category_option_combo = { code = "SEX_F" }
            count = "encounters"
            filter = { kinds = ["consult"], sex = "f", min_age_years = 5, max_age_years = 5 }

            [[indicators]]
            name = ""
            data_element = { code = "CONS_SEX", uid = "deConsSex02" }
            category_option_combo = { code = "SEX_F", uid = "toolongtobeauid" }
            count = "new_patients"
            filter = { kinds = ["vaccination"] }

            [[indicators]]
            name = "A"
            data_element = { code = "" }
            category_option_combo = { code = "default" }
            count = "encounters"
        "#;
        let p = problems(text);
        let expected = [
            "data_set.code: must not be empty",
            "data_set.uid: \"1notAUid\" is not a DHIS2 uid (11 characters: a letter, then letters or digits)",
            "indicators[0].filter.kinds[0]: unknown encounter kind \"consult\" (expected one of consultation, \
             antenatal, vaccination, follow_up)",
            "indicators[0].filter.sex: unknown sex \"f\" (expected female or male)",
            "indicators[0].filter: min_age_years (5) must be below max_age_years (5, exclusive): no age would match",
            "indicators[1].name: must not be empty",
            "indicators[1].category_option_combo.uid: \"toolongtobeauid\" is not a DHIS2 uid (11 characters: a \
             letter, then letters or digits)",
            "indicators[1]: indicators[0] already goes to data element CONS_SEX with category option combo SEX_F",
            "indicators[1].data_element.uid: CONS_SEX is deConsSex02 here but deConsSex01 in indicators[0]",
            "indicators[1].filter.kinds: new_patients counts patients, not encounters: leave kinds out",
            "indicators[2].name: \"A\" is already the name of indicators[0]",
            "indicators[2].data_element.code: must not be empty",
        ];
        assert_eq!(p, expected);
    }

    #[test]
    fn an_empty_indicator_list_is_refused() {
        let p = problems("indicators = []\n[data_set]\ncode = \"SR_MONTHLY\"\n");
        assert_eq!(p, ["indicators: at least one indicator is needed"]);
    }

    #[test]
    fn to_toml_round_trips() {
        let mut m = Mapping::default_mapping();
        m.id_scheme = IdScheme::Code;
        m.data_set.uid = Some("srMonthly01".into());
        m.indicators[2].data_element.uid = Some("deConsSex01".into());
        let text = m.to_toml();
        assert_eq!(Mapping::parse(&text).expect("its own TOML parses"), m);
        let json = serde_json::to_string(&m).expect("json");
        assert_eq!(Mapping::parse(&json).expect("its own JSON parses"), m);
    }

    #[test]
    fn missing_uids_lists_each_object_once() {
        let mut m = Mapping::parse(SMALL).expect("parse");
        m.indicators.push(Indicator {
            name: "U5 bis".into(),
            data_element: ObjectRef { code: "CONS_U5".into(), uid: Some("deConsU5001".into()), name: None },
            category_option_combo: m.indicators[0].category_option_combo.clone(),
            count: Count::Encounters,
            filter: Filter::default(),
        });
        assert_eq!(
            m.missing_uids(),
            ["data set SR_MONTHLY", "data element CONS_TOTAL", "category option combo default"]
        );
    }

    #[test]
    fn filters_match_kind_sex_and_age_bounds() {
        let f = Filter {
            kinds: vec!["consultation".into()],
            sex: Some("female".into()),
            min_age_years: Some(1),
            max_age_years: Some(5),
        };
        assert!(f.matches(Some("consultation"), "female", 1));
        assert!(f.matches(Some("consultation"), "female", 4));
        assert!(!f.matches(Some("consultation"), "female", 5), "max is exclusive");
        assert!(!f.matches(Some("consultation"), "female", 0));
        assert!(!f.matches(Some("antenatal"), "female", 3));
        assert!(!f.matches(Some("consultation"), "male", 3));
        assert!(!f.matches(None, "female", 3), "kinds never match patients");
        assert!(Filter::default().matches(None, "unknown", 99));
    }

    #[test]
    fn sources_serialize_with_their_kind() {
        let file = serde_json::to_value(MappingSource::File("/etc/m.toml".into())).expect("json");
        assert_eq!(file, serde_json::json!({"kind": "file", "path": "/etc/m.toml"}));
        let db = MappingSource::Database { updated_at: time::macros::datetime!(2024-05-02 02:00 UTC) };
        assert_eq!(
            serde_json::to_value(&db).expect("json"),
            serde_json::json!({"kind": "database", "updated_at": "2024-05-02T02:00:00Z"})
        );
        assert_eq!(serde_json::to_value(MappingSource::Default).expect("json"), serde_json::json!({"kind": "default"}));
    }
}
