//! Uploads against the real `spindle serve` binary on loopback: raw and
//! multipart bodies through the claim-check to a playable original, the
//! memory bound of a large streamed upload, an upload cut off midway, the
//! size limit and the bearer tokens.
//!
//! The large upload is `SPINDLE_TEST_UPLOAD_BYTES` bytes (default 2 GiB, as
//! the issue asks; CI uses the default). Its body is generated on the fly,
//! every 1 MiB different (a counter in each), so the server really stores
//! 2 GiB rather than deduplicating one chunk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness: a failed step is a failed test"
)]

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use spindle_tests::{read_one_response, HttpResponse, Server, ServerOptions};

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// Follows `stream?quality=original` to the blob and returns its response.
fn fetch_original(server: &Server, track_id: &str) -> HttpResponse {
    let r = server.request(
        "GET",
        &format!("/v1/tracks/{track_id}/stream?quality=original"),
        &[],
        b"",
    );
    assert_eq!(r.status, 307, "stream redirect: {:?}", r);
    let location = r.header("location").unwrap().to_owned();
    assert!(location.starts_with("/v1/blobs/"), "{location}");
    server.request("GET", &location, &[], b"")
}

/// A server with the in-process transcoder pool disabled: these tests check
/// the claim-check state an upload leaves (`processing` with a waiting job),
/// which a running pool would move on from within milliseconds.
fn origin_only() -> ServerOptions {
    ServerOptions::default()
        .arg("--transcode-pool-max")
        .arg("0")
}

fn check_accepted(server: &Server, r: &HttpResponse) -> serde_json::Value {
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    let track = r.json();
    let id = track["id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location").unwrap(), format!("/v1/tracks/{id}"));
    assert_eq!(track["status"], "processing");
    let got = server.request("GET", &format!("/v1/tracks/{id}"), &[], b"");
    assert_eq!(got.status, 200);
    let stored = got.json();
    assert_eq!(stored["status"], "processing");
    assert_eq!(stored["raw"], track["raw"]);
    track
}

