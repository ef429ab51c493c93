//! The transcode worker: leases jobs from the `transcode` queue, runs
//! [`spindle_media::transcode`] over the raw blob and commits the result.
//!
//! - [`source`]: `Read + Seek` over a blob read by ranges (never whole).
//! - [`sink`]: a tier sink streaming into a [`spindle_engine::blob::BlobWriter`]
//!   while hashing, so the blob id is known before the blob is finished.
//! - [`complete`]: job completion: the held-blob ledger, the `ready` and
//!   `failed` batches.
//! - [`job`]: one job end to end (heartbeat, bounds, outcome).
//! - [`pool`]: the in-process pool of OS threads whose size follows the queue.
//!
//! **Invariants:**
//! - A track becomes `ready` (tiers, metadata, blob_meta, catalog records)
//!   in the same batch that acks its job; a permanent failure sets `failed`
//!   with the reason in the same batch that acks the job (the job is acked,
//!   not dead-lettered: the track record is where a person looks, and the
//!   dead-letter keyspace is kept for jobs that cannot even be read).
//! - Every blob reference a job takes is recorded in the job's ledger
//!   (keyspace [`HELD_KEYSPACE`], keyed by track id) before anything else
//!   relies on it, and a redelivered job reuses a held blob instead of
//!   finishing it again; the completing batch deletes the ledger, and
//!   references no track took are released after it commits. So a job run
//!   any number of times leaves each tier blob with exactly the references
//!   the track holds. (The one gap: a crash between a blob's `finish` and the
//!   ledger commit, microseconds, leaks one reference: storage kept, never a
//!   blob lost.)
//! - Transcoding is CPU-bound and blocking: it runs on OS threads, never on
//!   the tokio runtime.

pub mod complete;
pub mod job;
pub mod pool;
pub mod remote;
pub mod sink;
pub mod source;

use spindle_engine::blob::BlobStore;
use spindle_engine::meta::MetaStore;
use spindle_engine::queue::Queue;

pub use complete::HELD_KEYSPACE;
pub use job::{run_job, JobOutcome};
pub use pool::{Pool, PoolStats};

/// The stores a worker uses.
#[derive(Clone)]
pub struct Deps {
    pub blobs: BlobStore,
    pub meta: MetaStore,
    pub queue: Queue,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps").finish_non_exhaustive()
    }
}

/// Per-job bounds and pool sizing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Threads kept even when idle.
    pub pool_min: u32,
    /// Most threads; 0 disables the in-process pool (remote workers only).
    pub pool_max: u32,
    /// Grow when this many jobs wait and every thread is busy.
    pub scale_up_depth_jobs: u64,
    /// Grow when the oldest waiting job has waited this long.
    pub scale_up_age_ms: u64,
    /// A thread above `pool_min` that found no job for this long exits.
    pub idle_ms: u64,
    /// How often an idle thread polls the queue.
    pub poll_ms: u64,
    /// Lease visibility; the heartbeat extends it every third of it.
    pub lease_ms: u64,
    /// Longest audio accepted.
    pub max_duration_ms: u64,
    /// Most decoded samples (frames x channels) accepted.
    pub max_decoded_samples: u64,
    /// Wall-clock bound of one attempt.
    pub timeout_ms: u64,
    /// Encoder threads per job (0: spindle-media's default).
    pub encoder_threads: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let limits = spindle_media::Limits::default();
        WorkerConfig {
            pool_min: 1,
            pool_max: 2,
            scale_up_depth_jobs: 2,
            scale_up_age_ms: 5_000,
            idle_ms: 30_000,
            poll_ms: 100,
            lease_ms: 30_000,
            max_duration_ms: limits.max_duration_ms,
            max_decoded_samples: limits.max_decoded_samples,
            timeout_ms: 2 * 3600 * 1000,
            encoder_threads: 0,
        }
    }
}

/// Failures of the worker machinery (not of a file: those are
/// [`spindle_media::MediaError`]s and end as a track's `failure_reason`).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("metadata store: {0}")]
    Meta(#[from] spindle_engine::meta::Error),
    #[error("blob store: {0}")]
    Blob(#[from] spindle_engine::blob::Error),
    #[error("stored record {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("the job's lease was lost (another worker holds it)")]
    LeaseLost,
    #[error("the track is no longer processing")]
    NotProcessing,
    #[error("contention on {what}: gave up after {attempts} attempts")]
    Contention { what: &'static str, attempts: u32 },
}

/// Milliseconds since the Unix epoch (record timestamps).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
