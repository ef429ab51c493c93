//! Search at catalogue scale: synthetic tracks whose titles, artists and
//! albums are drawn (deterministically) from word lists in English, French,
//! German, Spanish, Polish, Czech, Norwegian and Chinese, written through
//! the real path (tracks + catalog records in store batches), indexed by the
//! real feed consumer, then queried with a mix of exact, prefix and typo
//! queries.
//!
//! Reports:
//! 1. indexing rate through the change feed (tracks/s, writes and indexing
//!    overlapping) and of a full `reindex` from the store;
//! 2. query latency p50/p99/max at an open-loop schedule of 1 000 queries/s
//!    (latency measured from each query's scheduled start, so a stall is
//!    charged to every query it delays); target p99 under 10 ms;
//! 3. the time of a few queries built to be costly (many common words,
//!    one-letter prefixes, typos in every word);
//! 4. a criterion benchmark of one mixed query.
//!
//! Size: `SPINDLE_BENCH_SEARCH_TRACKS` (default 1 000 000); the schedule's
//! length: `SPINDLE_BENCH_SEARCH_QUERIES` (default 5 000). To measure
//! queries again without writing the catalogue again, set
//! `SPINDLE_BENCH_SEARCH_DIR` to a directory kept between runs: the first run
//! writes the store there, later runs of the same size reopen it (the index
//! resumes, or rebuilds when its schema version changed) and skip step 1's
//! write figures.
//! Run: `cargo bench -p spindle-benches --bench search`.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark harness: a failed unwrap aborts the run, which is the right outcome"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use spindle_engine::clock::SystemClock;
use spindle_engine::io::{open_storage, BackendChoice};
use spindle_engine::meta::{Batch, MetaConfig, MetaStore};
use spindle_server::catalog;
use spindle_server::search::{self, IndexerConfig, SearchService};
use spindle_server::track::{Track, TRACKS_KEYSPACE};

const WORDS: &[&str] = &[
    // English
    "love",
    "night",
    "heart",
    "fire",
    "rain",
    "summer",
    "river",
    "dream",
    "shadow",
    "light",
    "golden",
    "broken",
    "midnight",
    "highway",
    "ocean",
    "thunder",
    "silver",
    "wild",
    "stone",
    "forever",
    "orchestral",
    "theme",
    "symphony",
    "electric",
    "velvet",
    "morning",
    "winter",
    // French
    "cœur",
    "amour",
    "nuit",
    "soleil",
    "étoile",
    "chanson",
    "rêve",
    "lumière",
    "hiver",
    "été",
    "fenêtre",
    "mélodie",
    "douce",
    "larmes",
    // German
    "straße",
    "nacht",
    "herz",
    "träume",
    "feuer",
    "sehnsucht",
    "müde",
    "himmel",
    "schön",
    "frühling",
    "wälder",
    // Spanish
    "corazón",
    "noche",
    "canción",
    "alegría",
    "mañana",
    "fuego",
    "sueño",
    "niña",
    "río",
    // Polish / Czech
    "łódź",
    "źródło",
    "miłość",
    "żółty",
    "dvořák",
    "píseň",
    "řeka",
    "světlo",
    "česká",
    // Norwegian / Danish
    "dødsfall",
    "sjø",
    "fjell",
    "lys",
    "mørke",
    "kjærlighet",
    "høst",
    "ærlig",
    // Chinese (written without spaces)
    "春风",
    "十里",
    "月亮",
    "夜曲",
    "青花瓷",
    "晴天",
    "稻香",
    "大海",
    "风景",
];
const GIVEN: &[&str] = &[
    "Anna", "Jean", "Zoë", "Łukasz", "Søren", "María", "Jürgen", "Hana", "Björk", "Antonín",
    "Chloé", "Mateo", "Ingrid", "Wei", "Dmitri", "Aoife", "Noël", "Ola",
];
const FAMILY: &[&str] = &[
    "Dvořák", "Müller", "Nowak", "García", "Haugen", "Lefèvre", "Smith", "Novák", "Øster",
    "Kowalski", "Martín", "Schäfer", "Dubois", "Berg", "Wang", "Brontë",
];
const BANDS: &[&str] = &[
    "AC/DC",
    "T.N.T.",
    "The",
    "Orchestra",
    "Ensemble",
    "Quartet",
    "Band",
    "Collective",
    "Trio",
    "Brothers",
    "Sisters",
    "Crew",
];
const GENRES: &[&str] = &[
    "Rock",
    "Pop",
    "Hip-Hop",
    "Jazz",
    "Classical",
    "Électronique",
    "Folk",
    "Metal",
    "Soul",
    "R&B",
    "Reggae",
    "Country",
    "Blues",
    "Ambient",
    "Techno",
    "House",
    "Chanson",
    "K-Pop",
];

