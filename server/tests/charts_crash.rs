//! The aggregator crashes at a random point — a power loss between steps,
//! or an I/O error injected into a random operation of its flush (which
//! poisons the store) followed by a power loss — and restarts on the same
//! disk; once it has caught up, every chart equals that of a run that never
//! crashed. Plays go in through the server's own ingest function; the
//! aggregator is the server's own worker, driven step by step.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spindle_engine::clock::ManualClock;
use spindle_engine::io::fault::{FaultKind, FaultStorage};
use spindle_engine::meta::{Batch, MetaConfig, MetaStore};
use spindle_server::charts::core::{CoreConfig, Period};
use spindle_server::charts::event::{PlayInput, Policy, StartedAt};
use spindle_server::charts::ingest::{ingest, PlayOutcome};
use spindle_server::charts::snapshot::{Snapshot, Window};
use spindle_server::charts::worker::{Shared, Worker, WorkerConfig};
use spindle_server::track::{Kind, TRACKS_KEYSPACE};

/// 2026-12-03 12:00 UTC.
const NOW_MS: u64 = 1_796_299_200_000;
const TRACKS: u64 = 300;
const REQUESTS: usize = 120;
const PER_REQUEST: usize = 100;

fn track_hex(n: u64) -> String {
    format!("{:032x}", u128::from(n) * 0x1_0000_0001 + 7)
}

fn open(fault: &FaultStorage, clock: &Arc<ManualClock>) -> MetaStore {
    let config = MetaConfig {
        // Small segments so snapshots and segment turnover happen too.
        snapshot_after_log_bytes: 256 * 1024,
        ..MetaConfig::default()
    };
    MetaStore::open(Arc::new(fault.clone()), config, clock.clone()).unwrap()
}

fn put_tracks(store: &MetaStore) {
    let mut b = Batch::new();
    for n in 0..TRACKS {
        let genre = ["Rock", "Jazz", "hip hop"][(n % 3) as usize];
        let kind = if n % 5 == 0 { "podcast" } else { "song" };
        let json = format!(
            r#"{{"id":"{}","status":"ready","kind":"{kind}","title":"T{n}","genre":"{genre}"}}"#,
            track_hex(n)
        );
        b.put(TRACKS_KEYSPACE, track_hex(n).as_bytes(), json.as_bytes());
    }
    store.commit(b).unwrap();
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The requests, identical for every run: skewed popularity, duplicates
/// within and across requests, short plays, heavy repeaters.
fn requests() -> Vec<Vec<Result<PlayInput, String>>> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut out = Vec::new();
    let mut previous: Vec<PlayInput> = Vec::new();
    for _ in 0..REQUESTS {
        let mut req = Vec::new();
        for _ in 0..PER_REQUEST {
            if !previous.is_empty() && rng.next().is_multiple_of(20) {
                let p = previous[(rng.next() % previous.len() as u64) as usize].clone();
                req.push(Ok(p));
                continue;
            }
            let a = rng.next() % TRACKS;
            let track = a * (rng.next() % TRACKS) / TRACKS; // skewed to low numbers
            let listener = if rng.next().is_multiple_of(10) {
                rng.next() % 3
            } else {
                rng.next() % 5000
            };
            let p = PlayInput {
                listener_id: format!("l{listener}"),
                track_id: track_hex(track),
                ms_played: if rng.next().is_multiple_of(4) {
                    10_000
                } else {
                    95_000
                },
                started_at: StartedAt::Ms(NOW_MS - rng.next() % (20 * 3_600_000)),
                event_id: None,
            };
            previous.push(p.clone());
            req.push(Ok(p));
        }
        out.push(req);
    }
    out
}

fn config() -> WorkerConfig {
    WorkerConfig {
        core: CoreConfig::default(),
        refresh_ms: 1,
        chart_size: 50,
        // Small, so early flushes happen in the middle of a run too.
        flush_dirty_max: 150,
        prune_keys_max: 1000,
        poll_changes_max: 7,
    }
}

fn new_worker(store: &MetaStore) -> Worker {
    let shared = Arc::new(Shared::new(Snapshot::empty(NOW_MS, 50)));
    Worker::open(store, config(), shared).unwrap()
}

/// Steps and flushes until a flush finds nothing to write.
fn drain(worker: &mut Worker, store: &MetaStore) {
    for _ in 0..10_000 {
        while worker.step(Duration::ZERO).unwrap() > 0 {}
        let head = store.head_lsn();
        worker.flush().unwrap();
        if store.head_lsn() == head {
            return;
        }
    }
    panic!("the worker did not catch up");
}

type Charts = BTreeMap<String, Vec<(u128, u64, Option<u32>)>>;

