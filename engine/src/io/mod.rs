//! The storage trait: every byte the engine reads or writes goes through it.
//!
//! A [`Storage`] is one directory of flat files (no subdirectories); a
//! [`StorageFile`] is one open file in it. Three backends implement the pair:
//!
//! - [`portable::PortableStorage`]: `pread`/`pwrite`/`fdatasync` through std,
//!   `pwritev` for several buffers.
//! - [`uring::UringStorage`]: reads submitted through io_uring; writes and
//!   `fdatasync` as the portable backend does them (see its module doc).
//! - [`fault::FaultStorage`]: an in-memory disk for tests that keeps written
//!   and synced data apart, loses unsynced data on a simulated crash, can tear
//!   the last write and can fail the Nth operation with `EIO` or `ENOSPC`.
//!
//! [`open_storage`] picks io_uring when the kernel allows it and falls back to
//! the portable backend otherwise; [`BackendChoice`] forces either.
//!
//! Durability contract, which every backend honours and every caller relies on:
//! 1. Data written with [`StorageFile::write_all_at`] is durable only after a
//!    later [`StorageFile::sync_data`] on that file returns `Ok`.
//! 2. A file created, renamed or removed is durable in the directory only after
//!    a later [`Storage::sync_dir`] returns `Ok`.
//! 3. A `sync_data` or `sync_dir` that returns `Err` leaves the durable state
//!    unknown; callers must poison themselves, never retry as if nothing
//!    happened (the page cache may have dropped the dirty pages).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

pub mod fault;
pub mod portable;
pub mod uring;
mod vectored;

/// How [`Storage::open`] treats a file that does or does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file; `NotFound` if there is none.
    Existing,
    /// Open the file, creating it empty if it does not exist.
    CreateOrOpen,
    /// Create a new file; `AlreadyExists` if there is one.
    CreateNew,
}

/// Which backend [`open_storage`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, portable otherwise.
    #[default]
    Auto,
    /// Always the portable backend.
    Portable,
    /// io_uring, or an error when the kernel refuses it.
    Uring,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "portable" => Ok(BackendChoice::Portable),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            other => Err(format!(
                "unknown I/O backend {other:?} (expected auto, portable or uring)"
            )),
        }
    }
}

/// The backend actually in use, for logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Portable,
    Uring,
    Fault,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Portable => "portable",
            BackendKind::Uring => "io_uring",
            BackendKind::Fault => "fault",
        })
    }
}

/// One directory of flat files.
///
/// File names are plain names (no `/`), chosen by the engine.
pub trait Storage: Send + Sync + 'static {
    /// Opens `name` for reading and writing.
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes `name`. Durable after [`Storage::sync_dir`].
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`. Durable after
    /// [`Storage::sync_dir`].
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Names of the files in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals so far durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
}

/// One open file. Shared between threads; all methods take `&self` and use
/// positional I/O, so there is no cursor to race on.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is an I/O call; an is_empty would hide that it can fail"
)]
pub trait StorageFile: Send + Sync + 'static {
    /// Fills `buf` from `offset`; `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Reads `len` bytes at `offset` into a fresh `Bytes`. Backends may
    /// override this to avoid a copy (for example by slicing a memory map).
    fn read_bytes_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Writes the buffers back to back starting at `offset`, as one operation
    /// where the backend can (both real backends use one `pwritev`).
    fn write_all_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for buf in bufs {
            self.write_all_at(buf, at)?;
            at += buf.len() as u64;
        }
        Ok(())
    }

    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Truncates or extends the file to `len` bytes. Durable after
    /// [`StorageFile::sync_data`].
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// `fdatasync`: makes the data written so far (and the length) durable.
    fn sync_data(&self) -> io::Result<()>;
}

/// Opens the directory at `path` (creating it if needed) with the chosen
/// backend.
pub fn open_storage(path: &Path, choice: BackendChoice) -> io::Result<Arc<dyn Storage>> {
    match choice {
        BackendChoice::Portable => Ok(Arc::new(portable::PortableStorage::open(path)?)),
        BackendChoice::Uring => Ok(Arc::new(uring::UringStorage::open(path)?)),
        BackendChoice::Auto => match uring::UringStorage::open(path) {
            Ok(storage) => Ok(Arc::new(storage)),
            Err(error) => {
                tracing::info!(%error, "io_uring unavailable, using the portable backend");
                Ok(Arc::new(portable::PortableStorage::open(path)?))
            }
        },
    }
}

/// Whether `error` means the disk is full (`ENOSPC`), which both stores
/// report as their typed `NoSpace` error rather than as plain I/O.
pub fn is_no_space(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC) || error.kind() == io::ErrorKind::StorageFull
}

/// Rejects names that would escape the directory or that the engine never
/// makes, so a bug cannot touch files outside the store.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid storage file name {name:?}"),
        ))
    }
}
