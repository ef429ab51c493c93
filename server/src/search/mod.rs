//! Search: a tantivy index of tracks, artists and albums under
//! `<data-dir>/search/`, written only by a change-feed consumer.
//!
//! The request path only reads ([`SearchIndex::search`]); one thread,
//! `spindle-search-indexer`, polls the metadata store's change feed (consumer
//! [`FEED_CONSUMER`]), turns each committed batch into document updates, and
//! commits the index at most every `commit_interval_ms` while it has
//! something new, then reloads the reader so the change is findable.
//!
//! **Invariant (checkpoint):** every tantivy commit carries, as its payload,
//! the feed LSN it includes everything up to; the store's checkpoint of the
//! consumer is set to that LSN only after the commit. On start the indexer
//! resumes exactly after the committed payload: nothing is missed, and a
//! change applied twice (crash between the two) is harmless because applying
//! is idempotent (a document is deleted by its key before it is added).
//! When the feed no longer holds the history the index needs
//! ([`FeedTruncated`](spindle_engine::meta::Error::FeedTruncated)), or the
//! index has no payload (new, or removed by hand), it is rebuilt from a full
//! scan: read the head LSN, index every ready track and catalog entity,
//! commit with that LSN, and replay the feed after it. `spindle reindex`
//! ([`reindex`]) does the same offline.
//!
//! Documents: one per ready track (`t:<track id>`), one per artist
//! (`a:<artist id>`) and one per album (`l:<album id>`) while the catalog
//! holds a ready track of theirs. Entity documents are rebuilt from the
//! store's catalog records whenever a batch touches them.
//!
//! Each type of document has text fields of its own (a track's title,
//! artist and album; an artist's name; an album's name and artist), each
//! with a prefix twin, so a posting list holds one type only.
//!
//! Matching ([`analyze`]): folded text, punctuation variants, CJK unigrams and
//! bigrams, a prefix field; queries add typo matching (Damerau-Levenshtein:
//! a transposition is one edit). Ranking: each query term scores the best of
//! exact (title 90 > artist 80 > album 70), prefix (60/50/40) and fuzzy
//! (30/20/10) matches; terms add up; equal scores are ordered by
//! [`Popularity`] when one is installed, then by id. Evaluation (`query.rs`)
//! walks those score tiers best first on the postings and stops each list
//! once it holds twice the limit, so a query costs about the same whether a
//! word matches ten tracks or half the catalogue.
//!
//! **Invariant (schema version):** the index directory records
//! [`SCHEMA_VERSION`]; an index of another version, or none, is deleted and
//! rebuilt from the store on open, so a change of fields or analysis never
//! meets documents written the old way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use spindle_engine::meta::{index as meta_index, ChangeOp, Direction, FeedConsumer, MetaStore};
use tantivy::columnar::Column;
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::catalog::{self, Member, TrackSummary};
use crate::track::{Kind, Track, TRACKS_KEYSPACE};

pub mod analyze;
mod query;

use query::KindFields;
pub use query::{COMBINATIONS_MAX, FUZZY_EXPANSIONS_MAX, SEEKS_MAX};

/// Name of the indexer's change-feed consumer.
pub const FEED_CONSUMER: &str = "search-indexer";
/// Name of the tokenizer that splits pre-analysed terms on spaces.
const TOKENIZER: &str = "spindle_terms";
/// Version of the index's schema and analysis. An index written under
/// another version (or none: before versions were recorded) is thrown away
/// and rebuilt from the store when opened. Bump it whenever documents would
/// be indexed differently.
pub const SCHEMA_VERSION: u32 = 4;
/// The file, inside the index directory, recording [`SCHEMA_VERSION`]
/// (tantivy leaves files it does not manage alone).
const SCHEMA_VERSION_FILE: &str = "spindle-schema-version";
/// Block size of the doc store (tantivy's default is 16 KiB).
const DOCSTORE_BLOCK_BYTES: usize = 4096;
/// The fast fields holding a document's id ([`id_to_fast`]).
const ID_HI_FIELD: &str = "id_hi";
const ID_LO_FIELD: &str = "id_lo";
const ID_DIGITS_FIELD: &str = "id_digits";
/// Most results of one kind a query returns.
pub const SEARCH_LIMIT_MAX: usize = 100;
/// Without index changes, the payload is committed once this many LSNs or
/// seconds have passed.
const IDLE_COMMIT_LSNS: u64 = 10_000;
const IDLE_COMMIT_SECS: u64 = 60;
/// Commit interval multiplier while a backlog drains.
const BACKLOG_COMMIT_FACTOR: u64 = 10;
/// When caught up, an index of more segments than this is merged into one,
/// at most every this many seconds.
const IDLE_MERGE_SEGMENTS_MIN: usize = 4;
const IDLE_MERGE_EVERY_SECS: u64 = 5;
/// tantivy's floor on writer memory (15 MB; it refuses less).
const WRITER_MEMORY_BYTES_MIN: usize = 15_000_000;
/// Visibility lag histogram bounds, in milliseconds (`+Inf` implicit).
const LAG_BOUNDS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000];

