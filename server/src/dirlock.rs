//! An exclusive lock on a data directory, so two processes never run the
//! stores in one directory at once (each would append to the same segments
//! and logs, and the second's recovery would cut the first's live tail).
//!
//! The lock is `flock(LOCK_EX)` on `<data_dir>/lock`, taken without waiting
//! and held by an open file for the holder's lifetime: the kernel releases
//! it when the process exits in any way, kill -9 included, so a crash never
//! leaves a stale lock. The file holds the holder's pid, for the message a
//! second process prints; it is never removed (removing a lock file races
//! with a process that has just opened it).

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{} is in use by another spindle process{}; stop it first",
        dir.display(),
        holder.as_deref().map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Busy {
        dir: PathBuf,
        holder: Option<String>,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while a process uses a data directory; dropping it unlocks.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `data_dir` (which must exist), or fails at once
    /// with [`LockError::Busy`] naming the holder.
    pub fn acquire(data_dir: &Path) -> Result<DirLock, LockError> {
        let path = data_dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns; no memory is
        // passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .map(|_| text.trim().to_owned())
                    .filter(|t| !t.is_empty());
                return Err(LockError::Busy {
                    dir: data_dir.to_path_buf(),
                    holder,
                });
            }
            return Err(io(error));
        }
        // The pid is only informative, so a failure to write it is no error.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Busy { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
