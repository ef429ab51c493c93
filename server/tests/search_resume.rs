//! The indexer's checkpoint: resuming after a restart misses nothing and
//! duplicates nothing; a truncated feed or `reindex` rebuilds from the
//! store; deletes and un-readying disappear; the visibility lag is measured;
//! an index of another schema version is rebuilt.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap fails the test, which is the right outcome"
)]

mod discovery_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use discovery_support::{delete, open_store, put, track, track_id};
use spindle_engine::meta::{MetaConfig, MetaStore};
use spindle_server::search::{self, IndexerConfig, SearchService};
use spindle_server::track::Status;

const WAIT: Duration = Duration::from_secs(20);

fn start(store: &MetaStore, dir: &std::path::Path) -> SearchService {
    let s = SearchService::start(store, &dir.join("search"), IndexerConfig::default()).unwrap();
    assert!(s.index().wait_for_lsn(store.head_lsn(), WAIT));
    s
}

/// Every track of `range` is found exactly once by its unique word, and the
/// common word finds exactly `range.len()` tracks (no duplicates, no extras).
fn check_all(s: &SearchService, range: std::ops::Range<u64>) {
    let idx = s.index();
    let all = idx.search("common", None, 100).unwrap();
    let ids: Vec<&str> = all.tracks.iter().map(|h| h.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "duplicate documents: {ids:?}");
    let want: BTreeSet<String> = range.clone().map(track_id).collect();
    let got: BTreeSet<String> = unique.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
    for n in range {
        // Neighbours ("uniq12x" for "uniq13x") match as typos, ranked below.
        let r = idx.search(&format!("uniq{n}x"), None, 5).unwrap();
        assert_eq!(r.tracks[0].id, track_id(n), "uniq{n}x");
        assert!(r.tracks.get(1).is_none_or(|h| h.score < r.tracks[0].score));
        assert_eq!(r.tracks.iter().filter(|h| h.id == track_id(n)).count(), 1);
    }
}

fn add(store: &MetaStore, range: std::ops::Range<u64>) {
    for n in range {
        put(
            store,
            &track(
                n,
                &format!("Common uniq{n}x"),
                "Resumers",
                "Restart",
                "Test",
            ),
        );
    }
}

#[test]
fn resumes_after_restart_without_duplicates_or_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    add(&store, 0..30);
    let s = start(&store, dir.path());
    assert_eq!(
        s.index().stats().rebuilds,
        1,
        "a new index starts with a scan"
    );
    add(&store, 30..50);
    assert!(s.index().wait_for_lsn(store.head_lsn(), WAIT));
    check_all(&s, 0..50);
    drop(s);
    // Written while the indexer is down, including an update of an indexed
    // track and a delete.
    add(&store, 50..70);
    put(
        &store,
        &track(3, "Common uniq3x renamed", "Resumers", "Restart", "Test"),
    );
    delete(&store, &track_id(4));
    let s = start(&store, dir.path());
    assert_eq!(s.index().stats().rebuilds, 0, "resumed from the checkpoint");
    let want: Vec<u64> = (0..70).filter(|&n| n != 4).collect();
    let idx = s.index();
    let all = idx.search("common", None, 100).unwrap();
    let got: Vec<u64> = {
        let mut v: Vec<u64> = all
            .tracks
            .iter()
            .map(|h| u64::from_str_radix(&h.id, 16).unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(got, want);
    assert_eq!(
        idx.search("renamed", None, 5).unwrap().tracks[0].id,
        track_id(3)
    );
    let r = idx.search("uniq4x", None, 10).unwrap();
    assert!(
        r.tracks.iter().all(|h| h.id != track_id(4)),
        "deleted track found"
    );
}

#[test]
fn rebuilds_when_the_feed_was_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = MetaConfig {
        snapshot_after_log_bytes: 4 * 1024,
        feed_retention_log_bytes_max: 1024,
        ..MetaConfig::default()
    };
    let store = open_store(&dir.path().join("meta"), config);
    add(&store, 0..10);
    let s = start(&store, dir.path());
    drop(s);
    // Enough writes while the indexer is down that its history is dropped.
    add(&store, 10..60);
    assert!(store.stats().oldest_feed_lsn > 1, "{:?}", store.stats());
    let s = start(&store, dir.path());
    assert!(s.index().stats().rebuilds >= 1);
    check_all(&s, 0..60);
}

#[test]
fn reindex_rebuilds_from_the_store_and_the_server_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    add(&store, 0..20);
    // Lose the index entirely, as an operator might.
    let s = start(&store, dir.path());
    drop(s);
    std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    let head = store.head_lsn();
    let report = search::reindex(&store, &dir.path().join("search")).unwrap();
    assert_eq!(report.lsn, head);
    assert!(report.documents >= 20);
    let s = start(&store, dir.path());
    assert_eq!(s.index().stats().rebuilds, 0, "reindex left a checkpoint");
    check_all(&s, 0..20);
}

