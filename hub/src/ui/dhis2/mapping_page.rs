//! The DHIS2 mapping page: the mapping in force and where it comes from,
//! its indicators with what each counts in words and the uids still
//! missing; editing it as TOML (saved only when it parses and validates,
//! otherwise every problem is listed and nothing changes), going back to the
//! file, and resolving its codes in the configured DHIS2 (then saving it).

use std::collections::HashSet;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use santerurale_server::web::{Lang, see_other};

use super::{Connection, coc_name, mapping_alert};
use crate::AppState;
use crate::dhis2::client::Dhis2Client;
use crate::dhis2::mapping::{self, Count, Indicator, LoadedMapping, Mapping, MappingSource};
use crate::dhis2::payload::IdScheme;
use crate::dhis2::period::PeriodType;
use crate::dhis2::resolve::{self, ResolveReport};
use crate::ui::forms::RawForm;
use crate::ui::session::Signed;
use crate::ui::{Page, UiError, render};

/// The shipped default mapping as written, shown in the editor when the
/// mapping in force cannot be loaded.
const SHIPPED_MAPPING: &str = include_str!("../../../dhis2/default-mapping.toml");

/// An indicator as the mapping page shows it.
#[derive(Debug)]
pub struct IndicatorRow {
    pub name: String,
    pub de_code: String,
    pub de_uid: Option<String>,
    pub coc_code: String,
    pub coc_name: Option<String>,
    pub coc_uid: Option<String>,
    pub counted: String,
}

/// What an indicator counts, in words: "Consultations (consultation, suivi) · moins de 5 ans".
fn counted(ind: &Indicator, lang: Lang) -> String {
    let mut parts = Vec::new();
    let what = match ind.count {
        Count::Encounters => lang.pick("Passages", "Encounters"),
        Count::NewPatients => lang.pick("Nouveaux patients enregistrés", "New patients registered"),
    };
    let f = &ind.filter;
    if f.kinds.is_empty() {
        parts.push(what.to_owned());
    } else {
        let kinds: Vec<&str> = f
            .kinds
            .iter()
            .map(|k| match k.as_str() {
                "consultation" => lang.pick("consultation", "consultation"),
                "antenatal" => lang.pick("consultation prénatale", "antenatal care"),
                "vaccination" => lang.pick("vaccination", "vaccination"),
                "follow_up" => lang.pick("suivi", "follow-up"),
                other => other,
            })
            .collect();
        parts.push(format!("{what} ({})", kinds.join(", ")));
    }
    match f.sex.as_deref() {
        Some("female") => parts.push(lang.pick("sexe féminin", "female").to_owned()),
        Some("male") => parts.push(lang.pick("sexe masculin", "male").to_owned()),
        Some(other) => parts.push(other.to_owned()),
        None => {}
    }
    let fr = lang.is_fr();
    match (f.min_age_years, f.max_age_years) {
        (Some(min), Some(max)) if fr => parts.push(format!("de {min} à moins de {max} ans")),
        (Some(min), Some(max)) => parts.push(format!("aged {min} to under {max}")),
        (Some(min), None) if fr => parts.push(format!("{min} ans et plus")),
        (Some(min), None) => parts.push(format!("aged {min} and over")),
        (None, Some(max)) if fr => parts.push(format!("moins de {max} ans")),
        (None, Some(max)) => parts.push(format!("under {max}")),
        (None, None) => {}
    }
    parts.join(" · ")
}

/// The mapping in force as the page shows it.
#[derive(Debug)]
pub struct MappingShown {
    /// Message key of where it comes from, and the detail (date or path).
    pub source_key: &'static str,
    pub source_detail: String,
    pub saved: bool,
    pub data_set_code: String,
    pub data_set_uid: Option<String>,
    pub weekly: bool,
    pub by_code: bool,
    pub indicators: Vec<IndicatorRow>,
    pub missing: Vec<String>,
}

