//! Targeted blob-store behaviour, over the portable and io_uring backends
//! (io_uring skipped with a message where the kernel refuses it) and the
//! fault backend.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench helpers outside #[test] fns: a failed unwrap is a failed run"
)]

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use spindle_engine::blob::{BlobConfig, BlobId, BlobStore, ChunkId, Error};
use spindle_engine::io::fault::{FaultKind, FaultStorage};
use spindle_engine::io::uring::UringStorage;
use spindle_engine::io::{open_storage, BackendChoice, Storage};

fn small_config() -> BlobConfig {
    BlobConfig {
        chunk_size_bytes: 4096,
        segment_size_bytes_max: 64 * 1024,
        checkpoint_interval_bytes: u64::MAX,
        ..BlobConfig::default()
    }
}

/// (name, storage, tempdir keeping it alive)
fn backends() -> Vec<(&'static str, Arc<dyn Storage>, Option<tempfile::TempDir>)> {
    let mut out: Vec<(&'static str, Arc<dyn Storage>, Option<tempfile::TempDir>)> = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    out.push((
        "portable",
        open_storage(dir.path(), BackendChoice::Portable).unwrap(),
        Some(dir),
    ));
    let dir = tempfile::tempdir().unwrap();
    match UringStorage::open(dir.path()) {
        Ok(_) => out.push((
            "uring",
            open_storage(dir.path(), BackendChoice::Uring).unwrap(),
            Some(dir),
        )),
        Err(e) => eprintln!("skipping io_uring backend: {e}"),
    }
    out.push(("fault", Arc::new(FaultStorage::new()), None));
    out
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

/// XORs the byte at `at` of the file at `path` with `mask`, behind the
/// store's back (rot on the disk, as far as the store can tell).
fn flip_bits(path: &std::path::Path, at: u64, mask: u8) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn put_stat_read_and_ranges() {
    for (name, storage, _dir) in backends() {
        let store = BlobStore::open(storage, small_config()).unwrap();
        let data = content(1, 50_000);
        let mut w = store.writer();
        for piece in data.chunks(777) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.written_bytes(), 50_000);
        let r = w.finish().unwrap();
        assert_eq!(r.id, BlobId::of(&data), "{name}");
        assert_eq!(r.size_bytes, 50_000);
        assert_eq!(r.chunks.len(), 13);
        // Every chunk is named by its own hash; the first is hashed once
        // for both its id and the blob's, which must not change either.
        for (chunk, id) in data.chunks(4096).zip(&r.chunks) {
            assert_eq!(*id, ChunkId::of(chunk), "{name}");
        }
        let one = store.put(&data[..4096]).unwrap();
        assert_eq!(one.id.0, one.chunks[0].0, "{name}");
        assert_eq!(one.id, BlobId::of(&data[..4096]), "{name}");
        let info = store.stat(&r.id).unwrap().unwrap();
        assert_eq!(info.size_bytes, 50_000);
        assert_eq!(info.chunk_count, 13);
        for (off, len) in [
            (0u64, 1u64),
            (4095, 2),
            (100, 4096),
            (0, 8192),
            (49_999, 1),
            (50_000, 0),
        ] {
            let got = store.read(&r.id, off, len).unwrap();
            assert_eq!(
                &got[..],
                &data[off as usize..(off + len) as usize],
                "{name} {off}+{len}"
            );
        }
        let mut all = Vec::new();
        let mut rr = store.read_range(&r.id, 10..50_000).unwrap();
        assert_eq!(rr.remaining_bytes(), 49_990);
        for piece in &mut rr {
            let piece = piece.unwrap();
            assert!(piece.len() <= 4096);
            all.extend_from_slice(&piece);
        }
        assert_eq!(&all[..], &data[10..]);
        assert!(matches!(
            store.read(&r.id, 0, 8193),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            store.read(&r.id, 49_990, 11),
            Err(Error::InvalidInput(_))
        ));
        let missing = BlobId::of(b"nope");
        assert!(matches!(
            store.read(&missing, 0, 1),
            Err(Error::NotFound(_))
        ));
        assert!(store.stat(&missing).unwrap().is_none());
        // Empty blob.
        let e = store.put(b"").unwrap();
        assert_eq!(e.size_bytes, 0);
        assert!(store.read(&e.id, 0, 0).unwrap().is_empty());
    }
}

