//! French and English text for the web UI.
//!
//! Every label is looked up by a key in one table, [`Texts::t`], so a missing
//! translation is a missing table row (a unit test checks that every key the
//! templates use exists). Validation errors are translated by their stable
//! `code` (see `santerurale_shared::validation`), with field-specific wording
//! where the bounds matter; an unknown code falls back to the English message
//! the validator wrote. French is the default language of the clinic.

use santerurale_shared::encounter::{
    BP_DIASTOLIC, BP_SYSTOLIC, MAX_NOTES_CHARS, MAX_SHORT_TEXT_CHARS, TEMPERATURE_C, WEIGHT_KG,
};
use santerurale_shared::patient::{
    MAX_AGE_YEARS, MAX_NAME_CHARS, MAX_NATIONAL_ID_CHARS, MAX_VILLAGE_CHARS, years_between,
};
use santerurale_shared::{AgeGroup, EncounterKind, Sex};
use time::{Date, OffsetDateTime};

use super::messages::lookup;
use crate::auth::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use crate::store::Role;

pub use santerurale_server::web::Lang;

/// The clinic UI's words and formats in a [`Lang`] (the language type and
/// its cookie are shared with the hub's UI, see `santerurale_server::web`).
pub trait Texts: Copy {
    /// The text for `key`; the key itself when the table has no row (a bug
    /// the `every_template_key_is_translated` test catches).
    fn t(self, key: &str) -> &str;
    fn sex(self, sex: Sex) -> &'static str;
    fn kind(self, kind: EncounterKind) -> &'static str;
    fn age_group(self, group: AgeGroup) -> &'static str;
    fn role(self, role: Role) -> &'static str;
    /// A decimal number as this language writes it (`38,5` / `38.5`).
    fn number(self, v: f64) -> String;
    /// A calendar date, day first (how dates are written in Mali either way).
    fn date(self, d: Date) -> String;
    /// An RFC 3339 timestamp (as the store keeps them) shown to the minute, UTC.
    fn timestamp(self, rfc3339: &str) -> String;
    /// An age on `today`: months under two years, then years.
    fn age(self, birth_date: Date, today: Date) -> String;
    /// The message shown under a form field for a validation error `code`.
    /// `fallback` is the validator's English message, used for unknown codes.
    fn field_error(self, field: &str, code: &str, fallback: &str) -> String;
}

impl Texts for Lang {
    fn t(self, key: &str) -> &str {
        match lookup(key) {
            Some((fr, en)) => self.pick(fr, en),
            None => key,
        }
    }

