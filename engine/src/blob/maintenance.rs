//! Checkpoints, compaction and scrub: the background work of the store.
//! All three are serialised by `Inner::maintenance`; the numbered protocols
//! are in `engine/FORMAT.md` (part 1).
//!
//! Invariants:
//! - A checkpoint is written only after the log prefix it describes is
//!   durable, to a temporary name, synced, renamed and the directory synced.
//! - Compaction removes a segment file only after every live record in it
//!   has a durable copy in the head and a checkpoint that no longer names
//!   the segment is durable.

use std::time::{Duration, Instant};

use crate::blob::record::{self, RecordKind, SEGMENT_HEADER_LEN};
use crate::blob::recovery::{CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use crate::blob::store::lock;
use crate::blob::{
    checkpoint, BlobId, BlobStore, ChunkId, CompactReport, CorruptRecord, Error, ScrubReport,
};
use crate::io::OpenMode;

impl BlobStore {
    /// Writes a checkpoint of the index, so the next open scans only what
    /// is written after this.
    pub fn checkpoint(&self) -> Result<(), Error> {
        let _guard = lock(&self.inner.maintenance)?;
        self.checkpoint_locked()
    }

    pub(crate) fn checkpoint_locked(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.check_writable()?;
        let (bytes, position) = {
            let mut st = inner.write_state()?;
            let position = st.end();
            let segments: Vec<u64> = st.segments.keys().copied().collect();
            let bytes = checkpoint::encode(
                position.segment,
                position.offset,
                st.next_segment_id,
                &segments,
                st.chunks.iter(),
                st.blobs.iter(),
            );
            st.appended_since_checkpoint = 0;
            st.last_checkpoint_bytes = bytes.len() as u64;
            (bytes, position)
        };
        // The checkpoint may only describe durable records.
        inner.wait_durable(position)?;
        let storage = &inner.storage;
        let tmp = storage
            .open(CHECKPOINT_TMP_FILE, OpenMode::CreateOrOpen)
            .map_err(|e| Error::io("open", CHECKPOINT_TMP_FILE, e))?;
        tmp.set_len(0)
            .map_err(|e| Error::io("truncate", CHECKPOINT_TMP_FILE, e))?;
        tmp.write_all_at(&bytes, 0)
            .map_err(|e| Error::io("write", CHECKPOINT_TMP_FILE, e))?;
        if let Err(e) = tmp.sync_data() {
            inner.poison();
            return Err(Error::io("sync", CHECKPOINT_TMP_FILE, e));
        }
        drop(tmp);
        storage
            .rename(CHECKPOINT_TMP_FILE, CHECKPOINT_FILE)
            .map_err(|e| Error::io("rename", CHECKPOINT_FILE, e))?;
        if let Err(e) = storage.sync_dir() {
            inner.poison();
            return Err(Error::io("sync dir", CHECKPOINT_FILE, e));
        }
        inner
            .counters
            .checkpoints
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Rewrites sealed segments whose live fraction is below
    /// `compaction_live_fraction_min`: copies their live records to the
    /// head, syncs, checkpoints, and only then removes them.
    pub fn compact(&self) -> Result<CompactReport, Error> {
        let inner = &self.inner;
        let _guard = lock(&inner.maintenance)?;
        inner.check_writable()?;
        let threshold = inner.config.compaction_live_fraction_min;
        let victims: Vec<(u64, u64)> = {
            let st = inner.read_state()?;
            st.segments
                .iter()
                .filter(|(id, _)| Some(**id) != st.head)
                .filter(|(_, seg)| {
                    let total = seg.len - SEGMENT_HEADER_LEN as u64;
                    total == 0 || (seg.live_bytes as f64) < threshold * total as f64
                })
                .map(|(id, seg)| (*id, seg.len))
                .collect()
        };
        let mut report = CompactReport::default();
        if victims.is_empty() {
            return Ok(report);
        }
        for (victim, _) in &victims {
            self.evacuate(*victim, &mut report)?;
        }
        // 3. The copies are durable.
        let end = inner.read_state()?.end();
        inner.wait_durable(end)?;
        // 4. The index no longer names the victims; checkpoint that.
        let mut files = Vec::new();
        {
            let mut st = inner.write_state()?;
            for (victim, _) in &victims {
                assert!(
                    !st.chunks.values().any(|e| e.segment == *victim)
                        && !st.blobs.values().any(|e| e.segment == *victim),
                    "segment {victim} still referenced after evacuation"
                );
                if let Some(seg) = st.segments.remove(victim) {
                    files.push((*victim, seg.name, seg.len));
                }
                if let Some(cache) = &inner.cache {
                    cache.forget_segment(*victim);
                }
            }
        }
        self.checkpoint_locked()?;
        // 5. Remove the files and make the removal durable.
        for (id, name, len) in files {
            inner
                .storage
                .remove(&name)
                .map_err(|e| Error::io("remove", &name, e))?;
            report.segments_removed.push(id);
            report.bytes_reclaimed += len;
        }
        if let Err(e) = inner.storage.sync_dir() {
            inner.poison();
            return Err(Error::io("sync dir", "<dir>", e));
        }
        inner
            .counters
            .compactions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// Copies every live or pinned record of `victim` to the head and drops
    /// its dead chunks from the index.
    fn evacuate(&self, victim: u64, report: &mut CompactReport) -> Result<(), Error> {
        let inner = &self.inner;
        let chunk_ids: Vec<ChunkId> = {
            let st = inner.read_state()?;
            st.chunks
                .iter()
                .filter(|(_, e)| e.segment == victim)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in chunk_ids {
            let mut st = inner.write_state()?;
            let Some(e) = st.chunks.get(&id).copied() else {
                continue;
            };
            if e.segment != victim {
                continue;
            }
            if e.refcount == 0 && !st.pins.contains_key(&id) {
                st.chunks.remove(&id);
                if let Some(cache) = &inner.cache {
                    cache.remove(&id);
                }
                continue;
            }
            let len = record::record_len(RecordKind::Chunk, e.payload_len);
            let bytes = inner.read_record_locked(&st, e.segment, e.offset, len)?;
            let pos = inner.append(&mut st, &[&bytes])?;
            if let Some(entry) = st.chunks.get_mut(&id) {
                entry.segment = pos.segment;
                entry.offset = pos.offset;
            }
            if e.refcount > 0 {
                move_live(&mut st, victim, pos.segment, len);
            }
            report.records_copied += 1;
            report.bytes_copied += len;
        }
        let blob_ids: Vec<BlobId> = {
            let st = inner.read_state()?;
            st.blobs
                .iter()
                .filter(|(_, e)| e.segment == victim)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in blob_ids {
            let mut st = inner.write_state()?;
            let Some(e) = st.blobs.get(&id).copied() else {
                continue;
            };
            if e.segment != victim {
                continue;
            }
            let len = u64::from(e.record_len);
            let bytes = inner.read_record_locked(&st, e.segment, e.offset, len)?;
            let pos = inner.append(&mut st, &[&bytes])?;
            if let Some(entry) = st.blobs.get_mut(&id) {
                entry.segment = pos.segment;
                entry.offset = pos.offset;
            }
            move_live(&mut st, victim, pos.segment, len);
            report.records_copied += 1;
            report.bytes_copied += len;
        }
        Ok(())
    }

    /// Re-reads and verifies every record the index names (record CRC,
    /// block CRCs, and for chunks the blake3 of the payload against the id),
    /// at most `bytes_per_sec_max` bytes per second.
    pub fn scrub(&self, bytes_per_sec_max: Option<u64>) -> Result<ScrubReport, Error> {
        #[derive(Clone, Copy)]
        enum Item {
            Chunk(ChunkId),
            Blob(BlobId),
        }
        let inner = &self.inner;
        let mut items: Vec<(u64, u64, u64, Item)> = {
            let st = inner.read_state()?;
            let mut v = Vec::with_capacity(st.chunks.len() + st.blobs.len());
            for (id, e) in &st.chunks {
                v.push((
                    e.segment,
                    e.offset,
                    record::record_len(RecordKind::Chunk, e.payload_len),
                    Item::Chunk(*id),
                ));
            }
            for (id, e) in &st.blobs {
                v.push((
                    e.segment,
                    e.offset,
                    u64::from(e.record_len),
                    Item::Blob(*id),
                ));
            }
            v
        };
        items.sort_unstable_by_key(|(s, o, _, _)| (*s, *o));
        let mut report = ScrubReport::default();
        let started = Instant::now();
        for (segment, offset, len, item) in items {
            // Skip what moved or vanished since the list was taken.
            let still_there = {
                let st = inner.read_state()?;
                match item {
                    Item::Chunk(id) => st
                        .chunks
                        .get(&id)
                        .is_some_and(|e| e.segment == segment && e.offset == offset),
                    Item::Blob(id) => st
                        .blobs
                        .get(&id)
                        .is_some_and(|e| e.segment == segment && e.offset == offset),
                }
            };
            if !still_there {
                continue;
            }
            let verdict = match inner.read_record(segment, offset, len) {
                Ok((bytes, _)) => match record::decode(&bytes) {
                    Ok((rec, _)) => match item {
                        Item::Chunk(id) => {
                            let actual = ChunkId::of(rec.payload);
                            if rec.header.key != id.0 {
                                Err("record key is not the chunk id".to_string())
                            } else if actual != id {
                                Err(format!("payload hashes to {actual}"))
                            } else {
                                Ok(())
                            }
                        }
                        Item::Blob(id) => {
                            if rec.header.key != id.0 {
                                Err("record key is not the blob id".to_string())
                            } else {
                                Ok(())
                            }
                        }
                    },
                    Err(e) => Err(e.to_string()),
                },
                Err(Error::Corruption { reason, .. }) => Err(reason),
                // An unreadable sector is a corrupt record to scrub.
                Err(Error::Io { source, .. }) => Err(format!("read failed: {source}")),
                Err(other) => return Err(other),
            };
            report.records_checked += 1;
            report.bytes_checked += len;
            if let Err(reason) = verdict {
                let found = CorruptRecord {
                    segment,
                    offset,
                    reason,
                };
                match item {
                    Item::Chunk(id) => report.corrupt_chunks.push((id, found)),
                    Item::Blob(id) => report.corrupt_blobs.push((id, found)),
                }
            }
            if let Some(rate) = bytes_per_sec_max {
                let due = Duration::from_secs_f64(report.bytes_checked as f64 / rate.max(1) as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
        }
        Ok(report)
    }
}

fn move_live(st: &mut crate::blob::store::State, from: u64, to: u64, bytes: u64) {
    if let Some(seg) = st.segments.get_mut(&from) {
        seg.live_bytes = seg.live_bytes.saturating_sub(bytes);
    }
    if let Some(seg) = st.segments.get_mut(&to) {
        seg.live_bytes += bytes;
    }
}
