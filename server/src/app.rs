//! The application: open stores, routing, and every route but blob serving
//! (in [`crate::http`]) and uploads (in [`crate::upload`]).
//!
//! [`App::handle`] is the one entry point hyper calls. It never fails: every
//! error becomes a response through [`ApiError::into_response`], and every
//! response is counted in [`Metrics`] under its [`Route`].
//!
//! **Boundary:** engine calls block. Lookups answered from memory (`meta.get`,
//! `blob.stat`) run inline; anything that may sync or read many bytes
//! (commits, deletes, uploads, compaction) runs on the blocking pool.
//! **Invariant:** no request body is read beyond a bound: uploads by the
//! upload limit, every other route by [`SMALL_BODY_LIMIT_BYTES`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use spindle_engine::blob::{BlobConfig, BlobId, BlobStore};
use spindle_engine::clock::SystemClock;
use spindle_engine::io::open_storage;
use spindle_engine::meta::{Batch, MetaConfig, MetaStore};
use spindle_engine::queue::{Queue, QueueConfig};

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::http::body::Body;
use crate::metrics::{self, Metrics, Route};
use crate::tokens::{NewTokens, Role, Tokens};
use crate::track::{
    is_track_id, Track, BLOB_META_KEYSPACE, QUALITIES, TRACKS_KEYSPACE, TRANSCODE_QUEUE,
};

/// Bound on the request body of every route but uploads.
pub const SMALL_BODY_LIMIT_BYTES: u64 = 64 * 1024;