fn admin_stats(server: &Server) -> serde_json::Value {
    let r = server.request(
        "GET",
        "/v1/admin/stats",
        &[("Authorization", &auth(&server.admin_token()))],
        b"",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn metric(server: &Server, name: &str) -> f64 {
    let r = server.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn raw_and_multipart_uploads_reach_a_playable_original_and_delete() {
    let server = Server::start_with(origin_only());
    let token = auth(&server.creator_token());

    // Raw body, fields as query parameters; the Ogg signature wins over the
    // declared type.
    let mut audio = b"OggS\0\x02".to_vec();
    audio.extend((0..300_000u32).map(|i| (i * 7 % 251) as u8));
    let r = server.request(
        "POST",
        "/v1/tracks?title=Night+Drive&artist=Caf%C3%A9&album=A&genre=synthwave&kind=song&filename=nd.ogg",
        &[
            ("Authorization", &token),
            ("Content-Type", "application/octet-stream"),
        ],
        &audio,
    );
    let track = check_accepted(&server, &r);
    assert_eq!(track["title"], "Night Drive");
    assert_eq!(track["artist"], "Café");
    assert_eq!(track["genre"], "synthwave");
    assert_eq!(track["kind"], "song");
    assert_eq!(track["raw"]["size_bytes"], audio.len() as u64);
    assert_eq!(track["raw"]["media_type"], "audio/ogg");
    let blob = fetch_original(&server, track["id"].as_str().unwrap());
    assert_eq!(blob.status, 200);
    assert_eq!(blob.header("content-type"), Some("audio/ogg"));
    assert!(blob.body == audio, "served bytes differ from the upload");
    // A tier that is not transcoded yet is a clear 409.
    let r = server.request(
        "GET",
        &format!(
            "/v1/tracks/{}/stream?quality=high",
            track["id"].as_str().unwrap()
        ),
        &[],
        b"",
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.error_code(), "tier_not_ready");

    // Multipart, as a browser form sends it: fields around a file part.
    let mut flac = b"fLaC\0\0\0\x22".to_vec();
    flac.extend((0..200_000u32).map(|i| (i * 13 % 256) as u8));
    let boundary = "----spindletestboundary7MA4YWxk";
    let mut body = Vec::new();
    for (name, value) in [("title", "Form Song"), ("kind", "story")] {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .unwrap();
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tale.flac\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(&flac);
    write!(
        body,
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"artist\"\r\n\r\nNarrator\r\n--{boundary}--\r\n"
    )
    .unwrap();
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &token), ("Content-Type", &ct)],
        &body,
    );
    let track2 = check_accepted(&server, &r);
    assert_eq!(track2["title"], "Form Song");
    assert_eq!(track2["artist"], "Narrator");
    assert_eq!(track2["kind"], "story");
    assert_eq!(track2["filename"], "tale.flac");
    assert_eq!(track2["raw"]["media_type"], "audio/flac");
    assert_eq!(track2["raw"]["size_bytes"], flac.len() as u64);
    let blob = fetch_original(&server, track2["id"].as_str().unwrap());
    assert_eq!(blob.header("content-type"), Some("audio/flac"));
    assert!(
        blob.body == flac,
        "served multipart file differs from the upload"
    );

    // Both tracks have a waiting transcode job (claim-check).
    let stats = admin_stats(&server);
    assert_eq!(stats["meta"]["tracks"], 2);
    assert_eq!(stats["queue"]["depth"], 2);
    assert_eq!(metric(&server, "spindle_uploads_accepted_total"), 2.0);
    assert_eq!(metric(&server, "spindle_queue_depth"), 2.0);

    // Delete: the track goes, and with its only reference the blob.
    let id = track["id"].as_str().unwrap();
    let blob_path = format!("/v1/blobs/{}", track["raw"]["blob_id"].as_str().unwrap());
    let r = server.request(
        "DELETE",
        &format!("/v1/tracks/{id}"),
        &[("Authorization", &token)],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = server.request("GET", &format!("/v1/tracks/{id}"), &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
    assert_eq!(server.request("GET", &blob_path, &[], b"").status, 404);
    let r = server.request(
        "DELETE",
        &format!("/v1/tracks/{id}"),
        &[("Authorization", &token)],
        b"",
    );
    assert_eq!(r.status, 404);
}

#[test]
fn missing_or_wrong_tokens_are_refused() {
    let server = Server::start_with(origin_only());
    let r = server.request("POST", "/v1/tracks", &[], b"abc");
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", "Bearer not-a-token")],
        b"abc",
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "invalid_token");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", "Basic YTpi")],
        b"abc",
    );
    assert_eq!(r.status, 401);

    // A real track to try deleting.
    let creator = auth(&server.creator_token());
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &creator)],
        b"some audio",
    );
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/tracks/{id}");
    assert_eq!(server.request("DELETE", &path, &[], b"").status, 401);
    assert_eq!(
        server
            .request("DELETE", &path, &[("Authorization", "Bearer nope")], b"")
            .status,
        401
    );
    assert_eq!(
        server.request("GET", &path, &[], b"").status,
        200,
        "still there"
    );

    // Admin routes take the admin token only.
    assert_eq!(
        server.request("GET", "/v1/admin/stats", &[], b"").status,
        401
    );
    let r = server.request(
        "GET",
        "/v1/admin/stats",
        &[("Authorization", &creator)],
        b"",
    );
    assert_eq!(r.status, 403);
    // The admin token may delete too.
    let admin = auth(&server.admin_token());
    assert_eq!(
        server
            .request("DELETE", &path, &[("Authorization", &admin)], b"")
            .status,
        204
    );
}

#[test]
fn too_large_uploads_get_413_and_store_nothing() {
    let limit = 1 << 20;
    let server = Server::start_with(
        origin_only()
            .arg("--upload-limit-bytes")
            .arg(limit.to_string()),
    );
    let token = auth(&server.creator_token());
    // Declared too large: refused before any byte is stored.
    let big = vec![7u8; 2 << 20];
    let r = server.request("POST", "/v1/tracks", &[("Authorization", &token)], &big);
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");

    // Chunked, so only counting can catch it.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /v1/tracks HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let piece = vec![9u8; 64 * 1024];
    let mut sent = 0;
    while sent < 2 << 20 {
        let ok = write!(stream, "{:x}\r\n", piece.len()).is_ok()
            && stream.write_all(&piece).is_ok()
            && stream.write_all(b"\r\n").is_ok();
        if !ok {
            break; // the server may stop reading once it has answered
        }
        sent += piece.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let r = read_one_response(&mut stream, false)
        .unwrap()
        .expect("a response");
    assert_eq!(r.status, 413);

    // Multipart whose file part is over the limit (the whole body is within
    // the allowance for framing, so the file bytes must be counted).
    let boundary = "bnd42";
    let mut body = Vec::new();
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n"
    )
    .unwrap();
    body.extend(std::iter::repeat_n(4u8, limit + limit / 2));
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &token), ("Content-Type", &ct)],
        &body,
    );
    assert_eq!(r.status, 413);

    // Exactly at the limit is fine.
    let at_limit = vec![5u8; limit];
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &token)],
        &at_limit,
    );
    assert_eq!(r.status, 202);
    let stats = admin_stats(&server);
    assert_eq!(
        stats["meta"]["tracks"], 1,
        "only the upload within the limit is a track"
    );
    assert_eq!(stats["blob"]["blobs"], 1);
}

