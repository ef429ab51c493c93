//! Text folding shared by the catalog (grouping keys) and search (terms).
//!
//! [`fold`] maps text to a comparison form: Unicode compatibility
//! decomposition (NFKD), combining marks dropped, letters that have no
//! decomposition mapped explicitly (`ł`→`l`, `ø`→`o`, `œ`→`oe`, `æ`→`ae`,
//! `ß`→`ss`, `đ`/`ð`→`d`, `þ`→`th`, `ı`→`i`), then lowercased. So "Dvořák",
//! "DVORAK" and "dvorak" fold alike, and so do "Łódź" and "lodz".
//!
//! **Invariant:** `fold(fold(s)) == fold(s)`; [`genre_key`] is idempotent too,
//! so a key can be passed where a display name is expected.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Letters NFKD leaves alone that readers treat as their base letters.
fn explicit(c: char) -> Option<&'static str> {
    Some(match c {
        'ł' | 'Ł' => "l",
        'ø' | 'Ø' => "o",
        'œ' | 'Œ' => "oe",
        'æ' | 'Æ' => "ae",
        'ß' | 'ẞ' => "ss",
        'đ' | 'Đ' | 'ð' | 'Ð' => "d",
        'þ' | 'Þ' => "th",
        'ı' => "i",
        'ħ' | 'Ħ' => "h",
        'ŧ' | 'Ŧ' => "t",
        // Typographic quotes and dashes fold to their ASCII forms so that
        // punctuation handling sees one kind of each.
        '\u{2018}' | '\u{2019}' | '\u{02BC}' => "'",
        '\u{2010}'..='\u{2015}' => "-",
        _ => return None,
    })
}

/// Case- and diacritic-folded form of `s` (see the module doc).
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        match explicit(c) {
            Some(rep) => out.push_str(rep),
            None => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// The grouping key of a genre (or any display name): folded, every run of
/// characters other than letters, digits, `&` and `+` turned into one space,
/// trimmed. "Hip-Hop", "hip hop" and " HIP  HOP " share the key "hip hop";
/// "R&B" keeps its ampersand; "Électronique" becomes "electronique".
pub fn genre_key(display: &str) -> String {
    let folded = fold(display);
    let mut out = String::with_capacity(folded.len());
    let mut pending_space = false;
    for c in folded.chars() {
        if c.is_alphanumeric() || c == '&' || c == '+' {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.push(c);
        } else {
            pending_space = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_diacritics() {
        let cases = [
            ("Dvořák", "dvorak"),
            ("Cœur", "coeur"),
            ("Łódź", "lodz"),
            ("Dødsfall", "dodsfall"),
            ("Straße", "strasse"),
            ("Ærø", "aero"),
            ("ﬁne", "fine"),
            ("ÉLAN", "elan"),
            ("风景", "风景"),
        ];
        for (input, want) in cases {
            assert_eq!(fold(input), want, "fold({input:?})");
            assert_eq!(fold(&fold(input)), fold(input));
        }
    }

    #[test]
    fn genre_keys_fold_case_accents_and_spacing() {
        let cases = [
            ("Hip-Hop", "hip hop"),
            ("  hip   HOP ", "hip hop"),
            ("hip_hop", "hip hop"),
            ("Électronique", "electronique"),
            ("R&B", "r&b"),
            ("Drum & Bass", "drum & bass"),
            ("", ""),
            ("---", ""),
        ];
        for (input, want) in cases {
            assert_eq!(genre_key(input), want, "genre_key({input:?})");
            assert_eq!(genre_key(&genre_key(input)), genre_key(input));
        }
        assert_eq!(genre_key("Música Clásica"), genre_key("musica clasica"));
    }
}
