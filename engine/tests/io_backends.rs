//! The storage contract, checked the same way over every backend (portable
//! and io_uring on a temporary directory, fault in memory), then the fault
//! backend's own behaviour: crashes, torn writes, injected errors, a full
//! disk and bit rot, plus a proptest of random operations and crashes
//! against a small model of what is durable.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use proptest::prelude::*;
use spindle_engine::io::fault::{FaultKind, FaultStorage};
use spindle_engine::io::portable::PortableStorage;
use spindle_engine::io::uring::UringStorage;
use spindle_engine::io::{open_storage, BackendChoice, BackendKind, OpenMode, Storage};

fn kind_of<T>(result: io::Result<T>) -> io::ErrorKind {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.kind(),
    }
}

fn read_all(storage: &dyn Storage, name: &str) -> Vec<u8> {
    let file = storage.open(name, OpenMode::Existing).unwrap();
    let len = file.len().unwrap() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).unwrap();
    buf
}

fn sorted_list(storage: &dyn Storage) -> Vec<String> {
    let mut names = storage.list().unwrap();
    names.sort();
    names
}

/// The contract every backend honours, on an empty directory.
fn check_contract(storage: &dyn Storage) {
    // Open modes.
    assert_eq!(
        kind_of(storage.open("a", OpenMode::Existing)),
        io::ErrorKind::NotFound
    );
    let a = storage.open("a", OpenMode::CreateNew).unwrap();
    assert_eq!(a.len().unwrap(), 0);
    assert_eq!(
        kind_of(storage.open("a", OpenMode::CreateNew)),
        io::ErrorKind::AlreadyExists
    );
    for bad in ["", ".", "..", "x/y", "nul\0"] {
        assert_eq!(
            kind_of(storage.open(bad, OpenMode::CreateOrOpen)),
            io::ErrorKind::InvalidInput,
            "name {bad:?}"
        );
    }

    // Write and read back, through another handle too.
    a.write_all_at(b"hello world", 0).unwrap();
    assert_eq!(a.len().unwrap(), 11);
    let mut buf = [0u8; 5];
    a.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    let again = storage.open("a", OpenMode::CreateOrOpen).unwrap();
    assert_eq!(&again.read_bytes_at(0, 5).unwrap()[..], b"hello");
    let existing = storage.open("a", OpenMode::Existing).unwrap();
    assert_eq!(existing.len().unwrap(), 11);

    // Reads past the end.
    let mut buf = [0u8; 4];
    assert_eq!(
        kind_of(a.read_exact_at(&mut buf, 9)),
        io::ErrorKind::UnexpectedEof
    );
    assert_eq!(
        kind_of(a.read_exact_at(&mut buf, 100)),
        io::ErrorKind::UnexpectedEof
    );
    assert_eq!(
        kind_of(a.read_bytes_at(11, 1)),
        io::ErrorKind::UnexpectedEof
    );
    a.read_exact_at(&mut [], 11).unwrap();

    // Overwrite in place and write past the end (the gap reads as zeros).
    a.write_all_at(b"J", 6).unwrap();
    a.write_all_at(b"!", 14).unwrap();
    assert_eq!(read_all(storage, "a"), b"hello Jorld\0\0\0!");

    // Vectored writes land back to back.
    let b = storage.open("b", OpenMode::CreateOrOpen).unwrap();
    b.write_all_vectored_at(&[b"one", b"", b"two", b"three"], 2)
        .unwrap();
    assert_eq!(read_all(storage, "b"), b"\0\0onetwothree");
    b.write_all_vectored_at(&[], 0).unwrap();
    assert_eq!(b.len().unwrap(), 13);

    // More buffers than one io_uring batch holds.
    let many: Vec<Vec<u8>> = (0..150u32)
        .map(|i| vec![i as u8; (i % 7) as usize + 1])
        .collect();
    let many_refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    let d = storage.open("d", OpenMode::CreateNew).unwrap();
    d.write_all_vectored_at(&many_refs, 5).unwrap();
    let mut expected = vec![0u8; 5];
    expected.extend(many.concat());
    assert_eq!(read_all(storage, "d"), expected);
    storage.remove("d").unwrap();

    // A large write and read (several megabytes, many pages).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let c = storage.open("c", OpenMode::CreateNew).unwrap();
    c.write_all_vectored_at(&[&big[..1_000_001], &big[1_000_001..]], 0)
        .unwrap();
    let mut back = vec![0u8; big.len()];
    c.read_exact_at(&mut back, 0).unwrap();
    assert!(back == big, "large vectored write read back differently");

    // set_len truncates and extends with zeros.
    c.set_len(4).unwrap();
    assert_eq!(c.len().unwrap(), 4);
    c.set_len(6).unwrap();
    assert_eq!(read_all(storage, "c"), [0, 1, 2, 3, 0, 0]);
    c.sync_data().unwrap();

    // Listing.
    assert_eq!(sorted_list(storage), ["a", "b", "c"]);

    // Rename replaces the target; an open handle follows the file.
    storage.rename("b", "a").unwrap();
    assert_eq!(sorted_list(storage), ["a", "c"]);
    assert_eq!(read_all(storage, "a"), b"\0\0onetwothree");
    b.write_all_at(b"ON", 2).unwrap();
    assert_eq!(read_all(storage, "a"), b"\0\0ONetwothree");
    assert_eq!(
        kind_of(storage.open("b", OpenMode::Existing)),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        kind_of(storage.rename("missing", "x")),
        io::ErrorKind::NotFound
    );
    storage.rename("c", "c").unwrap();
    assert_eq!(sorted_list(storage), ["a", "c"]);

    // Remove.
    storage.remove("c").unwrap();
    assert_eq!(sorted_list(storage), ["a"]);
    assert_eq!(kind_of(storage.remove("c")), io::ErrorKind::NotFound);
    // A handle on a removed file keeps working (POSIX unlink semantics).
    c.write_all_at(b"zz", 0).unwrap();
    assert_eq!(&c.read_bytes_at(0, 2).unwrap()[..], b"zz");

    // Syncs succeed.
    a.sync_data().unwrap();
    b.sync_data().unwrap();
    storage.sync_dir().unwrap();

    // Concurrent positional writes and reads from several threads.
    let shared = storage.open("shared", OpenMode::CreateNew).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let file = Arc::clone(&shared);
            scope.spawn(move || {
                for i in 0..50u64 {
                    let offset = (u64::from(t) * 50 + i) * 64;
                    file.write_all_vectored_at(&[&[t; 32], &[i as u8; 32]], offset)
                        .unwrap();
                    let mut got = [0u8; 64];
                    file.read_exact_at(&mut got, offset).unwrap();
                    assert_eq!(&got[..32], &[t; 32]);
                    assert_eq!(&got[32..], &[i as u8; 32]);
                }
                file.sync_data().unwrap();
            });
        }
    });
    assert_eq!(shared.len().unwrap(), 4 * 50 * 64);
}

