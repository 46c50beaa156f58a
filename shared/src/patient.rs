//! Patients: the JSON contract, drafts as callers send them, and validation.

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime};

use crate::encounter::Encounter;
use crate::ids::{PatientId, SiteId};
use crate::phone::Phone;
use crate::validation::{ValidationErrors, date_field, text_field};

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_VILLAGE_CHARS: usize = 100;
pub const MAX_NATIONAL_ID_CHARS: usize = 40;
/// Oldest plausible age; older birth dates are typing mistakes.
pub const MAX_AGE_YEARS: u32 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Female,
    Male,
}

impl Sex {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Female => "female",
            Self::Male => "male",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "female" => Some(Self::Female),
            "male" => Some(Self::Male),
            _ => None,
        }
    }
}

/// A patient as the API returns it (contract: keep these names stable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    pub id: PatientId,
    pub given_name: String,
    pub family_name: String,
    pub sex: Sex,
    pub birth_date: Date,
    pub birth_date_estimated: bool,
    pub phone: Option<Phone>,
    pub village: String,
    pub national_id: Option<String>,
    pub whatsapp_consent: bool,
    pub whatsapp_consent_date: Option<Date>,
    pub site_id: Option<SiteId>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Present on the single-patient read, newest first; absent in search results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounters: Option<Vec<Encounter>>,
}

/// Validated demographic fields: what a patient document holds.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientFields {
    pub given_name: String,
    pub family_name: String,
    pub sex: Sex,
    pub birth_date: Date,
    pub birth_date_estimated: bool,
    pub phone: Option<Phone>,
    pub village: String,
    pub national_id: Option<String>,
    pub whatsapp_consent: bool,
    pub whatsapp_consent_date: Option<Date>,
}

/// A patient as a caller sends it to be registered: loosely typed so every
/// mistake can be reported against its field rather than as a parse failure.
/// Give either `birth_date` or `age_years` (then the birth date is estimated).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatientDraft {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub sex: Option<String>,
    pub birth_date: Option<String>,
    pub birth_date_estimated: Option<bool>,
    pub age_years: Option<u32>,
    pub phone: Option<String>,
    pub village: Option<String>,
    pub national_id: Option<String>,
    pub whatsapp_consent: Option<bool>,
    pub whatsapp_consent_date: Option<String>,
}

/// A partial update: only the fields present change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatientPatch {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub sex: Option<String>,
    pub birth_date: Option<String>,
    pub birth_date_estimated: Option<bool>,
    pub age_years: Option<u32>,
    /// `""` clears the phone.
    pub phone: Option<String>,
    pub village: Option<String>,
    /// `""` clears the national id.
    pub national_id: Option<String>,
    pub whatsapp_consent: Option<bool>,
    pub whatsapp_consent_date: Option<String>,
}

