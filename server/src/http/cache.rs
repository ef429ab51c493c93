//! A bounded cache of hot blob windows, so the small and mid-sized ranges
//! that players and CDNs ask for again and again are served from memory as
//! `Bytes` slices: no read syscall, no copy, no checksum pass per request.
//!
//! A blob is cut into aligned windows of [`WINDOW_BYTES`]; a window is read
//! whole through [`BlobStore::read`] (which verifies its checksums) the
//! first time it is needed and kept until evicted, first in first out, once
//! the cache holds more than its capacity.
//!
//! From a mapped store a window is a slice of a segment map: the verified
//! bytes are the page cache's own pages, which the connection can hand to
//! `sendfile` without a copy ([`super::sendfile`]). Such a window is cached
//! only while its pages are locked in memory (`mlock`): an unlocked page
//! could be dropped and read again from disk, unverified. Pages shared by
//! two windows are counted, so evicting one never unlocks the other's. The
//! pages are checked again once locked (a page dropped between the first
//! check and the lock would have been read again unchecked). If the process
//! may not lock more memory (`RLIMIT_MEMLOCK`), older windows are evicted to
//! make room; with none left, the window is answered as a heap copy and not
//! cached, so no unlocked map page ever reaches a connection.
//!
//! **Invariants:** blobs are immutable and named by their content, so a
//! cached window can never be stale: the same id means the same bytes in any
//! store, and the cache is shared by the whole process. It never decides
//! whether a blob exists: callers `stat` the blob in their store first, so a
//! deleted blob is answered 404 even while its windows are still cached. The
//! cached bytes are bounded by the capacity plus one window. Every page of
//! a cached mapped window is locked while the window is cached.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use spindle_engine::blob::mapped::{mapped_source, page_bytes};
use spindle_engine::blob::{BlobId, BlobStore, Error};

/// Size of a cached window (the last window of a blob may be shorter).
pub const WINDOW_BYTES: u64 = 64 * 1024;

/// Bytes the process-wide cache keeps.
pub const CAPACITY_BYTES: u64 = 64 << 20;

/// The process-wide cache used by blob serving.
pub fn global() -> &'static WindowCache {
    static CACHE: OnceLock<WindowCache> = OnceLock::new();
    CACHE.get_or_init(|| WindowCache::new(CAPACITY_BYTES))
}

/// Hot windows of blobs, keyed by (blob id, window index).
#[derive(Debug)]
pub struct WindowCache {
    inner: Mutex<Inner>,
    capacity_bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    windows: HashMap<(BlobId, u64), Bytes>,
    /// Insertion order, for eviction; holds each key of `windows` once.
    order: VecDeque<(BlobId, u64)>,
    cached_bytes: u64,
    /// Locked pages (by address) and how many cached windows use each.
    pinned_pages: HashMap<usize, u32>,
    /// Set once locking failed, so the warning is said once.
    pin_refused: bool,
}

/// The pages `bytes` touches, as (first page address, page count).
fn pages_of(bytes: &[u8]) -> (usize, usize) {
    let page = page_bytes();
    let start = bytes.as_ptr() as usize / page * page;
    let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
    (start, (end - start) / page)
}

impl Inner {
    /// Locks the pages of a mapped window and counts them; false (nothing
    /// changed) if the kernel refuses.
    fn pin(&mut self, bytes: &[u8]) -> bool {
        let (start, count) = pages_of(bytes);
        // mlock is idempotent on pages already locked, so one call covers
        // the whole run.
        // SAFETY: the range lies in a live read-only mapping (the window's
        // `Bytes` keeps its map alive); mlock only pins it.
        let rc = unsafe { libc::mlock(start as *const libc::c_void, count * page_bytes()) };
        if rc != 0 {
            // A refused mlock may still have locked part of the range: undo
            // that for the pages no cached window holds.
            for i in 0..count {
                let addr = start + i * page_bytes();
                if !self.pinned_pages.contains_key(&addr) {
                    // SAFETY: as above.
                    unsafe { libc::munlock(addr as *const libc::c_void, page_bytes()) };
                }
            }
            if !self.pin_refused {
                self.pin_refused = true;
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "cannot lock blob pages in memory (RLIMIT_MEMLOCK?); \
                     mapped ranges are verified on every request instead of cached"
                );
            }
            return false;
        }
        for i in 0..count {
            *self
                .pinned_pages
                .entry(start + i * page_bytes())
                .or_insert(0) += 1;
        }
        true
    }

    /// Uncounts the pages of an evicted mapped window, unlocking those no
    /// other cached window uses. Must run while the window's `Bytes` (and so
    /// its map) is still alive.
    fn unpin(&mut self, bytes: &[u8]) {
        let (start, count) = pages_of(bytes);
        let page = page_bytes();
        for i in 0..count {
            let addr = start + i * page;
            let last = match self.pinned_pages.get_mut(&addr) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => true,
                None => false,
            };
            if last {
                self.pinned_pages.remove(&addr);
                // SAFETY: as in `pin`; the map is alive (see above).
                unsafe { libc::munlock(addr as *const libc::c_void, page) };
            }
        }
    }

    fn evict_one(&mut self) -> bool {
        let Some(old) = self.order.pop_front() else {
            return false;
        };
        if let Some(w) = self.windows.remove(&old) {
            self.cached_bytes -= w.len() as u64;
            if mapped_source(&w).is_some() {
                self.unpin(&w);
            }
        }
        true
    }
}