#[test]
fn contract_portable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = PortableStorage::open(&dir.path().join("store")).unwrap();
    assert_eq!(storage.kind(), BackendKind::Portable);
    check_contract(&storage);
}

#[test]
fn contract_uring() {
    let dir = tempfile::tempdir().unwrap();
    let storage = match UringStorage::open(dir.path()) {
        Ok(storage) => storage,
        Err(error) => {
            println!("skipping the io_uring contract test: io_uring unavailable: {error}");
            return;
        }
    };
    assert_eq!(storage.kind(), BackendKind::Uring);
    check_contract(&storage);
}

#[test]
fn contract_fault() {
    let storage = FaultStorage::new();
    assert_eq!(storage.kind(), BackendKind::Fault);
    check_contract(&storage);
}

#[test]
fn open_storage_honours_the_choice() {
    let dir = tempfile::tempdir().unwrap();
    let portable = open_storage(&dir.path().join("p"), BackendChoice::Portable).unwrap();
    assert_eq!(portable.kind(), BackendKind::Portable);
    let auto = open_storage(&dir.path().join("a"), BackendChoice::Auto).unwrap();
    match open_storage(&dir.path().join("u"), BackendChoice::Uring) {
        Ok(uring) => {
            assert_eq!(uring.kind(), BackendKind::Uring);
            assert_eq!(auto.kind(), BackendKind::Uring);
        }
        Err(error) => {
            println!("io_uring unavailable ({error}); auto must fall back");
            assert_eq!(auto.kind(), BackendKind::Portable);
        }
    }
    // Both real backends see the same files.
    let file = auto.open("x", OpenMode::CreateNew).unwrap();
    file.write_all_at(b"shared", 0).unwrap();
    let portable_view = PortableStorage::open(&dir.path().join("a")).unwrap();
    assert_eq!(read_all(&portable_view, "x"), b"shared");
}

