//! The io_uring backend: file reads go through io_uring submission queues;
//! writes and `fdatasync` are plain system calls.
//!
//! Every thread that reads gets its own ring, created lazily on its first
//! read ([`RING_ENTRIES`] entries) and dropped when the thread exits, so
//! concurrent threads never contend on a ring and no lock is taken. Each
//! read is synchronous to its caller: it pushes its entries, submits them
//! with one `io_uring_enter` and waits for all their completions before
//! returning. A read of page-cached bytes completes inside that call.
//!
//! Why writes do not use the ring: the engine's writes are synchronous and
//! one at a time (each record is appended under the store's state lock, and
//! group commit already shares one `fdatasync` among many writers), so
//! there is never a batch to submit. And io_uring cannot complete them
//! inline: a buffered write to ext4 and every fsync are handed to a kernel
//! worker thread, which costs two context switches per operation. Measured
//! with `cargo bench -p spindle-benches --bench blob -- blob_64_writers`
//! (64 writers of durable puts): through the ring, 4 KiB puts ran at
//! 9-18 k/s and 256 KiB puts at 3.6 k/s; as `pwritev` and `fdatasync`,
//! 45 k/s and 5.3-5.8 k/s. Both backends share [`super::vectored`] for a
//! record's header, payload and trailer in one `pwritev`.
//!
//! Directory operations (`open`, `rename`, `remove`, `list`, `sync_dir`) and
//! the metadata calls `len` and `set_len` use ordinary std calls: they are
//! rare, and io_uring gains nothing on them.
//!
//! Invariants:
//! - No entry is ever left in flight when an operation returns or unwinds:
//!   the kernel writes into the caller's buffer only while
//!   the call that borrowed it is still running. If waiting for completions
//!   fails while entries are in flight, the process aborts rather than free
//!   a buffer the kernel may still touch.
//! - A ring whose state is uncertain (submission failed) is discarded, so
//!   stale entries are never submitted later; the thread makes a new one.
//! - A thread that cannot create its ring (say, out of locked memory on an
//!   old kernel) gets that error from each of its reads; the probe in
//!   [`UringStorage::open`] makes this unlikely but cannot rule it out.
//! - Short reads are resubmitted for the remainder; a read that reaches the
//!   end of the file reports `UnexpectedEof`.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::portable::{list_dir, sync_dir, PortableStorage};
use super::vectored::write_all_vectored;
use super::{BackendKind, OpenMode, Storage, StorageFile};

/// Submission queue entries per thread-local ring; the kernel sizes the
/// completion queue at twice this, so one batch always fits.
pub const RING_ENTRIES: u32 = 64;

/// The largest single read entry. Linux transfers at most
/// 0x7fff_f000 bytes per call; larger buffers are split into several entries.
const OP_BYTES_MAX: usize = 1 << 30;

/// How many failed waits in a row are retried before giving up: the ring
/// is discarded if none of the batch is in flight, else the process aborts.
const WAIT_RETRIES_MAX: u32 = 1000;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// A directory whose files are read through io_uring.
pub struct UringStorage {
    dir: PortableStorage,
}

impl UringStorage {
    /// Opens `dir` (creating it if needed) after proving that the kernel lets
    /// this process create a ring, run a NOP through it and use the read
    /// operation. Returns `Err` when io_uring is refused
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
        for (code, name) in [(opcode::Read::CODE, "read"), (opcode::Nop::CODE, "nop")] {
            if !probe.is_supported(code) {
                return Err(RingError::Op(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks the {name} operation on this kernel"),
                )));
            }
        }
        let mut result = [0i32];
        run_batch(
            ring,
            &[opcode::Nop::new().build().user_data(0)],
            &mut result,
        )?;
        if result[0] < 0 {
            return Err(RingError::Op(io::Error::from_raw_os_error(-result[0])));
        }
        Ok(())
    })
}

/// Creates a ring for one thread. Where the kernel has them (6.1 and
/// later), the ring is set up for a single issuer with deferred task work,
/// the cheapest mode for a ring only its own thread uses (completions are
/// run when that thread waits, which it always does), and to keep
/// submitting a batch past an entry that fails to submit. Older kernels
/// reject the flags with `EINVAL` and get a plain ring.
fn new_ring() -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .build(RING_ENTRIES);
    match tuned {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => IoUring::new(RING_ENTRIES),
        other => other,
    }
}