/// Failures of search and indexing.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("search index directory: {0}")]
    OpenDir(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("metadata store: {0}")]
    Store(#[from] spindle_engine::meta::Error),
    #[error("search index payload {payload:?} is not an LSN")]
    BadPayload { payload: String },
    #[error("the indexer thread cannot be started: {0}")]
    Thread(std::io::Error),
}

/// A source of play counts, for ordering equal scores (the charts layer
/// installs one through [`SearchIndex::set_popularity`]).
pub trait Popularity: Send + Sync {
    /// All-time plays of `track_id` (0 when unknown).
    fn plays(&self, track_id: &str) -> u64;
}

/// Tuning of the indexer.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Longest wait of one feed poll.
    pub poll_wait_ms: u64,
    /// Shortest time between two commits while changes arrive.
    pub commit_interval_ms: u64,
    /// Most changes taken per poll.
    pub changes_per_poll_max: usize,
    /// Memory of the tantivy writer (at least 15 MB).
    pub writer_memory_bytes: usize,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            poll_wait_ms: 20,
            commit_interval_ms: 100,
            changes_per_poll_max: 1024,
            writer_memory_bytes: 32 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy)]
struct Fields {
    doc_key: Field,
    /// The kind as a term ([`kind_str`]): the kind filter is one more
    /// posting list in every intersection, so a rare kind leads it.
    kind: Field,
    /// Stored; and as fast fields ([`id_to_fast`]), so that ranking reads
    /// the ids of its candidates without the doc store.
    id: Field,
    id_hi: Field,
    id_lo: Field,
    id_digits: Field,
    display: Field,
    /// The text fields of each type of document, indexed by `TYPE_*`: a
    /// term list per type, so a posting list holds one type only and a top
    /// list of one type stops as soon as it is full.
    by_type: [KindFields; 3],
}

const TYPE_TRACK: usize = 0;
const TYPE_ARTIST: usize = 1;
const TYPE_ALBUM: usize = 2;

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    let mut pair = |name: &str| {
        (
            Some(b.add_text_field(name, text.clone())),
            Some(b.add_text_field(&format!("{name}_prefix"), text.clone())),
        )
    };
    // Roles: title (or name), artist, album.
    let (t0, p0) = pair("track_title");
    let (t1, p1) = pair("track_artist");
    let (t2, p2) = pair("track_album");
    let (a0, q0) = pair("artist_name");
    let (l0, r0) = pair("album_name");
    let (l1, r1) = pair("album_artist");
    let by_type = [
        KindFields {
            exact: [t0, t1, t2],
            prefix: [p0, p1, p2],
        },
        KindFields {
            exact: [a0, None, None],
            prefix: [q0, None, None],
        },
        KindFields {
            exact: [l0, l1, None],
            prefix: [r0, r1, None],
        },
    ];
    let fields = Fields {
        doc_key: b.add_text_field("doc_key", STRING),
        kind: b.add_text_field("kind", STRING),
        id: b.add_text_field("id", STORED),
        id_hi: b.add_u64_field(ID_HI_FIELD, FAST),
        id_lo: b.add_u64_field(ID_LO_FIELD, FAST),
        id_digits: b.add_u64_field(ID_DIGITS_FIELD, FAST),
        display: b.add_text_field("display", STORED),
        by_type,
    };
    (b.build(), fields)
}

/// One search hit.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    /// The track summary, artist or album as JSON.
    pub item: serde_json::Value,
}

/// Ranked hits of each kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SearchResults {
    pub tracks: Vec<Hit>,
    pub artists: Vec<Hit>,
    pub albums: Vec<Hit>,
}

/// Counters and the visibility lag histogram.
#[derive(Default)]
struct Stats {
    indexed_lsn: AtomicU64,
    commits: AtomicU64,
    rebuilds: AtomicU64,
    docs_indexed: AtomicU64,
    errors: AtomicU64,
    lag_buckets: [AtomicU64; LAG_BOUNDS_MS.len() + 1],
    lag_sum_ms: AtomicU64,
    lag_last_ms: AtomicU64,
}

impl Stats {
    fn observe_lag(&self, lag_ms: u64) {
        let slot = LAG_BOUNDS_MS
            .iter()
            .position(|&b| lag_ms <= b)
            .unwrap_or(LAG_BOUNDS_MS.len());
        self.lag_buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.lag_sum_ms.fetch_add(lag_ms, Ordering::Relaxed);
        self.lag_last_ms.store(lag_ms, Ordering::Relaxed);
    }
}

/// A snapshot of the indexer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchStats {
    /// Everything up to this feed LSN is findable.
    pub indexed_lsn: u64,
    pub commits: u64,
    pub rebuilds: u64,
    pub docs_indexed: u64,
    pub errors: u64,
    /// Tracks whose visibility lag was measured.
    pub lag_samples: u64,
    /// Upper bound of the bucket holding the 99th percentile lag (`None`:
    /// no samples, `Some(u64::MAX)`: beyond the last bound).
    pub lag_p99_ms_at_most: Option<u64>,
}

/// The readable side of the index, shared with the request path.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    stats: Stats,
    popularity: RwLock<Option<Arc<dyn Popularity>>>,
    /// The fast-field columns of the current searcher generation: opening
    /// a column decodes its block metadata, too costly to do per query.
    columns: RwLock<Option<Arc<Columns>>>,
}