#[test]
fn crash_drops_unsynced_data_and_directory_changes() {
    let fs = FaultStorage::new();
    // "kept": created, dir-synced, written and synced.
    let kept = fs.open("kept", OpenMode::CreateNew).unwrap();
    fs.sync_dir().unwrap();
    kept.write_all_at(b"durable", 0).unwrap();
    kept.sync_data().unwrap();
    // Written after the sync: lost.
    kept.write_all_at(b"-volatile", 7).unwrap();
    // Created and dir-synced, never data-synced: present and empty.
    let empty = fs.open("empty", OpenMode::CreateNew).unwrap();
    empty.write_all_at(b"gone", 0).unwrap();
    // Renamed without a dir sync: the rename is undone.
    let moved = fs.open("before", OpenMode::CreateNew).unwrap();
    moved.write_all_at(b"moved", 0).unwrap();
    moved.sync_data().unwrap();
    fs.sync_dir().unwrap();
    fs.rename("before", "after").unwrap();
    // Data synced, but the creation never dir-synced: lost.
    let orphan = fs.open("orphan", OpenMode::CreateNew).unwrap();
    orphan.write_all_at(b"data", 0).unwrap();
    orphan.sync_data().unwrap();
    // Removed without a dir sync: comes back.
    fs.remove("kept").unwrap();
    assert_eq!(fs.file_len("kept"), None);

    let restarted = fs.clone();
    fs.crash();
    assert_eq!(sorted_list(&restarted), ["before", "empty", "kept"]);
    assert_eq!(read_all(&restarted, "kept"), b"durable");
    assert_eq!(read_all(&restarted, "empty"), b"");
    assert_eq!(read_all(&restarted, "before"), b"moved");
    assert_eq!(restarted.file_len("after"), None);
    assert_eq!(restarted.file_len("kept"), Some(7));
}

#[test]
fn synced_directory_changes_survive_a_crash() {
    let fs = FaultStorage::new();
    let file = fs.open("tmp", OpenMode::CreateNew).unwrap();
    file.write_all_at(b"new version", 0).unwrap();
    file.sync_data().unwrap();
    let old = fs.open("current", OpenMode::CreateNew).unwrap();
    old.write_all_at(b"old", 0).unwrap();
    old.sync_data().unwrap();
    fs.sync_dir().unwrap();
    fs.rename("tmp", "current").unwrap();
    fs.sync_dir().unwrap();
    let gone = fs.open("gone", OpenMode::CreateNew).unwrap();
    gone.sync_data().unwrap();
    fs.sync_dir().unwrap();
    fs.remove("gone").unwrap();
    fs.sync_dir().unwrap();
    // set_len is data: durable after sync_data.
    file.set_len(3).unwrap();
    file.sync_data().unwrap();
    file.set_len(1).unwrap();
    fs.crash();
    assert_eq!(sorted_list(&fs), ["current"]);
    assert_eq!(read_all(&fs, "current"), b"new");
}

#[test]
fn handles_from_before_a_crash_fail() {
    let fs = FaultStorage::new();
    let old = fs.open("f", OpenMode::CreateNew).unwrap();
    old.write_all_at(b"abc", 0).unwrap();
    old.sync_data().unwrap();
    fs.sync_dir().unwrap();
    fs.crash();
    assert!(old.write_all_at(b"x", 0).is_err());
    assert!(old.read_exact_at(&mut [0u8; 1], 0).is_err());
    assert!(old.len().is_err());
    assert!(old.set_len(0).is_err());
    assert!(old.sync_data().is_err());
    assert!(old.write_all_vectored_at(&[b"x"], 0).is_err());
    // Nothing the dead handle tried reached the disk.
    assert_eq!(read_all(&fs, "f"), b"abc");
    // Dropping the dead handle does not disturb the new run.
    let new = fs.open("f", OpenMode::Existing).unwrap();
    drop(old);
    new.write_all_at(b"d", 3).unwrap();
    assert_eq!(read_all(&fs, "f"), b"abcd");
}

