//! Issue 8's end-to-end test: the shared corpus through the real binaries,
//! uploaded with the upload tool. Skips (with a message) when
//! `../shared/corpus` is absent.
//!
//! 1. `spindle serve` on a free port with a temporary data directory;
//!    `spindle upload --wait` over the whole corpus folder (README and
//!    manifest are skipped for their extension); `/healthz` answers
//!    throughout; the ids and final statuses are read from its stdout.
//! 2. Every `good/` file is ready with the manifest's title, artist, album
//!    and genre (an untagged file's title is its file name), channels,
//!    duration within 0.1 s, cover presence and three Ogg tiers; every
//!    `bad/` file is refused at upload with the server's reason or failed
//!    with a non-empty reason, and the tool's exit status is non-zero.
//! 3. `GET /v1/search` finds each good title typed with one typo (one letter
//!    of its longest word of 4+ letters replaced); titles with no such word
//!    (a CJK title, "Sad") are searched as they are. Polled: the index is
//!    eventually consistent.
//! 4. Each tier of each good track, fetched over HTTP, decodes without error
//!    with `ffmpeg -v error -i - -f null -` (skipped, saying so, without
//!    ffmpeg).
//! 5. Plays posted with `POST /v1/plays` (track n gets n + 1 full listens)
//!    appear in `GET /v1/charts/top?window=all` with those stream counts
//!    (polled: the aggregator publishes every couple of seconds).
//! 6. After a SIGTERM restart on the same data directory, the tracks, tier
//!    blobs (same ETags), search results and chart entries are all still
//!    there, and re-posting the same plays counts nothing twice.
//!
//! Every wait is bounded and fails with what it was waiting for.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use spindle_tests::{corpus_dir, spindle_bin, Server};

/// Bound on uploading and transcoding the whole corpus (dev profile, 2
/// cores); the tool's own `--wait-timeout-s` is a little shorter.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(420);
const TOOL_WAIT_TIMEOUT_S: &str = "400";
/// Bound on a search or chart becoming visible.
const VISIBLE_DEADLINE: Duration = Duration::from_secs(20);
const QUALITIES: [&str; 3] = ["low", "normal", "high"];

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

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF)
}

/// `title` with one edit: the middle character of its longest word of at
/// least 4 letters (the first such word on a tie) replaced by `q` (or `z`
/// where it was a `q`). `None` when there is no such word or the title is
/// CJK (the server allows no typos there, nor in words under 4 letters).
fn one_typo(title: &str) -> Option<String> {
    if title.chars().any(is_cjk) {
        return None;
    }
    let mut chars: Vec<char> = title.chars().collect();
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_alphanumeric() {
            i += 1;
        }
        let len = i - start;
        if len >= 4 && best.is_none_or(|(_, l)| len > l) {
            best = Some((start, len));
        }
    }
    let (start, len) = best?;
    let at = start + len / 2;
    chars[at] = if chars[at].eq_ignore_ascii_case(&'q') {
        'z'
    } else {
        'q'
    };
    Some(chars.into_iter().collect())
}

#[test]
fn typos_are_one_edit_of_a_long_word() {
    assert_eq!(one_typo("Heroes' Rite").as_deref(), Some("Herqes' Rite"));
    assert_eq!(
        one_typo("Episode 1: Storage Engines").as_deref(),
        Some("Epiqode 1: Storage Engines")
    );
    assert_eq!(one_typo("Thème d'amour").as_deref(), Some("Thqme d'amour"));
    assert_eq!(one_typo("Aqua").as_deref(), Some("Aqqa"));
    assert_eq!(one_typo("Iraqis").as_deref(), Some("Irazis"));
    assert_eq!(one_typo("Sad"), None);
    assert_eq!(one_typo("主题曲"), None);
}

/// The decode check itself: bytes that are not a stream are an error.
#[test]
fn the_decode_check_refuses_garbage() {
    if !ffmpeg_available() {
        println!("skipping: ffmpeg is not installed");
        return;
    }
    let mut garbage = b"OggS".to_vec();
    garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    assert!(ffmpeg_decode(garbage).is_err());
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Decodes `bytes` with ffmpeg; `Err` with ffmpeg's messages on any error.
fn ffmpeg_decode(bytes: Vec<u8>) -> Result<(), String> {
    let mut child = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i", "pipe:0", "-f", "null", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ffmpeg");
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread so a full stderr pipe cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let mut errors = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    let status = child.wait().unwrap();
    writer.join().unwrap();
    if status.success() && errors.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("ffmpeg {status}: {errors}"))
    }
}

