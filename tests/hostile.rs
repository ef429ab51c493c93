//! Hostile clients against the real `spindle serve` binary: a client
//! trickling its request head or body, idle connections, oversized and too
//! many header fields, unknown routes and methods, oversized bodies on small
//! routes. The timeouts are set short for the test; each case asserts both
//! that the server cut the client off and that it did so in time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness: a failed step is a failed test"
)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use spindle_tests::{parse_response, raw_exchange, Server, ServerOptions};

fn short_timeouts() -> Server {
    Server::start_with(
        ServerOptions::default()
            .arg("--header-read-timeout-ms")
            .arg("1000")
            .arg("--body-read-timeout-ms")
            .arg("1000")
            .arg("--idle-timeout-ms")
            .arg("2000"),
    )
}

/// Reads until EOF or a reset; returns what arrived and whether the server
/// closed the connection (as opposed to our read timing out).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

#[test]
fn a_client_trickling_its_request_head_is_disconnected_in_time() {
    let server = short_timeouts();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed_after = None;
    for byte in head.iter() {
        if stream.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // One byte every 100 ms: the head would take 6 s; the limit is 1 s.
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
        assert!(closed, "the trickling client was never disconnected");
        started.elapsed()
    });
    assert!(
        closed_after < Duration::from_secs(5),
        "disconnected only after {closed_after:?} (header timeout 1 s)"
    );
    // The server still serves others.
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn a_client_trickling_its_upload_body_gets_408() {
    let server = short_timeouts();
    let token = server.creator_token();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    write!(
        stream,
        "POST /v1/tracks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\nab"
    )
    .unwrap();
    let started = Instant::now();
    // One byte every 1.5 s: each gap is longer than the 1 s body timeout.
    let mut written = 0;
    while written < 4 && stream.write_all(b"x").is_ok() {
        written += 1;
        std::thread::sleep(Duration::from_millis(1500));
        stream.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        let answered = matches!(stream.peek(&mut probe), Ok(n) if n > 0);
        stream.set_nonblocking(false).unwrap();
        if answered {
            break;
        }
    }
    let (raw, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(closed, "the trickling upload was never cut off");
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.error_code(), "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(6));
    let stats = server.request(
        "GET",
        "/v1/admin/stats",
        &[("Authorization", &format!("Bearer {}", server.admin_token()))],
        b"",
    );
    assert_eq!(stats.json()["meta"]["tracks"], 0);
}

#[test]
fn an_idle_connection_is_closed() {
    let server = short_timeouts();
    // Silent from the start.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(6));
    assert!(closed, "a silent connection stayed open");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Idle after one keep-alive request.
    let mut ka = TcpStream::connect(server.addr).unwrap();
    ka.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = spindle_tests::read_one_response(&mut ka, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let started = Instant::now();
    let (rest, closed) = read_until_closed(&mut ka, Duration::from_secs(6));
    assert!(closed, "an idle keep-alive connection stayed open");
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{rest:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn oversized_heads_and_too_many_fields_get_431() {
    let server = Server::start();
    // Over our 16 KiB limit but within hyper's buffer: the JSON 431.
    let big = "v".repeat(20 * 1024);
    let r = server.request("GET", "/healthz", &[("X-Big", &big)], b"");
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "request_header_fields_too_large");
    // Far over any buffer: hyper's own 431 (or a closed connection).
    let huge = "v".repeat(256 * 1024);
    let wire =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange_lenient(&server, wire.as_bytes());
    if !raw.is_empty() {
        assert!(
            raw.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&raw[..64.min(raw.len())])
        );
    }
    // Too many fields: 150 against a limit of 100.
    let names: Vec<String> = (0..150).map(|i| format!("X-F{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = server.request("GET", "/healthz", &fields, b"");
    assert_eq!(r.status, 431);
    // Far too many for hyper's parser: still 431.
    let names: Vec<String> = (0..400).map(|i| format!("X-G{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = server.request("GET", "/healthz", &fields, b"");
    assert_eq!(r.status, 431);
    // A normal request still works.
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);
}

/// Like [`raw_exchange`] but tolerating a reset (hyper may close on us).
fn raw_exchange_lenient(server: &Server, wire: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(wire);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn unknown_routes_methods_and_bodies_get_json_errors() {
    let server = Server::start();
    let r = server.request("GET", "/no/such/route", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_code(), "no_route");
    let r = server.request("PUT", "/v1/tracks", &[], b"x");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    assert_eq!(r.error_code(), "method_not_allowed");
    let r = server.request("POST", "/healthz", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = server.request("GET", "/v1/tracks/not-an-id", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    let r = server.request(
        "GET",
        "/v1/tracks/0123456789abcdef0123456789abcdef/stream?quality=ultra",
        &[],
        b"",
    );
    assert_eq!(r.status, 400);
    // A small route announcing a big body: 413 without reading it.
    let wire = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        10 << 20
    );
    let raw = raw_exchange(server.addr, wire.as_bytes());
    let r = parse_response(&raw, false).unwrap();
    assert_eq!(r.status, 413);
    // Garbage instead of HTTP: a 400 from hyper or a close, never a crash.
    let raw = raw_exchange_lenient(&server, b"\x16\x03\x01\x02\x00garbage\r\n\r\n");
    assert!(
        raw.is_empty() || raw.starts_with(b"HTTP/1.1 400"),
        "{raw:?}"
    );
    assert_eq!(server.request("GET", "/healthz", &[], b"").status, 200);
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let server = Server::start_with(ServerOptions::default().arg("--max-connections").arg("2"));
    // Two keep-alive connections hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = spindle_tests::read_one_response(&mut s, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        held.push(s);
    }
    // A third is not served while they are open...
    let mut third = TcpStream::connect(server.addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = third.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "served beyond the connection limit: {early:?}"
    );
    // ...and is served as soon as one closes.
    drop(held.pop());
    let (raw, closed) = read_until_closed(&mut third, Duration::from_secs(10));
    assert!(closed);
    let mut all = byte.to_vec();
    all.extend_from_slice(&raw);
    let all = if early.is_ok() { all } else { raw };
    let r = parse_response(&all, false).unwrap();
    assert_eq!(r.status, 200);
}
