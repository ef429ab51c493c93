//! The L1 cache: a thousand concurrent requests for one cold track cause
//! exactly one store lookup; an update is visible well within the TTL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap fails the test, which is the right outcome"
)]

mod discovery_support;

use std::time::{Duration, Instant};

use discovery_support::{get_json, put, start_server, track, track_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_store_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    put(
        &server.app.meta,
        &track(7, "Album Drop", "Big Star", "New LP", "Pop"),
    );
    let cache = server.app.discovery.cache().clone();
    let before = cache.store_lookups();
    // Open all connections first, then send every request at once.
    let path = format!("/v1/tracks/{}", track_id(7));
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(streams.len()));
    let mut tasks = Vec::new();
    for mut s in streams {
        let (path, barrier) = (path.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            barrier.wait().await;
            let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            buf
        }));
    }
    let mut bodies = std::collections::BTreeSet::new();
    for t in tasks {
        let buf = t.await.unwrap();
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        bodies.insert(buf[split + 4..].to_vec());
    }
    assert_eq!(bodies.len(), 1, "every answer is the same record");
    assert_eq!(
        cache.store_lookups() - before,
        1,
        "exactly one store lookup"
    );
    let mut metrics = String::new();
    server.app.discovery.render_metrics(&mut metrics);
    assert!(metrics.contains("spindle_cache_store_lookups_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_visible_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let meta = server.app.meta.clone();
    put(&meta, &track(9, "Before", "Someone", "", "Pop"));
    // The invalidator applies that put's change asynchronously; once it
    // has, no late invalidation can evict the entry the reads below fill.
    let head = meta.head_lsn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !meta
        .feed_positions()
        .iter()
        .any(|f| f.consumer == spindle_server::cache::FEED_CONSUMER && f.open && f.position >= head)
    {
        assert!(Instant::now() < deadline, "the invalidator never caught up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let path = format!("/v1/tracks/{}", track_id(9));
    let (status, v) = get_json(server.addr, &path).await;
    assert_eq!(status, 200);
    assert_eq!(v["title"], "Before");
    // Cached now: a second read is a hit.
    let lookups = server.app.discovery.cache().store_lookups();
    assert_eq!(get_json(server.addr, &path).await.1["title"], "Before");
    assert_eq!(server.app.discovery.cache().store_lookups(), lookups);
    let updated_at = Instant::now();
    put(&meta, &track(9, "After", "Someone", "", "Pop"));
    let ttl = Duration::from_millis(spindle_server::cache::CacheConfig::default().ttl_ms);
    loop {
        let (_, v) = get_json(server.addr, &path).await;
        if v["title"] == "After" {
            break;
        }
        assert!(
            updated_at.elapsed() < ttl,
            "update not visible within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let visible_after = updated_at.elapsed();
    // Feed-driven invalidation makes it far quicker than the TTL.
    assert!(visible_after < Duration::from_secs(1), "{visible_after:?}");
    // A missing track is a 404, and an unknown id never reaches the store.
    assert_eq!(
        get_json(server.addr, &format!("/v1/tracks/{}", track_id(10)))
            .await
            .0,
        404
    );
    put(&meta, &track(10, "Arrives", "Someone", "", "Pop"));
    let start = Instant::now();
    while get_json(server.addr, &format!("/v1/tracks/{}", track_id(10)))
        .await
        .0
        != 200
    {
        assert!(start.elapsed() < ttl, "a cached 404 outlived the insert");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