#[test]
fn crash_tearing_keeps_a_prefix_of_the_last_write() {
    let data: Vec<u8> = (0..200u8).collect();
    let mut lengths = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let fs = FaultStorage::new();
        let other = fs.open("other", OpenMode::CreateNew).unwrap();
        let file = fs.open("f", OpenMode::CreateNew).unwrap();
        fs.sync_dir().unwrap();
        file.write_all_at(b"base", 0).unwrap();
        file.sync_data().unwrap();
        other.write_all_at(b"lost", 0).unwrap();
        file.write_all_at(b"also lost", 4).unwrap();
        file.write_all_at(&data, 4).unwrap();
        fs.crash_tearing(seed);
        assert_eq!(read_all(&fs, "other"), b"");
        let got = read_all(&fs, "f");
        assert_eq!(&got[..4], b"base");
        let torn = &got[4..];
        assert_eq!(torn, &data[..torn.len()], "seed {seed}");
        lengths.insert(torn.len());
        // Same seed, same tear.
        let again = FaultStorage::new();
        let f2 = again.open("f", OpenMode::CreateNew).unwrap();
        again.sync_dir().unwrap();
        f2.write_all_at(b"base", 0).unwrap();
        f2.sync_data().unwrap();
        f2.write_all_at(&data, 4).unwrap();
        again.crash_tearing(seed);
        assert_eq!(read_all(&again, "f"), got);
    }
    assert!(
        lengths.len() > 10,
        "tears should vary with the seed: {lengths:?}"
    );
    // A synced last write leaves nothing to tear.
    let fs = FaultStorage::new();
    let file = fs.open("f", OpenMode::CreateNew).unwrap();
    fs.sync_dir().unwrap();
    file.write_all_at(b"all synced", 0).unwrap();
    file.sync_data().unwrap();
    fs.crash_tearing(7);
    assert_eq!(read_all(&fs, "f"), b"all synced");
}

#[test]
fn fail_nth_fails_exactly_that_operation_once() {
    let fs = FaultStorage::new();
    let file = fs.open("f", OpenMode::CreateNew).unwrap();
    let start = fs.op_count();
    fs.fail_nth(2, FaultKind::Eio);
    file.write_all_at(b"one", 0).unwrap(); // n = 0
    file.sync_data().unwrap(); // n = 1
    let error = file.write_all_at(b"two", 3).unwrap_err(); // n = 2
    assert_eq!(error.raw_os_error(), Some(libc::EIO));
    assert_eq!(file.len().unwrap(), 3, "a failed write applies nothing");
    file.write_all_at(b"two", 3).unwrap();
    assert_eq!(fs.op_count(), start + 5);

    // A failed sync makes nothing durable.
    fs.fail_nth(0, FaultKind::Enospc);
    let error = file.sync_data().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
    fs.sync_dir().unwrap();
    fs.crash();
    assert_eq!(read_all(&fs, "f"), b"one");

    // Directory operations count too, and a failed one changes nothing.
    fs.fail_nth(0, FaultKind::Eio);
    assert!(fs.open("g", OpenMode::CreateNew).is_err());
    assert_eq!(fs.file_len("g"), None);
    fs.fail_nth(0, FaultKind::Eio);
    assert!(fs.rename("f", "h").is_err());
    assert_eq!(sorted_list(&fs), ["f"]);
    fs.rename("f", "h").unwrap();
    fs.fail_nth(0, FaultKind::Eio);
    assert!(fs.sync_dir().is_err());
    fs.crash();
    assert_eq!(sorted_list(&fs), ["f"]);

    // clear_faults cancels; a crash cancels too.
    fs.fail_nth(0, FaultKind::Eio);
    fs.clear_faults();
    fs.list().unwrap();
    fs.fail_nth(0, FaultKind::Eio);
    fs.crash();
    fs.list().unwrap();
}

#[test]
fn fail_nth_over_every_operation_of_a_workload() {
    fn workload(fs: &FaultStorage) -> io::Result<()> {
        let file = fs.open("log", OpenMode::CreateOrOpen)?;
        file.write_all_at(b"record-1", 0)?;
        file.sync_data()?;
        fs.sync_dir()?;
        file.write_all_vectored_at(&[b"record", b"-2"], 8)?;
        file.sync_data()?;
        let tmp = fs.open("tmp", OpenMode::CreateNew)?;
        tmp.write_all_at(b"manifest", 0)?;
        tmp.sync_data()?;
        fs.rename("tmp", "manifest")?;
        fs.sync_dir()
    }
    let clean = FaultStorage::new();
    workload(&clean).unwrap();
    let total = clean.op_count();
    assert_eq!(total, 11);
    for n in 0..total {
        let fs = FaultStorage::new();
        fs.fail_nth(n, FaultKind::Eio);
        let error = workload(&fs).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO), "op {n}");
        assert_eq!(fs.op_count(), n + 1, "the workload stops at op {n}");
        fs.crash();
        // What survived is exactly what was synced before the failure: the
        // log's first record once its sync and dir sync (ops 2 and 3) passed;
        // the second record once its sync (op 5) passed; never the manifest,
        // whose rename needs the final dir sync (op 10), nor the temporary.
        let expected: &[&str] = if n >= 4 { &["log"] } else { &[] };
        assert_eq!(sorted_list(&fs), expected, "op {n}");
        if n >= 4 {
            let log = read_all(&fs, "log");
            let want: &[u8] = if n >= 6 {
                b"record-1record-2"
            } else {
                b"record-1"
            };
            assert_eq!(log, want, "op {n}");
        }
    }
}

