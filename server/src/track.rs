//! The track record and the keyspaces it lives in.
//!
//! - `tracks`: track id (its 32-char hex string, as bytes) -> [`Track`] as JSON.
//! - `blob_meta`: blob id (32 raw bytes) -> the blob's media type (UTF-8),
//!   written in the same batch as the track that first stores the blob.
//! - the `transcode` queue (see [`spindle_engine::queue`]): one job per
//!   track, idempotency key = track id, payload = [`TranscodeJob`] as JSON.
//!
//! **Invariant:** a track record, its raw blob's `blob_meta` entry and its
//! transcode job are committed in one batch, after the raw blob is durable;
//! so a track that exists always names a blob that exists, and every
//! `processing` track has a job.
//!
//! The transcoder (a later layer) reads [`TranscodeJob`], stores the tiers and
//! rewrites the record with `status = "ready"` and [`Track::tiers`] filled in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Keyspace of track records.
pub const TRACKS_KEYSPACE: &str = "tracks";
/// Keyspace of blob media types.
pub const BLOB_META_KEYSPACE: &str = "blob_meta";
/// Name of the transcode queue.
pub const TRANSCODE_QUEUE: &str = "transcode";
/// Attempts a transcode job gets before it is dead-lettered.
pub const TRANSCODE_MAX_ATTEMPTS: u32 = 5;

/// Quality tiers a track can be streamed at; `original` is the upload itself.
pub const QUALITIES: [&str; 4] = ["low", "normal", "high", "original"];

/// What kind of audio a track is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Song,
    Podcast,
    Story,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "song" => Ok(Kind::Song),
            "podcast" => Ok(Kind::Podcast),
            "story" => Ok(Kind::Story),
            other => Err(format!(
                "kind must be song, podcast or story, not {other:?}"
            )),
        }
    }
}

/// Where a track is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted, waiting for (or in) transcoding.
    Processing,
    /// Transcoded; the tiers are set.
    Ready,
    /// Transcoding failed for good; `failure_reason` says why.
    Failed,
}

/// One stored blob as a track refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRefJson {
    /// Content id: 64 lowercase hex digits.
    pub blob_id: String,
    pub size_bytes: u64,
    pub media_type: String,
    /// Nominal bitrate of a transcoded tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
}

/// The fields a client submits with an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Longest accepted field value, in bytes.
pub const FIELD_LEN_MAX: usize = 1024;

impl TrackFields {
    /// Sets field `name` (one of the five) to `value`; `Ok(false)` for an
    /// unknown name, `Err` for an overlong value.
    pub fn set(&mut self, name: &str, value: String) -> Result<bool, String> {
        if value.len() > FIELD_LEN_MAX {
            return Err(format!("{name} is longer than {FIELD_LEN_MAX} bytes"));
        }
        let slot = match name {
            "title" => &mut self.title,
            "artist" => &mut self.artist,
            "album" => &mut self.album,
            "genre" => &mut self.genre,
            "filename" => &mut self.filename,
            _ => return Ok(false),
        };
        *slot = Some(value);
        Ok(true)
    }
}

/// A track as stored in `tracks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    pub id: String,
    pub status: Status,
    pub kind: Kind,
    /// Whether the uploader chose `kind`; if not, the transcoder may set it
    /// from the file's genre (a "Podcast" genre makes a podcast).
    /// Records written before this field existed read as `true`: their
    /// kind is left as it is.
    #[serde(default = "yes")]
    pub kind_submitted: bool,
    #[serde(flatten)]
    pub fields: TrackFields,
    /// The upload as received.
    pub raw: BlobRefJson,
    /// Transcoded tiers by quality (`low`, `normal`, `high`); empty until
    /// the transcoder has run.
    #[serde(default)]
    pub tiers: BTreeMap<String, BlobRefJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// What the transcoder learned (duration, tags, cover, loudness); all
    /// absent until it has run, and in records written before it existed.
    #[serde(flatten, default)]
    pub media: MediaInfo,
}

/// The transcoder's findings about a track, flattened into its record
/// (`duration_ms`, `channels`, ... sit beside `status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaInfo {
    /// From the decoded sample count, not the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Channels of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
    /// Sample rate of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TrackTags>,
    /// The cover art blob (front cover preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover: Option<BlobRefJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loudness: Option<LoudnessJson>,
}

/// Tags as read from the file (before upload fields override them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackTags {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artists: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album_artist: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genres: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disc_total: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub year: Option<u16>,
}

