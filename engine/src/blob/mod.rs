//! The chunked, checksummed, content-addressed blob store.
//!
//! A blob is cut into fixed-size chunks, each stored once under the blake3
//! of its bytes; the blob itself is named by the blake3 of its whole content
//! and described by a blob-state record (refcount, size, creation time,
//! ordered chunk ids). Every record lives in append-only segment files
//! ([`record`] has the byte layout); an in-memory index maps ids to record
//! locations and is checkpointed ([`checkpoint`]) so that opening scans only
//! what was written after the last checkpoint.
//!
//! Invariants:
//! - A blob is acknowledged ([`BlobWriter::finish`], [`BlobStore::delete`])
//!   only once its records are durable (fdatasync; directory fsync after a
//!   segment is created). Concurrent callers share one fdatasync (group
//!   commit, [`store`]).
//! - Every read verifies CRCs of the bytes it returns; a mismatch is
//!   [`Error::Corruption`] naming file and offset, never wrong bytes.
//! - Chunk refcount = number of occurrences in the chunk lists of live blobs
//!   (blob refcount > 0). Chunks with refcount 0 are garbage that compaction
//!   reclaims unless an unfinished writer pins them.
//! - A failed fdatasync poisons the store: writes return [`Error::Poisoned`]
//!   until it is reopened; reads keep working.
//!
//! The on-disk format and the commit, checkpoint, compaction and recovery
//! protocols are specified in `engine/FORMAT.md` (part 1).

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

mod bufpool;
mod cache;
pub mod checkpoint;
mod index;
mod maintenance;
pub mod mapped;
pub mod record;
mod recovery;
mod store;

pub use store::{BlobRangeReader, BlobStore, BlobWriter};

/// The content id of a blob: blake3 of its whole content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub [u8; 32]);

/// The id of a chunk: blake3 of the chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 32]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex(s: &str) -> Result<[u8; 32], ParseIdError> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(ParseIdError);
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or(ParseIdError)?;
        let lo = hex_val(pair[1]).ok_or(ParseIdError)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// An id string that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 lowercase hex digits")]
pub struct ParseIdError;

macro_rules! id_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "("))?;
                write_hex(f, &self.0)?;
                f.write_str(")")
            }
        }
        impl FromStr for $t {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex(s).map($t)
            }
        }
        impl $t {
            /// The id of `data`: its blake3.
            pub fn of(data: &[u8]) -> $t {
                $t(*blake3::hash(data).as_bytes())
            }
        }
    };
}
id_impls!(BlobId);
id_impls!(ChunkId);

/// Wall-clock milliseconds since the Unix epoch, from a closure so tests
/// control time.
pub type ClockMs = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`ClockMs`].
pub fn system_clock_ms() -> ClockMs {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// Settings of a blob store.
#[derive(Clone)]
pub struct BlobConfig {
    /// Size of every chunk but a blob's last. 16 B ..= 64 MiB.
    pub chunk_size_bytes: u32,
    /// A segment is sealed once appending would take it past this.
    pub segment_size_bytes_max: u64,
    /// Compaction rewrites sealed segments whose live fraction is below this.
    pub compaction_live_fraction_min: f64,
    /// A checkpoint is written after this many bytes were appended since
    /// the last one, or four times the last checkpoint's size if that is
    /// larger (checked when a write is acknowledged).
    pub checkpoint_interval_bytes: u64,
    /// After this many bytes appended, a background thread syncs the head
    /// early, so a large write's flush overlaps its hashing (0 = never).
    pub background_sync_bytes: u64,
    /// Largest `len` accepted by [`BlobStore::read`] (0 = two chunks).
    pub read_len_max_bytes: u64,
    /// Bound on chunk ids kept in the manifest cache.
    pub manifest_cache_chunk_ids_max: usize,
    /// Bytes of hot chunks kept verified in memory (0 = no chunk cache;
    /// see the `cache` module). A chunk over a quarter of this is never kept.
    pub read_cache_bytes: u64,
    /// Source of `created_ms`.
    pub clock_ms: ClockMs,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            chunk_size_bytes: 1 << 20,
            segment_size_bytes_max: 1 << 30,
            compaction_live_fraction_min: 0.5,
            checkpoint_interval_bytes: 256 << 20,
            background_sync_bytes: 8 << 20,
            read_len_max_bytes: 0,
            manifest_cache_chunk_ids_max: 1 << 20,
            read_cache_bytes: 128 << 20,
            clock_ms: system_clock_ms(),
        }
    }
}

impl fmt::Debug for BlobConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobConfig")
            .field("chunk_size_bytes", &self.chunk_size_bytes)
            .field("segment_size_bytes_max", &self.segment_size_bytes_max)
            .field(
                "compaction_live_fraction_min",
                &self.compaction_live_fraction_min,
            )
            .field("checkpoint_interval_bytes", &self.checkpoint_interval_bytes)
            .field("background_sync_bytes", &self.background_sync_bytes)
            .field("read_len_max_bytes", &self.read_len_max_bytes)
            .field(
                "manifest_cache_chunk_ids_max",
                &self.manifest_cache_chunk_ids_max,
            )
            .field("read_cache_bytes", &self.read_cache_bytes)
            .finish_non_exhaustive()
    }
}

