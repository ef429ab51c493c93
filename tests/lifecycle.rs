//! The life of a `spindle serve` process: configuration precedence (flags
//! over env over file), tokens that survive restarts, graceful shutdown with
//! a request in flight, `/metrics`, and TLS with ALPN (through `curl`, which
//! the test skips, saying so, when absent).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness: a failed step is a failed test"
)]

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use spindle_tests::{read_one_response, spindle_bin, Server, ServerOptions};

fn upload_status(server: &Server, len: usize) -> u16 {
    let token = format!("Bearer {}", server.creator_token());
    server
        .request(
            "POST",
            "/v1/tracks",
            &[("Authorization", &token)],
            &vec![3u8; len],
        )
        .status
}

#[test]
fn flags_beat_env_beat_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spindle.toml");
    std::fs::write(&file, "upload_limit_bytes = 1000\nmax_header_count = 50\n").unwrap();
    let file_arg = file.display().to_string();

    // File alone.
    let server = Server::start_with(ServerOptions::default().arg("--config").arg(&file_arg));
    assert_eq!(upload_status(&server, 1000), 202);
    assert_eq!(upload_status(&server, 1001), 413);
    drop(server);

    // Env over file; the file named by SPINDLE_CONFIG.
    let server = Server::start_with(
        ServerOptions::default()
            .env("SPINDLE_CONFIG", &file_arg)
            .env("SPINDLE_UPLOAD_LIMIT_BYTES", "2000"),
    );
    assert_eq!(upload_status(&server, 1500), 202);
    assert_eq!(upload_status(&server, 2001), 413);
    // The file's other setting still applies: 60 fields > 50.
    let names: Vec<String> = (0..60).map(|i| format!("X-F{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    assert_eq!(server.request("GET", "/healthz", &fields, b"").status, 431);
    drop(server);

    // Flag over env over file.
    let server = Server::start_with(
        ServerOptions::default()
            .arg("--config")
            .arg(&file_arg)
            .arg("--upload-limit-bytes")
            .arg("500")
            .env("SPINDLE_UPLOAD_LIMIT_BYTES", "2000"),
    );
    assert_eq!(upload_status(&server, 500), 202);
    assert_eq!(upload_status(&server, 501), 413);
}

#[test]
fn a_bad_config_fails_to_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(spindle_tests::spindle_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("SPINDLE_MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SPINDLE_MAX_CONNECTIONS"), "{stderr}");
}

#[test]
fn tokens_are_owner_only_and_survive_a_restart_with_the_data() {
    let mut server = Server::start();
    let tokens = server.data_dir.join("tokens.toml");
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "tokens.toml must be readable by the owner alone"
    );
    let creator = server.creator_token();
    let admin = server.admin_token();
    assert_ne!(creator, admin);
    assert_eq!(creator.len(), 64);
    // Only hashes are stored: the plain token appears in no store file.
    for sub in ["meta", "blobs"] {
        for entry in std::fs::read_dir(server.data_dir.join(sub)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes
                    .windows(creator.len())
                    .any(|w| w == creator.as_bytes()),
                "a plain token is stored in {sub}/"
            );
        }
    }
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &format!("Bearer {creator}"))],
        b"abc",
    );
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    server.restart();
    assert_eq!(
        server.creator_token(),
        creator,
        "the token file is not rewritten"
    );
    assert_eq!(
        server
            .request("GET", &format!("/v1/tracks/{id}"), &[], b"")
            .status,
        200
    );
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &format!("Bearer {creator}"))],
        b"def",
    );
    assert_eq!(r.status, 202, "the old token still works after a restart");
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_zero() {
    let mut server = Server::start_with(
        ServerOptions::default()
            .arg("--shutdown-grace-ms")
            .arg("10000"),
    );
    let token = server.creator_token();
    let addr = server.addr;
    let total = 4 << 20;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /v1/tracks?title=inflight HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let half = vec![1u8; total / 2];
    stream.write_all(&half).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    // The listener closes: new connections are refused.
    let mut refused = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(50));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "still accepting after SIGTERM");
    // The upload in flight completes and is acknowledged.
    stream.write_all(&half).unwrap();
    let r = read_one_response(&mut stream, false)
        .unwrap()
        .expect("a response");
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    drop(stream);
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status}");
    assert!(
        !server.data_dir.join("serve.addr").exists(),
        "serve.addr is removed on exit"
    );
    // What was acknowledged is there after a restart.
    server.start_again();
    let r = server.request("GET", &format!("/v1/tracks/{id}"), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["raw"]["size_bytes"], total as u64);
}

