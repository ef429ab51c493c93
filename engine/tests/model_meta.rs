//! Model test of the metadata store: random batches, scans with cursors in
//! both directions, snapshots, injected I/O failures, crashes (with torn
//! writes) and reopens, against a `BTreeMap` model. Every acknowledged batch
//! is durable, so the model is its own durable shadow; a batch whose commit
//! failed is "maybe": after the next crash it must be there whole or not at
//! all.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use spindle_engine::clock::{Clock, ManualClock};
use spindle_engine::io::fault::{FaultKind, FaultStorage};
use spindle_engine::io::{open_storage, BackendChoice, Storage};
use spindle_engine::meta::{Batch, Direction, Error, MetaConfig, MetaStore};

const KEYSPACES: [&str; 3] = ["tracks", "albums", "t"];

type Model = BTreeMap<(String, Vec<u8>), Vec<u8>>;

#[derive(Debug, Clone)]
enum MOp {
    Put(usize, Vec<u8>, Vec<u8>),
    Delete(usize, Vec<u8>),
}

#[derive(Debug, Clone)]
enum Step {
    Commit(Vec<MOp>),
    Scan {
        ks: usize,
        prefix: Vec<u8>,
        reverse: bool,
        limit: usize,
    },
    Range {
        ks: usize,
        lo: Option<(Vec<u8>, bool)>,
        hi: Option<(Vec<u8>, bool)>,
        reverse: bool,
        limit: usize,
    },
    Snapshot,
    Crash(Option<u64>),
    Reopen,
    FailingCommit {
        nth: u64,
        enospc: bool,
        ops: Vec<MOp>,
    },
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 0..4)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..24),
        1 => (any::<u8>(), 100usize..400).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        3 => (0..KEYSPACES.len(), key(), value()).prop_map(|(k, key, v)| MOp::Put(k, key, v)),
        1 => (0..KEYSPACES.len(), key()).prop_map(|(k, key)| MOp::Delete(k, key)),
    ]
}

fn bound() -> impl Strategy<Value = Option<(Vec<u8>, bool)>> {
    prop::option::of((key(), any::<bool>()))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec(mop(), 1..6).prop_map(Step::Commit),
        2 => (0..KEYSPACES.len(), key(), any::<bool>(), 1usize..5)
            .prop_map(|(ks, prefix, reverse, limit)| Step::Scan { ks, prefix, reverse, limit }),
        2 => (0..KEYSPACES.len(), bound(), bound(), any::<bool>(), 1usize..5)
            .prop_map(|(ks, lo, hi, reverse, limit)| Step::Range { ks, lo, hi, reverse, limit }),
        1 => Just(Step::Snapshot),
        1 => prop::option::of(any::<u64>()).prop_map(Step::Crash),
        1 => Just(Step::Reopen),
        1 => (0u64..8, any::<bool>(), prop::collection::vec(mop(), 1..4))
            .prop_map(|(nth, enospc, ops)| Step::FailingCommit { nth, enospc, ops }),
    ]
}

fn config() -> MetaConfig {
    MetaConfig {
        node_id: 7,
        compress_values_over_bytes: Some(64),
        snapshot_after_log_bytes: 2048,
        ..MetaConfig::default()
    }
}

fn open(storage: Arc<dyn Storage>, clock: &Arc<ManualClock>) -> MetaStore {
    let c: Arc<dyn Clock> = clock.clone();
    MetaStore::open(storage, config(), c).expect("open")
}

fn batch_of(ops: &[MOp]) -> Batch {
    let mut b = Batch::new();
    for op in ops {
        match op {
            MOp::Put(ks, k, v) => b.put(KEYSPACES[*ks], k, v),
            MOp::Delete(ks, k) => b.delete(KEYSPACES[*ks], k),
        }
    }
    b
}

fn apply(model: &mut Model, ops: &[MOp]) {
    for op in ops {
        match op {
            MOp::Put(ks, k, v) => {
                model.insert((KEYSPACES[*ks].to_owned(), k.clone()), v.clone());
            }
            MOp::Delete(ks, k) => {
                model.remove(&(KEYSPACES[*ks].to_owned(), k.clone()));
            }
        }
    }
}

