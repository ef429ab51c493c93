//! The change feed: every change once and in order across restarts, waiting
//! without busy loops, truncation after compaction past a consumer, lag.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use spindle_engine::clock::{Clock, ManualClock};
use spindle_engine::io::fault::FaultStorage;
use spindle_engine::io::{open_storage, BackendChoice, Storage};
use spindle_engine::meta::{Batch, ChangeOp, Direction, Error, MetaConfig, MetaStore};

fn open(storage: Arc<dyn Storage>, clock: &Arc<ManualClock>, config: MetaConfig) -> MetaStore {
    let c: Arc<dyn Clock> = clock.clone();
    MetaStore::open(storage, config, c).unwrap()
}

fn small_segments() -> MetaConfig {
    MetaConfig {
        snapshot_after_log_bytes: 4096,
        ..MetaConfig::default()
    }
}

fn commit_n(store: &MetaStore, from: u64, n: u64) -> Vec<u64> {
    (from..from + n)
        .map(|i| {
            let mut b = Batch::new();
            b.put("tracks", format!("t{i:05}"), vec![b'v'; (i % 200) as usize]);
            if i % 5 == 0 {
                b.delete("tracks", format!("t{:05}", i / 2));
            }
            store.commit(b).unwrap().lsn
        })
        .collect()
}

/// The first op of a change names its batch number.
fn batch_no(ops: &[ChangeOp]) -> u64 {
    match &ops[0] {
        ChangeOp::Put { key, .. } => std::str::from_utf8(&key[1..]).unwrap().parse().unwrap(),
        ChangeOp::Delete { .. } => panic!("first op is a put"),
    }
}

fn every_change_once_in_order(storage: Arc<dyn Storage>, disk: Option<FaultStorage>) {
    let clock = Arc::new(ManualClock::new(1000));
    let mut store = open(storage.clone(), &clock, small_segments());
    let mut consumer = store.feed("search").unwrap();
    let mut lsns = commit_n(&store, 0, 60);
    let mut applied: Vec<u64> = Vec::new();
    let mut round = 0u64;
    while applied.len() < 150 {
        round += 1;
        let changes = consumer.poll(7, Duration::from_millis(0)).unwrap();
        if changes.is_empty() {
            lsns.extend(commit_n(&store, lsns.len() as u64, 30));
            store.snapshot_now().unwrap();
            continue;
        }
        for c in &changes {
            assert_eq!(c.node_id, 1);
            assert_eq!(
                batch_no(&c.ops),
                applied.len() as u64,
                "in order, none skipped"
            );
            applied.push(c.lsn);
        }
        let last = changes.last().unwrap().lsn;
        if round.is_multiple_of(3) {
            // Restart after checkpointing: resumes right after it.
            consumer.checkpoint(last).unwrap();
            match &disk {
                Some(d) => d.crash(),
                None => drop(store),
            }
            store = open(storage.clone(), &clock, small_segments());
            consumer = store.feed("search").unwrap();
            assert_eq!(consumer.position(), last);
        } else if round.is_multiple_of(5) {
            // Restart before checkpointing: the unconfirmed changes come
            // again; an idempotent consumer skips what it applied.
            drop(consumer);
            drop(store);
            store = open(storage.clone(), &clock, small_segments());
            consumer = store.feed("search").unwrap();
            let again = consumer.poll(1000, Duration::ZERO).unwrap();
            let redelivered: Vec<u64> =
                again.iter().map(|c| c.lsn).filter(|l| *l <= last).collect();
            let want: Vec<u64> = applied
                .iter()
                .copied()
                .filter(|l| redelivered.first().is_some_and(|f| l >= f))
                .collect();
            assert_eq!(
                redelivered, want,
                "redelivery is a suffix of what was applied"
            );
            for c in again.into_iter().filter(|c| c.lsn > last) {
                assert_eq!(batch_no(&c.ops), applied.len() as u64);
                applied.push(c.lsn);
            }
        }
    }
    let want: Vec<u64> = lsns[..applied.len()].to_vec();
    assert_eq!(applied, want);
    assert!(store.stats().snapshots > 0 || store.stats().snapshot_lsn > 0);
}

#[test]
fn consumers_see_every_change_once_in_order_across_restarts() {
    let disk = FaultStorage::new();
    every_change_once_in_order(Arc::new(disk.clone()), Some(disk));
    for choice in [BackendChoice::Portable, BackendChoice::Uring] {
        let dir = tempfile::tempdir().unwrap();
        match open_storage(dir.path(), choice) {
            Ok(s) => every_change_once_in_order(s, None),
            Err(e) => println!("skipping {choice:?}: {e}"),
        }
    }
}

#[test]
fn poll_waits_for_a_commit_and_times_out_without_one() {
    let clock = Arc::new(ManualClock::new(1000));
    let store = open(Arc::new(FaultStorage::new()), &clock, MetaConfig::default());
    let mut consumer = store.feed("c").unwrap();
    let t0 = Instant::now();
    assert!(consumer
        .poll(10, Duration::from_millis(60))
        .unwrap()
        .is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(60));
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(80));
            let mut b = Batch::new();
            b.put("a", b"k", b"v");
            store.commit(b).unwrap();
        })
    };
    let t0 = Instant::now();
    let got = consumer.poll(10, Duration::from_secs(10)).unwrap();
    assert_eq!(got.len(), 1);
    assert!(t0.elapsed() < Duration::from_secs(5), "woken by the commit");
    writer.join().unwrap();
    // A checkpoint is a commit of its own, but never shows up as a change.
    consumer.checkpoint(got[0].lsn).unwrap();
    assert!(consumer
        .poll(10, Duration::from_millis(10))
        .unwrap()
        .is_empty());
    assert_eq!(consumer.position(), store.head_lsn());
}

