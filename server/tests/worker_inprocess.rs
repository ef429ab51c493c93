//! The transcode worker in-process: a WAV becomes a ready track with three
//! decodable tiers; bad input fails once with a reason; a transient failure
//! is retried; a crashed attempt's blobs are reused on redelivery with no
//! extra references; a deleted track releases them; the pool drains a
//! backlog.

#![expect(clippy::unwrap_used, reason = "test helpers panic on a setup failure")]

use std::io::Cursor;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spindle_engine::blob::{BlobConfig, BlobId, BlobStore};
use spindle_engine::clock::SystemClock;
use spindle_engine::io::{open_storage, BackendChoice};
use spindle_engine::meta::{Batch, MetaConfig, MetaStore};
use spindle_engine::queue::{JobSpec, Queue, QueueConfig};
use spindle_server::track::{
    BlobRefJson, Kind, MediaInfo, Status, Track, TrackFields, TranscodeJob, BLOB_META_KEYSPACE,
    TRACKS_KEYSPACE, TRANSCODE_MAX_ATTEMPTS, TRANSCODE_QUEUE,
};
use spindle_server::worker::complete::{self, HELD_KEYSPACE};
use spindle_server::worker::sink::BlobSink;
use spindle_server::worker::{run_job, Deps, JobOutcome, Pool, WorkerConfig};

struct Env {
    _dir: tempfile::TempDir,
    deps: Deps,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let bs = open_storage(&dir.path().join("blobs"), BackendChoice::Portable).unwrap();
    let ms = open_storage(&dir.path().join("meta"), BackendChoice::Portable).unwrap();
    let blobs = BlobStore::open(bs, BlobConfig::default()).unwrap();
    let meta = MetaStore::open(ms, MetaConfig::default(), Arc::new(SystemClock)).unwrap();
    let queue = Queue::new(
        &meta,
        TRANSCODE_QUEUE,
        QueueConfig {
            backoff_base_ms: 20,
            backoff_max_ms: 40,
            jitter_seed: 1,
        },
    )
    .unwrap();
    Env {
        _dir: dir,
        deps: Deps { blobs, meta, queue },
    }
}

/// 16-bit PCM WAV of a 440 Hz tone with a little noise.
fn wav(seconds: f64, rate: u32, channels: u16) -> Vec<u8> {
    let frames = (seconds * f64::from(rate)) as u32;
    let data_len = frames * u32::from(channels) * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    let mut seed = 0x1234_5678u32;
    for i in 0..frames {
        let t = f64::from(i) / f64::from(rate);
        for c in 0..channels {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from(seed >> 16) / 65536.0 - 0.5;
            let v = (2.0 * std::f64::consts::PI * 440.0 * (1.0 + f64::from(c) * 0.5) * t).sin()
                * 0.4
                + noise * 0.05;
            out.extend_from_slice(&((v * 32767.0) as i16).to_le_bytes());
        }
    }
    out
}

/// Stores `bytes` as an upload would: raw blob, then track + job in one batch.
fn upload(deps: &Deps, bytes: &[u8], fields: TrackFields) -> String {
    let raw = deps.blobs.put(bytes).unwrap();
    let id = spindle_server::track::new_track_id().unwrap();
    let track = Track {
        id: id.clone(),
        status: Status::Processing,
        kind: Kind::Song,
        kind_submitted: false,
        fields,
        raw: BlobRefJson {
            blob_id: raw.id.to_string(),
            size_bytes: raw.size_bytes,
            media_type: "audio/wav".into(),
            bitrate_kbps: None,
        },
        tiers: Default::default(),
        failure_reason: None,
        created_ms: 1,
        updated_ms: 1,
        media: MediaInfo::default(),
    };
    let mut batch = Batch::new();
    batch.put(
        TRACKS_KEYSPACE,
        id.as_bytes(),
        serde_json::to_vec(&track).unwrap(),
    );
    batch.put(BLOB_META_KEYSPACE, raw.id.0, b"audio/wav");
    let payload = serde_json::to_vec(&TranscodeJob {
        track_id: id.clone(),
        raw_blob_id: raw.id.to_string(),
    })
    .unwrap();
    deps.queue
        .enqueue_in(
            &mut batch,
            JobSpec {
                idempotency_key: id.clone(),
                payload,
                max_attempts: TRANSCODE_MAX_ATTEMPTS,
            },
        )
        .unwrap();
    deps.meta.commit(batch).unwrap();
    id
}

fn track(deps: &Deps, id: &str) -> Option<Track> {
    complete::load_track(deps, id).unwrap().map(|(_, t)| t)
}

fn config() -> WorkerConfig {
    WorkerConfig {
        lease_ms: 300,
        ..WorkerConfig::default()
    }
}

