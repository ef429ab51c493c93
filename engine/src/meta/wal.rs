//! The write-ahead log's byte format: segment headers and batch records.
//!
//! A log segment is one file `meta-<base_lsn:020>.log`: a 32-byte segment
//! header, then records back to back. One record holds one committed batch,
//! so a torn record is a batch that is absent, never a batch in part.
//!
//! Segment header (all integers little-endian):
//!
//! | offset | width | field                                   |
//! |--------|-------|-----------------------------------------|
//! | 0      | 4     | magic `SPMS`                            |
//! | 4      | 2     | format version (1)                      |
//! | 6      | 2     | reserved, zero                          |
//! | 8      | 8     | base LSN: the LSN of the first record   |
//! | 16     | 12    | reserved, zero                          |
//! | 28     | 4     | crc32 of bytes 0..28                    |
//!
//! Record header, followed by `payload_len` bytes of payload:
//!
//! | offset | width | field                                            |
//! |--------|-------|--------------------------------------------------|
//! | 0      | 4     | magic `SPML`                                     |
//! | 4      | 2     | format version (1)                               |
//! | 6      | 1     | kind (1 = batch)                                 |
//! | 7      | 1     | reserved, zero                                   |
//! | 8      | 8     | LSN                                              |
//! | 16     | 8     | HLC timestamp                                    |
//! | 24     | 8     | origin node id                                   |
//! | 32     | 4     | payload length in bytes                          |
//! | 36     | 4     | group index: position of the record in the group |
//! |        |       | commit that wrote it (0 = first of its write)    |
//! | 40     | 4     | crc32 of header bytes 0..40 then the payload     |
//!
//! Payload: op count (u32), then per op:
//!
//! | width   | field                                                    |
//! |---------|----------------------------------------------------------|
//! | 1       | op (1 = put, 2 = delete)                                 |
//! | 1       | flags (bit 0: value is zstd-compressed); zero for delete |
//! | 2       | keyspace length                                          |
//! | 4       | key length                                               |
//! | 4       | stored value length (put only)                           |
//! | 4       | uncompressed value length (put with bit 0 only)          |
//! | ks, key, value bytes                                               |
//!
//! Invariants: a record decodes only if its magic, version, kind, checksum
//! and every length agree; the decoder never panics and never allocates more
//! than the input justifies (uncompressed lengths are capped at
//! [`VALUE_BYTES_MAX`]).

use bytes::Bytes;

use crate::clock::Hlc;

pub const SEGMENT_MAGIC: [u8; 4] = *b"SPMS";
pub const RECORD_MAGIC: [u8; 4] = *b"SPML";
pub const FORMAT_VERSION: u16 = 1;
pub const KIND_BATCH: u8 = 1;

pub const SEGMENT_HEADER_BYTES: usize = 32;
const SEG_OFF_VERSION: usize = 4;
const SEG_OFF_BASE_LSN: usize = 8;
const SEG_OFF_CRC: usize = 28;

pub const RECORD_HEADER_BYTES: usize = 44;
const REC_OFF_VERSION: usize = 4;
const REC_OFF_KIND: usize = 6;
const REC_OFF_RESERVED: usize = 7;
const REC_OFF_LSN: usize = 8;
const REC_OFF_HLC: usize = 16;
const REC_OFF_NODE: usize = 24;
const REC_OFF_LEN: usize = 32;
const REC_OFF_GROUP: usize = 36;
const REC_OFF_CRC: usize = 40;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const FLAG_ZSTD: u8 = 1;

/// Largest keyspace name.
pub const KEYSPACE_BYTES_MAX: usize = 1024;
/// Largest key.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Largest (uncompressed) value.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest record payload, so one batch cannot exhaust memory on replay.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most ops in one batch.
pub const OPS_PER_BATCH_MAX: usize = 1 << 20;

/// One operation of a batch, decoded (values uncompressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        keyspace: String,
        key: Bytes,
        value: Bytes,
    },
    Delete {
        keyspace: String,
        key: Bytes,
    },
}

