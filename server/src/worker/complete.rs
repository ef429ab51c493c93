//! Completing a transcode job: the held-blob ledger and the two final
//! batches (`ready`, `failed`).
//!
//! Ledger (keyspace [`HELD_KEYSPACE`]): track id -> JSON list of blob ids
//! (hex) whose reference the job holds. [`hold_blob`] finishes a blob only
//! if the ledger does not already name it (a redelivery of a job whose
//! previous attempt stored the same, byte-identical tier), and records it
//! with a batch conditional on the ledger and on the track still being
//! `processing`. [`commit`] deletes the ledger in the batch that writes the
//! track and acks the job; references the track did not take are released
//! after that commit.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spindle_engine::blob::{BlobId, BlobWriter};
use spindle_engine::meta::{Batch, Error as MetaError};
use spindle_engine::queue::Lease;

use super::{now_ms, Deps, WorkerError};
use crate::track::{
    BlobRefJson, Kind, MediaInfo, Status, Track, BLOB_META_KEYSPACE, TRACKS_KEYSPACE,
};

/// Keyspace of the per-job ledgers of held blob references.
pub const HELD_KEYSPACE: &str = "worker_held";

/// Conditional-commit retries before giving up (contention is rare: only
/// the job's own holder and a concurrent track delete write these keys).
const COMMIT_ATTEMPTS_MAX: u32 = 32;

/// Media type of every tier.
pub const TIER_MEDIA_TYPE: &str = "audio/ogg";

/// What a finished transcode hands to [`commit`]: the tiers by quality and
/// the media findings (its `cover`, if any, is a held blob too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub tiers: BTreeMap<String, BlobRefJson>,
    pub media: MediaInfo,
}

/// How a job ended, for the final batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Ready(Box<Completion>),
    Failed { reason: String },
}

/// What [`commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Ready,
    Failed,
    /// The track was deleted (or already finished): job acked, references
    /// released.
    TrackGone,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// The stored track (raw bytes and parsed), if any.
pub fn load_track(deps: &Deps, track_id: &str) -> Result<Option<(Bytes, Track)>, WorkerError> {
    match deps.meta.get(TRACKS_KEYSPACE, track_id.as_bytes())? {
        None => Ok(None),
        Some(b) => {
            let t: Track =
                serde_json::from_slice(&b).map_err(|e| corrupt(&format!("track {track_id}"), e))?;
            Ok(Some((b, t)))
        }
    }
}

/// The ledger of `track_id`: its stored bytes and the blob ids it names.
pub fn read_held(
    deps: &Deps,
    track_id: &str,
) -> Result<(Option<Bytes>, BTreeSet<String>), WorkerError> {
    match deps.meta.get(HELD_KEYSPACE, track_id.as_bytes())? {
        None => Ok((None, BTreeSet::new())),
        Some(b) => {
            let ids: BTreeSet<String> = serde_json::from_slice(&b)
                .map_err(|e| corrupt(&format!("held ledger of {track_id}"), e))?;
            Ok((Some(b), ids))
        }
    }
}

