//! The aggregator: a consumer of the metadata change feed that applies every
//! logged play to a [`ChartCore`], persists what changed, and publishes a
//! fresh [`Snapshot`] every `refresh_ms`.
//!
//! Exactly-once counting across crashes: the changed counters, caps and
//! track attributes, the pruning floor and `applied_lsn` (the feed position
//! they reflect) are written in ONE batch of the `charts` keyspace. On
//! start the state is loaded and the feed resumes after
//! `max(feed checkpoint, applied_lsn)`; changes at or below that were
//! counted in the loaded state, changes above were not. The feed's own
//! checkpoint (which lets compaction drop old log) is moved only when no
//! applied change is unpersisted, so it is never ahead of the state.
//!
//! `charts` keyspace (integers big-endian in keys, little-endian in values):
//!
//! | key                                         | value                  |
//! |---------------------------------------------|------------------------|
//! | `c` `d` day u32 track u128                  | count u64              |
//! | `c` `w` week u32 track u128                 | count u64              |
//! | `c` `a` 0u32 track u128                     | count u64              |
//! | `k` day u32 listener u64 track u128         | counted streams u16    |
//! | `t` track u128                              | kind u8, genre UTF-8   |
//! | `f`                                         | floor day u32          |
//! | `s`                                         | applied_lsn u64        |
//!
//! Keys below the floor are garbage left by pruning, deleted a bounded
//! number per flush (and ignored when loading); so are `plays` keys of days
//! before yesterday, which no acceptable event can collide with any more.
//!
//! **Boundary:** the worker is the only writer of `charts`; on any storage
//! error it throws its in-memory state away and reloads from the store, so
//! memory never runs ahead of what a restart would see.

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use spindle_engine::meta::{Batch, ChangeOp, Direction, FeedConsumer, MetaStore};

use super::core::{ChartCore, CoreConfig, DirtyValue, Period};
use super::event::{kind_index, PlayRecord, KINDS, PLAYS_KEYSPACE};
use super::snapshot::{Label, Snapshot};
use super::time::day_of;
use super::ChartsError;
use crate::track::TRACKS_KEYSPACE;

/// Keyspace of the aggregator's state.
pub const CHARTS_KEYSPACE: &str = "charts";
/// Name of the aggregator's change-feed consumer.
pub const FEED_CONSUMER: &str = "charts";
const SCAN_PAGE: usize = 50_000;
/// Own commits remembered to tell them from foreign changes.
const OWN_LSNS_MAX: usize = 64;
/// Snapshots built before the label cache is dropped.
const LABEL_CACHE_PUBLISHES: u64 = 30;

/// Settings of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    pub core: CoreConfig,
    /// How often state is persisted and the snapshot rebuilt.
    pub refresh_ms: u64,
    /// Entries per chart.
    pub chart_size: usize,
    /// Persist early once this many values are dirty (bounds batch size and
    /// the work a crash makes redo).
    pub flush_dirty_max: usize,
    /// Garbage keys deleted per flush at most.
    pub prune_keys_max: usize,
    /// Changes taken from the feed per poll.
    pub poll_changes_max: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            core: CoreConfig::default(),
            refresh_ms: 2_000,
            chart_size: 50,
            flush_dirty_max: 100_000,
            prune_keys_max: 50_000,
            poll_changes_max: 256,
        }
    }
}

/// Counters the HTTP layer and metrics read.
#[derive(Debug, Default)]
pub struct ChartStats {
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_refused: AtomicU64,
    pub events_applied: AtomicU64,
    pub streams_counted: AtomicU64,
    pub streams_capped: AtomicU64,
    pub plays_not_stream: AtomicU64,
    pub plays_too_late: AtomicU64,
    pub records_malformed: AtomicU64,
    pub flushes: AtomicU64,
    pub worker_errors: AtomicU64,
    pub feed_lag_lsns: AtomicU64,
    pub tracks: AtomicU64,
    pub applied_lsn: AtomicU64,
}

/// What the worker shares with request handlers.
#[derive(Debug)]
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    pub stats: ChartStats,
}

