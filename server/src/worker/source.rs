//! A `Read + Seek` view of a blob, fetched by ranges: from the local blob
//! store ([`LocalBlob`]) or, for a remote worker, over HTTP (see
//! [`super::remote`]).
//!
//! **Invariant:** at most one fetched piece (a chunk or one HTTP range of
//! [`RangeSource::PIECE_BYTES_MAX`]) is held; the blob is never read whole.

use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;
use spindle_engine::blob::{BlobId, BlobStore};

/// Fetches bytes of one blob.
pub trait RangeFetch: Send + Sync + 'static {
    /// Up to `max_len` bytes at `offset` (at least one unless at the end).
    fn fetch(&mut self, offset: u64, max_len: u64) -> io::Result<Bytes>;
}

/// A blob of the local store.
#[derive(Clone)]
pub struct LocalBlob {
    pub blobs: BlobStore,
    pub id: BlobId,
}

impl RangeFetch for LocalBlob {
    fn fetch(&mut self, offset: u64, max_len: u64) -> io::Result<Bytes> {
        let size = self
            .blobs
            .stat(&self.id)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "raw blob is gone"))?
            .size_bytes;
        let end = size.min(offset.saturating_add(max_len));
        if offset >= end {
            return Ok(Bytes::new());
        }
        // One chunk's piece at a time: the reader yields chunk by chunk.
        match self
            .blobs
            .read_range(&self.id, offset..end)
            .map_err(io::Error::other)?
            .next()
        {
            Some(piece) => piece.map_err(io::Error::other),
            None => Ok(Bytes::new()),
        }
    }
}

/// `Read + Seek` over a [`RangeFetch`] of known length.
pub struct RangeSource<F> {
    fetch: F,
    len_bytes: u64,
    pos: u64,
    piece: Bytes,
    piece_start: u64,
}

impl<F: RangeFetch> RangeSource<F> {
    /// Largest piece asked for at once.
    pub const PIECE_BYTES_MAX: u64 = 1 << 20;

    pub fn new(fetch: F, len_bytes: u64) -> Self {
        RangeSource {
            fetch,
            len_bytes,
            pos: 0,
            piece: Bytes::new(),
            piece_start: 0,
        }
    }
}

impl<F: RangeFetch> Read for RangeSource<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.len_bytes {
            return Ok(0);
        }
        let piece_end = self.piece_start + self.piece.len() as u64;
        if self.pos < self.piece_start || self.pos >= piece_end {
            let want = Self::PIECE_BYTES_MAX.min(self.len_bytes - self.pos);
            self.piece = self.fetch.fetch(self.pos, want)?;
            self.piece_start = self.pos;
            if self.piece.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob ended at {} of {} bytes", self.pos, self.len_bytes),
                ));
            }
        }
        let at = (self.pos - self.piece_start) as usize;
        let n = buf.len().min(self.piece.len() - at);
        buf[..n].copy_from_slice(&self.piece[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: RangeFetch> Seek for RangeSource<F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len_bytes.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Bytes, u64);
    impl RangeFetch for Mem {
        fn fetch(&mut self, offset: u64, max_len: u64) -> io::Result<Bytes> {
            // Small pieces, to cross piece boundaries.
            let end = (offset + max_len.min(self.1)).min(self.0.len() as u64);
            Ok(self.0.slice(offset as usize..end as usize))
        }
    }

    #[test]
    fn reads_and_seeks_across_pieces() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut s = RangeSource::new(Mem(Bytes::from(data.clone()), 333), data.len() as u64);
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        assert_eq!(s.seek(SeekFrom::End(-10)).unwrap(), 9_990);
        let mut tail = Vec::new();
        s.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, data[9_990..]);
        s.seek(SeekFrom::Start(500)).unwrap();
        s.seek(SeekFrom::Current(-100)).unwrap();
        let mut b = [0u8; 1000];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b[..], &data[400..1400]);
        assert!(s.seek(SeekFrom::Current(-5000)).is_err());
        s.seek(SeekFrom::Start(20_000)).unwrap();
        assert_eq!(s.read(&mut b).unwrap(), 0);
    }
}