/// Fast-field columns of every segment of one searcher generation.
struct Columns {
    generation: u64,
    /// By segment ordinal, as the other vectors.
    segments: Vec<tantivy::index::SegmentId>,
    id: Vec<[Column<u64>; 3]>,
}

/// An id as fast-field values `(hi, lo, digits)`: a lowercase hex id of 1
/// to 32 digits (every id spindle makes: tracks 32, artists and albums 16)
/// as its 128-bit value and its length; anything else as `(0, 0, 0)`, read
/// from the doc store instead.
fn id_to_fast(id: &str) -> (u64, u64, u64) {
    let hex = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match u128::from_str_radix(id, 16) {
        Ok(v) if hex => ((v >> 64) as u64, v as u64, id.len() as u64),
        _ => (0, 0, 0),
    }
}

/// The id [`id_to_fast`] encoded (`None`: not encoded).
fn id_from_fast(hi: u64, lo: u64, digits: u64) -> Option<String> {
    if digits == 0 || digits > 32 {
        return None;
    }
    let v = (u128::from(hi) << 64) | u128::from(lo);
    Some(format!("{v:0width$x}", width = digits as usize))
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field(
                "indexed_lsn",
                &self.stats.indexed_lsn.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

fn open_index(dir: &Path) -> Result<(Index, Fields), SearchError> {
    let dir_err = |source| SearchError::Dir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    let version_file = dir.join(SCHEMA_VERSION_FILE);
    let version = std::fs::read_to_string(&version_file).ok();
    let current = version.as_deref().map(str::trim) == Some(SCHEMA_VERSION.to_string().as_str());
    if !current && dir.join("meta.json").exists() {
        // Written under another schema or analysis: derived data, so it is
        // thrown away and rebuilt from the store (the indexer finds no
        // payload and rebuilds).
        tracing::warn!(
            found = version.as_deref().map(str::trim).unwrap_or("none"),
            want = SCHEMA_VERSION,
            dir = %dir.display(),
            "search index of another schema version; rebuilding it"
        );
        std::fs::remove_dir_all(dir).map_err(dir_err)?;
        std::fs::create_dir_all(dir).map_err(dir_err)?;
    }
    let (schema, fields) = schema();
    let opened = tantivy::directory::MmapDirectory::open(dir)
        .map_err(SearchError::from)
        .and_then(|d| create_or_open(d, schema.clone()));
    let index = match opened {
        Ok(index) => index,
        Err(e) => {
            // An index of another schema version, or damaged: it is derived
            // data, so it is thrown away and rebuilt from the store.
            tracing::warn!(error = %e, dir = %dir.display(), "search index unusable; rebuilding it");
            std::fs::remove_dir_all(dir).map_err(dir_err)?;
            std::fs::create_dir_all(dir).map_err(dir_err)?;
            let d = tantivy::directory::MmapDirectory::open(dir)?;
            create_or_open(d, schema)?
        }
    };
    // Also after a damaged index was thrown away (the file with it).
    if std::fs::read_to_string(&version_file).ok().as_deref() != Some(&SCHEMA_VERSION.to_string()) {
        std::fs::write(&version_file, SCHEMA_VERSION.to_string()).map_err(dir_err)?;
    }
    index.tokenizers().register(
        TOKENIZER,
        TextAnalyzer::builder(WhitespaceTokenizer::default()).build(),
    );
    Ok((index, fields))
}

/// Opens the index in `dir`, or creates it with spindle's settings.
fn create_or_open(
    dir: tantivy::directory::MmapDirectory,
    schema: Schema,
) -> Result<Index, SearchError> {
    let settings = tantivy::IndexSettings {
        // A query reads at most a few dozen stored documents, at random:
        // each read decompresses its whole block, so blocks are small.
        docstore_blocksize: DOCSTORE_BLOCK_BYTES,
        ..tantivy::IndexSettings::default()
    };
    Ok(Index::builder()
        .schema(schema)
        .settings(settings)
        .open_or_create(dir)?)
}

fn committed_lsn(index: &Index) -> Result<Option<u64>, SearchError> {
    match index.load_metas()?.payload {
        None => Ok(None),
        Some(p) => p
            .parse::<u64>()
            .map(Some)
            .map_err(|_| SearchError::BadPayload { payload: p }),
    }
}

impl SearchIndex {
    fn open(dir: &Path) -> Result<SearchIndex, SearchError> {
        let (index, fields) = open_index(dir)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let s = SearchIndex {
            index,
            reader,
            fields,
            stats: Stats::default(),
            popularity: RwLock::new(None),
            columns: RwLock::new(None),
        };
        if let Ok(Some(lsn)) = committed_lsn(&s.index) {
            s.stats.indexed_lsn.store(lsn, Ordering::Release);
        }
        Ok(s)
    }

    /// Installs the play counts used to order equal scores.
    pub fn set_popularity(&self, popularity: Arc<dyn Popularity>) {
        let mut g = self.popularity.write().unwrap_or_else(|p| p.into_inner());
        *g = Some(popularity);
    }

    /// Segments the reader searches (each costs every query a lookup).
    pub fn segment_count(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Everything committed to the feed up to this LSN is findable.
    pub fn indexed_lsn(&self) -> u64 {
        self.stats.indexed_lsn.load(Ordering::Acquire)
    }

    /// Waits until [`Self::indexed_lsn`] reaches `lsn`; false on timeout.
    pub fn wait_for_lsn(&self, lsn: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.indexed_lsn() < lsn {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub fn stats(&self) -> SearchStats {
        let s = &self.stats;
        let buckets: Vec<u64> = s
            .lag_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = buckets.iter().sum();
        let p99 = if total == 0 {
            None
        } else {
            let want = total - total / 100;
            let mut seen = 0;
            let mut bound = u64::MAX;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= want {
                    bound = LAG_BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX);
                    break;
                }
            }
            Some(bound)
        };
        SearchStats {
            indexed_lsn: self.indexed_lsn(),
            commits: s.commits.load(Ordering::Relaxed),
            rebuilds: s.rebuilds.load(Ordering::Relaxed),
            docs_indexed: s.docs_indexed.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            lag_samples: total,
            lag_p99_ms_at_most: p99,
        }
    }

    /// Appends the indexer's metrics (Prometheus text) to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = &self.stats;
        let name = "spindle_search_visibility_lag_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a track becoming ready to being findable.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0u64;
        for (i, b) in s.lag_buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = LAG_BOUNDS_MS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |ms| (*ms as f64 / 1e3).to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {cumulative}",
            s.lag_sum_ms.load(Ordering::Relaxed) as f64 / 1e3
        );
        crate::metrics::gauge(
            out,
            "spindle_search_visibility_lag_last_seconds",
            "Visibility lag of the most recently indexed ready track.",
            s.lag_last_ms.load(Ordering::Relaxed) as f64 / 1e3,
        );
        crate::metrics::gauge(
            out,
            "spindle_search_indexed_lsn",
            "Feed LSN the search index is committed up to.",
            self.indexed_lsn() as f64,
        );
        let counters = [
            (
                "spindle_search_commits_total",
                "Search index commits.",
                &s.commits,
            ),
            (
                "spindle_search_rebuilds_total",
                "Full rebuilds of the search index.",
                &s.rebuilds,
            ),
            (
                "spindle_search_docs_indexed_total",
                "Documents written to the search index.",
                &s.docs_indexed,
            ),
            (
                "spindle_search_indexer_errors_total",
                "Indexer failures (retried).",
                &s.errors,
            ),
        ];
        for (n, help, c) in counters {
            crate::metrics::counter(out, n, help, c.load(Ordering::Relaxed));
        }
    }

    /// Ranked tracks, artists and albums for `q` (at most `limit` of each),
    /// optionally only of `kind`. Each list is evaluated by score tiers
    /// straight on its own postings (`query.rs`), and stops when full.
    pub fn search(
        &self,
        q: &str,
        kind: Option<Kind>,
        limit: usize,
    ) -> Result<SearchResults, SearchError> {
        let limit = limit.clamp(1, SEARCH_LIMIT_MAX);
        let words = analyze::query_words(q);
        if words.is_empty() {
            return Ok(SearchResults::default());
        }
        let dfas = query::typo_automata(&words);
        let searcher = self.reader.searcher();
        let columns = self.columns(&searcher)?;
        let filter = query::Filter {
            kind: kind.map(|k| Term::from_field_text(self.fields.kind, kind_str(k))),
        };
        // Twice the limit, so that popularity can reorder ties at the edge.
        let want = limit * 2;
        let mut lists: [Vec<(f32, tantivy::DocAddress)>; 3] = Default::default();
        for (list, fields) in lists.iter_mut().zip(&self.fields.by_type) {
            *list = query::top_documents(&searcher, fields, &words, &dfas, &filter, want)?;
        }
        self.materialize(&searcher, &columns, lists, limit)
    }

    /// The columns of `searcher`'s generation, opened once per generation;
    /// a segment's columns never change, so those of segments already open
    /// are reused (a commit while tracks arrive opens only the new ones).
    fn columns(&self, searcher: &tantivy::Searcher) -> Result<Arc<Columns>, SearchError> {
        let generation = searcher.generation().generation_id();
        let cached = self
            .columns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(c) = &cached {
            if c.generation == generation {
                return Ok(c.clone());
            }
        }
        let mut c = Columns {
            generation,
            segments: Vec::new(),
            id: Vec::new(),
        };
        for seg in searcher.segment_readers() {
            let segment = seg.segment_id();
            let known = cached.as_ref().and_then(|old| {
                let i = old.segments.iter().position(|s| *s == segment)?;
                Some(old.id[i].clone())
            });
            let id = match known {
                Some(id) => id,
                None => {
                    let ff = seg.fast_fields();
                    [
                        ff.u64(ID_HI_FIELD)?,
                        ff.u64(ID_LO_FIELD)?,
                        ff.u64(ID_DIGITS_FIELD)?,
                    ]
                }
            };
            c.segments.push(segment);
            c.id.push(id);
        }
        let c = Arc::new(c);
        *self.columns.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Hits with their stored items, ordered by score, then popularity,
    /// then id, `limit` of each kind. Ids come from the fast fields; only
    /// the hits returned are read from the doc store.
    fn materialize(
        &self,
        searcher: &tantivy::Searcher,
        columns: &Columns,
        [tracks, artists, albums]: [Vec<(f32, tantivy::DocAddress)>; 3],
        limit: usize,
    ) -> Result<SearchResults, SearchError> {
        let popularity = self
            .popularity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let id_of = |addr: tantivy::DocAddress| -> Result<String, SearchError> {
            if let Some([hi, lo, digits]) = columns.id.get(addr.segment_ord as usize) {
                let v = |c: &Column<u64>| c.first(addr.doc_id).unwrap_or(0);
                if let Some(id) = id_from_fast(v(hi), v(lo), v(digits)) {
                    return Ok(id);
                }
            }
            let doc: TantivyDocument = searcher.doc(addr)?;
            Ok(doc
                .get_first(self.fields.id)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned())
        };
        let mut out = SearchResults::default();
        for (list, hits, with_popularity) in [
            (&mut out.tracks, tracks, true),
            (&mut out.artists, artists, false),
            (&mut out.albums, albums, false),
        ] {
            let mut ranked = Vec::with_capacity(hits.len());
            for (score, addr) in hits {
                let id = id_of(addr)?;
                let plays = match (&popularity, with_popularity) {
                    (Some(p), true) => p.plays(&id),
                    _ => 0,
                };
                ranked.push((score, plays, id, addr));
            }
            ranked.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then(b.1.cmp(&a.1))
                    .then_with(|| a.2.cmp(&b.2))
            });
            for (score, _, id, addr) in ranked.into_iter().take(limit) {
                let doc: TantivyDocument = searcher.doc(addr)?;
                let item = doc
                    .get_first(self.fields.display)
                    .and_then(|v| v.as_str())
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(serde_json::Value::Null);
                list.push(Hit { id, score, item });
            }
        }
        Ok(out)
    }
}

