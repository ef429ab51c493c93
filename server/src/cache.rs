//! The L1 cache: hot metadata responses (tracks, albums, artists, genre
//! pages, charts) kept in memory for a short TTL, in front of the store.
//!
//! Built on moka (the Rust counterpart of Caffeine): size-bounded by bytes,
//! `ttl_ms` (5 s by default), and with request coalescing: for one key,
//! concurrent misses run ONE loader and the others wait for its result
//! (`try_get_with`), so when an album drops and thousands ask for the same
//! track at once, one lookup reaches the store. [`Cache::store_lookups`]
//! counts the loaders that ran.
//!
//! Invalidation is driven by the change feed: [`CacheService`] runs a feed
//! consumer (`cache-invalidator`, starting at the head: an empty cache needs
//! no history) that maps each changed key to the entries it affects
//! ([`Cache::apply_change`]). Track entries are invalidated by id; listing
//! pages have many variants (cursor, limit), so they are invalidated by
//! *scope*: every scope hashes to one of [`GENERATION_SLOTS`] generation
//! counters that are part of the entry's key, and bumping the counter makes
//! every entry of the scope unreachable at once (a collision only
//! invalidates more than needed).
//!
//! **Staleness bound:** an entry is never served older than the TTL. A loader
//! that read the store just before a change and inserts just after its
//! invalidation can leave that old value for at most the TTL; otherwise a
//! change is visible as soon as the invalidator sees it (milliseconds).
//! Scopes: `track:<id>`, `genres`, `genre:<key>`, `artists`, `artist:<id>`,
//! `album:<id>`, and `ks:<keyspace>` for any other keyspace (charts use it).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use spindle_engine::meta::{index as meta_index, Change, ChangeOp, MetaStore};

use crate::catalog;
use crate::error::ApiError;
use crate::http::body::Body;
use crate::track::TRACKS_KEYSPACE;

/// Number of scope generation counters.
pub const GENERATION_SLOTS: usize = 4096;
/// Name of the invalidator's change-feed consumer.
pub const FEED_CONSUMER: &str = "cache-invalidator";

