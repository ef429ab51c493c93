//! The blob store proper: the writer, reads, deletes and group commit.
//!
//! Concurrency: one `RwLock<State>` guards the index and the head segment's
//! append offset. Appends happen under the write lock, so the log order is
//! the order in which state changes are applied, and a record's bytes are
//! completely written before any later record. Durability is separate: a
//! caller appends, releases the lock, then waits in [`Inner::wait_durable`]
//! until the synced position passes its record (group commit: the first
//! waiter becomes the leader and syncs the head once for everyone who
//! appended before it started; the others wait on a condvar).
//!
//! Invariants:
//! - Every segment except the head is completely synced (the head is synced
//!   before it is sealed), so the synced position is one `(segment, offset)`.
//! - A failed append leaves the head's logical end where it was (the next
//!   append overwrites the partial bytes), so garbage can only ever follow
//!   the last record, where recovery treats it as a torn tail.
//! - Chunks written or deduplicated by an unfinished writer are pinned and
//!   never dropped by compaction; dropping the writer unpins them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};

use crate::blob::index::{new_blob_map, new_chunk_map, BlobEntry, ChunkEntry, IdBuild, IdMap};
use crate::blob::record::{
    self, decode_header, encode_chunk, table_entry, verify_header_crc, BlobState, RecordKind,
    SEGMENT_HEADER_LEN,
};
use crate::blob::{
    segment_file_name, BlobConfig, BlobId, BlobInfo, BlobRef, BlobStats, ChunkId, Error,
    SegmentStats,
};
use crate::io::{OpenMode, Storage, StorageFile};

/// Smallest and largest accepted chunk sizes.
pub const CHUNK_SIZE_BYTES_MIN: u32 = 16;
pub const CHUNK_SIZE_BYTES_MAX: u32 = 64 << 20;

/// A position in the log: records are ordered by segment id, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// One open segment file.
pub(crate) struct Segment {
    pub file: Arc<dyn StorageFile>,
    pub name: Arc<str>,
    /// Logical end: the end of the last complete record.
    pub len: u64,
    pub live_bytes: u64,
    /// A read-only map of the file (see [`BlobStore::open_dir`]), covering
    /// `segment_size_bytes_max` bytes so it stays valid as the head grows.
    pub map: Option<Arc<super::mapped::SegmentMap>>,
}

/// Everything the write lock guards.
pub(crate) struct State {
    pub chunks: IdMap<ChunkId, ChunkEntry>,
    pub blobs: IdMap<BlobId, BlobEntry>,
    /// Pins held by unfinished writers, per chunk.
    pub pins: IdMap<ChunkId, u32>,
    pub segments: BTreeMap<u64, Segment>,
    /// The segment appended to, once one exists.
    pub head: Option<u64>,
    pub next_segment_id: u64,
    pub appended_since_checkpoint: u64,
    /// Appended since the background flusher was last woken.
    pub appended_since_flush_request: u64,
    /// Size of the last checkpoint written; automatic checkpoints wait for
    /// at least four times this much new log, bounding their write
    /// amplification to 25 % however large the index grows.
    pub last_checkpoint_bytes: u64,
    /// Whether refcount changes update segments' live bytes; off during
    /// recovery, which recomputes them once at the end.
    pub accounting: bool,
}

impl State {
    pub(crate) fn empty() -> State {
        State {
            chunks: new_chunk_map(),
            blobs: new_blob_map(),
            pins: HashMap::with_hasher(IdBuild::default()),
            segments: BTreeMap::new(),
            head: None,
            next_segment_id: 1,
            appended_since_checkpoint: 0,
            appended_since_flush_request: 0,
            last_checkpoint_bytes: 0,
            accounting: true,
        }
    }

    /// The end of the log: where the next record would go, or the end of
    /// the last segment.
    pub(crate) fn end(&self) -> Pos {
        match self.segments.iter().next_back() {
            Some((id, seg)) => Pos {
                segment: *id,
                offset: seg.len,
            },
            None => Pos::default(),
        }
    }

    fn add_live(&mut self, segment: u64, bytes: u64) {
        if !self.accounting {
            return;
        }
        if let Some(seg) = self.segments.get_mut(&segment) {
            seg.live_bytes += bytes;
        }
    }

    fn sub_live(&mut self, segment: u64, bytes: u64) {
        if !self.accounting {
            return;
        }
        if let Some(seg) = self.segments.get_mut(&segment) {
            assert!(
                seg.live_bytes >= bytes,
                "live bytes underflow in segment {segment}"
            );
            seg.live_bytes -= bytes;
        }
    }

    pub(crate) fn incref_chunk(&mut self, id: &ChunkId) -> bool {
        let Some(e) = self.chunks.get_mut(id) else {
            return false;
        };
        e.refcount += 1;
        let e = *e;
        if e.refcount == 1 {
            self.add_live(
                e.segment,
                record::record_len(RecordKind::Chunk, e.payload_len),
            );
        }
        true
    }

    pub(crate) fn decref_chunk(&mut self, id: &ChunkId) -> bool {
        let Some(e) = self.chunks.get_mut(id) else {
            return false;
        };
        if e.refcount == 0 {
            return false;
        }
        e.refcount -= 1;
        let e = *e;
        if e.refcount == 0 {
            self.sub_live(
                e.segment,
                record::record_len(RecordKind::Chunk, e.payload_len),
            );
        }
        true
    }

    fn pin(&mut self, id: ChunkId) {
        *self.pins.entry(id).or_insert(0) += 1;
    }

    fn unpin(&mut self, id: &ChunkId) {
        if let Some(n) = self.pins.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(id);
            }
        }
    }

    /// Recomputes every segment's live bytes from the index.
    pub(crate) fn recompute_live(&mut self) {
        self.accounting = true;
        for seg in self.segments.values_mut() {
            seg.live_bytes = 0;
        }
        let mut live: HashMap<u64, u64> = HashMap::new();
        for e in self.chunks.values() {
            if e.refcount > 0 {
                *live.entry(e.segment).or_insert(0) +=
                    record::record_len(RecordKind::Chunk, e.payload_len);
            }
        }
        for e in self.blobs.values() {
            *live.entry(e.segment).or_insert(0) += u64::from(e.record_len);
        }
        for (id, bytes) in live {
            self.add_live(id, bytes);
        }
    }
}

