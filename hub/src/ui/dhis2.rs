//! DHIS2 pages (issue 4): the exports (connection state, the form starting
//! an export, the list of jobs), one job (its payload as a table, DHIS2's
//! answer, each conflict with its error code explained in plain words, a
//! re-run button), the mapping ([`mapping_page`]: the indicators, editing it
//! as TOML, going back to the file, resolving its codes in DHIS2), and the
//! exports behind the hub's counts ([`late_data_page`]).
//!
//! The pages call what the JSON API calls ([`crate::jobs::dhis2_export`],
//! [`crate::dhis2::mapping`], [`crate::dhis2::resolve`]), so the rules live
//! once. Jobs created here wake this hub's export worker
//! (`AppState::export_wake`). The connection is shown as its URL (without
//! any user information it may hold) and the kind of authentication, never
//! the credentials.

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use santerurale_server::web::{Lang, see_other};
use santerurale_shared::SiteId;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::forms::{FormState, RawForm};
use super::session::Signed;
use super::{Fail, Page, UiError, render};
use crate::AppState;
use crate::config::Dhis2Config;
use crate::dhis2::mapping::{self, Indicator, Mapping, MappingError};
use crate::dhis2::payload::DataValueSet;
use crate::dhis2::period::{Period, PeriodError, PeriodType};
use crate::jobs::dhis2_export::{
    self, ExportError, ExportJob, JobStatus, ListFilter, NewExport, PeriodSummary, Trigger, period_summaries,
};
use crate::sites::Site;

pub(super) mod late_data_page;
pub(super) mod mapping_page;

/// Jobs the exports page lists.
const LIST_LIMIT: i64 = 200;
/// Periods the exports page sums up.
const SUMMARY_PERIODS: i64 = 6;