/// What the upload tool printed last for one file: (id or "-", status,
/// reason).
type ToolLine = (String, String, Option<String>);

/// Runs `spindle upload --wait` over `folder` against `server`, checking
/// `/healthz` while it runs. Returns (success, final line per path, stderr).
fn upload_with_tool(server: &Server, folder: &Path) -> (bool, BTreeMap<PathBuf, ToolLine>, String) {
    let mut child = Command::new(spindle_bin())
        .args(["upload", "--server", &server.url(""), "--token-file"])
        .arg(server.data_dir.join("tokens.toml"))
        .args(["--wait", "--wait-timeout-s", TOOL_WAIT_TIMEOUT_S])
        .arg(folder)
        .env_remove("SPINDLE_TOKEN")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning spindle upload");
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > UPLOAD_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "spindle upload --wait did not finish within {UPLOAD_DEADLINE:?}; \
                 it printed:\n{}",
                stdout.join().unwrap()
            );
        }
        let h = server.request("GET", "/healthz", &[], b"");
        assert_eq!(h.status, 200, "healthz during upload and transcoding");
        std::thread::sleep(Duration::from_millis(500));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    println!(
        "corpus uploaded and transcoded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut last = BTreeMap::new();
    for line in stdout.lines() {
        let cols: Vec<&str> = line.splitn(4, '\t').collect();
        assert!(cols.len() >= 3, "id, status, path[, reason]: {line:?}");
        last.insert(
            PathBuf::from(cols[2]),
            (
                cols[0].to_owned(),
                cols[1].to_owned(),
                cols.get(3).map(|s| (*s).to_owned()),
            ),
        );
    }
    (status.success(), last, stderr)
}

/// Polls `f` until it returns `Some` or [`VISIBLE_DEADLINE`] passes.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < VISIBLE_DEADLINE,
            "{what}: not seen within {VISIBLE_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A good track as checked before the restart, to compare after it.
struct Good {
    file: String,
    id: String,
    track: Value,
    query: String,
    /// ETag of each tier blob, in [`QUALITIES`] order.
    etags: Vec<String>,
    plays: u64,
}

