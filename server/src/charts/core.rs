//! The aggregation core: exact stream counts per track for every live day,
//! week and all time, with the per-listener anti-abuse cap. Pure and
//! single-threaded; the worker ([`super::worker`]) feeds it from the change
//! feed and persists what it changed, tests and benches feed it directly.
//!
//! Rules applied to each [`PlayRecord`], in log order:
//! 1. not a stream (under 30 s and not the whole track): counted nowhere;
//! 2. started on a day below the pruning floor: dropped (`too_late`) — the
//!    ingest check refuses such events, so this only happens to a worker
//!    more than a day behind;
//! 3. the listener already has `streams_per_listener_track_day_max` counted
//!    streams of this track on that UTC day: dropped (`capped`);
//! 4. otherwise +1 for the track in its day, its week and all time.
//!
//! Memory (64-bit, hashbrown at 7/8 load): per distinct track ever counted,
//! ~72 bytes (id, kind, genre, index entry, all-time count); per track and
//! live day or week bucket, ~20 bytes (u32 index + u64 count); per distinct
//! (listener, track) of a live day, ~26 bytes. Live buckets: the last three
//! days and the last two weeks, so memory follows distinct tracks and
//! listener-track pairs per window, never the number of events.
//!
//! **Invariants:** a count carries a dirty bit (bit 63; bit 15 of a cap)
//! and sits in the dirty list exactly when that bit is set, so
//! [`ChartCore::drain_dirty`] emits every changed value once. Applying is
//! deterministic: the same records in the same order give the same state.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::event::{kind_index, PlayRecord, KINDS};
use super::genre::genre_key;
use super::time::{day_of, week_of_day};
use crate::track::Kind;

/// A multiply-rotate hasher for the integer keys of the hot maps (FxHash's
/// scheme with a final fold); keys are ids and hashes, not attacker-chosen
/// strings of unbounded variety, and the maps are bounded per window.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(FX_SEED);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        // hashbrown takes its control byte from the top bits and the bucket
        // from the low ones; fold so both see the whole product.
        self.0 ^ (self.0 >> 29)
    }
}

/// A hash map with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

const DIRTY: u64 = 1 << 63;
const COUNT_MASK: u64 = DIRTY - 1;
const CAP_DIRTY: u16 = 1 << 15;
const CAP_MASK: u16 = CAP_DIRTY - 1;
/// Genre index of a track without a genre.
pub const NO_GENRE: u32 = u32::MAX;
/// Days kept live below today (today, yesterday, and one more of lateness
/// for a worker running behind).
pub const LIVE_DAYS_BEHIND: u32 = 2;
/// Weeks kept live below this week.
pub const LIVE_WEEKS_BEHIND: u32 = 1;
/// Largest configurable cap (the cap field has 15 bits).
pub const STREAMS_CAP_MAX: u32 = CAP_MASK as u32;

/// Settings of the counting rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    pub streams_per_listener_track_day_max: u32,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            streams_per_listener_track_day_max: 5,
        }
    }
}

/// A counting period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Day(u32),
    Week(u32),
    All,
}

/// What applying one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Counted,
    NotStream,
    Capped,
    TooLate,
}

/// Totals since the core was created (not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub events: u64,
    pub counted: u64,
    pub not_stream: u64,
    pub capped: u64,
    pub too_late: u64,
}

/// A track the core has counted.
#[derive(Debug, Clone)]
pub struct TrackInfo {
    pub id: u128,
    pub kind: Kind,
    /// Index into the genre table, or [`NO_GENRE`].
    pub genre: u32,
    pub genre_display: Box<str>,
}

/// A genre group: its key and the display name shown for it (the smallest
/// of the display names seen for the key, so it does not depend on order).
#[derive(Debug, Clone)]
pub struct Genre {
    pub key: String,
    pub display: String,
}

/// A changed value for the worker to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirtyValue {
    Count {
        period: Period,
        track: u128,
        count: u64,
    },
    Cap {
        day: u32,
        listener: u64,
        track: u128,
        count: u16,
    },
    Track {
        track: u128,
        kind: Kind,
        genre_display: String,
    },
}

/// Per-track counters of one period.
pub type Counts = FastMap<u32, u64>;

