//! The change feed: committed batches in LSN order, read from the retained
//! log segments, with durable per-consumer checkpoints.
//!
//! A consumer's checkpoint is a record in the store's own `__feed` keyspace
//! (consumer name -> LSN, u64 big-endian), written by an ordinary commit, so
//! it is exactly as durable as any data. Compaction keeps every segment a
//! checkpoint still needs (up to `feed_retention_log_bytes_max`).
//!
//! Invariants:
//! - [`FeedConsumer::poll`] returns changes with strictly increasing LSNs,
//!   starting right after [`FeedConsumer::position`], and never one that is
//!   not durable (it reads only up to each segment's durable end).
//! - Changes whose ops all touch `__`-keyspaces (checkpoints themselves) are
//!   consumed silently: position moves past them, nothing is returned.
//! - A consumer never skips a change silently: if the change it needs was
//!   compacted away, it gets [`Error::FeedTruncated`].
//!
//! Delivery: a consumer that applies changes and then checkpoints sees each
//! change at least once across crashes (a crash between apply and checkpoint
//! replays the changes after the checkpoint). Exactly-once effect follows when
//! applying is idempotent keyed by LSN, for instance storing the applied LSN
//! in the same transaction as the effect and skipping changes at or below it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wal::{self, DecodeError, Op, SEGMENT_HEADER_BYTES};
use super::{read, Error, MetaStore, Segment, INTERNAL_KEYSPACE_PREFIX};
use crate::clock::Hlc;

/// Bytes read from a segment at a time.
const READ_CHUNK_BYTES: u64 = 256 * 1024;
/// Longest consumer name.
const CONSUMER_NAME_BYTES_MAX: usize = 256;

/// One committed batch as the feed delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub lsn: u64,
    pub hlc: Hlc,
    pub node_id: u64,
    pub ops: Vec<ChangeOp>,
}

/// One put or delete of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOp {
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

/// How far a consumer is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedLag {
    /// Head LSN minus the consumer's position.
    pub lsn_behind: u64,
    /// Age of the oldest change not yet consumed (by its HLC's physical
    /// time), 0 when caught up.
    pub oldest_unconsumed_age_ms: u64,
}

struct Cursor {
    seg: Arc<Segment>,
    offset: u64,
    /// LSN of the record at `offset`.
    next_lsn: u64,
}

/// A named reader of the change feed.
pub struct FeedConsumer {
    store: MetaStore,
    name: String,
    position: u64,
    /// `position` as [`MetaStore::feed_positions`] reports it.
    published: Arc<AtomicU64>,
    cursor: Option<Cursor>,
}

impl std::fmt::Debug for FeedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedConsumer")
            .field("name", &self.name)
            .field("position", &self.position)
            .finish()
    }
}

fn to_change(rec: wal::Record) -> Option<Change> {
    let ops: Vec<ChangeOp> = rec
        .ops
        .into_iter()
        .filter(|op| !op.keyspace().starts_with(INTERNAL_KEYSPACE_PREFIX))
        .map(|op| match op {
            Op::Put {
                keyspace,
                key,
                value,
            } => ChangeOp::Put {
                keyspace,
                key,
                value,
            },
            Op::Delete { keyspace, key } => ChangeOp::Delete { keyspace, key },
        })
        .collect();
    if ops.is_empty() {
        return None;
    }
    Some(Change {
        lsn: rec.lsn,
        hlc: rec.hlc,
        node_id: rec.node_id,
        ops,
    })
}

impl FeedConsumer {
    pub(crate) fn open(store: MetaStore, name: &str) -> Result<FeedConsumer, Error> {
        if name.is_empty() || name.len() > CONSUMER_NAME_BYTES_MAX {
            return Err(Error::InvalidInput {
                reason: "consumer name must be 1..=256 bytes".into(),
            });
        }
        let position = match store.checkpoint_of(name) {
            Some(lsn) => lsn,
            None => {
                store.persist_checkpoint(name, 0)?;
                0
            }
        };
        let published = Arc::new(AtomicU64::new(position));
        store.register_feed_position(name, &published);
        Ok(FeedConsumer {
            store,
            name: name.to_owned(),
            position,
            published,
            cursor: None,
        })
    }

