//! Search ranks equally good matches by popularity once plays exist: two
//! tracks with the same title, plays posted for the one that ranked second,
//! and after the charts flush it ranks first. Against the real binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::time::{Duration, Instant};

use serde_json::json;
use spindle_tests::{tone_wav, Server, ServerOptions};

fn wait_ready(server: &Server, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = server
            .request("GET", &format!("/v1/tracks/{id}"), &[], b"")
            .json();
        if t["status"] != "processing" {
            assert_eq!(t["status"], "ready", "{t}");
            return t;
        }
        assert!(Instant::now() < deadline, "track {id} still processing");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Track ids in the order `GET /v1/search?q=twin+song` ranks them.
fn ranked(server: &Server) -> Vec<String> {
    let r = server.request("GET", "/v1/search?q=twin+song", &[], b"");
    assert_eq!(r.status, 200);
    r.track_ids()
}

#[test]
fn plays_break_ties_between_equal_matches() {
    let server =
        Server::start_with(ServerOptions::default().env("SPINDLE_CHARTS_REFRESH_MS", "200"));
    let auth = format!("Bearer {}", server.creator_token());
    let mut ids = Vec::new();
    for (artist, freq) in [("First Artist", 440.0), ("Second Artist", 550.0)] {
        let r = server.request(
            "POST",
            &format!(
                "/v1/tracks?title=Twin+Song&artist={}",
                artist.replace(' ', "+")
            ),
            &[("Authorization", &auth), ("Content-Type", "audio/wav")],
            &tone_wav(3.0, freq),
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let durations: Vec<u64> = ids
        .iter()
        .map(|id| wait_ready(&server, id)["duration_ms"].as_u64().unwrap())
        .collect();
    // Both found, in some order (a tie on the match).
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let r = ranked(&server);
        if r.len() == 2 {
            break r;
        }
        assert!(Instant::now() < deadline, "search never found both: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Plays for the one ranked second.
    let underdog = before[1].clone();
    let n = ids.iter().position(|id| *id == underdog).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let events: Vec<_> = (0..5)
        .map(|listener| {
            json!({
                "listener_id": format!("fan-{listener}"),
                "track_id": underdog,
                "ms_played": durations[n],
                "started_at": now - 60_000 + listener,
            })
        })
        .collect();
    let r = server.request(
        "POST",
        "/v1/plays",
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&events).unwrap(),
    );
    assert_eq!(
        r.json()["accepted"],
        5,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Once the charts flush (200 ms here) and the cached search page
    // expires (the L1 cache's 5 s TTL at most), the played track leads.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = ranked(&server);
        if r.first() == Some(&underdog) {
            assert_eq!(r.len(), 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "plays did not lift {underdog} above the other: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