struct Commit {
    synced: Pos,
    leader: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub puts: AtomicU64,
    pub deletes: AtomicU64,
    pub chunks_written: AtomicU64,
    pub chunks_deduplicated: AtomicU64,
    pub bytes_appended: AtomicU64,
    pub syncs: AtomicU64,
    pub commits: AtomicU64,
    pub reads: AtomicU64,
    pub corruptions_detected: AtomicU64,
    pub checkpoints: AtomicU64,
    pub compactions: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct ManifestCache {
    map: IdMap<BlobId, Arc<Vec<ChunkId>>>,
    ids: usize,
}

pub(crate) struct Inner {
    pub storage: Arc<dyn Storage>,
    pub config: BlobConfig,
    pub state: RwLock<State>,
    commit: Mutex<Commit>,
    commit_cv: Condvar,
    poisoned: AtomicBool,
    /// Serialises checkpoints and compactions.
    pub maintenance: Mutex<()>,
    /// Locked bytes the chunk cache held when the kernel last refused to
    /// lock more (`u64::MAX`: never refused).
    lock_refused_at_bytes: AtomicU64,
    manifests: Mutex<ManifestCache>,
    pub counters: Counters,
    flusher: Arc<Flusher>,
    /// The store's directory when reads may use memory maps.
    mmap_dir: Option<std::path::PathBuf>,
    /// Hot chunks, verified once (none when `read_cache_bytes` is 0).
    pub cache: Option<super::cache::ChunkCache>,
}

/// A range of a segment map, as the owner of a `Bytes`.
struct MapSlice {
    map: Arc<super::mapped::SegmentMap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.end]
    }
}

/// Wakes the background flusher, which syncs the head early during large
/// writes so the disk works while the writer hashes, and `finish` has less
/// left to flush. It only ever advances the synced position, exactly as a
/// group-commit leader does.
#[derive(Default)]
struct Flusher {
    state: Mutex<FlushState>,
    cv: Condvar,
}

#[derive(Default)]
struct FlushState {
    requested: bool,
    shutdown: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut f) = self.flusher.state.lock() {
            f.shutdown = true;
        }
        self.flusher.cv.notify_all();
    }
}

fn run_flusher(weak: std::sync::Weak<Inner>, flusher: Arc<Flusher>) {
    loop {
        {
            let Ok(mut f) = flusher.state.lock() else {
                return;
            };
            while !f.requested && !f.shutdown {
                f = match flusher.cv.wait(f) {
                    Ok(f) => f,
                    Err(_) => return,
                };
            }
            if f.shutdown {
                return;
            }
            f.requested = false;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let end = match inner.read_state() {
            Ok(st) => st.end(),
            Err(_) => return,
        };
        // A failure poisons the store inside; writers then see it.
        let _ = inner.sync_until(end);
    }
}

/// A handle to an open blob store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct BlobStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, Error> {
    m.lock().map_err(|_| Error::Poisoned)
}

