//! Charts benchmarks:
//!
//! 1. Aggregation throughput, one core: logged play records (Zipf(1.1)
//!    popularity over 100 000 tracks, 1 M listeners, 8 genres, 30% short
//!    plays) decoded and applied to the aggregation core, as the worker
//!    does; target at least 1 M events/s. `apply` alone is measured too.
//! 2. Snapshot build (the refresh cost) over the resulting state.
//! 3. Chart query: `GET /v1/charts/top` answered from a snapshot (lookup +
//!    JSON), mean from criterion and p50/p99 over 100 000 timed calls;
//!    target p99 under 1 ms.
//!
//! Run: `cargo bench -p spindle-benches --bench charts`.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark harness: a failed unwrap aborts the run, which is the right outcome"
)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spindle_server::charts::core::{ChartCore, CoreConfig};
use spindle_server::charts::event::PlayRecord;
use spindle_server::charts::http::top_response;
use spindle_server::charts::snapshot::{Label, Snapshot};
use spindle_server::track::Kind;

const EVENTS: usize = 1_000_000;
const TRACKS: usize = 100_000;
const LISTENERS: u64 = 1_000_000;
const GENRES: [&str; 8] = [
    "Rock",
    "Pop",
    "Hip Hop",
    "Jazz",
    "Electronic",
    "Folk",
    "Classical",
    "Metal",
];
/// 2026-12-03 12:00 UTC.
const NOW_MS: u64 = 1_796_299_200_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Encoded records, as the worker reads them from the feed.
fn records() -> Vec<Vec<u8>> {
    let mut rng = Rng(7);
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
    (0..EVENTS)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            let t = cdf.partition_point(|c| *c < u).min(TRACKS - 1);
            PlayRecord {
                track: (t as u128) * 0x9e37_79b9_7f4a_7c15 + 1,
                listener: rng.next() % LISTENERS,
                started_at_ms: NOW_MS - rng.next() % 40_000_000,
                ms_played: 40_000,
                is_stream: rng.next() % 10 >= 3,
                kind: if t % 10 == 0 {
                    Kind::Podcast
                } else {
                    Kind::Song
                },
                genre: GENRES[t % GENRES.len()].to_owned(),
            }
            .encode()
        })
        .collect()
}

fn config() -> CoreConfig {
    CoreConfig::default()
}

fn bench(c: &mut Criterion) {
    let encoded = records();
    let decoded: Vec<PlayRecord> = encoded
        .iter()
        .map(|b| PlayRecord::decode(b).unwrap())
        .collect();
    let mut g = c.benchmark_group("charts_aggregate");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("decode_and_apply_1M", |b| {
        b.iter_batched(
            || ChartCore::new(config()),
            |mut core| {
                for bytes in &encoded {
                    core.apply(&PlayRecord::decode(bytes).unwrap());
                }
                core
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("apply_1M", |b| {
        b.iter_batched(
            || ChartCore::new(config()),
            |mut core| {
                for r in &decoded {
                    core.apply(r);
                }
                core
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut core = ChartCore::new(config());
    for r in &decoded {
        core.apply(r);
    }
    let mut g = c.benchmark_group("charts_snapshot");
    g.sample_size(10);
    g.bench_function("build_100k_tracks", |b| {
        b.iter(|| Snapshot::build(&core, NOW_MS, 1, 50, &mut |_| Label::default()))
    });
    g.finish();

    let snap = Snapshot::build(&core, NOW_MS, 1, 50, &mut |_| Label::default());
    let queries = [
        "window=day",
        "window=week&genre=hip%20hop",
        "window=all&kind=podcast&limit=50",
        "window=day&genre=rock&kind=song&limit=10",
    ];
    let mut g = c.benchmark_group("charts_query");
    for q in queries {
        g.bench_function(q, |b| b.iter(|| top_response(&snap, Some(q)).unwrap()));
    }
    g.finish();

    // p99 over individually timed calls.
    let mut samples: Vec<Duration> = Vec::with_capacity(100_000);
    for i in 0..100_000 {
        let q = queries[i % queries.len()];
        let t = Instant::now();
        let r = top_response(&snap, Some(q)).unwrap();
        samples.push(t.elapsed());
        drop(r);
    }
    samples.sort();
    println!(
        "charts_query latency over {} calls: p50 {:?}, p99 {:?}, max {:?} (target p99 < 1 ms)",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() - 1]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
