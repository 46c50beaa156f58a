//! Field-level validation errors.
//!
//! Each error names the field as it is called in the JSON contract (and in the
//! HTML form), a stable machine-readable `code`, and an English message. User
//! interfaces translate by `code`; the API returns all three.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

/// Every problem found in one input, in field order. Never empty when returned
/// as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn push(&mut self, field: &'static str, code: &'static str, message: impl Into<String>) {
        self.0.push(FieldError { field, code, message: message.into() });
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first error on `field`, if any: what a form shows next to that input.
    #[must_use]
    pub fn for_field(&self, field: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.field == field)
    }

    /// `Ok(value)` if nothing was pushed, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() { Ok(value) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Trims and checks a free-text field: required or not, and a length bound in
/// characters. Returns the trimmed text (empty when absent and optional).
pub(crate) fn text_field(
    errors: &mut ValidationErrors,
    field: &'static str,
    value: Option<&str>,
    required: bool,
    max_chars: usize,
) -> String {
    let trimmed = value.map(str::trim).unwrap_or_default();
    if trimmed.is_empty() {
        if required {
            errors.push(field, "required", "this field is required");
        }
        return String::new();
    }
    if trimmed.chars().count() > max_chars {
        errors.push(field, "too_long", format!("at most {max_chars} characters"));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t') {
        errors.push(field, "invalid_characters", "contains control characters");
    }
    trimmed.to_owned()
}

/// Parses a `YYYY-MM-DD` date.
pub(crate) fn date_field(errors: &mut ValidationErrors, field: &'static str, value: &str) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(value.trim(), format) {
        Ok(d) => Some(d),
        Err(_) => {
            errors.push(field, "invalid_date", "expected a date as YYYY-MM-DD");
            None
        }
    }
}