/// Loudness for players to apply (Spotify-style normalisation to -14 LUFS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoudnessJson {
    /// EBU R128 integrated loudness; absent for silence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrated_lufs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub true_peak_dbtp: Option<f64>,
    /// Gain to reach -14 LUFS without clipping.
    pub gain_db: f64,
}

impl Track {
    /// The blob serving `quality`, if it is ready.
    pub fn blob_for(&self, quality: &str) -> Option<&BlobRefJson> {
        if quality == "original" {
            Some(&self.raw)
        } else {
            self.tiers.get(quality)
        }
    }

    /// Every blob this track holds a reference to.
    pub fn blob_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.raw.blob_id.as_str())
            .chain(self.tiers.values().map(|t| t.blob_id.as_str()))
            .chain(self.media.cover.iter().map(|c| c.blob_id.as_str()))
    }

    /// The JSON the API answers with: the record plus `urls`.
    pub fn to_api_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut urls = serde_json::Map::new();
        urls.insert("self".into(), format!("/v1/tracks/{}", self.id).into());
        for quality in QUALITIES {
            if let Some(blob) = self.blob_for(quality) {
                let mut u = serde_json::Map::new();
                u.insert(
                    "stream".into(),
                    format!("/v1/tracks/{}/stream?quality={quality}", self.id).into(),
                );
                u.insert("blob".into(), format!("/v1/blobs/{}", blob.blob_id).into());
                urls.insert(quality.into(), u.into());
            }
        }
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("urls".into(), urls.into());
        }
        value
    }
}

/// Payload of a transcode job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscodeJob {
    pub track_id: String,
    pub raw_blob_id: String,
}

/// A fresh random track id: 16 bytes as 32 lowercase hex digits.
pub fn new_track_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(crate::tokens::hex(&bytes))
}

fn yes() -> bool {
    true
}

impl Kind {
    /// The kind a genre name implies, if any: "Podcast(s)" a podcast,
    /// "Audiobook(s)", "Audio book", "Story", "Stories" a story (case and
    /// accents folded).
    pub fn from_genre(genre: &str) -> Option<Kind> {
        match crate::catalog::genre_key(genre).as_str() {
            "podcast" | "podcasts" => Some(Kind::Podcast),
            "audiobook" | "audiobooks" | "audio book" | "audio books" | "story" | "stories" => {
                Some(Kind::Story)
            }
            _ => None,
        }
    }
}

/// Whether `s` looks like a track id (so lookups of junk skip the store).
pub fn is_track_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Track {
        Track {
            id: "0123456789abcdef0123456789abcdef".into(),
            status: Status::Processing,
            kind: Kind::Podcast,
            kind_submitted: true,
            fields: TrackFields {
                title: Some("T".into()),
                ..TrackFields::default()
            },
            raw: BlobRefJson {
                blob_id: "ab".repeat(32),
                size_bytes: 3,
                media_type: "audio/ogg".into(),
                bitrate_kbps: None,
            },
            tiers: BTreeMap::new(),
            failure_reason: None,
            created_ms: 1,
            updated_ms: 1,
            media: MediaInfo::default(),
        }
    }

    #[test]
    fn record_round_trips_and_api_json_has_urls() {
        let t = sample();
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"status\":\"processing\""));
        assert!(json.contains("\"kind\":\"podcast\""));
        assert!(json.contains("\"title\":\"T\""));
        assert_eq!(serde_json::from_str::<Track>(&json).unwrap(), t);
        let api = t.to_api_json();
        assert_eq!(
            api["urls"]["original"]["blob"],
            format!("/v1/blobs/{}", "ab".repeat(32))
        );
        assert!(api["urls"].get("low").is_none());
    }

    #[test]
    fn ids_and_kinds() {
        let id = new_track_id().unwrap();
        assert!(is_track_id(&id));
        assert!(!is_track_id("../../etc"));
        assert_ne!(new_track_id().unwrap(), id);
        assert_eq!("story".parse::<Kind>().unwrap(), Kind::Story);
        assert!("movie".parse::<Kind>().is_err());
        let mut f = TrackFields::default();
        assert!(f.set("title", "x".into()).unwrap());
        assert!(!f.set("bogus", "x".into()).unwrap());
        assert!(f.set("title", "x".repeat(FIELD_LEN_MAX + 1)).is_err());
    }
}
