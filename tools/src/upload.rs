//! `spindle upload`: sends audio files (or whole folders, recursively) to a
//! running `spindle serve`, one `POST /v1/tracks` per file, and reports each
//! track's id and status.
//!
//! - Files are chosen by extension alone: every file with an audio extension
//!   ([`AUDIO_EXTENSIONS`]) is sent, everything else (`cover.jpg`,
//!   `notes.txt`) is skipped and counted. What the bytes really are is the
//!   server's call: a `.mp3` that holds text is uploaded and comes back
//!   refused or failed with the server's reason, never silently dropped.
//! - Each file streams from disk as the raw request body with its exact
//!   `Content-Length` and `Content-Type: application/octet-stream` (the
//!   server sniffs the type); it is never held in memory whole. Progress bars
//!   (one per file and one overall) go to stderr and vanish when it is not a
//!   terminal.
//! - stdout carries tab-separated lines for scripts: after each upload
//!   `<track id>\t<status>\t<path>` (status as the server answered, normally
//!   `processing`), or `-\t<refused|interrupted|unreadable|unconfirmed>\t<path>\t<reason>`
//!   when no track was created; with `--wait`, a second line per track once
//!   it is final: `<track id>\t<ready|failed|missing|processing>\t<path>[\t<reason>]`
//!   (`processing` there means it did not finish within `--wait-timeout-s`).
//!   The last line of a path is its final word.
//!
//! - A file whose exact bytes are a ready or processing track already (asked
//!   with `GET /v1/tracks?raw=<BLAKE3 of the file>`) is not sent again: its
//!   line names that track and its status (a failed one is retried), so running the same upload twice (after
//!   an interruption, say) adds nothing twice. `--duplicates` sends anyway,
//!   and so does a run that sets fields (`--title` and the like): that is a
//!   different submission.
//!
//! **Invariant:** the exit code is non-zero whenever any audio file was not
//! accepted (connection dropped, non-2xx answer, unreadable file) or, with
//! `--wait`, failed or did not finish in time; a failure is never silent.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Extensions of the files that are uploaded (lowercase, without the dot).
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
    /// Upload a file even when the server already has a track with exactly
    /// its bytes (by default that track is reported instead, so running the
    /// same upload again adds nothing twice; setting a field also uploads).
    #[arg(long)]
    duplicates: bool,
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

/// The type every body is sent as: the server sniffs the real one.
const BODY_MEDIA_TYPE: &str = "application/octet-stream";

/// One file found to upload.
#[derive(Debug)]
struct Candidate {
    path: PathBuf,
    /// The size when the folder was walked (for the overall bar); the body's
    /// length is taken again from the opened file.
    size_bytes: u64,
}

/// What happened to one file.
#[derive(Debug)]
struct Outcome {
    path: PathBuf,
    /// The track id once the server accepted the upload.
    track_id: Option<String>,
    /// The track's status, or (without a track) why none was created:
    /// `refused`, `interrupted`, `unreadable` or `unconfirmed`.
    status: String,
    failure: Option<String>,
    /// The server had this file's bytes as a track already: nothing sent.
    existing: bool,
}

impl Outcome {
    /// The stdout line for this file (see the module doc).
    fn line(&self) -> String {
        let id = self.track_id.as_deref().unwrap_or("-");
        match &self.failure {
            Some(why) => format!("{id}\t{}\t{}\t{why}", self.status, self.path.display()),
            None => format!("{id}\t{}\t{}", self.status, self.path.display()),
        }
    }
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
    for path in &skipped {
        eprintln!("skipped {}: not an audio file extension", path.display());
    }
    if candidates.is_empty() {
        bail!(
            "no audio files to upload under {} ({} other files skipped)",
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
        // With fields given on the command line the submission differs from
        // what the server holds, so it is a new track.
        let overrides = [
            &args.kind,
            &args.title,
            &args.artist,
            &args.album,
            &args.genre,
        ]
        .iter()
        .any(|f| f.is_some());
        let existing = if args.duplicates || overrides {
            None
        } else {
            find_existing(&agent, &base, &token, &c.path)
        };
        let outcome = match existing {
            Some(o) => {
                overall.inc(c.size_bytes);
                let (path, id) = (o.path.display(), o.track_id.as_deref().unwrap_or("-"));
                bars.suspend(|| {
                    eprintln!("already on the server: {path} is track {id} (--duplicates uploads it again)")
                });
                o
            }
            None => upload_one(&agent, &base, &token, &args, c, &bar, &overall),
        };
        bar.finish_and_clear();
        overall.set_prefix(format!("{}/{}", n + 1, candidates.len()));
        // Printed through the bars so the line does not tear them.
        let line = outcome.line();
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

/// Whether `path` has one of [`AUDIO_EXTENSIONS`] (any case).
fn has_audio_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|ext| AUDIO_EXTENSIONS.contains(&ext.as_str()))
}

/// Files to upload (in path order) and the files skipped for their
/// extension. Contents are not looked at (see the module doc).
fn collect(paths: &[PathBuf]) -> anyhow::Result<(Vec<Candidate>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for entry in walkdir::WalkDir::new(p).sort_by_file_name() {
                let entry = entry.with_context(|| format!("walking {}", p.display()))?;
                if entry.file_type().is_file() {
                    // An unreadable size only affects the overall bar; the
                    // upload itself reports the file if it cannot be read.
                    let size_bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    files.push((entry.into_path(), size_bytes));
                }
            }
        } else {
            files.push((p.clone(), meta.len()));
        }
    }
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for (path, size_bytes) in files {
        if has_audio_extension(&path) {
            candidates.push(Candidate { path, size_bytes });
        } else {
            skipped.push(path);
        }
    }
    Ok((candidates, skipped))
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