/// Failures opening the application.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create or open {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blob store: {0}")]
    Blob(#[from] spindle_engine::blob::Error),
    #[error("metadata store: {0}")]
    Meta(#[from] spindle_engine::meta::Error),
    #[error("tokens: {0}")]
    Tokens(#[from] crate::tokens::TokenError),
    #[error("discovery: {0}")]
    Discovery(#[from] crate::catalog::http::DiscoveryError),
    #[error("charts: {0}")]
    Charts(#[from] crate::charts::ChartsError),
    #[error("{0}")]
    Locked(#[from] crate::dirlock::LockError),
}

/// Everything a request handler needs. Shared by all connections.
pub struct App {
    pub config: ServeConfig,
    pub blobs: BlobStore,
    pub meta: MetaStore,
    pub queue: Queue,
    pub tokens: Tokens,
    pub metrics: Metrics,
    /// Plays and charts; its aggregator thread stops when this drops.
    pub charts: Arc<crate::charts::Charts>,
    /// The L1 cache and the search index, each with its feed consumer.
    pub discovery: crate::catalog::http::Discovery,
    /// False until serving starts and again once shutdown begins.
    pub ready: AtomicBool,
    /// The in-process transcode pool (started by [`App::open`], stopped
    /// when the app is dropped: in-flight jobs are cancelled and redelivered).
    pub workers: crate::worker::Pool,
    /// Keeps other processes out of the data directory; declared last so it
    /// is released after everything above has shut down.
    _lock: crate::dirlock::DirLock,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens the stores under `config.data_dir` (`blobs/`, `meta/`), the
    /// transcode queue and the tokens (creating them on first start: the
    /// plain tokens are returned then).
    pub fn open(config: ServeConfig) -> Result<(App, Option<NewTokens>), OpenError> {
        let dir_err = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| OpenError::Dir { path, source }
        };
        std::fs::create_dir_all(&config.data_dir).map_err(dir_err(&config.data_dir))?;
        let lock = crate::dirlock::DirLock::acquire(&config.data_dir)?;
        let blob_dir = config.data_dir.join("blobs");
        let meta_dir = config.data_dir.join("meta");
        let meta_storage =
            open_storage(&meta_dir, config.io_backend).map_err(dir_err(&meta_dir))?;
        let blob_config = BlobConfig {
            segment_size_bytes_max: config.blob_segment_size_bytes_max,
            read_cache_bytes: config.blob_cache_bytes,
            ..BlobConfig::default()
        };
        std::fs::create_dir_all(&blob_dir).map_err(dir_err(&blob_dir))?;
        // Mapped: range reads verify page-cache bytes in place and the
        // connection sends them with sendfile (see `http::sendfile`).
        let blobs = BlobStore::open_dir(&blob_dir, config.io_backend, blob_config)?;
        let meta = MetaStore::open(meta_storage, MetaConfig::default(), Arc::new(SystemClock))?;
        let backfilled = crate::catalog::backfill_tracks_by_raw(&meta)?;
        if backfilled > 0 {
            tracing::info!(tracks = backfilled, "indexed existing tracks by content");
        }
        let queue = Queue::new(&meta, TRANSCODE_QUEUE, QueueConfig::default())?;
        let (tokens, new_tokens) = Tokens::load_or_create(&meta, &config.tokens_path())?;
        let discovery = crate::catalog::http::Discovery::open(&meta, &config.data_dir)?;
        let charts_config = crate::charts::ChartsConfig::from_env(std::env::vars())?;
        let charts = Arc::new(crate::charts::Charts::start(&meta, charts_config)?);
        // Search breaks ties between equally good matches by all-time plays.
        discovery.index().set_popularity(charts.clone());
        let workers = crate::worker::Pool::start(
            crate::worker::Deps {
                blobs: blobs.clone(),
                meta: meta.clone(),
                queue: queue.clone(),
            },
            config.transcode.clone(),
        );
        let app = App {
            config,
            blobs,
            meta,
            queue,
            tokens,
            metrics: Metrics::default(),
            charts,
            discovery,
            ready: AtomicBool::new(false),
            workers,
            _lock: lock,
        };
        Ok((app, new_tokens))
    }

    /// Answers one request. Never fails; see the module doc.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (route, response) = self.route(req).await;
        let body_bytes = response.body().size_hint().exact().unwrap_or(0);
        self.metrics.record(
            route,
            response.status().as_u16(),
            started.elapsed(),
            body_bytes,
        );
        response
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> (Route, Response<Body>) {
        if let Err(e) = self.check_head(req.headers()) {
            return (Route::Unmatched, e.into_response());
        }
        let path = req.uri().path();
        // The hot path first: blob serving.
        if let Some(id) = path.strip_prefix("/v1/blobs/") {
            let response = match check_small_body(&req) {
                Err(e) => e.into_response(),
                Ok(()) => {
                    let media_type = self.media_type(id);
                    crate::http::serve_blob(
                        &self.blobs,
                        id,
                        &media_type,
                        req.method(),
                        req.headers(),
                    )
                    .await
                }
            };
            return (Route::Blob, response);
        }
        // The web player's embedded assets (`/`, `/assets/*`).
        if let Some(response) = crate::web::serve(req.method(), path, req.headers()) {
            return (Route::Web, response);
        }
        if crate::worker::remote::is_jobs_path(path) {
            let response = crate::worker::remote::handle(self.clone(), req).await;
            return (Route::Admin, response);
        }
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let (route, allow): (Route, &'static str) = match segments.as_slice() {
            ["healthz"] => (Route::Healthz, "GET, HEAD"),
            ["readyz"] => (Route::Readyz, "GET, HEAD"),
            ["metrics"] => (Route::Metrics, "GET, HEAD"),
            ["v1", "tracks"] => match *req.method() {
                Method::GET | Method::HEAD => (Route::TrackFind, "GET, HEAD, POST"),
                _ => (Route::TrackCreate, "GET, HEAD, POST"),
            },
            ["v1", "tracks", _] => match *req.method() {
                Method::DELETE => (Route::TrackDelete, "GET, HEAD, DELETE"),
                _ => (Route::TrackGet, "GET, HEAD, DELETE"),
            },
            ["v1", "tracks", _, "stream"] => (Route::TrackStream, "GET, HEAD"),
            ["v1", "admin", "stats"] => (Route::Admin, "GET, HEAD"),
            ["v1", "admin", "compact"] => (Route::Admin, "POST"),
            ["v1", "search"] => (Route::Search, "GET, HEAD"),
            s if crate::catalog::http::is_discovery_path(s) => (Route::Catalog, "GET, HEAD"),
            ["v1", "plays"] => (Route::Plays, "POST"),
            ["v1", "charts", "top"] => (Route::ChartsTop, "GET, HEAD"),
            _ => {
                let e = ApiError::NoRoute {
                    path: path.chars().take(256).collect(),
                };
                return (Route::Unmatched, e.into_response());
            }
        };
        let method_ok = allow.split(", ").any(|m| m == req.method().as_str());
        if !method_ok {
            let e = ApiError::MethodNotAllowed {
                method: req.method().as_str().chars().take(32).collect(),
                allow,
            };
            return (route, e.into_response());
        }
        let id = segments.get(2).copied().unwrap_or("").to_owned();
        let result = match (route, segments.get(2)) {
            (Route::TrackCreate, _) => crate::upload::create_track(self.clone(), req).await,
            _ if crate::catalog::http::is_discovery_path(&segments) => match check_small_body(&req)
            {
                Err(e) => Err(e),
                Ok(()) => crate::catalog::http::route(self, &segments, req.uri().query()).await,
            },
            (Route::Plays, _) => {
                let timeout = std::time::Duration::from_millis(self.config.body_read_timeout_ms);
                crate::charts::http::post_plays(self.charts.clone(), timeout, req).await
            }
            (Route::Healthz | Route::Readyz | Route::Metrics, _) | (Route::Admin, _) => {
                match check_small_body(&req) {
                    Err(e) => Err(e),
                    Ok(()) => self.plain_route(route, &segments, &req).await,
                }
            }
            _ => match check_small_body(&req) {
                Err(e) => Err(e),
                Ok(()) => match route {
                    Route::TrackGet => self.get_track(&id),
                    Route::TrackFind => self.find_tracks(req.headers(), req.uri().query()),
                    Route::TrackDelete => self.delete_track(&id, req.headers()).await,
                    Route::TrackStream => self.stream_track(&id, req.uri().query()),
                    Route::ChartsTop => {
                        crate::charts::http::get_top(&self.charts, req.uri().query())
                    }
                    _ => Err(ApiError::Internal {
                        message: "route table and dispatch disagree".into(),
                    }),
                },
            },
        };
        (route, result.unwrap_or_else(ApiError::into_response))
    }

    async fn plain_route(
        self: &Arc<Self>,
        route: Route,
        segments: &[&str],
        req: &Request<Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        match route {
            Route::Healthz => Ok(text_response(StatusCode::OK, "ok\n")),
            Route::Readyz => {
                if self.ready.load(Ordering::Acquire) && !self.meta.is_poisoned() {
                    Ok(text_response(StatusCode::OK, "ready\n"))
                } else {
                    Err(ApiError::Unavailable {
                        reason: "starting, shutting down or storage poisoned",
                    })
                }
            }
            Route::Metrics => {
                let text = self.render_metrics();
                let mut r = Response::new(Body::full(Bytes::from(text)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(r)
            }
            Route::Admin => {
                self.tokens.authorize(req.headers(), &[])?;
                if segments.last() == Some(&"compact") {
                    let app = self.clone();
                    let report = tokio::task::spawn_blocking(move || app.blobs.compact())
                        .await
                        .map_err(join_error)?
                        .map_err(|e| ApiError::storage("compacting the blob store", e))?;
                    Ok(json_response(
                        StatusCode::OK,
                        &serde_json::json!({
                            "segments_removed": report.segments_removed.len(),
                            "records_copied": report.records_copied,
                            "bytes_copied": report.bytes_copied,
                            "bytes_reclaimed": report.bytes_reclaimed,
                        }),
                    ))
                } else {
                    Ok(json_response(StatusCode::OK, &self.stats_json()))
                }
            }
            _ => Err(ApiError::Internal {
                message: "route table and dispatch disagree".into(),
            }),
        }
    }

    /// 431 for a request head with too many or too large header fields
    /// (hyper's own buffer limit catches heads far beyond this).
    fn check_head(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let count = headers.len();
        if count > self.config.max_header_count as usize {
            return Err(ApiError::HeadersTooLarge {
                message: format!(
                    "{count} header fields, more than the limit of {}",
                    self.config.max_header_count
                ),
            });
        }
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if bytes > self.config.max_header_bytes as usize {
            return Err(ApiError::HeadersTooLarge {
                message: format!(
                    "{bytes} bytes of header fields, more than the limit of {}",
                    self.config.max_header_bytes
                ),
            });
        }
        Ok(())
    }

    /// The stored media type of blob `id` (octet-stream if unknown or the id
    /// is malformed; the blob handler answers 404 for those anyway).
    fn media_type(&self, id: &str) -> std::borrow::Cow<'static, str> {
        let fallback = std::borrow::Cow::Borrowed("application/octet-stream");
        let Ok(blob_id) = id.parse::<BlobId>() else {
            return fallback;
        };
        match self.meta.get(BLOB_META_KEYSPACE, &blob_id.0) {
            Ok(Some(v)) => match std::str::from_utf8(&v) {
                Ok(s) => std::borrow::Cow::Owned(s.to_owned()),
                Err(_) => fallback,
            },
            _ => fallback,
        }
    }

    /// The stored track `id`.
    pub fn load_track(&self, id: &str) -> Result<Track, ApiError> {
        if !is_track_id(id) {
            return Err(ApiError::NotFound { what: "track" });
        }
        let value = self
            .meta
            .get(TRACKS_KEYSPACE, id.as_bytes())
            .map_err(|e| ApiError::storage("reading a track", e))?
            .ok_or(ApiError::NotFound { what: "track" })?;
        serde_json::from_slice(&value).map_err(|e| ApiError::Internal {
            message: format!("stored track {id} does not parse: {e}"),
        })
    }

    fn get_track(&self, id: &str) -> Result<Response<Body>, ApiError> {
        // Through the L1 cache: one store lookup per key per miss.
        Ok(crate::catalog::http::track_response(self, id))
    }

    async fn delete_track(
        self: &Arc<Self>,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, ApiError> {
        self.tokens.authorize(headers, &[Role::Creator])?;
        let track = self.load_track(id)?;
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.delete_track_blocking(&track))
            .await
            .map_err(join_error)??;
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        Ok(r)
    }

    /// Removes the record first (so the track is gone at once), then drops
    /// one reference to each of its blobs; a blob's `blob_meta` entry goes
    /// with its last reference. A crash between the two leaks references,
    /// never a dangling track.
    fn delete_track_blocking(&self, track: &Track) -> Result<(), ApiError> {
        let mut batch = Batch::new();
        let current = self
            .meta
            .get(TRACKS_KEYSPACE, track.id.as_bytes())
            .map_err(|e| ApiError::storage("reading a track", e))?;
        batch.require(TRACKS_KEYSPACE, track.id.as_bytes(), current.as_deref());
        batch.delete(TRACKS_KEYSPACE, track.id.as_bytes());
        // The catalog records go in the same batch as the record they mirror.
        let old: Option<Track> = current
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok());
        crate::catalog::index_track(&mut batch, old.as_ref(), None);
        self.meta
            .commit(batch)
            .map_err(|e| ApiError::storage("deleting a track", e))?;
        let mut gone = Batch::new();
        for blob in track.blob_ids() {
            let Ok(blob_id) = blob.parse::<BlobId>() else {
                continue;
            };
            self.blobs
                .delete(&blob_id)
                .map_err(|e| ApiError::storage("releasing a blob", e))?;
            let still_there = self
                .blobs
                .stat(&blob_id)
                .map_err(|e| ApiError::storage("checking a blob", e))?
                .is_some();
            if !still_there {
                gone.delete(BLOB_META_KEYSPACE, blob_id.0);
            }
        }
        if !gone.is_empty() {
            self.meta
                .commit(gone)
                .map_err(|e| ApiError::storage("deleting blob metadata", e))?;
        }
        Ok(())
    }

    /// `GET /v1/tracks?raw=<content id>` (creator): the tracks whose
    /// original has exactly those bytes, so an uploader can skip a file
    /// that is a track already. Every status counts (a failed one included).
    fn find_tracks(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        self.tokens.authorize(headers, &[Role::Creator])?;
        let raw = form_pairs(query.unwrap_or(""))
            .find(|(k, _)| k == "raw")
            .map(|(_, v)| v)
            .ok_or_else(|| ApiError::bad_request("GET /v1/tracks needs raw=<content id>"))?;
        if raw.parse::<BlobId>().is_err() || raw.len() != 64 || raw != raw.to_ascii_lowercase() {
            return Err(ApiError::bad_request(
                "raw must be a content id: 64 lowercase hex digits",
            ));
        }
        let ids = crate::catalog::tracks_with_raw(&self.meta, &raw, 100)
            .map_err(|e| ApiError::storage("finding tracks by content", e))?;
        let mut items = Vec::new();
        for id in ids {
            match self.load_track(&id) {
                Ok(t) => items.push(serde_json::json!({
                    "id": t.id,
                    "status": t.status,
                    "failure_reason": t.failure_reason,
                    "created_ms": t.created_ms,
                })),
                // Deleted since the scan: not a match any more.
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "items": items }),
        ))
    }

    fn stream_track(&self, id: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let mut quality = "normal".to_owned();
        for (k, v) in form_pairs(query.unwrap_or("")) {
            if k == "quality" {
                quality = v;
            }
        }
        if !QUALITIES.contains(&quality.as_str()) {
            return Err(ApiError::bad_request(format!(
                "quality must be one of low, normal, high, original, not {:?}",
                quality.chars().take(32).collect::<String>()
            )));
        }
        let track = self.load_track(id)?;
        let blob = track.blob_for(&quality).ok_or_else(|| ApiError::Conflict {
            code: "tier_not_ready",
            message: format!(
                "quality {quality} of track {id} is not transcoded yet (status {}); \
                 quality=original is available now",
                serde_json::to_string(&track.status).unwrap_or_default()
            ),
        })?;
        let location = format!("/v1/blobs/{}", blob.blob_id);
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
        let value = HeaderValue::from_str(&location).map_err(|_| ApiError::Internal {
            message: "stored blob id is not a header value".into(),
        })?;
        r.headers_mut().insert(header::LOCATION, value);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        Ok(r)
    }

    fn stats_json(&self) -> serde_json::Value {
        let b = self.blobs.stats();
        let m = self.meta.stats();
        let q = self.queue.stats();
        serde_json::json!({
            "blob": {
                "blobs": b.blobs, "chunks": b.chunks, "chunks_live": b.chunks_live,
                "live_bytes": b.live_bytes, "dead_bytes": b.dead_bytes,
                "segments": b.segments.len(), "poisoned": b.poisoned,
                "puts": b.puts, "deletes": b.deletes, "compactions": b.compactions,
            },
            "meta": {
                "records": m.records, "head_lsn": m.head_lsn, "log_bytes": m.log_bytes,
                "snapshot_lsn": m.snapshot_lsn, "commits": m.commits, "syncs": m.syncs,
                "tracks": self.meta.keyspace_len(TRACKS_KEYSPACE),
            },
            "queue": {
                "depth": q.depth, "in_flight": q.in_flight, "dead": q.dead,
                "oldest_waiting_age_ms": q.oldest_waiting_age_ms,
            },
        })
    }

    /// The whole `/metrics` text: request metrics plus engine statistics.
    pub fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        self.metrics.render(&mut out);
        let b = self.blobs.stats();
        let m = self.meta.stats();
        let q = self.queue.stats();
        let gauges: [(&str, &str, f64); 18] = [
            (
                "spindle_queue_depth",
                "Transcode jobs waiting.",
                q.depth as f64,
            ),
            (
                "spindle_queue_in_flight",
                "Transcode jobs leased.",
                q.in_flight as f64,
            ),
            (
                "spindle_queue_dead",
                "Transcode jobs dead-lettered.",
                q.dead as f64,
            ),
            (
                "spindle_queue_oldest_waiting_age_seconds",
                "Age of the oldest waiting transcode job.",
                q.oldest_waiting_age_ms as f64 / 1e3,
            ),
            ("spindle_blob_blobs", "Live blobs.", b.blobs as f64),
            (
                "spindle_blob_chunks",
                "Chunks in the index, garbage included.",
                b.chunks as f64,
            ),
            (
                "spindle_blob_chunks_live",
                "Referenced chunks.",
                b.chunks_live as f64,
            ),
            (
                "spindle_blob_live_bytes",
                "Bytes of live records.",
                b.live_bytes as f64,
            ),
            (
                "spindle_blob_dead_bytes",
                "Bytes of dead records awaiting compaction.",
                b.dead_bytes as f64,
            ),
            (
                "spindle_blob_segments",
                "Segment files.",
                b.segments.len() as f64,
            ),
            (
                "spindle_blob_poisoned",
                "1 if a failed sync poisoned the blob store.",
                f64::from(u8::from(b.poisoned)),
            ),
            (
                "spindle_blob_cache_bytes",
                "Bytes of hot chunks the blob chunk cache keeps, verified.",
                b.cache_bytes as f64,
            ),
            (
                "spindle_blob_cache_locked_bytes",
                "Bytes of page-cache pages locked for kept chunks (sent with sendfile).",
                b.cache_locked_bytes as f64,
            ),
            (
                "spindle_meta_records",
                "Metadata records.",
                m.records as f64,
            ),
            (
                "spindle_meta_head_lsn",
                "Last committed LSN.",
                m.head_lsn as f64,
            ),
            (
                "spindle_meta_log_bytes",
                "Bytes of metadata log.",
                m.log_bytes as f64,
            ),
            (
                "spindle_meta_feed_retained_lsns",
                "LSNs of log the change feed still retains (head - oldest retained).",
                m.head_lsn.saturating_sub(m.oldest_feed_lsn) as f64,
            ),
            (
                "spindle_meta_poisoned",
                "1 if a failed sync poisoned the metadata store.",
                f64::from(u8::from(self.meta.is_poisoned())),
            ),
        ];
        for (name, help, value) in gauges {
            metrics::gauge(&mut out, name, help, value);
        }
        let feeds = self.meta.feed_positions();
        let feed_lag: Vec<(String, f64)> = feeds
            .iter()
            .map(|f| {
                let behind = m.head_lsn.saturating_sub(f.position);
                (f.consumer.clone(), behind as f64)
            })
            .collect();
        metrics::labelled_gauges(
            &mut out,
            "spindle_meta_feed_lag_lsns",
            "Committed batches a change-feed consumer has not consumed (head LSN - its position; a closed consumer's checkpoint).",
            "consumer",
            &feed_lag,
        );
        let feed_open: Vec<(String, f64)> = feeds
            .into_iter()
            .map(|f| (f.consumer, f64::from(u8::from(f.open))))
            .collect();
        metrics::labelled_gauges(
            &mut out,
            "spindle_meta_feed_consumer_open",
            "1 if the change-feed consumer is running in this process.",
            "consumer",
            &feed_open,
        );
        let w = self.workers.stats();
        let pool: [(&str, &str, f64); 3] = [
            (
                "spindle_transcode_pool_size",
                "In-process transcode worker threads.",
                w.size as f64,
            ),
            (
                "spindle_transcode_pool_busy",
                "Transcode worker threads running a job.",
                w.busy as f64,
            ),
            (
                "spindle_transcode_pool_max",
                "Most in-process transcode worker threads.",
                w.max as f64,
            ),
        ];
        for (name, help, value) in pool {
            metrics::gauge(&mut out, name, help, value);
        }
        let jobs: [(&str, &str, u64); 4] = [
            (
                "spindle_transcode_jobs_ready_total",
                "Transcode jobs that made a track ready.",
                w.jobs_ready,
            ),
            (
                "spindle_transcode_jobs_failed_total",
                "Transcode jobs that failed for good.",
                w.jobs_failed,
            ),
            (
                "spindle_transcode_jobs_retried_total",
                "Transcode attempts nacked for a retry.",
                w.jobs_retried,
            ),
            (
                "spindle_transcode_panics_total",
                "Transcode jobs that panicked at the pool boundary.",
                w.panics,
            ),
        ];
        for (name, help, value) in jobs {
            metrics::counter(&mut out, name, help, value);
        }
        let counters: [(&str, &str, u64); 9] = [
            (
                "spindle_blob_cache_hits_total",
                "Chunk reads answered by the chunk cache.",
                b.cache_hits,
            ),
            (
                "spindle_blob_cache_misses_total",
                "Chunk reads the chunk cache did not hold.",
                b.cache_misses,
            ),
            (
                "spindle_blob_cache_admitted_total",
                "Chunks read whole, verified and kept by the chunk cache.",
                b.cache_admitted,
            ),
            ("spindle_blob_puts_total", "Blobs stored.", b.puts),
            (
                "spindle_blob_deletes_total",
                "Blob references dropped.",
                b.deletes,
            ),
            (
                "spindle_blob_syncs_total",
                "Blob store fdatasyncs.",
                b.syncs,
            ),
            (
                "spindle_blob_compactions_total",
                "Compactions.",
                b.compactions,
            ),
            (
                "spindle_meta_commits_total",
                "Metadata batches committed.",
                m.commits,
            ),
            ("spindle_meta_syncs_total", "Metadata log syncs.", m.syncs),
        ];
        for (name, help, value) in counters {
            metrics::counter(&mut out, name, help, value);
        }
        self.discovery.render_metrics(&mut out);
        self.charts.render_metrics(&mut out);
        out
    }
}

/// 413 for a non-upload request announcing a body over the small limit.
/// Bodies without a length are never read on these routes, so they cost
/// nothing beyond hyper's own buffer.
fn check_small_body(req: &Request<Incoming>) -> Result<(), ApiError> {
    match req.body().size_hint().upper() {
        Some(n) if n > SMALL_BODY_LIMIT_BYTES => Err(ApiError::PayloadTooLarge {
            limit_bytes: SMALL_BODY_LIMIT_BYTES,
        }),
        _ => Ok(()),
    }
}

/// A task of the blocking pool panicked or was cancelled.
pub fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal {
        message: format!("blocking task failed: {e}"),
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `application/x-www-form-urlencoded` pairs of a query string, decoded.
/// Malformed escapes are kept literally.
pub fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let pairs: Vec<_> =
            form_pairs("title=Hello+World&artist=Caf%C3%A9&x&bad=%zz&end=%4").collect();
        assert_eq!(
            pairs,
            vec![
                ("title".into(), "Hello World".into()),
                ("artist".into(), "Café".into()),
                ("x".into(), "".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
    }
}