#[test]
fn only_ready_tracks_are_findable_and_deletes_disappear() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    let s = start(&store, dir.path());
    let mut t = track(1, "Nocturne Glass", "Solo Pianist", "Nights", "Classical");
    t.status = Status::Processing;
    put(&store, &t);
    assert!(s.index().wait_for_lsn(store.head_lsn(), WAIT));
    let idx = s.index();
    assert!(idx.search("nocturne", None, 5).unwrap().tracks.is_empty());
    assert!(idx.search("pianist", None, 5).unwrap().artists.is_empty());
    t.status = Status::Ready;
    let ready_at = Instant::now();
    put(&store, &t);
    assert!(discovery_support::eventually(WAIT, || !idx
        .search("nocturne", None, 5)
        .unwrap()
        .tracks
        .is_empty()));
    let visible_after = ready_at.elapsed();
    let r = idx.search("solo pianist", None, 5).unwrap();
    assert_eq!(r.artists.len(), 1);
    assert_eq!(idx.search("nights", None, 5).unwrap().albums.len(), 1);
    let stats = idx.stats();
    assert!(stats.lag_samples >= 1);
    assert!(
        stats.lag_p99_ms_at_most.unwrap() <= 1000,
        "visibility lag p99 {:?}, seen {visible_after:?}",
        stats.lag_p99_ms_at_most
    );
    let mut metrics = String::new();
    idx.render_metrics(&mut metrics);
    assert!(metrics.contains("spindle_search_visibility_lag_seconds_count 1"));
    delete(&store, &track_id(1));
    assert!(discovery_support::eventually(WAIT, || idx
        .search("nocturne", None, 5)
        .unwrap()
        .tracks
        .is_empty()));
    // The artist and album had only this track: they are gone too.
    assert!(idx.search("pianist", None, 5).unwrap().artists.is_empty());
    assert!(idx.search("nights", None, 5).unwrap().albums.is_empty());
}

#[test]
fn an_index_of_another_schema_version_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    add(&store, 0..10);
    let s = start(&store, dir.path());
    drop(s);
    let version_file = dir.path().join("search").join("spindle-schema-version");
    assert_eq!(
        std::fs::read_to_string(&version_file).unwrap(),
        search::SCHEMA_VERSION.to_string()
    );
    // Same version: resumed, not rebuilt.
    let s = start(&store, dir.path());
    assert_eq!(s.index().stats().rebuilds, 0);
    drop(s);
    // An older version (the tantivy schema itself may well be the same):
    // thrown away and rebuilt from the store, then recorded as current.
    std::fs::write(&version_file, "1").unwrap();
    let s = start(&store, dir.path());
    assert_eq!(s.index().stats().rebuilds, 1, "rebuilt from the store");
    check_all(&s, 0..10);
    drop(s);
    assert_eq!(
        std::fs::read_to_string(&version_file).unwrap(),
        search::SCHEMA_VERSION.to_string()
    );
    // No version at all (an index from before versions were recorded).
    std::fs::remove_file(&version_file).unwrap();
    let s = start(&store, dir.path());
    assert_eq!(s.index().stats().rebuilds, 1);
    check_all(&s, 0..10);
}

#[test]
fn ids_and_the_kind_filter_hold_across_commits_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("meta"), MetaConfig::default());
    let s = start(&store, dir.path());
    let idx = s.index();
    // Batches committed apart: several segments and searcher generations,
    // each segment's columns opened once and reused by later generations.
    for batch in 0..4u64 {
        for n in batch * 10..batch * 10 + 10 {
            let mut t = track(n, &format!("Common uniq{n}x"), "Hosts", "Shows", "Talk");
            if n % 2 == 1 {
                t.kind = spindle_server::track::Kind::Podcast;
            }
            put(&store, &t);
        }
        assert!(idx.wait_for_lsn(store.head_lsn(), WAIT));
        let upto = batch * 10 + 10;
        let all = idx.search("common", None, 100).unwrap();
        assert_eq!(all.tracks.len() as u64, upto);
        for h in &all.tracks {
            // The id read from the fast fields is the stored document's.
            assert_eq!(h.item["id"], h.id.as_str(), "{h:?}");
        }
        let pods = idx
            .search("common", Some(spindle_server::track::Kind::Podcast), 100)
            .unwrap();
        let got: BTreeSet<String> = pods.tracks.iter().map(|h| h.id.clone()).collect();
        let want: BTreeSet<String> = (0..upto).filter(|n| n % 2 == 1).map(track_id).collect();
        assert_eq!(got, want, "after batch {batch}");
    }
}
