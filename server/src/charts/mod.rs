//! Plays and Top-50 charts: `POST /v1/plays` logs listening events durably;
//! an aggregator thread counts streams from the change feed, off the request
//! path, and publishes a materialized snapshot that `GET /v1/charts/top`
//! answers from.
//!
//! - [`event`]: wire form, checks (30 s / whole-track rule, time window),
//!   the logged record and its dedupe key.
//! - [`ingest`]: one durable batch per request, duplicates skipped.
//! - [`core`]: exact counts per track per day, week and all time, with the
//!   per-listener-track-day cap; memory per distinct track, not per event.
//! - [`worker`]: the feed consumer; state and feed position commit in one
//!   batch, so nothing is counted twice or lost across a crash.
//! - [`snapshot`]: the Top-N lists per window and group with rank changes.
//! - [`time`], [`genre`]: UTC day/week arithmetic, RFC 3339; genre folding.
//! - [`http`]: the two handlers.
//!
//! **Invariants:** a request is answered only after its events are durable;
//! the charts are never computed on the request path; every event is
//! counted at most once (dedupe key + conditions at ingest, applied LSN in
//! the state batch at aggregation) and at least once (the feed delivers
//! every committed batch after the persisted position).
//! **Boundary:** the worker is one std thread started by [`Charts::start`]
//! and joined by [`Charts::shutdown`] (or drop); it talks to the rest of the
//! server only through the store and [`worker::Shared`].

pub mod core;
pub mod event;
pub mod genre;
pub mod http;
pub mod ingest;
pub mod snapshot;
pub mod time;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use spindle_engine::meta::MetaStore;

use self::core::{CoreConfig, STREAMS_CAP_MAX};
use self::event::Policy;
use self::snapshot::Snapshot;
use self::worker::{Shared, Worker, WorkerConfig};

/// Failures of the charts.
#[derive(Debug, thiserror::Error)]
pub enum ChartsError {
    #[error("metadata store: {0}")]
    Meta(#[from] spindle_engine::meta::Error),
    #[error("corrupt chart state at key {key_hex}: {reason}")]
    Corrupt {
        key_hex: String,
        reason: &'static str,
    },
    #[error("invalid charts setting {name}={value:?}: {reason}")]
    Config {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot start the charts worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Settings of the charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChartsConfig {
    pub worker: WorkerConfig,
    pub policy: Policy,
}

impl ChartsConfig {
    /// The defaults overridden by `SPINDLE_CHARTS_REFRESH_MS`,
    /// `SPINDLE_CHARTS_STREAMS_PER_DAY_MAX` (per listener and track) and
    /// `SPINDLE_CHARTS_FUTURE_SKEW_MS` when present in `vars`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ChartsError> {
        let mut c = ChartsConfig::default();
        for (name, value) in vars {
            let parse = |name: &'static str, lo: u64, hi: u64| {
                value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|v| (lo..=hi).contains(v))
                    .ok_or_else(|| ChartsError::Config {
                        name,
                        value: value.clone(),
                        reason: "not an integer in range",
                    })
            };
            match name.as_str() {
                "SPINDLE_CHARTS_REFRESH_MS" => {
                    c.worker.refresh_ms = parse("SPINDLE_CHARTS_REFRESH_MS", 1, 3_600_000)?
                }
                "SPINDLE_CHARTS_STREAMS_PER_DAY_MAX" => {
                    let v = parse(
                        "SPINDLE_CHARTS_STREAMS_PER_DAY_MAX",
                        1,
                        u64::from(STREAMS_CAP_MAX),
                    )?;
                    c.worker.core = CoreConfig {
                        streams_per_listener_track_day_max: u32::try_from(v).unwrap_or(5),
                    };
                }
                "SPINDLE_CHARTS_FUTURE_SKEW_MS" => {
                    c.policy.future_skew_ms = parse("SPINDLE_CHARTS_FUTURE_SKEW_MS", 0, 3_600_000)?
                }
                _ => {}
            }
        }
        Ok(c)
    }
}