impl Op {
    pub fn keyspace(&self) -> &str {
        match self {
            Op::Put { keyspace, .. } | Op::Delete { keyspace, .. } => keyspace,
        }
    }

    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// A decoded batch record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub hlc: Hlc,
    pub node_id: u64,
    /// Position within the group commit that wrote it: the group's records
    /// were written together and synced once, so records of one group may
    /// be torn together, and a record with `lsn - group_index` beyond a bad
    /// record proves that record was synced before (recovery uses this).
    pub group_index: u32,
    pub ops: Vec<Op>,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("need {needed_bytes} bytes, have {have_bytes}")]
    Truncated {
        needed_bytes: usize,
        have_bytes: usize,
    },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {version}")]
    BadVersion { version: u16 },
    #[error("unknown record kind {kind}")]
    BadKind { kind: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("malformed payload: {reason}")]
    Malformed { reason: &'static str },
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(b)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Encodes a segment header.
pub fn encode_segment_header(base_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[SEG_OFF_VERSION..SEG_OFF_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[SEG_OFF_BASE_LSN..SEG_OFF_BASE_LSN + 8].copy_from_slice(&base_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[..SEG_OFF_CRC]);
    h[SEG_OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header, returning its base LSN.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, DecodeError> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(DecodeError::Truncated {
            needed_bytes: SEGMENT_HEADER_BYTES,
            have_bytes: buf.len(),
        });
    }
    if buf[0..4] != SEGMENT_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let stored = u32_at(buf, SEG_OFF_CRC);
    let computed = crc32fast::hash(&buf[..SEG_OFF_CRC]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let version = u16_at(buf, SEG_OFF_VERSION);
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadVersion { version });
    }
    Ok(u64_at(buf, SEG_OFF_BASE_LSN))
}

/// Appends one record to `out`. `compress_over_bytes`: values longer than this
/// are stored zstd-compressed when that makes them smaller.
///
/// The caller has validated the sizes (see [`validate_op`]); a payload over
/// [`PAYLOAD_BYTES_MAX`] is a bug and panics.
pub fn encode_record(
    out: &mut Vec<u8>,
    lsn: u64,
    hlc: Hlc,
    node_id: u64,
    group_index: u32,
    ops: &[Op],
    compress_over_bytes: Option<usize>,
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    let op_count = u32::try_from(ops.len()).unwrap_or(u32::MAX);
    assert!(ops.len() <= OPS_PER_BATCH_MAX, "batch has too many ops");
    out.extend_from_slice(&op_count.to_le_bytes());
    for op in ops {
        match op {
            Op::Put {
                keyspace,
                key,
                value,
            } => {
                let compressed = match compress_over_bytes {
                    Some(limit) if value.len() > limit => zstd::bulk::compress(value, 3)
                        .ok()
                        .filter(|c| c.len() < value.len()),
                    _ => None,
                };
                let flags = if compressed.is_some() { FLAG_ZSTD } else { 0 };
                let stored: &[u8] = compressed.as_deref().unwrap_or(value);
                out.push(OP_PUT);
                out.push(flags);
                out.extend_from_slice(&len_u16(keyspace.len()).to_le_bytes());
                out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
                out.extend_from_slice(&len_u32(stored.len()).to_le_bytes());
                if compressed.is_some() {
                    out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
                }
                out.extend_from_slice(keyspace.as_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(stored);
            }
            Op::Delete { keyspace, key } => {
                out.push(OP_DELETE);
                out.push(0);
                out.extend_from_slice(&len_u16(keyspace.len()).to_le_bytes());
                out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
                out.extend_from_slice(keyspace.as_bytes());
                out.extend_from_slice(key);
            }
        }
    }
    let payload_len = out.len() - start - RECORD_HEADER_BYTES;
    assert!(payload_len <= PAYLOAD_BYTES_MAX, "record payload too large");
    let h = &mut out[start..start + RECORD_HEADER_BYTES];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[REC_OFF_VERSION..REC_OFF_VERSION + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[REC_OFF_KIND] = KIND_BATCH;
    h[REC_OFF_RESERVED] = 0;
    h[REC_OFF_LSN..REC_OFF_LSN + 8].copy_from_slice(&lsn.to_le_bytes());
    h[REC_OFF_HLC..REC_OFF_HLC + 8].copy_from_slice(&hlc.0.to_le_bytes());
    h[REC_OFF_NODE..REC_OFF_NODE + 8].copy_from_slice(&node_id.to_le_bytes());
    h[REC_OFF_LEN..REC_OFF_LEN + 4].copy_from_slice(&len_u32(payload_len).to_le_bytes());
    h[REC_OFF_GROUP..REC_OFF_GROUP + 4].copy_from_slice(&group_index.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start..start + REC_OFF_CRC]);
    hasher.update(&out[start + RECORD_HEADER_BYTES..]);
    let crc = hasher.finalize();
    out[start + REC_OFF_CRC..start + RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

fn len_u16(len: usize) -> u16 {
    assert!(len <= usize::from(u16::MAX), "length exceeds u16");
    len as u16
}

fn len_u32(len: usize) -> u32 {
    assert!(u32::try_from(len).is_ok(), "length exceeds u32");
    len as u32
}

/// Checks an op's sizes before it is accepted into a batch.
pub fn validate_op(keyspace: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), &'static str> {
    if keyspace.is_empty() {
        return Err("empty keyspace name");
    }
    if keyspace.len() > KEYSPACE_BYTES_MAX {
        return Err("keyspace name too long");
    }
    if key.len() > KEY_BYTES_MAX {
        return Err("key too long");
    }
    if value.is_some_and(|v| v.len() > VALUE_BYTES_MAX) {
        return Err("value too long");
    }
    Ok(())
}

/// The fields of a record header that decoded, before the payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub lsn: u64,
    pub hlc: Hlc,
    pub node_id: u64,
    pub group_index: u32,
    pub payload_len: u32,
}

impl RecordHeader {
    /// Header plus payload, in bytes.
    pub fn total_bytes(&self) -> usize {
        RECORD_HEADER_BYTES + self.payload_len as usize
    }
}

/// Decodes a record header (magic, version, kind, length bound); the checksum
/// is checked by [`decode_record`] once the payload is at hand.
pub fn decode_header(buf: &[u8]) -> Result<RecordHeader, DecodeError> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Err(DecodeError::Truncated {
            needed_bytes: RECORD_HEADER_BYTES,
            have_bytes: buf.len(),
        });
    }
    if buf[0..4] != RECORD_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16_at(buf, REC_OFF_VERSION);
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadVersion { version });
    }
    let kind = buf[REC_OFF_KIND];
    if kind != KIND_BATCH {
        return Err(DecodeError::BadKind { kind });
    }
    if buf[REC_OFF_RESERVED] != 0 {
        return Err(DecodeError::Malformed {
            reason: "reserved byte set",
        });
    }
    let payload_len = u32_at(buf, REC_OFF_LEN);
    if payload_len as usize > PAYLOAD_BYTES_MAX {
        return Err(DecodeError::Malformed {
            reason: "payload length over the limit",
        });
    }
    Ok(RecordHeader {
        lsn: u64_at(buf, REC_OFF_LSN),
        hlc: Hlc(u64_at(buf, REC_OFF_HLC)),
        node_id: u64_at(buf, REC_OFF_NODE),
        group_index: u32_at(buf, REC_OFF_GROUP),
        payload_len,
    })
}

