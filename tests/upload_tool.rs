//! `spindle upload` against the real binary and a real server: a folder of
//! generated WAV files (with a non-audio file and a fake `.wav` that must be
//! skipped) is uploaded, every printed id names a stored track; a bad token,
//! an upload over the server's limit and a connection dropped mid-body are
//! each reported with a non-zero exit code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::io::Read as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use spindle_tests::{spindle_bin, Server, ServerOptions};

/// A mono 16-bit PCM WAV of `seconds` of a `freq_hz` sine at 8 kHz.
fn wav(seconds: f64, freq_hz: f64) -> Vec<u8> {
    let rate = 8000u32;
    let frames = (seconds * f64::from(rate)) as u32;
    let mut out = Vec::with_capacity(44 + frames as usize * 2);
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
    for i in 0..frames {
        let t = f64::from(i) / f64::from(rate);
        let v = (t * freq_hz * std::f64::consts::TAU).sin() * 0.3 * f64::from(i16::MAX);
        out.extend_from_slice(&(v as i16).to_le_bytes());
    }
    out
}

fn upload(server_url: &str, token_file: &Path, extra: &[&str], paths: &[&Path]) -> Output {
    Command::new(spindle_bin())
        .args(["upload", "--server", server_url, "--token-file"])
        .arg(token_file)
        .args(extra)
        .args(paths)
        .env_remove("SPINDLE_TOKEN")
        .output()
        .expect("running spindle upload")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn uploads_a_folder_and_reports_failures() {
    let server = Server::start_with(
        ServerOptions::default()
            .arg("--upload-limit-bytes")
            .arg("200000"),
    );
    let token_file = server.data_dir.join("tokens.toml");
    let music = tempfile::tempdir().unwrap();
    let sub = music.path().join("album one");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(music.path().join("a tone.wav"), wav(1.0, 440.0)).unwrap();
    std::fs::write(sub.join("b tone.WAV"), wav(2.0, 660.0)).unwrap();
    std::fs::write(music.path().join("notes.txt"), b"not audio").unwrap();
    std::fs::write(sub.join("fake.wav"), b"plain text pretending").unwrap();

    let out = upload(&server.url(""), &token_file, &[], &[music.path()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "upload failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per uploaded file:\n{stdout}");
    let mut ids = Vec::new();
    for (line, name) in lines.iter().zip(["a tone.wav", "b tone.WAV"]) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "id, status, path: {line:?}");
        assert_eq!(cols[0].len(), 32, "a track id: {line:?}");
        assert!(cols[2].ends_with(name), "{line:?}");
        let r = server.request("GET", &format!("/v1/tracks/{}", cols[0]), &[], b"");
        assert_eq!(r.status, 200, "{}", text(&r.body));
        let t = r.json();
        assert_eq!(t["filename"], name);
        assert_eq!(t["raw"]["media_type"], "audio/wav");
        assert_eq!(t["status"].as_str().unwrap(), cols[1]);
        ids.push(cols[0].to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    assert!(
        stderr.contains("notes.txt") && stderr.contains("fake.wav"),
        "{stderr}"
    );
    assert!(
        stderr.contains("uploaded 2 of 2 files (2 skipped"),
        "{stderr}"
    );

    // Fields given on the command line reach the track.
    let single = music.path().join("a tone.wav");
    let out = upload(
        &server.url(""),
        &token_file,
        &["--title", "Ünïcode & co", "--kind", "podcast"],
        &[&single],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).split('\t').next().unwrap().to_owned();
    let t = server
        .request("GET", &format!("/v1/tracks/{id}"), &[], b"")
        .json();
    assert_eq!(
        (t["title"].as_str(), t["kind"].as_str()),
        (Some("Ünïcode & co"), Some("podcast"))
    );

    // A wrong token: nothing uploaded, the reason shown, non-zero exit.
    let out = upload(
        &server.url(""),
        &token_file,
        &["--token", "wrong"],
        &[music.path()],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("NOT UPLOADED") && stderr.contains("403"),
        "{stderr}"
    );

    // A file over the server's limit: 413 reported, the others still sent.
    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("long.wav"), wav(20.0, 220.0)).unwrap();
    std::fs::write(big.path().join("short.wav"), wav(0.5, 220.0)).unwrap();
    let out = upload(&server.url(""), &token_file, &[], &[big.path()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("413") && stderr.contains("long.wav"),
        "{stderr}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with("short.wav") && l.len() > 32),
        "{stdout}"
    );

    // A missing token file names the file and how to create it.
    let out = upload(
        &server.url(""),
        Path::new("/nonexistent/tokens.toml"),
        &[],
        &[music.path()],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/tokens.toml"));
}

/// A "server" that reads the request head and part of the body, then drops
/// the connection: the tool must say the upload was interrupted.
#[test]
fn a_connection_dropped_mid_upload_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 128 * 1024 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        drop(conn);
        got
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.wav");
    std::fs::write(&file, wav(120.0, 330.0)).unwrap(); // ~1.9 MB
    let out = upload(
        &format!("http://{addr}"),
        Path::new("-"),
        &["--token", "t"],
        &[&file],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("long.wav"),
        "{stderr}"
    );
    assert!(acceptor.join().unwrap() > 0);
}

/// The server is killed while a large file is on its way.
#[test]
fn a_server_killed_mid_upload_is_reported() {
    let server = Server::start();
    let token_file = server.data_dir.join("tokens.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.wav");
    // A valid header over a sparse 1.9 GiB body (under the 2 GiB default
    // limit): cheap to make, seconds to send and store.
    {
        let mut head = wav(0.0, 1.0);
        let data_bytes: u32 = 1900 << 20;
        head[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
        head[40..44].copy_from_slice(&data_bytes.to_le_bytes());
        std::fs::write(&file, &head).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(44 + u64::from(data_bytes)).unwrap();
    }
    let mut child = Command::new(spindle_bin())
        .args(["upload", "--server", &server.url(""), "--token-file"])
        .arg(&token_file)
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "upload tool hung");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NOT UPLOADED") && stderr.contains("huge.wav"),
        "{stderr}"
    );
}