fn charts(worker: &Worker, now: u64) -> Charts {
    let snap = Snapshot::build(worker.core(), now, 0, 50, &mut |_| Default::default());
    let mut out = BTreeMap::new();
    for window in Window::ALL {
        for genre in [None, Some("rock"), Some("jazz"), Some("hip hop")] {
            for kind in [None, Some(Kind::Song), Some(Kind::Podcast)] {
                let entries = snap
                    .chart(window, genre, kind)
                    .map(|c| {
                        c.entries
                            .iter()
                            .map(|e| (e.track, e.streams, e.previous_rank))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(format!("{window:?}/{genre:?}/{kind:?}"), entries);
            }
        }
    }
    out
}

/// Runs every request, stepping the worker between them; `crash_at`
/// (request index, mode) crashes once.
fn run(crash_at: Option<(usize, u64)>) -> (Charts, u64, Vec<usize>, bool) {
    let fault = FaultStorage::new();
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let mut store = open(&fault, &clock);
    put_tracks(&store);
    let mut worker = new_worker(&store);
    let policy = Policy::default();
    let mut accepted_per_request = Vec::new();
    let mut fault_hit = false;
    for (i, req) in requests().iter().enumerate() {
        let outcomes = ingest(&store, &policy, req).unwrap();
        accepted_per_request.push(
            outcomes
                .iter()
                .filter(|o| matches!(o, PlayOutcome::Accepted { .. }))
                .count(),
        );
        // Several requests per poll, so a poll returns several changes and
        // an early flush (dirty values over the bound) lands mid-poll.
        if i % 3 == 2 {
            worker.step(Duration::ZERO).unwrap();
        }
        if i % 9 == 0 {
            worker.flush().unwrap();
        }
        clock.advance(1000);
        if let Some((at, mode)) = crash_at {
            if at == i {
                if mode % 2 == 1 {
                    // An I/O error somewhere inside the next flush.
                    fault.fail_nth(mode / 2, FaultKind::Eio);
                    fault_hit = worker
                        .step(Duration::ZERO)
                        .and_then(|_| worker.flush())
                        .is_err();
                }
                fault.crash();
                drop(worker);
                drop(store);
                store = open(&fault, &clock);
                worker = new_worker(&store);
            }
        }
    }
    drain(&mut worker, &store);
    let all: u64 = (0..TRACKS)
        .map(|n| {
            let id = u128::from_str_radix(&track_hex(n), 16).unwrap();
            worker.core().count(Period::All, id)
        })
        .sum();
    (
        charts(&worker, clock_now(&clock)),
        all,
        accepted_per_request,
        fault_hit,
    )
}

fn clock_now(clock: &ManualClock) -> u64 {
    use spindle_engine::clock::Clock;
    clock.now_ms()
}

#[test]
fn charts_after_a_crash_and_restart_equal_an_uninterrupted_run() {
    let (want, want_all, want_accepted, _) = run(None);
    assert!(
        want_all > 5_000,
        "the workload counts many streams: {want_all}"
    );
    assert!(want["Day/None/None"].len() == 50);
    let mut rng = Rng(0xfeed_beef_0000_0003);
    // Modes: even = power loss between steps; odd = EIO on I/O operation
    // `mode / 2` of the next step and flush (a commit's write or sync, so
    // the store is poisoned), then power loss.
    // (An operation number past the worker's I/O for that step finds
    // nothing to fail; the crash then is a plain power loss.)
    let mut faults_hit = 0;
    for mode in [0, 1, 2, 3, 5, 7, 9, 13] {
        let at = (rng.next() % REQUESTS as u64) as usize;
        let (got, got_all, accepted, fault_hit) = run(Some((at, mode)));
        faults_hit += usize::from(fault_hit);
        assert_eq!(
            accepted, want_accepted,
            "ingest is unaffected (crash at {at}, mode {mode})"
        );
        assert_eq!(
            got_all, want_all,
            "all-time total (crash at {at}, mode {mode})"
        );
        assert_eq!(got, want, "charts (crash at {at}, mode {mode})");
    }
    assert!(
        faults_hit >= 2,
        "injected I/O errors hit the worker {faults_hit} times"
    );
}

#[test]
fn replaying_after_a_restart_counts_nothing_twice() {
    // Restart the worker (no crash) many times mid-stream, without flushing
    // before dropping it: the unflushed part is replayed exactly once.
    let fault = FaultStorage::new();
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let store = open(&fault, &clock);
    put_tracks(&store);
    let policy = Policy::default();
    let mut worker = new_worker(&store);
    for (i, req) in requests().iter().enumerate() {
        ingest(&store, &policy, req).unwrap();
        worker.step(Duration::ZERO).unwrap();
        if i % 3 == 0 {
            worker.flush().unwrap();
        }
        if i % 4 == 0 {
            worker = new_worker(&store);
        }
        clock.advance(1000);
    }
    drain(&mut worker, &store);
    let (want, _, _, _) = run(None);
    assert_eq!(charts(&worker, NOW_MS + REQUESTS as u64 * 1000), want);
}