#[test]
fn an_upload_cut_off_midway_leaves_no_track_and_only_reclaimable_garbage() {
    // Small segments, so the garbage lands in sealed, compactable segments.
    let server = Server::start_with(
        origin_only()
            .arg("--blob-segment-size-bytes-max")
            .arg((4u64 << 20).to_string()),
    );
    let token = auth(&server.creator_token());
    let before = admin_stats(&server);
    {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        write!(
            stream,
            "POST /v1/tracks?title=cut HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Length: {}\r\n\r\n",
            64u64 << 20
        )
        .unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..12u64 {
            block[..8].copy_from_slice(&i.to_le_bytes());
            stream.write_all(&block).unwrap();
        }
        stream.flush().unwrap();
        // Dropped here: the client vanishes 12 MiB into a 64 MiB upload.
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server, "spindle_uploads_failed_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the cut-off upload was never noticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = admin_stats(&server);
    assert_eq!(after["meta"]["tracks"], 0, "no track from a cut-off upload");
    assert_eq!(after["queue"]["depth"], 0, "no job either");
    assert_eq!(after["blob"]["blobs"], before["blob"]["blobs"]);
    assert_eq!(after["blob"]["chunks_live"], 0, "no chunk is referenced");
    let dead = after["blob"]["dead_bytes"].as_u64().unwrap();
    assert!(
        dead >= 8 << 20,
        "the written chunks are counted as garbage: {after}"
    );

    let r = server.request(
        "POST",
        "/v1/admin/compact",
        &[("Authorization", &auth(&server.admin_token()))],
        b"",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let report = r.json();
    assert!(
        report["bytes_reclaimed"].as_u64().unwrap() >= 4 << 20,
        "compaction reclaims the garbage: {report}"
    );
    let compacted = admin_stats(&server);
    assert!(compacted["blob"]["dead_bytes"].as_u64().unwrap() < dead);
}

/// Body bytes of the large upload.
fn large_upload_bytes() -> u64 {
    std::env::var("SPINDLE_TEST_UPLOAD_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30)
}

#[test]
fn a_large_streamed_upload_stays_within_the_memory_bound() {
    let total = large_upload_bytes();
    let server = Server::start_with(origin_only());
    let token = auth(&server.creator_token());
    // Warm up the paths an upload takes, so one-off allocations are not
    // counted as growth.
    let r = server.request(
        "POST",
        "/v1/tracks",
        &[("Authorization", &token)],
        &vec![1u8; 3 << 20],
    );
    assert_eq!(r.status, 202);
    let (rss_before_kib, _) = server.memory_kib();

    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "POST /v1/tracks?title=big HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 % 253) as u8;
    }
    let mut hasher_input_len = 0u64;
    let mut sent = 0u64;
    let mut i = 0u64;
    while sent < total {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let n = (total - sent).min(block.len() as u64) as usize;
        stream.write_all(&block[..n]).unwrap();
        sent += n as u64;
        hasher_input_len += n as u64;
        i += 1;
    }
    let r = read_one_response(&mut stream, false)
        .unwrap()
        .expect("a response");
    let elapsed = started.elapsed();
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["raw"]["size_bytes"], hasher_input_len);
    let (_, hwm_after_kib) = server.memory_kib();
    let growth_mib = hwm_after_kib.saturating_sub(rss_before_kib) as f64 / 1024.0;
    println!(
        "uploaded {} MiB in {:.1} s; server RSS before {} KiB, peak after {} KiB, growth {:.1} MiB",
        total >> 20,
        elapsed.as_secs_f64(),
        rss_before_kib,
        hwm_after_kib,
        growth_mib
    );
    assert!(
        growth_mib <= 64.0,
        "a {total}-byte upload grew the server's memory by {growth_mib:.1} MiB (limit 64)"
    );
}
