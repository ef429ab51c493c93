//! Conditional requests (RFC 9110 §13): `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since` and `If-Range`, evaluated
//! against a representation's validators.
//!
//! Pure functions over header bytes. The order is §13.2.2's:
//! 1. `If-Match` present: false (no listed tag matches by *strong*
//!    comparison, `*` always matches) gives 412.
//! 2. Else `If-Unmodified-Since` (a valid date): modified after it gives 412.
//! 3. `If-None-Match` present: true for a listed tag matching by *weak*
//!    comparison, or `*`: 304 for GET/HEAD, 412 for other methods.
//! 4. Else (GET/HEAD only) `If-Modified-Since` (a valid date): not modified
//!    since it gives 304.
//! 5. Only then Range, gated by `If-Range` (see [`if_range_holds`]).
//!
//! Invalid dates, and dates given as several field lines, are ignored
//! (§13.1.3, §13.1.4: "A recipient MUST ignore ... if the received field value
//! is not a valid HTTP-date"). An entity-tag list is read up to its first
//! syntax error; what follows is disregarded, so a garbled `If-Match` fails
//! (412, the safe side) and a garbled `If-None-Match` does not match.
//!
//! **Invariant:** our own entity tag is strong (a blob's content id), so
//! strong comparison reduces to "the listed tag is not `W/` and its opaque
//! part equals ours", weak comparison to "the opaque parts are equal".

use ::http::header::{self, GetAll, HeaderMap, HeaderValue};
use ::http::Method;

use super::range::trim_ows;

/// The validators of a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validators<'a> {
    /// The entity tag's opaque part, without quotes (`"` + this + `"` is the
    /// `ETag`); always a strong tag.
    pub etag_opaque: &'a [u8],
    /// `Last-Modified` in whole seconds since the Unix epoch.
    pub last_modified_s: u64,
}

