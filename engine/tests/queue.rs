//! The durable job queue: no job lost across a crash, never two live leases,
//! redelivery on expiry, backoff, dead-lettering, idempotent enqueue, and
//! ack atomic with other writes. Run over the fault-injecting (in-memory),
//! portable and io_uring backends.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use spindle_engine::clock::{Clock, ManualClock};
use spindle_engine::io::fault::FaultStorage;
use spindle_engine::io::{open_storage, BackendChoice, Storage};
use spindle_engine::meta::{Batch, Error, MetaConfig, MetaStore};
use spindle_engine::queue::{JobSpec, Queue, QueueConfig};

fn backends() -> Vec<(&'static str, Arc<dyn Storage>, Option<tempfile::TempDir>)> {
    let mut out: Vec<(&'static str, Arc<dyn Storage>, Option<tempfile::TempDir>)> =
        vec![("fault", Arc::new(FaultStorage::new()), None)];
    for (name, choice) in [
        ("portable", BackendChoice::Portable),
        ("uring", BackendChoice::Uring),
    ] {
        let dir = tempfile::tempdir().unwrap();
        match open_storage(dir.path(), choice) {
            Ok(s) => out.push((name, s, Some(dir))),
            Err(e) => println!("skipping the {name} backend: {e}"),
        }
    }
    out
}

fn store_on(storage: Arc<dyn Storage>, clock: &Arc<ManualClock>) -> MetaStore {
    let c: Arc<dyn Clock> = clock.clone();
    MetaStore::open(
        storage,
        MetaConfig {
            snapshot_after_log_bytes: 32 * 1024,
            ..MetaConfig::default()
        },
        c,
    )
    .unwrap()
}

fn job(key: &str, max_attempts: u32) -> JobSpec {
    JobSpec {
        idempotency_key: key.to_owned(),
        payload: format!("payload of {key}").into_bytes(),
        max_attempts,
    }
}

fn qconfig() -> QueueConfig {
    QueueConfig {
        backoff_base_ms: 1000,
        backoff_max_ms: 8000,
        jitter_seed: 42,
    }
}

#[test]
fn no_job_lost_across_a_crash() {
    let disk = FaultStorage::new();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = store_on(Arc::new(disk.clone()), &clock);
    let q = Queue::new(&store, "transcode", qconfig()).unwrap();
    let mut ids = BTreeSet::new();
    for i in 0..40 {
        // The claim check: the track and its job commit together.
        let mut b = Batch::new();
        b.put("tracks", format!("t{i}"), b"uploaded");
        ids.insert(q.enqueue_in(&mut b, job(&format!("t{i}"), 5)).unwrap());
        store.commit(b).unwrap();
    }
    let mut acked = BTreeSet::new();
    for _ in 0..10 {
        let l = q.lease("w1", 60_000).unwrap().unwrap();
        q.ack(&l).unwrap();
        acked.insert(l.job_id);
    }
    // Five more leased and not acked when the power goes.
    for _ in 0..5 {
        q.lease("w1", 60_000).unwrap().unwrap();
    }
    disk.crash_tearing(7);
    let store = store_on(Arc::new(disk.clone()), &clock);
    let q = Queue::new(&store, "transcode", qconfig()).unwrap();
    for i in 0..40 {
        assert!(store
            .get("tracks", format!("t{i}").as_bytes())
            .unwrap()
            .is_some());
    }
    let stats = q.stats();
    assert_eq!(stats.depth, 25);
    assert_eq!(stats.in_flight, 5);
    clock.advance(60_001);
    let mut seen = BTreeSet::new();
    while let Some(l) = q.lease("w2", 60_000).unwrap() {
        assert!(seen.insert(l.job_id), "job delivered twice");
        q.ack(&l).unwrap();
    }
    let want: BTreeSet<_> = ids.difference(&acked).copied().collect();
    assert_eq!(seen, want, "exactly the unacknowledged jobs come back");
}

#[test]
fn no_job_held_by_two_live_leases() {
    for (name, storage, _dir) in backends() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = store_on(storage, &clock);
        let q = Queue::new(&store, "transcode", qconfig()).unwrap();
        let jobs = 120;
        for i in 0..jobs {
            q.enqueue(job(&format!("j{i}"), 3)).unwrap();
        }
        let held: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
        let done: Arc<Mutex<Vec<u64>>> = Arc::default();
        let threads: Vec<_> = (0..6)
            .map(|w| {
                let q = q.clone();
                let held = held.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let worker = format!("worker-{w}");
                    let mut empty_polls = 0;
                    while empty_polls < 3 {
                        // Visibility far beyond the test: no lease expires.
                        match q.lease(&worker, 3_600_000).unwrap() {
                            None => empty_polls += 1,
                            Some(l) => {
                                empty_polls = 0;
                                let prev = held.lock().unwrap().insert(l.job_id.0, worker.clone());
                                assert!(prev.is_none(), "{} leased twice", l.job_id);
                                q.ack(&l).unwrap();
                                done.lock().unwrap().push(l.job_id.0);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let done = done.lock().unwrap();
        let uniq: BTreeSet<_> = done.iter().collect();
        assert_eq!(done.len(), jobs, "{name}: every job done once");
        assert_eq!(uniq.len(), jobs, "{name}");
        assert_eq!(q.stats().depth, 0);
        assert_eq!(q.stats().in_flight, 0);
    }
}

#[test]
fn an_expired_lease_is_redelivered_and_the_stale_one_fenced() {
    for (name, storage, _dir) in backends() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = store_on(storage, &clock);
        let q = Queue::new(&store, "transcode", qconfig()).unwrap();
        let id = q.enqueue(job("a", 5)).unwrap();
        let first = q.lease("w1", 1000).unwrap().unwrap();
        assert_eq!(first.job_id, id);
        assert_eq!(first.attempt, 1);
        assert_eq!(first.payload.as_ref(), b"payload of a");
        clock.advance(500);
        assert!(q.lease("w2", 1000).unwrap().is_none(), "{name}: live lease");
        // A heartbeat moves the expiry.
        let first = q.extend(&first, 1000).unwrap();
        clock.advance(900);
        assert!(q.lease("w2", 1000).unwrap().is_none(), "{name}: extended");
        clock.advance(200);
        let second = q.lease("w2", 1000).unwrap().expect("redelivered");
        assert_eq!(second.job_id, id);
        assert_eq!(second.attempt, 2);
        assert_ne!(second.token, first.token);
        assert!(matches!(q.ack(&first), Err(Error::LeaseLost { .. })));
        assert!(matches!(q.extend(&first, 10), Err(Error::LeaseLost { .. })));
        assert!(matches!(
            q.nack(&first, "x", false),
            Err(Error::LeaseLost { .. })
        ));
        q.ack(&second).unwrap();
        assert!(q.lease("w3", 1000).unwrap().is_none());
    }
}

#[test]
fn nack_backs_off_with_jitter_then_dead_letters() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = store_on(Arc::new(FaultStorage::new()), &clock);
    let q = Queue::new(&store, "transcode", qconfig()).unwrap();
    let id = q.enqueue(job("a", 3)).unwrap();
    for attempt in 1..=3u32 {
        let l = q.lease("w", 10_000).unwrap().expect("due");
        assert_eq!(l.attempt, attempt);
        q.nack(&l, &format!("failure {attempt}"), false).unwrap();
        if attempt < 3 {
            // Backoff is base * 2^(attempt-1), jittered into [half, full].
            let full = 1000u64 << (attempt - 1);
            clock.advance(full / 2 - 1);
            assert!(q.lease("w", 10_000).unwrap().is_none(), "too early");
            let s = q.stats();
            assert_eq!((s.depth, s.in_flight), (1, 0));
            clock.advance(full / 2 + 1);
        }
    }
    assert!(q.lease("w", 10_000).unwrap().is_none());
    let dead = q.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job_id, id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error, "failure 3");
    assert_eq!(dead[0].payload.as_ref(), b"payload of a");
    assert_eq!(q.stats().dead, 1);
    assert_eq!(q.stats().depth, 0);

    // A permanent failure dead-letters at once.
    q.enqueue(job("b", 10)).unwrap();
    let l = q.lease("w", 10_000).unwrap().unwrap();
    q.nack(&l, "unsupported codec", true).unwrap();
    assert_eq!(q.dead_letters(10).unwrap().len(), 2);

    // Running out of attempts by lease expiry dead-letters too.
    q.enqueue(job("c", 1)).unwrap();
    q.lease("w", 100).unwrap().unwrap();
    clock.advance(101);
    assert!(q.lease("w", 100).unwrap().is_none());
    let dead = q.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().any(|d| d.last_error.contains("lease expired")));
}

#[test]
fn idempotency_key_dedupes() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = store_on(Arc::new(FaultStorage::new()), &clock);
    let q = Queue::new(&store, "transcode", qconfig()).unwrap();
    let a = q.enqueue(job("same", 3)).unwrap();
    let b = q.enqueue(job("same", 3)).unwrap();
    assert_eq!(a, b);
    let mut batch = Batch::new();
    let c = q.enqueue_in(&mut batch, job("other", 3)).unwrap();
    let d = q.enqueue_in(&mut batch, job("other", 3)).unwrap();
    assert_eq!(c, d);
    store.commit(batch).unwrap();
    assert_eq!(q.stats().depth, 2);
    // Still deduplicated after the job is done.
    let l = q.lease("w", 1000).unwrap().unwrap();
    q.ack(&l).unwrap();
    let again = q.enqueue(job(if l.job_id == a { "same" } else { "other" }, 3));
    assert_eq!(again.unwrap(), l.job_id);
    assert_eq!(q.stats().depth, 1);
    assert_eq!(
        a.to_string()
            .parse::<spindle_engine::queue::JobId>()
            .unwrap(),
        a
    );
}

