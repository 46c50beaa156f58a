//! Reading submitted forms and re-displaying them with their errors.
//!
//! Forms are read as plain name/value pairs rather than typed structs, so a
//! missing or malformed field becomes a message next to that field instead of
//! a rejected request.

use axum::Form;
use axum::extract::rejection::FormRejection;
use santerurale_shared::{FieldError, ValidationErrors};

use super::i18n::{Lang, Texts as _};
use super::{Fail, Page, UiError};

/// The name/value pairs of a submitted form.
#[derive(Debug, Clone, Default)]
pub struct Fields(Vec<(String, String)>);

/// What axum hands a handler for a url-encoded body.
pub type RawForm = Result<Form<Vec<(String, String)>>, FormRejection>;

impl Fields {
    /// The form's fields, or a 400 page when the body is not a url-encoded form.
    pub fn read(raw: RawForm, page: &Page) -> Result<Self, UiError> {
        match raw {
            Ok(Form(pairs)) => Ok(Self(pairs)),
            Err(e) => {
                tracing::info!(reason = %e.body_text(), "unreadable form");
                Err(page.fail(Fail::BadRequest))
            }
        }
    }

    /// The first value of `name`, or `""`.
    #[must_use]
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
    }

    /// A checkbox submitted with `value="true"`.
    #[must_use]
    pub fn checked(&self, name: &str) -> bool {
        self.get(name) == "true"
    }

    /// `Some(trimmed)` when the field is not blank.
    #[must_use]
    pub fn non_blank(&self, name: &str) -> Option<String> {
        Some(self.get(name).trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// The form to show again: the values as typed (except passwords and the
    /// CSRF token) and no errors yet.
    #[must_use]
    pub fn redisplay(&self) -> FormState {
        let values = self
            .0
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "csrf_token" | "password" | "password_confirm"))
            .cloned()
            .collect();
        FormState { values, errors: Vec::new() }
    }
}

/// A form as a template shows it: values and one translated error per field.
#[derive(Debug, Clone, Default)]
pub struct FormState {
    values: Vec<(String, String)>,
    errors: Vec<(String, String)>,
}

impl FormState {
    #[must_use]
    pub fn with_values<'a>(values: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        Self { values: values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(), errors: Vec::new() }
    }

    #[must_use]
    pub fn value(&self, name: &str) -> &str {
        self.values.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
    }

    /// For checkboxes: was `value="true"` sent.
    #[must_use]
    pub fn checked(&self, name: &str) -> bool {
        self.value(name) == "true"
    }

    /// For radio buttons and options: is `option` the value of `name`.
    #[must_use]
    pub fn selected(&self, name: &str, option: &str) -> bool {
        self.value(name) == option
    }

    #[must_use]
    pub fn error(&self, name: &str) -> Option<&str> {
        self.errors.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[must_use]
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Adds the translated message for one error, unless the field has one.
    pub fn push_error(&mut self, lang: Lang, e: &FieldError) {
        if self.error(e.field).is_none() {
            self.errors.push((e.field.to_owned(), lang.field_error(e.field, e.code, &e.message)));
        }
    }

    pub fn push_errors(&mut self, lang: Lang, errors: &ValidationErrors) {
        for e in &errors.0 {
            self.push_error(lang, e);
        }
    }

    pub fn set_value(&mut self, name: &str, value: String) {
        match self.values.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name.to_owned(), value)),
        }
    }
}

/// Problems found while reading the form itself (not a number, say), kept
/// apart from the domain validation so both can be shown together.
#[derive(Debug, Default)]
pub struct ParseErrors(pub ValidationErrors);

impl ParseErrors {
    /// A decimal number, accepting a comma as the separator (`38,5`).
    pub fn decimal(&mut self, field: &'static str, text: &str) -> Option<f64> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let normal = text.replace(',', ".");
        let plain = normal.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+'));
        match normal.parse::<f64>() {
            Ok(v) if plain && v.is_finite() => Some(v),
            _ => {
                self.0.push(field, "not_a_number", "a number is expected");
                None
            }
        }
    }

    /// A whole number of years (an estimated age).
    pub fn whole(&mut self, field: &'static str, text: &str) -> Option<u32> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            self.0.push(field, "not_a_number", "a whole number is expected");
            return None;
        }
        // All digits: only too many of them fails, which is out of range.
        Some(text.parse().unwrap_or(u32::MAX))
    }

    /// Adds the domain validator's errors on fields that have none yet.
    /// `hidden` names domain errors made redundant by a parse error
    /// (field, code, and the field whose parse error hides it).
    #[must_use]
    pub fn merge(mut self, domain: Result<(), ValidationErrors>, hidden: &[(&str, &str, &str)]) -> ValidationErrors {
        if let Err(domain) = domain {
            for e in domain.0 {
                let has_own = self.0.for_field(e.field).is_some();
                let is_hidden =
                    hidden.iter().any(|(f, c, by)| *f == e.field && *c == e.code && self.0.for_field(by).is_some());
                if !has_own && !is_hidden {
                    self.0.0.push(e);
                }
            }
        }
        self.0
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_take_a_comma_and_refuse_words() {
        let mut p = ParseErrors::default();
        assert_eq!(p.decimal("t", "38,5"), Some(38.5));
        assert_eq!(p.decimal("t", " 38.5 "), Some(38.5));
        assert_eq!(p.decimal("t", ""), None);
        assert!(p.is_empty());
        for bad in ["abc", "inf", "NaN", "38,5,1", "1e3", "38 5"] {
            let mut p = ParseErrors::default();
            assert_eq!(p.decimal("t", bad), None, "{bad}");
            assert_eq!(p.0.0[0].code, "not_a_number", "{bad}");
        }
        let mut p = ParseErrors::default();
        assert_eq!(p.whole("a", "30"), Some(30));
        assert_eq!(p.whole("a", "99999999999"), Some(u32::MAX));
        assert_eq!(p.whole("a", "3.5"), None);
        assert_eq!(p.0.0.len(), 1);
    }

    #[test]
    fn merge_keeps_one_error_per_field_and_drops_hidden_ones() {
        let mut p = ParseErrors::default();
        p.whole("age_years", "x");
        let mut domain = ValidationErrors::default();
        domain.push("birth_date", "required", "give a birth date");
        domain.push("age_years", "out_of_range", "too old");
        domain.push("village", "required", "required");
        let merged = p.merge(Err(domain), &[("birth_date", "required", "age_years")]);
        let got: Vec<_> = merged.0.iter().map(|e| (e.field, e.code)).collect();
        assert_eq!(got, [("age_years", "not_a_number"), ("village", "required")]);
    }

    #[test]
    fn redisplay_drops_secrets() {
        let f = Fields(vec![
            ("username".into(), "awa".into()),
            ("password".into(), "secret".into()),
            ("csrf_token".into(), "t".into()),
        ]);
        let s = f.redisplay();
        assert_eq!(s.value("username"), "awa");
        assert_eq!(s.value("password"), "");
        assert_eq!(s.value("csrf_token"), "");
    }
}
