//! Ten million generated play events through the same path the server
//! takes (check, track lookup, dedupe against the log, record encode and
//! decode, the aggregation core, pruning and dirty draining as the worker
//! does), compared with a brute-force count written independently here:
//! every window (day, week, all, and the previous day and week behind the
//! rank changes), every group (global, each kind, each genre, each genre
//! and kind), at three moments.
//!
//! The stream: Zipf(1.1) track popularity over 20 000 tracks in 6 genres
//! spelt several ways, 300 000 listeners plus 50 heavy repeaters who hit
//! the per-day cap, 30% of plays under 30 s, 3% re-sent duplicates, about
//! 1% too old and 1% in the future, and lateness up to a day.
//!
//! `CHARTS_TEST_EVENTS` overrides the count (default 10 000 000).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use spindle_server::charts::core::{ChartCore, CoreConfig, DirtyValue};
use spindle_server::charts::event::{
    check_shape, to_record, PlayInput, PlayRecord, Policy, StartedAt, TrackAttrs, PLAY_KEY_BYTES,
};
use spindle_server::charts::genre::genre_key;
use spindle_server::charts::snapshot::{Label, Snapshot, Window};
use spindle_server::track::Kind;

const TRACKS: usize = 20_000;
const LISTENERS: u64 = 300_000;
const HEAVY: u64 = 50;
const CAP: u32 = 5;
const DAY: u64 = 86_400_000;
/// 2026-11-25 18:00 UTC, a Wednesday; the run spans ten days.
const START_MS: u64 = 1_795_629_600_000;
const SPAN_MS: u64 = 10 * DAY;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const GENRES: [&[&str]; 6] = [
    &["Hip Hop", "hip  hop", "HIP-HOP"],
    &["Électronique", "electronique"],
    &["Rock", "rock "],
    &["Jazz"],
    &["Pop", "POP"],
    &["Folk", "fólk"],
];

struct GenTrack {
    id: u128,
    hex: String,
    genre: usize,
    kind: Kind,
    attrs: TrackAttrs,
}

fn make_tracks(rng: &mut Rng) -> Vec<GenTrack> {
    (0..TRACKS)
        .map(|n| {
            let id = (u128::from(rng.next()) << 64) | n as u128;
            let genre = rng.below(GENRES.len() as u64) as usize;
            let variants = GENRES[genre];
            let display = variants[rng.below(variants.len() as u64) as usize];
            let kind = match rng.below(20) {
                0..=15 => Kind::Song,
                16..=18 => Kind::Podcast,
                _ => Kind::Story,
            };
            let duration_ms = match rng.below(10) {
                0 => Some(20_000),
                1..=2 => None,
                _ => Some(120_000 + rng.below(200_000)),
            };
            GenTrack {
                id,
                hex: format!("{id:032x}"),
                genre,
                kind,
                attrs: TrackAttrs {
                    kind,
                    genre: Some(display.to_owned()),
                    duration_ms,
                },
            }
        })
        .collect()
}

