//! Remote transcoding through the real binary: a server with its in-process
//! pool disabled (`--transcode-pool-max 0`), a `spindle worker` process
//! leasing the job over HTTP, killed (SIGKILL) mid-job, and a second worker
//! that completes it with exactly one set of tiers.

#![expect(clippy::expect_used, reason = "test helpers panic on a setup failure")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spindle_tests::{spindle_bin, Server, ServerOptions};

fn wav(seconds: u32, rate: u32) -> Vec<u8> {
    let frames = seconds * rate;
    let data_len = frames * 4;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 4).to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    let mut seed = 7u32;
    for i in 0..frames {
        let t = f64::from(i) / f64::from(rate);
        for c in 0..2 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from(seed >> 16) / 65536.0 - 0.5;
            let v = (2.0 * std::f64::consts::PI * (330.0 + 110.0 * f64::from(c)) * t).sin() * 0.3
                + noise * 0.1;
            out.extend_from_slice(&((v * 32767.0) as i16).to_le_bytes());
        }
    }
    out
}

fn start_worker(server: &Server) -> Child {
    Command::new(spindle_bin())
        .args([
            "worker",
            "--server",
            &server.url(""),
            "--lease-ms",
            "2000",
            "--poll-ms",
            "100",
        ])
        .env("SPINDLE_TOKEN", server.admin_token())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning spindle worker")
}

fn stats(server: &Server) -> serde_json::Value {
    let auth = format!("Bearer {}", server.admin_token());
    server
        .request("GET", "/v1/admin/stats", &[("Authorization", &auth)], b"")
        .json()
}

fn track(server: &Server, id: &str) -> serde_json::Value {
    server
        .request("GET", &format!("/v1/tracks/{id}"), &[], b"")
        .json()
}

#[test]
fn a_killed_remote_worker_loses_nothing() {
    let server = Server::start_with(
        ServerOptions::default()
            .arg("--transcode-pool-max")
            .arg("0"),
    );
    let auth = format!("Bearer {}", server.creator_token());
    let r = server.request(
        "POST",
        "/v1/tracks?filename=Long+Take.wav&artist=Remote+Band",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        &wav(90, 44_100),
    );
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // No in-process pool: nothing happens on its own.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(track(&server, &id)["status"], "processing");
    assert_eq!(stats(&server)["queue"]["in_flight"], 0);

    let mut first = start_worker(&server);
    let until = Instant::now() + Duration::from_secs(30);
    while stats(&server)["queue"]["in_flight"] != 1 {
        assert!(Instant::now() < until, "the worker never leased the job");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    first.kill().unwrap(); // SIGKILL, mid-job
    first.wait().unwrap();
    assert_eq!(
        track(&server, &id)["status"],
        "processing",
        "killed before completing"
    );

    let mut second = start_worker(&server);
    let until = Instant::now() + Duration::from_secs(180);
    let t = loop {
        let t = track(&server, &id);
        if t["status"] != "processing" {
            break t;
        }
        assert!(
            Instant::now() < until,
            "the job was not redelivered and completed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(t["status"], "ready", "{}", t["failure_reason"]);
    assert_eq!(t["title"], "Long Take");
    assert_eq!(t["artist"], "Remote Band");
    assert_eq!(t["channels"], 2);
    let ms = t["duration_ms"].as_u64().unwrap();
    assert!(ms.abs_diff(90_000) <= 50, "duration {ms}");
    for q in ["low", "normal", "high"] {
        let blob = t["tiers"][q]["blob_id"].as_str().unwrap();
        let r = server.request("GET", &format!("/v1/blobs/{blob}"), &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body.len() as u64,
            t["tiers"][q]["size_bytes"].as_u64().unwrap()
        );
        assert_eq!(&r.body[..4], b"OggS");
        assert_eq!(r.header("content-type"), Some("audio/ogg"));
    }
    let s = stats(&server);
    assert_eq!(s["blob"]["blobs"], 4, "raw + exactly one set of tiers: {s}");
    assert_eq!(s["queue"]["depth"], 0);
    assert_eq!(s["queue"]["in_flight"], 0);
    assert_eq!(s["queue"]["dead"], 0);
}
