//! Text folding for search and duplicate detection.
//!
//! Names in Mali are written with and without accents, in any case, and in
//! either order ("TRAORÉ Aminata", "Aminata Traore"). Folding decomposes to
//! Unicode NFD, drops combining marks and lowercases, then splits into words.
//! The edge's SQLite full-text index applies the same folding
//! (`unicode61 remove_diacritics 2`), so this function is what tests and
//! duplicate checks compare against.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lowercase, accent-free form of `s`.
#[must_use]
pub fn fold(s: &str) -> String {
    s.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

/// The folded words of `s`: runs of letters and digits.
#[must_use]
pub fn words(s: &str) -> Vec<String> {
    fold(s).split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

/// A key equal for two names that differ only in accents, case, spacing or
/// the order of their words.
#[must_use]
pub fn name_key(given: &str, family: &str) -> String {
    let mut w = words(given);
    w.extend(words(family));
    w.sort();
    w.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_case_and_order_fold_away() {
        assert_eq!(fold("TRAORÉ"), "traore");
        assert_eq!(fold("Kéïta Çà"), "keita ca");
        assert_eq!(words("  Aminata   TRAORÉ-Diallo "), ["aminata", "traore", "diallo"]);
        assert_eq!(name_key("Aminata", "TRAORÉ"), name_key("traore", "aminata"));
        assert_ne!(name_key("Aminata", "Traoré"), name_key("Awa", "Traoré"));
    }
}
