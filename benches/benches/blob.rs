//! Blob store benchmarks, each beside its reference measured in the same run
//! (machines here are noisy, so ratios matter more than absolutes):
//!
//! 1. Sequential durable put of 64 MiB blobs, MB/s, against writing the same
//!    bytes to a plain file plus one fdatasync; target ratio >= 0.8.
//! 2. 64 concurrent writers of 256 KiB blobs, each durable: blobs/s against
//!    a plain file's 4 KiB write + fdatasync rate; target >= 4x. Also the
//!    same with 4 KiB blobs, which isolates group commit from bandwidth, and
//!    the 256 KiB blobs against one writer's 256 KiB write + fdatasync rate
//!    (the same bytes, made durable one blob at a time).
//! 3. Random 64 KiB range reads from a warm store against plain `pread` of
//!    the same offsets from one file; target >= 0.9x. Measured three ways:
//!    as served (mapped, with the chunk cache: hot chunks verified once),
//!    and with the cache off, mapped and through the storage trait, where
//!    every read checks the CRCs of the blocks it touches.
//! 4. Open (checkpoint load + tail scan) of a store of 1 M chunks; target
//!    under 1 s.
//!
//! Run: `cargo bench -p spindle-benches --bench blob`;
//! `SPINDLE_BENCH_BACKEND=portable|uring` forces a storage backend. The ratios are printed
//! to stderr as `RATIO ...` lines, from the medians of per-iteration times.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench helpers outside #[test] fns: a failed unwrap is a failed run"
)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use spindle_engine::blob::{BlobConfig, BlobId, BlobStore};
use spindle_engine::io::{open_storage, BackendChoice};

const MIB: usize = 1 << 20;

/// The serving configuration: the automatic backend, mapped reads.
fn open(dir: &std::path::Path, config: BlobConfig) -> BlobStore {
    let backend = match std::env::var("SPINDLE_BENCH_BACKEND") {
        Ok(name) => name.parse().unwrap(),
        Err(_) => BackendChoice::Auto,
    };
    BlobStore::open_dir(dir, backend, config).unwrap()
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Makes every 4 KiB of `buf` unique to `stamp`, so no chunk dedupes.
fn stamp(buf: &mut [u8], stamp: u64) {
    for (i, block) in buf.chunks_mut(4096).enumerate() {
        block[..8].copy_from_slice(&stamp.to_le_bytes());
        block[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    }
}

/// Whether criterion's name filter (if any) selects `group`; lets a filtered
/// run skip the expensive setup of the other groups.
fn selected(group: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| group.contains(f.as_str()) || f.contains(group))
}

fn median(v: &Mutex<Vec<Duration>>) -> Duration {
    let mut v = v.lock().unwrap().clone();
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

fn sequential_put(c: &mut Criterion) {
    if !selected("blob_sequential_put_64MiB") {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe = open_storage(&dir.path().join("probe"), BackendChoice::Auto).unwrap();
    eprintln!("blob bench backend: {}", probe.kind());
    let store = open(&dir.path().join("store"), BlobConfig::default());
    let plain = File::create(dir.path().join("plain.dat")).unwrap();
    let mut data = random_bytes(64 * MIB, 1);
    let counter = AtomicU64::new(0);
    let store_times = Mutex::new(Vec::new());
    let plain_times = Mutex::new(Vec::new());
    let mut plain_offset = 0u64;

    let mut g = c.benchmark_group("blob_sequential_put_64MiB");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_millis(500))
        .throughput(criterion::Throughput::Bytes(64 * MIB as u64));
    g.bench_function("plain_write_fdatasync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                stamp(&mut data, counter.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                plain.write_all_at(&data, plain_offset).unwrap();
                plain.sync_data().unwrap();
                let e = t.elapsed();
                plain_offset += data.len() as u64;
                plain_times.lock().unwrap().push(e);
                total += e;
            }
            total
        })
    });
    g.bench_function("store_put", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                stamp(&mut data, counter.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let mut w = store.writer();
                // Arrives in 256 KiB pieces, as an upload would.
                for piece in data.chunks(256 * 1024) {
                    w.write(piece).unwrap();
                }
                w.finish().unwrap();
                let e = t.elapsed();
                store_times.lock().unwrap().push(e);
                total += e;
            }
            total
        })
    });
    g.finish();
    let (p, s) = (median(&plain_times), median(&store_times));
    let mbps = |d: Duration| 64.0 / d.as_secs_f64();
    eprintln!(
        "RATIO sequential put 64 MiB: store {:.0} MB/s, plain {:.0} MB/s, ratio {:.2} (target >= 0.8)",
        mbps(s) * 1.048_576,
        mbps(p) * 1.048_576,
        p.as_secs_f64() / s.as_secs_f64()
    );
}