/// The outcome of steps 1-4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// All conditions hold (or none were sent): go on to Range.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// Evaluate `If-Match`, `If-Unmodified-Since`, `If-None-Match` and
/// `If-Modified-Since` in the RFC's order.
pub fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators<'_>) -> Precondition {
    let is_get_or_head = method == Method::GET || method == Method::HEAD;
    let if_match = headers.get_all(header::IF_MATCH);
    if if_match.iter().next().is_some() {
        if !tag_list_matches(&if_match, v.etag_opaque, Comparison::Strong) {
            return Precondition::Failed;
        }
    } else if let Some(date_s) = single_date(headers.get_all(header::IF_UNMODIFIED_SINCE)) {
        if v.last_modified_s > date_s {
            return Precondition::Failed;
        }
    }
    let if_none_match = headers.get_all(header::IF_NONE_MATCH);
    if if_none_match.iter().next().is_some() {
        if tag_list_matches(&if_none_match, v.etag_opaque, Comparison::Weak) {
            return if is_get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if is_get_or_head {
        if let Some(date_s) = single_date(headers.get_all(header::IF_MODIFIED_SINCE)) {
            if v.last_modified_s <= date_s {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// Whether an `If-Range` field value lets the Range apply (§13.1.5): an
/// entity tag matching ours by strong comparison, or an HTTP-date exactly
/// equal to `Last-Modified`. Anything else (a weak or different tag, another
/// date, garbage) means "send the whole representation".
pub fn if_range_holds(value: &[u8], v: &Validators<'_>) -> bool {
    let value = trim_ows(value);
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        let mut tags = EntityTags::new(value);
        let Some(tag) = tags.next() else {
            return false;
        };
        // Exactly one entity tag, nothing after it.
        return tags.next().is_none() && tags.clean && !tag.weak && tag.opaque == v.etag_opaque;
    }
    parse_date(value) == Some(v.last_modified_s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether any field line of an `If-Match`/`If-None-Match` is `*` or lists a
/// tag matching ours.
fn tag_list_matches(lines: &GetAll<'_, HeaderValue>, ours: &[u8], cmp: Comparison) -> bool {
    lines.iter().any(|line| {
        let line = trim_ows(line.as_bytes());
        line == b"*"
            || EntityTags::new(line)
                .any(|t| t.opaque == ours && (cmp == Comparison::Weak || !t.weak))
    })
}

/// One entity-tag of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a [u8],
}

/// Iterator over `#entity-tag` (RFC 9110 §8.8.3): `[W/] DQUOTE *etagc DQUOTE`
/// separated by commas with optional whitespace, empty elements allowed.
/// Stops at the first syntax error, leaving `clean` false.
struct EntityTags<'a> {
    rest: &'a [u8],
    clean: bool,
}

impl<'a> EntityTags<'a> {
    fn new(value: &'a [u8]) -> Self {
        Self {
            rest: value,
            clean: true,
        }
    }
}

impl<'a> Iterator for EntityTags<'a> {
    type Item = EntityTag<'a>;

    fn next(&mut self) -> Option<EntityTag<'a>> {
        let s = self.rest;
        let start = s
            .iter()
            .position(|&b| !matches!(b, b' ' | b'\t' | b','))
            .unwrap_or(s.len());
        let s = &s[start..];
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let (weak, s) = match s.strip_prefix(b"W/") {
            Some(after) => (true, after),
            None => (false, s),
        };
        let parsed = s.strip_prefix(b"\"").and_then(|after| {
            let close = after.iter().position(|&b| b == b'"')?;
            let opaque = &after[..close];
            let etagc = |b: &u8| *b == 0x21 || (0x23..=0x7e).contains(b) || *b >= 0x80;
            if !opaque.iter().all(etagc) {
                return None;
            }
            let after = &after[close + 1..];
            // The tag must be followed by OWS and then a comma or the end.
            let next = after
                .iter()
                .position(|&b| !matches!(b, b' ' | b'\t'))
                .unwrap_or(after.len());
            match after.get(next) {
                None | Some(b',') => Some((opaque, &after[next..])),
                Some(_) => None,
            }
        });
        match parsed {
            Some((opaque, rest)) => {
                self.rest = rest;
                Some(EntityTag { weak, opaque })
            }
            None => {
                self.rest = &[];
                self.clean = false;
                None
            }
        }
    }
}

/// The one valid HTTP-date of a field sent as a single line, in seconds.
fn single_date(lines: GetAll<'_, HeaderValue>) -> Option<u64> {
    let mut it = lines.iter();
    let first = it.next()?;
    if it.next().is_some() {
        return None;
    }
    parse_date(trim_ows(first.as_bytes()))
}

/// An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms,
/// which recipients must accept) in seconds since the epoch.
pub(crate) fn parse_date(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    let t = httpdate::parse_http_date(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Precondition::{Failed, NotModified, Proceed};

    const TAG: &[u8] = b"abc123";
    /// 2024-01-02 03:04:05 UTC.
    const LM: u64 = 1_704_164_645;
    const LM_DATE: &str = "Tue, 02 Jan 2024 03:04:05 GMT";
    const EARLIER: &str = "Tue, 02 Jan 2024 03:04:04 GMT";
    const LATER: &str = "Tue, 02 Jan 2024 03:04:06 GMT";

    fn v() -> Validators<'static> {
        Validators {
            etag_opaque: TAG,
            last_modified_s: LM,
        }
    }

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[track_caller]
    fn check(method: Method, fields: &[(&str, &str)], expected: Precondition) {
        let got = evaluate(&method, &headers(fields), &v());
        assert_eq!(got, expected, "{method} {fields:?}");
    }

    /// Method, request fields, expected outcome.
    type Row = (
        Method,
        &'static [(&'static str, &'static str)],
        Precondition,
    );

    #[test]
    fn preconditions_table() {
        use Method as M;
        let table: &[Row] = &[
            (M::GET, &[], Proceed),
            // If-Match: strong comparison.
            (M::GET, &[("if-match", "\"abc123\"")], Proceed),
            (M::GET, &[("if-match", "*")], Proceed),
            (M::GET, &[("if-match", "\"x\", \"abc123\"")], Proceed),
            (M::GET, &[("if-match", "\"x\",,\"abc123\" ")], Proceed),
            (
                M::GET,
                &[("if-match", "\"x\""), ("if-match", "\"abc123\"")],
                Proceed,
            ),
            (M::GET, &[("if-match", "W/\"abc123\"")], Failed),
            (M::GET, &[("if-match", "\"abc\"")], Failed),
            (M::GET, &[("if-match", "abc123")], Failed),
            (M::GET, &[("if-match", "\"abc123")], Failed),
            (M::GET, &[("if-match", "")], Failed),
            (M::GET, &[("if-match", "junk, \"abc123\"")], Failed),
            (M::HEAD, &[("if-match", "\"nope\"")], Failed),
            // If-Unmodified-Since, only without If-Match.
            (M::GET, &[("if-unmodified-since", LM_DATE)], Proceed),
            (M::GET, &[("if-unmodified-since", LATER)], Proceed),
            (M::GET, &[("if-unmodified-since", EARLIER)], Failed),
            (M::GET, &[("if-unmodified-since", "yesterday")], Proceed),
            (
                M::GET,
                &[("if-match", "\"abc123\""), ("if-unmodified-since", EARLIER)],
                Proceed,
            ),
            // If-None-Match: weak comparison, 304 on GET/HEAD, 412 otherwise.
            (M::GET, &[("if-none-match", "\"abc123\"")], NotModified),
            (M::GET, &[("if-none-match", "W/\"abc123\"")], NotModified),
            (M::GET, &[("if-none-match", "*")], NotModified),
            (
                M::GET,
                &[("if-none-match", "\"a\", W/\"abc123\"")],
                NotModified,
            ),
            (M::HEAD, &[("if-none-match", "\"abc123\"")], NotModified),
            (M::POST, &[("if-none-match", "\"abc123\"")], Failed),
            (M::GET, &[("if-none-match", "\"other\"")], Proceed),
            (M::GET, &[("if-none-match", "garbage")], Proceed),
            // If-None-Match wins over If-Modified-Since, either way.
            (
                M::GET,
                &[("if-none-match", "\"other\""), ("if-modified-since", LATER)],
                Proceed,
            ),
            // If-Modified-Since: GET/HEAD only, valid single date only.
            (M::GET, &[("if-modified-since", LM_DATE)], NotModified),
            (M::GET, &[("if-modified-since", LATER)], NotModified),
            (M::HEAD, &[("if-modified-since", LATER)], NotModified),
            (M::GET, &[("if-modified-since", EARLIER)], Proceed),
            (M::POST, &[("if-modified-since", LATER)], Proceed),
            (M::GET, &[("if-modified-since", "not a date")], Proceed),
            (
                M::GET,
                &[("if-modified-since", LATER), ("if-modified-since", LATER)],
                Proceed,
            ),
            // Obsolete date forms are accepted.
            (
                M::GET,
                &[("if-modified-since", "Tuesday, 02-Jan-24 03:04:05 GMT")],
                NotModified,
            ),
            (
                M::GET,
                &[("if-modified-since", "Tue Jan  2 03:04:05 2024")],
                NotModified,
            ),
            // 412 from If-Match is decided before If-None-Match.
            (
                M::GET,
                &[("if-match", "\"x\""), ("if-none-match", "\"abc123\"")],
                Failed,
            ),
            (
                M::GET,
                &[("if-match", "\"abc123\""), ("if-none-match", "\"abc123\"")],
                NotModified,
            ),
        ];
        for (m, f, want) in table {
            check(m.clone(), f, *want);
        }
    }

    #[test]
    fn if_range_table() {
        let table: &[(&str, bool)] = &[
            ("\"abc123\"", true),
            (" \"abc123\" ", true),
            ("W/\"abc123\"", false),
            ("\"abc12\"", false),
            ("\"abc123\", \"abc123\"", false),
            ("\"abc123\" junk", false),
            (LM_DATE, true),
            (EARLIER, false),
            (LATER, false),
            ("not a date", false),
            ("", false),
            ("*", false),
        ];
        for (value, want) in table {
            assert_eq!(
                if_range_holds(value.as_bytes(), &v()),
                *want,
                "If-Range: {value:?}"
            );
        }
    }

    #[test]
    fn entity_tag_lists() {
        let tags = |s: &str| -> (Vec<(bool, String)>, bool) {
            let mut it = EntityTags::new(s.as_bytes());
            let v = it
                .by_ref()
                .map(|t| (t.weak, String::from_utf8(t.opaque.to_vec()).unwrap()))
                .collect();
            (v, it.clean)
        };
        assert_eq!(tags(""), (vec![], true));
        assert_eq!(tags("\"\""), (vec![(false, String::new())], true));
        assert_eq!(
            tags(" \"a\" , W/\"b\",\"c,d\""),
            (
                vec![
                    (false, "a".into()),
                    (true, "b".into()),
                    (false, "c,d".into())
                ],
                true
            )
        );
        assert_eq!(tags("\"a\" \"b\""), (vec![], false));
        assert_eq!(tags("\"a\", b"), (vec![(false, "a".into())], false));
        assert_eq!(tags("w/\"a\""), (vec![], false));
        assert_eq!(tags("\"a b\""), (vec![], false));
    }
}