    /// Up to `max_changes` changes after the current position, waiting up to
    /// `wait` for the first one when there is none.
    pub fn poll(&mut self, max_changes: usize, wait: Duration) -> Result<Vec<Change>, Error> {
        if max_changes == 0 {
            return Err(Error::InvalidInput {
                reason: "max_changes must be at least 1".into(),
            });
        }
        let deadline = Instant::now() + wait;
        loop {
            let head = self.store.head_lsn();
            if head > self.position {
                let changes = self.read_available(max_changes, head)?;
                if !changes.is_empty() {
                    return Ok(changes);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            self.store.wait_for_head_above(self.position, deadline);
        }
    }

    fn locate(&self, lsn: u64) -> Result<Cursor, Error> {
        let segs = read(&self.store.inner.segments);
        let oldest = segs.keys().next().copied().unwrap_or(0);
        let seg = match segs.range(..=lsn).next_back() {
            Some((_, seg)) if oldest <= lsn => seg.clone(),
            _ => {
                return Err(Error::FeedTruncated {
                    requested_lsn: lsn,
                    oldest_available_lsn: oldest,
                })
            }
        };
        Ok(Cursor {
            offset: SEGMENT_HEADER_BYTES as u64,
            next_lsn: seg.base_lsn,
            seg,
        })
    }

    fn read_available(&mut self, max: usize, head: u64) -> Result<Vec<Change>, Error> {
        let mut out = Vec::new();
        while out.len() < max && self.position < head {
            let want = self.position + 1;
            let mut cur = match self.cursor.take() {
                Some(c) if c.next_lsn <= want => c,
                _ => self.locate(want)?,
            };
            let durable = cur.seg.durable_end.load(Ordering::SeqCst);
            if cur.offset >= durable {
                let next = read(&self.store.inner.segments).get(&cur.next_lsn).cloned();
                match next {
                    Some(seg) if seg.base_lsn != cur.seg.base_lsn => {
                        self.cursor = Some(Cursor {
                            offset: SEGMENT_HEADER_BYTES as u64,
                            next_lsn: seg.base_lsn,
                            seg,
                        });
                        continue;
                    }
                    _ => {
                        // The head moved but this segment's end is not
                        // published yet; come back on the next poll.
                        self.cursor = Some(cur);
                        break;
                    }
                }
            }
            let mut len = (durable - cur.offset).min(READ_CHUNK_BYTES);
            let mut buf = read_at(&cur.seg, cur.offset, len)?;
            let mut at = 0usize;
            while at < buf.len() && out.len() < max {
                match wal::decode_record(&buf[at..]) {
                    Ok((rec, used)) => {
                        if rec.lsn != cur.next_lsn {
                            return Err(Error::Corruption {
                                file: cur.seg.name.clone(),
                                offset: cur.offset,
                                reason: format!(
                                    "record lsn {} where {} was expected",
                                    rec.lsn, cur.next_lsn
                                ),
                            });
                        }
                        at += used;
                        cur.offset += used as u64;
                        cur.next_lsn += 1;
                        if rec.lsn > self.position {
                            self.position = rec.lsn;
                            self.published.store(rec.lsn, Ordering::Relaxed);
                            if let Some(change) = to_change(rec) {
                                out.push(change);
                            }
                        }
                    }
                    Err(DecodeError::Truncated { needed_bytes, .. })
                        if at > 0 || (needed_bytes as u64) > len =>
                    {
                        if at == 0 {
                            // One record larger than the chunk.
                            len = needed_bytes as u64;
                            if cur.offset + len > durable {
                                return Err(corrupt(&cur, "record runs past the durable end"));
                            }
                            buf = read_at(&cur.seg, cur.offset, len)?;
                            continue;
                        }
                        break;
                    }
                    Err(e) => return Err(corrupt(&cur, &format!("bad log record: {e}"))),
                }
            }
            self.cursor = Some(cur);
        }
        Ok(out)
    }

    /// Persists `lsn` as this consumer's checkpoint: after a restart,
    /// [`MetaStore::feed`] resumes after it. Durable on return.
    pub fn checkpoint(&mut self, lsn: u64) -> Result<(), Error> {
        if lsn > self.store.head_lsn() {
            return Err(Error::InvalidInput {
                reason: format!("checkpoint {lsn} is beyond the head"),
            });
        }
        self.store.persist_checkpoint(&self.name, lsn)
    }

    /// The LSN of the last change consumed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Moves the position (not the checkpoint) to `lsn`, for instance to the
    /// head LSN read before rebuilding from a full scan.
    pub fn reset_to(&mut self, lsn: u64) -> Result<(), Error> {
        if lsn > self.store.head_lsn() {
            return Err(Error::InvalidInput {
                reason: format!("position {lsn} is beyond the head"),
            });
        }
        self.position = lsn;
        self.published.store(lsn, Ordering::Relaxed);
        self.cursor = None;
        Ok(())
    }

    /// How far behind the head this consumer is.
    pub fn lag(&self) -> FeedLag {
        let head = self.store.head_lsn();
        let behind = head.saturating_sub(self.position);
        if behind == 0 {
            return FeedLag::default();
        }
        let age = self
            .next_record_hlc()
            .map(|hlc| {
                self.store
                    .clock()
                    .now_ms()
                    .saturating_sub(hlc.physical_ms())
            })
            .unwrap_or(0);
        FeedLag {
            lsn_behind: behind,
            oldest_unconsumed_age_ms: age,
        }
    }

    /// The HLC of the record at `position + 1`, hopping over record headers.
    fn next_record_hlc(&self) -> Option<Hlc> {
        let want = self.position + 1;
        let (seg, mut offset, mut lsn) = match &self.cursor {
            Some(c) if c.next_lsn <= want => (c.seg.clone(), c.offset, c.next_lsn),
            _ => {
                let c = self.locate(want).ok()?;
                (c.seg, c.offset, c.next_lsn)
            }
        };
        loop {
            if offset >= seg.durable_end.load(Ordering::SeqCst) {
                // The wanted record is in a later segment: start of it.
                let next = read(&self.store.inner.segments).get(&lsn).cloned()?;
                return FeedConsumer::header_at(&next, SEGMENT_HEADER_BYTES as u64).map(|h| h.hlc);
            }
            let h = FeedConsumer::header_at(&seg, offset)?;
            if lsn == want {
                return Some(h.hlc);
            }
            offset += h.total_bytes() as u64;
            lsn += 1;
        }
    }

    fn header_at(seg: &Segment, offset: u64) -> Option<wal::RecordHeader> {
        let mut h = [0u8; wal::RECORD_HEADER_BYTES];
        seg.file.read_exact_at(&mut h, offset).ok()?;
        wal::decode_header(&h).ok()
    }
}

fn read_at(seg: &Segment, offset: u64, len: u64) -> Result<Bytes, Error> {
    let len = usize::try_from(len).map_err(|_| Error::Corruption {
        file: seg.name.clone(),
        offset,
        reason: "read larger than memory".into(),
    })?;
    seg.file
        .read_bytes_at(offset, len)
        .map_err(|e| Error::io("read log for the feed", &seg.name, e))
}

fn corrupt(cur: &Cursor, reason: &str) -> Error {
    Error::Corruption {
        file: cur.seg.name.clone(),
        offset: cur.offset,
        reason: reason.to_owned(),
    }
}