/// Takes the job's one reference on blob `id`, whose content `writer` holds
/// unfinished: finished and recorded in the ledger unless the ledger already
/// names it, in which case the writer is dropped (its chunks are garbage).
/// Fails with [`WorkerError::NotProcessing`] once the track is gone or done.
pub fn hold_blob(
    deps: &Deps,
    track_id: &str,
    id: BlobId,
    writer: BlobWriter,
) -> Result<(), WorkerError> {
    let hex = id.to_string();
    let mut writer = Some(writer);
    let mut finished = false;
    for _ in 0..COMMIT_ATTEMPTS_MAX {
        let track = load_track(deps, track_id)?;
        let track_bytes = match track {
            Some((b, t)) if t.status == Status::Processing => b,
            _ => {
                if finished {
                    deps.blobs.delete(&id)?;
                }
                return Err(WorkerError::NotProcessing);
            }
        };
        let (held_bytes, mut held) = read_held(deps, track_id)?;
        if held.contains(&hex) && deps.blobs.stat(&id)?.is_some() {
            // A previous attempt holds it already.
            if finished {
                deps.blobs.delete(&id)?;
            }
            return Ok(());
        }
        if let Some(w) = writer.take() {
            let got = w.finish()?;
            assert_eq!(got.id, id, "the sink's hash is the blob store's content id");
            finished = true;
        }
        if held.contains(&hex) {
            return Ok(());
        }
        held.insert(hex.clone());
        let value = serde_json::to_vec(&held).map_err(|e| corrupt("held ledger", e))?;
        let mut batch = Batch::new();
        batch.require(TRACKS_KEYSPACE, track_id.as_bytes(), Some(&track_bytes));
        batch.require(HELD_KEYSPACE, track_id.as_bytes(), held_bytes.as_deref());
        batch.put(HELD_KEYSPACE, track_id.as_bytes(), value);
        match deps.meta.commit(batch) {
            Ok(_) => return Ok(()),
            Err(MetaError::ConditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(WorkerError::Contention {
        what: "held ledger",
        attempts: COMMIT_ATTEMPTS_MAX,
    })
}

/// The track after a successful transcode: tiers, media findings, status
/// `ready`; fields submitted with the upload win over the file's tags.
pub fn apply_ready(old: &Track, c: &Completion) -> Track {
    let mut t = old.clone();
    t.status = Status::Ready;
    t.failure_reason = None;
    t.tiers = c.tiers.clone();
    t.media = c.media.clone();
    t.updated_ms = now_ms();
    if let Some(tags) = &c.media.tags {
        let f = &mut t.fields;
        let join = |v: &[String]| (!v.is_empty()).then(|| v.join("; "));
        if f.title.as_deref().is_none_or(|s| s.trim().is_empty()) {
            f.title = tags.title.clone().or_else(|| {
                f.filename
                    .as_deref()
                    .and_then(spindle_media::title_from_file_name)
            });
        }
        if f.artist.is_none() {
            f.artist = join(&tags.artists).or_else(|| tags.album_artist.clone());
        }
        if f.album.is_none() {
            f.album = tags.album.clone();
        }
        if f.genre.is_none() {
            f.genre = join(&tags.genres);
        }
    }
    if !t.kind_submitted {
        // A podcast tagged "Podcast" charts as a podcast without the
        // uploader having to say so.
        let implied = t
            .fields
            .genre
            .as_deref()
            .into_iter()
            .flat_map(|g| g.split(';'))
            .find_map(Kind::from_genre);
        if let Some(kind) = implied {
            t.kind = kind;
        }
    }
    t
}

/// The track after a permanent failure.
pub fn apply_failed(old: &Track, reason: &str) -> Track {
    let mut t = old.clone();
    t.status = Status::Failed;
    t.failure_reason = Some(reason.to_owned());
    t.updated_ms = now_ms();
    t
}

/// Commits how the job ended in one batch: the track (with its catalog
/// records and the new blobs' media types), the ledger's deletion and the
/// job's ack. Then releases held references the track does not keep.
pub fn commit(
    deps: &Deps,
    lease: &Lease,
    track_id: &str,
    finish: &Finish,
) -> Result<Committed, WorkerError> {
    for _ in 0..COMMIT_ATTEMPTS_MAX {
        let track = load_track(deps, track_id)?;
        let (held_bytes, held) = read_held(deps, track_id)?;
        let mut batch = Batch::new();
        batch.require(HELD_KEYSPACE, track_id.as_bytes(), held_bytes.as_deref());
        if held_bytes.is_some() {
            batch.delete(HELD_KEYSPACE, track_id.as_bytes());
        }
        let mut keep = BTreeSet::new();
        let mut outcome = Committed::TrackGone;
        match &track {
            Some((bytes, old)) if old.status == Status::Processing => {
                let new = match finish {
                    Finish::Ready(c) => {
                        for blob in c.tiers.values().chain(c.media.cover.iter()) {
                            if !held.contains(&blob.blob_id) {
                                return Err(corrupt(
                                    "completion",
                                    format!("blob {} is not held by the job", blob.blob_id),
                                ));
                            }
                            let id: BlobId = blob
                                .blob_id
                                .parse()
                                .map_err(|_| corrupt("completion", "bad blob id"))?;
                            batch.put(BLOB_META_KEYSPACE, id.0, blob.media_type.as_bytes());
                        }
                        outcome = Committed::Ready;
                        apply_ready(old, c)
                    }
                    Finish::Failed { reason } => {
                        outcome = Committed::Failed;
                        apply_failed(old, reason)
                    }
                };
                let value = serde_json::to_vec(&new).map_err(|e| corrupt("track", e))?;
                batch.require(TRACKS_KEYSPACE, track_id.as_bytes(), Some(bytes));
                batch.put(TRACKS_KEYSPACE, track_id.as_bytes(), value);
                crate::catalog::index_track(&mut batch, Some(old), Some(&new));
                keep.extend(new.blob_ids().map(str::to_owned));
            }
            Some((bytes, _)) => {
                batch.require(TRACKS_KEYSPACE, track_id.as_bytes(), Some(bytes));
            }
            None => {
                batch.require(TRACKS_KEYSPACE, track_id.as_bytes(), None);
            }
        }
        match deps.queue.ack_in(&mut batch, lease) {
            Ok(()) => {}
            Err(MetaError::LeaseLost { .. }) => return Err(WorkerError::LeaseLost),
            Err(e) => return Err(e.into()),
        }
        match deps.meta.commit(batch) {
            Ok(_) => {
                release(deps, held.difference(&keep))?;
                return Ok(outcome);
            }
            Err(MetaError::ConditionFailed { .. }) => continue,
            Err(MetaError::LeaseLost { .. }) => return Err(WorkerError::LeaseLost),
            Err(e) => return Err(e.into()),
        }
    }
    Err(WorkerError::Contention {
        what: "track completion",
        attempts: COMMIT_ATTEMPTS_MAX,
    })
}

fn release<'a>(deps: &Deps, ids: impl Iterator<Item = &'a String>) -> Result<(), WorkerError> {
    for hex in ids {
        if let Ok(id) = hex.parse::<BlobId>() {
            deps.blobs.delete(&id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{Kind, TrackTags};

    fn processing(kind: Kind, kind_submitted: bool) -> Track {
        serde_json::from_value(serde_json::json!({
            "id": "0123456789abcdef0123456789abcdef",
            "status": "processing",
            "kind": kind,
            "kind_submitted": kind_submitted,
            "raw": { "blob_id": "ab".repeat(32), "size_bytes": 1, "media_type": "audio/mpeg" },
            "created_ms": 1,
            "updated_ms": 1,
        }))
        .unwrap()
    }

    fn tagged(genres: &[&str]) -> Completion {
        Completion {
            tiers: BTreeMap::new(),
            media: MediaInfo {
                tags: Some(TrackTags {
                    genres: genres.iter().map(|g| g.to_string()).collect(),
                    ..TrackTags::default()
                }),
                ..MediaInfo::default()
            },
        }
    }

    #[test]
    fn a_genre_sets_the_kind_only_when_the_uploader_did_not() {
        let t = apply_ready(&processing(Kind::Song, false), &tagged(&["Podcast"]));
        assert_eq!(
            (t.kind, t.fields.genre.as_deref()),
            (Kind::Podcast, Some("Podcast"))
        );
        let t = apply_ready(
            &processing(Kind::Song, false),
            &tagged(&["Rock", "Audiobooks"]),
        );
        assert_eq!(t.kind, Kind::Story);
        let t = apply_ready(&processing(Kind::Song, false), &tagged(&["Rock"]));
        assert_eq!(t.kind, Kind::Song);
        // The uploader said song: a "Podcast" genre does not override that.
        let t = apply_ready(&processing(Kind::Song, true), &tagged(&["Podcast"]));
        assert_eq!(t.kind, Kind::Song);
        assert_eq!(Kind::from_genre("  PÔDCASTS "), Some(Kind::Podcast));
        assert_eq!(Kind::from_genre("Podcast music"), None);
    }
}