/// Decodes the record at the start of `buf`, returning it and the number of
/// bytes it occupies. Never panics, whatever `buf` holds.
pub fn decode_record(buf: &[u8]) -> Result<(Record, usize), DecodeError> {
    let header = decode_header(buf)?;
    let total = header.total_bytes();
    if buf.len() < total {
        return Err(DecodeError::Truncated {
            needed_bytes: total,
            have_bytes: buf.len(),
        });
    }
    let stored = u32_at(buf, REC_OFF_CRC);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[..REC_OFF_CRC]);
    hasher.update(&buf[RECORD_HEADER_BYTES..total]);
    let computed = hasher.finalize();
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let ops = decode_payload(&buf[RECORD_HEADER_BYTES..total])?;
    Ok((
        Record {
            lsn: header.lsn,
            hlc: header.hlc,
            node_id: header.node_id,
            group_index: header.group_index,
            ops,
        },
        total,
    ))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(DecodeError::Malformed {
                reason: "op runs past the payload",
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16_at(self.take(2)?, 0))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32_at(self.take(4)?, 0))
    }
}

fn decode_payload(payload: &[u8]) -> Result<Vec<Op>, DecodeError> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let count = r.u32()? as usize;
    // Every op takes at least 8 bytes, so a count the payload cannot hold is
    // rejected before anything is allocated for it.
    if count > OPS_PER_BATCH_MAX || count > payload.len() / 8 {
        return Err(DecodeError::Malformed {
            reason: "op count larger than the payload can hold",
        });
    }
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let op = r.u8()?;
        let flags = r.u8()?;
        let ks_len = r.u16()? as usize;
        let key_len = r.u32()? as usize;
        match op {
            OP_PUT => {
                if flags & !FLAG_ZSTD != 0 {
                    return Err(DecodeError::Malformed {
                        reason: "unknown op flags",
                    });
                }
                let stored_len = r.u32()? as usize;
                let raw_len = if flags & FLAG_ZSTD != 0 {
                    Some(r.u32()? as usize)
                } else {
                    None
                };
                let keyspace = keyspace_of(r.take(ks_len)?)?;
                let key = r.take(key_len)?;
                let stored = r.take(stored_len)?;
                if key.len() > KEY_BYTES_MAX {
                    return Err(DecodeError::Malformed {
                        reason: "key too long",
                    });
                }
                let value = match raw_len {
                    None => {
                        if stored.len() > VALUE_BYTES_MAX {
                            return Err(DecodeError::Malformed {
                                reason: "value too long",
                            });
                        }
                        Bytes::copy_from_slice(stored)
                    }
                    Some(raw_len) => {
                        if raw_len > VALUE_BYTES_MAX {
                            return Err(DecodeError::Malformed {
                                reason: "value too long",
                            });
                        }
                        let raw = zstd::bulk::decompress(stored, raw_len).map_err(|_| {
                            DecodeError::Malformed {
                                reason: "zstd value does not decompress",
                            }
                        })?;
                        if raw.len() != raw_len {
                            return Err(DecodeError::Malformed {
                                reason: "zstd value has the wrong length",
                            });
                        }
                        Bytes::from(raw)
                    }
                };
                ops.push(Op::Put {
                    keyspace,
                    key: Bytes::copy_from_slice(key),
                    value,
                });
            }
            OP_DELETE => {
                if flags != 0 {
                    return Err(DecodeError::Malformed {
                        reason: "flags on a delete",
                    });
                }
                let keyspace = keyspace_of(r.take(ks_len)?)?;
                let key = r.take(key_len)?;
                if key.len() > KEY_BYTES_MAX {
                    return Err(DecodeError::Malformed {
                        reason: "key too long",
                    });
                }
                ops.push(Op::Delete {
                    keyspace,
                    key: Bytes::copy_from_slice(key),
                });
            }
            _ => {
                return Err(DecodeError::Malformed {
                    reason: "unknown op",
                })
            }
        }
    }
    if r.at != payload.len() {
        return Err(DecodeError::Malformed {
            reason: "trailing bytes after the last op",
        });
    }
    Ok(ops)
}