fn get_track(server: &Server, id: &str) -> Value {
    let r = server.request("GET", &format!("/v1/tracks/{id}"), &[], b"");
    assert_eq!(
        r.status,
        200,
        "track {id}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// The track ids `GET /v1/search?q=` answers.
fn search_ids(server: &Server, q: &str) -> Vec<String> {
    let r = server.request(
        "GET",
        &format!("/v1/search?q={}&limit=20", query_escape(q)),
        &[],
        b"",
    );
    assert_eq!(
        r.status,
        200,
        "search {q:?}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.track_ids()
}

/// Streams per track id in `GET /v1/charts/top?window=all`.
fn chart_streams(server: &Server) -> BTreeMap<String, (u64, Value)> {
    let r = server.request("GET", "/v1/charts/top?window=all&limit=50", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["track_id"].as_str().unwrap().to_owned(),
                (e["streams"].as_u64().unwrap(), e.clone()),
            )
        })
        .collect()
}

fn charts_show(server: &Server, goods: &[Good]) -> Option<BTreeMap<String, (u64, Value)>> {
    let chart = chart_streams(server);
    goods
        .iter()
        .all(|g| chart.get(&g.id).map(|(s, _)| *s) == Some(g.plays))
        .then_some(chart)
}

#[test]
fn corpus_through_the_upload_tool_survives_a_restart() {
    let Some(corpus) = corpus_dir() else {
        return;
    };
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(corpus.join("manifest.json")).unwrap()).unwrap();
    let good_entries = manifest["good"].as_array().unwrap();
    let bad_entries = manifest["bad"].as_array().unwrap();
    let mut server = Server::start();
    let started = Instant::now();
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut phase = |name: &'static str| {
        let total: f64 = phases.iter().map(|(_, s)| s).sum();
        phases.push((name, started.elapsed().as_secs_f64() - total));
        println!("phases so far (s): {phases:?}");
    };

    // 1. The upload tool over the whole folder.
    let (success, lines, stderr) = upload_with_tool(&server, &corpus);
    assert!(!success, "bad files failed, so must the tool:\n{stderr}");
    let audio_count = good_entries.len() + bad_entries.len();
    let others: Vec<PathBuf> = walk_files(&corpus)
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(&corpus).unwrap().to_str().unwrap();
            !good_entries
                .iter()
                .chain(bad_entries)
                .any(|e| e["file"] == rel)
        })
        .collect();
    for p in &others {
        assert!(
            stderr.contains(&format!("skipped {}", p.display())),
            "{} is not audio and must be skipped:\n{stderr}",
            p.display()
        );
    }
    assert_eq!(
        lines.len(),
        audio_count,
        "one final line per audio file: {lines:?}\n{stderr}"
    );
    let line_of = |file: &str| {
        lines
            .get(&corpus.join(file))
            .unwrap_or_else(|| panic!("the tool printed nothing for {file}:\n{stderr}"))
            .clone()
    };

    // 2. Good files ready with the manifest's tags; bad files failed.
    let mut goods = Vec::new();
    for (n, entry) in good_entries.iter().enumerate() {
        let file = entry["file"].as_str().unwrap();
        let (id, status, reason) = line_of(file);
        assert_eq!(status, "ready", "{file}: {reason:?}");
        let t = get_track(&server, &id);
        assert_eq!(t["status"], "ready", "{file}: {}", t["failure_reason"]);
        for field in ["title", "artist", "album", "genre"] {
            if field == "title" && entry[field].is_null() {
                // Untagged: the title falls back to the file name.
                let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
                assert_eq!(t[field], stem, "{file}: title from the file name");
                continue;
            }
            assert_eq!(t[field], entry[field], "{file}: {field}");
        }
        // No --kind was given: a file tagged "Podcast" is a podcast, the
        // rest songs.
        let kind = if entry["genre"] == "Podcast" {
            "podcast"
        } else {
            "song"
        };
        assert_eq!(t["kind"], kind, "{file}: kind from the genre tag");
        assert_eq!(t["channels"], entry["channels"], "{file}: channels");
        let ms = t["duration_ms"].as_f64().unwrap();
        let want = entry["duration_s"].as_f64().unwrap() * 1000.0;
        assert!(
            (ms - want).abs() <= 100.0,
            "{file}: duration {ms} ms, manifest {want} ms"
        );
        assert_eq!(
            t["cover"].is_object(),
            entry["has_cover"].as_bool().unwrap(),
            "{file}: cover"
        );
        for q in QUALITIES {
            assert_eq!(t["tiers"][q]["media_type"], "audio/ogg", "{file} {q}");
        }
        let title = t["title"].as_str().unwrap().to_owned();
        let query = one_typo(&title).unwrap_or_else(|| {
            println!("{file}: no word of 4+ letters (or CJK) in {title:?}: searched as it is");
            title.clone()
        });
        goods.push(Good {
            file: file.to_owned(),
            id,
            track: t,
            query,
            etags: Vec::new(),
            plays: n as u64 + 1,
        });
    }
    let mut bads = Vec::new();
    for entry in bad_entries {
        let file = entry["file"].as_str().unwrap();
        let (id, status, reason) = line_of(file);
        let reason = reason.unwrap_or_else(|| panic!("{file}: {status} without a reason"));
        match status.as_str() {
            "refused" => {
                // Refused at the door: the tool shows the server's answer.
                assert_eq!(id, "-", "{file}");
                assert!(
                    reason.starts_with("server answered 4"),
                    "{file}: {reason:?}"
                );
            }
            "failed" => {
                let t = get_track(&server, &id);
                assert_eq!(t["status"], "failed", "{file}");
                assert_eq!(t["failure_reason"], reason.as_str(), "{file}");
                assert!(!t["tiers"]["low"].is_object(), "{file}: no tiers");
                bads.push((file.to_owned(), id.clone(), reason.clone()));
            }
            other => panic!("{file}: {other} ({reason}); want refused or failed"),
        }
        assert!(
            reason.len() > 10 && !reason.contains("no reason"),
            "{file}: reason {reason:?}"
        );
        assert!(
            stderr.contains(file.rsplit('/').next().unwrap()),
            "{file} named in the summary:\n{stderr}"
        );
        println!("{file}: {status}: {reason}");
    }

    phase("upload, transcode and check");

    // 3. Search with one typo.
    for g in &goods {
        poll(&format!("{}: search {:?}", g.file, g.query), || {
            search_ids(&server, &g.query).contains(&g.id).then_some(())
        });
    }

    phase("search");

    // 4. Every tier decodes; its ETag is kept for after the restart.
    let decode = ffmpeg_available();
    if !decode {
        println!("skipping the tier decode check: ffmpeg is not installed");
    }
    for g in &mut goods {
        for q in QUALITIES {
            let blob_id = g.track["tiers"][q]["blob_id"].as_str().unwrap();
            let r = server.request("GET", &format!("/v1/blobs/{blob_id}"), &[], b"");
            assert_eq!(r.status, 200, "{} {q}", g.file);
            assert_eq!(&r.body[..4], b"OggS", "{} {q}", g.file);
            g.etags
                .push(r.header("etag").expect("tier blob ETag").to_owned());
            if decode {
                if let Err(e) = ffmpeg_decode(r.body) {
                    panic!("{} tier {q} does not decode: {e}", g.file);
                }
            }
        }
    }

    phase("fetch and decode tiers");

    // 5. Plays reach the charts.
    let now = now_ms();
    let mut events = Vec::new();
    for g in &goods {
        let duration_ms = g.track["duration_ms"].as_u64().unwrap();
        for listener in 0..g.plays {
            events.push(json!({
                "listener_id": format!("listener-{listener}"),
                "track_id": g.id,
                // A full listen: a stream by the 30 s or the whole-track rule.
                "ms_played": duration_ms,
                "started_at": now - 600_000 + listener,
            }));
        }
    }
    let body = serde_json::to_vec(&events).unwrap();
    let post_plays = |server: &Server| {
        let r = server.request(
            "POST",
            "/v1/plays",
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let posted = post_plays(&server);
    assert_eq!(
        (posted["accepted"].as_u64(), posted["refused"].as_u64()),
        (Some(events.len() as u64), Some(0)),
        "{posted}"
    );
    let chart = poll("the posted plays in the charts", || {
        charts_show(&server, &goods)
    });
    for g in &goods {
        let entry = &chart[&g.id].1;
        assert_eq!(entry["title"], g.track["title"], "{}", g.file);
        assert_eq!(entry["artist"], g.track["artist"], "{}", g.file);
    }
    // Track n has n + 1 plays: the last one leads.
    assert_eq!(chart[&goods.last().unwrap().id].1["rank"], 1);

    phase("plays and charts");

    // 6. Restart on the same data: everything is still there.
    server.restart();
    for g in &goods {
        let t = get_track(&server, &g.id);
        assert_eq!(t, g.track, "{}: the track after the restart", g.file);
        for (q, etag) in QUALITIES.iter().zip(&g.etags) {
            let blob_id = t["tiers"][q]["blob_id"].as_str().unwrap();
            let r = server.request(
                "GET",
                &format!("/v1/blobs/{blob_id}"),
                &[("Range", "bytes=0-3")],
                b"",
            );
            assert_eq!(r.status, 206, "{} {q} after the restart", g.file);
            assert_eq!(&r.body[..], b"OggS", "{} {q}", g.file);
            assert_eq!(r.header("etag"), Some(etag.as_str()), "{} {q}", g.file);
        }
    }
    for (file, id, reason) in &bads {
        let t = get_track(&server, id);
        assert_eq!(t["status"], "failed", "{file} after the restart");
        assert_eq!(t["failure_reason"], reason.as_str(), "{file}");
    }
    for g in &goods {
        poll(
            &format!("{}: search {:?} after the restart", g.file, g.query),
            || search_ids(&server, &g.query).contains(&g.id).then_some(()),
        );
    }
    poll("the chart entries after the restart", || {
        charts_show(&server, &goods)
    });
    let again = post_plays(&server);
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(events.len() as u64)),
        "the same plays again are duplicates after the restart: {again}"
    );
    // Give the aggregator a refresh or two: the counts must not move.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        charts_show(&server, &goods).is_some(),
        "duplicates changed the charts"
    );
    let h = server.request("GET", "/healthz", &[], b"");
    assert_eq!(h.status, 200);
    phase("restart and recheck");
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}
