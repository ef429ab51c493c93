//! The segment record codec: the bytes of one self-describing record and of
//! a segment file's header. Layout (format version 1, all integers little
//! endian; `engine/FORMAT.md` (part 1) has the same tables):
//!
//! Record:
//! ```text
//! offset  width  field
//! 0       4      magic b"SPBR"
//! 4       2      format version (1)
//! 6       1      kind: 1 = chunk, 2 = blob state
//! 7       1      block_size_log2: 12 for chunks (4 KiB blocks), 0 otherwise
//! 8       32     key: chunk id (blake3 of payload) or blob id
//! 40      4      payload_len
//! 44      4      header_crc: CRC32 of bytes 0..44 followed by the block table
//! 48      4*n    block table: CRC32 of each block of the payload (chunks only;
//!                n = ceil(payload_len / block size), 0 for other kinds)
//! 48+4n   len    payload
//! ..      4      record_crc: CRC32 of every byte from 0 to the end of payload
//! ```
//!
//! Blob-state payload (kind 2):
//! ```text
//! 0   4   refcount (absolute, after this record; 0 = deleted)
//! 4   4   chunk_size_bytes the blob was cut with
//! 8   8   size_bytes
//! 16  8   created_ms
//! 24  4   chunk_count
//! 28  4   reserved, 0
//! 32  32*chunk_count  chunk ids in order
//! ```
//!
//! Segment header (the first 32 bytes of every segment file):
//! ```text
//! 0   4   magic b"SPSG"
//! 4   2   format version (1)
//! 6   2   reserved, 0
//! 8   8   segment id
//! 16  12  reserved, 0
//! 28  4   CRC32 of bytes 0..28
//! ```
//!
//! **Invariant:** [`decode`] accepts a record only if its magic, version,
//! kind, lengths, header CRC, every block CRC and the record CRC all check;
//! it never panics on any input (fuzzed by `fuzz/fuzz_targets/segment_record.rs`).
//! The per-block CRCs let a range read verify just the blocks it touches.

use crate::blob::{BlobId, ChunkId};

/// Magic at the start of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"SPBR";
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"SPSG";
/// The record and segment format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 4;
pub const OFF_KIND: usize = 6;
pub const OFF_BLOCK_LOG2: usize = 7;
pub const OFF_KEY: usize = 8;
pub const OFF_PAYLOAD_LEN: usize = 40;
pub const OFF_HEADER_CRC: usize = 44;
/// Length of the fixed record header.
pub const HEADER_LEN: usize = 48;
/// Length of the record CRC trailer.
pub const TRAILER_LEN: usize = 4;
/// Chunk payloads are checksummed in blocks of `1 << CHUNK_BLOCK_LOG2` bytes.
pub const CHUNK_BLOCK_LOG2: u8 = 12;
/// Block size of chunk records written by this version.
pub const CHUNK_BLOCK_BYTES: u32 = 1 << CHUNK_BLOCK_LOG2;
/// Largest payload a record may carry (bounds allocations on decode).
pub const PAYLOAD_LEN_MAX: u32 = 1 << 30;

/// Length of the segment file header.
pub const SEGMENT_HEADER_LEN: usize = 32;

/// Fixed part of a blob-state payload.
pub const BLOB_STATE_FIXED_LEN: usize = 32;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A chunk of blob content, keyed by its blake3.
    Chunk = 1,
    /// The absolute state of a blob (refcount, size, chunk list).
    BlobState = 2,
}

impl RecordKind {
    fn from_u8(value: u8) -> Option<RecordKind> {
        match value {
            1 => Some(RecordKind::Chunk),
            2 => Some(RecordKind::BlobState),
            _ => None,
        }
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: u64, available: u64 },
    #[error("bad magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported format version {found}")]
    BadVersion { found: u16 },
    #[error("unknown record kind {found}")]
    BadKind { found: u8 },
    #[error("invalid field: {what}")]
    BadField { what: &'static str },
    #[error("header checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    HeaderCrc { expected: u32, actual: u32 },
    #[error("record checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    RecordCrc { expected: u32, actual: u32 },
    #[error("block {block} checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    BlockCrc {
        block: u32,
        expected: u32,
        actual: u32,
    },
}

/// A record's fixed header, parsed but with its CRC not yet checked against
/// the block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: RecordKind,
    pub block_size_log2: u8,
    pub key: [u8; 32],
    pub payload_len: u32,
    pub header_crc: u32,
}