fn lease(deps: &Deps, visibility_ms: u64) -> spindle_engine::queue::Lease {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = deps.queue.lease("test", visibility_ms).unwrap() {
            return l;
        }
        assert!(Instant::now() < until, "no job became due");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn blob_bytes(deps: &Deps, hex: &str) -> Vec<u8> {
    let id: BlobId = hex.parse().unwrap();
    let size = deps.blobs.stat(&id).unwrap().unwrap().size_bytes;
    let mut out = Vec::new();
    for piece in deps.blobs.read_range(&id, 0..size).unwrap() {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

/// Decodes a tier with spindle-media itself (a second, independent pass
/// through symphonia's Vorbis decoder) and returns (channels, rate, ms).
fn decode_tier(bytes: Vec<u8>) -> (u16, u32, u64) {
    let mut a = std::io::sink();
    let mut b = std::io::sink();
    let mut c = std::io::sink();
    let len = bytes.len() as u64;
    let r = spindle_media::transcode(
        Cursor::new(bytes),
        Some(len),
        None,
        spindle_media::TierSinks {
            low: &mut a,
            normal: &mut b,
            high: &mut c,
        },
        &spindle_media::Limits::default(),
    )
    .unwrap();
    assert_eq!(r.stream.codec, "vorbis", "{:?}", r.stream);
    (r.stream.channels, r.stream.sample_rate, r.duration_ms)
}

fn assert_one_ref_each(deps: &Deps, t: &Track) {
    for hex in t.blob_ids() {
        let id: BlobId = hex.parse().unwrap();
        assert_eq!(deps.blobs.refcount(&id).unwrap(), 1, "blob {hex}");
    }
    assert!(deps
        .meta
        .get(HELD_KEYSPACE, t.id.as_bytes())
        .unwrap()
        .is_none());
}

#[test]
fn wav_becomes_ready_with_three_decodable_tiers() {
    let e = env();
    let d = &e.deps;
    let id = upload(
        d,
        &wav(2.5, 48_000, 2),
        TrackFields {
            filename: Some("Night Drive.wav".into()),
            artist: Some("Submitted Artist".into()),
            ..TrackFields::default()
        },
    );
    let l = lease(d, 30_000);
    assert_eq!(
        run_job(d, l, &config(), &AtomicBool::new(false)),
        JobOutcome::Ready
    );
    let t = track(d, &id).unwrap();
    assert_eq!(t.status, Status::Ready);
    assert_eq!(t.fields.title.as_deref(), Some("Night Drive"));
    assert_eq!(t.fields.artist.as_deref(), Some("Submitted Artist"));
    assert_eq!(t.media.channels, Some(2));
    assert_eq!(t.media.sample_rate_hz, Some(48_000));
    let ms = t.media.duration_ms.unwrap();
    assert!(ms.abs_diff(2_500) <= 50, "duration {ms}");
    assert!(t.media.loudness.is_some());
    assert_eq!(t.tiers.len(), 3);
    for (q, kbps) in [("low", 96), ("normal", 160), ("high", 320)] {
        let tier = &t.tiers[q];
        assert_eq!(tier.media_type, "audio/ogg");
        assert_eq!(tier.bitrate_kbps, Some(kbps));
        let bytes = blob_bytes(d, &tier.blob_id);
        assert_eq!(bytes.len() as u64, tier.size_bytes);
        let (ch, rate, dur) = decode_tier(bytes);
        assert_eq!((ch, rate), (2, 44_100), "{q}");
        assert!(dur.abs_diff(2_500) <= 50, "{q} duration {dur}");
        let id: BlobId = tier.blob_id.parse().unwrap();
        assert_eq!(
            d.meta.get(BLOB_META_KEYSPACE, &id.0).unwrap().as_deref(),
            Some(&b"audio/ogg"[..])
        );
    }
    assert_one_ref_each(d, &t);
    let q = d.queue.stats();
    assert_eq!((q.depth, q.in_flight, q.dead), (0, 0, 0));
}

#[test]
fn bad_input_fails_once_with_a_reason() {
    let e = env();
    let d = &e.deps;
    let junk: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let id = upload(d, &junk, TrackFields::default());
    let l = lease(d, 30_000);
    assert_eq!(l.attempt, 1);
    let out = run_job(d, l, &config(), &AtomicBool::new(false));
    let JobOutcome::Failed { reason } = out else {
        panic!("{out:?}");
    };
    assert!(reason.contains("not an audio file"), "{reason}");
    let t = track(d, &id).unwrap();
    assert_eq!(t.status, Status::Failed);
    assert_eq!(t.failure_reason.as_deref(), Some(reason.as_str()));
    // Acked after its first attempt: nothing waits, nothing is retried.
    let q = d.queue.stats();
    assert_eq!((q.depth, q.in_flight, q.dead), (0, 0, 0));
    std::thread::sleep(Duration::from_millis(80));
    assert!(d.queue.lease("test", 1000).unwrap().is_none());
    assert_eq!(d.blobs.stats().blobs, 1, "only the raw upload is stored");
}

#[test]
fn transient_failure_is_retried_then_succeeds() {
    let e = env();
    let d = &e.deps;
    let id = upload(d, &wav(1.0, 44_100, 1), TrackFields::default());
    let l = lease(d, 30_000);
    // A zero wall-clock budget: the attempt times out (transient).
    let timeout = WorkerConfig {
        timeout_ms: 0,
        ..config()
    };
    let out = run_job(d, l, &timeout, &AtomicBool::new(false));
    assert!(
        matches!(&out, JobOutcome::Retry { reason } if reason.contains("timed out")),
        "{out:?}"
    );
    assert_eq!(track(d, &id).unwrap().status, Status::Processing);
    let l = lease(d, 30_000);
    assert_eq!(l.attempt, 2);
    assert_eq!(
        run_job(d, l, &config(), &AtomicBool::new(false)),
        JobOutcome::Ready
    );
    let t = track(d, &id).unwrap();
    assert_eq!(t.media.channels, Some(1));
    assert_one_ref_each(d, &t);
}

/// Runs the first half of a job by hand, as a worker that dies would:
/// tiers streamed and held (ledger committed), plus one writer cut off.
fn crashed_attempt(d: &Deps, track_id: &str, raw: &[u8]) -> Vec<BlobId> {
    let mut sinks = [
        BlobSink::new(d.blobs.writer()),
        BlobSink::new(d.blobs.writer()),
        BlobSink::new(d.blobs.writer()),
    ];
    let [a, b, c] = &mut sinks;
    spindle_media::transcode(
        Cursor::new(raw.to_vec()),
        Some(raw.len() as u64),
        None,
        spindle_media::TierSinks {
            low: a,
            normal: b,
            high: c,
        },
        &spindle_media::Limits::default(),
    )
    .unwrap();
    let mut ids = Vec::new();
    for s in sinks {
        let (id, _, w) = s.into_parts();
        complete::hold_blob(d, track_id, id, w).unwrap();
        ids.push(id);
    }
    // A fourth write torn mid-way: its chunks are garbage, never a blob.
    let mut torn = d.blobs.writer();
    torn.write(&[7u8; 100_000]).unwrap();
    drop(torn);
    ids
}

#[test]
fn redelivery_after_a_crash_reuses_the_held_tiers() {
    let e = env();
    let d = &e.deps;
    let raw = wav(1.5, 44_100, 2);
    let id = upload(d, &raw, TrackFields::default());
    let first = lease(d, 100);
    let held = crashed_attempt(d, &id, &raw);
    for b in &held {
        assert_eq!(d.blobs.refcount(b).unwrap(), 1);
    }
    drop(first); // the worker dies; its lease runs out
    std::thread::sleep(Duration::from_millis(150));
    let second = lease(d, 30_000);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        run_job(d, second, &config(), &AtomicBool::new(false)),
        JobOutcome::Ready
    );
    let t = track(d, &id).unwrap();
    let tier_ids: Vec<BlobId> = ["low", "normal", "high"]
        .iter()
        .map(|q| t.tiers[*q].blob_id.parse().unwrap())
        .collect();
    assert_eq!(tier_ids, held, "byte-identical tiers, same blobs");
    assert_one_ref_each(d, &t);
    assert_eq!(d.blobs.stats().blobs, 4, "raw + exactly one set of tiers");
}

#[test]
fn a_track_deleted_mid_job_releases_the_tiers() {
    let e = env();
    let d = &e.deps;
    let raw = wav(1.0, 44_100, 2);
    let id = upload(d, &raw, TrackFields::default());
    let first = lease(d, 100);
    let held = crashed_attempt(d, &id, &raw);
    let mut batch = Batch::new();
    batch.delete(TRACKS_KEYSPACE, id.as_bytes());
    d.meta.commit(batch).unwrap();
    drop(first);
    std::thread::sleep(Duration::from_millis(150));
    let second = lease(d, 30_000);
    assert_eq!(
        run_job(d, second, &config(), &AtomicBool::new(false)),
        JobOutcome::TrackGone
    );
    for b in &held {
        assert_eq!(d.blobs.refcount(b).unwrap(), 0);
    }
    assert!(d.meta.get(HELD_KEYSPACE, id.as_bytes()).unwrap().is_none());
    assert_eq!(d.queue.stats().in_flight + d.queue.stats().depth, 0);
}

#[test]
fn the_pool_grows_with_the_backlog_and_drains_it() {
    let e = env();
    let d = &e.deps;
    let ids: Vec<String> = (0..4)
        .map(|i| {
            upload(
                d,
                &wav(0.5 + f64::from(i) * 0.1, 22_050, 1),
                TrackFields::default(),
            )
        })
        .collect();
    let pool = Pool::start(
        d.clone(),
        WorkerConfig {
            pool_min: 1,
            pool_max: 2,
            scale_up_depth_jobs: 1,
            poll_ms: 20,
            encoder_threads: 1,
            ..config()
        },
    );
    let until = Instant::now() + Duration::from_secs(60);
    let mut max_size = 0;
    while ids
        .iter()
        .any(|i| track(d, i).unwrap().status == Status::Processing)
    {
        max_size = max_size.max(pool.stats().size);
        assert!(
            Instant::now() < until,
            "backlog not drained: {:?}",
            pool.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in &ids {
        let t = track(d, i).unwrap();
        assert_eq!(t.status, Status::Ready, "{:?}", t.failure_reason);
        assert_one_ref_each(d, &t);
    }
    assert_eq!(max_size, 2, "the pool grew to its maximum under backlog");
    assert_eq!(pool.stats().jobs_ready, 4);
    drop(pool);
}