/// A kind as the `kind` field's term (part of the schema: a change is a
/// [`SCHEMA_VERSION`] change).
fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Song => "song",
        Kind::Podcast => "podcast",
        Kind::Story => "story",
    }
}

/// Writes documents; owned by the indexer thread (or [`reindex`]).
struct DocWriter {
    writer: IndexWriter,
    fields: Fields,
    added: u64,
}

impl DocWriter {
    fn add(
        &mut self,
        doc_key: &str,
        doc_type: usize,
        kind: Kind,
        id: &str,
        display: &str,
        texts: [&str; 3],
    ) -> Result<(), SearchError> {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.doc_key, doc_key);
        doc.add_text(f.kind, kind_str(kind));
        doc.add_text(f.id, id);
        let (hi, lo, digits) = id_to_fast(id);
        doc.add_u64(f.id_hi, hi);
        doc.add_u64(f.id_lo, lo);
        doc.add_u64(f.id_digits, digits);
        doc.add_text(f.display, display);
        let by_role = f.by_type[doc_type];
        for ((text, exact_field), prefix_field) in
            texts.iter().zip(by_role.exact).zip(by_role.prefix)
        {
            let (Some(exact_field), Some(prefix_field)) = (exact_field, prefix_field) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let (exact, prefixes) = analyze::document_terms(text);
            doc.add_text(exact_field, exact.join(" "));
            doc.add_text(prefix_field, prefixes.join(" "));
        }
        self.writer.add_document(doc)?;
        self.added += 1;
        Ok(())
    }

    fn delete(&mut self, doc_key: &str) {
        self.writer
            .delete_term(Term::from_field_text(self.fields.doc_key, doc_key));
    }

    /// Replaces the document of track `id` by `track`'s (none unless ready).
    fn put_track(&mut self, id: &str, track: Option<&Track>) -> Result<bool, SearchError> {
        self.delete(&format!("t:{id}"));
        let Some(s) = track.and_then(catalog::summarize) else {
            return Ok(false);
        };
        self.add_track_summary(&s)?;
        Ok(true)
    }

    fn add_track_summary(&mut self, s: &TrackSummary) -> Result<(), SearchError> {
        let artists = s
            .artists
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(" ; ");
        let album = s.album.as_ref().map(|a| a.name.as_str()).unwrap_or("");
        let display = serde_json::to_string(s).unwrap_or_default();
        self.add(
            &format!("t:{}", s.id),
            TYPE_TRACK,
            s.kind,
            &s.id,
            &display,
            [&s.title, &artists, album],
        )
    }

    fn add_artist(&mut self, id: &str, m: &Member) -> Result<(), SearchError> {
        let display = serde_json::json!({ "id": id, "name": m.name }).to_string();
        self.add(
            &format!("a:{id}"),
            TYPE_ARTIST,
            m.track.kind,
            id,
            &display,
            [&m.name, "", ""],
        )
    }

    fn add_album(&mut self, id: &str, m: &Member) -> Result<(), SearchError> {
        let album = m.track.album.as_ref();
        let artist = album
            .and_then(|a| a.artist.as_ref())
            .map(|a| a.name.as_str())
            .unwrap_or("");
        let display = serde_json::to_string(&album).unwrap_or_default();
        self.add(
            &format!("l:{id}"),
            TYPE_ALBUM,
            m.track.kind,
            id,
            &display,
            [&m.name, artist, ""],
        )
    }

    /// Replaces the document of artist (`is_album` false) or album `id` by
    /// the catalog's current state.
    fn refresh_entity(
        &mut self,
        store: &MetaStore,
        is_album: bool,
        id: &str,
    ) -> Result<(), SearchError> {
        let (ks, key) = if is_album {
            (catalog::ALBUM_TRACKS_KEYSPACE, format!("l:{id}"))
        } else {
            (catalog::ARTIST_TRACKS_KEYSPACE, format!("a:{id}"))
        };
        self.delete(&key);
        let prefix = meta_index::index_prefix(id.as_bytes());
        let page = store.scan_prefix(ks, &prefix, Direction::Forward, None, 1)?;
        let Some((_, v)) = page.items.first() else {
            return Ok(());
        };
        let Ok(m) = serde_json::from_slice::<Member>(v) else {
            return Ok(());
        };
        if is_album {
            self.add_album(id, &m)
        } else {
            self.add_artist(id, &m)
        }
    }

    /// Deletes everything and indexes the store's current ready tracks and
    /// catalog entities. Returns the LSN the result is complete up to.
    fn rebuild(&mut self, store: &MetaStore) -> Result<u64, SearchError> {
        let head = store.head_lsn();
        self.writer.delete_all_documents()?;
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = store.scan_prefix(
                TRACKS_KEYSPACE,
                b"",
                Direction::Forward,
                cursor.as_deref(),
                1024,
            )?;
            for (_, v) in &page.items {
                if let Ok(track) = serde_json::from_slice::<Track>(v) {
                    if let Some(s) = catalog::summarize(&track) {
                        self.add_track_summary(&s)?;
                    }
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for (ks, is_album) in [
            (catalog::ARTIST_TRACKS_KEYSPACE, false),
            (catalog::ALBUM_TRACKS_KEYSPACE, true),
        ] {
            let mut cursor: Option<Vec<u8>> = None;
            let mut last: Option<Vec<u8>> = None;
            loop {
                let page =
                    store.scan_prefix(ks, b"", Direction::Forward, cursor.as_deref(), 1024)?;
                for (k, v) in &page.items {
                    let Some((id, _)) = meta_index::decode_component(k) else {
                        continue;
                    };
                    if last.as_deref() == Some(id.as_slice()) {
                        continue;
                    }
                    let Ok(m) = serde_json::from_slice::<Member>(v) else {
                        continue;
                    };
                    let id_str = String::from_utf8_lossy(&id).into_owned();
                    if is_album {
                        self.add_album(&id_str, &m)?;
                    } else {
                        self.add_artist(&id_str, &m)?;
                    }
                    last = Some(id);
                }
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
        }
        Ok(head)
    }

    /// Commits everything added so far as complete up to `lsn`.
    fn commit(&mut self, lsn: u64) -> Result<(), SearchError> {
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&lsn.to_string());
        prepared.commit()?;
        Ok(())
    }
}

/// The indexer loop's state.
struct Indexer {
    store: MetaStore,
    consumer: FeedConsumer,
    docs: DocWriter,
    index: Arc<SearchIndex>,
    config: IndexerConfig,
    /// HLC physical times of ready tracks added since the last commit.
    pending_lag_ms: Vec<u64>,
    dirty: bool,
    committed_lsn: u64,
    last_commit: Instant,
    /// Whether the last poll returned as many changes as it may: a backlog.
    backlogged: bool,
    last_merge: Instant,
    last_reload: Instant,
}

impl Indexer {
    fn new(
        store: &MetaStore,
        index: Arc<SearchIndex>,
        config: IndexerConfig,
    ) -> Result<Indexer, SearchError> {
        let writer = index
            .index
            .writer_with_num_threads(1, config.writer_memory_bytes.max(WRITER_MEMORY_BYTES_MIN))?;
        let consumer = store.feed(FEED_CONSUMER)?;
        let mut ix = Indexer {
            store: store.clone(),
            consumer,
            docs: DocWriter {
                writer,
                fields: index.fields,
                added: 0,
            },
            index,
            config,
            pending_lag_ms: Vec::new(),
            dirty: false,
            committed_lsn: 0,
            last_commit: Instant::now(),
            backlogged: false,
            last_merge: Instant::now(),
            last_reload: Instant::now(),
        };
        match committed_lsn(&ix.index.index)? {
            Some(lsn) if lsn <= ix.store.head_lsn() => {
                ix.consumer.reset_to(lsn)?;
                ix.committed_lsn = lsn;
            }
            // No payload (a new or hand-removed index) or one beyond the
            // store's head (the store was replaced): start from a scan.
            _ => ix.rebuild()?,
        }
        Ok(ix)
    }

    fn rebuild(&mut self) -> Result<(), SearchError> {
        let started = Instant::now();
        let lsn = self.docs.rebuild(&self.store)?;
        self.docs.commit(lsn)?;
        self.consumer.reset_to(lsn)?;
        self.consumer.checkpoint(lsn)?;
        self.index.reader.reload()?;
        self.committed_lsn = lsn;
        self.pending_lag_ms.clear();
        self.dirty = false;
        let stats = &self.index.stats;
        stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.docs_indexed.store(self.docs.added, Ordering::Relaxed);
        stats.indexed_lsn.store(lsn, Ordering::Release);
        tracing::info!(
            lsn,
            docs = self.docs.added,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "search index rebuilt"
        );
        Ok(())
    }

    fn apply(&mut self, change: &spindle_engine::meta::Change) -> Result<(), SearchError> {
        let mut artists = std::collections::BTreeSet::new();
        let mut albums = std::collections::BTreeSet::new();
        for op in &change.ops {
            let (keyspace, key, value) = match op {
                ChangeOp::Put {
                    keyspace,
                    key,
                    value,
                } => (keyspace.as_str(), key, Some(value)),
                ChangeOp::Delete { keyspace, key } => (keyspace.as_str(), key, None),
            };
            match keyspace {
                TRACKS_KEYSPACE => {
                    let id = String::from_utf8_lossy(key);
                    let track = value.and_then(|v| serde_json::from_slice::<Track>(v).ok());
                    if self.docs.put_track(&id, track.as_ref())? {
                        self.pending_lag_ms.push(change.hlc.physical_ms());
                    }
                    self.dirty = true;
                }
                catalog::ARTIST_TRACKS_KEYSPACE | catalog::ALBUM_TRACKS_KEYSPACE => {
                    if let Some((id, _)) = meta_index::decode_component(key) {
                        let id = String::from_utf8_lossy(&id).into_owned();
                        if keyspace == catalog::ALBUM_TRACKS_KEYSPACE {
                            albums.insert(id);
                        } else {
                            artists.insert(id);
                        }
                    }
                }
                _ => {}
            }
        }
        for id in &artists {
            self.docs.refresh_entity(&self.store, false, id)?;
            self.dirty = true;
        }
        for id in &albums {
            self.docs.refresh_entity(&self.store, true, id)?;
            self.dirty = true;
        }
        Ok(())
    }

    /// Commits when there is something new and the interval has passed (or
    /// `force`), then makes it visible and moves the feed checkpoint.
    fn maybe_commit(&mut self, force: bool) -> Result<(), SearchError> {
        let position = self.consumer.position();
        if position == self.committed_lsn {
            return Ok(());
        }
        let since = self.last_commit.elapsed();
        if !self.dirty {
            // Nothing indexed changed: everything up to here is findable
            // already. The payload (and so the feed checkpoint) moves
            // lazily, so the feed's retention can move on without each
            // consumer's checkpoint commit waking the others forever.
            self.index
                .stats
                .indexed_lsn
                .store(position, Ordering::Release);
            let idle_due = position - self.committed_lsn > IDLE_COMMIT_LSNS
                || since >= Duration::from_secs(IDLE_COMMIT_SECS);
            if !(force || idle_due) {
                return Ok(());
            }
        } else if !force {
            // While a backlog drains, commit less often: every commit makes
            // a segment, and segments cost every query.
            let interval_ms = if self.backlogged {
                self.config.commit_interval_ms * BACKLOG_COMMIT_FACTOR
            } else {
                self.config.commit_interval_ms
            };
            if since < Duration::from_millis(interval_ms) {
                return Ok(());
            }
        }
        self.docs.commit(position)?;
        self.index.reader.reload()?;
        self.committed_lsn = position;
        self.last_commit = Instant::now();
        self.dirty = false;
        let stats = &self.index.stats;
        stats.indexed_lsn.store(position, Ordering::Release);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.docs_indexed.store(self.docs.added, Ordering::Relaxed);
        let now_ms = self.store.clock().now_ms();
        for hlc_ms in self.pending_lag_ms.drain(..) {
            stats.observe_lag(now_ms.saturating_sub(hlc_ms));
        }
        self.consumer.checkpoint(position)?;
        Ok(())
    }

    fn step(&mut self) -> Result<(), SearchError> {
        let wait = Duration::from_millis(self.config.poll_wait_ms);
        match self.consumer.poll(self.config.changes_per_poll_max, wait) {
            Ok(changes) => {
                self.backlogged = changes.len() >= self.config.changes_per_poll_max;
                for c in &changes {
                    self.apply(c)?;
                }
                if changes.is_empty() {
                    self.when_idle()?;
                }
            }
            Err(spindle_engine::meta::Error::FeedTruncated {
                requested_lsn,
                oldest_available_lsn,
            }) => {
                tracing::warn!(
                    requested_lsn,
                    oldest_available_lsn,
                    "search feed truncated; rebuilding the index"
                );
                return self.rebuild();
            }
            Err(e) => return Err(e.into()),
        }
        self.maybe_commit(false)
    }

    /// Caught up: merge a fragmented index in the background (merges of
    /// committed segments are published by tantivy itself) and pick up
    /// finished merges.
    fn when_idle(&mut self) -> Result<(), SearchError> {
        if self.last_reload.elapsed() >= Duration::from_secs(1) {
            self.index.reader.reload()?;
            self.last_reload = Instant::now();
        }
        if self.dirty || self.last_merge.elapsed() < Duration::from_secs(IDLE_MERGE_EVERY_SECS) {
            return Ok(());
        }
        self.last_merge = Instant::now();
        let ids = self.index.index.searchable_segment_ids()?;
        if ids.len() > IDLE_MERGE_SEGMENTS_MIN {
            // The merge runs on tantivy's merge thread; its result is not
            // awaited (a failed merge leaves the segments as they were).
            drop(self.docs.writer.merge(&ids));
        }
        Ok(())
    }

    fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Acquire) {
            if let Err(e) = self.step() {
                self.index.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "search indexer failed; retrying");
                // Start over from the last commit: what was applied since is
                // discarded and replayed.
                if let Err(e) = self.docs.writer.rollback() {
                    tracing::error!(error = %e, "search index rollback failed");
                }
                let _ = self.consumer.reset_to(self.committed_lsn);
                self.dirty = false;
                self.pending_lag_ms.clear();
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if let Err(e) = self.maybe_commit(true) {
            tracing::error!(error = %e, "search index final commit failed");
        }
    }
}