#[test]
fn ack_in_commits_atomically_with_other_writes() {
    for (name, storage, _dir) in backends() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = store_on(storage, &clock);
        let q = Queue::new(&store, "transcode", qconfig()).unwrap();
        q.enqueue(job("t1", 5)).unwrap();
        q.enqueue(job("t2", 5)).unwrap();

        // Held: the tiers and the ack land together.
        let l = q.lease("w1", 1000).unwrap().unwrap();
        let mut b = Batch::new();
        b.put("tiers", l.job_id.to_string(), b"96,160,320");
        q.ack_in(&mut b, &l).unwrap();
        store.commit(b).unwrap();
        assert!(store
            .get("tiers", l.job_id.to_string().as_bytes())
            .unwrap()
            .is_some());

        // Lost between ack_in and commit: nothing lands.
        let l = q.lease("w1", 1000).unwrap().unwrap();
        let mut b = Batch::new();
        b.put("tiers", l.job_id.to_string(), b"96,160,320");
        q.ack_in(&mut b, &l).unwrap();
        clock.advance(1001);
        let thief = q.lease("w2", 1000).unwrap().unwrap();
        assert_eq!(thief.job_id, l.job_id);
        assert!(
            matches!(store.commit(b), Err(Error::LeaseLost { .. })),
            "{name}"
        );
        assert!(store
            .get("tiers", l.job_id.to_string().as_bytes())
            .unwrap()
            .is_none());
        assert_eq!(q.stats().in_flight, 1);
        q.ack(&thief).unwrap();
        assert_eq!(q.stats(), Default::default());
    }
}

#[test]
fn stats_report_depth_in_flight_and_age() {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = store_on(Arc::new(FaultStorage::new()), &clock);
    let q = Queue::new(&store, "transcode", qconfig()).unwrap();
    for i in 0..3 {
        q.enqueue(job(&format!("{i}"), 2)).unwrap();
        clock.advance(100);
    }
    let s = q.stats();
    assert_eq!((s.depth, s.in_flight, s.dead), (3, 0, 0));
    assert_eq!(s.oldest_waiting_age_ms, 300);
    let _l = q.lease("w", 50).unwrap().unwrap();
    let s = q.stats();
    assert_eq!((s.depth, s.in_flight), (2, 1));
    assert_eq!(s.oldest_waiting_age_ms, 200);
    clock.advance(60);
    let s = q.stats();
    assert_eq!(
        (s.depth, s.in_flight),
        (3, 0),
        "expired lease counts as waiting"
    );
}
