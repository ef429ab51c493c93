//! Format version 1 as committed bytes: `tests/fixtures/format-v1/` holds a
//! blob store (segments, a checkpoint, records after it) and a metadata
//! store (log and snapshot) written by this engine at format version 1.
//! Every later version must still open them and read the same content, so a
//! change to the on-disk format cannot slip in unnoticed (FORMAT.md says
//! how versions evolve).
//!
//! To write the fixture again (only when deliberately starting a new format
//! version, as a new directory): `SPINDLE_WRITE_FIXTURE=1 cargo test -p
//! spindle-engine --test format_v1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use spindle_engine::blob::{BlobConfig, BlobStore};
use spindle_engine::clock::SystemClock;
use spindle_engine::io::{open_storage, BackendChoice};
use spindle_engine::meta::{Batch, MetaConfig, MetaStore};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1")
}

fn blob_config() -> BlobConfig {
    BlobConfig {
        chunk_size_bytes: 4096,
        segment_size_bytes_max: 64 * 1024,
        ..BlobConfig::default()
    }
}

/// Deterministic content: `len` bytes from `seed`.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The blobs: (content, its id as format 1 names it).
fn blobs() -> Vec<(Vec<u8>, &'static str)> {
    let a = content(10_000, 1);
    // Shares its first two chunks with `a` (deduplicated on disk).
    let mut b = a[..8192].to_vec();
    b.extend_from_slice(&content(3000, 2));
    vec![
        (
            a,
            "bd13810ca189669eb3ded5f6b1738aff504999766c957978d6680814671d0ad5",
        ),
        (
            b,
            "f01654fc0ccc06d28aee416f2510ea1003b29242e486745c4ad4664edbf929d9",
        ),
        (
            content(70_000, 3),
            "6c25bb645cbd413a3bd08455af9550a432e1862bf01daff4cf62bcc7edc9207b",
        ),
        (
            Vec::new(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        ),
    ]
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let blob_dir = dir.join("blobs");
    let store = BlobStore::open(
        open_storage(&blob_dir, BackendChoice::Portable).unwrap(),
        blob_config(),
    )
    .unwrap();
    let all = blobs();
    for (data, _) in &all[..2] {
        store.put(data).unwrap();
    }
    store.checkpoint().unwrap();
    // After the checkpoint: recovery must scan these.
    for (data, _) in &all[2..] {
        store.put(data).unwrap();
    }
    drop(store);
    let meta = MetaStore::open(
        open_storage(&dir.join("meta"), BackendChoice::Portable).unwrap(),
        MetaConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    for i in 0..20u32 {
        let mut b = Batch::new();
        b.put("tracks", format!("t{i:02}"), format!("value {i}"));
        if i % 3 == 0 && i > 0 {
            // Deletes t01..t06, each put by an earlier batch.
            b.delete("tracks", format!("t{:02}", i / 3));
        }
        meta.commit(b).unwrap();
        if i == 10 {
            meta.snapshot_now().unwrap();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn format_1_stores_open_and_read_back() {
    if std::env::var_os("SPINDLE_WRITE_FIXTURE").is_some() {
        write_fixture(&fixture());
    }
    // Opening may truncate or checkpoint: work on a copy.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), tmp.path());
    let store = BlobStore::open(
        open_storage(&tmp.path().join("blobs"), BackendChoice::Portable).unwrap(),
        blob_config(),
    )
    .unwrap();
    for (data, id) in blobs() {
        let id: spindle_engine::blob::BlobId = id.parse().unwrap();
        let stat = store.stat(&id).unwrap().expect("blob of the fixture");
        assert_eq!(stat.size_bytes, data.len() as u64);
        let got: Vec<u8> = store
            .read_range(&id, 0..data.len() as u64)
            .unwrap()
            .flat_map(|p| p.unwrap().to_vec())
            .collect();
        assert!(got == data, "blob {id} reads back different bytes");
    }
    let scrub = store.scrub(None).unwrap();
    assert!(scrub.records_checked > 0);
    assert!(scrub.is_clean(), "{scrub:?}");
    let meta = MetaStore::open(
        open_storage(&tmp.path().join("meta"), BackendChoice::Portable).unwrap(),
        MetaConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    for i in 0..20u32 {
        let deleted = (1..=6).contains(&i);
        let got = meta.get("tracks", format!("t{i:02}").as_bytes()).unwrap();
        if deleted {
            assert_eq!(got, None, "t{i:02}");
        } else {
            assert_eq!(
                got.as_deref(),
                Some(format!("value {i}").as_bytes()),
                "t{i:02}"
            );
        }
    }
}
