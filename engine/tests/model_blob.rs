//! Model test of the blob store: random sequences of streamed puts, range
//! reads, deletes, checkpoints, crashes (clean and torn), injected faults,
//! reopens and compactions, checked against a `BTreeMap` model after every
//! step.
//!
//! Every acknowledged put or delete is durable on return, so the durable
//! shadow of the model is the model itself; an operation that fails leaves
//! one *uncertain* blob, which the test resolves after the crash that
//! follows by asking the store, checking that it lies within what is allowed
//! (the blob's old or new refcount, exact content or absent).
//!
//! Runs over the fault backend (with crashes and faults) and over the
//! portable and io_uring backends (crashes become plain reopens, faults are
//! skipped).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench helpers outside #[test] fns: a failed unwrap is a failed run"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use spindle_engine::blob::{BlobConfig, BlobId, BlobStore, ChunkId, Error};
use spindle_engine::io::fault::{FaultKind, FaultStorage};
use spindle_engine::io::uring::UringStorage;
use spindle_engine::io::{open_storage, BackendChoice, Storage};

#[derive(Debug, Clone)]
enum Op {
    /// Put fresh content (seed, length) streamed in pieces of `piece`.
    Put {
        seed: u64,
        len: usize,
        piece: usize,
    },
    /// Put the content of an existing (or recently deleted) blob again.
    PutAgain {
        pick: usize,
        piece: usize,
    },
    /// A writer dropped before finish.
    Abort {
        seed: u64,
        len: usize,
    },
    Get {
        pick: usize,
        at: f64,
        len: usize,
    },
    Delete {
        pick: usize,
    },
    Checkpoint,
    Compact,
    Reopen,
    Crash {
        tear: Option<u64>,
    },
    /// The next put or delete gets a fault at its `n`th I/O operation.
    Fault {
        n: u64,
        enospc: bool,
        then_put: bool,
        pick: usize,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 0usize..3000, 1usize..700)
            .prop_map(|(seed, len, piece)| Op::Put { seed, len, piece }),
        2 => (any::<usize>(), 1usize..5000).prop_map(|(pick, piece)| Op::PutAgain { pick, piece }),
        1 => (any::<u64>(), 0usize..3000).prop_map(|(seed, len)| Op::Abort { seed, len }),
        4 => (any::<usize>(), 0.0f64..1.0, 0usize..1500)
            .prop_map(|(pick, at, len)| Op::Get { pick, at, len }),
        3 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        2 => proptest::option::of(any::<u64>()).prop_map(|tear| Op::Crash { tear }),
        2 => (0u64..12, any::<bool>(), any::<bool>(), any::<usize>(), any::<u64>())
            .prop_map(|(n, enospc, then_put, pick, seed)| Op::Fault { n, enospc, then_put, pick, seed }),
    ]
}

