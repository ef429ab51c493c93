//! Parsing and evaluating a `Range` header field (RFC 9110 §14.1-§14.2).
//!
//! Pure functions: bytes of the field value and the representation's length
//! in, a [`RangeSet`] decision out. No allocation unless several ranges
//! survive, and then one bounded `Vec`.
//!
//! Rules, with the RFC's words where they decide a case:
//! - Only the `bytes` unit (case-insensitive) is understood; any other unit
//!   is ignored (§14.2: "A server MUST ignore a Range header field received
//!   with ... a range unit it does not understand") and the full 200 is sent.
//! - A syntactically invalid specifier is ignored as a whole (§14.1.1: "A
//!   ranges-specifier is invalid if it contains any range-spec that is
//!   invalid"), e.g. `bytes=5-3`, `bytes=`, `bytes=a-b`: full 200, never a
//!   206 with nonsense.
//! - `first-last` with `last` past the end is clamped; `first-` runs to the
//!   end; `-suffix` is the last `suffix` bytes, the whole representation when
//!   longer (§14.1.2). A range-spec is satisfiable if its first byte is below
//!   the length, or it is a suffix with a non-zero length (§14.1.1);
//!   unsatisfiable ones are dropped, and when none is left the answer is 416
//!   (`bytes=-0`, `bytes=LEN-`).
//! - Surviving ranges are sorted and overlapping or adjacent ones coalesced
//!   (§14.6 allows coalescing "regardless of the order in which the
//!   corresponding range-spec appeared"). If more than
//!   [`MAX_RANGES_COALESCED`] remain, or the header lists more than
//!   [`MAX_RANGE_SPECS`], the header is ignored (§14.2: "a server MAY ignore
//!   the Range header field"), so a hostile header cannot amplify a response.
//! - An empty representation: a 206 cannot describe zero bytes
//!   (`Content-Range` needs `first <= last`), and the issue asks an empty blob
//!   to answer 200 with an empty body, so any Range on a zero-length
//!   representation is ignored (permitted by §14.2's "MAY ignore") rather
//!   than answered 416 `bytes */0`.
//!
//! **Invariant:** every range in a returned `Single` or `Multi` is non-empty,
//! lies within `0..length`, and a `Multi` holds between 2 and
//! [`MAX_RANGES_COALESCED`] ranges, sorted, neither overlapping nor adjacent.

use std::ops::Range;

/// Most range-specs one header may list before it is ignored outright.
pub const MAX_RANGE_SPECS: usize = 64;

/// Most ranges left after coalescing before the full 200 is sent instead.
pub const MAX_RANGES_COALESCED: usize = 16;

/// What a `Range` header asks of a representation of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeSet {
    /// No usable Range: send the whole representation (200).
    Ignore,
    /// Nothing requested overlaps the representation: 416.
    Unsatisfiable,
    /// One range (206 with `Content-Range`).
    Single(Range<u64>),
    /// Several disjoint ranges, sorted (206 `multipart/byteranges`).
    Multi(Vec<Range<u64>>),
}

/// One syntactically valid range-spec, before it meets the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-` (`last` is `None`) or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-suffix`.
    Suffix(u64),
}

/// Evaluate a `Range` field value against a representation of `length_bytes`.
pub fn evaluate(value: &[u8], length_bytes: u64) -> RangeSet {
    let Some(set) = strip_bytes_unit(trim_ows(value)) else {
        return RangeSet::Ignore;
    };
    if length_bytes == 0 {
        return RangeSet::Ignore;
    }
    // A stack buffer for the common single-range case; spill to a Vec only
    // when a second satisfiable range appears.
    let mut first: Option<Range<u64>> = None;
    let mut rest: Vec<Range<u64>> = Vec::new();
    let mut spec_count = 0usize;
    for element in set.split(|&b| b == b',') {
        let element = trim_ows(element);
        if element.is_empty() {
            // `#rule`: recipients accept empty list elements (RFC 9110 §5.6.1).
            continue;
        }
        spec_count += 1;
        if spec_count > MAX_RANGE_SPECS {
            return RangeSet::Ignore;
        }
        let Some(spec) = parse_spec(element) else {
            return RangeSet::Ignore;
        };
        if let Some(r) = resolve(spec, length_bytes) {
            if first.is_none() {
                first = Some(r);
            } else {
                rest.push(r);
            }
        }
    }
    if spec_count == 0 {
        // `1#range-spec`: an empty set is invalid.
        return RangeSet::Ignore;
    }
    let Some(first) = first else {
        return RangeSet::Unsatisfiable;
    };
    if rest.is_empty() {
        return RangeSet::Single(first);
    }
    rest.push(first);
    coalesce(&mut rest);
    match rest.len() {
        1 => RangeSet::Single(rest[0].clone()),
        n if n > MAX_RANGES_COALESCED => RangeSet::Ignore,
        _ => RangeSet::Multi(rest),
    }
}