impl Shared {
    pub fn new(initial: Snapshot) -> Shared {
        Shared {
            snapshot: RwLock::new(Arc::new(initial)),
            stats: ChartStats::default(),
        }
    }

    /// The current snapshot (a pointer copy under a read lock).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, snap: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
    }
}

/// All-time plays of `track` as last flushed to `store` (the worker flushes
/// on its interval, so this trails the live count by at most that); 0 when
/// the track has none or the value cannot be read.
pub fn flushed_all_time_plays(store: &MetaStore, track: u128) -> u64 {
    let key = count_key(Period::All, track);
    match store.get(CHARTS_KEYSPACE, &key) {
        Ok(Some(v)) => le_u64(&key, &v).unwrap_or(0),
        _ => 0,
    }
}

fn count_key(period: Period, track: u128) -> [u8; 22] {
    let mut k = [0u8; 22];
    k[0] = b'c';
    let (tag, n) = match period {
        Period::Day(d) => (b'd', d),
        Period::Week(w) => (b'w', w),
        Period::All => (b'a', 0),
    };
    k[1] = tag;
    k[2..6].copy_from_slice(&n.to_be_bytes());
    k[6..22].copy_from_slice(&track.to_be_bytes());
    k
}

fn cap_key(day: u32, listener: u64, track: u128) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[0] = b'k';
    k[1..5].copy_from_slice(&day.to_be_bytes());
    k[5..13].copy_from_slice(&listener.to_be_bytes());
    k[13..29].copy_from_slice(&track.to_be_bytes());
    k
}

fn track_key(track: u128) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b't';
    k[1..17].copy_from_slice(&track.to_be_bytes());
    k
}

fn corrupt(key: &[u8], reason: &'static str) -> ChartsError {
    ChartsError::Corrupt {
        key_hex: crate::tokens::hex(key),
        reason,
    }
}

fn u32_be(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[..4]);
    u32::from_be_bytes(x)
}

fn u64_be(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

fn u128_be(b: &[u8]) -> u128 {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[..16]);
    u128::from_be_bytes(x)
}

fn le_u64(key: &[u8], v: &[u8]) -> Result<u64, ChartsError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| corrupt(key, "value is not 8 bytes"))?;
    Ok(u64::from_le_bytes(arr))
}

