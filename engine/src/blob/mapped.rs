//! Read-only memory maps of segment files, and a process-wide registry that
//! says which file bytes a mapped slice shows.
//!
//! Mapped reads ([`super::BlobStore::open_dir`]) verify the page-cache bytes
//! in place and hand them out as `Bytes` without a copy. The registry lets a
//! consumer go one step further: given a slice of such `Bytes`,
//! [`mapped_source`] names the segment file and offset it shows, so an
//! origin can pass the bytes to the kernel with `sendfile(2)` instead of
//! copying them into a socket (the copy the kernel would otherwise make is
//! most of what serving a large range costs).
//!
//! A read from a map whose page is not in memory reads the disk; if that
//! fails the kernel would raise SIGBUS and kill the process. So every mapped
//! read first populates its pages with `MADV_POPULATE_READ` ([`populate`]),
//! which reports such a failure as an error instead. Where the kernel lacks
//! it (before Linux 5.14), segments are not mapped at all and reads use
//! `pread`.
//!
//! A range of a map can also be *locked* ([`SegmentMap::lock`]): its pages
//! are pinned in memory (`mlock`) while the [`Lock`] lives. Bytes checked
//! after they were locked stay as checked, since the kernel can no longer
//! drop a page and read it again from disk; the chunk cache checks a locked
//! chunk record, then *publishes* the lock ([`Lock::publish`]) and keeps
//! `Bytes` that own it. A consumer holding some slice of a map (the origin,
//! before it sends by file with `sendfile`) asks [`MappedSource::pin`] for
//! `Bytes` of the same bytes that own a published lock over them, or else
//! copies: what keeps pages locked is always a lock the `Bytes` holds,
//! never the luck that someone else's lock still covers them.
//!
//! **Invariants:**
//! - A page of a map is locked exactly while at least one live [`Lock`]
//!   covers it (pages shared by two locks are counted).
//! - A range is published only after the bytes under its lock were checked,
//!   and unpublished when that lock drops.
//! - An address range is in the registry exactly while its [`SegmentMap`]
//!   is alive: it is added when the map is made and removed in `Drop`,
//!   before the memory is unmapped, so an address the registry answers for
//!   can never belong to anything but that map.
//! - A map shows its file's bytes at the same offsets (it maps from offset
//!   0), and segment bytes below the logical length never change while the
//!   store is open, so the file bytes at the offset [`mapped_source`]
//!   returns are the bytes of the slice, the ones that were verified.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};

/// A read-only map of one segment file, with the open file it maps.
pub(crate) struct SegmentMap {
    map: memmap2::Mmap,
    file: File,
    pins: Mutex<Pins>,
}

/// What of a map is locked in memory.
#[derive(Debug, Default)]
struct Pins {
    /// Locked pages, by index from the map's start, and how many live
    /// locks cover each.
    pages: HashMap<usize, u32>,
    /// Published locks: start -> (end, lock id, the lock). Locks are of
    /// whole chunk records, which never overlap; a second lock of the same
    /// record (two readers raced) is not published: [`Lock::publish`] hands
    /// out the published one instead and drops it.
    published: BTreeMap<usize, (usize, u64, Weak<Lock>)>,
}

/// Why [`SegmentMap::lock`] failed.
#[derive(Debug)]
pub(crate) enum LockError {
    /// A page could not be read from disk.
    Read(std::io::Error),
    /// The kernel would not lock the pages.
    Refused(std::io::Error),
}

/// Pages of a range of a segment map, locked in memory until this drops.
#[derive(Debug)]
pub(crate) struct Lock {
    map: Arc<SegmentMap>,
    range: Range<usize>,
    /// Tells this lock's entry in `Pins::published` from another's.
    id: u64,
}

impl Lock {
    /// The locked bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map.map[self.range.clone()]
    }

    /// Declares the locked bytes checked: from now on [`MappedSource::pin`]
    /// may hand out `Bytes` of them that own this lock. Returns the lock
    /// as shared owner of such `Bytes` ([`locked_bytes`]). When a live lock
    /// of the same range is published already (another reader locked the
    /// same record), that one is returned and this one is dropped, so all
    /// owners share the one published lock.
    pub(crate) fn publish(self) -> Arc<Lock> {
        let map = self.map.clone();
        let mut pins = map.pins();
        let existing = pins
            .published
            .get(&self.range.start)
            .filter(|(end, _, _)| *end == self.range.end)
            .and_then(|(_, _, w)| w.upgrade());
        if let Some(existing) = existing {
            // `Lock::drop` takes the pins mutex: release it first.
            drop(pins);
            drop(self);
            return existing;
        }
        let lock = Arc::new(self);
        pins.published.insert(
            lock.range.start,
            (lock.range.end, lock.id, Arc::downgrade(&lock)),
        );
        drop(pins);
        lock
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.map.unlock(&self.range, self.id);
    }
}