#[test]
fn metrics_are_prometheus_text_with_the_promised_series() {
    let server = Server::start();
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);
    assert_eq!(server.request("GET", "/nope", &[], b"").status, 404);
    assert_eq!(
        server.request("GET", "/v1/search?q=x", &[], b"").status,
        200
    );
    assert_eq!(server.request("GET", "/v1/genres", &[], b"").status, 200);
    assert_eq!(server.request("GET", "/", &[], b"").status, 200);
    let r = server.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "spindle_http_requests_total{route=\"/healthz\",status=\"200\"} 1",
        "spindle_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "spindle_http_requests_total{route=\"GET /v1/search\",status=\"200\"} 1",
        "spindle_http_requests_total{route=\"GET /v1/{genres,artists,albums}/*\",status=\"200\"} 1",
        "spindle_http_requests_total{route=\"web player\",status=\"200\"} 1",
        "spindle_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"} 1",
        "spindle_http_response_body_bytes_total ",
        "spindle_uploads_accepted_total 0",
        "spindle_queue_depth 0",
        "spindle_queue_in_flight 0",
        "spindle_queue_dead 0",
        "spindle_queue_oldest_waiting_age_seconds 0",
        "spindle_meta_head_lsn ",
        "# TYPE spindle_meta_feed_lag_lsns gauge",
        "spindle_meta_feed_lag_lsns{consumer=\"cache-invalidator\"} ",
        "spindle_meta_feed_lag_lsns{consumer=\"charts\"} ",
        "spindle_meta_feed_lag_lsns{consumer=\"search-indexer\"} ",
        "spindle_meta_feed_consumer_open{consumer=\"search-indexer\"} 1",
        "spindle_blob_blobs 0",
        "spindle_connections_open ",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    let r = server.request("GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn tls_offers_h2_and_http11_via_alpn() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("skipping: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = Server::start_with(
        ServerOptions::default()
            .arg("--tls-cert")
            .arg(cert_path.display().to_string())
            .arg("--tls-key")
            .arg(key_path.display().to_string()),
    );
    let url = format!("https://localhost:{}/healthz", server.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", server.addr.port());
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&cert_path)
            .args([
                "--resolve",
                &resolve,
                flag,
                "-w",
                "\n%{http_version} %{http_code}",
                &url,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.ends_with(&format!("{want} 200")),
            "curl {flag}: {stdout}"
        );
    }
}

#[test]
fn a_data_directory_serves_one_process_at_a_time() {
    let server = Server::start();
    let dir = server.data_dir.to_str().unwrap().to_owned();
    // A second server on the same directory stops at once and says why.
    let second = Command::new(spindle_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", &dir])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second server ran: {stderr}");
    assert!(
        stderr.contains("in use by another spindle process")
            && stderr.contains(&format!("pid {}", server.pid())),
        "{stderr}"
    );
    // Once, on one line, not once per level of its cause chain.
    assert_eq!(
        stderr.matches("in use by another spindle process").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
    // A server on a taken address stops before it makes a data directory.
    let fresh = tempfile::tempdir().unwrap();
    let fresh_dir = fresh.path().join("data");
    let taken = server.addr.to_string();
    let busy = Command::new(spindle_bin())
        .args(["serve", "--listen", &taken, "--data-dir"])
        .arg(&fresh_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success(),
        "served on a taken address: {stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );
    assert!(!fresh_dir.exists(), "made {} anyway", fresh_dir.display());
    // So does a reindex, which would race the running indexer.
    let reindex = Command::new(spindle_bin())
        .args(["reindex", "--data-dir", &dir])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&reindex.stderr);
    assert!(!reindex.status.success(), "reindex ran: {stderr}");
    assert!(
        stderr.contains("in use by another spindle process"),
        "{stderr}"
    );
    // The first server never noticed.
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);
}