/// Settings of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Longest life of an entry.
    pub ttl_ms: u64,
    /// Bound on the bytes of cached bodies and keys.
    pub capacity_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl_ms: 5000,
            capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A cached response: status, JSON body and `Cache-Control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub cache_control: &'static str,
}

impl CachedResponse {
    /// A 200 JSON response of `value`.
    pub fn json(value: &serde_json::Value) -> CachedResponse {
        CachedResponse {
            status: StatusCode::OK,
            body: Bytes::from(value.to_string()),
            cache_control: "no-cache",
        }
    }

    /// The response an error is answered with (its status and JSON body).
    pub fn from_error(e: &ApiError) -> CachedResponse {
        CachedResponse {
            status: e.status(),
            body: Bytes::from(e.body_json()),
            cache_control: "no-store",
        }
    }

    pub fn to_response(&self) -> Response<Body> {
        let mut r = Response::new(Body::full(self.body.clone()));
        *r.status_mut() = self.status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        r
    }
}

type PageKey = (String, u64);

/// The cache itself; see the module doc.
pub struct Cache {
    tracks: moka::sync::Cache<String, Arc<CachedResponse>>,
    pages: moka::sync::Cache<PageKey, Arc<CachedResponse>>,
    generations: Box<[AtomicU64]>,
    store_lookups: AtomicU64,
    invalidations: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("store_lookups", &self.store_lookups())
            .finish_non_exhaustive()
    }
}

fn weigh(key_len: usize, v: &CachedResponse) -> u32 {
    u32::try_from(key_len + v.body.len() + 64).unwrap_or(u32::MAX)
}

fn slot(scope: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    scope.hash(&mut h);
    (h.finish() % GENERATION_SLOTS as u64) as usize
}

/// Turns a loader's error into the response it stands for. Not-found is an
/// answer worth caching; anything else (storage) is answered but not kept.
fn shared_error(e: Arc<ApiError>) -> Arc<CachedResponse> {
    if let ApiError::Storage { context, source } = e.as_ref() {
        tracing::error!(context, error = %source, "storage error");
    }
    Arc::new(CachedResponse::from_error(&e))
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        let ttl = Duration::from_millis(config.ttl_ms);
        // Half of the bytes to each cache.
        let half = (config.capacity_bytes / 2).max(1);
        Cache {
            tracks: moka::sync::Cache::builder()
                .max_capacity(half)
                .weigher(|k: &String, v: &Arc<CachedResponse>| weigh(k.len(), v))
                .time_to_live(ttl)
                .build(),
            pages: moka::sync::Cache::builder()
                .max_capacity(half)
                .weigher(|k: &PageKey, v: &Arc<CachedResponse>| weigh(k.0.len(), v))
                .time_to_live(ttl)
                .build(),
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            store_lookups: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
        }
    }

    /// Loaders run so far: each is one lookup reaching the store.
    pub fn store_lookups(&self) -> u64 {
        self.store_lookups.load(Ordering::Relaxed)
    }

    /// Entries or scopes invalidated by the change feed so far.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }

    /// The response for track `id`: cached, or built by `load` (one call for
    /// any number of concurrent misses). `Err(NotFound)` from `load` is
    /// cached as a 404.
    pub fn track(
        &self,
        id: &str,
        load: impl FnOnce() -> Result<CachedResponse, ApiError>,
    ) -> Arc<CachedResponse> {
        if let Some(hit) = self.tracks.get(id) {
            return hit;
        }
        let r = self
            .tracks
            .try_get_with_by_ref(id, || self.run_loader(load));
        r.unwrap_or_else(shared_error)
    }

    /// The response for `variant` (e.g. the query string) of `scope`,
    /// cached, or built by `load` once for concurrent misses.
    pub fn page(
        &self,
        scope: &str,
        variant: &str,
        load: impl FnOnce() -> Result<CachedResponse, ApiError>,
    ) -> Arc<CachedResponse> {
        let generation = self.generations[slot(scope)].load(Ordering::Acquire);
        let key = (format!("{scope}\u{0}{variant}"), generation);
        let r = self.pages.try_get_with(key, || self.run_loader(load));
        r.unwrap_or_else(shared_error)
    }

    fn run_loader(
        &self,
        load: impl FnOnce() -> Result<CachedResponse, ApiError>,
    ) -> Result<Arc<CachedResponse>, ApiError> {
        self.store_lookups.fetch_add(1, Ordering::Relaxed);
        match load() {
            Ok(r) => Ok(Arc::new(r)),
            Err(e @ ApiError::NotFound { .. }) => Ok(Arc::new(CachedResponse::from_error(&e))),
            Err(e) => Err(e),
        }
    }

    pub fn invalidate_track(&self, id: &str) {
        self.tracks.invalidate(id);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes every cached page of `scope` unreachable.
    pub fn invalidate_scope(&self, scope: &str) {
        self.generations[slot(scope)].fetch_add(1, Ordering::AcqRel);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Invalidates what a committed batch changes.
    pub fn apply_change(&self, change: &Change) {
        let mut scopes = std::collections::BTreeSet::new();
        for op in &change.ops {
            let (ks, key) = match op {
                ChangeOp::Put { keyspace, key, .. } | ChangeOp::Delete { keyspace, key } => {
                    (keyspace.as_str(), key)
                }
            };
            let first = || {
                meta_index::decode_component(key)
                    .map(|(c, _)| String::from_utf8_lossy(&c).into_owned())
            };
            match ks {
                TRACKS_KEYSPACE => {
                    let id = String::from_utf8_lossy(key);
                    self.invalidate_track(&id);
                    scopes.insert(format!("track:{id}"));
                }
                catalog::GENRE_TRACKS_KEYSPACE => {
                    scopes.insert("genres".to_owned());
                    if let Some(g) = first() {
                        scopes.insert(format!("genre:{g}"));
                    }
                }
                catalog::ARTISTS_KEYSPACE => {
                    scopes.insert("artists".to_owned());
                }
                catalog::ARTIST_TRACKS_KEYSPACE => {
                    if let Some(a) = first() {
                        scopes.insert(format!("artist:{a}"));
                    }
                }
                catalog::ALBUM_TRACKS_KEYSPACE => {
                    if let Some(a) = first() {
                        scopes.insert(format!("album:{a}"));
                    }
                }
                other => {
                    scopes.insert(format!("ks:{other}"));
                }
            }
        }
        for s in &scopes {
            self.invalidate_scope(s);
        }
    }

    /// Appends the cache's metrics (Prometheus text) to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        crate::metrics::counter(
            out,
            "spindle_cache_store_lookups_total",
            "L1 cache misses that reached the store (one per coalesced miss).",
            self.store_lookups(),
        );
        crate::metrics::counter(
            out,
            "spindle_cache_invalidations_total",
            "L1 cache entries and scopes invalidated from the change feed.",
            self.invalidations(),
        );
        crate::metrics::gauge(
            out,
            "spindle_cache_entries",
            "L1 cache entries (approximate).",
            (self.tracks.entry_count() + self.pages.entry_count()) as f64,
        );
    }
}

/// The cache and its feed-driven invalidator thread (stopped on drop).
pub struct CacheService {
    cache: Arc<Cache>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl CacheService {
    /// Creates the cache and starts its invalidator at the store's head.
    pub fn start(
        store: &MetaStore,
        config: &CacheConfig,
    ) -> Result<CacheService, spindle_engine::meta::Error> {
        let cache = Arc::new(Cache::new(config));
        let mut consumer = store.feed(FEED_CONSUMER)?;
        let head = store.head_lsn();
        consumer.reset_to(head)?;
        consumer.checkpoint(head)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2, store2) = (cache.clone(), stop.clone(), store.clone());
        let thread = std::thread::Builder::new()
            .name("spindle-cache-invalidator".into())
            .spawn(move || invalidate_loop(store2, consumer, c2, s2))
            .map_err(|e| spindle_engine::meta::Error::Io {
                op: "spawn the cache invalidator",
                file: String::new(),
                source: e,
            })?;
        Ok(CacheService {
            cache,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for CacheService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn invalidate_loop(
    store: MetaStore,
    mut consumer: spindle_engine::meta::FeedConsumer,
    cache: Arc<Cache>,
    stop: Arc<AtomicBool>,
) {
    let mut checkpointed = consumer.position();
    let mut last_checkpoint = Instant::now();
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(1024, Duration::from_millis(20)) {
            Ok(changes) => {
                for c in &changes {
                    cache.apply_change(c);
                }
            }
            Err(spindle_engine::meta::Error::FeedTruncated { .. }) => {
                // History is gone: drop everything (TTL would anyway) and
                // go on from the head.
                cache.tracks.invalidate_all();
                cache.pages.invalidate_all();
                let _ = consumer.reset_to(store.head_lsn());
            }
            Err(e) => {
                tracing::error!(error = %e, "cache invalidator: feed poll failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // The checkpoint only lets the feed's retention move on: a restarted
        // server starts with an empty cache at the head.
        // Rarely: every checkpoint is itself a commit the other consumers
        // see, so frequent ones would keep them all busy.
        let behind = consumer.position() - checkpointed;
        if behind > 10_000 || (behind > 0 && last_checkpoint.elapsed() >= Duration::from_secs(60)) {
            if consumer.checkpoint(consumer.position()).is_ok() {
                checkpointed = consumer.position();
            }
            last_checkpoint = Instant::now();
        }
    }
}
