//! Recording a consultation (clinicians and administrators only).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use santerurale_shared::patient::format_date;
use santerurale_shared::{EncounterDraft, EncounterKind, Patient, PatientId, ValidationErrors};

use super::forms::{Fields, FormState, ParseErrors, RawForm};
use super::i18n::Texts as _;
use super::patients::{patient_id, today};
use super::session::Signed;
use super::{Fail, Page, UiError, render, see_other};
use crate::AppState;
use crate::store::{Role, StoreError};

/// A choice in the visit type list.
#[derive(Debug)]
struct KindOption {
    value: &'static str,
    label: &'static str,
}

#[derive(Template)]
#[template(path = "encounter_form.html")]
struct EncounterFormTpl {
    page: Page,
    form: FormState,
    patient_id: String,
    patient_name: String,
    kinds: Vec<KindOption>,
    today: String,
}

impl EncounterFormTpl {
    fn new(page: &Page, form: FormState, patient: &Patient) -> Self {
        Self {
            page: page.clone(),
            form,
            patient_id: patient.id.to_string(),
            patient_name: format!("{} {}", patient.given_name, patient.family_name),
            kinds: EncounterKind::ALL
                .into_iter()
                .map(|k| KindOption { value: k.as_str(), label: page.lang.kind(k) })
                .collect(),
            today: format_date(today()),
        }
    }
}

async fn load(state: &AppState, page: &Page, id: PatientId) -> Result<Patient, UiError> {
    state.store.get_patient(id).await.map_err(|e| page.internal(&e))?.ok_or_else(|| page.fail(Fail::NotFound))
}

pub async fn new_form(
    State(state): State<AppState>,
    Signed { page, .. }: Signed,
    Path(raw): Path<String>,
) -> Result<Response, UiError> {
    page.require(Role::is_clinical)?;
    let patient = load(&state, &page, patient_id(&raw, &page)?).await?;
    let form = FormState::with_values([("date", format_date(today())), ("kind", "consultation".to_owned())]);
    Ok(render(StatusCode::OK, &page, &EncounterFormTpl::new(&page, form, &patient)))
}

/// The draft the form describes, and the numbers that could not be read.
fn draft_from(form: &Fields) -> (EncounterDraft, ParseErrors) {
    let mut errors = ParseErrors::default();
    let draft = EncounterDraft {
        date: form.non_blank("date"),
        kind: Some(form.get("kind").to_owned()),
        complaint: Some(form.get("complaint").to_owned()),
        diagnosis: Some(form.get("diagnosis").to_owned()),
        icd10: form.non_blank("icd10"),
        weight_kg: errors.decimal("weight_kg", form.get("weight_kg")),
        temperature_c: errors.decimal("temperature_c", form.get("temperature_c")),
        bp_systolic: errors.decimal("bp_systolic", form.get("bp_systolic")),
        bp_diastolic: errors.decimal("bp_diastolic", form.get("bp_diastolic")),
        notes: Some(form.get("notes").to_owned()),
    };
    (draft, errors)
}

pub async fn record(
    State(state): State<AppState>,
    signed: Signed,
    Path(raw): Path<String>,
    raw_form: RawForm,
) -> Result<Response, UiError> {
    let page = &signed.page;
    let form = Fields::read(raw_form, page)?;
    signed.check_csrf(&form)?;
    page.require(Role::is_clinical)?;
    let patient = load(&state, page, patient_id(&raw, page)?).await?;
    let (draft, parse_errors) = draft_from(&form);
    let invalid = |errors: &ValidationErrors| {
        let mut shown = form.redisplay();
        shown.push_errors(page.lang, errors);
        render(StatusCode::UNPROCESSABLE_ENTITY, page, &EncounterFormTpl::new(page, shown, &patient))
    };
    if !parse_errors.is_empty() {
        let domain = draft.validate(today(), patient.birth_date).map(|_| ());
        return Ok(invalid(&parse_errors.merge(domain, &[])));
    }
    match state.store.add_encounter(patient.id, draft, signed.user.username.clone()).await {
        Ok(encounter) => {
            tracing::info!(patient = %patient.id, encounter = %encounter.id, user = %signed.user.id, "encounter recorded (web)");
            Ok(see_other(&format!("/patients/{}", patient.id), &[]))
        }
        Err(StoreError::Invalid(errors)) => Ok(invalid(&errors)),
        Err(StoreError::NotFound) => Err(page.fail(Fail::NotFound)),
        Err(e) => Err(page.internal(&e)),
    }
}
