//! Submitted forms, read as a map of names to values rather than typed
//! structs, so a missing field becomes a message next to it (the same
//! validation as the JSON API) instead of a rejected request.

use std::collections::HashMap;

use axum::Form;
use axum::extract::rejection::FormRejection;
use santerurale_shared::ValidationErrors;

use super::{Fail, Page, UiError, messages};

/// What axum hands a handler for a url-encoded body.
pub type RawForm = Result<Form<HashMap<String, String>>, FormRejection>;

/// The fields of a submitted form.
#[derive(Debug, Clone, Default)]
pub struct Fields(HashMap<String, String>);

impl Fields {
    /// The form's fields, or a 400 page when the body is not a url-encoded form.
    pub fn read(raw: RawForm, page: &Page) -> Result<Self, UiError> {
        raw.map(|Form(map)| Self(map)).map_err(|e| {
            tracing::info!(reason = %e.body_text(), "unreadable admin form");
            page.fail(Fail::BadRequest)
        })
    }

    /// The value of `name`, or `""`.
    #[must_use]
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    /// `Some(value)` unless the field is absent or blank.
    #[must_use]
    pub fn present(&self, name: &str) -> Option<String> {
        self.0.get(name).filter(|v| !v.trim().is_empty()).cloned()
    }

    /// The form to show again: the values as typed, except secrets.
    #[must_use]
    pub fn redisplay(&self) -> FormState {
        let mut values = self.0.clone();
        values.remove("csrf_token");
        values.remove("password");
        FormState { values, errors: HashMap::new() }
    }
}

/// A form as a template shows it: values, and one translated error per field.
#[derive(Debug, Clone, Default)]
pub struct FormState {
    values: HashMap<String, String>,
    errors: HashMap<String, String>,
}

impl FormState {
    #[must_use]
    pub fn value(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    #[must_use]
    pub fn error(&self, name: &str) -> Option<&str> {
        self.errors.get(name).map(String::as_str)
    }

    /// Fills field `name` (a form shown with stored values).
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    #[must_use]
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Adds the translated message of `code` on `field`, unless it has one.
    /// `fallback` (the validator's English) is shown for an unknown code.
    pub fn push(&mut self, page: &Page, field: &str, code: &str, fallback: &str) {
        let text = messages::field_error(page.lang, field, code).unwrap_or(fallback).to_owned();
        self.errors.entry(field.to_owned()).or_insert(text);
    }

    pub fn push_all(&mut self, page: &Page, errors: &ValidationErrors) {
        for e in &errors.0 {
            self.push(page, e.field, e.code, &e.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redisplay_drops_secrets_and_errors_are_translated_once() {
        let f = Fields(HashMap::from([
            ("username".to_owned(), "awa".to_owned()),
            ("password".to_owned(), "secret".to_owned()),
            ("csrf_token".to_owned(), "t".to_owned()),
        ]));
        let mut s = f.redisplay();
        assert_eq!((s.value("username"), s.value("password"), s.value("csrf_token")), ("awa", "", ""));
        let page = Page::default();
        s.push(&page, "code", "required", "this field is required");
        s.push(&page, "code", "invalid_format", "second");
        assert_eq!(s.error("code"), Some("Ce champ est obligatoire."));
        s.push(&page, "code2", "no_such_code", "as the validator said");
        assert_eq!(s.error("code2"), Some("as the validator said"));
        assert_eq!(f.present("username").as_deref(), Some("awa"));
        assert_eq!(f.present("nothing"), None);
    }
}
