//! Opening a store: load the checkpoint, scan the records written after it,
//! truncate a torn tail, and refuse (with `Corruption`) anything else that
//! does not verify. The numbered protocol is in `engine/FORMAT.md` (part 1).
//!
//! Invariants:
//! - Only the last segment may end in garbage (every other one was synced
//!   whole before it was sealed); garbage there is cut off only if no valid
//!   record follows it, otherwise it is corruption in the middle and open
//!   fails naming the segment and offset.
//! - After recovery every byte the index points at has been synced.

use std::sync::Arc;

use crate::blob::checkpoint;
use crate::blob::index::BlobEntry;
use crate::blob::record::{self, BlobState, RecordKind, HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::blob::store::{Segment, State};
use crate::blob::{parse_segment_file_name, segment_file_name, ChunkId, Error};
use crate::io::{OpenMode, Storage, StorageFile};

/// Name of the checkpoint file.
pub const CHECKPOINT_FILE: &str = "blob.checkpoint";
/// Name the checkpoint is written under before it is renamed into place.
pub const CHECKPOINT_TMP_FILE: &str = "blob.checkpoint.tmp";

const SCAN_WINDOW_BYTES: usize = 4 << 20;

/// Buffered positional reads over one segment.
struct Scanner<'a> {
    file: &'a dyn StorageFile,
    len: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a> Scanner<'a> {
    fn new(file: &'a dyn StorageFile, len: u64) -> Self {
        Scanner {
            file,
            len,
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// Up to `need` bytes at `at` (fewer only at the end of the file).
    fn window(&mut self, at: u64, need: usize) -> std::io::Result<&[u8]> {
        let want_end = (at + need as u64).min(self.len);
        let have_end = self.buf_at + self.buf.len() as u64;
        if at < self.buf_at || want_end > have_end {
            let read_len = (self.len - at).min(need.max(SCAN_WINDOW_BYTES) as u64) as usize;
            self.buf.resize(read_len, 0);
            self.file.read_exact_at(&mut self.buf, at)?;
            self.buf_at = at;
        }
        let from = (at - self.buf_at) as usize;
        let to = (want_end - self.buf_at) as usize;
        Ok(&self.buf[from..to])
    }
}

/// What scanning one record found.
enum Step {
    Record {
        len: u64,
    },
    /// Invalid bytes at the offset; the next place a valid record could start.
    Invalid {
        reason: String,
        resume: Option<u64>,
    },
}

fn step(
    sc: &mut Scanner<'_>,
    at: u64,
    st: &mut State,
    segment: u64,
    apply: bool,
) -> Result<Step, Error> {
    let name = segment_file_name(segment);
    let io = |e| Error::io("recovery read", &name, e);
    let head = sc.window(at, HEADER_LEN).map_err(io)?;
    let header = match record::decode_header(head) {
        Ok(h) => h,
        Err(e) => {
            return Ok(Step::Invalid {
                reason: e.to_string(),
                resume: Some(at + 1),
            })
        }
    };
    let len = header.record_len();
    if at + len > sc.len {
        // A record claiming to run past the end: a torn last write.
        return Ok(Step::Invalid {
            reason: format!("record of {len} bytes runs past the end of the file"),
            resume: None,
        });
    }
    let bytes = sc.window(at, len as usize).map_err(io)?;
    let rec = match record::decode(bytes) {
        Ok((rec, _)) => rec,
        Err(e) => {
            // Past a sound header (its CRC checked), the length is trusted:
            // a later record can only begin after this one's extent, and the
            // bytes inside it (user data) are never mistaken for records.
            let trusted = matches!(
                e,
                record::DecodeError::RecordCrc { .. } | record::DecodeError::BlockCrc { .. }
            );
            return Ok(Step::Invalid {
                reason: e.to_string(),
                resume: Some(if trusted { at + len } else { at + 1 }),
            });
        }
    };
    if apply {
        apply_record(
            st,
            segment,
            at,
            len,
            rec.header.kind,
            rec.header.key,
            rec.payload,
        )
        .map_err(|why| Error::corruption(&name, Some(segment), at, why))?;
    }
    Ok(Step::Record { len })
}

fn apply_record(
    st: &mut State,
    segment: u64,
    offset: u64,
    len: u64,
    kind: RecordKind,
    key: [u8; 32],
    payload: &[u8],
) -> Result<(), String> {
    match kind {
        RecordKind::Chunk => {
            // An existing entry is an equally valid copy (compaction copies
            // before it removes); keep it.
            st.chunks
                .entry(ChunkId(key))
                .or_insert(crate::blob::index::ChunkEntry {
                    segment,
                    offset,
                    payload_len: payload.len() as u32,
                    refcount: 0,
                });
        }
        RecordKind::BlobState => {
            let state = BlobState::decode(payload).map_err(|e| e.to_string())?;
            let id = crate::blob::BlobId(key);
            let old = st.blobs.get(&id).map(|e| e.refcount).unwrap_or(0);
            if old == 0 && state.refcount > 0 {
                for c in &state.chunks {
                    if !st.incref_chunk(c) {
                        return Err(format!("blob {id} names chunk {c}, which is not stored"));
                    }
                }
            } else if old > 0 && state.refcount == 0 {
                for c in &state.chunks {
                    if !st.decref_chunk(c) {
                        return Err(format!("deleting blob {id} underflows chunk {c}"));
                    }
                }
            }
            if state.refcount == 0 {
                st.blobs.remove(&id);
            } else {
                st.blobs.insert(
                    id,
                    BlobEntry {
                        segment,
                        offset,
                        record_len: len as u32,
                        chunk_size_bytes: state.chunk_size_bytes,
                        size_bytes: state.size_bytes,
                        created_ms: state.created_ms,
                        chunk_count: state.chunks.len() as u32,
                        refcount: state.refcount,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Whether every byte in `from..to` is zero: the mark of unsynced writes
/// that were lost while a later one survived (file systems read unwritten
/// ranges as zeros). Bit rot never turns a record into all zeros, so a
/// zero gap is never mistaken for corruption of a synced record.
fn all_zero(sc: &mut Scanner<'_>, from: u64, to: u64, segment: u64) -> Result<bool, Error> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(SCAN_WINDOW_BYTES as u64) as usize;
        let w = sc
            .window(at, n)
            .map_err(|e| Error::io("recovery read", &segment_file_name(segment), e))?;
        if w.iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += w.len().max(1) as u64;
    }
    Ok(true)
}

/// Looks for any valid record starting in `from..len`.
fn find_valid_record(sc: &mut Scanner<'_>, from: u64, segment: u64) -> Result<Option<u64>, Error> {
    let mut scratch = State::empty();
    let mut at = from;
    while at + HEADER_LEN as u64 <= sc.len {
        let magic_here = {
            let w = sc
                .window(at, 4)
                .map_err(|e| Error::io("recovery read", &segment_file_name(segment), e))?;
            w == record::RECORD_MAGIC
        };
        if magic_here {
            if let Step::Record { .. } = step(sc, at, &mut scratch, segment, false)? {
                return Ok(Some(at));
            }
        }
        at += 1;
    }
    Ok(None)
}

/// Recovers the index from `storage` (protocol steps in `format/blob.md`).
pub(crate) fn recover(storage: &dyn Storage) -> Result<State, Error> {
    let names = storage.list().map_err(|e| Error::io("list", "<dir>", e))?;
    let mut dir_dirty = false;
    if names.iter().any(|n| n == CHECKPOINT_TMP_FILE) {
        storage
            .remove(CHECKPOINT_TMP_FILE)
            .map_err(|e| Error::io("remove", CHECKPOINT_TMP_FILE, e))?;
        dir_dirty = true;
    }
    let mut segment_ids: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect();
    segment_ids.sort_unstable();

    let mut st = State::empty();
    st.accounting = false;
    let mut position = crate::blob::store::Pos::default();
    if names.iter().any(|n| n == CHECKPOINT_FILE) {
        let file = storage
            .open(CHECKPOINT_FILE, OpenMode::Existing)
            .map_err(|e| Error::io("open", CHECKPOINT_FILE, e))?;
        let len = file
            .len()
            .map_err(|e| Error::io("len", CHECKPOINT_FILE, e))?;
        let bytes = file
            .read_bytes_at(0, len as usize)
            .map_err(|e| Error::io("read", CHECKPOINT_FILE, e))?;
        let cp = checkpoint::decode(&bytes)
            .map_err(|(offset, why)| Error::corruption(CHECKPOINT_FILE, None, offset, why))?;
        for id in &cp.segments {
            if segment_ids.binary_search(id).is_err() {
                return Err(Error::corruption(
                    CHECKPOINT_FILE,
                    Some(*id),
                    0,
                    format!("segment {id} listed in the checkpoint is missing"),
                ));
            }
        }
        // Segments at or before the checkpoint position that it does not
        // list were compacted away; their removal did not finish.
        let stale: Vec<u64> = segment_ids
            .iter()
            .copied()
            .filter(|id| *id <= cp.position_segment && cp.segments.binary_search(id).is_err())
            .collect();
        for id in &stale {
            let name = segment_file_name(*id);
            storage
                .remove(&name)
                .map_err(|e| Error::io("remove", &name, e))?;
            dir_dirty = true;
        }
        segment_ids.retain(|id| !stale.contains(id));
        st.chunks.reserve(cp.chunks.len());
        st.chunks.extend(cp.chunks);
        st.blobs.reserve(cp.blobs.len());
        st.blobs.extend(cp.blobs);
        st.next_segment_id = cp.next_segment_id;
        position = crate::blob::store::Pos {
            segment: cp.position_segment,
            offset: cp.position_offset,
        };
    }

    let last = segment_ids.last().copied();
    for id in segment_ids.iter().copied() {
        let name = segment_file_name(id);
        let file: Arc<dyn StorageFile> = storage
            .open(&name, OpenMode::Existing)
            .map_err(|e| Error::io("open", &name, e))?;
        let len = file.len().map_err(|e| Error::io("len", &name, e))?;
        let is_last = Some(id) == last;
        let mut sc = Scanner::new(file.as_ref(), len);
        let header_ok = len >= SEGMENT_HEADER_LEN as u64
            && sc
                .window(0, SEGMENT_HEADER_LEN)
                .map_err(|e| Error::io("read", &name, e))
                .map(|h| record::decode_segment_header(h) == Ok(id))?;
        if !header_ok {
            // A segment whose creation was not yet durable holds nothing
            // acknowledged: remove it if nothing valid follows.
            let lost = match find_valid_record(&mut sc, 0, id)? {
                None => true,
                Some(valid) => all_zero(&mut sc, 0, valid, id)?,
            };
            if is_last && id > position.segment && lost {
                drop(sc);
                drop(file);
                storage
                    .remove(&name)
                    .map_err(|e| Error::io("remove", &name, e))?;
                dir_dirty = true;
                continue;
            }
            return Err(Error::corruption(&name, Some(id), 0, "bad segment header"));
        }
        let start = if id < position.segment {
            None
        } else if id == position.segment {
            Some(position.offset)
        } else {
            Some(SEGMENT_HEADER_LEN as u64)
        };
        let mut end = len;
        if let Some(start) = start {
            if start > len {
                return Err(Error::corruption(
                    &name,
                    Some(id),
                    len,
                    format!("segment is shorter than the checkpoint position {start}"),
                ));
            }
            let mut at = start;
            while at < len {
                match step(&mut sc, at, &mut st, id, true)? {
                    Step::Record { len: n } => at += n,
                    Step::Invalid { reason, resume } => {
                        if !is_last {
                            return Err(Error::corruption(&name, Some(id), at, reason));
                        }
                        if let Some(from) = resume {
                            if let Some(valid) = find_valid_record(&mut sc, from, id)? {
                                // A valid record after zeros: earlier
                                // unsynced writes were lost and a later one
                                // survived; nothing after `at` was ever
                                // acknowledged (a sync would have kept the
                                // lost writes too). Anything else is
                                // corruption in the middle.
                                if !all_zero(&mut sc, at, valid, id)? {
                                    return Err(Error::corruption(
                                        &name,
                                        Some(id),
                                        at,
                                        format!("{reason}; a valid record follows at {valid}"),
                                    ));
                                }
                            }
                        }
                        tracing::info!(segment = id, offset = at, %reason, "truncating torn tail");
                        file.set_len(at)
                            .map_err(|e| Error::io("truncate", &name, e))?;
                        end = at;
                        break;
                    }
                }
            }
            // What we recovered may so far live only in the page cache of a
            // process that died; make it durable before building on it.
            file.sync_data().map_err(|e| Error::io("sync", &name, e))?;
        }
        st.next_segment_id = st.next_segment_id.max(id + 1);
        st.segments.insert(
            id,
            Segment {
                file,
                name: name.into(),
                len: end,
                live_bytes: 0,
                map: None,
            },
        );
    }
    if dir_dirty {
        storage
            .sync_dir()
            .map_err(|e| Error::io("sync dir", "<dir>", e))?;
    }
    for (id, e) in st.chunks.iter() {
        if !st.segments.contains_key(&e.segment) {
            return Err(Error::corruption(
                CHECKPOINT_FILE,
                Some(e.segment),
                0,
                format!("chunk {id} points into missing segment {}", e.segment),
            ));
        }
    }
    for (id, e) in st.blobs.iter() {
        if !st.segments.contains_key(&e.segment) {
            return Err(Error::corruption(
                CHECKPOINT_FILE,
                Some(e.segment),
                0,
                format!("blob {id} points into missing segment {}", e.segment),
            ));
        }
    }
    st.recompute_live();
    st.head = st.segments.keys().next_back().copied();
    Ok(st)
}
