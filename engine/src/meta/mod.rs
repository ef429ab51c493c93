//! The log-structured metadata store: keyspaces of ordered byte keys, written
//! through a checksummed write-ahead log with group commit, kept in memory,
//! snapshotted so the log stays short, with a change feed over the log.
//!
//! Layout of the directory (see `engine/FORMAT.md` (part 2) for the bytes):
//! - `meta-<base_lsn:020>.log`: log segments ([`wal`]); the newest is active.
//! - `meta-<lsn:020>.snap`: the state as of `lsn` ([`snapshot`]).
//!
//! Invariants:
//! - A batch is one log record; [`MetaStore::commit`] returns only after the
//!   record is synced, and readers see a batch only after that, so nothing
//!   readable is ever lost by a crash and a batch is visible whole or not at
//!   all.
//! - LSNs are dense: record `n + 1` follows record `n`; recovery rejects gaps.
//! - Only the group-commit leader writes the log, the state and the head LSN;
//!   it holds the writer lock while doing so, so batches apply in LSN order.
//! - A failed sync, or a failed write that cannot be undone, poisons the store:
//!   every later commit fails with [`Error::Poisoned`] until it is reopened.
//! - Keyspaces whose names start with `__` are the store's own (feed
//!   checkpoints); user batches cannot write them and the feed omits them.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::clock::{Clock, Hlc, HlcGenerator};
use crate::io::{OpenMode, Storage, StorageFile};

pub mod feed;
pub mod index;
pub mod snapshot;
pub mod wal;

pub use feed::{Change, ChangeOp, FeedConsumer, FeedLag};
use snapshot::State;
use wal::{DecodeError, Op, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// The keyspace holding feed consumer checkpoints (consumer name -> LSN, u64
/// big-endian).
pub(crate) const FEED_KEYSPACE: &str = "__feed";
/// Prefix of the store's own keyspaces.
pub const INTERNAL_KEYSPACE_PREFIX: &str = "__";

/// Errors of the metadata store (and of the queue built on it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error during {op} on {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("no space left on the device during {op} on {file}")]
    NoSpace { op: &'static str, file: String },
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("the store is poisoned by an earlier I/O failure; reopen it")]
    Poisoned,
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    #[error("condition failed on keyspace {keyspace:?}: the key's value changed")]
    ConditionFailed { keyspace: String, key: Vec<u8> },
    #[error("lease on job {job_id} is no longer held")]
    LeaseLost { job_id: String },
    #[error("unknown job {job_id}")]
    UnknownJob { job_id: String },
    #[error("feed history before lsn {oldest_available_lsn} was compacted away (wanted {requested_lsn}); rebuild from a scan")]
    FeedTruncated {
        requested_lsn: u64,
        oldest_available_lsn: u64,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, file: &str, source: io::Error) -> Error {
        if crate::io::is_no_space(&source) {
            Error::NoSpace {
                op,
                file: file.to_owned(),
            }
        } else {
            Error::Io {
                op,
                file: file.to_owned(),
                source,
            }
        }
    }

    fn invalid(reason: impl Into<String>) -> Error {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    /// A copy for another waiter of the same failed group commit.
    fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, file, source } => Error::Io {
                op,
                file: file.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::NoSpace { op, file } => Error::NoSpace {
                op,
                file: file.clone(),
            },
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            _ => Error::Poisoned,
        }
    }
}

/// Tuning of a [`MetaStore`].
#[derive(Debug, Clone)]
pub struct MetaConfig {
    /// This node's id, stamped on every record (replication settles
    /// conflicts on `(hlc, node_id)`).
    pub node_id: u64,
    /// Values longer than this are zstd-compressed on disk (when that makes
    /// them smaller); `None` turns compression off.
    pub compress_values_over_bytes: Option<usize>,
    /// Once the active log segment holds this many bytes, the next commit
    /// writes a snapshot and starts a new segment.
    pub snapshot_after_log_bytes: u64,
    /// Sealed log segments older than the snapshot are kept for the change
    /// feed while a consumer still needs them, but never more than this many
    /// bytes of them; a consumer behind that gets [`Error::FeedTruncated`].
    pub feed_retention_log_bytes_max: u64,
    /// Most record bytes one group commit writes before it syncs.
    pub group_commit_bytes_max: usize,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            node_id: 1,
            compress_values_over_bytes: Some(4096),
            snapshot_after_log_bytes: 64 * 1024 * 1024,
            feed_retention_log_bytes_max: 1024 * 1024 * 1024,
            group_commit_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// What a failed condition reports.
#[derive(Debug, Clone)]
pub(crate) enum ConditionFailure {
    Conflict,
    LeaseLost { job_id: String },
}

#[derive(Debug, Clone)]
struct Condition {
    keyspace: String,
    key: Bytes,
    expected: Option<Bytes>,
    on_fail: ConditionFailure,
}

/// Puts and deletes across keyspaces that commit atomically, with optional
/// conditions checked at commit time.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<Op>,
    conditions: Vec<Condition>,
    bytes: usize,
    invalid: Option<String>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    /// Sets `key` in `keyspace` to `value`.
    pub fn put(&mut self, keyspace: &str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.check_user_keyspace(keyspace);
        self.put_internal(keyspace, key.as_ref(), value.as_ref());
    }

    /// Removes `key` from `keyspace` (a no-op if absent).
    pub fn delete(&mut self, keyspace: &str, key: impl AsRef<[u8]>) {
        self.check_user_keyspace(keyspace);
        self.delete_internal(keyspace, key.as_ref());
    }

