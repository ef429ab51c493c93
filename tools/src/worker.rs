//! `spindle worker --server URL --token ADMIN_TOKEN`: a transcode worker on
//! another machine. It leases jobs over HTTP (`/v1/jobs/...`, see
//! `spindle_server::worker::remote`), reads the raw upload by range
//! requests (never whole), transcodes it into three local temporary files,
//! uploads each as a streamed request body, and completes the job; the
//! lease is extended every third of its length while it runs. A worker
//! that dies loses nothing: the job is redelivered, and tiers it uploaded
//! are reused (byte-identical, held in the job's ledger).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use spindle_server::track::BlobRefJson;
use spindle_server::worker::complete::{Completion, TIER_MEDIA_TYPE};
use spindle_server::worker::job::{limits, media_info, Heartbeat};
use spindle_server::worker::remote::{FailJson, HeldBlobJson, LeaseJson};
use spindle_server::worker::source::{RangeFetch, RangeSource};
use spindle_server::worker::WorkerConfig;

/// Flags of `spindle worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Base URL of the server, e.g. http://10.0.0.5:8080.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The server's admin token (job routes are admin-only).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SPINDLE_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// Lease length; extended every third of it.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    lease_ms: u64,
    /// Pause between polls when no job is due.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    poll_ms: u64,
    /// Longest audio accepted [default: 21600000, 6 h].
    #[arg(long, value_name = "MS")]
    max_duration_ms: Option<u64>,
    /// Wall-clock bound of one job [default: 7200000].
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Where tiers are staged before upload [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    temp_dir: Option<PathBuf>,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    fn post(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
    }
}

fn body_text(mut r: ureq::http::Response<ureq::Body>) -> String {
    r.body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default()
}

/// Range reads of the raw blob.
struct HttpBlob {
    client: Arc<Client>,
    blob_id: String,
}

impl RangeFetch for HttpBlob {
    fn fetch(&mut self, offset: u64, max_len: u64) -> io::Result<bytes::Bytes> {
        if max_len == 0 {
            return Ok(bytes::Bytes::new());
        }
        let last = offset + max_len - 1;
        let mut r = self
            .client
            .agent
            .get(format!("{}/v1/blobs/{}", self.client.base, self.blob_id))
            .header("Authorization", &self.client.auth)
            .header("Range", format!("bytes={offset}-{last}"))
            .call()
            .map_err(io::Error::other)?;
        if r.status().as_u16() != 206 {
            return Err(io::Error::other(format!(
                "range read of the raw blob answered {}",
                r.status()
            )));
        }
        let v = r
            .body_mut()
            .with_config()
            .limit(max_len + 1)
            .read_to_vec()
            .map_err(io::Error::other)?;
        Ok(bytes::Bytes::from(v))
    }
}

/// Runs jobs until killed.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let client = Arc::new(Client {
        agent,
        base: args.server.trim_end_matches('/').to_owned(),
        auth: format!("Bearer {}", args.token),
    });
    let defaults = WorkerConfig::default();
    let config = WorkerConfig {
        lease_ms: args.lease_ms,
        max_duration_ms: args.max_duration_ms.unwrap_or(defaults.max_duration_ms),
        timeout_ms: args.timeout_ms.unwrap_or(defaults.timeout_ms),
        ..defaults
    };
    let temp = args.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let worker_id = format!("remote-{}", std::process::id());
    tracing::info!(server = %client.base, "spindle worker started");
    loop {
        let r = client
            .post(&format!(
                "/v1/jobs/lease?worker={worker_id}&lease_ms={}",
                config.lease_ms
            ))
            .send_empty();
        let lease = match r {
            Ok(r) if r.status().as_u16() == 200 => {
                let text = body_text(r);
                serde_json::from_str::<LeaseJson>(&text).context("lease answer")?
            }
            Ok(r) if r.status().as_u16() == 204 => {
                std::thread::sleep(Duration::from_millis(args.poll_ms));
                continue;
            }
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                bail!(
                    "the server refused the token ({}): an admin token is needed",
                    r.status()
                )
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "lease failed; retrying");
                std::thread::sleep(Duration::from_millis(args.poll_ms));
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "server unreachable; retrying");
                std::thread::sleep(Duration::from_millis(args.poll_ms));
                continue;
            }
        };
        let job = lease.job_id.clone();
        match run_one(&client, &lease, &config, &temp) {
            Ok(outcome) => tracing::info!(%job, %outcome, "job done"),
            Err(error) => {
                tracing::warn!(%job, error = %format!("{error:#}"), "job abandoned; it will be redelivered")
            }
        }
    }
}

