//! The fault-injecting backend: an in-memory disk for crash and error tests.
//!
//! [`FaultStorage`] models a directory on a disk with a volatile cache in
//! front of it, at the granularity the durability contract in [`super`]
//! speaks of:
//!
//! - Each file (an *inode*) holds `current` bytes (what reads see) and
//!   `durable` bytes (what survives power loss). [`StorageFile::sync_data`]
//!   copies current to durable, length included.
//! - The directory holds a current and a durable map from name to inode.
//!   [`Storage::sync_dir`] copies current to durable. A file's data and its
//!   directory entry become durable separately: data synced into a file whose
//!   creation was never dir-synced is lost in a crash, and a rename that was
//!   not dir-synced is undone (the old name comes back, with the inode's
//!   durable data).
//! - [`FaultStorage::crash`] is power loss: every inode reachable from the
//!   durable directory gets its durable content back, the current directory
//!   becomes the durable one, every other inode is gone, and every
//!   [`StorageFile`] handle opened before the crash fails from then on, so a
//!   crashed engine instance cannot write on. A pending
//!   [`FaultStorage::fail_nth`] is cancelled by a crash (it belonged to the
//!   crashed run); a space limit stays (the disk did not grow).
//!
//! Operations: every method call on the [`Storage`] (except `kind`, which
//! cannot fail) or on a live [`StorageFile`] counts as one operation, a
//! vectored write included; calls on handles from before a crash fail
//! without counting. The test-control methods (`crash`, `flip_bit`, ...)
//! are not operations.
//!
//! Space: the bytes in use are the current lengths of all inodes that are
//! linked in the current directory or still open through a live handle, as
//! on a POSIX file system, where removing a file that is still open frees
//! nothing until the last handle is dropped.
//!
//! Invariants: an inode's content is only ever changed by a successful
//! operation, a crash, or [`FaultStorage::flip_bit`]; a failed operation
//! changes nothing (a failed write applies nothing, a failed sync makes
//! nothing durable).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{check_name, BackendKind, OpenMode, Storage, StorageFile};

/// The error an injected fault reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: a media or transport error.
    Eio,
    /// `ENOSPC`: the disk is full.
    Enospc,
}

