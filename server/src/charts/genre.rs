//! The genre key charts group by: the display name folded for case, accents
//! and spacing, so "Hip  Hop", "hip hop" and "Hip Hóp" chart together.
//!
//! [`genre_key`] is the one function the charts call. It is a local fold
//! until `crate::catalog` exports its normaliser; then it should forward to
//! it so charts and catalog group genres identically.
//!
//! **Invariant:** the key is idempotent (`genre_key(genre_key(x)) ==
//! genre_key(x)`), and empty exactly when the name has no letter or digit.

/// The grouping key of genre display name `display`.
pub fn genre_key(display: &str) -> String {
    let mut out = String::with_capacity(display.len());
    let mut pending_space = false;
    for c in display.chars() {
        if c.is_whitespace() || c == '_' || c == '-' {
            pending_space = !out.is_empty();
            continue;
        }
        if !c.is_alphanumeric() && c != '&' && c != '+' && c != '\'' {
            // Punctuation other than these carries no meaning in a genre
            // name ("R&B" keeps its '&', "Drum'n'Bass" its quotes).
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        for lower in fold_accent(c).to_lowercase() {
            out.push(lower);
        }
    }
    out
}

/// The base letter of a Latin letter with a diacritic (the Latin-1 and
/// Latin Extended-A letters genre names use); others unchanged.
fn fold_accent(c: char) -> char {
    match c {
        'À'..='Å' | 'à'..='å' | 'Ā' | 'ā' | 'Ă' | 'ă' | 'Ą' | 'ą' => 'a',
        'Ç' | 'ç' | 'Ć' | 'ć' | 'Č' | 'č' => 'c',
        'Ď' | 'ď' | 'Đ' | 'đ' => 'd',
        'È'..='Ë' | 'è'..='ë' | 'Ē' | 'ē' | 'Ė' | 'ė' | 'Ę' | 'ę' | 'Ě' | 'ě' => 'e',
        'Ì'..='Ï' | 'ì'..='ï' | 'Ī' | 'ī' | 'Į' | 'į' | 'İ' | 'ı' => 'i',
        'Ł' | 'ł' | 'Ľ' | 'ľ' => 'l',
        'Ñ' | 'ñ' | 'Ń' | 'ń' | 'Ň' | 'ň' => 'n',
        'Ò'..='Ö' | 'Ø' | 'ò'..='ö' | 'ø' | 'Ō' | 'ō' | 'Ő' | 'ő' => 'o',
        'Ř' | 'ř' => 'r',
        'Ś' | 'ś' | 'Š' | 'š' | 'Ş' | 'ş' => 's',
        'Ť' | 'ť' | 'Ţ' | 'ţ' => 't',
        'Ù'..='Ü' | 'ù'..='ü' | 'Ū' | 'ū' | 'Ů' | 'ů' | 'Ű' | 'ű' => 'u',
        'Ý' | 'ý' | 'ÿ' | 'Ÿ' => 'y',
        'Ź' | 'ź' | 'Ż' | 'ż' | 'Ž' | 'ž' => 'z',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::genre_key;

    #[test]
    fn folds_case_accents_and_spacing() {
        let cases = [
            ("Hip Hop", "hip hop"),
            ("  hip   HOP ", "hip hop"),
            ("Hip Hóp", "hip hop"),
            ("hip-hop", "hip hop"),
            ("Électronique", "electronique"),
            ("R&B", "r&b"),
            ("!!!", ""),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(genre_key(input), want, "{input:?}");
            assert_eq!(genre_key(&genre_key(input)), want, "idempotent {input:?}");
        }
    }
}
