//! The io_uring backend. (Being written: until it lands, opening it reports
//! io_uring as unavailable and `open_storage` falls back to the portable
//! backend.)

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{BackendKind, OpenMode, Storage, StorageFile};

pub struct UringStorage {
    _private: (),
}

impl UringStorage {
    pub fn open(_dir: &Path) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring backend not built yet",
        ))
    }
}

impl Storage for UringStorage {
    fn open(&self, _name: &str, _mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn remove(&self, _name: &str) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn rename(&self, _from: &str, _to: &str) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn sync_dir(&self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }
}