impl PatientDraft {
    /// Validates against `today` (the clinic's date) and the clinic's default
    /// phone country code.
    pub fn validate(&self, today: Date, default_country: &str) -> Result<PatientFields, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let given_name = text_field(&mut errors, "given_name", self.given_name.as_deref(), true, MAX_NAME_CHARS);
        let family_name = text_field(&mut errors, "family_name", self.family_name.as_deref(), true, MAX_NAME_CHARS);
        let sex = match self.sex.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("sex", "required", "this field is required");
                None
            }
            Some(s) => Sex::parse(s).or_else(|| {
                errors.push("sex", "invalid_choice", "must be \"female\" or \"male\"");
                None
            }),
        };

        let birth_date_text = self.birth_date.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let (birth_date, birth_date_estimated) = match (birth_date_text, self.age_years) {
            (Some(_), Some(_)) => {
                errors.push("birth_date", "ambiguous", "give either a birth date or an estimated age, not both");
                (None, false)
            }
            (Some(text), None) => {
                let date = date_field(&mut errors, "birth_date", text);
                if let Some(d) = date {
                    if d > today {
                        errors.push("birth_date", "in_future", "the birth date is in the future");
                    } else if years_between(d, today) > MAX_AGE_YEARS {
                        errors.push("birth_date", "out_of_range", format!("older than {MAX_AGE_YEARS} years"));
                    }
                }
                (date, self.birth_date_estimated.unwrap_or(false))
            }
            (None, Some(age)) => {
                if age > MAX_AGE_YEARS {
                    errors.push("age_years", "out_of_range", format!("between 0 and {MAX_AGE_YEARS}"));
                    (None, true)
                } else {
                    (Some(estimated_birth_date(today, age)), true)
                }
            }
            (None, None) => {
                errors.push("birth_date", "required", "give a birth date or an estimated age");
                (None, false)
            }
        };

        let phone = match self.phone.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(p) => match Phone::parse(p, default_country) {
                Ok(phone) => Some(phone),
                Err(e) => {
                    errors.push("phone", "invalid_phone", e.to_string());
                    None
                }
            },
        };
        let village = text_field(&mut errors, "village", self.village.as_deref(), true, MAX_VILLAGE_CHARS);
        let national_id =
            text_field(&mut errors, "national_id", self.national_id.as_deref(), false, MAX_NATIONAL_ID_CHARS);
        if !national_id.is_empty()
            && !national_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ' ' || c == '/')
        {
            errors.push("national_id", "invalid_characters", "letters, digits, spaces, '-' and '/' only");
        }

        let whatsapp_consent = self.whatsapp_consent.unwrap_or(false);
        let consent_date_text = self.whatsapp_consent_date.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let whatsapp_consent_date = match (whatsapp_consent, consent_date_text) {
            (false, _) => None,
            (true, None) => Some(today),
            (true, Some(text)) => {
                let date = date_field(&mut errors, "whatsapp_consent_date", text);
                if date.is_some_and(|d| d > today) {
                    errors.push("whatsapp_consent_date", "in_future", "the consent date is in the future");
                }
                date
            }
        };
        if whatsapp_consent && phone.is_none() && !errors.0.iter().any(|e| e.field == "phone") {
            errors.push("phone", "required_for_whatsapp", "WhatsApp consent needs a phone number");
        }

        match (sex, birth_date) {
            (Some(sex), Some(birth_date)) if errors.is_empty() => Ok(PatientFields {
                given_name,
                family_name,
                sex,
                birth_date,
                birth_date_estimated,
                phone,
                village,
                national_id: Some(national_id).filter(|s| !s.is_empty()),
                whatsapp_consent,
                whatsapp_consent_date,
            }),
            _ => Err(errors),
        }
    }
}

impl PatientFields {
    /// The draft that would validate back to these fields.
    #[must_use]
    pub fn to_draft(&self) -> PatientDraft {
        PatientDraft {
            given_name: Some(self.given_name.clone()),
            family_name: Some(self.family_name.clone()),
            sex: Some(self.sex.as_str().to_owned()),
            birth_date: Some(format_date(self.birth_date)),
            birth_date_estimated: Some(self.birth_date_estimated),
            age_years: None,
            phone: self.phone.as_ref().map(|p| p.as_str().to_owned()),
            village: Some(self.village.clone()),
            national_id: self.national_id.clone(),
            whatsapp_consent: Some(self.whatsapp_consent),
            whatsapp_consent_date: self.whatsapp_consent_date.map(format_date),
        }
    }

    /// Applies a patch and validates the result as a whole.
    pub fn patched(&self, patch: &PatientPatch, today: Date, default_country: &str) -> Result<Self, ValidationErrors> {
        let mut draft = self.to_draft();
        macro_rules! overlay {
            ($($f:ident),*) => { $( if patch.$f.is_some() { draft.$f = patch.$f.clone(); } )* };
        }
        overlay!(given_name, family_name, sex, phone, village, national_id, whatsapp_consent, whatsapp_consent_date);
        if patch.age_years.is_some() {
            // Both given: keep both so validation reports the ambiguity.
            draft.birth_date.clone_from(&patch.birth_date);
            draft.age_years = patch.age_years;
        } else if patch.birth_date.is_some() {
            draft.birth_date = patch.birth_date.clone();
            draft.birth_date_estimated = Some(patch.birth_date_estimated.unwrap_or(false));
        } else if patch.birth_date_estimated.is_some() {
            draft.birth_date_estimated = patch.birth_date_estimated;
        }
        if patch.whatsapp_consent == Some(true) && patch.whatsapp_consent_date.is_none() && !self.whatsapp_consent {
            // Newly given consent is dated today unless the caller says otherwise.
            draft.whatsapp_consent_date = None;
        }
        draft.validate(today, default_country)
    }
}

/// `YYYY-MM-DD`.
#[must_use]
pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Whole years from `from` to `to` (an age on date `to`).
#[must_use]
pub fn years_between(from: Date, to: Date) -> u32 {
    let mut years = to.year() - from.year();
    if (to.month(), to.day()) < (from.month(), from.day()) {
        years -= 1;
    }
    u32::try_from(years).unwrap_or(0)
}