/// `n` durable appends of `len` bytes with fdatasync each, to one growing
/// file; returns appends/s.
fn plain_sync_rate(f: &File, n: u32, len: usize) -> f64 {
    let buf = vec![0x5a_u8; len];
    let mut at = f.metadata().unwrap().len();
    let t = Instant::now();
    for _ in 0..n {
        f.write_all_at(&buf, at).unwrap();
        f.sync_data().unwrap();
        at += len as u64;
    }
    f64::from(n) / t.elapsed().as_secs_f64()
}

const WRITERS: u64 = 64;

/// One blob's bytes per writer, made before any timing starts.
fn writer_data(blob_bytes: usize) -> Vec<Vec<u8>> {
    (0..WRITERS)
        .map(|w| random_bytes(blob_bytes, w + 1))
        .collect()
}

/// 64 threads, `per_thread` puts each (writer `w` stamps and puts
/// `data[w]`); returns blobs/s.
fn concurrent_puts(store: &BlobStore, data: &mut [Vec<u8>], per_thread: u64, round: u64) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for (w, data) in (0..WRITERS).zip(data.iter_mut()) {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..per_thread {
                    stamp(data, (round << 32) | (w << 16) | i);
                    store.put(data).unwrap();
                }
            });
        }
    });
    (WRITERS * per_thread) as f64 / t.elapsed().as_secs_f64()
}

fn concurrent_writers(c: &mut Criterion) {
    if !selected("blob_64_writers") {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = open(&dir.path().join("store"), BlobConfig::default());
    let round = AtomicU64::new(0);
    let plain = File::create(dir.path().join("plain-sync.dat")).unwrap();
    let mut g = c.benchmark_group("blob_64_writers");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_millis(300));
    let rates_256k = Mutex::new(Vec::new());
    let rates_4k = Mutex::new(Vec::new());
    let plain_rates = Mutex::new(Vec::new());
    let plain_256k_rates = Mutex::new(Vec::new());
    g.bench_function("plain_4KiB_write_fdatasync_x200", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let rate = plain_sync_rate(&plain, 200, 4096);
                total += t.elapsed();
                plain_rates.lock().unwrap().push(rate);
            }
            total
        })
    });
    g.bench_function("plain_256KiB_write_fdatasync_x100", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let rate = plain_sync_rate(&plain, 100, 256 * 1024);
                total += t.elapsed();
                plain_256k_rates.lock().unwrap().push(rate);
            }
            total
        })
    });
    let mut data_256k = writer_data(256 * 1024);
    let mut data_4k = writer_data(4096);
    g.bench_function("store_256KiB_blobs_x256", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let r = round.fetch_add(1, Ordering::Relaxed);
                rates_256k
                    .lock()
                    .unwrap()
                    .push(concurrent_puts(&store, &mut data_256k, 4, r));
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("store_4KiB_blobs_x1024", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let r = round.fetch_add(1, Ordering::Relaxed);
                rates_4k
                    .lock()
                    .unwrap()
                    .push(concurrent_puts(&store, &mut data_4k, 16, r));
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    let med = |v: &Mutex<Vec<f64>>| {
        let mut v = v.lock().unwrap().clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain, plain_256k) = (med(&plain_rates), med(&plain_256k_rates));
    let (big, small) = (med(&rates_256k), med(&rates_4k));
    let stats = store.stats();
    eprintln!(
        "RATIO 64 writers: 256 KiB blobs {big:.0}/s ({:.0} MB/s), 4 KiB blobs {small:.0}/s; plain fdatasync of 4 KiB {plain:.0}/s, of 256 KiB {plain_256k:.0}/s ({:.0} MB/s); ratios to 4 KiB syncs {:.2} and {:.2} (target >= 4), 256 KiB blobs to 256 KiB syncs {:.2}; {} commits over {} syncs",
        big * 0.262_144,
        plain_256k * 0.262_144,
        big / plain,
        small / plain,
        big / plain_256k,
        stats.commits,
        stats.syncs
    );
}

fn random_reads(c: &mut Criterion) {
    if !selected("blob_random_read_64KiB") {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store_dir = dir.path().join("store");
    let data = random_bytes(64 * MIB, 7);
    let id: BlobId = open(&store_dir, BlobConfig::default())
        .put(&data)
        .unwrap()
        .id;
    // The same store read three ways: as served (mapped, `open_dir`, with
    // the chunk cache), and with no cache, mapped and through the storage
    // trait (`open`: pread into pooled buffers).
    let cached = open(&store_dir, BlobConfig::default());
    let uncached = || BlobConfig {
        read_cache_bytes: 0,
        ..BlobConfig::default()
    };
    let mapped = open(&store_dir, uncached());
    let pread_store = BlobStore::open(
        open_storage(&store_dir, BackendChoice::Auto).unwrap(),
        uncached(),
    )
    .unwrap();
    let plain_path = dir.path().join("plain.dat");
    std::fs::write(&plain_path, &data).unwrap();
    let plain = File::open(&plain_path).unwrap();
    let mut x = 12345u64;
    let offsets: Vec<u64> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (data.len() as u64 - 65536)
        })
        .collect();
    // Warm all.
    let mut buf = vec![0u8; 65536];
    for off in &offsets {
        cached.read(&id, *off, 65536).unwrap();
        mapped.read(&id, *off, 65536).unwrap();
        pread_store.read(&id, *off, 65536).unwrap();
        plain.read_exact_at(&mut buf, *off).unwrap();
    }
    let cached_times = Mutex::new(Vec::new());
    let store_times = Mutex::new(Vec::new());
    let pread_store_times = Mutex::new(Vec::new());
    let plain_times = Mutex::new(Vec::new());
    let mut g = c.benchmark_group("blob_random_read_64KiB");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(300))
        .throughput(criterion::Throughput::Bytes(65536 * offsets.len() as u64));
    g.bench_function("plain_pread", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                for off in &offsets {
                    plain.read_exact_at(&mut buf, *off).unwrap();
                    std::hint::black_box(&buf);
                }
            }
            let e = t.elapsed();
            plain_times.lock().unwrap().push(e / iters as u32);
            e
        })
    });
    for (name, store, times) in [
        ("store_read_cached", &cached, &cached_times),
        ("store_read_mapped_uncached", &mapped, &store_times),
        (
            "store_read_pread_uncached",
            &pread_store,
            &pread_store_times,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    for off in &offsets {
                        std::hint::black_box(store.read(&id, *off, 65536).unwrap());
                    }
                }
                let e = t.elapsed();
                times.lock().unwrap().push(e / iters as u32);
                e
            })
        });
    }
    g.finish();
    let (p, s) = (median(&plain_times), median(&store_times));
    let gbps = |d: Duration| (65536.0 * offsets.len() as f64) / d.as_secs_f64() / 1e9;
    let q = median(&pread_store_times);
    let c = median(&cached_times);
    let cs = cached.stats();
    eprintln!(
        "RATIO random 64 KiB reads: store as served (chunk cache) {:.2} GB/s (ratio {:.2}); uncached: mapped {:.2} GB/s (ratio {:.2}), pread {:.2} GB/s (ratio {:.2}); plain pread {:.2} GB/s (target >= 0.9); cache {} hits, {} misses, {} MiB kept ({} MiB locked)",
        gbps(c),
        p.as_secs_f64() / c.as_secs_f64(),
        gbps(s),
        p.as_secs_f64() / s.as_secs_f64(),
        gbps(q),
        p.as_secs_f64() / q.as_secs_f64(),
        gbps(p),
        cs.cache_hits,
        cs.cache_misses,
        cs.cache_bytes >> 20,
        cs.cache_locked_bytes >> 20,
    );
}

