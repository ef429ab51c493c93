//! Play events: the wire form `POST /v1/plays` accepts, the checks an event
//! passes before it is logged, and the record logged in the `plays`
//! keyspace that the aggregator reads back from the change feed.
//!
//! `plays` keyspace: key = UTC day of `started_at` (u32 big-endian) ++ the
//! first 16 bytes of BLAKE3(len(listener) u32 LE ++ listener ++ track id ++
//! started_at_ms u64 LE); value = [`PlayRecord`] encoded as below (all
//! integers little-endian unless noted):
//!
//! | offset | width | field                                  |
//! |--------|-------|----------------------------------------|
//! | 0      | 1     | format version, 1                      |
//! | 1      | 1     | flags: bit 0 = counts as a stream      |
//! | 2      | 1     | kind: 0 song, 1 podcast, 2 story       |
//! | 3      | 16    | track id (u128 big-endian)             |
//! | 19     | 8     | listener hash (BLAKE3 of the id, u64)  |
//! | 27     | 8     | started_at, ms since the epoch         |
//! | 35     | 4     | ms played (saturated at u32::MAX)      |
//! | 39     | 2     | genre display name length in bytes     |
//! | 41     | n     | genre display name, UTF-8              |
//!
//! **Invariants:** the dedupe key is a function of (listener, track,
//! started_at) alone — a listener cannot start one track twice in the same
//! millisecond — so a retried event maps to the same key whatever its
//! `event_id`; the key starts with the day so a whole day of keys is one
//! range, dropped once no event of that day can be accepted any more. The
//! record carries the track's kind and genre as of ingest, so aggregation is
//! a pure function of the log (a later edit or deletion of the track does
//! not rewrite history).

use serde::Deserialize;

use super::time::{day_of, parse_rfc3339_ms, DAY_MS};
use crate::track::{is_track_id, Kind};

/// Keyspace of logged play events (the dedupe index, pruned by day).
pub const PLAYS_KEYSPACE: &str = "plays";
/// A play of at least this long counts as a stream.
pub const STREAM_MIN_MS: u64 = 30_000;
/// Longest accepted listener id, in bytes.
pub const LISTENER_ID_BYTES_MAX: usize = 256;
/// Longest accepted client event id, in bytes.
pub const EVENT_ID_BYTES_MAX: usize = 128;
/// Longest stored genre name (the track field limit).
pub const GENRE_BYTES_MAX: usize = crate::track::FIELD_LEN_MAX;
/// Bytes of a `plays` key.
pub const PLAY_KEY_BYTES: usize = 20;
/// Bytes of a record before the genre name.
pub const RECORD_HEADER_BYTES: usize = 41;
const RECORD_VERSION: u8 = 1;
const FLAG_STREAM: u8 = 1;

/// The kinds in their on-disk order.
pub const KINDS: [Kind; 3] = [Kind::Song, Kind::Podcast, Kind::Story];

/// The index of `kind` in [`KINDS`].
pub fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Song => 0,
        Kind::Podcast => 1,
        Kind::Story => 2,
    }
}

/// The API name of `kind`.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Song => "song",
        Kind::Podcast => "podcast",
        Kind::Story => "story",
    }
}

/// `started_at` as sent: ms since the epoch or an RFC 3339 string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StartedAt {
    Ms(u64),
    Text(String),
}

/// One event as `POST /v1/plays` receives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayInput {
    pub listener_id: String,
    pub track_id: String,
    pub ms_played: u64,
    pub started_at: StartedAt,
    /// The client's own id, echoed in the result; deduplication does not
    /// depend on it (see the module doc).
    #[serde(default)]
    pub event_id: Option<String>,
}

