//! Plays and charts through the HTTP server, in-process: posting a batch
//! (accepted, duplicate, refused with reasons, short plays), idempotent
//! re-posting, and reading the charts the aggregator publishes, by window,
//! genre (any spelling) and kind, with their rank changes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spindle_engine::clock::{Clock, SystemClock};
use spindle_engine::meta::Batch;
use spindle_server::app::App;
use spindle_server::config::{ConfigLayer, ServeConfig};
use spindle_server::track::TRACKS_KEYSPACE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn track_id(n: u64) -> String {
    format!("{n:032x}")
}

async fn start(dir: &std::path::Path) -> (Arc<App>, SocketAddr, tokio::task::JoinHandle<()>) {
    let config = ServeConfig::resolve(ConfigLayer {
        data_dir: Some(dir.to_path_buf()),
        io_backend: Some("portable".into()),
        ..ConfigLayer::default()
    })
    .unwrap();
    let (app, _) = tokio::task::spawn_blocking(move || App::open(config))
        .await
        .unwrap()
        .unwrap();
    let app = Arc::new(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let app = served.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (app, addr, accept)
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text[9..12].parse().unwrap();
    let body_at = text.find("\r\n\r\n").unwrap() + 4;
    let body = &text[body_at..];
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn play(
    listener: &str,
    track: u64,
    ms_played: u64,
    started_at: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "listener_id": listener,
        "track_id": track_id(track),
        "ms_played": ms_played,
        "started_at": started_at,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plays_post_and_charts_read_over_http() {
    // The aggregator refreshes every 50 ms in this test (read at App open).
    std::env::set_var("SPINDLE_CHARTS_REFRESH_MS", "50");
    let dir = tempfile::tempdir().unwrap();
    let (app, addr, accept) = start(dir.path()).await;
    let mut b = Batch::new();
    for (n, genre, kind) in [
        (1, "Hip Hop", "song"),
        (2, "hip-hop", "song"),
        (3, "Jazz", "podcast"),
    ] {
        let json = format!(
            r#"{{"id":"{}","status":"ready","kind":"{kind}","title":"Title {n}","artist":"Artist {n}","genre":"{genre}","duration_ms":20000}}"#,
            track_id(n)
        );
        b.put(TRACKS_KEYSPACE, track_id(n).as_bytes(), json.as_bytes());
    }
    app.meta.commit(b).unwrap();
    let now = SystemClock.now_ms();
    let ts = |back_ms: u64| serde_json::Value::from(now - back_ms);
    let mut batch = vec![
        play("ann", 1, 40_000, ts(1_000)),
        play("bob", 1, 40_000, ts(2_000)),
        play("cid", 1, 40_000, ts(3_000)),
        play("ann", 2, 20_000, ts(4_000)), // the whole 20 s track: a stream
        play("bob", 2, 19_000, ts(5_000)), // too short
        play("ann", 3, 31_000, ts(6_000)),
        play("ann", 3, 31_000, ts(7_000)),
        play("ann", 1, 40_000, ts(1_000)), // duplicate of the first
        play("dan", 1, 40_000, ts(90_000_000)), // over a day old
        play("dan", 1, 40_000, (now + 3_600_000).into()), // an hour ahead
        play("dan", 9, 40_000, ts(1_000)), // no such track
        serde_json::json!({"listener_id": "x"}), // malformed
    ];
    // RFC 3339 start times work too.
    batch.push(play(
        "eve",
        1,
        45_000,
        spindle_server::charts::time::format_rfc3339_ms(now - 8_000).into(),
    ));
    let body = serde_json::Value::Array(batch.clone()).to_string();
    let (status, r) = request(addr, "POST", "/v1/plays", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["accepted"], 8, "{r}");
    assert_eq!(r["duplicates"], 1, "{r}");
    assert_eq!(r["refused"], 4, "{r}");
    let reasons: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "too_old",
            "future_timestamp",
            "unknown_track",
            "invalid_event"
        ]
    );
    assert_eq!(r["results"][3]["stream"], true);
    assert_eq!(r["results"][4]["stream"], false);
    // Posting the same body again counts nothing new; one object works too.
    let (_, again) = request(addr, "POST", "/v1/plays", &body).await;
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(again["duplicates"], 9, "{again}");
    let (status, one) = request(
        addr,
        "POST",
        "/v1/plays",
        &play("fay", 3, 60_000, ts(500)).to_string(),
    )
    .await;
    assert_eq!((status, one["accepted"].clone()), (200, 1.into()), "{one}");
    let (status, _) = request(addr, "POST", "/v1/plays", "[1, 2").await;
    assert_eq!(status, 400);

    // Track 1: 4 streams, track 3: 3, track 2: 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    let chart = loop {
        let (status, c) = request(addr, "GET", "/v1/charts/top?window=day", "").await;
        assert_eq!(status, 200, "{c}");
        let total: u64 = c["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["streams"].as_u64().unwrap())
            .sum();
        if total == 8 {
            break c;
        }
        assert!(Instant::now() < deadline, "charts never caught up: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got: Vec<(String, u64, String)> = chart["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["track_id"].as_str().unwrap().to_owned(),
                e["streams"].as_u64().unwrap(),
                e["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (track_id(1), 4, "new".into()),
            (track_id(3), 3, "new".into()),
            (track_id(2), 1, "new".into()),
        ]
    );
    assert_eq!(chart["entries"][0]["title"], "Title 1");
    assert_eq!(chart["entries"][0]["rank"], 1);
    assert!(chart["computed_at_ms"].as_u64().unwrap() >= now);
    assert!(chart["computed_at"].as_str().unwrap().ends_with('Z'));

    let (_, hip) = request(
        addr,
        "GET",
        "/v1/charts/top?window=week&genre=HIP%20HOP&limit=1",
        "",
    )
    .await;
    assert_eq!(hip["entries"].as_array().unwrap().len(), 1, "{hip}");
    assert_eq!(hip["entries"][0]["track_id"], track_id(1));
    assert_eq!(hip["genre"], "Hip Hop");
    let (_, pods) = request(addr, "GET", "/v1/charts/top?window=all&kind=podcast", "").await;
    assert_eq!(pods["entries"][0]["track_id"], track_id(3), "{pods}");
    assert_eq!(pods["entries"].as_array().unwrap().len(), 1);
    let (_, none) = request(addr, "GET", "/v1/charts/top?genre=polka", "").await;
    assert_eq!(none["entries"], serde_json::json!([]));
    for bad in ["window=year", "limit=0", "limit=51", "kind=movie"] {
        let (status, e) = request(addr, "GET", &format!("/v1/charts/top?{bad}"), "").await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "bad_request");
    }
    let (status, _) = request(addr, "GET", "/v1/plays", "").await;
    assert_eq!(status, 405);
    let metrics = app.render_metrics();
    assert!(
        metrics.contains("spindle_plays_accepted_total 9"),
        "{metrics}"
    );
    accept.abort();
    drop(app);
}