impl WindowCache {
    /// An empty cache keeping at most about `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity_bytes,
        }
    }

    /// Bytes currently cached.
    pub fn cached_bytes(&self) -> u64 {
        self.lock().cached_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent
        // in a way that matters (at worst the byte count is off), so a
        // poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes `range` of blob `id` (whose length is `length_bytes`), as
    /// one slice per window it touches, each pushed onto `out` in order.
    /// `range` must be non-empty and within the blob.
    pub fn read(
        &self,
        store: &BlobStore,
        id: &BlobId,
        range: Range<u64>,
        length_bytes: u64,
        out: &mut Vec<Bytes>,
    ) -> Result<(), Error> {
        assert!(
            range.start < range.end && range.end <= length_bytes,
            "range {range:?} of a {length_bytes}-byte blob"
        );
        let first = range.start / WINDOW_BYTES;
        let last = (range.end - 1) / WINDOW_BYTES;
        for index in first..=last {
            let window_start = index * WINDOW_BYTES;
            let window = self.window(store, id, index, length_bytes)?;
            let from = range.start.max(window_start) - window_start;
            let to = range.end.min(window_start + window.len() as u64) - window_start;
            out.push(window.slice(from as usize..to as usize));
        }
        Ok(())
    }

    fn window(
        &self,
        store: &BlobStore,
        id: &BlobId,
        index: u64,
        length_bytes: u64,
    ) -> Result<Bytes, Error> {
        let key = (*id, index);
        if let Some(w) = self.lock().windows.get(&key) {
            return Ok(w.clone());
        }
        // Read outside the lock; two readers of the same cold window may
        // both read it, and the second insert is dropped.
        let start = index * WINDOW_BYTES;
        let len = WINDOW_BYTES.min(length_bytes - start);
        let data = read_exact(store, id, start..start + len)?;
        if data.len() as u64 != len {
            return Err(Error::InvalidInput(format!(
                "read of {len} bytes at {start} returned {}",
                data.len()
            )));
        }
        if mapped_source(&data).is_none() {
            self.insert(key, data.clone());
            return Ok(data);
        }
        // A mapped window is cached only with its pages locked. When the
        // kernel refuses (RLIMIT_MEMLOCK), older windows make room; with none
        // left the bytes go out as a heap copy, so nothing later touches
        // unlocked map pages (which could be re-read from disk unverified).
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            if let Some(w) = inner.windows.get(&key) {
                return Ok(w.clone());
            }
            while !inner.pin(&data) {
                if !inner.evict_one() {
                    return Ok(Bytes::copy_from_slice(&data));
                }
            }
        }
        // The pages were checked before they were locked; a page reclaimed
        // in between would have been read again unchecked. Now that they
        // cannot go, check them once more (the engine verifies every read).
        let checked = match read_exact(store, id, start..start + len) {
            Ok(b) if b.as_ptr() == data.as_ptr() && b.len() == data.len() => b,
            other => {
                self.lock().unpin(&data);
                other?;
                return Ok(Bytes::copy_from_slice(&data));
            }
        };
        let mut guard = self.lock();
        if let Some(w) = guard.windows.get(&key) {
            // Another reader cached it meanwhile: keep theirs.
            let w = w.clone();
            guard.unpin(&data);
            return Ok(w);
        }
        drop(guard);
        self.insert(key, checked.clone());
        Ok(checked)
    }

    /// Caches `data` under `key` (mapped windows already pinned) and evicts
    /// past the capacity; a key already present keeps its window.
    fn insert(&self, key: (BlobId, u64), data: Bytes) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.windows.contains_key(&key) {
            if mapped_source(&data).is_some() {
                inner.unpin(&data);
            }
            return;
        }
        inner.cached_bytes += data.len() as u64;
        inner.windows.insert(key, data);
        inner.order.push_back(key);
        while inner.cached_bytes > self.capacity_bytes && inner.evict_one() {}
    }
}

