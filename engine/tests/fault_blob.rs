//! Fault injection: a workload of puts, deletes, a checkpoint and a
//! compaction is repeated with an EIO and then an ENOSPC injected at each of
//! its I/O operations in turn. Whatever fails: no panic, a failed sync
//! poisons the store, and after a crash and reopen every acknowledged put
//! reads back exactly and every acknowledged delete stuck. Plus: bit flips
//! anywhere in a segment are caught by reads (never wrong bytes) and by
//! scrub, and after the checkpoint position by open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench helpers outside #[test] fns: a failed unwrap is a failed run"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use spindle_engine::blob::{segment_file_name, BlobConfig, BlobId, BlobStore, Error};
use spindle_engine::io::fault::{FaultKind, FaultStorage};

fn config() -> BlobConfig {
    BlobConfig {
        chunk_size_bytes: 1024,
        segment_size_bytes_max: 8 * 1024,
        compaction_live_fraction_min: 0.7,
        checkpoint_interval_bytes: u64::MAX,
        ..BlobConfig::default()
    }
}

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Default, Debug)]
struct Outcome {
    /// Acknowledged live blobs.
    acked: BTreeMap<BlobId, Vec<u8>>,
    deleted: Vec<BlobId>,
    /// The operation that failed, if any: (blob, content, was a put).
    uncertain: Option<(BlobId, Vec<u8>, bool)>,
    error: Option<String>,
}

/// Runs the workload until the first error.
fn workload(fault: &FaultStorage) -> Outcome {
    let mut out = Outcome::default();
    let store = match BlobStore::open(Arc::new(fault.clone()), config()) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let blobs: Vec<Vec<u8>> = (0..6u64)
        .map(|i| content(i, 700 + 900 * i as usize))
        .collect();
    let steps: Vec<(&str, usize)> = vec![
        ("put", 0),
        ("put", 1),
        ("put", 2),
        ("put", 0), // refcount 2
        ("delete", 1),
        ("checkpoint", 0),
        ("put", 3),
        ("delete", 0),
        ("delete", 0),
        ("put", 4),
        ("compact", 0),
        ("put", 5),
        ("delete", 2),
    ];
    for (what, i) in steps {
        let data = &blobs[i];
        let id = BlobId::of(data);
        let result = match what {
            "put" => {
                let mut w = store.writer();
                let r = data
                    .chunks(500)
                    .try_for_each(|p| w.write(p))
                    .and_then(|()| w.finish());
                r.map(|r| {
                    assert_eq!(r.id, id);
                    out.acked.insert(id, data.clone());
                    out.deleted.retain(|d| *d != id);
                })
            }
            "delete" => store.delete(&id).map(|existed| {
                assert!(existed);
                if store.refcount(&id).unwrap() == 0 {
                    out.acked.remove(&id);
                    out.deleted.push(id);
                }
            }),
            "checkpoint" => store.checkpoint(),
            "compact" => store.compact().map(|_| ()),
            _ => unreachable!(),
        };
        if let Err(e) = result {
            if matches!(
                e,
                Error::Io { op: "sync", .. } | Error::Io { op: "sync dir", .. }
            ) {
                // A failed sync poisons: no later write is accepted.
                assert!(matches!(store.put(b"after"), Err(Error::Poisoned)), "{e}");
                assert!(store.stats().poisoned);
            }
            // Reads keep working whatever failed.
            for (acked, data) in &out.acked {
                if *acked == id {
                    continue; // the failed operation's own blob is uncertain
                }
                let id = acked;
                let n = (data.len() as u64).min(2048);
                assert_eq!(&store.read(id, 0, n).unwrap()[..], &data[..n as usize]);
            }
            if what == "put" || what == "delete" {
                out.uncertain = Some((id, data.clone(), what == "put"));
            }
            out.error = Some(format!("{what} {i}: {e}"));
            return out;
        }
    }
    out
}

fn verify(fault: &FaultStorage, out: &Outcome, context: &str, tear: Option<u64>) {
    match tear {
        Some(seed) => fault.crash_tearing(seed),
        None => fault.crash(),
    }
    let store = BlobStore::open(Arc::new(fault.clone()), config())
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    for (id, data) in &out.acked {
        if out.uncertain.as_ref().is_some_and(|(u, _, _)| u == id) {
            continue;
        }
        let mut got = Vec::new();
        for piece in store
            .read_range(id, 0..data.len() as u64)
            .unwrap_or_else(|e| panic!("{context}: acknowledged {id} lost: {e}"))
        {
            got.extend_from_slice(&piece.unwrap());
        }
        assert!(&got == data, "{context}: {id} wrong bytes");
    }
    for id in &out.deleted {
        if out.uncertain.as_ref().is_some_and(|(u, _, _)| u == id) {
            continue;
        }
        assert!(
            store.stat(id).unwrap().is_none(),
            "{context}: deleted {id} is back"
        );
    }
    if let Some((id, data, _)) = &out.uncertain {
        if store.stat(id).unwrap().is_some() {
            let mut got = Vec::new();
            for piece in store.read_range(id, 0..data.len() as u64).unwrap() {
                got.extend_from_slice(&piece.unwrap());
            }
            assert!(
                &got == data,
                "{context}: uncertain {id} readable as garbage"
            );
        }
    }
    assert!(store.scrub(None).unwrap().is_clean(), "{context}");
    // The store takes writes again.
    store.put(b"after recovery").unwrap();
}

