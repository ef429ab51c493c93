//! spindle-engine: bytes on disk.
//!
//! - [`io`]: the one storage trait every byte goes through, with a portable
//!   `pread`/`pwrite` backend, an io_uring backend and a fault-injecting
//!   backend for tests.
//! - [`blob`]: the chunked, checksummed, content-addressed blob store.
//! - [`meta`]: the log-structured metadata store with its change feed.
//! - [`queue`]: the durable job queue built on [`meta`].
//! - [`clock`]: wall-clock time and hybrid logical clocks, behind a trait so
//!   tests control time.
//!
//! **Boundary:** the engine knows no HTTP and no network, and never spawns an
//! async task: callers drive it from their own threads. Its on-disk formats
//! are described byte for byte in `engine/FORMAT.md`.

pub mod blob;
pub mod clock;
pub mod io;
pub mod meta;
pub mod queue;