/// `range` (map offsets, inside the lock's range) as `Bytes` that keep the
/// lock alive.
pub(crate) fn locked_bytes(lock: Arc<Lock>, range: Range<usize>) -> bytes::Bytes {
    assert!(
        lock.range.start <= range.start && range.end <= lock.range.end,
        "{range:?} outside the lock of {:?}",
        lock.range
    );
    bytes::Bytes::from_owner(LockedBytes { lock, range })
}

/// The owner of `Bytes` made by [`locked_bytes`].
struct LockedBytes {
    lock: Arc<Lock>,
    range: Range<usize>,
}

impl AsRef<[u8]> for LockedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.lock.map.map[self.range.clone()]
    }
}

impl std::fmt::Debug for SegmentMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentMap")
            .field("len", &self.map.len())
            .finish_non_exhaustive()
    }
}

/// Live maps by start address: (length, the map).
type Registry = RwLock<BTreeMap<usize, (usize, Weak<SegmentMap>)>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(BTreeMap::new()))
}

/// Makes the pages under `bytes` (a slice of a live map) present, reading
/// them from disk if needed, so touching them cannot raise SIGBUS: a failed
/// disk read is returned as the error.
pub(crate) fn populate(bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let page = page_bytes();
    let start = bytes.as_ptr() as usize / page * page;
    let end = bytes.as_ptr() as usize + bytes.len();
    // SAFETY: the range lies in a live read-only mapping (the caller holds
    // the map); MADV_POPULATE_READ only faults pages in, it changes nothing.
    let rc = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_READ,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The system's page size.
pub fn page_bytes() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system; no memory passed.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

impl SegmentMap {
    /// Maps the first `len` bytes of the file at `path` read-only and
    /// registers the map. Fails with `Unsupported` where the kernel cannot
    /// populate pages without the risk of SIGBUS (see the module doc).
    pub(crate) fn open(path: &Path, len: usize) -> std::io::Result<Arc<SegmentMap>> {
        let file = File::open(path)?;
        // SAFETY: the map is only ever read below the segment's logical
        // length, and those bytes are never modified or truncated while the
        // store is open (segments are append-only; truncations cut only
        // bytes past the logical length, and torn tails are cut at open,
        // before any map exists). Removing the file leaves the map valid.
        // Mapping past the end of the file is allowed; those pages are
        // never touched. Another process writing the store's files breaks
        // this, as it breaks every other guarantee of the store.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file)? };
        // Probe MADV_POPULATE_READ on the first page (the segment header,
        // always present in the file).
        if let Err(e) = populate(&map[..1]) {
            return Err(if e.raw_os_error() == Some(libc::EINVAL) {
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the kernel has no MADV_POPULATE_READ (Linux 5.14+)",
                )
            } else {
                e
            });
        }
        let base = map.as_ptr() as usize;
        let map = Arc::new(SegmentMap {
            map,
            file,
            pins: Mutex::new(Pins::default()),
        });
        registry()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(base, (len, Arc::downgrade(&map)));
        Ok(map)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn pins(&self) -> MutexGuard<'_, Pins> {
        // The counts are updated together under the lock and no code that
        // can panic runs while it is held, so a poisoned lock is taken over.
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks bytes `range` of the map in memory, reading from disk any page
    /// not present; they stay locked while the returned lock lives. Fails,
    /// locking nothing, when a page cannot be read or when the kernel
    /// refuses the lock (usually: the process reached `RLIMIT_MEMLOCK`).
    pub(crate) fn lock(self: &Arc<Self>, range: Range<usize>) -> Result<Lock, LockError> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        assert!(
            range.start < range.end && range.end <= self.map.len(),
            "lock of {range:?} in a map of {} bytes",
            self.map.len()
        );
        // Pages first, so a failed disk read is an error here and never a
        // SIGBUS in mlock's own page faults.
        populate(&self.map[range.clone()]).map_err(LockError::Read)?;
        let page = page_bytes();
        let (first, last) = (range.start / page, range.end.div_ceil(page));
        let base = self.map.as_ptr() as usize;
        let mut pins = self.pins();
        // SAFETY: the pages lie in this live read-only mapping; mlock only
        // pins them (pages already locked stay locked).
        let rc = unsafe {
            libc::mlock(
                (base + first * page) as *const libc::c_void,
                (last - first) * page,
            )
        };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            // A refused mlock may have locked part of the range: undo that
            // for the pages no live lock holds.
            for p in first..last {
                if !pins.pages.contains_key(&p) {
                    // SAFETY: as above.
                    unsafe { libc::munlock((base + p * page) as *const libc::c_void, page) };
                }
            }
            return Err(LockError::Refused(error));
        }
        for p in first..last {
            *pins.pages.entry(p).or_insert(0) += 1;
        }
        drop(pins);
        Ok(Lock {
            map: self.clone(),
            range,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Undoes one [`SegmentMap::lock`] of `range` (lock `id`): unpublishes
    /// it, uncounts its pages and unlocks those no other live lock covers.
    fn unlock(&self, range: &Range<usize>, id: u64) {
        let page = page_bytes();
        let base = self.map.as_ptr() as usize;
        let mut pins = self.pins();
        if pins
            .published
            .get(&range.start)
            .is_some_and(|(_, owner, _)| *owner == id)
        {
            pins.published.remove(&range.start);
        }
        // Pages no other lock covers, unlocked in runs (one munlock per run
        // of consecutive pages, not per page).
        let mut run: Option<(usize, usize)> = None;
        let mut failed = false;
        let mut unlock_run = |run: (usize, usize)| {
            // SAFETY: the pages lie in this live mapping (the lock being
            // dropped holds the map); munlock changes no contents.
            let rc = unsafe {
                libc::munlock(
                    (base + run.0 * page) as *const libc::c_void,
                    (run.1 - run.0) * page,
                )
            };
            failed |= rc != 0;
        };
        for p in range.start / page..range.end.div_ceil(page) {
            let last = match pins.pages.get_mut(&p) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => true,
                None => false,
            };
            if last {
                pins.pages.remove(&p);
                run = match run {
                    Some((a, b)) if b == p => Some((a, p + 1)),
                    Some(r) => {
                        unlock_run(r);
                        Some((p, p + 1))
                    }
                    None => Some((p, p + 1)),
                };
            }
        }
        if let Some(r) = run {
            unlock_run(r);
        }
        drop(pins);
        if failed {
            // The pages stay locked (counted against RLIMIT_MEMLOCK) until
            // the map is unmapped; nothing reads them unchecked, and the
            // kernel refusing (ENOMEM: too many map areas) is worth knowing.
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "munlock of blob pages failed; they stay locked until their segment is unmapped"
            );
        }
    }

    /// The live published lock whose range holds bytes `range`, if any.
    fn published_over(&self, range: &Range<usize>) -> Option<Arc<Lock>> {
        let pins = self.pins();
        let lock = pins
            .published
            .range(..=range.start)
            .next_back()
            .filter(|(_, (end, _, _))| range.end <= *end)
            .and_then(|(_, (_, _, w))| w.upgrade());
        // Released after the guard: dropping the last `Arc` (if the lock
        // died meanwhile) takes the same mutex in `Lock::drop`.
        drop(pins);
        lock
    }
}