impl Inner {
    pub(crate) fn read_state(&self) -> Result<RwLockReadGuard<'_, State>, Error> {
        self.state.read().map_err(|_| Error::Poisoned)
    }

    pub(crate) fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>, Error> {
        self.state.write().map_err(|_| Error::Poisoned)
    }

    pub(crate) fn poison(&self) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!("blob store poisoned by a failed sync; reopen it");
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    pub(crate) fn check_writable(&self) -> Result<(), Error> {
        if self.is_poisoned() {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn note_corruption(&self, e: Error) -> Error {
        if matches!(e, Error::Corruption { .. }) {
            bump(&self.counters.corruptions_detected);
            tracing::warn!(error = %e, "blob store corruption detected");
        }
        e
    }

    /// Whether enough has been appended since the last checkpoint to write
    /// another: the configured interval, or four times the last checkpoint's
    /// size, so checkpoint writes stay a small share of all writes.
    pub(crate) fn checkpoint_due(&self, st: &State) -> bool {
        st.appended_since_checkpoint
            >= self
                .config
                .checkpoint_interval_bytes
                .max(st.last_checkpoint_bytes.saturating_mul(4))
    }

    /// Appends `parts` back to back as one record at the head, rolling to a
    /// new segment first if the record does not fit.
    pub(crate) fn append(&self, st: &mut State, parts: &[&[u8]]) -> Result<Pos, Error> {
        self.check_writable()?;
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let head = self.ensure_head(st, total)?;
        let Some(seg) = st.segments.get_mut(&head) else {
            panic!("head segment {head} missing from the segment map");
        };
        let at = seg.len;
        match seg.file.write_all_vectored_at(parts, at) {
            Ok(()) => {
                seg.len += total;
                st.appended_since_checkpoint += total;
                st.appended_since_flush_request += total;
                let every = self.config.background_sync_bytes;
                if every > 0 && st.appended_since_flush_request >= every {
                    st.appended_since_flush_request = 0;
                    if let Ok(mut f) = self.flusher.state.lock() {
                        f.requested = true;
                    }
                    self.flusher.cv.notify_one();
                }
                self.counters
                    .bytes_appended
                    .fetch_add(total, Ordering::Relaxed);
                Ok(Pos {
                    segment: head,
                    offset: at,
                })
            }
            Err(e) => {
                // Best effort: drop the partial bytes now. If this fails too,
                // the next append overwrites them from `at` anyway.
                let _ = seg.file.set_len(at);
                Err(Error::io("append", &seg.name, e))
            }
        }
    }

    fn ensure_head(&self, st: &mut State, record_len: u64) -> Result<u64, Error> {
        if let Some(h) = st.head {
            let Some(seg) = st.segments.get(&h) else {
                panic!("head segment {h} missing from the segment map");
            };
            let empty = seg.len == SEGMENT_HEADER_LEN as u64;
            if empty || seg.len + record_len <= self.config.segment_size_bytes_max {
                return Ok(h);
            }
            // Seal: cut any partial bytes of a failed append, and make the
            // whole segment durable, so only the head is ever unsynced.
            seg.file
                .set_len(seg.len)
                .map_err(|e| Error::io("seal", &seg.name, e))?;
            if let Err(e) = seg.file.sync_data() {
                self.poison();
                return Err(Error::io("sync", &seg.name, e));
            }
            bump(&self.counters.syncs);
            let sealed_end = Pos {
                segment: h,
                offset: seg.len,
            };
            {
                let mut c = lock(&self.commit)?;
                if sealed_end > c.synced {
                    c.synced = sealed_end;
                }
            }
            self.commit_cv.notify_all();
            st.head = None;
        }
        let id = st.next_segment_id;
        // Consume the id before touching the disk, so a failed creation never
        // collides with a retry.
        st.next_segment_id += 1;
        let name = segment_file_name(id);
        let file = self
            .storage
            .open(&name, OpenMode::CreateNew)
            .map_err(|e| Error::io("create segment", &name, e))?;
        if let Err(e) = file.write_all_at(&record::encode_segment_header(id), 0) {
            drop(file);
            let _ = self.storage.remove(&name);
            return Err(Error::io("write segment header", &name, e));
        }
        if let Err(e) = self.storage.sync_dir() {
            self.poison();
            return Err(Error::io("sync dir", &name, e));
        }
        st.segments.insert(
            id,
            Segment {
                file,
                name: name.into(),
                len: SEGMENT_HEADER_LEN as u64,
                live_bytes: 0,
                map: self.map_segment(&segment_file_name(id)),
            },
        );
        st.head = Some(id);
        Ok(id)
    }

    /// Maps segment `name` read-only when mapped reads are on; `None` (reads
    /// then use `pread`) when they are off or mapping fails.
    fn map_segment(&self, name: &str) -> Option<Arc<super::mapped::SegmentMap>> {
        let dir = self.mmap_dir.as_ref()?;
        let len = usize::try_from(self.config.segment_size_bytes_max).ok()?;
        match super::mapped::SegmentMap::open(&dir.join(name), len) {
            Ok(m) => Some(m),
            Err(error) => {
                tracing::warn!(%error, name, "cannot map segment; reading it with pread");
                None
            }
        }
    }

    /// Returns once every record before `target` is durable (group commit),
    /// counted as one commit.
    pub(crate) fn wait_durable(&self, target: Pos) -> Result<(), Error> {
        self.sync_until(target)?;
        bump(&self.counters.commits);
        Ok(())
    }

    /// Returns once every record before `target` is durable: the first
    /// caller becomes the leader and syncs the head for everyone waiting.
    pub(crate) fn sync_until(&self, target: Pos) -> Result<(), Error> {
        let mut c = lock(&self.commit)?;
        loop {
            if self.is_poisoned() {
                return Err(Error::Poisoned);
            }
            if c.synced >= target {
                return Ok(());
            }
            if c.leader {
                c = self.commit_cv.wait(c).map_err(|_| Error::Poisoned)?;
                continue;
            }
            c.leader = true;
            drop(c);
            let head = {
                let st = self.read_state();
                match st {
                    Ok(st) => st.head.and_then(|h| {
                        st.segments.get(&h).map(|s| {
                            (
                                s.file.clone(),
                                s.name.clone(),
                                Pos {
                                    segment: h,
                                    offset: s.len,
                                },
                            )
                        })
                    }),
                    Err(_) => None,
                }
            };
            let result = match &head {
                Some((file, name, _)) => {
                    bump(&self.counters.syncs);
                    file.sync_data().map_err(|e| Error::io("sync", name, e))
                }
                None => Ok(()),
            };
            c = lock(&self.commit)?;
            c.leader = false;
            match result {
                Ok(()) => {
                    if let Some((_, _, end)) = head {
                        if end > c.synced {
                            c.synced = end;
                        }
                    }
                    self.commit_cv.notify_all();
                    // Everything before `target` was appended before we
                    // looked at the head, so one sync always suffices.
                    assert!(
                        c.synced >= target || self.is_poisoned(),
                        "group commit made no progress: synced {:?}, target {target:?}",
                        c.synced
                    );
                }
                Err(e) => {
                    self.poison();
                    self.commit_cv.notify_all();
                    return Err(e);
                }
            }
        }
    }

    /// Reads and fully verifies the record at a known location.
    pub(crate) fn read_record(
        &self,
        segment: u64,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, String), Error> {
        let (file, name) = {
            let st = self.read_state()?;
            segment_file(&st, segment, offset)?
        };
        self.read_record_from(file.as_ref(), &name, segment, offset, len)
    }

    /// [`Inner::read_record`] for a caller already holding the state lock.
    pub(crate) fn read_record_locked(
        &self,
        st: &State,
        segment: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, Error> {
        let (file, name) = segment_file(st, segment, offset)?;
        Ok(self
            .read_record_from(file.as_ref(), &name, segment, offset, len)?
            .0)
    }

    fn read_record_from(
        &self,
        file: &dyn StorageFile,
        name: &str,
        segment: u64,
        offset: u64,
        len: u64,
    ) -> Result<(Bytes, String), Error> {
        let bytes = file
            .read_bytes_at(offset, len as usize)
            .map_err(|e| Error::io("read", name, e))?;
        if let Err(e) = record::decode(&bytes) {
            return Err(self.note_corruption(Error::corruption(name, Some(segment), offset, e)));
        }
        Ok((bytes, name.to_owned()))
    }

    /// The chunk list of a live blob, from the cache or its record.
    pub(crate) fn manifest(
        &self,
        id: &BlobId,
        entry: &BlobEntry,
    ) -> Result<Arc<Vec<ChunkId>>, Error> {
        if let Some(m) = lock(&self.manifests)?.map.get(id) {
            return Ok(m.clone());
        }
        let (bytes, name) =
            self.read_record(entry.segment, entry.offset, u64::from(entry.record_len))?;
        let corrupt = |why: &str| {
            self.note_corruption(Error::corruption(
                &name,
                Some(entry.segment),
                entry.offset,
                why,
            ))
        };
        let (rec, _) = record::decode(&bytes).map_err(|e| corrupt(&e.to_string()))?;
        if rec.header.kind != RecordKind::BlobState || rec.header.key != id.0 {
            return Err(corrupt("blob index points at a different record"));
        }
        let state = BlobState::decode(rec.payload).map_err(|e| corrupt(&e.to_string()))?;
        if state.size_bytes != entry.size_bytes || state.chunks.len() != entry.chunk_count as usize
        {
            return Err(corrupt("blob state disagrees with the index"));
        }
        let chunks = Arc::new(state.chunks);
        let mut cache = lock(&self.manifests)?;
        if cache.ids + chunks.len() > self.config.manifest_cache_chunk_ids_max {
            cache.map.clear();
            cache.ids = 0;
        }
        cache.ids += chunks.len();
        cache.map.insert(*id, chunks.clone());
        Ok(chunks)
    }

    fn forget_manifest(&self, id: &BlobId) {
        if let Ok(mut cache) = lock(&self.manifests) {
            if let Some(m) = cache.map.remove(id) {
                cache.ids -= m.len();
            }
        }
    }

    /// Reads bytes `start..end` of a chunk's payload: from the chunk cache
    /// when it keeps the chunk; else verifying the header and just the
    /// blocks touched, or, on a chunk's second read, reading and verifying
    /// it whole for the cache (see [`super::cache`]).
    pub(crate) fn read_chunk_range(
        &self,
        id: &ChunkId,
        start: u32,
        end: u32,
    ) -> Result<Bytes, Error> {
        if start < end {
            if let Some(hit) = self.cache.as_ref().and_then(|c| c.get(id, start, end)) {
                bump(&self.counters.reads);
                return Ok(hit);
            }
        }
        let (entry, file, name, map) = {
            let st = self.read_state()?;
            let Some(entry) = st.chunks.get(id).copied() else {
                return Err(self.note_corruption(Error::corruption(
                    "index",
                    None,
                    0,
                    format!("chunk {id} named by a live blob is missing"),
                )));
            };
            let Some(seg) = st.segments.get(&entry.segment) else {
                panic!("chunk {id} points into missing segment {}", entry.segment);
            };
            (entry, seg.file.clone(), seg.name.clone(), seg.map.clone())
        };
        if start > end || end > entry.payload_len {
            return Err(Error::InvalidInput(format!(
                "range {start}..{end} outside chunk of {} bytes",
                entry.payload_len
            )));
        }
        let head_len = record::HEADER_LEN
            + 4 * (entry.payload_len as usize).div_ceil(record::CHUNK_BLOCK_BYTES as usize);
        let record_end = entry.offset + record::record_len(RecordKind::Chunk, entry.payload_len);
        let corrupt = |offset: u64, why: String| {
            self.note_corruption(Error::corruption(&name, Some(entry.segment), offset, why))
        };
        let payload_at = entry.offset + head_len as u64;
        let map = map.filter(|m| record_end <= m.bytes().len() as u64);
        if let Some(cache) = self.cache.as_ref() {
            if start < end && cache.admit(id, start, end, entry.payload_len) {
                let whole =
                    self.read_whole_chunk(id, &entry, file.as_ref(), &name, map.as_ref(), head_len);
                // A chunk that fails whole (a bad block, an unreadable page;
                // reported once, as found) may still hold the asked range
                // intact: the ranged read below answers. The cache then stops
                // trying to keep it, so it is not read whole again.
                if whole.is_err() {
                    cache.refuse(id);
                }
                if let Ok((payload, locked_span_bytes)) = whole {
                    // Under the state lock, and only while the index still
                    // names this very record: deletes forget a dead chunk
                    // and compaction a removed segment's slices under the
                    // write lock, so neither comes back from a read that
                    // raced them.
                    let st = self.read_state()?;
                    let current = st.chunks.get(id).is_some_and(|e| {
                        e.refcount > 0 && e.segment == entry.segment && e.offset == entry.offset
                    });
                    if current {
                        let locked =
                            (locked_span_bytes > 0).then_some((entry.segment, locked_span_bytes));
                        cache.insert(*id, payload.clone(), locked);
                    }
                    drop(st);
                    bump(&self.counters.reads);
                    return Ok(payload.slice(start as usize..end as usize));
                }
            }
        }
        if let Some(map) = map {
            let bytes = map.bytes();
            let base = entry.offset as usize;
            let populate = |range: std::ops::Range<usize>| {
                super::mapped::populate(&bytes[range]).map_err(|e| Error::io("read", &name, e))
            };
            populate(base..base + head_len)?;
            let block = check_chunk_head(id, &entry, &bytes[base..base + head_len], &corrupt)?;
            if start == end {
                return Ok(Bytes::new());
            }
            let (data_start, data_end) = block_span(start, end, block, entry.payload_len);
            let p = payload_at as usize;
            populate(p + data_start as usize..p + data_end as usize)?;
            check_blocks(
                id,
                &bytes[base + record::HEADER_LEN..base + head_len],
                &bytes[p + data_start as usize..p + data_end as usize],
                data_start / block,
                block,
                payload_at,
                &corrupt,
            )?;
            bump(&self.counters.reads);
            return Ok(Bytes::from_owner(MapSlice {
                map,
                start: p + start as usize,
                end: p + end as usize,
            }));
        }
        // Header and table into thread scratch, the touched blocks into a
        // pooled buffer that the returned `Bytes` owns (no copy; verified
        // while cache-hot).
        let (block, data_start, data) = crate::blob::bufpool::with_scratch(head_len, |head| {
            file.read_exact_at(head, entry.offset)
                .map_err(|e| Error::io("read", &name, e))?;
            let block = check_chunk_head(id, &entry, head, &corrupt)?;
            if start == end {
                return Ok((block, 0, None));
            }
            let (data_start, data_end) = block_span(start, end, block, entry.payload_len);
            let n = (data_end - data_start) as usize;
            let mut buf = crate::blob::bufpool::take(n);
            file.read_exact_at(&mut buf[..n], payload_at + u64::from(data_start))
                .map_err(|e| Error::io("read", &name, e))?;
            check_blocks(
                id,
                &head[record::HEADER_LEN..],
                &buf[..n],
                data_start / block,
                block,
                payload_at,
                &corrupt,
            )?;
            Ok((block, data_start, Some(buf)))
        })?;
        let _ = block;
        let Some(buf) = data else {
            return Ok(Bytes::new());
        };
        bump(&self.counters.reads);
        Ok(crate::blob::bufpool::into_bytes(
            buf,
            (start - data_start) as usize,
            (end - data_start) as usize,
        ))
    }
}

impl Inner {
    /// A chunk's whole payload, verified in memory that cannot change under
    /// it: the record's pages locked in the map (returns the bytes of the
    /// pages locked), or else a heap copy read with `pread` (returns 0).
    fn read_whole_chunk(
        &self,
        id: &ChunkId,
        entry: &ChunkEntry,
        file: &dyn StorageFile,
        name: &str,
        map: Option<&Arc<super::mapped::SegmentMap>>,
        head_len: usize,
    ) -> Result<(Bytes, u64), Error> {
        let corrupt = |offset: u64, why: String| {
            self.note_corruption(Error::corruption(name, Some(entry.segment), offset, why))
        };
        let payload_at = entry.offset + head_len as u64;
        let base = entry.offset as usize;
        let payload_end = base + head_len + entry.payload_len as usize;
        // Checks a whole record without its trailer: header, table, blocks.
        let check = |record: &[u8]| -> Result<(), Error> {
            let block = check_chunk_head(id, entry, &record[..head_len], &corrupt)?;
            check_blocks(
                id,
                &record[record::HEADER_LEN..head_len],
                &record[head_len..],
                0,
                block,
                payload_at,
                &corrupt,
            )
        };
        // After a refusal, locking is tried again only once the cache holds
        // fewer locked bytes than it did then (each refused try costs a
        // populate, an mlock and munlocks).
        let may_lock = self
            .cache
            .as_ref()
            .is_some_and(|c| c.locked_bytes() < self.lock_refused_at_bytes.load(Ordering::Relaxed));
        if let Some(map) = map.filter(|_| may_lock) {
            match map.lock(base..payload_end) {
                Ok(lock) => {
                    check(lock.bytes())?;
                    let page = super::mapped::page_bytes();
                    let span_bytes = (payload_end.div_ceil(page) - base / page) * page;
                    let lock = lock.publish();
                    let payload = super::mapped::locked_bytes(lock, base + head_len..payload_end);
                    return Ok((payload, span_bytes as u64));
                }
                Err(super::mapped::LockError::Read(e)) => {
                    return Err(Error::io("read", name, e));
                }
                Err(super::mapped::LockError::Refused(e)) => {
                    let held = self.cache.as_ref().map_or(0, |c| c.locked_bytes());
                    let before = self.lock_refused_at_bytes.swap(held, Ordering::Relaxed);
                    if before == u64::MAX {
                        tracing::warn!(
                            error = %e,
                            locked_bytes = held,
                            "cannot lock more blob pages in memory (RLIMIT_MEMLOCK?); \
                             the chunk cache keeps heap copies past this"
                        );
                    }
                }
            }
        }
        let mut buf = vec![0u8; head_len + entry.payload_len as usize];
        file.read_exact_at(&mut buf, entry.offset)
            .map_err(|e| Error::io("read", name, e))?;
        check(&buf)?;
        Ok((Bytes::from(buf).slice(head_len..), 0))
    }
}

/// The whole blocks covering `start..end` of a payload, clipped to it.
fn block_span(start: u32, end: u32, block: u32, payload_len: u32) -> (u32, u32) {
    let b0 = start / block;
    let b1 = end.div_ceil(block);
    (b0 * block, (b1 * block).min(payload_len))
}

/// Checks a chunk record's header and block table against the index;
/// returns the block size.
fn check_chunk_head(
    id: &ChunkId,
    entry: &ChunkEntry,
    head: &[u8],
    corrupt: &dyn Fn(u64, String) -> Error,
) -> Result<u32, Error> {
    let header = decode_header(head).map_err(|e| corrupt(entry.offset, e.to_string()))?;
    if header.kind != RecordKind::Chunk
        || header.key != id.0
        || header.payload_len != entry.payload_len
        || header.payload_offset() != head.len()
    {
        return Err(corrupt(
            entry.offset,
            "chunk header disagrees with the index".into(),
        ));
    }
    verify_header_crc(&header, head).map_err(|e| corrupt(entry.offset, e.to_string()))?;
    Ok(1u32 << header.block_size_log2)
}

/// Checks each block of `data` (starting at block `first`) against the
/// table.
fn check_blocks(
    id: &ChunkId,
    table: &[u8],
    data: &[u8],
    first: u32,
    block: u32,
    payload_at: u64,
    corrupt: &dyn Fn(u64, String) -> Error,
) -> Result<(), Error> {
    // Checking reads memory once, like the copy `pread` makes, but a CRC
    // loop over 4 KiB blocks gives the hardware prefetcher (which stops at
    // page boundaries) nothing to go on, so a read from DRAM ran at about
    // 60% of `pread`'s speed. Asking for the next blocks ahead of the one
    // being checked keeps the memory system busy.
    const AHEAD_BLOCKS: usize = 2;
    let bs = block as usize;
    prefetch(&data[..data.len().min(AHEAD_BLOCKS * bs)]);
    for (i, piece) in data.chunks(bs).enumerate() {
        if let Some(next) = data.chunks(bs).nth(i + AHEAD_BLOCKS) {
            prefetch(next);
        }
        let b = first + i as u32;
        let expected = table_entry(table, b);
        let actual = crc32fast::hash(piece);
        if expected != actual {
            return Err(corrupt(
                payload_at + u64::from(b * block),
                format!(
                    "chunk {id} block {b} checksum: stored {expected:#010x}, computed {actual:#010x}"
                ),
            ));
        }
    }
    Ok(())
}

/// Hints the CPU to bring `bytes` into cache; a no-op where unsupported.
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is only a hint: it never faults and never
        // dereferences in a way the program can observe, and the pointer
        // comes from a live slice.
        unsafe {
            core::arch::x86_64::_mm_prefetch(
                line.as_ptr().cast::<i8>(),
                core::arch::x86_64::_MM_HINT_T0,
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn segment_file(
    st: &State,
    segment: u64,
    offset: u64,
) -> Result<(Arc<dyn StorageFile>, String), Error> {
    match st.segments.get(&segment) {
        Some(seg) => Ok((seg.file.clone(), seg.name.to_string())),
        None => Err(Error::corruption(
            &segment_file_name(segment),
            Some(segment),
            offset,
            "index points into a segment that does not exist",
        )),
    }
}

impl BlobStore {
    /// Opens (recovering if needed) the blob store kept in `storage`.
    /// Reads go through [`StorageFile::read_bytes_at`].
    pub fn open(storage: Arc<dyn Storage>, config: BlobConfig) -> Result<BlobStore, Error> {
        Self::open_with(storage, config, None)
    }

    /// Opens the store in directory `dir` with the chosen I/O backend, and
    /// serves chunk reads from read-only memory maps of the segment files:
    /// a range read then checksums the page-cache bytes in place and hands
    /// them out as a `Bytes` without copying (writes still go through the
    /// backend). Use this for serving; [`BlobStore::open`] for any
    /// [`Storage`].
    pub fn open_dir(
        dir: &std::path::Path,
        backend: crate::io::BackendChoice,
        config: BlobConfig,
    ) -> Result<BlobStore, Error> {
        let storage = crate::io::open_storage(dir, backend)
            .map_err(|e| Error::io("open storage", &dir.display().to_string(), e))?;
        Self::open_with(storage, config, Some(dir.to_path_buf()))
    }

    fn open_with(
        storage: Arc<dyn Storage>,
        config: BlobConfig,
        mmap_dir: Option<std::path::PathBuf>,
    ) -> Result<BlobStore, Error> {
        if !(CHUNK_SIZE_BYTES_MIN..=CHUNK_SIZE_BYTES_MAX).contains(&config.chunk_size_bytes) {
            return Err(Error::InvalidInput(format!(
                "chunk_size_bytes {} outside {CHUNK_SIZE_BYTES_MIN}..={CHUNK_SIZE_BYTES_MAX}",
                config.chunk_size_bytes
            )));
        }
        if config.segment_size_bytes_max <= SEGMENT_HEADER_LEN as u64 {
            return Err(Error::InvalidInput(
                "segment_size_bytes_max too small".into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.compaction_live_fraction_min) {
            return Err(Error::InvalidInput(
                "compaction_live_fraction_min outside 0..=1".into(),
            ));
        }
        let state = crate::blob::recovery::recover(storage.as_ref())?;
        let synced = state.end();
        let config_cache_bytes = config.read_cache_bytes;
        let inner = Inner {
            storage,
            config,
            state: RwLock::new(state),
            commit: Mutex::new(Commit {
                synced,
                leader: false,
            }),
            commit_cv: Condvar::new(),
            poisoned: AtomicBool::new(false),
            maintenance: Mutex::new(()),
            lock_refused_at_bytes: AtomicU64::new(u64::MAX),
            manifests: Mutex::new(ManifestCache {
                map: HashMap::with_hasher(IdBuild::default()),
                ids: 0,
            }),
            counters: Counters::default(),
            flusher: Arc::new(Flusher::default()),
            mmap_dir,
            cache: (config_cache_bytes > 0)
                .then(|| super::cache::ChunkCache::new(config_cache_bytes)),
        };
        if inner.mmap_dir.is_some() {
            let mut st = inner.write_state()?;
            let names: Vec<(u64, String)> = st
                .segments
                .iter()
                .map(|(id, s)| (*id, s.name.clone()))
                .map(|(id, n): (u64, Arc<str>)| (id, n.to_string()))
                .collect();
            for (id, name) in names {
                let map = inner.map_segment(&name);
                if let Some(seg) = st.segments.get_mut(&id) {
                    seg.map = map;
                }
            }
        }
        let inner = Arc::new(inner);
        if inner.config.background_sync_bytes > 0 {
            let weak = Arc::downgrade(&inner);
            let flusher = inner.flusher.clone();
            if let Err(error) = std::thread::Builder::new()
                .name("blob-flush".into())
                .spawn(move || run_flusher(weak, flusher))
            {
                tracing::warn!(%error, "no background flusher; syncs happen at commit only");
            }
        }
        Ok(BlobStore { inner })
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &BlobConfig {
        &self.inner.config
    }

    /// Starts a streamed write.
    pub fn writer(&self) -> BlobWriter {
        let chunk_size = self.inner.config.chunk_size_bytes as usize;
        BlobWriter {
            store: self.clone(),
            buf: Vec::new(),
            chunk_size,
            hasher: blake3::Hasher::new(),
            chunks: Vec::new(),
            size_bytes: 0,
            pinned: Vec::new(),
            failed: false,
        }
    }

    /// Stores `data` as one blob: writer, write, finish.
    pub fn put(&self, data: &[u8]) -> Result<BlobRef, Error> {
        let mut w = self.writer();
        w.write(data)?;
        w.finish()
    }

    /// Metadata of a live blob.
    pub fn stat(&self, id: &BlobId) -> Result<Option<BlobInfo>, Error> {
        let st = self.inner.read_state()?;
        Ok(st.blobs.get(id).map(|e| BlobInfo {
            id: *id,
            size_bytes: e.size_bytes,
            chunk_count: e.chunk_count,
            created_ms: e.created_ms,
        }))
    }

    /// How many puts of a blob are not yet matched by deletes (0 if none).
    pub fn refcount(&self, id: &BlobId) -> Result<u32, Error> {
        let st = self.inner.read_state()?;
        Ok(st.blobs.get(id).map(|e| e.refcount).unwrap_or(0))
    }

    fn blob_entry(&self, id: &BlobId) -> Result<BlobEntry, Error> {
        let st = self.inner.read_state()?;
        st.blobs.get(id).copied().ok_or(Error::NotFound(*id))
    }

    /// Reads `len` bytes at `offset` of a blob into one `Bytes` (a slice of
    /// the read buffer when the range lies in one chunk). `len` is capped at
    /// `read_len_max_bytes` (two chunks by default); a range past the end is
    /// `InvalidInput`.
    pub fn read(&self, id: &BlobId, offset: u64, len: u64) -> Result<Bytes, Error> {
        let cap = match self.inner.config.read_len_max_bytes {
            0 => 2 * u64::from(self.inner.config.chunk_size_bytes),
            n => n,
        };
        if len > cap {
            return Err(Error::InvalidInput(format!(
                "read of {len} bytes exceeds the cap of {cap}; use read_range"
            )));
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::InvalidInput("range overflows".into()))?;
        let mut reader = self.read_range(id, offset..end)?;
        let Some(first) = reader.next() else {
            return Ok(Bytes::new());
        };
        let first = first?;
        if reader.remaining_bytes() == 0 {
            return Ok(first);
        }
        let mut out = BytesMut::with_capacity(len as usize);
        out.extend_from_slice(&first);
        for piece in reader {
            out.extend_from_slice(&piece?);
        }
        Ok(out.freeze())
    }

    /// Streams a byte range of a blob chunk by chunk.
    pub fn read_range(
        &self,
        id: &BlobId,
        range: std::ops::Range<u64>,
    ) -> Result<BlobRangeReader, Error> {
        let entry = self.blob_entry(id)?;
        if range.start > range.end || range.end > entry.size_bytes {
            return Err(Error::InvalidInput(format!(
                "range {}..{} outside blob of {} bytes",
                range.start, range.end, entry.size_bytes
            )));
        }
        let chunks = if range.start == range.end {
            Arc::new(Vec::new())
        } else {
            self.inner.manifest(id, &entry)?
        };
        Ok(BlobRangeReader {
            store: self.clone(),
            chunks,
            chunk_size_bytes: u64::from(entry.chunk_size_bytes),
            pos: range.start,
            end: range.end,
        })
    }

    /// Drops one reference to a blob; the blob is gone when none remain.
    /// Returns whether it existed. Durable on return.
    pub fn delete(&self, id: &BlobId) -> Result<bool, Error> {
        let inner = &self.inner;
        inner.check_writable()?;
        let end = loop {
            let entry = {
                let st = inner.read_state()?;
                match st.blobs.get(id) {
                    Some(e) => *e,
                    None => return Ok(false),
                }
            };
            let chunks = inner.manifest(id, &entry)?;
            let mut st = inner.write_state()?;
            if st.blobs.get(id) != Some(&entry) {
                continue; // changed while we read its manifest
            }
            let refcount = entry.refcount - 1;
            let state = BlobState {
                refcount,
                chunk_size_bytes: entry.chunk_size_bytes,
                size_bytes: entry.size_bytes,
                created_ms: entry.created_ms,
                chunks: chunks.to_vec(),
            };
            let bytes = state.encode_record(id);
            let pos = inner.append(&mut st, &[&bytes])?;
            st.sub_live(entry.segment, u64::from(entry.record_len));
            if refcount == 0 {
                for c in chunks.iter() {
                    assert!(
                        st.decref_chunk(c),
                        "deleted blob {id} names unknown chunk {c}"
                    );
                    if let Some(cache) = &inner.cache {
                        if st.chunks.get(c).is_some_and(|e| e.refcount == 0) {
                            cache.remove(c);
                        }
                    }
                }
                st.blobs.remove(id);
                inner.forget_manifest(id);
            } else {
                st.add_live(pos.segment, bytes.len() as u64);
                st.blobs.insert(
                    *id,
                    BlobEntry {
                        segment: pos.segment,
                        offset: pos.offset,
                        record_len: bytes.len() as u32,
                        refcount,
                        ..entry
                    },
                );
            }
            break Pos {
                segment: pos.segment,
                offset: pos.offset + bytes.len() as u64,
            };
        };
        inner.wait_durable(end)?;
        bump(&inner.counters.deletes);
        self.maybe_checkpoint();
        Ok(true)
    }

    pub(crate) fn maybe_checkpoint(&self) {
        let due = match self.inner.read_state() {
            Ok(st) => self.inner.checkpoint_due(&st),
            Err(_) => false,
        };
        if due {
            self.checkpoint_if_free();
        }
    }

    /// Checkpoints now unless other maintenance (a checkpoint, a compaction,
    /// a scrub) is running; the checkpoint stays due, so a later write or
    /// delete tries again.
    fn checkpoint_if_free(&self) {
        if let Ok(_guard) = self.inner.maintenance.try_lock() {
            if let Err(error) = self.checkpoint_locked() {
                tracing::warn!(%error, "automatic blob checkpoint failed");
            }
        }
    }

    /// Whether reads come from memory maps ([`BlobStore::open_dir`]): their
    /// `Bytes` are then slices of segment maps, which
    /// [`super::mapped::mapped_source`] can trace back to the file.
    pub fn is_mapped(&self) -> bool {
        self.inner.mmap_dir.is_some()
    }

    /// Counts and space accounting.
    pub fn stats(&self) -> BlobStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut stats = BlobStats {
            poisoned: self.inner.is_poisoned(),
            puts: load(&c.puts),
            deletes: load(&c.deletes),
            chunks_written: load(&c.chunks_written),
            chunks_deduplicated: load(&c.chunks_deduplicated),
            bytes_appended: load(&c.bytes_appended),
            syncs: load(&c.syncs),
            commits: load(&c.commits),
            reads: load(&c.reads),
            corruptions_detected: load(&c.corruptions_detected),
            checkpoints: load(&c.checkpoints),
            compactions: load(&c.compactions),
            ..BlobStats::default()
        };
        if let Some(cache) = &self.inner.cache {
            let s = cache.stats();
            stats.cache_hits = s.hits;
            stats.cache_misses = s.misses;
            stats.cache_admitted = s.admitted;
            stats.cache_bytes = s.cached_bytes;
            stats.cache_locked_bytes = s.locked_bytes;
        }
        if let Ok(st) = self.inner.read_state() {
            stats.chunks = st.chunks.len() as u64;
            stats.chunks_live = st.chunks.values().filter(|e| e.refcount > 0).count() as u64;
            stats.blobs = st.blobs.len() as u64;
            stats.head_segment = st.head;
            for (id, seg) in &st.segments {
                let total = seg.len - SEGMENT_HEADER_LEN as u64;
                let s = SegmentStats {
                    id: *id,
                    total_bytes: total,
                    live_bytes: seg.live_bytes,
                    dead_bytes: total - seg.live_bytes,
                };
                stats.live_bytes += s.live_bytes;
                stats.dead_bytes += s.dead_bytes;
                stats.segments.push(s);
            }
        }
        stats
    }
}

/// A streamed write of one blob. Dropping it without [`BlobWriter::finish`]
/// aborts: chunks already appended stay as unreferenced garbage that
/// compaction reclaims.
pub struct BlobWriter {
    store: BlobStore,
    buf: Vec<u8>,
    chunk_size: usize,
    hasher: blake3::Hasher,
    chunks: Vec<ChunkId>,
    size_bytes: u64,
    pinned: Vec<ChunkId>,
    /// Set by a failed write: the writer no longer knows which of its bytes
    /// were stored, so every later call fails instead of finishing a blob
    /// whose id does not match its chunks.
    failed: bool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("written_bytes", &self.size_bytes)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    /// Appends bytes to the blob; full chunks are stored as they complete.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.check_not_failed()?;
        let result = self.write_inner(data);
        self.failed = result.is_err();
        result
    }

    fn check_not_failed(&self) -> Result<(), Error> {
        if self.failed {
            return Err(Error::InvalidInput(
                "blob writer used after a failed write".into(),
            ));
        }
        self.store.inner.check_writable()
    }

    fn write_inner(&mut self, mut data: &[u8]) -> Result<(), Error> {
        self.size_bytes += data.len() as u64;
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= self.chunk_size {
                // Whole chunks straight from the caller's buffer: no copy.
                let (chunk, rest) = data.split_at(self.chunk_size);
                self.store_chunk_from(chunk)?;
                data = rest;
                continue;
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.chunk_size);
            }
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.chunk_size {
                let buf = std::mem::take(&mut self.buf);
                let result = self.store_chunk_from(&buf);
                self.buf = buf;
                self.buf.clear();
                result?;
            }
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn written_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Hashes the next chunk into the blob's id and stores it (once).
    fn store_chunk_from(&mut self, data: &[u8]) -> Result<(), Error> {
        let inner = &self.store.inner;
        // The blob's hasher is fed chunk by chunk. Before the first chunk it
        // has seen nothing, so after it, it is exactly that chunk's hash:
        // the first chunk (the whole of a blob up to one chunk long) is
        // hashed once, not once for its id and again for the blob's.
        self.hasher.update(data);
        let id = if self.chunks.is_empty() {
            ChunkId(*self.hasher.finalize().as_bytes())
        } else {
            ChunkId::of(data)
        };
        // Encoded before taking the lock even if the chunk turns out to be
        // stored already: one CRC pass is cheaper than a second trip
        // through a lock every writer contends for.
        let enc = encode_chunk(&id, data);
        let mut st = inner.write_state()?;
        if !st.chunks.contains_key(&id) {
            let pos = inner.append(&mut st, &[&enc.head, data, &enc.trailer])?;
            st.chunks.insert(
                id,
                ChunkEntry {
                    segment: pos.segment,
                    offset: pos.offset,
                    payload_len: data.len() as u32,
                    refcount: 0,
                },
            );
            bump(&inner.counters.chunks_written);
        } else {
            bump(&inner.counters.chunks_deduplicated);
        }
        st.pin(id);
        drop(st);
        self.pinned.push(id);
        self.chunks.push(id);
        Ok(())
    }

    /// Stores the last chunk and the blob's state; returns once durable.
    pub fn finish(mut self) -> Result<BlobRef, Error> {
        self.check_not_failed()?;
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            self.store_chunk_from(&buf)?;
        }
        let inner = self.store.inner.clone();
        let id = BlobId(*self.hasher.finalize().as_bytes());
        let chunk_size = self.chunk_size as u32;
        let now_ms = (inner.config.clock_ms)();
        let (end, chunks, checkpoint_due) = {
            let mut st = inner.write_state()?;
            // Same content cut with another chunk size (the config changed):
            // keep the stored chunk list, so the blob has one definition.
            // Rare, so its manifest read may take the lock a second time.
            let mut old_chunks = None;
            if let Some(e) = st.blobs.get(&id).copied() {
                if e.chunk_size_bytes != chunk_size {
                    drop(st);
                    old_chunks = Some(inner.manifest(&id, &e)?);
                    st = inner.write_state()?;
                }
            }
            let existing = st.blobs.get(&id).copied();
            let state = match existing {
                Some(e) => BlobState {
                    refcount: e.refcount.checked_add(1).ok_or_else(|| {
                        Error::InvalidInput(format!("blob {id} refcount overflow"))
                    })?,
                    chunk_size_bytes: e.chunk_size_bytes,
                    size_bytes: e.size_bytes,
                    created_ms: e.created_ms,
                    chunks: match (&old_chunks, e.chunk_size_bytes == chunk_size) {
                        (_, true) => self.chunks.clone(),
                        (Some(c), false) => c.to_vec(),
                        // The blob changed chunk size between our two looks;
                        // retrying is the caller's business.
                        (None, false) => {
                            return Err(Error::InvalidInput(format!(
                                "blob {id} changed concurrently"
                            )))
                        }
                    },
                },
                None => BlobState {
                    refcount: 1,
                    chunk_size_bytes: chunk_size,
                    size_bytes: self.size_bytes,
                    created_ms: now_ms,
                    chunks: self.chunks.clone(),
                },
            };
            let bytes = state.encode_record(&id);
            let pos = inner.append(&mut st, &[&bytes])?;
            match existing {
                None => {
                    for c in &state.chunks {
                        assert!(st.incref_chunk(c), "finished blob names unknown chunk {c}");
                    }
                }
                Some(e) => st.sub_live(e.segment, u64::from(e.record_len)),
            }
            st.add_live(pos.segment, bytes.len() as u64);
            st.blobs.insert(
                id,
                BlobEntry {
                    segment: pos.segment,
                    offset: pos.offset,
                    record_len: bytes.len() as u32,
                    chunk_size_bytes: state.chunk_size_bytes,
                    size_bytes: state.size_bytes,
                    created_ms: state.created_ms,
                    chunk_count: state.chunks.len() as u32,
                    refcount: state.refcount,
                },
            );
            for c in self.pinned.drain(..) {
                st.unpin(&c);
            }
            (
                Pos {
                    segment: pos.segment,
                    offset: pos.offset + bytes.len() as u64,
                },
                state.chunks,
                inner.checkpoint_due(&st),
            )
        };
        inner.wait_durable(end)?;
        bump(&inner.counters.puts);
        if checkpoint_due {
            self.store.checkpoint_if_free();
        }
        Ok(BlobRef {
            id,
            size_bytes: self.size_bytes,
            chunks,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.pinned.is_empty() {
            return;
        }
        if let Ok(mut st) = self.store.inner.state.write() {
            for c in self.pinned.drain(..) {
                st.unpin(&c);
            }
        }
    }
}

/// Streams a byte range of a blob, one chunk's piece at a time; never holds
/// more than one chunk.
pub struct BlobRangeReader {
    store: BlobStore,
    chunks: Arc<Vec<ChunkId>>,
    chunk_size_bytes: u64,
    pos: u64,
    end: u64,
}

impl std::fmt::Debug for BlobRangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRangeReader")
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl BlobRangeReader {
    /// Bytes not yet yielded.
    pub fn remaining_bytes(&self) -> u64 {
        self.end - self.pos
    }
}

impl Iterator for BlobRangeReader {
    type Item = Result<Bytes, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.end {
            return None;
        }
        let index = (self.pos / self.chunk_size_bytes) as usize;
        let chunk_start = index as u64 * self.chunk_size_bytes;
        let piece_end = self.end.min(chunk_start + self.chunk_size_bytes);
        let Some(chunk) = self.chunks.get(index) else {
            self.pos = self.end;
            return Some(Err(Error::InvalidInput(
                "range beyond the blob's chunk list".into(),
            )));
        };
        let result = self.store.inner.read_chunk_range(
            chunk,
            (self.pos - chunk_start) as u32,
            (piece_end - chunk_start) as u32,
        );
        match result {
            Ok(bytes) => {
                self.pos = piece_end;
                Some(Ok(bytes))
            }
            Err(e) => {
                // Stop after an error: a stream with a hole is never returned.
                self.pos = self.end;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send<T: Send + 'static>() {}
        send_sync::<BlobStore>();
        send_sync::<Error>();
        send::<BlobWriter>();
        send::<BlobRangeReader>();
    }

    #[test]
    fn block_span_covers_exactly_the_touched_blocks() {
        // (start, end, block, payload_len) -> (span start, span end)
        let cases = [
            ((0, 1, 4096, 10_000), (0, 4096)),
            ((4095, 4097, 4096, 10_000), (0, 8192)),
            ((4096, 8192, 4096, 10_000), (4096, 8192)),
            ((9000, 10_000, 4096, 10_000), (8192, 10_000)),
            ((100, 65_636, 4096, 1 << 20), (0, 69_632)),
        ];
        for ((s, e, b, n), want) in cases {
            assert_eq!(block_span(s, e, b, n), want, "{s}..{e}");
        }
    }

    #[test]
    fn positions_order_by_segment_then_offset() {
        let p = |segment, offset| Pos { segment, offset };
        assert!(p(1, 500) < p(2, 32));
        assert!(p(2, 32) < p(2, 33));
        assert_eq!(p(0, 0), Pos::default());
    }
}
