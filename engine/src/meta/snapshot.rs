//! Snapshot files: the whole key-value state as of one LSN.
//!
//! A snapshot is one file `meta-<lsn:020>.snap`, written as
//! `meta-<lsn:020>.snap.tmp`, synced, renamed and the directory synced, so a
//! snapshot name on disk always names a complete file.
//!
//! Header (64 bytes, little-endian):
//!
//! | offset | width | field                                 |
//! |--------|-------|---------------------------------------|
//! | 0      | 4     | magic `SPSN`                          |
//! | 4      | 2     | format version (1)                    |
//! | 6      | 2     | reserved, zero                        |
//! | 8      | 8     | LSN: every record up to it is applied |
//! | 16     | 8     | largest HLC applied                   |
//! | 24     | 8     | entry count                           |
//! | 32     | 8     | body length in bytes                  |
//! | 40     | 4     | crc32 of the body                     |
//! | 44     | 16    | reserved, zero                        |
//! | 60     | 4     | crc32 of header bytes 0..60           |
//!
//! Body: keyspace sections in name order, each `ks_len u16, ks bytes,
//! entry_count u64`, then its entries in key order, each `flags u8 (bit 0:
//! zstd), key_len u32, stored_len u32, [raw_len u32 if zstd], key, value`.
//!
//! Invariant: keys within a section strictly increase and sections strictly
//! increase by name; the loader checks this, so a loaded state is exactly the
//! written one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::wal::{KEYSPACE_BYTES_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use super::Error;
use crate::clock::Hlc;
use crate::io::{OpenMode, Storage};

pub const SNAPSHOT_MAGIC: [u8; 4] = *b"SPSN";
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
const OFF_VERSION: usize = 4;
const OFF_LSN: usize = 8;
const OFF_HLC: usize = 16;
const OFF_COUNT: usize = 24;
const OFF_BODY_LEN: usize = 32;
const OFF_BODY_CRC: usize = 40;
const OFF_HEADER_CRC: usize = 60;
const FLAG_ZSTD: u8 = 1;
/// Body bytes buffered before each write.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Longest key kept inline (no heap allocation, no pointer to chase).
const INLINE_KEY_BYTES_MAX: usize = 30;

/// A key as the in-memory state holds it: short keys (ids, index entries)
/// inline, so comparing or hashing them touches no other cache line; longer
/// ones as shared `Bytes`. Hashes, compares and borrows as its bytes.
#[derive(Clone)]
pub enum Key {
    Inline {
        len: u8,
        data: [u8; INLINE_KEY_BYTES_MAX],
    },
    Shared(Bytes),
}

impl Key {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, data } => &data[..usize::from(*len)],
            Key::Shared(b) => b,
        }
    }

    /// The key as `Bytes` (a copy for inline keys, a refcount otherwise).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Key::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Key::Shared(b) => b.clone(),
        }
    }
}

impl From<Bytes> for Key {
    fn from(b: Bytes) -> Key {
        if b.len() <= INLINE_KEY_BYTES_MAX {
            let mut data = [0u8; INLINE_KEY_BYTES_MAX];
            data[..b.len()].copy_from_slice(&b);
            Key::Inline {
                len: b.len() as u8,
                data,
            }
        } else {
            Key::Shared(b)
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must hash exactly as `[u8]` does, for lookups by slice.
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

/// One keyspace: a hash map for point gets (one probe instead of a dozen
/// pointer-chasing comparisons down a B-tree) and an ordered set of the same
/// keys for scans.
///
/// Invariant: `order` holds exactly the keys of `map`.
#[derive(Debug, Clone, Default)]
pub struct Keyspace {
    map: HashMap<Key, Bytes>,
    order: BTreeSet<Key>,
}

impl Keyspace {
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: Bytes, value: Bytes) -> Option<Bytes> {
        let key = Key::from(key);
        let old = self.map.insert(key.clone(), value);
        if old.is_none() {
            self.order.insert(key);
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Bytes> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.order.remove(key);
        }
        debug_assert_eq!(self.map.len(), self.order.len());
        old
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.map.values()
    }

    /// Entries with keys in `(lo, hi)`, in key order (reversible).
    pub fn range<'a>(
        &'a self,
        lo: Bound<&'a [u8]>,
        hi: Bound<&'a [u8]>,
    ) -> impl DoubleEndedIterator<Item = (&'a Key, &'a Bytes)> + 'a {
        self.order
            .range::<[u8], _>((lo, hi))
            .filter_map(move |k| self.map.get_key_value(k.as_slice()))
    }

    /// All entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Bytes)> {
        self.order
            .iter()
            .filter_map(move |k| self.map.get_key_value(k.as_slice()))
    }
}

