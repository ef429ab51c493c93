//! The verified chunk cache: whole chunk payloads, checked once, served
//! from memory afterwards.
//!
//! Every read verifies what it returns, and for bytes already in the page
//! cache the check costs as much as `pread`'s copy: a hot chunk read over
//! and over would be checked over and over although its bytes cannot have
//! changed. So a chunk read a second time (while the first read is still
//! remembered; see [`ChunkCache::admit`]) is read whole, verified whole, and
//! kept; later reads of any range of it are slices of the kept bytes, with
//! no syscall, copy or check. A chunk read once, or read on piece by piece
//! in one pass (a stream, a player fetching ranges in order, a transcode),
//! is not kept, so a single pass over a large blob does not push out the
//! hot set; scrub does not use the cache at all.
//!
//! What a kept chunk holds depends on the store:
//! - From a mapped store, the chunk's record locked in memory
//!   ([`super::mapped::SegmentMap::lock`]) and verified once locked: the
//!   page cache's own pages, which an origin may pass to `sendfile`.
//! - Otherwise (a store read through the storage trait, or a mapped store
//!   whose process may lock no more memory), a heap copy read with `pread`
//!   and verified.
//!
//! Eviction is CLOCK (second chance) over the kept chunks, by bytes.
//!
//! **Invariants:**
//! - Chunks are named by their content, so a kept chunk is never stale: the
//!   same id means the same bytes. The cache never decides whether a chunk
//!   is live; callers reach it only through a live blob's chunk list.
//! - Every byte handed out was verified after it was in memory that cannot
//!   change: locked pages or the heap.
//! - Kept payload bytes never exceed the capacity. (Locked pages can
//!   outlive their entry while a reader still holds `Bytes` of them; they
//!   are bounded by the process's `RLIMIT_MEMLOCK`.)
//! - No kept chunk holds the map of a segment compaction removed
//!   ([`ChunkCache::forget_segment`]): it would keep the deleted file's
//!   pages locked and its disk space allocated.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use crate::blob::index::IdMap;
use crate::blob::ChunkId;

/// Chunks read once and remembered, for admission on the second read.
const SEEN_MAX: usize = 8192;

/// A first read at most this long that the next read starts over and
/// reads past is a probe (a player asking `bytes=0-1` before `bytes=0-`),
/// not a first pass. (The same short read twice is a hot range.)
const PROBE_BYTES_MAX: u32 = 16 * 1024;

/// The remembered read of a chunk whose whole read failed: never admitted
/// while remembered, so a chunk with a bad block is not read whole and
/// reported again on every other read.
const REFUSED: (u32, u32) = (u32::MAX, u32::MAX);

#[derive(Debug)]
struct Entry {
    /// The whole payload.
    payload: Bytes,
    /// Set by a hit; CLOCK clears it once before evicting.
    referenced: bool,
    /// For a locked slice of a segment's map: that segment and the bytes of
    /// the pages locked for it; `None` for a heap copy.
    locked: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: IdMap<ChunkId, Entry>,
    /// The CLOCK: each key of `entries` once, oldest first.
    clock: VecDeque<ChunkId>,
    cached_bytes: u64,
    locked_bytes: u64,
    /// Chunks read but not (yet) kept, with the span of their last read
    /// (or [`REFUSED`]); `seen_order` bounds it.
    seen: IdMap<ChunkId, (u32, u32)>,
    seen_order: VecDeque<ChunkId>,
}

/// Counts for [`super::BlobStats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub admitted: u64,
    pub cached_bytes: u64,
    pub locked_bytes: u64,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct ChunkCache {
    capacity_bytes: u64,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    admitted: AtomicU64,
}

