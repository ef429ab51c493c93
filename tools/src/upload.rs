//! `spindle upload`: sends audio files (or whole folders, recursively) to a
//! running `spindle serve`, one `POST /v1/tracks` per file, and reports each
//! track's id and status.
//!
//! - A file is uploaded only if its extension is an audio one AND its first
//!   bytes carry an audio signature (the server's own sniffer), so a
//!   `cover.jpg` or a `.mp3` that is really a text file is skipped and said
//!   so, never sent.
//! - Each file streams from disk as the raw request body with its exact
//!   `Content-Length`; it is never held in memory whole. Progress bars (one
//!   per file and one overall) go to stderr and vanish when it is not a
//!   terminal; stdout carries one line per file, `<track id>\t<status>\t<path>`,
//!   so scripts can read it.
//! - `--wait` polls `GET /v1/tracks/{id}` until every track is `ready` or
//!   `failed` (bounded by `--wait-timeout-s`) and prints failure reasons.
//!
//! **Invariant:** the exit code is non-zero whenever any file was not
//! accepted (connection dropped, non-2xx answer, unreadable file) or, with
//! `--wait`, failed or did not finish in time; a failure is never silent.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Extensions of files worth sniffing (lowercase, without the dot).
const AUDIO_EXTENSIONS: [&str; 13] = [
    "flac", "mp3", "ogg", "oga", "opus", "m4a", "mp4", "aac", "wav", "wave", "aif", "aiff", "aifc",
];
/// How often `--wait` asks for a track's status.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Read-timeout of one response (a server that accepted the connection but
/// stopped answering is reported, not waited on forever).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Flags of `spindle upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Base URL of the server.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The token file `spindle serve` wrote on first start; its `creator`
    /// (or `admin`) token is used [default: ./spindle-data/tokens.toml].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The bearer token itself (overrides --token-file; also `SPINDLE_TOKEN`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SPINDLE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Wait until every uploaded track is transcoded (ready or failed).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    wait_timeout_s: u64,
    /// What the files are: song, podcast or story.
    #[arg(long, value_name = "KIND", value_parser = ["song", "podcast", "story"])]
    kind: Option<String>,
    /// Title for every file (normally read from the file's tags).
    #[arg(long)]
    title: Option<String>,
    /// Artist for every file (normally read from the file's tags).
    #[arg(long)]
    artist: Option<String>,
    /// Album for every file (normally read from the file's tags).
    #[arg(long)]
    album: Option<String>,
    /// Genre for every file (normally read from the file's tags).
    #[arg(long)]
    genre: Option<String>,
    /// Files and folders to upload (folders recursively).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

/// One file found to upload.
#[derive(Debug)]
struct Candidate {
    path: PathBuf,
    size_bytes: u64,
    media_type: String,
}

/// What happened to one file.
#[derive(Debug)]
struct Outcome {
    path: PathBuf,
    /// The track id once the server accepted the upload.
    track_id: Option<String>,
    status: String,
    failure: Option<String>,
}

/// Runs the subcommand; `Err` (non-zero exit) when anything was not uploaded
/// or, with `--wait`, did not become ready.
pub fn run(args: UploadArgs) -> anyhow::Result<()> {
    let base = args.server.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--server must be an http:// or https:// URL, not {base:?}");
    }
    let token = resolve_token(&args)?;
    let (candidates, skipped) = collect(&args.paths)?;
    for (path, reason) in &skipped {
        eprintln!("skipped {}: {reason}", path.display());
    }
    if candidates.is_empty() {
        bail!(
            "no audio files to upload under {} ({} skipped)",
            join_paths(&args.paths),
            skipped.len()
        );
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_recv_body(Some(RESPONSE_TIMEOUT))
        .build()
        .into();

    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let total_bytes: u64 = candidates.iter().map(|c| c.size_bytes).sum();
    let overall = bars.add(ProgressBar::new(total_bytes));
    overall.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    overall.set_prefix(format!("0/{}", candidates.len()));
    let file_style =
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");

    let mut outcomes = Vec::with_capacity(candidates.len());
    for (n, c) in candidates.iter().enumerate() {
        let bar = bars.insert_before(&overall, ProgressBar::new(c.size_bytes));
        bar.set_style(file_style.clone());
        bar.set_prefix(format!("{}/{}", n + 1, candidates.len()));
        bar.set_message(display_name(&c.path));
        let outcome = upload_one(&agent, &base, &token, &args, c, &bar, &overall);
        bar.finish_and_clear();
        overall.set_prefix(format!("{}/{}", n + 1, candidates.len()));
        // Printed through the bars so the line does not tear them.
        let line = match &outcome.track_id {
            Some(id) => format!("{id}\t{}\t{}", outcome.status, outcome.path.display()),
            None => format!(
                "-\tupload failed\t{}\t{}",
                outcome.path.display(),
                outcome.failure.as_deref().unwrap_or("")
            ),
        };
        bars.suspend(|| println!("{line}"));
        outcomes.push(outcome);
    }
    overall.finish_and_clear();

    if args.wait {
        wait_all(
            &agent,
            &base,
            &mut outcomes,
            Duration::from_secs(args.wait_timeout_s),
        );
    }
    summarize(&outcomes, skipped.len(), args.wait)
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The token from `--token`, else the token file's creator (or admin) entry.
fn resolve_token(args: &UploadArgs) -> anyhow::Result<String> {
    if let Some(t) = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(t.to_owned());
    }
    let path = args
        .token_file
        .clone()
        .unwrap_or_else(|| Path::new(spindle_server::config::DEFAULT_DATA_DIR).join("tokens.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the token file {} (start `spindle serve` once to create it, \
             or pass --token-file or --token)",
            path.display()
        )
    })?;
    token_from_file(&text, "creator")
        .or_else(|| token_from_file(&text, "admin"))
        .with_context(|| format!("no creator or admin token in {}", path.display()))
}

