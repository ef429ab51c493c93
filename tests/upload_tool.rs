//! `spindle upload` against the real binary and a real server: a folder of
//! generated WAV files, a non-audio file (skipped for its extension) and a
//! fake `.wav` holding text (uploaded, as selection is by extension only, and
//! reported failed with the server's reason) is uploaded with `--wait`;
//! every printed id names a stored track with the printed final status. A
//! bad token, an upload over the server's limit and a connection dropped
//! mid-body are each reported with a non-zero exit code.

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

use spindle_tests::{spindle_bin, tone_wav as wav, Server, ServerOptions};

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

    let out = upload(
        &server.url(""),
        &token_file,
        &["--wait", "--wait-timeout-s", "120"],
        &[music.path()],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // The fake .wav is sent (selection is by extension) and fails on the
    // server, so the run as a whole fails.
    assert!(
        !out.status.success(),
        "fake.wav failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.splitn(4, '\t').collect())
        .collect();
    assert_eq!(
        lines.len(),
        6,
        "an upload line and a final line per audio file:\n{stdout}"
    );
    let names = ["a tone.wav", "b tone.WAV", "fake.wav"];
    for (cols, name) in lines[..3].iter().zip(names) {
        assert_eq!(cols[0].len(), 32, "a track id: {cols:?}");
        assert_eq!(cols[1], "processing", "{cols:?}");
        assert!(cols[2].ends_with(name), "{cols:?}");
    }
    let mut ids = Vec::new();
    for name in names {
        // The last line of a path is its final status.
        let cols = lines
            .iter()
            .rev()
            .find(|c| c[2].ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"));
        let r = server.request("GET", &format!("/v1/tracks/{}", cols[0]), &[], b"");
        assert_eq!(r.status, 200, "{}", text(&r.body));
        let t = r.json();
        assert_eq!(t["filename"], name);
        assert_eq!(t["status"].as_str().unwrap(), cols[1], "{name}");
        if name == "fake.wav" {
            // Sent as octet-stream: the tool claims nothing about the bytes,
            // and the server found no audio signature either.
            assert_eq!(t["raw"]["media_type"], "application/octet-stream");
            assert_eq!(cols[1], "failed", "{cols:?}");
            let reason = t["failure_reason"].as_str().unwrap();
            assert!(!reason.is_empty());
            assert_eq!(cols.get(3).copied(), Some(reason), "the server's reason");
        } else {
            assert_eq!(t["raw"]["media_type"], "audio/wav");
            assert_eq!(cols[1], "ready", "{cols:?}");
            assert_eq!(cols.len(), 3, "no reason on a ready track: {cols:?}");
        }
        ids.push(cols[0].to_owned());
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert!(
        stderr.contains("skipped") && stderr.contains("notes.txt"),
        "{stderr}"
    );
    assert!(
        stderr.contains("uploaded 3 of 3 audio files (1 other files skipped); 2 ready, 1 failed"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("FAILED") && l.contains("fake.wav")),
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

    // A wrong token: nothing uploaded, the reason shown, non-zero exit;
    // also for a file far larger than the socket buffers, which the server
    // refuses before reading it.
    let large = tempfile::tempdir().unwrap();
    std::fs::write(large.path().join("long.wav"), wav(600.0, 220.0)).unwrap();
    for dir in [music.path(), large.path()] {
        let out = upload(&server.url(""), &token_file, &["--token", "wrong"], &[dir]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("NOT UPLOADED")
                && stderr.contains("401")
                && stderr.contains("not valid")
                && !stderr.contains("interrupted"),
            "{stderr}"
        );
    }

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

#[test]
fn uploading_the_same_files_again_adds_nothing_twice() {
    let server = Server::start();
    let token_file = server.data_dir.join("tokens.toml");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.wav"), wav(0.5, 440.0)).unwrap();
    std::fs::write(dir.path().join("b.wav"), wav(0.5, 660.0)).unwrap();
    let url = server.url("");
    let ids = |out: &Output| -> Vec<String> {
        let mut v: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_owned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let first = upload(&url, &token_file, &["--wait"], &[dir.path()]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 2, "{}", text(&first.stdout));
    // Again, as after an interruption: the same tracks, nothing sent.
    let again = upload(&url, &token_file, &["--wait"], &[dir.path()]);
    let stderr = text(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(ids(&again), first_ids, "{}", text(&again.stdout));
    assert!(
        stderr.contains(
            "uploaded 0 of 2 audio files (2 already on the server, 0 other files skipped); 2 ready"
        ),
        "{stderr}"
    );
    assert!(text(&again.stdout).lines().all(|l| l.contains("\tready\t")));
    // The server says the same when asked by content.
    let auth = format!("Bearer {}", server.creator_token());
    let raw = server
        .request("GET", &format!("/v1/tracks/{}", first_ids[0]), &[], b"")
        .json()["raw"]["blob_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let found = server.request(
        "GET",
        &format!("/v1/tracks?raw={raw}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(found.status, 200);
    assert_eq!(found.json()["items"].as_array().unwrap().len(), 1);
    assert_eq!(found.json()["items"][0]["id"], first_ids[0].as_str());
    // Asking needs a token and a well-formed content id.
    assert_eq!(
        server
            .request("GET", &format!("/v1/tracks?raw={raw}"), &[], b"")
            .status,
        401
    );
    assert_eq!(
        server
            .request(
                "GET",
                "/v1/tracks?raw=xyz",
                &[("Authorization", &auth)],
                b""
            )
            .status,
        400
    );
    // --duplicates sends anyway: new tracks.
    let forced = upload(&url, &token_file, &["--duplicates"], &[dir.path()]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let forced_ids = ids(&forced);
    assert_eq!(forced_ids.len(), 2);
    assert!(forced_ids.iter().all(|id| !first_ids.contains(id)));
    let found = server.request(
        "GET",
        &format!("/v1/tracks?raw={raw}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(found.json()["items"].as_array().unwrap().len(), 2);
    // A deleted track no longer counts.
    for id in &forced_ids {
        assert_eq!(
            server
                .request(
                    "DELETE",
                    &format!("/v1/tracks/{id}"),
                    &[("Authorization", &auth)],
                    b""
                )
                .status,
            204
        );
    }
    let found = server.request(
        "GET",
        &format!("/v1/tracks?raw={raw}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(found.json()["items"].as_array().unwrap().len(), 1);
}
