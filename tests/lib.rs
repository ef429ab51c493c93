//! Helpers shared by the black-box tests in this folder: finding the built
//! `spindle` binary, starting it on a free port with a temporary data
//! directory, and locating `../shared/corpus` (tests skip, saying so, when it
//! is absent).
//!
//! - [`spindle_bin`]: the binary of this build. Tests of this crate cannot use
//!   `CARGO_BIN_EXE_*` of another crate, so the path is derived from the test
//!   executable (`<target>/<profile>/deps/<test>-<hash>` ->
//!   `<target>/<profile>/spindle`) and `cargo build -p spindle` runs once per
//!   test process with the same target directory and profile (a no-op when up
//!   to date), so a test never runs a stale server.
//! - [`Server`]: a running `spindle serve --listen 127.0.0.1:0` with its own
//!   temporary data directory; it waits for `<data_dir>/serve.addr` and for
//!   `/readyz`, reads the tokens from `<data_dir>/tokens.toml`, and is killed
//!   on drop. [`Server::stop`] sends SIGTERM and waits for a clean exit.
//! - [`request`], [`raw_exchange`], [`parse_response`]: a tiny HTTP/1.1
//!   client over a raw `TcpStream`, so tests see exactly what is on the wire.
//!
//! **Invariant:** every wait here is bounded (a few seconds), so a broken
//! server fails a test instead of hanging CI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness: a failed step is a failed test"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Read/write timeout of the client helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared/corpus` beside the workspace, if present; prints why not.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = workspace_dir().join("..").join("shared").join("corpus");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipping: no corpus at {}", dir.display());
        None
    }
}

/// The `spindle` binary of this build, built (or found up to date) once per
/// test process.
pub fn spindle_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let profile = match profile_dir.file_name().and_then(|s| s.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "spindle", "--bin", "spindle"])
            .args(["--profile", &profile])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(workspace_dir())
            .status()
            .expect("running cargo build -p spindle");
        assert!(status.success(), "cargo build -p spindle failed");
        let bin = profile_dir.join("spindle");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra arguments after `serve --listen 127.0.0.1:0 --data-dir DIR`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
}

impl ServerOptions {
    /// Adds `--flag value` style arguments.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A running `spindle serve`, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// The bound address (from `<data_dir>/serve.addr`).
    pub addr: SocketAddr,
    /// The data directory (temporary unless given in the options).
    pub data_dir: PathBuf,
    options: ServerOptions,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with default settings in a fresh data directory.
    pub fn start() -> Server {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `options` and waits until `/readyz` answers 200.
    pub fn start_with(options: ServerOptions) -> Server {
        let (data_dir, temp) = match &options.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                (t.path().join("data"), Some(t))
            }
        };
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            options,
            _temp: temp,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let addr_file = self.data_dir.join("serve.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(spindle_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.options.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning spindle serve");
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                    break addr;
                }
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("spindle serve exited during startup: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "spindle serve did not write {} in time",
                addr_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.addr = addr;
        self.child = Some(child);
        if self.options.args.iter().any(|a| a == "--tls-cert") {
            // TLS: this plain client cannot ask /readyz; the address file is
            // written after the listener is bound, which is enough.
            return;
        }
        loop {
            if let Ok(r) = try_request(addr, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "spindle serve never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// A token from `<data_dir>/tokens.toml` (`"admin"` or `"creator"`).
    pub fn token(&self, role: &str) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("tokens.toml")).expect("tokens.toml");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(role) {
                let rest = rest.trim_start();
                if let Some(v) = rest.strip_prefix('=') {
                    return v.trim().trim_matches('"').to_owned();
                }
            }
        }
        panic!("no {role} token in tokens.toml");
    }

    /// The creator token.
    pub fn creator_token(&self) -> String {
        self.token("creator")
    }

    /// The admin token.
    pub fn admin_token(&self) -> String {
        self.token("admin")
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with `Connection: close`; see [`request`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        request(self.addr, method, path, headers, body)
    }

    /// `VmRSS` and `VmHWM` of the server in KiB, from `/proc/<pid>/status`.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own, still unreaped child's pid.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits (at most 30 s) for the server to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("spindle serve did not exit within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data after it exited.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn();
    }

    /// Stops the server (SIGTERM) and starts it again on the same data.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "server exited with {status}");
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header fields in wire order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `id`s of the `tracks` array of a JSON body (a search answer), in
    /// order.
    pub fn track_ids(&self) -> Vec<String> {
        self.json()["tracks"]
            .as_array()
            .unwrap_or_else(|| panic!("no tracks in {:?}", String::from_utf8_lossy(&self.body)))
            .iter()
            .map(|h| h["id"].as_str().expect("a track id").to_owned())
            .collect()
    }

    /// `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {:?}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }
}

