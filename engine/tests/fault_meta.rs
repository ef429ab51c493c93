//! Fault injection over a metadata-store workload: for every I/O operation
//! of the workload in turn, that operation fails with EIO (then, in a second
//! pass, ENOSPC). Nothing may panic; after a crash and reopen every
//! acknowledged batch is there whole, and a batch whose commit failed is
//! there whole or not at all.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

use std::sync::Arc;

use spindle_engine::clock::{Clock, ManualClock};
use spindle_engine::io::fault::{FaultKind, FaultStorage};
use spindle_engine::meta::{Batch, Error, MetaConfig, MetaStore};
use spindle_engine::queue::{JobSpec, Queue, QueueConfig};

const BATCHES: u64 = 14;

fn config() -> MetaConfig {
    MetaConfig {
        snapshot_after_log_bytes: 1500,
        compress_values_over_bytes: Some(200),
        ..MetaConfig::default()
    }
}

fn ops_in(i: u64) -> u64 {
    i % 3 + 1
}

fn key(i: u64, j: u64) -> String {
    format!("b{i:03}/{j}")
}

fn value(i: u64, j: u64) -> Vec<u8> {
    vec![(i * 7 + j) as u8; 100 + ((i * 53 + j * 31) % 250) as usize]
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Acked,
    Failed,
    NotTried,
}

/// Runs the workload; returns each batch's outcome and whether the job
/// enqueue was acknowledged. Never panics on an I/O error.
fn workload(disk: &FaultStorage, clock: &Arc<ManualClock>) -> (Vec<Outcome>, bool) {
    let mut outcomes = vec![Outcome::NotTried; BATCHES as usize];
    let c: Arc<dyn Clock> = clock.clone();
    let store = match MetaStore::open(Arc::new(disk.clone()), config(), c) {
        Ok(s) => s,
        Err(_) => return (outcomes, false),
    };
    let mut job_acked = false;
    for i in 0..BATCHES {
        let mut b = Batch::new();
        for j in 0..ops_in(i) {
            b.put("data", key(i, j), value(i, j));
        }
        if i == 3 {
            if let Ok(q) = Queue::new(&store, "transcode", QueueConfig::default()) {
                let spec = JobSpec {
                    idempotency_key: "job".into(),
                    payload: b"p".to_vec(),
                    max_attempts: 3,
                };
                if q.enqueue_in(&mut b, spec).is_err() {
                    continue;
                }
            }
        }
        match store.commit(b) {
            Ok(_) => {
                outcomes[i as usize] = Outcome::Acked;
                if i == 3 {
                    job_acked = true;
                }
            }
            Err(Error::Poisoned) => {
                outcomes[i as usize] = Outcome::Failed;
                break;
            }
            Err(_) => outcomes[i as usize] = Outcome::Failed,
        }
        if i == 7 {
            let _ = store.snapshot_now();
            if let Ok(mut feed) = store.feed("search") {
                let _ = feed.poll(100, std::time::Duration::ZERO);
                let _ = feed.checkpoint(store.head_lsn());
            }
        }
    }
    (outcomes, job_acked)
}

fn check(
    disk: &FaultStorage,
    clock: &Arc<ManualClock>,
    outcomes: &[Outcome],
    job_acked: bool,
    what: &str,
) {
    disk.clear_faults();
    disk.crash();
    let c: Arc<dyn Clock> = clock.clone();
    let store = MetaStore::open(Arc::new(disk.clone()), config(), c)
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    for (i, outcome) in outcomes.iter().enumerate() {
        let i = i as u64;
        let present: Vec<bool> = (0..ops_in(i))
            .map(|j| {
                let got = store.get("data", key(i, j).as_bytes()).unwrap();
                if let Some(v) = &got {
                    assert_eq!(
                        v.as_ref(),
                        value(i, j).as_slice(),
                        "{what}: value of {i}/{j}"
                    );
                }
                got.is_some()
            })
            .collect();
        let all = present.iter().all(|p| *p);
        let none = present.iter().all(|p| !*p);
        match outcome {
            Outcome::Acked => assert!(all, "{what}: acknowledged batch {i} lost: {present:?}"),
            Outcome::Failed => assert!(all || none, "{what}: batch {i} in part: {present:?}"),
            Outcome::NotTried => assert!(none, "{what}: batch {i} never committed"),
        }
    }
    if job_acked {
        let q = Queue::new(&store, "transcode", QueueConfig::default()).unwrap();
        assert_eq!(q.stats().depth, 1, "{what}: acknowledged job lost");
    }
    // The reopened store takes writes.
    let mut b = Batch::new();
    b.put("data", b"after", b"x");
    store.commit(b).unwrap();
}