/// The plain-words explanation of a DHIS2 import conflict's error code
/// (`ErrorCode.java`, E76xx), and what to do about it.
#[must_use]
pub fn explain_conflict(code: &str, lang: Lang) -> &'static str {
    let (fr, en) = match code {
        "E7636" => (
            "L'unité d'organisation du site n'est pas affectée à l'ensemble de données dans DHIS2 (ou l'élément n'y est pas saisi pour elle). Demandez à l'administrateur DHIS2 d'affecter l'unité d'organisation à l'ensemble de données, puis relancez.",
            "The site's organisation unit is not assigned to the data set in DHIS2 (or the element is not collected for it there). Ask the DHIS2 administrator to assign the organisation unit to the data set, then re-run.",
        ),
        "E7633" => (
            "Cet élément de données ne fait pas partie de l'ensemble de données dans DHIS2. Demandez à l'administrateur DHIS2 de l'y ajouter, ou corrigez l'élément dans la correspondance.",
            "This data element is not part of the data set in DHIS2. Ask the DHIS2 administrator to add it, or fix the element in the mapping.",
        ),
        "E7603" | "E7612" | "E7617" => (
            "L'unité d'organisation est inconnue de DHIS2 ou hors de portée du compte du hub. Vérifiez le code et l'identifiant d'unité d'organisation du site (page du site), puis «\u{a0}Résoudre les codes\u{a0}»\u{a0}; sinon demandez que le compte DHIS2 du hub y ait accès.",
            "The organisation unit is unknown to DHIS2 or outside the hub account's reach. Check the site's organisation unit code and uid (the site's page), then 'Resolve the codes'; otherwise ask for the hub's DHIS2 account to be given access to it.",
        ),
        "E7640" | "E7641" | "E7642" | "E7643" | "E7644" => (
            "La période est verrouillée dans DHIS2 (saisie close, hors des périodes ouvertes, ou données déjà approuvées). Demandez à l'administrateur DHIS2 de rouvrir la période pour ce site, puis relancez.",
            "The period is locked in DHIS2 (data entry closed, outside the open periods, or data already approved). Ask the DHIS2 administrator to reopen the period for this site, then re-run.",
        ),
        "E7613" | "E7634" | "E7630" => (
            "La combinaison d'options de catégorie (ventilation) n'est pas valable pour cet élément de données. Corrigez la combinaison de l'indicateur dans la correspondance, puis relancez.",
            "The category option combo (disaggregation) is not valid for this data element. Fix the indicator's combo in the mapping, then re-run.",
        ),
        "E7615" | "E7635" | "E7631" | "E7638" | "E7639" => (
            "La combinaison d'options d'attribut ne convient pas à l'ensemble de données, à la période ou à l'unité d'organisation. Demandez à l'administrateur DHIS2 quelle combinaison l'ensemble de données attend.",
            "The attribute option combo does not suit the data set, period or organisation unit. Ask the DHIS2 administrator which combo the data set expects.",
        ),
        "E7610" => (
            "Élément de données inconnu de DHIS2\u{a0}: son identifiant dans la correspondance ne correspond pas à cette instance. Utilisez «\u{a0}Résoudre les codes dans DHIS2\u{a0}» (page Correspondance), puis relancez.",
            "Data element unknown to DHIS2: its uid in the mapping does not match this instance. Use 'Resolve the codes in DHIS2' (Mapping page), then re-run.",
        ),
        "E7611" | "E7632" => (
            "Période refusée\u{a0}: invalide, ou d'un autre type que celui de l'ensemble de données (par exemple mensuelle pour un ensemble hebdomadaire). Vérifiez le type de période dans la correspondance.",
            "Period refused: invalid, or of another type than the data set's (for example monthly for a weekly set). Check the period type in the mapping.",
        ),
        "E7619" | "E7621" => (
            "Valeur refusée\u{a0}: elle n'a pas le type attendu par l'élément de données (nombre entier…) ou n'est pas dans son jeu d'options. Vérifiez que l'élément de l'indicateur est bien un nombre dans DHIS2.",
            "Value refused: it is not of the data element's type (integer...) or not in its option set. Check that the indicator's element is a number in DHIS2.",
        ),
        _ => (
            "DHIS2 a refusé cette valeur\u{a0}; son message ci-contre en donne la raison. Corrigez la correspondance ou les données, puis relancez\u{a0}; au besoin, transmettez le message à l'administrateur DHIS2.",
            "DHIS2 refused this value; its message alongside gives the reason. Fix the mapping or the data, then re-run; if needed, pass the message on to the DHIS2 administrator.",
        ),
    };
    lang.pick(fr, en)
}

/// The message key of a job status.
fn status_key(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Pending => "job_pending",
        JobStatus::Running => "job_running",
        JobStatus::Succeeded => "job_succeeded",
        JobStatus::SucceededWithConflicts => "job_succeeded_with_conflicts",
        JobStatus::Failed => "job_failed",
        JobStatus::Superseded => "job_superseded",
    }
}

/// How the hub reaches DHIS2, as the pages show it.
#[derive(Debug, Clone)]
pub(super) struct Connection {
    /// The base URL without user information; `None` when not configured.
    pub url: Option<String>,
    /// Message key of the kind of authentication.
    pub auth_key: &'static str,
    pub schedule: String,
    pub late_data_schedule: String,
}

impl Connection {
    pub(super) fn of(config: &Dhis2Config) -> Self {
        let auth_key = if config.token.is_some() {
            "dhis2_auth_token"
        } else if config.username.is_some() {
            "dhis2_auth_basic"
        } else {
            "dhis2_auth_none"
        };
        let late_data_schedule = late_data_schedule(config);
        Self {
            url: config.url.as_deref().map(without_userinfo),
            auth_key,
            schedule: config.schedule.clone(),
            late_data_schedule,
        }
    }
}

/// The late-data check's schedule as the pages show it: `off` when it
/// never runs.
pub(super) fn late_data_schedule(config: &Dhis2Config) -> String {
    if crate::jobs::late_data_on(config) { config.late_data_schedule.trim().into() } else { "off".into() }
}

