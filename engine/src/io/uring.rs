//! The io_uring backend: file reads, writes and `fdatasync` go through
//! io_uring submission queues instead of one system call each.
//!
//! Every thread that does I/O gets its own ring, created lazily on its first
//! operation ([`RING_ENTRIES`] entries) and dropped when the thread exits, so
//! concurrent threads never contend on a ring and no lock is taken. Each
//! operation is synchronous to its caller: it pushes its entries, submits
//! them with one `io_uring_enter` and waits for all their completions before
//! returning. [`StorageFile::write_all_vectored_at`] submits all its buffers
//! as one batch (up to [`RING_ENTRIES`] entries per submission), so a segment
//! record's header, payload and trailer cost one system call.
//!
//! Directory operations (`open`, `rename`, `remove`, `list`, `sync_dir`) and
//! the metadata calls `len` and `set_len` use ordinary std calls: they are
//! rare, and io_uring gains nothing on them.
//!
//! Invariants:
//! - No entry is ever left in flight when an operation returns or unwinds:
//!   the kernel writes into (or reads from) the caller's buffer only while
//!   the call that borrowed it is still running. If waiting for completions
//!   fails while entries are in flight, the process aborts rather than free
//!   a buffer the kernel may still touch.
//! - A ring whose state is uncertain (submission failed) is discarded, so
//!   stale entries are never submitted later; the thread makes a new one.
//! - Short reads and writes are resubmitted for the remainder; a read that
//!   reaches the end of the file reports `UnexpectedEof`, a write that
//!   makes no progress reports `WriteZero`.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::portable::{list_dir, sync_dir, PortableStorage};
use super::{BackendKind, OpenMode, Storage, StorageFile};

/// Submission queue entries per thread-local ring; the kernel sizes the
/// completion queue at twice this, so one batch always fits.
pub const RING_ENTRIES: u32 = 64;

/// The largest single read or write entry. Linux transfers at most
/// 0x7fff_f000 bytes per call; larger buffers are split into several entries.
const OP_BYTES_MAX: usize = 1 << 30;

/// How many times a failing wait is retried while entries are in flight
/// before giving up and aborting.
const WAIT_RETRIES_MAX: u32 = 1000;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// A directory whose files are read and written through io_uring.
pub struct UringStorage {
    dir: PortableStorage,
}

impl UringStorage {
    /// Opens `dir` (creating it if needed) after proving that the kernel lets
    /// this process create a ring, run a NOP through it and use the read,
    /// write and fsync operations. Returns `Err` when io_uring is refused
    /// (`ENOSYS`, `EPERM` under seccomp or `io_uring_disabled`, too old a
    /// kernel), so [`super::open_storage`] can fall back.
    pub fn open(dir: &Path) -> io::Result<Self> {
        probe_kernel()?;
        Ok(UringStorage {
            dir: PortableStorage::open(dir)?,
        })
    }
}

/// Creates a ring on this thread, checks the opcodes and runs a NOP. The
/// ring stays as this thread's ring.
fn probe_kernel() -> io::Result<()> {
    with_ring(|ring| {
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Read::CODE, "read"),
            (opcode::Write::CODE, "write"),
            (opcode::Fsync::CODE, "fsync"),
            (opcode::Nop::CODE, "nop"),
        ] {
            if !probe.is_supported(code) {
                return Err(RingError::Op(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks the {name} operation on this kernel"),
                )));
            }
        }
        let mut result = [0i32];
        run_batch(ring, &[opcode::Nop::new().build()], &mut result)?;
        if result[0] < 0 {
            return Err(RingError::Op(io::Error::from_raw_os_error(-result[0])));
        }
        Ok(())
    })
}

/// Runs `f` on this thread's ring, creating it first if needed, and
/// discards the ring if `f` reports it broken.
fn with_ring<R>(f: impl FnOnce(&mut IoUring) -> Result<R, RingError>) -> io::Result<R> {
    RING.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| {
            io::Error::other("io_uring ring re-entered on one thread (a bug in the backend)")
        })?;
        let ring = match &mut *slot {
            Some(ring) => ring,
            empty => empty.insert(IoUring::new(RING_ENTRIES)?),
        };
        match f(ring) {
            Ok(value) => Ok(value),
            Err(RingError::Op(error)) => Err(error),
            Err(RingError::Broken(error)) => {
                // No entry of ours is in flight (run_batch guarantees it),
                // and the unsubmitted ones die with the ring.
                *slot = None;
                Err(error)
            }
        }
    })
}

/// Why an operation on a ring failed.
enum RingError {
    /// The operation failed; the ring is fine.
    Op(io::Error),
    /// The ring's queues are in an uncertain state; it must be discarded.
    Broken(io::Error),
}

impl From<io::Error> for RingError {
    fn from(error: io::Error) -> Self {
        RingError::Op(error)
    }
}

fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// Pushes `entries`, submits them in one call and waits until every one has
/// completed, storing entry `i`'s result (bytes or `-errno`) in
/// `results[i]`. Never returns while an entry is in flight.
fn run_batch(
    ring: &mut IoUring,
    entries: &[squeue::Entry],
    results: &mut [i32],
) -> Result<(), RingError> {
    assert!(entries.len() == results.len());
    assert!(entries.len() <= RING_ENTRIES as usize);
    // Completions left over from an earlier batch would be a bug; the ring
    // is always drained before a batch returns.
    assert!(ring.completion().is_empty());
    let tagged: Vec<squeue::Entry> = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| entry.clone().user_data(i as u64))
        .collect();
    // SAFETY: every buffer these entries point to is borrowed by our caller
    // for the whole of this call, and this function does not return (or
    // unwind) until the kernel has posted a completion for every entry, so
    // the buffers outlive the operations. The file descriptors are likewise
    // borrowed for the call.
    unsafe { ring.submission().push_multiple(&tagged) }.map_err(|_| {
        RingError::Op(io::Error::other(
            "io_uring submission queue unexpectedly full",
        ))
    })?;
    let total = tagged.len();
    let mut completed = 0usize;
    let mut failed_waits = 0u32;
    while completed < total {
        if let Err(error) = ring.submit_and_wait(total - completed) {
            if !is_transient(&error) {
                let unsubmitted = ring.submission().len();
                let in_flight = (total - completed).saturating_sub(unsubmitted);
                if in_flight == 0 {
                    return Err(RingError::Broken(error));
                }
                failed_waits += 1;
                if failed_waits > WAIT_RETRIES_MAX {
                    // Returning would free buffers the kernel may still
                    // write into; nothing safe is left to do.
                    eprintln!("io_uring: cannot wait for in-flight operations: {error}; aborting");
                    std::process::abort();
                }
            }
        }
        for cqe in ring.completion() {
            let cqe: cqueue::Entry = cqe;
            if let Some(slot) = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| results.get_mut(i))
            {
                *slot = cqe.result();
                completed += 1;
            }
        }
    }
    Ok(())
}

/// The direction of a transfer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// One contiguous part of a transfer still to do.
struct Piece {
    addr: *mut u8,
    len: usize,
    offset: u64,
}

/// Appends `buf`'s pieces (at most [`OP_BYTES_MAX`] bytes each) starting at
/// file offset `offset`.
fn split_into(pieces: &mut Vec<Piece>, addr: *mut u8, len: usize, offset: u64) {
    let mut done = 0usize;
    while done < len {
        let part = (len - done).min(OP_BYTES_MAX);
        pieces.push(Piece {
            addr: addr.wrapping_add(done),
            len: part,
            offset: offset + done as u64,
        });
        done += part;
    }
}

/// Transfers every piece completely, batching up to [`RING_ENTRIES`]
/// entries per submission and resubmitting the remainder of short
/// transfers.
fn transfer(fd: RawFd, direction: Direction, mut pending: Vec<Piece>) -> io::Result<()> {
    with_ring(|ring| {
        let mut first_error: Option<io::Error> = None;
        while !pending.is_empty() && first_error.is_none() {
            let take = pending.len().min(RING_ENTRIES as usize);
            let batch: Vec<Piece> = pending.drain(..take).collect();
            let entries: Vec<squeue::Entry> = batch
                .iter()
                .map(|piece| {
                    // OP_BYTES_MAX keeps every piece within u32.
                    let len = piece.len as u32;
                    match direction {
                        Direction::Read => opcode::Read::new(types::Fd(fd), piece.addr, len)
                            .offset(piece.offset)
                            .build(),
                        Direction::Write => opcode::Write::new(types::Fd(fd), piece.addr, len)
                            .offset(piece.offset)
                            .build(),
                    }
                })
                .collect();
            let mut results = vec![0i32; entries.len()];
            run_batch(ring, &entries, &mut results)?;
            for (piece, &result) in batch.into_iter().zip(&results) {
                let done = match usize::try_from(result) {
                    Err(_) => {
                        first_error.get_or_insert(io::Error::from_raw_os_error(-result));
                        continue;
                    }
                    Ok(0) => {
                        first_error.get_or_insert(match direction {
                            Direction::Read => io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "failed to fill whole buffer",
                            ),
                            Direction::Write => io::Error::new(
                                io::ErrorKind::WriteZero,
                                "failed to write whole buffer",
                            ),
                        });
                        continue;
                    }
                    Ok(done) => done.min(piece.len),
                };
                if done < piece.len {
                    pending.push(Piece {
                        addr: piece.addr.wrapping_add(done),
                        len: piece.len - done,
                        offset: piece.offset + done as u64,
                    });
                }
            }
        }
        match first_error {
            Some(error) => Err(RingError::Op(error)),
            None => Ok(()),
        }
    })
}

impl Storage for UringStorage {
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(UringFile {
            file: self.dir.open_std(name, mode)?,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.path_of(name)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.path_of(from)?, self.dir.path_of(to)?)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        list_dir(self.dir.dir())
    }

    fn sync_dir(&self) -> io::Result<()> {
        sync_dir(self.dir.dir())
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }
}

/// One file read and written through io_uring.
pub struct UringFile {
    file: File,
}

impl StorageFile for UringFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut pieces = Vec::new();
        split_into(&mut pieces, buf.as_mut_ptr(), buf.len(), offset);
        transfer(self.file.as_raw_fd(), Direction::Read, pieces)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_vectored_at(&[buf], offset)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut pieces = Vec::with_capacity(bufs.len());
        let mut at = offset;
        for buf in bufs {
            // The kernel only reads through this pointer (IORING_OP_WRITE);
            // it is `*mut` because the piece type serves reads too.
            split_into(&mut pieces, buf.as_ptr().cast_mut(), buf.len(), at);
            at += buf.len() as u64;
        }
        transfer(self.file.as_raw_fd(), Direction::Write, pieces)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        with_ring(|ring| {
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            let mut result = [0i32];
            run_batch(ring, &[entry], &mut result)?;
            if result[0] < 0 {
                return Err(RingError::Op(io::Error::from_raw_os_error(-result[0])));
            }
            Ok(())
        })
    }
}