/// splitmix64: deterministic and fast.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn title(rng: &mut Rng) -> String {
    let n = 1 + rng.below(4);
    let mut words: Vec<String> = (0..n).map(|_| rng.pick(WORDS).to_owned()).collect();
    if rng.below(4) == 0 {
        // A number makes many titles distinct, as real catalogues are.
        words.push(format!("{}", rng.below(100)));
    }
    let mut t = words.join(" ");
    if let Some(first) = t.chars().next() {
        t = first.to_uppercase().chain(t.chars().skip(1)).collect();
    }
    t
}

fn artist(n: u64) -> String {
    let mut rng = Rng(n ^ 0xa11e);
    if rng.below(3) == 0 {
        format!("{} {}", rng.pick(WORDS), rng.pick(BANDS))
    } else {
        format!("{} {}", rng.pick(GIVEN), rng.pick(FAMILY))
    }
}

fn make_track(n: u64) -> Track {
    let mut rng = Rng(n);
    let artist_n = rng.below(50_000);
    let album = format!("{} {}", rng.pick(WORDS), rng.pick(WORDS));
    let kind = if rng.below(10) == 0 {
        "podcast"
    } else {
        "song"
    };
    // Built from the record's JSON (its wire shape), so fields added to
    // `Track` later with defaults need no change here.
    let record = serde_json::json!({
        "id": format!("{n:032x}"),
        "status": "ready",
        "kind": kind,
        "title": title(&mut rng),
        "artist": artist(artist_n),
        "album": album,
        "genre": rng.pick(GENRES),
        "raw": { "blob_id": "ab".repeat(32), "size_bytes": 1, "media_type": "audio/ogg" },
        "created_ms": n,
        "updated_ms": n,
    });
    serde_json::from_value(record).unwrap()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Queries drawn from the corpus: a third exact words, a third prefixes
/// (2-5 letters, as typed), a third words with one typo (a transposition or
/// a substitution), some of two words.
fn queries(count: usize) -> Vec<String> {
    let mut rng = Rng(42);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let w: Vec<char> = rng.pick(WORDS).chars().collect();
        let q = match i % 3 {
            0 => w.iter().collect(),
            1 => {
                let n = (2 + rng.below(4) as usize).min(w.len());
                w[..n].iter().collect()
            }
            _ => {
                let mut w = w.clone();
                if w.len() >= 4 {
                    let at = 1 + rng.below(w.len() as u64 - 2) as usize;
                    if rng.below(2) == 0 {
                        w.swap(at, at + 1);
                    } else {
                        w[at] = 'x';
                    }
                }
                w.iter().collect()
            }
        };
        if rng.below(4) == 0 {
            out.push(format!("{} {}", rng.pick(GIVEN), q));
        } else {
            out.push(q);
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Corpus {
    _tmp: Option<tempfile::TempDir>,
    service: SearchService,
}

fn build() -> Corpus {
    let tracks = env_u64("SPINDLE_BENCH_SEARCH_TRACKS", 1_000_000);
    let (tmp, root) = match std::env::var_os("SPINDLE_BENCH_SEARCH_DIR") {
        Some(d) => (None, std::path::PathBuf::from(d)),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    // A kept directory holds a finished catalogue of this many tracks.
    let marker = root.join("bench-tracks");
    let written_before = std::fs::read_to_string(&marker).ok() == Some(tracks.to_string());
    if !written_before && root.join("meta").exists() {
        std::fs::remove_dir_all(root.join("meta")).unwrap();
        let _ = std::fs::remove_dir_all(root.join("search"));
    }
    let _ = std::fs::remove_dir_all(root.join("reindexed"));
    let storage = open_storage(&root.join("meta"), BackendChoice::Auto).unwrap();
    let store = MetaStore::open(storage, MetaConfig::default(), Arc::new(SystemClock)).unwrap();
    let config = IndexerConfig {
        changes_per_poll_max: 64,
        writer_memory_bytes: 256 * 1024 * 1024,
        ..IndexerConfig::default()
    };
    // Reopened, `start` itself rebuilds an index of an older schema.
    let opening = Instant::now();
    let service = SearchService::start(&store, &root.join("search"), config).unwrap();
    let opened = opening.elapsed();
    let started = Instant::now();
    let per_batch = 200u64;
    let mut n = if written_before { tracks } else { 0 };
    while n < tracks {
        let mut b = Batch::new();
        for i in n..(n + per_batch).min(tracks) {
            let t = make_track(i);
            b.put(
                TRACKS_KEYSPACE,
                t.id.as_bytes(),
                serde_json::to_vec(&t).unwrap(),
            );
            catalog::index_track(&mut b, None, Some(&t));
        }
        store.commit(b).unwrap();
        n += per_batch;
    }
    if !written_before {
        std::fs::write(&marker, tracks.to_string()).unwrap();
    }
    let written = started.elapsed();
    assert!(service
        .index()
        .wait_for_lsn(store.head_lsn(), Duration::from_secs(3600)));
    let indexed = started.elapsed();
    // A catalogue at rest: the indexer merges the segments its frequent
    // commits made once it is caught up; queries are measured after that.
    let merging = Instant::now();
    while service.index().segment_count() > 2 && merging.elapsed() < Duration::from_secs(900) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "search: {} segments after {:.1} s of background merging",
        service.index().segment_count(),
        merging.elapsed().as_secs_f64()
    );
    if written_before {
        println!(
            "search: {tracks} tracks reopened from {}; index ready after {:.1} s (a rebuild, if \
             its schema changed, runs at {:.0} tracks/s)",
            root.display(),
            (opened + indexed).as_secs_f64(),
            tracks as f64 / (opened + indexed).as_secs_f64()
        );
    } else {
        println!(
            "search: {tracks} tracks written in {:.1} s ({:.0} tracks/s, {per_batch} per batch); \
         findable through the feed after {:.1} s: {:.0} tracks/s end to end",
            written.as_secs_f64(),
            tracks as f64 / written.as_secs_f64(),
            indexed.as_secs_f64(),
            tracks as f64 / indexed.as_secs_f64()
        );
    }
    if env_u64("SPINDLE_BENCH_SEARCH_REINDEX", 1) == 1 {
        // A full rebuild from the store, into a separate directory.
        let t0 = Instant::now();
        let report = search::reindex(&store, &root.join("reindexed")).unwrap();
        let took = t0.elapsed();
        println!(
            "search: reindex of {} documents (tracks + artists + albums) in {:.1} s: {:.0} docs/s, {:.0} tracks/s",
            report.documents,
            took.as_secs_f64(),
            report.documents as f64 / took.as_secs_f64(),
            tracks as f64 / took.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(root.join("reindexed"));
    Corpus { _tmp: tmp, service }
}

fn scheduled(corpus: &Corpus) {
    let count = env_u64("SPINDLE_BENCH_SEARCH_QUERIES", 5000) as usize;
    let qs = queries(count);
    let index = corpus.service.index();
    // Warm the term dictionaries.
    for q in qs.iter().take(200) {
        index.search(q, None, 10).unwrap();
    }
    let interval = Duration::from_millis(1);
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    let mut by_kind: [Vec<Duration>; 3] = Default::default();
    let mut hits = 0usize;
    // Time inside `search` alone: a latency far above it is queueing
    // behind earlier queries or the machine's other load.
    let mut service: Vec<(Duration, usize)> = Vec::with_capacity(count);
    for (i, q) in qs.iter().enumerate() {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let began = Instant::now();
        let r = index.search(q, None, 10).unwrap();
        service.push((began.elapsed(), i));
        hits += usize::from(!r.tracks.is_empty());
        let latency = due.elapsed();
        latencies.push(latency);
        by_kind[i % 3].push(latency);
    }
    let wall = start.elapsed();
    latencies.sort();
    println!(
        "search: {count} mixed queries at 1000/s (achieved {:.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0}% found tracks (target p99 < 10 ms)",
        count as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        hits as f64 * 100.0 / count as f64
    );
    service.sort();
    let times: Vec<Duration> = service.iter().map(|s| s.0).collect();
    let mean = times.iter().sum::<Duration>() / count.max(1) as u32;
    println!(
        "search: time in search: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        mean.as_secs_f64() * 1e3,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    for (took, i) in service.iter().rev().take(5) {
        println!(
            "search:   slowest: {:?} {:.3} ms",
            qs[*i],
            took.as_secs_f64() * 1e3
        );
    }
    for (name, mut l) in ["exact", "prefix", "fuzzy"].into_iter().zip(by_kind) {
        l.sort();
        println!(
            "search:   {name:6} p50 {:.2} ms, p99 {:.2} ms",
            percentile(&l, 0.5).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3
        );
    }
}

/// Queries built to be costly: many common words whose best combinations
/// match nothing together, one-letter prefixes, repeated and mistyped
/// words. Each is run a few times; the median time is printed.
fn hard(corpus: &Corpus) {
    let index = corpus.service.index();
    for q in [
        "night heart fire rain summer",
        "love love love love love love",
        "a b c d e f g h",
        "e",
        "风",
        "Anna Dvořák Nowak García",
        "orchetsral symphnoy electirc velevt mornign",
        "the the",
        "zzzz love",
    ] {
        let mut times: Vec<Duration> = (0..15)
            .map(|_| {
                let t = Instant::now();
                index.search(q, None, 10).unwrap();
                t.elapsed()
            })
            .collect();
        times.sort();
        let r = index.search(q, None, 10).unwrap();
        println!(
            "search: hard query {q:?}: median {:.3} ms, max {:.3} ms; {} tracks, {} artists, {} albums",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            r.tracks.len(),
            r.artists.len(),
            r.albums.len()
        );
    }
}

fn bench(c: &mut Criterion) {
    let corpus = build();
    scheduled(&corpus);
    hard(&corpus);
    let qs = queries(300);
    let index = corpus.service.index().clone();
    let mut i = 0usize;
    c.bench_function("search_mixed_query", |b| {
        b.iter(|| {
            i = (i + 1) % qs.len();
            index.search(&qs[i], None, 10).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