/// The aggregator over one store; see the module doc.
pub struct Worker {
    store: MetaStore,
    feed: FeedConsumer,
    core: ChartCore,
    config: WorkerConfig,
    shared: Arc<Shared>,
    applied_lsn: u64,
    /// The last change applied to the in-memory core: the feed position
    /// once a poll's changes are all applied, the change being applied in
    /// between (an early flush must not claim the rest of the poll).
    memory_lsn: u64,
    own_lsns: VecDeque<u64>,
    foreign_since_checkpoint: bool,
    labels: HashMap<u128, Label>,
    publishes: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("applied_lsn", &self.applied_lsn)
            .field("memory_lsn", &self.memory_lsn)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Loads the persisted state and positions the feed after it.
    pub fn open(
        store: &MetaStore,
        config: WorkerConfig,
        shared: Arc<Shared>,
    ) -> Result<Worker, ChartsError> {
        let mut core = ChartCore::new(config.core);
        let floor = match store.get(CHARTS_KEYSPACE, b"f")? {
            None => 0,
            Some(v) => {
                let arr: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(b"f", "floor is not 4 bytes"))?;
                u32::from_le_bytes(arr)
            }
        };
        let applied_lsn = match store.get(CHARTS_KEYSPACE, b"s")? {
            None => 0,
            Some(v) => le_u64(b"s", &v)?,
        };
        core.set_floor(floor);
        scan_all(store, CHARTS_KEYSPACE, b"t", |k, v| {
            if k.len() != 17 || v.is_empty() {
                return Err(corrupt(k, "track entry has the wrong size"));
            }
            let kind = *KINDS
                .get(usize::from(v[0]))
                .ok_or_else(|| corrupt(k, "unknown kind"))?;
            let genre =
                std::str::from_utf8(&v[1..]).map_err(|_| corrupt(k, "genre is not UTF-8"))?;
            core.load_track(u128_be(&k[1..]), kind, genre);
            Ok(())
        })?;
        scan_all(store, CHARTS_KEYSPACE, b"c", |k, v| {
            if k.len() != 22 {
                return Err(corrupt(k, "count key has the wrong size"));
            }
            let n = u32_be(&k[2..6]);
            let period = match k[1] {
                b'd' => Period::Day(n),
                b'w' => Period::Week(n),
                b'a' => Period::All,
                _ => return Err(corrupt(k, "unknown period tag")),
            };
            let count = le_u64(k, v)?;
            // false: below the floor (garbage awaiting deletion) or a track
            // entry missing, which the single-batch write rules out.
            if !core.load_count(period, u128_be(&k[6..]), count) && period == Period::All {
                return Err(corrupt(k, "count of a track without a track entry"));
            }
            Ok(())
        })?;
        scan_all(store, CHARTS_KEYSPACE, b"k", |k, v| {
            if k.len() != 29 || v.len() != 2 {
                return Err(corrupt(k, "cap entry has the wrong size"));
            }
            let count = u16::from_le_bytes([v[0], v[1]]);
            core.load_cap(
                u32_be(&k[1..5]),
                u64_be(&k[5..13]),
                u128_be(&k[13..]),
                count,
            );
            Ok(())
        })?;
        let mut feed = store.feed(FEED_CONSUMER)?;
        if feed.position() < applied_lsn {
            feed.reset_to(applied_lsn)?;
        }
        shared
            .stats
            .tracks
            .store(core.track_count() as u64, Ordering::Relaxed);
        Ok(Worker {
            store: store.clone(),
            memory_lsn: feed.position(),
            feed,
            core,
            config,
            shared,
            applied_lsn,
            own_lsns: VecDeque::new(),
            foreign_since_checkpoint: false,
            labels: HashMap::new(),
            publishes: 0,
        })
    }

    /// The core (for tests and the snapshot).
    pub fn core(&self) -> &ChartCore {
        &self.core
    }

    /// The last change applied in memory.
    pub fn position(&self) -> u64 {
        self.memory_lsn
    }

    /// The position the persisted state reflects.
    pub fn applied_lsn(&self) -> u64 {
        self.applied_lsn
    }

    /// Takes up to `poll_changes_max` changes (waiting up to `wait` for the
    /// first) and applies their plays; persists early when many values are
    /// dirty. Returns the number of changes taken.
    pub fn step(&mut self, wait: Duration) -> Result<usize, ChartsError> {
        let changes = match self.feed.poll(self.config.poll_changes_max, wait) {
            Ok(c) => c,
            Err(spindle_engine::meta::Error::FeedTruncated {
                requested_lsn,
                oldest_available_lsn,
            }) => {
                // Only a worker stuck behind the retention bound gets here;
                // the gap cannot be recounted, so say so loudly and go on.
                tracing::error!(
                    requested_lsn,
                    oldest_available_lsn,
                    "charts: change feed truncated; plays in the gap are lost to the charts"
                );
                self.feed.reset_to(oldest_available_lsn.saturating_sub(1))?;
                self.memory_lsn = self.feed.position();
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let n = changes.len();
        let shared = self.shared.clone();
        let stats = &shared.stats;
        for change in changes {
            if !self.own_lsns.contains(&change.lsn) {
                self.foreign_since_checkpoint = true;
            }
            for op in &change.ops {
                let ChangeOp::Put {
                    keyspace, value, ..
                } = op
                else {
                    continue;
                };
                if keyspace != PLAYS_KEYSPACE {
                    continue;
                }
                match PlayRecord::decode(value) {
                    Ok(rec) => {
                        self.core.apply(&rec);
                    }
                    Err(e) => {
                        // The store checksums every record, so this is a
                        // bug in an encoder; count it rather than wedge the
                        // charts on one record forever.
                        stats.records_malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(lsn = change.lsn, error = %e, "charts: skipping a malformed play record");
                    }
                }
            }
            self.memory_lsn = change.lsn;
            if self.core.dirty_len() >= self.config.flush_dirty_max {
                self.flush()?;
            }
        }
        // Changes the poll consumed silently (internal ones) follow the
        // last returned change and carry no plays.
        self.memory_lsn = self.feed.position();
        let s = self.core.stats();
        stats.events_applied.store(s.events, Ordering::Relaxed);
        stats.streams_counted.store(s.counted, Ordering::Relaxed);
        stats.streams_capped.store(s.capped, Ordering::Relaxed);
        stats
            .plays_not_stream
            .store(s.not_stream, Ordering::Relaxed);
        stats.plays_too_late.store(s.too_late, Ordering::Relaxed);
        Ok(n)
    }

    fn remember_own(&mut self, lsn: u64) {
        if self.own_lsns.len() == OWN_LSNS_MAX {
            self.own_lsns.pop_front();
        }
        self.own_lsns.push_back(lsn);
    }

    /// Prunes by the store clock, persists every dirty value with the
    /// position in one batch, deletes some garbage, and moves the feed
    /// checkpoint when that is safe.
    pub fn flush(&mut self) -> Result<(), ChartsError> {
        let today = day_of(self.store.clock().now_ms());
        let floor_moved = self.core.prune(today);
        let position = self.memory_lsn;
        if self.core.dirty_len() > 0 || floor_moved {
            let mut dirty = Vec::with_capacity(self.core.dirty_len());
            self.core.drain_dirty(&mut dirty);
            let mut batch = Batch::new();
            for d in &dirty {
                match d {
                    DirtyValue::Count {
                        period,
                        track,
                        count,
                    } => batch.put(
                        CHARTS_KEYSPACE,
                        count_key(*period, *track),
                        count.to_le_bytes(),
                    ),
                    DirtyValue::Cap {
                        day,
                        listener,
                        track,
                        count,
                    } => batch.put(
                        CHARTS_KEYSPACE,
                        cap_key(*day, *listener, *track),
                        count.to_le_bytes(),
                    ),
                    DirtyValue::Track {
                        track,
                        kind,
                        genre_display,
                    } => {
                        let mut v = Vec::with_capacity(1 + genre_display.len());
                        v.push(kind_index(*kind) as u8);
                        v.extend_from_slice(genre_display.as_bytes());
                        batch.put(CHARTS_KEYSPACE, track_key(*track), v);
                    }
                }
            }
            batch.put(CHARTS_KEYSPACE, b"f", self.core.floor_day().to_le_bytes());
            batch.put(CHARTS_KEYSPACE, b"s", position.to_le_bytes());
            let commit = self.store.commit(batch)?;
            self.remember_own(commit.lsn);
            self.applied_lsn = position;
            self.shared.stats.flushes.fetch_add(1, Ordering::Relaxed);
            self.shared
                .stats
                .tracks
                .store(self.core.track_count() as u64, Ordering::Relaxed);
        }
        self.delete_garbage(today)?;
        // Nothing applied is unpersisted now, so the checkpoint may move to
        // the position; skip it when only our own commits came by, or each
        // checkpoint would beget the next.
        if self.foreign_since_checkpoint && position > 0 {
            self.feed.checkpoint(position)?;
            self.foreign_since_checkpoint = false;
            // The checkpoint record is internal: the feed skips it silently.
        }
        self.shared
            .stats
            .applied_lsn
            .store(self.applied_lsn, Ordering::Relaxed);
        self.shared
            .stats
            .feed_lag_lsns
            .store(self.feed.lag().lsn_behind, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes up to `prune_keys_max` keys below the floors.
    fn delete_garbage(&mut self, today: u32) -> Result<(), ChartsError> {
        let floor_day = self.core.floor_day().to_be_bytes();
        let floor_week = self.core.floor_week().to_be_bytes();
        let plays_floor = today.saturating_sub(1).to_be_bytes();
        let ranges: [(&str, Vec<u8>, Vec<u8>); 4] = [
            (
                CHARTS_KEYSPACE,
                b"cd".to_vec(),
                [&b"cd"[..], &floor_day].concat(),
            ),
            (
                CHARTS_KEYSPACE,
                b"cw".to_vec(),
                [&b"cw"[..], &floor_week].concat(),
            ),
            (
                CHARTS_KEYSPACE,
                b"k".to_vec(),
                [&b"k"[..], &floor_day].concat(),
            ),
            (PLAYS_KEYSPACE, Vec::new(), plays_floor.to_vec()),
        ];
        let mut budget = self.config.prune_keys_max;
        let mut batch = Batch::new();
        for (keyspace, lo, hi) in &ranges {
            if budget == 0 {
                break;
            }
            let page = self.store.scan_range(
                keyspace,
                Bound::Included(lo.as_slice()),
                Bound::Excluded(hi.as_slice()),
                Direction::Forward,
                None,
                budget.min(SCAN_PAGE),
            )?;
            budget -= page.items.len();
            for (k, _) in page.items {
                batch.delete(keyspace, k);
            }
        }
        if !batch.is_empty() {
            let commit = self.store.commit(batch)?;
            self.remember_own(commit.lsn);
        }
        Ok(())
    }

    /// Builds and publishes a snapshot as of the store clock's now.
    pub fn publish(&mut self) {
        let now = self.store.clock().now_ms();
        // Labels are cached for LABEL_CACHE_PUBLISHES refreshes, so edits to
        // titles show up soon without a lookup per entry per refresh.
        self.publishes += 1;
        if self.publishes.is_multiple_of(LABEL_CACHE_PUBLISHES) {
            self.labels.clear();
        }
        let store = &self.store;
        let labels = &mut self.labels;
        let snap = Snapshot::build(
            &self.core,
            now,
            self.applied_lsn.max(self.memory_lsn),
            self.config.chart_size,
            &mut |track| {
                labels
                    .entry(track)
                    .or_insert_with(|| load_label(store, track))
                    .clone()
            },
        );
        self.shared.publish(snap);
    }

    /// Runs until `stop` is set: step, and every `refresh_ms` flush and
    /// publish. On a storage error the worker reloads its state from the
    /// store (backing off while that fails). Flushes once more on stop.
    pub fn run(mut self, stop: &AtomicBool) {
        let refresh = Duration::from_millis(self.config.refresh_ms.max(1));
        let mut next = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let result = if now >= next {
                next = now + refresh;
                self.flush().map(|()| self.publish())
            } else {
                self.step((next - now).min(Duration::from_millis(100)))
                    .map(|_| ())
            };
            if let Err(error) = result {
                self.shared
                    .stats
                    .worker_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "charts worker: reloading state from the store");
                match self.reload(stop) {
                    Some(w) => self = w,
                    None => return,
                }
            }
        }
        if let Err(error) = self.flush() {
            tracing::warn!(%error, "charts worker: final flush failed; a restart replays from the last one");
        }
    }

    fn reload(&self, stop: &AtomicBool) -> Option<Worker> {
        let mut backoff = Duration::from_millis(50);
        while !stop.load(Ordering::Acquire) {
            match Worker::open(&self.store, self.config, self.shared.clone()) {
                Ok(w) => return Some(w),
                Err(error) => {
                    tracing::error!(%error, "charts worker: reload failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        None
    }
}

/// Title and artist of `track` from its record (empty when gone).
fn load_label(store: &MetaStore, track: u128) -> Label {
    #[derive(serde::Deserialize)]
    struct LabelJson {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        artist: Option<String>,
    }
    let id = super::event::track_hex(track);
    match store.get(TRACKS_KEYSPACE, id.as_bytes()) {
        Ok(Some(v)) => match serde_json::from_slice::<LabelJson>(&v) {
            Ok(l) => Label {
                title: l.title,
                artist: l.artist,
            },
            Err(_) => Label::default(),
        },
        _ => Label::default(),
    }
}

/// Calls `f` on every item of `keyspace` starting with `prefix`, page by
/// page.
fn scan_all(
    store: &MetaStore,
    keyspace: &str,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), ChartsError>,
) -> Result<(), ChartsError> {
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_prefix(
            keyspace,
            prefix,
            Direction::Forward,
            cursor.as_deref(),
            SCAN_PAGE,
        )?;
        for (k, v) in &page.items {
            f(k, v)?;
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}