/// `range` of a blob as one `Bytes`: the engine's own buffer when the range
/// lies in one chunk (the usual case: chunks are multiples of windows),
/// else the pieces copied together (once, on a miss).
fn read_exact(store: &BlobStore, id: &BlobId, range: Range<u64>) -> Result<Bytes, Error> {
    let mut reader = store.read_range(id, range.clone())?;
    let first = match reader.next() {
        Some(piece) => piece?,
        None => return Ok(Bytes::new()),
    };
    if reader.remaining_bytes() == 0 {
        return Ok(first);
    }
    let mut out = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
    out.extend_from_slice(&first);
    for piece in reader {
        out.extend_from_slice(&piece?);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_engine::blob::BlobConfig;

    fn store(dir: &std::path::Path) -> BlobStore {
        let storage =
            spindle_engine::io::open_storage(dir, spindle_engine::io::BackendChoice::Portable)
                .unwrap();
        let config = BlobConfig {
            // Smaller than a window, so windows span chunks.
            chunk_size_bytes: 16 * 1000,
            ..BlobConfig::default()
        };
        BlobStore::open(storage, config).unwrap()
    }

    #[test]
    fn reads_match_the_store_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let len = 5 * WINDOW_BYTES as usize + 777;
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let id = store.put(&data).unwrap().id;
        let cache = WindowCache::new(2 * WINDOW_BYTES);
        let w = WINDOW_BYTES;
        let ranges = [
            0..1,
            0..w,
            w - 1..w + 1,
            10..3 * w + 5,
            5 * w..len as u64,
            len as u64 - 1..len as u64,
            0..len as u64,
            10..20,
        ];
        for r in ranges {
            let mut pieces = Vec::new();
            cache
                .read(&store, &id, r.clone(), len as u64, &mut pieces)
                .unwrap();
            let got: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(got, &data[r.start as usize..r.end as usize], "{r:?}");
            assert!(pieces.iter().all(|p| !p.is_empty()), "{r:?}");
            assert!(cache.cached_bytes() <= 2 * WINDOW_BYTES, "{r:?}");
        }
        assert!(cache.cached_bytes() > 0);
    }

    #[test]
    fn mapped_windows_are_cached_only_with_their_pages_locked() {
        let dir = tempfile::tempdir().unwrap();
        let config = BlobConfig {
            chunk_size_bytes: 4 * WINDOW_BYTES as u32,
            ..BlobConfig::default()
        };
        let store = BlobStore::open_dir(
            dir.path(),
            spindle_engine::io::BackendChoice::Portable,
            config,
        )
        .unwrap();
        let len = 10 * WINDOW_BYTES as usize + 99;
        let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
        let id = store.put(&data).unwrap().id;
        let cache = WindowCache::new(3 * WINDOW_BYTES);
        let check = |cache: &WindowCache| {
            let inner = cache.lock();
            let mut want: HashMap<usize, u32> = HashMap::new();
            for w in inner.windows.values() {
                assert!(
                    mapped_source(w).is_some(),
                    "a mapped store gives map slices"
                );
                let (start, count) = pages_of(w);
                for i in 0..count {
                    *want.entry(start + i * page_bytes()).or_insert(0) += 1;
                }
            }
            assert_eq!(
                inner.pinned_pages, want,
                "every cached page locked, counted once per window"
            );
        };
        for (i, start) in [0u64, 1, 2, 3, 5, 9, 1, 0, 10].into_iter().enumerate() {
            let r =
                start * WINDOW_BYTES + 7..(start * WINDOW_BYTES + 7 + WINDOW_BYTES).min(len as u64);
            let mut pieces = Vec::new();
            cache
                .read(&store, &id, r.clone(), len as u64, &mut pieces)
                .unwrap();
            let got: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(got, &data[r.start as usize..r.end as usize], "read {i}");
            check(&cache);
        }
        let inner = cache.lock();
        if inner.pin_refused {
            // RLIMIT_MEMLOCK is small here: windows past it were not cached
            // (and `check` saw every cached one locked).
            println!("note: mlock refused after {} windows", inner.windows.len());
        } else {
            assert!(!inner.windows.is_empty());
        }
    }
}