impl Header {
    /// Number of entries in the block table.
    pub fn block_count(&self) -> u32 {
        block_count(self.kind, self.block_size_log2, self.payload_len)
    }
    /// Length of the block table in bytes.
    pub fn table_len(&self) -> usize {
        self.block_count() as usize * 4
    }
    /// Offset of the payload from the record start.
    pub fn payload_offset(&self) -> usize {
        HEADER_LEN + self.table_len()
    }
    /// Whole record length in bytes.
    pub fn record_len(&self) -> u64 {
        self.payload_offset() as u64 + u64::from(self.payload_len) + TRAILER_LEN as u64
    }
}

fn block_count(kind: RecordKind, block_size_log2: u8, payload_len: u32) -> u32 {
    match kind {
        RecordKind::Chunk => {
            let block = 1u64 << block_size_log2;
            (u64::from(payload_len).div_ceil(block)) as u32
        }
        RecordKind::BlobState => 0,
    }
}

/// Length of a record of `kind` with a payload of `payload_len` bytes, as
/// this version writes it.
pub fn record_len(kind: RecordKind, payload_len: u32) -> u64 {
    let log2 = match kind {
        RecordKind::Chunk => CHUNK_BLOCK_LOG2,
        RecordKind::BlobState => 0,
    };
    HEADER_LEN as u64
        + 4 * u64::from(block_count(kind, log2, payload_len))
        + u64::from(payload_len)
        + TRAILER_LEN as u64
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn key_at(b: &[u8], at: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[at..at + 32]);
    k
}

/// Parses and sanity-checks the fixed header at the start of `buf`.
pub fn decode_header(buf: &[u8]) -> Result<Header, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: HEADER_LEN as u64,
            available: buf.len() as u64,
        });
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != RECORD_MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version = le_u16(buf, OFF_VERSION);
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadVersion { found: version });
    }
    let kind = RecordKind::from_u8(buf[OFF_KIND]).ok_or(DecodeError::BadKind {
        found: buf[OFF_KIND],
    })?;
    let block_size_log2 = buf[OFF_BLOCK_LOG2];
    match kind {
        RecordKind::Chunk if !(9..=24).contains(&block_size_log2) => {
            return Err(DecodeError::BadField {
                what: "chunk block size",
            })
        }
        RecordKind::BlobState if block_size_log2 != 0 => {
            return Err(DecodeError::BadField {
                what: "blob-state block size",
            })
        }
        _ => {}
    }
    let payload_len = le_u32(buf, OFF_PAYLOAD_LEN);
    if payload_len > PAYLOAD_LEN_MAX {
        return Err(DecodeError::BadField {
            what: "payload length",
        });
    }
    Ok(Header {
        kind,
        block_size_log2,
        key: key_at(buf, OFF_KEY),
        payload_len,
        header_crc: le_u32(buf, OFF_HEADER_CRC),
    })
}

/// Checks the header CRC given the header and block table bytes
/// (`buf[..payload_offset]`).
pub fn verify_header_crc(header: &Header, head_and_table: &[u8]) -> Result<(), DecodeError> {
    let need = header.payload_offset();
    if head_and_table.len() < need {
        return Err(DecodeError::Truncated {
            needed: need as u64,
            available: head_and_table.len() as u64,
        });
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&head_and_table[..OFF_HEADER_CRC]);
    h.update(&head_and_table[HEADER_LEN..need]);
    let actual = h.finalize();
    if actual != header.header_crc {
        return Err(DecodeError::HeaderCrc {
            expected: header.header_crc,
            actual,
        });
    }
    Ok(())
}

/// The stored CRC of block `block` from a block table.
pub fn table_entry(table: &[u8], block: u32) -> u32 {
    le_u32(table, block as usize * 4)
}

