//! Shared helpers of the discovery, search and cache tests: ready tracks
//! written through the catalog's own batch hook, a store in a temp dir, and
//! an in-process server over loopback with a raw HTTP/1.1 client.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed unwrap fails the test, which is the right outcome"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spindle_engine::clock::SystemClock;
use spindle_engine::io::{open_storage, BackendChoice};
use spindle_engine::meta::{MetaConfig, MetaStore};
use spindle_server::app::App;
use spindle_server::catalog;
use spindle_server::config::{ConfigLayer, ServeConfig};
use spindle_server::track::Track;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn track_id(n: u64) -> String {
    format!("{n:032x}")
}

/// A ready track. Built from the record's JSON (its wire shape), so fields
/// added to `Track` later with defaults need no change here.
pub fn track(n: u64, title: &str, artist: &str, album: &str, genre: &str) -> Track {
    let mut v = serde_json::json!({
        "id": track_id(n),
        "status": "ready",
        "kind": "song",
        "title": title,
        "raw": { "blob_id": "ab".repeat(32), "size_bytes": 1, "media_type": "audio/ogg" },
        "created_ms": n,
        "updated_ms": n,
    });
    for (k, val) in [("artist", artist), ("album", album), ("genre", genre)] {
        if !val.is_empty() {
            v[k] = val.into();
        }
    }
    serde_json::from_value(v).unwrap()
}

pub fn open_store(dir: &Path, config: MetaConfig) -> MetaStore {
    let storage = open_storage(dir, BackendChoice::Portable).unwrap();
    MetaStore::open(storage, config, Arc::new(SystemClock)).unwrap()
}

pub fn put(store: &MetaStore, t: &Track) {
    catalog::put_track(store, t).unwrap();
}

/// Deletes track `id` with its catalog records, as the delete route does.
pub fn delete(store: &MetaStore, id: &str) {
    use spindle_engine::meta::Batch;
    let current = store
        .get(spindle_server::track::TRACKS_KEYSPACE, id.as_bytes())
        .unwrap()
        .unwrap();
    let old: Track = serde_json::from_slice(&current).unwrap();
    let mut b = Batch::new();
    b.require(
        spindle_server::track::TRACKS_KEYSPACE,
        id.as_bytes(),
        Some(&current),
    );
    b.delete(spindle_server::track::TRACKS_KEYSPACE, id.as_bytes());
    catalog::index_track(&mut b, Some(&old), None);
    store.commit(b).unwrap();
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An App served over loopback by hyper, as `spindle serve` does.
pub struct Server {
    pub app: Arc<App>,
    pub addr: SocketAddr,
    pub creator_token: Option<String>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub async fn start_server(data_dir: &Path) -> Server {
    let config = ServeConfig::resolve(ConfigLayer {
        data_dir: Some(data_dir.to_path_buf()),
        io_backend: Some("portable".into()),
        ..ConfigLayer::default()
    })
    .unwrap();
    let (app, tokens) = tokio::task::spawn_blocking(move || App::open(config))
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
    Server {
        app,
        addr,
        creator_token: tokens.map(|t| t.creator),
        accept,
    }
}

/// One request on a fresh connection: `(status, body)`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, buf[split + 4..].to_vec())
}

pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = request(addr, "GET", path, None).await;
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}
