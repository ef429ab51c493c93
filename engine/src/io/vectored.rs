//! Vectored positional writes (`pwritev`) shared by both real backends, so a
//! segment record's header, payload and trailer cost one system call.
//!
//! Invariants:
//! - Buffers are written back to back from the given offset, in order; a
//!   short write is resumed exactly where it stopped.
//! - One call covers at most [`IOVECS_PER_CALL_MAX`] buffers and
//!   [`CALL_BYTES_MAX`] bytes; longer lists become several calls.
//! - A call that writes nothing reports `WriteZero` instead of looping.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

// Offsets past 2 GiB must reach the kernel intact: `off_t` is 64 bits on
// every target the engine builds for (no 32-bit target without large-file
// support).
const _: () = assert!(std::mem::size_of::<libc::off_t>() == 8);

/// The most buffers one `pwritev` takes (Linux's `UIO_MAXIOV`).
const IOVECS_PER_CALL_MAX: usize = 1024;

/// The most bytes one call is asked for: Linux transfers at most
/// 0x7fff_f000 bytes per call and rejects totals past `isize::MAX`.
const CALL_BYTES_MAX: usize = 1 << 30;

/// A run of consecutive iovecs that one `pwritev` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: usize,
    count: usize,
    offset: u64,
    len: usize,
}

/// Lays `bufs` out as iovecs in runs of at most [`IOVECS_PER_CALL_MAX`]
/// buffers and [`CALL_BYTES_MAX`] bytes, back to back from `offset`.
fn plan_runs(bufs: &[&[u8]], offset: u64) -> (Vec<libc::iovec>, Vec<Run>) {
    let mut iovecs = Vec::with_capacity(bufs.len());
    let mut runs = Vec::new();
    let mut run = Run {
        first: 0,
        count: 0,
        offset,
        len: 0,
    };
    let mut at = offset;
    for buf in bufs {
        let mut done = 0usize;
        while done < buf.len() {
            if run.count == IOVECS_PER_CALL_MAX || run.len == CALL_BYTES_MAX {
                runs.push(run);
                run = Run {
                    first: iovecs.len(),
                    count: 0,
                    offset: at,
                    len: 0,
                };
            }
            let part = (buf.len() - done).min(CALL_BYTES_MAX - run.len);
            iovecs.push(libc::iovec {
                // The kernel only reads through it (pwritev).
                iov_base: buf.as_ptr().wrapping_add(done).cast_mut().cast(),
                iov_len: part,
            });
            run.count += 1;
            run.len += part;
            done += part;
            at += part as u64;
        }
    }
    if run.count > 0 {
        runs.push(run);
    }
    (iovecs, runs)
}

/// Moves `run` past the first `written` bytes after a short write.
fn advance_run(run: &mut Run, iovecs: &mut [libc::iovec], written: usize) {
    assert!(written < run.len);
    run.offset += written as u64;
    run.len -= written;
    let mut skip = written;
    while skip > 0 {
        let iov = &mut iovecs[run.first];
        if skip >= iov.iov_len {
            skip -= iov.iov_len;
            run.first += 1;
            run.count -= 1;
        } else {
            iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(skip).cast();
            iov.iov_len -= skip;
            skip = 0;
        }
    }
}

/// Writes `bufs` back to back from `offset` with as few `pwritev` calls as
/// the limits allow (usually one), resuming short writes.
pub(crate) fn write_all_vectored(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    let (mut iovecs, runs) = plan_runs(bufs, offset);
    let fd = file.as_raw_fd();
    for mut run in runs {
        loop {
            let Ok(offset) = libc::off_t::try_from(run.offset) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "write offset past the largest file offset",
                ));
            };
            // plan_runs keeps `count` within IOVECS_PER_CALL_MAX.
            let count = run.count as libc::c_int;
            // SAFETY: iovecs[run.first..run.first + run.count] point into
            // `bufs`, which are borrowed for this whole call; the kernel only
            // reads them, and only during the call.
            let written = unsafe { libc::pwritev(fd, iovecs[run.first..].as_ptr(), count, offset) };
            match usize::try_from(written) {
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(error);
                }
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ))
                }
                Ok(n) if n >= run.len => break,
                Ok(n) => advance_run(&mut run, &mut iovecs, n),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn runs_cap_buffers_and_bytes_and_advance_over_short_writes() {
        let small = [7u8; 10];
        let bufs: Vec<&[u8]> = (0..IOVECS_PER_CALL_MAX + 3).map(|_| &small[..]).collect();
        let (iovecs, runs) = plan_runs(&bufs, 100);
        assert_eq!(iovecs.len(), bufs.len());
        let max = IOVECS_PER_CALL_MAX;
        assert_eq!(
            runs,
            [
                Run {
                    first: 0,
                    count: max,
                    offset: 100,
                    len: 10 * max
                },
                Run {
                    first: max,
                    count: 3,
                    offset: 100 + 10 * max as u64,
                    len: 30
                },
            ]
        );
        let empty: [&[u8]; 2] = [&[], &[]];
        assert_eq!(plan_runs(&empty, 0).1, []);

        // Three buffers; a short write of 13 bytes ends inside the second.
        let (a, b, c) = ([1u8; 10], [2u8; 10], [3u8; 10]);
        let (mut iovecs, runs) = plan_runs(&[&a, &b, &c], 0);
        let mut run = runs[0];
        advance_run(&mut run, &mut iovecs, 13);
        assert_eq!(
            run,
            Run {
                first: 1,
                count: 2,
                offset: 13,
                len: 17
            }
        );
        assert_eq!(iovecs[1].iov_len, 7);
        assert_eq!(iovecs[1].iov_base as usize, b.as_ptr() as usize + 3);
        // Then exactly to the end of the second.
        advance_run(&mut run, &mut iovecs, 7);
        assert_eq!(
            run,
            Run {
                first: 2,
                count: 1,
                offset: 20,
                len: 10
            }
        );
        assert_eq!(iovecs[2].iov_base as usize, c.as_ptr() as usize);
    }

    #[test]
    fn writes_many_buffers_in_order_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create_new(dir.path().join("f")).unwrap();
        // More buffers than one call takes, of assorted sizes, some empty.
        let owned: Vec<Vec<u8>> = (0..IOVECS_PER_CALL_MAX * 2 + 7)
            .map(|i| vec![(i % 251) as u8; i % 5])
            .collect();
        let bufs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        write_all_vectored(&file, &bufs, 3).unwrap();
        let expected: Vec<u8> = owned.concat();
        let mut back = vec![0u8; expected.len()];
        file.read_exact_at(&mut back, 3).unwrap();
        assert_eq!(back, expected);
        assert_eq!(file.metadata().unwrap().len(), 3 + expected.len() as u64);
        write_all_vectored(&file, &[], 0).unwrap();
    }
}