/// A decoded, fully verified record borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Decodes and fully verifies the record at the start of `buf`; returns it
/// with the number of bytes it occupies.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    let header = decode_header(buf)?;
    let len = header.record_len();
    if (buf.len() as u64) < len {
        return Err(DecodeError::Truncated {
            needed: len,
            available: buf.len() as u64,
        });
    }
    let len = len as usize;
    verify_header_crc(&header, buf)?;
    let payload_end = len - TRAILER_LEN;
    let stored = le_u32(buf, payload_end);
    let actual = crc32fast::hash(&buf[..payload_end]);
    if stored != actual {
        return Err(DecodeError::RecordCrc {
            expected: stored,
            actual,
        });
    }
    let payload = &buf[header.payload_offset()..payload_end];
    if header.kind == RecordKind::Chunk {
        let table = &buf[HEADER_LEN..header.payload_offset()];
        let block = 1usize << header.block_size_log2;
        for (i, piece) in payload.chunks(block).enumerate() {
            let expected = table_entry(table, i as u32);
            let actual = crc32fast::hash(piece);
            if expected != actual {
                return Err(DecodeError::BlockCrc {
                    block: i as u32,
                    expected,
                    actual,
                });
            }
        }
    } else {
        BlobState::decode(payload)?;
    }
    Ok((Record { header, payload }, len))
}

/// The encoded head (header and block table) of a chunk record plus its
/// trailer; the payload is written between them unchanged, so a chunk is
/// never copied to be written.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    pub head: Vec<u8>,
    pub trailer: [u8; 4],
}

impl EncodedChunk {
    pub fn record_len(&self, payload_len: usize) -> u64 {
        (self.head.len() + payload_len + TRAILER_LEN) as u64
    }
}

