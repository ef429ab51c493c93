//! Read buffers reused across reads on the same thread.
//!
//! A range read `pread`s into one of these, verifies it while it is hot in
//! the CPU cache, and hands it out as a `Bytes` without copying; when the
//! caller drops the `Bytes` the buffer returns to the pool of the thread
//! that drops it. A reader that drops each piece before asking for the next
//! (an HTTP response writer does) thus reads into the same cache-hot memory
//! every time, as a plain `pread` loop with one buffer does.
//!
//! Bounds: at most [`POOL_BUFFERS_MAX`] buffers per thread, none larger than
//! [`POOLED_BYTES_MAX`]; anything else is freed normally.

use std::cell::RefCell;

use bytes::Bytes;

pub(crate) const POOL_BUFFERS_MAX: usize = 4;
pub(crate) const POOLED_BYTES_MAX: usize = 2 << 20;
const BUFFER_BYTES_MIN: usize = 64 << 10;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` initialised bytes, from the pool if it has one.
pub(crate) fn take(len: usize) -> Vec<u8> {
    let pooled = POOL
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let i = p.iter().position(|b| b.len() >= len)?;
            Some(p.swap_remove(i))
        })
        .ok()
        .flatten();
    pooled.unwrap_or_else(|| vec![0u8; len.next_power_of_two().max(BUFFER_BYTES_MIN)])
}

/// `buf[start..end]` as a `Bytes` that gives `buf` back to the pool on drop.
pub(crate) fn into_bytes(buf: Vec<u8>, start: usize, end: usize) -> Bytes {
    assert!(start <= end && end <= buf.len());
    Bytes::from_owner(Pooled { buf, start, end })
}

/// Runs `f` with this thread's scratch buffer resized to `len` (for bytes
/// that are checked and dropped, like a record header).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut f = Some(f);
    let result = SCRATCH.try_with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        if s.len() < len {
            s.resize(len, 0);
        }
        let f = f.take()?;
        Some(f(&mut s[..len]))
    });
    match (result, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut vec![0u8; len]),
        (_, None) => unreachable!("scratch closure consumed without a result"),
    }
}

struct Pooled {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() > POOLED_BYTES_MAX {
            return;
        }
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.len() < POOL_BUFFERS_MAX {
                    p.push(buf);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_after_the_bytes_drop() {
        let mut buf = take(70_000);
        assert!(buf.len() >= 70_000);
        buf[5] = 42;
        let ptr = buf.as_ptr();
        let bytes = into_bytes(buf, 5, 10);
        assert_eq!(bytes.len(), 5);
        assert_eq!(bytes[0], 42);
        let sub = bytes.slice(1..3);
        drop(bytes);
        drop(sub);
        let again = take(1000);
        assert_eq!(again.as_ptr(), ptr, "pooled buffer not reused");
    }

    #[test]
    fn scratch_is_sized_and_reentrancy_safe() {
        let n = with_scratch(100, |s| {
            s[99] = 1;
            // A nested use falls back to a fresh buffer.
            with_scratch(10, |t| t.len()) + s.len()
        });
        assert_eq!(n, 110);
    }
}
