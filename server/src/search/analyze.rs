//! Turning text into search terms, the same way for documents and queries.
//!
//! Text is folded first ([`crate::catalog::fold`]: case, diacritics, `ł`,
//! `ø`, `œ`...). Then, for documents:
//! - a *chunk* is a run between whitespace; its *parts* are the runs of
//!   letters and digits between punctuation. Every part is a term, and a
//!   chunk of several parts also gives its parts joined: "ac/dc" gives `ac`,
//!   `dc`, `acdc`; "T.N.T." gives `t`, `n`, `t`, `tnt`; "elvish-theme" gives
//!   `elvish`, `theme`, `elvishtheme`;
//! - consecutive one-letter chunks are joined too ("T N T" gives `tnt`);
//! - CJK text (Han, kana, Hangul), written without spaces, gives every
//!   character (unigram) and every pair of neighbours (bigram), so a single
//!   character finds a title with it anywhere;
//! - every non-CJK term also gives its prefixes (up to
//!   [`PREFIX_CHARS_MAX`]) for the prefix field, so typing "elvi" is one term
//!   lookup, not a scan.
//!
//! A query is cut into words the same way; see [`query_words`].

use crate::catalog::fold;

/// Longest prefix indexed, in characters.
pub const PREFIX_CHARS_MAX: usize = 20;
/// Most terms taken from one query (the rest is ignored): bounds query cost.
pub const QUERY_TERMS_MAX: usize = 16;

/// Whether `c` belongs to a script written without spaces between words.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F) // Extensions B-F, compatibility supplement
}

/// One piece of folded text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// A whitespace-separated chunk of letters/digits, cut at punctuation.
    Chunk(Vec<String>),
    /// A run of CJK characters.
    Cjk(Vec<char>),
}

fn pieces(text: &str) -> Vec<Piece> {
    let folded = fold(text);
    let mut out = Vec::new();
    let mut parts: Vec<String> = Vec::new();
    let mut part = String::new();
    let mut cjk: Vec<char> = Vec::new();
    let flush_part = |part: &mut String, parts: &mut Vec<String>| {
        if !part.is_empty() {
            parts.push(std::mem::take(part));
        }
    };
    let flush_chunk = |parts: &mut Vec<String>, out: &mut Vec<Piece>| {
        if !parts.is_empty() {
            out.push(Piece::Chunk(std::mem::take(parts)));
        }
    };
    for c in folded.chars() {
        if is_cjk(c) {
            flush_part(&mut part, &mut parts);
            flush_chunk(&mut parts, &mut out);
            cjk.push(c);
            continue;
        }
        if !cjk.is_empty() {
            out.push(Piece::Cjk(std::mem::take(&mut cjk)));
        }
        if c.is_alphanumeric() {
            part.push(c);
        } else if c.is_whitespace() {
            flush_part(&mut part, &mut parts);
            flush_chunk(&mut parts, &mut out);
        } else {
            flush_part(&mut part, &mut parts);
        }
    }
    flush_part(&mut part, &mut parts);
    flush_chunk(&mut parts, &mut out);
    if !cjk.is_empty() {
        out.push(Piece::Cjk(cjk));
    }
    out
}

/// Terms of a document field: `(exact terms, prefix terms)`.
pub fn document_terms(text: &str) -> (Vec<String>, Vec<String>) {
    let mut exact: Vec<String> = Vec::new();
    let mut letters = String::new();
    let mut letters_run = 0usize;
    let flush_letters = |letters: &mut String, run: &mut usize, exact: &mut Vec<String>| {
        if *run >= 2 {
            exact.push(letters.clone());
        }
        letters.clear();
        *run = 0;
    };
    for piece in pieces(text) {
        match piece {
            Piece::Chunk(parts) => {
                if parts.len() == 1 && parts[0].chars().count() == 1 {
                    letters.push_str(&parts[0]);
                    letters_run += 1;
                } else {
                    flush_letters(&mut letters, &mut letters_run, &mut exact);
                }
                if parts.len() > 1 {
                    exact.push(parts.concat());
                }
                exact.extend(parts);
            }
            Piece::Cjk(chars) => {
                flush_letters(&mut letters, &mut letters_run, &mut exact);
                for (i, c) in chars.iter().enumerate() {
                    exact.push(c.to_string());
                    if let Some(next) = chars.get(i + 1) {
                        exact.push([*c, *next].iter().collect());
                    }
                }
            }
        }
    }
    flush_letters(&mut letters, &mut letters_run, &mut exact);
    let mut prefixes = Vec::new();
    for term in &exact {
        let chars: Vec<char> = term.chars().collect();
        if chars.iter().any(|&c| is_cjk(c)) {
            continue;
        }
        for n in 1..=chars.len().min(PREFIX_CHARS_MAX) {
            prefixes.push(chars[..n].iter().collect());
        }
    }
    exact.sort();
    exact.dedup();
    prefixes.sort();
    prefixes.dedup();
    (exact, prefixes)
}