/// `url` without a `user:password@` part.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// A job in the list.
#[derive(Debug)]
pub struct JobRow {
    pub job: ExportJob,
    pub status_key: &'static str,
    /// Made by the late-data check (values changed after an export).
    pub late_data: bool,
}

impl JobRow {
    fn new(job: ExportJob) -> Self {
        Self { status_key: status_key(job.status), late_data: job.trigger == Trigger::LateData, job }
    }
}

#[derive(Template)]
#[template(path = "dhis2_exports.html")]
struct ExportsTpl<'a> {
    page: &'a Page,
    conn: Connection,
    sites: Vec<Site>,
    form: FormState,
    /// A problem with the form as a whole (the mapping cannot be loaded).
    alert: Option<String>,
    /// Where each recent period stands.
    summaries: Vec<PeriodSummary>,
    /// The list's filter, as shown: the period and the status's message key.
    filter_period: Option<String>,
    filter_status_key: Option<&'static str>,
    jobs: Vec<JobRow>,
}

/// `GET /dhis2?period=&status=`: the exports list's filter (an unknown
/// status is left out).
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListParams {
    period: Option<String>,
    status: Option<String>,
}

impl ListParams {
    fn filter(&self) -> ListFilter {
        let period = self.period.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
        let status = self.status.as_deref().and_then(|s| JobStatus::parse(s.trim()));
        ListFilter { period, status }
    }
}

/// The period type of the mapping in force (monthly when it cannot be loaded).
async fn period_type(state: &AppState) -> PeriodType {
    mapping::load(&state.db, &state.config.dhis2).await.map(|l| l.mapping.data_set.period_type).unwrap_or_default()
}

async fn exports_page(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    form: FormState,
    alert: Option<String>,
    filter: &ListFilter,
) -> Result<Response, UiError> {
    let sites = crate::sites::list(&state.db).await.map_err(|e| page.internal(&e))?;
    let summaries = period_summaries(&state.db, SUMMARY_PERIODS).await.map_err(|e| page.internal(&e))?;
    let jobs = dhis2_export::list_filtered(&state.db, LIST_LIMIT, filter).await.map_err(|e| page.internal(&e))?;
    let jobs = jobs.into_iter().map(JobRow::new).collect();
    let conn = Connection::of(&state.config.dhis2);
    let (filter_period, filter_status_key) = (filter.period.clone(), filter.status.map(status_key));
    let tpl = ExportsTpl { page, conn, sites, form, alert, summaries, filter_period, filter_status_key, jobs };
    Ok(render(status, page, &tpl))
}