#[test]
fn space_limit_gives_enospc_and_recovers_after_remove() {
    let fs = FaultStorage::new();
    fs.set_space_limit(Some(100));
    let a = fs.open("a", OpenMode::CreateNew).unwrap();
    a.write_all_at(&[1; 60], 0).unwrap();
    let b = fs.open("b", OpenMode::CreateNew).unwrap();
    b.write_all_at(&[2; 40], 0).unwrap();
    let error = b.write_all_at(&[2; 1], 40).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(b.len().unwrap(), 40, "the failed write applied nothing");
    assert_eq!(
        b.set_len(41).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    // Overwriting in place needs no space.
    b.write_all_at(&[3; 40], 0).unwrap();
    // Removing a file still open frees nothing until its handle goes.
    fs.remove("a").unwrap();
    assert!(b.write_all_at(&[2; 10], 40).is_err());
    drop(a);
    b.write_all_at(&[2; 10], 40).unwrap();
    // Truncating frees space too.
    b.set_len(0).unwrap();
    let c = fs.open("c", OpenMode::CreateNew).unwrap();
    c.write_all_at(&[4; 100], 0).unwrap();
    fs.set_space_limit(None);
    c.write_all_at(&[4; 1000], 100).unwrap();
}

#[test]
fn flip_bit_corrupts_current_and_durable_content() {
    let fs = FaultStorage::new();
    let file = fs.open("f", OpenMode::CreateNew).unwrap();
    fs.sync_dir().unwrap();
    file.write_all_at(&[0u8; 8], 0).unwrap();
    file.sync_data().unwrap();
    fs.flip_bit("f", 3, 7).unwrap();
    assert_eq!(read_all(&fs, "f"), [0, 0, 0, 0x80, 0, 0, 0, 0]);
    fs.crash();
    assert_eq!(read_all(&fs, "f"), [0, 0, 0, 0x80, 0, 0, 0, 0]);
    assert!(fs.flip_bit("f", 8, 0).is_err());
    assert!(fs.flip_bit("f", 0, 8).is_err());
    assert!(fs.flip_bit("missing", 0, 0).is_err());
    assert_eq!(fs.file_len("f"), Some(8));
    assert_eq!(fs.file_len("missing"), None);
}

/// A model of the fault backend: names map to file ids, and each file has a
/// current and a durable image.
#[derive(Default, Clone)]
struct Model {
    files: Vec<(Vec<u8>, Vec<u8>)>,
    current: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Write {
        name: u8,
        offset: u16,
        len: u8,
        byte: u8,
    },
    SetLen {
        name: u8,
        len: u16,
    },
    Sync(u8),
    SyncDir,
    Rename(u8, u8),
    Remove(u8),
    Crash,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4u8).prop_map(Op::Create),
        6 => (0..4u8, 0..300u16, 1..64u8, any::<u8>())
            .prop_map(|(name, offset, len, byte)| Op::Write { name, offset, len, byte }),
        1 => (0..4u8, 0..300u16).prop_map(|(name, len)| Op::SetLen { name, len }),
        3 => (0..4u8).prop_map(Op::Sync),
        2 => Just(Op::SyncDir),
        1 => (0..4u8, 0..4u8).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (0..4u8).prop_map(Op::Remove),
        1 => Just(Op::Crash),
    ]
}

fn name_of(n: u8) -> String {
    format!("file-{n}")
}

