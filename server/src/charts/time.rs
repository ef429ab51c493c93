//! UTC calendar arithmetic for the chart windows, and RFC 3339 parsing of
//! play start times.
//!
//! - A day is `ms / 86_400_000`: day 0 is 1970-01-01 (a Thursday).
//! - A chart week runs Friday 00:00:00.000 UTC to Thursday 23:59:59.999 UTC,
//!   as Spotify's weekly charts do. Week `w` covers days `7w - 6 ..= 7w`, so
//!   week 0 is the lone Thursday 1970-01-01 and week 1 starts on Friday
//!   1970-01-02; the week of day `d` is `(d + 6) / 7`.
//!
//! **Invariant:** both indices are pure functions of the timestamp, so the
//! aggregator, the ingest check and the tests agree on every boundary.

/// Milliseconds in a UTC day (UTC has no leap seconds in UNIX time).
pub const DAY_MS: u64 = 86_400_000;

/// The UTC day index of `ms` since the epoch.
pub fn day_of(ms: u64) -> u32 {
    // u32 days reach the year 11 million; later timestamps saturate.
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// The chart week (Friday to Thursday) holding `day`.
pub fn week_of_day(day: u32) -> u32 {
    day.saturating_add(6) / 7
}

/// The chart week holding `ms`.
pub fn week_of(ms: u64) -> u32 {
    week_of_day(day_of(ms))
}

/// The first day (a Friday, except week 0) of chart week `week`.
pub fn first_day_of_week(week: u32) -> u32 {
    (week.saturating_mul(7)).saturating_sub(6)
}

/// Days since the epoch of the civil date (proleptic Gregorian), for any
/// year >= 1970 this module accepts (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            if leap {
                29
            } else {
                28
            }
        }
    }
}

/// Parses an RFC 3339 date-time (`2026-12-03T08:15:00Z`,
/// `2026-12-03t08:15:00.250+01:00`) to milliseconds since the epoch.
/// Fractions beyond milliseconds are truncated; times before 1970 and leap
/// seconds (`:60`) are refused.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, String> {
    let b = s.as_bytes();
    let bad = || format!("{:?} is not an RFC 3339 date-time", truncate(s));
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<u32, String> {
        let part = &b[from..to];
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let year = i64::from(num(0, 4)?);
    let (month, day) = (num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(bad());
    }
    let mut at = 19;
    let mut millis = 0u64;
    if b[at] == b'.' {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            if at - start < 3 {
                millis = millis * 10 + u64::from(b[at] - b'0');
            }
            at += 1;
        }
        let digits = at - start;
        if digits == 0 {
            return Err(bad());
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_s: i64 = match b.get(at..) {
        Some([b'Z' | b'z']) => 0,
        Some([sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]) => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let oh = i64::from(digits[0] - b'0') * 10 + i64::from(digits[1] - b'0');
            let om = i64::from(digits[2] - b'0') * 10 + i64::from(digits[3] - b'0');
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let v = oh * 3600 + om * 60;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_s;
    if secs < 0 {
        return Err(format!("{:?} is before 1970", truncate(s)));
    }
    // secs is non-negative and below 10^4 years of seconds.
    Ok(secs.unsigned_abs() * 1000 + millis)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_weeks_split_at_midnight_and_friday() {
        // 2026-12-03 is a Thursday; 2026-12-04 a Friday.
        let thu_end = parse_rfc3339_ms("2026-12-03T23:59:59.999Z").unwrap();
        let fri_start = parse_rfc3339_ms("2026-12-04T00:00:00Z").unwrap();
        assert_eq!(fri_start - thu_end, 1);
        assert_eq!(day_of(thu_end) + 1, day_of(fri_start));
        assert_eq!(week_of(thu_end) + 1, week_of(fri_start));
        // Friday to the next Thursday is one week.
        let next_thu = parse_rfc3339_ms("2026-12-10T23:59:59Z").unwrap();
        assert_eq!(week_of(next_thu), week_of(fri_start));
        assert_eq!(first_day_of_week(week_of(fri_start)), day_of(fri_start));
        assert_eq!(week_of(0), 0);
        assert_eq!(week_of(DAY_MS), 1);
        assert_eq!(first_day_of_week(1), 1);
    }

    #[test]
    fn rfc3339_table() {
        let cases: [(&str, Option<u64>); 10] = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-01T00:00:01.5Z", Some(1500)),
            ("1970-01-01T01:00:00+01:00", Some(0)),
            ("1970-01-01T00:00:00.123456-00:01", Some(60_123)),
            ("2000-02-29T12:00:00z", Some(951_825_600_000)),
            ("2001-02-29T12:00:00Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("2026-12-03T24:00:00Z", None),
            ("2026-12-03T10:00:00", None),
            ("2026-12-03T10:00:00.Z", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_rfc3339_ms(input).ok(), want, "{input}");
        }
        assert_eq!(
            parse_rfc3339_ms("2026-12-03T00:00:00Z").unwrap() % DAY_MS,
            0
        );
    }
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds
/// (`2026-12-03T08:15:00.250Z`).
pub fn format_rfc3339_ms(ms: u64) -> String {
    let days = i64::try_from(ms / DAY_MS).unwrap_or(i64::MAX / 2);
    let rem = ms % DAY_MS;
    // Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn format_round_trips() {
        for s in [
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T12:34:56.789Z",
            "2026-12-03T23:59:59.999Z",
            "2100-03-01T00:00:00.001Z",
        ] {
            assert_eq!(format_rfc3339_ms(parse_rfc3339_ms(s).unwrap()), s);
        }
    }
}