    fn sex(self, sex: Sex) -> &'static str {
        let (fr, en) = match sex {
            Sex::Female => ("Féminin", "Female"),
            Sex::Male => ("Masculin", "Male"),
        };
        self.pick(fr, en)
    }

    fn kind(self, kind: EncounterKind) -> &'static str {
        let (fr, en) = match kind {
            EncounterKind::Consultation => ("Consultation", "Consultation"),
            EncounterKind::Antenatal => ("Consultation prénatale (CPN)", "Antenatal care (ANC)"),
            EncounterKind::Vaccination => ("Vaccination", "Vaccination"),
            EncounterKind::FollowUp => ("Suivi", "Follow-up"),
        };
        self.pick(fr, en)
    }

    fn age_group(self, group: AgeGroup) -> &'static str {
        let (fr, en) = match group {
            AgeGroup::Under1 => ("Moins de 1 an", "Under 1 year"),
            AgeGroup::From1To4 => ("1 à 4 ans", "1 to 4 years"),
            AgeGroup::From5To14 => ("5 à 14 ans", "5 to 14 years"),
            AgeGroup::From15 => ("15 ans et plus", "15 years and over"),
        };
        self.pick(fr, en)
    }

    fn role(self, role: Role) -> &'static str {
        let (fr, en) = match role {
            Role::Registrar => ("Accueil", "Registrar"),
            Role::Clinician => ("Soignant", "Clinician"),
            Role::Admin => ("Administrateur", "Administrator"),
        };
        self.pick(fr, en)
    }

    fn number(self, v: f64) -> String {
        let s = format!("{v}");
        if self.is_fr() { s.replace('.', ",") } else { s }
    }

    fn date(self, d: Date) -> String {
        format!("{:02}/{:02}/{:04}", d.day(), u8::from(d.month()), d.year())
    }

    fn timestamp(self, rfc3339: &str) -> String {
        match OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
            Ok(t) => {
                let t = t.to_offset(time::UtcOffset::UTC);
                format!("{} {:02}:{:02} UTC", self.date(t.date()), t.hour(), t.minute())
            }
            Err(_) => rfc3339.to_owned(),
        }
    }

    fn age(self, birth_date: Date, today: Date) -> String {
        let years = years_between(birth_date, today);
        if years >= 2 {
            return format!("{years} {}", self.pick("ans", "years"));
        }
        let mut months = (today.year() - birth_date.year()) * 12 + i32::from(u8::from(today.month()))
            - i32::from(u8::from(birth_date.month()));
        if today.day() < birth_date.day() {
            months -= 1;
        }
        let months = months.max(0);
        format!("{months} {}", self.pick("mois", if months == 1 { "month" } else { "months" }))
    }

    fn field_error(self, field: &str, code: &str, fallback: &str) -> String {
        let between = |(lo, hi): (f64, f64), unit: &str| match self {
            Lang::Fr => format!("Entre {} et {} {unit}.", self.number(lo), self.number(hi)),
            Lang::En => format!("Between {} and {} {unit}.", self.number(lo), self.number(hi)),
        };
        match (field, code) {
            ("birth_date", "required") => return self.t("err_birth_date_required").to_owned(),
            ("birth_date", "out_of_range") => {
                return match self {
                    Lang::Fr => format!("Plus de {MAX_AGE_YEARS} ans\u{a0}: vérifiez la date."),
                    Lang::En => format!("Older than {MAX_AGE_YEARS} years: check the date."),
                };
            }
            ("age_years", "out_of_range") => {
                return between((0.0, f64::from(MAX_AGE_YEARS)), self.pick("ans", "years"));
            }
            ("weight_kg", "out_of_range") => return between(WEIGHT_KG, "kg"),
            ("temperature_c", "out_of_range") => return between(TEMPERATURE_C, "°C"),
            ("bp_systolic", "out_of_range") => return between(BP_SYSTOLIC, "mmHg"),
            ("bp_diastolic", "out_of_range") => return between(BP_DIASTOLIC, "mmHg"),
            ("age_years", "not_a_number") => return self.t("err_age_not_a_number").to_owned(),
            ("national_id", "invalid_characters") => {
                return self.t("err_national_id_characters").to_owned();
            }
            (_, "too_long") => {
                let max = match field {
                    "given_name" | "family_name" => Some(MAX_NAME_CHARS),
                    "village" => Some(MAX_VILLAGE_CHARS),
                    "national_id" => Some(MAX_NATIONAL_ID_CHARS),
                    "complaint" | "diagnosis" => Some(MAX_SHORT_TEXT_CHARS),
                    "notes" => Some(MAX_NOTES_CHARS),
                    _ => None,
                };
                if let Some(max) = max {
                    return match self {
                        Lang::Fr => format!("Texte trop long ({max} caractères au plus)."),
                        Lang::En => format!("Too long (at most {max} characters)."),
                    };
                }
            }
            (_, "password_too_short") => {
                return match self {
                    Lang::Fr => format!("Le mot de passe doit contenir au moins {MIN_PASSWORD_CHARS} caractères."),
                    Lang::En => {
                        format!("The password must have at least {MIN_PASSWORD_CHARS} characters.")
                    }
                };
            }
            (_, "password_too_long") => {
                return match self {
                    Lang::Fr => format!("Le mot de passe est trop long ({MAX_PASSWORD_CHARS} caractères au plus)."),
                    Lang::En => format!("The password is too long (at most {MAX_PASSWORD_CHARS} characters)."),
                };
            }
            _ => {}
        }
        match lookup(&format!("err_{code}")) {
            Some((fr, en)) => self.pick(fr, en).to_owned(),
            None => fallback.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn every_template_key_is_translated() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).expect("templates dir") {
            let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read template");
            // Keys appear as t("key"), and as the name and hint of form macros:
            // m::field(page, form, "name", "type", required, "hint", ...).
            let mut keys: Vec<&str> =
                text.split("t(\"").skip(1).map(|p| p.split('"').next().unwrap_or_default()).collect();
            for call in text.split("m::field(page, form, ").skip(1) {
                let args: Vec<&str> = call.split(", ").take(4).map(|a| a.trim_matches('"')).collect();
                keys.push(args[0]);
                if !args[3].is_empty() {
                    keys.push(args[3]);
                }
            }
            for key in keys {
                assert!(lookup(key).is_some(), "no translation for {key:?}");
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} keys found: is the scan broken?");
    }

    #[test]
    fn validation_codes_are_translated_with_their_bounds() {
        let fr = Lang::Fr;
        assert_eq!(fr.field_error("weight_kg", "out_of_range", "x"), "Entre 0,3 et 300 kg.");
        assert_eq!(Lang::En.field_error("weight_kg", "out_of_range", "x"), "Between 0.3 and 300 kg.");
        assert_eq!(
            fr.field_error("phone", "required_for_whatsapp", "x"),
            "Le consentement WhatsApp nécessite un numéro de téléphone."
        );
        assert_eq!(fr.field_error("village", "too_long", "x"), "Texte trop long (100 caractères au plus).");
        assert_eq!(fr.field_error("x", "some_new_code", "English text"), "English text");
        for code in [
            "required",
            "too_long",
            "invalid_date",
            "in_future",
            "out_of_range",
            "invalid_phone",
            "required_for_whatsapp",
            "before_birth",
            "invalid_icd10",
            "not_below_systolic",
            "not_whole",
            "required_with_systolic",
            "required_with_diastolic",
            "ambiguous",
            "invalid_choice",
            "invalid_characters",
            "not_a_number",
            "password_too_short",
            "password_too_long",
            "password_mismatch",
            "username_taken",
            "invalid_username",
        ] {
            assert_ne!(fr.field_error("f", code, "FALLBACK"), "FALLBACK", "{code}");
        }
    }

    #[test]
    fn numbers_dates_and_ages() {
        assert_eq!(Lang::Fr.number(38.5), "38,5");
        assert_eq!(Lang::En.number(38.5), "38.5");
        assert_eq!(Lang::Fr.number(300.0), "300");
        assert_eq!(Lang::Fr.date(date!(2026 - 03 - 07)), "07/03/2026");
        assert_eq!(Lang::Fr.age(date!(1990 - 05 - 17), date!(2026 - 05 - 16)), "35 ans");
        assert_eq!(Lang::En.age(date!(2025 - 12 - 20), date!(2026 - 03 - 19)), "2 months");
        assert_eq!(Lang::Fr.age(date!(2026 - 03 - 19), date!(2026 - 03 - 19)), "0 mois");
        assert_eq!(Lang::Fr.timestamp("2026-03-07T09:05:00Z"), "07/03/2026 09:05 UTC");
        assert_eq!(Lang::parse("en"), Some(Lang::En));
        assert_eq!(Lang::parse("de"), None);
    }
}