/// `GET /dhis2?period=&status=`.
pub async fn exports(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, UiError> {
    page.nav = "dhis2";
    let mut form = FormState::default();
    let today = OffsetDateTime::now_utc().date();
    form.set("period", &Period::containing(today, period_type(&state).await).previous().to_string());
    // A malformed query shows the whole list, as a link without one would.
    let filter = params.map(|Query(p)| p.filter()).unwrap_or_default();
    exports_page(&state, &page, StatusCode::OK, form, None, &filter).await
}

/// `POST /dhis2/exports`: fields `period`, `site` (blank: every site) and
/// `dry_run` (a checkbox).
pub async fn start_export(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let form = signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "dhis2";
    let mut shown = form.redisplay();
    let period = match form.get("period").trim() {
        "" => {
            shown.push(&page, "period", "required", "this field is required");
            None
        }
        p => Period::parse(p).map_err(|e| push_period_error(&mut shown, &page, &e)).ok(),
    };
    let site = match form.get("site").trim() {
        "" => Some(None),
        s => match s.parse::<Uuid>() {
            Ok(id) => Some(Some(SiteId::from_uuid(id))),
            Err(_) => {
                shown.push(&page, "site", "unknown_site", "no such site");
                None
            }
        },
    };
    let (Some(period), Some(site)) = (period, site) else {
        return exports_page(&state, &page, StatusCode::UNPROCESSABLE_ENTITY, shown, None, &ListFilter::default())
            .await;
    };
    let new = NewExport {
        period,
        site,
        dry_run: form.present("dry_run").is_some(),
        trigger: Trigger::Ui,
        requested_by: Some(*signed.user.id.as_uuid()),
    };
    let mut alert = None;
    match dhis2_export::create(&state.db, &state.config, new).await {
        Ok(jobs) => {
            state.export_wake.notify_one();
            tracing::info!(period = %period, jobs = jobs.len(), user = %signed.user.id, "DHIS2 export started (web)");
            let to = match jobs.as_slice() {
                [one] => format!("/dhis2/exports/{}", one.id),
                _ => "/dhis2".to_owned(),
            };
            return Ok(see_other(&to, &[]));
        }
        Err(ExportError::InvalidPeriod(e)) => push_period_error(&mut shown, &page, &e),
        Err(e @ ExportError::FuturePeriod { .. }) => shown.push(&page, "period", "future_period", &e.to_string()),
        Err(e @ ExportError::SiteNotFound(_)) => shown.push(&page, "site", "unknown_site", &e.to_string()),
        Err(ExportError::Mapping(e)) => alert = Some(mapping_alert(&page, &e)?),
        Err(e) => return Err(page.internal(&e)),
    }
    exports_page(&state, &page, StatusCode::UNPROCESSABLE_ENTITY, shown, alert, &ListFilter::default()).await
}

fn push_period_error(form: &mut FormState, page: &Page, e: &PeriodError) {
    let code = match e {
        PeriodError::Format(_) => "invalid_format",
        PeriodError::OutOfRange(_) => "out_of_range",
        PeriodError::WrongType { .. } => "wrong_period_type",
    };
    form.push(page, "period", code, &e.to_string());
}

/// The text shown when the mapping in force cannot be loaded: its problems,
/// or an internal error page when the cause is not the mapping's.
pub(super) fn mapping_alert(page: &Page, e: &MappingError) -> Result<String, UiError> {
    let problems = e.problems();
    if problems.is_empty() && matches!(e, MappingError::Db(_)) {
        return Err(page.internal(e));
    }
    Ok(format!("{} {}", page.t("mapping_unusable"), crate::error_chain(e)))
}

/// One value of a payload, with what the mapping says it is.
#[derive(Debug)]
pub struct PreviewRow {
    pub indicator: String,
    pub data_element_code: String,
    pub data_element: String,
    pub coc_code: String,
    pub coc: String,
    pub value: String,
}

/// One conflict, explained.
#[derive(Debug)]
pub struct ShownConflict {
    pub code: String,
    pub object: String,
    /// What the object is, when the mapping or the job knows it (`CONS_U5`).
    pub object_label: String,
    pub message: String,
    pub explanation: &'static str,
}

#[derive(Template)]
#[template(path = "dhis2_export.html")]
struct JobTpl<'a> {
    page: &'a Page,
    job: ExportJob,
    status_key: &'static str,
    /// The payload's header: data set, period, org unit, complete date.
    header: Option<DataValueSet>,
    preview: Vec<PreviewRow>,
    payload_json: String,
    response_json: String,
    conflicts: Vec<ShownConflict>,
    alert: Option<String>,
}

/// The indicator of the mapping a value goes to (by uid or code, as sent).
pub(super) fn indicator_of<'m>(mapping: &'m Mapping, element: &str, combo: &str) -> Option<&'m Indicator> {
    let is = |r: &mapping::ObjectRef, id: &str| r.uid.as_deref() == Some(id) || r.code == id;
    mapping.indicators.iter().find(|i| is(&i.data_element, element) && is(&i.category_option_combo, combo))
}

