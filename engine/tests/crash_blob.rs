//! kill -9 test: the test binary re-runs itself as a child that writes,
//! deletes, checkpoints and compacts blobs on the portable backend and prints
//! each acknowledgement; the parent SIGKILLs it at a random moment, reopens
//! the store and checks that every acknowledged blob reads back byte for
//! byte, every acknowledged delete stuck, and every blob the child ever
//! started is either exactly its content or absent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench helpers outside #[test] fns: a failed unwrap is a failed run"
)]
#![allow(
    clippy::manual_is_multiple_of,
    reason = "u64::is_multiple_of is newer than the workspace's rust-version 1.85"
)]

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spindle_engine::blob::{BlobConfig, BlobId, BlobStore, Error};
use spindle_engine::io::{open_storage, BackendChoice};

const CHILD_DIR_ENV: &str = "SPINDLE_BLOB_CRASH_DIR";
const CHILD_ROUND_ENV: &str = "SPINDLE_BLOB_CRASH_ROUND";
const ROUNDS: u64 = 32;

fn config() -> BlobConfig {
    BlobConfig {
        chunk_size_bytes: 4096,
        segment_size_bytes_max: 256 * 1024,
        checkpoint_interval_bytes: 128 * 1024,
        compaction_live_fraction_min: 0.5,
        ..BlobConfig::default()
    }
}

fn content(seed: u64) -> Vec<u8> {
    // splitmix64, so every seed has its own length and bytes (contents
    // never repeat, so every blob's refcount is 1).
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let len = 64 + (z % 40_000) as usize;
    let mut x = z | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The child: runs until killed (or for a bounded time, in case the parent
/// died).
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return; // Only meaningful as the child of `kill_nine_keeps_acknowledged_blobs`.
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let storage = open_storage(std::path::Path::new(&dir), BackendChoice::Portable).unwrap();
    let store = BlobStore::open(storage, config()).unwrap();
    println!("OPEN");
    let started = Instant::now();
    let mut mine = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        let seed = round * 1_000_000 + i;
        i += 1;
        let data = content(seed);
        println!("START {seed}");
        let mut w = store.writer();
        for piece in data.chunks(1000 + (seed % 5000) as usize) {
            w.write(piece).unwrap();
        }
        let r = w.finish().unwrap();
        println!("ACK {seed} {}", r.id);
        mine.push(r.id);
        if i % 3 == 0 {
            let victim = mine.remove((seed as usize / 3) % mine.len());
            println!("DELSTART {victim}");
            assert!(store.delete(&victim).unwrap());
            println!("DEL {victim}");
        }
        if i % 17 == 0 {
            store.compact().unwrap();
        }
        if i % 29 == 0 {
            store.checkpoint().unwrap();
        }
    }
}

#[derive(Default)]
struct Log {
    /// Every blob ever started: id -> content seed.
    started: BTreeMap<BlobId, u64>,
    acked: BTreeMap<BlobId, u64>,
    deleted: BTreeMap<BlobId, ()>,
    deleting: BTreeMap<BlobId, ()>,
}

fn parse(out: &str, log: &mut Log) {
    for line in out.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("START"), Some(seed), None) => {
                let seed: u64 = seed.parse().unwrap();
                log.started.insert(BlobId::of(&content(seed)), seed);
            }
            (Some("ACK"), Some(seed), Some(id)) => {
                let seed: u64 = seed.parse().unwrap();
                let id: BlobId = id.parse().unwrap();
                assert_eq!(id, BlobId::of(&content(seed)));
                log.acked.insert(id, seed);
            }
            (Some("DELSTART"), Some(id), None) => {
                log.deleting.insert(id.parse().unwrap(), ());
            }
            (Some("DEL"), Some(id), None) => {
                let id: BlobId = id.parse().unwrap();
                log.deleting.remove(&id);
                log.acked.remove(&id);
                log.deleted.insert(id, ());
            }
            _ => {} // a line cut by the kill, or harness output
        }
    }
}

fn read_all(store: &BlobStore, id: &BlobId, len: u64) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    for piece in store.read_range(id, 0..len)? {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

#[test]
fn kill_nine_keeps_acknowledged_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash_blob rng seed {rng}");
    let mut log = Log::default();
    let mut total_acks = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay_ms = 30 + rng % 250;
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child.wait().unwrap();
        parse(&out, &mut log);
        total_acks += out.lines().filter(|l| l.starts_with("ACK ")).count();

        let storage = open_storage(dir.path(), BackendChoice::Portable).unwrap();
        let store = BlobStore::open(storage, config())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        for (id, seed) in &log.acked {
            let data = content(*seed);
            if log.deleting.contains_key(id) {
                continue; // checked below with the unacknowledged ones
            }
            let got = read_all(&store, id, data.len() as u64)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged {id} unreadable: {e}"));
            assert!(
                got == data,
                "round {round}: acknowledged {id} has wrong bytes"
            );
        }
        for id in log.deleted.keys() {
            if let Some(info) = store.stat(id).unwrap() {
                panic!(
                    "round {round}: deleted {id} came back: {info:?}, refcount {}, seed {:?}, stats {:?}",
                    store.refcount(id).unwrap(),
                    log.started.get(id),
                    store.stats()
                );
            }
        }
        for (id, seed) in &log.started {
            let data = content(*seed);
            match read_all(&store, id, data.len() as u64) {
                Ok(got) => assert!(got == data, "round {round}: {id} readable as garbage"),
                Err(Error::NotFound(_)) => {}
                Err(e) => panic!("round {round}: {id}: {e}"),
            }
        }
        // A delete in flight at the kill either happened or did not.
        let deleting: Vec<BlobId> = log.deleting.keys().copied().collect();
        for id in deleting {
            if store.stat(&id).unwrap().is_none() {
                log.acked.remove(&id);
                log.deleted.insert(id, ());
            }
            log.deleting.remove(&id);
        }
        // Unacknowledged puts that survived are now part of the state.
        for (id, seed) in &log.started {
            if store.stat(id).unwrap().is_some() && !log.acked.contains_key(id) {
                log.acked.insert(*id, *seed);
            }
        }
        assert!(store.scrub(None).unwrap().is_clean(), "round {round}");
        drop(store);
    }
    println!(
        "crash_blob: {ROUNDS} rounds, {total_acks} acknowledgements, {} live blobs",
        log.acked.len()
    );
    assert!(
        total_acks >= ROUNDS as usize,
        "children acknowledged too little"
    );
}