/// Runs `f` on this thread's ring, creating it first if needed, and
/// discards the ring if `f` reports it broken.
fn with_ring<R>(f: impl FnOnce(&mut IoUring) -> Result<R, RingError>) -> io::Result<R> {
    // try_with: a thread-local destructor doing I/O after this thread's ring
    // is gone gets an error, not a panic.
    let outcome = RING.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| {
            io::Error::other("io_uring ring re-entered on one thread (a bug in the backend)")
        })?;
        let ring = match &mut *slot {
            Some(ring) => ring,
            empty => empty.insert(new_ring()?),
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
    });
    outcome.unwrap_or_else(|_| {
        Err(io::Error::other(
            "io_uring ring used during thread exit, after it was dropped",
        ))
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

/// Pushes `entries` (each tagged with its index as user data), submits them
/// in one call and waits until every one has completed, storing entry `i`'s
/// result (bytes or `-errno`) in `results[i]`. Never returns while an entry
/// is in flight.
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
    // SAFETY: every buffer these entries point to is borrowed by our caller
    // for the whole of this call, and this function does not return (or
    // unwind) until the kernel has posted a completion for every entry, so
    // the buffers outlive the operations. The file descriptors are likewise
    // borrowed for the call.
    unsafe { ring.submission().push_multiple(entries) }.map_err(|_| {
        RingError::Op(io::Error::other(
            "io_uring submission queue unexpectedly full",
        ))
    })?;
    let total = entries.len();
    let mut completed = 0usize;
    let mut failed_waits = 0u32;
    while completed < total {
        match ring.submit_and_wait(total - completed) {
            Ok(_) => failed_waits = 0,
            Err(error) => {
                failed_waits += 1;
                let unsubmitted = ring.submission().len();
                let in_flight = (total - completed).saturating_sub(unsubmitted);
                let give_up = failed_waits > WAIT_RETRIES_MAX || !is_transient(&error);
                if give_up && in_flight == 0 {
                    return Err(RingError::Broken(error));
                }
                if failed_waits > WAIT_RETRIES_MAX {
                    // Returning would free buffers the kernel may still
                    // write into; nothing safe is left to do.
                    eprintln!("io_uring: cannot wait for in-flight operations: {error}; aborting");
                    std::process::abort();
                }
            }
        }
        for cqe in ring.completion() {
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

/// One contiguous part of a read still to do.
#[derive(Clone, Copy)]
struct Piece {
    addr: *mut u8,
    len: usize,
    offset: u64,
}

impl Piece {
    /// The entry for this piece, tagged with `index`.
    fn entry(&self, fd: RawFd, index: usize) -> squeue::Entry {
        // Pieces come from split_into, which keeps them within u32.
        opcode::Read::new(types::Fd(fd), self.addr, self.len as u32)
            .offset(self.offset)
            .build()
            .user_data(index as u64)
    }

    /// Applies a completion: `Ok(None)` when the piece is done, `Ok(Some)`
    /// with the remainder after a short read.
    fn complete(&self, result: i32) -> io::Result<Option<Piece>> {
        let done = match usize::try_from(result) {
            Err(_) => return Err(io::Error::from_raw_os_error(-result)),
            Ok(0) if self.len > 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            Ok(done) => done.min(self.len),
        };
        if done == self.len {
            return Ok(None);
        }
        Ok(Some(Piece {
            addr: self.addr.wrapping_add(done),
            len: self.len - done,
            offset: self.offset + done as u64,
        }))
    }
}

/// Appends the pieces (at most [`OP_BYTES_MAX`] bytes each) of the `len`
/// bytes at `addr`, which go to or come from file offset `offset`.
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

/// Transfers one buffer: the common case, without allocating.
fn transfer_one(fd: RawFd, addr: *mut u8, len: usize, offset: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if len > OP_BYTES_MAX {
        let mut pieces = Vec::new();
        split_into(&mut pieces, addr, len, offset);
        return transfer(fd, pieces);
    }
    let mut piece = Piece { addr, len, offset };
    with_ring(|ring| loop {
        let mut result = [0i32];
        run_batch(ring, &[piece.entry(fd, 0)], &mut result)?;
        match piece.complete(result[0])? {
            None => return Ok(()),
            Some(rest) => piece = rest,
        }
    })
}

/// Transfers every piece completely, batching up to [`RING_ENTRIES`]
/// entries per submission and resubmitting the remainder of short
/// transfers. The first error is reported once every submitted entry of
/// its batch has completed.
fn transfer(fd: RawFd, mut pending: Vec<Piece>) -> io::Result<()> {
    with_ring(|ring| {
        let mut entries = Vec::with_capacity(pending.len().min(RING_ENTRIES as usize));
        let mut results = Vec::with_capacity(entries.capacity());
        let mut rest = Vec::new();
        while !pending.is_empty() {
            let mut first_error: Option<io::Error> = None;
            for batch in pending.chunks(RING_ENTRIES as usize) {
                entries.clear();
                entries.extend(
                    batch
                        .iter()
                        .enumerate()
                        .map(|(i, piece)| piece.entry(fd, i)),
                );
                results.clear();
                results.resize(entries.len(), 0);
                run_batch(ring, &entries, &mut results)?;
                for (piece, &result) in batch.iter().zip(&results) {
                    match piece.complete(result) {
                        Ok(None) => {}
                        Ok(Some(remainder)) => rest.push(remainder),
                        Err(error) => {
                            first_error.get_or_insert(error);
                        }
                    }
                }
                if first_error.is_some() {
                    break;
                }
            }
            if let Some(error) = first_error {
                return Err(RingError::Op(error));
            }
            std::mem::swap(&mut pending, &mut rest);
            rest.clear();
        }
        Ok(())
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

/// One file read through io_uring.
pub struct UringFile {
    file: File,
}

impl StorageFile for UringFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        transfer_one(fd, buf.as_mut_ptr(), buf.len(), offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Not through the ring: see the module doc.
        self.file.write_all_at(buf, offset)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        write_all_vectored(&self.file, bufs, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        // Not through the ring: see the module doc.
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// io_uring where the kernel allows it; tests print and skip otherwise.
    fn uring_available() -> bool {
        match probe_kernel() {
            Ok(()) => true,
            Err(error) => {
                println!("skipping: io_uring unavailable: {error}");
                false
            }
        }
    }

    #[test]
    fn a_failed_entry_reports_its_errno_and_the_ring_stays_usable() {
        if !uring_available() {
            return;
        }
        let mut buf = [0u8; 8];
        let bad = transfer_one(-1, buf.as_mut_ptr(), buf.len(), 0);
        assert_eq!(bad.unwrap_err().raw_os_error(), Some(libc::EBADF));

        // One bad entry in a batch fails alone; the others complete.
        let results = with_ring(|ring| {
            let entries = [
                opcode::Nop::new().build().user_data(0),
                Piece {
                    addr: buf.as_mut_ptr(),
                    len: buf.len(),
                    offset: 0,
                }
                .entry(-1, 1),
                opcode::Nop::new().build().user_data(2),
            ];
            let mut results = [1i32; 3];
            run_batch(ring, &entries, &mut results)?;
            Ok(results)
        })
        .unwrap();
        assert_eq!(results, [0, -libc::EBADF, 0]);

        // The thread's ring still works for real I/O.
        let dir = tempfile::tempdir().unwrap();
        let storage = UringStorage::open(dir.path()).unwrap();
        let file = storage.open("f", OpenMode::CreateNew).unwrap();
        file.write_all_at(b"still fine", 0).unwrap();
        file.sync_data().unwrap();
        file.read_exact_at(&mut buf, 2).unwrap();
        assert_eq!(&buf, b"ill fine");
    }

    #[test]
    fn completions_are_matched_to_their_entries() {
        if !uring_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let storage = UringStorage::open(dir.path()).unwrap();
        let file = storage.open("f", OpenMode::CreateNew).unwrap();
        let data: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
        file.write_all_at(&data, 0).unwrap();
        // A full batch of reads of different sizes and places: each lands in
        // its own buffer, whatever order the completions arrive in.
        let mut bufs: Vec<Vec<u8>> = (0..RING_ENTRIES as usize)
            .map(|i| vec![0u8; 1 + i * 13])
            .collect();
        let offsets: Vec<u64> = (0..bufs.len()).map(|i| (i * 997) as u64).collect();
        let pieces: Vec<Piece> = bufs
            .iter_mut()
            .zip(&offsets)
            .map(|(buf, &offset)| Piece {
                addr: buf.as_mut_ptr(),
                len: buf.len(),
                offset,
            })
            .collect();
        let reader = File::open(dir.path().join("f")).unwrap();
        transfer(reader.as_raw_fd(), pieces).unwrap();
        for (buf, &offset) in bufs.iter().zip(&offsets) {
            let start = offset as usize;
            assert_eq!(&buf[..], &data[start..start + buf.len()]);
        }
    }

    #[test]
    fn split_into_caps_pieces_and_keeps_them_contiguous() {
        let mut buf = vec![0u8; 8];
        let base = buf.as_mut_ptr();
        let mut pieces = Vec::new();
        split_into(&mut pieces, base, 0, 7);
        assert!(pieces.is_empty());
        split_into(&mut pieces, base, 8, 100);
        assert_eq!(pieces.len(), 1);
        assert_eq!((pieces[0].len, pieces[0].offset), (8, 100));

        // A length past OP_BYTES_MAX, never dereferenced here.
        let len = 2 * OP_BYTES_MAX + 5;
        let mut pieces = Vec::new();
        split_into(&mut pieces, base, len, 10);
        let shape: Vec<(usize, usize, u64)> = pieces
            .iter()
            .map(|p| (p.addr as usize - base as usize, p.len, p.offset))
            .collect();
        let max = OP_BYTES_MAX;
        assert_eq!(
            shape,
            [
                (0, max, 10),
                (max, max, 10 + max as u64),
                (2 * max, 5, 10 + 2 * max as u64)
            ]
        );
        assert!(pieces.iter().all(|p| u32::try_from(p.len).is_ok()));
    }
}
