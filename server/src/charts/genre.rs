//! The genre key charts group by: the catalog's own normaliser, so charts
//! and catalog group genres identically ("Hip  Hop", "hip hop" and "Hip Hóp"
//! chart together). See [`crate::catalog::genre_key`].
//!
//! **Invariant:** the key is idempotent (`genre_key(genre_key(x)) ==
//! genre_key(x)`), and empty exactly when the name has no letter or digit.

pub use crate::catalog::genre_key;

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