fn content(seed: u64, len: usize) -> Vec<u8> {
    // Few distinct byte patterns, so chunks repeat across blobs and dedupe.
    let mut x = (seed % 7).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            if (i / 64) % 3 == 0 {
                return (seed % 5) as u8;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Fault,
    Portable,
    /// Portable writes, reads from memory maps (`BlobStore::open_dir`).
    PortableMapped,
    Uring,
}

struct Harness {
    backend: Backend,
    fault: FaultStorage,
    storage: Arc<dyn Storage>,
    _dir: Option<tempfile::TempDir>,
    config: BlobConfig,
    now: Arc<AtomicU64>,
    store: Option<BlobStore>,
    /// id -> (content, refcount, created_ms)
    model: BTreeMap<BlobId, (Vec<u8>, u32, u64)>,
    /// Content of blobs once stored, live or not, for PutAgain.
    history: Vec<Vec<u8>>,
    chunk_size: usize,
}

impl Harness {
    fn new(backend: Backend, chunk_size: u32, segment_size: u64) -> Option<Harness> {
        let fault = FaultStorage::new();
        let (storage, dir): (Arc<dyn Storage>, _) = match backend {
            Backend::Fault => (Arc::new(fault.clone()), None),
            Backend::Portable | Backend::PortableMapped => {
                let dir = tempfile::tempdir().unwrap();
                (
                    open_storage(dir.path(), BackendChoice::Portable).unwrap(),
                    Some(dir),
                )
            }
            Backend::Uring => {
                let dir = tempfile::tempdir().unwrap();
                if let Err(e) = UringStorage::open(dir.path()) {
                    eprintln!("skipping io_uring backend: {e}");
                    return None;
                }
                (
                    open_storage(dir.path(), BackendChoice::Uring).unwrap(),
                    Some(dir),
                )
            }
        };
        let now = Arc::new(AtomicU64::new(1));
        let clock = now.clone();
        let config = BlobConfig {
            chunk_size_bytes: chunk_size,
            segment_size_bytes_max: segment_size,
            compaction_live_fraction_min: 0.6,
            checkpoint_interval_bytes: 20_000,
            clock_ms: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..BlobConfig::default()
        };
        let mut h = Harness {
            backend,
            fault,
            storage,
            _dir: dir,
            config,
            now,
            store: None,
            model: BTreeMap::new(),
            history: Vec::new(),
            chunk_size: chunk_size as usize,
        };
        h.store = Some(h.open());
        Some(h)
    }

    fn open(&self) -> BlobStore {
        match (&self.backend, &self._dir) {
            (Backend::PortableMapped, Some(dir)) => {
                BlobStore::open_dir(dir.path(), BackendChoice::Portable, self.config.clone())
                    .unwrap()
            }
            _ => BlobStore::open(self.storage.clone(), self.config.clone()).unwrap(),
        }
    }

    fn store(&self) -> &BlobStore {
        self.store.as_ref().unwrap()
    }

    fn reopen(&mut self, crash: Option<Option<u64>>) {
        self.store = None;
        if self.backend == Backend::Fault {
            match crash {
                Some(None) => self.fault.crash(),
                Some(Some(seed)) => self.fault.crash_tearing(seed),
                None => {}
            }
        }
        self.fault.clear_faults();
        self.store = Some(self.open());
    }

    fn pick(&self, pick: usize) -> Option<BlobId> {
        if self.model.is_empty() {
            return None;
        }
        self.model.keys().nth(pick % self.model.len()).copied()
    }

    fn put(&mut self, data: &[u8], piece: usize) -> Result<BlobId, Error> {
        let mut w = self.store().writer();
        for p in data.chunks(piece.max(1)) {
            w.write(p)?;
        }
        let r = w.finish()?;
        assert_eq!(r.id, BlobId::of(data));
        assert_eq!(r.size_bytes, data.len() as u64);
        let now = self.now.load(Ordering::SeqCst);
        let e = self
            .model
            .entry(r.id)
            .or_insert_with(|| (data.to_vec(), 0, now));
        e.1 += 1;
        self.history.push(data.to_vec());
        Ok(r.id)
    }

    fn delete(&mut self, id: BlobId) -> Result<(), Error> {
        let existed = self.store().delete(&id)?;
        let entry = self.model.get_mut(&id);
        assert_eq!(existed, entry.is_some());
        if let Some(e) = entry {
            e.1 -= 1;
            if e.1 == 0 {
                self.model.remove(&id);
            }
        }
        Ok(())
    }

    /// After a failed put of `data` or delete of `id`: crash, reopen and
    /// take what the store says, as long as it is one of the two outcomes.
    fn resolve(&mut self, id: BlobId, data: &[u8], was_put: bool) {
        self.reopen(Some(None));
        let before = self.model.get(&id).map(|e| e.1).unwrap_or(0);
        let after = self.store().refcount(&id).unwrap();
        let allowed = if was_put {
            [before, before + 1]
        } else {
            [before, before.saturating_sub(1)]
        };
        assert!(
            allowed.contains(&after),
            "refcount {after} of {id} after a failed {} (was {before})",
            if was_put { "put" } else { "delete" }
        );
        if after == 0 {
            self.model.remove(&id);
        } else {
            let info = self.store().stat(&id).unwrap().unwrap();
            let e = self
                .model
                .entry(id)
                .or_insert_with(|| (data.to_vec(), 0, info.created_ms));
            e.1 = after;
            if was_put {
                self.history.push(data.to_vec());
            }
        }
    }

    fn read_all(&self, id: &BlobId, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in self.store().read_range(id, 0..len as u64).unwrap() {
            let piece = piece.unwrap();
            assert!(piece.len() <= self.chunk_size);
            out.extend_from_slice(&piece);
        }
        out
    }

    fn check(&self) {
        let store = self.store();
        let stats = store.stats();
        assert_eq!(stats.blobs, self.model.len() as u64, "blob count");
        let mut chunks = BTreeSet::new();
        for (id, (data, refcount, created_ms)) in &self.model {
            let info = store
                .stat(id)
                .unwrap()
                .unwrap_or_else(|| panic!("{id} lost"));
            assert_eq!(info.size_bytes, data.len() as u64);
            assert_eq!(info.created_ms, *created_ms, "created_ms of {id}");
            assert_eq!(store.refcount(id).unwrap(), *refcount);
            assert_eq!(&self.read_all(id, data.len()), data, "content of {id}");
            for c in data.chunks(self.chunk_size) {
                chunks.insert(ChunkId::of(c));
            }
        }
        assert_eq!(stats.chunks_live, chunks.len() as u64, "live chunk count");
        for data in &self.history {
            let id = BlobId::of(data);
            if !self.model.contains_key(&id) {
                assert!(
                    store.stat(&id).unwrap().is_none(),
                    "deleted {id} still there"
                );
                assert!(matches!(store.read(&id, 0, 0), Err(Error::NotFound(_))));
            }
        }
        let total: u64 = stats.segments.iter().map(|s| s.total_bytes).sum();
        assert_eq!(stats.live_bytes + stats.dead_bytes, total);
    }

    fn run(&mut self, op: &Op) {
        self.now.fetch_add(1, Ordering::SeqCst);
        match op.clone() {
            Op::Put { seed, len, piece } => {
                self.put(&content(seed, len), piece).unwrap();
            }
            Op::PutAgain { pick, piece } => {
                if !self.history.is_empty() {
                    let data = self.history[pick % self.history.len()].clone();
                    self.put(&data, piece).unwrap();
                }
            }
            Op::Abort { seed, len } => {
                let mut w = self.store().writer();
                w.write(&content(seed ^ 0xabcd, len)).unwrap();
            }
            Op::Get { pick, at, len } => {
                if let Some(id) = self.pick(pick) {
                    let data = &self.model[&id].0;
                    let off = ((data.len() as f64) * at) as usize;
                    let len = len.min(data.len() - off).min(2 * self.chunk_size);
                    let got = self.store().read(&id, off as u64, len as u64).unwrap();
                    assert_eq!(&got[..], &data[off..off + len]);
                }
            }
            Op::Delete { pick } => {
                if let Some(id) = self.pick(pick) {
                    self.delete(id).unwrap();
                }
            }
            Op::Checkpoint => self.store().checkpoint().unwrap(),
            Op::Compact => {
                self.store().compact().unwrap();
            }
            Op::Reopen => self.reopen(None),
            Op::Crash { tear } => self.reopen(Some(tear)),
            Op::Fault {
                n,
                enospc,
                then_put,
                pick,
                seed,
            } => {
                if self.backend != Backend::Fault {
                    return;
                }
                let kind = if enospc {
                    FaultKind::Enospc
                } else {
                    FaultKind::Eio
                };
                let target = if then_put { None } else { self.pick(pick) };
                self.fault.fail_nth(n, kind);
                match target {
                    None => {
                        let data = content(seed, (seed % 2500) as usize);
                        let id = BlobId::of(&data);
                        let result = self.put(&data, 333);
                        self.fault.clear_faults();
                        if result.is_err() {
                            self.resolve(id, &data, true);
                        }
                    }
                    Some(id) => {
                        let result = self.delete(id);
                        self.fault.clear_faults();
                        if result.is_err() {
                            let data = self.model[&id].0.clone();
                            self.resolve(id, &data, false);
                        }
                    }
                }
                // A fault that hit a background checkpoint after the
                // acknowledgement may have poisoned the store.
                if self.store().stats().poisoned {
                    self.reopen(Some(None));
                }
            }
        }
    }
}

fn run_case(backend: Backend, chunk_size: u32, segment_size: u64, ops: &[Op]) {
    let Some(mut h) = Harness::new(backend, chunk_size, segment_size) else {
        return;
    };
    for op in ops {
        h.run(op);
        h.check();
    }
    // Whatever happened, a final crash keeps every acknowledged blob.
    h.reopen(Some(None));
    h.check();
    assert!(h.store().scrub(None).unwrap().is_clean());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn model_fault_backend(
        chunk_size in prop::sample::select(vec![64u32, 256, 1024, 4096]),
        segment_size in 4096u64..32_768,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_case(Backend::Fault, chunk_size, segment_size, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn model_portable_backend(
        chunk_size in prop::sample::select(vec![64u32, 1024]),
        segment_size in 4096u64..32_768,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run_case(Backend::Portable, chunk_size, segment_size, &ops);
    }

    #[test]
    fn model_portable_mapped_reads(
        chunk_size in prop::sample::select(vec![64u32, 1024, 8192]),
        segment_size in 4096u64..32_768,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run_case(Backend::PortableMapped, chunk_size, segment_size, &ops);
    }

    #[test]
    fn model_uring_backend(
        chunk_size in prop::sample::select(vec![64u32, 1024]),
        segment_size in 4096u64..32_768,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run_case(Backend::Uring, chunk_size, segment_size, &ops);
    }
}
