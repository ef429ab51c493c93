//! The in-process worker pool: OS threads leasing transcode jobs, sized by
//! the queue.
//!
//! A supervisor thread looks at [`spindle_engine::queue::Queue::stats`]
//! every poll: when jobs wait and every worker is busy and either the
//! backlog reaches `scale_up_depth_jobs` or the oldest job has waited
//! `scale_up_age_ms`, it starts one more worker (up to `pool_max`). A worker
//! above `pool_min` that finds no job for `idle_ms` exits. A panic in a job
//! is caught at this boundary: the job's lease expires and it is redelivered
//! (media already turns decoder panics into a failed track).
//!
//! **Invariant:** `size` counts live worker threads; it only changes under
//! the supervisor's spawn and a worker's own exit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{run_job, Deps, JobOutcome, WorkerConfig};

/// Pool counters for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub size: u64,
    pub busy: u64,
    pub max: u64,
    pub jobs_ready: u64,
    pub jobs_failed: u64,
    pub jobs_retried: u64,
    pub jobs_lost: u64,
    pub panics: u64,
}

struct Inner {
    deps: Deps,
    config: WorkerConfig,
    stop: AtomicBool,
    size: AtomicU64,
    busy: AtomicU64,
    ready: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    panics: AtomicU64,
    next_id: AtomicU64,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

/// A running pool; dropping it stops it (in-flight jobs are cancelled and
/// nacked, so they are redelivered).
pub struct Pool {
    inner: Arc<Inner>,
    supervisor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// Starts `config.pool_min` workers and the supervisor (nothing at all
    /// when `pool_max` is 0).
    pub fn start(deps: Deps, config: WorkerConfig) -> Pool {
        let inner = Arc::new(Inner {
            deps,
            config,
            stop: AtomicBool::new(false),
            size: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            handles: Mutex::new(Vec::new()),
        });
        let supervisor = if inner.config.pool_max == 0 {
            None
        } else {
            for _ in 0..inner.config.pool_min.min(inner.config.pool_max) {
                spawn_worker(&inner);
            }
            let i = inner.clone();
            std::thread::Builder::new()
                .name("spindle-pool".into())
                .spawn(move || supervise(&i))
                .ok()
        };
        Pool { inner, supervisor }
    }

    pub fn stats(&self) -> PoolStats {
        let i = &self.inner;
        PoolStats {
            size: i.size.load(Ordering::Relaxed),
            busy: i.busy.load(Ordering::Relaxed),
            max: u64::from(i.config.pool_max),
            jobs_ready: i.ready.load(Ordering::Relaxed),
            jobs_failed: i.failed.load(Ordering::Relaxed),
            jobs_retried: i.retried.load(Ordering::Relaxed),
            jobs_lost: i.lost.load(Ordering::Relaxed),
            panics: i.panics.load(Ordering::Relaxed),
        }
    }

    /// Stops the workers and waits for them.
    pub fn stop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        let handles =
            std::mem::take(&mut *self.inner.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_worker(inner: &Arc<Inner>) {
    let n = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let i = inner.clone();
    inner.size.fetch_add(1, Ordering::AcqRel);
    let spawned = std::thread::Builder::new()
        .name(format!("spindle-worker-{n}"))
        .spawn(move || {
            work(&i, n);
            i.size.fetch_sub(1, Ordering::AcqRel);
        });
    match spawned {
        Ok(h) => {
            let mut hs = inner.handles.lock().unwrap_or_else(|p| p.into_inner());
            hs.retain(|h| !h.is_finished());
            hs.push(h);
        }
        Err(error) => {
            inner.size.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%error, "cannot start a transcode worker thread");
        }
    }
}

fn supervise(inner: &Arc<Inner>) {
    let c = &inner.config;
    let tick = Duration::from_millis(c.poll_ms.max(10));
    while !inner.stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let q = inner.deps.queue.stats();
        let size = inner.size.load(Ordering::Acquire);
        let busy = inner.busy.load(Ordering::Acquire);
        let pressed = q.depth > 0
            && busy >= size
            && (q.depth >= c.scale_up_depth_jobs || q.oldest_waiting_age_ms >= c.scale_up_age_ms);
        if size < u64::from(c.pool_min) || (pressed && size < u64::from(c.pool_max)) {
            spawn_worker(inner);
        }
    }
}

fn work(inner: &Arc<Inner>, n: u64) {
    let worker_id = format!("{}-{}-{n}", hostname(), std::process::id());
    let c = &inner.config;
    let poll = Duration::from_millis(c.poll_ms.max(1));
    let mut idle_since = Instant::now();
    while !inner.stop.load(Ordering::Acquire) {
        let lease = match inner.deps.queue.lease(&worker_id, c.lease_ms) {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "leasing a transcode job failed");
                None
            }
        };
        let Some(lease) = lease else {
            if idle_since.elapsed() >= Duration::from_millis(c.idle_ms) {
                // Leave if the pool keeps its minimum without us (two
                // leaving at once may dip below it; the supervisor refills).
                if inner.size.load(Ordering::Acquire) > u64::from(c.pool_min) {
                    return;
                }
            }
            std::thread::sleep(poll);
            continue;
        };
        inner.busy.fetch_add(1, Ordering::AcqRel);
        let job_id = lease.job_id;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(&inner.deps, lease, c, &inner.stop)
        }));
        inner.busy.fetch_sub(1, Ordering::AcqRel);
        idle_since = Instant::now();
        let counter = match &outcome {
            Ok(JobOutcome::Ready) => &inner.ready,
            Ok(JobOutcome::Failed { .. } | JobOutcome::DeadLettered { .. }) => &inner.failed,
            Ok(JobOutcome::Retry { .. }) => &inner.retried,
            Ok(JobOutcome::TrackGone | JobOutcome::LeaseLost) => &inner.lost,
            Err(_) => &inner.panics,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(o) => tracing::info!(job = %job_id, outcome = ?o, "transcode job done"),
            Err(_) => {
                tracing::error!(job = %job_id, "transcode job panicked; it will be redelivered")
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "local".into())
}
