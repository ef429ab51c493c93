//! The materialized charts: every Top-N list for every window and group,
//! computed from a [`ChartCore`] at one moment and then read-only, so a
//! query is a hash lookup and a copy of at most N entries.
//!
//! Groups: global, per kind, per genre, per (genre, kind). Windows and the
//! period each entry's rank change is measured against:
//! - `day`: the UTC day of `computed_at`, against the day before;
//! - `week`: the Friday-to-Thursday week, against the week before;
//! - `all`: all time, against all time minus today's counts (the chart as
//!   it stood when today began, late events for earlier days included).
//!
//! Order: streams descending, then track id ascending, so equal counts rank
//! the same way in every run. An entry is `new` when the track was not in
//! the previous period's Top-N of the same group.
//!
//! Building costs O(T log N) per window for T tracks counted in it, with
//! one bounded heap of N per group (memory O(groups * N), not O(T)).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;

use super::core::{ChartCore, NO_GENRE};
use super::time::{first_day_of_week, week_of_day, DAY_MS};
use crate::track::Kind;

/// A chart window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Day,
    Week,
    All,
}

impl Window {
    pub const ALL: [Window; 3] = [Window::Day, Window::Week, Window::All];

    pub fn name(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Week => "week",
            Window::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "day" => Some(Window::Day),
            "week" => Some(Window::Week),
            "all" => Some(Window::All),
            _ => None,
        }
    }
}

/// How an entry moved since the previous period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankChange {
    New,
    Up(u32),
    Down(u32),
    Same,
}

impl fmt::Display for RankChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankChange::New => f.write_str("new"),
            RankChange::Up(n) => write!(f, "up {n}"),
            RankChange::Down(n) => write!(f, "down {n}"),
            RankChange::Same => f.write_str("same"),
        }
    }
}

/// Display fields of a track, looked up when the snapshot is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    pub title: Option<String>,
    pub artist: Option<String>,
}

/// One chart line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartEntry {
    /// 1-based.
    pub rank: u32,
    pub track: u128,
    pub streams: u64,
    pub previous_rank: Option<u32>,
    pub kind: Kind,
    pub genre: String,
    pub label: Arc<Label>,
}

impl ChartEntry {
    pub fn change(&self) -> RankChange {
        match self.previous_rank {
            None => RankChange::New,
            Some(p) if p > self.rank => RankChange::Up(p - self.rank),
            Some(p) if p < self.rank => RankChange::Down(self.rank - p),
            Some(_) => RankChange::Same,
        }
    }
}

/// Which tracks a chart ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Group {
    /// Genre index in the snapshot, `None` for all genres.
    pub genre: Option<u32>,
    pub kind: Option<Kind>,
}

/// One materialized chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub window: Window,
    /// The period counted, `[start, end)` in ms; `None` for all time.
    pub period_ms: Option<(u64, u64)>,
    pub entries: Vec<ChartEntry>,
}

/// Every chart as of `computed_at_ms`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub computed_at_ms: u64,
    /// The last change-feed LSN reflected.
    pub applied_lsn: u64,
    pub chart_size: usize,
    pub day: u32,
    pub week: u32,
    charts: HashMap<(Window, Group), Arc<Chart>>,
    genre_keys: HashMap<String, u32>,
    genre_names: Vec<String>,
}

impl Snapshot {
    /// The snapshot before anything has been aggregated.
    pub fn empty(computed_at_ms: u64, chart_size: usize) -> Snapshot {
        let day = super::time::day_of(computed_at_ms);
        Snapshot {
            computed_at_ms,
            applied_lsn: 0,
            chart_size,
            day,
            week: week_of_day(day),
            charts: HashMap::new(),
            genre_keys: HashMap::new(),
            genre_names: Vec::new(),
        }
    }

    /// The chart of `window` for genre key `genre` (already folded) and
    /// `kind`; `None` when no counted track falls in that group.
    pub fn chart(&self, window: Window, genre: Option<&str>, kind: Option<Kind>) -> Option<&Chart> {
        let genre = match genre {
            None => None,
            Some(key) => Some(*self.genre_keys.get(key)?),
        };
        self.charts
            .get(&(window, Group { genre, kind }))
            .map(|c| c.as_ref())
    }

    /// The display name of a genre key, if any track has it.
    pub fn genre_display(&self, key: &str) -> Option<&str> {
        let g = *self.genre_keys.get(key)?;
        self.genre_names.get(g as usize).map(String::as_str)
    }