/// What the check needs of a track record (read from its JSON in
/// `tracks`; other fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TrackAttrs {
    pub kind: Kind,
    #[serde(default)]
    pub genre: Option<String>,
    /// Set once the track is transcoded; absent means only the 30 s rule
    /// applies.
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// The thresholds an event is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub stream_min_ms: u64,
    /// Oldest accepted `started_at`, as an age.
    pub age_max_ms: u64,
    /// How far ahead of the server's clock a `started_at` may be (client
    /// clock skew); anything later is refused as in the future.
    pub future_skew_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            stream_min_ms: STREAM_MIN_MS,
            age_max_ms: DAY_MS,
            future_skew_ms: 60_000,
        }
    }
}

/// Why an event was refused (answered per event, never as a whole-request
/// error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("invalid event: {message}")]
    Invalid { message: String },
    #[error("no track {track_id}")]
    UnknownTrack { track_id: String },
    #[error("started_at {started_at_ms} is after now ({now_ms}) plus the allowed skew")]
    Future { started_at_ms: u64, now_ms: u64 },
    #[error("started_at {started_at_ms} is more than {age_max_ms} ms before now ({now_ms})")]
    TooOld {
        started_at_ms: u64,
        now_ms: u64,
        age_max_ms: u64,
    },
}

impl Refusal {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid { .. } => "invalid_event",
            Refusal::UnknownTrack { .. } => "unknown_track",
            Refusal::Future { .. } => "future_timestamp",
            Refusal::TooOld { .. } => "too_old",
        }
    }

    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::Invalid {
            message: message.into(),
        }
    }
}

/// An event that passed the shape and time checks, before the track lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPlay {
    pub track: u128,
    pub started_at_ms: u64,
    pub key: [u8; PLAY_KEY_BYTES],
}

/// Shape and time checks (no store access).
pub fn check_shape(
    input: &PlayInput,
    now_ms: u64,
    policy: &Policy,
) -> Result<CheckedPlay, Refusal> {
    if input.listener_id.is_empty() || input.listener_id.len() > LISTENER_ID_BYTES_MAX {
        return Err(Refusal::invalid(format!(
            "listener_id must be 1..={LISTENER_ID_BYTES_MAX} bytes"
        )));
    }
    if input
        .event_id
        .as_ref()
        .is_some_and(|e| e.len() > EVENT_ID_BYTES_MAX)
    {
        return Err(Refusal::invalid(format!(
            "event_id must be at most {EVENT_ID_BYTES_MAX} bytes"
        )));
    }
    if !is_track_id(&input.track_id) {
        return Err(Refusal::UnknownTrack {
            track_id: input.track_id.chars().take(64).collect(),
        });
    }
    let track = u128::from_str_radix(&input.track_id, 16)
        .map_err(|_| Refusal::invalid("track_id is not hexadecimal"))?;
    let started_at_ms = match &input.started_at {
        StartedAt::Ms(ms) => *ms,
        StartedAt::Text(s) => parse_rfc3339_ms(s).map_err(Refusal::invalid)?,
    };
    if started_at_ms > now_ms.saturating_add(policy.future_skew_ms) {
        return Err(Refusal::Future {
            started_at_ms,
            now_ms,
        });
    }
    if started_at_ms < now_ms.saturating_sub(policy.age_max_ms) {
        return Err(Refusal::TooOld {
            started_at_ms,
            now_ms,
            age_max_ms: policy.age_max_ms,
        });
    }
    Ok(CheckedPlay {
        track,
        started_at_ms,
        key: play_key(&input.listener_id, &input.track_id, started_at_ms),
    })
}

/// The record to log for a checked event of a track with `attrs`.
pub fn to_record(
    input: &PlayInput,
    checked: &CheckedPlay,
    attrs: &TrackAttrs,
    policy: &Policy,
) -> PlayRecord {
    let whole_track = attrs
        .duration_ms
        .is_some_and(|d| d > 0 && input.ms_played >= d);
    let mut genre = attrs.genre.clone().unwrap_or_default();
    if genre.len() > GENRE_BYTES_MAX {
        let mut cut = GENRE_BYTES_MAX;
        while !genre.is_char_boundary(cut) {
            cut -= 1;
        }
        genre.truncate(cut);
    }
    PlayRecord {
        track: checked.track,
        listener: listener_hash(&input.listener_id),
        started_at_ms: checked.started_at_ms,
        ms_played: u32::try_from(input.ms_played).unwrap_or(u32::MAX),
        is_stream: input.ms_played >= policy.stream_min_ms || whole_track,
        kind: attrs.kind,
        genre,
    }
}