    /// Makes the commit fail with [`Error::ConditionFailed`] unless `key`
    /// holds exactly `expected` (`None`: is absent) when the batch commits,
    /// taking earlier batches of the same group commit into account.
    pub fn require(&mut self, keyspace: &str, key: impl AsRef<[u8]>, expected: Option<&[u8]>) {
        self.require_internal(keyspace, key.as_ref(), expected, ConditionFailure::Conflict);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of puts and deletes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The ops so far, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The value this batch last put for `key`: `Some(None)` when it deletes
    /// it, `None` when the batch does not touch it.
    pub fn pending(&self, keyspace: &str, key: &[u8]) -> Option<Option<&Bytes>> {
        self.ops.iter().rev().find_map(|op| match op {
            Op::Put {
                keyspace: k,
                key: kk,
                value,
            } if k == keyspace && kk.as_ref() == key => Some(Some(value)),
            Op::Delete {
                keyspace: k,
                key: kk,
            } if k == keyspace && kk.as_ref() == key => Some(None),
            _ => None,
        })
    }

    fn check_user_keyspace(&mut self, keyspace: &str) {
        if keyspace.starts_with(INTERNAL_KEYSPACE_PREFIX) && self.invalid.is_none() {
            self.invalid = Some(format!("keyspace {keyspace:?} is reserved"));
        }
    }

    pub(crate) fn put_internal(&mut self, keyspace: &str, key: &[u8], value: &[u8]) {
        if let Err(reason) = wal::validate_op(keyspace, key, Some(value)) {
            self.invalid.get_or_insert_with(|| reason.to_owned());
            return;
        }
        self.bytes += keyspace.len() + key.len() + value.len() + 16;
        self.ops.push(Op::Put {
            keyspace: keyspace.to_owned(),
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        });
    }

    pub(crate) fn delete_internal(&mut self, keyspace: &str, key: &[u8]) {
        if let Err(reason) = wal::validate_op(keyspace, key, None) {
            self.invalid.get_or_insert_with(|| reason.to_owned());
            return;
        }
        self.bytes += keyspace.len() + key.len() + 12;
        self.ops.push(Op::Delete {
            keyspace: keyspace.to_owned(),
            key: Bytes::copy_from_slice(key),
        });
    }

    pub(crate) fn require_internal(
        &mut self,
        keyspace: &str,
        key: &[u8],
        expected: Option<&[u8]>,
        on_fail: ConditionFailure,
    ) {
        self.conditions.push(Condition {
            keyspace: keyspace.to_owned(),
            key: Bytes::copy_from_slice(key),
            expected: expected.map(Bytes::copy_from_slice),
            on_fail,
        });
    }

    fn validate(&self) -> Result<(), Error> {
        if let Some(reason) = &self.invalid {
            return Err(Error::invalid(reason.clone()));
        }
        if self.ops.len() > wal::OPS_PER_BATCH_MAX {
            return Err(Error::invalid("batch has too many ops"));
        }
        if self.bytes + 4 > wal::PAYLOAD_BYTES_MAX {
            return Err(Error::invalid("batch too large"));
        }
        Ok(())
    }
}

/// What a successful commit was assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub lsn: u64,
    pub hlc: Hlc,
}

/// Scan order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// One page of a scan. `cursor` resumes after the last item; `None` means the
/// scan is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<(Bytes, Bytes)>,
    pub cursor: Option<Vec<u8>>,
}

/// Counters for observability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaStats {
    pub records: u64,
    pub keyspaces: u64,
    pub log_bytes: u64,
    pub log_segments: u64,
    pub head_lsn: u64,
    pub snapshot_lsn: u64,
    pub snapshots: u64,
    pub commits: u64,
    pub syncs: u64,
    pub oldest_feed_lsn: u64,
}

/// Most items one scan page may return.
pub const SCAN_LIMIT_MAX: usize = 100_000;
/// Version byte that starts every scan cursor, so the format can change.
const CURSOR_VERSION: u8 = 1;

/// One log segment file.
pub(crate) struct Segment {
    pub(crate) name: String,
    pub(crate) base_lsn: u64,
    pub(crate) file: Arc<dyn StorageFile>,
    /// Bytes known durable: readers (the feed) never read past this.
    pub(crate) durable_end: AtomicU64,
}

struct Writer {
    active: Arc<Segment>,
    end: u64,
    next_lsn: u64,
    scratch: Vec<u8>,
}

struct Pending {
    ticket: u64,
    batch: Batch,
}

#[derive(Default)]
struct CommitQueue {
    pending: Vec<Pending>,
    pending_bytes: usize,
    results: HashMap<u64, Result<Commit, Error>>,
    next_ticket: u64,
    leader: bool,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    syncs: AtomicU64,
    snapshots: AtomicU64,
}

pub(crate) struct Inner {
    storage: Arc<dyn Storage>,
    config: MetaConfig,
    clock: Arc<dyn Clock>,
    hlc: HlcGenerator,
    state: RwLock<State>,
    records: AtomicU64,
    writer: Mutex<Writer>,
    queue: Mutex<CommitQueue>,
    queue_cv: Condvar,
    pub(crate) segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    head_lsn: AtomicU64,
    head_mutex: Mutex<()>,
    head_cv: Condvar,
    poisoned: AtomicBool,
    snapshot_lsn: AtomicU64,
    snapshot_lock: Mutex<()>,
    counters: Counters,
    /// The positions of this process's open feed consumers, for
    /// [`MetaStore::feed_positions`]; a dropped consumer's entry goes at the
    /// next listing or registration.
    pub(crate) feed_positions: Mutex<Vec<(String, std::sync::Weak<AtomicU64>)>>,
}

/// Where one change-feed consumer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPosition {
    /// The consumer's name, as given to [`MetaStore::feed`].
    pub consumer: String,
    /// The LSN of the last change it consumed: the position of its open
    /// handle (the least, if several are open), else its persisted
    /// checkpoint.
    pub position: u64,
    /// Whether a handle of this consumer is open in this process. One that
    /// is not (its thread died, or it runs elsewhere) stands still at its
    /// checkpoint, so its lag grows with every commit.
    pub open: bool,
}

