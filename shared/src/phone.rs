//! Phone numbers, normalised to E.164 (`+22376123456`).
//!
//! Clinic staff type numbers the way they are written locally: `76 12 34 56`,
//! `76-12-34-56`, `0022376123456`, `+223 76.12.34.56`. All of these mean the
//! same Malian mobile number. A number without an international prefix is read
//! in the clinic's default country (Mali, +223, unless configured otherwise).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Country calling codes whose national significant number length we know.
/// Others are accepted with the general E.164 bounds (8 to 15 digits in all).
const NATIONAL_LENGTHS: &[(&str, usize)] = &[
    ("223", 8),  // Mali
    ("221", 9),  // Senegal
    ("226", 8),  // Burkina Faso
    ("227", 8),  // Niger
    ("225", 10), // Côte d'Ivoire
    ("224", 9),  // Guinea
    ("33", 9),   // France
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phone(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid phone number: use the international format (+223 76 12 34 56) or the local number")]
pub struct InvalidPhone;

impl Phone {
    /// Parses what a person typed. `default_country` is a calling code without
    /// `+` (for example `"223"`), used when the number has no international prefix.
    pub fn parse(input: &str, default_country: &str) -> Result<Self, InvalidPhone> {
        let trimmed = input.trim();
        let mut international = false;
        let mut digits = String::with_capacity(trimmed.len());
        for c in trimmed.chars() {
            match c {
                // A leading `+`, possibly inside a parenthesis: "(+223) 76...".
                '+' if digits.is_empty() && !international => international = true,
                '0'..='9' => digits.push(c),
                ' ' | '.' | '-' | '(' | ')' | '/' | '\u{a0}' => {}
                _ => return Err(InvalidPhone),
            }
        }
        if !international {
            if let Some(rest) = digits.strip_prefix("00") {
                digits = rest.to_owned();
                international = true;
            } else if let Some(len) = national_length(default_country) {
                if digits.len() == len {
                    digits = format!("{default_country}{digits}");
                    international = true;
                } else if digits.len() == len + default_country.len() && digits.starts_with(default_country) {
                    international = true;
                }
            }
        }
        if !international || !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
            return Err(InvalidPhone);
        }
        // Where we know the country's numbering, hold the number to it.
        if let Some((cc, len)) = NATIONAL_LENGTHS.iter().find(|(cc, _)| digits.starts_with(cc)) {
            let national = &digits[cc.len()..];
            if national.len() != *len || national.starts_with('0') {
                return Err(InvalidPhone);
            }
        }
        Ok(Self(format!("+{digits}")))
    }

    /// The E.164 form, `+` and digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without `+`: `22376123456`.
    #[must_use]
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The national significant number when the number belongs to `country`
    /// (`76123456` for `+22376123456` in `"223"`).
    #[must_use]
    pub fn national_digits(&self, country: &str) -> Option<&str> {
        self.digits().strip_prefix(country)
    }

    /// Accepts an already normalised E.164 string (as stored), checking it.
    pub fn from_e164(s: &str) -> Result<Self, InvalidPhone> {
        if s.starts_with('+') { Self::parse(s, "") } else { Err(InvalidPhone) }
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn national_length(country: &str) -> Option<usize> {
    NATIONAL_LENGTHS.iter().find(|(cc, _)| *cc == country).map(|(_, len)| *len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_malian_spellings_normalise_to_one_number() {
        for input in [
            "+22376123456",
            "+223 76 12 34 56",
            "76 12 34 56",
            "76-12-34-56",
            "76.12.34.56",
            "0022376123456",
            "22376123456",
            "(+223) 76123456",
        ] {
            assert_eq!(Phone::parse(input, "223").expect(input).as_str(), "+22376123456", "{input}");
        }
    }

    #[test]
    fn wrong_numbers_are_refused() {
        for input in [
            "",
            "12",
            "7612345",
            "761234567",
            "+223 0612 3456",
            "76x23456",
            "+0123456789",
            "++22376123456",
            "+2237612345678901",
        ] {
            assert_eq!(Phone::parse(input, "223"), Err(InvalidPhone), "{input}");
        }
    }

    #[test]
    fn other_countries_use_their_own_length() {
        assert_eq!(Phone::parse("+221 77 123 45 67", "223").expect("sn").as_str(), "+221771234567");
        assert!(Phone::parse("+221 77 123 45", "223").is_err());
        assert_eq!(Phone::parse("+44 20 7946 0958", "223").expect("gb").as_str(), "+442079460958");
    }

    #[test]
    fn national_digits_strip_the_country_code() {
        let p = Phone::parse("76123456", "223").expect("valid");
        assert_eq!(p.digits(), "22376123456");
        assert_eq!(p.national_digits("223"), Some("76123456"));
        assert_eq!(p.national_digits("221"), None);
        assert_eq!(Phone::from_e164("+22376123456"), Ok(p));
    }
}