/// The `plays` key of an event (see the module doc).
pub fn play_key(listener_id: &str, track_id: &str, started_at_ms: u64) -> [u8; PLAY_KEY_BYTES] {
    let mut h = blake3::Hasher::new();
    h.update(&(listener_id.len() as u32).to_le_bytes());
    h.update(listener_id.as_bytes());
    h.update(track_id.as_bytes());
    h.update(&started_at_ms.to_le_bytes());
    let digest = h.finalize();
    let mut key = [0u8; PLAY_KEY_BYTES];
    key[..4].copy_from_slice(&day_of(started_at_ms).to_be_bytes());
    key[4..].copy_from_slice(&digest.as_bytes()[..16]);
    key
}

/// The 64-bit listener identity the anti-abuse cap counts by. Two listener
/// ids share a hash with probability about n^2 / 2^65 (n listeners a day):
/// negligible, and the cost of a collision is only a shared cap.
pub fn listener_hash(listener_id: &str) -> u64 {
    let digest = blake3::hash(listener_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// The lowercase 32-digit hex form of a track id.
pub fn track_hex(track: u128) -> String {
    format!("{track:032x}")
}

/// A logged play, as the aggregator consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayRecord {
    pub track: u128,
    pub listener: u64,
    pub started_at_ms: u64,
    pub ms_played: u32,
    pub is_stream: bool,
    pub kind: Kind,
    /// The track's genre display name at ingest ("" when it has none).
    pub genre: String,
}

/// A `plays` value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed play record: {reason}")]
pub struct RecordError {
    pub reason: &'static str,
}

impl PlayRecord {
    /// The encoded value (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.genre.len() <= GENRE_BYTES_MAX,
            "genre was truncated at ingest"
        );
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + self.genre.len());
        out.push(RECORD_VERSION);
        out.push(if self.is_stream { FLAG_STREAM } else { 0 });
        out.push(kind_index(self.kind) as u8);
        out.extend_from_slice(&self.track.to_be_bytes());
        out.extend_from_slice(&self.listener.to_le_bytes());
        out.extend_from_slice(&self.started_at_ms.to_le_bytes());
        out.extend_from_slice(&self.ms_played.to_le_bytes());
        out.extend_from_slice(&(self.genre.len() as u16).to_le_bytes());
        out.extend_from_slice(self.genre.as_bytes());
        out
    }

    /// Decodes and checks a value written by [`PlayRecord::encode`].
    pub fn decode(b: &[u8]) -> Result<PlayRecord, RecordError> {
        let err = |reason| Err(RecordError { reason });
        if b.len() < RECORD_HEADER_BYTES {
            return err("shorter than the header");
        }
        if b[0] != RECORD_VERSION {
            return err("unknown version");
        }
        if b[1] & !FLAG_STREAM != 0 {
            return err("unknown flag bits");
        }
        let Some(&kind) = KINDS.get(usize::from(b[2])) else {
            return err("unknown kind");
        };
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let mut track = [0u8; 16];
        track.copy_from_slice(&b[3..19]);
        let mut ms = [0u8; 4];
        ms.copy_from_slice(&b[35..39]);
        let genre_len = usize::from(u16::from_le_bytes([b[39], b[40]]));
        if b.len() != RECORD_HEADER_BYTES + genre_len {
            return err("length disagrees with the genre length");
        }
        let Ok(genre) = std::str::from_utf8(&b[RECORD_HEADER_BYTES..]) else {
            return err("genre is not UTF-8");
        };
        Ok(PlayRecord {
            track: u128::from_be_bytes(track),
            listener: u64_at(19),
            started_at_ms: u64_at(27),
            ms_played: u32::from_le_bytes(ms),
            is_stream: b[1] & FLAG_STREAM != 0,
            kind,
            genre: genre.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_000_000_000;

    fn input(ms_played: u64, started_at: StartedAt) -> PlayInput {
        PlayInput {
            listener_id: "alice".into(),
            track_id: "0123456789abcdef0123456789abcdef".into(),
            ms_played,
            started_at,
            event_id: None,
        }
    }

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let rec = PlayRecord {
            track: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
            listener: 42,
            started_at_ms: NOW,
            ms_played: 31_000,
            is_stream: true,
            kind: Kind::Podcast,
            genre: "Hip Hóp".into(),
        };
        let bytes = rec.encode();
        assert_eq!(PlayRecord::decode(&bytes).unwrap(), rec);
        for cut in 0..bytes.len() {
            assert!(PlayRecord::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[2] = 7;
        assert!(PlayRecord::decode(&bad).is_err());
        let mut bad = bytes;
        bad[0] = 2;
        assert!(PlayRecord::decode(&bad).is_err());
    }

    #[test]
    fn checks_table() {
        let p = Policy::default();
        let cases: [(u64, StartedAt, Option<&str>); 6] = [
            (31_000, StartedAt::Ms(NOW), None),
            (31_000, StartedAt::Ms(NOW + 60_000), None),
            (
                31_000,
                StartedAt::Ms(NOW + 60_001),
                Some("future_timestamp"),
            ),
            (31_000, StartedAt::Ms(NOW - DAY_MS), None),
            (31_000, StartedAt::Ms(NOW - DAY_MS - 1), Some("too_old")),
            (
                31_000,
                StartedAt::Text("yesterday".into()),
                Some("invalid_event"),
            ),
        ];
        for (ms, at, want) in cases {
            let got = check_shape(&input(ms, at.clone()), NOW, &p).err();
            assert_eq!(got.as_ref().map(Refusal::code), want, "{at:?}");
        }
        let mut bad = input(1, StartedAt::Ms(NOW));
        bad.track_id = "nope".into();
        assert_eq!(
            check_shape(&bad, NOW, &p).unwrap_err().code(),
            "unknown_track"
        );
        bad = input(1, StartedAt::Ms(NOW));
        bad.listener_id.clear();
        assert_eq!(
            check_shape(&bad, NOW, &p).unwrap_err().code(),
            "invalid_event"
        );
    }

    #[test]
    fn stream_rule_uses_thirty_seconds_or_the_whole_track() {
        let p = Policy::default();
        let attrs = |d| TrackAttrs {
            kind: Kind::Song,
            genre: None,
            duration_ms: d,
        };
        let table = [
            (29_999, None, false),
            (30_000, None, true),
            (20_000, Some(20_000), true),
            (19_999, Some(20_000), false),
            (10, Some(0), false),
        ];
        for (ms, dur, want) in table {
            let i = input(ms, StartedAt::Ms(NOW));
            let c = check_shape(&i, NOW, &p).unwrap();
            assert_eq!(
                to_record(&i, &c, &attrs(dur), &p).is_stream,
                want,
                "{ms} {dur:?}"
            );
        }
    }

    #[test]
    fn dedupe_key_ignores_event_id_and_starts_with_the_day() {
        let a = input(1, StartedAt::Ms(NOW));
        let mut b = a.clone();
        b.event_id = Some("retry-2".into());
        b.ms_played = 99;
        let p = Policy::default();
        assert_eq!(
            check_shape(&a, NOW, &p).unwrap().key,
            check_shape(&b, NOW, &p).unwrap().key
        );
        let k = play_key("alice", &a.track_id, NOW);
        assert_eq!(k[..4], day_of(NOW).to_be_bytes());
        assert_ne!(k, play_key("alice", &a.track_id, NOW + 1));
        assert_ne!(k, play_key("alicf", &a.track_id, NOW));
        // the listener id is length-prefixed, so ids cannot slide into the track id
        assert_eq!(track_hex(0xab), format!("{:0>32}", "ab"));
    }
}