impl FaultKind {
    fn error(self) -> io::Error {
        match self {
            FaultKind::Eio => io::Error::from_raw_os_error(libc::EIO),
            FaultKind::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

type InodeId = u64;

#[derive(Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Live handles open on this inode.
    open_handles: u64,
    /// The newest write to this inode since its last `sync_data` (and since
    /// its last `set_len`), kept so [`FaultStorage::crash_tearing`] can let a
    /// prefix of it survive.
    unsynced_write: Option<UnsyncedWrite>,
    /// The range covering every byte written since the last sync, and the
    /// shortest length the file had since then: all `sync_data` must copy,
    /// so syncing an appended log costs the append, not the whole file.
    dirty: Option<(usize, usize)>,
    shortest_len_since_sync: usize,
}

impl Inode {
    fn write(&mut self, offset: usize, data: &[u8]) {
        apply_write(&mut self.current, offset as u64, data);
        let end = offset + data.len();
        self.dirty = Some(match self.dirty {
            None => (offset, end),
            Some((start, stop)) => (start.min(offset), stop.max(end)),
        });
    }

    fn set_len(&mut self, len: usize) {
        self.current.resize(len, 0);
        self.shortest_len_since_sync = self.shortest_len_since_sync.min(len);
        // A tear is only modelled for a write that is the newest change to
        // its file; after a length change the write is simply lost.
        self.unsynced_write = None;
    }

    /// Makes the current content durable. Bytes past the shortest length
    /// since the last sync that were not written since are zeros (a length
    /// extension), so truncating there and zero-extending, then copying the
    /// written range, reproduces the current content.
    fn sync(&mut self) {
        self.durable.truncate(self.shortest_len_since_sync);
        self.durable.resize(self.current.len(), 0);
        if let Some((start, end)) = self.dirty.take() {
            let end = end.min(self.current.len());
            if start < end {
                self.durable[start..end].copy_from_slice(&self.current[start..end]);
            }
        }
        // Checked only on small files, to keep syncs of big ones cheap.
        debug_assert!(self.current.len() > 1 << 16 || self.durable == self.current);
        self.shortest_len_since_sync = self.current.len();
        self.unsynced_write = None;
    }

    /// Power loss: back to the durable content.
    fn reset_to_durable(&mut self) {
        self.current = self.durable.clone();
        self.dirty = None;
        self.shortest_len_since_sync = self.current.len();
        self.unsynced_write = None;
    }
}

struct UnsyncedWrite {
    /// Position in the order of all writes, to find the newest one.
    sequence: u64,
    offset: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct State {
    inodes: HashMap<InodeId, Inode>,
    dir_current: BTreeMap<String, InodeId>,
    dir_durable: BTreeMap<String, InodeId>,
    next_inode: InodeId,
    /// Bumped by every crash; a handle from an older epoch is dead.
    epoch: u64,
    ops: u64,
    /// Absolute operation index that fails, and how.
    pending_fault: Option<(u64, FaultKind)>,
    space_limit_bytes: Option<u64>,
    /// Writes applied so far, numbering [`UnsyncedWrite::sequence`].
    writes: u64,
}

impl State {
    /// Counts one operation and reports the injected fault, if it is this one.
    fn begin_op(&mut self) -> io::Result<()> {
        let index = self.ops;
        self.ops += 1;
        match self.pending_fault {
            Some((at, kind)) if at == index => {
                self.pending_fault = None;
                Err(kind.error())
            }
            _ => Ok(()),
        }
    }

    fn bytes_in_use(&self) -> u64 {
        let mut linked: Vec<InodeId> = self.dir_current.values().copied().collect();
        linked.sort_unstable();
        linked.dedup();
        let mut total: u64 = 0;
        for (id, inode) in &self.inodes {
            if inode.open_handles > 0 || linked.binary_search(id).is_ok() {
                total += inode.current.len() as u64;
            }
        }
        total
    }

    /// ENOSPC if growing the bytes in use by `grow_bytes` would pass the limit.
    fn check_space(&self, grow_bytes: u64) -> io::Result<()> {
        if let Some(limit) = self.space_limit_bytes {
            if grow_bytes > 0 && self.bytes_in_use().saturating_add(grow_bytes) > limit {
                return Err(FaultKind::Enospc.error());
            }
        }
        Ok(())
    }

    /// Forgets an inode nothing refers to any more.
    fn collect(&mut self, id: InodeId) {
        let referenced = self
            .inodes
            .get(&id)
            .is_some_and(|inode| inode.open_handles > 0)
            || self.dir_current.values().any(|&v| v == id)
            || self.dir_durable.values().any(|&v| v == id);
        if !referenced {
            self.inodes.remove(&id);
        }
    }

    fn crash(&mut self, tear_seed: Option<u64>) {
        // The newest unsynced write of all, whether or not its file survives.
        let torn = self
            .inodes
            .iter_mut()
            .filter_map(|(&id, inode)| {
                let write = inode.unsynced_write.take()?;
                Some((id, write))
            })
            .max_by_key(|(_, write)| write.sequence);
        self.epoch += 1;
        self.pending_fault = None;
        self.dir_current = self.dir_durable.clone();
        let live: Vec<InodeId> = self.dir_durable.values().copied().collect();
        self.inodes.retain(|id, _| live.contains(id));
        for inode in self.inodes.values_mut() {
            inode.reset_to_durable();
            inode.open_handles = 0;
        }
        if let (Some(seed), Some((id, write))) = (tear_seed, torn) {
            if let Some(inode) = self.inodes.get_mut(&id) {
                let kept = (splitmix64(seed) % (write.data.len() as u64 + 1)) as usize;
                apply_write(&mut inode.durable, write.offset, &write.data[..kept]);
                inode.reset_to_durable();
            }
        }
    }
}

/// One step of SplitMix64: a well-mixed pseudo-random number from a seed.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn apply_write(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let start = offset as usize;
    let end = start + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(data);
}

/// Converts a file offset to an index into memory, or `FileTooLarge`.
fn mem_offset(offset: u64, len: usize) -> io::Result<usize> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| start.checked_add(len))
        .filter(|&end| end <= isize::MAX as usize)
        .ok_or_else(|| io::Error::from(io::ErrorKind::FileTooLarge))
}