/// The running charts: shared snapshot and stats, and the worker thread.
pub struct Charts {
    pub config: ChartsConfig,
    pub shared: Arc<Shared>,
    store: MetaStore,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Charts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charts")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Charts {
    /// Loads the aggregator's state from `store` (errors surface here, at
    /// open), publishes a first snapshot and starts the worker thread.
    pub fn start(store: &MetaStore, config: ChartsConfig) -> Result<Charts, ChartsError> {
        let now = store.clock().now_ms();
        let shared = Arc::new(Shared::new(Snapshot::empty(now, config.worker.chart_size)));
        let mut worker = Worker::open(store, config.worker, shared.clone())?;
        worker.publish();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("charts".into())
            .spawn(move || worker.run(&stop2))
            .map_err(ChartsError::Spawn)?;
        Ok(Charts {
            config,
            shared,
            store: store.clone(),
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    /// All-time plays of `track_id` (32 hex digits) as last flushed; 0 when
    /// unknown. Search breaks ties with it.
    pub fn all_time_plays(&self, track_id: &str) -> u64 {
        match u128::from_str_radix(track_id, 16) {
            Ok(track) if track_id.len() == 32 => worker::flushed_all_time_plays(&self.store, track),
            _ => 0,
        }
    }

    /// The store plays are logged in.
    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    /// Stops the worker after its final flush and waits for it. Idempotent.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("charts worker panicked");
            }
        }
    }

    /// Appends the charts' Prometheus lines to `out`.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::{counter, gauge};
        let s = &self.shared.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 11] = [
            (
                "spindle_plays_accepted_total",
                "Play events logged.",
                get(&s.events_accepted),
            ),
            (
                "spindle_plays_duplicate_total",
                "Play events already logged.",
                get(&s.events_duplicate),
            ),
            (
                "spindle_plays_refused_total",
                "Play events refused.",
                get(&s.events_refused),
            ),
            (
                "spindle_charts_events_applied_total",
                "Logged plays the aggregator applied since start.",
                get(&s.events_applied),
            ),
            (
                "spindle_charts_streams_counted_total",
                "Streams counted since start.",
                get(&s.streams_counted),
            ),
            (
                "spindle_charts_streams_capped_total",
                "Streams over the per-listener cap since start.",
                get(&s.streams_capped),
            ),
            (
                "spindle_charts_plays_not_stream_total",
                "Plays too short to count since start.",
                get(&s.plays_not_stream),
            ),
            (
                "spindle_charts_plays_too_late_total",
                "Plays for already-pruned days since start.",
                get(&s.plays_too_late),
            ),
            (
                "spindle_charts_records_malformed_total",
                "Play records that did not decode.",
                get(&s.records_malformed),
            ),
            (
                "spindle_charts_flushes_total",
                "State batches committed.",
                get(&s.flushes),
            ),
            (
                "spindle_charts_worker_errors_total",
                "Worker reloads after an error.",
                get(&s.worker_errors),
            ),
        ];
        for (name, help, v) in counters {
            counter(out, name, help, v);
        }
        let snap = self.snapshot();
        let now = self.store.clock().now_ms();
        let gauges: [(&str, &str, f64); 4] = [
            (
                "spindle_charts_feed_lag_lsns",
                "LSNs the aggregator is behind the head.",
                get(&s.feed_lag_lsns) as f64,
            ),
            (
                "spindle_charts_tracks",
                "Distinct tracks counted.",
                get(&s.tracks) as f64,
            ),
            (
                "spindle_charts_snapshot_age_seconds",
                "Age of the published snapshot.",
                now.saturating_sub(snap.computed_at_ms) as f64 / 1e3,
            ),
            (
                "spindle_charts_applied_lsn",
                "Feed position the persisted chart state reflects.",
                get(&s.applied_lsn) as f64,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(out, name, help, v);
        }
    }
}

impl Drop for Charts {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl crate::search::Popularity for Charts {
    fn plays(&self, track_id: &str) -> u64 {
        self.all_time_plays(track_id)
    }
}
