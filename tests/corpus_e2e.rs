//! The shared corpus through the real binary: every file in `good/` becomes
//! a ready track with the manifest's tags, duration (within 0.1 s) and
//! channel count and three tiers; every file in `bad/` is refused or fails
//! with a reason; `/healthz` answers throughout. Skips (with a message) when
//! `../shared/corpus` is absent.

use std::time::{Duration, Instant};

use spindle_tests::{corpus_dir, Server};

/// Bound on the whole corpus being transcoded (dev profile, 2 cores).
const DEADLINE: Duration = Duration::from_secs(420);

fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn corpus_good_becomes_ready_and_bad_fails() {
    let Some(corpus) = corpus_dir() else {
        println!("skipping: no shared corpus (../shared/corpus) next to the workspace");
        return;
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus.join("manifest.json")).unwrap()).unwrap();
    let server = Server::start();
    let auth = format!("Bearer {}", server.creator_token());
    let upload = |file: &str| {
        let bytes = std::fs::read(corpus.join(file)).unwrap();
        let name = file.rsplit('/').next().unwrap();
        server.request(
            "POST",
            &format!("/v1/tracks?filename={}", query_escape(name)),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/octet-stream"),
            ],
            &bytes,
        )
    };
    let mut good = Vec::new();
    for entry in manifest["good"].as_array().unwrap() {
        let r = upload(entry["file"].as_str().unwrap());
        assert_eq!(
            r.status,
            202,
            "{}: {}",
            entry["file"],
            String::from_utf8_lossy(&r.body)
        );
        good.push((entry.clone(), r.json()["id"].as_str().unwrap().to_owned()));
    }
    let mut bad = Vec::new();
    for entry in manifest["bad"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let r = upload(file);
        if (400..500).contains(&r.status) {
            // Refused at the door with a reason (e.g. an empty body).
            assert!(!r.error_code().is_empty(), "{file}: {:?}", r);
            continue;
        }
        assert_eq!(
            r.status,
            202,
            "{file}: {}",
            String::from_utf8_lossy(&r.body)
        );
        bad.push((file.to_owned(), r.json()["id"].as_str().unwrap().to_owned()));
    }
    let started = Instant::now();
    let mut done: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let all: Vec<(String, String)> = good
        .iter()
        .map(|(e, id)| (e["file"].as_str().unwrap().to_owned(), id.clone()))
        .chain(bad.iter().cloned())
        .collect();
    while done.len() < all.len() {
        assert!(
            started.elapsed() < DEADLINE,
            "not finished in {DEADLINE:?}: {} of {} done",
            done.len(),
            all.len()
        );
        let h = server.request("GET", "/healthz", &[], b"");
        assert_eq!(h.status, 200, "healthz during transcoding");
        for (file, id) in &all {
            if done.contains_key(file) {
                continue;
            }
            let t = server
                .request("GET", &format!("/v1/tracks/{id}"), &[], b"")
                .json();
            if t["status"] != "processing" {
                done.insert(file.clone(), t);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "corpus transcoded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (entry, _) in &good {
        let file = entry["file"].as_str().unwrap();
        let t = &done[file];
        assert_eq!(t["status"], "ready", "{file}: {}", t["failure_reason"]);
        for field in ["title", "artist", "album", "genre"] {
            if field == "title" && entry[field].is_null() {
                // Untagged: the title falls back to the file name.
                let stem = file.rsplit('/').next().unwrap().rsplit_once('.').unwrap().0;
                assert_eq!(t[field], stem, "{file}: title from the file name");
                continue;
            }
            assert_eq!(t[field], entry[field], "{file}: {field}");
        }
        assert_eq!(t["channels"], entry["channels"], "{file}: channels");
        let ms = t["duration_ms"].as_f64().unwrap();
        let want = entry["duration_s"].as_f64().unwrap() * 1000.0;
        assert!(
            (ms - want).abs() <= 100.0,
            "{file}: duration {ms} ms, manifest {want} ms"
        );
        for q in ["low", "normal", "high"] {
            let tier = &t["tiers"][q];
            assert_eq!(tier["media_type"], "audio/ogg", "{file} {q}");
            let r = server.request(
                "GET",
                &format!("/v1/blobs/{}", tier["blob_id"].as_str().unwrap()),
                &[("Range", "bytes=0-3")],
                b"",
            );
            assert_eq!(r.status, 206, "{file} {q}");
            assert_eq!(&r.body[..], b"OggS", "{file} {q}");
        }
        assert_eq!(
            t["cover"].is_object(),
            entry["has_cover"].as_bool().unwrap(),
            "{file}: cover"
        );
    }
    for (file, _) in &bad {
        let t = &done[file];
        assert_eq!(t["status"], "failed", "{file}");
        let reason = t["failure_reason"].as_str().unwrap();
        assert!(reason.len() > 10, "{file}: reason {reason:?}");
        println!("{file}: {reason}");
    }
    let h = server.request("GET", "/healthz", &[], b"");
    assert_eq!(h.status, 200);
}
