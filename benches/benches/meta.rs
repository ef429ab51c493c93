//! Metadata store benchmarks, each beside its reference measured in the same
//! run (machines here are noisy, so ratios matter more than absolutes):
//!
//! 1. 64 concurrent writers of one-op, 200-byte durable batches (group
//!    commit) against a plain file's 4 KiB write + fdatasync rate; target at
//!    least 5x.
//! 2. Point gets on a store of 1 M records, one thread; target 1 M/s.
//! 3. Restart (open: snapshot load + log replay) of a 1 M-record store;
//!    target under 2 s.
//!
//! Run: `cargo bench -p spindle-benches --bench meta`.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark harness: a failed unwrap aborts the run, which is the right outcome"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use spindle_engine::clock::SystemClock;
use spindle_engine::io::{open_storage, BackendChoice, OpenMode, Storage};
use spindle_engine::meta::{Batch, MetaConfig, MetaStore};

const WRITERS: usize = 64;
const VALUE_BYTES: usize = 200;
const RECORDS: u64 = 1_000_000;

fn storage(dir: &std::path::Path) -> Arc<dyn Storage> {
    open_storage(dir, BackendChoice::Auto).unwrap()
}

/// Plain-file reference: 4 KiB appended and fdatasync'd, `n` times.
fn fdatasync_appends(storage: &Arc<dyn Storage>, n: u64) -> Duration {
    let file = storage.open("plain.dat", OpenMode::CreateOrOpen).unwrap();
    let buf = vec![0x5a_u8; 4096];
    let mut offset = file.len().unwrap();
    let start = Instant::now();
    for _ in 0..n {
        file.write_all_at(&buf, offset).unwrap();
        file.sync_data().unwrap();
        offset += 4096;
    }
    start.elapsed()
}

/// `n` commits of one 200-byte put each, spread over 64 writer threads.
fn concurrent_commits(store: &MetaStore, n: u64) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WRITERS {
            let next = next.clone();
            s.spawn(move || {
                let value = [0xa5_u8; VALUE_BYTES];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let mut b = Batch::new();
                    b.put("bench", i.to_be_bytes(), value);
                    store.commit(b).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let store = MetaStore::open(
        storage.clone(),
        MetaConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();

    // The side-by-side figure, alternating the two, median of three each.
    let mut plain = Vec::new();
    let mut grouped = Vec::new();
    for _ in 0..3 {
        plain.push(rate(2000, fdatasync_appends(&storage, 2000)));
        grouped.push(rate(20_000, concurrent_commits(&store, 20_000)));
    }
    plain.sort_by(f64::total_cmp);
    grouped.sort_by(f64::total_cmp);
    let stats = store.stats();
    println!(
        "group commit: {:.0} commits/s with {WRITERS} writers vs {:.0} plain 4 KiB write+fdatasync/s = {:.1}x (target >= 5x); {:.1} commits per sync; backend {}",
        grouped[1],
        plain[1],
        grouped[1] / plain[1],
        stats.commits as f64 / stats.syncs.max(1) as f64,
        storage.kind(),
    );

    let mut g = c.benchmark_group("meta");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("plain_4k_write_fdatasync", |b| {
        b.iter_custom(|iters| fdatasync_appends(&storage, iters))
    });
    g.bench_function("commit_1x200B_64_writers", |b| {
        b.iter_custom(|iters| concurrent_commits(&store, iters))
    });
    g.finish();
}

/// This thread's CPU time in ns, from `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn key(i: u64) -> [u8; 8] {
    // Spread keys so neighbours in time are not neighbours in the tree.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

fn build_million(storage: &Arc<dyn Storage>) -> MetaStore {
    let store = MetaStore::open(
        storage.clone(),
        MetaConfig {
            snapshot_after_log_bytes: u64::MAX,
            ..MetaConfig::default()
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let value = [0x42_u8; 100];
    let per_batch = 10_000;
    for chunk in 0..RECORDS / per_batch {
        let mut b = Batch::new();
        for i in chunk * per_batch..(chunk + 1) * per_batch {
            b.put("tracks", key(i), value);
        }
        store.commit(b).unwrap();
    }
    store
}

fn gets_and_restart(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(dir.path());
    let t = Instant::now();
    let store = build_million(&storage);
    println!("built {RECORDS} records in {:?}", t.elapsed());
    assert_eq!(store.stats().records, RECORDS);

    // Point gets, one thread.
    let probes: Vec<[u8; 8]> = (0..RECORDS)
        .map(|i| key(i.wrapping_mul(7919) % RECORDS))
        .collect();
    // The machine is shared (other builds run beside us), so besides wall
    // time report gets per second of this thread's CPU time.
    let mut best_wall = f64::MAX;
    let mut best_cpu = f64::MAX;
    for _ in 0..3 {
        let cpu0 = thread_cpu_ns();
        let t = Instant::now();
        let mut found = 0u64;
        for k in &probes {
            found += u64::from(store.get("tracks", k).unwrap().is_some());
        }
        let d = t.elapsed();
        let cpu = thread_cpu_ns().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
        assert_eq!(found, RECORDS);
        best_wall = best_wall.min(d.as_secs_f64());
        if let Some(ns) = cpu {
            best_cpu = best_cpu.min(ns as f64 / 1e9);
        }
    }
    println!(
        "point gets: {:.2} M/s wall, {:.2} M/s per CPU-second, one thread over {RECORDS} records (target >= 1 M/s)",
        RECORDS as f64 / best_wall / 1e6,
        RECORDS as f64 / best_cpu / 1e6,
    );
    let mut g = c.benchmark_group("meta");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    let mut i = 0usize;
    g.bench_function("get_1M_records", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            store.get("tracks", &probes[i]).unwrap()
        })
    });

    // Restart: from the snapshot, and from a log with no snapshot.
    drop(store);
    let t = Instant::now();
    let store = MetaStore::open(
        storage.clone(),
        MetaConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    println!(
        "restart replaying the whole log (no snapshot): {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    store.snapshot_now().unwrap();
    println!("snapshot of {RECORDS} records: {:?}", t.elapsed());
    drop(store);
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    for _ in 0..3 {
        let cpu0 = thread_cpu_ns();
        let t = Instant::now();
        let store = MetaStore::open(
            storage.clone(),
            MetaConfig::default(),
            Arc::new(SystemClock),
        )
        .unwrap();
        times.push(t.elapsed());
        if let Some(ns) = thread_cpu_ns().zip(cpu0).map(|(b, a)| b.saturating_sub(a)) {
            cpu_times.push(Duration::from_nanos(ns));
        }
        assert_eq!(store.stats().records, RECORDS);
    }
    times.sort();
    cpu_times.sort();
    println!(
        "restart from snapshot: {:?} median wall, {:?} CPU, for {RECORDS} records (target < 2 s)",
        times[1],
        cpu_times.get(1).copied().unwrap_or_default()
    );
    // Each open takes about a second: flat sampling keeps it to ten.
    g.sampling_mode(criterion::SamplingMode::Flat);
    g.bench_function("restart_1M_records", |b| {
        b.iter(|| {
            MetaStore::open(
                storage.clone(),
                MetaConfig::default(),
                Arc::new(SystemClock),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, group_commit, gets_and_restart);
criterion_main!(benches);