/// One query term and how it may match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTerm {
    pub text: String,
    /// Edits allowed for a typo match: 0 below 4 letters, 1 from 4, 2 from 8;
    /// always 0 for CJK.
    pub fuzzy_distance: u8,
    /// Whether the term may match as a prefix (not for CJK: unigrams do it).
    pub prefix: bool,
}

/// A query word: it matches when any one alternative matches, and an
/// alternative matches when all its terms do. "ac/dc" has the alternatives
/// `[acdc]` and `[ac, dc]`.
pub type QueryWord = Vec<Vec<QueryTerm>>;

fn query_term(text: String) -> QueryTerm {
    let cjk = text.chars().any(is_cjk);
    let letters = text.chars().count();
    let fuzzy_distance = match letters {
        _ if cjk => 0,
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    };
    QueryTerm {
        text,
        fuzzy_distance,
        prefix: !cjk,
    }
}

/// The words of a query (at most [`QUERY_TERMS_MAX`] terms in all).
pub fn query_words(query: &str) -> Vec<QueryWord> {
    let mut out: Vec<QueryWord> = Vec::new();
    let mut budget = QUERY_TERMS_MAX;
    for piece in pieces(query) {
        let word: QueryWord = match piece {
            Piece::Chunk(parts) if parts.len() == 1 => {
                vec![parts.into_iter().map(query_term).collect()]
            }
            Piece::Chunk(parts) => vec![
                vec![query_term(parts.concat())],
                parts.into_iter().map(query_term).collect(),
            ],
            Piece::Cjk(chars) if chars.len() == 1 => vec![vec![query_term(chars[0].to_string())]],
            Piece::Cjk(chars) => vec![chars
                .windows(2)
                .map(|w| query_term(w.iter().collect()))
                .collect()],
        };
        let cost: usize = word.iter().map(Vec::len).sum();
        if cost > budget {
            break;
        }
        budget -= cost;
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(text: &str) -> Vec<String> {
        document_terms(text).0
    }

    #[test]
    fn punctuation_gives_parts_and_joined_forms() {
        let t = exact("AC/DC Tribute Orchestra");
        for want in ["ac", "dc", "acdc", "tribute", "orchestra"] {
            assert!(t.contains(&want.to_string()), "{want} in {t:?}");
        }
        assert!(exact("T.N.T.").contains(&"tnt".to_string()));
        assert!(exact("T N T").contains(&"tnt".to_string()));
        let h = exact("Jean-Michel Jarre");
        for want in ["jean", "michel", "jeanmichel", "jarre"] {
            assert!(h.contains(&want.to_string()));
        }
    }

    #[test]
    fn cjk_gives_unigrams_and_bigrams_without_prefixes() {
        let (t, p) = document_terms("春风十里");
        for want in ["春", "风", "十", "里", "春风", "风十", "十里"] {
            assert!(t.contains(&want.to_string()), "{want} in {t:?}");
        }
        assert!(p.is_empty());
        let (_, p) = document_terms("Elvish");
        assert_eq!(p, vec!["e", "el", "elv", "elvi", "elvis", "elvish"]);
    }

    #[test]
    fn query_words_and_fuzziness() {
        let w = query_words("ac/dc orchetsral 风");
        assert_eq!(w.len(), 3);
        assert_eq!(w[0][0][0].text, "acdc");
        assert_eq!(w[0][1].len(), 2);
        assert_eq!(w[1][0][0].fuzzy_distance, 2);
        assert_eq!(w[2][0][0].text, "风");
        assert!(!w[2][0][0].prefix);
        assert_eq!(query_words("abc")[0][0][0].fuzzy_distance, 0);
        assert_eq!(query_words("abcd")[0][0][0].fuzzy_distance, 1);
        assert_eq!(query_words("Dvořák")[0][0][0].text, "dvorak");
        assert!(query_words("  ").is_empty());
        let long = "a ".repeat(100);
        assert_eq!(query_words(&long).len(), QUERY_TERMS_MAX);
    }
}