/// The running search: the shared index and the indexer thread, stopped and
/// joined on drop.
pub struct SearchService {
    index: Arc<SearchIndex>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SearchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchService")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl SearchService {
    /// Opens (or creates) the index in `dir` and starts the indexer: it
    /// resumes after its committed LSN, or rebuilds, before serving changes.
    /// Returns once the index is open; catching up happens in the thread.
    pub fn start(
        store: &MetaStore,
        dir: &Path,
        config: IndexerConfig,
    ) -> Result<SearchService, SearchError> {
        let index = Arc::new(SearchIndex::open(dir)?);
        let stop = Arc::new(AtomicBool::new(false));
        let indexer = Indexer::new(store, index.clone(), config)?;
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spindle-search-indexer".into())
            .spawn(move || indexer.run(stop2))
            .map_err(SearchError::Thread)?;
        Ok(SearchService {
            index,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn index(&self) -> &Arc<SearchIndex> {
        &self.index
    }

    /// Stops the indexer after a final commit and waits for it.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for SearchService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The index directory under a data directory.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("search")
}

/// What [`reindex`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexReport {
    pub lsn: u64,
    pub documents: u64,
}

/// Rebuilds the index in `dir` from `store` (the server must not be running
/// on the same data directory: see [`reindex_data_dir`]).
pub fn reindex(store: &MetaStore, dir: &Path) -> Result<ReindexReport, SearchError> {
    let (index, fields) = open_index(dir)?;
    let writer = index.writer_with_num_threads(1, 64 * 1024 * 1024)?;
    reindex_with(store, writer, fields)
}

fn reindex_with(
    store: &MetaStore,
    writer: IndexWriter,
    fields: Fields,
) -> Result<ReindexReport, SearchError> {
    let mut docs = DocWriter {
        writer,
        fields,
        added: 0,
    };
    let lsn = docs.rebuild(store)?;
    docs.commit(lsn)?;
    let mut consumer = store.feed(FEED_CONSUMER)?;
    consumer.reset_to(lsn)?;
    consumer.checkpoint(lsn)?;
    docs.writer.wait_merging_threads()?;
    Ok(ReindexReport {
        lsn,
        documents: docs.added,
    })
}

/// `spindle reindex`: rebuilds `<data_dir>/search/` from `<data_dir>/meta/`.
/// The index's writer lock is taken before the store is opened, so this
/// fails (with a lock error) instead of running beside a live server.
pub fn reindex_data_dir(
    data_dir: &Path,
    io_backend: spindle_engine::io::BackendChoice,
) -> Result<ReindexReport, SearchError> {
    let (index, fields) = open_index(&index_dir(data_dir))?;
    let writer = index.writer_with_num_threads(1, 64 * 1024 * 1024)?;
    let meta_dir = data_dir.join("meta");
    if !meta_dir.is_dir() {
        return Err(SearchError::Dir {
            path: meta_dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no metadata store here"),
        });
    }
    let storage = spindle_engine::io::open_storage(&meta_dir, io_backend).map_err(|source| {
        SearchError::Dir {
            path: meta_dir.display().to_string(),
            source,
        }
    })?;
    let store = MetaStore::open(
        storage,
        spindle_engine::meta::MetaConfig::default(),
        Arc::new(spindle_engine::clock::SystemClock),
    )?;
    reindex_with(&store, writer, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_the_fast_fields() {
        for id in [
            "00000000000000000000000000000001",
            "ffffffffffffffffffffffffffffffff",
            "0123456789abcdef0123456789abcdef",
            "00c0ffee00c0ffee",
            "0",
            "7",
        ] {
            let (hi, lo, digits) = id_to_fast(id);
            assert_eq!(digits, id.len() as u64);
            assert_eq!(id_from_fast(hi, lo, digits).as_deref(), Some(id));
        }
        // Not lowercase hex, or too long: left to the doc store.
        for id in [
            "",
            "ABCDEF",
            "+1",
            "xyz",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(id_to_fast(id), (0, 0, 0), "{id:?}");
        }
        assert_eq!(id_from_fast(5, 5, 0), None);
    }
}
