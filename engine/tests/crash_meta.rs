//! kill -9 test of the metadata store: this test binary re-runs itself as a
//! child that commits batches from several threads on the portable backend
//! and prints each acknowledgement; the parent SIGKILLs it at a random moment,
//! reopens the store and checks that every acknowledged batch is there whole
//! and that no batch is there in part. Rounds share one directory, so later
//! rounds also recover logs and snapshots written by earlier ones.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::ops::Bound;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spindle_engine::clock::SystemClock;
use spindle_engine::io::{open_storage, BackendChoice};
use spindle_engine::meta::{Batch, Direction, MetaConfig, MetaStore};

const DIR_ENV: &str = "SPINDLE_CRASH_META_DIR";
const ROUND_ENV: &str = "SPINDLE_CRASH_META_ROUND";
const KS: &str = "crash";
const THREADS: usize = 4;
const ROUNDS: u64 = 32;

fn config() -> MetaConfig {
    MetaConfig {
        // Small, so snapshots and segment rotations happen while being killed.
        snapshot_after_log_bytes: 128 * 1024,
        compress_values_over_bytes: Some(256),
        ..MetaConfig::default()
    }
}

fn ops_in(i: u64) -> u64 {
    i % 4 + 1
}

fn key(round: u64, thread: usize, i: u64, j: u64) -> String {
    format!("r{round:03}/t{thread}/i{i:07}/j{j}")
}

fn value(round: u64, thread: usize, i: u64, j: u64) -> Vec<u8> {
    let len = ((i * 37 + j * 11) % 600) as usize + 10;
    let mut v = format!("{round}:{thread}:{i}:{j}:").into_bytes();
    v.resize(len, b'x');
    v
}

/// The child: commits until killed (or 20 s pass, as a bound).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let storage = open_storage(std::path::Path::new(&dir), BackendChoice::Portable).unwrap();
    let store = MetaStore::open(storage, config(), Arc::new(SystemClock)).unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    if Instant::now() > deadline {
                        return;
                    }
                    let mut b = Batch::new();
                    for j in 0..ops_in(i) {
                        b.put(KS, key(round, t, i, j), value(round, t, i, j));
                    }
                    // Overwrite and delete too, so replay is not put-only.
                    b.put("last", format!("t{t}"), i.to_be_bytes());
                    if i > 0 {
                        b.delete("scratch", format!("t{t}/{}", i - 1));
                    }
                    b.put("scratch", format!("t{t}/{i}"), b"s");
                    store.commit(b).unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ACK {t} {i}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn seeded(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn kill_nine_keeps_every_acknowledged_batch_whole() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    // Per round, thread: the acknowledged batch numbers.
    let mut acked: BTreeMap<(u64, usize), BTreeSet<u64>> = BTreeMap::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        // Kill at a random moment after the child has started committing.
        let delay_ms = 30 + seeded(&mut seed) % 250;
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 3 && parts[0] == "ACK" {
                let t: usize = parts[1].parse().unwrap();
                let i: u64 = parts[2].parse().unwrap();
                acked.entry((round, t)).or_default().insert(i);
            }
        }

        let storage = open_storage(dir.path(), BackendChoice::Portable).unwrap();
        let store = MetaStore::open(storage, config(), Arc::new(SystemClock)).unwrap();
        // Every key present, grouped by batch.
        let mut present: BTreeMap<(u64, usize, u64), BTreeSet<u64>> = BTreeMap::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = store
                .scan_range(
                    KS,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    Direction::Forward,
                    cursor.as_deref(),
                    10_000,
                )
                .unwrap();
            for (k, v) in &page.items {
                let k = std::str::from_utf8(k).unwrap();
                let f: Vec<&str> = k.split('/').collect();
                let r: u64 = f[0][1..].parse().unwrap();
                let t: usize = f[1][1..].parse().unwrap();
                let i: u64 = f[2][1..].parse().unwrap();
                let j: u64 = f[3][1..].parse().unwrap();
                assert_eq!(v.as_ref(), value(r, t, i, j).as_slice(), "value of {k}");
                present.entry((r, t, i)).or_default().insert(j);
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for ((r, t, i), js) in &present {
            assert_eq!(
                js.len() as u64,
                ops_in(*i),
                "round {r} thread {t} batch {i} is there in part: {js:?}"
            );
        }
        for ((r, t), is) in &acked {
            for i in is {
                assert!(
                    present.contains_key(&(*r, *t, *i)),
                    "acknowledged batch r{r} t{t} i{i} lost (seed {seed})"
                );
            }
            // A thread commits in order, so what survives is a prefix.
            let have: Vec<u64> = present
                .keys()
                .filter(|(rr, tt, _)| rr == r && tt == t)
                .map(|k| k.2)
                .collect();
            for (n, i) in have.iter().enumerate() {
                assert_eq!(*i, n as u64, "thread {t} round {r} has a gap");
            }
        }
        drop(store);
    }
    let total: usize = acked.values().map(|s| s.len()).sum();
    println!(
        "{ROUNDS} rounds, {total} acknowledged batches, {:?}",
        started.elapsed()
    );
    assert!(total > 0, "the child never acknowledged anything");
}