/// The aggregation state; see the module doc.
#[derive(Debug)]
pub struct ChartCore {
    config: CoreConfig,
    pub(super) tracks: Vec<TrackInfo>,
    track_index: FastMap<u128, u32>,
    pub(super) genres: Vec<Genre>,
    genre_index: HashMap<String, u32>,
    pub(super) days: BTreeMap<u32, Counts>,
    pub(super) weeks: BTreeMap<u32, Counts>,
    /// All-time counts by track index (dirty bit included).
    pub(super) all: Vec<u64>,
    caps: BTreeMap<u32, FastMap<(u64, u32), u16>>,
    floor_day: u32,
    dirty_counts: Vec<(Period, u32)>,
    dirty_caps: Vec<(u32, u64, u32)>,
    dirty_tracks: Vec<u32>,
    track_dirty: Vec<bool>,
    stats: CoreStats,
}

fn bump(counts: &mut Counts, idx: u32, period: Period, dirty: &mut Vec<(Period, u32)>) {
    let c = counts.entry(idx).or_insert(0);
    if *c & DIRTY == 0 {
        dirty.push((period, idx));
    }
    *c = ((*c & COUNT_MASK) + 1) | DIRTY;
}

impl ChartCore {
    pub fn new(config: CoreConfig) -> ChartCore {
        assert!(
            config.streams_per_listener_track_day_max <= STREAMS_CAP_MAX,
            "cap checked by the config"
        );
        ChartCore {
            config,
            tracks: Vec::new(),
            track_index: FastMap::default(),
            genres: Vec::new(),
            genre_index: HashMap::new(),
            days: BTreeMap::new(),
            weeks: BTreeMap::new(),
            all: Vec::new(),
            caps: BTreeMap::new(),
            floor_day: 0,
            dirty_counts: Vec::new(),
            dirty_caps: Vec::new(),
            dirty_tracks: Vec::new(),
            track_dirty: Vec::new(),
            stats: CoreStats::default(),
        }
    }

    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Days below this are pruned.
    pub fn floor_day(&self) -> u32 {
        self.floor_day
    }

    /// Distinct tracks counted so far.
    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    /// Values changed since the last drain, waiting to be persisted.
    pub fn dirty_len(&self) -> usize {
        self.dirty_counts.len() + self.dirty_caps.len() + self.dirty_tracks.len()
    }

    /// Applies one logged play (see the module doc for the rules).
    pub fn apply(&mut self, rec: &PlayRecord) -> Applied {
        self.stats.events += 1;
        if !rec.is_stream {
            self.stats.not_stream += 1;
            return Applied::NotStream;
        }
        let day = day_of(rec.started_at_ms);
        if day < self.floor_day {
            self.stats.too_late += 1;
            return Applied::TooLate;
        }
        let idx = self.intern(rec.track, rec.kind, &rec.genre, true);
        let cap = self
            .caps
            .entry(day)
            .or_default()
            .entry((rec.listener, idx))
            .or_insert(0);
        let used = u32::from(*cap & CAP_MASK);
        if used >= self.config.streams_per_listener_track_day_max {
            self.stats.capped += 1;
            return Applied::Capped;
        }
        if *cap & CAP_DIRTY == 0 {
            self.dirty_caps.push((day, rec.listener, idx));
        }
        *cap = ((*cap & CAP_MASK) + 1) | CAP_DIRTY;
        let week = week_of_day(day);
        bump(
            self.days.entry(day).or_default(),
            idx,
            Period::Day(day),
            &mut self.dirty_counts,
        );
        bump(
            self.weeks.entry(week).or_default(),
            idx,
            Period::Week(week),
            &mut self.dirty_counts,
        );
        let a = &mut self.all[idx as usize];
        if *a & DIRTY == 0 {
            self.dirty_counts.push((Period::All, idx));
        }
        *a = ((*a & COUNT_MASK) + 1) | DIRTY;
        self.stats.counted += 1;
        Applied::Counted
    }

    /// The index of `track`, created or updated to the given attributes.
    fn intern(&mut self, track: u128, kind: Kind, genre: &str, mark: bool) -> u32 {
        if let Some(&idx) = self.track_index.get(&track) {
            let info = &self.tracks[idx as usize];
            if info.kind != kind || *info.genre_display != *genre {
                let g = self.genre_of(genre);
                let info = &mut self.tracks[idx as usize];
                info.kind = kind;
                info.genre = g;
                info.genre_display = genre.into();
                if mark {
                    self.mark_track(idx);
                }
            }
            return idx;
        }
        let idx = u32::try_from(self.tracks.len()).unwrap_or(u32::MAX);
        assert!(idx < u32::MAX, "more than 4 billion distinct tracks");
        let g = self.genre_of(genre);
        self.tracks.push(TrackInfo {
            id: track,
            kind,
            genre: g,
            genre_display: genre.into(),
        });
        self.track_index.insert(track, idx);
        self.all.push(0);
        self.track_dirty.push(false);
        if mark {
            self.mark_track(idx);
        }
        idx
    }