/// Encodes the head and trailer of a chunk record for `payload`.
pub fn encode_chunk(key: &ChunkId, payload: &[u8]) -> EncodedChunk {
    assert!(payload.len() as u64 <= u64::from(PAYLOAD_LEN_MAX));
    let blocks = payload.len().div_ceil(CHUNK_BLOCK_BYTES as usize);
    let mut head = Vec::with_capacity(HEADER_LEN + 4 * blocks);
    head.extend_from_slice(&RECORD_MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.push(RecordKind::Chunk as u8);
    head.push(CHUNK_BLOCK_LOG2);
    head.extend_from_slice(&key.0);
    head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    head.extend_from_slice(&[0u8; 4]);
    // One pass over the payload: each block's CRC goes to the table and is
    // combined into the payload CRC, so the record CRC costs no second pass.
    let mut payload_crc = crc32fast::Hasher::new();
    for piece in payload.chunks(CHUNK_BLOCK_BYTES as usize) {
        let mut h = crc32fast::Hasher::new();
        h.update(piece);
        let block_crc = h.clone().finalize();
        head.extend_from_slice(&block_crc.to_le_bytes());
        payload_crc.combine(&h);
    }
    finish_head(&mut head);
    let mut record_crc = crc32fast::Hasher::new();
    record_crc.update(&head);
    record_crc.combine(&payload_crc);
    EncodedChunk {
        head,
        trailer: record_crc.finalize().to_le_bytes(),
    }
}

fn finish_head(head: &mut [u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..OFF_HEADER_CRC]);
    h.update(&head[HEADER_LEN..]);
    let crc = h.finalize();
    head[OFF_HEADER_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// The absolute state of a blob after a put or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobState {
    pub refcount: u32,
    pub chunk_size_bytes: u32,
    pub size_bytes: u64,
    pub created_ms: u64,
    pub chunks: Vec<ChunkId>,
}

impl BlobState {
    /// Parses and checks a blob-state payload.
    pub fn decode(payload: &[u8]) -> Result<BlobState, DecodeError> {
        if payload.len() < BLOB_STATE_FIXED_LEN {
            return Err(DecodeError::BadField {
                what: "blob-state payload too short",
            });
        }
        let refcount = le_u32(payload, 0);
        let chunk_size_bytes = le_u32(payload, 4);
        let size_bytes = le_u64(payload, 8);
        let created_ms = le_u64(payload, 16);
        let chunk_count = le_u32(payload, 24);
        if le_u32(payload, 28) != 0 {
            return Err(DecodeError::BadField {
                what: "blob-state reserved",
            });
        }
        if (payload.len() - BLOB_STATE_FIXED_LEN) as u64 != u64::from(chunk_count) * 32 {
            return Err(DecodeError::BadField {
                what: "blob-state chunk count",
            });
        }
        if chunk_size_bytes == 0 {
            return Err(DecodeError::BadField {
                what: "blob-state chunk size",
            });
        }
        if u64::from(chunk_count) != size_bytes.div_ceil(u64::from(chunk_size_bytes)) {
            return Err(DecodeError::BadField {
                what: "blob-state size against chunk count",
            });
        }
        let chunks = payload[BLOB_STATE_FIXED_LEN..]
            .chunks_exact(32)
            .map(|c| ChunkId(key_at(c, 0)))
            .collect();
        Ok(BlobState {
            refcount,
            chunk_size_bytes,
            size_bytes,
            created_ms,
            chunks,
        })
    }

    /// Length of this state's payload.
    pub fn payload_len(&self) -> usize {
        BLOB_STATE_FIXED_LEN + 32 * self.chunks.len()
    }

    /// Encodes a whole blob-state record keyed by `id`.
    pub fn encode_record(&self, id: &BlobId) -> Vec<u8> {
        let payload_len = self.payload_len();
        assert!(payload_len as u64 <= u64::from(PAYLOAD_LEN_MAX));
        let mut out = Vec::with_capacity(HEADER_LEN + payload_len + TRAILER_LEN);
        out.extend_from_slice(&RECORD_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(RecordKind::BlobState as u8);
        out.push(0);
        out.extend_from_slice(&id.0);
        out.extend_from_slice(&(payload_len as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        finish_head(&mut out);
        out.extend_from_slice(&self.refcount.to_le_bytes());
        out.extend_from_slice(&self.chunk_size_bytes.to_le_bytes());
        out.extend_from_slice(&self.size_bytes.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.0);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Encodes the header of segment `segment_id`.
pub fn encode_segment_header(segment_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[0..4].copy_from_slice(&SEGMENT_MAGIC);
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header and returns the segment id it names.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, DecodeError> {
    if buf.len() < SEGMENT_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: SEGMENT_HEADER_LEN as u64,
            available: buf.len() as u64,
        });
    }
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != SEGMENT_MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let stored = le_u32(buf, 28);
    let actual = crc32fast::hash(&buf[..28]);
    if stored != actual {
        return Err(DecodeError::HeaderCrc {
            expected: stored,
            actual,
        });
    }
    let version = le_u16(buf, 4);
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadVersion { found: version });
    }
    Ok(le_u64(buf, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_record(payload: &[u8]) -> Vec<u8> {
        let id = ChunkId(*blake3::hash(payload).as_bytes());
        let enc = encode_chunk(&id, payload);
        let mut out = enc.head.clone();
        out.extend_from_slice(payload);
        out.extend_from_slice(&enc.trailer);
        assert_eq!(
            out.len() as u64,
            record_len(RecordKind::Chunk, payload.len() as u32)
        );
        out
    }

    #[test]
    fn chunk_round_trips_at_many_sizes() {
        for len in [0usize, 1, 100, 4095, 4096, 4097, 10_000, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let bytes = chunk_record(&payload);
            let (rec, used) = decode(&bytes).unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(rec.payload, &payload[..]);
            assert_eq!(rec.header.kind, RecordKind::Chunk);
            assert_eq!(rec.header.block_count() as usize, len.div_ceil(4096));
        }
    }

    #[test]
    fn blob_state_round_trips() {
        let state = BlobState {
            refcount: 3,
            chunk_size_bytes: 64,
            size_bytes: 130,
            created_ms: 42,
            chunks: vec![ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32])],
        };
        let bytes = state.encode_record(&BlobId([9; 32]));
        let (rec, used) = decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(rec.header.key, [9; 32]);
        assert_eq!(BlobState::decode(rec.payload).unwrap(), state);
        assert_eq!(
            bytes.len() as u64,
            record_len(RecordKind::BlobState, state.payload_len() as u32)
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
        let bytes = chunk_record(&payload);
        for byte in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[byte] ^= 1 << bit;
                assert!(decode(&b).is_err(), "flip at {byte}:{bit} accepted");
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = chunk_record(b"hello world, this is a chunk");
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncation to {len} accepted"
            );
        }
    }

    #[test]
    fn blob_state_rejects_inconsistent_sizes() {
        let state = BlobState {
            refcount: 1,
            chunk_size_bytes: 64,
            size_bytes: 200, // needs 4 chunks
            created_ms: 0,
            chunks: vec![ChunkId([1; 32])],
        };
        let bytes = state.encode_record(&BlobId([9; 32]));
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::BadField {
                what: "blob-state size against chunk count"
            }
        );
    }

    #[test]
    fn segment_header_round_trips_and_detects_flips() {
        let h = encode_segment_header(77);
        assert_eq!(decode_segment_header(&h).unwrap(), 77);
        for byte in 0..h.len() {
            let mut b = h;
            b[byte] ^= 0x10;
            assert!(decode_segment_header(&b).is_err());
        }
    }
}
