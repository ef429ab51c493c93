//! The web player in a real browser: headless Chromium driven over the
//! DevTools protocol (a small client on a WebSocket, no Node, no Playwright).
//!
//! Starts `spindle serve`, uploads a generated 12 s tone with a title, waits
//! for it to be transcoded, loads `/`, types the title into the search box,
//! presses play on the result and asserts that the `<audio>` element's
//! `currentTime` passes 2 s, that the audio came as 206 partial responses,
//! that a seek to the middle keeps playing, that the loudness gain is on the
//! Web Audio graph and that the space bar pauses and resumes. A screenshot
//! goes to `tests/artifacts/player.png`.
//!
//! Skips, saying so, when no `chromium` is installed (`SPINDLE_CHROMIUM`
//! names another binary). If the track does not become ready in time (no
//! transcoder), it still plays the original from the track page and says so.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed step is a failed test"
)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spindle_tests::{pcm16_mono_wav, workspace_dir, Server};

const TITLE: &str = "Zephyr Lantern Overture";

fn find_chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SPINDLE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A 44.1 kHz mono 16-bit WAV: `seconds` of a tone gliding 330 -> 660 Hz.
fn tone_wav(seconds: u32) -> Vec<u8> {
    let rate = 44_100u32;
    let frames = seconds * rate;
    let mut phase = 0f64;
    let samples: Vec<i16> = (0..frames)
        .map(|i| {
            let progress = f64::from(i) / f64::from(frames);
            let freq = 330.0 + 330.0 * progress;
            phase += freq / f64::from(rate) * std::f64::consts::TAU;
            (phase.sin() * 0.25 * f64::from(i16::MAX)) as i16
        })
        .collect();
    pcm16_mono_wav(rate, &samples)
}

/// Headless Chromium with a fresh profile, killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws_url: String,
}

impl Browser {
    fn launch(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--autoplay-policy=no-user-gesture-required",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            _profile: profile,
            ws_url,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol connection attached (flattened) to one page.
struct Cdp {
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// Every event seen, in order.
    events: Vec<Value>,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
        let hostport = ws_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let stream = TcpStream::connect(&hostport).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (ws, _) = tungstenite::client(ws_url, stream).expect("DevTools WebSocket handshake");
        Cdp {
            ws,
            next_id: 1,
            session: None,
            events: Vec::new(),
        }
    }

    /// Collects events until `deadline` or until nothing is pending.
    fn read_one(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(tungstenite::Message::Text(t)) => Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("DevTools connection failed: {e}"),
        }
    }

