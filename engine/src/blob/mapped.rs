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
//! **Invariants:**
//! - An address range is in the registry exactly while its [`SegmentMap`]
//!   is alive: it is added when the map is made and removed in `Drop`,
//!   before the memory is unmapped, so an address the registry answers for
//!   can never belong to anything but that map.
//! - A map shows its file's bytes at the same offsets (it maps from offset
//!   0), and segment bytes below the logical length never change while the
//!   store is open, so the file bytes at the offset [`mapped_source`]
//!   returns are the bytes of the slice, the ones that were verified.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock, Weak};

/// A read-only map of one segment file, with the open file it maps.
pub(crate) struct SegmentMap {
    map: memmap2::Mmap,
    file: File,
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
        let map = Arc::new(SegmentMap { map, file });
        registry()
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(base, (len, Arc::downgrade(&map)));
        Ok(map)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
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
}