/// Sends one request with `Connection: close` (and `Content-Length` when
/// `body` is not empty or the method is POST/PUT) and parses the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    try_request(addr, method, path, headers, body).expect("HTTP request failed")
}

/// [`request`], returning I/O errors instead of panicking.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    wire.extend_from_slice(body);
    let raw = try_raw_exchange(addr, &wire)?;
    parse_response(&raw, method == "HEAD")
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `wire` and reads until the server closes the connection.
pub fn raw_exchange(addr: SocketAddr, wire: &[u8]) -> Vec<u8> {
    try_raw_exchange(addr, wire).expect("raw exchange failed")
}

/// [`raw_exchange`], returning I/O errors instead of panicking.
pub fn try_raw_exchange(addr: SocketAddr, wire: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(wire)?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(out)
}

/// Parses one response (`head_request`: no body follows whatever the
/// headers say). Decodes chunked bodies; otherwise takes `Content-Length`
/// bytes, or everything after the head when there is none.
pub fn parse_response(raw: &[u8], head_request: bool) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if head_request || status == 304 || status == 204 || (100..200).contains(&status) {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        if rest.len() < len {
            return Err(format!("body short: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line unterminated")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunk short".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Reads a whole response from a stream that stays open (keep-alive):
/// head, then exactly the framed body. Returns `None` on EOF before a head.
pub fn read_one_response(
    stream: &mut TcpStream,
    head_request: bool,
) -> std::io::Result<Option<HttpResponse>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Ok(None);
        }
        buf.push(byte[0]);
    }
    let head = parse_response(&buf, true)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut body = Vec::new();
    let no_body = head_request || head.status == 304 || head.status == 204;
    if !no_body {
        if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().unwrap_or(0);
            body.resize(len, 0);
            stream.read_exact(&mut body)?;
        }
    }
    Ok(Some(HttpResponse { body, ..head }))
}

/// A mono 16-bit PCM WAV of `seconds` of a `freq_hz` sine at 8 kHz (a real
/// file the transcoder accepts; different frequencies give different bytes).
pub fn tone_wav(seconds: f64, freq_hz: f64) -> Vec<u8> {
    let rate = 8000u32;
    let frames = (seconds * f64::from(rate)) as u32;
    let samples: Vec<i16> = (0..frames)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            ((t * freq_hz * std::f64::consts::TAU).sin() * 0.3 * f64::from(i16::MAX)) as i16
        })
        .collect();
    pcm16_mono_wav(rate, &samples)
}

/// A mono 16-bit PCM WAV file of `samples` at `rate` Hz.
pub fn pcm16_mono_wav(rate: u32, samples: &[i16]) -> Vec<u8> {
    let frames = u32::try_from(samples.len()).expect("a test WAV under 4 G samples");
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + frames * 2).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(frames * 2).to_le_bytes());
    for v in samples {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_head_responses() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcdef",
            false,
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abc");
        assert_eq!(r.header("x-a"), Some("b"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap();
        assert!(r.body.is_empty());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false).is_err());
        assert!(parse_response(b"garbage", false).is_err());
    }
}