impl Drop for SegmentMap {
    fn drop(&mut self) {
        // Runs before the `Mmap` field unmaps, so no other allocation can
        // occupy these addresses while the registry still names them.
        let base = self.map.as_ptr() as usize;
        registry()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&base);
    }
}

/// Where the bytes of a mapped slice live on disk.
#[derive(Debug)]
pub struct MappedSource {
    map: Arc<SegmentMap>,
    offset: u64,
    len: usize,
}

impl MappedSource {
    /// The segment file, open for reading.
    pub fn file(&self) -> &File {
        &self.map.file
    }

    /// Offset in [`MappedSource::file`] of the slice's first byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// `Bytes` of the slice's bytes that own a published lock over them
    /// (see the module doc): they were checked once locked and stay so
    /// while the `Bytes` lives, so the file bytes at
    /// [`MappedSource::offset`] may be sent by file. `None` when no such
    /// lock covers the slice (a chunk's first read): its pages may be
    /// dropped and read again from disk unchecked, so copy it instead.
    pub fn pin(&self) -> Option<bytes::Bytes> {
        let start = self.offset as usize;
        let range = start..start + self.len;
        let lock = self.map.published_over(&range)?;
        Some(locked_bytes(lock, range))
    }

    /// Whether a published lock covers the slice now. Only as good as the
    /// lock's owners keep it: a consumer that needs the pages to stay
    /// checked holds [`MappedSource::pin`]'s `Bytes` instead.
    pub fn is_locked(&self) -> bool {
        let start = self.offset as usize;
        self.map
            .published_over(&(start..start + self.len))
            .is_some()
    }

    /// Whether `other` lies in the same map (and so the same file).
    pub fn same_map(&self, other: &MappedSource) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }
}

