//! RFC 9110 conformance of blob serving (`GET`/`HEAD /v1/blobs/{id}`),
//! black-box against the real `spindle` binary on loopback.
//!
//! Requests are written as raw bytes on a `TcpStream` and responses parsed
//! here, so the test sees exactly what goes on the wire (a 304 without any
//! `Content-Length`, never `Transfer-Encoding: chunked`, the multipart
//! framing byte for byte).
//!
//! Every rule is a row of a table: method + request fields -> status,
//! fields that must be present, absent or equal to a value, and the body
//! (exact bytes of the blob, a JSON error code, or multipart parts checked
//! one by one). Then a keep-alive sequence checks response framing, and a
//! restart checks that ETag and Last-Modified do not change.
//!
//! The binary: the test runs `cargo build -p spindle` into its own target
//! directory and profile first (a no-op when up to date), so it never runs a
//! stale server; see [`spindle_bin`].

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness: a failed step is a failed test"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Bytes of the main test blob: over three 1 MiB chunks, so full and large
/// ranges take the streaming path and small ones the inline path.
const BLOB_LEN: usize = 3 * (1 << 20) + 17;

// ---------------------------------------------------------------------------
// The server process.

/// The `spindle` binary of this build, built (or found up to date) once.
fn spindle_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Tests run from <target>/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|s| s.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "spindle",
                "--bin",
                "spindle",
                "--profile",
            ])
            .arg(&profile)
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(&workspace)
            .status()
            .expect("running cargo build -p spindle");
        assert!(status.success(), "cargo build -p spindle failed");
        let bin = profile_dir.join("spindle");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// A running `spindle serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
    data_dir: PathBuf,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let addr_file = data_dir.join("serve.addr");
        let _ = std::fs::remove_file(&addr_file);
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::File::create(data_dir.join("server.log")).unwrap();
        let child = Command::new(spindle_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning spindle serve");
        let mut server = Server {
            child,
            addr: String::new(),
            data_dir: data_dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file) {
                if s.ends_with('\n') || s.trim().contains(':') {
                    server.addr = s.trim().to_owned();
                    break;
                }
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("server exited early ({status}):\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "server did not start:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait (bounded) for the process to exit.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not stop on SIGTERM within 20 s");
    }

    fn creator_token(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("tokens.toml")).unwrap();
        text.lines()
            .find_map(|l| {
                let v = l.trim().strip_prefix("creator")?.trim().strip_prefix('=')?;
                Some(v.trim().trim_matches('"').to_owned())
            })
            .expect("creator token in tokens.toml")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client.

#[derive(Debug)]
struct Resp {
    status: u16,
    /// Field names lower-cased, in wire order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "field {name} sent {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// Reads one response from `stream`, framing it as RFC 9112 §6.3 says:
/// no body for HEAD, 1xx, 204 and 304; else `Content-Length` bytes. A
/// chunked response fails the test (blob responses are never chunked).
fn read_response(stream: &mut impl Read, head_request: bool) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap();
        assert!(
            n == 1,
            "connection closed inside the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
        assert!(buf.len() < 64 * 1024, "response head too long");
    }
    let head = String::from_utf8(buf).expect("response head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status: u16 = parts.next().unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad field line {l:?}"));
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    assert!(
        resp.get("transfer-encoding").is_none(),
        "chunked response: {:?}",
        resp.headers
    );
    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    if !no_body {
        let len: usize = resp
            .get("content-length")
            .unwrap_or_else(|| panic!("no Content-Length on a {status}"))
            .parse()
            .unwrap();
        resp.body = vec![0u8; len];
        stream.read_exact(&mut resp.body).unwrap();
    }
    resp
}

/// Writes a request (raw field lines) and reads the response; with
/// `Connection: close` so nothing is left on the connection.
fn request(addr: &str, method: &str, path: &str, fields: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in fields {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let resp = read_response(&mut s, method == "HEAD");
    // Nothing may follow the framed body.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "{} bytes after the framed {} response",
        rest.len(),
        resp.status
    );
    resp
}

// ---------------------------------------------------------------------------
// Fixture: upload a track, follow its stream redirect to the blob.

fn test_blob(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if len >= 4 {
        v[..4].copy_from_slice(b"OggS");
    }
    v
}

/// Uploads `data` as a track and returns the blob path its `original`
/// stream redirects to.
fn upload(server: &Server, data: &[u8]) -> String {
    let token = format!("Bearer {}", server.creator_token());
    let r = request(
        &server.addr,
        "POST",
        "/v1/tracks?title=conformance&artist=test",
        &[("Authorization", &token), ("Content-Type", "audio/ogg")],
        data,
    );
    assert_eq!(
        r.status,
        202,
        "upload: {}",
        String::from_utf8_lossy(&r.body)
    );
    let track: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let id = track["id"]
        .as_str()
        .expect("track id in the 202 body")
        .to_owned();
    let r = request(
        &server.addr,
        "GET",
        &format!("/v1/tracks/{id}/stream?quality=original"),
        &[],
        b"",
    );
    assert!(
        matches!(r.status, 302 | 303 | 307),
        "stream redirect: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let location = r.get("location").expect("Location").to_owned();
    assert!(location.starts_with("/v1/blobs/"), "{location}");
    location
}

// ---------------------------------------------------------------------------
// The table.

#[derive(Debug, Clone)]
enum BodyCheck {
    /// No body bytes at all.
    Empty,
    /// Exactly these bytes of the blob.
    Slice(Range<usize>),
    /// A JSON error with this code.
    Error(&'static str),
    /// `multipart/byteranges` with these parts, in order.
    Multipart(Vec<Range<usize>>),
}

#[derive(Debug, Clone)]
struct Row {
    name: String,
    method: &'static str,
    fields: Vec<(&'static str, String)>,
    status: u16,
    exact: Vec<(&'static str, String)>,
    present: Vec<&'static str>,
    absent: Vec<&'static str>,
    body: BodyCheck,
}

fn row(
    name: impl Into<String>,
    method: &'static str,
    fields: &[(&'static str, &str)],
    status: u16,
) -> Row {
    Row {
        name: name.into(),
        method,
        fields: fields.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        status,
        exact: Vec::new(),
        present: Vec::new(),
        absent: Vec::new(),
        body: BodyCheck::Empty,
    }
}

impl Row {
    fn exact(mut self, name: &'static str, value: impl Into<String>) -> Row {
        self.exact.push((name, value.into()));
        self
    }
    fn present(mut self, names: &[&'static str]) -> Row {
        self.present.extend_from_slice(names);
        self
    }
    fn absent(mut self, names: &[&'static str]) -> Row {
        self.absent.extend_from_slice(names);
        self
    }
    fn body(mut self, b: BodyCheck) -> Row {
        self.body = b;
        self
    }
}

/// Fields every 200/206 of a blob carries.
fn representation(r: Row, etag: &str) -> Row {
    r.exact("etag", etag)
        .exact("accept-ranges", "bytes")
        .exact("cache-control", "public, max-age=31536000, immutable")
        .present(&["last-modified", "date", "content-length", "content-type"])
        .absent(&["set-cookie", "content-encoding", "transfer-encoding"])
}

fn full(r: Row, etag: &str, len: usize, head: bool) -> Row {
    let r = representation(r, etag)
        .exact("content-length", len.to_string())
        .exact("content-type", "audio/ogg")
        .absent(&["content-range"]);
    if head {
        r.body(BodyCheck::Empty)
    } else {
        r.body(BodyCheck::Slice(0..len))
    }
}

fn partial(r: Row, etag: &str, range: Range<usize>, len: usize) -> Row {
    representation(r, etag)
        .exact(
            "content-range",
            format!("bytes {}-{}/{len}", range.start, range.end - 1),
        )
        .exact("content-length", (range.end - range.start).to_string())
        .exact("content-type", "audio/ogg")
        .body(BodyCheck::Slice(range))
}

fn multipart(r: Row, etag: &str, parts: Vec<Range<usize>>) -> Row {
    representation(r, etag)
        .absent(&["content-range"])
        .body(BodyCheck::Multipart(parts))
}

fn not_modified(r: Row, etag: &str) -> Row {
    r.exact("etag", etag)
        .exact("cache-control", "public, max-age=31536000, immutable")
        .present(&["last-modified", "date"])
        .absent(&[
            "content-length",
            "content-type",
            "content-range",
            "transfer-encoding",
            "set-cookie",
        ])
        .body(BodyCheck::Empty)
}

fn unsatisfiable(r: Row, len: usize) -> Row {
    r.exact("content-range", format!("bytes */{len}"))
        .present(&["content-length"])
        .body(BodyCheck::Error("range_not_satisfiable"))
}

fn failed(r: Row) -> Row {
    r.present(&["content-length"])
        .absent(&["content-range"])
        .body(BodyCheck::Error("precondition_failed"))
}

fn rows(etag: &str, weak: &str, lm: &str, earlier: &str, later: &str, len: usize) -> Vec<Row> {
    let l = len;
    let multi16: Vec<String> = (0..16)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let multi17: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let parts16: Vec<Range<usize>> = (0..16).map(|i| i * 100..i * 100 + 10).collect();
    let mut t = vec![
        // Plain GET and HEAD.
        full(row("GET", "GET", &[], 200), etag, l, false),
        full(row("HEAD", "HEAD", &[], 200), etag, l, true),
        // Range only on GET: HEAD ignores it.
        full(
            row("HEAD ignores Range", "HEAD", &[("Range", "bytes=0-9")], 200),
            etag,
            l,
            true,
        ),
        full(
            row(
                "HEAD ignores unsatisfiable Range",
                "HEAD",
                &[("Range", "bytes=-0")],
                200,
            ),
            etag,
            l,
            true,
        ),
        // Single ranges.
        partial(
            row("first byte", "GET", &[("Range", "bytes=0-0")], 206),
            etag,
            0..1,
            l,
        ),
        partial(
            row("closed", "GET", &[("Range", "bytes=10-1009")], 206),
            etag,
            10..1010,
            l,
        ),
        partial(
            row("open", "GET", &[("Range", "bytes=500-")], 206),
            etag,
            500..l,
            l,
        ),
        partial(
            row("suffix", "GET", &[("Range", "bytes=-500")], 206),
            etag,
            l - 500..l,
            l,
        ),
        partial(
            row("last byte", "GET", &[("Range", "bytes=-1")], 206),
            etag,
            l - 1..l,
            l,
        ),
        partial(
            row(
                "across chunks",
                "GET",
                &[("Range", "bytes=1048570-2097160")],
                206,
            ),
            etag,
            1_048_570..2_097_161,
            l,
        ),
        partial(
            row(
                "end clamped",
                "GET",
                &[("Range", &format!("bytes={}-{}", l - 10, l + 5000))],
                206,
            ),
            etag,
            l - 10..l,
            l,
        ),
        partial(
            row(
                "suffix longer than blob",
                "GET",
                &[("Range", &format!("bytes=-{}", l + 1000))],
                206,
            ),
            etag,
            0..l,
            l,
        ),
        partial(
            row(
                "unit case-insensitive",
                "GET",
                &[("Range", "Bytes=0-9")],
                206,
            ),
            etag,
            0..10,
            l,
        ),
        // Unsatisfiable.
        unsatisfiable(
            row(
                "start at length",
                "GET",
                &[("Range", &format!("bytes={l}-"))],
                416,
            ),
            l,
        ),
        unsatisfiable(
            row(
                "start past length",
                "GET",
                &[("Range", "bytes=99999999-")],
                416,
            ),
            l,
        ),
        unsatisfiable(row("bytes=-0", "GET", &[("Range", "bytes=-0")], 416), l),
        unsatisfiable(
            row(
                "all unsatisfiable",
                "GET",
                &[("Range", "bytes=99999999-,-0")],
                416,
            ),
            l,
        ),
        // Ignored: unknown unit, malformed syntax -> the full 200.
        full(
            row("unknown unit", "GET", &[("Range", "items=0-9")], 200),
            etag,
            l,
            false,
        ),
        full(
            row("reversed", "GET", &[("Range", "bytes=9-0")], 200),
            etag,
            l,
            false,
        ),
        full(
            row("not numbers", "GET", &[("Range", "bytes=a-b")], 200),
            etag,
            l,
            false,
        ),
        full(
            row("empty set", "GET", &[("Range", "bytes=")], 200),
            etag,
            l,
            false,
        ),
        full(
            row("one bad member", "GET", &[("Range", "bytes=0-9,x")], 200),
            etag,
            l,
            false,
        ),
        full(
            row("no equals", "GET", &[("Range", "bytes 0-9")], 200),
            etag,
            l,
            false,
        ),
        full(
            row(
                "two Range fields",
                "GET",
                &[("Range", "bytes=0-1"), ("Range", "bytes=5-6")],
                200,
            ),
            etag,
            l,
            false,
        ),
        // Several ranges.
        multipart(
            row("two ranges", "GET", &[("Range", "bytes=0-9,20-29")], 206),
            etag,
            vec![0..10, 20..30],
        ),
        multipart(
            row(
                "unordered, overlapping",
                "GET",
                &[("Range", "bytes=100-199,5-19,0-9")],
                206,
            ),
            etag,
            vec![0..20, 100..200],
        ),
        multipart(
            row(
                "with a suffix, streamed",
                "GET",
                &[("Range", "bytes=0-0,-2000000")],
                206,
            ),
            etag,
            vec![0..1, l - 2_000_000..l],
        ),
        multipart(
            row(
                "drops unsatisfiable members",
                "GET",
                &[("Range", "bytes=0-9,99999999-,20-29")],
                206,
            ),
            etag,
            vec![0..10, 20..30],
        ),
        partial(
            row(
                "overlapping coalesce to one",
                "GET",
                &[("Range", "bytes=0-9,5-19")],
                206,
            ),
            etag,
            0..20,
            l,
        ),
        partial(
            row(
                "adjacent coalesce to one",
                "GET",
                &[("Range", "bytes=0-9,10-19")],
                206,
            ),
            etag,
            0..20,
            l,
        ),
        multipart(
            row(
                "16 ranges",
                "GET",
                &[("Range", &format!("bytes={}", multi16.join(",")))],
                206,
            ),
            etag,
            parts16,
        ),
        full(
            row(
                "17 ranges: over the cap",
                "GET",
                &[("Range", &format!("bytes={}", multi17.join(",")))],
                200,
            ),
            etag,
            l,
            false,
        ),
    ];
    // Conditional requests. The etag/date strings are borrowed from the
    // caller, so these rows are built with owned fields.
    let f = |n: &'static str, v: &str| (n, v.to_owned());
    let cond =
        |name: &str, method: &'static str, fields: Vec<(&'static str, String)>, status: u16| {
            let mut r = row(name, method, &[], status);
            r.fields = fields;
            r
        };
    t.extend([
        not_modified(
            cond("INM strong", "GET", vec![f("If-None-Match", etag)], 304),
            etag,
        ),
        not_modified(
            cond("INM weak", "GET", vec![f("If-None-Match", weak)], 304),
            etag,
        ),
        not_modified(
            cond("INM star", "GET", vec![f("If-None-Match", "*")], 304),
            etag,
        ),
        not_modified(
            cond(
                "INM list",
                "GET",
                vec![f("If-None-Match", &format!("\"a\", {weak}"))],
                304,
            ),
            etag,
        ),
        not_modified(
            cond("INM on HEAD", "HEAD", vec![f("If-None-Match", etag)], 304),
            etag,
        ),
        not_modified(
            cond(
                "INM beats satisfiable Range",
                "GET",
                vec![f("If-None-Match", etag), f("Range", "bytes=0-9")],
                304,
            ),
            etag,
        ),
        not_modified(
            cond(
                "INM beats unsatisfiable Range",
                "GET",
                vec![f("If-None-Match", etag), f("Range", "bytes=99999999-")],
                304,
            ),
            etag,
        ),
        full(
            cond(
                "INM other",
                "GET",
                vec![f("If-None-Match", "\"other\"")],
                200,
            ),
            etag,
            l,
            false,
        ),
        not_modified(
            cond("IMS equal", "GET", vec![f("If-Modified-Since", lm)], 304),
            etag,
        ),
        not_modified(
            cond("IMS later", "GET", vec![f("If-Modified-Since", later)], 304),
            etag,
        ),
        not_modified(
            cond(
                "IMS with Range",
                "GET",
                vec![f("If-Modified-Since", lm), f("Range", "bytes=0-9")],
                304,
            ),
            etag,
        ),
        full(
            cond(
                "IMS earlier",
                "GET",
                vec![f("If-Modified-Since", earlier)],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "IMS invalid",
                "GET",
                vec![f("If-Modified-Since", "yesterday")],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "INM mismatch wins over IMS",
                "GET",
                vec![
                    f("If-None-Match", "\"other\""),
                    f("If-Modified-Since", later),
                ],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond("If-Match strong", "GET", vec![f("If-Match", etag)], 200),
            etag,
            l,
            false,
        ),
        full(
            cond("If-Match star", "GET", vec![f("If-Match", "*")], 200),
            etag,
            l,
            false,
        ),
        failed(cond(
            "If-Match weak never matches",
            "GET",
            vec![f("If-Match", weak)],
            412,
        )),
        failed(cond(
            "If-Match other",
            "GET",
            vec![f("If-Match", "\"other\"")],
            412,
        )),
        failed(cond(
            "If-Match beats Range",
            "GET",
            vec![f("If-Match", "\"other\""), f("Range", "bytes=99999999-")],
            412,
        )),
        failed(cond(
            "If-Match on HEAD",
            "HEAD",
            vec![f("If-Match", "\"other\"")],
            412,
        ))
        .body(BodyCheck::Empty),
        failed(cond(
            "IUS earlier",
            "GET",
            vec![f("If-Unmodified-Since", earlier)],
            412,
        )),
        full(
            cond("IUS equal", "GET", vec![f("If-Unmodified-Since", lm)], 200),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "IUS invalid ignored",
                "GET",
                vec![f("If-Unmodified-Since", "nope")],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "If-Match wins over IUS",
                "GET",
                vec![f("If-Match", etag), f("If-Unmodified-Since", earlier)],
                200,
            ),
            etag,
            l,
            false,
        ),
        // If-Range.
        partial(
            cond(
                "If-Range strong tag",
                "GET",
                vec![f("Range", "bytes=0-9"), f("If-Range", etag)],
                206,
            ),
            etag,
            0..10,
            l,
        ),
        partial(
            cond(
                "If-Range exact date",
                "GET",
                vec![f("Range", "bytes=0-9"), f("If-Range", lm)],
                206,
            ),
            etag,
            0..10,
            l,
        ),
        full(
            cond(
                "If-Range weak tag",
                "GET",
                vec![f("Range", "bytes=0-9"), f("If-Range", weak)],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "If-Range stale tag",
                "GET",
                vec![f("Range", "bytes=0-9"), f("If-Range", "\"stale\"")],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "If-Range later date",
                "GET",
                vec![f("Range", "bytes=0-9"), f("If-Range", later)],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "If-Range earlier date",
                "GET",
                vec![f("Range", "bytes=0-9"), f("If-Range", earlier)],
                200,
            ),
            etag,
            l,
            false,
        ),
        full(
            cond(
                "If-Range without Range",
                "GET",
                vec![f("If-Range", "\"stale\"")],
                200,
            ),
            etag,
            l,
            false,
        ),
        unsatisfiable(
            cond(
                "If-Range strong, unsatisfiable",
                "GET",
                vec![f("Range", "bytes=99999999-"), f("If-Range", etag)],
                416,
            ),
            l,
        ),
    ]);
    t
}

fn check_row(addr: &str, path: &str, row: &Row, blob: &[u8]) {
    let fields: Vec<(&str, &str)> = row.fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let r = request(addr, row.method, path, &fields, b"");
    let ctx = format!("row {:?} ({} {:?})", row.name, row.method, row.fields);
    assert_eq!(
        r.status,
        row.status,
        "{ctx}: status; body {:?}",
        String::from_utf8_lossy(&r.body)
    );
    for (n, v) in &row.exact {
        assert_eq!(r.get(n), Some(v.as_str()), "{ctx}: field {n}");
    }
    for n in &row.present {
        assert!(
            r.get(n).is_some(),
            "{ctx}: field {n} missing: {:?}",
            r.headers
        );
    }
    for n in &row.absent {
        assert!(
            r.get(n).is_none(),
            "{ctx}: field {n} must be absent: {:?}",
            r.get(n)
        );
    }
    if let Some(date) = r.get("date") {
        assert!(is_imf_fixdate(date), "{ctx}: Date {date:?}");
    }
    match &row.body {
        BodyCheck::Empty => assert!(r.body.is_empty(), "{ctx}: body of {} bytes", r.body.len()),
        BodyCheck::Slice(range) => {
            assert_eq!(r.body.len(), range.end - range.start, "{ctx}: body length");
            assert!(r.body == blob[range.clone()], "{ctx}: body bytes differ");
        }
        BodyCheck::Error(code) => {
            if row.method == "HEAD" {
                assert!(r.body.is_empty());
            } else {
                assert_eq!(r.get("content-type"), Some("application/json"), "{ctx}");
                let v: serde_json::Value = serde_json::from_slice(&r.body)
                    .unwrap_or_else(|e| panic!("{ctx}: error body is not JSON ({e})"));
                assert_eq!(v["error"]["code"], *code, "{ctx}: {v}");
                assert!(v["error"]["message"].is_string(), "{ctx}: {v}");
            }
        }
        BodyCheck::Multipart(want) => {
            let ct = r.get("content-type").unwrap();
            let boundary = ct
                .strip_prefix("multipart/byteranges; boundary=")
                .unwrap_or_else(|| panic!("{ctx}: content-type {ct:?}"));
            let parts = parse_multipart(&r.body, boundary);
            assert_eq!(parts.len(), want.len(), "{ctx}: part count");
            for (i, (part, range)) in parts.iter().zip(want).enumerate() {
                assert_eq!(part.content_type, "audio/ogg", "{ctx}: part {i}");
                assert_eq!(
                    part.content_range,
                    format!("bytes {}-{}/{}", range.start, range.end - 1, blob.len()),
                    "{ctx}: part {i}"
                );
                assert!(
                    part.data == blob[range.clone()],
                    "{ctx}: part {i} bytes differ"
                );
            }
        }
    }
}

struct Part {
    content_type: String,
    content_range: String,
    data: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parses a `multipart/byteranges` body (RFC 2046 §5.1.1) strictly: optional
/// leading CRLF, `--B` CRLF, part fields, CRLF, data, CRLF `--B`, ...,
/// `--B--` and an optional CRLF at the end.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<Part> {
    let delim = format!("--{boundary}");
    let mut pos = if body.starts_with(b"\r\n") { 2 } else { 0 };
    assert!(
        body[pos..].starts_with(delim.as_bytes()),
        "body does not open with the boundary"
    );
    pos += delim.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            let rest = &body[pos + 2..];
            assert!(
                rest.is_empty() || rest == b"\r\n",
                "junk after the closing delimiter"
            );
            return parts;
        }
        assert!(
            body[pos..].starts_with(b"\r\n"),
            "no CRLF after a delimiter"
        );
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).expect("part fields end");
        let head = std::str::from_utf8(&body[pos..head_end]).unwrap();
        let mut content_type = String::new();
        let mut content_range = String::new();
        for line in head.split("\r\n") {
            let (n, v) = line.split_once(':').expect("part field");
            match n.to_ascii_lowercase().as_str() {
                "content-type" => content_type = v.trim().to_owned(),
                "content-range" => content_range = v.trim().to_owned(),
                other => panic!("unexpected part field {other}"),
            }
        }
        let data_start = head_end + 4;
        let next =
            find(body, format!("\r\n{delim}").as_bytes(), data_start).expect("next delimiter");
        parts.push(Part {
            content_type,
            content_range,
            data: body[data_start..next].to_vec(),
        });
        pos = next + 2 + delim.len();
    }
}

fn is_imf_fixdate(s: &str) -> bool {
    // e.g. "Sun, 06 Nov 1994 08:49:37 GMT"
    let b = s.as_bytes();
    b.len() == 29 && s.ends_with(" GMT") && b[3] == b',' && b[4] == b' '
}

/// Seconds since the epoch of an IMF-fixdate (enough of a parser for dates
/// this server writes).
fn parse_imf_fixdate(s: &str) -> u64 {
    assert!(is_imf_fixdate(s), "{s:?}");
    let day: u64 = s[5..7].parse().unwrap();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == &s[8..11]).unwrap() as u64 + 1;
    let year: u64 = s[12..16].parse().unwrap();
    let (h, m, sec): (u64, u64, u64) = (
        s[17..19].parse().unwrap(),
        s[20..22].parse().unwrap(),
        s[23..25].parse().unwrap(),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + m * 60 + sec
}

fn format_imf_fixdate(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn blob_serving_conforms_to_rfc_9110() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let blob = test_blob(BLOB_LEN);
    let before_upload_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = upload(&server, &blob);
    let id = path.strip_prefix("/v1/blobs/").unwrap().to_owned();
    assert_eq!(id.len(), 64, "{id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{id}"
    );
    let etag = format!("\"{id}\"");
    let weak = format!("W/{etag}");

    let head = request(&server.addr, "HEAD", &path, &[], b"");
    let lm = head.get("last-modified").expect("Last-Modified").to_owned();
    let lm_s = parse_imf_fixdate(&lm);
    let now_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (before_upload_s..=now_s).contains(&lm_s),
        "Last-Modified {lm} outside the upload"
    );
    assert_eq!(format_imf_fixdate(lm_s), lm, "date helpers round-trip");
    let earlier = format_imf_fixdate(lm_s - 1);
    let later = format_imf_fixdate(lm_s + 1);

    let table = rows(&etag, &weak, &lm, &earlier, &later, blob.len());
    assert!(table.len() > 60, "{} rows", table.len());
    for row in &table {
        check_row(&server.addr, &path, row, &blob);
        // Every representation response carries the same Last-Modified.
        if row.status == 200 || row.status == 206 || row.status == 304 {
            let r = request(&server.addr, "HEAD", &path, &[], b"");
            assert_eq!(r.get("last-modified"), Some(lm.as_str()));
        }
    }

    // Obsolete date forms are accepted (RFC 9110 §5.6.7).
    let rfc850 = {
        // "Sunday, 06-Nov-94 08:49:37 GMT" from the IMF-fixdate.
        let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        let long = [
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
            "Sunday",
        ];
        let wd = days.iter().position(|d| *d == &lm[..3]).unwrap();
        format!(
            "{}, {}-{}-{} {}",
            long[wd],
            &lm[5..7],
            &lm[8..11],
            &lm[14..16],
            &lm[17..]
        )
    };
    let r = request(
        &server.addr,
        "GET",
        &path,
        &[("If-Modified-Since", &rfc850)],
        b"",
    );
    assert_eq!(r.status, 304, "RFC 850 date {rfc850:?}");

    // Not found and wrong methods are JSON errors.
    let zeros = format!("/v1/blobs/{}", "0".repeat(64));
    for p in [zeros.as_str(), "/v1/blobs/not-an-id", "/v1/blobs/"] {
        let r = request(&server.addr, "GET", p, &[], b"");
        assert_eq!(r.status, 404, "{p}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"]["code"].is_string(), "{p}: {v}");
    }
    let upper = format!("/v1/blobs/{}", id.to_ascii_uppercase());
    assert_eq!(request(&server.addr, "GET", &upper, &[], b"").status, 404);
    let r = request(&server.addr, "DELETE", &path, &[], b"");
    assert_eq!(r.status, 405);
    assert!(r
        .get("allow")
        .is_some_and(|a| a.contains("GET") && a.contains("HEAD")));

    // The empty blob: 200 with an empty body, Range or not.
    let empty_path = upload(&server, b"");
    for (method, fields) in [
        ("GET", vec![]),
        ("HEAD", vec![]),
        ("GET", vec![("Range", "bytes=0-")]),
        ("GET", vec![("Range", "bytes=-5")]),
        ("GET", vec![("Range", "bytes=-0")]),
    ] {
        let r = request(&server.addr, method, &empty_path, &fields, b"");
        assert_eq!(r.status, 200, "empty blob {method} {fields:?}");
        assert_eq!(
            r.get("content-length"),
            Some("0"),
            "empty blob {method} {fields:?}"
        );
        assert!(r.body.is_empty());
        assert!(r.get("etag").is_some() && r.get("content-range").is_none());
    }
    server.stop();
}

/// Several requests on one keep-alive connection: the framing of a 304,
/// a HEAD and a 416 must leave the connection in sync (a bogus body or
/// `Content-Length: 0` would desynchronise the next response).
#[test]
fn keep_alive_framing_and_restart_stability() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let blob = test_blob(200_000);
    let path = upload(&server, &blob);
    let etag = format!("\"{}\"", path.strip_prefix("/v1/blobs/").unwrap());

    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let host = &server.addr;
    let reqs: Vec<(String, bool)> = vec![
        (format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nIf-None-Match: {etag}\r\n\r\n"), false),
        (format!("HEAD {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-9\r\n\r\n"), true),
        (format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=999999-\r\n\r\n"), false),
        (format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=-0\r\nIf-None-Match: *\r\n\r\n"), false),
        (format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=100-199\r\n\r\n"), false),
    ];
    // Pipelined: all written before any response is read.
    for (req, _) in &reqs {
        s.write_all(req.as_bytes()).unwrap();
    }
    let statuses: Vec<u16> = reqs
        .iter()
        .map(|(_, head)| {
            let r = read_response(&mut s, *head);
            if r.status == 304 {
                assert_eq!(r.get("content-length"), None, "Content-Length on a 304");
                assert_eq!(r.get("etag"), Some(etag.as_str()));
            }
            if *head {
                assert_eq!(r.get("content-length"), Some("200000"));
            }
            if r.status == 206 {
                assert!(r.body == blob[100..200]);
            }
            r.status
        })
        .collect();
    assert_eq!(statuses, vec![304, 200, 416, 304, 206]);

    // ETag and Last-Modified survive a restart unchanged.
    let before = request(&server.addr, "HEAD", &path, &[], b"");
    server.stop();
    let server = Server::start(dir.path());
    let after = request(&server.addr, "HEAD", &path, &[], b"");
    assert_eq!(after.status, 200);
    for field in ["etag", "last-modified", "content-length", "content-type"] {
        assert_eq!(
            before.get(field),
            after.get(field),
            "{field} after a restart"
        );
    }
    assert_eq!(after.get("etag"), Some(etag.as_str()));
    let r = request(&server.addr, "GET", &path, &[("If-None-Match", &etag)], b"");
    assert_eq!(
        r.status, 304,
        "a cached validator still matches after a restart"
    );
    let lm = before.get("last-modified").unwrap().to_owned();
    let r = request(
        &server.addr,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", &lm)],
        b"",
    );
    assert_eq!(
        r.status, 206,
        "If-Range with the old date still honours the Range"
    );
    server.stop();
}