#[test]
fn a_checkpoint_holds_back_compaction_until_the_cap() {
    let clock = Arc::new(ManualClock::new(1000));
    let disk = FaultStorage::new();
    let config = MetaConfig {
        snapshot_after_log_bytes: u64::MAX,
        feed_retention_log_bytes_max: 1 << 30,
        ..MetaConfig::default()
    };
    let store = open(Arc::new(disk.clone()), &clock, config.clone());
    let mut slow = store.feed("slow").unwrap();
    commit_n(&store, 0, 20);
    store.snapshot_now().unwrap();
    commit_n(&store, 20, 20);
    store.snapshot_now().unwrap();
    let all = slow.poll(1000, Duration::ZERO).unwrap();
    assert_eq!(all.len(), 40, "history kept for the consumer");
    slow.checkpoint(all[30].lsn).unwrap();
    store.snapshot_now().unwrap();

    // Now a store whose retention cap is zero: compaction passes the
    // checkpoint and the consumer is told to rebuild.
    drop(slow);
    drop(store);
    let capped = MetaConfig {
        feed_retention_log_bytes_max: 0,
        ..config
    };
    let store = open(Arc::new(disk.clone()), &clock, capped);
    let mut slow = store.feed("slow").unwrap();
    commit_n(&store, 40, 5);
    store.snapshot_now().unwrap();
    commit_n(&store, 45, 5);
    match slow.poll(10, Duration::ZERO) {
        Err(Error::FeedTruncated {
            requested_lsn,
            oldest_available_lsn,
        }) => {
            assert_eq!(requested_lsn, slow.position() + 1);
            assert!(oldest_available_lsn > requested_lsn);
        }
        other => panic!("expected FeedTruncated, got {other:?}"),
    }
    // Rebuild: read the head, scan everything, resume from the head.
    let head = store.head_lsn();
    let page = store
        .scan_prefix("tracks", b"", Direction::Forward, None, 10_000)
        .unwrap();
    assert!(page.cursor.is_none() && !page.items.is_empty());
    slow.reset_to(head).unwrap();
    commit_n(&store, 50, 3);
    let next = slow.poll(10, Duration::ZERO).unwrap();
    assert_eq!(next.len(), 3);
    assert_eq!(next[0].lsn, head + 1);
}

#[test]
fn lag_reports_lsns_behind_and_age() {
    let clock = Arc::new(ManualClock::new(10_000));
    let store = open(Arc::new(FaultStorage::new()), &clock, MetaConfig::default());
    let mut c = store.feed("c").unwrap();
    // Registering the consumer committed its checkpoint; catch up.
    assert!(c.poll(10, Duration::ZERO).unwrap().is_empty());
    assert_eq!(c.lag().lsn_behind, 0);
    commit_n(&store, 0, 1);
    clock.advance(700);
    commit_n(&store, 1, 2);
    clock.advance(300);
    let lag = c.lag();
    assert_eq!(lag.lsn_behind, 3);
    assert_eq!(lag.oldest_unconsumed_age_ms, 1000);
    let got = c.poll(1, Duration::ZERO).unwrap();
    assert_eq!(got.len(), 1);
    let lag = c.lag();
    assert_eq!(lag.lsn_behind, 2);
    assert_eq!(lag.oldest_unconsumed_age_ms, 300);
    c.poll(10, Duration::ZERO).unwrap();
    assert_eq!(c.lag(), Default::default());
}

/// `feed_positions` lists every consumer: an open one at its handle's own
/// position (not its checkpoint), moving as it polls and resets, the least
/// of several handles of one name; a closed one at its checkpoint, where it
/// stays while the head moves on.
#[test]
fn feed_positions_follow_consumers() {
    let clock = Arc::new(ManualClock::new(1000));
    let store = open(Arc::new(FaultStorage::new()), &clock, MetaConfig::default());
    assert!(store.feed_positions().is_empty());
    let mut search = store.feed("search").unwrap();
    let lsns = commit_n(&store, 0, 10);
    let mut cache = store.feed("cache").unwrap();
    let positions = |store: &MetaStore| -> Vec<(String, u64, bool)> {
        store
            .feed_positions()
            .into_iter()
            .map(|f| (f.consumer, f.position, f.open))
            .collect()
    };
    let row = |name: &str, lsn: u64, open: bool| (name.to_owned(), lsn, open);
    assert_eq!(
        positions(&store),
        [row("cache", 0, true), row("search", 0, true)]
    );
    let got = search.poll(4, Duration::from_millis(0)).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(
        positions(&store),
        [row("cache", 0, true), row("search", lsns[3], true)]
    );
    // Past the commits and the batch that registered `cache`.
    let head = store.head_lsn();
    assert!(head > lsns[9]);
    cache.reset_to(head).unwrap();
    // A second handle of `cache`, at its checkpoint (0): the least counts.
    let second = store.feed("cache").unwrap();
    assert_eq!(
        positions(&store),
        [row("cache", 0, true), row("search", lsns[3], true)]
    );
    drop(second);
    // Checkpointing commits a batch of its own; the position stays.
    search.checkpoint(search.position()).unwrap();
    assert_eq!(
        positions(&store),
        [row("cache", head, true), row("search", lsns[3], true)]
    );
    // Closed: its checkpoint, while the head moves on.
    drop(search);
    commit_n(&store, 10, 3);
    assert_eq!(
        positions(&store),
        [row("cache", head, true), row("search", lsns[3], false)]
    );
    assert!(store.head_lsn() > head);
}