/// Cumulative Zipf(1.1) weights over track ranks.
fn zipf_table() -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=TRACKS)
        .map(|r| {
            acc += 1.0 / (r as f64).powf(1.1);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

#[derive(Clone)]
struct GenEvent {
    listener: u64,
    track: usize,
    started_at_ms: u64,
    ms_played: u64,
}

/// The brute force: the rules of the issue, written out plainly.
#[derive(Default)]
struct Truth {
    seen: HashMap<u64, HashSet<(u64, usize, u64)>>,
    per_day_listener: HashMap<(u64, u64, usize), u32>,
    day: HashMap<(u64, usize), u64>,
    week: HashMap<(u64, usize), u64>,
    all: HashMap<usize, u64>,
    duplicates: u64,
    refused: u64,
    short: u64,
    capped: u64,
}

/// The first day (a Friday) of the Friday-to-Thursday week holding `day`:
/// 1970-01-01 (day 0) was a Thursday, so Fridays are the days = 1 mod 7.
fn friday_on_or_before(day: u64) -> u64 {
    day - (day + 6) % 7
}

impl Truth {
    fn offer(&mut self, e: &GenEvent, t: &GenTrack, now: u64) {
        if e.started_at_ms > now + 60_000 || e.started_at_ms + DAY < now {
            self.refused += 1;
            return;
        }
        let day = e.started_at_ms / DAY;
        if !self
            .seen
            .entry(day)
            .or_default()
            .insert((e.listener, e.track, e.started_at_ms))
        {
            self.duplicates += 1;
            return;
        }
        let whole = t.attrs.duration_ms.is_some_and(|d| e.ms_played >= d);
        if e.ms_played < 30_000 && !whole {
            self.short += 1;
            return;
        }
        let used = self
            .per_day_listener
            .entry((day, e.listener, e.track))
            .or_insert(0);
        if *used >= CAP {
            self.capped += 1;
            return;
        }
        *used += 1;
        *self.day.entry((day, e.track)).or_insert(0) += 1;
        *self
            .week
            .entry((friday_on_or_before(day), e.track))
            .or_insert(0) += 1;
        *self.all.entry(e.track).or_insert(0) += 1;
    }

    fn forget_before(&mut self, day: u64) {
        self.seen.retain(|d, _| *d + 1 >= day);
        self.per_day_listener.retain(|k, _| k.0 + 1 >= day);
    }

    /// The six period count maps a moment's charts need: (current,
    /// previous) for day, week and all time (all time before today).
    fn periods(&self, now: u64) -> [(HashMap<usize, u64>, HashMap<usize, u64>); 3] {
        let today = now / DAY;
        let this_week = friday_on_or_before(today);
        let t = filter(&self.day, today);
        let before_today = self
            .all
            .iter()
            .map(|(k, v)| (*k, v - t.get(k).copied().unwrap_or(0)))
            .collect();
        [
            (t, filter(&self.day, today - 1)),
            (
                filter(&self.week, this_week),
                filter(&self.week, this_week - 7),
            ),
            (self.all.clone(), before_today),
        ]
    }
}

/// (hex id, streams, previous rank) of the Top 50 of a group.
fn truth_chart(
    tracks: &[GenTrack],
    (cur, prev): &(HashMap<usize, u64>, HashMap<usize, u64>),
    keep: &dyn Fn(&GenTrack) -> bool,
) -> Vec<(String, u64, Option<u32>)> {
    let rank = |c: &HashMap<usize, u64>| -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = c
            .iter()
            .filter(|(k, n)| **n > 0 && keep(&tracks[**k]))
            .map(|(k, n)| (tracks[*k].hex.as_str(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.truncate(50);
        v
    };
    let prev = rank(prev);
    rank(cur)
        .into_iter()
        .map(|(id, n)| {
            let p = prev
                .iter()
                .position(|(pid, _)| *pid == id)
                .map(|p| p as u32 + 1);
            (id.to_owned(), n, p)
        })
        .collect()
}

fn filter(m: &HashMap<(u64, usize), u64>, period: u64) -> HashMap<usize, u64> {
    m.iter()
        .filter(|((p, _), _)| *p == period)
        .map(|((_, t), n)| (*t, *n))
        .collect()
}

fn compare(snap: &Snapshot, truth: &Truth, tracks: &[GenTrack], now: u64) -> usize {
    let mut charts = 0;
    let kinds = [
        None,
        Some(Kind::Song),
        Some(Kind::Podcast),
        Some(Kind::Story),
    ];
    let mut genres: Vec<Option<usize>> = vec![None];
    genres.extend((0..GENRES.len()).map(Some));
    let periods = truth.periods(now);
    for (w, window) in Window::ALL.into_iter().enumerate() {
        for genre in &genres {
            for kind in kinds {
                let keep = |t: &GenTrack| {
                    genre.is_none_or(|g| t.genre == g) && kind.is_none_or(|k| t.kind == k)
                };
                let want = truth_chart(tracks, &periods[w], &keep);
                // Ask with the last spelling, folded as the HTTP layer does.
                let key = genre.map(|g| genre_key(GENRES[g][GENRES[g].len() - 1]));
                let got: Vec<(String, u64, Option<u32>)> = snap
                    .chart(window, key.as_deref(), kind)
                    .map(|c| {
                        c.entries
                            .iter()
                            .enumerate()
                            .map(|(i, e)| {
                                assert_eq!(e.rank as usize, i + 1);
                                (format!("{:032x}", e.track), e.streams, e.previous_rank)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(
                    got, want,
                    "window {window:?} genre {genre:?} kind {kind:?} at {now}"
                );
                charts += 1;
            }
        }
    }
    charts
}

#[test]
fn ten_million_events_match_a_brute_force_count() {
    let total: u64 = std::env::var("CHARTS_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let started = std::time::Instant::now();
    let mut rng = Rng(0x5eed_c4a7_5000_0001);
    let tracks = make_tracks(&mut rng);
    let by_id: HashMap<u128, usize> = tracks.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let cdf = zipf_table();
    let policy = Policy::default();
    let mut core = ChartCore::new(CoreConfig {
        streams_per_listener_track_day_max: CAP,
    });
    let mut truth = Truth::default();
    // The `plays` keyspace stand-in: dedupe keys by day, pruned as the
    // worker prunes it (days before yesterday).
    let mut log: HashMap<u32, HashSet<[u8; PLAY_KEY_BYTES]>> = HashMap::new();
    let mut recent: Vec<GenEvent> = Vec::with_capacity(4096);
    let mut dirty = Vec::new();
    let checkpoints = [total * 2 / 5, total * 3 / 4, total];
    let mut charts_compared = 0;
    let (mut accepted, mut dup_seen) = (0u64, 0u64);
    let mut last_hour = 0;
    let mut input = PlayInput {
        listener_id: String::new(),
        track_id: String::new(),
        ms_played: 0,
        started_at: StartedAt::Ms(0),
        event_id: None,
    };
    for i in 1..=total {
        let now = START_MS + SPAN_MS * i / total;
        let e = if !recent.is_empty() && rng.below(100) < 3 {
            let mut e = recent[rng.below(recent.len() as u64) as usize].clone();
            e.ms_played = rng.below(400_000); // a retry need not repeat it
            e
        } else {
            let heavy = rng.below(1000) < 8;
            let listener = if heavy {
                LISTENERS + rng.below(HEAVY)
            } else {
                rng.below(LISTENERS)
            };
            let track = if heavy {
                rng.below(10) as usize
            } else {
                let u = rng.unit();
                cdf.partition_point(|c| *c < u).min(TRACKS - 1)
            };
            let lag = match rng.below(100) {
                0 => DAY + 1 + rng.below(DAY),                         // too old
                1 => 0u64.wrapping_sub(61_000 + rng.below(3_600_000)), // future
                2..=9 => 3_600_000 + rng.below(DAY - 3_600_000),       // late but fine
                _ => rng.below(600_000),
            };
            let started_at_ms = now.wrapping_sub(lag);
            let ms_played = if rng.below(10) < 3 {
                rng.below(30_000)
            } else if tracks[track].attrs.duration_ms == Some(20_000) && rng.below(2) == 0 {
                20_000
            } else {
                30_000 + rng.below(300_000)
            };
            GenEvent {
                listener,
                track,
                started_at_ms,
                ms_played,
            }
        };
        if recent.len() < 4096 {
            recent.push(e.clone());
        } else {
            recent[rng.below(4096) as usize] = e.clone();
        }
        let t = &tracks[e.track];
        truth.offer(&e, t, now);

        // The server's path (one input reused, so the generator's own
        // allocations do not dominate the run).
        input.listener_id.clear();
        write!(input.listener_id, "listener-{}", e.listener).unwrap();
        input.track_id.clear();
        input.track_id.push_str(&t.hex);
        input.ms_played = e.ms_played;
        input.started_at = StartedAt::Ms(e.started_at_ms);
        if let Ok(checked) = check_shape(&input, now, &policy) {
            let attrs = &tracks[by_id[&checked.track]].attrs;
            let day = u32::from_be_bytes(checked.key[..4].try_into().unwrap());
            if log.entry(day).or_default().insert(checked.key) {
                accepted += 1;
                let bytes = to_record(&input, &checked, attrs, &policy).encode();
                core.apply(&PlayRecord::decode(&bytes).unwrap());
            } else {
                dup_seen += 1;
            }
        }
        // Hourly, what the worker's flush does: prune, persist dirty values.
        let hour = now / 3_600_000;
        if hour != last_hour {
            last_hour = hour;
            let today = (now / DAY) as u32;
            core.prune(today);
            log.retain(|d, _| *d + 1 >= today);
            truth.forget_before(now / DAY);
            dirty.clear();
            core.drain_dirty(&mut dirty);
            assert!(dirty.iter().all(|d| match d {
                DirtyValue::Count { count, .. } => *count > 0,
                DirtyValue::Cap { count, .. } => (1..=CAP as u16).contains(count),
                DirtyValue::Track { .. } => true,
            }));
        }
        if checkpoints.contains(&i) {
            let snap = Snapshot::build(&core, now, i, 50, &mut |_| Label::default());
            charts_compared += compare(&snap, &truth, &tracks, now);
        }
    }
    let stats = core.stats();
    println!(
        "{total} events in {:?}: accepted {accepted}, duplicates {dup_seen}, counted {}, \
         capped {}, short {}, refused {}; {charts_compared} charts compared",
        started.elapsed(),
        stats.counted,
        stats.capped,
        stats.not_stream,
        truth.refused
    );
    // The stream exercised every rule, and both sides agree on each.
    assert_eq!(stats.capped, truth.capped);
    assert_eq!(stats.not_stream, truth.short);
    assert_eq!(dup_seen, truth.duplicates);
    assert_eq!(stats.too_late, 0);
    assert!(truth.capped > 0 && truth.short > 0 && truth.duplicates > 0 && truth.refused > 0);
    assert_eq!(charts_compared, 3 * 3 * 7 * 4);
}