/// The value of `name = "..."` in the token file (a flat TOML file).
fn token_from_file(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        if k.trim() != name {
            return None;
        }
        let v = v.trim().trim_matches('"').trim();
        (!v.is_empty()).then(|| v.to_owned())
    })
}

/// A file not uploaded and why.
type Skipped = (PathBuf, String);

/// Files to upload (in path order) and files skipped with the reason.
fn collect(paths: &[PathBuf]) -> anyhow::Result<(Vec<Candidate>, Vec<Skipped>)> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for entry in walkdir::WalkDir::new(p).sort_by_file_name() {
                let entry = entry.with_context(|| format!("walking {}", p.display()))?;
                if entry.file_type().is_file() {
                    files.push(entry.into_path());
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for path in files {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !AUDIO_EXTENSIONS.contains(&ext.as_str()) {
            skipped.push((path, "not an audio file extension".to_owned()));
            continue;
        }
        match sniff_file(&path) {
            Ok(Some((media_type, size_bytes))) => candidates.push(Candidate {
                path,
                size_bytes,
                media_type,
            }),
            Ok(None) => skipped.push((path, "content is not audio (no known signature)".into())),
            Err(e) => skipped.push((path, format!("cannot read: {e}"))),
        }
    }
    Ok((candidates, skipped))
}

/// The sniffed audio media type and size of `path`, `None` if not audio.
fn sniff_file(path: &Path) -> std::io::Result<Option<(String, u64)>> {
    let mut file = File::open(path)?;
    let size_bytes = file.metadata()?.len();
    let mut head = [0u8; spindle_server::sniff::SNIFF_LEN];
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let media_type = spindle_server::sniff::sniff(&head[..filled], None);
    Ok(media_type
        .starts_with("audio/")
        .then_some((media_type, size_bytes)))
}

/// A reader that advances the progress bars as the body is sent.
struct Progress<'a, R> {
    inner: R,
    bar: &'a ProgressBar,
    overall: &'a ProgressBar,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        self.overall.inc(n as u64);
        Ok(n)
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn upload_one(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    args: &UploadArgs,
    c: &Candidate,
    bar: &ProgressBar,
    overall: &ProgressBar,
) -> Outcome {
    let failed = |why: String| Outcome {
        path: c.path.clone(),
        track_id: None,
        status: "upload failed".into(),
        failure: Some(why),
    };
    let mut query = format!("filename={}", encode(&display_name(&c.path)));
    let fields = [
        ("kind", &args.kind),
        ("title", &args.title),
        ("artist", &args.artist),
        ("album", &args.album),
        ("genre", &args.genre),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            query.push_str(&format!("&{name}={}", encode(v)));
        }
    }
    let file = match File::open(&c.path) {
        Ok(f) => f,
        Err(e) => return failed(format!("cannot open: {e}")),
    };
    let mut body = Progress {
        inner: file.take(c.size_bytes),
        bar,
        overall,
    };
    let sent_before = overall.position();
    let result = agent
        .post(format!("{base}/v1/tracks?{query}"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", &c.media_type)
        .header("Content-Length", c.size_bytes.to_string())
        .send(ureq::SendBody::from_reader(&mut body));
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            // Keep the overall bar honest: this file's bytes did not land.
            overall.set_position(sent_before + c.size_bytes);
            return failed(format!(
                "interrupted after {} of {} bytes: {e}",
                bar.position(),
                c.size_bytes
            ));
        }
    };
    let status = response.status().as_u16();
    let text = read_body(response);
    if !(200..300).contains(&status) {
        overall.set_position(sent_before + c.size_bytes);
        return failed(format!(
            "server answered {status}: {}",
            error_message(&text)
        ));
    }
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return failed(format!(
                "server answered {status} with a body that is not JSON: {e}"
            ))
        }
    };
    match json["id"].as_str() {
        Some(id) => Outcome {
            path: c.path.clone(),
            track_id: Some(id.to_owned()),
            status: json["status"].as_str().unwrap_or("accepted").to_owned(),
            failure: json["failure_reason"].as_str().map(str::to_owned),
        },
        None => failed(format!("server answered {status} without a track id")),
    }
}