/// Everything in the store, read through paginated forward scans.
fn dump(store: &MetaStore) -> Model {
    let mut out = Model::new();
    for ks in KEYSPACES {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = store
                .scan_range(
                    ks,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    Direction::Forward,
                    cursor.as_deref(),
                    3,
                )
                .unwrap();
            for (k, v) in page.items {
                out.insert((ks.to_owned(), k.to_vec()), v.to_vec());
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out
}

fn paginate(
    store: &MetaStore,
    ks: &str,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
    dir: Direction,
    limit: usize,
) -> Vec<(Bytes, Bytes)> {
    let mut all = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    for _ in 0..1000 {
        let page = store
            .scan_range(ks, lo, hi, dir, cursor.as_deref(), limit)
            .unwrap();
        assert!(page.items.len() <= limit);
        all.extend(page.items);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
    panic!("scan did not finish");
}

fn model_range(
    model: &Model,
    ks: &str,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
    dir: Direction,
) -> Vec<(Bytes, Bytes)> {
    let inb = |k: &[u8]| {
        (match lo {
            Bound::Unbounded => true,
            Bound::Included(s) => k >= s,
            Bound::Excluded(s) => k > s,
        }) && (match hi {
            Bound::Unbounded => true,
            Bound::Included(e) => k <= e,
            Bound::Excluded(e) => k < e,
        })
    };
    let mut v: Vec<(Bytes, Bytes)> = model
        .iter()
        .filter(|((k, key), _)| k == ks && inb(key))
        .map(|((_, key), val)| (Bytes::from(key.clone()), Bytes::from(val.clone())))
        .collect();
    if dir == Direction::Reverse {
        v.reverse();
    }
    v
}

fn to_bound(b: &Option<(Vec<u8>, bool)>) -> Bound<&[u8]> {
    match b {
        None => Bound::Unbounded,
        Some((k, true)) => Bound::Included(k.as_slice()),
        Some((k, false)) => Bound::Excluded(k.as_slice()),
    }
}

fn run(steps: Vec<Step>) {
    let disk = FaultStorage::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut store = open(Arc::new(disk.clone()), &clock);
    let mut model = Model::new();
    // A batch whose commit failed: present whole or absent after a crash.
    let mut maybe: Option<Vec<MOp>> = None;
    let mut last_lsn = 0u64;
    for step in steps {
        clock.advance(3);
        match step {
            Step::Commit(ops) => {
                if store.is_poisoned() {
                    assert!(matches!(store.commit(batch_of(&ops)), Err(Error::Poisoned)));
                    continue;
                }
                let c = store.commit(batch_of(&ops)).unwrap();
                assert_eq!(c.lsn, last_lsn + 1, "LSNs are dense");
                last_lsn = c.lsn;
                apply(&mut model, &ops);
            }
            Step::FailingCommit { nth, enospc, ops } => {
                let kind = if enospc {
                    FaultKind::Enospc
                } else {
                    FaultKind::Eio
                };
                disk.fail_nth(nth, kind);
                match store.commit(batch_of(&ops)) {
                    Ok(c) => {
                        last_lsn = c.lsn;
                        apply(&mut model, &ops);
                    }
                    Err(_) => {
                        // Resolve the uncertainty now: crash and reopen.
                        disk.crash();
                        store = open(Arc::new(disk.clone()), &clock);
                        let mut with = model.clone();
                        apply(&mut with, &ops);
                        let got = dump(&store);
                        if got == with {
                            model = with;
                        } else {
                            assert_eq!(got, model, "failed batch present in part");
                        }
                        last_lsn = store.head_lsn();
                    }
                }
                disk.clear_faults();
                maybe = None;
            }
            Step::Scan {
                ks,
                prefix,
                reverse,
                limit,
            } => {
                let dir = if reverse {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                let mut got = Vec::new();
                let mut cursor: Option<Vec<u8>> = None;
                loop {
                    let page = store
                        .scan_prefix(KEYSPACES[ks], &prefix, dir, cursor.as_deref(), limit)
                        .unwrap();
                    got.extend(page.items);
                    match page.cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                let want: Vec<(Bytes, Bytes)> = model_range(
                    &model,
                    KEYSPACES[ks],
                    Bound::Unbounded,
                    Bound::Unbounded,
                    dir,
                )
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .collect();
                assert_eq!(got, want, "prefix scan {prefix:?} {dir:?}");
            }
            Step::Range {
                ks,
                lo,
                hi,
                reverse,
                limit,
            } => {
                let dir = if reverse {
                    Direction::Reverse
                } else {
                    Direction::Forward
                };
                let got = paginate(
                    &store,
                    KEYSPACES[ks],
                    to_bound(&lo),
                    to_bound(&hi),
                    dir,
                    limit,
                );
                let want = model_range(&model, KEYSPACES[ks], to_bound(&lo), to_bound(&hi), dir);
                assert_eq!(got, want, "range {lo:?}..{hi:?} {dir:?}");
            }
            Step::Snapshot => {
                if !store.is_poisoned() {
                    store.snapshot_now().unwrap();
                }
            }
            Step::Crash(tear) => {
                match tear {
                    Some(seed) => disk.crash_tearing(seed),
                    None => disk.crash(),
                }
                store = open(Arc::new(disk.clone()), &clock);
                assert_eq!(store.head_lsn(), last_lsn, "acknowledged LSNs survive");
            }
            Step::Reopen => {
                drop(store);
                store = open(Arc::new(disk.clone()), &clock);
                assert_eq!(store.head_lsn(), last_lsn);
            }
        }
        assert!(maybe.is_none());
        let got = dump(&store);
        assert_eq!(got, model);
        assert_eq!(store.stats().records, model.len() as u64);
        for ((ks, k), v) in model.iter().take(5) {
            assert_eq!(store.get(ks, k).unwrap().as_deref(), Some(v.as_slice()));
        }
    }
    maybe.take();
    // Finally: a clean crash keeps everything acknowledged.
    disk.crash();
    let store = open(Arc::new(disk.clone()), &clock);
    assert_eq!(dump(&store), model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(steps in prop::collection::vec(step(), 1..60)) {
        run(steps);
    }
}

/// The same workload shape on the real backends, with reopen in between.
fn real_backend(choice: BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let storage = match open_storage(dir.path(), choice) {
        Ok(s) => s,
        Err(e) => {
            println!("skipping {choice:?} backend: {e}");
            return;
        }
    };
    let clock = Arc::new(ManualClock::new(5));
    let mut store = open(storage.clone(), &clock);
    let mut model = Model::new();
    let mut seed = 0x1234_5678u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut ops = Vec::new();
        for _ in 0..(next() % 4 + 1) {
            let ks = (next() % 3) as usize;
            let key = vec![b'a' + (next() % 6) as u8, (next() % 3) as u8];
            if next() % 4 == 0 {
                ops.push(MOp::Delete(ks, key));
            } else {
                let n = (next() % 300) as usize;
                ops.push(MOp::Put(ks, key, vec![(round % 251) as u8; n]));
            }
        }
        store.commit(batch_of(&ops)).unwrap();
        apply(&mut model, &ops);
        if round % 50 == 49 {
            drop(store);
            store = open(storage.clone(), &clock);
        }
    }
    assert_eq!(dump(&store), model);
    assert!(store.stats().snapshots > 0 || store.stats().snapshot_lsn > 0);
    let rev = paginate(
        &store,
        "tracks",
        Bound::Unbounded,
        Bound::Unbounded,
        Direction::Reverse,
        2,
    );
    assert_eq!(
        rev,
        model_range(
            &model,
            "tracks",
            Bound::Unbounded,
            Bound::Unbounded,
            Direction::Reverse
        )
    );
}

#[test]
fn portable_backend_workload() {
    real_backend(BackendChoice::Portable);
}

#[test]
fn uring_backend_workload() {
    real_backend(BackendChoice::Uring);
}

#[test]
fn flipped_bit_in_the_log_is_reported_as_corruption() {
    let disk = FaultStorage::new();
    let clock = Arc::new(ManualClock::new(5));
    let store = MetaStore::open(
        Arc::new(disk.clone()),
        MetaConfig {
            snapshot_after_log_bytes: u64::MAX,
            ..MetaConfig::default()
        },
        clock.clone(),
    )
    .unwrap();
    for i in 0..10u32 {
        let mut b = Batch::new();
        b.put("ks", i.to_be_bytes(), vec![1u8; 50]);
        store.commit(b).unwrap();
    }
    drop(store);
    let name = disk
        .list()
        .unwrap()
        .into_iter()
        .find(|n| n.ends_with(".log"))
        .unwrap();
    // A bit in the middle of the third record: acknowledged data follows it,
    // so this is not a torn tail.
    disk.flip_bit(&name, 32 + 2 * 116 + 60, 3).unwrap();
    match MetaStore::open(Arc::new(disk.clone()), MetaConfig::default(), clock) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!(file, name);
            assert!(offset > 32, "offset {offset}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("corruption not detected"),
    }
}

#[test]
fn index_and_record_commit_atomically() {
    use spindle_engine::meta::index;
    let disk = FaultStorage::new();
    let clock = Arc::new(ManualClock::new(5));
    let store = open(Arc::new(disk.clone()), &clock);
    let mut b = Batch::new();
    b.put("tracks", b"t1", b"artist=abba");
    index::update(&mut b, "tracks_by_artist", None, Some(b"abba"), b"t1");
    store.commit(b).unwrap();
    // An update whose commit fails at the write: neither half lands.
    let mut b = Batch::new();
    b.put("tracks", b"t1", b"artist=queen");
    index::update(
        &mut b,
        "tracks_by_artist",
        Some(b"abba"),
        Some(b"queen"),
        b"t1",
    );
    disk.fail_nth(0, FaultKind::Eio);
    assert!(store.commit(b).is_err());
    disk.crash();
    let store = open(Arc::new(disk.clone()), &clock);
    assert_eq!(
        store.get("tracks", b"t1").unwrap().as_deref(),
        Some(&b"artist=abba"[..])
    );
    let page = store
        .scan_prefix(
            "tracks_by_artist",
            &index::index_prefix(b"abba"),
            Direction::Forward,
            None,
            10,
        )
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(index::primary_key_of(&page.items[0].0), Some(&b"t1"[..]));
    assert_eq!(store.keyspace_len("tracks_by_artist"), 1);
}

/// Concurrent commits share syncs, every one is applied, LSNs are dense and
/// HLCs increase with them; after a reopen all are still there.
#[test]
fn concurrent_commits_are_grouped_and_ordered() {
    for choice in [BackendChoice::Portable, BackendChoice::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let storage = match open_storage(dir.path(), choice) {
            Ok(s) => s,
            Err(e) => {
                println!("skipping {choice:?} backend: {e}");
                continue;
            }
        };
        let clock = Arc::new(ManualClock::new(5));
        let store = open(storage.clone(), &clock);
        let threads = 16;
        let per_thread = 40u32;
        let commits: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let mut b = Batch::new();
                            b.put("g", format!("{t:02}/{i:03}"), [t as u8; 200]);
                            store.commit(b).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = commits
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|c| c.lsn);
        let n = u64::from(per_thread) * threads as u64;
        assert_eq!(all.len() as u64, n);
        for (i, w) in all.windows(2).enumerate() {
            assert_eq!(w[1].lsn, w[0].lsn + 1, "dense at {i}");
            assert!(w[1].hlc > w[0].hlc, "HLC follows LSN at {i}");
        }
        let stats = store.stats();
        assert_eq!(stats.commits, n);
        assert!(stats.syncs < stats.commits, "no grouping: {stats:?}");
        drop(store);
        let store = open(storage, &clock);
        assert_eq!(store.keyspace_len("g"), n);
        assert_eq!(store.head_lsn(), all.last().unwrap().lsn);
    }
}

/// A damaged record followed by an intact one of the same group commit is a
/// torn, unacknowledged write (sectors persist out of order); followed by one
/// of a later group it is corruption of acknowledged data.
#[test]
fn torn_group_versus_corrupted_acknowledged_record() {
    use spindle_engine::clock::Hlc;
    use spindle_engine::io::OpenMode;
    use spindle_engine::meta::wal::{self, Op};
    for (third_group_index, expect_ok) in [(1u32, true), (0u32, false)] {
        let disk = FaultStorage::new();
        let op = |k: &str| Op::Put {
            keyspace: "ks".into(),
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"value"),
        };
        let mut data = wal::encode_segment_header(1).to_vec();
        wal::encode_record(&mut data, 1, Hlc(10), 1, 0, &[op("a")], None);
        let second_at = data.len();
        // Records 2 and 3: record 2 starts a group; record 3 is either its
        // second member or the first of a later group.
        wal::encode_record(&mut data, 2, Hlc(11), 1, 0, &[op("b")], None);
        wal::encode_record(
            &mut data,
            3,
            Hlc(12),
            1,
            third_group_index,
            &[op("c")],
            None,
        );
        data[second_at + 50] ^= 0x01;
        let name = "meta-00000000000000000001.log";
        let f = disk.open(name, OpenMode::CreateNew).unwrap();
        f.write_all_at(&data, 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir().unwrap();
        drop(f);
        let clock = Arc::new(ManualClock::new(5));
        let c: Arc<dyn Clock> = clock.clone();
        match MetaStore::open(Arc::new(disk.clone()), config(), c) {
            Ok(store) => {
                assert!(
                    expect_ok,
                    "corruption of an acknowledged record not detected"
                );
                assert_eq!(store.head_lsn(), 1);
                assert!(store.get("ks", b"a").unwrap().is_some());
                assert!(store.get("ks", b"c").unwrap().is_none());
                // The tail was cut: new commits continue at LSN 2.
                let mut b = Batch::new();
                b.put("ks", b"d", b"x");
                assert_eq!(store.commit(b).unwrap().lsn, 2);
            }
            Err(Error::Corruption { file, offset, .. }) => {
                assert!(!expect_ok, "a torn group was reported as corruption");
                assert_eq!(file, name);
                assert_eq!(offset, second_at as u64);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}
