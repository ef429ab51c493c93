//! The response plan for a blob request: what status and which bytes, from
//! the method, the request headers and the representation's validators and
//! length. Pure, so it is unit-tested and fuzzed without a server.
//!
//! Order (RFC 9110 §13.2.2, then §14.2): preconditions first (412 / 304 win
//! over any Range, satisfiable or not); then Range, on GET only (HEAD and
//! other methods ignore it, §14.2: "A server MUST ignore a Range header field
//! received with a request method that is unrecognized or for which range
//! handling is not defined", and HEAD mirrors GET's 200), gated by
//! `If-Range`; several `Range` field lines are an invalid field: ignored.
//!
//! **Invariant:** a `Partial` range or every `Multipart` range is non-empty
//! and within `0..length_bytes` (see [`super::range`]).

use std::ops::Range;

use ::http::header::{self, HeaderMap};
use ::http::Method;

use super::precondition::{self, Precondition, Validators};
use super::range::{self, RangeSet};

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole representation (HEAD: its headers only).
    Full,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
    /// 206 with one range.
    Partial(Range<u64>),
    /// 206 `multipart/byteranges` with these sorted, disjoint ranges.
    Multipart(Vec<Range<u64>>),
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Decide the response to `method` with `headers` for a representation of
/// `length_bytes` with validators `v`.
pub fn plan(method: &Method, headers: &HeaderMap, v: &Validators<'_>, length_bytes: u64) -> Plan {
    match precondition::evaluate(method, headers, v) {
        Precondition::Proceed => {}
        Precondition::NotModified => return Plan::NotModified,
        Precondition::Failed => return Plan::PreconditionFailed,
    }
    if method != Method::GET {
        return Plan::Full;
    }
    let mut ranges = headers.get_all(header::RANGE).iter();
    let Some(range_value) = ranges.next() else {
        return Plan::Full;
    };
    if ranges.next().is_some() {
        return Plan::Full;
    }
    let mut if_range = headers.get_all(header::IF_RANGE).iter();
    if let Some(value) = if_range.next() {
        if if_range.next().is_some() || !precondition::if_range_holds(value.as_bytes(), v) {
            return Plan::Full;
        }
    }
    match range::evaluate(range_value.as_bytes(), length_bytes) {
        RangeSet::Ignore => Plan::Full,
        RangeSet::Unsatisfiable => Plan::Unsatisfiable,
        RangeSet::Single(r) => Plan::Partial(r),
        RangeSet::Multi(rs) => Plan::Multipart(rs),
    }
}

