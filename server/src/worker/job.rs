//! One transcode job end to end: read the payload, heartbeat the lease,
//! transcode the raw blob into three streaming blob sinks, hold the blobs,
//! commit `ready` or `failed` with the ack, or nack a transient failure.
//!
//! Failure classes: a permanent [`spindle_media::MediaError`] (bad input)
//! marks the track `failed` and acks the job (no retry); a transient one
//! (storage, timeout, cancellation) nacks it for a retry with backoff, and
//! the last allowed attempt marks the track `failed` instead, so a track
//! never stays `processing` with no job. A job whose payload does not parse
//! is dead-lettered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_engine::blob::BlobId;
use spindle_engine::queue::Lease;
use spindle_media::{Limits, MediaError, TierSinks, TranscodeReport};

use super::complete::{self, Committed, Completion, Finish, TIER_MEDIA_TYPE};
use super::sink::BlobSink;
use super::source::{LocalBlob, RangeSource};
use super::{Deps, WorkerConfig, WorkerError};
use crate::track::{
    BlobRefJson, LoudnessJson, MediaInfo, TrackTags, TranscodeJob, TRANSCODE_MAX_ATTEMPTS,
};

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Ready,
    /// Permanently failed; the track says why.
    Failed {
        reason: String,
    },
    /// Nacked for a retry.
    Retry {
        reason: String,
    },
    /// The track was deleted meanwhile; acked.
    TrackGone,
    /// Another worker holds the job now; nothing committed.
    LeaseLost,
    /// The payload is unreadable: dead-lettered.
    DeadLettered {
        reason: String,
    },
}

/// The media findings of a report, as stored on the track (cover added by
/// the caller once stored).
pub fn media_info(report: &TranscodeReport) -> MediaInfo {
    let t = &report.tags;
    MediaInfo {
        duration_ms: Some(report.duration_ms),
        channels: Some(report.stream.channels),
        sample_rate_hz: Some(report.stream.sample_rate),
        tags: Some(TrackTags {
            title: t.title.clone(),
            artists: t.artists.clone(),
            album: t.album.clone(),
            album_artist: t.album_artist.clone(),
            genres: t.genres.clone(),
            track_number: t.track_number,
            track_total: t.track_total,
            disc_number: t.disc_number,
            disc_total: t.disc_total,
            year: t.year,
        }),
        cover: None,
        loudness: Some(LoudnessJson {
            integrated_lufs: report.loudness.integrated_lufs,
            true_peak_dbtp: report.loudness.true_peak_dbtp,
            gain_db: report.loudness.gain_db,
        }),
    }
}

/// The per-job bounds of `config`, with a fresh deadline and `cancel`.
pub fn limits(config: &WorkerConfig, cancel: Arc<AtomicBool>) -> Limits {
    Limits {
        max_duration_ms: config.max_duration_ms,
        max_decoded_samples: config.max_decoded_samples,
        deadline: Some(Instant::now() + Duration::from_millis(config.timeout_ms)),
        cancel: Some(cancel),
        encoder_threads: config.encoder_threads as usize,
    }
}

/// Keeps a lease alive from a thread until dropped; on a lost lease sets
/// the cancel flag so the transcode stops early.
pub struct Heartbeat {
    done: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    /// Calls `extend` every `lease_ms / 3`; `extend` returning false means
    /// the lease is lost.
    pub fn start(
        lease_ms: u64,
        cancel: Arc<AtomicBool>,
        mut extend: impl FnMut() -> bool + Send + 'static,
    ) -> Heartbeat {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let every = Duration::from_millis((lease_ms / 3).max(10));
        let handle = std::thread::Builder::new()
            .name("spindle-heartbeat".into())
            .spawn(move || {
                let mut next = Instant::now() + every;
                while !d.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20).min(every));
                    if Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + every;
                    if !extend() {
                        cancel.store(true, Ordering::Release);
                        return;
                    }
                }
            })
            .ok();
        Heartbeat { done, handle }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs the job of `lease` to its end. `stop` is the pool's shutdown flag:
/// set, it cancels the transcode (the job is nacked and redelivered).
pub fn run_job(deps: &Deps, lease: Lease, config: &WorkerConfig, stop: &AtomicBool) -> JobOutcome {
    let job: TranscodeJob = match serde_json::from_slice(&lease.payload) {
        Ok(j) => j,
        Err(e) => {
            let reason = format!("unreadable transcode job payload: {e}");
            let _ = deps.queue.nack(&lease, &reason, true);
            return JobOutcome::DeadLettered { reason };
        }
    };
    let cancel = Arc::new(AtomicBool::new(stop.load(Ordering::Acquire)));
    let current = Arc::new(Mutex::new(lease.clone()));
    let beat = {
        let queue = deps.queue.clone();
        let current = current.clone();
        let lease_ms = config.lease_ms;
        Heartbeat::start(config.lease_ms, cancel.clone(), move || {
            let mut l = current.lock().unwrap_or_else(|p| p.into_inner());
            match queue.extend(&l, lease_ms) {
                Ok(new) => {
                    *l = new;
                    true
                }
                Err(spindle_engine::meta::Error::LeaseLost { .. }) => false,
                // A transient store error: try again at the next beat.
                Err(_) => true,
            }
        })
    };
    // Forward the pool's stop flag into this job's cancel flag.
    let result = transcode_job(deps, &job, config, cancel.clone(), stop);
    drop(beat);
    let lease = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let finish = match result {
        Ok(completion) => Finish::Ready(Box::new(completion)),
        Err(JobError::Worker(WorkerError::NotProcessing)) => {
            return match complete::commit(
                deps,
                &lease,
                &job.track_id,
                &Finish::Failed {
                    reason: String::new(),
                },
            ) {
                Ok(_) => JobOutcome::TrackGone,
                Err(WorkerError::LeaseLost) => JobOutcome::LeaseLost,
                Err(e) => retry(deps, &lease, &e.to_string()),
            };
        }
        Err(JobError::Worker(WorkerError::LeaseLost)) => return JobOutcome::LeaseLost,
        Err(JobError::Worker(e)) => {
            return retry_or_fail(deps, &lease, &job.track_id, &e.to_string());
        }
        Err(JobError::Media(e)) if e.is_permanent() => Finish::Failed {
            reason: e.to_string(),
        },
        Err(JobError::Media(e)) => {
            if cancel.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                // Cancelled by a lost lease: the new holder carries on.
                return JobOutcome::LeaseLost;
            }
            return retry_or_fail(deps, &lease, &job.track_id, &e.to_string());
        }
    };
    match complete::commit(deps, &lease, &job.track_id, &finish) {
        Ok(Committed::Ready) => JobOutcome::Ready,
        Ok(Committed::Failed) => JobOutcome::Failed {
            reason: match finish {
                Finish::Failed { reason } => reason,
                Finish::Ready(_) => String::new(),
            },
        },
        Ok(Committed::TrackGone) => JobOutcome::TrackGone,
        Err(WorkerError::LeaseLost) => JobOutcome::LeaseLost,
        Err(e) => retry(deps, &lease, &e.to_string()),
    }
}

