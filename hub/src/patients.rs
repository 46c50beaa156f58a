//! `GET /api/v1/patients?q=` and `GET /api/v1/patients/{id}` (admins): the
//! patients projection (see [`crate::sync::apply`]), in the edge's JSON
//! shapes ([`Patient`], [`Encounter`]).
//!
//! Search matches, newest update first: the patient id; or the digits of a
//! phone number (a query of digits, spaces and `+` only, at least four
//! digits); or every folded word of the query inside the folded names or
//! national id (`santerurale_shared::text::fold`, so accents and case do not
//! matter). An empty query lists the latest updated patients. The single
//! read adds the encounters, newest first.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use santerurale_shared::text::words;
use santerurale_shared::{AgeGroup, Encounter, EncounterId, EncounterKind, Patient, PatientId, Phone, Sex, SiteId};
use serde::Deserialize;
use tokio_postgres::Row;

use crate::AppState;
use crate::api::error::ApiError;
use crate::auth::CurrentUser;
use crate::db::DbError;

/// Default and largest number of search results.
pub const SEARCH_LIMIT: i64 = 50;
const MAX_QUERY_CHARS: usize = 200;

const PATIENT_COLUMNS: &str = "id, site_id, given_name, family_name, sex, birth_date, birth_date_estimated, phone, \
     village, national_id, whatsapp_consent, whatsapp_consent_date, created_at, updated_at";

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/patients", get(search_patients)).route("/api/v1/patients/{id}", get(get_patient))
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    limit: Option<i64>,
}

async fn search_patients(
    State(state): State<AppState>,
    user: CurrentUser,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    user.require_admin()?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if query.q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request("query_too_long", "the search text is longer than 200 characters"));
    }
    let limit = query.limit.unwrap_or(SEARCH_LIMIT).clamp(1, SEARCH_LIMIT);
    let patients = search(&state.db, &query.q, limit).await?;
    Ok(Json(serde_json::json!({ "patients": patients })))
}

async fn get_patient(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Patient>, ApiError> {
    user.require_admin()?;
    let id: PatientId = id.parse().map_err(|_| ApiError::not_found("no patient with this id"))?;
    let patient = find(&state.db, id).await?.ok_or_else(|| ApiError::not_found("no patient with this id"))?;
    Ok(Json(patient))
}

pub async fn search(pool: &deadpool_postgres::Pool, q: &str, limit: i64) -> Result<Vec<Patient>, DbError> {
    let q = q.trim();
    let id = uuid::Uuid::parse_str(q).ok();
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    let phone = (digits.len() >= 4 && q.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '+' || c == '-'))
        .then_some(digits);
    let name_words = if id.is_some() || phone.is_some() { Vec::new() } else { words(q) };
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {PATIENT_COLUMNS} FROM patients
                 WHERE ($1::text = '' AND $2::uuid IS NULL AND $3::text IS NULL)
                    OR id = $2
                    OR strpos(phone_digits, $3) > 0
                    OR (cardinality($4::text[]) > 0
                        AND NOT EXISTS (SELECT 1 FROM unnest($4::text[]) AS w WHERE strpos(search, w) = 0))
                 ORDER BY updated_at DESC, id LIMIT $5"
            ),
            &[&q, &id, &phone, &name_words, &limit],
        )
        .await?;
    rows.iter().map(patient).collect()
}

pub async fn find(pool: &deadpool_postgres::Pool, id: PatientId) -> Result<Option<Patient>, DbError> {
    let client = pool.get().await?;
    let Some(row) =
        client.query_opt(&format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE id = $1"), &[id.as_uuid()]).await?
    else {
        return Ok(None);
    };
    let mut p = patient(&row)?;
    let rows = client
        .query(
            "SELECT id, date, kind, complaint, diagnosis, icd10, weight_kg, temperature_c, bp_systolic,
                    bp_diastolic, notes, clinician, age_group, recorded_at
             FROM encounters WHERE patient_id = $1 ORDER BY date DESC, recorded_at DESC, id DESC",
            &[id.as_uuid()],
        )
        .await?;
    p.encounters = Some(rows.iter().map(encounter).collect::<Result<_, _>>()?);
    Ok(Some(p))
}

fn patient(r: &Row) -> Result<Patient, DbError> {
    let sex: String = r.try_get("sex")?;
    let phone: Option<String> = r.try_get("phone")?;
    Ok(Patient {
        id: PatientId::from_uuid(r.try_get("id")?),
        given_name: r.try_get("given_name")?,
        family_name: r.try_get("family_name")?,
        // Both were written from parsed values (see `sync::apply`).
        sex: Sex::parse(&sex).unwrap_or(Sex::Female),
        birth_date: r.try_get("birth_date")?,
        birth_date_estimated: r.try_get("birth_date_estimated")?,
        phone: phone.and_then(|p| Phone::from_e164(&p).ok()),
        village: r.try_get("village")?,
        national_id: r.try_get("national_id")?,
        whatsapp_consent: r.try_get("whatsapp_consent")?,
        whatsapp_consent_date: r.try_get("whatsapp_consent_date")?,
        site_id: Some(SiteId::from_uuid(r.try_get("site_id")?)),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        encounters: None,
    })
}

fn encounter(r: &Row) -> Result<Encounter, DbError> {
    let kind: String = r.try_get("kind")?;
    let age_group: String = r.try_get("age_group")?;
    let date = r.try_get("date")?;
    Ok(Encounter {
        id: EncounterId::from_uuid(r.try_get("id")?),
        date,
        kind: EncounterKind::parse(&kind).unwrap_or(EncounterKind::Consultation),
        complaint: r.try_get("complaint")?,
        diagnosis: r.try_get("diagnosis")?,
        icd10: r.try_get("icd10")?,
        weight_kg: r.try_get("weight_kg")?,
        temperature_c: r.try_get("temperature_c")?,
        bp_systolic: r.try_get::<_, Option<i32>>("bp_systolic")?.and_then(|v| u16::try_from(v).ok()),
        bp_diastolic: r.try_get::<_, Option<i32>>("bp_diastolic")?.and_then(|v| u16::try_from(v).ok()),
        notes: r.try_get("notes")?,
        clinician: r.try_get("clinician")?,
        age_group: AgeGroup::parse(&age_group).unwrap_or(AgeGroup::at(date, date)),
        recorded_at: r.try_get("recorded_at")?,
    })
}
