//! Encounters (consultations, antenatal care, vaccination, follow-up): the
//! JSON contract, drafts and validation, and the age group used for reporting.

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

use crate::ids::EncounterId;
use crate::patient::years_between;
use crate::validation::{ValidationErrors, date_field, text_field};

pub const MAX_SHORT_TEXT_CHARS: usize = 500;
pub const MAX_NOTES_CHARS: usize = 4000;

/// Plausible ranges for vitals: outside them the value is a typing mistake
/// (a weight of 700 kg, a temperature in Fahrenheit).
pub const WEIGHT_KG: (f64, f64) = (0.3, 300.0);
pub const TEMPERATURE_C: (f64, f64) = (30.0, 45.0);
pub const BP_SYSTOLIC: (f64, f64) = (50.0, 260.0);
pub const BP_DIASTOLIC: (f64, f64) = (30.0, 160.0);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncounterKind {
    Consultation,
    Antenatal,
    Vaccination,
    FollowUp,
}

impl EncounterKind {
    pub const ALL: [Self; 4] = [Self::Consultation, Self::Antenatal, Self::Vaccination, Self::FollowUp];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Consultation => "consultation",
            Self::Antenatal => "antenatal",
            Self::Vaccination => "vaccination",
            Self::FollowUp => "follow_up",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s.trim())
    }
}

/// Age at the encounter date, in the groups national reporting uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgeGroup {
    #[serde(rename = "under_1")]
    Under1,
    #[serde(rename = "1_4")]
    From1To4,
    #[serde(rename = "5_14")]
    From5To14,
    #[serde(rename = "15_plus")]
    From15,
}

impl AgeGroup {
    /// The group of someone born on `birth_date`, on `on`.
    #[must_use]
    pub fn at(birth_date: Date, on: Date) -> Self {
        match years_between(birth_date, on) {
            0 => Self::Under1,
            1..=4 => Self::From1To4,
            5..=14 => Self::From5To14,
            _ => Self::From15,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Under1 => "under_1",
            Self::From1To4 => "1_4",
            Self::From5To14 => "5_14",
            Self::From15 => "15_plus",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Under1, Self::From1To4, Self::From5To14, Self::From15].into_iter().find(|g| g.as_str() == s)
    }
}

/// An encounter as the API returns it (contract: keep these names stable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encounter {
    pub id: EncounterId,
    pub date: Date,
    pub kind: EncounterKind,
    pub complaint: String,
    pub diagnosis: String,
    pub icd10: Option<String>,
    pub weight_kg: Option<f64>,
    pub temperature_c: Option<f64>,
    pub bp_systolic: Option<u16>,
    pub bp_diastolic: Option<u16>,
    pub notes: String,
    /// Username of the clinician who recorded it.
    pub clinician: String,
    pub age_group: AgeGroup,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// Validated clinical fields of one encounter.
#[derive(Debug, Clone, PartialEq)]
pub struct EncounterFields {
    pub date: Date,
    pub kind: EncounterKind,
    pub complaint: String,
    pub diagnosis: String,
    pub icd10: Option<String>,
    pub weight_kg: Option<f64>,
    pub temperature_c: Option<f64>,
    pub bp_systolic: Option<u16>,
    pub bp_diastolic: Option<u16>,
    pub notes: String,
}

/// An encounter as a caller sends it. `date` defaults to today.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncounterDraft {
    pub date: Option<String>,
    pub kind: Option<String>,
    pub complaint: Option<String>,
    pub diagnosis: Option<String>,
    pub icd10: Option<String>,
    pub weight_kg: Option<f64>,
    pub temperature_c: Option<f64>,
    pub bp_systolic: Option<f64>,
    pub bp_diastolic: Option<f64>,
    pub notes: Option<String>,
}