/// The birth date recorded for "about `age` years old" on `today`: the same
/// day and month, `age` years back (29 February falls back to 28).
#[must_use]
pub fn estimated_birth_date(today: Date, age: u32) -> Date {
    let year = today.year() - i32::try_from(age).unwrap_or(0);
    Date::from_calendar_date(year, today.month(), today.day())
        .or_else(|_| Date::from_calendar_date(year, Month::February, 28))
        .unwrap_or(today)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn valid() -> PatientDraft {
        PatientDraft {
            given_name: Some("Aminata".into()),
            family_name: Some("Traoré".into()),
            sex: Some("female".into()),
            birth_date: Some("1990-05-17".into()),
            phone: Some("76 12 34 56".into()),
            village: Some("Kati".into()),
            ..PatientDraft::default()
        }
    }

    const TODAY: Date = date!(2026 - 11 - 25);

    #[test]
    fn a_valid_draft_normalises_its_fields() {
        let f = valid().validate(TODAY, "223").expect("valid");
        assert_eq!(f.family_name, "Traoré");
        assert_eq!(f.phone.as_ref().map(Phone::as_str), Some("+22376123456"));
        assert!(!f.birth_date_estimated);
        assert_eq!(f.to_draft().validate(TODAY, "223").expect("round trip"), f);
    }

    #[test]
    fn estimated_age_sets_the_flag() {
        let d = PatientDraft { birth_date: None, age_years: Some(30), ..valid() };
        let f = d.validate(TODAY, "223").expect("valid");
        assert_eq!(f.birth_date, date!(1996 - 11 - 25));
        assert!(f.birth_date_estimated);
        assert_eq!(estimated_birth_date(date!(2028 - 02 - 29), 1), date!(2027 - 02 - 28));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let d = PatientDraft {
            given_name: Some("  ".into()),
            family_name: None,
            sex: Some("x".into()),
            birth_date: Some("2030-01-01".into()),
            phone: Some("123".into()),
            village: Some("v".repeat(101)),
            whatsapp_consent: Some(true),
            ..PatientDraft::default()
        };
        let e = d.validate(TODAY, "223").expect_err("invalid");
        let fields: Vec<_> = e.0.iter().map(|e| (e.field, e.code)).collect();
        assert_eq!(
            fields,
            [
                ("given_name", "required"),
                ("family_name", "required"),
                ("sex", "invalid_choice"),
                ("birth_date", "in_future"),
                ("phone", "invalid_phone"),
                ("village", "too_long"),
            ]
        );
    }

    #[test]
    fn consent_without_phone_is_refused_and_is_dated() {
        let e = PatientDraft { phone: None, whatsapp_consent: Some(true), ..valid() }
            .validate(TODAY, "223")
            .expect_err("no phone");
        assert_eq!(e.0[0].code, "required_for_whatsapp");
        let f = PatientDraft { whatsapp_consent: Some(true), ..valid() }.validate(TODAY, "223").expect("ok");
        assert_eq!(f.whatsapp_consent_date, Some(TODAY));
    }

    #[test]
    fn patch_changes_only_what_it_names() {
        let f = valid().validate(TODAY, "223").expect("valid");
        let p =
            PatientPatch {
                village: Some("Ségou".into()), national_id: Some(String::new()), ..PatientPatch::default()
            };
        let g = f.patched(&p, TODAY, "223").expect("valid patch");
        assert_eq!(g.village, "Ségou");
        assert_eq!(g.given_name, f.given_name);
        assert_eq!(g.national_id, None);
        let both =
            PatientPatch { birth_date: Some("2000-01-01".into()), age_years: Some(30), ..PatientPatch::default() };
        assert_eq!(f.patched(&both, TODAY, "223").expect_err("ambiguous").0[0].code, "ambiguous");
        let bad = PatientPatch { phone: Some("abc".into()), ..PatientPatch::default() };
        assert_eq!(f.patched(&bad, TODAY, "223").expect_err("bad").0[0].field, "phone");
    }

    #[test]
    fn ages_count_whole_years() {
        assert_eq!(years_between(date!(2021 - 06 - 15), date!(2026 - 06 - 14)), 4);
        assert_eq!(years_between(date!(2021 - 06 - 15), date!(2026 - 06 - 15)), 5);
    }
}