impl MappingShown {
    fn new(loaded: &LoadedMapping, page: &Page) -> Self {
        let m = &loaded.mapping;
        let (source_key, source_detail) = match &loaded.source {
            MappingSource::Database { updated_at } => ("mapping_source_db", page.when(updated_at)),
            MappingSource::File(path) => ("mapping_source_file", path.display().to_string()),
            MappingSource::Default => ("mapping_source_default", String::new()),
        };
        Self {
            source_key,
            source_detail,
            saved: matches!(loaded.source, MappingSource::Database { .. }),
            data_set_code: m.data_set.code.clone(),
            data_set_uid: m.data_set.uid.clone(),
            weekly: m.data_set.period_type == PeriodType::Weekly,
            by_code: m.id_scheme == IdScheme::Code,
            indicators: m
                .indicators
                .iter()
                .map(|i| IndicatorRow {
                    name: i.name.clone(),
                    de_code: i.data_element.code.clone(),
                    de_uid: i.data_element.uid.clone(),
                    coc_code: i.category_option_combo.code.clone(),
                    coc_name: coc_name(&i.category_option_combo).map(str::to_owned),
                    coc_uid: i.category_option_combo.uid.clone(),
                    counted: counted(i, page.lang),
                })
                .collect(),
            missing: m.missing_uids(),
        }
    }
}