/// Panic unless `p` keeps the invariants above; for tests and fuzzing.
pub fn assert_plan_invariants(p: &Plan, length_bytes: u64) {
    let ok = |r: &Range<u64>| r.start < r.end && r.end <= length_bytes;
    match p {
        Plan::Partial(r) => assert!(ok(r), "bad range {r:?} for length {length_bytes}"),
        Plan::Multipart(rs) => {
            assert!(
                (2..=range::MAX_RANGES_COALESCED).contains(&rs.len()),
                "{} ranges",
                rs.len()
            );
            for r in rs {
                assert!(ok(r), "bad range {r:?} for length {length_bytes}");
            }
            for w in rs.windows(2) {
                assert!(w[0].end < w[1].start, "not sorted and disjoint: {rs:?}");
            }
        }
        Plan::Unsatisfiable => assert!(length_bytes > 0, "416 for an empty representation"),
        Plan::Full | Plan::NotModified | Plan::PreconditionFailed => {}
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/range_header.rs`, replayed by
/// `server/tests/fuzz_replay_range.rs`): decode `data` into a length, a
/// method and request fields, plan the response and check every invariant.
/// Panics on a violation; never on any input otherwise.
///
/// Layout of `data`: 8 bytes little-endian length (reduced below 4096 unless
/// the lowest bit of the first byte is set, so small lengths are common),
/// one method byte (even: GET, odd: HEAD), then lines separated by `\n`:
/// `Range`, `If-Range`, `If-Match`, `If-None-Match`, `If-Modified-Since`,
/// `If-Unmodified-Since`; an empty line sends no field, a line that is no
/// valid header value is sent only to the raw Range parser.
pub fn fuzz_range_input(data: &[u8]) {
    let (len_bytes, rest) = data.split_at(data.len().min(8));
    let mut raw = [0u8; 8];
    raw[..len_bytes.len()].copy_from_slice(len_bytes);
    let mut length_bytes = u64::from_le_bytes(raw);
    if raw[0] & 1 == 0 {
        length_bytes %= 4096;
    }
    let (method, rest) = match rest.split_first() {
        Some((m, rest)) if m % 2 == 1 => (Method::HEAD, rest),
        Some((_, rest)) => (Method::GET, rest),
        None => (Method::GET, rest),
    };
    let names = [
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ];
    let mut headers = HeaderMap::new();
    let mut lines = rest.split(|&b| b == b'\n');
    let raw_range = lines.next().unwrap_or_default();
    for (name, line) in names.iter().zip(std::iter::once(raw_range).chain(lines)) {
        if line.is_empty() {
            continue;
        }
        if let Ok(value) = ::http::HeaderValue::from_bytes(line) {
            headers.append(name.clone(), value);
        }
    }

    // The raw parser on arbitrary bytes.
    let set = range::evaluate(raw_range, length_bytes);
    let as_plan = match &set {
        RangeSet::Ignore => Plan::Full,
        RangeSet::Unsatisfiable => Plan::Unsatisfiable,
        RangeSet::Single(r) => Plan::Partial(r.clone()),
        RangeSet::Multi(rs) => Plan::Multipart(rs.clone()),
    };
    assert_plan_invariants(&as_plan, length_bytes);
    // The unit is case-insensitive: upper-casing it changes nothing.
    if raw_range.len() >= 5 && raw_range[..5].eq_ignore_ascii_case(b"bytes") {
        let mut upper = raw_range.to_vec();
        upper[..5].make_ascii_uppercase();
        assert_eq!(
            range::evaluate(&upper, length_bytes),
            set,
            "unit case changed the result"
        );
    }

    let etag_opaque = [b'a'; 64];
    let v = Validators {
        etag_opaque: &etag_opaque,
        last_modified_s: 1_704_164_645,
    };
    let p = plan(&method, &headers, &v, length_bytes);
    assert_plan_invariants(&p, length_bytes);
    if method == Method::HEAD {
        assert!(
            matches!(p, Plan::Full | Plan::NotModified | Plan::PreconditionFailed),
            "HEAD must ignore Range, got {p:?}"
        );
    }
    // Without conditional fields, the plan is exactly the parser's verdict.
    if headers.len() == usize::from(headers.contains_key(header::RANGE)) && method == Method::GET {
        if headers.contains_key(header::RANGE) {
            assert_eq!(p, as_plan, "plan disagrees with the Range parser");
        } else {
            assert_eq!(p, Plan::Full);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    const TAG: &[u8] = b"abc123";
    const LM: u64 = 1_704_164_645;
    const LM_DATE: &str = "Tue, 02 Jan 2024 03:04:05 GMT";
    const LATER: &str = "Tue, 02 Jan 2024 03:04:06 GMT";
    const EARLIER: &str = "Tue, 02 Jan 2024 03:04:04 GMT";

    #[track_caller]
    fn check(method: Method, fields: &[(&str, &str)], length_bytes: u64, expected: Plan) {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let v = Validators {
            etag_opaque: TAG,
            last_modified_s: LM,
        };
        let got = plan(&method, &h, &v, length_bytes);
        assert_plan_invariants(&got, length_bytes);
        assert_eq!(got, expected, "{method} {fields:?} len {length_bytes}");
    }

    /// Method, request fields, representation length, expected plan.
    type Row = (Method, &'static [(&'static str, &'static str)], u64, Plan);

    #[test]
    fn plan_table() {
        use Method as M;
        use Plan::*;
        let table: &[Row] = &[
            (M::GET, &[], 100, Full),
            (M::HEAD, &[], 100, Full),
            (M::GET, &[("range", "bytes=0-9")], 100, Partial(0..10)),
            // HEAD and other methods ignore Range.
            (M::HEAD, &[("range", "bytes=0-9")], 100, Full),
            (M::POST, &[("range", "bytes=0-9")], 100, Full),
            (M::HEAD, &[("range", "bytes=500-")], 100, Full),
            (M::GET, &[("range", "bytes=500-")], 100, Unsatisfiable),
            (
                M::GET,
                &[("range", "bytes=0-1,5-6")],
                100,
                Multipart(vec![0..2, 5..7]),
            ),
            // Two Range lines: invalid, ignored.
            (
                M::GET,
                &[("range", "bytes=0-1"), ("range", "bytes=5-6")],
                100,
                Full,
            ),
            // 304 wins over a Range, satisfiable or not.
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-none-match", "\"abc123\"")],
                100,
                NotModified,
            ),
            (
                M::GET,
                &[("range", "bytes=500-"), ("if-none-match", "*")],
                100,
                NotModified,
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-modified-since", LM_DATE)],
                100,
                NotModified,
            ),
            (
                M::HEAD,
                &[("range", "bytes=0-9"), ("if-none-match", "\"abc123\"")],
                100,
                NotModified,
            ),
            // 412 wins over a Range too.
            (
                M::GET,
                &[("range", "bytes=500-"), ("if-match", "\"zzz\"")],
                100,
                PreconditionFailed,
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-unmodified-since", EARLIER)],
                100,
                PreconditionFailed,
            ),
            // If-Range: strong tag or exact date honours the Range.
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", "\"abc123\"")],
                100,
                Partial(0..10),
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", LM_DATE)],
                100,
                Partial(0..10),
            ),
            (
                M::GET,
                &[("range", "bytes=500-"), ("if-range", "\"abc123\"")],
                100,
                Unsatisfiable,
            ),
            // ... anything else sends the whole representation.
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", "W/\"abc123\"")],
                100,
                Full,
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
                100,
                Full,
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", LATER)],
                100,
                Full,
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", EARLIER)],
                100,
                Full,
            ),
            (
                M::GET,
                &[("range", "bytes=0-9"), ("if-range", "garbage")],
                100,
                Full,
            ),
            (
                M::GET,
                &[
                    ("range", "bytes=0-9"),
                    ("if-range", "\"abc123\""),
                    ("if-range", "\"abc123\""),
                ],
                100,
                Full,
            ),
            // If-Range without Range is ignored.
            (M::GET, &[("if-range", "\"old\"")], 100, Full),
            // Empty representation: any Range is ignored.
            (M::GET, &[("range", "bytes=0-")], 0, Full),
            (M::GET, &[("range", "bytes=-0")], 0, Full),
            (M::GET, &[("if-none-match", "\"abc123\"")], 0, NotModified),
        ];
        for (m, f, len, want) in table {
            check(m.clone(), f, *len, want.clone());
        }
    }
}