#[test]
fn a_fault_at_every_operation_loses_nothing_acknowledged() {
    let clean = FaultStorage::new();
    let out = workload(&clean);
    assert!(out.error.is_none(), "clean run failed: {:?}", out.error);
    let ops = clean.op_count();
    assert!(ops > 50, "workload too small: {ops} operations");
    verify(&clean, &out, "clean run", None);
    let mut failures = 0;
    for kind in [FaultKind::Eio, FaultKind::Enospc] {
        for n in 0..ops {
            let fault = FaultStorage::new();
            fault.fail_nth(n, kind);
            let out = workload(&fault);
            fault.clear_faults();
            if out.error.is_some() {
                failures += 1;
            }
            // Odd runs also tear the last unsynced write at the crash.
            let tear = (n % 2 == 1).then_some(n);
            verify(
                &fault,
                &out,
                &format!("{kind:?} at op {n} ({:?})", out.error),
                tear,
            );
        }
    }
    println!("{ops} operations, {failures} runs saw their fault surface as an error");
    assert!(failures > ops, "faults did not surface");
}

/// A streamed write whose chunk append hits a full disk cannot be finished
/// afterwards, even once space is back: its writer no longer knows which of
/// its bytes were stored, and a blob whose id (the hash of everything
/// written) names fewer chunks must never be acknowledged.
#[test]
fn a_writer_stays_failed_after_a_failed_write() {
    let fault = FaultStorage::new();
    let store = BlobStore::open(Arc::new(fault.clone()), config()).unwrap();
    let data = content(9, 5 * 1024);
    let mut w = store.writer();
    w.write(&data[..2048]).unwrap();
    fault.set_space_limit(Some(0));
    assert!(matches!(
        w.write(&data[2048..3072]),
        Err(Error::NoSpace { .. })
    ));
    fault.set_space_limit(None);
    assert!(matches!(
        w.write(&data[3072..]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(w.finish(), Err(Error::InvalidInput(_))));
    // The store itself is fine: the same bytes put again are acknowledged
    // under their true id.
    let r = store.put(&data).unwrap();
    assert_eq!(r.id, BlobId::of(&data));
    assert_eq!(store.read(&r.id, 1500, 2000).unwrap(), data[1500..3500]);
}

#[test]
fn bit_flips_never_return_wrong_bytes_and_scrub_finds_them() {
    // Without the chunk cache every read checks the disk's bytes, so reads
    // must see most flips. With it, chunks read twice are kept, verified,
    // in memory, so a later flip on disk is invisible to reads (they return
    // the kept, right bytes) and only scrub, which always reads the disk,
    // finds it.
    bit_flips(0);
    bit_flips(config().read_cache_bytes);
}

fn bit_flips(read_cache_bytes: u64) {
    let fault = FaultStorage::new();
    let config = || BlobConfig {
        read_cache_bytes,
        ..config()
    };
    let store = BlobStore::open(Arc::new(fault.clone()), config()).unwrap();
    let blobs: Vec<Vec<u8>> = (0..3u64)
        .map(|i| content(10 + i, 1500 + 700 * i as usize))
        .collect();
    let ids: Vec<BlobId> = blobs.iter().map(|b| store.put(b).unwrap().id).collect();
    store.checkpoint().unwrap();
    let seg = segment_file_name(1);
    let len = fault.file_len(&seg).unwrap();
    let mut detected_by_read = 0;
    // Every byte past the segment header, one bit each (bit varies).
    for offset in 32..len {
        let bit = (offset % 8) as u8;
        fault.flip_bit(&seg, offset, bit).unwrap();
        let mut any_read_error = false;
        for (id, data) in ids.iter().zip(&blobs) {
            let mut at = 0u64;
            while at < data.len() as u64 {
                let n = (data.len() as u64 - at).min(1024);
                match store.read(id, at, n) {
                    Ok(b) => assert_eq!(
                        &b[..],
                        &data[at as usize..(at + n) as usize],
                        "flip at {offset}"
                    ),
                    Err(Error::Corruption { segment, .. }) => {
                        assert_eq!(segment, Some(1));
                        any_read_error = true;
                    }
                    Err(e) => panic!("flip at {offset}: {e}"),
                }
                at += n;
            }
        }
        if any_read_error {
            detected_by_read += 1;
        }
        let report = store.scrub(None).unwrap();
        assert!(!report.is_clean(), "scrub missed a flip at {offset}");
        fault.flip_bit(&seg, offset, bit).unwrap();
    }
    assert!(store.scrub(None).unwrap().is_clean());
    if read_cache_bytes == 0 {
        assert!(detected_by_read > (len as usize - 32) / 2);
    } else {
        assert!(store.stats().cache_hits > 0, "the cache kept nothing");
    }

    // A flip after the checkpoint position is refused at open, naming
    // segment and offset.
    let later = store.put(&content(99, 300)).unwrap();
    drop(store);
    let at = len + 60;
    fault.flip_bit(&seg, at, 1).unwrap();
    match BlobStore::open(Arc::new(fault.clone()), config()) {
        Err(Error::Corruption {
            segment, offset, ..
        }) => {
            assert_eq!(segment, Some(1));
            assert!(offset >= len && offset <= at, "offset {offset}");
        }
        other => panic!("expected corruption at open, got {other:?}"),
    }
    let _ = later;
}