    fn mark_track(&mut self, idx: u32) {
        if !self.track_dirty[idx as usize] {
            self.track_dirty[idx as usize] = true;
            self.dirty_tracks.push(idx);
        }
    }

    fn genre_of(&mut self, display: &str) -> u32 {
        let key = genre_key(display);
        if key.is_empty() {
            return NO_GENRE;
        }
        if let Some(&g) = self.genre_index.get(&key) {
            let genre = &mut self.genres[g as usize];
            if display < genre.display.as_str() {
                genre.display = display.to_owned();
            }
            return g;
        }
        let g = u32::try_from(self.genres.len()).unwrap_or(NO_GENRE);
        assert!(g != NO_GENRE, "more than 4 billion genres");
        self.genres.push(Genre {
            key: key.clone(),
            display: display.to_owned(),
        });
        self.genre_index.insert(key, g);
        g
    }

    /// The genre index of `key` (already folded), if any track has it.
    pub fn genre_by_key(&self, key: &str) -> Option<u32> {
        self.genre_index.get(key).copied()
    }

    /// The count of `track` in `period` (0 if none).
    pub fn count(&self, period: Period, track: u128) -> u64 {
        let Some(&idx) = self.track_index.get(&track) else {
            return 0;
        };
        let c = match period {
            Period::Day(d) => self.days.get(&d).and_then(|m| m.get(&idx)).copied(),
            Period::Week(w) => self.weeks.get(&w).and_then(|m| m.get(&idx)).copied(),
            Period::All => self.all.get(idx as usize).copied(),
        };
        c.unwrap_or(0) & COUNT_MASK
    }

    /// Clean count of a stored value.
    pub(super) fn clean(v: u64) -> u64 {
        v & COUNT_MASK
    }

    /// Every value changed since the last drain, each once; clears the dirty
    /// bits.
    pub fn drain_dirty(&mut self, out: &mut Vec<DirtyValue>) {
        for idx in std::mem::take(&mut self.dirty_tracks) {
            self.track_dirty[idx as usize] = false;
            let t = &self.tracks[idx as usize];
            out.push(DirtyValue::Track {
                track: t.id,
                kind: t.kind,
                genre_display: t.genre_display.to_string(),
            });
        }
        for (period, idx) in std::mem::take(&mut self.dirty_counts) {
            let slot = match period {
                Period::Day(d) => self.days.get_mut(&d).and_then(|m| m.get_mut(&idx)),
                Period::Week(w) => self.weeks.get_mut(&w).and_then(|m| m.get_mut(&idx)),
                Period::All => self.all.get_mut(idx as usize),
            };
            // A bucket pruned after the change has nothing left to persist.
            if let Some(v) = slot {
                *v &= COUNT_MASK;
                out.push(DirtyValue::Count {
                    period,
                    track: self.tracks[idx as usize].id,
                    count: *v,
                });
            }
        }
        for (day, listener, idx) in std::mem::take(&mut self.dirty_caps) {
            if let Some(v) = self
                .caps
                .get_mut(&day)
                .and_then(|m| m.get_mut(&(listener, idx)))
            {
                *v &= CAP_MASK;
                out.push(DirtyValue::Cap {
                    day,
                    listener,
                    track: self.tracks[idx as usize].id,
                    count: *v,
                });
            }
        }
    }

    /// Drops the day buckets and caps older than `today - LIVE_DAYS_BEHIND`
    /// and the week buckets older than `this week - LIVE_WEEKS_BEHIND`.
    /// Returns whether the floor moved.
    pub fn prune(&mut self, today: u32) -> bool {
        let floor = today.saturating_sub(LIVE_DAYS_BEHIND);
        if floor <= self.floor_day {
            return false;
        }
        self.set_floor(floor);
        true
    }

