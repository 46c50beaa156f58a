//! Patient pages: search (here, and on the hub for a patient registered at
//! another clinic, with fetching that record), registration (with the
//! duplicate warning), the chart, and editing demographics.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use santerurale_shared::patient::format_date;
use santerurale_shared::{Encounter, Patient, PatientDraft, PatientId, PatientPatch, Phone, ValidationErrors};
use time::{Date, OffsetDateTime};

use super::forms::{Fields, FormState, ParseErrors, RawForm};
use super::i18n::{Lang, Texts as _};
use super::session::Signed;
use super::{Fail, Page, UiError, render, see_other};
use crate::AppState;
use crate::store::{Duplicate, Role, SEARCH_LIMIT, StoreError};
use crate::sync::lookup::{self, HubPatient, LookupError};

/// Longest search text taken into account.
const MAX_QUERY_CHARS: usize = 200;

/// The clinic's date (UTC: Mali keeps GMT all year), as the store uses it.
pub(super) fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

/// A patient id from the path; no patient has an id that does not parse.
pub(super) fn patient_id(raw: &str, page: &Page) -> Result<PatientId, UiError> {
    raw.parse().map_err(|_| page.fail(Fail::NotFound))
}

/// One patient as a list or the chart header shows them.
#[derive(Debug)]
pub(super) struct PatientView {
    pub id: String,
    pub name: String,
    pub sex: &'static str,
    pub age: String,
    pub birth_date: String,
    pub estimated: bool,
    pub village: String,
    pub phone: String,
    pub phone_e164: String,
    pub national_id: String,
    pub whatsapp_consent: bool,
    pub whatsapp_consent_date: String,
}

impl PatientView {
    pub(super) fn new(p: &Patient, lang: Lang, country: &str, today: Date) -> Self {
        Self {
            id: p.id.to_string(),
            name: format!("{} {}", p.given_name, p.family_name),
            sex: lang.sex(p.sex),
            age: lang.age(p.birth_date, today),
            birth_date: lang.date(p.birth_date),
            estimated: p.birth_date_estimated,
            village: p.village.clone(),
            phone: p.phone.as_ref().map(|ph| display_phone(ph, country)).unwrap_or_default(),
            phone_e164: p.phone.as_ref().map(|ph| ph.as_str().to_owned()).unwrap_or_default(),
            national_id: p.national_id.clone().unwrap_or_default(),
            whatsapp_consent: p.whatsapp_consent,
            whatsapp_consent_date: p.whatsapp_consent_date.map(|d| lang.date(d)).unwrap_or_default(),
        }
    }
}

/// `+223 76 12 34 56`: the country code, then the national number in pairs
/// when it is the clinic's own country.
fn display_phone(phone: &Phone, country: &str) -> String {
    match phone.national_digits(country) {
        Some(national) if national.len() % 2 == 0 => {
            let pairs: Vec<&str> = national.as_bytes().chunks(2).filter_map(|c| std::str::from_utf8(c).ok()).collect();
            format!("+{country} {}", pairs.join(" "))
        }
        _ => phone.as_str().to_owned(),
    }
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchTpl {
    page: Page,
    q: String,
    patients: Vec<PatientView>,
    /// The hub search box (clinicians and admins): what was typed, the
    /// matches when a search ran, and a plain-words message when it failed.
    hq: String,
    hub_results: Option<Vec<HubPatientView>>,
    hub_message: Option<String>,
}

/// One match of a hub search, as the search page lists it.
#[derive(Debug)]
struct HubPatientView {
    id: String,
    name: String,
    sex: &'static str,
    age: String,
    birth_date: String,
    estimated: bool,
    village: String,
    site: String,
    on_this_edge: bool,
}

impl HubPatientView {
    fn new(p: &HubPatient, lang: Lang, today: Date) -> Self {
        let s = &p.summary;
        Self {
            id: s.patient_id.to_string(),
            name: format!("{} {}", s.given_name, s.family_name),
            sex: lang.sex(s.sex),
            age: lang.age(s.birth_date, today),
            birth_date: lang.date(s.birth_date),
            estimated: s.birth_date_estimated,
            village: s.village.clone(),
            site: format!("{} ({})", s.site_name, s.site_code),
            on_this_edge: p.on_this_edge,
        }
    }
}

/// The message key for a failed hub search or fetch: people are told what
/// they can do, not the error code (which goes to the log).
fn hub_message_key(e: &LookupError) -> &'static str {
    match e {
        LookupError::InvalidQuery => "hub_invalid_query",
        LookupError::NotEnrolled => "hub_not_enrolled",
        _ if e.is_offline() => "hub_offline",
        _ if e.is_unknown_patient() => "hub_unknown_patient",
        _ => "hub_failed",
    }
}