impl FromIterator<(Bytes, Bytes)> for Keyspace {
    fn from_iter<I: IntoIterator<Item = (Bytes, Bytes)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut map = HashMap::with_capacity(iter.size_hint().0);
        let mut keys = Vec::with_capacity(iter.size_hint().0);
        for (k, v) in iter {
            let k = Key::from(k);
            keys.push(k.clone());
            map.insert(k, v);
        }
        // Sorted input makes this a linear bulk build.
        let order: BTreeSet<Key> = keys.into_iter().collect();
        assert_eq!(order.len(), map.len(), "duplicate keys in a keyspace");
        Keyspace { map, order }
    }
}
/// All keyspaces by name.
pub type State = BTreeMap<String, Keyspace>;

/// A snapshot read back from disk.
pub struct Loaded {
    pub lsn: u64,
    pub hlc: Hlc,
    pub state: State,
    pub records: u64,
}

/// The file name of the snapshot at `lsn`.
pub fn file_name(lsn: u64) -> String {
    format!("meta-{lsn:020}.snap")
}

/// Writes the snapshot of `state` at `lsn` durably: temp file, data sync,
/// rename, directory sync.
pub fn write(
    storage: &dyn Storage,
    state: &State,
    lsn: u64,
    hlc: Hlc,
    compress_over_bytes: Option<usize>,
) -> Result<(), Error> {
    let name = file_name(lsn);
    let tmp = format!("{name}.tmp");
    let file = storage
        .open(&tmp, OpenMode::CreateOrOpen)
        .map_err(|e| Error::io("open snapshot", &tmp, e))?;
    file.set_len(0)
        .map_err(|e| Error::io("truncate snapshot", &tmp, e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK_BYTES + 1024);
    let mut offset = SNAPSHOT_HEADER_BYTES as u64;
    let mut count: u64 = 0;
    let mut flush = |buf: &mut Vec<u8>, offset: &mut u64| -> Result<(), Error> {
        hasher.update(buf);
        file.write_all_at(buf, *offset)
            .map_err(|e| Error::io("write snapshot", &tmp, e))?;
        *offset += buf.len() as u64;
        buf.clear();
        Ok(())
    };
    for (ks, entries) in state {
        if entries.is_empty() {
            continue;
        }
        assert!(ks.len() <= KEYSPACE_BYTES_MAX);
        buf.extend_from_slice(&(ks.len() as u16).to_le_bytes());
        buf.extend_from_slice(ks.as_bytes());
        buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (key, value) in entries.iter() {
            let compressed = match compress_over_bytes {
                Some(limit) if value.len() > limit => zstd::bulk::compress(value, 3)
                    .ok()
                    .filter(|c| c.len() < value.len()),
                _ => None,
            };
            let stored: &[u8] = compressed.as_deref().unwrap_or(value);
            buf.push(if compressed.is_some() { FLAG_ZSTD } else { 0 });
            let key = key.as_slice();
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(stored.len() as u32).to_le_bytes());
            if compressed.is_some() {
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            }
            buf.extend_from_slice(key);
            buf.extend_from_slice(stored);
            count += 1;
            if buf.len() >= WRITE_CHUNK_BYTES {
                flush(&mut buf, &mut offset)?;
            }
        }
    }
    flush(&mut buf, &mut offset)?;
    let body_len = offset - SNAPSHOT_HEADER_BYTES as u64;
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..4].copy_from_slice(&SNAPSHOT_MAGIC);
    h[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&super::wal::FORMAT_VERSION.to_le_bytes());
    h[OFF_LSN..OFF_LSN + 8].copy_from_slice(&lsn.to_le_bytes());
    h[OFF_HLC..OFF_HLC + 8].copy_from_slice(&hlc.0.to_le_bytes());
    h[OFF_COUNT..OFF_COUNT + 8].copy_from_slice(&count.to_le_bytes());
    h[OFF_BODY_LEN..OFF_BODY_LEN + 8].copy_from_slice(&body_len.to_le_bytes());
    h[OFF_BODY_CRC..OFF_BODY_CRC + 4].copy_from_slice(&hasher.finalize().to_le_bytes());
    let crc = crc32fast::hash(&h[..OFF_HEADER_CRC]);
    h[OFF_HEADER_CRC..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&h, 0)
        .map_err(|e| Error::io("write snapshot header", &tmp, e))?;
    file.sync_data()
        .map_err(|e| Error::io("sync snapshot", &tmp, e))?;
    drop(file);
    storage
        .rename(&tmp, &name)
        .map_err(|e| Error::io("rename snapshot", &name, e))?;
    storage
        .sync_dir()
        .map_err(|e| Error::io("sync directory", &name, e))?;
    Ok(())
}