/// The code of the object the mapping or the payload names `id`.
fn object_label(mapping: Option<&Mapping>, set: Option<&DataValueSet>, job: &ExportJob, id: &str) -> String {
    if let Some(set) = set
        && set.org_unit == id
    {
        return job.site_code.clone();
    }
    let Some(mapping) = mapping else { return String::new() };
    if mapping.data_set.uid.as_deref() == Some(id) {
        return mapping.data_set.code.clone();
    }
    let is = |r: &mapping::ObjectRef| r.uid.as_deref() == Some(id) || r.code == id;
    mapping
        .indicators
        .iter()
        .find_map(|i| {
            (is(&i.data_element).then(|| i.data_element.code.clone()))
                .or_else(|| is(&i.category_option_combo).then(|| i.category_option_combo.code.clone()))
        })
        .filter(|code| code != id)
        .unwrap_or_default()
}

/// A combo's name when it says more than its code (`default` does not).
pub(super) fn coc_name(combo: &mapping::ObjectRef) -> Option<&str> {
    combo.name.as_deref().filter(|n| *n != combo.code)
}

fn pretty(v: Option<&Value>) -> String {
    v.map(|v| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())).unwrap_or_default()
}

async fn job_page(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    job: ExportJob,
    alert: Option<String>,
) -> Result<Response, UiError> {
    // The names come from the mapping in force; without one, the ids as sent.
    let mapping = mapping::load(&state.db, &state.config.dhis2).await.ok().map(|l| l.mapping);
    let header: Option<DataValueSet> = job.payload.clone().and_then(|p| serde_json::from_value(p).ok());
    let preview = header
        .iter()
        .flat_map(|set| &set.data_values)
        .map(|v| {
            let ind = mapping.as_ref().and_then(|m| indicator_of(m, &v.data_element, &v.category_option_combo));
            let coc_code = ind.map(|i| {
                let c = &i.category_option_combo;
                coc_name(c).map_or_else(|| c.code.clone(), |n| format!("{} ({n})", c.code))
            });
            PreviewRow {
                indicator: ind.map(|i| i.name.clone()).unwrap_or_default(),
                data_element_code: ind.map(|i| i.data_element.code.clone()).unwrap_or_default(),
                data_element: v.data_element.clone(),
                coc_code: coc_code.unwrap_or_default(),
                coc: v.category_option_combo.clone(),
                value: v.value.clone(),
            }
        })
        .collect();
    let conflicts = job
        .conflicts
        .iter()
        .map(|c| {
            let code = c.error_code.clone().unwrap_or_default();
            ShownConflict {
                explanation: explain_conflict(&code, page.lang),
                object_label: object_label(mapping.as_ref(), header.as_ref(), &job, &c.object),
                object: c.object.clone(),
                message: c.message.clone(),
                code,
            }
        })
        .collect();
    let tpl = JobTpl {
        page,
        status_key: status_key(job.status),
        header,
        preview,
        payload_json: pretty(job.payload.as_ref()),
        response_json: pretty(job.response.as_ref()),
        conflicts,
        alert,
        job,
    };
    Ok(render(status, page, &tpl))
}

/// The job `raw` names; a 404 page when there is none.
async fn find_job(state: &AppState, page: &Page, raw: &str) -> Result<ExportJob, UiError> {
    let id = raw.parse::<Uuid>().map_err(|_| page.fail(Fail::NotFound))?;
    dhis2_export::get(&state.db, id).await.map_err(|e| page.internal(&e))?.ok_or_else(|| page.fail(Fail::NotFound))
}

/// `GET /dhis2/exports/{id}`.
pub async fn export(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    page.nav = "dhis2";
    let job = find_job(&state, &page, &id).await?;
    job_page(&state, &page, StatusCode::OK, job, None).await
}