    /// Sets the pruning floor (recovery uses the persisted one).
    pub fn set_floor(&mut self, floor_day: u32) {
        self.floor_day = self.floor_day.max(floor_day);
        let floor_week = self.floor_week();
        self.days = self.days.split_off(&self.floor_day);
        self.caps = self.caps.split_off(&self.floor_day);
        self.weeks = self.weeks.split_off(&floor_week);
    }

    /// Weeks below this are pruned.
    pub fn floor_week(&self) -> u32 {
        week_of_day(self.floor_day).saturating_sub(LIVE_WEEKS_BEHIND)
    }

    /// Recovery: a persisted track.
    pub fn load_track(&mut self, track: u128, kind: Kind, genre_display: &str) {
        self.intern(track, kind, genre_display, false);
    }

    /// Recovery: a persisted count. `false` (and nothing loaded) when the
    /// track was never loaded or the period is below the floor.
    pub fn load_count(&mut self, period: Period, track: u128, count: u64) -> bool {
        let Some(&idx) = self.track_index.get(&track) else {
            return false;
        };
        let count = count & COUNT_MASK;
        match period {
            Period::Day(d) if d >= self.floor_day => {
                self.days.entry(d).or_default().insert(idx, count);
            }
            Period::Week(w) if w >= self.floor_week() => {
                self.weeks.entry(w).or_default().insert(idx, count);
            }
            Period::All => self.all[idx as usize] = count,
            _ => return false,
        }
        true
    }

    /// Recovery: a persisted cap counter.
    pub fn load_cap(&mut self, day: u32, listener: u64, track: u128, count: u16) -> bool {
        let Some(&idx) = self.track_index.get(&track) else {
            return false;
        };
        if day < self.floor_day {
            return false;
        }
        self.caps
            .entry(day)
            .or_default()
            .insert((listener, idx), count & CAP_MASK);
        true
    }

    /// The kind index of each kind, for grouping.
    pub fn kinds() -> [Kind; 3] {
        KINDS
    }

    pub(super) fn kind_slot(kind: Kind) -> usize {
        kind_index(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::time::DAY_MS;

    fn rec(track: u128, listener: u64, at: u64, stream: bool) -> PlayRecord {
        PlayRecord {
            track,
            listener,
            started_at_ms: at,
            ms_played: if stream { 40_000 } else { 1_000 },
            is_stream: stream,
            kind: Kind::Song,
            genre: "Rock".into(),
        }
    }

    #[test]
    fn cap_limits_per_listener_track_and_day() {
        let mut core = ChartCore::new(CoreConfig {
            streams_per_listener_track_day_max: 2,
        });
        let t0 = 100 * DAY_MS;
        let results: Vec<Applied> = [
            rec(1, 9, t0, true),
            rec(1, 9, t0 + 1, true),
            rec(1, 9, t0 + 2, true),
            rec(1, 8, t0 + 3, true),
            rec(1, 9, t0 + DAY_MS, true),
            rec(2, 9, t0, false),
        ]
        .iter()
        .map(|r| core.apply(r))
        .collect();
        use Applied::*;
        assert_eq!(
            results,
            [Counted, Counted, Capped, Counted, Counted, NotStream]
        );
        assert_eq!(core.count(Period::Day(100), 1), 3);
        assert_eq!(core.count(Period::Day(101), 1), 1);
        assert_eq!(core.count(Period::All, 1), 4);
        assert_eq!(core.count(Period::All, 2), 0);
    }

    #[test]
    fn dirty_values_are_emitted_once_and_prune_drops_old_days() {
        let mut core = ChartCore::new(CoreConfig::default());
        let t0 = 100 * DAY_MS;
        for i in 0..3 {
            core.apply(&rec(1, i, t0, true));
        }
        let mut out = Vec::new();
        core.drain_dirty(&mut out);
        // track + day + week + all + 3 caps
        assert_eq!(out.len(), 7, "{out:?}");
        assert!(out.contains(&DirtyValue::Count {
            period: Period::All,
            track: 1,
            count: 3
        }));
        out.clear();
        core.drain_dirty(&mut out);
        assert!(out.is_empty());
        assert!(core.prune(103));
        assert_eq!(core.count(Period::Day(100), 1), 0);
        assert_eq!(core.count(Period::All, 1), 3);
        assert_eq!(core.apply(&rec(1, 5, t0, true)), Applied::TooLate);
        assert!(!core.prune(103));
    }
}