impl EncounterDraft {
    /// Validates against the clinic's `today` and the patient's birth date (an
    /// encounter cannot predate the patient).
    pub fn validate(&self, today: Date, birth_date: Date) -> Result<EncounterFields, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let date = match self.date.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Some(today),
            Some(text) => date_field(&mut errors, "date", text).filter(|d| {
                if *d > today {
                    errors.push("date", "in_future", "the encounter date is in the future");
                    false
                } else if *d < birth_date {
                    errors.push("date", "before_birth", "the encounter date is before the patient's birth date");
                    false
                } else {
                    true
                }
            }),
        };
        let kind = match self.kind.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("kind", "required", "this field is required");
                None
            }
            Some(k) => EncounterKind::parse(k).or_else(|| {
                errors.push("kind", "invalid_choice", "must be consultation, antenatal, vaccination or follow_up");
                None
            }),
        };
        let complaint = text_field(&mut errors, "complaint", self.complaint.as_deref(), false, MAX_SHORT_TEXT_CHARS);
        let diagnosis = text_field(&mut errors, "diagnosis", self.diagnosis.as_deref(), false, MAX_SHORT_TEXT_CHARS);
        let icd10 = match self.icd10.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(code) => {
                let code = code.to_ascii_uppercase();
                if is_icd10(&code) {
                    Some(code)
                } else {
                    errors.push("icd10", "invalid_icd10", "an ICD-10 code looks like A09 or B54.0");
                    None
                }
            }
        };
        let weight_kg = range(&mut errors, "weight_kg", self.weight_kg, WEIGHT_KG, "kg");
        let temperature_c = range(&mut errors, "temperature_c", self.temperature_c, TEMPERATURE_C, "°C");
        let bp_systolic = range(&mut errors, "bp_systolic", self.bp_systolic, BP_SYSTOLIC, "mmHg");
        let bp_systolic = whole(&mut errors, "bp_systolic", bp_systolic);
        let bp_diastolic = range(&mut errors, "bp_diastolic", self.bp_diastolic, BP_DIASTOLIC, "mmHg");
        let bp_diastolic = whole(&mut errors, "bp_diastolic", bp_diastolic);
        match (bp_systolic, bp_diastolic) {
            (Some(s), Some(d)) if d >= s => {
                errors.push("bp_diastolic", "not_below_systolic", "diastolic pressure must be below systolic");
            }
            (Some(_), None) if errors.for_field("bp_diastolic").is_none() => {
                errors.push("bp_diastolic", "required_with_systolic", "give both blood pressure values");
            }
            (None, Some(_)) if errors.for_field("bp_systolic").is_none() => {
                errors.push("bp_systolic", "required_with_diastolic", "give both blood pressure values");
            }
            _ => {}
        }
        let notes = text_field(&mut errors, "notes", self.notes.as_deref(), false, MAX_NOTES_CHARS);
        match (date, kind) {
            (Some(date), Some(kind)) if errors.is_empty() => Ok(EncounterFields {
                date,
                kind,
                complaint,
                diagnosis,
                icd10,
                weight_kg,
                temperature_c,
                bp_systolic,
                bp_diastolic,
                notes,
            }),
            _ => Err(errors),
        }
    }
}

fn range(
    errors: &mut ValidationErrors,
    field: &'static str,
    v: Option<f64>,
    (lo, hi): (f64, f64),
    unit: &str,
) -> Option<f64> {
    let v = v?;
    if v.is_finite() && (lo..=hi).contains(&v) {
        Some(v)
    } else {
        errors.push(field, "out_of_range", format!("between {lo} and {hi} {unit}"));
        None
    }
}

fn whole(errors: &mut ValidationErrors, field: &'static str, v: Option<f64>) -> Option<u16> {
    let v = v?;
    if v.fract() == 0.0 {
        // In range already, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(v as u16)
    } else {
        errors.push(field, "not_whole", "a whole number of mmHg");
        None
    }
}