/// `POST /dhis2/exports/{id}/rerun`: a new job for the same period, site
/// and dry-run flag; shows it.
pub async fn rerun(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    raw: RawForm,
) -> Result<Response, UiError> {
    signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "dhis2";
    let job = find_job(&state, &page, &id).await?;
    let requested_by = Some(*signed.user.id.as_uuid());
    let alert = match dhis2_export::rerun(&state.db, &state.config, job.id, requested_by, Trigger::Rerun).await {
        Ok(new) => {
            state.export_wake.notify_one();
            tracing::info!(job = %new.id, rerun_of = %job.id, user = %signed.user.id, "DHIS2 export re-run (web)");
            return Ok(see_other(&format!("/dhis2/exports/{}", new.id), &[]));
        }
        Err(ExportError::NotFound(_)) => return Err(page.fail(Fail::NotFound)),
        Err(ExportError::Mapping(e)) => mapping_alert(&page, &e)?,
        Err(e @ (ExportError::InvalidPeriod(_) | ExportError::FuturePeriod { .. } | ExportError::SiteNotFound(_))) => {
            format!("{} {e}", page.t("rerun_refused"))
        }
        Err(e) => return Err(page.internal(&e)),
    };
    job_page(&state, &page, StatusCode::UNPROCESSABLE_ENTITY, job, Some(alert)).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn conflicts_are_explained_by_their_code() {
        let fr = |c| explain_conflict(c, Lang::Fr);
        assert!(fr("E7636").contains("affecter l'unité d'organisation"));
        for locked in ["E7640", "E7641", "E7642", "E7643", "E7644"] {
            assert!(fr(locked).contains("rouvrir la période"), "{locked}");
        }
        for combo in ["E7613", "E7634", "E7630"] {
            assert!(explain_conflict(combo, Lang::En).contains("Fix the indicator's combo in the mapping"), "{combo}");
        }
        for ou in ["E7603", "E7612", "E7617"] {
            assert!(fr(ou).contains("unité d'organisation du site"), "{ou}");
        }
        assert!(fr("E7610").contains("Résoudre les codes"));
        assert_eq!(fr("E7611"), fr("E7632"));
        assert_eq!(fr("E7619"), fr("E7621"));
        assert_eq!(fr("E7633"), explain_conflict("E7633", Lang::Fr));
        assert_ne!(fr("E7633"), fr("E7636"));
        // Unknown, missing (old DHIS2 versions send none) and odd codes: the generic text.
        let generic = fr("E9999");
        assert_eq!(fr(""), generic);
        assert_eq!(fr("e7636"), generic);
        assert!(explain_conflict("E9999", Lang::En).starts_with("DHIS2 refused this value"));
        let known = ["E7636", "E7633", "E7603", "E7640", "E7613", "E7615", "E7610", "E7611", "E7619"];
        let texts: HashSet<&str> = known.iter().map(|c| fr(c)).chain([generic]).collect();
        assert_eq!(texts.len(), known.len() + 1, "each group has its own text");
    }

    #[test]
    fn every_status_has_words_in_both_languages() {
        for status in JobStatus::ALL {
            let key = status_key(status);
            for lang in [Lang::Fr, Lang::En] {
                assert_ne!(super::super::messages::text(lang, key), key, "{key}");
            }
        }
        for key in ["dhis2_auth_token", "dhis2_auth_basic", "dhis2_auth_none", "mapping_source_db"] {
            assert_ne!(super::super::messages::text(Lang::En, key), key, "{key}");
        }
        for key in ["mapping_source_file", "mapping_source_default", "kind_data_set", "kind_data_element"] {
            assert_ne!(super::super::messages::text(Lang::Fr, key), key, "{key}");
        }
        for key in ["kind_coc", "kind_org_unit", "kind_other"] {
            assert_ne!(super::super::messages::text(Lang::Fr, key), key, "{key}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(without_userinfo("https://admin:district@dhis2.example.org/x"), "https://dhis2.example.org/x");
        assert_eq!(without_userinfo("https://dhis2.example.org/a@b"), "https://dhis2.example.org/a@b");
        assert_eq!(without_userinfo("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