fn retry(deps: &Deps, lease: &Lease, reason: &str) -> JobOutcome {
    let _ = deps.queue.nack(lease, reason, false);
    JobOutcome::Retry {
        reason: reason.to_owned(),
    }
}

/// A transient failure: retried, unless this was the last attempt.
fn retry_or_fail(deps: &Deps, lease: &Lease, track_id: &str, reason: &str) -> JobOutcome {
    if lease.attempt < TRANSCODE_MAX_ATTEMPTS {
        return retry(deps, lease, reason);
    }
    let reason = format!("gave up after {} attempts: {reason}", lease.attempt);
    match complete::commit(
        deps,
        lease,
        track_id,
        &Finish::Failed {
            reason: reason.clone(),
        },
    ) {
        Ok(_) => JobOutcome::Failed { reason },
        Err(WorkerError::LeaseLost) => JobOutcome::LeaseLost,
        Err(e) => retry(deps, lease, &e.to_string()),
    }
}

#[derive(Debug)]
enum JobError {
    Media(MediaError),
    Worker(WorkerError),
}

impl From<WorkerError> for JobError {
    fn from(e: WorkerError) -> Self {
        JobError::Worker(e)
    }
}

fn transcode_job(
    deps: &Deps,
    job: &TranscodeJob,
    config: &WorkerConfig,
    cancel: Arc<AtomicBool>,
    stop: &AtomicBool,
) -> Result<Completion, JobError> {
    let Some((_, track)) = complete::load_track(deps, &job.track_id)? else {
        return Err(WorkerError::NotProcessing.into());
    };
    if track.status != crate::track::Status::Processing {
        return Err(WorkerError::NotProcessing.into());
    }
    let raw_id: BlobId = job.raw_blob_id.parse().map_err(|_| {
        JobError::Media(MediaError::NotAudio {
            reason: "the upload's blob id is malformed".into(),
        })
    })?;
    let Some(info) = deps.blobs.stat(&raw_id).map_err(WorkerError::from)? else {
        return Err(JobError::Media(MediaError::NotAudio {
            reason: "the uploaded file is missing from storage".into(),
        }));
    };
    let source = RangeSource::new(
        LocalBlob {
            blobs: deps.blobs.clone(),
            id: raw_id,
        },
        info.size_bytes,
    );
    let mut low = BlobSink::new(deps.blobs.writer());
    let mut normal = BlobSink::new(deps.blobs.writer());
    let mut high = BlobSink::new(deps.blobs.writer());
    let limits = limits(config, cancel.clone());
    // Forwards the pool's stop into the cancel flag while transcoding.
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                if stop.load(Ordering::Acquire) {
                    cancel.store(true, Ordering::Release);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let r = spindle_media::transcode(
            source,
            Some(info.size_bytes),
            track.fields.filename.as_deref(),
            TierSinks {
                low: &mut low,
                normal: &mut normal,
                high: &mut high,
            },
            &limits,
        );
        done.store(true, Ordering::Release);
        r
    })
    .map_err(JobError::Media)?;
    let mut tiers = BTreeMap::new();
    for (quality, sink, tier) in [
        ("low", low, &report.tiers[0]),
        ("normal", normal, &report.tiers[1]),
        ("high", high, &report.tiers[2]),
    ] {
        let (id, size_bytes, writer) = sink.into_parts();
        complete::hold_blob(deps, &job.track_id, id, writer)?;
        tiers.insert(
            quality.to_owned(),
            BlobRefJson {
                blob_id: id.to_string(),
                size_bytes,
                media_type: TIER_MEDIA_TYPE.to_owned(),
                bitrate_kbps: Some(tier.bitrate_target_kbps),
            },
        );
    }
    let mut media = media_info(&report);
    if let Some(cover) = &report.cover {
        let mut sink = BlobSink::new(deps.blobs.writer());
        std::io::Write::write_all(&mut sink, &cover.bytes).map_err(|e| {
            JobError::Media(MediaError::SinkIo {
                tier: "cover",
                source: e,
            })
        })?;
        let (id, size_bytes, writer) = sink.into_parts();
        complete::hold_blob(deps, &job.track_id, id, writer)?;
        media.cover = Some(BlobRefJson {
            blob_id: id.to_string(),
            size_bytes,
            media_type: cover.mime.clone(),
            bitrate_kbps: None,
        });
    }
    Ok(Completion { tiers, media })
}