impl ChunkCache {
    pub(crate) fn new(capacity_bytes: u64) -> ChunkCache {
        ChunkCache {
            capacity_bytes,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code that can panic runs under the lock between related
        // updates, so a poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes `start..end` of the kept payload of `id`, if kept.
    pub(crate) fn get(&self, id: &ChunkId, start: u32, end: u32) -> Option<Bytes> {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(id) else {
            drop(inner);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if start > end || end as usize > entry.payload.len() {
            // Not a range of this chunk: the store's own path reports it.
            return None;
        }
        entry.referenced = true;
        let payload = entry.payload.clone();
        drop(inner);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(payload.slice(start as usize..end as usize))
    }

    /// Called on a miss, a read of bytes `start..end` of a chunk of
    /// `payload_len` bytes: whether to read it whole and keep it, else
    /// remembers this read. A chunk is kept when it is read again: a read
    /// that neither continues where the chunk's last read ended (a player
    /// fetching a track piece by piece reads each chunk several times, but
    /// once through) nor starts over a short probe.
    pub(crate) fn admit(&self, id: &ChunkId, start: u32, end: u32, payload_len: u32) -> bool {
        if u64::from(payload_len) > self.capacity_bytes / 4 {
            return false;
        }
        let mut inner = self.lock();
        if let Some(last) = inner.seen.get_mut(id) {
            let (last_start, last_end) = *last;
            if (last_start, last_end) == REFUSED {
                return false;
            }
            if start == last_end {
                last.1 = end;
                return false;
            }
            if start == last_start && last_end - last_start <= PROBE_BYTES_MAX && end > last_end {
                *last = (start, end);
                return false;
            }
            inner.seen.remove(id);
            return true;
        }
        remember(&mut inner, *id, (start, end));
        false
    }

    /// Records that the whole read of `id` failed (see [`REFUSED`]).
    pub(crate) fn refuse(&self, id: &ChunkId) {
        let mut inner = self.lock();
        match inner.seen.get_mut(id) {
            Some(last) => *last = REFUSED,
            None => remember(&mut inner, *id, REFUSED),
        }
    }

    /// Keeps `payload` (verified, whole) for `id`; `locked` is (segment,
    /// bytes of pages locked) when it is a locked slice of that segment's
    /// map. Evicts to stay within the capacity. A chunk already kept keeps
    /// its first copy.
    pub(crate) fn insert(&self, id: ChunkId, payload: Bytes, locked: Option<(u64, u64)>) {
        let len = payload.len() as u64;
        if len > self.capacity_bytes {
            return;
        }
        let mut inner = self.lock();
        if inner.entries.contains_key(&id) {
            return;
        }
        while inner.cached_bytes + len > self.capacity_bytes && evict_one(&mut inner) {}
        inner.cached_bytes += len;
        if let Some((_, span)) = locked {
            inner.locked_bytes += span;
        }
        inner.entries.insert(
            id,
            Entry {
                payload,
                referenced: false,
                locked,
            },
        );
        inner.clock.push_back(id);
        drop(inner);
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets `id` (its last reference is gone), freeing its memory once
    /// no reader holds a slice of it.
    pub(crate) fn remove(&self, id: &ChunkId) {
        let mut inner = self.lock();
        if let Some(e) = inner.entries.remove(id) {
            forget(&mut inner, &e);
            inner.clock.retain(|k| k != id);
        }
        inner.seen.remove(id);
    }

    /// Drops every kept slice of segment `segment`'s map (compaction
    /// removed it; the chunks live on in other segments and are kept again
    /// from there when read twice).
    pub(crate) fn forget_segment(&self, segment: u64) {
        let mut inner = self.lock();
        let gone: Vec<ChunkId> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.locked.is_some_and(|(s, _)| s == segment))
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            if let Some(e) = inner.entries.remove(id) {
                forget(&mut inner, &e);
            }
        }
        if !gone.is_empty() {
            let Inner { entries, clock, .. } = &mut *inner;
            clock.retain(|k| entries.contains_key(k));
        }
    }

    /// Bytes of pages locked for kept chunks.
    pub(crate) fn locked_bytes(&self) -> u64 {
        self.lock().locked_bytes
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
            cached_bytes: inner.cached_bytes,
            locked_bytes: inner.locked_bytes,
        }
    }
}

/// Adds a remembered read, forgetting the oldest past [`SEEN_MAX`].
fn remember(inner: &mut Inner, id: ChunkId, span: (u32, u32)) {
    if inner.seen_order.len() >= SEEN_MAX {
        if let Some(old) = inner.seen_order.pop_front() {
            inner.seen.remove(&old);
        }
    }
    // `seen_order` may hold ids already taken out of `seen` (admitted);
    // popping those only shortens the memory a little early.
    inner.seen.insert(id, span);
    inner.seen_order.push_back(id);
}

fn forget(inner: &mut Inner, e: &Entry) {
    let len = e.payload.len() as u64;
    inner.cached_bytes -= len;
    if let Some((_, span)) = e.locked {
        inner.locked_bytes -= span;
    }
}

/// Evicts one chunk by CLOCK; false when nothing is kept.
fn evict_one(inner: &mut Inner) -> bool {
    // Each key gets at most one second chance, so this ends within two
    // turns of the clock.
    while let Some(id) = inner.clock.pop_front() {
        let Some(entry) = inner.entries.get_mut(&id) else {
            continue;
        };
        if entry.referenced {
            entry.referenced = false;
            inner.clock.push_back(id);
            continue;
        }
        if let Some(e) = inner.entries.remove(&id) {
            forget(inner, &e);
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn a_chunk_is_kept_on_its_second_read_and_evicted_by_clock() {
        let cache = ChunkCache::new(4000);
        let payload = |n: u8| Bytes::from(vec![n; 1000]);
        assert!(
            !cache.admit(&id(1), 0, 100, 1000),
            "first read only remembers"
        );
        assert!(
            !cache.admit(&id(1), 100, 700, 1000),
            "reading on is one pass"
        );
        assert!(
            !cache.admit(&id(1), 700, 1000, 1000),
            "reading on is one pass"
        );
        assert!(cache.admit(&id(1), 0, 10, 1000), "a second pass admits");
        assert!(!cache.admit(&id(7), 500, 600, 1000));
        assert!(
            cache.admit(&id(7), 500, 600, 1000),
            "so does the same range"
        );
        assert!(
            !cache.admit(&id(9), 0, 1, 1001),
            "over a quarter of the capacity"
        );
        assert!(!cache.admit(&id(9), 0, 1, 1001));
        // A short probe, then the real read from the same start: one pass.
        assert!(!cache.admit(&id(8), 0, 2, 1000));
        assert!(!cache.admit(&id(8), 0, 1000, 1000));
        assert!(cache.admit(&id(8), 0, 1000, 1000));
        assert!(!cache.admit(&id(11), 40, 50, 1000));
        assert!(cache.admit(&id(11), 40, 50, 1000), "a hot short range");
        // A chunk whose whole read failed is not admitted again.
        assert!(!cache.admit(&id(10), 0, 100, 1000));
        cache.refuse(&id(10));
        assert!(!cache.admit(&id(10), 0, 100, 1000));
        assert!(!cache.admit(&id(10), 500, 600, 1000));
        for n in 1..=4 {
            cache.insert(id(n), payload(n), None);
        }
        assert_eq!(cache.get(&id(2), 10, 20).unwrap(), &[2u8; 10][..]);
        // Full: 5 evicts 1 (2 was referenced and gets a second chance).
        cache.insert(id(5), payload(5), None);
        assert!(cache.get(&id(1), 0, 1).is_none());
        assert!(cache.get(&id(2), 0, 1).is_some());
        cache.insert(id(6), payload(6), None);
        assert!(cache.get(&id(3), 0, 1).is_none());
        let s = cache.stats();
        assert_eq!(s.cached_bytes, 4000);
        assert_eq!((s.hits, s.misses, s.admitted), (2, 2, 6));
        cache.remove(&id(2));
        assert!(cache.get(&id(2), 0, 1).is_none());
        assert_eq!(cache.stats().cached_bytes, 3000);
        // A second insert of a kept chunk keeps the first.
        cache.insert(id(4), payload(0), None);
        assert_eq!(cache.get(&id(4), 0, 1).unwrap()[0], 4);
        // A range past the payload is not answered from the cache.
        assert!(cache.get(&id(4), 0, 1001).is_none());
    }

    #[test]
    fn forgetting_a_segment_drops_only_its_locked_slices() {
        let cache = ChunkCache::new(1 << 20);
        cache.insert(id(1), Bytes::from(vec![1u8; 100]), Some((7, 4096)));
        cache.insert(id(2), Bytes::from(vec![2u8; 100]), Some((8, 4096)));
        cache.insert(id(3), Bytes::from(vec![3u8; 100]), None);
        assert_eq!(cache.stats().locked_bytes, 8192);
        cache.forget_segment(7);
        assert!(cache.get(&id(1), 0, 1).is_none());
        assert!(cache.get(&id(2), 0, 1).is_some());
        assert!(cache.get(&id(3), 0, 1).is_some());
        let s = cache.stats();
        assert_eq!((s.cached_bytes, s.locked_bytes), (200, 4096));
        assert_eq!(cache.lock().clock.len(), 2);
    }

    #[test]
    fn remembered_reads_are_bounded() {
        let cache = ChunkCache::new(1 << 30);
        for i in 0..(SEEN_MAX as u32 + 10) {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            assert!(!cache.admit(&ChunkId(b), 0, 10, 100));
        }
        assert!(cache.lock().seen.len() <= SEEN_MAX);
        // The oldest was forgotten: its second read does not admit.
        assert!(!cache.admit(&ChunkId([0; 32]), 0, 10, 100));
    }
}
