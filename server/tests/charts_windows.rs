//! Window boundaries through the core and the snapshot: 23:59:59 and
//! 00:00:00 UTC fall in different days, Thursday and Friday in different
//! chart weeks, and the previous period feeds the rank change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use spindle_server::charts::core::{ChartCore, CoreConfig, Period};
use spindle_server::charts::event::PlayRecord;
use spindle_server::charts::snapshot::{Label, RankChange, Snapshot, Window};
use spindle_server::charts::time::{day_of, parse_rfc3339_ms, week_of};
use spindle_server::track::Kind;

fn play(core: &mut ChartCore, track: u128, listener: u64, at: &str) {
    core.apply(&PlayRecord {
        track,
        listener,
        started_at_ms: parse_rfc3339_ms(at).unwrap(),
        ms_played: 45_000,
        is_stream: true,
        kind: Kind::Song,
        genre: "Pop".into(),
    });
}

fn tracks(snap: &Snapshot, window: Window) -> Vec<(u128, u64, RankChange)> {
    snap.chart(window, None, None)
        .map(|c| {
            c.entries
                .iter()
                .map(|e| (e.track, e.streams, e.change()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn midnight_splits_days_and_friday_splits_weeks() {
    // 2026-12-03 is a Thursday.
    let thu_last = "2026-12-03T23:59:59Z";
    let thu_last_ms = "2026-12-03T23:59:59.999Z";
    let fri_first = "2026-12-04T00:00:00Z";
    assert_ne!(
        day_of(parse_rfc3339_ms(thu_last).unwrap()),
        day_of(parse_rfc3339_ms(fri_first).unwrap())
    );
    assert_eq!(
        day_of(parse_rfc3339_ms(thu_last).unwrap()),
        day_of(parse_rfc3339_ms(thu_last_ms).unwrap())
    );
    assert_eq!(
        week_of(parse_rfc3339_ms(thu_last_ms).unwrap()) + 1,
        week_of(parse_rfc3339_ms(fri_first).unwrap())
    );
    // The previous Friday 00:00 starts the Thursday's week.
    assert_eq!(
        week_of(parse_rfc3339_ms("2026-11-27T00:00:00Z").unwrap()),
        week_of(parse_rfc3339_ms(thu_last).unwrap())
    );
    assert_eq!(
        week_of(parse_rfc3339_ms("2026-11-26T23:59:59.999Z").unwrap()) + 1,
        week_of(parse_rfc3339_ms(thu_last).unwrap())
    );

    let mut core = ChartCore::new(CoreConfig::default());
    // Track 1: twice on Thursday's last second. Track 2: once at Friday's
    // first instant, and track 1 once then too.
    play(&mut core, 1, 10, thu_last);
    play(&mut core, 1, 11, thu_last_ms);
    play(&mut core, 2, 10, fri_first);
    play(&mut core, 1, 12, fri_first);
    play(&mut core, 2, 13, fri_first);
    let thu = day_of(parse_rfc3339_ms(thu_last).unwrap());
    assert_eq!(core.count(Period::Day(thu), 1), 2);
    assert_eq!(core.count(Period::Day(thu + 1), 1), 1);
    assert_eq!(core.count(Period::Day(thu + 1), 2), 2);
    let wk = week_of(parse_rfc3339_ms(thu_last).unwrap());
    assert_eq!(core.count(Period::Week(wk), 1), 2);
    assert_eq!(core.count(Period::Week(wk), 2), 0);
    assert_eq!(core.count(Period::Week(wk + 1), 2), 2);

    // Seen from Thursday 23:59:59.999: only Thursday's plays.
    let at_thu = Snapshot::build(
        &core,
        parse_rfc3339_ms(thu_last_ms).unwrap(),
        0,
        50,
        &mut |_| Label::default(),
    );
    assert_eq!(tracks(&at_thu, Window::Day), vec![(1, 2, RankChange::New)]);
    assert_eq!(tracks(&at_thu, Window::Week), vec![(1, 2, RankChange::New)]);
    // Seen from Friday 00:00:00: a new day and a new week; track 1 fell
    // from 1st (yesterday, last week) to 2nd, track 2 is new.
    let at_fri = Snapshot::build(
        &core,
        parse_rfc3339_ms(fri_first).unwrap(),
        0,
        50,
        &mut |_| Label::default(),
    );
    let want = vec![(2, 2, RankChange::New), (1, 1, RankChange::Down(1))];
    assert_eq!(tracks(&at_fri, Window::Day), want);
    assert_eq!(tracks(&at_fri, Window::Week), want);
    // All time: 1 has 3, 2 has 2; before today 1 was first alone.
    assert_eq!(
        tracks(&at_fri, Window::All),
        vec![(1, 3, RankChange::Same), (2, 2, RankChange::New)]
    );
    let c = at_fri.chart(Window::Week, None, None).unwrap();
    assert_eq!(
        c.period_ms,
        Some((
            parse_rfc3339_ms(fri_first).unwrap(),
            parse_rfc3339_ms("2026-12-11T00:00:00Z").unwrap()
        ))
    );
}