    /// Sends a command and waits (at most 30 s) for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = s.clone().into();
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no answer to {method}");
            let Some(v) = self.read_one() else {
                continue;
            };
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Drains events for `d`.
    fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if let Some(v) = self.read_one() {
                if v.get("method").is_some() {
                    self.events.push(v);
                }
            }
        }
    }

    /// Evaluates `expr` in the page (with a user gesture) and returns its
    /// value; a thrown exception fails the test.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true, "userGesture": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr} threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (at most `timeout`); returns the value.
    fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {expr}; page: {}",
                self.eval("document.querySelector('main').innerText.slice(0, 500)")
            );
            self.pump(Duration::from_millis(200));
        }
    }

    fn key(&mut self, key: &str, code: &str, text: &str, key_code: u32) {
        for ty in ["keyDown", "keyUp"] {
            let mut p =
                json!({"type": ty, "key": key, "code": code, "windowsVirtualKeyCode": key_code});
            if ty == "keyDown" && !text.is_empty() {
                p["text"] = text.into();
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }
}

/// Standard base64 (the screenshot), no dependency for one decode.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn player_searches_plays_seeks_in_chromium() {
    let Some(chromium) = find_chromium() else {
        println!(
            "skipping: no chromium on PATH (apt-get install chromium, or set SPINDLE_CHROMIUM)"
        );
        return;
    };
    let server = Server::start();
    let token = server.creator_token();
    let auth = format!("Bearer {token}");
    let wav = tone_wav(12);
    let r = server.request(
        "POST",
        &format!(
            "/v1/tracks?title={}&artist=Test+Tones&album=Tone+Studies&genre=Ambient&filename=tone.wav",
            TITLE.replace(' ', "+")
        ),
        &[("Authorization", &auth), ("Content-Type", "audio/wav")],
        &wav,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();

    // Transcoding a 12 s tone takes well under a second when a worker runs.
    let deadline = Instant::now() + Duration::from_secs(40);
    let track = loop {
        let t = server
            .request("GET", &format!("/v1/tracks/{id}"), &[], b"")
            .json();
        if t["status"] != "processing" || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ready = track["status"] == "ready";
    assert_ne!(
        track["status"], "failed",
        "the tone failed to transcode: {track}"
    );
    if !ready {
        println!("note: track still processing (no transcoder?): playing the original from the track page");
    }

    let browser = Browser::launch(&chromium);
    let mut cdp = Cdp::connect(&browser.ws_url);
    let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    cdp.call("Network.enable", json!({}));
    cdp.call("Page.enable", json!({}));
    cdp.call("Runtime.enable", json!({}));
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    );

    let base = server.url("");
    if ready {
        cdp.call("Page.navigate", json!({"url": format!("{base}/")}));
        cdp.wait_for(
            "document.readyState === 'complete' && !!document.querySelector('#search')",
            Duration::from_secs(15),
        );
        // Type the title as a user would; the search runs as they type.
        cdp.eval("document.querySelector('#search').focus()");
        cdp.call("Input.insertText", json!({"text": TITLE}));
        let found = format!(
            "[...document.querySelectorAll('#search-tracks a.title')].some(a => a.textContent === {})",
            serde_json::to_string(TITLE).unwrap()
        );
        let search_deadline = Instant::now() + Duration::from_secs(15);
        while cdp.eval(&found) != Value::Bool(true) {
            assert!(
                Instant::now() < search_deadline,
                "search never found {TITLE:?}: {}",
                cdp.eval("document.querySelector('main').innerText")
            );
            // The index may lag the upload by a moment: type again.
            cdp.eval("document.querySelector('#search').dispatchEvent(new Event('input'))");
            cdp.pump(Duration::from_millis(500));
        }
        cdp.eval("document.querySelector('#search-tracks li button').click()");
    } else {
        cdp.call(
            "Page.navigate",
            json!({"url": format!("{base}/#/track/{id}")}),
        );
        cdp.wait_for(
            "!!document.querySelector('#track-play')",
            Duration::from_secs(15),
        );
        cdp.eval("document.querySelector('#track-play').click()");
    }

    // Playback advances past 2 s.
    cdp.wait_for(
        "document.querySelector('#audio').currentTime > 2",
        Duration::from_secs(20),
    );
    let quality = cdp.eval("document.querySelector('#audio').dataset.quality");
    assert_eq!(
        quality,
        if ready { "normal" } else { "original" },
        "the default tier (or original while tiers are absent)"
    );
    let src = cdp.eval("document.querySelector('#audio').currentSrc");
    assert!(src.as_str().unwrap().contains("/v1/"), "{src}");

    // The audio came as partial responses.
    cdp.pump(Duration::from_millis(300));
    let partial_by_network = cdp.events.iter().any(|e| {
        e["method"] == "Network.responseReceived"
            && e["params"]["response"]["status"] == 206
            && e["params"]["response"]["url"]
                .as_str()
                .is_some_and(|u| u.contains("/v1/blobs/"))
    });
    let partial_by_timing = cdp.eval(
        "performance.getEntriesByType('resource').some(e => e.name.includes('/v1/blobs/') && e.responseStatus === 206)",
    );
    assert!(
        partial_by_network || partial_by_timing == Value::Bool(true),
        "no 206 response for the audio; responses: {:?}",
        cdp.events
            .iter()
            .filter(|e| e["method"] == "Network.responseReceived")
            .map(|e| (
                e["params"]["response"]["url"].clone(),
                e["params"]["response"]["status"].clone()
            ))
            .collect::<Vec<_>>()
    );
    // Nothing was fetched from anywhere but the server.
    for e in cdp
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
    {
        let url = e["params"]["request"]["url"].as_str().unwrap_or("");
        assert!(
            url.starts_with(&base) || url.starts_with("data:") || url.starts_with("blob:"),
            "external request {url}"
        );
    }

    // The loudness gain sits on the Web Audio graph.
    let gain = cdp.eval("player.gainNode ? player.gainNode.gain.value : null");
    let expected_db = track["loudness"]["gain_db"]
        .as_f64()
        .unwrap_or(0.0)
        .clamp(-24.0, 12.0);
    let expected = 10f64.powf(expected_db / 20.0);
    let gain = gain.as_f64().expect("a GainNode on the graph");
    assert!(
        (gain - expected).abs() < 1e-3 * expected.max(1.0),
        "gain {gain}, expected {expected}"
    );

    // Seek to the middle: playback continues from there.
    let duration = cdp
        .eval("document.querySelector('#audio').duration")
        .as_f64()
        .unwrap();
    assert!((11.0..13.5).contains(&duration), "duration {duration}");
    cdp.eval("document.querySelector('#audio').currentTime = document.querySelector('#audio').duration / 2");
    cdp.wait_for(
        "!document.querySelector('#audio').seeking",
        Duration::from_secs(10),
    );
    let after_seek = cdp
        .eval("document.querySelector('#audio').currentTime")
        .as_f64()
        .unwrap();
    assert!(
        (duration / 2.0 - 0.5..duration / 2.0 + 1.5).contains(&after_seek),
        "{after_seek}"
    );
    cdp.wait_for(
        &format!(
            "document.querySelector('#audio').currentTime > {}",
            after_seek + 1.0
        ),
        Duration::from_secs(10),
    );
    assert_eq!(
        cdp.eval("document.querySelector('#audio').paused"),
        Value::Bool(false)
    );

    // The space bar pauses and resumes when focus is not in a text field.
    cdp.eval("document.activeElement && document.activeElement.blur(); document.body.focus()");
    cdp.key(" ", "Space", " ", 32);
    cdp.wait_for(
        "document.querySelector('#audio').paused",
        Duration::from_secs(5),
    );
    cdp.key(" ", "Space", " ", 32);
    cdp.wait_for(
        "!document.querySelector('#audio').paused",
        Duration::from_secs(5),
    );

    // The screenshot, for a person to look at.
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = workspace_dir().join("tests").join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("player.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());

    // The track page shows status, duration and the tiers.
    cdp.call(
        "Page.navigate",
        json!({"url": format!("{base}/#/track/{id}")}),
    );
    cdp.wait_for(
        "!!document.querySelector('#track-status')",
        Duration::from_secs(10),
    );
    let status = cdp.eval("document.querySelector('#track-status').textContent");
    assert_eq!(status, track["status"]);

    // Browse pages render their optional parts and groups as elements, never
    // as stray text ("null" for an absent More button, "[object …]" for a
    // group of elements).
    if ready {
        let artists = server.request("GET", "/v1/artists", &[], b"").json();
        let artist_id = artists["items"][0]["id"].as_str().unwrap().to_owned();
        for (hash, wait) in [
            ("#/".to_owned(), "!!document.querySelector('main a.card')"),
            ("#/artists".to_owned(), "!!document.querySelector('main a.card')"),
            (
                format!("#/artist/{artist_id}"),
                "[...document.querySelectorAll('main a.card')].some(a => a.textContent === 'Tone Studies')",
            ),
        ] {
            cdp.call("Page.navigate", json!({"url": format!("{base}/{hash}")}));
            cdp.wait_for(wait, Duration::from_secs(10));
            let text = cdp.eval("document.querySelector('main').innerText");
            let text = text.as_str().unwrap_or("");
            assert!(
                !text.contains("null") && !text.contains("[object"),
                "{hash} shows stray text: {text:?}"
            );
        }
    }

    // The upload page checks a token with the server when it is saved.
    cdp.call("Page.navigate", json!({"url": format!("{base}/#/upload")}));
    cdp.wait_for(
        "!!document.querySelector('#token')",
        Duration::from_secs(10),
    );
    let save = |cdp: &mut Cdp, t: &str| {
        cdp.eval(&format!(
            "document.querySelector('#token').value = {}; \
             [...document.querySelectorAll('button')].find(b => b.textContent === 'Save token').click()",
            serde_json::to_string(t).unwrap()
        ));
    };
    save(&mut cdp, "not-a-token");
    cdp.wait_for(
        "document.querySelector('main').innerText.includes('does not accept this token')",
        Duration::from_secs(10),
    );
    save(&mut cdp, &token);
    cdp.wait_for(
        "document.querySelector('main').innerText.includes('Token accepted')",
        Duration::from_secs(10),
    );
    drop(cdp);
    drop(browser);
}
