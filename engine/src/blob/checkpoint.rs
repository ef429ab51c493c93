//! The checkpoint file: a snapshot of the index as of a durable log
//! position, so that open loads it and scans only records after it.
//!
//! Layout (format version 1, little endian):
//! ```text
//! header, 64 bytes:
//! 0   4  magic b"SPCK"
//! 4   2  format version (1)
//! 6   2  reserved, 0
//! 8   8  position: segment id
//! 16  8  position: offset in that segment (records before it are covered)
//! 24  8  next segment id
//! 32  8  segment count S
//! 40  8  chunk count C
//! 48  8  blob count B
//! 56  4  reserved, 0
//! 60  4  CRC32 of bytes 0..60
//! body:
//! S x 8   segment ids, ascending
//! C x 56  chunk: id 32, segment 8, offset 8, payload_len 4, refcount 4
//! B x 80  blob: id 32, segment 8, offset 8, size_bytes 8, created_ms 8,
//!               record_len 4, chunk_size_bytes 4, chunk_count 4, refcount 4
//! 4       CRC32 of the body
//! ```
//!
//! **Invariant:** a checkpoint describes exactly the log prefix before its
//! position, and that prefix was durable before the checkpoint was written.

use crate::blob::index::{BlobEntry, ChunkEntry};
use crate::blob::{BlobId, ChunkId};

pub const CHECKPOINT_MAGIC: [u8; 4] = *b"SPCK";
pub const CHECKPOINT_VERSION: u16 = 1;
pub const CHECKPOINT_HEADER_LEN: usize = 64;
pub const CHUNK_ENTRY_LEN: usize = 56;
pub const BLOB_ENTRY_LEN: usize = 80;

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub position_segment: u64,
    pub position_offset: u64,
    pub next_segment_id: u64,
    pub segments: Vec<u64>,
    pub(crate) chunks: Vec<(ChunkId, ChunkEntry)>,
    pub(crate) blobs: Vec<(BlobId, BlobEntry)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn id_at(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

/// Encodes a checkpoint from iterators over the index.
pub(crate) fn encode<'a>(
    position_segment: u64,
    position_offset: u64,
    next_segment_id: u64,
    segments: &[u64],
    chunks: impl ExactSizeIterator<Item = (&'a ChunkId, &'a ChunkEntry)>,
    blobs: impl ExactSizeIterator<Item = (&'a BlobId, &'a BlobEntry)>,
) -> Vec<u8> {
    let (c, b) = (chunks.len(), blobs.len());
    let mut out = Vec::with_capacity(
        CHECKPOINT_HEADER_LEN + 8 * segments.len() + CHUNK_ENTRY_LEN * c + BLOB_ENTRY_LEN * b + 4,
    );
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0u8; 2]);
    out.extend_from_slice(&position_segment.to_le_bytes());
    out.extend_from_slice(&position_offset.to_le_bytes());
    out.extend_from_slice(&next_segment_id.to_le_bytes());
    out.extend_from_slice(&(segments.len() as u64).to_le_bytes());
    out.extend_from_slice(&(c as u64).to_le_bytes());
    out.extend_from_slice(&(b as u64).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for s in segments {
        out.extend_from_slice(&s.to_le_bytes());
    }
    for (id, e) in chunks {
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&e.segment.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.payload_len.to_le_bytes());
        out.extend_from_slice(&e.refcount.to_le_bytes());
    }
    for (id, e) in blobs {
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&e.segment.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.size_bytes.to_le_bytes());
        out.extend_from_slice(&e.created_ms.to_le_bytes());
        out.extend_from_slice(&e.record_len.to_le_bytes());
        out.extend_from_slice(&e.chunk_size_bytes.to_le_bytes());
        out.extend_from_slice(&e.chunk_count.to_le_bytes());
        out.extend_from_slice(&e.refcount.to_le_bytes());
    }
    let body_crc = crc32fast::hash(&out[CHECKPOINT_HEADER_LEN..]);
    out.extend_from_slice(&body_crc.to_le_bytes());
    out
}