fn corrupt(file: &str, offset: u64, reason: &str) -> Error {
    Error::Corruption {
        file: file.to_owned(),
        offset,
        reason: reason.to_owned(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
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

/// Reads and verifies the snapshot `name`. Keys and uncompressed values are
/// slices of one buffer holding the file, so loading copies nothing per entry.
pub fn load(storage: &Arc<dyn Storage>, name: &str) -> Result<Loaded, Error> {
    let file = storage
        .open(name, OpenMode::Existing)
        .map_err(|e| Error::io("open snapshot", name, e))?;
    let len = file
        .len()
        .map_err(|e| Error::io("stat snapshot", name, e))?;
    if len < SNAPSHOT_HEADER_BYTES as u64 {
        return Err(corrupt(name, 0, "snapshot shorter than its header"));
    }
    let len_usize =
        usize::try_from(len).map_err(|_| corrupt(name, 0, "snapshot larger than memory"))?;
    let data = file
        .read_bytes_at(0, len_usize)
        .map_err(|e| Error::io("read snapshot", name, e))?;
    let h = &data[..SNAPSHOT_HEADER_BYTES];
    if h[0..4] != SNAPSHOT_MAGIC {
        return Err(corrupt(name, 0, "bad snapshot magic"));
    }
    if u32_at(h, OFF_HEADER_CRC) != crc32fast::hash(&h[..OFF_HEADER_CRC]) {
        return Err(corrupt(name, 0, "snapshot header checksum mismatch"));
    }
    let version = u16_at(h, OFF_VERSION);
    if version != super::wal::FORMAT_VERSION {
        return Err(corrupt(name, 4, "unsupported snapshot version"));
    }
    let lsn = u64_at(h, OFF_LSN);
    let hlc = Hlc(u64_at(h, OFF_HLC));
    let count = u64_at(h, OFF_COUNT);
    let body_len = u64_at(h, OFF_BODY_LEN);
    if body_len != len - SNAPSHOT_HEADER_BYTES as u64 {
        return Err(corrupt(
            name,
            32,
            "snapshot body length disagrees with the file",
        ));
    }
    let body = data.slice(SNAPSHOT_HEADER_BYTES..);
    if u32_at(h, OFF_BODY_CRC) != crc32fast::hash(&body) {
        return Err(corrupt(
            name,
            SNAPSHOT_HEADER_BYTES as u64,
            "snapshot body checksum mismatch",
        ));
    }
    let mut state = State::new();
    let mut at = 0usize;
    let mut seen: u64 = 0;
    let need = |at: usize, n: usize| -> Result<(), Error> {
        if at.checked_add(n).is_some_and(|end| end <= body.len()) {
            Ok(())
        } else {
            Err(corrupt(
                name,
                (SNAPSHOT_HEADER_BYTES + at) as u64,
                "snapshot entry runs past the end",
            ))
        }
    };
    let mut last_ks: Option<String> = None;
    while at < body.len() {
        let off = (SNAPSHOT_HEADER_BYTES + at) as u64;
        need(at, 2)?;
        let ks_len = usize::from(u16_at(&body, at));
        at += 2;
        need(at, ks_len + 8)?;
        if ks_len == 0 || ks_len > KEYSPACE_BYTES_MAX {
            return Err(corrupt(name, off, "keyspace name length out of range"));
        }
        let ks = std::str::from_utf8(&body[at..at + ks_len])
            .map_err(|_| corrupt(name, off, "keyspace name is not UTF-8"))?
            .to_owned();
        at += ks_len;
        if last_ks.as_ref().is_some_and(|l| *l >= ks) {
            return Err(corrupt(name, off, "keyspaces out of order"));
        }
        let n = u64_at(&body, at);
        at += 8;
        if n > count - seen {
            return Err(corrupt(name, off, "more entries than the header counts"));
        }
        let mut entries: Vec<(Bytes, Bytes)> = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let eoff = (SNAPSHOT_HEADER_BYTES + at) as u64;
            need(at, 9)?;
            let flags = body[at];
            let key_len = u32_at(&body, at + 1) as usize;
            let stored_len = u32_at(&body, at + 5) as usize;
            at += 9;
            if flags & !FLAG_ZSTD != 0 {
                return Err(corrupt(name, eoff, "unknown entry flags"));
            }
            let raw_len = if flags & FLAG_ZSTD != 0 {
                need(at, 4)?;
                let r = u32_at(&body, at) as usize;
                at += 4;
                Some(r)
            } else {
                None
            };
            if key_len > KEY_BYTES_MAX {
                return Err(corrupt(name, eoff, "key too long"));
            }
            need(at, key_len)?;
            let key = body.slice(at..at + key_len);
            at += key_len;
            need(at, stored_len)?;
            let stored = body.slice(at..at + stored_len);
            at += stored_len;
            let value = match raw_len {
                None => stored,
                Some(raw_len) => {
                    if raw_len > VALUE_BYTES_MAX {
                        return Err(corrupt(name, eoff, "value too long"));
                    }
                    let raw = zstd::bulk::decompress(&stored, raw_len)
                        .map_err(|_| corrupt(name, eoff, "value does not decompress"))?;
                    Bytes::from(raw)
                }
            };
            if entries.last().is_some_and(|(k, _)| *k >= key) {
                return Err(corrupt(name, eoff, "keys out of order"));
            }
            entries.push((key, value));
        }
        seen += n;
        // Input is sorted, so the bulk build is linear.
        state.insert(ks.clone(), entries.into_iter().collect());
        last_ks = Some(ks);
    }
    if seen != count {
        return Err(corrupt(name, 24, "entry count disagrees with the body"));
    }
    Ok(Loaded {
        lsn,
        hlc,
        state,
        records: count,
    })
}