fn open_time(c: &mut Criterion) {
    if !selected("blob_open_1M_chunks") {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("store");
    let config = BlobConfig {
        chunk_size_bytes: 64,
        checkpoint_interval_bytes: u64::MAX,
        ..BlobConfig::default()
    };
    {
        let store = open(&path, config.clone());
        let t = Instant::now();
        // 16 blobs of 65 536 distinct 64-byte chunks: 1 M chunks.
        std::thread::scope(|s| {
            for b in 0..16u64 {
                let store = store.clone();
                s.spawn(move || {
                    let mut data = random_bytes(64 * 65536, b + 100);
                    for (i, chunk) in data.chunks_mut(64).enumerate() {
                        chunk[..8].copy_from_slice(&((b << 32) | i as u64).to_le_bytes());
                    }
                    store.put(&data).unwrap();
                });
            }
        });
        store.checkpoint().unwrap();
        // A little written after the checkpoint, for the tail scan.
        for i in 0..100u64 {
            store.put(&random_bytes(1000, 2_000_001 + 2 * i)).unwrap();
        }
        let stats = store.stats();
        eprintln!(
            "open bench: built {} chunks, {} blobs in {:.1} s",
            stats.chunks,
            stats.blobs,
            t.elapsed().as_secs_f64()
        );
        assert!(stats.chunks >= 1_000_000);
    }
    let times = Mutex::new(Vec::new());
    let mut g = c.benchmark_group("blob_open_1M_chunks");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(100));
    g.bench_function("open", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let store = open(&path, config.clone());
                let e = t.elapsed();
                drop(store);
                times.lock().unwrap().push(e);
                total += e;
            }
            total
        })
    });
    g.finish();
    eprintln!(
        "RATIO open of 1 M chunks: median {:.0} ms (target < 1000 ms)",
        median(&times).as_secs_f64() * 1000.0
    );
}

criterion_group!(
    benches,
    sequential_put,
    concurrent_writers,
    random_reads,
    open_time
);
criterion_main!(benches);