fn hub_failure(page: &Page, e: &LookupError, what: &str) -> String {
    if !matches!(e, LookupError::InvalidQuery) {
        tracing::warn!(code = e.code(), error = %crate::error_chain(e), "hub {what} failed (web)");
    }
    page.t(hub_message_key(e)).to_owned()
}

/// The value of query parameter `name`, trimmed and bounded.
fn param(pairs: &[(String, String)], name: &str) -> String {
    let raw = pairs.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
    raw.trim().chars().take(MAX_QUERY_CHARS).collect()
}

pub async fn search(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    page.nav = "search";
    let pairs = query.map(|Query(pairs)| pairs).unwrap_or_default();
    let (q, hq) = (param(&pairs, "q"), param(&pairs, "hq"));
    let (mut hub_results, mut hub_message) = (None, None);
    if !hq.is_empty() && page.is_clinical() {
        match lookup::lookup(&state.store, &state.config.data_dir, &hq).await {
            Ok(found) => hub_results = Some(found.iter().map(|p| HubPatientView::new(p, page.lang, today())).collect()),
            Err(e) => hub_message = Some(hub_failure(&page, &e, "search")),
        }
    }
    search_page(&state, page, StatusCode::OK, q, hq, hub_results, hub_message).await
}

async fn search_page(
    state: &AppState,
    page: Page,
    status: StatusCode,
    q: String,
    hq: String,
    hub_results: Option<Vec<HubPatientView>>,
    hub_message: Option<String>,
) -> Result<Response, UiError> {
    let found = state.store.search(q.clone(), SEARCH_LIMIT).await.map_err(|e| page.internal(&e))?;
    let (country, today) = (&state.config.default_country, today());
    let patients = found.iter().map(|p| PatientView::new(p, page.lang, country, today)).collect();
    let tpl = SearchTpl { page: page.clone(), q, patients, hq, hub_results, hub_message };
    Ok(render(status, &page, &tpl))
}

/// `POST /hub/patients/{id}/fetch`: brings the record here, then shows its
/// chart; on failure, the search page says why in plain words.
pub async fn fetch_from_hub(
    State(state): State<AppState>,
    signed: Signed,
    Path(raw): Path<String>,
    raw_form: RawForm,
) -> Result<Response, UiError> {
    let mut page = signed.page.clone();
    page.nav = "search";
    let form = Fields::read(raw_form, &page)?;
    signed.check_csrf(&form)?;
    page.require(Role::is_clinical)?;
    let id = patient_id(&raw, &page)?;
    match lookup::fetch(&state.store, &state.config.data_dir, id).await {
        Ok(fetched) => {
            tracing::info!(patient = %id, user = %signed.user.id, new = fetched.new, "patient fetched from the hub (web)");
            Ok(see_other(&format!("/patients/{id}"), &[]))
        }
        Err(e) => {
            let status = match &e {
                LookupError::NotEnrolled => StatusCode::CONFLICT,
                _ if e.is_offline() => StatusCode::SERVICE_UNAVAILABLE,
                _ if e.is_unknown_patient() => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            let message = hub_failure(&page, &e, "fetch");
            search_page(&state, page, status, String::new(), String::new(), None, Some(message)).await
        }
    }
}

/// A possible duplicate, as the warning lists it.
#[derive(Debug)]
struct DuplicateView {
    id: String,
    name: String,
    birth_date: String,
    village: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "patient_form.html")]
struct PatientFormTpl {
    page: Page,
    form: FormState,
    is_edit: bool,
    action: String,
    cancel: String,
    duplicates: Vec<DuplicateView>,
}

impl PatientFormTpl {
    fn new(page: &Page, form: FormState) -> Self {
        Self {
            page: page.clone(),
            form,
            is_edit: false,
            action: "/patients".into(),
            cancel: "/".into(),
            duplicates: Vec::new(),
        }
    }

    fn edit(page: &Page, form: FormState, id: PatientId) -> Self {
        Self {
            is_edit: true,
            action: format!("/patients/{id}/edit"),
            cancel: format!("/patients/{id}"),
            ..Self::new(page, form)
        }
    }
}

pub async fn new_form(Signed { mut page, .. }: Signed) -> Response {
    page.nav = "new";
    render(StatusCode::OK, &page, &PatientFormTpl::new(&page, FormState::default()))
}