fn check_against_model(fs: &FaultStorage, model: &Model) {
    let names: Vec<String> = model.current.keys().cloned().collect();
    assert_eq!(sorted_list(fs), names);
    for (name, &id) in &model.current {
        assert_eq!(read_all(fs, name), model.files[id].0, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn fault_storage_matches_a_model_of_durable_state(
        ops in proptest::collection::vec((op_strategy(), proptest::bool::weighted(0.1)), 1..60)
    ) {
        let fs = FaultStorage::new();
        let mut model = Model::default();
        let mut handles = BTreeMap::new();
        for (op, fail) in ops {
            // With `fail`, the op's storage call gets an injected EIO and
            // must change nothing.
            let arm = || {
                if fail {
                    fs.fail_nth(0, FaultKind::Eio);
                }
            };
            let injected = |result: &io::Result<()>| -> Result<bool, TestCaseError> {
                if fail {
                    let errno = result.as_ref().err().and_then(|e| e.raw_os_error());
                    prop_assert_eq!(errno, Some(libc::EIO));
                    return Ok(true);
                }
                Ok(false)
            };
            match op {
                Op::Create(n) => {
                    let name = name_of(n);
                    arm();
                    match fs.open(&name, OpenMode::CreateOrOpen) {
                        Err(error) => {
                            prop_assert!(fail);
                            prop_assert_eq!(error.raw_os_error(), Some(libc::EIO));
                        }
                        Ok(file) => {
                            prop_assert!(!fail);
                            if !model.current.contains_key(&name) {
                                model.files.push((Vec::new(), Vec::new()));
                                model.current.insert(name.clone(), model.files.len() - 1);
                            }
                            let id = model.current[&name];
                            handles.insert(name, (file, id));
                        }
                    }
                }
                Op::Write { name, offset, len, byte } => {
                    if let Some((file, id)) = handles.get(&name_of(name)) {
                        let data = vec![byte; usize::from(len)];
                        arm();
                        let result = if len % 2 == 0 {
                            file.write_all_at(&data, u64::from(offset))
                        } else {
                            let (head, tail) = data.split_at(data.len() / 2);
                            file.write_all_vectored_at(&[head, tail], u64::from(offset))
                        };
                        if !injected(&result)? {
                            let content = &mut model.files[*id].0;
                            let end = usize::from(offset) + data.len();
                            if content.len() < end {
                                content.resize(end, 0);
                            }
                            content[usize::from(offset)..end].copy_from_slice(&data);
                        }
                    }
                }
                Op::SetLen { name, len } => {
                    if let Some((file, id)) = handles.get(&name_of(name)) {
                        arm();
                        if !injected(&file.set_len(u64::from(len)))? {
                            model.files[*id].0.resize(usize::from(len), 0);
                        }
                    }
                }
                Op::Sync(name) => {
                    if let Some((file, id)) = handles.get(&name_of(name)) {
                        arm();
                        if !injected(&file.sync_data())? {
                            model.files[*id].1 = model.files[*id].0.clone();
                        }
                    }
                }
                Op::SyncDir => {
                    arm();
                    if !injected(&fs.sync_dir())? {
                        model.durable = model.current.clone();
                    }
                }
                Op::Rename(a, b) => {
                    let (from, to) = (name_of(a), name_of(b));
                    arm();
                    let result = fs.rename(&from, &to);
                    match model.current.get(&from).copied() {
                        _ if injected(&result)? => {}
                        Some(id) => {
                            result.unwrap();
                            model.current.remove(&from);
                            model.current.insert(to.clone(), id);
                            // Handles are looked up by name in this test.
                            if let Some(handle) = handles.remove(&from) {
                                handles.insert(to, handle);
                            }
                        }
                        None => prop_assert!(result.is_err()),
                    }
                }
                Op::Remove(n) => {
                    let name = name_of(n);
                    arm();
                    let result = fs.remove(&name);
                    if injected(&result)? {
                        // The injected failure removed nothing.
                    } else if model.current.remove(&name).is_some() {
                        result.unwrap();
                        handles.remove(&name);
                    } else {
                        prop_assert!(result.is_err());
                    }
                }
                Op::Crash => {
                    fs.crash();
                    model.current = model.durable.clone();
                    for (current, durable) in &mut model.files {
                        *current = durable.clone();
                    }
                    for (file, _) in handles.values() {
                        prop_assert!(file.len().is_err());
                    }
                    handles.clear();
                }
            }
            check_against_model(&fs, &model);
        }
        // A final crash keeps exactly the durable state.
        fs.crash();
        let mut expected = BTreeMap::new();
        for (name, &id) in &model.durable {
            expected.insert(name.clone(), model.files[id].1.clone());
        }
        let mut got = BTreeMap::new();
        for name in sorted_list(&fs) {
            got.insert(name.clone(), read_all(&fs, &name));
        }
        prop_assert_eq!(got, expected);
    }
}