/// What [`BlobWriter::finish`] returns: the blob's content id, size and
/// ordered chunk list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub id: BlobId,
    pub size_bytes: u64,
    pub chunks: Vec<ChunkId>,
}

/// What [`BlobStore::stat`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub size_bytes: u64,
    pub chunk_count: u32,
    /// Wall-clock ms of the first put; stable across re-puts and restarts.
    pub created_ms: u64,
}

/// Result of [`BlobStore::compact`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segment files removed.
    pub segments_removed: Vec<u64>,
    /// Live records copied to the head segment.
    pub records_copied: u64,
    pub bytes_copied: u64,
    /// Bytes of segment files removed.
    pub bytes_reclaimed: u64,
}

/// A record that failed verification during a scrub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord {
    pub segment: u64,
    /// Offset of the record in its segment file.
    pub offset: u64,
    pub reason: String,
}

/// Result of [`BlobStore::scrub`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub records_checked: u64,
    pub bytes_checked: u64,
    /// Corrupt chunks by id (replication repairs them from a replica).
    pub corrupt_chunks: Vec<(ChunkId, CorruptRecord)>,
    /// Corrupt blob-state records by blob id.
    pub corrupt_blobs: Vec<(BlobId, CorruptRecord)>,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt_chunks.is_empty() && self.corrupt_blobs.is_empty()
    }
}

/// Space accounting of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStats {
    pub id: u64,
    /// Record bytes in the file (its length less the segment header).
    pub total_bytes: u64,
    /// Bytes of records still referenced (chunks with refcount > 0, current
    /// states of live blobs).
    pub live_bytes: u64,
    pub dead_bytes: u64,
}

/// What [`BlobStore::stats`] returns, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlobStats {
    /// Chunks in the index (including unreferenced ones awaiting compaction).
    pub chunks: u64,
    /// Chunks with refcount > 0.
    pub chunks_live: u64,
    /// Live blobs (refcount > 0).
    pub blobs: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub segments: Vec<SegmentStats>,
    pub head_segment: Option<u64>,
    pub poisoned: bool,
    // Counters since open.
    pub puts: u64,
    pub deletes: u64,
    pub chunks_written: u64,
    pub chunks_deduplicated: u64,
    pub bytes_appended: u64,
    pub syncs: u64,
    pub commits: u64,
    pub reads: u64,
    pub corruptions_detected: u64,
    pub checkpoints: u64,
    pub compactions: u64,
    /// Chunk reads answered by the chunk cache, and those it missed.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Chunks read whole and kept by the cache.
    pub cache_admitted: u64,
    /// Bytes the cache keeps now, and how many of them are locked pages.
    pub cache_bytes: u64,
    pub cache_locked_bytes: u64,
}

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error in {op} on {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    /// Stored bytes fail verification. `file` is the segment file (or the
    /// checkpoint), `offset` the record's (or block's) position in it.
    #[error("corruption in {file} (segment {segment:?}) at offset {offset}: {reason}")]
    Corruption {
        file: String,
        segment: Option<u64>,
        offset: u64,
        reason: String,
    },
    #[error("no space left on device during {op} on {file}")]
    NoSpace { op: &'static str, file: String },
    /// An earlier fdatasync failed; reopen the store.
    #[error("store poisoned by an earlier failed sync; reopen it")]
    Poisoned,
    #[error("blob {0} not found")]
    NotFound(BlobId),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, file: &str, source: io::Error) -> Error {
        if crate::io::is_no_space(&source) {
            Error::NoSpace {
                op,
                file: file.to_owned(),
            }
        } else {
            Error::Io {
                op,
                file: file.to_owned(),
                source,
            }
        }
    }

    pub(crate) fn corruption(
        file: &str,
        segment: Option<u64>,
        offset: u64,
        reason: impl fmt::Display,
    ) -> Error {
        Error::Corruption {
            file: file.to_owned(),
            segment,
            offset,
            reason: reason.to_string(),
        }
    }
}

/// Name of segment file `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("blob-{id:016x}.seg")
}

/// The segment id named by a file name, if it is a segment file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("blob-")?.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_lowercase_hex() {
        let id = BlobId::of(b"abc");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        assert!(s.to_uppercase().parse::<BlobId>().is_err());
        assert!(s[1..].parse::<BlobId>().is_err());
        assert!(format!("{id:?}").starts_with("BlobId("));
    }

    #[test]
    fn segment_names_round_trip() {
        for id in [0u64, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(id)), Some(id));
        }
        assert_eq!(parse_segment_file_name("blob.checkpoint"), None);
        assert_eq!(parse_segment_file_name("blob-12.seg"), None);
    }
}