#[test]
fn every_io_operation_failing_in_turn_loses_nothing_acknowledged() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let baseline = FaultStorage::new();
    let (outcomes, _) = workload(&baseline, &clock);
    assert!(outcomes.iter().all(|o| *o == Outcome::Acked));
    let total_ops = baseline.op_count();
    assert!(total_ops > 30, "workload too small: {total_ops} ops");
    let mut failures_seen = 0;
    for kind in [FaultKind::Eio, FaultKind::Enospc] {
        for n in 0..total_ops {
            let disk = FaultStorage::new();
            disk.fail_nth(n, kind);
            let (outcomes, job_acked) = workload(&disk, &clock);
            if outcomes.iter().any(|o| *o != Outcome::Acked) {
                failures_seen += 1;
            }
            check(
                &disk,
                &clock,
                &outcomes,
                job_acked,
                &format!("{kind:?} at op {n}"),
            );
        }
    }
    println!("{total_ops} ops, {failures_seen} runs saw a failed commit");
    // Most positions must actually hit a commit (not only snapshot I/O).
    assert!(
        failures_seen as u64 > total_ops / 2,
        "only {failures_seen} runs saw a failure"
    );
}

#[test]
fn a_full_disk_is_a_typed_error_and_recoverable() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let disk = FaultStorage::new();
    let c: Arc<dyn Clock> = clock.clone();
    let store = MetaStore::open(
        Arc::new(disk.clone()),
        MetaConfig {
            snapshot_after_log_bytes: u64::MAX,
            ..MetaConfig::default()
        },
        c,
    )
    .unwrap();
    disk.set_space_limit(Some(4096));
    let mut acked = Vec::new();
    let mut saw_enospc = false;
    for i in 0..100u32 {
        let mut b = Batch::new();
        b.put("data", i.to_be_bytes(), vec![1u8; 300]);
        match store.commit(b) {
            Ok(_) => acked.push(i),
            Err(Error::NoSpace { .. }) => {
                saw_enospc = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(saw_enospc, "the disk never filled");
    assert!(
        !store.is_poisoned(),
        "a failed append that was undone does not poison"
    );
    disk.set_space_limit(None);
    let mut b = Batch::new();
    b.put("data", b"later", b"x");
    store.commit(b).unwrap();
    disk.crash();
    let c: Arc<dyn Clock> = clock.clone();
    let store = MetaStore::open(Arc::new(disk.clone()), MetaConfig::default(), c).unwrap();
    for i in acked {
        assert!(store.get("data", &i.to_be_bytes()).unwrap().is_some());
    }
    assert!(store.get("data", b"later").unwrap().is_some());
}

#[test]
fn a_failed_sync_poisons_until_reopen() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let disk = FaultStorage::new();
    let c: Arc<dyn Clock> = clock.clone();
    let store = MetaStore::open(Arc::new(disk.clone()), config(), c.clone()).unwrap();
    let mut b = Batch::new();
    b.put("data", b"a", b"1");
    store.commit(b).unwrap();
    // The append is op 0, its sync op 1.
    disk.fail_nth(1, FaultKind::Eio);
    let mut b = Batch::new();
    b.put("data", b"b", b"2");
    assert!(matches!(store.commit(b), Err(Error::Io { .. })));
    assert!(store.is_poisoned());
    let mut b = Batch::new();
    b.put("data", b"c", b"3");
    assert!(matches!(store.commit(b), Err(Error::Poisoned)));
    drop(store);
    disk.crash();
    let store = MetaStore::open(Arc::new(disk.clone()), config(), c).unwrap();
    assert!(store.get("data", b"a").unwrap().is_some());
    assert!(store.get("data", b"b").unwrap().is_none());
    let mut b = Batch::new();
    b.put("data", b"c", b"3");
    store.commit(b).unwrap();
}