/// The draft a registration or edit form describes, and what could not be
/// read from it. An estimated age wins over a birth date only when the
/// birth date is empty (both is the `ambiguous` error).
fn draft_from(form: &Fields) -> (PatientDraft, ParseErrors) {
    let mut errors = ParseErrors::default();
    let age_years = errors.whole("age_years", form.get("age_years"));
    let draft = PatientDraft {
        given_name: Some(form.get("given_name").to_owned()),
        family_name: Some(form.get("family_name").to_owned()),
        sex: Some(form.get("sex").to_owned()),
        birth_date: form.non_blank("birth_date"),
        birth_date_estimated: Some(form.checked("birth_date_estimated")),
        age_years,
        phone: form.non_blank("phone"),
        village: Some(form.get("village").to_owned()),
        national_id: form.non_blank("national_id"),
        whatsapp_consent: Some(form.checked("whatsapp_consent")),
        whatsapp_consent_date: form.non_blank("whatsapp_consent_date"),
    };
    (draft, errors)
}

/// Domain errors that only repeat a parse error (no age could be read, so
/// "give a birth date or an age" says nothing new).
const HIDDEN_BY_PARSE: &[(&str, &str, &str)] = &[("birth_date", "required", "age_years")];

fn with_errors(page: &Page, form: &Fields, errors: &ValidationErrors) -> FormState {
    let mut shown = form.redisplay();
    shown.push_errors(page.lang, errors);
    shown
}

pub async fn register(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    let mut page = signed.page.clone();
    page.nav = "new";
    let form = Fields::read(raw, &page)?;
    signed.check_csrf(&form)?;
    let (draft, parse_errors) = draft_from(&form);
    if !parse_errors.is_empty() {
        let domain = draft.validate(today(), &state.config.default_country).map(|_| ());
        let errors = parse_errors.merge(domain, HIDDEN_BY_PARSE);
        let tpl = PatientFormTpl::new(&page, with_errors(&page, &form, &errors));
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page, &tpl));
    }
    match state.store.register_patient(draft, form.checked("confirm_duplicate")).await {
        Ok(patient) => {
            tracing::info!(patient = %patient.id, user = %signed.user.id, "patient registered (web)");
            Ok(see_other(&format!("/patients/{}", patient.id), &[]))
        }
        Err(StoreError::Invalid(errors)) => {
            let tpl = PatientFormTpl::new(&page, with_errors(&page, &form, &errors));
            Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page, &tpl))
        }
        Err(StoreError::PossibleDuplicate(dups)) => {
            let mut shown = form.redisplay();
            // The box must be ticked again, knowingly, after reading the warning.
            shown.set_value("confirm_duplicate", String::new());
            let tpl = PatientFormTpl {
                duplicates: dups.iter().map(|d| duplicate_view(d, page.lang)).collect(),
                ..PatientFormTpl::new(&page, shown)
            };
            Ok(render(StatusCode::CONFLICT, &page, &tpl))
        }
        Err(e) => Err(page.internal(&e)),
    }
}

fn duplicate_view(d: &Duplicate, lang: Lang) -> DuplicateView {
    let birth_date = time::Date::parse(&d.birth_date, time::macros::format_description!("[year]-[month]-[day]"))
        .map_or_else(|_| d.birth_date.clone(), |b| lang.date(b));
    DuplicateView {
        id: d.id.to_string(),
        name: format!("{} {}", d.given_name, d.family_name),
        birth_date,
        village: d.village.clone(),
        reason: lang.t(&format!("duplicate_reason_{}", d.reason)).to_owned(),
    }
}

/// One encounter as the chart shows it.
#[derive(Debug)]
struct EncounterView {
    date: String,
    kind: &'static str,
    complaint: String,
    diagnosis: String,
    icd10: String,
    weight: String,
    temperature: String,
    blood_pressure: String,
    notes: String,
    clinician: String,
    age_group: &'static str,
}

impl EncounterView {
    fn new(e: &Encounter, lang: Lang) -> Self {
        let bp = match (e.bp_systolic, e.bp_diastolic) {
            (Some(s), Some(d)) => format!("{s}/{d}"),
            _ => String::new(),
        };
        Self {
            date: lang.date(e.date),
            kind: lang.kind(e.kind),
            complaint: e.complaint.clone(),
            diagnosis: e.diagnosis.clone(),
            icd10: e.icd10.clone().unwrap_or_default(),
            weight: e.weight_kg.map(|v| lang.number(v)).unwrap_or_default(),
            temperature: e.temperature_c.map(|v| lang.number(v)).unwrap_or_default(),
            blood_pressure: bp,
            notes: e.notes.clone(),
            clinician: e.clinician.clone(),
            age_group: lang.age_group(e.age_group),
        }
    }

    fn has_vitals(&self) -> bool {
        !(self.weight.is_empty() && self.temperature.is_empty() && self.blood_pressure.is_empty())
    }
}

#[derive(Template)]
#[template(path = "chart.html")]
struct ChartTpl {
    page: Page,
    patient: PatientView,
    encounters: Vec<EncounterView>,
}