fn keyspace_of(bytes: &[u8]) -> Result<String, DecodeError> {
    if bytes.is_empty() || bytes.len() > KEYSPACE_BYTES_MAX {
        return Err(DecodeError::Malformed {
            reason: "keyspace name length out of range",
        });
    }
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Malformed {
            reason: "keyspace name is not UTF-8",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ops() -> Vec<Op> {
        vec![
            Op::Put {
                keyspace: "tracks".into(),
                key: Bytes::from_static(b"k1"),
                value: Bytes::from(vec![7u8; 5000]),
            },
            Op::Delete {
                keyspace: "albums".into(),
                key: Bytes::from_static(b"gone"),
            },
            Op::Put {
                keyspace: "t".into(),
                key: Bytes::new(),
                value: Bytes::new(),
            },
        ]
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        for compress in [None, Some(100)] {
            let mut buf = Vec::new();
            encode_record(&mut buf, 42, Hlc(99), 3, 5, &sample_ops(), compress);
            let (rec, used) = decode_record(&buf).unwrap();
            assert_eq!(used, buf.len());
            assert_eq!(rec.lsn, 42);
            assert_eq!(rec.hlc, Hlc(99));
            assert_eq!(rec.node_id, 3);
            assert_eq!(rec.group_index, 5);
            assert_eq!(rec.ops, sample_ops());
            if compress.is_some() {
                assert!(buf.len() < 1000, "compressed record is {} bytes", buf.len());
            }
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, Hlc(2), 3, 0, &sample_ops()[1..], None);
        for len in 0..buf.len() {
            assert!(decode_record(&buf[..len]).is_err(), "prefix {len} decoded");
        }
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[byte] ^= 1 << bit;
                assert!(decode_record(&b).is_err(), "flip {byte}:{bit} decoded");
            }
        }
    }

    #[test]
    fn segment_header_round_trips() {
        let h = encode_segment_header(77);
        assert_eq!(decode_segment_header(&h), Ok(77));
        let mut bad = h;
        bad[9] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
    }
}