fn read_body(mut response: ureq::http::Response<ureq::Body>) -> String {
    response
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .unwrap_or_default()
}

/// `error.message` of a JSON error body, else the body itself (shortened).
fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// Polls every accepted, still-processing track until it is ready or failed.
fn wait_all(agent: &ureq::Agent, base: &str, outcomes: &mut [Outcome], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let pending = |o: &Outcome| o.track_id.is_some() && o.status == "processing";
    let count = outcomes.iter().filter(|o| pending(o)).count();
    if count == 0 {
        return;
    }
    let spinner = ProgressBar::with_draw_target(Some(count as u64), ProgressDrawTarget::stderr());
    spinner.set_style(
        ProgressStyle::with_template("transcoding {pos}/{len} done {spinner} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    loop {
        for o in outcomes.iter_mut().filter(|o| pending(o)) {
            let Some(id) = o.track_id.clone() else {
                continue;
            };
            match agent.get(format!("{base}/v1/tracks/{id}")).call() {
                Ok(r) if r.status().is_success() => {
                    let text = read_body(r);
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                        let status = v["status"].as_str().unwrap_or("processing");
                        if status != "processing" {
                            o.status = status.to_owned();
                            o.failure = v["failure_reason"].as_str().map(str::to_owned);
                            spinner.inc(1);
                            let line = match &o.failure {
                                Some(why) => format!("{id}\t{status}\t{}\t{why}", o.path.display()),
                                None => format!("{id}\t{status}\t{}", o.path.display()),
                            };
                            spinner.suspend(|| println!("{line}"));
                        }
                    }
                }
                Ok(r) if r.status().as_u16() == 404 => {
                    o.status = "missing".into();
                    o.failure = Some("the track no longer exists (deleted?)".into());
                    spinner.inc(1);
                }
                // A transient error: ask again next round.
                Ok(_) | Err(_) => {}
            }
        }
        if !outcomes.iter().any(pending) {
            break;
        }
        if Instant::now() >= deadline {
            for o in outcomes.iter_mut().filter(|o| pending(o)) {
                o.failure = Some(format!(
                    "still processing after {} s (--wait-timeout-s)",
                    timeout.as_secs()
                ));
            }
            break;
        }
        spinner.tick();
        std::thread::sleep(POLL_INTERVAL);
    }
    spinner.finish_and_clear();
}

/// Prints the totals and decides the exit code.
fn summarize(outcomes: &[Outcome], skipped: usize, waited: bool) -> anyhow::Result<()> {
    let accepted = outcomes.iter().filter(|o| o.track_id.is_some()).count();
    let not_uploaded = outcomes.len() - accepted;
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.track_id.is_some() && o.status != "ready" && o.status != "processing")
        .collect();
    let unfinished = outcomes
        .iter()
        .filter(|o| waited && o.status == "processing")
        .count();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "uploaded {accepted} of {} files ({skipped} skipped as not audio){}",
        outcomes.len(),
        if waited {
            format!(
                "; {} ready, {} failed, {unfinished} still processing",
                outcomes.iter().filter(|o| o.status == "ready").count(),
                failed.len()
            )
        } else {
            String::new()
        }
    );
    for o in outcomes.iter().filter(|o| o.track_id.is_none()) {
        let _ = writeln!(
            err,
            "NOT UPLOADED {}: {}",
            o.path.display(),
            o.failure.as_deref().unwrap_or("unknown error")
        );
    }
    for o in &failed {
        let _ = writeln!(
            err,
            "FAILED {} ({}): {}",
            o.path.display(),
            o.track_id.as_deref().unwrap_or("-"),
            o.failure.as_deref().unwrap_or("no reason given")
        );
    }
    if not_uploaded > 0 || !failed.is_empty() || unfinished > 0 {
        bail!(
            "{not_uploaded} not uploaded, {} failed, {unfinished} unfinished",
            failed.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_and_query_encoding() {
        let text = "# comment\nadmin = \"aa\"\ncreator = \"cc\"\n";
        assert_eq!(token_from_file(text, "creator").as_deref(), Some("cc"));
        assert_eq!(token_from_file(text, "admin").as_deref(), Some("aa"));
        assert_eq!(token_from_file(text, "other"), None);
        assert_eq!(encode("a b/é&=~"), "a%20b%2F%C3%A9%26%3D~");
    }

    #[test]
    fn folders_are_walked_and_non_audio_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("a.flac"), b"fLaC\0\0\0\x22rest").unwrap();
        std::fs::write(sub.join("b.wav"), b"RIFF\x10\0\0\0WAVEfmt ").unwrap();
        std::fs::write(sub.join("fake.mp3"), b"just some text").unwrap();
        std::fs::write(dir.path().join("cover.jpg"), b"\xFF\xD8\xFF\xE0").unwrap();
        let (found, skipped) = collect(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = found.iter().map(|c| display_name(&c.path)).collect();
        assert_eq!(names, ["a.flac", "b.wav"]);
        assert_eq!(found[0].media_type, "audio/flac");
        assert_eq!(skipped.len(), 2);
    }
}