pub async fn chart(
    State(state): State<AppState>,
    Signed { page, .. }: Signed,
    Path(raw): Path<String>,
) -> Result<Response, UiError> {
    let id = patient_id(&raw, &page)?;
    let patient =
        state.store.get_patient(id).await.map_err(|e| page.internal(&e))?.ok_or_else(|| page.fail(Fail::NotFound))?;
    let encounters = patient.encounters.iter().flatten().map(|e| EncounterView::new(e, page.lang)).collect();
    let patient = PatientView::new(&patient, page.lang, &state.config.default_country, today());
    Ok(render(StatusCode::OK, &page, &ChartTpl { page: page.clone(), patient, encounters }))
}

/// The edit form as first shown: the birth date, never an age.
fn edit_values(p: &Patient) -> FormState {
    let flag = |b: bool| if b { "true".to_owned() } else { String::new() };
    FormState::with_values([
        ("given_name", p.given_name.clone()),
        ("family_name", p.family_name.clone()),
        ("sex", p.sex.as_str().to_owned()),
        ("birth_date", format_date(p.birth_date)),
        ("birth_date_estimated", flag(p.birth_date_estimated)),
        ("phone", p.phone.as_ref().map(|ph| ph.as_str().to_owned()).unwrap_or_default()),
        ("village", p.village.clone()),
        ("national_id", p.national_id.clone().unwrap_or_default()),
        ("whatsapp_consent", flag(p.whatsapp_consent)),
        ("whatsapp_consent_date", p.whatsapp_consent_date.map(format_date).unwrap_or_default()),
    ])
}

pub async fn edit_form(
    State(state): State<AppState>,
    Signed { page, .. }: Signed,
    Path(raw): Path<String>,
) -> Result<Response, UiError> {
    let id = patient_id(&raw, &page)?;
    let patient =
        state.store.get_patient(id).await.map_err(|e| page.internal(&e))?.ok_or_else(|| page.fail(Fail::NotFound))?;
    Ok(render(StatusCode::OK, &page, &PatientFormTpl::edit(&page, edit_values(&patient), id)))
}

pub async fn edit(
    State(state): State<AppState>,
    signed: Signed,
    Path(raw): Path<String>,
    raw_form: RawForm,
) -> Result<Response, UiError> {
    let page = &signed.page;
    let id = patient_id(&raw, page)?;
    let form = Fields::read(raw_form, page)?;
    signed.check_csrf(&form)?;
    let (draft, parse_errors) = draft_from(&form);
    if !parse_errors.is_empty() {
        // The edit form holds every field, so the draft is the whole patient.
        let domain = draft.validate(today(), &state.config.default_country).map(|_| ());
        let errors = parse_errors.merge(domain, HIDDEN_BY_PARSE);
        let tpl = PatientFormTpl::edit(page, with_errors(page, &form, &errors), id);
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, page, &tpl));
    }
    // Every field is sent, so blanks clear (phone, national id) or are refused (names).
    let patch = PatientPatch {
        given_name: draft.given_name,
        family_name: draft.family_name,
        sex: draft.sex,
        birth_date: if draft.age_years.is_some() { None } else { Some(draft.birth_date.unwrap_or_default()) },
        birth_date_estimated: draft.birth_date_estimated,
        age_years: draft.age_years,
        phone: Some(draft.phone.unwrap_or_default()),
        village: draft.village,
        national_id: Some(draft.national_id.unwrap_or_default()),
        whatsapp_consent: draft.whatsapp_consent,
        whatsapp_consent_date: Some(draft.whatsapp_consent_date.unwrap_or_default()),
    };
    if patch.age_years.is_some() && form.non_blank("birth_date").is_some() {
        let mut errors = ValidationErrors::default();
        errors.push("birth_date", "ambiguous", "give either a birth date or an estimated age, not both");
        let tpl = PatientFormTpl::edit(page, with_errors(page, &form, &errors), id);
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, page, &tpl));
    }
    match state.store.update_patient(id, patch).await {
        Ok(_) => {
            tracing::info!(patient = %id, user = %signed.user.id, "patient updated (web)");
            Ok(see_other(&format!("/patients/{id}"), &[]))
        }
        Err(StoreError::NotFound) => Err(page.fail(Fail::NotFound)),
        Err(StoreError::Invalid(errors)) => {
            let tpl = PatientFormTpl::edit(page, with_errors(page, &form, &errors), id);
            Ok(render(StatusCode::UNPROCESSABLE_ENTITY, page, &tpl))
        }
        Err(e) => Err(page.internal(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malian_numbers_are_shown_in_pairs() {
        let p = Phone::parse("76123456", "223").expect("valid");
        assert_eq!(display_phone(&p, "223"), "+223 76 12 34 56");
        let sn = Phone::parse("+221 77 123 45 67", "223").expect("valid");
        assert_eq!(display_phone(&sn, "223"), "+221771234567");
    }
}