#[test]
fn dedupe_refcounts_and_created_ms_survive_reopen() {
    for (name, storage, _dir) in backends() {
        let now = Arc::new(AtomicU64::new(1000));
        let clock = now.clone();
        let config = BlobConfig {
            clock_ms: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..small_config()
        };
        let store = BlobStore::open(storage.clone(), config.clone()).unwrap();
        let data = content(2, 20_000);
        let a = store.put(&data).unwrap();
        now.store(5000, Ordering::SeqCst);
        let b = store.put(&data).unwrap();
        assert_eq!(a, b);
        // A second blob sharing its first chunks.
        let mut other = data[..12_288].to_vec();
        other.extend_from_slice(b"different tail");
        let c = store.put(&other).unwrap();
        assert_eq!(&c.chunks[..3], &a.chunks[..3]);
        let stats = store.stats();
        assert_eq!(stats.blobs, 2, "{name}");
        assert_eq!(stats.chunks, 6); // 5 of a + 1 tail of c
        assert_eq!(store.stat(&a.id).unwrap().unwrap().created_ms, 1000);
        drop(store);
        let store = BlobStore::open(storage.clone(), config.clone()).unwrap();
        assert_eq!(store.stat(&a.id).unwrap().unwrap().created_ms, 1000);
        assert!(store.delete(&a.id).unwrap());
        assert_eq!(&store.read(&a.id, 0, 4096).unwrap()[..], &data[..4096]);
        assert!(store.delete(&a.id).unwrap());
        assert!(!store.delete(&a.id).unwrap());
        assert!(store.stat(&a.id).unwrap().is_none());
        assert_eq!(&store.read(&c.id, 0, 8192).unwrap()[..], &other[..8192]);
        store.checkpoint().unwrap();
        drop(store);
        let store = BlobStore::open(storage, config).unwrap();
        assert!(store.stat(&a.id).unwrap().is_none());
        let stats = store.stats();
        assert_eq!(stats.blobs, 1);
        assert_eq!(stats.chunks_live, 4);
        let mut all = Vec::new();
        for piece in store.read_range(&c.id, 0..other.len() as u64).unwrap() {
            all.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(all, other);
    }
}

/// Puts 40 blobs of 9000 bytes (contents seeded from `seed`); returns the
/// quarter to keep, with their bytes, and the ids of the rest, to delete.
fn put_quarter_kept(store: &BlobStore, seed: u64) -> (Vec<(BlobId, Vec<u8>)>, Vec<BlobId>) {
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    for i in 0..40u64 {
        let data = content(seed + i, 9000);
        let r = store.put(&data).unwrap();
        if i % 4 == 0 {
            kept.push((r.id, data));
        } else {
            gone.push(r.id);
        }
    }
    (kept, gone)
}

#[test]
fn segments_roll_and_compaction_reclaims_after_deletes() {
    for (name, storage, _dir) in backends() {
        let config = BlobConfig {
            compaction_live_fraction_min: 0.9,
            ..small_config()
        };
        let store = BlobStore::open(storage.clone(), config.clone()).unwrap();
        let (kept, gone) = put_quarter_kept(&store, 100);
        // An aborted writer leaves garbage.
        let mut w = store.writer();
        w.write(&content(999, 20_000)).unwrap();
        drop(w);
        for id in &gone {
            assert!(store.delete(id).unwrap());
        }
        let before = store.stats();
        assert!(before.segments.len() > 3, "{name}: {before:?}");
        assert!(before.dead_bytes > before.live_bytes);
        let report = store.compact().unwrap();
        assert!(!report.segments_removed.is_empty(), "{name}");
        let after = store.stats();
        assert!(
            after.dead_bytes < before.dead_bytes / 2,
            "{name}: {after:?}"
        );
        assert_eq!(
            after.chunks_live, after.chunks,
            "{name}: garbage chunks left"
        );
        for (id, data) in &kept {
            assert_eq!(&store.read(id, 0, 8192).unwrap()[..], &data[..8192]);
        }
        drop(store);
        let store = BlobStore::open(storage, config).unwrap();
        for (id, data) in &kept {
            let mut all = Vec::new();
            for piece in store.read_range(id, 0..data.len() as u64).unwrap() {
                all.extend_from_slice(&piece.unwrap());
            }
            assert_eq!(&all, data, "{name}");
        }
        for id in &gone {
            assert!(store.stat(id).unwrap().is_none());
        }
        assert!(store.scrub(None).unwrap().is_clean());
    }
}

#[test]
fn concurrent_writers_share_syncs() {
    for (name, storage, _dir) in backends() {
        let store = BlobStore::open(
            storage,
            BlobConfig {
                segment_size_bytes_max: 1 << 30,
                ..small_config()
            },
        )
        .unwrap();
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..20u64)
                        .map(|i| {
                            let data = content(t * 1000 + i, 3000);
                            (store.put(&data).unwrap().id, data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for (id, data) in &all {
            assert_eq!(
                &store.read(id, 0, data.len() as u64).unwrap()[..],
                &data[..]
            );
        }
        let stats = store.stats();
        assert_eq!(stats.commits, 320);
        eprintln!("{name}: {} commits, {} syncs", stats.commits, stats.syncs);
        assert!(stats.syncs <= stats.commits, "{name}");
    }
}

#[test]
fn disk_full_is_typed_harmless_and_recoverable() {
    let fault = FaultStorage::new();
    let store = BlobStore::open(Arc::new(fault.clone()), small_config()).unwrap();
    let a_data = content(7, 30_000);
    let a = store.put(&a_data).unwrap();
    let used: u64 = ["blob-0000000000000001.seg"]
        .iter()
        .filter_map(|n| fault.file_len(n))
        .sum();
    fault.set_space_limit(Some(used + 5000));
    let mut saw_no_space = false;
    for i in 0..5 {
        match store.put(&content(50 + i, 30_000)) {
            Err(Error::NoSpace { .. }) => saw_no_space = true,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => {}
        }
    }
    assert!(saw_no_space);
    assert!(!store.stats().poisoned);
    assert_eq!(&store.read(&a.id, 0, 8192).unwrap()[..], &a_data[..8192]);
    fault.set_space_limit(None);
    let b_data = content(8, 30_000);
    let b = store.put(&b_data).unwrap();
    drop(store);
    fault.crash();
    let store = BlobStore::open(Arc::new(fault.clone()), small_config()).unwrap();
    for (r, d) in [(&a, &a_data), (&b, &b_data)] {
        let mut all = Vec::new();
        for piece in store.read_range(&r.id, 0..d.len() as u64).unwrap() {
            all.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(&all, d);
    }
}

#[test]
fn bit_flips_are_detected_by_reads_and_scrub() {
    let fault = FaultStorage::new();
    let store = BlobStore::open(Arc::new(fault.clone()), small_config()).unwrap();
    let data = content(9, 12_000);
    let r = store.put(&data).unwrap();
    store.checkpoint().unwrap();
    assert!(store.scrub(Some(1 << 30)).unwrap().is_clean());
    // Flip a bit in the middle of the second chunk's payload.
    let seg = "blob-0000000000000001.seg";
    let chunk_record = 48 + 4 + 4096 + 4;
    let offset = 32 + chunk_record as u64 + 48 + 4 + 2000;
    fault.flip_bit(seg, offset, 3).unwrap();
    assert_eq!(&store.read(&r.id, 0, 4096).unwrap()[..], &data[..4096]);
    match store.read(&r.id, 4096 + 1000, 10) {
        Err(Error::Corruption {
            segment,
            offset: at,
            ..
        }) => {
            assert_eq!(segment, Some(1));
            assert_eq!(at, 32 + chunk_record as u64 + 48 + 4);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let report = store.scrub(None).unwrap();
    assert_eq!(report.corrupt_chunks.len(), 1);
    assert_eq!(report.corrupt_chunks[0].0, r.chunks[1]);
    assert_eq!(report.corrupt_chunks[0].1.segment, 1);
    assert_eq!(report.corrupt_chunks[0].1.offset, 32 + chunk_record as u64);
    assert!(store.stats().corruptions_detected >= 1);
}

#[test]
fn failed_sync_poisons_until_reopen() {
    let fault = FaultStorage::new();
    let store = BlobStore::open(Arc::new(fault.clone()), small_config()).unwrap();
    let a = store.put(&content(1, 100)).unwrap();
    // A put of a 100-byte blob: chunk append, state append, sync.
    fault.fail_nth(2, FaultKind::Eio);
    let err = store.put(&content(2, 100)).unwrap_err();
    assert!(matches!(err, Error::Io { op: "sync", .. }), "{err}");
    assert!(matches!(store.put(&content(3, 100)), Err(Error::Poisoned)));
    assert!(matches!(store.delete(&a.id), Err(Error::Poisoned)));
    assert_eq!(store.read(&a.id, 0, 100).unwrap().len(), 100);
    assert!(store.stats().poisoned);
    drop(store);
    let store = BlobStore::open(Arc::new(fault), small_config()).unwrap();
    store.put(&content(4, 100)).unwrap();
}

#[test]
fn mapped_reads_match_and_detect_on_disk_corruption() {
    let mut choices = vec![BackendChoice::Portable];
    let probe = tempfile::tempdir().unwrap();
    match UringStorage::open(probe.path()) {
        Ok(_) => choices.push(BackendChoice::Uring),
        Err(e) => eprintln!("skipping io_uring backend: {e}"),
    }
    for choice in choices {
        let dir = tempfile::tempdir().unwrap();
        let config = BlobConfig {
            segment_size_bytes_max: 256 * 1024,
            ..small_config()
        };
        let store = BlobStore::open_dir(dir.path(), choice, config.clone()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..20u64).map(|i| content(200 + i, 30_000)).collect();
        let ids: Vec<BlobId> = blobs.iter().map(|b| store.put(b).unwrap().id).collect();
        for (id, data) in ids.iter().zip(&blobs) {
            for off in [0u64, 1, 4095, 10_000, 29_000] {
                let n = (data.len() as u64 - off).min(5000);
                let got = store.read(id, off, n).unwrap();
                assert_eq!(
                    &got[..],
                    &data[off as usize..(off + n) as usize],
                    "{choice:?}"
                );
            }
        }
        assert!(
            store.stats().segments.len() > 1,
            "{choice:?}: segments should roll"
        );
        drop(store);
        let store = BlobStore::open_dir(dir.path(), choice, config.clone()).unwrap();
        assert_eq!(
            &store.read(&ids[3], 100, 8000).unwrap()[..],
            &blobs[3][100..8100]
        );
        // Rot one payload byte of the first chunk on disk, behind the
        // store's back: the mapped read sees it and refuses.
        let seg = dir.path().join("blob-0000000000000001.seg");
        flip_bits(&seg, 32 + 48 + 4 + 10, 0x20);
        assert!(matches!(
            store.read(&ids[0], 0, 100),
            Err(Error::Corruption {
                segment: Some(1),
                ..
            })
        ));
        assert_eq!(store.scrub(None).unwrap().corrupt_chunks.len(), 1);
    }
}

#[test]
fn hot_chunks_are_kept_verified_in_locked_pages_or_on_the_heap() {
    use spindle_engine::blob::mapped::mapped_source;
    let config = BlobConfig {
        chunk_size_bytes: 16 * 1024,
        segment_size_bytes_max: 1 << 20,
        ..small_config()
    };
    for mapped in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = if mapped {
            BlobStore::open_dir(dir.path(), BackendChoice::Portable, config.clone()).unwrap()
        } else {
            let storage = open_storage(dir.path(), BackendChoice::Portable).unwrap();
            BlobStore::open(storage, config.clone()).unwrap()
        };
        let data = content(77, 100_000);
        let id = store.put(&data).unwrap().id;
        let read = |off: u64, n: u64| {
            let b = store.read(&id, off, n).unwrap();
            assert_eq!(&b[..], &data[off as usize..(off + n) as usize], "{off}+{n}");
            b
        };
        // First read of chunk 0: checked in part, not kept.
        let first = read(100, 1000);
        assert_eq!(store.stats().cache_admitted, 0);
        assert!(mapped_source(&first).is_none_or(|s| s.pin().is_none()));
        // Second: read whole, verified, kept.
        let second = read(5000, 3000);
        let s = store.stats();
        assert_eq!((s.cache_admitted, s.cache_bytes), (1, 16 * 1024));
        let locked = s.cache_locked_bytes > 0;
        match mapped_source(&second) {
            Some(src) => {
                assert!(mapped && locked, "a map slice is kept only locked");
                assert!(src.is_locked());
                assert_eq!(src.pin().unwrap(), second);
            }
            None => assert!(!locked, "a heap copy is not counted as locked"),
        }
        if mapped && !locked {
            println!("note: mlock refused here; kept a heap copy");
        }
        // Third: a hit.
        let hits = s.cache_hits;
        read(0, 16 * 1024);
        assert_eq!(store.stats().cache_hits, hits + 1);

        // Rot on disk under the kept chunk 0 and the unkept chunk 1.
        let seg = dir.path().join("blob-0000000000000001.seg");
        let rot = |at: u64| flip_bits(&seg, at, 0x08);
        // Chunk records are 48 + 4 * 4 blocks of header and table, then
        // the payload; the blob's records follow its chunks.
        let record = 48 + 16 + 16 * 1024 + 4;
        // Rot on the disk cannot reach locked pages, but this write goes
        // through the page cache, which is what a map shows; so only a heap
        // copy is tested against it.
        if !locked {
            rot(32 + 48 + 16 + 200);
        }
        rot(32 + record + 48 + 16 + 200);
        // The kept chunk answers with its verified bytes; chunk 1 is
        // refused on its first read and on the whole read of its second.
        read(0, 1000);
        for _ in 0..2 {
            assert!(matches!(
                store.read(&id, 16 * 1024, 1000),
                Err(Error::Corruption { .. })
            ));
        }
        assert_eq!(store.stats().cache_admitted, 1);
        // A range of chunk 1 clear of the bad block reads every time (the
        // whole read for the cache fails; the ranged read answers).
        let reported = store.stats().corruptions_detected;
        for _ in 0..3 {
            read(16 * 1024 + 8000, 1000);
        }
        let s = store.stats();
        assert_eq!(s.cache_admitted, 1);
        assert_eq!(
            s.corruptions_detected, reported,
            "the bad chunk is not read whole (and reported) again"
        );
        // Scrub reads the disk, not the cache.
        let rotten = if locked { 1 } else { 2 };
        assert_eq!(store.scrub(None).unwrap().corrupt_chunks.len(), rotten);
        drop((first, second));
        assert!(store.delete(&id).unwrap());
        let s = store.stats();
        assert_eq!((s.cache_bytes, s.cache_locked_bytes), (0, 0));
    }
}

#[test]
fn compaction_lets_go_of_kept_slices_of_the_segments_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let config = BlobConfig {
        compaction_live_fraction_min: 0.9,
        ..small_config()
    };
    let store = BlobStore::open_dir(dir.path(), BackendChoice::Portable, config).unwrap();
    let (kept, gone) = put_quarter_kept(&store, 300);
    let read_all = |store: &BlobStore| {
        for (id, data) in &kept {
            assert_eq!(&store.read(id, 0, 4096).unwrap()[..], &data[..4096]);
        }
    };
    read_all(&store);
    read_all(&store);
    let before = store.stats();
    assert_eq!(before.cache_admitted, kept.len() as u64);
    if before.cache_locked_bytes == 0 {
        println!("note: mlock refused here; nothing locked to let go of");
        return;
    }
    for id in &gone {
        store.delete(id).unwrap();
    }
    let report = store.compact().unwrap();
    assert!(!report.segments_removed.is_empty());
    let after = store.stats();
    assert!(
        after.cache_locked_bytes < before.cache_locked_bytes,
        "{before:?} {after:?}"
    );
    // The moved chunks are read (and kept again) from their new segments.
    read_all(&store);
    read_all(&store);
    assert!(store.stats().cache_locked_bytes > after.cache_locked_bytes);
    assert!(store.scrub(None).unwrap().is_clean());
}

/// Regression (found by model_blob): a crash that loses earlier unsynced
/// writes but keeps a later one leaves zeros then a valid record; that is a
/// torn tail, not corruption.
#[test]
fn lost_unsynced_writes_before_a_surviving_one_are_a_torn_tail() {
    let config = BlobConfig {
        chunk_size_bytes: 64,
        segment_size_bytes_max: 4096,
        ..small_config()
    };
    for seed in 0..64u64 {
        let fault = FaultStorage::new();
        let store = BlobStore::open(Arc::new(fault.clone()), config.clone()).unwrap();
        let kept_data = content(1, 300);
        let kept = store.put(&kept_data).unwrap();
        let mut w = store.writer();
        w.write(&content(seed + 2, 64 * 5)).unwrap(); // five unsynced chunks
        drop(w);
        drop(store);
        fault.crash_tearing(seed);
        let store = BlobStore::open(Arc::new(fault.clone()), config.clone())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(
            &store.read(&kept.id, 0, 128).unwrap()[..],
            &kept_data[..128]
        );
        assert!(store.scrub(None).unwrap().is_clean());
        store.put(&content(seed + 100, 500)).unwrap();
    }
}