fn run_one(
    client: &Arc<Client>,
    lease: &LeaseJson,
    config: &WorkerConfig,
    temp: &Path,
) -> anyhow::Result<String> {
    let q = format!(
        "token={}&track={}&lease_ms={}",
        lease.token, lease.track_id, config.lease_ms
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let beat = {
        let client = client.clone();
        let path = format!("/v1/jobs/{}/extend?{q}", lease.job_id);
        Heartbeat::start(config.lease_ms, cancel.clone(), move || {
            match client.post(&path).send_empty() {
                Ok(r) => r.status().as_u16() != 409,
                Err(_) => true, // network blip: try again next beat
            }
        })
    };
    let dir = temp.join(format!(
        "spindle-worker-{}-{}",
        std::process::id(),
        lease.job_id
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = transcode_and_upload(client, lease, config, &q, &dir, cancel);
    let _ = std::fs::remove_dir_all(&dir);
    drop(beat);
    result
}

fn transcode_and_upload(
    client: &Arc<Client>,
    lease: &LeaseJson,
    config: &WorkerConfig,
    q: &str,
    dir: &Path,
    cancel: Arc<AtomicBool>,
) -> anyhow::Result<String> {
    let source = RangeSource::new(
        HttpBlob {
            client: client.clone(),
            blob_id: lease.raw_blob_id.clone(),
        },
        lease.raw_size_bytes,
    );
    let paths = ["low", "normal", "high"].map(|t| dir.join(format!("{t}.ogg")));
    let open = |p: &PathBuf| -> anyhow::Result<BufWriter<File>> {
        Ok(BufWriter::new(
            File::create(p).with_context(|| p.display().to_string())?,
        ))
    };
    let (mut low, mut normal, mut high) = (open(&paths[0])?, open(&paths[1])?, open(&paths[2])?);
    let limits = limits(config, cancel.clone());
    let result = spindle_media::transcode(
        source,
        Some(lease.raw_size_bytes),
        lease.file_name.as_deref(),
        spindle_media::TierSinks {
            low: &mut low,
            normal: &mut normal,
            high: &mut high,
        },
        &limits,
    );
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if cancel.load(std::sync::atomic::Ordering::Acquire) {
                bail!("lease lost while transcoding");
            }
            let fail = FailJson {
                reason: e.to_string(),
                permanent: e.is_permanent(),
                attempt: lease.attempt,
            };
            let r = client
                .post(&format!("/v1/jobs/{}/fail?{q}", lease.job_id))
                .header("Content-Type", "application/json")
                .send(serde_json::to_vec(&fail)?.as_slice())?;
            let status = r.status();
            let text = body_text(r);
            if !status.is_success() {
                bail!("reporting the failure answered {status}: {text}");
            }
            return Ok(format!("failed: {e}"));
        }
    };
    for w in [&mut low, &mut normal, &mut high] {
        w.flush()?;
    }
    drop((low, normal, high));
    let mut tiers = std::collections::BTreeMap::new();
    for (i, quality) in ["low", "normal", "high"].into_iter().enumerate() {
        let mut file = File::open(&paths[i])?;
        let size = file.metadata()?.len();
        let held = upload(
            client,
            lease,
            q,
            ureq::SendBody::from_reader(&mut file),
            size,
        )?;
        anyhow::ensure!(
            held.size_bytes == size,
            "server stored {} of {size} bytes",
            held.size_bytes
        );
        tiers.insert(
            quality.to_owned(),
            BlobRefJson {
                blob_id: held.blob_id,
                size_bytes: held.size_bytes,
                media_type: TIER_MEDIA_TYPE.to_owned(),
                bitrate_kbps: Some(report.tiers[i].bitrate_target_kbps),
            },
        );
    }
    let mut media = media_info(&report);
    if let Some(cover) = &report.cover {
        let mut bytes: &[u8] = &cover.bytes;
        let held = upload(
            client,
            lease,
            q,
            ureq::SendBody::from_reader(&mut bytes),
            cover.bytes.len() as u64,
        )?;
        media.cover = Some(BlobRefJson {
            blob_id: held.blob_id,
            size_bytes: held.size_bytes,
            media_type: cover.mime.clone(),
            bitrate_kbps: None,
        });
    }
    let completion = Completion { tiers, media };
    let r = client
        .post(&format!("/v1/jobs/{}/complete?{q}", lease.job_id))
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(&completion)?.as_slice())?;
    let status = r.status();
    let text = body_text(r);
    if !status.is_success() {
        bail!("completing answered {status}: {text}");
    }
    Ok(text)
}

fn upload(
    client: &Client,
    lease: &LeaseJson,
    q: &str,
    body: ureq::SendBody<'_>,
    size: u64,
) -> anyhow::Result<HeldBlobJson> {
    let r = client
        .post(&format!("/v1/jobs/{}/blobs?{q}", lease.job_id))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", size.to_string())
        .send(body)?;
    let status = r.status();
    let text = body_text(r);
    if !status.is_success() {
        bail!("uploading a tier answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}
