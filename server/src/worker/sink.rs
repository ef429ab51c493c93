//! Tier sinks: bytes from the encoder go straight into a
//! [`BlobWriter`] (stored chunk by chunk as they fill) while a blake3 hash
//! runs beside it, so the blob's content id is known before `finish` and a
//! redelivered job can see that it already holds the blob.
//!
//! Dropping a sink without [`BlobSink::into_parts`] aborts the blob: chunks
//! already stored are garbage that compaction reclaims.

use std::io::{self, Write};

use spindle_engine::blob::{BlobId, BlobWriter};

/// A tier (or cover) being written.
pub struct BlobSink {
    writer: BlobWriter,
    hasher: blake3::Hasher,
    size_bytes: u64,
}

impl BlobSink {
    pub fn new(writer: BlobWriter) -> Self {
        BlobSink {
            writer,
            hasher: blake3::Hasher::new(),
            size_bytes: 0,
        }
    }

    /// The content id the blob will have, its size and the unfinished writer.
    pub fn into_parts(self) -> (BlobId, u64, BlobWriter) {
        (
            BlobId(*self.hasher.finalize().as_bytes()),
            self.size_bytes,
            self.writer,
        )
    }
}

impl Write for BlobSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf).map_err(io::Error::other)?;
        self.hasher.update(buf);
        self.size_bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