    /// Number of (window, group) charts held.
    pub fn chart_count(&self) -> usize {
        self.charts.len()
    }

    /// Builds every chart from `core` for the day and week of `now_ms`;
    /// `label` is asked once per distinct track that makes a chart.
    pub fn build(
        core: &ChartCore,
        now_ms: u64,
        applied_lsn: u64,
        chart_size: usize,
        label: &mut dyn FnMut(u128) -> Label,
    ) -> Snapshot {
        assert!(chart_size > 0, "chart size checked by the config");
        let day = super::time::day_of(now_ms);
        let week = week_of_day(day);
        let mut snap = Snapshot::empty(now_ms, chart_size);
        snap.applied_lsn = applied_lsn;
        for (g, genre) in core.genres.iter().enumerate() {
            snap.genre_keys.insert(genre.key.clone(), g as u32);
            snap.genre_names.push(genre.display.clone());
        }
        let groups = 4 + 4 * core.genres.len();
        let mut labels: HashMap<u128, Arc<Label>> = HashMap::new();
        let empty = super::core::Counts::default();
        for window in Window::ALL {
            let (cur, prev, period_ms): (Vec<Vec<Cand>>, Vec<Vec<Cand>>, _) = match window {
                Window::Day => {
                    let c = core.days.get(&day).unwrap_or(&empty);
                    let p = day
                        .checked_sub(1)
                        .and_then(|d| core.days.get(&d))
                        .unwrap_or(&empty);
                    let start = u64::from(day) * DAY_MS;
                    (
                        top(
                            core,
                            c.iter().map(|(i, v)| (*i, ChartCore::clean(*v))),
                            groups,
                            chart_size,
                        ),
                        top(
                            core,
                            p.iter().map(|(i, v)| (*i, ChartCore::clean(*v))),
                            groups,
                            chart_size,
                        ),
                        Some((start, start + DAY_MS)),
                    )
                }
                Window::Week => {
                    let c = core.weeks.get(&week).unwrap_or(&empty);
                    let p = week
                        .checked_sub(1)
                        .and_then(|w| core.weeks.get(&w))
                        .unwrap_or(&empty);
                    let start = u64::from(first_day_of_week(week)) * DAY_MS;
                    (
                        top(
                            core,
                            c.iter().map(|(i, v)| (*i, ChartCore::clean(*v))),
                            groups,
                            chart_size,
                        ),
                        top(
                            core,
                            p.iter().map(|(i, v)| (*i, ChartCore::clean(*v))),
                            groups,
                            chart_size,
                        ),
                        Some((start, u64::from(first_day_of_week(week + 1)) * DAY_MS)),
                    )
                }
                Window::All => {
                    let today = core.days.get(&day).unwrap_or(&empty);
                    let all = core
                        .all
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (i as u32, ChartCore::clean(*v)));
                    let before_today = core.all.iter().enumerate().map(|(i, v)| {
                        let i = i as u32;
                        let t = today.get(&i).map(|v| ChartCore::clean(*v)).unwrap_or(0);
                        (i, ChartCore::clean(*v).saturating_sub(t))
                    });
                    (
                        top(core, all, groups, chart_size),
                        top(core, before_today, groups, chart_size),
                        None,
                    )
                }
            };
            for (slot, (cur, prev)) in cur.into_iter().zip(prev).enumerate() {
                if cur.is_empty() {
                    continue;
                }
                let prev_rank: HashMap<u32, u32> = prev
                    .iter()
                    .enumerate()
                    .map(|(r, c)| (c.idx, r as u32 + 1))
                    .collect();
                let entries = cur
                    .iter()
                    .enumerate()
                    .map(|(r, c)| {
                        let info = &core.tracks[c.idx as usize];
                        let label = labels
                            .entry(info.id)
                            .or_insert_with(|| Arc::new(label(info.id)))
                            .clone();
                        ChartEntry {
                            rank: r as u32 + 1,
                            track: info.id,
                            streams: c.count,
                            previous_rank: prev_rank.get(&c.idx).copied(),
                            kind: info.kind,
                            genre: info.genre_display.to_string(),
                            label,
                        }
                    })
                    .collect();
                let chart = Chart {
                    window,
                    period_ms,
                    entries,
                };
                snap.charts
                    .insert((window, group_of_slot(slot)), Arc::new(chart));
            }
        }
        snap
    }
}