/// The segment file and offset that `bytes` shows, when `bytes` lies wholly
/// inside a live segment map (a slice of `Bytes` from a mapped read);
/// `None` for any other memory.
pub fn mapped_source(bytes: &[u8]) -> Option<MappedSource> {
    let start = bytes.as_ptr() as usize;
    let end = start.checked_add(bytes.len())?;
    let maps = registry().read().unwrap_or_else(|p| p.into_inner());
    let (&base, (len, weak)) = maps.range(..=start).next_back()?;
    if end > base + len {
        return None;
    }
    let map = weak.upgrade()?;
    Some(MappedSource {
        map,
        offset: (start - base) as u64,
        len: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn slices_of_a_map_name_their_file_and_offset_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut f = File::create(&path).unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        f.write_all(&data).unwrap();
        drop(f);
        let map = SegmentMap::open(&path, 1 << 20).unwrap();
        let slice = &map.bytes()[1234..5678];
        let src = mapped_source(slice).unwrap();
        assert_eq!(src.offset(), 1234);
        let mut back = vec![0u8; slice.len()];
        std::os::unix::fs::FileExt::read_exact_at(src.file(), &mut back, src.offset()).unwrap();
        assert_eq!(back, slice);
        // Memory that is not a map is not claimed.
        assert!(mapped_source(&data[10..20]).is_none());
        let ptr = map.bytes().as_ptr() as usize;
        drop(src);
        drop(map);
        // After the drop the range is gone from the registry.
        let maps = registry().read().unwrap();
        assert!(!maps.contains_key(&ptr));
    }

    #[test]
    fn populating_a_page_the_file_lacks_is_an_error_not_sigbus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, vec![1u8; 10_000]).unwrap();
        let map = SegmentMap::open(&path, 1 << 20).unwrap();
        populate(&map.bytes()[..10_000]).unwrap();
        // Touching this page would raise SIGBUS (it lies past the end of
        // the file); populating it reports an error instead.
        let past = 3 * page_bytes();
        assert!(populate(&map.bytes()[past..past + 100]).is_err());
    }

    #[test]
    fn pins_own_published_locks_and_pages_unlock_with_the_last_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let map = SegmentMap::open(&path, 1 << 20).unwrap();
        let page = page_bytes();
        // Two ranges sharing the page that holds byte 2 * page + 10.
        let a = match map.lock(100..2 * page + 10) {
            Ok(a) => a,
            Err(LockError::Read(e)) => panic!("{e}"),
            Err(LockError::Refused(e)) => {
                println!("note: mlock refused here ({e}); nothing to check");
                return;
            }
        };
        let b = map.lock(2 * page + 10..5 * page).unwrap();
        let source = |r: Range<usize>| mapped_source(&map.bytes()[r]).unwrap();
        // A second lock of a published range: publishing it hands out the
        // published one and drops it (its page counts with it).
        {
            let first = map.lock(7 * page..8 * page).unwrap().publish();
            let again = map.lock(7 * page..8 * page).unwrap();
            assert_eq!(map.pins().pages.get(&7), Some(&2));
            let again = again.publish();
            assert!(Arc::ptr_eq(&first, &again));
            assert_eq!(map.pins().pages.get(&7), Some(&1));
        }
        assert!(!map.pins().pages.contains_key(&7));
        assert!(map.pins().published.is_empty());
        // Locked but not yet published (not checked): nothing pins.
        assert!(source(200..300).pin().is_none());
        assert!(!source(200..300).is_locked());
        let a = a.publish();
        let b = b.publish();
        assert!(source(200..300).is_locked());
        assert!(source(2 * page + 10..5 * page).is_locked());
        assert!(!source(50..300).is_locked(), "starts before a locked range");
        assert!(!source(200..2 * page + 20).is_locked(), "spans two ranges");
        assert!(!source(6 * page..6 * page + 1).is_locked());
        assert_eq!(map.pins().pages.get(&2), Some(&2), "the shared page");
        // A pin is Bytes of the same memory that own the lock.
        let pinned = source(200..300).pin().unwrap();
        assert_eq!(pinned.as_ptr(), map.bytes()[200..].as_ptr());
        assert_eq!(pinned.len(), 100);
        let whole = locked_bytes(a, 100..2 * page + 10);
        drop(whole);
        // `a` lives on in `pinned` alone.
        assert!(source(200..300).is_locked());
        let part = pinned.slice(10..20);
        drop(pinned);
        assert!(source(200..300).is_locked());
        drop(part);
        assert!(!source(200..300).is_locked());
        assert!(source(200..300).pin().is_none());
        assert_eq!(map.pins().pages.get(&2), Some(&1), "still held by b");
        assert!(!map.pins().pages.contains_key(&0));
        drop(b);
        assert!(map.pins().pages.is_empty());
        assert!(map.pins().published.is_empty());
    }
}