/// An in-memory directory with injectable crashes, tears and errors. Clones
/// share the same disk.
#[derive(Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<State>>,
}

impl FaultStorage {
    /// An empty in-memory directory.
    pub fn new() -> FaultStorage {
        FaultStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed
        // in a way that matters to a test (each change is applied after all
        // checks), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulated power loss: every file returns to its durably synced content
    /// and length; creations, renames and removals not followed by `sync_dir`
    /// are undone; every [`StorageFile`] handle opened before the crash fails
    /// all further calls. A pending [`FaultStorage::fail_nth`] is cancelled.
    /// Reopen the engine on a clone of the same `FaultStorage` to restart.
    pub fn crash(&self) {
        self.lock().crash(None);
    }

    /// Like [`FaultStorage::crash`], but the most recent write not yet synced
    /// (if any, and if its file survives) survives as a prefix whose length,
    /// from none to all of it, is drawn from `seed`; the rest of the unsynced
    /// data is lost.
    pub fn crash_tearing(&self, seed: u64) {
        self.lock().crash(Some(seed));
    }

    /// Makes the operation `n` calls from now (0 = the very next call) fail
    /// once with `kind`, replacing any pending fault.
    pub fn fail_nth(&self, n: u64, kind: FaultKind) {
        let mut state = self.lock();
        let at = state.ops.saturating_add(n);
        state.pending_fault = Some((at, kind));
    }

    /// Models a full disk: every write or `set_len` that would raise the bytes
    /// in use above `limit` fails with `ENOSPC` and applies nothing. `None`
    /// removes the limit. Freeing space (remove, `set_len`) lets writes
    /// succeed again.
    pub fn set_space_limit(&self, limit: Option<u64>) {
        self.lock().space_limit_bytes = limit;
    }

    /// Cancels a pending [`FaultStorage::fail_nth`].
    pub fn clear_faults(&self) {
        self.lock().pending_fault = None;
    }

    /// Operations performed so far, to loop a fault over each operation of a
    /// workload.
    pub fn op_count(&self) -> u64 {
        self.lock().ops
    }

    /// Flips bit `bit` (0..8) of byte `offset` of `name`, in both its current
    /// and (where the durable content reaches that far) its durable content,
    /// like bit rot on the media. `NotFound` if there is no such file,
    /// `InvalidInput` if `offset` is past its current length or `bit > 7`.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> io::Result<()> {
        let mut state = self.lock();
        let id = *state
            .dir_current
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let inode = state
            .inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let index = usize::try_from(offset).unwrap_or(usize::MAX);
        if bit > 7 || index >= inode.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "flip_bit: offset {offset} bit {bit} outside {name:?} of {} bytes",
                    inode.current.len()
                ),
            ));
        }
        inode.current[index] ^= 1 << bit;
        if let Some(byte) = inode.durable.get_mut(index) {
            *byte ^= 1 << bit;
        }
        Ok(())
    }

    /// The current length of `name`, or `None` if there is no such file.
    pub fn file_len(&self, name: &str) -> Option<u64> {
        let state = self.lock();
        let id = state.dir_current.get(name)?;
        state.inodes.get(id).map(|inode| inode.current.len() as u64)
    }
}