/// The metadata store. Cheap to clone; all methods block.
#[derive(Clone)]
pub struct MetaStore {
    pub(crate) inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is a bug already reported; the data under
    // these locks stays consistent because every update is a single step.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn segment_name(base_lsn: u64) -> String {
    format!("meta-{base_lsn:020}.log")
}

fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix("meta-")?.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn apply_ops(state: &mut State, records: &mut u64, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put {
                keyspace,
                key,
                value,
            } => {
                let ks = match state.get_mut(keyspace.as_str()) {
                    Some(ks) => ks,
                    None => state.entry(keyspace.clone()).or_default(),
                };
                if ks.insert(key.clone(), value.clone()).is_none() {
                    *records += 1;
                }
            }
            Op::Delete { keyspace, key } => {
                if let Some(ks) = state.get_mut(keyspace.as_str()) {
                    if ks.remove(key.as_ref()).is_some() {
                        *records -= 1;
                    }
                    if ks.is_empty() {
                        state.remove(keyspace.as_str());
                    }
                }
            }
        }
    }
}

/// What scanning one segment's bytes found.
struct SegmentScan {
    records: Vec<wal::Record>,
    /// Offset just past the last valid record.
    valid_end: u64,
    /// Why scanning stopped before the end of the data, if it did.
    stopped: Option<DecodeError>,
}

fn scan_segment_bytes(data: &[u8]) -> SegmentScan {
    let mut at = SEGMENT_HEADER_BYTES;
    let mut records = Vec::new();
    let mut stopped = None;
    while at < data.len() {
        match wal::decode_record(&data[at..]) {
            Ok((rec, used)) => {
                records.push(rec);
                at += used;
            }
            Err(e) => {
                stopped = Some(e);
                break;
            }
        }
    }
    SegmentScan {
        records,
        valid_end: at as u64,
        stopped,
    }
}

/// After a bad record at `bad_at` in the newest segment (the last good one
/// being `last_lsn`): is there a valid record later that belongs to a *later*
/// group commit than the bad one (its group began after `last_lsn + 1`)? A
/// later group is written only after the earlier one was synced, so then the
/// bad record was acknowledged: corruption, not a torn tail. Records of the
/// bad record's own group may survive a crash out of order (sectors persist
/// in any order) and prove nothing.
fn later_group_after(data: &[u8], bad_at: usize, last_lsn: u64) -> Option<usize> {
    let mut at = bad_at + 1;
    while at + RECORD_HEADER_BYTES <= data.len() {
        let rest = &data[at..];
        let found = rest
            .windows(4)
            .position(|w| w == wal::RECORD_MAGIC)
            .map(|p| at + p)?;
        if let Ok((rec, _)) = wal::decode_record(&data[found..]) {
            let group_first = rec.lsn.saturating_sub(u64::from(rec.group_index));
            if rec.lsn > last_lsn && group_first > last_lsn + 1 {
                return Some(found);
            }
        }
        at = found + 1;
    }
    None
}

