//! The in-memory index: chunk id -> record location and refcount, blob id ->
//! blob-state location and metadata.
//!
//! Keys are blake3 outputs, already uniformly distributed, so the maps hash
//! a key by taking its first 8 bytes instead of running SipHash over 32.
//!
//! Memory per chunk: a 32-byte key plus a 24-byte [`ChunkEntry`] = 56 bytes
//! per slot plus hashbrown's 1 control byte; with the table between 7/16 and
//! 7/8 full that is about 65-130 bytes per chunk.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::blob::{BlobId, ChunkId};

/// Hashes an id by its leading 8 bytes.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Ids hash as one 32-byte slice; anything else (the length prefix
        // some derives add) is folded in so the hasher stays correct.
        if bytes.len() >= 8 {
            let mut a = [0u8; 8];
            a.copy_from_slice(&bytes[..8]);
            self.0 ^= u64::from_le_bytes(a);
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
    }
}

pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;
pub(crate) type IdMap<K, V> = HashMap<K, V, IdBuild>;

/// Where a chunk record is and how many live blob chunk-list entries name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkEntry {
    pub segment: u64,
    pub offset: u64,
    pub payload_len: u32,
    pub refcount: u32,
}

/// A live blob: where its current blob-state record is, plus what `stat`
/// needs without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobEntry {
    pub segment: u64,
    pub offset: u64,
    pub record_len: u32,
    pub chunk_size_bytes: u32,
    pub size_bytes: u64,
    pub created_ms: u64,
    pub chunk_count: u32,
    pub refcount: u32,
}

pub(crate) fn new_chunk_map() -> IdMap<ChunkId, ChunkEntry> {
    HashMap::with_hasher(IdBuild::default())
}
pub(crate) fn new_blob_map() -> IdMap<BlobId, BlobEntry> {
    HashMap::with_hasher(IdBuild::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sizes_are_as_documented() {
        assert_eq!(std::mem::size_of::<ChunkEntry>(), 24);
        assert_eq!(std::mem::size_of::<(ChunkId, ChunkEntry)>(), 56);
    }

    #[test]
    fn map_works_with_id_hasher() {
        let mut m = new_chunk_map();
        for i in 0..1000u32 {
            let id = ChunkId::of(&i.to_le_bytes());
            m.insert(
                id,
                ChunkEntry {
                    segment: 1,
                    offset: u64::from(i),
                    payload_len: 1,
                    refcount: 0,
                },
            );
        }
        for i in 0..1000u32 {
            assert_eq!(m[&ChunkId::of(&i.to_le_bytes())].offset, u64::from(i));
        }
    }
}