/// Decodes and verifies a checkpoint; `Err` carries a reason and the offset
/// where the problem is.
pub fn decode(buf: &[u8]) -> Result<Checkpoint, (u64, String)> {
    if buf.len() < CHECKPOINT_HEADER_LEN + 4 {
        return Err((0, format!("checkpoint too short: {} bytes", buf.len())));
    }
    if buf[0..4] != CHECKPOINT_MAGIC {
        return Err((0, "bad checkpoint magic".into()));
    }
    let stored = u32_at(buf, 60);
    let actual = crc32fast::hash(&buf[..60]);
    if stored != actual {
        return Err((
            60,
            format!("checkpoint header checksum: stored {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    let version = u32::from(u16::from_le_bytes([buf[4], buf[5]]));
    if version != u32::from(CHECKPOINT_VERSION) {
        return Err((4, format!("unsupported checkpoint version {version}")));
    }
    let s = u64_at(buf, 32);
    let c = u64_at(buf, 40);
    let b = u64_at(buf, 48);
    let body_len = s
        .checked_mul(8)
        .and_then(|x| x.checked_add(c.checked_mul(CHUNK_ENTRY_LEN as u64)?))
        .and_then(|x| x.checked_add(b.checked_mul(BLOB_ENTRY_LEN as u64)?));
    let expected_len = body_len.and_then(|x| x.checked_add(CHECKPOINT_HEADER_LEN as u64 + 4));
    if expected_len != Some(buf.len() as u64) {
        return Err((
            32,
            format!(
                "checkpoint length {} does not match its counts ({s} segments, {c} chunks, {b} blobs)",
                buf.len()
            ),
        ));
    }
    let body_end = buf.len() - 4;
    let stored = u32_at(buf, body_end);
    let actual = crc32fast::hash(&buf[CHECKPOINT_HEADER_LEN..body_end]);
    if stored != actual {
        return Err((
            body_end as u64,
            format!("checkpoint body checksum: stored {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    let mut at = CHECKPOINT_HEADER_LEN;
    let mut segments = Vec::with_capacity(s as usize);
    for _ in 0..s {
        segments.push(u64_at(buf, at));
        at += 8;
    }
    let mut chunks = Vec::with_capacity(c as usize);
    for _ in 0..c {
        chunks.push((
            ChunkId(id_at(buf, at)),
            ChunkEntry {
                segment: u64_at(buf, at + 32),
                offset: u64_at(buf, at + 40),
                payload_len: u32_at(buf, at + 48),
                refcount: u32_at(buf, at + 52),
            },
        ));
        at += CHUNK_ENTRY_LEN;
    }
    let mut blobs = Vec::with_capacity(b as usize);
    for _ in 0..b {
        blobs.push((
            BlobId(id_at(buf, at)),
            BlobEntry {
                segment: u64_at(buf, at + 32),
                offset: u64_at(buf, at + 40),
                size_bytes: u64_at(buf, at + 48),
                created_ms: u64_at(buf, at + 56),
                record_len: u32_at(buf, at + 64),
                chunk_size_bytes: u32_at(buf, at + 68),
                chunk_count: u32_at(buf, at + 72),
                refcount: u32_at(buf, at + 76),
            },
        ));
        at += BLOB_ENTRY_LEN;
    }
    Ok(Checkpoint {
        position_segment: u64_at(buf, 8),
        position_offset: u64_at(buf, 16),
        next_segment_id: u64_at(buf, 24),
        segments,
        chunks,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let chunks = [(
            ChunkId([1; 32]),
            ChunkEntry {
                segment: 2,
                offset: 32,
                payload_len: 64,
                refcount: 3,
            },
        )];
        let blobs = [(
            BlobId([5; 32]),
            BlobEntry {
                segment: 2,
                offset: 200,
                record_len: 120,
                chunk_size_bytes: 64,
                size_bytes: 60,
                created_ms: 7,
                chunk_count: 1,
                refcount: 1,
            },
        )];
        encode(
            2,
            320,
            3,
            &[1, 2],
            chunks.iter().map(|(a, b)| (a, b)),
            blobs.iter().map(|(a, b)| (a, b)),
        )
    }

    #[test]
    fn round_trips() {
        let cp = decode(&sample()).unwrap();
        assert_eq!(cp.position_segment, 2);
        assert_eq!(cp.position_offset, 320);
        assert_eq!(cp.next_segment_id, 3);
        assert_eq!(cp.segments, vec![1, 2]);
        assert_eq!(cp.chunks[0].1.refcount, 3);
        assert_eq!(cp.blobs[0].1.created_ms, 7);
    }

    #[test]
    fn detects_every_flip_and_truncation() {
        let buf = sample();
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x04;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
            assert!(decode(&buf[..i]).is_err(), "truncation to {i} accepted");
        }
    }
}