/// Sort and merge overlapping or adjacent ranges in place.
fn coalesce(ranges: &mut Vec<Range<u64>>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut out = 0usize;
    for i in 1..ranges.len() {
        if ranges[i].start <= ranges[out].end {
            ranges[out].end = ranges[out].end.max(ranges[i].end);
        } else {
            out += 1;
            ranges[out] = ranges[i].clone();
        }
    }
    ranges.truncate(out + 1);
}

/// The satisfiable byte range a spec selects, or `None` when unsatisfiable.
fn resolve(spec: Spec, length_bytes: u64) -> Option<Range<u64>> {
    debug_assert!(length_bytes > 0);
    match spec {
        Spec::From { first, last } => {
            if first >= length_bytes {
                return None;
            }
            let end = match last {
                Some(last) => last.saturating_add(1).min(length_bytes),
                None => length_bytes,
            };
            Some(first..end)
        }
        Spec::Suffix(0) => None,
        Spec::Suffix(n) => Some(length_bytes.saturating_sub(n)..length_bytes),
    }
}

/// `bytes=` (unit case-insensitive, no whitespace around `=`), returning the
/// range-set after it; `None` for another unit or no `=`.
fn strip_bytes_unit(value: &[u8]) -> Option<&[u8]> {
    let eq = value.iter().position(|&b| b == b'=')?;
    let (unit, rest) = value.split_at(eq);
    if unit.eq_ignore_ascii_case(b"bytes") {
        Some(&rest[1..])
    } else {
        None
    }
}

/// One range-spec: `first-`, `first-last` (last >= first) or `-suffix`.
fn parse_spec(element: &[u8]) -> Option<Spec> {
    let dash = element.iter().position(|&b| b == b'-')?;
    let (first, last) = (&element[..dash], &element[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(parse_digits(last)?));
    }
    let first = parse_digits(first)?;
    if last.is_empty() {
        return Some(Spec::From { first, last: None });
    }
    let last = parse_digits(last)?;
    if last < first {
        return None;
    }
    Some(Spec::From {
        first,
        last: Some(last),
    })
}

/// `1*DIGIT`, saturating at `u64::MAX`: a position past any real length
/// means the same thing however many digits it has.
fn parse_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    Some(n)
}