/// What "resolve" found, as the page shows it.
#[derive(Debug, Default)]
pub struct ReportShown {
    /// `code → uid` of the mapping's objects whose uid was filled or changed.
    pub filled: Vec<(String, String)>,
    /// `org unit code → uid` of the sites updated.
    pub sites: Vec<(String, String)>,
    /// Codes DHIS2 does not know: kind key, code, context.
    pub missing: Vec<(&'static str, String, String)>,
}

impl ReportShown {
    fn new(before: &Mapping, report: &ResolveReport) -> Self {
        let mut known: HashSet<(String, Option<String>)> = HashSet::new();
        known.insert((before.data_set.code.clone(), before.data_set.uid.clone()));
        for i in &before.indicators {
            known.insert((i.data_element.code.clone(), i.data_element.uid.clone()));
            known.insert((i.category_option_combo.code.clone(), i.category_option_combo.uid.clone()));
        }
        let after = &report.mapping;
        let mut objects = vec![(after.data_set.code.clone(), after.data_set.uid.clone())];
        for i in &after.indicators {
            objects.push((i.data_element.code.clone(), i.data_element.uid.clone()));
            objects.push((i.category_option_combo.code.clone(), i.category_option_combo.uid.clone()));
        }
        let mut filled = Vec::new();
        for (code, uid) in objects {
            if let Some(uid) = uid.clone()
                && !known.contains(&(code.clone(), Some(uid.clone())))
                && !filled.iter().any(|(c, _)| *c == code)
            {
                filled.push((code, uid));
            }
        }
        let missing_key = |kind: &str| match kind {
            "data_set" => "kind_data_set",
            "data_element" => "kind_data_element",
            "category_option_combo" => "kind_coc",
            "org_unit" => "kind_org_unit",
            _ => "kind_other",
        };
        Self {
            filled,
            sites: report.sites_resolved.iter().map(|(_, code, uid)| (code.clone(), uid.clone())).collect(),
            missing: report.missing.iter().map(|m| (missing_key(m.kind), m.code.clone(), m.context.clone())).collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "dhis2_mapping.html")]
struct MappingTpl<'a> {
    page: &'a Page,
    conn: Connection,
    /// `None` when the mapping in force cannot be loaded (`load_error` says why).
    shown: Option<MappingShown>,
    load_error: Option<String>,
    /// The textarea's text.
    text: String,
    /// Why the text was not saved.
    problems: Vec<String>,
    report: Option<ReportShown>,
    /// Why resolving failed.
    resolve_error: Option<String>,
    /// Whether a saved copy exists (usable or not), which "reset" deletes.
    can_reset: bool,
}

/// The mapping page with the mapping in force; `text` replaces its TOML in
/// the textarea (what was typed, when it was refused).
async fn mapping_page(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    text: Option<String>,
    problems: Vec<String>,
    report: Option<ReportShown>,
    resolve_error: Option<String>,
) -> Result<Response, UiError> {
    let (shown, load_error, toml) = match mapping::load(&state.db, &state.config.dhis2).await {
        Ok(loaded) => (Some(MappingShown::new(&loaded, page)), None, loaded.mapping.to_toml()),
        Err(e) => {
            let alert = mapping_alert(page, &e)?;
            // The shipped file, comments included, as a start to edit.
            (None, Some(alert), SHIPPED_MAPPING.to_owned())
        }
    };
    let tpl = MappingTpl {
        page,
        conn: Connection::of(&state.config.dhis2),
        can_reset: load_error.is_some() || shown.as_ref().is_some_and(|s| s.saved),
        shown,
        load_error,
        text: text.unwrap_or(toml),
        problems,
        report,
        resolve_error,
    };
    Ok(render(status, page, &tpl))
}

/// `GET /dhis2/mapping`.
pub async fn show(State(state): State<AppState>, Signed { mut page, .. }: Signed) -> Result<Response, UiError> {
    page.nav = "dhis2_mapping";
    mapping_page(&state, &page, StatusCode::OK, None, Vec::new(), None, None).await
}

/// `POST /dhis2/mapping`: field `mapping`, TOML (or JSON). Saved only when
/// it parses and validates; otherwise every problem is listed and nothing
/// changes.
pub async fn save(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let form = signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "dhis2_mapping";
    let text = form.get("mapping");
    let saved = match Mapping::parse(text) {
        Ok(m) => mapping::save(&state.db, &m, Some(*signed.user.id.as_uuid())).await,
        Err(e) => Err(e),
    };
    match saved {
        Ok(()) => {
            tracing::info!(user = %signed.user.id, "DHIS2 mapping saved (web)");
            Ok(see_other("/dhis2/mapping", &[]))
        }
        Err(e) => {
            let problems = e.problems();
            if problems.is_empty() {
                return Err(page.internal(&e));
            }
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            mapping_page(&state, &page, status, Some(text.to_owned()), problems, None, None).await
        }
    }
}

/// `POST /dhis2/mapping/reset`: deletes the saved copy; the file (or the
/// shipped default) is in force again.
pub async fn reset(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    signed.form(raw)?;
    mapping::reset(&state.db).await.map_err(|e| signed.page.internal(&e))?;
    tracing::info!(user = %signed.user.id, "DHIS2 mapping reset to the file (web)");
    Ok(see_other("/dhis2/mapping", &[]))
}

/// `POST /dhis2/mapping/resolve`: looks the codes up in DHIS2, saves the
/// resolved mapping (and the sites' org unit uids), shows the report.
pub async fn resolve_codes(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "dhis2_mapping";
    let fail = |message: String| (StatusCode::UNPROCESSABLE_ENTITY, None, Some(message));
    let (status, report, error) = match mapping::load(&state.db, &state.config.dhis2).await {
        Err(e) => fail(mapping_alert(&page, &e)?),
        Ok(loaded) => match Dhis2Client::new(&state.config.dhis2) {
            Err(e) if e.code() == "not_configured" => fail(page.t("dhis2_not_configured").to_owned()),
            Err(e) => fail(crate::error_chain(&e)),
            Ok(client) => match resolve::resolve(&client, &loaded.mapping, &state.db).await {
                Err(resolve::ResolveError::Db(e)) => return Err(page.internal(&e)),
                Err(e) => fail(crate::error_chain(&e)),
                Ok(report) => {
                    let user = Some(*signed.user.id.as_uuid());
                    match mapping::save(&state.db, &report.mapping, user).await {
                        Ok(()) => {
                            tracing::info!(user = %signed.user.id, missing = report.missing.len(),
                                "DHIS2 mapping resolved and saved (web)");
                            (StatusCode::OK, Some(ReportShown::new(&loaded.mapping, &report)), None)
                        }
                        Err(e) if e.problems().is_empty() => return Err(page.internal(&e)),
                        Err(e) => fail(crate::error_chain(&e)),
                    }
                }
            },
        },
    };
    mapping_page(&state, &page, status, None, Vec::new(), report, error).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_indicator_counts_in_words() {
        let mapping = Mapping::default_mapping();
        let u5 = mapping.indicators.iter().find(|i| i.data_element.code == "CONS_U5").expect("CONS_U5");
        let text = counted(u5, Lang::Fr);
        assert!(text.contains("moins de 5 ans"), "{text}");
        assert!(text.contains("consultation"), "{text}");
        let new = mapping.indicators.iter().find(|i| i.count == Count::NewPatients).expect("new patients");
        assert!(counted(new, Lang::En).starts_with("New patients registered"));
    }
}