impl MetaStore {
    /// Opens (or creates) the store in `storage`: loads the newest snapshot,
    /// replays the log after it, cuts a torn tail off the last segment.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: MetaConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<MetaStore, Error> {
        let names = storage
            .list()
            .map_err(|e| Error::io("list directory", ".", e))?;
        let mut removed_any = false;
        for name in &names {
            if name.starts_with("meta-") && name.ends_with(".tmp") {
                storage
                    .remove(name)
                    .map_err(|e| Error::io("remove temp file", name, e))?;
                removed_any = true;
            }
        }
        let mut snaps: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_name(n, ".snap"))
            .collect();
        snaps.sort_unstable();
        let mut seg_bases: Vec<u64> = names.iter().filter_map(|n| parse_name(n, ".log")).collect();
        seg_bases.sort_unstable();

        let (mut state, snap_lsn, snap_hlc, mut records) = match snaps.last() {
            Some(&lsn) => {
                let loaded = snapshot::load(&storage, &snapshot::file_name(lsn))?;
                if loaded.lsn != lsn {
                    return Err(Error::Corruption {
                        file: snapshot::file_name(lsn),
                        offset: 8,
                        reason: "snapshot LSN disagrees with its name".into(),
                    });
                }
                (loaded.state, loaded.lsn, loaded.hlc, loaded.records)
            }
            None => (State::new(), 0, Hlc(0), 0),
        };
        let hlc = HlcGenerator::new(snap_hlc);

        // A segment file holding no record (at most a header) that is not
        // the newest is left over from a rotation that failed or crashed
        // half-way; the writer went on in the older segment, so it is
        // removed. The newest one is kept only if the log continues there.
        let mut files = Vec::with_capacity(seg_bases.len());
        for (i, &base) in seg_bases.iter().enumerate() {
            let name = segment_name(base);
            let file = storage
                .open(&name, OpenMode::Existing)
                .map_err(|e| Error::io("open log segment", &name, e))?;
            let len = file
                .len()
                .map_err(|e| Error::io("stat log segment", &name, e))?;
            let empty = len <= SEGMENT_HEADER_BYTES as u64;
            if empty && i + 1 < seg_bases.len() {
                drop(file);
                storage
                    .remove(&name)
                    .map_err(|e| Error::io("remove stray segment", &name, e))?;
                removed_any = true;
                continue;
            }
            files.push((base, name, file, len, empty));
        }
        let mut segments = BTreeMap::new();
        let mut last_lsn = snap_lsn;
        let mut expected_base: Option<u64> = None;
        let mut writer_pos: Option<(Arc<Segment>, u64)> = None;
        if let Some((first, name, ..)) = files.first() {
            if *first > snap_lsn + 1 {
                return Err(Error::Corruption {
                    file: name.clone(),
                    offset: 0,
                    reason: format!("log starts after lsn {} of the snapshot", snap_lsn + 1),
                });
            }
        }
        let n_files = files.len();
        let last_is_empty = files.last().is_some_and(|f| f.4);
        for (i, (base, name, file, len, empty)) in files.into_iter().enumerate() {
            let is_last = i + 1 == n_files;
            // The newest segment with records may end in a torn write.
            let is_tail = is_last || (last_is_empty && i + 2 == n_files);
            if empty {
                // The newest segment, without records.
                if expected_base.is_some_and(|e| e != base) {
                    drop(file);
                    storage
                        .remove(&name)
                        .map_err(|e| Error::io("remove stray segment", &name, e))?;
                    removed_any = true;
                    continue;
                }
                let mut header = [0u8; SEGMENT_HEADER_BYTES];
                let header_ok = len == SEGMENT_HEADER_BYTES as u64
                    && file.read_exact_at(&mut header, 0).is_ok()
                    && wal::decode_segment_header(&header) == Ok(base);
                if !header_ok {
                    // A crash while the segment was being created: write
                    // its header again.
                    file.set_len(0)
                        .map_err(|e| Error::io("truncate log segment", &name, e))?;
                    file.write_all_at(&wal::encode_segment_header(base), 0)
                        .map_err(|e| Error::io("write segment header", &name, e))?;
                    file.sync_data()
                        .map_err(|e| Error::io("sync log segment", &name, e))?;
                }
                let seg = Arc::new(Segment {
                    name,
                    base_lsn: base,
                    file,
                    durable_end: AtomicU64::new(SEGMENT_HEADER_BYTES as u64),
                });
                segments.insert(base, seg.clone());
                writer_pos = Some((seg, base));
                continue;
            }
            if let Some(exp) = expected_base {
                if exp != base {
                    return Err(Error::Corruption {
                        file: name,
                        offset: 0,
                        reason: format!("segment starts at lsn {base}, expected {exp}"),
                    });
                }
            }
            let next_base = seg_bases.iter().copied().find(|&b| b > base);
            let fully_snapshotted = !is_tail && next_base.is_some_and(|n| n <= snap_lsn + 1);
            let mut header = [0u8; SEGMENT_HEADER_BYTES];
            let header_ok = file.read_exact_at(&mut header, 0).is_ok()
                && wal::decode_segment_header(&header) == Ok(base);
            if !header_ok {
                return Err(Error::Corruption {
                    file: name,
                    offset: 0,
                    reason: "bad segment header".into(),
                });
            }
            let end;
            if fully_snapshotted {
                end = len;
                expected_base = next_base;
            } else {
                let len_usize = usize::try_from(len).map_err(|_| Error::Corruption {
                    file: name.clone(),
                    offset: 0,
                    reason: "segment larger than memory".into(),
                })?;
                let data = file
                    .read_bytes_at(0, len_usize)
                    .map_err(|e| Error::io("read log segment", &name, e))?;
                let scan = scan_segment_bytes(&data);
                let mut seg_next = base;
                for rec in &scan.records {
                    if rec.lsn != seg_next {
                        return Err(Error::Corruption {
                            file: name.clone(),
                            offset: 0,
                            reason: format!(
                                "record lsn {} where {} was expected",
                                rec.lsn, seg_next
                            ),
                        });
                    }
                    seg_next += 1;
                    if rec.lsn > snap_lsn {
                        apply_ops(&mut state, &mut records, &rec.ops);
                        last_lsn = rec.lsn;
                    }
                    hlc.observe(rec.hlc);
                }
                if let Some(err) = &scan.stopped {
                    let bad_at = scan.valid_end as usize;
                    let torn = is_tail
                        && later_group_after(&data, bad_at, seg_next.saturating_sub(1)).is_none();
                    if !torn {
                        return Err(Error::Corruption {
                            file: name.clone(),
                            offset: scan.valid_end,
                            reason: format!("bad log record: {err}"),
                        });
                    }
                    // Torn tail: the batch being written when the process
                    // stopped was never acknowledged. Cut it off so later
                    // appends do not leave stale bytes behind them.
                    file.set_len(scan.valid_end)
                        .map_err(|e| Error::io("truncate torn tail", &name, e))?;
                    file.sync_data()
                        .map_err(|e| Error::io("sync log segment", &name, e))?;
                }
                end = scan.valid_end;
                expected_base = Some(seg_next);
                if is_tail {
                    let seg = Arc::new(Segment {
                        name: name.clone(),
                        base_lsn: base,
                        file: file.clone(),
                        durable_end: AtomicU64::new(end),
                    });
                    segments.insert(base, seg.clone());
                    writer_pos = Some((seg, seg_next));
                    continue;
                }
            }
            segments.insert(
                base,
                Arc::new(Segment {
                    name,
                    base_lsn: base,
                    file,
                    durable_end: AtomicU64::new(end),
                }),
            );
        }
        if last_lsn < snap_lsn {
            last_lsn = snap_lsn;
        }
        let (active, next_lsn) = match writer_pos {
            Some((seg, next)) => {
                if next != last_lsn + 1 {
                    return Err(Error::Corruption {
                        file: seg.name.clone(),
                        offset: 0,
                        reason: format!(
                            "log ends at lsn {} before the snapshot's {}",
                            next - 1,
                            snap_lsn
                        ),
                    });
                }
                (seg, next)
            }
            None => {
                let seg = create_segment(storage.as_ref(), last_lsn + 1)?;
                segments.insert(seg.base_lsn, seg.clone());
                removed_any = false;
                (seg, last_lsn + 1)
            }
        };
        if removed_any {
            storage
                .sync_dir()
                .map_err(|e| Error::io("sync directory", ".", e))?;
        }
        let end = active.durable_end.load(Ordering::SeqCst);
        let inner = Inner {
            storage,
            config,
            clock,
            hlc,
            state: RwLock::new(state),
            records: AtomicU64::new(records),
            writer: Mutex::new(Writer {
                active,
                end,
                next_lsn,
                scratch: Vec::new(),
            }),
            queue: Mutex::new(CommitQueue::default()),
            queue_cv: Condvar::new(),
            segments: RwLock::new(segments),
            head_lsn: AtomicU64::new(last_lsn),
            head_mutex: Mutex::new(()),
            head_cv: Condvar::new(),
            poisoned: AtomicBool::new(false),
            snapshot_lsn: AtomicU64::new(snap_lsn),
            snapshot_lock: Mutex::new(()),
            counters: Counters::default(),
            feed_positions: Mutex::new(Vec::new()),
        };
        let store = MetaStore {
            inner: Arc::new(inner),
        };
        // Older snapshots are garbage once the newest loaded.
        for &lsn in snaps.iter().rev().skip(1) {
            let name = snapshot::file_name(lsn);
            store
                .inner
                .storage
                .remove(&name)
                .map_err(|e| Error::io("remove old snapshot", &name, e))?;
        }
        Ok(store)
    }

    /// Commits `batch` atomically and durably. Concurrent callers share one
    /// write and one sync (group commit). An empty batch without conditions
    /// commits nothing and returns the head.
    pub fn commit(&self, batch: Batch) -> Result<Commit, Error> {
        batch.validate()?;
        if batch.is_empty() && batch.conditions.is_empty() {
            return Ok(Commit {
                lsn: self.head_lsn(),
                hlc: self.inner.hlc.last(),
            });
        }
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let inner = &self.inner;
        let mut q = lock(&inner.queue);
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending_bytes += batch.bytes;
        q.pending.push(Pending { ticket, batch });
        let mut led = false;
        loop {
            if let Some(result) = q.results.remove(&ticket) {
                drop(q);
                if led {
                    self.maybe_snapshot();
                }
                return result;
            }
            if !q.leader {
                q.leader = true;
                led = true;
                let mut take = 0usize;
                let mut bytes = 0usize;
                for p in &q.pending {
                    if take > 0 && bytes + p.batch.bytes > inner.config.group_commit_bytes_max {
                        break;
                    }
                    bytes += p.batch.bytes;
                    take += 1;
                }
                let group: Vec<Pending> = q.pending.drain(..take).collect();
                q.pending_bytes -= bytes;
                drop(q);
                let results = self.run_group(group);
                q = lock(&inner.queue);
                q.results.extend(results);
                q.leader = false;
                inner.queue_cv.notify_all();
                continue;
            }
            q = inner.queue_cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Writes one group of batches as consecutive records, syncs once, then
    /// applies them. Runs with leadership, so alone.
    fn run_group(&self, group: Vec<Pending>) -> Vec<(u64, Result<Commit, Error>)> {
        let inner = &self.inner;
        let mut out = Vec::with_capacity(group.len());
        if inner.poisoned.load(Ordering::SeqCst) {
            return group
                .into_iter()
                .map(|p| (p.ticket, Err(Error::Poisoned)))
                .collect();
        }
        let mut w = lock(&inner.writer);
        let w = &mut *w;
        let mut accepted: Vec<(u64, Commit, Batch)> = Vec::new();
        w.scratch.clear();
        {
            let state = read(&inner.state);
            let mut overlay: HashMap<(&str, &[u8]), Option<&Bytes>> = HashMap::new();
            let mut next_lsn = w.next_lsn;
            for p in &group {
                let failed = p.batch.conditions.iter().find(|c| {
                    let current = match overlay.get(&(c.keyspace.as_str(), c.key.as_ref())) {
                        Some(v) => v.cloned(),
                        None => state
                            .get(c.keyspace.as_str())
                            .and_then(|ks| ks.get(c.key.as_ref()))
                            .cloned(),
                    };
                    current != c.expected
                });
                if let Some(c) = failed {
                    let err = match &c.on_fail {
                        ConditionFailure::Conflict => Error::ConditionFailed {
                            keyspace: c.keyspace.clone(),
                            key: c.key.to_vec(),
                        },
                        ConditionFailure::LeaseLost { job_id } => Error::LeaseLost {
                            job_id: job_id.clone(),
                        },
                    };
                    out.push((p.ticket, Err(err)));
                    continue;
                }
                if p.batch.is_empty() {
                    // Conditions only: they held, nothing to write.
                    out.push((
                        p.ticket,
                        Ok(Commit {
                            lsn: next_lsn - 1,
                            hlc: inner.hlc.last(),
                        }),
                    ));
                    continue;
                }
                for op in &p.batch.ops {
                    let v = match op {
                        Op::Put { value, .. } => Some(value),
                        Op::Delete { .. } => None,
                    };
                    overlay.insert((op.keyspace(), op.key().as_ref()), v);
                }
                let hlc = inner.hlc.next(inner.clock.as_ref());
                wal::encode_record(
                    &mut w.scratch,
                    next_lsn,
                    hlc,
                    inner.config.node_id,
                    u32::try_from(accepted.len()).unwrap_or(u32::MAX),
                    &p.batch.ops,
                    inner.config.compress_values_over_bytes,
                );
                accepted.push((p.ticket, Commit { lsn: next_lsn, hlc }, Batch::default()));
                next_lsn += 1;
            }
        }
        if accepted.is_empty() {
            return out;
        }
        // Move the accepted batches' ops out of the group for applying.
        let mut by_ticket: HashMap<u64, Batch> =
            group.into_iter().map(|p| (p.ticket, p.batch)).collect();
        for a in &mut accepted {
            if let Some(b) = by_ticket.remove(&a.0) {
                a.2 = b;
            }
        }
        let seg = w.active.clone();
        let write_result = seg.file.write_all_at(&w.scratch, w.end);
        if let Err(e) = write_result {
            let err = Error::io("append to log", &seg.name, e);
            // Undo the partial append so the next group starts clean; if
            // even that fails, the tail is unknown: poison.
            let undone = seg.file.set_len(w.end).is_ok();
            if !undone {
                inner.poisoned.store(true, Ordering::SeqCst);
            }
            for (ticket, _, _) in &accepted {
                out.push((*ticket, Err(err.duplicate())));
            }
            return out;
        }
        inner.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = seg.file.sync_data() {
            inner.poisoned.store(true, Ordering::SeqCst);
            let err = Error::io("sync log", &seg.name, e);
            for (ticket, _, _) in &accepted {
                out.push((*ticket, Err(err.duplicate())));
            }
            return out;
        }
        w.end += w.scratch.len() as u64;
        w.next_lsn += accepted.len() as u64;
        seg.durable_end.store(w.end, Ordering::SeqCst);
        let last_lsn = w.next_lsn - 1;
        {
            let mut state = write(&inner.state);
            let mut records = inner.records.load(Ordering::Relaxed);
            for (_, _, batch) in &accepted {
                apply_ops(&mut state, &mut records, &batch.ops);
            }
            inner.records.store(records, Ordering::Relaxed);
        }
        {
            let _g = lock(&inner.head_mutex);
            inner.head_lsn.store(last_lsn, Ordering::SeqCst);
            inner.head_cv.notify_all();
        }
        inner
            .counters
            .commits
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        if w.scratch.capacity() > 4 * inner.config.group_commit_bytes_max.max(1 << 20) {
            w.scratch = Vec::new();
        }
        for (ticket, commit, _) in accepted {
            out.push((ticket, Ok(commit)));
        }
        out
    }

    fn maybe_snapshot(&self) {
        let active_bytes = lock(&self.inner.writer).end;
        if active_bytes < self.inner.config.snapshot_after_log_bytes {
            return;
        }
        // A failure here leaves the old snapshot and log in place, which is
        // still a correct store; the next commit tries again, and a failed
        // sync has already poisoned the store.
        if let Err(error) = self.snapshot_inner(false) {
            tracing::warn!(%error, "automatic snapshot failed");
        }
    }

    /// Writes a snapshot of the current state, starts a new log segment and
    /// deletes the segments and snapshots it makes unnecessary.
    pub fn snapshot_now(&self) -> Result<(), Error> {
        self.snapshot_inner(true)
    }

    fn snapshot_inner(&self, wait: bool) -> Result<(), Error> {
        let inner = &self.inner;
        let _snap_guard = if wait {
            lock(&inner.snapshot_lock)
        } else {
            match inner.snapshot_lock.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(()),
            }
        };
        if inner.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        // Step 1: with commits held off, start a new segment and take a
        // consistent copy of the state (Bytes clones share their buffers).
        let (state, lsn, hlc) = {
            let mut w = lock(&inner.writer);
            let lsn = w.next_lsn - 1;
            if lsn == inner.snapshot_lsn.load(Ordering::SeqCst)
                && w.end == SEGMENT_HEADER_BYTES as u64
            {
                return Ok(());
            }
            if w.end > SEGMENT_HEADER_BYTES as u64 {
                let seg = match create_segment(inner.storage.as_ref(), w.next_lsn) {
                    Ok(seg) => seg,
                    Err(e) => {
                        return Err(e);
                    }
                };
                write(&inner.segments).insert(seg.base_lsn, seg.clone());
                w.active = seg;
                w.end = SEGMENT_HEADER_BYTES as u64;
            }
            let state = read(&inner.state).clone();
            (state, lsn, inner.hlc.last())
        };
        // Step 2: write it durably.
        snapshot::write(
            inner.storage.as_ref(),
            &state,
            lsn,
            hlc,
            inner.config.compress_values_over_bytes,
        )?;
        drop(state);
        let previous = inner.snapshot_lsn.swap(lsn, Ordering::SeqCst);
        inner.counters.snapshots.fetch_add(1, Ordering::Relaxed);
        // Step 3: remove what the snapshot replaced.
        let mut removed = Vec::new();
        if previous != lsn && previous > 0 {
            removed.push(snapshot::file_name(previous));
        }
        let bound = match self.oldest_checkpoint() {
            Some(ck) => ck.min(lsn),
            None => lsn,
        };
        {
            let mut segs = write(&inner.segments);
            let bases: Vec<u64> = segs.keys().copied().collect();
            // Sealed segments wholly at or below `lsn`, oldest first, with
            // the last LSN each holds.
            let mut sealed: Vec<(u64, u64, u64)> = Vec::new();
            for pair in bases.windows(2) {
                let last = pair[1] - 1;
                if last <= lsn {
                    let bytes = segs
                        .get(&pair[0])
                        .map(|s| s.durable_end.load(Ordering::SeqCst))
                        .unwrap_or(0);
                    sealed.push((pair[0], last, bytes));
                }
            }
            let mut retained_bytes: u64 = sealed.iter().map(|s| s.2).sum();
            for (base, last, bytes) in sealed {
                let over_cap = retained_bytes > inner.config.feed_retention_log_bytes_max;
                if last <= bound || over_cap {
                    if let Some(seg) = segs.remove(&base) {
                        removed.push(seg.name.clone());
                    }
                    retained_bytes -= bytes;
                } else {
                    break;
                }
            }
        }
        for name in &removed {
            inner
                .storage
                .remove(name)
                .map_err(|e| Error::io("remove compacted file", name, e))?;
        }
        if !removed.is_empty() {
            inner
                .storage
                .sync_dir()
                .map_err(|e| Error::io("sync directory", ".", e))?;
        }
        Ok(())
    }

    /// The smallest persisted feed checkpoint, if any consumer exists.
    fn oldest_checkpoint(&self) -> Option<u64> {
        let state = read(&self.inner.state);
        state
            .get(FEED_KEYSPACE)
            .and_then(|ks| ks.values().filter_map(|v| decode_checkpoint(v)).min())
    }

    /// The value of `key` in `keyspace`, if any.
    pub fn get(&self, keyspace: &str, key: &[u8]) -> Result<Option<Bytes>, Error> {
        let state = read(&self.inner.state);
        Ok(state.get(keyspace).and_then(|ks| ks.get(key)).cloned())
    }

    /// Number of keys in `keyspace`.
    pub fn keyspace_len(&self, keyspace: &str) -> u64 {
        let state = read(&self.inner.state);
        state.get(keyspace).map(|ks| ks.len() as u64).unwrap_or(0)
    }

    /// Keys starting with `prefix`, in `dir` order, `limit` per page.
    pub fn scan_prefix(
        &self,
        keyspace: &str,
        prefix: &[u8],
        dir: Direction,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, Error> {
        let end = index::prefix_successor(prefix);
        let end_bound = match &end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        self.scan_range(
            keyspace,
            Bound::Included(prefix),
            end_bound,
            dir,
            cursor,
            limit,
        )
    }

    /// Keys within `(start, end)`, in `dir` order, `limit` per page; pass the
    /// returned cursor back (with the same bounds) for the next page.
    pub fn scan_range(
        &self,
        keyspace: &str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        dir: Direction,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, Error> {
        if limit == 0 || limit > SCAN_LIMIT_MAX {
            return Err(Error::invalid(format!(
                "scan limit must be 1..={SCAN_LIMIT_MAX}"
            )));
        }
        let after: Option<&[u8]> = match cursor {
            None => None,
            Some(c) => match c.split_first() {
                Some((&CURSOR_VERSION, rest)) => Some(rest),
                _ => return Err(Error::invalid("malformed scan cursor")),
            },
        };
        let (mut lo, mut hi) = (start, end);
        if let Some(after) = after {
            match dir {
                Direction::Forward => lo = tighter_lower(lo, after),
                Direction::Reverse => hi = tighter_upper(hi, after),
            }
        }
        if !range_nonempty(lo, hi) {
            return Ok(ScanPage {
                items: Vec::new(),
                cursor: None,
            });
        }
        let state = read(&self.inner.state);
        let Some(ks) = state.get(keyspace) else {
            return Ok(ScanPage {
                items: Vec::new(),
                cursor: None,
            });
        };
        let range = ks.range(lo, hi);
        let mut items: Vec<(Bytes, Bytes)> = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        let mut push = |(k, v): (&snapshot::Key, &Bytes)| -> bool {
            if items.len() == limit {
                more = true;
                return false;
            }
            items.push((k.to_bytes(), v.clone()));
            true
        };
        match dir {
            Direction::Forward => {
                for kv in range {
                    if !push(kv) {
                        break;
                    }
                }
            }
            Direction::Reverse => {
                for kv in range.rev() {
                    if !push(kv) {
                        break;
                    }
                }
            }
        }
        let cursor = if more {
            items.last().map(|(k, _)| {
                let mut c = Vec::with_capacity(k.len() + 1);
                c.push(CURSOR_VERSION);
                c.extend_from_slice(k);
                c
            })
        } else {
            None
        };
        Ok(ScanPage { items, cursor })
    }

    /// The LSN of the newest committed batch (0 when empty).
    pub fn head_lsn(&self) -> u64 {
        self.inner.head_lsn.load(Ordering::SeqCst)
    }

    /// The next HLC value, from the same generator commits use: unique and
    /// increasing within this store, and above everything already logged.
    pub fn next_hlc(&self) -> Hlc {
        self.inner.hlc.next(self.inner.clock.as_ref())
    }

    /// The store's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The node id stamped on records.
    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// Whether an I/O failure has poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> MetaStats {
        let inner = &self.inner;
        let (log_bytes, log_segments, oldest) = {
            let segs = read(&inner.segments);
            let bytes = segs
                .values()
                .map(|s| s.durable_end.load(Ordering::SeqCst))
                .sum();
            let oldest = segs.keys().next().copied().unwrap_or(0);
            (bytes, segs.len() as u64, oldest)
        };
        let keyspaces = read(&inner.state).len() as u64;
        MetaStats {
            records: inner.records.load(Ordering::Relaxed),
            keyspaces,
            log_bytes,
            log_segments,
            head_lsn: self.head_lsn(),
            snapshot_lsn: inner.snapshot_lsn.load(Ordering::SeqCst),
            snapshots: inner.counters.snapshots.load(Ordering::Relaxed),
            commits: inner.counters.commits.load(Ordering::Relaxed),
            syncs: inner.counters.syncs.load(Ordering::Relaxed),
            oldest_feed_lsn: oldest,
        }
    }

    /// A change-feed consumer named `consumer`, resuming after its persisted
    /// checkpoint (a new consumer starts at LSN 0 and is registered, so
    /// compaction keeps its history).
    pub fn feed(&self, consumer: &str) -> Result<FeedConsumer, Error> {
        FeedConsumer::open(self.clone(), consumer)
    }

    /// Every change-feed consumer, by name, and where it stands (the head
    /// LSN minus a position is how far that consumer is behind): every
    /// consumer with a persisted checkpoint, and every handle open in this
    /// process. An open consumer reports its handle's own position, which
    /// moves with each poll (checkpoints may be written more rarely); with
    /// several handles of one name open, the least.
    pub fn feed_positions(&self) -> Vec<FeedPosition> {
        let mut by_name: BTreeMap<String, FeedPosition> = BTreeMap::new();
        {
            let state = read(&self.inner.state);
            for (name, lsn) in state
                .get(FEED_KEYSPACE)
                .into_iter()
                .flat_map(|ks| ks.iter())
            {
                let (Ok(name), Some(position)) =
                    (std::str::from_utf8(name.as_slice()), decode_checkpoint(lsn))
                else {
                    continue;
                };
                by_name.insert(
                    name.to_owned(),
                    FeedPosition {
                        consumer: name.to_owned(),
                        position,
                        open: false,
                    },
                );
            }
        }
        let mut registered = lock(&self.inner.feed_positions);
        registered.retain(|(_, p)| p.strong_count() > 0);
        for (name, handle) in registered.iter() {
            let Some(handle) = handle.upgrade() else {
                continue;
            };
            let position = handle.load(Ordering::Relaxed);
            match by_name.get_mut(name) {
                Some(known) if known.open => known.position = known.position.min(position),
                Some(known) => {
                    known.position = position;
                    known.open = true;
                }
                None => {
                    let open = FeedPosition {
                        consumer: name.clone(),
                        position,
                        open: true,
                    };
                    by_name.insert(name.clone(), open);
                }
            }
        }
        by_name.into_values().collect()
    }

    /// Lists an open consumer's position for [`MetaStore::feed_positions`];
    /// entries of dropped handles go first, so the list stays as long as the
    /// number of open handles.
    pub(crate) fn register_feed_position(&self, consumer: &str, position: &Arc<AtomicU64>) {
        let mut registered = lock(&self.inner.feed_positions);
        registered.retain(|(_, p)| p.strong_count() > 0);
        registered.push((consumer.to_owned(), Arc::downgrade(position)));
    }

    /// Blocks until the head LSN exceeds `lsn` or `deadline` passes; returns
    /// the head.
    pub(crate) fn wait_for_head_above(&self, lsn: u64, deadline: std::time::Instant) -> u64 {
        let inner = &self.inner;
        let mut g = lock(&inner.head_mutex);
        loop {
            let head = inner.head_lsn.load(Ordering::SeqCst);
            if head > lsn {
                return head;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return head;
            }
            g = inner
                .head_cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub(crate) fn persist_checkpoint(&self, consumer: &str, lsn: u64) -> Result<(), Error> {
        let mut b = Batch::new();
        b.put_internal(FEED_KEYSPACE, consumer.as_bytes(), &lsn.to_be_bytes());
        self.commit(b).map(|_| ())
    }

    pub(crate) fn checkpoint_of(&self, consumer: &str) -> Option<u64> {
        let v = self.get(FEED_KEYSPACE, consumer.as_bytes()).ok()??;
        decode_checkpoint(&v)
    }
}

/// A feed checkpoint's LSN as stored (u64 big-endian), if well-formed.
fn decode_checkpoint(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

fn create_segment(storage: &dyn Storage, base_lsn: u64) -> Result<Arc<Segment>, Error> {
    let name = segment_name(base_lsn);
    let file = storage
        .open(&name, OpenMode::CreateOrOpen)
        .map_err(|e| Error::io("create log segment", &name, e))?;
    let result = file
        .set_len(0)
        .map_err(|e| Error::io("truncate log segment", &name, e))
        .and_then(|()| {
            file.write_all_at(&wal::encode_segment_header(base_lsn), 0)
                .map_err(|e| Error::io("write segment header", &name, e))
        })
        .and_then(|()| {
            file.sync_data()
                .map_err(|e| Error::io("sync log segment", &name, e))
        })
        .and_then(|()| {
            storage
                .sync_dir()
                .map_err(|e| Error::io("sync directory", &name, e))
        });
    if let Err(e) = result {
        // Leave no half-made segment behind if possible; recovery removes
        // one that survives anyway (it holds no records).
        drop(file);
        let _ = storage.remove(&name);
        return Err(e);
    }
    Ok(Arc::new(Segment {
        name,
        base_lsn,
        file,
        durable_end: AtomicU64::new(SEGMENT_HEADER_BYTES as u64),
    }))
}

fn tighter_lower<'a>(lo: Bound<&'a [u8]>, after: &'a [u8]) -> Bound<&'a [u8]> {
    match lo {
        Bound::Included(s) | Bound::Excluded(s) if s > after => lo,
        Bound::Excluded(s) if s == after => lo,
        _ => Bound::Excluded(after),
    }
}

fn tighter_upper<'a>(hi: Bound<&'a [u8]>, before: &'a [u8]) -> Bound<&'a [u8]> {
    match hi {
        Bound::Included(e) | Bound::Excluded(e) if e < before => hi,
        Bound::Excluded(e) if e == before => hi,
        _ => Bound::Excluded(before),
    }
}

/// Whether `(lo, hi)` can hold a key; `BTreeMap::range` panics on inverted
/// or empty-excluded ranges, so they are answered here.
fn range_nonempty(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    match (lo, hi) {
        (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
        (Bound::Included(s), Bound::Included(e)) => s <= e,
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s < e
        }
        (Bound::Excluded(s), Bound::Excluded(e)) => s < e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_guard_matches_btreemap_rules() {
        assert!(range_nonempty(Bound::Included(b"a"), Bound::Included(b"a")));
        assert!(!range_nonempty(
            Bound::Excluded(b"a"),
            Bound::Excluded(b"a")
        ));
        assert!(!range_nonempty(
            Bound::Included(b"b"),
            Bound::Excluded(b"a")
        ));
        assert_eq!(
            tighter_lower(Bound::Included(b"a"), b"c"),
            Bound::Excluded(&b"c"[..])
        );
        assert_eq!(
            tighter_lower(Bound::Included(b"d"), b"c"),
            Bound::Included(&b"d"[..])
        );
        assert_eq!(
            tighter_upper(Bound::Unbounded, b"c"),
            Bound::Excluded(&b"c"[..])
        );
    }

    #[test]
    fn names_parse_only_in_canonical_form() {
        assert_eq!(parse_name(&segment_name(42), ".log"), Some(42));
        assert_eq!(parse_name(&snapshot::file_name(7), ".snap"), Some(7));
        assert_eq!(parse_name("meta-42.log", ".log"), None);
        assert_eq!(
            parse_name(&format!("{}.tmp", snapshot::file_name(7)), ".snap"),
            None
        );
    }
}