/// Strip optional whitespace (SP / HTAB) at both ends.
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeSet::{Ignore, Multi, Single, Unsatisfiable};

    #[track_caller]
    fn check(value: &str, length_bytes: u64, expected: RangeSet) {
        let got = evaluate(value.as_bytes(), length_bytes);
        assert_eq!(got, expected, "Range: {value:?} on length {length_bytes}");
    }

    #[test]
    fn single_ranges() {
        let table: &[(&str, u64, RangeSet)] = &[
            ("bytes=0-0", 1000, Single(0..1)),
            ("bytes=0-499", 1000, Single(0..500)),
            ("bytes=500-999", 1000, Single(500..1000)),
            ("bytes=500-", 1000, Single(500..1000)),
            ("bytes=0-", 1000, Single(0..1000)),
            ("bytes=-500", 1000, Single(500..1000)),
            ("bytes=-1", 1000, Single(999..1000)),
            // A suffix longer than the representation is all of it.
            ("bytes=-5000", 1000, Single(0..1000)),
            // An end past the last byte is clamped.
            ("bytes=900-5000", 1000, Single(900..1000)),
            ("bytes=999-999", 1000, Single(999..1000)),
            ("bytes=0-99999999999999999999999", 1000, Single(0..1000)),
            ("bytes=-99999999999999999999999", 1000, Single(0..1000)),
            // Unit is case-insensitive; OWS around elements and the value.
            ("BYTES=0-1", 10, Single(0..2)),
            ("Bytes=0-1", 10, Single(0..2)),
            ("  bytes=0-1  ", 10, Single(0..2)),
            ("bytes= 0-1 ", 10, Single(0..2)),
            ("bytes=0-1,", 10, Single(0..2)),
            ("bytes=,0-1", 10, Single(0..2)),
            ("bytes=0-1,,", 10, Single(0..2)),
            (
                "bytes=0-18446744073709551615",
                u64::MAX,
                Single(0..u64::MAX),
            ),
        ];
        for (v, len, want) in table {
            check(v, *len, want.clone());
        }
    }

    #[test]
    fn unsatisfiable() {
        let table: &[(&str, u64)] = &[
            ("bytes=1000-", 1000),
            ("bytes=1000-1000", 1000),
            ("bytes=5000-6000", 1000),
            ("bytes=-0", 1000),
            ("bytes=-0,1000-", 1000),
            ("bytes=99999999999999999999-", 1000),
        ];
        for (v, len) in table {
            check(v, *len, Unsatisfiable);
        }
    }

    #[test]
    fn ignored_headers() {
        let table: &[(&str, u64)] = &[
            // Unknown units.
            ("items=0-5", 1000),
            ("bites=0-5", 1000),
            ("none", 1000),
            ("", 1000),
            // Malformed syntax.
            ("bytes", 1000),
            ("bytes=", 1000),
            ("bytes= ", 1000),
            ("bytes=,", 1000),
            ("bytes=-", 1000),
            ("bytes=5", 1000),
            ("bytes=5-3", 1000),
            ("bytes=a-b", 1000),
            ("bytes=1-2-3", 1000),
            ("bytes=0x10-20", 1000),
            ("bytes=+1-2", 1000),
            ("bytes=-+1", 1000),
            ("bytes=1 - 2", 1000),
            ("bytes =0-5", 1000),
            ("bytes= =0-5", 1000),
            ("bytes=0-5;6-7", 1000),
            ("bytes=0-1,5-3", 1000),
            ("bytes=0-1,x", 1000),
            ("bytes=0-1,1000-,junk", 1000),
            // Any range on an empty representation: 200 with the empty body.
            ("bytes=0-", 0),
            ("bytes=-5", 0),
            ("bytes=-0", 0),
            ("bytes=0-0", 0),
        ];
        for (v, len) in table {
            check(v, *len, Ignore);
        }
    }

    #[test]
    fn several_ranges() {
        let table: &[(&str, u64, RangeSet)] = &[
            ("bytes=0-9,20-29", 100, Multi(vec![0..10, 20..30])),
            // Sorted regardless of request order.
            ("bytes=20-29,0-9", 100, Multi(vec![0..10, 20..30])),
            ("bytes=-10,0-9", 100, Multi(vec![0..10, 90..100])),
            // Overlapping and adjacent ones coalesce; one left is a plain 206.
            ("bytes=0-9,5-14", 100, Single(0..15)),
            ("bytes=0-9,10-19", 100, Single(0..20)),
            ("bytes=0-9,10-19,30-39", 100, Multi(vec![0..20, 30..40])),
            ("bytes=0-99,10-19", 100, Single(0..100)),
            ("bytes=0-0,0-0,0-0", 100, Single(0..1)),
            ("bytes=50-,-60", 100, Single(40..100)),
            ("bytes=0-9,11-19", 100, Multi(vec![0..10, 11..20])),
            // Unsatisfiable members are dropped.
            ("bytes=0-9,200-300", 100, Single(0..10)),
            ("bytes=-0,0-9,200-,20-29", 100, Multi(vec![0..10, 20..30])),
            ("bytes=200-,300-", 100, Unsatisfiable),
        ];
        for (v, len, want) in table {
            check(v, *len, want.clone());
        }
    }

    #[test]
    fn caps_on_range_count() {
        let specs = |n: u64| {
            let parts: Vec<String> = (0..n).map(|i| format!("{}-{}", i * 10, i * 10)).collect();
            format!("bytes={}", parts.join(","))
        };
        let exactly_cap = specs(MAX_RANGES_COALESCED as u64);
        match evaluate(exactly_cap.as_bytes(), 10_000) {
            Multi(v) => assert_eq!(v.len(), MAX_RANGES_COALESCED),
            other => panic!("{other:?}"),
        }
        check(&specs(MAX_RANGES_COALESCED as u64 + 1), 10_000, Ignore);
        // Many specs that coalesce into one are still refused past the spec cap.
        let same: Vec<&str> = vec!["0-0"; MAX_RANGE_SPECS + 1];
        check(&format!("bytes={}", same.join(",")), 10, Ignore);
        let same: Vec<&str> = vec!["0-0"; MAX_RANGE_SPECS];
        check(&format!("bytes={}", same.join(",")), 10, Single(0..1));
    }

    #[test]
    fn trim_ows_cases() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b" a b\t"), b"a b");
    }
}