/// `A00` to `Z99`, optionally followed by `.` and one to four letters or digits.
fn is_icd10(code: &str) -> bool {
    let b = code.as_bytes();
    let head = b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && (b[2].is_ascii_digit() || b[2].is_ascii_uppercase());
    head && match &b[3..] {
        [] => true,
        [b'.', rest @ ..] => (1..=4).contains(&rest.len()) && rest.iter().all(u8::is_ascii_alphanumeric),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 11 - 25);
    const BORN: Date = date!(2020 - 03 - 10);

    fn draft() -> EncounterDraft {
        EncounterDraft {
            kind: Some("consultation".into()),
            complaint: Some("fièvre".into()),
            diagnosis: Some("paludisme simple".into()),
            icd10: Some("b54".into()),
            weight_kg: Some(18.5),
            temperature_c: Some(38.9),
            ..EncounterDraft::default()
        }
    }

    #[test]
    fn a_valid_encounter_defaults_to_today() {
        let f = draft().validate(TODAY, BORN).expect("valid");
        assert_eq!(f.date, TODAY);
        assert_eq!(f.icd10.as_deref(), Some("B54"));
        assert_eq!(f.kind, EncounterKind::Consultation);
    }

    #[test]
    fn vitals_out_of_range_are_refused() {
        let d = EncounterDraft {
            weight_kg: Some(700.0),
            temperature_c: Some(101.0),
            bp_systolic: Some(80.0),
            bp_diastolic: Some(120.0),
            icd10: Some("malaria".into()),
            date: Some("2019-01-01".into()),
            kind: Some("surgery".into()),
            ..draft()
        };
        let e = d.validate(TODAY, BORN).expect_err("invalid");
        let got: Vec<_> = e.0.iter().map(|e| (e.field, e.code)).collect();
        assert_eq!(
            got,
            [
                ("date", "before_birth"),
                ("kind", "invalid_choice"),
                ("icd10", "invalid_icd10"),
                ("weight_kg", "out_of_range"),
                ("temperature_c", "out_of_range"),
                ("bp_diastolic", "not_below_systolic"),
            ]
        );
    }

    #[test]
    fn blood_pressure_comes_in_pairs_of_whole_numbers() {
        let e = EncounterDraft { bp_systolic: Some(120.5), ..draft() }.validate(TODAY, BORN).expect_err("bad");
        assert_eq!(e.0[0].code, "not_whole");
        let e = EncounterDraft { bp_systolic: Some(120.0), ..draft() }.validate(TODAY, BORN).expect_err("bad");
        assert_eq!(e.0[0].code, "required_with_systolic");
    }

    #[test]
    fn icd10_shapes() {
        for ok in ["A09", "B54", "B50.9", "O80", "Z34.0A", "U07.1"] {
            assert!(is_icd10(ok), "{ok}");
        }
        for bad in ["", "A9", "109", "A09.", "A09.12345", "A09-1"] {
            assert!(!is_icd10(bad), "{bad}");
        }
    }

    #[test]
    fn age_groups_at_boundaries() {
        let born = date!(2021 - 06 - 15);
        assert_eq!(AgeGroup::at(born, date!(2022 - 06 - 14)), AgeGroup::Under1);
        assert_eq!(AgeGroup::at(born, date!(2022 - 06 - 15)), AgeGroup::From1To4);
        assert_eq!(AgeGroup::at(born, date!(2026 - 06 - 14)), AgeGroup::From1To4);
        assert_eq!(AgeGroup::at(born, date!(2026 - 06 - 15)), AgeGroup::From5To14);
        assert_eq!(AgeGroup::at(date!(2000 - 01 - 01), date!(2015 - 01 - 01)), AgeGroup::From15);
        assert_eq!(serde_json_name(AgeGroup::From15), "\"15_plus\"");
    }

    fn serde_json_name(g: AgeGroup) -> String {
        serde_json::to_string(&g).expect("serialize")
    }
}
