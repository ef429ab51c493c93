//! The portable backend: positional I/O and `fdatasync` through std, which on
//! Linux are `pread`, `pwrite` and `fdatasync` on plain file descriptors, and
//! `pwritev` for a record's several buffers.
//!
//! Invariant: names are checked with [`check_name`] before any path is
//! built, so no call reaches outside the store's directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::vectored::write_all_vectored;
use super::{check_name, BackendKind, OpenMode, Storage, StorageFile};

/// A directory accessed with ordinary system calls.
pub struct PortableStorage {
    dir: PathBuf,
}

impl PortableStorage {
    /// Opens `dir`, creating it (and its parents) if needed. A directory it
    /// creates is made durable in its parent, so a new store does not vanish
    /// in a crash with the files synced into it.
    pub fn open(dir: &Path) -> io::Result<Self> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        Ok(PortableStorage {
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn path_of(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    pub(crate) fn open_std(&self, name: &str, mode: OpenMode) -> io::Result<File> {
        let path = self.path_of(name)?;
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::CreateOrOpen => {
                options.create(true);
            }
            OpenMode::CreateNew => {
                options.create_new(true);
            }
        }
        options.open(path)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Storage for PortableStorage {
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(PortableFile {
            file: self.open_std(name, mode)?,
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path_of(name)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path_of(from)?, self.path_of(to)?)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        list_dir(&self.dir)
    }

    fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Portable
    }
}

pub(crate) fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One file accessed with `pread`/`pwrite`.
pub struct PortableFile {
    file: File,
}

impl StorageFile for PortableFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
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
        self.file.sync_data()
    }
}
