//! The conflicts page: open ones by default (`?status=resolved|all`), each
//! with its patient, field, the competing values with the device and site
//! that wrote each and the one Automerge picked, and, while open, a form to
//! resolve it by choosing one of the values or typing another.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use santerurale_shared::PatientId;
use serde::Deserialize;
use uuid::Uuid;

use super::forms::{Fields, FormState, RawForm};
use super::session::Signed;
use super::{Fail, Page, UiError, render};
use crate::AppState;
use crate::conflicts::{Conflict, ResolveError, Status};
use crate::sync::conflicts::ResolutionError;
use crate::sync::document::ValueError;

/// A conflict as the page shows it.
#[derive(Debug)]
pub struct Shown {
    pub conflict: Conflict,
    /// The patient's name, when the projection has the patient.
    pub patient_name: String,
    pub values: Vec<ShownValue>,
    /// The resolve form's values and errors, when it was just refused.
    pub form: FormState,
}

#[derive(Debug)]
pub struct ShownValue {
    /// The value as text (strings without their quotes).
    pub text: String,
    pub device: String,
    pub site: String,
    pub winner: bool,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
}

#[derive(Template)]
#[template(path = "conflicts.html")]
struct ConflictsTpl<'a> {
    page: &'a Page,
    status: &'static str,
    conflicts: Vec<Shown>,
}

fn parse_status(s: Option<&str>) -> Option<(Status, &'static str)> {
    match s.unwrap_or("open") {
        "open" => Some((Status::Open, "open")),
        "resolved" => Some((Status::Resolved, "resolved")),
        "all" => Some((Status::All, "all")),
        _ => None,
    }
}

/// A value as text: strings as they are, anything else as JSON.
fn value_text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The conflicts with `status`, with names of patients, devices' sites.
async fn shown(state: &AppState, page: &Page, status: Status) -> Result<Vec<Shown>, UiError> {
    let conflicts = crate::conflicts::list(&state.db, status).await.map_err(|e| page.internal(&e))?;
    let mut site_of: HashMap<Uuid, String> = HashMap::new();
    for row in super::sites::site_rows(state, page).await? {
        for d in &row.status.devices {
            site_of.insert(*d.id.as_uuid(), row.site.code.clone());
        }
    }
    let mut names: HashMap<Uuid, String> = HashMap::new();
    let mut out = Vec::with_capacity(conflicts.len());
    for conflict in conflicts {
        if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(conflict.patient_id) {
            let patient = crate::patients::find(&state.db, PatientId::from_uuid(conflict.patient_id))
                .await
                .map_err(|e| page.internal(&e))?;
            slot.insert(patient.map(|p| format!("{} {}", p.given_name, p.family_name)).unwrap_or_default());
        }
        let values = conflict
            .values
            .iter()
            .map(|v| ShownValue {
                text: value_text(&v.value),
                device: v.device_id.map(|d| d.to_string()).unwrap_or_default(),
                site: v.device_id.and_then(|d| site_of.get(&d).cloned()).unwrap_or_default(),
                winner: v.winner,
            })
            .collect();
        let patient_name = names.get(&conflict.patient_id).cloned().unwrap_or_default();
        out.push(Shown { conflict, patient_name, values, form: FormState::default() });
    }
    Ok(out)
}

pub async fn list(
    State(state): State<AppState>,
    Signed { mut page, .. }: Signed,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    page.nav = "conflicts";
    let query = query.map_err(|_| page.fail(Fail::BadRequest))?;
    let (status, status_code) = parse_status(query.status.as_deref()).ok_or_else(|| page.fail(Fail::BadRequest))?;
    let conflicts = shown(&state, &page, status).await?;
    Ok(render(StatusCode::OK, &page, &ConflictsTpl { page: &page, status: status_code, conflicts }))
}

/// The value the resolve form chose, and the form field it came from:
/// `choice` is the index of a competing value, or `other` with the value
/// typed in `other_value`.
fn chosen(
    form: &Fields,
    conflict: &Conflict,
    shown: &mut FormState,
    page: &Page,
) -> Option<(serde_json::Value, &'static str)> {
    match form.get("choice") {
        "" => shown.push(page, "choice", "required", "choose a value"),
        "other" => match form.present("other_value") {
            Some(typed) => return Some((serde_json::Value::String(typed.trim().to_owned()), "other_value")),
            None => shown.push(page, "other_value", "required", "type the value"),
        },
        index => match index.parse::<usize>().ok().and_then(|i| conflict.values.get(i)) {
            Some(v) => return Some((v.value.clone(), "choice")),
            None => shown.push(page, "choice", "invalid_choice", "not one of the values"),
        },
    }
    None
}

/// A refusal the admin can act on, as (code, English message) to show next
/// to the field the value came from; `None` for failures that are not theirs.
fn refusal(e: &ResolveError) -> Option<(&'static str, String)> {
    Some(match e {
        ResolveError::AlreadyResolved { .. } => ("already_resolved", e.to_string()),
        ResolveError::Value(ResolutionError::Refused(ValueError::Invalid(errors))) => {
            errors.0.first().map_or_else(|| ("invalid_value", e.to_string()), |f| (f.code, f.message.clone()))
        }
        ResolveError::Value(ResolutionError::Refused(_) | ResolutionError::Unreadable(_)) => {
            ("invalid_value", crate::error_chain(e))
        }
        ResolveError::Value(ResolutionError::UnknownField(_)) => ("field_missing", e.to_string()),
        _ => return None,
    })
}

pub async fn resolve(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    raw: RawForm,
) -> Result<Response, UiError> {
    let form = signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "conflicts";
    let id = id.parse::<Uuid>().map_err(|_| page.fail(Fail::NotFound))?;
    let mut open = shown(&state, &page, Status::Open).await?;
    let Some(target) = open.iter_mut().find(|s| s.conflict.id == id) else {
        // Resolved meanwhile (by someone else, or by a later edit), or unknown.
        let all = crate::conflicts::list(&state.db, Status::All).await.map_err(|e| page.internal(&e))?;
        return Err(page.fail(if all.iter().any(|c| c.id == id) { Fail::Gone } else { Fail::NotFound }));
    };
    let mut form_state = form.redisplay();
    if let Some((value, from)) = chosen(&form, &target.conflict, &mut form_state, &page) {
        match crate::conflicts::resolve(&state.db, id, value, &signed.user).await {
            Ok(resolved) => {
                state.metrics.sync_conflicts_resolved.inc();
                // The field's name only: the value may be a name or a phone number.
                tracing::info!(conflict = %id, field = %resolved.field, user = %signed.user.id, "conflict resolved (web)");
                return Ok(santerurale_server::web::see_other("/conflicts?status=open", &[]));
            }
            Err(ResolveError::NotFound(_)) => return Err(page.fail(Fail::NotFound)),
            Err(e) => match refusal(&e) {
                Some((code, message)) => form_state.push(&page, from, code, &message),
                None => return Err(page.internal(&e)),
            },
        }
    }
    target.form = form_state;
    let tpl = ConflictsTpl { page: &page, status: "open", conflicts: open };
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page, &tpl))
}