impl Storage for FaultStorage {
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = self.lock();
        state.begin_op()?;
        check_name(name)?;
        let existing = state.dir_current.get(name).copied();
        let id = match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{name:?} already exists"),
                ))
            }
            (Some(id), _) => id,
            (None, OpenMode::Existing) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name:?} not found"),
                ))
            }
            (None, OpenMode::CreateOrOpen | OpenMode::CreateNew) => {
                let id = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(id, Inode::default());
                state.dir_current.insert(name.to_owned(), id);
                id
            }
        };
        let inode = state
            .inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::other("fault storage: directory entry without inode"))?;
        inode.open_handles += 1;
        let epoch = state.epoch;
        Ok(Arc::new(FaultFile {
            state: Arc::clone(&self.state),
            inode: id,
            epoch,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        check_name(name)?;
        let id = state.dir_current.remove(name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{name:?} not found"))
        })?;
        state.collect(id);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        check_name(from)?;
        check_name(to)?;
        let id = *state.dir_current.get(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{from:?} not found"))
        })?;
        if from == to {
            return Ok(());
        }
        state.dir_current.remove(from);
        if let Some(replaced) = state.dir_current.insert(to.to_owned(), id) {
            state.collect(replaced);
        }
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut state = self.lock();
        state.begin_op()?;
        Ok(state.dir_current.keys().cloned().collect())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.begin_op()?;
        let dropped: Vec<InodeId> = state.dir_durable.values().copied().collect();
        state.dir_durable = state.dir_current.clone();
        for id in dropped {
            state.collect(id);
        }
        Ok(())
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Fault
    }
}

/// One open file of a [`FaultStorage`]; dead after a crash.
struct FaultFile {
    state: Arc<Mutex<State>>,
    inode: InodeId,
    epoch: u64,
}

impl FaultFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the state, fails if this handle predates a crash, and counts
    /// the operation.
    fn begin(&self) -> io::Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        if state.epoch != self.epoch {
            return Err(io::Error::other(
                "fault storage: file handle opened before a simulated crash",
            ));
        }
        state.begin_op()?;
        Ok(state)
    }

    fn write_locked(&self, state: &mut State, data: Vec<u8>, offset: u64) -> io::Result<()> {
        let end = mem_offset(offset, data.len())? as u64;
        if data.is_empty() {
            // Like pwrite of nothing: no change, not even to the length.
            return Ok(());
        }
        let old_len = state
            .inodes
            .get(&self.inode)
            .map(|inode| inode.current.len() as u64)
            .ok_or_else(|| io::Error::other("fault storage: open file without inode"))?;
        state.check_space(end.saturating_sub(old_len))?;
        let sequence = state.writes;
        state.writes += 1;
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            // mem_offset above proved the offset fits in memory.
            inode.write(offset as usize, &data);
            inode.unsynced_write = Some(UnsyncedWrite {
                sequence,
                offset,
                data,
            });
        }
        Ok(())
    }
}

impl StorageFile for FaultFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let state = self.begin()?;
        let inode = state
            .inodes
            .get(&self.inode)
            .ok_or_else(|| io::Error::other("fault storage: open file without inode"))?;
        let start = mem_offset(offset, 0)?;
        let end = mem_offset(offset, buf.len())?;
        if end > inode.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "failed to fill whole buffer",
            ));
        }
        buf.copy_from_slice(&inode.current[start..end]);
        Ok(())
    }

    fn read_bytes_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.begin()?;
        self.write_locked(&mut state, buf.to_vec(), offset)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut state = self.begin()?;
        self.write_locked(&mut state, bufs.concat(), offset)
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.begin()?;
        state
            .inodes
            .get(&self.inode)
            .map(|inode| inode.current.len() as u64)
            .ok_or_else(|| io::Error::other("fault storage: open file without inode"))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.begin()?;
        let new_len = mem_offset(len, 0)?;
        let old_len = state
            .inodes
            .get(&self.inode)
            .map(|inode| inode.current.len())
            .ok_or_else(|| io::Error::other("fault storage: open file without inode"))?;
        state.check_space((new_len as u64).saturating_sub(old_len as u64))?;
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            inode.set_len(new_len);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.begin()?;
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            inode.sync();
        }
        Ok(())
    }
}

impl Drop for FaultFile {
    fn drop(&mut self) {
        let mut state = self.lock();
        if state.epoch != self.epoch {
            return;
        }
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            inode.open_handles = inode.open_handles.saturating_sub(1);
        }
        state.collect(self.inode);
    }
}