/// A ranked candidate; `Ord` puts the better one greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cand {
    count: u64,
    track: u128,
    idx: u32,
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| other.track.cmp(&self.track))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn group_of_slot(slot: usize) -> Group {
    let kinds = ChartCore::kinds();
    match slot {
        0 => Group {
            genre: None,
            kind: None,
        },
        1..=3 => Group {
            genre: None,
            kind: Some(kinds[slot - 1]),
        },
        _ => {
            let g = ((slot - 4) / 4) as u32;
            let k = (slot - 4) % 4;
            Group {
                genre: Some(g),
                kind: if k == 0 { None } else { Some(kinds[k - 1]) },
            }
        }
    }
}

/// The best `n` of each group, best first.
fn top(
    core: &ChartCore,
    counts: impl Iterator<Item = (u32, u64)>,
    groups: usize,
    n: usize,
) -> Vec<Vec<Cand>> {
    let mut heaps: Vec<BinaryHeap<Reverse<Cand>>> =
        (0..groups).map(|_| BinaryHeap::new()).collect();
    let mut offer = |slot: usize, c: Cand| {
        let heap = &mut heaps[slot];
        if heap.len() < n {
            heap.push(Reverse(c));
        } else if heap.peek().is_some_and(|w| c > w.0) {
            heap.pop();
            heap.push(Reverse(c));
        }
    };
    for (idx, count) in counts {
        if count == 0 {
            continue;
        }
        let info = &core.tracks[idx as usize];
        let c = Cand {
            count,
            track: info.id,
            idx,
        };
        let k = ChartCore::kind_slot(info.kind);
        offer(0, c);
        offer(1 + k, c);
        if info.genre != NO_GENRE {
            let base = 4 + 4 * info.genre as usize;
            offer(base, c);
            offer(base + 1 + k, c);
        }
    }
    heaps
        .into_iter()
        .map(|h| {
            let mut v: Vec<Cand> = h.into_iter().map(|r| r.0).collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::core::CoreConfig;
    use crate::charts::event::PlayRecord;

    fn play(core: &mut ChartCore, track: u128, listener: u64, at: u64, genre: &str) {
        core.apply(&PlayRecord {
            track,
            listener,
            started_at_ms: at,
            ms_played: 60_000,
            is_stream: true,
            kind: if track.is_multiple_of(2) {
                Kind::Song
            } else {
                Kind::Podcast
            },
            genre: genre.into(),
        });
    }

    #[test]
    fn ranks_ties_and_changes() {
        let mut core = ChartCore::new(CoreConfig::default());
        let yesterday = 200 * DAY_MS + 5;
        let today = 201 * DAY_MS + 5;
        // Yesterday: 1 > 2 > 3. Today: 3 > 1 = 2 (tie broken by id), 4 new.
        for (track, n) in [(1u128, 3u64), (2, 2), (3, 1)] {
            for l in 0..n {
                play(&mut core, track, l, yesterday, "Rock");
            }
        }
        for (track, n) in [(3u128, 5u64), (1, 2), (2, 2), (4, 1)] {
            for l in 0..n {
                play(&mut core, track, l, today, "rock ");
            }
        }
        let snap = Snapshot::build(&core, today, 9, 50, &mut |_| Label::default());
        let day = snap.chart(Window::Day, None, None).unwrap();
        let got: Vec<(u128, u64, String)> = day
            .entries
            .iter()
            .map(|e| (e.track, e.streams, e.change().to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, 5, "up 2".into()),
                (1, 2, "down 1".into()),
                (2, 2, "down 1".into()),
                (4, 1, "new".into()),
            ]
        );
        let rock = snap
            .chart(Window::Day, Some("rock"), Some(Kind::Podcast))
            .unwrap();
        assert_eq!(
            rock.entries.iter().map(|e| e.track).collect::<Vec<_>>(),
            vec![3, 1]
        );
        assert_eq!(snap.genre_display("rock"), Some("Rock"));
        assert!(snap.chart(Window::Day, Some("jazz"), None).is_none());
        let all = snap.chart(Window::All, None, None).unwrap();
        assert_eq!(all.entries[0].track, 3);
        assert_eq!(all.entries[0].streams, 6);
        assert_eq!(all.entries[0].change(), RankChange::Up(2));
        let small = Snapshot::build(&core, today, 9, 2, &mut |_| Label::default());
        assert_eq!(
            small.chart(Window::Day, None, None).unwrap().entries.len(),
            2
        );
        // 4 is new, 2 fell out of yesterday's top 2 so it is "new" too.
        let c = small.chart(Window::Day, None, None).unwrap();
        assert_eq!(c.entries[1].change(), RankChange::Down(1));
    }
}