/// The track the server already holds with exactly the bytes of `path`, if
/// any (`GET /v1/tracks?raw=<BLAKE3 of the file>`). Any trouble asking (an
/// older server, a network error, an unreadable file) means "none": the
/// upload then goes ahead and reports the trouble itself.
fn find_existing(agent: &ureq::Agent, base: &str, token: &str, path: &Path) -> Option<Outcome> {
    let mut file = File::open(path).ok()?;
    // A blob's content id is the BLAKE3 hash of its bytes.
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let raw = hasher.finalize().to_hex();
    let response = agent
        .get(format!("{base}/v1/tracks?raw={raw}"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&read_body(response)).ok()?;
    // A ready track first, then one still processing. Failed ones do not
    // count: sending the file again retries it (the failure may have been
    // the server's, since fixed).
    let items = v["items"].as_array()?;
    let pick = |want: &str| items.iter().find(|t| t["status"] == want);
    let found = pick("ready").or_else(|| pick("processing"))?;
    Some(Outcome {
        path: path.to_path_buf(),
        track_id: Some(found["id"].as_str()?.to_owned()),
        status: found["status"].as_str()?.to_owned(),
        failure: None,
        existing: true,
    })
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
    let failed = |status: &str, why: String| Outcome {
        path: c.path.clone(),
        track_id: None,
        status: status.to_owned(),
        failure: Some(why),
        existing: false,
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
    let sent_before = overall.position();
    let opened = File::open(&c.path).and_then(|f| Ok((f.metadata()?.len(), f)));
    let (size_bytes, file) = match opened {
        Ok(sized) => sized,
        Err(e) => {
            overall.set_position(sent_before + c.size_bytes);
            return failed("unreadable", format!("cannot read the file: {e}"));
        }
    };
    if size_bytes != c.size_bytes {
        // Changed since the walk: the bars follow what is really sent.
        bar.set_length(size_bytes);
        overall.set_length(
            overall
                .length()
                .unwrap_or(0)
                .saturating_sub(c.size_bytes)
                .saturating_add(size_bytes),
        );
    }
    let mut body = Progress {
        inner: file.take(size_bytes),
        bar,
        overall,
    };
    let result = agent
        .post(format!("{base}/v1/tracks?{query}"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", BODY_MEDIA_TYPE)
        .header("Content-Length", size_bytes.to_string())
        // The server answers a refused upload (bad token, too large) before
        // reading the body and closes; without waiting for its go-ahead, a
        // body larger than the socket buffers fails to send (EPIPE) and its
        // answer is never read.
        .header("Expect", "100-continue")
        .send(ureq::SendBody::from_reader(&mut body));
    // Whatever happened, this file's share of the overall bar is done.
    overall.set_position(sent_before + size_bytes);
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            return failed(
                "interrupted",
                format!(
                    "interrupted after {} of {size_bytes} bytes: {e}",
                    bar.position()
                ),
            );
        }
    };
    let status = response.status().as_u16();
    let text = read_body(response);
    if !(200..300).contains(&status) {
        return failed(
            "refused",
            format!("server answered {status}: {}", error_message(&text)),
        );
    }
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return failed(
                "unconfirmed",
                format!("server answered {status} with a body that is not JSON: {e}"),
            )
        }
    };
    match json["id"].as_str() {
        Some(id) => Outcome {
            path: c.path.clone(),
            track_id: Some(id.to_owned()),
            status: json["status"].as_str().unwrap_or("accepted").to_owned(),
            failure: json["failure_reason"].as_str().map(str::to_owned),
            existing: false,
        },
        None => failed(
            "unconfirmed",
            format!("server answered {status} without a track id"),
        ),
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
                            if o.status == "failed" && o.failure.is_none() {
                                o.failure = Some("the server gave no reason".into());
                            }
                            spinner.inc(1);
                            let line = o.line();
                            spinner.suspend(|| println!("{line}"));
                        }
                    }
                }
                Ok(r) if r.status().as_u16() == 404 => {
                    o.status = "missing".into();
                    o.failure = Some("the track no longer exists (deleted?)".into());
                    spinner.inc(1);
                    let line = o.line();
                    spinner.suspend(|| println!("{line}"));
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
                let line = o.line();
                spinner.suspend(|| println!("{line}"));
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
    let existing = outcomes.iter().filter(|o| o.existing).count();
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
        "uploaded {} of {} audio files ({}{skipped} other files skipped){}",
        accepted - existing,
        outcomes.len(),
        if existing > 0 {
            format!("{existing} already on the server, ")
        } else {
            String::new()
        },
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
            "NOT UPLOADED {} ({}): {}",
            o.path.display(),
            o.status,
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

    /// Selection is by extension only: a `.mp3` holding text is sent (the
    /// server refuses or fails it with a reason), a `cover.jpg` is not.
    #[test]
    fn folders_are_walked_and_non_audio_extensions_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("a.flac"), b"fLaC\0\0\0\x22rest").unwrap();
        std::fs::write(sub.join("b.wav"), b"RIFF\x10\0\0\0WAVEfmt ").unwrap();
        std::fs::write(sub.join("fake.mp3"), b"just some text").unwrap();
        std::fs::write(dir.path().join("cover.jpg"), b"\xFF\xD8\xFF\xE0").unwrap();
        let (found, skipped) = collect(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = found.iter().map(|c| display_name(&c.path)).collect();
        assert_eq!(names, ["a.flac", "b.wav", "fake.mp3"]);
        assert_eq!(found[2].size_bytes, 14);
        let skipped: Vec<String> = skipped.iter().map(|p| display_name(p)).collect();
        assert_eq!(skipped, ["cover.jpg"]);
        assert!(has_audio_extension(Path::new("x/Y.FLAC")));
        assert!(!has_audio_extension(Path::new("flac")));
    }
}
